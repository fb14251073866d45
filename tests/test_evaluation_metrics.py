"""The evaluation stage's maths: the evaluate metric module against scikit-learn, statistics, mixes,
augmentation and config checks. Fast: no training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from dermt2im_hub.config import ConfigError, load_config
from dermt2im_hub.evaluation.config import EvaluationConfig
from dermt2im_hub.evaluation.metrics import METRIC_MODULE_PATH, METRIC_NAMES, load_derm_metrics
from dermt2im_hub.evaluation.mixes import MissingSyntheticDataError, Mix, plan_mixes, select_mix
from dermt2im_hub.evaluation.stats import (
    BOOTSTRAP_METRICS,
    bootstrap_ci,
    correctness_metric,
    discordant_pairs,
    holm,
    mcnemar_exact,
    mean_sd,
    paired_bootstrap_difference,
)

# Fixed inputs: 20 images, both classes, a few confident mistakes.
REFERENCES = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
SCORES = [0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.55, 0.6, 0.12, 0.81, 0.22,
          0.9, 0.8, 0.7, 0.65, 0.45, 0.3, 0.95, 0.51, 0.49]
PREDICTIONS = [int(s >= 0.5) for s in SCORES]


@pytest.fixture(scope="module")
def metric():
    return load_derm_metrics()


def _sklearn_ece(y, p, bins=10):
    y, p = np.asarray(y), np.asarray(p)
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], p), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(y) * np.abs(frac_pos - mean_pred)))


def test_every_metric_matches_scikit_learn(metric):
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES, prediction_scores=SCORES)
    y, yhat, p = REFERENCES, PREDICTIONS, SCORES
    expected = {
        "accuracy": skm.accuracy_score(y, yhat),
        "balanced_accuracy": skm.balanced_accuracy_score(y, yhat),
        "sensitivity": skm.recall_score(y, yhat, pos_label=1),
        "specificity": skm.recall_score(y, yhat, pos_label=0),
        "ppv": skm.precision_score(y, yhat, pos_label=1),
        "npv": skm.precision_score(y, yhat, pos_label=0),
        "f1": skm.f1_score(y, yhat, pos_label=1),
        "mcc": skm.matthews_corrcoef(y, yhat),
        "auroc": skm.roc_auc_score(y, p),
        "average_precision": skm.average_precision_score(y, p),
        "brier": skm.brier_score_loss(y, p),
        "ece": _sklearn_ece(y, p),
    }
    assert set(expected) == set(METRIC_NAMES)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert (result["n"], result["n_malignant"], result["n_benign"]) == (20, 9, 11)


def test_metric_module_loads_offline_by_path_and_labels_only_config():
    import evaluate

    assert METRIC_MODULE_PATH.is_file()
    labels_only = evaluate.load(str(METRIC_MODULE_PATH), config_name="labels")
    result = labels_only.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(REFERENCES, PREDICTIONS))
    assert result["auroc"] is None and result["brier"] is None


def test_single_class_test_set_reports_undefined_metrics_instead_of_crashing(metric):
    result = metric.compute(predictions=[0, 1, 0, 0], references=[0, 0, 0, 0], prediction_scores=[.1, .7, .2, .3])
    assert result["auroc"] is None  # undefined with one class, not a crash and not 0.5
    assert result["average_precision"] is None  # no malignant image to rank
    assert result["sensitivity"] is None  # no malignant image to find
    assert result["specificity"] == pytest.approx(0.75)
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["brier"] == pytest.approx(skm.brier_score_loss([0, 0, 0, 0], [.1, .7, .2, .3]))


def test_bootstrap_cis_contain_the_point_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 150)
    predictions = np.where(rng.random(150) < 0.8, labels, 1 - labels)
    correct = (predictions == labels).astype(float)
    for name in BOOTSTRAP_METRICS:
        low, high = bootstrap_ci(name, labels, predictions, n_resamples=500, seed=1)
        point = float(correctness_metric(name, labels, correct))
        assert low <= point <= high, name
        assert high - low < 0.3
    assert correctness_metric("balanced_accuracy", labels, correct) == pytest.approx(
        skm.balanced_accuracy_score(labels, predictions))

    other = np.where(rng.random((3, 150)) < 0.7, labels, 1 - labels)
    diff = paired_bootstrap_difference("accuracy", labels, predictions, other, n_resamples=500)
    assert diff["ci_low"] <= diff["difference"] <= diff["ci_high"]
    assert diff["difference"] == pytest.approx((predictions == labels).mean() - (other == labels).mean())


def test_exact_mcnemar_on_known_tables():
    # b=1, c=9: two-sided exact binomial p = 2 * (C(10,0) + C(10,1)) / 2**10
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0
    # b=0, c=6: 2 / 2**6
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    labels = np.array([1, 1, 0, 0, 1])
    assert discordant_pairs(labels, [1, 0, 0, 1, 1], [0, 1, 0, 0, 1]) == (1, 2)


def test_holm_adjustment_and_mean_sd():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    mean, sd, n = mean_sd([0.8, 0.9, None, 1.0])
    assert (mean, n) == (pytest.approx(0.9), 3) and sd == pytest.approx(0.1)
    assert mean_sd([0.7]) == (pytest.approx(0.7), None, 1)


def test_mixes_hold_the_synthetic_fraction_per_class():
    mixes = plan_mixes(["real", "hybrid", "equal_size", "sweep"], 0.75, [0, 0.25, 0.5, 0.75, 0.9, 1.0])
    names = [m.name for m in mixes]
    assert names == ["real", "r0.25", "r0.50", "r0.75", "r0.90", "r1.00", "r0.75-equal"]
    assert set(mixes[3].arms) == {"hybrid", "sweep"}  # trained once, used by both arms

    real = np.array([0] * 40 + [1] * 20)
    synthetic = np.array([0] * 300 + [1] * 300)
    real_rows, synthetic_rows = select_mix(real, synthetic, Mix(0.75), seed=0)
    assert len(real_rows) == 60  # every real image kept while the synthetic pool suffices
    assert len(synthetic_rows) == 180 and (synthetic[synthetic_rows] == 0).sum() == 120
    real_rows, synthetic_rows = select_mix(real, synthetic, Mix(0.75, "equal"), seed=0)
    assert len(real_rows) + len(synthetic_rows) == 60 and len(synthetic_rows) == 45
    real_rows, synthetic_rows = select_mix(real, synthetic, Mix(1.0), seed=0)
    assert len(real_rows) == 0 and len(synthetic_rows) == 600
    small = np.array([0] * 10 + [1] * 10)
    # opted into shrinking: synthetic-bound, the fraction is kept with fewer real images
    real_rows, synthetic_rows = select_mix(real, small, Mix(0.5), seed=0, shrink=True)
    assert len(synthetic_rows) == len(real_rows) == 20
    assert select_mix(real, None, Mix(0.0), seed=0)[0].size == 60


def test_hybrid_mix_without_synthetic_data_is_a_clear_error():
    real = np.array([0, 0, 1, 1])
    with pytest.raises(MissingSyntheticDataError, match="synthetic"):
        select_mix(real, None, Mix(0.75, arms=("hybrid",)), seed=0)
    with pytest.raises(MissingSyntheticDataError, match="malignant"):
        select_mix(real, np.array([0, 0, 0]), Mix(0.5), seed=0)
    assert issubclass(MissingSyntheticDataError, ConfigError)  # the CLI prints it without a traceback


def test_device_augmentation_gives_normalised_batches_of_the_model_size():
    import torch

    from dermt2im_hub.evaluation.augment import Augment, Normalize
    from dermt2im_hub.evaluation.config import AugmentationConfig

    images = torch.randint(0, 256, (6, 40, 40, 3), dtype=torch.uint8)
    torch.manual_seed(0)
    out = Augment(AugmentationConfig(), 32, (0.5,) * 3, (0.5,) * 3)(images)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    assert not torch.allclose(out[0], out[1])
    still = AugmentationConfig(scale_min=1.0, ratio_max=1.0, rotation_degrees=0.0, horizontal_flip=False,
                               vertical_flip=False, brightness=0.0, contrast=0.0, saturation=0.0)
    same = Augment(still, 40, (0.0,) * 3, (1.0,) * 3)(images)
    assert torch.allclose(same, Normalize((0.0,) * 3, (1.0,) * 3)(images), atol=1e-5)  # identity warp


def test_config_is_validated_with_clear_errors(tmp_path):
    config = load_config(EvaluationConfig)
    assert config.models == ["vit_base_patch16_224.orig_in21k", "mobilenetv2_100"]
    assert config.hybrid_fraction == 0.75 and config.seeds == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="arms"):
        load_config(EvaluationConfig, overrides={"arms": ["hybird"]})
    with pytest.raises(ConfigError, match="safetensors"):
        load_config(EvaluationConfig, overrides={"pretrained_files": {"mobilenetv2_100": "w.bin"}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(EvaluationConfig, overrides={"epoch": 3})
    for recipe in ("paper", "demo"):
        path = Path(__file__).resolve().parents[1] / "configs" / f"{recipe}.yaml"
        loaded = load_config(EvaluationConfig, path, section="evaluation")
        assert loaded.models and not math.isnan(loaded.hybrid_fraction)


def test_difference_ci_carries_seed_to_seed_spread():
    """Two seeds of one arm that disagree completely (one right on every image, one wrong on every image)
    average to 0.5 on each image: an images-only bootstrap would call the difference certain. The two-level
    bootstrap resamples seeds too, so the interval is wide; with one seed per arm it is the usual paired
    bootstrap over images (checked against scipy's)."""
    from scipy import stats

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    split_arm = np.stack([labels, 1 - labels])
    steady_arm = np.where(rng.random((2, 200)) < 0.5, labels, 1 - labels)
    wide = paired_bootstrap_difference("accuracy", labels, split_arm, steady_arm, n_resamples=2000)
    assert wide["ci_high"] - wide["ci_low"] > 0.8  # images alone: about 0.14

    a = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    b = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    ours = paired_bootstrap_difference("balanced_accuracy", labels, a, b, n_resamples=4000, seed=3)

    def statistic(y, ca, cb, axis=-1):
        return correctness_metric("balanced_accuracy", y, ca, axis) - correctness_metric("balanced_accuracy", y, cb,
                                                                                           axis)

    reference = stats.bootstrap((labels, (a == labels) * 1.0, (b == labels) * 1.0), statistic, paired=True,
                                vectorized=True, n_resamples=4000, method="percentile",
                                rng=np.random.default_rng(3)).confidence_interval
    assert ours["ci_low"] == pytest.approx(reference.low, abs=0.02)
    assert ours["ci_high"] == pytest.approx(reference.high, abs=0.02)


def _load_null_simulation():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "null_simulation.py"
    spec = importlib.util.spec_from_file_location("bench_null_simulation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_primary_test_holds_its_false_positive_rate_where_ensemble_mcnemar_does_not():
    """Under a true null (equal population accuracy, 5 seeds per arm, a fresh test set per experiment) the
    seed-aware test rejects 3-7 % of the time at alpha 0.05 for n in {227, 659} and seed SD 1-3 pp; the
    ensemble McNemar test (the old verdict) does not, so the check can fail. bench/null_simulation.py prints
    the full table with power."""
    simulation = _load_null_simulation()
    rates = {(n, sd): simulation.simulate(n, sd, experiments=1200) for n, sd in simulation.CELLS}
    for (n, sd), rate in rates.items():
        assert 0.03 <= rate["primary"] <= 0.07, (n, sd, rate)
        assert abs(rate["realised_seed_sd_pp"] - sd) < 0.3, (n, sd, rate)  # the cell is the one it claims
    assert rates[(659, 3.0)]["mcnemar"] > 0.15


def test_seed_image_test_is_the_paired_t_test_with_one_seed_and_widens_with_seed_spread():
    from scipy import stats

    from dermt2im_hub.evaluation.stats import seed_image_test

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.82, labels, 1 - labels)
    b = np.where(rng.random(300) < 0.75, labels, 1 - labels)
    ours = seed_image_test("accuracy", labels, a, b)
    reference = stats.ttest_rel((a == labels) * 1.0, (b == labels) * 1.0)
    assert ours["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert ours["df"] == pytest.approx(299) and not ours["seed_variance_known"]
    low, high = reference.confidence_interval(0.95)
    assert (ours["ci_low"], ours["ci_high"]) == (pytest.approx(low), pytest.approx(high))

    # five seeds that agree image by image except for a shared shift: the seed part dominates the variance
    steady = np.stack([a] * 5)
    shifted = np.stack([np.where(np.arange(300) < k * 15, labels, a) for k in range(5)])
    wide = seed_image_test("accuracy", labels, shifted, steady)
    assert wide["seed_variance_known"] and wide["seed_se"] > wide["image_se"]
    assert wide["df"] < 20  # five seeds are not read as hundreds of observations
    assert wide["detectable_difference"] > 2.4 * wide["se"]
    same = seed_image_test("accuracy", labels, steady, steady)  # the arms never disagree: nothing to estimate
    assert same["p_value"] == 1.0 and same["detectable_difference"] is None


def test_mcc_is_none_when_undefined():
    from dermt2im_hub.evaluation.metrics.derm_metrics import compute_all

    assert compute_all([0, 0, 1, 1], [1, 1, 1, 1])["mcc"] is None  # one predicted class
    assert compute_all([1, 1, 1], [1, 0, 1])["mcc"] is None  # one true class
    assert compute_all([0, 1, 0, 1], [0, 1, 1, 1])["mcc"] == pytest.approx(skm.matthews_corrcoef([0, 1, 0, 1],
                                                                                                 [0, 1, 1, 1]))


def test_paper_names_only_for_the_paper_setup():
    """The paper's name (and its Table IV number) only when the timm id, the pretrained weights and the input
    size are the paper's; otherwise the real id and why it is not the paper's setup."""
    from dermt2im_hub.evaluation.leaderboard import model_label, paper_setup

    assert paper_setup("vit_base_patch16_224.orig_in21k", "google/vit-base-patch16-224-in21k", 224)[0] == "ViT-B/16"
    assert paper_setup("mobilenetv2_100", "timm/mobilenetv2_100.ra_in1k", 224)[0] == "MobileNetV2"
    assert paper_setup("local-dir:/models/mobilenetv2_100.tf_in1k", "/models/x", 224)[0] == "MobileNetV2"
    not_paper = [("mobilenetv2_050", None, 32), ("mobilenetv2_100", None, 224), ("mobilenetv2_100", "w", 128),
                 ("vit_base_patch16_224.augreg_in21k", "timm/vit_base_patch16_224.augreg_in21k", 224),
                 ("vit_tiny_patch16_224", "timm/vit_tiny", 224)]
    for model, weights, size in not_paper:
        name, why = paper_setup(model, weights, size)
        assert name is None and why, model
        label = model_label(model, {model: (name, why)})
        assert "MobileNetV2" not in label and "ViT-B/16" not in label and "not the paper's setup" in label


def test_delong_and_operating_points():
    from dermt2im_hub.evaluation.stats import delong_difference, sensitivity_at_specificity

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 400)
    good = labels + rng.normal(0, 0.6, 400)
    poor = labels + rng.normal(0, 1.5, 400)
    result = delong_difference(labels, good, poor)
    assert result["auroc_a"] == pytest.approx(skm.roc_auc_score(labels, good))
    assert result["difference"] > 0 and result["p_value"] < 0.001
    assert delong_difference(labels, good, good)["p_value"] == 1.0
    # the DeLong SE of a single AUROC difference is close to a bootstrap's
    draws = rng.integers(0, 400, (300, 400))
    boot = [skm.roc_auc_score(labels[d], good[d]) - skm.roc_auc_score(labels[d], poor[d]) for d in draws]
    assert result["se"] == pytest.approx(np.std(boot), rel=0.25)
    sens = sensitivity_at_specificity(labels, good, 0.9)
    fpr, tpr, _ = skm.roc_curve(labels, good)
    assert sens == pytest.approx(tpr[fpr <= 0.1].max()) and sensitivity_at_specificity([1, 1], [0.2, 0.3], 0.8) is None


def test_training_budget_is_identical_across_arms():
    """Every arm trains the same samples, rounds, steps, warm-up and patience, counted in the real-only
    training set, whatever the size of its own training set; budget.samples makes it explicit."""
    import torch

    from dermt2im_hub.evaluation.train import CachedTrainingSet, _train_loader, training_budget

    config = load_config(EvaluationConfig, overrides={"epochs": 3, "batch_size": 8, "num_workers": 0,
                                                      "warmup_epochs": 0.5, "early_stopping_patience": 2})
    budget = training_budget(config, real_training_images=40)
    assert (budget.samples, budget.round_samples, budget.warmup_samples, budget.patience_rounds) == (120, 40, 20, 2)

    class OneProcess:
        num_processes = 1
        device = torch.device("cpu")

    pool = np.zeros((160, 4, 4, 3), np.uint8)
    lengths = []
    for images in (40, 160):  # real-only, hybrid (75 % synthetic)
        labels = np.arange(images) % 2
        train_set = CachedTrainingSet([pool], [np.arange(images)], [labels])
        lengths.append(len(_train_loader(train_set, config, torch.Generator(), OneProcess(), budget.round_samples)))
    assert lengths == [5, 5]  # 40 draws per round in batches of 8, for both

    explicit = load_config(EvaluationConfig, overrides={"budget": {"samples": 1000, "round_samples": 250}})
    fixed = training_budget(explicit, real_training_images=40)
    assert (fixed.rounds, fixed.as_record()["samples"], fixed.source) == (4, 1000, "budget.samples")
    with pytest.raises(ConfigError, match="budget.samples"):
        load_config(EvaluationConfig, overrides={"budget": {"samples": 0}})


def test_a_short_mix_fails_saying_how_many_synthetic_images_are_missing():
    """A full mix keeps every real image; without enough synthetic images that is an error (before any run
    trains), not a silent drop of real images, unless shrink_short_mixes is set."""
    from dermt2im_hub.evaluation.mixes import ShortMixError, check_mixes

    real = np.array([0] * 40 + [1] * 20)
    synthetic = np.array([0] * 100 + [1] * 100)
    with pytest.raises(ShortMixError, match=r"all 40 real benign .* 120 synthetic benign .* has 100: 20 missing"):
        select_mix(real, synthetic, Mix(0.75), seed=0)
    mixes = plan_mixes(["real", "hybrid"], 0.75, [])
    with pytest.raises(ShortMixError, match="shrink_short_mixes"):
        check_mixes(real, synthetic, mixes)
    check_mixes(real, synthetic, mixes, shrink=True)
    check_mixes(real, synthetic, plan_mixes(["real", "hybrid"], 0.6, []))  # 60 + 30 needed: enough
    assert issubclass(ShortMixError, ConfigError)
