"""Dataset build and load benchmark (issue 11, item 3): `dermt2im build-dataset` on N 512-px PNGs.

    python bench/dataset_build.py                 # 6000 images (3000 per class), synthetic config
    python bench/dataset_build.py --n 1000 --config a1111 --keep /tmp/ds-bench

It writes a generation-output folder (contract 2: PNGs with A1111 infotext + metadata.jsonl), times the build
(images/s; target >= 200 on 2 CPU cores) and then `load_dataset(DIR)` (parquet -> Arrow cache) and one pass
over the rows, with and without decoding the images, and prints a Markdown table.

Inputs are made fast and realistic: a few phantom images are rendered and PNG-encoded once, and every file
gets its own `parameters` tEXt chunk spliced in after IHDR, so all N files differ (distinct sha256) while the
pixel data stays a real 512-px PNG stream of typical size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR_END = len(PNG_SIGNATURE) + 4 + 4 + 13 + 4  # signature + IHDR (length, type, 13 data bytes, CRC)
SAMPLERS = ("Euler", "Euler a", "PLMS")


def text_chunk(key: str, text: str) -> bytes:
    body = b"tEXt" + key.encode("latin-1") + b"\0" + text.encode("latin-1", "replace")
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def base_pngs(size: int, variants: int) -> dict[str, list[bytes]]:
    """A few encoded phantom PNGs per class (no text chunks yet)."""
    from dermt2im_hub.labels import CLASS_NAMES
    from dermt2im_hub.testing.phantoms import PhantomConfig, render_phantom
    from dermt2im_hub.utils.files import encode_png

    config = PhantomConfig(size=size)
    return {label: [encode_png(render_phantom(i * 2 + k, label, config)) for i in range(variants)]
            for k, label in enumerate(CLASS_NAMES)}


def make_generated_folder(folder: Path, n: int, size: int, variants: int = 4) -> int:
    """N PNGs + metadata.jsonl in the generation stage's layout; returns total bytes written."""
    from dermt2im_hub.generation.infotext import PARAMETERS_KEY, format_infotext
    from dermt2im_hub.labels import CLASS_NAMES
    from dermt2im_hub.manifest import write_manifest
    from dermt2im_hub.utils.files import sha256_bytes, write_jsonl

    bases = base_pngs(size, variants)
    rows, total = [], 0
    for label in CLASS_NAMES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    for index in range(n):
        label = CLASS_NAMES[index % 2]
        seed = 100_000 + index
        row = {"file_name": f"{label}/{index:05d}-{seed}.png", "label": label, "prompt": f"{label} mole",
               "negative_prompt": None, "sampler": SAMPLERS[index % 3], "steps": 22 + index % 5, "cfg_scale": 7.0,
               "seed": seed, "width": size, "height": size, "base_model": "stable-diffusion-v1-5",
               "base_model_revision": None, "base_model_hash": None, "adapters": [], "transformations": [],
               "index": index, "package_version": "bench"}
        infotext = format_infotext(row["prompt"], None, {"Steps": row["steps"], "Sampler": row["sampler"],
                                                         "CFG scale": 7, "Seed": seed, "Size": (size, size)})
        base = bases[label][index // 2 % variants]
        data = base[:IHDR_END] + text_chunk(PARAMETERS_KEY, infotext) + base[IHDR_END:]
        (folder / row["file_name"]).write_bytes(data)
        row["sha256"] = sha256_bytes(data)
        rows.append(row)
        total += len(data)
    write_jsonl(folder / "metadata.jsonl", rows)
    write_manifest(folder, "generate", outputs={"num_images": n})  # a generation output carries one
    return total


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_load(folder: Path, cache: Path) -> dict[str, float]:
    """Seconds for load_dataset (cold cache), one pass without decoding, one pass decoding every image."""
    import datasets

    start = time.perf_counter()
    dataset = datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))
    loaded = time.perf_counter()
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    for _ in raw:
        pass
    iterated = time.perf_counter()
    for row in dataset:
        row["image"].load()
    decoded = time.perf_counter()
    return {"load": loaded - start, "iterate": iterated - loaded, "decode": decoded - iterated}


def run(n: int, size: int, config_name: str, workdir: Path) -> list[tuple[str, str]]:
    import dermt2im_hub.dataset.builder  # noqa: F401  (imports `datasets`: a one-off cost the build rate should not include)
    from dermt2im_hub.dataset.config import DatasetConfig
    from dermt2im_hub.dataset.export import build_dataset

    inputs, output = workdir / "generated", workdir / "dermt2im"
    start = time.perf_counter()
    input_bytes = make_generated_folder(inputs, n, size)
    # Inputs a build reads were written long before: flush them, so the build is not timed while the kernel
    # writes back gigabytes of fresh input files (that throttles every writer, the build's parquet included).
    os.sync()
    made = time.perf_counter() - start

    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = build_dataset([inputs], output, DatasetConfig(config_name=config_name), progress=False)
    build_seconds, build_cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    parquet_bytes = sum((output / p).stat().st_size for p in result.shards)
    timings = time_load(output, workdir / "hf-cache")
    mb = 1e6
    return [
        ("images", f"{result.num_rows} ({size} px PNG, {input_bytes / n / 1e3:.0f} kB each)"),
        ("config", config_name),
        ("write + sync inputs (not part of the build)", f"{made:.1f} s"),
        ("build-dataset", f"{build_seconds:.1f} s"),
        ("**build rate**", f"**{result.num_rows / build_seconds:.0f} images/s** "
                           f"({input_bytes / mb / build_seconds:.0f} MB/s); target >= 200"),
        ("build CPU time (user + system)", f"{build_cpu:.1f} s ({result.num_rows / build_cpu:.0f} images per "
                                           "CPU-second; load average " + " ".join(
                                               f"{x:.1f}" for x in os.getloadavg()) + ")"),
        ("parquet shards", f"{len(result.shards)} ({parquet_bytes / mb:.0f} MB)"),
        ("load_dataset(DIR), cold cache", f"{timings['load']:.1f} s"),
        ("iterate once, image bytes only", f"{timings['iterate']:.1f} s "
                                           f"({result.num_rows / timings['iterate']:.0f} rows/s)"),
        ("iterate once, decoding every image", f"{timings['decode']:.1f} s "
                                               f"({result.num_rows / timings['decode']:.0f} images/s)"),
        ("report", json.dumps(result.report["counts"]) or "{}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6000, help="number of PNGs (default 6000)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--config", choices=["synthetic", "a1111"], default="synthetic",
                        help="builder config to time (default synthetic)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR and keep it (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dermt2im-dataset-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf-cache")
    try:
        rows = run(args.n, args.size, args.config, workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nDataset build benchmark ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()})\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
