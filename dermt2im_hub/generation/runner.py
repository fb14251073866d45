"""`generate(config)`: render the plan into a generated folder, batched, resumable, over any number of processes.

Determinism: every image gets its own CPU `torch.Generator` seeded with its plan seed, handed to diffusers as
one generator per sample, so its initial latents and any sampler noise (Euler a, SDE) do not depend on which
other images share its batch, on the batch size, or on the process that renders it. Float rounding is the
remaining source of difference, and on CPU it is pinned down too:
- MKL/oneDNN pick different kernels for small or odd row counts (1-3 rows, 7 rows ...), so CPU batches are
  padded with throw-away rows to a multiple of `CPU_ROW_MULTIPLE`: images are then bitwise identical whatever
  the batch size (checked by the tests);
- the number of torch threads changes how reductions are split: `cpu_threads` pins it (accelerate gives each
  of N CPU ranks cores/N threads), and with the same threads per process, 1 and N processes give the same bytes.
On GPUs, images agree to float precision only (cuBLAS/cuDNN choose kernels by shape).

Processes: run under `accelerate launch` (or `dermt2im generate --num-processes N`), each rank renders a
strided share of the unfinished images of every (sampler, steps) group; rank 0 writes the folder's config,
plan, metadata.jsonl, contact sheet and manifest.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.generation import outputs
from dermt2im_hub.generation.plan import GenerationConfig, PlannedImage, expand_plan
from dermt2im_hub.utils.logging import get_logger

log = get_logger(__name__)

CPU_ROW_MULTIPLE = 4
_PAD_SEED = 0


@dataclass
class GenerationResult:
    output: Path
    planned: int
    finished: int  # images in the folder now (this rank's view after the final barrier)
    generated: int  # images this rank rendered in this run
    seconds: float
    rank: int = 0
    num_processes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if getattr(device, "type", str(device)) == "cuda" else torch.float32
    return getattr(torch, name)


def load_pipeline(config: GenerationConfig, device=None, dtype=None):
    """The base pipeline with adapters fused, on `device` in `dtype`, ready for batched sampling.
    Returns (pipe, BaseModelInfo, [AdapterInfo])."""
    import torch

    from dermt2im_hub.generation.models import load_adapters, load_base

    device = torch.device(device or "cpu")
    pipe, base = load_base(config.base, config.base_revision, config.single_file_config)
    adapters = load_adapters(pipe, list(config.lora), base)
    prepare_pipeline(pipe, device, dtype or resolve_dtype(config.dtype, device), compile_models=config.compile)
    return pipe, base, adapters


def prepare_pipeline(pipe, device, dtype, compile_models: bool = False):
    """Move to device/dtype and switch on the fast paths: SDPA attention (diffusers' default processor on
    torch 2); on CUDA also fused QKV projections and channels_last convolutions; optional torch.compile of the
    UNet and the VAE decoder. Adapters are already fused into the weights (load_adapters), so fusing the
    projections is safe. CPU stays on the unfused path: its output is promised bitwise whatever the batch."""
    import torch

    pipe.to(device=device)
    if pipe.unet.dtype != dtype:  # casting to the same dtype would only print diffusers' casting warning
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if hasattr(pipe.unet, "set_attn_processor"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # batches repeat the same few shapes: autotuned convolutions pay off
        fuse_projections(pipe)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_models:
        compile_pipeline(pipe)
    return pipe


def fuse_projections(pipe) -> bool:
    """One GEMM for q/k/v in self-attention (k/v in cross-attention) in the UNet and the VAE; False where the
    pipeline has no such switch or an attention block cannot be fused (added KV projections)."""
    if not hasattr(pipe, "fuse_qkv_projections"):
        return False
    try:
        pipe.fuse_qkv_projections(unet=True, vae=True)
    except ValueError:  # diffusers refuses models with added KV projections; the unfused path still works
        return False
    return True


def compile_pipeline(pipe) -> None:
    """torch.compile the UNet (about 93 % of a 25-step CFG image's FLOPs) and the VAE decoder (the rest); each
    compiles on its first batch and once more per new batch shape. 1x1 convolutions as matmuls is the inductor
    setting diffusers' own speed-up guide recommends for these UNets."""
    import torch

    if torch.cuda.is_available():
        import torch._inductor.config as inductor_config

        inductor_config.conv_1x1_as_mm = True
    if not isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule):
        pipe.unet = torch.compile(pipe.unet)
    if not isinstance(pipe.vae.decoder, torch._dynamo.eval_frame.OptimizedModule):
        pipe.vae.decoder = torch.compile(pipe.vae.decoder)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot build a kernel (no C compiler, no Triton, a lowering bug)."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InductorError

    return TorchDynamoException, InductorError, CppCompileError


