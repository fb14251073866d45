"""Binary benign/malignant classification metrics as an `evaluate` module that loads offline.

    metric = evaluate.load("/path/to/dermt2im_hub/evaluation/metrics/derm_metrics.py")
    metric.compute(predictions=[0, 1], references=[0, 1], prediction_scores=[0.2, 0.9])

Label 1 is malignant (the positive class), 0 benign. `prediction_scores` are P(malignant); without
them the score-based metrics (AUROC, average precision, Brier, ECE) are None. A metric that is not
defined for the inputs (AUROC on a test set with one class, PPV with no malignant predictions) is None,
never a crash and never a made-up 0. Every value comes from scikit-learn except ECE, which scikit-learn
lacks: it is the bin-count-weighted gap between observed malignant frequency and mean P(malignant)
in equal-width probability bins (the bins of `sklearn.calibration.calibration_curve`).

One import per line below: `evaluate` scans this file's import lines to check its dependencies.
"""

import warnings

import datasets
import evaluate
import numpy as np
from sklearn import metrics

_CITATION = """\
@article{farooq2024dermt2im,
  title={Derm-T2IM: Harnessing Synthetic Skin Lesion Data via Stable Diffusion Models for Enhanced Skin
         Disease Classification using ViT and CNN},
  author={Farooq, Muhammad Ali and Yao, Wang and Schukat, Michael and Little, Mark A and Corcoran, Peter},
  journal={arXiv preprint arXiv:2401.05159},
  year={2024}
}
"""

_DESCRIPTION = """\
Accuracy, balanced accuracy, sensitivity (malignant recall), specificity (benign recall), PPV, NPV,
F1 of the malignant class, Matthews correlation, AUROC, average precision, Brier score and expected
calibration error for a benign (0) / malignant (1) classifier.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of int): predicted labels, 0 benign, 1 malignant.
    references (list of int): true labels.
    prediction_scores (list of float): predicted probability of malignant; not taken by the
        "labels" config (`evaluate.load(path, config_name="labels")`), which leaves the score metrics None.
    ece_bins (int, optional): equal-width probability bins for ECE (default 10).
Returns:
    dict with accuracy, balanced_accuracy, sensitivity, specificity, ppv, npv, f1, mcc, auroc,
    average_precision, brier, ece, n, n_malignant, n_benign; None where a metric is undefined.
"""

METRIC_NAMES = (
    "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "mcc",
    "auroc", "average_precision", "brier", "ece",
)
SCORE_METRICS = ("auroc", "average_precision", "brier", "ece")


def _defined(value):
    """sklearn's undefined (nan) as None; numpy scalars as plain floats for JSON."""
    value = float(value)
    return None if np.isnan(value) else value


def expected_calibration_error(references, scores, n_bins=10):
    """Sum over equal-width bins of (bin share) x |observed malignant rate - mean P(malignant)|."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # the same bin assignment as sklearn.calibration.calibration_curve(strategy="uniform")
    bins = np.searchsorted(edges[1:-1], scores)
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        total += in_bin.mean() * abs(references[in_bin].mean() - scores[in_bin].mean())
    return float(total)


def matthews_or_none(references, predictions):
    """MCC, or None when it is undefined (one true or one predicted class): sklearn returns 0.0 there, which
    reads as "no better than chance" rather than "cannot be computed"."""
    if len(np.unique(references)) < 2 or len(np.unique(predictions)) < 2:
        return None
    return _defined(metrics.matthews_corrcoef(references, predictions))


def label_metrics(references, predictions):
    """The metrics that need only hard predictions."""
    nan = np.nan
    return {
        "accuracy": _defined(metrics.accuracy_score(references, predictions)),
        "balanced_accuracy": _defined(metrics.balanced_accuracy_score(references, predictions)),
        "sensitivity": _defined(metrics.recall_score(references, predictions, pos_label=1, zero_division=nan)),
        "specificity": _defined(metrics.recall_score(references, predictions, pos_label=0, zero_division=nan)),
        "ppv": _defined(metrics.precision_score(references, predictions, pos_label=1, zero_division=nan)),
        "npv": _defined(metrics.precision_score(references, predictions, pos_label=0, zero_division=nan)),
        "f1": _defined(metrics.f1_score(references, predictions, pos_label=1, zero_division=nan)),
        "mcc": matthews_or_none(references, predictions),
    }


def score_metrics(references, scores, ece_bins=10):
    """The metrics that need P(malignant); ranking metrics are None when only one class is present."""
    both_classes = len(np.unique(references)) == 2
    has_malignant = bool((references == 1).any())
    auroc = metrics.roc_auc_score(references, scores) if both_classes else np.nan
    average_precision = metrics.average_precision_score(references, scores) if has_malignant else np.nan
    return {
        "auroc": _defined(auroc),
        "average_precision": _defined(average_precision),
        "brier": _defined(metrics.brier_score_loss(references, scores, pos_label=1)),
        "ece": expected_calibration_error(references, scores, ece_bins),
    }


def compute_all(references, predictions, scores=None, ece_bins=10):
    """Every metric for one set of predictions (plain function; the Metric class below wraps it)."""
    references = np.asarray(references, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if references.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    with warnings.catch_warnings():
        # one-class subgroups are expected; undefined values come back as None instead of warnings
        warnings.simplefilter("ignore")
        result = label_metrics(references, predictions)
        if scores is None:
            result.update({name: None for name in SCORE_METRICS})
        else:
            result.update(score_metrics(references, np.asarray(scores, dtype=np.float64), ece_bins))
    result["n"] = int(references.size)
    result["n_malignant"] = int((references == 1).sum())
    result["n_benign"] = int((references == 0).sum())
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DermMetrics(evaluate.Metric):
    """Benign/malignant classification metrics (see the module docstring)."""

    def _info(self):
        features = {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        if self.config_name != "labels":
            features["prediction_scores"] = datasets.Value("float64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://arxiv.org/abs/2401.05159"],
        )

    def _compute(self, predictions, references, prediction_scores=None, ece_bins=10):
        return compute_all(references, predictions, prediction_scores, ece_bins)
