"""LoRA stage through the real `accelerate launch training_scripts/train_lora.py` on the tiny base at 64 px.

Each launch costs 10-20 s of process start-up, so scenarios share launches:
- overfit: 4 images x 50 steps with UNet + text-encoder LoRA -> loss ratio, every output file, rotation,
  and the diffusers file vs the kohya file in the tiny base;
- resume: 6 steps in one go vs 3 steps stopped by a real SIGINT + `--resume_from_checkpoint latest`;
- DDP: two gloo processes with prior preservation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dermt2im_hub.utils.launch import free_local_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training_scripts" / "train_lora.py"
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu.yaml"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


@pytest.fixture(scope="module")
def four_phantoms(tmp_path_factory) -> Path:
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("ph4"), PhantomConfig(num_images=4, size=64, seed=1),
                         progress=False)


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """One torch thread: on a busy 2-core machine OpenMP threads spin at barriers and a tiny conv gets ~100x
    slower (measured 35 ms vs 0.4 ms); the launched processes get OMP_NUM_THREADS=1 for the same reason."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def launch(*args, launcher=("--config_file", str(CPU_CONFIG)), env=None, check=True):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                **(env or {})}
    command = [*ACCELERATE, *launcher, str(SCRIPT), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def common(base, data, out, steps):
    return ["--pretrained_model_name_or_path", base, "--train_data_dir", data, "--output_dir", out,
            "--resolution", 64, "--max_train_steps", steps, "--validation_inference_steps", 2,
            "--validation_seeds", "[0]"]


def loss_history(out: Path) -> list[float]:
    lines = (out / "loss_history.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def lora_modules(model) -> int:
    return sum(1 for _, m in model.named_modules() if len(getattr(m, "lora_A", None) or {}) > 0)


def tiny_image(base: Path, lora_dir: Path | None = None, weight_name: str | None = None):
    """(image for seed 0, LoRA-carrying modules in the UNet, in the text encoder)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir), weight_name=weight_name)
    image = pipe("a dermoscopic image of a malignant skin lesion", num_inference_steps=3, height=64, width=64,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    return image, lora_modules(pipe.unet), lora_modules(pipe.text_encoder)


def safetensors_metadata(path: Path) -> tuple[list[str], dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys()), handle.metadata()


def test_overfit_outputs_and_both_weight_formats(tmp_path, tiny_base, four_phantoms):
    out = tmp_path / "lora"
    launch(*common(tiny_base, four_phantoms, out, 50), "--train_batch_size", 2, "--learning_rate", "1e-2",
           "--rank", 8, "--lora_alpha", 16, "--train_text_encoder",
           "--target_modules", "to_q,to_k,to_v,to_out.0,proj_in,proj_out,conv_in,conv_out",
           "--logging_steps", 10, "--checkpointing_steps", 20, "--checkpoints_total_limit", 1,
           "--validation_steps", 20)

    losses = loss_history(out)  # means over steps 1-10, ..., 41-50
    assert len(losses) == 5 and losses[-1] < 0.6 * losses[0], losses  # measured: 0.95 -> 0.33
    manifest = json.loads((out / "manifest.json").read_text())
    card = manifest["extra"]["card"]
    assert (manifest["stage"], manifest["status"], card["steps"]) == ("train_lora", "complete", 50)
    assert card["weight_files"] == {"diffusers": "pytorch_lora_weights.safetensors",
                                    "kohya": "dermt2im_lora_kohya.safetensors"}
    assert (card["lora_rank"], card["lora_alpha"], card["num_train_images"]) == (8, 16.0, {"benign": 2,
                                                                                         "malignant": 2})
    assert card["text_encoder_lora"]["rank"] == 8 and card["final_loss"] == pytest.approx(losses[-1], rel=1e-4)
    assert card["base_model_sha256"] and card["data_manifest_sha256"] and card["test_exclusion_checked"] is False
    for sample in card["sample_images"]:
        assert (out / sample["path"]).is_file() and sample["path"].startswith("samples/final/")
    assert len(list((out / "samples" / "step-000020").glob("*.png"))) == 2  # one per class prompt, seed 0
    assert (out / "README.md").read_text().startswith("---") and (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "logs").rglob("events.out.tfevents.*")) and (out / "training_config.yaml").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-50"]  # total_limit 1: 20 and 40 rotated out

    keys, meta = safetensors_metadata(out / "pytorch_lora_weights.safetensors")
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert (adapter["unet.r"], adapter["unet.lora_alpha"], adapter["text_encoder.r"]) == (8, 16, 8)
    assert any(k.startswith("text_encoder.text_model.encoder.") for k in keys)
    keys, meta = safetensors_metadata(out / "dermt2im_lora_kohya.safetensors")
    assert {k.split("_")[1] for k in keys} == {"unet", "te"} and meta["ss_network_dim"] == "8"
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in keys)

    base_image, _, _ = tiny_image(tiny_base)
    diffusers_image, *diffusers_modules = tiny_image(tiny_base, out, "pytorch_lora_weights.safetensors")
    kohya_image, *kohya_modules = tiny_image(tiny_base, out, "dermt2im_lora_kohya.safetensors")
    # every trained module loads: 4 transformers x (8 attention projections + proj_in/out) + conv_in/out = 42;
    # 4 projections x 2 CLIP layers = 8
    assert diffusers_modules == kohya_modules == [42, 8]
    assert np.abs(diffusers_image - base_image).mean() > 1e-3  # the adapter changes the output
    np.testing.assert_allclose(kohya_image, diffusers_image, atol=1e-5)  # same adapter in both formats


def test_interrupt_and_resume_match_an_uninterrupted_run(tmp_path, tiny_base, four_phantoms):
    # flips, gradient accumulation, dropout and a warm-up + cosine schedule: all must line up after resume
    args = ["--train_batch_size", 1, "--gradient_accumulation_steps", 2, "--random_flip", "--lora_dropout", 0.1,
            "--lr_scheduler", "cosine", "--lr_warmup_steps", 2, "--learning_rate", "1e-3", "--logging_steps", 1,
            "--checkpointing_steps", 0, "--validation_steps", 2, "--report_to", "none"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    launch(*common(tiny_base, four_phantoms, straight, 6), *args)
    stopped = launch(*common(tiny_base, four_phantoms, split, 6), *args,
                     env={"DERMT2IM_TEST_INTERRUPT_AT_STEP": "3"}, check=False)
    assert stopped.returncode != 0 and "interrupted at step 3" in stopped.stderr, stopped.stderr[-3000:]
    assert json.loads((split / "manifest.json").read_text())["status"] == "interrupted"
    assert [p.name for p in (split / "checkpoints").iterdir()] == ["checkpoint-3"]
    assert not (split / "pytorch_lora_weights.safetensors").exists()
    launch(*common(tiny_base, four_phantoms, split, 6), *args, "--resume_from_checkpoint", "latest")

    from safetensors.torch import load_file

    one_go = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    resumed = load_file(str(split / "pytorch_lora_weights.safetensors"))
    assert one_go.keys() == resumed.keys()
    for key in one_go:  # tolerance 0: same ops in the same order on CPU give bit-identical weights
        assert torch.equal(one_go[key], resumed[key]), key
    assert loss_history(straight) == loss_history(split)
    assert json.loads((split / "manifest.json").read_text())["extra"]["resumed_from"].endswith("checkpoint-3")


def test_two_process_ddp_with_prior_preservation(tmp_path, tiny_base, four_phantoms):
    out = tmp_path / "ddp"
    launch(*common(tiny_base, four_phantoms, out, 4), "--train_batch_size", 1, "--with_prior_preservation",
           "--class_prompt", "a dermoscopic image of skin", "--num_class_images", 2, "--prior_generation_steps", 2,
           "--checkpointing_steps", 0, "--validation_steps", 0, "--report_to", "none",
           launcher=("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no", "--main_process_port", str(free_local_port())),
           env={"ACCELERATE_USE_CPU": "1"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["distributed"]["num_processes"] == 2
    assert manifest["extra"]["distributed"]["distributed_type"] == "MULTI_CPU"
    assert manifest["extra"]["distributed"]["backend"] == "gloo"
    assert manifest["extra"]["card"]["hyperparameters"]["total_batch_size"] == 2
    assert len(list(out.rglob("pytorch_lora_weights.safetensors"))) == 1
    assert len(list(out.rglob("dermt2im_lora_kohya.safetensors"))) == 1
    assert len(list((out / ".cache" / "class_images").glob("class-*.png"))) == 2


@pytest.mark.slow
def test_torch_compile_run_saves_the_same_adapter_layout(tmp_path, tiny_base, four_phantoms):
    """`--torch_compile` (a GPU option) exercised on CPU: checkpoints, validation samples and the saved
    adapter must not carry torch.compile's `_orig_mod.` prefix, and the weights must load into the pipeline."""
    from safetensors.torch import load_file

    args = ["--train_batch_size", 2, "--learning_rate", "1e-3", "--checkpointing_steps", 2, "--validation_steps", 2,
            "--report_to", "none"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    launch(*common(tiny_base, four_phantoms, eager, 3), *args)
    launch(*common(tiny_base, four_phantoms, compiled, 3), *args, "--torch_compile")
    for name in ("pytorch_lora_weights.safetensors", "dermt2im_lora_kohya.safetensors"):
        a, b = load_file(str(eager / name)), load_file(str(compiled / name))
        assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b), name
        for key in a:  # inductor reorders float sums: close, not bitwise
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    assert (compiled / "checkpoints" / "checkpoint-2").is_dir()
    assert len(list((compiled / "samples" / "step-000002").glob("*.png"))) == 2
    manifest = json.loads((compiled / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["torch_compile"] is True
    _, unet_modules, _ = tiny_image(tiny_base, compiled, "pytorch_lora_weights.safetensors")
    assert unet_modules > 0
