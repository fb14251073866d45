"""Learning checks on the tiny world: the shipped pretrained tiny base plus a short DreamBooth-LoRA on phantoms.

With a random base every check here would see the same noise; on the pretrained base they fail when learning
breaks: swapped class prompts, a LoRA that is saved but not applied, a kohya export that differs from the
diffusers file, a sampler with a wrong mapping or timestep spacing, a single-file checkpoint that loads wrongly.
The judge is a small classifier trained on real phantoms (dermt2im_hub.testing.phantom_classifier).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermt2im_hub.config import load_config
from dermt2im_hub.generation.plan import GenerationConfig
from dermt2im_hub.generation.runner import generate
from dermt2im_hub.generation.samplers import known_samplers
from dermt2im_hub.utils.files import read_jsonl

FIDELITY_STEPS = "12"
# Issue 18 asks for >= 85 %. The shipped base and the demo's LoRA recipe reach 0.906 here (32 images, deterministic:
# LoRA seed 0, one torch thread); the same recipe with LoRA seeds 1 and 2 gave 0.75 and 0.78 (bench/RESULTS.md), so
# the floor guards this recipe at this seed. A broken mapping lands far below (class prompts swapped: < 0.5).
MIN_FIDELITY = 0.85
IMAGES_PER_CHECK = 32  # 16 per class


class World:
    """The shared fixture's products: base folder, LoRA folder, the judge and a generation helper."""

    def __init__(self, base: Path, lora: Path, classifier, root: Path):
        self.base, self.lora, self.classifier, self.root = base, lora, classifier, root

    @property
    def lora_file(self) -> Path:
        return self.lora / "pytorch_lora_weights.safetensors"

    def generate(self, name: str, lora: list[str], samplers=("Euler",), num_images: int = IMAGES_PER_CHECK,
                 **overrides) -> tuple[list[Image.Image], list[dict]]:
        values = dict(base=str(self.base), lora=lora, output=str(self.root / name), num_images=num_images,
                      samplers=list(samplers), steps=FIDELITY_STEPS, cfg=7.0, size=64, seed=1, batch_size=16,
                      cpu_threads=1, progress=False)
        values.update(overrides)
        out = generate(load_config(GenerationConfig, overrides=values)).output
        rows = read_jsonl(out / "metadata.jsonl")
        return [Image.open(out / r["file_name"]).convert("RGB") for r in rows], rows

    def fidelity(self, images, rows) -> float:
        return self.classifier.fidelity(images, [r["label"] for r in rows])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> World:
    """Pretrained base (shipped weights) + the demo's LoRA trained on 48 phantoms + the phantom classifier."""
    from dermt2im_hub.pipeline.demo import demo_recipe
    from dermt2im_hub.testing.phantom_classifier import train_phantom_classifier
    from dermt2im_hub.testing.phantoms import PhantomConfig, make_phantoms
    from dermt2im_hub.testing.tiny_base import pretrained_tiny_base_path
    from dermt2im_hub.training.config import TrainLoraConfig
    from dermt2im_hub.training.trainer import train_lora

    root = tmp_path_factory.mktemp("tiny-world")
    base = pretrained_tiny_base_path(root / "cache")
    data = make_phantoms(root / "phantoms", PhantomConfig(num_images=48, size=128, seed=0), progress=False)
    # the demo's LoRA recipe (configs/demo.yaml), so these checks vouch for what the demo shows
    config = load_config(TrainLoraConfig, demo_recipe(), dict(
        pretrained_model_name_or_path=str(base), train_data_dir=str(data), output_dir=str(root / "lora"),
        checkpointing_steps=10_000, validation_seeds=[0], report_to="none"), section="training")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast on an idle machine and far faster on a busy one
    try:
        train_lora(config)
    finally:
        torch.set_num_threads(threads)
    return World(base, root / "lora", train_phantom_classifier(), root)


def test_pretrained_base_ships_with_its_hashes_and_loads_offline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from dermt2im_hub.testing.tiny_base import (
        BASE_INFO_FILE,
        SHIPPED_PRETRAINED_DIR,
        shipped_base_info,
        write_pretrained_tiny_base,
    )
    from dermt2im_hub.utils.files import sha256_file

    info = shipped_base_info()
    assert info["pretrained"] is True and "make-tiny-base --pretrained" in info["command"]
    for rel, digest in info["weights_sha256"].items():
        assert sha256_file(SHIPPED_PRETRAINED_DIR / rel) == digest, rel
    folder = write_pretrained_tiny_base(tmp_path / "base")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    written = json.loads((folder / BASE_INFO_FILE).read_text())
    assert written["shipped_weights_sha256"] == info["weights_sha256"] and written["world"]


def test_a_tampered_shipped_weight_is_refused(tmp_path):
    import shutil

    from dermt2im_hub.testing.tiny_base import SHIPPED_PRETRAINED_DIR, write_pretrained_tiny_base

    copy = shutil.copytree(SHIPPED_PRETRAINED_DIR, tmp_path / "shipped")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256"):
        write_pretrained_tiny_base(tmp_path / "out", source=copy)


