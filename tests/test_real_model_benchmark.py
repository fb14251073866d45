"""The benchmark with a real pretrained timm model on real images: the ImageNet MobileNetV2 in
../shared/models (timm `local-dir:` format: TF "SAME" padding, mean = std = 0.5) and the real ISIC images of
../shared/data/isic-binary-train (benign/ and malignant/ folders, no lesion or patient ids)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dermt2im_hub.config import ConfigError
from dermt2im_hub.evaluation.config import EvaluationConfig, TestSetConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("DERMT2IM_SHARED_MODELS", REPO_ROOT.parent / "shared" / "models"))
MODEL_FOLDER = "mobilenetv2_100.tf_in1k"
SIDE = 128  # small, so that the fine-tunes stay within seconds on two cores


def _model_folder() -> Path:
    folder = SHARED_MODELS / MODEL_FOLDER
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} is absent: these tests need the real MobileNetV2 in ../shared/models/{MODEL_FOLDER}")
    return folder


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"local-dir:{_model_folder()}"


@pytest.fixture(scope="module")
def isic_folders(tmp_path_factory, shared_data):
    """Disjoint class folders of real ISIC images drawn at random (fixed seed) from the whole set:
    train 32 + 32, validation 8 + 8, test 40 + 40."""
    from conftest import shared_subdir

    source = shared_subdir("isic-binary-train")
    root = tmp_path_factory.mktemp("isic")
    sizes = {"train": 32, "validation": 8, "test": 40}
    rng = np.random.default_rng(0)
    for label in ("benign", "malignant"):
        files = sorted((source / label).glob("*.jpg"))
        files = [files[i] for i in rng.choice(len(files), sum(sizes.values()), replace=False)]
        start = 0
        for split, n in sizes.items():
            (root / split / label).mkdir(parents=True)
            for path in files[start:start + n]:
                shutil.copyfile(path, root / split / label / path.name)
            start += n
    return root


def _split_dataset(folder: Path):
    from dermt2im_hub.evaluation.data import class_folder_dataset

    return class_folder_dataset(folder)


def _config(output_dir: Path, model_name: str, **overrides) -> EvaluationConfig:
    values = dict(models=[model_name], arms=["real"], seeds=[0], epochs=3, batch_size=16, eval_batch_size=64,
                  learning_rate=3e-4, warmup_epochs=0.0, early_stopping_patience=3, image_size=SIDE,
                  frozen_groups=6, freeze_batch_norm=True, num_workers=0, subgroups=[], bootstrap_resamples=100,
                  synthetic=None, test_sets=[TestSetConfig(name="ISIC")], output_dir=str(output_dir))
    values.update(overrides)
    return EvaluationConfig(**values)


@pytest.fixture(scope="module")
def runs(isic_folders, model_name, tmp_path_factory):
    """The same short schedule from the pretrained weights and from random init; the test set is a folder of
    class folders given as a path, read whole."""
    import datasets

    from dermt2im_hub.evaluation.benchmark import read_records, run_benchmark

    real = datasets.DatasetDict({"train": _split_dataset(isic_folders / "train"),
                                 "validation": _split_dataset(isic_folders / "validation")})
    out = {}
    for name, pretrained in (("pretrained", True), ("random", False)):
        config = _config(tmp_path_factory.mktemp(name), model_name, pretrained=pretrained)
        config.test_sets[0].path = str(isic_folders / "test")
        results = run_benchmark(config, real=real, progress=False)
        (record,) = read_records(results)
        out[name] = {"config": config, "record": record}
    return out


def test_local_dir_model_loads_offline_with_its_own_data_config(model_name):
    import timm
    import torch

    from dermt2im_hub.evaluation.train import create_classifier

    model, data_config = create_classifier(model_name, EvaluationConfig(models=[model_name]))
    reference = timm.create_model(model_name, pretrained=True)
    assert data_config == timm.data.resolve_data_config({}, model=reference)
    assert (tuple(data_config["mean"]), tuple(data_config["std"])) == ((0.5,) * 3, (0.5,) * 3)  # not ImageNet's statistics
    assert type(model.conv_stem).__name__ == "Conv2dSame"  # the folder's model_args (pad_type: same) applied
    assert model.num_classes == 2
    with torch.no_grad():  # the pretrained trunk, not a random one
        assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)


def test_a_bare_weights_file_from_a_model_folder_is_refused(model_name):
    from dermt2im_hub.evaluation.benchmark import check_weight_sources

    folder = _model_folder()
    config = EvaluationConfig(models=["mobilenetv2_100"],
                              pretrained_files={"mobilenetv2_100": str(folder / "model.safetensors")})
    with pytest.raises(ConfigError, match="local-dir:"):
        check_weight_sources(config)  # the architecture's default (ImageNet mean/std, symmetric padding) would apply


def test_fine_tune_beats_random_init_on_held_out_real_images(runs):
    """Catches what makes pretrained weights worthless: wrong mean/std or padding, batch statistics replacing
    folded ones, a new head whose initial logits are in the tens (first loss near ln 2, not 10)."""
    assert runs["pretrained"]["record"]["training"]["history"][0]["train_loss"] < 1.0
    scores = {name: run["record"]["results"][0]["metrics"] for name, run in runs.items()}
    assert runs["pretrained"]["record"]["results"][0]["n"] == 80
    assert scores["pretrained"]["auroc"] > scores["random"]["auroc"] + 0.05, scores
    assert scores["pretrained"]["balanced_accuracy"] > 0.7, scores


def test_benchmark_records_and_pushed_config_carry_the_models_data_config(runs, model_name):
    import timm
    import torch

    from dermt2im_hub.manifest import read_manifest

    record = runs["pretrained"]["record"]
    expected = dict(timm.data.resolve_data_config({}, model=timm.create_model(model_name, pretrained=False)))
    expected["input_size"] = (3, SIDE, SIDE)  # the one setting the config overrides
    assert record["data_config"] == json.loads(json.dumps(expected))
    assert record["model_args"]["pad_type"] == "same" and record["architecture"] == "mobilenetv2_100"
    assert record["split_grouping"] == "image"  # class folders: no lesion or patient ids
    assert record["training"]["fine_tuning"]["frozen_groups"] == 6
    assert record["run_id"] == f"{MODEL_FOLDER}__real__seed0"

    folder = Path(runs["pretrained"]["config"].output_dir) / record["classifier_dir"]
    card = read_manifest(folder)["extra"]["card"]
    assert card["data_config"] == record["data_config"] and card["model_name"] == "mobilenetv2_100"
    # what the card's snippet does with the pushed repo (local-dir: reads config.json as hf-hub: does)
    pushed = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    pushed_config = timm.data.resolve_model_data_config(pushed)
    assert json.loads(json.dumps(pushed_config)) == record["data_config"]
    assert type(pushed.conv_stem).__name__ == "Conv2dSame"
    assert pushed.pretrained_cfg["label_names"] == ["benign", "malignant"]
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert 'timm.create_model("hf-hub:' in readme and "Split by image" in readme
    # the pushed weights give the recorded test predictions
    from dermt2im_hub.evaluation.cache import open_image

    first = record["predictions"][0]
    test_set = _split_dataset(Path(runs["pretrained"]["config"].test_sets[0].path))
    path = test_set[test_set["image_id"].index(first["image_id"])]["image"]
    transform = timm.data.create_transform(**pushed_config)
    with torch.no_grad():
        probability = pushed(transform(open_image(path)).unsqueeze(0)).softmax(-1)[0, 1].item()
    assert probability == pytest.approx(first["prob_malignant"], abs=0.02)


def test_folder_ids_stay_unique_when_class_folders_reuse_file_names(tmp_path):
    from dermt2im_hub.data.report import Report
    from dermt2im_hub.data.sources import read_image_folder

    for label in ("benign", "malignant"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "1.jpg").write_bytes(label.encode())
    report = Report()
    records = read_image_folder(tmp_path, report)
    assert sorted(r.image_id for r in records) == ["benign_1", "malignant_1"]
    assert report.converted["ids_from_paths"] == 1
    (tmp_path / "malignant" / "1.jpg").rename(tmp_path / "malignant" / "2.jpg")
    assert sorted(r.image_id for r in read_image_folder(tmp_path, Report())) == ["1", "2"]


def test_class_folders_are_refused_as_training_data(isic_folders):
    from dermt2im_hub.evaluation.data import load_table

    with pytest.raises(ConfigError, match="preprocess --source folder"):
        load_table(str(isic_folders / "train"), "train", "real train")
    table = load_table(str(isic_folders / "test"), "test", "ISIC", whole_class_folder=True)
    assert len(table) == 80 and np.bincount(table.labels).tolist() == [40, 40]


def test_profiles_of_the_isic_binary_recipe(tmp_path):
    import argparse

    from dermt2im_hub.evaluation.launch import add_arguments, evaluation_config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    recipe = REPO_ROOT / "configs" / "isic-binary.yaml"

    def load(*argv):
        return evaluation_config_from_args(parser.parse_args(["--config", str(recipe), *argv]))

    cpu = load("--profile", "cpu", "--set", "test_sets.0.path=/data/test", "--epochs", "2")
    paper = load("--profile", "paper")
    assert (cpu.image_size, cpu.frozen_groups, cpu.epochs, cpu.test_sets[0].path) == (160, 6, 2, "/data/test")
    assert (paper.image_size, paper.frozen_groups) == (None, 0) and cpu.freeze_batch_norm and paper.freeze_batch_norm
    assert cpu.models == paper.models == [f"local-dir:../shared/models/{MODEL_FOLDER}"]
    with pytest.raises(ConfigError, match="--profile"):
        load()
    with pytest.raises(ConfigError, match="cpu, paper"):
        load("--profile", "gpu")


def test_class_folder_through_the_data_stage_gets_cards_that_say_splits_are_by_image(isic_folders, tmp_path,
                                                                                    run_cli):
    from huggingface_hub import DatasetCard

    from dermt2im_hub.manifest import read_manifest

    pre, built = tmp_path / "pre", tmp_path / "built"
    code, _, err = run_cli("preprocess", "--source", "folder", "--images", isic_folders / "validation", "--output",
                           pre, "--size", "64", "--no-hair-removal", "--split-fractions", "[0.5, 0.5, 0.0]",
                           "--num-workers", "1", "--no-progress")
    assert code == 0, err
    assert read_manifest(pre)["extra"]["card"]["split_by"].startswith("image (the inputs carry no lesion")
    code, _, err = run_cli("build-dataset", pre, "--config", "real", "--output", built, "--quiet")
    assert code == 0, err
    card = DatasetCard.load(built / "README.md")
    assert "**Splits are by image.**" in card.text and "no lesion or patient ids" in card.text
