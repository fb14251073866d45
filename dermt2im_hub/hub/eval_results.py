"""How classifier scores are stated on the Hub, in one place: `model-index` (card front matter) and the
`.eval_results/*.yaml` files use the same scale, the same metric ids and the same dataset ids.

- Scale: a fraction in [0, 1], as `evaluate`'s metrics return it (percentages appear only in the tables people
  read).
- Metric ids: `evaluate`'s where one exists (`roc_auc`, `matthews_correlation`, `brier_score`, `recall` for
  sensitivity, `precision` for PPV); the others keep their name (`balanced_accuracy`, `specificity`, `npv`,
  `ece`, `average_precision`).
- Dataset id: the test set's Hub id when it has one, else its name (never a local path).
"""

from __future__ import annotations

from typing import Any

from dermt2im_hub.hub.resolve import is_remote_hub_id

SCALE = "fraction in [0, 1]"
# our metric names (evaluation.metrics) -> evaluate's metric ids
EVALUATE_METRIC_IDS = {
    "auroc": "roc_auc",
    "mcc": "matthews_correlation",
    "brier": "brier_score",
    "sensitivity": "recall",
    "ppv": "precision",
}


def hub_metric_id(name: str) -> str:
    return EVALUATE_METRIC_IDS.get(str(name), str(name))


def hub_dataset_id(dataset_id: Any, test_set: Any) -> str:
    """The test set's Hub id when it has one, else the test set's name (a local path means nothing on the Hub
    and reveals a machine's layout)."""
    return str(dataset_id) if is_remote_hub_id(dataset_id) else str(test_set)


def eval_results_entries(dataset_id: str, metric: str, value: float, notes: str, revision: str | None = None,
                         date: str | None = None) -> list[dict[str, Any]]:
    """One `.eval_results/*.yaml` document (the Hub's newer format): a list with one result; `metric` is our
    name (written as evaluate's id) and `value` a fraction."""
    dataset = {"id": dataset_id, "task_id": hub_metric_id(metric)}
    if revision:
        dataset["revision"] = revision
    entry: dict[str, Any] = {"dataset": dataset, "value": round(float(value), 6)}
    if date:
        entry["date"] = date
    entry["notes"] = notes
    return [entry]
