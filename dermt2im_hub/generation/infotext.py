"""AUTOMATIC1111 "infotext": the generation parameters A1111 writes into a PNG's `parameters` chunk.

Grammar (as A1111 writes and parses it):

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>      (optional)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model hash: 8d72386f9b, ...

The last line is a comma-separated list of `Key: value` pairs. A value containing `,`, `:` or a newline
is written as a JSON string (with quotes); everything else is written bare. This module is the only
place that writes or parses infotext: the generator writes it and the dataset builder's `a1111` config
reads it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from PIL import PngImagePlugin

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"

# A1111's own pattern for one `Key: value` pair (quoted values may contain escaped quotes).
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_START = re.compile(r"\w")
_KEY_RUN = re.compile(r"[\w \-/]+")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")

# The order A1111 writes its common keys in; others follow in insertion order.
_KEY_ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Face restoration", "Size", "Model hash",
              "Model", "VAE hash", "VAE", "Denoising strength", "Clip skip", "Lora hashes", "TI hashes", "Version")


def quote(value: Any) -> str:
    """A1111's quoting: bare unless the text holds `,`, `:` or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_infotext(prompt: str, negative_prompt: str | None, params: Mapping[str, Any]) -> str:
    """The infotext for one image. `params` uses A1111's key names ("Steps", "CFG scale", ...);
    None values are left out. `Size` may be given as (width, height)."""
    ordered = [k for k in _KEY_ORDER if k in params] + [k for k in params if k not in _KEY_ORDER]
    pairs = []
    for key in ordered:
        value = params[key]
        if value is None:
            continue
        if key == "Size" and isinstance(value, (tuple, list)):
            value = f"{value[0]}x{value[1]}"
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        pairs.append(f"{key}: {quote(value)}")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _param_pairs(line: str) -> list[tuple[str, str]]:
    """`_PARAM_RE.findall(line)` in linear time: PNG text is untrusted, and findall takes quadratic time on a
    long run of key characters without a ':' (64 KiB took seconds). A match's key starts at a word character
    (leading whitespace changes no group), and once the attempt there fails, the attempts at every later start
    in the same run of key characters fail too (the value part always matches), so the scan skips the run."""
    pairs, pos = [], 0
    while (start := _KEY_START.search(line, pos)) is not None:
        match = _PARAM_RE.match(line, start.start())
        if match:
            pairs.append(match.groups())
            pos = match.end()
        else:
            pos = _KEY_RUN.match(line, start.start()).end()
    return pairs


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse infotext into {"prompt", "negative_prompt", "params": {key: raw string}} plus typed fields
    "steps", "sampler", "cfg_scale", "seed", "width", "height", "model", "model_hash", "face_restoration",
    "version" (None when absent). Unknown keys stay in "params", never dropped."""
    lines = text.strip("\n").split("\n")
    params_line = ""
    if lines:
        candidate = lines[-1]
        if len(_param_pairs(candidate)) >= 3:
            params_line = candidate
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].lstrip(" ")
        (negative_lines if in_negative else prompt_lines).append(line)
    params: dict[str, str] = {}
    for key, value in _param_pairs(params_line):
        params[key.strip()] = unquote(value)
    result: dict[str, Any] = {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines) if in_negative else None,
        "params": params,
    }
    result.update(_typed(params))
    return result


def _number(value: str | None, kind):
    """An int or float from untrusted text; None when it is not a finite number (`Steps: inf`, `Seed: 1e999`,
    `nan`), like any other unparseable value. Integers written as such are read exactly; a finite value out of
    a column's range is left to the dataset schema, which nulls it."""
    if value is None:
        return None
    text = value.strip()
    if kind is int:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return int(number) if kind is int else number


def _typed(params: Mapping[str, str]) -> dict[str, Any]:
    width = height = None
    size = params.get("Size")
    if size and (match := _SIZE_RE.match(size.strip())):
        width, height = int(match.group(1)), int(match.group(2))
    return {
        "steps": _number(params.get("Steps"), int),
        "sampler": params.get("Sampler"),
        "cfg_scale": _number(params.get("CFG scale"), float),
        "seed": _number(params.get("Seed"), int),
        "width": width,
        "height": height,
        "model": params.get("Model"),
        "model_hash": params.get("Model hash"),
        "face_restoration": params.get("Face restoration"),
        "version": params.get("Version"),
    }


def pnginfo_for(infotext: str) -> PngImagePlugin.PngInfo:
    """A PngInfo carrying the infotext in a `parameters` tEXt chunk, as A1111 writes it."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, infotext)
    return info


def read_infotext(image) -> str | None:
    """The `parameters` text of an open PIL image (or None). Treat it as untrusted input."""
    text = getattr(image, "info", {}).get(PARAMETERS_KEY)
    if text is None:
        text = getattr(image, "text", {}).get(PARAMETERS_KEY) if hasattr(image, "text") else None
    return text if isinstance(text, str) else None
