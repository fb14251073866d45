"""Cards: each template renders from a minimal manifest, parses back through ModelCard/DatasetCard with the
front matter the Hub expects, and says "not recorded" for every fact the run did not write down."""

from __future__ import annotations

import re

import jinja2
import pytest
from huggingface_hub import DatasetCard, ModelCard, metadata_load

from dermt2im_hub.hub.cards import (
    KINDS,
    NOT_RECORDED,
    PARTIALS,
    build_card,
    card_kind,
    read_template,
    render_card,
)
from dermt2im_hub.manifest import write_manifest

LORA_FACTS = {
    "base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "base_model_revision": "main",
    "base_model_sha256": "ab" * 32,
    "instance_prompts": {"benign": "benign mole", "malignant": "malignant mole"},
    "weight_files": {"diffusers": "pytorch_lora_weights.safetensors", "kohya": "dermt2im_kohya.safetensors"},
    "lora_rank": 8, "lora_alpha": 8, "text_encoder_lora": False,
    "hyperparameters": {"learning_rate": 1e-4, "train_batch_size": 2},
    "num_train_images": {"benign": 4, "malignant": 4},
    "training_data": "phantoms", "data_manifest_sha256": "cd" * 32, "test_exclusion_checked": True,
    "steps": 10, "epochs": 1, "final_loss": 0.1394, "training_seconds": 12.5, "hardware": "cpu",
    "sample_images": [{"path": "samples/benign-0.png", "prompt": "benign mole"},
                      {"path": "samples/malignant-0.png", "prompt": "malignant mole on neck"}],
    "license": "creativeml-openrail-m",
    "datasets": ["my-org/isic-seed"],
}
DATASET_FACTS = {
    "pretty_name": "Derm-T2IM synthetic (test)", "builder_config": "synthetic", "num_rows": 6, "splits": {"train": 4, "test": 2},
    "per_class": {"benign": 3, "malignant": 3}, "per_sampler": {"Euler": 6}, "per_steps": {"22": 6},
    "transformation_counts": {"size:tiny": 2}, "generation": {"cfg_scale": 7},
    "base_models": [{"id": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sha256": "ab" * 32}],
    "adapters": [{"id": "my-org/dermt2im-lora", "sha256": "ef" * 32, "scale": 1.0}],
    "sample_grid": "contact_sheet.png", "qa": {"passed": 6, "rejected": 0}, "memorization": {"flagged": 0},
    "skin_tone": {"light": 4, "tan": 2}, "license": "cc-by-nc-4.0", "source_datasets": ["my-org/isic-seed"],
    "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"},
                                                          {"split": "test", "path": "data/test-*.parquet"}]}],
}
CLASSIFIER_FACTS = {
    "model_name": "mobilenetv2_100", "pretrained_weights": "timm/mobilenetv2_100.ra_in1k", "num_labels": 2,
    "labels": ["benign", "malignant"],
    "training_mix": {"real_images": 25, "synthetic_images": 75, "synthetic_fraction": 0.75,
                     "datasets": ["my-org/dermt2im"]},
    "hyperparameters": {"lr": 3e-4}, "seed": 0,
    "results": [{"test_set": "isic-test", "split": "test", "metrics": {"accuracy": 0.81, "f1": 0.8},
                 "ci": {"accuracy": [0.78, 0.84]}},
                {"test_set": "ham10000-test", "split": "test", "metrics": {"accuracy": 0.73}}],
    "datasets": ["my-org/dermt2im"], "license": "cc-by-nc-4.0",
}
RESULTS_FACTS = {"table_markdown": "| model | acc |\n|---|---|\n| vit | 0.9 |", "plot": "accuracy.png",
                 "runs": [{"id": 1}, {"id": 2}], "models": ["vit"], "test_sets": ["isic-test"]}
STAGES = {"lora": "train_lora", "dataset": "build_dataset", "classifier": "train_classifier",
          "results": "leaderboard", "stage": "generate"}
FACTS = {"lora": LORA_FACTS, "dataset": DATASET_FACTS, "classifier": CLASSIFIER_FACTS, "results": RESULTS_FACTS,
         "stage": {"num_images": 6}}


