"""The one place that says which diagnosis is benign and which is malignant.

Derm-T2IM (arXiv 2401.05159) trains and tests a binary benign/malignant task. The grouping below follows
the study and the usual ISIC/HAM10000 convention:

- malignant: melanoma (MEL, mel), basal cell carcinoma (BCC, bcc), squamous cell carcinoma (SCC),
  actinic keratosis / intraepithelial carcinoma (AK, AKIEC, akiec; pre-malignant, grouped as malignant).
- benign: melanocytic nevus (NV, nv), benign keratosis incl. seborrheic keratosis, solar lentigo and
  lichen-planus-like keratosis (BKL, bkl), dermatofibroma (DF, df), vascular lesion (VASC, vasc).
- excluded (counted, never guessed): UNK / unknown and any code not listed here.

Stages may override entries from config (`diagnosis_map:` in the data section) through `binary_label`.
"""

from __future__ import annotations

from collections.abc import Mapping

BENIGN = "benign"
MALIGNANT = "malignant"
CLASS_NAMES: tuple[str, str] = (BENIGN, MALIGNANT)  # ClassLabel order: 0 = benign, 1 = malignant
LABEL_TO_ID = {name: i for i, name in enumerate(CLASS_NAMES)}

# Canonical diagnosis names (lower case) -> binary label. Aliases below map source codes onto these.
DIAGNOSIS_TO_LABEL: dict[str, str] = {
    "melanoma": MALIGNANT,
    "basal cell carcinoma": MALIGNANT,
    "squamous cell carcinoma": MALIGNANT,
    "actinic keratosis": MALIGNANT,
    "nevus": BENIGN,
    "benign keratosis": BENIGN,
    "seborrheic keratosis": BENIGN,
    "solar lentigo": BENIGN,
    "lentigo nos": BENIGN,
    "lichenoid keratosis": BENIGN,
    "dermatofibroma": BENIGN,
    "vascular lesion": BENIGN,
    "cafe-au-lait macule": BENIGN,
    "atypical melanocytic proliferation": BENIGN,
}

# Source codes (HAM10000 dx, ISIC challenge columns, ISIC archive `diagnosis` strings) -> canonical name.
DIAGNOSIS_ALIASES: dict[str, str] = {
    "mel": "melanoma",
    "bcc": "basal cell carcinoma",
    "scc": "squamous cell carcinoma",
    "ak": "actinic keratosis",
    "akiec": "actinic keratosis",
    "actinic keratosis / intraepithelial carcinoma": "actinic keratosis",
    "intraepithelial carcinoma": "actinic keratosis",
    "nv": "nevus",
    "nevus": "nevus",
    "melanocytic nevus": "nevus",
    "bkl": "benign keratosis",
    "pigmented benign keratosis": "benign keratosis",
    "seborrheic_keratosis": "seborrheic keratosis",
    "lichenoid keratosis": "lichenoid keratosis",
    "lichen planus-like keratosis": "lichenoid keratosis",
    "df": "dermatofibroma",
    "vasc": "vascular lesion",
    "vascular": "vascular lesion",
}

UNKNOWN_DIAGNOSES = frozenset({"unk", "unknown", "", "none", "nan", "other"})

DEFAULT_PROMPT_TEMPLATE = "a dermoscopic image of a {label} skin lesion"


def canonical_diagnosis(code: str | None) -> str | None:
    """Normalise a source diagnosis code to the canonical lower-case name (None when unknown/empty)."""
    if code is None:
        return None
    key = str(code).strip().lower()
    if key in UNKNOWN_DIAGNOSES:
        return None
    return DIAGNOSIS_ALIASES.get(key, key)


def binary_label(diagnosis: str | None, overrides: Mapping[str, str] | None = None) -> str | None:
    """benign / malignant for a diagnosis code, or None for unknown codes (the caller counts those).

    `overrides` maps a source code or canonical name to "benign", "malignant" or "exclude".
    """
    if diagnosis is None:
        return None
    raw = str(diagnosis).strip().lower()
    name = canonical_diagnosis(raw)
    for key in (raw, name):
        if overrides and key in overrides:
            value = str(overrides[key]).strip().lower()
            if value == "exclude":
                return None
            if value not in CLASS_NAMES:
                raise ValueError(f"diagnosis override for {key!r} must be benign, malignant or exclude, got {value!r}")
            return value
    if name is None:
        return None
    return DIAGNOSIS_TO_LABEL.get(name)


def label_id(label: str) -> int:
    try:
        return LABEL_TO_ID[label]
    except KeyError:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASS_NAMES}") from None


def prompt_for(label: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    return template.format(label=label)
