"""`dermt2im validate`: label fidelity, SAM segmentation and detection on tiny random models and hand-made data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermt2im_hub.generation.infotext import format_infotext, pnginfo_for
from dermt2im_hub.manifest import tree_fingerprint
from tests.conftest import shared_subdir


def _disc(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2


def _lesion_rgb(size: int, centre, radius, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), (215, 170, 150), np.uint8) + rng.integers(0, 8, (size, size, 3)).astype(np.uint8)
    rgb[_disc(size, centre, radius)] = (90, 55, 40)
    return rgb


def _a1111_folder(root: Path, count: int = 4, size: int = 64) -> Path:
    """An A1111-style folder: PNGs with infotext; one file's folder disagrees with its prompt."""
    samplers = ["Euler a", "DPM++ 2M SDE Karras"]
    for index in range(count):
        label = ("benign", "malignant")[index % 2]
        folder = "benign" if index == count - 1 else label  # the last image sits in the wrong folder
        path = root / folder / f"{index:05d}-{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        info = format_infotext(f"{label} mole on neck", "blurry", {"Steps": 22, "Sampler": samplers[index % 2],
                                                                  "CFG scale": 7, "Seed": index, "Size": "64x64"})
        Image.fromarray(_lesion_rgb(size, (32, 30), 10 + index, seed=index)).save(path, pnginfo=pnginfo_for(info))
    return root