def _write_folder(tmp_path, kind, facts):
    folder = tmp_path / kind
    write_manifest(folder, STAGES[kind], config={"seed": 0}, inputs={"data": "my-org/isic-seed"},
                   outputs={"num_files": 3}, extra={"card": facts})
    return folder


def _load(path, kind):
    return (DatasetCard if kind == "dataset" else ModelCard).load(path)


@pytest.mark.parametrize("kind", KINDS)
def test_card_kind_follows_the_stage(kind, tmp_path):
    assert card_kind({"stage": STAGES[kind]}) == kind


def test_lora_card_front_matter_and_body(tmp_path):
    path = render_card(_write_folder(tmp_path, "lora", LORA_FACTS), repo_id="my-org/dermt2im-lora")
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (data["library_name"], data["pipeline_tag"], data["license"]) == (
        "diffusers", "text-to-image", "creativeml-openrail-m")
    assert {"lora", "diffusers", "text-to-image", "stable-diffusion", "dermatology", "medical"} <= set(data["tags"])
    assert data["instance_prompt"] == "benign mole"
    assert data["widget"][1] == {"text": "malignant mole on neck", "output": {"url": "samples/malignant-0.png"}}
    assert data["datasets"] == ["my-org/isic-seed"]
    text = card.text
    assert 'pipe.load_lora_weights("my-org/dermt2im-lora", weight_name="pytorch_lora_weights.safetensors")' in text
    assert 'DiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5"' in text
    for phrase in ("Not a medical device", "No diagnosis", "No patient-facing use", "Skin-tone coverage",
                   "rulers", "CC BY-NC 4.0", "CC-0, CC-BY or CC-BY-NC", "CreativeML OpenRAIL-M", "2401.05159",
                   "Farooq", "dermt2im_kohya.safetensors", "| LoRA rank | 8 |", "0.1394"):
        assert phrase in text, phrase


def test_dataset_card_front_matter_and_body(tmp_path):
    path = render_card(_write_folder(tmp_path, "dataset", DATASET_FACTS), repo_id="my-org/dermt2im")
    card = DatasetCard.load(path)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-4.0"
    assert data["task_categories"] == ["image-classification", "text-to-image"]
    assert data["size_categories"] == ["n<1K"]
    assert data["pretty_name"] == "Derm-T2IM synthetic (test)"
    assert {"dermatology", "medical", "synthetic"} <= set(data["tags"])
    assert data["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/train-*.parquet"},
                                               {"split": "test", "path": "data/test-*.parquet"}]}]
    assert data["source_datasets"] == ["my-org/isic-seed"]
    assert 'load_dataset("my-org/dermt2im")' in card.text
    assert "| my-org/dermt2im-lora | " in card.text and "| Euler | 6 |" in card.text
    assert "Not a medical device" in card.text and "HAM10000" in card.text


def test_classifier_card_model_index(tmp_path):
    path = render_card(_write_folder(tmp_path, "classifier", CLASSIFIER_FACTS), repo_id="my-org/mnv2-hybrid")
    card = ModelCard.load(path)
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("timm", "image-classification", "cc-by-nc-4.0")
    assert data.datasets == ["my-org/dermt2im"] and data.base_model == "timm/mobilenetv2_100.ra_in1k"
    results = {(r.dataset_name, r.metric_type): r for r in data.eval_results}
    assert set(results) == {("isic-test", "accuracy"), ("isic-test", "f1"), ("ham10000-test", "accuracy")}
    assert results["isic-test", "accuracy"].metric_value == pytest.approx(0.81)
    assert results["isic-test", "accuracy"].task_type == "image-classification"
    assert results["isic-test", "accuracy"].dataset_split == "test"
    assert data.model_name == "mnv2-hybrid"
    text = card.text
    # the timm way: the pushed config.json brings the architecture, its arguments and the data config
    assert 'timm.create_model("hf-hub:my-org/mnv2-hybrid", pretrained=True)' in text
    assert "timm.data.resolve_model_data_config(model)" in text and "pretrained=False" not in text
    assert "| isic-test | test | accuracy | 0.81 | 0.78, 0.84 |" in text
    assert "| ham10000-test | test | accuracy | 0.73 | not recorded |" in text
    assert "| value | CI (level not recorded) |" in text  # these facts name no confidence level
    facts = {**CLASSIFIER_FACTS, "results": [dict(r, confidence=0.9) for r in CLASSIFIER_FACTS["results"]]}
    text = ModelCard.load(render_card(_write_folder(tmp_path / "ninety", "classifier", facts))).text
    assert "| value | 90% CI |" in text and "95% CI" not in text


