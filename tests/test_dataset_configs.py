"""Hub-native configs: per-sampler subsets of a built folder, and several builder configs in one dataset repo.

A built synthetic or a1111 folder offers one Hub config per sampler beside the whole config
(`load_dataset(DIR, "synthetic-euler-a")`); pushing builds of several configs into one repo keeps each config's
files under data/<config>/ and merges the card's `configs:` block (dermt2im_hub.dataset.layout, hub.configs).
The Hub tests push through the publishing gate into the local Hub server and load in a fresh process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dataset import build, load, write_generated_folder

from dermt2im_hub.dataset.layout import sampler_slug
from dermt2im_hub.hub.configs import merge_configs, merge_dataset_info, merge_front_matter
from dermt2im_hub.testing.hub_server import PublishingApi
from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms
from dermt2im_hub.utils.files import read_jsonl, write_jsonl

REPO = "org/dermt2im"


# ---------------------------------------------------------------------------------------------- naming


@pytest.mark.parametrize(("sampler", "slug"), [
    ("Euler a", "euler-a"), ("Euler", "euler"), ("DPM++ 2M Karras", "dpmpp-2m-karras"),
    ("DPM++ 2M SDE Karras", "dpmpp-2m-sde-karras"), ("PLMS", "plms"), (None, "not-recorded"), ("  ", "not-recorded"),
    ("../../etc/passwd", "etc-passwd"), ("Euler a\x00<script>", "euler-a-script"),
])
def test_sampler_slugs_are_hub_safe_names(sampler, slug):
    assert sampler_slug(sampler) == slug


def test_sampler_slugs_of_untrusted_names_stay_short_and_never_empty():
    assert len(sampler_slug("x" * 500)) <= 48 and set(sampler_slug("x" * 500)) == {"x"}
    odd = sampler_slug("+++"), sampler_slug("日本語")
    assert odd[0] == "ppp" and odd[1].startswith("sampler-") and len(odd[1]) == len("sampler-") + 8


# ---------------------------------------------------------------------------------------------- local folder


def test_each_sampler_config_of_a_local_folder_loads_exactly_its_rows(tmp_path):
    generated = write_generated_folder(tmp_path / "generated", n=6)
    folder = tmp_path / "dermt2im"
    build(generated, folder, split_by="seed", split_fractions=[0.5, 0.25, 0.25])
    rows = read_jsonl(generated / "metadata.jsonl")
    whole = load(folder, name="synthetic")
    assert load(folder).keys() == whole.keys()  # the whole config is the default
    everything = {row["sha256"]: split for split, data in whole.items() for row in data}
    assert sorted(everything) == sorted(r["sha256"] for r in rows)
    seen = []
    for sampler in ("Euler", "Euler a", "PLMS"):
        subset = load(folder, name=f"synthetic-{sampler_slug(sampler)}")
        got = {row["sha256"]: split for split, data in subset.items() for row in data}
        assert sorted(got) == sorted(r["sha256"] for r in rows if r["sampler"] == sampler), sampler
        assert all(everything[sha] == split for sha, split in got.items()), "a row keeps its split"
        for split, data in subset.items():
            assert data.features == whole[split].features, "same typed features (Image, ClassLabel ...)"
            assert set(data["sampler"]) == {sampler}
        seen.extend(got)
    assert sorted(seen) == sorted(everything), "the subsets partition the whole config"
    card = json.loads((folder / "manifest.json").read_text())["extra"]["card"]
    assert card["config_rows"]["synthetic"] == card["splits"]
    assert card["subset_samplers"] == {"synthetic-euler": ["Euler"], "synthetic-euler-a": ["Euler a"],
                                       "synthetic-plms": ["PLMS"]}
    with pytest.raises(ValueError, match="synthetic-euler-a"):  # the error names the configs there are
        load(folder, name="synthetic-heun")


# ---------------------------------------------------------------------------------------------- merging


def _configs(name: str, subsets=(), default=True, prefix=None) -> list[dict]:
    prefix = prefix or f"data/{name}"
    whole = {"config_name": name, "data_files": [{"split": "train", "path": f"{prefix}/*/train-*.parquet"}]}
    if default:
        whole["default"] = True
    return [whole, *({"config_name": f"{name}-{s}", "data_files": [{"split": "train", "path": f"{prefix}/{s}/train-*"}]}
                     for s in subsets)]


def test_merged_configs_keep_the_remote_ones_and_one_default():
    remote = _configs("synthetic", ["euler", "plms"])
    merged = merge_configs(_configs("real"), remote, "real")
    assert [c["config_name"] for c in merged] == ["synthetic", "synthetic-euler", "synthetic-plms", "real"]
    assert [c["config_name"] for c in merged if c.get("default")] == ["synthetic"], "the remote default stays"
    # re-pushing synthetic with one sampler fewer: the same names are replaced, and a remote config that reads
    # only data/synthetic/ (whose files the push replaces) goes too; real stays
    again = merge_configs(_configs("synthetic", ["euler"]), merged, "synthetic")
    assert [c["config_name"] for c in again] == ["synthetic", "synthetic-euler", "real"]
    assert [c["config_name"] for c in again if c.get("default")] == ["synthetic"]
    # re-pushing a config listed before the remote default: that default still stays the only one
    first = [*_configs("real", default=False), *_configs("synthetic")]
    again = merge_configs(_configs("real"), first, "real")
    assert [c["config_name"] for c in again] == ["real", "synthetic"]
    assert [c["config_name"] for c in again if c.get("default")] == ["synthetic"]
    # a remote card without a default: the pushed config becomes it; a hand-written config elsewhere is kept
    hand = [{"config_name": "notes", "data_files": "extra/*.csv"}]
    assert merge_configs(_configs("real"), hand, "real") == [*hand, *_configs("real")]
    # several remote defaults (a hand-edited card): exactly one is left
    two = _configs("synthetic") + [dict(_configs("a1111")[0])]
    assert sum(bool(c.get("default")) for c in merge_configs(_configs("real"), two, "real")) == 1
    assert merge_configs(_configs("real"), None, "real") == _configs("real")


def test_merged_dataset_info_follows_the_merged_configs():
    ours = [{"config_name": "real", "splits": [{"name": "train", "num_examples": 4}]}]
    theirs = [{"config_name": "synthetic", "splits": [{"name": "train", "num_examples": 6}]},
              {"config_name": "synthetic-plms", "splits": [{"name": "train", "num_examples": 2}]}]
    configs = merge_configs(_configs("real"), _configs("synthetic"), "real")
    assert [i["config_name"] for i in merge_dataset_info(ours, theirs, configs)] == ["synthetic", "real"]
    single = {"features": [], "splits": [{"name": "train", "num_examples": 6}]}  # one config: a mapping
    assert merge_dataset_info(ours, single, [{"config_name": "default"}]) == [{"config_name": "default", **single}]


def test_merged_front_matter_describes_both_configs():
    theirs = {"license": "cc-by-nc-4.0", "tags": ["dermatology", "synthetic"], "pretty_name": "Derm-T2IM",
              "language": ["en"], "annotations_creators": ["machine-generated"], "configs": [{"config_name": "x"}]}
    ours = {"license": "unknown", "tags": ["dermatology", "dermoscopy"], "pretty_name": "real images",
            "annotations_creators": ["expert-generated"], "configs": [{"config_name": "real"}]}
    merged = merge_front_matter(ours, theirs)
    assert merged["license"] == ["cc-by-nc-4.0", "unknown"] and merged["pretty_name"] == "Derm-T2IM"
    assert merged["tags"] == ["dermatology", "synthetic", "dermoscopy"] and merged["language"] == ["en"]
    assert merged["annotations_creators"] == ["machine-generated", "expert-generated"]
    assert merged["configs"] == [{"config_name": "real"}], "configs are merged by merge_configs, not here"
    assert merge_front_matter({"license": "mit"}, {"license": "mit"})["license"] == "mit"


# ---------------------------------------------------------------------------------------------- the Hub


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(root).parts)


def _real_folder(root: Path) -> Path:
    """A real-config input: phantoms (no patient behind them) with a split column."""
    folder = make_phantoms(root, PhantomConfig(num_images=6, size=32, seed=3), progress=False)
    rows = read_jsonl(folder / "metadata.jsonl")
    for row, split in zip(rows, ["train", "train", "train", "train", "test", "test"]):
        row["split"] = split
    write_jsonl(folder / "metadata.jsonl", rows)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A synthetic build (6 rows, samplers Euler, Euler a, PLMS), a smaller one (Euler, Euler a) and a real one."""
    root = tmp_path_factory.mktemp("configs")
    folders = {"synthetic": root / "synthetic", "smaller": root / "synthetic-2", "real": root / "real"}
    build(write_generated_folder(root / "generated", n=6), folders["synthetic"])
    build(write_generated_folder(root / "generated-2", n=2), folders["smaller"])
    build(_real_folder(root / "phantoms"), folders["real"], config_name="real", sample_grid_per_class=0)
    return folders


