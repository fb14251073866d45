"""The dataset stage: DermT2IM builder (synthetic / a1111 / real), parquet export, card facts, push policy."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dermt2im_hub.config import ConfigError
from dermt2im_hub.dataset.config import DatasetConfig
from dermt2im_hub.dataset.layout import sampler_slug
from dermt2im_hub.generation.infotext import format_infotext, pnginfo_for
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms, render_phantom
from dermt2im_hub.utils.files import atomic_save_png, read_jsonl, sha256_file, write_jsonl

SAMPLERS = ("Euler", "Euler a", "PLMS")
ADAPTER = {"id": "org/dermt2im-lora", "weight_name": "pytorch_lora_weights.safetensors", "sha256": "ab" * 32,
           "scale": 1.0}


# ------------------------------------------------------------------------------------------ folder writers


def write_png(path: Path, index: int, label: str, size: int = 64, infotext: str | None = None) -> Path:
    image = render_phantom(index, label, PhantomConfig(size=size, hair_probability=0.0))
    return atomic_save_png(image, path, pnginfo=pnginfo_for(infotext) if infotext else None, compress_level=1)


def generated_row(index: int, size: int = 64) -> dict[str, Any]:
    """One contract-2 metadata row (sha256 is added once the file exists)."""
    label = CLASS_NAMES[index % 2]
    seed = 1000 + index
    return {
        "file_name": f"{label}/{index:05d}-{seed}.png", "label": label,
        "prompt": f"{label} mole on neck" if index % 3 == 0 else f"tiny {label} mole",
        "negative_prompt": "blurry", "sampler": SAMPLERS[index % 3], "steps": 20 + index % 4, "cfg_scale": 7.0,
        "seed": seed, "width": size, "height": size, "base_model": "tiny-sd15", "base_model_revision": "r1",
        "base_model_hash": "cd" * 32, "adapters": [ADAPTER],
        "transformations": ["site:neck"] if index % 3 == 0 else ["size:tiny", "skin:fitzpatrick-5"],
        "index": index, "package_version": "0.1.0",
    }


def write_generated_folder(folder: Path, n: int = 6, size: int = 64, qa: dict[int, dict] | None = None) -> Path:
    """A generation output folder per contract 2 (PNGs with A1111 infotext + metadata.jsonl). `qa` adds keys to
    row i; `{"rejected": True}` puts the image under rejected/ as the QA stage does."""
    rows = []
    for index in range(n):
        row = generated_row(index, size)
        row.update((qa or {}).get(index, {}))
        if row.pop("rejected", False):
            row["file_name"] = "rejected/" + row["file_name"]
        params = {"Steps": row["steps"], "Sampler": row["sampler"], "CFG scale": row["cfg_scale"],
                  "Seed": row["seed"], "Size": (size, size), "Model hash": row["base_model_hash"][:10],
                  "Model": row["base_model"]}
        path = write_png(folder / row["file_name"], index, row["label"], size,
                         format_infotext(row["prompt"], row["negative_prompt"], params))
        row["sha256"] = sha256_file(path)
        rows.append(row)
    write_jsonl(folder / "metadata.jsonl", rows)
    return folder


def build(inputs, out: Path, **config) -> Any:
    from dermt2im_hub.dataset.export import build_dataset

    return build_dataset([inputs] if isinstance(inputs, Path) else inputs, out, DatasetConfig(**config),
                         progress=False)


def shard_names(folder: Path) -> list[str]:
    """The parquet shards under folder/data, as paths relative to it, in path order."""
    return sorted(p.relative_to(folder / "data").as_posix() for p in (folder / "data").rglob("*.parquet"))


def load(folder: Path, **kwargs):
    import datasets

    return datasets.load_dataset(str(folder), **kwargs)


class HubApiDouble:
    """Records what push_folder asks of the Hub API; nothing leaves the machine."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://hub.invalid/datasets/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", {"repo_id": repo_id, **kwargs}))
        private = next(kw["private"] for name, kw in self.calls if name == "create_repo" and kw["repo_id"] == repo_id)
        return SimpleNamespace(private=private)

    def hf_hub_download(self, *, repo_id, filename, **kwargs):  # a new repo: no card to merge with yet
        import httpx
        from huggingface_hub.errors import RemoteEntryNotFoundError

        self.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename, **kwargs}))
        request = httpx.Request("GET", f"https://hub.invalid/datasets/{repo_id}/resolve/main/{filename}")
        raise RemoteEntryNotFoundError("404 entry not found", response=httpx.Response(404, request=request))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return SimpleNamespace(commit_url=f"https://hub.invalid/datasets/{kwargs['repo_id']}/commit/1")


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory) -> Path:
    return write_generated_folder(tmp_path_factory.mktemp("generated"), n=6)


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory, generated_dir) -> Path:
    """The generated folder built as ./dermt2im (so load_dataset("dermt2im") can find it)."""
    out = tmp_path_factory.mktemp("work") / "dermt2im"
    build(generated_dir, out, license="creativeml-openrail-m")
    return out


# ------------------------------------------------------------------------------------------ a1111: the real samples


def _own_parameters(text: str) -> dict[str, Any]:
    """The PNG's parameters read with a regex of this test's own (not the package's parser)."""
    lines = text.strip("\n").split("\n")
    params = lines[-1]
    prompt_lines = [line for line in lines[:-1]]
    if any(line.startswith("Negative prompt:") for line in prompt_lines):
        prompt_lines = prompt_lines[:[i for i, line in enumerate(prompt_lines)
                                      if line.startswith("Negative prompt:")][0]]
    return {
        "prompt": "\n".join(prompt_lines),
        "steps": int(re.search(r"(?:^|, )Steps: (\d+)", params).group(1)),
        "sampler": re.search(r"(?:^|, )Sampler: ([^,]+)", params).group(1),
        "cfg_scale": float(re.search(r"(?:^|, )CFG scale: ([\d.]+)", params).group(1)),
        "seed": int(re.search(r"(?:^|, )Seed: (\d+)", params).group(1)),
    }