def test_the_judge_tells_the_classes_apart_on_unseen_phantoms():
    from dermt2im_hub.testing.phantom_classifier import train_phantom_classifier
    from dermt2im_hub.testing.pretrain import PretrainConfig, render_training_set

    pixels, _, labels = render_training_set(PretrainConfig(num_images=64, phantom_seed=7))
    assert train_phantom_classifier().fidelity(list(pixels), labels) >= 0.95


@pytest.mark.slow  # the shared fixture trains the demo's LoRA: about 1.5 min idle, 4 on a busy 2-core VM
def test_lora_generations_carry_their_prompt_class(tiny_world):
    images, rows = tiny_world.generate("fidelity", [str(tiny_world.lora_file)])
    fidelity = tiny_world.fidelity(images, rows)
    print(f"label fidelity {fidelity:.3f}")
    assert fidelity >= MIN_FIDELITY, f"label fidelity {fidelity:.2f} < {MIN_FIDELITY}"
    swapped = tiny_world.classifier.fidelity(images, [{"benign": "malignant", "malignant": "benign"}[r["label"]]
                                                      for r in rows])
    assert swapped < 0.5


@pytest.mark.slow  # the shared fixture trains the demo's LoRA: about 1.5 min idle, 4 on a busy 2-core VM
def test_lora_scale_zero_loses_the_class_difference(tiny_world):
    applied = tiny_world.fidelity(*tiny_world.generate("scale1", [f"{tiny_world.lora_file}:1.0"]))
    off = tiny_world.fidelity(*tiny_world.generate("scale0", [f"{tiny_world.lora_file}:0.0"]))
    print(f"label fidelity at LoRA scale 0: {off:.3f}, scale 1: {applied:.3f}")
    # the base alone knows no classes: its draws match their prompt's class about half the time
    assert off <= 0.5 and applied - off >= 0.25, (off, applied)


@pytest.mark.slow  # the shared fixture trains the demo's LoRA: about 1.5 min idle, 4 on a busy 2-core VM
def test_kohya_export_draws_the_same_images_as_the_diffusers_file(tiny_world):
    kohya = json.loads((tiny_world.lora / "manifest.json").read_text())["extra"]["card"]["weight_files"]["kohya"]
    diffusers_images, _ = tiny_world.generate("d", [str(tiny_world.lora_file)], num_images=8)
    kohya_images, _ = tiny_world.generate("k", [str(tiny_world.lora / kohya)], num_images=8)
    diff = max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
               for a, b in zip(diffusers_images, kohya_images))
    print(f"kohya vs diffusers: max pixel difference {diff}")
    assert diff <= 2


@pytest.mark.slow  # the shared fixture trains the demo's LoRA: about 1.5 min idle, 4 on a busy 2-core VM
def test_every_sampler_draws_in_distribution_images(tiny_world):
    """Per sampler (8 images each): the share where the QA stage finds a lesion, and the median noise and sharpness
    within a band of the other samplers' median. A wrong scheduler mapping or timestep spacing leaves noise (or
    smooths the lesion away); label fidelity is pooled, as 8 images per sampler are too few to judge it alone."""
    from dermt2im_hub.quality.artifacts import analyze_image, lesion_found
    from dermt2im_hub.quality.config import ArtifactConfig

    samplers = known_samplers()
    images, rows = tiny_world.generate("samplers", [str(tiny_world.lora_file)], samplers=samplers,
                                       num_images=8 * len(samplers), steps="16")
    scores = [analyze_image(np.asarray(image)).scores() for image in images]
    report = {}
    for sampler in samplers:
        mine = [s for s, row in zip(scores, rows) if row["sampler"] == sampler]
        report[sampler] = {"lesion": np.mean([lesion_found(s, ArtifactConfig()) for s in mine]),
                           "noise": np.median([s["qa_noise"] for s in mine]),
                           "sharpness": np.median([s["qa_sharpness"] for s in mine])}
    print("per sampler:", {k: {m: round(float(v), 2) for m, v in r.items()} for k, r in report.items()})
    for sampler, r in report.items():
        others = [o for name, o in report.items() if name != sampler]
        assert r["lesion"] >= 0.6, (sampler, r)
        for metric in ("noise", "sharpness"):
            typical = np.median([o[metric] for o in others])
            assert typical / 1.5 <= r[metric] <= typical * 1.5, (sampler, metric, r[metric], typical)
    pooled = tiny_world.fidelity(images, rows)
    print(f"pooled label fidelity over every sampler: {pooled:.3f}")
    assert pooled >= MIN_FIDELITY - 0.05


# What each A1111 sampler is, written here independently of the registry: two are stochastic (fresh noise every
# step); of the deterministic ODE solvers, these are of second order or more and converge faster than Euler.
STOCHASTIC_SAMPLERS = {"Euler a", "DPM++ 2M SDE Karras"}
HIGHER_ORDER_SAMPLERS = {"Heun", "DPM++ 2M", "DPM++ 2M Karras", "UniPC"}