def _calibration_folder(root: Path) -> tuple[Path, np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = _disc(64, (32, 32), 12)
    Image.fromarray(_lesion_rgb(64, (32, 32), 12)).save(root / "images" / "ISIC_1.png")
    Image.fromarray(truth.astype(np.uint8) * 255).save(root / "masks" / "ISIC_1_segmentation.png")
    Image.fromarray(_lesion_rgb(64, (20, 20), 6)).save(root / "images" / "ISIC_2.jpg")  # no mask: skipped
    return root, truth


# ------------------------------------------------------------------------------------------------ statistics


def test_wilson_interval_matches_the_closed_form():
    from dermt2im_hub.validation.stats import accuracy_summary, wilson_interval

    z, n, k = 1.959963984540054, 160, 115
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert wilson_interval(0, 0) is None
    summary = accuracy_summary([True, True, False, True])
    assert summary["accuracy"] == 0.75 and summary["ci_low"] < 0.75 < summary["ci_high"]


def test_grouped_accuracy_and_confusion_matrix():
    from dermt2im_hub.validation.stats import confusion_matrix, grouped_accuracy

    groups = grouped_accuracy(["Euler", "Heun", "Euler"], [True, False, False])
    assert groups["Euler"]["accuracy"] == 0.5 and groups["Heun"]["n"] == 1
    matrix = confusion_matrix(["benign", "benign", "malignant"], ["benign", "malignant", "malignant"])
    assert matrix == [[1, 1], [0, 1]]


# ---------------------------------------------------------------------------------------- segmentation maths


def test_dice_iou_on_hand_made_masks():
    from dermt2im_hub.validation.segmentation import dice_iou

    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 pixels
    b[2:6, 0:4] = True  # 16 pixels, 8 shared
    assert dice_iou(a, b) == pytest.approx((16 / 32, 8 / 24))
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(a, np.zeros_like(a)) == (0.0, 0.0)
    assert dice_iou(np.zeros_like(a), np.zeros_like(a)) == (1.0, 1.0)


def test_shape_metrics_tell_a_disc_from_a_ragged_outline():
    import cv2

    from dermt2im_hub.validation.segmentation import shape_metrics

    disc = shape_metrics(_disc(200, (100, 100), 60))
    assert disc["area"] == pytest.approx(np.pi * 60 ** 2 / 200 ** 2, rel=0.02)
    assert disc["compactness"] > 0.85 and disc["border_irregularity"] < 1.03
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    radii = np.where(np.arange(40) % 2 == 0, 80, 35)
    star = np.stack([100 + radii * np.cos(angles), 100 + radii * np.sin(angles)], 1).astype(np.int32)
    ragged = np.zeros((200, 200), np.uint8)
    cv2.fillPoly(ragged, [star], 1)
    ragged_metrics = shape_metrics(ragged.astype(bool))
    assert ragged_metrics["compactness"] < 0.5 and ragged_metrics["border_irregularity"] > 1.3
    assert shape_metrics(np.zeros((8, 8), bool))["compactness"] is None


def test_lesion_prior_boxes_the_dark_blob():
    from dermt2im_hub.validation.segmentation import dice_iou, lesion_prior

    rgb = _lesion_rgb(128, (70, 50), 20)
    prior = lesion_prior(rgb)
    assert prior.found
    x0, y0, x1, y1 = prior.box
    assert abs(x0 - 50) <= 3 and abs(y0 - 30) <= 3 and abs(x1 - 91) <= 3 and abs(y1 - 71) <= 3
    assert prior.mask[prior.point[1], prior.point[0]]
    assert dice_iou(prior.mask, _disc(128, (70, 50), 20))[0] > 0.9
    assert not lesion_prior(np.full((64, 64, 3), 180, np.uint8)).found


def test_calibration_scores_a_known_segmenter(tmp_path):
    from dermt2im_hub.validation.segmentation import calibrate

    folder, truth = _calibration_folder(tmp_path / "cal")
    half = truth.copy()
    half[:, 32:] = False  # exactly the left half of the disc
    expected_dice = 2 * half.sum() / (half.sum() + truth.sum())
    result = calibrate(lambda rgb: half, folder)
    assert result["n"] == 1 and result["images"][0]["image_id"] == "ISIC_1"
    assert result["mean_dice"] == pytest.approx(expected_dice, abs=1e-6)
    assert result["mean_iou"] == pytest.approx(half.sum() / truth.sum(), abs=1e-6)


def test_lesion_prior_on_real_isic_masks():
    """The prior alone, on the real ISIC images that have ground-truth masks: it must overlap them."""
    from dermt2im_hub.validation.segmentation import calibrate, lesion_prior

    result = calibrate(lambda rgb: lesion_prior(rgb).mask, shared_subdir("isic-seg-masks"), max_side=512)
    assert result["n"] == 2
    assert result["mean_dice"] > 0.5


# ------------------------------------------------------------------------------------------ tiny SAM, detector


def test_tiny_sam_is_deterministic_and_fills_the_columns():
    from dermt2im_hub.validation.segmentation import segmentation_columns, tiny_sam

    rgb = _lesion_rgb(80, (40, 36), 14)[:, :72]  # not square: masks come back at the input's size
    first, second = tiny_sam(seed=0).segment(rgb), tiny_sam(seed=0).segment(rgb)
    assert first["mask"].shape == (80, 72) and first["mask"].dtype == bool
    assert np.array_equal(first["mask"], second["mask"]) and first["iou_score"] == second["iou_score"]
    columns = segmentation_columns(first, 0.002, 0.95)
    assert set(columns) >= {"seg_found", "seg_area", "seg_compactness", "seg_border_irregularity",
                            "seg_iou_score", "seg_stability"}
    assert 0 <= columns["seg_stability"] <= 1 and columns["seg_box"] == list(first["prior"].box)
    point = tiny_sam(seed=0)
    point.prompt = "point"
    assert point.segment(rgb)["mask"].shape == (80, 72)


def test_tiny_detector_trains_and_detects():
    from dermt2im_hub.validation.detection import detect, fine_tune, summarize, tiny_detector, training_examples

    images = [_lesion_rgb(64, (30, 32), 10 + i) for i in range(4)]
    masks = [_disc(64, (30, 32), 10), None, None, None]
    examples = training_examples(images, ["benign", "malignant"] * 2, masks)
    assert len(examples) == 4
    assert examples[0][1]["annotations"][0]["bbox"] == [20, 22, 21, 21]  # from the mask
    model, processor = tiny_detector(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    history = fine_tune(model, processor, examples, epochs=1, batch_size=2, learning_rate=1e-3, progress=False)
    assert len(history) == 1 and np.isfinite(history[0])
    assert any(not np.array_equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    rows = [detect(model, processor, rgb, threshold=0.0) for rgb in images]
    assert all(row["det_found"] and row["det_label"] in ("benign", "malignant") for row in rows)
    summary = summarize(["benign", "malignant", None, "benign"], rows)
    assert summary["detection_rate"]["n"] == 3 and summary["detection_rate"]["accuracy"] == 1.0


# --------------------------------------------------------------------------------------------------- inputs


def test_a1111_folder_labels_come_from_the_prompt(tmp_path):
    from dermt2im_hub.validation.inputs import read_synthetic

    kind, images = read_synthetic(_a1111_folder(tmp_path / "a1111"))
    assert kind == "a1111" and len(images) == 4
    last = next(image for image in images if image.file_name.endswith("00003-3.png"))
    assert last.file_name.startswith("benign/") and last.label == "malignant" and last.label_source == "prompt"
    assert {image.sampler for image in images} == {"Euler a", "DPM++ 2M SDE Karras"}


# ---------------------------------------------------------------------------------------------- end to end


def test_validate_cli_end_to_end_on_tiny_models(tmp_path, capsys):
    from dermt2im_hub.cli import main
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    source = _a1111_folder(tmp_path / "a1111")
    before = tree_fingerprint(source)
    real = make_phantoms(tmp_path / "real", PhantomConfig(num_images=8, size=64), progress=False)
    calibration, _ = _calibration_folder(tmp_path / "cal")
    out = tmp_path / "validate"
    common = [str(source), "--no-progress", "--set", "threads=1",
              "--fidelity.real", str(real), "--fidelity.reference-model", "test_efficientnet",
              "--no-fidelity.pretrained", "--fidelity.train-layers", "all", "--fidelity.image-size", "32",
              "--fidelity.epochs", "1",
              "--fidelity.holdout-fraction", "0.25", "--fidelity.sheet-size", "3"]
    code = main(["validate", *common, "--output", str(out),
                 "--segmentation.enabled", "--segmentation.model", "tiny-random:sam",
                 "--segmentation.calibration-images", str(calibration),
                 "--detection.enabled", "--detection.model", "tiny-random:detr", "--detection.real", str(real),
                 "--detection.image-size", "64", "--detection.epochs", "1", "--detection.batch-size", "4",
                 "--detection.score-threshold", "0"])
    assert code == 0
    assert tree_fingerprint(source) == before  # the input is only read
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["fidelity_predicted"] in ("benign", "malignant")
        assert row["fidelity_correct"] == (row["fidelity_predicted"] == row["label"])
        assert 0 <= row["fidelity_p_intended"] <= 1 and isinstance(row["seg_found"], bool)
        assert row["det_found"] in (True, False)
    report = json.loads((out / "report.json").read_text())
    fidelity = report["fidelity"]
    assert fidelity["overall"]["n"] == 4 and fidelity["paper_accuracy"] == 0.72
    assert sum(map(sum, fidelity["confusion_matrix"]["counts"])) == 4
    assert set(fidelity["per_sampler"]) == {"Euler a", "DPM++ 2M SDE Karras"}
    assert fidelity["data_config"]["input_size"] == [3, 32, 32]  # the classifier's own data config
    assert fidelity["reference_holdout"]["n"] == 2
    assert report["segmentation"]["calibration"]["sam"]["n"] == 1
    assert report["detection"]["detection_rate"]["n"] == 4
    with Image.open(out / "least_faithful.png") as sheet:
        assert sheet.size[1] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "validate" and manifest["status"] == "complete"
    assert manifest["extra"]["card"]["label_fidelity"].startswith(f"{100 * fidelity['overall']['accuracy']:.1f} %")
    assert (out / "README.md").is_file() and (out / "reference_classifier" / "model.safetensors").is_file()
    assert "72 %" in capsys.readouterr().out

    # the reference classifier is reused by a run with other reporting settings; the output may not sit in INPUT
    stamp = (out / "reference_classifier" / "manifest.json").stat().st_mtime_ns
    assert main(["validate", *common, "--output", str(out), "--fidelity.sheet-size", "2"]) == 0
    assert (out / "reference_classifier" / "manifest.json").stat().st_mtime_ns == stamp
    assert main(["validate", *common, "--output", str(source / "validation")]) == 2


def test_pipeline_runs_validate_only_when_the_recipe_asks(tmp_path):
    """Off without a `validation:` section (the demo); with one, the reference classifier and the detector train
    on the LoRA source's data-stage folder (its train split), which the run wires in."""
    from dermt2im_hub.pipeline.config import RealSource, RunConfig
    from dermt2im_hub.pipeline.runner import merged_recipe
    from dermt2im_hub.pipeline.stages import RunLayout, validate_specs

    run = RunConfig(output=str(tmp_path / "run"), real_sources=[RealSource(name="isic", images="x")])
    layout = RunLayout(tmp_path / "run")
    without = tmp_path / "without.yaml"
    without.write_text("quality: {}\n")
    assert validate_specs(without, run, layout) == []
    recipe = tmp_path / "with.yaml"
    recipe.write_text("validation:\n  segmentation: {enabled: true}\n")
    assert "validation" in merged_recipe(recipe, None, None)  # a known section
    (spec,) = validate_specs(recipe, run, layout)
    assert spec.folder == layout.validation and layout.generated in spec.inputs
    assert spec.config.fidelity.real == str(layout.data("isic")) == spec.config.detection.real
    assert spec.config.segmentation.enabled and not spec.config.detection.enabled
    recipe.write_text("validation:\n  fidelity: {classifier: /models/real-only}\n")
    (spec,) = validate_specs(recipe, run, layout)
    assert spec.config.fidelity.classifier == "/models/real-only" and spec.config.fidelity.real is None


def test_a_built_dataset_is_read_with_its_columns(tmp_path):
    import datasets

    from dermt2im_hub.validation.inputs import read_synthetic

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["benign", "malignant"]),
                                  "sampler": datasets.Value("string"), "prompt": datasets.Value("string")})
    rows = {"image": [Image.fromarray(_lesion_rgb(32, (16, 16), 6, seed=i)) for i in range(3)], "label": [0, 1, 1],
            "sampler": ["Euler", "PLMS", None], "prompt": ["benign mole", "malignant mole", "malignant mole"]}
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split.select([0, 1]), "test": split.select([2])}).save_to_disk(tmp_path / "ds")
    kind, images = read_synthetic(tmp_path / "ds")
    assert kind == "dataset" and [image.label for image in images] == ["benign", "malignant", "malignant"]
    assert [image.sampler for image in images] == ["Euler", "PLMS", "unknown"]
    assert images[2].file_name == "test/0" and images[0].load().size == (32, 32)
    _, test_only = read_synthetic(tmp_path / "ds", split="test")
    assert len(test_only) == 1


