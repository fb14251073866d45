"""One table from the JSON files bench/gpu.sh writes (train_step.json, generate.json, classifier.json).

    python bench/gpu_summary.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(folder: Path, name: str):
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _training_rows(data) -> list[str]:
    if not data:
        return ["| 1. LoRA training step | not measured (bench did not finish) | | |"]
    rows = {r["name"]: r for r in data.get("results", [])}
    reference, ours = (r if r and "samples_per_s" in r else None for r in (rows.get("reference"), rows.get("ours")))
    args = data.get("args", {})
    full_size = bool(args.get("full_size"))
    lines = []
    for name, row in rows.items():
        if "samples_per_s" not in row:
            lines.append(f"| 1. training: {name} | failed: {row.get('error', 'no rate')} | | |")
            continue
        ratio = f"{row['samples_per_s'] / reference['samples_per_s']:.2f}x" if reference else ""
        mfu = f", UNet MFU {100 * row['mfu']:.1f}%" if row.get("mfu") else ""  # train_step.py's FLOP count
        lines.append(f"| 1. training: {name} | {row['samples_per_s']:.2f} samples/s{mfu} | {ratio} | "
                     f"peak {row.get('peak_mb', 0) / 1024:.1f} GiB |")
    if ours and full_size:
        hours = 336_000 / ours["samples_per_s"] / 3600
        lines.append(f"| 1. paper recipe (336k samples) at ours' rate | {hours:.2f} h (paper: 10.4 h) | | |")
    return lines


def _generation_rows(data) -> list[str]:
    if not data:
        return ["| 2. generation | not measured (bench did not finish) | | |"]
    rows = data.get("rows", [])
    base = next((r for r in rows if r["row"].startswith("per-image")), None)
    lines = []
    for row in rows:
        ratio = f"{row['images_per_s'] / base['images_per_s']:.2f}x" if base else ""
        mfu = f", MFU {100 * row['mfu']:.1f}%" if row.get("mfu") else ""
        lines.append(f"| 2. generation: {row['row']} | {row['images_per_s']:.2f} images/s{mfu} | {ratio} | "
                     f"6000 images in {6000 / row['images_per_s'] / 60:.1f} min |")
    return lines


def _classifier_rows(data) -> list[str]:
    if not data:
        return ["| 4. classifiers | not measured (bench did not finish) | | |"]
    return [f"| 4. {r['model']} {r['size']} px | train {r['train_img_s']:.0f} / eval {r['eval_img_s']:.0f} img/s | "
            f"loader {r['loader_img_s'] / max(r['train_img_s'], 1e-9):.1f}x train | decode {r['cache_train_img_s']:.0f} "
            "img/s once |" for r in data]


def main(folder: str) -> int:
    out = Path(folder)
    print("\n| benchmark | rate | vs reference | note |\n|---|---|---|---|")
    for line in (_training_rows(_load(out, "train_step.json")) + _generation_rows(_load(out, "generate.json"))
                 + _classifier_rows(_load(out, "classifier.json"))):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpu-bench"))
