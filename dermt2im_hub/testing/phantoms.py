"""Procedural "phantom" dermoscopy images: the embedded default data for the demo and for tests.

They look like dermoscopy at a glance and carry the benign/malignant cues classifiers learn:
- skin-coloured background over a range of skin tones (sampled by Individual Typology Angle), with
  low-frequency texture, pores and the dark circular vignette of a contact dermatoscope;
- benign: a round lesion with an even border and one or two browns;
- malignant: an asymmetric lesion with an irregular border, several colours (dark brown, black,
  blue-grey, red) and blotches;
- optional dark hair strokes (for the hair-removal stage).

Deterministic: image i of seed s depends only on (s, i); files are byte-identical across runs.
The folder follows `dermt2im_hub.records` (class subfolders + metadata.jsonl + manifest.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dermt2im_hub.labels import BENIGN, CLASS_NAMES, DEFAULT_PROMPT_TEMPLATE, MALIGNANT, prompt_for
from dermt2im_hub.manifest import StageRun
from dermt2im_hub.records import ImageRecord, write_records
from dermt2im_hub.utils.files import atomic_save_png, sha256_file

# Skin tones as (L*, b*) pairs, each inside the Individual Typology Angle category it is named after
# (ITA = atan((L* - 50) / b*): very light > 55 deg, light 41-55, intermediate 28-41, tan 10-28, brown -30-10, dark < -30).
SKIN_TONES = {
    "very_light": (78.0, 14.0),  # 63 deg
    "light": (68.0, 17.0),  # 47 deg
    "intermediate": (62.0, 18.0),  # 34 deg
    "tan": (55.0, 20.0),  # 14 deg
    "brown": (42.0, 20.0),  # -22 deg
    "dark": (28.0, 14.0),  # -58 deg
}

_LESION_COLOURS_LAB = {
    "light_brown": (55.0, 18.0, 32.0),
    "brown": (40.0, 18.0, 28.0),
    "dark_brown": (25.0, 12.0, 18.0),
    "black": (12.0, 3.0, 3.0),
    "blue_grey": (45.0, -2.0, -12.0),
    "red": (45.0, 45.0, 25.0),
    "white": (85.0, 2.0, 6.0),
}


@dataclass
class PhantomConfig:
    num_images: int = field(default=16, metadata={"help": "total images, split evenly between the two classes"})
    size: int = field(default=256, metadata={"help": "square image side in pixels"})
    seed: int = field(default=0, metadata={"help": "image i depends only on (seed, i)"})
    hair_probability: float = field(default=0.3, metadata={"help": "share of images with hair strokes"})
    skin_tones: list[str] = field(default_factory=lambda: list(SKIN_TONES),
                                  metadata={"help": "skin tones to sample from"})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={"help": "instance prompt template"})

    def validate(self) -> None:
        from dermt2im_hub.config import ConfigError

        if self.num_images < 2:
            raise ConfigError("num_images must be at least 2 (one per class)")
        if self.size < 32:
            raise ConfigError("size must be at least 32 pixels")
        unknown = [t for t in self.skin_tones if t not in SKIN_TONES]
        if unknown:
            raise ConfigError(f"unknown skin tone {unknown[0]!r}; known: {', '.join(SKIN_TONES)}")
        if not 0.0 <= self.hair_probability <= 1.0:
            raise ConfigError("hair_probability must be within [0, 1]")


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float Lab (L 0..100) image -> uint8 RGB through OpenCV's float conversion."""
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise field."""
    small = max(2, int(size / scale))
    field_ = rng.standard_normal((small, small)).astype(np.float32)
    field_ = cv2.resize(field_, (size, size), interpolation=cv2.INTER_CUBIC)
    return field_ / (field_.std() + 1e-6)


def _lesion_mask(rng: np.random.Generator, size: int, label: str) -> np.ndarray:
    """Float mask in [0, 1] of one lesion; irregular, asymmetric border for malignant."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    cy = size / 2 + rng.uniform(-0.08, 0.08) * size
    base_r = rng.uniform(0.16, 0.26) * size
    angle = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(xx - cx, yy - cy)
    if label == BENIGN:
        ecc = rng.uniform(0.85, 1.0)
        rot = rng.uniform(0, math.pi)
        r = base_r / np.sqrt((np.cos(angle - rot)) ** 2 + (np.sin(angle - rot) / ecc) ** 2)
        softness = 0.04 * size
    else:
        r = np.full_like(angle, base_r)
        for k in range(2, 9):  # several harmonics -> notched, asymmetric outline
            r += base_r * rng.uniform(0.04, 0.14) / math.sqrt(k - 1) * np.cos(k * angle + rng.uniform(0, 2 * math.pi))
        r += base_r * rng.uniform(0.15, 0.3) * np.cos(angle - rng.uniform(0, 2 * math.pi))  # lopsided
        softness = 0.015 * size
    return np.clip((r - dist) / softness + 0.5, 0.0, 1.0)


