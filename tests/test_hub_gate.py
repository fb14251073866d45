"""The publishing gate: every push path (dermt2im push, dermt2im run's run.push, push_dataset) makes the same
decision on the same folder; outward symlinks never go up; the pushed card names the target repo; a malformed
manifest is a clear error. Pushes go to the recording test double of test_hub_push."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_hub_push import RecordingHubApiDouble

from dermt2im_hub.hub.gate import Permissions, PushError, review
from dermt2im_hub.hub.push import push_folder
from dermt2im_hub.manifest import write_manifest

REPO = "my-org/dermt2im"
SECRET = b"root:x:0:0:secret-outside-the-folder\n"


def _built_dataset(folder: Path, *, config_name: str = "synthetic", status: str = "complete",
                   columns: dict | None = None) -> Path:
    """A build-dataset output as the gate sees it: manifest, one parquet shard, a placeholder card."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data" / config_name).mkdir(parents=True)
    table = {"label": [0, 1], "mem_flagged": [False, False], **(columns or {})}
    pq.write_table(pa.table(table), folder / "data" / config_name / "train-00000-of-00001.parquet")
    write_manifest(folder, "build_dataset", config={"config_name": config_name}, status=status,
                   extra={"card": {"builder_config": config_name, "num_rows": 2}})
    (folder / "README.md").write_text("# card for YOUR_ORG/YOUR_REPO\n")
    return folder


# folder case -> (how to make it, the phrase of the refusal, or None when it is pushed)
CASES = {
    "clean": (lambda f: _built_dataset(f), None),
    "memorized": (lambda f: _built_dataset(f, columns={"mem_flagged": [False, True]}), "memorization audit"),
    "training_references": (lambda f: _built_dataset(f, columns={"mem_nearest_id": [None, "DOE_Jane_MRN1"]}),
                            "mem_nearest_id"),
    "real_images": (lambda f: _built_dataset(f, config_name="real"), "real patient-derived images"),
    "unfinished": (lambda f: _built_dataset(f, status="failed"), "did not finish"),
    "outward_link": (lambda f: _with_outward_link(_built_dataset(f)), None),
}


def _with_outward_link(folder: Path) -> Path:
    outside = folder.parent.parent / "passwd"
    outside.write_bytes(SECRET)
    (folder / "notes.txt").symlink_to(outside)
    return folder


def _through_cli(folder: Path, run_cli, monkeypatch):
    import huggingface_hub

    doubles = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: doubles.append(RecordingHubApiDouble()) or doubles[-1])
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    code, _, err = run_cli("push", folder, "--repo-id", REPO)
    if code != 0:
        return "refused", err, None
    return "pushed", None, doubles[0]


def _through_run(folder: Path, run_cli, monkeypatch):
    """dermt2im run's push step (pipeline.stages.push_all) with run.push.dataset set."""
    import huggingface_hub

    from dermt2im_hub.pipeline.config import PushTargets, RunConfig
    from dermt2im_hub.pipeline.stages import RunLayout

    root = folder.parent / "run"
    shutil.copytree(folder, root / "datasets" / "synthetic", symlinks=True)
    from dermt2im_hub.pipeline.stages import push_all

    doubles = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: doubles.append(RecordingHubApiDouble()) or doubles[-1])
    try:
        push_all(RunConfig(output=str(root), push=PushTargets(dataset=REPO)), RunLayout(root))
    except (PushError, ValueError) as error:
        return "refused", str(error), None
    return "pushed", None, doubles[0]


def _through_push_dataset(folder: Path, run_cli, monkeypatch):
    from dermt2im_hub.dataset.export import push_dataset

    api = RecordingHubApiDouble()
    try:
        push_dataset(folder, REPO, api=api)
    except (PushError, ValueError) as error:
        return "refused", str(error), None
    return "pushed", None, api


ENTRY_POINTS = {"dermt2im push": _through_cli, "dermt2im run": _through_run, "push_dataset": _through_push_dataset}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_push_path_makes_the_same_decision(case, tmp_path, run_cli, monkeypatch):
    make, refusal = CASES[case]
    decisions = {}
    for name, entry_point in ENTRY_POINTS.items():
        folder = make(tmp_path / name / "dataset")
        outcome, message, api = entry_point(folder, run_cli, monkeypatch)
        if refusal is None:
            assert outcome == "pushed", f"{name} refused {case}: {message}"
            assert all(SECRET not in data for data in api.uploaded.values()), name
            decisions[name] = sorted(api.uploaded)
        else:
            assert outcome == "refused" and refusal in message, f"{name} on {case}: {outcome} {message}"
            assert "DOE_Jane" not in message
            decisions[name] = refusal
    assert len(set(map(str, decisions.values()))) == 1, decisions
    if refusal is None:
        assert decisions["push_dataset"] == ["README.md", "data/synthetic/manifest.json",
                                             "data/synthetic/train-00000-of-00001.parquet"]