def test_dermt2im_push_adds_a_config_to_a_repo_through_the_gate(built, run_cli, monkeypatch):
    """The CLI's push path (push_folder) does what push_dataset does: a second config joins the repo."""
    import huggingface_hub
    from huggingface_hub import DatasetCard
    from test_hub_push import RecordingHubApiDouble

    api = RecordingHubApiDouble()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    for name in ("real", "synthetic", "smaller"):
        code, out, err = run_cli("push", built[name], "--repo-id", REPO)
        assert code == 0, err
    assert [kw.get("delete_patterns") for kw in api.call("upload_folder")] == [
        ["data/real/*"], ["data/synthetic/*"], ["data/synthetic/*"]]
    assert not [p for p in api.uploaded if p.startswith("data/synthetic/plms/")]
    assert {"data/real/manifest.json", "data/synthetic/manifest.json"} <= set(api.uploaded)
    card = DatasetCard(api.uploaded["README.md"].decode())
    configs = card.data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == ["real", "synthetic", "synthetic-euler", "synthetic-euler-a"]
    assert [c["config_name"] for c in configs if c.get("default")] == ["real"], "the first push's default stays"
    assert [i["config_name"] for i in card.data.to_dict()["dataset_info"]] == [c["config_name"] for c in configs]


_CONSUME = r"""
import json, sys
from datasets import ClassLabel, Image, load_dataset
from huggingface_hub import DatasetCard

repo = sys.argv[1]
loaded = {name: load_dataset(repo, name) for name in ("synthetic", "real", "synthetic-euler", "synthetic-euler-a")}
card = DatasetCard.load(repo, repo_type="dataset")
print(json.dumps({
    "rows": {name: {split: list(data["sha256"]) for split, data in ds.items()} for name, ds in loaded.items()},
    "samplers": sorted(set(loaded["synthetic-euler"]["train"]["sampler"])),
    "typed": all(isinstance(d.features["label"], ClassLabel) and isinstance(d.features["image"], Image)
                 for ds in loaded.values() for d in ds.values()),
    "default_rows": sum(d.num_rows for d in load_dataset(repo).values()),
    "configs": card.data.to_dict()["configs"],
    "text": card.text,
}))
"""


