"""End-to-end generation on the tiny base (64 px, 1-3 steps): samplers, infotext, determinism, resume, CLI,
two real CPU ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dermt2im_hub.config import load_config
from dermt2im_hub.generation.infotext import parse_infotext, read_infotext
from dermt2im_hub.generation.outputs import FolderMismatchError
from dermt2im_hub.generation.plan import GenerationConfig
from dermt2im_hub.generation.runner import generate
from dermt2im_hub.generation.samplers import known_samplers
from dermt2im_hub.utils.files import read_jsonl, sha256_file, write_jsonl

CONTRACT_KEYS = {"file_name", "label", "prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width",
                 "height", "base_model", "base_model_revision", "base_model_hash", "adapters", "transformations",
                 "index", "sha256", "package_version"}


def make_config(tiny_base, output, **overrides) -> GenerationConfig:
    values = {"base": str(tiny_base), "output": str(output), "size": 64, "steps": "2", "num_images": 6,
              "batch_size": 4, "progress": False}
    values.update(overrides)
    return load_config(GenerationConfig, overrides=values)


def png_bytes(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob("*/*.png"))}


def test_every_registered_sampler_runs(tiny_base, tmp_path):
    samplers = known_samplers()
    config = make_config(tiny_base, tmp_path / "out", samplers=samplers, classes=["malignant"],
                         num_images=len(samplers), batch_size=4)
    result = generate(config)
    assert result.finished == len(samplers)
    rows = read_jsonl(tmp_path / "out" / "metadata.jsonl")
    assert sorted(r["sampler"] for r in rows) == sorted(samplers)
    pixels = {}
    for row in rows:
        with Image.open(tmp_path / "out" / row["file_name"]) as image:
            assert parse_infotext(read_infotext(image))["sampler"] == row["sampler"]
            pixels[row["sampler"]] = np.asarray(image.convert("RGB"), dtype=np.float32)
        assert pixels[row["sampler"]].std() > 1.0, f"{row['sampler']} gave a flat image"
    assert len({arr.tobytes() for arr in pixels.values()}) == len(samplers)


def test_output_folder_contract_and_infotext_round_trip(tiny_base, tmp_path):
    out = tmp_path / "out"
    config = make_config(tiny_base, out, num_images=4, steps="1-3", samplers="Euler a,DPM++ 2M SDE Karras",
                         prompt_template="a {label} mole, irregular border: dark {size}",
                         transformations={"size": {"tiny": {"text": "and tiny"}}},
                         negative_prompt="blurry, text\nwatermark", cfg=6.5)
    generate(config)
    rows = read_jsonl(out / "metadata.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "generate" and manifest["status"] == "complete"
    assert manifest["outputs"]["num_images"] == 4 and manifest["outputs"]["per_class"] == {"benign": 2, "malignant": 2}
    assert (out / "contact_sheet.png").is_file() and (out / "generation_config.yaml").is_file()
    assert len(read_jsonl(out / "plan.jsonl")) == 4
    for row in rows:
        assert set(row) == CONTRACT_KEYS
        path = out / row["file_name"]
        assert path.name == f"{row['index']:05d}-{row['seed']}.png" and path.parent.name == row["label"]
        assert sha256_file(path) == row["sha256"] and row["transformations"] == ["size:tiny"]
        assert len(row["base_model_hash"]) == 64 and row["adapters"] == []
        with Image.open(path) as image:
            parsed = parse_infotext(read_infotext(image))
        assert "," in parsed["prompt"] and parsed["prompt"] == row["prompt"]
        assert parsed["negative_prompt"] == "blurry, text\nwatermark" == row["negative_prompt"]
        assert (parsed["steps"], parsed["sampler"], parsed["cfg_scale"], parsed["seed"]) == (
            row["steps"], row["sampler"], 6.5, row["seed"])
        assert (parsed["width"], parsed["height"]) == (64, 64)
        assert parsed["model_hash"] == row["base_model_hash"][:10] and parsed["version"].startswith("dermt2im-hub ")


def test_same_plan_is_bitwise_identical_whatever_the_batch_size(tiny_base, tmp_path):
    common = dict(num_images=7, steps="2-3", samplers="Euler a,DPM++ 2M SDE Karras")
    first = generate(make_config(tiny_base, tmp_path / "a", batch_size=4, **common)).output
    again = generate(make_config(tiny_base, tmp_path / "b", batch_size=4, **common)).output
    single = generate(make_config(tiny_base, tmp_path / "c", batch_size=1, **common)).output
    odd = generate(make_config(tiny_base, tmp_path / "d", batch_size=3, **common)).output
    reference = png_bytes(first)
    assert len(reference) == 7
    assert png_bytes(again) == reference
    assert png_bytes(single) == reference
    assert png_bytes(odd) == reference
    assert (first / "metadata.jsonl").read_bytes() == (single / "metadata.jsonl").read_bytes()


def test_interrupted_run_resumes_to_exactly_the_plan(tiny_base, tmp_path):
    out = tmp_path / "out"
    config = make_config(tiny_base, out, num_images=10, batch_size=2, steps="1", samplers="Euler")
    calls = []

    def crash_after_two_batches(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        generate(config, after_batch=crash_after_two_batches)
    pngs = sorted(out.glob("*/*.png"))
    assert 4 <= len(pngs) < 10  # the batches written before the interruption (plus one already rendered)
    # consistent with the PNGs even after the interruption
    assert len(read_jsonl(out / "metadata.jsonl")) == len(pngs)
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"

    # What a kill -9 can leave: a half-written temp file, and a PNG whose row never reached the log.
    (out / "benign" / ".00008-123.png.abcd.tmp").write_bytes(b"\x89PNG half")
    log = out / ".generate" / "rows-rank0.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][:20])  # last row torn
    (out / "metadata.jsonl").unlink()

    result = generate(config)
    # the PNG whose row was torn is kept (its infotext matches the plan) and its row is rebuilt
    assert result.generated == 10 - len(pngs) and result.finished == 10
    rows = read_jsonl(out / "metadata.jsonl")
    assert sorted(r["index"] for r in rows) == list(range(10))
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.png")) == sorted(r["file_name"] for r in rows)
    assert not list(out.rglob("*.tmp"))
    assert all(sha256_file(out / r["file_name"]) == r["sha256"] for r in rows)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    # a third run has nothing left to do
    assert generate(config).generated == 0


def test_resume_with_a_different_plan_is_refused(tiny_base, tmp_path):
    out = tmp_path / "out"
    generate(make_config(tiny_base, out, num_images=2, steps="1"))
    with pytest.raises(FolderMismatchError, match="steps"):
        generate(make_config(tiny_base, out, num_images=2, steps="2"))
    # runtime-only settings may change between runs
    assert generate(make_config(tiny_base, out, num_images=2, steps="1", batch_size=1)).generated == 0


def test_cli_generate_and_errors(tiny_base, tmp_path, run_cli):
    out = tmp_path / "cli"
    code, stdout, stderr = run_cli("generate", "--base", tiny_base, "--output", out, "--num-images", "4",
                                   "--samplers", "Euler,Euler a", "--steps", "1-2", "--cfg", "7", "--size", "64",
                                   "--seed", "5", "--no-progress")
    assert code == 0, stderr
    assert "4 of 4 images" in stdout
    rows = read_jsonl(out / "metadata.jsonl")
    assert {r["sampler"] for r in rows} == {"Euler", "Euler a"} and {r["steps"] for r in rows} <= {1, 2}
    assert "dermt2im-hub `generate` output" in (out / "README.md").read_text()  # the folder's card

    for args, message in [
        (["--samplers", "Euler,Magic"], "unknown sampler 'Magic'; known samplers:"),
        (["--steps", "5-2"], "reversed"),
        (["--cfg", "0.9"], "cfg must be >= 1"),
        (["--size", "60"], "multiple of 8"),
        (["--lora", str(tmp_path / "missing.safetensors")], "not found"),
    ]:
        code, _, stderr = run_cli("generate", "--base", tiny_base, "--output", tmp_path / "bad", *args)
        assert code == 2 and message in stderr and "Traceback" not in stderr, (args, stderr)
    code, _, stderr = run_cli("generate", "--base", tmp_path / "no-such-model", "--output", tmp_path / "bad")
    assert code == 2 and "no-such-model' not found" in stderr
    from dermt2im_hub.manifest import read_manifest, write_manifest

    write_manifest(tmp_path / "data", "preprocess", {})  # generating into it would replace its metadata
    code, _, stderr = run_cli("generate", "--base", tiny_base, "--output", tmp_path / "data", "--num-images", "2",
                              "--size", "64", "--steps", "1")
    assert code == 2 and "holds the output of stage 'preprocess'" in stderr
    assert read_manifest(tmp_path / "data")["stage"] == "preprocess"


@pytest.mark.integration
def test_two_cpu_processes_split_the_plan(tiny_base, tmp_path):
    """A real 2-rank launch (ACCELERATE_USE_CPU=1 + --multi_gpu): the union is the full plan, the ranks'
    shares are disjoint, and the images equal a one-process run's with the same threads per process."""
    out = tmp_path / "two"
    args = ["--base", str(tiny_base), "--output", str(out), "--num-images", "8", "--steps", "1-2", "--size", "64",
            "--samplers", "Euler,Euler a", "--batch-size", "4", "--no-progress", "--cpu-threads", "1"]
    proc = subprocess.run([sys.executable, "-m", "dermt2im_hub.cli", "generate", "--num-processes", "2", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(out / "metadata.jsonl")
    assert sorted(r["index"] for r in rows) == list(range(8))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["num_processes"] == 2
    by_rank = {}
    for rank in (0, 1):
        by_rank[rank] = {r["index"] for r in read_jsonl(out / ".generate" / f"rows-rank{rank}.jsonl")}
    assert by_rank[0] and by_rank[1] and not by_rank[0] & by_rank[1]
    assert by_rank[0] | by_rank[1] == set(range(8))
    assert manifest["extra"]["images_by_rank"] == {"0": len(by_rank[0]), "1": len(by_rank[1])}

    single = generate(make_config(tiny_base, tmp_path / "one", num_images=8, steps="1-2", samplers="Euler,Euler a",
                                  cpu_threads=1))
    assert png_bytes(out) == png_bytes(single.output)


def test_resume_respects_the_qa_stage(tiny_base, tmp_path):
    """QA moves rejected images to rejected/{label}/ and adds keys to their rows: a later generate run neither
    renders them again nor drops those rows."""
    out = tmp_path / "out"
    config = make_config(tiny_base, out, num_images=2, steps="1")
    generate(config)
    rows = read_jsonl(out / "metadata.jsonl")
    moved = f"rejected/{rows[0]['file_name']}"
    (out / moved).parent.mkdir(parents=True)
    (out / rows[0]["file_name"]).rename(out / moved)
    rows[0].update(file_name=moved, qa_passed=False, qa_reasons=["blurry"])
    rows[1].update(qa_passed=True, qa_reasons=[])
    write_jsonl(out / "metadata.jsonl", rows)

    assert generate(config).generated == 0
    assert read_jsonl(out / "metadata.jsonl") == rows


@pytest.mark.integration
def test_kill_9_mid_run_then_resume(tiny_base, tmp_path):
    """A real SIGKILL while images are being written; the re-run ends with exactly the plan."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    args = ["generate", "--base", str(tiny_base), "--output", str(out), "--num-images", "24", "--steps", "3",
            "--size", "64", "--samplers", "Euler a", "--batch-size", "4", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "dermt2im_hub.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("*/*.png"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    written = len(list(out.glob("*/*.png")))
    assert 5 <= written < 24, "the run finished (or never started) before it could be killed"

    result = generate(make_config(tiny_base, out, num_images=24, steps="3", samplers="Euler a"))
    assert result.finished == 24 and result.generated == 24 - written
    rows = read_jsonl(out / "metadata.jsonl")
    assert sorted(r["index"] for r in rows) == list(range(24))
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.png")) == sorted(r["file_name"] for r in rows)
    assert not list(out.rglob("*.tmp"))


def _pixels(folder) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.glob("*/*.png")):
        with Image.open(path) as image:
            out[path.relative_to(folder).as_posix()] = np.asarray(image.convert("RGB"), dtype=np.int16)
    return out


def test_fused_qkv_projections_render_the_same_images(tiny_base):
    """The CUDA fast path fuses q/k/v into one GEMM; on the tiny base it must give the same images (to float
    precision) and really switch the processors, and prepare_pipeline must leave CPU runs unfused."""
    import torch
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from dermt2im_hub.generation.models import load_base
    from dermt2im_hub.generation.runner import fuse_projections, prepare_pipeline

    def render(pipe):
        return pipe(["a mole", "a lesion"], num_inference_steps=3, height=64, width=64, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images

    pipe, _ = load_base(str(tiny_base), None, None)
    prepare_pipeline(pipe, torch.device("cpu"), torch.float32)
    assert not any(isinstance(p, FusedAttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    unfused = render(pipe)
    assert fuse_projections(pipe)
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in pipe.vae.attn_processors.values())
    np.testing.assert_allclose(render(pipe), unfused, atol=1e-5)


@pytest.mark.slow
def test_compiled_generation_matches_eager(tiny_base, tmp_path):
    """`compile: true` (the GPU benchmark's fast row) compiles the UNet and the VAE decoder; checked here on CPU
    so a broken compile path is found before a GPU session spends its minutes on it."""
    eager = generate(make_config(tiny_base, tmp_path / "eager", num_images=2, batch_size=2)).output
    compiled = generate(make_config(tiny_base, tmp_path / "compiled", num_images=2, batch_size=2, compile=True))
    assert compiled.finished == 2
    a, b = _pixels(eager), _pixels(compiled.output)
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:  # inductor reorders float sums: allow one grey level
        assert np.abs(a[name] - b[name]).max() <= 1, name


def test_a_failing_torch_compile_falls_back_to_eager(tiny_base, tmp_path, monkeypatch, caplog):
    """`compile: true` where torch.compile cannot build kernels (no compiler, no Triton): the run warns,
    continues with the eager modules and gives the eager images."""
    import logging

    import torch
    from torch._dynamo.exc import BackendCompilerFailed

    class CannotCompile(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, *args, **kwargs):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C compiler"), None)

        def __getattr__(self, name):  # the pipeline reads .config, .dtype ... of the UNet
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self._orig_mod, name)

    monkeypatch.setattr(torch, "compile", CannotCompile)
    caplog.set_level(logging.WARNING)
    eager = generate(make_config(tiny_base, tmp_path / "eager", num_images=2, batch_size=2)).output
    fallback = generate(make_config(tiny_base, tmp_path / "fallback", num_images=2, batch_size=2, compile=True))
    assert fallback.finished == 2 and "torch.compile failed" in caplog.text
    assert png_bytes(fallback.output) == png_bytes(eager)
