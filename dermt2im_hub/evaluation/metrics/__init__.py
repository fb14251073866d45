"""The metric module (`derm_metrics.py`, an `evaluate.Metric`) and how to load it offline.

`evaluate.load("accuracy")` downloads from the Hub; this module ships inside the package, so
`load_derm_metrics()` (or `evaluate.load(str(METRIC_MODULE_PATH))`) works with no network.
"""

from __future__ import annotations

from pathlib import Path

METRIC_MODULE_PATH = Path(__file__).with_name("derm_metrics.py")

# Kept here too (not imported from derm_metrics) so reading the names does not import `evaluate`.
METRIC_NAMES = (
    "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "mcc",
    "auroc", "average_precision", "brier", "ece",
)


def load_derm_metrics(labels_only: bool = False):
    """The metric through `evaluate.load` from its file; `labels_only` takes no probabilities."""
    import evaluate

    return evaluate.load(str(METRIC_MODULE_PATH), config_name="labels" if labels_only else "default",
                         keep_in_memory=True)