def uncompile_pipeline(pipe) -> bool:
    """Put the eager UNet and VAE decoder back; False when nothing was compiled."""
    restored = False
    if hasattr(pipe.unet, "_orig_mod"):
        pipe.unet, restored = pipe.unet._orig_mod, True
    if hasattr(pipe.vae.decoder, "_orig_mod"):
        pipe.vae.decoder, restored = pipe.vae.decoder._orig_mod, True
    return restored


def render_batch_or_fall_back(pipe, batch: list[PlannedImage], device, scheduler_cache: dict,
                              feature_cache=None) -> list:
    """render_batch; when torch.compile fails (it compiles on the first batch and on each new batch shape),
    warn, go back to the eager modules and render the batch again: `compile` is a speed option, and losing it
    must not lose a run that has already loaded its models."""
    try:
        return render_batch(pipe, batch, device, scheduler_cache, feature_cache)
    except _compile_errors() as error:
        if not uncompile_pipeline(pipe):
            raise
        log.warning("torch.compile failed (%s: %s); generating without it", type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "")
        return render_batch(pipe, batch, device, scheduler_cache, feature_cache)


def batches_for(pending: list[PlannedImage], batch_size: int, rank: int = 0, world: int = 1):
    """This rank's batches: images grouped by (sampler, steps, cfg, size), each group split by rank in strides
    and cut into batches of `batch_size`."""
    groups: dict[tuple, list[PlannedImage]] = {}
    for image in sorted(pending, key=lambda im: im.index):
        groups.setdefault(image.batch_key, []).append(image)
    batches = []
    for key in sorted(groups, key=lambda k: (k[0], k[1:])):
        share = groups[key][rank::world]
        batches.extend(share[i:i + batch_size] for i in range(0, len(share), batch_size))
    return batches


def render_batch(pipe, batch: list[PlannedImage], device, scheduler_cache: dict, feature_cache=None) -> list:
    """PIL images for one batch (all sharing sampler/steps/cfg/size); one seeded generator per image.
    `feature_cache` (a FeatureCache attached to pipe's UNet, or None) starts each batch with a full UNet call."""
    import torch

    from dermt2im_hub.generation.samplers import make_scheduler

    first = batch[0]
    if first.sampler not in scheduler_cache:
        scheduler_cache[first.sampler] = make_scheduler(first.sampler, scheduler_cache["_base_config"])
    pipe.scheduler = scheduler_cache[first.sampler]
    generators = [torch.Generator("cpu").manual_seed(image.seed) for image in batch]
    prompts = [image.prompt for image in batch]
    negatives = [image.negative_prompt for image in batch]
    padding = (-len(batch)) % CPU_ROW_MULTIPLE if device.type == "cpu" else 0
    generators += [torch.Generator("cpu").manual_seed(_PAD_SEED) for _ in range(padding)]
    prompts += [first.prompt] * padding
    negatives += [first.negative_prompt] * padding
    if feature_cache is not None:
        feature_cache.reset()
    with torch.inference_mode():
        result = pipe(prompt=prompts, negative_prompt=negatives, num_inference_steps=first.steps,
                      guidance_scale=first.cfg_scale, height=first.height, width=first.width,
                      generator=generators, output_type="pil")
    return result.images[:len(batch)]


def _progress(total: int, enabled: bool, rank: int, world: int):
    from tqdm.auto import tqdm

    desc = "generate" if world == 1 else f"generate (rank 0 of {world})"
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or rank != 0, dynamic_ncols=True)