@pytest.mark.integration
def test_two_configs_share_one_repo_and_a_repush_replaces_only_its_own(local_hub, built):
    from dermt2im_hub.dataset.export import push_dataset

    api = PublishingApi(local_hub)
    synthetic, real, smaller = built["synthetic"], built["real"], built["smaller"]  # smaller: no PLMS rows
    repo = local_hub.repo_path(REPO, "dataset")

    push_dataset(synthetic, REPO, api=api)
    push_dataset(real, REPO, api=api)
    files = _files(repo)
    assert {"data/synthetic/manifest.json", "data/real/manifest.json", "data/real/config.yaml",
            "data/synthetic/plms/train-00000-of-00001.parquet", "data/real/test-00000-of-00001.parquet",
            "README.md"} <= set(files)
    assert not [f for f in files if f.count("/") == 0 and f not in ("README.md", ".gitattributes")], files
    real_files = {f: (repo / f).read_bytes() for f in files if f.startswith("data/real/")}

    push_dataset(smaller, REPO, api=api)  # synthetic again, without PLMS rows
    files = _files(repo)
    assert {f: (repo / f).read_bytes() for f in files if f.startswith("data/real/")} == real_files
    assert not [f for f in files if f.startswith("data/synthetic/plms/")], "the old synthetic files are gone"

    result = local_hub.run_python(_CONSUME, REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    small_rows = read_jsonl(smaller.parent / "generated-2" / "metadata.jsonl")
    real_rows = {r["split"]: r for r in read_jsonl(real.parent / "phantoms" / "metadata.jsonl")}
    assert sorted(seen["rows"]["synthetic"]["train"]) == sorted(r["sha256"] for r in small_rows)
    assert seen["rows"]["synthetic-euler"]["train"] == [r["sha256"] for r in small_rows if r["sampler"] == "Euler"]
    assert seen["samplers"] == ["Euler"] and len(seen["rows"]["synthetic-euler-a"]["train"]) == 1
    assert {split: len(shas) for split, shas in seen["rows"]["real"].items()} == {"train": 4, "test": 2}
    assert set(real_rows) == {"train", "test"} and seen["typed"]
    assert seen["default_rows"] == 2, "synthetic, pushed first, stays the default"
    names = [c["config_name"] for c in seen["configs"]]
    assert sorted(names) == ["real", "synthetic", "synthetic-euler", "synthetic-euler-a"]
    assert [c["config_name"] for c in seen["configs"] if c.get("default")] == ["synthetic"]
    assert "| `real` | train: 4, test: 2 |" in seen["text"] and "| `synthetic` (default) | train: 2 |" in seen["text"]
    assert "holds several configurations" in seen["text"]