def test_load_classifier_refuses_what_is_not_a_benign_malignant_model(tmp_path):
    import timm
    from timm.models import save_for_hf

    from dermt2im_hub.config import ConfigError
    from dermt2im_hub.validation.classifier import load_classifier

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=2)
    save_for_hf(model, str(tmp_path / "ok"), model_config={"label_names": ["benign", "malignant"]},
                safe_serialization=True, data_config={"input_size": (3, 48, 48), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert load_classifier(str(tmp_path / "ok")).data_config["input_size"] == (3, 48, 48)
    save_for_hf(model, str(tmp_path / "swapped"), model_config={"label_names": ["malignant", "benign"]},
                safe_serialization=True)
    with pytest.raises(ConfigError, match="labels"):
        load_classifier(str(tmp_path / "swapped"))
    save_for_hf(timm.create_model("test_efficientnet", num_classes=5), str(tmp_path / "five"), safe_serialization=True)
    with pytest.raises(ConfigError, match="5 outputs"):
        load_classifier(str(tmp_path / "five"))
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="no model.safetensors"):
        load_classifier(str(tmp_path / "pickle"))


def test_linear_probe_head_is_folded_into_the_timm_classifier_layer():
    """train_layers=head: the model's own output equals sklearn's standardised logistic regression."""
    import timm
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dermt2im_hub.validation.classifier import Classifier, _features, _fit_head, normalize
    from dermt2im_hub.validation.config import FidelityConfig

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=2).eval()
    data_config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    classifier = Classifier(model, data_config, "test_efficientnet")
    cached = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    labels = np.array([0, 1] * 12)
    train, held = np.arange(16), np.arange(16, 24)
    result = _fit_head(classifier, cached, labels, train, held, FidelityConfig(train_layers="head", batch_size=8),
                       progress=False)
    assert result["n"] == 8
    features = _features(classifier, cached, 8, progress=False)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(features[train], labels[train])
    with torch.no_grad():
        ours = torch.softmax(model(normalize(cached, data_config)), 1)[:, 1].numpy()
    assert np.allclose(ours, reference.predict_proba(features)[:, 1], atol=1e-4)


def test_fine_tuning_every_layer_keeps_batch_norm_statistics_and_starts_the_head_at_zero():
    """train_layers=all from pretrained weights: batch norm keeps its stored statistics (the TF MobileNetV2's are
    folded weights), the new head starts at zero, and the saved model is plain timm again."""
    import timm
    import torch

    from dermt2im_hub.validation.classifier import Classifier, _fit_all
    from dermt2im_hub.validation.config import FidelityConfig

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=2)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    classifier = Classifier(model, {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}, "t")
    cached = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = np.array([0, 1] * 8)
    config = FidelityConfig(train_layers="all", batch_size=8, epochs=1, pretrained=True)
    history = _fit_all(classifier, cached, labels, np.arange(12), np.arange(12, 16), config,
                       torch.Generator().manual_seed(0), progress=False)
    assert history[0]["train_loss"] == pytest.approx(np.log(2), abs=0.05)  # zero head: p = 0.5 for every image
    after = classifier.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
    assert not any("Frozen" in type(m).__name__ for m in classifier.model.modules())
