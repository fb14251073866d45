"""The benchmark scripts and bench/gpu.sh: every bench runs end to end on the tiny base (a few steps, no timing
claims), writes the JSON gpu_summary.py reads, and every command line in gpu.sh parses with its bench's own
argument parser. A GPU session has minutes, not hours: a typo in gpu.sh must fail here, not there."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_script_commands() -> list[list[str]]:
    """The python command lines of bench/gpu.sh, continuation lines joined, `$OUT` left as text."""
    text = (BENCH / "gpu.sh").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.match(r"^(?:timeout \d+ )?python3 (bench/\w+\.py)(.*)$", line.strip())
        if match:
            commands.append([match.group(1), *shlex.split(match.group(2))])
    return commands


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                            timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_every_gpu_script_command_parses_with_its_bench():
    commands = gpu_script_commands()
    scripts = [c[0] for c in commands]
    assert scripts == ["bench/train_step.py", "bench/generate.py", "bench/classifier.py", "bench/gpu_summary.py"]
    json_names = []
    for script, *argv in commands[:3]:
        args = load_bench(Path(script).stem).parse_args(argv)
        assert args.device == "cuda"
        json_names.append(Path(str(args.json)).name)
        if script != "bench/classifier.py":
            assert args.full_size and args.compile, script
    summary = (BENCH / "gpu_summary.py").read_text()
    assert all(f'"{name}"' in summary for name in json_names), json_names
    assert json_names == ["train_step.json", "generate.json", "classifier.json"]


@pytest.mark.slow
def test_benches_run_on_the_tiny_base_and_the_summary_reads_them(tmp_path):
    run_bench("train_step.py", "--steps", "2", "--rounds", "1", "--warmup", "1", "--images", "2", "--in-process",
              "--only", "ours - fused AdamW", "--json", str(tmp_path / "train_step.json"))
    training = json.loads((tmp_path / "train_step.json").read_text())
    assert [r["name"] for r in training["results"]] == ["reference", "ours", "ours - fused AdamW"]
    assert all(r["samples_per_s"] > 0 and r["mfu"] is None for r in training["results"])  # no MFU on CPU

    printed = run_bench("generate.py", "--images", "2", "--baseline-images", "1", "--repeats", "1",
                        "--batch-sizes", "2", "--steps", "2", "--json", str(tmp_path / "generate.json")).stdout
    generation = json.loads((tmp_path / "generate.json").read_text())
    assert [r["row"] for r in generation["rows"]] == ["per-image pipeline", "ours (batch 2)"]
    assert "| per-image pipeline | 1 |" in printed

    run_bench("classifier.py", "--models", "mobilenetv2_100", "--num-images", "8", "--source-size", "64",
              "--image-size", "32", "--batch-size", "4", "--eval-batch-size", "8", "--epochs", "1", "--workers", "0",
              "--loader-batches", "2", "--json", str(tmp_path / "classifier.json"))
    classifiers = json.loads((tmp_path / "classifier.json").read_text())
    assert [r["model"] for r in classifiers] == ["mobilenetv2_100"] and classifiers[0]["train_img_s"] > 0

    table = run_bench("gpu_summary.py", str(tmp_path)).stdout
    assert "| 1. training: ours | " in table and "| 2. generation: ours (batch 2) | " in table
    assert "| 4. mobilenetv2_100 32 px | " in table and "not measured" not in table


def test_summary_names_missing_benches_and_failed_rows(tmp_path, capsys):
    (tmp_path / "train_step.json").write_text(json.dumps({
        "args": {"full_size": True, "resolution": 512},
        "results": [{"name": "reference", "samples_per_s": 40.0, "peak_mb": 9000, "mfu": 0.11},
                    {"name": "ours", "samples_per_s": 100.0, "peak_mb": 8000, "mfu": 0.274},
                    {"name": "ours + torch.compile", "error": "TimeoutError: compile"}]}))
    load_bench("gpu_summary").main(str(tmp_path))
    table = capsys.readouterr().out
    assert "| 1. training: ours | 100.00 samples/s, UNet MFU 27.4% | 2.50x |" in table
    assert "| 1. training: ours + torch.compile | failed: TimeoutError: compile |" in table
    assert "| 1. paper recipe (336k samples) at ours' rate | 0.93 h" in table
    assert "| 2. generation | not measured" in table and "| 4. classifiers | not measured" in table


def test_training_mfu_counts_forward_and_activation_gradients_only():
    """A frozen base needs no weight gradients: 2 x 677 GFLOPs per 512-px sample, not full fine-tuning's 3x."""
    train_step = load_bench("train_step")
    args = train_step.parse_args(["--device", "cuda", "--full-size", "--resolution", "512", "--peak-tflops", "1000"])
    assert train_step.mfu(args, 100.0) == pytest.approx(100 * 2 * 677e9 / 1e15)
    args = train_step.parse_args(["--device", "cuda", "--full-size", "--resolution", "256", "--peak-tflops", "1000"])
    assert train_step.mfu(args, 100.0) == pytest.approx(100 * 2 * 677e9 / 4 / 1e15)
    assert train_step.mfu(train_step.parse_args([]), 100.0) is None  # CPU, tiny base: no MFU claim
