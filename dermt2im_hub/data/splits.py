"""Leakage-safe train/validation/test splits.

Images are grouped so that every image of one lesion (HAM10000 `lesion_id`, ISIC 2019 `lesion_id`) and every
image of one patient (ISIC 2020 `patient_id`) share a group; a lesion id and a patient id that co-occur on one
image join their groups (union-find), so no lesion and no patient can be in two splits.

Stratification: each group falls in a stratum by the labels it holds (benign only, malignant only, or both,
as for an ISIC 2020 patient with a melanoma and some nevi). Within each stratum scikit-learn's
GroupShuffleSplit (seeded, so deterministic) takes the test share of the groups, then the validation share of
the rest; what remains is train. Shares are of groups, rounded up for the held-out splits, so small inputs
lean towards slightly larger validation/test splits; a stratum of a single group stays in train.
(StratifiedGroupKFold was tried first: it needs as many members per class as folds and took 8 s on HAM10000's
7,470 lesions; this takes milliseconds.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Splittable(Protocol):
    image_id: str
    label: str | None
    lesion_id: str | None
    patient_id: str | None


@dataclass
class SplitResult:
    splits: list[str]  # one of train / validation / test per input record, in input order
    notes: list[str]  # strata too small to split, etc.


def group_ids(records: Sequence[Splittable]) -> list[int]:
    """One integer group per record: records sharing a lesion id or a patient id (transitively) share it."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        root = key
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[key] != root:  # path compression keeps later finds short
            parent[key], key = root, parent[key]
        return root

    image_keys = []
    for record in records:
        key = f"image:{record.image_id}"
        find(key)
        for kind, value in (("lesion", record.lesion_id), ("patient", record.patient_id)):
            if value:
                parent[find(key)] = find(f"{kind}:{value}")
        image_keys.append(key)
    roots: dict[str, int] = {}
    return [roots.setdefault(find(key), len(roots)) for key in image_keys]


def _hold_out(indices: np.ndarray, groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The subset of `indices` (whole groups, about `share` of them) that GroupShuffleSplit holds out."""
    if share <= 0 or len(np.unique(groups[indices])) < 2:
        return indices[:0]
    from sklearn.model_selection import GroupShuffleSplit  # imported here: it takes seconds, workers never need it

    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    try:
        _, held_out = next(splitter.split(indices, groups=groups[indices]))
    except ValueError:  # so few groups that the rest would be empty: keep them all
        return indices[:0]
    return indices[held_out]


def _strata(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per record, the sorted set of labels of its whole group (e.g. "benign|malignant")."""
    labels_of_group: dict[int, set[str]] = {}
    for label, group in zip(labels, groups):
        labels_of_group.setdefault(int(group), set()).add(str(label))
    names = {group: "|".join(sorted(found)) for group, found in labels_of_group.items()}
    return np.asarray([names[int(group)] for group in groups])


def assign_splits(records: Sequence[Splittable], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> SplitResult:
    """train / validation / test for each record; lesion- and patient-disjoint, stratified by label."""
    _, validation, test = (float(f) for f in fractions)
    splits = np.full(len(records), "train", dtype=object)
    if not records:
        return SplitResult([], [])
    groups = np.asarray(group_ids(records))
    strata = _strata(np.asarray([record.label or "" for record in records]), groups)
    notes = []
    for stratum in sorted(set(strata)):
        members = np.flatnonzero(strata == stratum)
        if len(np.unique(groups[members])) < 2:
            notes.append(f"stratum {str(stratum)!r} has a single lesion/patient group: it stays in train")
            continue
        held_test = _hold_out(members, groups, test, seed)
        rest = np.setdiff1d(members, held_test)
        held_validation = _hold_out(rest, groups, validation / max(1e-12, 1.0 - test), seed)
        splits[held_test] = "test"
        splits[held_validation] = "validation"
    return SplitResult([str(s) for s in splits], notes)


def leaking_groups(records: Sequence[Splittable], splits: Sequence[str]) -> dict[str, set[str]]:
    """Lesion and patient ids found in more than one split (empty when the split is leakage-safe)."""
    seen: dict[str, set[str]] = {}
    for record, split in zip(records, splits):
        for kind, value in (("lesion", record.lesion_id), ("patient", record.patient_id)):
            if value:
                seen.setdefault(f"{kind}:{value}", set()).add(split)
    return {key: found for key, found in seen.items() if len(found) > 1}