def test_results_and_stage_cards(tmp_path):
    results = ModelCard.load(render_card(_write_folder(tmp_path, "results", RESULTS_FACTS)))
    assert "| vit | 0.9 |" in results.text and "![results](accuracy.png)" in results.text
    assert "| ViT-B/16 | 90.74 | 93.03 | 81.50 | 85.02 |" in results.text and "Runs: 2" in results.text
    assert {"dermatology", "leaderboard"} <= set(results.data.tags)
    stage = ModelCard.load(render_card(_write_folder(tmp_path, "stage", {"num_images": 6})))
    assert "`generate`" in stage.text and "| num_images | 6 |" in stage.text
    assert "my-org/isic-seed" in stage.text  # inputs table
    assert 'repo_type="dataset"' in stage.text  # generated images go to a dataset repo, as `push` does
    write_manifest(tmp_path / "other", "some_tool", extra={"card": {}})
    assert 'repo_type="model"' in ModelCard.load(render_card(tmp_path / "other")).text


@pytest.mark.parametrize("kind", KINDS)
def test_missing_facts_render_not_recorded(kind, tmp_path):
    folder = tmp_path / kind
    write_manifest(folder, STAGES[kind])  # no extra["card"] at all
    card = _load(render_card(folder), kind)
    assert card.text.count(NOT_RECORDED) >= 3
    assert card.data.license, "front matter always carries a licence"
    # no heading is directly followed by another heading: every section has a body
    lines = [line for line in card.text.splitlines() if line.strip()]
    for first, second in zip(lines, lines[1:]):
        assert not (first.startswith("#") and second.startswith("#") and second.count("#") <= first.count("#")), (
            f"empty section {first!r}")
    assert "None" not in re.sub(r"```.*?```", "", card.text, flags=re.S), "a missing fact leaked as None"


def test_missing_lora_facts_in_detail(tmp_path):
    folder = tmp_path / "lora"
    write_manifest(folder, "train_lora", extra={"card": {"lora_rank": 4}})
    card = ModelCard.load(render_card(folder))
    assert "| LoRA rank | 4 |" in card.text and "| LoRA alpha | not recorded |" in card.text
    assert "Base model: not recorded" in card.text and "Sample images\n\nnot recorded" in card.text
    assert "base_model" not in card.data.to_dict() and card.data.license == "creativeml-openrail-m"


def test_local_base_model_path_stays_out_of_front_matter(tmp_path):
    facts = {**LORA_FACTS, "base_model": str(tmp_path)}
    card = build_card({"stage": "train_lora", "extra": {"card": facts}})
    assert "base_model" not in card.data.to_dict()
    # a local path means nothing to others and reveals the machine's layout: only its last part is shown
    assert str(tmp_path) not in card.text and tmp_path.name in card.text


def test_untrusted_prompt_cannot_break_tables(tmp_path):
    facts = {"instance_prompts": ["mole | <script>x</script>"], "hyperparameters": {"a|b": "c\nd"}}
    card = build_card({"stage": "train_lora", "extra": {"card": facts}})
    assert "<script>" not in card.text and "| a\\|b | c d |" in card.text


def test_untrusted_config_value_cannot_close_the_config_block():
    """The resolved config is dumped in a fenced block; a value holding a line of ``` (YAML indents it by two
    spaces, which still closes a CommonMark fence) must stay inside the block."""
    import re

    config = {"instance_prompt": "a mole\n```\n<script>alert(1)</script>\n````", "rank": 4}
    card = build_card({"stage": "train_lora", "config": config, "extra": {"card": {}}})
    fence = re.search(r"^(`{3,})yaml$", card.text, re.MULTILINE).group(1)
    assert len(fence) == 5  # longer than the longest backtick run in the value (4)
    block = card.text.split(fence + "yaml\n", 1)[1].split("\n" + fence, 1)[0]
    assert "<script>alert(1)</script>" in block and "rank: 4" in block