def test_a1111_sample_rows_equal_each_png_parameters(shared_data, tmp_path):
    from datasets import ClassLabel, Image
    from dermt2im_hub.dataset_builder import DermT2IM
    from PIL import Image as PILImage

    sample = shared_data / "dermt2im-sample"
    if not sample.is_dir():
        pytest.skip(f"{sample} is absent")
    builder = DermT2IM(config_name="a1111", data_dir=str(sample), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")
    assert len(dataset) == 160
    assert isinstance(dataset.features["label"], ClassLabel) and dataset.features["label"].names == list(CLASS_NAMES)
    labels = list(dataset["label"])
    assert labels.count(0) == 80 and labels.count(1) == 80
    raw = dataset.cast_column("image", Image(decode=False))
    for row, image in zip(dataset.remove_columns("image"), raw["image"]):
        path = sample / row["file_name"]
        with PILImage.open(path) as png:
            own = _own_parameters(png.info["parameters"])
        assert {k: row[k] for k in own} == own, row["file_name"]
        assert CLASS_NAMES[row["label"]] == Path(row["file_name"]).parts[0]
        assert image["bytes"] == path.read_bytes(), "PNG bytes must be stored as they are"
    assert {"Euler a", "Euler", "Heun", "DPM++ 2M SDE Karras"} <= set(dataset["sampler"])
    assert builder.scan.report.counts.total() == 0


# ------------------------------------------------------------------------------------------ synthetic: build + load


def test_generated_folder_builds_and_loads_as_dermt2im(built_dir, generated_dir, monkeypatch):
    from datasets import ClassLabel, Image

    rows = read_jsonl(generated_dir / "metadata.jsonl")
    assert shard_names(built_dir) == ["synthetic/euler-a/train-00000-of-00001.parquet",  # one folder per sampler
                                      "synthetic/euler/train-00000-of-00001.parquet",
                                      "synthetic/plms/train-00000-of-00001.parquet"]
    monkeypatch.chdir(built_dir.parent)
    dataset = load(Path("dermt2im"), split="train")  # load_dataset("dermt2im") from the folder's parent
    assert len(dataset) == len(rows)
    assert isinstance(dataset.features["label"], ClassLabel) and isinstance(dataset.features["image"], Image)
    # rows come grouped by sampler folder (path order), in input order within one (dataset.layout)
    rows = sorted(rows, key=lambda r: (sampler_slug(r["sampler"]) + "/", r["index"]))
    for row, meta in zip(dataset, rows, strict=True):
        assert row["image"].size == (64, 64)
        row["image"].load()
        assert CLASS_NAMES[row["label"]] == meta["label"]
        for key in ("prompt", "negative_prompt", "sampler", "steps", "seed", "transformations", "sha256"):
            assert row[key] == meta[key], key
        assert row["cfg_scale"] == 7.0 and row["model"] == "tiny-sd15" and row["adapter"] == ADAPTER["id"]
        assert row["model_hash"] == meta["base_model_hash"] and row["source"] == "synthetic"
        assert json.loads(row["extra"])["adapters"] == [ADAPTER]
        assert row["infotext"].startswith(meta["prompt"])
        assert row["qa_passed"] is None and row["mem_flagged"] is None  # QA columns exist before QA ran


def test_built_folder_has_card_manifest_and_grid(built_dir):
    manifest = json.loads((built_dir / "manifest.json").read_text())
    assert manifest["stage"] == "build_dataset" and manifest["status"] == "complete"
    card = manifest["extra"]["card"]
    assert card["num_rows"] == 6 and card["per_class"] == {"benign": 3, "malignant": 3}
    assert card["per_sampler"]["Euler"] == {"benign": 1, "malignant": 1}
    assert card["per_steps"]["20"] == {"benign": 2, "malignant": 0}
    assert card["transformation_counts"] == {"size:tiny": 4, "skin:fitzpatrick-5": 4, "site:neck": 2}
    assert card["adapters"][0]["id"] == ADAPTER["id"] and card["base_models"][0]["id"] == "tiny-sd15"
    # the builder config is the Hub config, and the default one (load_dataset(DIR) and (DIR, "synthetic"))
    # and one config per sampler, whose glob reads that sampler's folder alone
    assert card["configs"] == [
        {"config_name": "synthetic", "default": True,
         "data_files": [{"split": "train", "path": "data/synthetic/*/train-*.parquet"}]},
        *({"config_name": f"synthetic-{slug}", "data_files": [
            {"split": "train", "path": f"data/synthetic/{slug}/train-*.parquet"}]} for slug in ("euler", "euler-a", "plms"))]
    assert card["config_rows"] == {"synthetic": {"train": 6}, "synthetic-euler": {"train": 2},
                                   "synthetic-euler-a": {"train": 2}, "synthetic-plms": {"train": 2}}
    readme = (built_dir / "README.md").read_text()
    assert "configs:" in readme and "path: data/synthetic/*/train-*.parquet" in readme
    assert "creativeml-openrail-m" in readme and "| `synthetic-euler-a` | train: 2 |" in readme
    grid = built_dir / "data" / "synthetic" / "sample_grid.png"
    assert grid.stat().st_size > 0 and card["sample_grid"] == "data/synthetic/sample_grid.png"
    assert not (built_dir / ".build-staging").exists()


def test_streaming_from_folder_and_from_builder(built_dir, generated_dir, tmp_path):
    from dermt2im_hub.dataset_builder import DermT2IM

    streamed = list(load(built_dir, split="train", streaming=True))
    assert len(streamed) == 6 and streamed[0]["image"].size == (64, 64) and streamed[0]["label"] in (0, 1)
    builder = DermT2IM(config_name="synthetic", data_dir=str(generated_dir), cache_dir=str(tmp_path))
    rows = list(builder.as_streaming_dataset(split="train"))
    assert sorted(r["sha256"] for r in rows) == sorted(r["sha256"] for r in streamed)


def test_same_input_gives_identical_parquet_bytes(generated_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(generated_dir, copy)
    first, second = tmp_path / "first", tmp_path / "second"
    build(generated_dir, first)
    build(copy, second, split_by="none")
    names = shard_names(first)
    assert names == shard_names(second) and len(names) == 3
    for name in names:
        assert (first / "data" / name).read_bytes() == (second / "data" / name).read_bytes()


def test_rebuild_replaces_old_shards_and_small_shard_limit_splits(generated_dir, tmp_path):
    out = tmp_path / "out"
    build(generated_dir, out, max_shard_size="1MB", split_by="seed", split_fractions=[0.5, 0.25, 0.25])
    before = shard_names(out)
    assert all(re.match(r"^synthetic/[a-z-]+/(train|validation|test)-\d{5}-of-\d{5}\.parquet$", n) for n in before)
    first_load = load(out)
    assert sum(len(split) for split in first_load.values()) == 6
    build(generated_dir, out, config_name="a1111")  # another config in the same folder: no stale shard stays
    assert {n.split("/")[0] for n in shard_names(out)} == {"a1111"}
    build(generated_dir, out)
    assert [n.split("/", 2)[2] for n in shard_names(out)] == ["train-00000-of-00001.parquet"] * 3
    reloaded = load(out)  # same folder, new content: must not come from the first build's cache
    assert list(reloaded) == ["train"] and len(reloaded["train"]) == 6


def test_split_by_prompt_keeps_each_prompt_in_one_split(generated_dir, tmp_path):
    from dermt2im_hub.dataset_builder import DermT2IM

    builder = DermT2IM(config_name="synthetic", data_dir=str(generated_dir), cache_dir=str(tmp_path),
                       split_by="prompt", split_fractions=[0.5, 0.25, 0.25])
    builder.download_and_prepare()
    splits_of_prompt: dict[str, set[str]] = {}
    for split, dataset in builder.as_dataset().items():
        for prompt in dataset["prompt"]:
            splits_of_prompt.setdefault(prompt, set()).add(split)
    assert all(len(s) == 1 for s in splits_of_prompt.values()) and len(splits_of_prompt) == 4


# ------------------------------------------------------------------------------------------ QA columns and policy


def test_rejected_and_failed_qa_rows_are_left_out_unless_asked(tmp_path):
    folder = write_generated_folder(tmp_path / "gen", n=6, qa={
        0: {"qa_passed": True, "qa_reasons": [], "qa_sharpness": 12.5, "ita": 41.2, "ita_category": "intermediate",
            "mem_flagged": False, "mem_nearest_distance": 0.4},
        1: {"qa_passed": False, "qa_reasons": ["blur"], "qa_sharpness": 0.1, "rejected": True},
        2: {"qa_passed": False, "qa_reasons": ["noise"], "qa_sharpness": 3},
    })
    result = build(folder, tmp_path / "out")
    assert result.num_rows == 4
    assert result.report["counts"] == {"rejected": 1, "failed_qa": 1}
    dataset = load(tmp_path / "out", split="train")
    assert dataset.features["qa_sharpness"].dtype == "float64"
    assert dataset.features["mem_nearest_distance"].dtype == "float64"
    first = next(row for row in dataset if row["qa_sharpness"] == 12.5)
    assert first["qa_passed"] is True and first["qa_sharpness"] == 12.5 and first["ita_category"] == "intermediate"
    card = json.loads((tmp_path / "out" / "manifest.json").read_text())["extra"]["card"]
    assert card["qa"]["excluded_rejected"] == 1 and card["qa"]["excluded_failed_qa"] == 1
    assert card["memorization"]["flagged"] == 0 and card["skin_tone"]["categories"] == {"intermediate": 1}
    assert build(folder, tmp_path / "all", include_rejected=True).num_rows == 6


def test_memorized_rows_stop_build_and_push_unless_allowed(tmp_path, run_cli, monkeypatch):
    from dermt2im_hub.dataset.export import push_dataset
    from dermt2im_hub.dataset.sources import MemorizationError
    from dermt2im_hub.hub.push import PushError

    folder = write_generated_folder(tmp_path / "gen", n=4, qa={3: {"mem_flagged": True, "qa_passed": True}})
    with pytest.raises(MemorizationError, match="1 image"):
        build(folder, tmp_path / "refused")
    args = ("build-dataset", folder, "--config", "synthetic", "-o", tmp_path / "cli", "--push-to-hub",
            "org/dermt2im", "--quiet")
    code, _, err = run_cli(*args)  # the tests run offline: refused before anything is built
    assert code == 2 and "HF_HUB_OFFLINE is set" in err and not (tmp_path / "cli").exists()
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    code, _, err = run_cli(*args)
    assert code == 2 and "memorization" in err

    out = tmp_path / "allowed"
    build(folder, out, allow_memorized=True)
    api = HubApiDouble()
    with pytest.raises(PushError, match="refusing to push.*memorization"):  # the publishing gate's rule
        push_dataset(out, "org/dermt2im", api=api)
    assert api.calls == [], "nothing may reach the Hub API before the refusal"
    push_dataset(out, "org/dermt2im", allow_memorized=True, api=api)
    (create, created), (info, asked), (_, read), (upload, uploaded) = api.calls
    assert read["filename"] == "README.md", "the repo's card is read, to keep its other configs"
    assert info == "repo_info" and asked["repo_type"] == "dataset"  # a private push checks the repo is private
    assert create == "create_repo" and created["private"] is True and created["repo_type"] == "dataset"
    assert upload == "upload_folder" and uploaded["repo_type"] == "dataset"
    assert '"org/dermt2im"' in (out / "README.md").read_text(), "card snippet names the pushed repo"


def test_push_is_private_unless_public(built_dir, tmp_path):
    from dermt2im_hub.dataset.export import build_dataset

    api = HubApiDouble()
    folder = write_generated_folder(tmp_path / "gen", n=2)
    build_dataset([folder], tmp_path / "out", DatasetConfig(push_to_hub="org/public-set", public=True),
                  progress=False, api=api)
    assert api.calls[0][1]["private"] is False and api.calls[1][1]["repo_id"] == "org/public-set"


# ------------------------------------------------------------------------------------------ a1111: problem files


def _a1111_problem_folder(root: Path) -> Path:
    text = format_infotext("benign mole", None, {"Steps": 20, "Sampler": "Heun", "CFG scale": 7, "Seed": 5,
                                                 "Size": (64, 64), "Hires upscale": 2, "Lora hashes": "x: 1"})
    good = write_png(root / "benign" / "00000-5.png", 0, "benign", infotext=text)
    shutil.copyfile(good, root / "benign" / "copy-of-00000.png")
    truncated = write_png(root / "malignant" / "00001-6.png", 1, "malignant", infotext=text)
    truncated.write_bytes(truncated.read_bytes()[:300])
    write_png(root / "malignant" / "00002-7.png", 2, "malignant")  # no infotext: kept, metadata null
    (root / "malignant" / "00003-8.png").write_bytes(b"not a png at all")
    write_png(root / "mixed" / "00004-9.png", 4, "malignant", infotext=format_infotext(
        "malignant mole on neck", None, {"Steps": 25, "Sampler": "Euler", "CFG scale": 7, "Seed": 9}))
    write_png(root / "mixed" / "00005-10.png", 5, "benign")  # no folder label, no prompt: unlabeled
    write_png(root / "rejected" / "benign" / "00006-11.png", 6, "benign", infotext=text)
    unlabeled_first = write_png(root / "a-unsorted" / "00007-12.png", 7, "benign")  # walked before benign/
    shutil.copyfile(unlabeled_first, root / "benign" / "00007-12-copy.png")  # its labelled copy is kept
    return root


def test_a1111_duplicates_corrupt_and_missing_infotext_are_reported(tmp_path):
    folder = _a1111_problem_folder(tmp_path / "a1111")
    result = build(folder, tmp_path / "out", config_name="a1111")
    counts = result.report["counts"]
    assert counts == {"duplicate": 1, "corrupt": 2, "unlabeled": 2, "no_infotext": 4}
    assert any("copy-of-00000.png" in e for e in result.report["examples"]["duplicate"])
    rows = {r["file_name"]: r for r in load(tmp_path / "out", split="train")}
    assert set(rows) == {"benign/00000-5.png", "benign/00007-12-copy.png", "malignant/00002-7.png",
                         "mixed/00004-9.png"}
    kept = rows["benign/00000-5.png"]
    assert kept["sampler"] == "Heun" and kept["seed"] == 5 and kept["label"] == 0
    assert json.loads(kept["extra"]) == {"Hires upscale": "2", "Lora hashes": "x: 1", "generation_size": "64x64"}
    bare = rows["malignant/00002-7.png"]
    assert bare["label"] == 1 and bare["prompt"] is None and bare["sampler"] is None and bare["steps"] is None
    from_prompt = rows["mixed/00004-9.png"]
    assert from_prompt["label"] == 1 and from_prompt["transformations"] == ["site:neck"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["extra"]["build_report"]["counts"]["corrupt"] == 2


def test_unsafe_file_names_are_never_read(tmp_path):
    folder = write_generated_folder(tmp_path / "gen", n=2)
    outside = write_png(tmp_path / "secret.png", 0, "benign")
    os.symlink(outside, folder / "benign" / "link.png")
    rows = read_jsonl(folder / "metadata.jsonl")
    for name in ("../secret.png", str(outside), "benign/link.png", "benign/../../secret.png", "a\\b.png"):
        rows.append({**rows[0], "file_name": name})
    write_jsonl(folder / "metadata.jsonl", rows)
    result = build(folder, tmp_path / "out")
    assert result.num_rows == 2 and result.report["counts"] == {"unsafe_name": 5}


def test_output_inside_input_or_over_another_stage_is_refused(generated_dir, tmp_path, phantom_dir):
    from dermt2im_hub.dataset.export import build_dataset

    with pytest.raises(ValueError, match="inside input"):
        build_dataset([generated_dir], generated_dir / "dataset", progress=False)
    other = tmp_path / "other"
    shutil.copytree(phantom_dir, other)
    with pytest.raises(ValueError, match="phantoms"):
        build_dataset([generated_dir], other, progress=False)


def test_inputs_from_the_wrong_stage_are_refused(generated_dir, tmp_path, phantom_dir, run_cli):
    from dermt2im_hub.manifest import write_manifest

    # real (patient-derived) images must never be published as a synthetic or A1111 set
    for config in ("synthetic", "a1111"):
        code, _, err = run_cli("build-dataset", phantom_dir, "--config", config, "-o", tmp_path / config, "--quiet")
        assert code == 2 and "'phantoms' output (real images)" in err and "--config real" in err, err
        assert not (tmp_path / config).exists()
    generated = tmp_path / "generated"
    shutil.copytree(generated_dir, generated)
    write_manifest(generated, "generate", {})
    code, _, err = run_cli("build-dataset", phantom_dir, generated, "--config", "real", "-o", tmp_path / "r")
    assert code == 2 and "'generate' output (generated images)" in err and "--config synthetic" in err, err
    write_manifest(generated, "train_lora", {})
    code, _, err = run_cli("build-dataset", generated, "-o", tmp_path / "s")
    assert code == 2 and "'train_lora' output (no image folder)" in err, err


# ------------------------------------------------------------------------------------------ real config


def test_real_folder_splits_become_dataset_splits(tmp_path):
    folder = make_phantoms(tmp_path / "real", PhantomConfig(num_images=8, size=48, seed=1), progress=False)
    rows = read_jsonl(folder / "metadata.jsonl")
    splits = ["train", "train", "train", "train", "validation", "test", "test", None]
    for row, split in zip(rows, splits):
        row.update(split=split, patient_id=f"p{row['image_id'][-1]}")
    write_jsonl(folder / "metadata.jsonl", rows)
    result = build(folder, tmp_path / "out", config_name="real")
    assert result.splits == {"train": 4, "validation": 1, "test": 2}
    assert result.report["counts"] == {"unsplit": 1}
    dataset = load(tmp_path / "out")
    assert set(dataset) == {"train", "validation", "test"}
    test_row = dataset["test"][0]
    assert test_row["source"] == "phantom" and test_row["lesion_id"] == rows[5]["lesion_id"]
    assert test_row["diagnosis"] in ("nevus", "melanoma") and test_row["patient_id"] == rows[5]["patient_id"]
    assert "sampler" not in dataset["train"].features
    assert json.loads(test_row["extra"])["skin_tone"] == rows[5]["extra"]["skin_tone"]


# ------------------------------------------------------------------------------------------ image metadata

SECRET = "PATIENT Jane Roe MRN 5555"


def stored_images(folder: Path) -> list[dict[str, Any]]:
    """Every row's stored image bytes and sha256 column, read straight from the parquet shards."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((folder / "data").rglob("*.parquet")):
        rows.extend(pq.read_table(path, columns=["image", "sha256", "file_name"]).to_pylist())
    return rows


def private_exif():
    from PIL import Image

    exif = Image.Exif()
    exif[0x010E] = SECRET  # ImageDescription
    exif[0xA431] = "SN-CAM-0042"  # BodySerialNumber
    exif.get_ifd(0x8825).update({1: "N", 2: (53.0, 16.0, 42.0)})  # GPS
    return exif


def add_private_metadata(path: Path, infotext: str | None = None, fmt: str = "PNG") -> Path:
    """Rewrite an image with a clinic's metadata: EXIF (GPS, serial), a comment, and PNG text chunks."""
    from PIL import Image, PngImagePlugin

    with Image.open(path) as image:
        image.load()
        pixels = image.convert("RGB")
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if infotext:
            info.add_text("parameters", infotext)
        info.add_text("Comment", SECRET)
        info.add(b"tIME", b"\x07\xe8\x01\x02\x03\x04\x05")
        pixels.save(path, "PNG", pnginfo=info, exif=private_exif())
    else:
        pixels.save(path, "JPEG", quality=90, exif=private_exif(), comment=SECRET.encode())
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def decoded_pixels(data: bytes) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def test_real_build_stores_images_without_metadata_deterministically(tmp_path):
    import hashlib

    folder = make_phantoms(tmp_path / "real", PhantomConfig(num_images=4, size=48, seed=1), progress=False)
    rows = read_jsonl(folder / "metadata.jsonl")
    add_private_metadata(folder / rows[0]["file_name"])
    jpeg_name = rows[1]["file_name"].replace(".png", ".jpg")
    (folder / rows[1]["file_name"]).rename(folder / jpeg_name)
    add_private_metadata(folder / jpeg_name, fmt="JPEG")
    rows[1]["file_name"] = jpeg_name
    for row in rows:
        row["sha256"] = sha256_file(folder / row["file_name"])  # the metadata row describes the file as found
    write_jsonl(folder / "metadata.jsonl", rows)
    originals = {row["file_name"]: (folder / row["file_name"]).read_bytes() for row in rows}
    assert SECRET.encode() in originals[rows[0]["file_name"]] and SECRET.encode() in originals[jpeg_name]

    result = build(folder, tmp_path / "out", config_name="real")
    assert result.num_rows == 4 and result.report["counts"] == {"metadata_removed": 2}
    stored = stored_images(tmp_path / "out")
    for row in stored:
        data = row["image"]["bytes"]
        assert SECRET.encode() not in data and b"Exif" not in data and b"tIME" not in data, row["file_name"]
        assert decoded_pixels(data) == decoded_pixels(originals[row["file_name"]]), "pixels must be untouched"
        assert row["sha256"] == hashlib.sha256(data).hexdigest(), "sha256 describes the stored bytes"
    untouched = {r["file_name"]: r["image"]["bytes"] for r in stored}
    assert untouched[rows[2]["file_name"]] == originals[rows[2]["file_name"]], "clean files are stored as they are"
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    assert SECRET not in manifest and "metadata_removed" in manifest

    again = build(folder, tmp_path / "again", config_name="real")
    assert again.num_rows == 4
    assert shard_names(tmp_path / "out") == shard_names(tmp_path / "again") == ["real/train-00000-of-00001.parquet"]
    for name in shard_names(tmp_path / "out"):
        assert (tmp_path / "out" / "data" / name).read_bytes() == (tmp_path / "again" / "data" / name).read_bytes()


def test_a1111_build_keeps_parameters_and_drops_other_metadata(tmp_path):
    import io

    from PIL import Image

    text = format_infotext("benign mole", None, {"Steps": 20, "Sampler": "Heun", "CFG scale": 7, "Seed": 5})
    folder = tmp_path / "a1111"
    clean = write_png(tmp_path / "clean.png", 0, "benign", infotext=text)  # parameters only
    exif = private_exif().tobytes()[6:]  # without the "Exif\0\0" prefix, as the eXIf chunk holds it
    private = clean.read_bytes()
    ihdr_end = 8 + 12 + 13
    private = (private[:ihdr_end] + png_chunk(b"tEXt", b"Comment\0" + SECRET.encode()) + png_chunk(b"eXIf", exif)
               + png_chunk(b"tIME", b"\x07\xe8\x01\x02\x03\x04\x05") + private[ihdr_end:])
    (folder / "benign").mkdir(parents=True)
    (folder / "benign" / "00000-5.png").write_bytes(private)
    shutil.copyfile(clean, folder / "benign" / "00001-5.png")  # a duplicate of the first once its metadata goes
    result = build(folder, tmp_path / "out", config_name="a1111")
    assert result.num_rows == 1 and result.report["counts"] == {"metadata_removed": 1, "duplicate": 1}
    (row,) = stored_images(tmp_path / "out")
    data = row["image"]["bytes"]
    assert SECRET.encode() not in data and b"Comment" not in data and b"eXIf" not in data
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["parameters"] == text
    assert data == clean.read_bytes(), "what remains is exactly a file with the parameters chunk alone"
    (loaded,) = load(tmp_path / "out", split="train")
    assert loaded["infotext"] == text and loaded["sampler"] == "Heun" and loaded["seed"] == 5


def test_a1111_infotext_with_non_finite_numbers_does_not_stop_the_build(tmp_path):
    folder = tmp_path / "a1111"
    write_png(folder / "benign" / "00000-1.png", 0, "benign",
              infotext="benign mole\nSteps: inf, Sampler: Euler, CFG scale: nan, Seed: 1e999")
    write_png(folder / "malignant" / "00001-2.png", 1, "malignant",
              infotext="malignant mole\nSteps: 1e400, Sampler: Euler, Seed: 99999999999999999999999")
    result = build(folder, tmp_path / "out", config_name="a1111")
    assert result.num_rows == 2
    rows = {r["file_name"]: r for r in load(tmp_path / "out", split="train")}
    first, second = rows["benign/00000-1.png"], rows["malignant/00001-2.png"]
    assert (first["steps"], first["cfg_scale"], first["seed"], first["sampler"]) == (None, None, None, "Euler")
    assert (second["steps"], second["seed"]) == (None, None)  # a huge seed is out of the int64 column's range


# ------------------------------------------------------------------------------------------ memorization audit ids


def test_mem_nearest_id_is_left_out_unless_asked(tmp_path, run_cli):
    training_name = "patient-jane-roe/ISIC_0000123.jpg"
    folder = write_generated_folder(tmp_path / "gen", n=2, qa={
        0: {"qa_passed": True, "mem_flagged": False, "mem_nearest_id": training_name, "mem_phash_distance": 90,
            "mem_cosine": 0.41},
        1: {"qa_passed": True, "mem_flagged": False, "mem_nearest_id": "ISIC_0000007", "mem_cosine": 0.3},
    })
    build(folder, tmp_path / "out")
    dataset = load(tmp_path / "out", split="train")
    assert "mem_nearest_id" not in dataset.features and sorted(dataset["mem_cosine"]) == [0.3, 0.41]
    assert all(training_name not in (row["extra"] or "") for row in dataset)
    assert training_name not in (tmp_path / "out" / "manifest.json").read_text()
    assert training_name not in (tmp_path / "out" / "README.md").read_text()

    build(folder, tmp_path / "with", include_mem_nearest_id=True)
    kept = load(tmp_path / "with", split="train")
    assert sorted(kept["mem_nearest_id"]) == sorted([training_name, "ISIC_0000007"])

    code, _, err = run_cli("build-dataset", folder, "-o", tmp_path / "cli", "--include-mem-nearest-id", "--quiet")
    assert code == 0, err
    assert training_name in load(tmp_path / "cli", split="train")["mem_nearest_id"]


# ------------------------------------------------------------------------------------------ units, config, CLI


def test_prompt_labels_and_transformation_tags():
    from dermt2im_hub.dataset.a1111 import infer_transformations, label_from_path, label_from_prompt

    assert label_from_prompt("Benign skin mole on centre of right hand") == "benign"
    assert label_from_prompt("benign or malignant?") is None and label_from_prompt(None) is None
    assert label_from_path("x/Malignant/y/z.png") == "malignant" and label_from_path("z.png") is None
    assert infer_transformations("small benign skin mole on centre of right hand") == [
        "size:small", "site:centre-of-right-hand"]
    assert infer_transformations("multiple malignant moles on dark skin, Fitzpatrick type V") == [
        "count:multiple", "skin:fitzpatrick-5"]


def test_hashed_split_is_stable_and_follows_fractions():
    from dermt2im_hub.dataset.splits import hashed_split

    names = [hashed_split(f"seed:{i}", [0.8, 0.1, 0.1]) for i in range(2000)]
    assert names == [hashed_split(f"seed:{i}", [0.8, 0.1, 0.1]) for i in range(2000)]
    assert 0.75 < names.count("train") / 2000 < 0.85
    assert set(hashed_split(f"k{i}", [1.0, 0.0, 0.0]) for i in range(100)) == {"train"}


@pytest.mark.parametrize("bad, message", [
    ({"config_name": "webui"}, "config_name"), ({"split_by": "lesion"}, "split_by"),
    ({"config_name": "real", "split_by": "seed"}, "real config"), ({"split_fractions": [0.5, 0.5]}, "three"),
    ({"max_shard_size": "10 parsecs"}, "size"), ({"push_to_hub": "no-slash"}, "ORG/NAME"),
])
def test_config_errors_name_the_problem(bad, message):
    from dermt2im_hub.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(DatasetConfig, overrides=bad)


def test_paper_and_demo_recipes_load_the_dataset_section():
    from dermt2im_hub.config import load_config

    root = Path(__file__).resolve().parents[1]
    for recipe in ("paper.yaml", "demo.yaml"):
        config = load_config(DatasetConfig, root / "configs" / recipe, section="dataset")
        assert config.config_name == "synthetic"


def test_cli_build_dataset_with_recipe_section(generated_dir, tmp_path, run_cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset:\n  split_by: seed\n  pretty_name: From a recipe\n  sample_grid_per_class: 0\n")
    code, out, err = run_cli("build-dataset", generated_dir, "--config-file", recipe, "-o", tmp_path / "out",
                             "--split-fractions", "[0.5, 0.5, 0.0]", "--quiet")
    assert code == 0, err
    assert "synthetic: 6 rows" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["split_by"] == "seed" and manifest["config"]["split_fractions"] == [0.5, 0.5, 0.0]
    assert manifest["extra"]["card"]["pretty_name"] == "From a recipe" and manifest["extra"]["card"]["sample_grid"] is None
    assert set(manifest["extra"]["card"]["splits"]) <= {"train", "validation"}


def test_builder_cache_follows_input_changes(tmp_path):
    from dermt2im_hub.dataset_builder import DermT2IM

    folder = write_generated_folder(tmp_path / "gen", n=2)
    first = DermT2IM(config_name="synthetic", data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    first.download_and_prepare()
    assert first.as_dataset(split="train").num_rows == 2
    write_generated_folder(folder, n=4)
    second = DermT2IM(config_name="synthetic", data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    second.download_and_prepare()
    assert second.as_dataset(split="train").num_rows == 4


# ------------------------------------------------------------------------------------------ build rate (recorded)


def test_build_rate_on_1000_small_phantoms(tmp_path):
    """Records the build rate on 1000 small PNGs (the 512-px benchmark is bench/dataset_build.py)."""
    from dermt2im_hub.utils.files import encode_png

    folder = tmp_path / "many"
    for label in CLASS_NAMES:
        (folder / label).mkdir(parents=True)
    bases = {label: render_phantom(i, label, PhantomConfig(size=64)) for i, label in enumerate(CLASS_NAMES)}
    for index in range(1000):
        label = CLASS_NAMES[index % 2]
        text = format_infotext(f"{label} mole", None, {"Steps": 22, "Sampler": "Euler a", "CFG scale": 7,
                                                         "Seed": index})
        png = encode_png(bases[label], pnginfo=pnginfo_for(text), compress_level=1)
        (folder / label / f"{index:05d}-{index}.png").write_bytes(png)
    start = time.perf_counter()
    result = build(folder, tmp_path / "out", config_name="a1111", sample_grid_per_class=0)
    elapsed = time.perf_counter() - start
    print(f"\nbuild rate: {result.num_rows / elapsed:.0f} images/s ({result.num_rows} 64-px PNGs in {elapsed:.2f} s)")
    assert result.num_rows == 1000 and result.report["counts"] == {}


def test_local_model_paths_stay_out_of_the_parquet(tmp_path):
    """The parquet shards are published byte for byte (push redacts text files only), so a local base model or
    LoRA folder is named by its last part in the `model`, `adapter` and `extra` columns."""
    folder = write_generated_folder(tmp_path / "gen", n=2)
    rows = read_jsonl(folder / "metadata.jsonl")
    for row in rows:
        row["base_model"] = "/home/alice/models/sd15"
        row["adapters"] = [dict(ADAPTER, id="/home/alice/clinic-x/run1/lora")]
    write_jsonl(folder / "metadata.jsonl", rows)
    out = tmp_path / "built"
    build(folder, out)
    shards = list((out / "data").rglob("*.parquet"))
    assert shards and all(b"/home/alice" not in p.read_bytes() for p in shards)
    dataset = load(out)["train"]
    assert set(dataset["model"]) == {"sd15"} and set(dataset["adapter"]) == {"lora"}
    assert "/home/alice" not in json.dumps(list(dataset["extra"]))


# ------------------------------------------------------------------------------------------ cards state what was recorded


def _card_text(folder: Path) -> str:
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md").text


def _card_data(folder: Path) -> dict[str, Any]:
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md").data.to_dict()


def _facts(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())["extra"]["card"]


# wording that only fits images this pipeline generated, or facts nothing in an a1111 build records
A1111_OVERCLAIMS = ("dermt2im-hub's\nreproduction", "reproduction of Derm-T2IM", "fine-tuned on ISIC",
                    "hair was removed with DullRazor", "removed with DullRazor before training, which",
                    "the licence the inputs impose", "Hair was removed")


def test_a1111_card_states_only_what_the_infotext_records(tmp_path):
    text = format_infotext("benign mole on neck", None, {"Steps": 20, "Sampler": "Heun", "CFG scale": 7,
                                                         "Seed": 5, "Size": (64, 64), "Model hash": "8d72386f9b",
                                                         "Model": "Skin Mole_lora"})
    write_png(tmp_path / "in" / "benign" / "00000-5.png", 0, "benign", infotext=text)
    write_png(tmp_path / "in" / "malignant" / "00001-6.png", 1, "malignant",
              infotext=text.replace("benign", "malignant").replace("Seed: 5", "Seed: 6"))
    build(tmp_path / "in", tmp_path / "out", config_name="a1111")
    card, data = _card_text(tmp_path / "out"), _card_data(tmp_path / "out")
    for claim in A1111_OVERCLAIMS:
        assert claim not in card, claim
    assert "Third-party PNG images, read as AUTOMATIC1111" in card and "did not generate them" in card
    assert data["license"] == "unknown" and "licence: not recorded" in card
    assert "lora" not in data["tags"]  # no adapter was recorded
    # the model hash is the PNG's own claim, labelled as such, not a sha256 dermt2im-hub computed
    (model,) = _facts(tmp_path / "out")["base_models"]
    assert model["sha256"] == "8d72386f9b" and model["hash_of"].startswith("A1111 \"Model hash\"")
    assert '| Skin Mole_lora | 8d72386f9b | A1111 "Model hash" from the PNG infotext' in card
    # a licence given by the user is stated as recorded
    build(tmp_path / "in", tmp_path / "licensed", config_name="a1111", license="cc-by-4.0")
    assert _card_data(tmp_path / "licensed")["license"] == "cc-by-4.0"
    assert "`cc-by-4.0` (as recorded by the run)" in _card_text(tmp_path / "licensed")


def test_a1111_card_of_the_authors_samples_makes_no_pipeline_claims(shared_data, tmp_path):
    sample = shared_data / "dermt2im-sample"
    if not sample.is_dir():
        pytest.skip(f"{sample} is absent: this test needs the real samples in ../shared/data/dermt2im-sample")
    build(sample, tmp_path / "out", config_name="a1111", sample_grid_per_class=0)
    card = _card_text(tmp_path / "out")
    for claim in A1111_OVERCLAIMS:
        assert claim not in card, claim
    assert _card_data(tmp_path / "out")["license"] == "unknown"


def test_synthetic_card_names_what_the_base_model_hash_is_of(generated_dir, built_dir, tmp_path):
    from dermt2im_hub.manifest import write_manifest

    unet = "unet/diffusion_pytorch_model.safetensors"
    folder = tmp_path / "generated"
    shutil.copytree(generated_dir, folder)
    write_manifest(folder, "generate", extra={"base_model": {"id": "/models/tiny-sd15", "kind": "folder",
                                                             "sha256": "cd" * 32, "hashed_file": unet}})
    build(folder, tmp_path / "out")
    (model,) = _facts(tmp_path / "out")["base_models"]
    assert model == {"id": "tiny-sd15", "sha256": "cd" * 32, "hash_of": f"sha256 of {unet}", "revision": "r1"}
    card = _card_text(tmp_path / "out")
    assert f"| tiny-sd15 | {'cd' * 32} | sha256 of {unet} |" in card
    assert "made by dermt2im-hub's\n`generate` stage" in card and "fine-tuned on ISIC" not in card
    assert "| org/dermt2im-lora | pytorch_lora_weights.safetensors | " + "ab" * 32 + " | 1 |" in card
    # a folder built without its generate manifest: the hash is shown, what it is of is not recorded
    (model,) = _facts(built_dir)["base_models"]
    assert model["hash_of"] is None and f"| tiny-sd15 | {'cd' * 32} | not recorded |" in _card_text(built_dir)


def test_real_card_states_the_recorded_preprocessing(tmp_path):
    from dermt2im_hub.manifest import write_manifest

    folder = make_phantoms(tmp_path / "real", PhantomConfig(num_images=4, size=48, seed=1), progress=False)
    rows = read_jsonl(folder / "metadata.jsonl")
    for row in rows:
        row["split"] = "train"
    write_jsonl(folder / "metadata.jsonl", rows)
    build(folder, tmp_path / "phantoms-out", config_name="real", sample_grid_per_class=0)
    facts, card = _facts(tmp_path / "phantoms-out"), _card_text(tmp_path / "phantoms-out")
    assert facts["preprocessing"] == [{"input": "real", "stage": "phantoms", "source": None, "size": None,
                                       "hair_removal": None}]
    assert facts["hair_removal"] is None
    for claim in ("(hair removal, resize and centre crop)", "grouped by lesion and patient",
                  "Synthetic images are not real lesions", "Hair was removed", "Stable Diffusion v1.5"):
        assert claim not in card, claim
    assert "Sources recorded in the\n`source` column: phantom: 4" in card
    assert "| real | phantoms | not recorded | not recorded | not recorded |" in card
    # a preprocess output that recorded no hair removal says so
    write_manifest(folder, "preprocess", extra={"card": {"source": "isic", "size": 48, "hair_removal": False}})
    build(folder, tmp_path / "out", config_name="real", sample_grid_per_class=0)
    card = _card_text(tmp_path / "out")
    assert _facts(tmp_path / "out")["hair_removal"] is False
    assert "| real | preprocess | isic | 48 | no |" in card and "No hair removal was applied (as recorded)" in card


# ------------------------------------------------------------------------------------------ packaging


def test_the_builder_takes_every_option_from_the_dataset_config(generated_dir):
    """make_builder passes the DatasetConfig fields by name: every builder option reaches the builder."""
    import subprocess
    import sys

    from dermt2im_hub.dataset.builder import builder_option_names, builder_options
    from dermt2im_hub.dataset.export import make_builder

    config = DatasetConfig(split_by="seed", split_fractions=[0.5, 0.25, 0.25], include_rejected=True,
                           verify_pixels=True, allow_memorized=True, include_mem_nearest_id=True)
    assert set(builder_options(config)) == (set(builder_option_names()) - {"inputs"}) | {"config_name"}
    builder = make_builder(config, [generated_dir])
    for name in set(builder_option_names()) - {"inputs"}:
        expected = getattr(config, name)
        assert getattr(builder.config, name) == (tuple(expected) if isinstance(expected, list) else expected), name
    # the library never imports the entry point (neither as dataset_builder nor as dermt2im_hub.dataset_builder)
    code = ("import sys; from dermt2im_hub.dataset.export import make_builder, build_dataset;"
            "from dermt2im_hub.dataset import DatasetConfig; make_builder(DatasetConfig(), [sys.argv[1]]);"
            "print(sorted(m for m in sys.modules if m.split('.')[-1] == 'dataset_builder'))")
    ran = subprocess.run([sys.executable, "-c", code, str(generated_dir)], capture_output=True, text=True,
                         timeout=300, cwd=generated_dir)
    assert ran.returncode == 0 and ran.stdout.strip() == "[]", ran.stderr[-2000:]


def test_the_entry_point_reexports_the_library_builder():
    from dermt2im_hub.dataset_builder import DermT2IM as exported
    from dermt2im_hub.dataset_builder.dermt2im import DermT2IM as from_module

    from dermt2im_hub.dataset.builder import DermT2IM

    assert exported is DermT2IM is from_module
    import dermt2im_hub.dataset_builder as entry

    assert Path(entry.__file__).parent.name == "dataset_builder"