def generate(config: GenerationConfig, after_batch: Callable[[list[PlannedImage]], None] | None = None,
             pipeline=None) -> GenerationResult:
    """Render every unfinished image of `config`'s plan into `config.output`.

    `after_batch(batch)` runs after each batch is written (progress hooks; tests use it to interrupt a run).
    `pipeline`, when given, is a `(pipe, BaseModelInfo, adapters)` triple to reuse instead of loading.
    """
    config.validate()
    config.require_inputs()
    state = _process_state()
    rank, world = state.process_index, state.num_processes
    out = Path(config.output)
    plan = expand_plan(config)
    outputs.check_folder_matches(out, config)  # every rank checks, so every rank stops on a mismatch

    t_load = time.perf_counter()
    pipe, base, adapters = pipeline or load_pipeline(config, device=state.device)
    device = pipe.device
    load_seconds = time.perf_counter() - t_load
    outputs.check_provenance_matches(out, base, adapters)
    if config.feature_cache() is not None:
        from dermt2im_hub.generation.feature_cache import check_unet

        check_unet(pipe.unet, config.feature_cache_depth)

    state.wait_for_everyone()
    if state.is_main_process:
        outputs.prepare_folder(out, config, plan, base, adapters)
    state.wait_for_everyone()
    done = outputs.finished_indices(out, plan)
    state.wait_for_everyone()  # every rank has the same view of what is done before anyone writes

    pending = [image for image in plan if image.index not in done]
    batches = batches_for(pending, config.batch_size, rank, world)
    scheduler_cache: dict[str, Any] = {"_base_config": dict(pipe.scheduler.config)}
    generated, seconds = 0, 0.0
    stage = _stage_run(out, config, base, adapters) if state.is_main_process else contextlib.nullcontext()
    # On CPU, writer threads would compete with torch's OpenMP threads (whose spin-waits slow down badly when
    # preempted); PNGs are then written inline, which costs little next to CPU sampling.
    writer_threads = 4 if device.type == "cuda" else 0
    with stage as run, _cpu_threads(config.cpu_threads), _feature_cache(pipe, config) as feature_cache, \
            _ImageWriter(out, rank, base, adapters, writer_threads) as writer:
        t0 = time.perf_counter()
        try:
            with _progress(sum(len(b) for b in batches), config.progress, rank, world) as bar:
                for batch in batches:
                    writer.submit(batch, render_batch_or_fall_back(pipe, batch, device, scheduler_cache,
                                                                   feature_cache))
                    # PNG encoding of this batch overlaps the next batch's sampling
                    for written in writer.completed(keep=1):
                        generated += len(written)
                        bar.update(len(written))
                        if after_batch:
                            after_batch(written)
                for written in writer.completed(keep=0):
                    generated += len(written)
                    bar.update(len(written))
                    if after_batch:
                        after_batch(written)
            seconds = time.perf_counter() - t0
            state.wait_for_everyone()  # rank 0 summarises only once every rank has written its images
        finally:
            writer.close()  # images already rendered are written and logged even when interrupted
            # also after an exception: metadata.jsonl then matches the PNGs written so far
            if run is not None:
                _finish(out, plan, base, adapters, run, generated, seconds or time.perf_counter() - t0,
                        load_seconds, world, feature_cache)
    finished = len(outputs.finished_indices(out, plan))
    result = GenerationResult(out, len(plan), finished, generated, seconds, rank, world,
                              extra={"load_seconds": load_seconds})
    if state.is_main_process:
        log.info("generated %d image(s) in %.1fs (%.2f img/s on rank 0); %d of %d planned are in %s",
                 generated, seconds, result.images_per_second, finished, len(plan), out)
    return result