def _mean_abs_difference(a: list[Image.Image], b: list[Image.Image]) -> float:
    return float(np.mean([np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).mean() for x, y in zip(a, b)]))


@pytest.mark.slow  # the shared fixture trains the demo's LoRA: about 1.5 min idle, 4 on a busy 2-core VM
def test_deterministic_samplers_converge_to_one_image(tiny_world):
    """Same seeds and prompts: every deterministic sampler solves the same ODE, so at 20 steps it lands near a
    50-step Heun reference (mean absolute pixel difference, 0-255) while the stochastic ones land far from it, and
    at 8 steps the higher-order solvers are clearly nearer than Euler. A sampler mapped to the wrong scheduler class,
    prediction type, solver order or ancestral step fails here (a first-order "DPM++ 2M" sat at 0.93x Euler's
    distance, the real one at 0.59x); spacing is checked exactly in test_generation_plan."""
    assert STOCHASTIC_SAMPLERS | HIGHER_ORDER_SAMPLERS <= set(known_samplers())
    lora = [str(tiny_world.lora_file)]
    reference, _ = tiny_world.generate("ref-heun", lora, samplers=["Heun"], num_images=8, steps="50")

    def distance_to_reference(sampler: str, steps: int) -> float:
        images, _ = tiny_world.generate(f"ode-{sampler}-{steps}", lora, samplers=[sampler], num_images=8,
                                        steps=str(steps))
        return _mean_abs_difference(reference, images)

    at_50 = distance_to_reference("DPM++ 2M", 50)
    at_20 = {sampler: distance_to_reference(sampler, 20) for sampler in known_samplers()}
    at_8 = {sampler: distance_to_reference(sampler, 8) for sampler in ["Euler", *sorted(HIGHER_ORDER_SAMPLERS)]}
    print(f"mean abs difference to 50-step Heun: DPM++ 2M at 50 steps {at_50:.2f}; at 20 steps",
          {k: round(v, 2) for k, v in at_20.items()}, "; at 8 steps", {k: round(v, 2) for k, v in at_8.items()})
    assert at_50 <= 1.5, "two solvers at 50 steps disagree: the reference is wrong"
    deterministic = [s for s in known_samplers() if s not in STOCHASTIC_SAMPLERS]
    for sampler in deterministic:  # DDIM/PLMS start at t=951 (CompVis spacing): about 6 here, the rest under 1
        assert at_20[sampler] <= 10.0, (sampler, at_20[sampler])
    for sampler in STOCHASTIC_SAMPLERS:
        assert at_20[sampler] >= 2 * max(at_20[s] for s in deterministic), (sampler, at_20[sampler])
    for sampler in HIGHER_ORDER_SAMPLERS:
        assert at_8[sampler] <= 0.8 * at_8["Euler"], (sampler, at_8[sampler], at_8["Euler"])


@pytest.mark.slow  # the shared fixture trains the demo's LoRA: about 1.5 min idle, 4 on a busy 2-core VM
def test_single_file_checkpoint_generates_what_the_folder_does(tiny_world, tmp_path):
    from test_generation_models import save_as_a1111_checkpoint

    from dermt2im_hub.generation.models import load_base

    pipe, _ = load_base(str(tiny_world.base))
    checkpoint = tmp_path / "tiny-sd15-pretrained.safetensors"
    save_as_a1111_checkpoint(pipe, checkpoint)
    folder_images, _ = tiny_world.generate("folder", [str(tiny_world.lora_file)], num_images=8)
    file_images, _ = tiny_world.generate("single", [str(tiny_world.lora_file)], num_images=8,
                                         base=str(checkpoint), single_file_config=str(tiny_world.base))
    diff = max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
               for a, b in zip(folder_images, file_images))
    print(f"single file vs folder: max pixel difference {diff}")
    assert diff <= 2


def test_make_tiny_base_cli_writes_the_pretrained_base(tmp_path, run_cli):
    code, out, _ = run_cli("make-tiny-base", tmp_path / "base", "--pretrained")
    assert code == 0 and "pretrained" in out
    info = json.loads((tmp_path / "base" / "dermt2im_tiny_base.json").read_text())
    assert info["pretrained"] is True and (tmp_path / "base" / "tokenizer" / "vocab.json").is_file()
    code, _, err = run_cli("make-tiny-base", tmp_path / "other", "--from-scratch")
    assert code == 2 and "--pretrained" in err


def test_pretraining_captions_never_name_a_class():
    from dermt2im_hub.testing.pretrain import PretrainConfig, neutral_caption, render_training_set

    _, infos, _ = render_training_set(PretrainConfig(num_images=32, render_size=64))
    rng = np.random.default_rng(0)
    captions = {neutral_caption(info, rng, 0.5) for info in infos}
    assert len(captions) > 5 and all(c.startswith("a dermoscopic image of a") for c in captions)
    assert not any(word in c for c in captions for word in ("benign", "malignant", "melanoma", "nevus"))
