"""`OUT/report.json`: every input the data stage skipped or converted, with the reason.

Bad input never stops a run: readers and the image workers call `skip` / `convert` and go on. Counts are
complete; the per-reason lists of examples are capped (a 33,126-row ground-truth CSV against a folder of 34
images would otherwise list 33,092 "no image" rows).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dermt2im_hub.utils.files import atomic_write_json

MAX_EXAMPLES_PER_REASON = 200

# What each reason key means; written into report.json so the file explains itself.
REASONS = {
    # skipped
    "unreadable": "the file could not be opened or decoded as an image",
    "truncated": "the image file ends early (incomplete download or copy)",
    "decompression_bomb": "more pixels than the configured limit (max_image_pixels, Pillow's MAX_IMAGE_PIXELS)",
    "too_small": "the shorter side is below min_side",
    "unsupported_mode": "a pixel format that cannot be turned into 8-bit RGB faithfully",
    "missing_image": "a metadata row names an image that is not in the image folder",
    "no_metadata": "an image that no metadata row names",
    "not_in_class_folder": "folder source: an image outside the benign/ and malignant/ subfolders",
    "duplicate_id": "the same image id appears twice (the first one is kept)",
    "unknown_diagnosis": "the diagnosis maps to neither benign nor malignant (or is excluded by diagnosis_map)",
    "label_conflict": "two inputs give the same image different labels",
    "listed_duplicate": "named as the second image of a pair in a duplicates list",
    "duplicate_content": "byte-identical to another input image (the first one is kept)",
    "bad_metadata": "a metadata file or row that could not be parsed",
    "unreadable_name": "a file name that is not valid UTF-8 (it cannot go into metadata or a Hub repo)",
    "broken_link": "a symbolic link that leads nowhere (broken, or a loop)",
    "unsupported_format": "an image format no reader here decodes (e.g. GIF): convert it to PNG or JPEG",
    "worker_error": "an unexpected error while processing the image (re-run to retry)",
    # converted
    "cmyk_to_rgb": "CMYK converted to RGB",
    "16bit_to_8bit": "16-bit (or 32-bit integer) samples scaled to 8 bits",
    "grayscale_to_rgb": "a one-channel image replicated to three channels",
    "alpha_flattened": "transparency composited onto black (the dermatoscope's vignette colour)",
    "palette_to_rgb": "a palette or other colour mode converted to RGB",
    "exif_rotated": "rotated upright as its EXIF orientation tag says",
    "first_frame_only": "a multi-frame file: only the first frame is used",
    "folder_label_used": "folder source: metadata.jsonl gave another label; the class subfolder wins",
}


class Report:
    """Counts and examples of skipped and converted inputs, plus free-form notes."""

    def __init__(self, max_examples: int = MAX_EXAMPLES_PER_REASON):
        self.max_examples = max_examples
        self.skipped: Counter[str] = Counter()
        self.converted: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.notes: list[str] = []
        self.counts: dict[str, Any] = {}

    def _example(self, reason: str, image_id: str | None, path: str | Path | None, detail: str | None) -> None:
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            entry = {"image_id": image_id, "path": str(path) if path is not None else None}
            if detail:
                entry["detail"] = detail
            examples.append(entry)

    def skip(self, reason: str, image_id: str | None = None, path: str | Path | None = None,
             detail: str | None = None) -> None:
        self.skipped[reason] += 1
        self._example(reason, image_id, path, detail)

    def convert(self, reason: str, image_id: str | None = None, path: str | Path | None = None,
                detail: str | None = None) -> None:
        self.converted[reason] += 1
        self._example(reason, image_id, path, detail)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def to_dict(self) -> dict[str, Any]:
        used = sorted(set(self.skipped) | set(self.converted))
        return {
            "counts": self.counts,
            "skipped": dict(sorted(self.skipped.items())),
            "converted": dict(sorted(self.converted.items())),
            "notes": self.notes,
            "examples": {reason: self.examples.get(reason, []) for reason in used},
            "examples_cap_per_reason": self.max_examples,
            "reasons": {reason: REASONS.get(reason, "") for reason in used},
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    def summary_lines(self) -> list[str]:
        lines = [f"  {key}: {value}" for key, value in self.counts.items() if not isinstance(value, dict)]
        for key, value in self.counts.items():
            if isinstance(value, dict):
                lines.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        if self.skipped:
            lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())))
        if self.converted:
            lines.append("  converted: " + ", ".join(f"{k} {v}" for k, v in sorted(self.converted.items())))
        return lines