def test_mapping_keys_from_prompts_cannot_break_tables():
    """Dataset cards list top prompts (untrusted: they come from PNG text) as the keys of a mapping."""
    prompt = "<img src=x onerror=alert(1)> | col\nnext"
    facts = {**DATASET_FACTS, "generation": {"top_prompts": {prompt: 3, "benign mole": 2}}}
    card = build_card({"stage": "build_dataset", "extra": {"card": facts}})
    assert "<img" not in card.text and "&lt;img src=x onerror=alert(1)&gt;" in card.text
    (row,) = [line for line in card.text.splitlines() if line.startswith("| top_prompts |")]
    assert row == ("| top_prompts | &lt;img src=x onerror=alert(1)&gt; \\| col next: 3, benign mole: 2 |")


@pytest.mark.parametrize("kind", KINDS)
def test_cards_cut_local_paths_to_their_last_part(kind, tmp_path):
    """Config values, facts and free text print a local path as its last part only (docs/hub.md)."""
    data = tmp_path / "clinic-x" / "ham10000-sample"
    data.mkdir(parents=True)
    config = {"images": "/work/shared/data/ham10000-sample", "out": "C:\\Users\\alice\\runs\\lora",
              "nested": {"paths": ["~/raw/isic", "relative/dir"]}, "base": "org/sd15"}
    facts = {**FACTS[kind], "hyperparameters": {"cache_dir": "/home/alice/.cache/x"},
             "training_data": "/home/alice/clinic-x/ham", "note": "copied /home/alice/a.png to /srv/b.png"}
    folder = tmp_path / "out"
    write_manifest(folder, STAGES[kind], config=config, inputs={"data": data, "hub": "my-org/isic-seed"},
                   extra={"card": facts})
    text = render_card(folder).read_text()
    for local in ("/work/shared", "/home/alice", "C:\\", "Users", "~/raw", str(tmp_path), "/srv"):
        assert local not in text, f"{local} in the {kind} card"
    assert "images: ham10000-sample" in text and "out: lora" in text and "- isic" in text
    assert "relative/dir" in text and "base: org/sd15" in text and "my-org/isic-seed" in text


def test_rendering_is_a_pure_function_of_the_manifest(tmp_path):
    folder = _write_folder(tmp_path, "lora", LORA_FACTS)
    first = render_card(folder).read_text()
    assert render_card(folder).read_text() == first


@pytest.mark.parametrize("kind", KINDS)
def test_templates_use_only_defined_names(kind):
    """from_template renders with a lenient Jinja; a strict render catches misspelled variables."""
    from dermt2im_hub.hub import cards

    manifest = {"stage": STAGES[kind], "extra": {"card": FACTS[kind]}}
    ctx = cards._CONTEXT_BUILDERS[kind](cards._common_context(manifest, kind, None))
    ctx.update(cards._render_partials(ctx))
    strict = jinja2.Environment(undefined=jinja2.StrictUndefined)
    card_data = cards._CARD_DATA_BUILDERS[kind](ctx)
    strict.from_string(read_template(f"{kind}.md.j2")).render(card_data=card_data.to_yaml(), **ctx)
    assert len(PARTIALS) == 3


def test_card_cli(tmp_path, run_cli):
    folder = _write_folder(tmp_path, "dataset", DATASET_FACTS)
    code, out, err = run_cli("card", folder, "--repo-id", "my-org/dermt2im")
    assert code == 0, err
    assert "README.md" in out and DatasetCard.load(folder / "README.md").data.pretty_name
    code, _, err = run_cli("card", tmp_path / "missing")
    assert code == 2 and "manifest.json" in err
    before = (folder / "README.md").read_bytes()
    for bad in ("a/b/c", "org/name--x", "org/../x", "_org/x", "org/x.git"):
        code, _, err = run_cli("card", folder, "--repo-id", bad)
        assert code == 2 and "--repo-id" in err and bad in err, (bad, err)
    assert (folder / "README.md").read_bytes() == before  # a refused id leaves the card as it was