def _render(index: int, label: str, config: PhantomConfig) -> tuple[Image.Image, dict]:
    rng = np.random.default_rng([config.seed, index])
    size = config.size
    tone = config.skin_tones[int(rng.integers(len(config.skin_tones)))]
    L0, b0 = SKIN_TONES[tone]
    lab = np.empty((size, size, 3), np.float32)
    texture = _smooth_noise(rng, size, 12) * 2.5 + _smooth_noise(rng, size, 60) * 1.0
    lab[..., 0] = L0 + texture
    lab[..., 1] = rng.uniform(10, 16) + 0.6 * texture
    lab[..., 2] = b0 + 0.5 * texture

    mask = _lesion_mask(rng, size, label)
    if label == BENIGN:
        names = ["brown", "light_brown"] if rng.random() < 0.5 else ["brown"]
    else:
        extras = ["black", "blue_grey", "red", "white"]
        rng.shuffle(extras)
        names = ["dark_brown", "brown"] + extras[: int(rng.integers(1, 4))]
    lesion = np.zeros_like(lab)
    weights = np.zeros((size, size), np.float32)
    for j, name in enumerate(names):
        # the first colour is the base everywhere; others occupy smooth random patches
        region = np.ones((size, size), np.float32) if j == 0 else np.clip(
            _smooth_noise(rng, size, 8 if label == MALIGNANT else 20) - rng.uniform(0.6, 1.2), 0, 1) * 2.0
        colour = np.array(_LESION_COLOURS_LAB[name], np.float32)
        if name in ("brown", "light_brown", "dark_brown"):
            # pigment is darker than the surrounding skin whatever the skin tone
            colour[0] = min(colour[0], L0 - {"light_brown": 12.0, "brown": 20.0, "dark_brown": 26.0}[name])
            colour[0] = max(colour[0], 6.0)
        lesion += region[..., None] * colour
        weights += region
    lesion /= weights[..., None]
    lesion[..., 0] += _smooth_noise(rng, size, 6) * (4.0 if label == MALIGNANT else 1.5)
    lab = lab * (1 - mask[..., None]) + lesion * mask[..., None]

    rgb = _lab_to_rgb(lab).astype(np.float32)
    # pores / fine grain
    rgb += rng.normal(0, 2.0, rgb.shape).astype(np.float32)
    has_hair = bool(rng.random() < config.hair_probability)
    hair_mask = np.zeros((size, size), np.uint8)
    if has_hair:
        for _ in range(int(rng.integers(4, 12))):
            pts = [rng.uniform(-0.1, 1.1, 2) * size]
            heading = rng.uniform(0, 2 * math.pi)
            for _step in range(8):
                heading += rng.normal(0, 0.25)
                pts.append(pts[-1] + size / 8 * np.array([math.cos(heading), math.sin(heading)]))
            thickness = max(1, int(round(size / 256 * rng.uniform(1.0, 2.5))))
            cv2.polylines(hair_mask, [np.array(pts, np.int32)], False, 255, thickness, lineType=cv2.LINE_AA)
        hair_colour = np.array([30, 22, 18], np.float32) if L0 > 45 else np.array([12, 9, 8], np.float32)
        alpha = (hair_mask.astype(np.float32) / 255.0)[..., None]
        rgb = rgb * (1 - alpha) + hair_colour * alpha
    # dermatoscope vignette
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rad = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
    vignette = np.clip(1.0 - np.clip(rad - 0.85, 0, None) * 2.2, 0.0, 1.0) ** 1.5
    rgb *= vignette[..., None]
    image = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    info = {
        "skin_tone": tone,
        "colours": names,
        "has_hair": has_hair,
        "hair_fraction": float((hair_mask > 127).mean()),
        "lesion_fraction": float((mask > 0.5).mean()),
    }
    return image, info


def render_phantom(index: int, label: str, config: PhantomConfig | None = None) -> Image.Image:
    """One phantom image in memory (for tests that need pixels, not files)."""
    return _render(index, label, config or PhantomConfig())[0]


def make_phantoms(output_dir: str | Path, config: PhantomConfig | None = None, progress: bool = True) -> Path:
    """Write `config.num_images` phantoms (half per class) as an image folder and return it."""
    from tqdm.auto import tqdm

    config = config or PhantomConfig()
    config.validate()
    output_dir = Path(output_dir)
    with StageRun(output_dir, "phantoms", config) as run:
        records = []
        for index in tqdm(range(config.num_images), desc="phantoms", unit="img", disable=not progress):
            label = CLASS_NAMES[index % 2]
            image, info = _render(index, label, config)
            image_id = f"phantom-{config.seed}-{index:05d}"
            rel = f"{label}/{image_id}.png"
            atomic_save_png(image, output_dir / rel)
            records.append(ImageRecord(
                file_name=rel, image_id=image_id, label=label, source="phantom",
                diagnosis="nevus" if label == BENIGN else "melanoma", lesion_id=image_id,
                prompt=prompt_for(label, config.prompt_template), width=config.size, height=config.size,
                original_width=config.size, original_height=config.size, sha256=sha256_file(output_dir / rel),
                extra=info,
            ))
        write_records(output_dir, records)
        run.outputs = {"num_images": len(records), "per_class": {c: sum(r.label == c for r in records)
                                                                 for c in CLASS_NAMES}, "metadata": "metadata.jsonl"}
    return output_dir
