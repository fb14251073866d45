"""Accuracy with Wilson intervals, per group, and the confusion matrix of intended vs predicted labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dermt2im_hub.labels import CLASS_NAMES


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (scipy's binomtest); None when there are no trials."""
    from scipy.stats import binomtest

    if total == 0:
        return None
    interval = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def accuracy_summary(correct: Sequence[bool], confidence: float = 0.95) -> dict[str, Any]:
    right, total = int(np.sum(correct)), len(correct)
    interval = wilson_interval(right, total, confidence)
    return {"n": total, "correct": right, "accuracy": right / total if total else None,
            "ci_low": interval[0] if interval else None, "ci_high": interval[1] if interval else None}


def grouped_accuracy(groups: Sequence[str], correct: Sequence[bool], confidence: float = 0.95) -> dict[str, Any]:
    """{group: accuracy summary}, groups sorted by name."""
    groups, correct = list(groups), list(correct)
    return {name: accuracy_summary([c for g, c in zip(groups, correct) if g == name], confidence)
            for name in sorted(set(groups))}


def confusion_matrix(intended: Sequence[str], predicted: Sequence[str],
                     classes: Sequence[str] = CLASS_NAMES) -> list[list[int]]:
    """rows = intended (prompt) label, columns = predicted label, in `classes` order."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for truth, guess in zip(intended, predicted):
        matrix[index[truth], index[guess]] += 1
    return matrix.tolist()