def test_permissions_lift_exactly_their_rule(tmp_path):
    memorized = _built_dataset(tmp_path / "memorized", columns={"mem_flagged": [True, False]})
    with pytest.raises(PushError, match="memorization"):
        review(memorized, REPO, permissions=Permissions(allow_real_images=True))
    assert review(memorized, REPO, permissions=Permissions(allow_memorized=True)).repo_type == "dataset"
    real = _built_dataset(tmp_path / "real", config_name="real")
    with pytest.raises(PushError, match="real patient-derived"):
        review(real, REPO, permissions=Permissions(allow_memorized=True))
    assert review(real, REPO, permissions=Permissions(allow_real_images=True)).files


# ---------------------------------------------------------------------------------------------- symlinks


@pytest.fixture
def linked_folder(tmp_path):
    """A model folder holding a link to a file outside it, a link to a folder outside it and a link to a file
    inside it (which goes up as that file)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    (outside / "token").write_bytes(b"hf_SecretTokenThatMustNeverLeave\n")
    folder = tmp_path / "lora"
    write_manifest(folder, "train_lora")
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (folder / "notes.txt").symlink_to(outside / "passwd")
    (folder / "hf-home").symlink_to(outside, target_is_directory=True)
    (folder / "weights-link.safetensors").symlink_to(folder / "pytorch_lora_weights.safetensors")
    (folder / "dangling.txt").symlink_to(tmp_path / "missing")
    return folder


def test_push_never_follows_links_out_of_the_folder(linked_folder, run_cli):
    api = RecordingHubApiDouble()
    push_folder(linked_folder, "my-org/lora", api=api)
    assert sorted(api.uploaded) == ["README.md", "manifest.json", "pytorch_lora_weights.safetensors",
                                    "weights-link.safetensors"]
    assert api.uploaded["weights-link.safetensors"] == b"weights"
    assert all(SECRET not in data and b"hf_Secret" not in data for data in api.uploaded.values())

    code, out, err = run_cli("push", linked_folder, "--repo-id", "my-org/lora", "--dry-run")
    assert code == 0, err
    assert "notes.txt" not in out and "hf-home" not in out and "passwd" not in out
    assert "not uploading 3 symbolic link(s)" in err and "notes.txt" in err and "hf-home" in err


# ---------------------------------------------------------------------------------------------- the card


def test_the_pushed_card_names_the_target_repo(tmp_path, run_cli, monkeypatch):
    """`card` was rendered without a repo id (placeholders); the push sends the card for --repo-id and leaves
    the local one as it is."""
    import huggingface_hub
    from huggingface_hub import ModelCard

    from dermt2im_hub.hub.cards import render_card

    folder = tmp_path / "classifier"
    facts = {"model_name": "vit_base_patch16_224", "labels": ["benign", "malignant"],
             "results": [{"test_set": "isic-test", "split": "test", "metrics": {"accuracy": 0.8}}]}
    write_manifest(folder, "train_classifier", extra={"card": facts})
    (folder / "model.safetensors").write_bytes(b"weights")
    local = render_card(folder).read_text()
    assert "YOUR_ORG/YOUR_REPO" in local
    doubles = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: doubles.append(RecordingHubApiDouble()) or doubles[-1])
    monkeypatch.setattr("dermt2im_hub.hub.online.hub_offline", lambda: False)
    code, _, err = run_cli("push", folder, "--repo-id", "my-org/derm-vit")
    assert code == 0, err
    pushed = ModelCard(doubles[0].uploaded["README.md"].decode())
    assert "YOUR_" not in pushed.content
    assert pushed.text.lstrip().startswith("# derm-vit:") and '"hf-hub:my-org/derm-vit"' in pushed.text
    assert pushed.data.model_name == "derm-vit"
    assert (folder / "README.md").read_text() == local, "the local folder is only read"


# ---------------------------------------------------------------------------------------------- bad manifests


@pytest.mark.parametrize(("text", "said"), [("{not json", "cannot be read"), ("[1, 2]", "JSON list"),
                                            ("\"text\"", "JSON str")])
def test_card_and_push_on_a_malformed_manifest_fail_cleanly(text, said, tmp_path, run_cli):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "manifest.json").write_text(text)
    (folder / "weights.safetensors").write_bytes(b"w")
    code, out, err = run_cli("card", folder)
    assert code == 2 and said in err and "Traceback" not in err and not (folder / "README.md").exists()
    code, out, err = run_cli("push", folder, "--repo-id", "my-org/x", "--dry-run")
    assert code == 2 and said in err and "Traceback" not in err and not out


def test_a_manifest_inside_a_pushed_folder_is_checked_too(tmp_path):
    root = tmp_path / "run"
    _built_dataset(root / "datasets" / "synthetic")
    (root / "datasets" / "synthetic" / "manifest.json").write_text(json.dumps(["not", "a", "manifest"]))
    with pytest.raises(PushError, match="JSON list"):
        review(root, REPO)


def test_a_qa_folder_holds_real_crops_unless_its_reference_images_are_phantoms(tmp_path, phantom_dir):
    """closest_pairs/ holds crops of the QA stage's `real` reference images: phantoms in the demo."""
    for name, images in (("phantoms", phantom_dir), ("isic", tmp_path / "isic")):
        write_manifest(tmp_path / f"pre-{name}", "preprocess", config={"images": str(images)})
        qa = tmp_path / f"qa-{name}"
        write_manifest(qa, "qa", inputs={"real": tmp_path / f"pre-{name}"})
        (qa / "closest_pairs").mkdir()
        (qa / "closest_pairs" / "00000.png").write_bytes(b"png")
    assert review(tmp_path / "qa-phantoms", REPO).files
    with pytest.raises(PushError, match="real patient-derived images"):
        review(tmp_path / "qa-isic", REPO)


