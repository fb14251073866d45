"""A1111 infotext: round trip of our writer through the A1111-grammar parser, and the real sample PNGs."""

from __future__ import annotations

import pytest
from PIL import Image

from dermt2im_hub.generation.infotext import format_infotext, parse_infotext, pnginfo_for, read_infotext


def test_round_trip_with_comma_colon_and_negative_prompt(tmp_path):
    prompt = "a malignant mole, irregular border: dark"
    negative = "blurry, text\nwatermark"
    params = {"Steps": 23, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 4294967295, "Size": (512, 512),
              "Model hash": "0123456789", "Model": "sd-v1-5, dermt2im", "Lora hashes": "derm: abcdef123456",
              "Version": "dermt2im-hub 0.1.0"}
    text = format_infotext(prompt, negative, params)
    assert 'Model: "sd-v1-5, dermt2im"' in text and "CFG scale: 7," in text
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=pnginfo_for(text))
    parsed = parse_infotext(read_infotext(Image.open(path)))
    assert parsed["prompt"] == prompt and parsed["negative_prompt"] == negative
    assert (parsed["steps"], parsed["sampler"], parsed["cfg_scale"], parsed["seed"]) == (23, "Euler a", 7.0, 4294967295)
    assert (parsed["width"], parsed["height"], parsed["model"]) == (512, 512, "sd-v1-5, dermt2im")
    assert parsed["params"]["Lora hashes"] == "derm: abcdef123456"


def test_prompt_without_parameters_line():
    parsed = parse_infotext("just a prompt")
    assert parsed["prompt"] == "just a prompt" and parsed["steps"] is None and parsed["params"] == {}


def test_real_a1111_samples_parse(shared_data):
    folder = shared_data / "dermt2im-sample"
    if not folder.is_dir():
        pytest.skip("dermt2im-sample absent")
    samplers = set()
    files = sorted(folder.glob("*/*.png"))
    assert len(files) == 160
    for path in files:
        parsed = parse_infotext(read_infotext(Image.open(path)))
        assert 20 <= parsed["steps"] <= 26 and parsed["cfg_scale"] == 7.0 and (parsed["width"], parsed["height"]) == (512, 512)
        assert str(parsed["seed"]) == path.stem.split("-")[1]  # A1111 names files NNNNN-SEED.png
        assert parsed["model_hash"] == "8d72386f9b" and parsed["version"] == "v1.5.1"
        samplers.add(parsed["sampler"])
    assert {"Euler a", "Euler", "Heun", "DPM++ 2M SDE Karras"} <= samplers


def test_pair_scan_is_a1111s_findall_in_linear_time():
    import random

    from dermt2im_hub.generation.infotext import _PARAM_RE, _param_pairs

    rng = random.Random(0)
    pieces = ["a", "Z", "1", "_", " ", "-", "/", ":", ",", '"', "\\", "\t", "é", "x: ", ", ", ': "', '\\"']
    for _ in range(5000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        assert _param_pairs(line) == _PARAM_RE.findall(line), repr(line)
    # untrusted PNG text: a 64 KiB run without ':' used to cost seconds of backtracking per image
    assert parse_infotext("prompt\n" + "a-" * 32768)["params"] == {}


@pytest.mark.parametrize("params, expected", [
    ("Steps: inf, Sampler: Euler, CFG scale: nan, Seed: 1e999", (None, None, None)),
    ("Steps: -inf, Sampler: Euler, CFG scale: 1e999, Seed: NaN", (None, None, None)),
    ("Steps: 1e400, Sampler: Euler, CFG scale: -Infinity, Seed: 99999999999999999999999", (None, None, 10**23 - 1)),
    ("Steps: 20.0, Sampler: Euler, CFG scale: 7.5, Seed: 18446744073709551615", (20, 7.5, 2**64 - 1)),
])
def test_non_finite_numbers_read_as_missing(params, expected):
    """Untrusted PNG text: `Steps: inf` or `Seed: 1e999` once raised OverflowError and stopped a dataset build.
    Integers are read exactly (a value out of a column's range is the dataset schema's to null)."""
    parsed = parse_infotext(f"a mole\n{params}")
    assert (parsed["steps"], parsed["cfg_scale"], parsed["seed"]) == expected
    assert parsed["sampler"] == "Euler" and parsed["prompt"] == "a mole"
