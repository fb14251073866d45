"""Scoring one run on one test set: every metric (through the `evaluate` module), bootstrap CIs,
metrics per subgroup (sex, age band, body site) and one prediction row per test image."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dermt2im_hub.evaluation.data import ImageTable
from dermt2im_hub.evaluation.stats import BOOTSTRAP_METRICS, bootstrap_ci

THRESHOLD = 0.5  # P(malignant) at or above this is a malignant prediction (argmax for two classes)
_METRIC = None


def derm_metrics():
    """The evaluate module, loaded once per process from its file inside the package (offline)."""
    global _METRIC
    if _METRIC is None:
        from dermt2im_hub.evaluation.metrics import load_derm_metrics

        _METRIC = load_derm_metrics()
    return _METRIC


def compute_metrics(labels, probabilities, ece_bins: int = 10) -> dict[str, Any]:
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = (probabilities >= THRESHOLD).astype(np.int64)
    return derm_metrics().compute(predictions=predictions.tolist(), references=labels.tolist(),
                                  prediction_scores=probabilities.tolist(), ece_bins=ece_bins)


def age_band(age, edges) -> str | None:
    """"<30", "30-49", ..., ">=70" for edges [30, 50, 70]; None when the age is unknown."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    age = float(age)
    edges = sorted(float(e) for e in edges)
    if age < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:]):
        if low <= age < high:
            return f"{low:g}-{high - 1:g}"
    return f">={edges[-1]:g}"


def _group_order(group: str) -> tuple:
    """Age bands by age ("<30" first, ">=70" last), other groups alphabetically."""
    digits = "".join(c if c.isdigit() or c == "." else " " for c in group).split()
    if group.startswith("<"):
        return (0, 0.0, group)
    if digits and (group.startswith(">=") or group[0].isdigit()):
        return (1 if group[0].isdigit() else 2, float(digits[0]), group)
    return (3, 0.0, group)


def subgroup_values(table: ImageTable, attributes, age_edges) -> dict[str, list[str | None]]:
    """attribute -> group of every row, for the attributes this test set records at all."""
    groups = {}
    for attribute in attributes:
        values = table.columns.get(attribute)
        if not values or all(v in (None, "") for v in values):
            continue
        if attribute == "age":
            groups["age_band"] = [age_band(v, age_edges) for v in values]
        else:
            groups[attribute] = [None if v in (None, "") else str(v).lower() for v in values]
    return groups


def score_test_set(table: ImageTable, probabilities: np.ndarray, config, seed: int = 0) -> dict[str, Any]:
    """{test_set, split, n, metrics, ci, subgroups} for one run on one test set."""
    from dermt2im_hub.evaluation.metrics.derm_metrics import compute_all

    labels = table.labels
    predictions = (probabilities >= THRESHOLD).astype(np.int64)
    ci = {}
    for name in BOOTSTRAP_METRICS:
        low, high = bootstrap_ci(name, labels, predictions, config.bootstrap_resamples, config.confidence, seed)
        ci[name] = [low, high]
    subgroups = []
    for attribute, values in subgroup_values(table, config.subgroups, config.age_bands).items():
        for group in sorted({v for v in values if v is not None}, key=_group_order):
            rows = np.array([v == group for v in values])
            # the module's plain function: one evaluate.compute per subgroup would cost far more than the maths
            metrics = compute_all(labels[rows], predictions[rows], probabilities[rows], config.ece_bins)
            subgroups.append({"attribute": attribute, "group": group, "n": int(rows.sum()), "metrics": metrics})
    return {
        "test_set": table.name,
        "split": table.origin.get("split"),
        "n": len(table),
        "metrics": compute_metrics(labels, probabilities, config.ece_bins),
        "ci": ci,
        "confidence": config.confidence,
        "subgroups": subgroups,
    }


def prediction_rows(table: ImageTable, probabilities: np.ndarray, config=None) -> list[dict[str, Any]]:
    """One row per test image; with `config`, its subgroup of every attribute (so the leaderboard can put
    seed-and-image intervals on subgroup differences)."""
    groups = subgroup_values(table, config.subgroups, config.age_bands) if config is not None else {}
    rows = []
    for index, (image_id, label, p) in enumerate(zip(table.image_ids, table.labels, probabilities)):
        row = {"test_set": table.name, "image_id": image_id, "label": int(label), "prob_malignant": float(p),
               "prediction": int(p >= THRESHOLD)}
        if groups:
            row["groups"] = {attribute: values[index] for attribute, values in groups.items()}
        rows.append(row)
    return rows