class _ImageWriter:
    """Writes PNGs (encode + atomic rename) on a few threads, so encoding overlaps sampling, and appends each
    batch's metadata rows to the rank's log in batch order once all its files are in place. With 0 workers
    the files are written inline, in `submit`."""

    def __init__(self, out: Path, rank: int, base, adapters, workers: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.rank, self.base, self.adapters = out, rank, base, adapters
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png-writer") if workers else None
        self.pending: deque = deque()

    def __enter__(self) -> _ImageWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, batch: list[PlannedImage], images: list) -> None:
        from concurrent.futures import Future

        futures = []
        for image, pil in zip(batch, images):
            if self.pool:
                futures.append(self.pool.submit(outputs.save_image, self.out, image, pil, self.base, self.adapters))
            else:
                futures.append(Future())
                futures[-1].set_result(outputs.save_image(self.out, image, pil, self.base, self.adapters))
        self.pending.append((batch, futures))

    def completed(self, keep: int):
        """Finish the oldest batches until at most `keep` are in flight; yields each finished batch."""
        while len(self.pending) > keep:
            batch, futures = self.pending.popleft()
            shas = [future.result() for future in futures]
            outputs.append_rows(self.out, self.rank, [outputs.metadata_row(image, self.base, self.adapters, sha)
                                                      for image, sha in zip(batch, shas)])
            yield batch

    def close(self) -> None:
        try:
            for _ in self.completed(keep=0):
                pass
        finally:
            if self.pool:
                self.pool.shutdown(wait=True)


@contextlib.contextmanager
def _feature_cache(pipe, config: GenerationConfig):
    """A FeatureCache on the pipeline's UNet for the run when the config asks for one (else None); detached
    afterwards, so a pipeline passed in by the caller comes back unchanged."""
    settings = config.feature_cache()
    if settings is None:
        yield None
        return
    from dermt2im_hub.generation.feature_cache import FeatureCache

    cache = FeatureCache(pipe.unet, settings.interval, settings.depth)
    try:
        yield cache
    finally:
        cache.detach()


@contextlib.contextmanager
def _cpu_threads(count: int):
    """Pin torch's intra-op threads for the run (0: unchanged), restoring the caller's setting afterwards."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _process_state():
    """accelerate's view of the launch. PartialState only forms CPU ranks (gloo) when told `cpu=True`, which
    `accelerate launch` signals with ACCELERATE_USE_CPU (Accelerator reads it; PartialState does not)."""

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _stage_run(out: Path, config: GenerationConfig, base, adapters):
    from dermt2im_hub.manifest import StageRun

    local = base.kind in ("folder", "single_file") and base.local_path
    inputs = {"base": base.local_path if local else base.id}  # a Hub id (or in-memory model) is a reference
    inputs.update({f"lora_{i}": a.local_path for i, a in enumerate(adapters)})
    return StageRun(out, "generate", config, inputs=inputs)


def _finish(out, plan, base, adapters, run, generated, seconds, load_seconds, world, feature_cache=None) -> None:
    """metadata.jsonl, contact sheet and manifest facts; runs at the end and after an interruption."""
    from collections import Counter

    rows = outputs.finalize_metadata(out, plan, base, adapters)
    sheet = outputs.write_contact_sheet(out, rows)
    run.outputs = {
        "num_images": len(rows), "planned": len(plan), "metadata": outputs.METADATA_NAME,
        "contact_sheet": sheet.name if sheet else None, "plan": outputs.PLAN_NAME, "config": outputs.CONFIG_NAME,
        "per_class": dict(Counter(r["label"] for r in rows)), "per_sampler": dict(Counter(r["sampler"] for r in rows)),
        "per_steps": {str(k): v for k, v in sorted(Counter(r["steps"] for r in rows).items())},
        "transformation_counts": dict(sorted(Counter(t for r in rows for t in r.get("transformations", [])).items())),
    }
    run.extra.update({
        "base_model": {"id": base.id, "kind": base.kind, "revision": base.revision, "sha256": base.sha256,
                       "hashed_file": base.hashed_file},
        "adapters": [a.to_row() for a in adapters],
        "num_processes": world, "images_by_rank": outputs.images_by_rank(out), "cpu_threads": _threads(),
        "generated_this_run_rank0": generated, "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 3),
        "images_per_second_rank0": round(generated / seconds, 4) if seconds > 0 else None,
        "feature_cache": None if feature_cache is None else {
            **feature_cache.settings.to_row(), "full_unet_calls_rank0": feature_cache.full_calls,
            "shallow_unet_calls_rank0": feature_cache.shallow_calls},
    })