def test_card_on_facts_of_the_wrong_shape_fails_cleanly(tmp_path, run_cli):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"stage": "train_lora", "extra": {"card": {
        "sample_images": 5, "instance_prompts": 3, "weight_files": [1], "hyperparameters": "x"}}}))
    code, out, err = run_cli("card", folder)
    assert code == 0 and "Traceback" not in err, err  # facts of the wrong type read as not recorded
    assert "## Sample images\n\nnot recorded" in (folder / "README.md").read_text()


def test_a_raw_folder_of_images_needs_allow_real_images(tmp_path, shared_data):
    """Issue 20.10: a folder of real JPEGs that no stage wrote (no manifest) is refused like real images;
    images inside a stage folder that records them are judged by that stage's rules instead."""
    raw = tmp_path / "clinic-photos"
    raw.mkdir()
    for path in sorted((shared_data / "isic-sample" / "images").glob("*.jpg"))[:2]:
        shutil.copy(path, raw / path.name)
    with pytest.raises(PushError, match="no dermt2im stage wrote"):
        review(raw, REPO)
    assert len(review(raw, REPO, permissions=Permissions(allow_real_images=True)).files) == 2
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("no images here\n")
    assert review(notes, REPO).files == ["README.md"]


def test_run_pushes_the_synthetic_and_real_datasets_as_two_configs_of_one_repo(tmp_path, monkeypatch):
    """run.push.dataset and run.push.real_dataset may name one repo: both pushes happen, both are listed, and the
    repo's card holds both configs (the second push merges with the first's card)."""
    import huggingface_hub
    import yaml

    from dermt2im_hub.dataset.layout import hub_configs
    from dermt2im_hub.pipeline.config import PushTargets, RunConfig
    from dermt2im_hub.pipeline.stages import RunLayout, push_all

    root = tmp_path / "run"
    for name in ("synthetic", "real"):
        folder = _built_dataset(root / "datasets" / name, config_name=name)
        card = {"builder_config": name, "num_rows": 2, "configs": hub_configs(name, {"train": 1}, {})}
        write_manifest(folder, "build_dataset", config={"config_name": name}, extra={"card": card})
    api = RecordingHubApiDouble()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    pushed = push_all(RunConfig(output=str(root), push=PushTargets(dataset=REPO, real_dataset=REPO)), RunLayout(root))
    assert sorted(pushed) == [f"{REPO} (datasets/real)", f"{REPO} (datasets/synthetic)"]
    front = yaml.safe_load(api.uploaded["README.md"].decode().split("---")[1])
    assert sorted(c["config_name"] for c in front["configs"]) == ["real", "synthetic"]
    assert any(name.startswith("data/real/") for name in api.uploaded)
    assert any(name.startswith("data/synthetic/") for name in api.uploaded)
