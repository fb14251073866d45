"""Carve a stratified, by-image test folder out of a folder of class folders (benign/, malignant/).

    python bench/carve_test_folder.py SOURCE OUT [--test-fraction 0.2] [--seed 0]

Writes OUT/train/{benign,malignant}/ and OUT/test/{benign,malignant}/ (copies, file names kept) and
OUT/test_files.txt. Images with identical bytes are one group and land on the same side, so an exact
duplicate can never be both trained on and tested. For a set that has no official test split, or to check the
pipeline on a set whose test split is kept elsewhere (bench/RESULTS.md, "First real numbers"). With the
public "Skin Cancer: Malignant vs. Benign" set use its own test/ folder instead.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

CLASSES = ("benign", "malignant")
SUFFIXES = {".jpg", ".jpeg", ".png"}


def carve(source: Path, out: Path, test_fraction: float, seed: int) -> dict[str, dict[str, int]]:
    files = [p for c in CLASSES for p in sorted((source / c).iterdir()) if p.suffix.lower() in SUFFIXES]
    groups: dict[str, list[Path]] = {}
    for path in files:  # same bytes -> same group -> same side
        groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    keys = sorted(groups)
    labels = [groups[k][0].parent.name for k in keys]
    if any(p.parent.name != labels[i] for i, k in enumerate(keys) for p in groups[k]):
        raise SystemExit("identical images carry different labels: resolve them before carving")
    train_keys, test_keys = train_test_split(np.array(keys), test_size=test_fraction, stratify=labels,
                                             random_state=seed)
    counts: dict[str, dict[str, int]] = {}
    for side, chosen in (("train", train_keys), ("test", test_keys)):
        counts[side] = dict.fromkeys(CLASSES, 0)
        for key in chosen:
            for path in groups[key]:
                target = out / side / path.parent.name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                counts[side][path.parent.name] += 1
    test_files = sorted(f"{p.parent.name}/{p.name}" for k in test_keys for p in groups[k])
    (out / "test_files.txt").write_text("\n".join(test_files) + "\n", encoding="utf-8")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty")
    print(carve(args.source, args.out, args.test_fraction, args.seed))


if __name__ == "__main__":
    main()