@pytest.mark.slow
def test_templates_render_from_a_built_wheel(tmp_path):
    """`pip install .` must carry the templates: build a wheel from a copy of the sources and render from it
    (zip import, so importlib.resources reads them from inside the archive)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("dermt2im_hub", "model_cards", "dataset_builder"):
        if (root / name).is_dir():
            shutil.copytree(root / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(root / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"dermt2im_hub"}, "dataset_builder and model_cards are installed inside the package"
    assert "dermt2im_hub/model_cards/lora.md.j2" in names and "dermt2im_hub/dataset_builder/dermt2im.py" in names
    code = ("import dermt2im_hub.model_cards as m, dermt2im_hub.hub.cards as c; assert '.whl' in m.__file__, m.__file__;"
            "import dermt2im_hub.dataset_builder as b; assert '.whl' in b.__file__, b.__file__;"
            "print(str(c.build_card({'stage': 'train_lora'})).count('not recorded') > 3)")
    env = {**__import__("os").environ, "PYTHONPATH": str(wheel)}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip() == "True", ran.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- one hash per base


UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def test_base_model_hash_is_the_same_quantity_in_lora_generate_and_dataset_cards(tiny_base, tmp_path):
    """The LoRA card, the generated-images card and the dataset card name one base model by one hash (the
    sha256 of its UNet weights file) and say what it is of; the base folder's fingerprint over all its files
    stays in the inputs table, labelled as such (docs/hub.md, "Which hash is which")."""
    from dermt2im_hub.generation.models import folder_model_sha256
    from dermt2im_hub.manifest import fingerprint
    from dermt2im_hub.utils.model_hash import unet_weights_sha256

    sha, hashed = unet_weights_sha256(tiny_base)
    assert (sha, hashed) == folder_model_sha256(tiny_base) == (sha, UNET_FILE)
    assert unet_weights_sha256(tmp_path) == (None, None)  # no UNet weights: nothing to claim
    labelled = f"sha256 of `{UNET_FILE}`: {sha}"

    lora = tmp_path / "lora"
    write_manifest(lora, "train_lora", input_fingerprints={"base_model": fingerprint(tiny_base)},
                   extra={"card": {**LORA_FACTS, "base_model": str(tiny_base), "base_model_sha256": sha,
                                   "base_model_hash_of": hashed}})
    lora_text = render_card(lora).read_text()
    assert labelled in lora_text
    folder_fp = fingerprint(tiny_base)["sha256"]
    assert folder_fp != sha
    assert f"| base_model | folder | {tiny_base.name} | {folder_fp} | all its files (fingerprint" in lora_text

    generated = tmp_path / "generate"
    write_manifest(generated, "generate", inputs={"base": tiny_base},
                   extra={"base_model": {"id": str(tiny_base), "kind": "folder", "revision": None, "sha256": sha,
                                         "hashed_file": hashed}})
    assert f"- Base model: {tiny_base.name} ({labelled})" in render_card(generated).read_text()

    dataset = tmp_path / "dataset"
    facts = {**DATASET_FACTS, "base_models": [{"id": tiny_base.name, "sha256": sha, "hash_of": f"sha256 of {hashed}"}]}
    write_manifest(dataset, "build_dataset", extra={"card": facts})
    assert f"| {tiny_base.name} | {sha} | sha256 of {UNET_FILE} |" in render_card(dataset).read_text()


def test_a_hash_without_what_it_is_of_says_so(tmp_path):
    """Manifests written before the hash was labelled (their LoRA hash was the base folder's fingerprint)."""
    text = build_card({"stage": "train_lora", "extra": {"card": {"base_model_sha256": "ab" * 32}}}).text
    assert f"sha256 {'ab' * 32} (what it is a hash of: not recorded)" in text
    text = build_card({"stage": "build_dataset", "extra": {"card": DATASET_FACTS}}).text
    assert f"| stable-diffusion-v1-5/stable-diffusion-v1-5 | {'ab' * 32} | not recorded |" in text


def test_inputs_table_says_what_each_fingerprint_is_of(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.png").write_bytes(b"x")
    write_manifest(tmp_path / "stage_out", "preprocess")
    (tmp_path / "w.safetensors").write_bytes(b"w")
    folder = tmp_path / "out"
    write_manifest(folder, "generate", inputs={"plain": tmp_path / "plain", "data": tmp_path / "stage_out",
                                               "lora": tmp_path / "w.safetensors", "hub": "org/sd15"})
    text = render_card(folder).read_text()
    assert "| role | kind | name | sha256 | sha256 of |" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["plain"].endswith("| all its files (fingerprint of path, size and sha256 of each) |")
    assert rows["data"].endswith("| its manifest.json |") and rows["lora"].endswith("| the file |")
    assert rows["hub"].endswith("| not recorded | not recorded |")


# ---------------------------------------------------------------------------------------------- dataset wording


@pytest.mark.parametrize("config", ["synthetic", "a1111", "real", None])
def test_dataset_card_wording_follows_the_builder_config(config):
    """A dataset card describes the images as what its builder config read, and claims nothing (generator,
    hair removal, licence) that the manifest does not record."""
    facts = {"builder_config": config, "num_rows": 2, "per_class": {"benign": 1, "malignant": 1}}
    card = build_card({"stage": "build_dataset", "extra": {"card": facts}})
    text, data = card.text, card.data.to_dict()
    for claim in ("hair was removed with DullRazor", "removed with DullRazor before training, which",
                  "fine-tuned on ISIC", "(hair removal, resize and centre crop)", "grouped by lesion and patient"):
        assert claim not in text, (config, claim)
    assert "Hair was removed" not in text and "Whether hair was removed from" in text
    intro = text.split("## How to use")[0]
    if config == "synthetic":
        assert "made by dermt2im-hub's\n`generate` stage" in intro and "no\nLoRA adapter was recorded" in intro
        assert data["license"] == "cc-by-nc-4.0" and "the pipeline's default" in text
        assert "synthetic" in data["tags"] and "lora" not in data["tags"]
    elif config == "a1111":
        assert "Third-party PNG images, read as AUTOMATIC1111" in intro and "cannot verify" in intro
        assert data["license"] == "unknown" and "licence: not recorded" in text
        assert "the licence the inputs impose" not in text and "ISIC Archive (https" not in text
    elif config == "real":
        assert "read from preprocessed image folders" in intro and "Synthetic images are not real" not in text
        assert "synthetic" not in data["tags"] and "Stable Diffusion v1.5" not in text
        assert "| input | written by stage |" not in text and "### Preprocessing\n\nnot recorded" in text
    else:
        assert "was not recorded" in intro and data["license"] == "unknown"
        assert "synthetic" not in data["tags"] and "dermt2im-hub's\n`generate` stage" not in intro


@pytest.mark.parametrize("recorded, phrase", [(True, "Hair was removed (DullRazor-style, as recorded"),
                                              (False, "No hair removal was applied (as recorded")])
def test_hair_removal_is_stated_only_as_recorded(recorded, phrase):
    lora = build_card({"stage": "train_lora", "extra": {"card": {**LORA_FACTS, "hair_removal": recorded}}}).text
    assert phrase in lora and f"- Hair removal of the training images: {'yes' if recorded else 'no'}" in lora
    real = build_card({"stage": "build_dataset", "extra": {"card": {"builder_config": "real",
                                                                     "hair_removal": recorded}}}).text
    assert phrase in real
    assert "Whether hair was removed from the training images:\n  not recorded" in build_card(
        {"stage": "train_lora", "extra": {"card": LORA_FACTS}}).text


def test_recorded_configs_block_survives_any_rerender(tmp_path):
    """The benchmark results folder records its `configs:` block (metrics / predictions); `dermt2im run`
    re-renders every card, and the block must survive that, or load_dataset(REPO, "metrics") breaks."""
    configs = [{"config_name": "metrics", "data_files": [{"split": "train", "path": "metrics.jsonl"}],
                "default": True}]
    write_manifest(tmp_path / "results", "benchmark",
                   extra={"card": {"configs": configs, "pretty_name": "Derm-T2IM classifier benchmark results"}})
    path = render_card(tmp_path / "results", repo_id="my-org/results")
    metadata = metadata_load(path)
    assert metadata["configs"] == configs and metadata["pretty_name"].startswith("Derm-T2IM")
    assert 'snapshot_download("my-org/results", repo_type="dataset")' in path.read_text()


# ---------------------------------------------------------------------------------------------- hostile text

HOSTILE = ["[click](javascript:alert(3))", "![x](http://evil.example/x.png)", "red\x1b[31m alert\x07",
           "<img src=x onerror=alert(1)>", "[ref]: http://evil.example/ref", "see https://evil.example/a.png",
           "`code` ``` and [link][ref]"]


def _render(markdown_text: str) -> str:
    """HTML of a Markdown text as a CommonMark renderer (the Hub's flavour, without GFM's autolinks) makes it."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable("table").render(markdown_text)


def _live_html(markdown_text: str) -> list[str]:
    """Links, images and raw HTML elements that a card's body renders to."""
    body = markdown_text.split("\n---\n", 1)[-1]
    return re.findall(r"<(?:a|img|script)\b[^>]*>", _render(body))


@pytest.mark.parametrize("kind", KINDS)
def test_untrusted_strings_never_render_live(kind, tmp_path):
    """Prompts, file names and infotext in every fact a card shows: no live link, remote image or HTML element
    comes out of them, and no control character reaches README.md."""
    facts = dict(FACTS[kind])
    facts.update(instance_prompts=HOSTILE, training_data=HOSTILE[0], hardware=HOSTILE[2],
                 sample_images=[{"path": "http://evil.example/x.png", "prompt": p} for p in HOSTILE]
                 + [{"path": "javascript:alert(1)", "prompt": "x"}],
                 generation={"top_prompts": {p: 1 for p in HOSTILE}}, pretty_name=HOSTILE[1],
                 sample_grid="http://evil.example/grid.png", per_sampler={p: 1 for p in HOSTILE},
                 hyperparameters={p: p for p in HOSTILE}, model_name=HOSTILE[0], labels=HOSTILE[:2],
                 base_model_hash_of=HOSTILE[6], note=HOSTILE)
    folder = tmp_path / "out"
    write_manifest(folder, STAGES[kind], config={"instance_prompt": HOSTILE[1]}, extra={"card": facts})
    text = render_card(folder).read_bytes().decode("utf-8")
    assert "\x1b" not in text and "\x07" not in text
    live = _live_html(text)
    assert not [tag for tag in live if "evil" in tag or "javascript" in tag or "onerror" in tag], live
    if kind == "lora":
        data = metadata_load(folder / "README.md")
        assert all("evil" not in w["output"]["url"] for w in data.get("widget") or [])


def test_escaped_text_still_reads_as_written():
    import html

    from dermt2im_hub.hub.cards import md_link_target, md_text

    for raw in ("malignant mole on neck", "a|b [c] <d> e_f", "![x](http://evil.example/x.png) www.x.org"):
        shown = html.unescape(re.sub(r"<[^>]+>", "", _render(md_text(raw)))).strip()
        assert shown == raw
    assert md_link_target("samples/benign 0.png") == "samples/benign%200.png"
    assert [md_link_target(p) for p in ("http://x/y.png", "//x/y.png", "/etc/x.png", "../x.png", "a:b")] == [None] * 5


# ---------------------------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("stage", ["phantoms", "preprocess", "generate"])
def test_image_folders_load_without_their_other_json_files(stage, phantom_dir, tmp_path):
    """An image folder's card has a `configs:` block naming the images and metadata.jsonl, so load_dataset(DIR)
    reads the images, not test_exclusion.json or manifest.json."""
    import shutil

    from datasets import load_dataset

    folder = tmp_path / stage
    shutil.copytree(phantom_dir, folder)
    (folder / "test_exclusion.json").write_text('{"image_ids": ["a", "b"], "lesion_ids": []}')
    write_manifest(folder, stage, extra={"card": {"num_images": 16}})
    text = render_card(folder).read_text()
    assert "configs:" in text and "load_dataset(" in text
    dataset = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert list(dataset) == ["images"] and dataset["images"].num_rows == 16
    assert {"image", "label", "sha256"} <= set(dataset["images"].column_names)


# ---------------------------------------------------------------------------------------------- scores on the Hub


def test_model_index_and_eval_results_agree_on_scale_ids_and_datasets(tmp_path):
    """One scale (fractions), evaluate's metric ids and the test set's Hub id (its name when it has none, never
    a local path) in the card's model-index and in .eval_results/."""
    import yaml

    from dermt2im_hub.evaluation.benchmark import write_eval_results

    results = [{"test_set": "ISIC", "split": "test", "n": 40, "dataset_id": "my-org/isic-test",
                "metrics": {"accuracy": 0.8125, "balanced_accuracy": 0.8, "auroc": 0.875, "mcc": 0.61,
                            "brier": 0.14}},
               {"test_set": "HAM10000", "split": "test", "n": 20, "dataset_id": "/home/alice/ham-test",
                "metrics": {"accuracy": 0.75, "auroc": 0.7}}]
    folder = tmp_path / "classifier"
    write_manifest(folder, "train_classifier", extra={"card": {"model_name": "vit", "results": results}})
    index = ModelCard.load(render_card(folder, repo_id="my-org/vit")).data.eval_results
    stated = {(r.dataset_type, r.metric_type): r.metric_value for r in index}
    assert stated == {("my-org/isic-test", "accuracy"): 0.8125, ("my-org/isic-test", "balanced_accuracy"): 0.8,
                      ("my-org/isic-test", "roc_auc"): 0.875, ("my-org/isic-test", "matthews_correlation"): 0.61,
                      ("my-org/isic-test", "brier_score"): 0.14, ("HAM10000", "accuracy"): 0.75,
                      ("HAM10000", "roc_auc"): 0.7}
    written = write_eval_results(folder, results, "seed 0")
    assert sorted(p.name for p in written) == ["ham10000_accuracy.yaml", "ham10000_roc_auc.yaml",
                                               "isic_accuracy.yaml", "isic_balanced_accuracy.yaml",
                                               "isic_roc_auc.yaml"]
    for path in written:
        (entry,) = yaml.safe_load(path.read_text())
        key = (entry["dataset"]["id"], entry["dataset"]["task_id"])
        assert stated[key] == pytest.approx(entry["value"]), key  # the same number on the same scale
        assert "alice" not in path.read_text()


# ---------------------------------------------------------------------------------------------- the run's nature


def _demo_chain(root, phantoms, base):
    """Manifests as a demo run writes them: phantoms -> preprocess -> LoRA (on a tiny base) -> generate ->
    dataset, and a classifier trained from scratch on it."""
    write_manifest(root / "data", "preprocess", config={"source": "folder", "images": str(phantoms)})
    write_manifest(root / "lora", "train_lora", config={"pretrained_model_name_or_path": str(base),
                                                        "train_data_dir": str(root / "data")})
    write_manifest(root / "generated", "generate", config={"base": str(base), "lora": [f"{root / 'lora'}:0.8"]})
    write_manifest(root / "dataset", "build_dataset", inputs={"input_0": root / "generated"},
                   extra={"card": {"builder_config": "synthetic"}})
    write_manifest(root / "classifier", "train_classifier", config={"synthetic": str(root / "dataset")},
                   extra={"card": {"pretrained_weights": None, "results": []}})
    return ["data", "lora", "generated", "dataset", "classifier"]


@pytest.mark.parametrize("pretrained", [True, False])
def test_every_demo_card_says_it_is_a_demo(pretrained, phantom_dir, tmp_path):
    import json

    base = tmp_path / "tiny-base"
    base.mkdir()
    (base / "dermt2im_tiny_base.json").write_text(json.dumps({"pretrained": True} if pretrained else {"seed": 0}))
    for name in _demo_chain(tmp_path, phantom_dir, base):
        text = render_card(tmp_path / name).read_text()
        body = text.split("\n---\n", 1)[1]
        title_and_banner = body.strip().split("\n\n")[:2]
        assert title_and_banner[0].startswith("# ") and title_and_banner[1].startswith("> **A demo run:**"), name
        assert "procedural phantoms" in title_and_banner[1], name
        said = "pretrained by dermt2im-hub on phantom images" if pretrained else "random weights (not pretrained)"
        if name != "data":  # the preprocessed phantoms know nothing of a base model
            assert said in title_and_banner[1], name
    assert "trained from random initialisation (not pretrained)" in (tmp_path / "classifier" / "README.md").read_text()


def test_a_real_data_card_says_so(tmp_path):
    images = tmp_path / "isic"
    images.mkdir()
    write_manifest(tmp_path / "data", "preprocess", config={"source": "isic", "images": str(images)})
    write_manifest(tmp_path / "lora", "train_lora", config={
        "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "train_data_dir": str(tmp_path / "data")})
    text = render_card(tmp_path / "lora").read_text()
    assert "> **A run on real data:** the images are real dermoscopy images; the base model is " \
           "`stable-diffusion-v1-5/stable-diffusion-v1-5` (pretrained)." in text
    assert "demo" not in text.split("\n---\n", 1)[1].split("##")[0].lower()
