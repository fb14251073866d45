"""`train_lora(config)`: the whole DreamBooth-LoRA stage, run by every process of an accelerate launch.

Order of work:
1. preflight, before any weight loads: config, data folder and test-split leak check, base pipeline shape,
   optimizer package, checkpoint to resume from;
2. Accelerator (DDP / mixed precision from `accelerate launch` or the config), frozen base in the compute
   dtype, class images (prior preservation), latent and prompt caches;
3. LoRA adapters (fp32 weights), AdamW, LR schedule, `accelerator.prepare`, checkpoint hooks, resume;
4. the loop: one optimizer step = `gradient_accumulation_steps` micro-steps; logging, checkpoints, samples,
   graceful stop on Ctrl-C;
5. outputs (main process): adapter files, samples, loss curve, training_config.yaml, manifest, card, push.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from dermt2im_hub.config import config_to_dict, read_yaml, save_config
from dermt2im_hub.hub.online import require_online
from dermt2im_hub.manifest import fingerprint, try_read_manifest, write_manifest
from dermt2im_hub.training import step as steps
from dermt2im_hub.training.cache import build_prompt_table, load_or_encode_latents
from dermt2im_hub.training.checkpoints import (
    CHECKPOINTS_DIR,
    StopRequest,
    TrainingProgress,
    find_resume_checkpoint,
    list_checkpoints,
    maybe_simulate_interrupt,
    register_lora_checkpoint_hooks,
    save_checkpoint,
)
from dermt2im_hub.training.config import TrainLoraConfig, output_roles
from dermt2im_hub.training.inputs import (
    TrainingData,
    TrainingExample,
    TrainingInputError,
    base_revision,
    collect_training_data,
    resolve_base_model,
)
from dermt2im_hub.training.lora import add_text_encoder_lora, add_unet_lora, save_adapter_files
from dermt2im_hub.training.reporting import (
    LOSS_CSV_NAME,
    LOSS_CURVE_NAME,
    SAMPLES_DIR,
    SampleWriter,
    log_samples_to_tracker,
    write_loss_history,
)
from dermt2im_hub.utils.logging import get_logger
from dermt2im_hub.utils.output_folder import write_claim

logger = get_logger(__name__)

STAGE = "train_lora"
CONFIG_NAME = "training_config.yaml"
WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    output_dir: Path
    status: str  # "complete" or "interrupted"
    global_step: int
    weight_files: dict[str, str] = field(default_factory=dict)
    is_main_process: bool = True  # False on the other ranks of a distributed run (they write nothing)


@dataclass
class Preflight:
    data: TrainingData
    base_dir: Path
    resume_from: Path | None


def preflight(config: TrainLoraConfig, start_over: bool = False) -> Preflight:
    """Every check that needs no model weights; raises ConfigError / TrainingInputError / TestLeakageError /
    OptimizerUnavailable with a message that says what to fix."""
    config.validate()
    data = collect_training_data(config.train_data_dir, config.instance_prompt, config.train_splits,
                                 config.test_exclusion)
    output_dir = Path(config.output_dir).resolve()
    if output_dir == data.folder.resolve() or data.folder.resolve() in output_dir.parents:
        raise TrainingInputError(f"output_dir {config.output_dir} must not be inside the training data folder")
    stage = (try_read_manifest(output_dir) or {}).get("stage")
    if stage and stage != STAGE:
        raise TrainingInputError(f"output_dir {config.output_dir} holds the output of stage {stage!r}; choose an "
                                 "empty folder or an earlier train-lora output")
    if config.push_to_hub:
        require_online("--push_to_hub")  # now, not after the last training step
    base_dir = resolve_base_model(config.pretrained_model_name_or_path, config.revision, config.variant)
    steps.check_optimizer_available(config.optimizer)
    resume_spec = _resume_spec(config, Path(config.output_dir), start_over)
    resume_from = find_resume_checkpoint(resume_spec, Path(config.output_dir))
    return Preflight(data, base_dir, resume_from)


# Settings a resumed run may change: they decide how long it runs and what it logs, not what a step computes.
RESUMABLE_FIELDS = frozenset({
    "output_dir", "resume_from_checkpoint", "max_train_steps", "num_train_epochs", "checkpointing_steps",
    "checkpoints_total_limit", "validation_prompts", "validation_seeds", "validation_steps",
    "validation_inference_steps", "validation_guidance_scale", "logging_steps", "report_to", "save_precision",
    "kohya_weight_name", "license", "push_to_hub", "hub_model_id", "hub_private", "cache_dir", "vae_batch_size",
    "torch_compile"})


def _resume_spec(config: TrainLoraConfig, output_dir: Path, start_over: bool) -> str | None:
    """Same command, same folder = resume (as generation does): with no resume_from_checkpoint given, a folder
    holding checkpoints of this run continues from the latest. A folder whose checkpoints came from other
    settings is refused; `start_over` (--overwrite) deletes them and starts at step 0."""
    if config.resume_from_checkpoint:
        return config.resume_from_checkpoint
    root = output_dir / CHECKPOINTS_DIR
    if not list_checkpoints(root):
        return None
    if start_over:
        logger.info("--overwrite: deleting the checkpoints in %s and starting at step 0", root)
        shutil.rmtree(root, ignore_errors=True)
        return None
    saved_path = output_dir / CONFIG_NAME
    if saved_path.is_file():
        saved, current = read_yaml(saved_path), config_to_dict(config)
        changed = sorted(k for k in set(saved) | set(current)
                         if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k))
        if changed:
            raise TrainingInputError(
                f"output_dir {config.output_dir} holds checkpoints of a run with other settings (changed: "
                f"{', '.join(changed)}); resuming would mix two runs. Use the same settings to resume, another "
                "output_dir, or --overwrite to delete them and start over.")
    logger.info("resuming from the latest checkpoint in %s (same command, same folder = resume; another "
                "output_dir or --overwrite starts over)", root)
    return "latest"


def train_lora(config: TrainLoraConfig, start_over: bool = False) -> TrainResult:
    """Train one LoRA adapter as `config` says; the library entry point behind train_lora.py. A re-run into a
    folder with checkpoints resumes unless `start_over`."""
    checked = preflight(config, start_over)
    write_claim(config.output_dir, STAGE, output_roles(config))  # this folder is now this run's (resumable)
    return LoraTrainer(config, checked).run()


class LoraTrainer:
    def __init__(self, config: TrainLoraConfig, checked: Preflight):
        self.config = config
        self.data = checked.data
        self.base_dir = checked.base_dir
        self.resume_from = checked.resume_from
        self.output_dir = Path(config.output_dir)
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.timings: dict[str, float] = {}
        self.class_examples: list[TrainingExample] = []
        self.te_config = None

    # ------------------------------------------------------------------ setup

    def run(self) -> TrainResult:
        self._setup_accelerator()
        self._load_models()
        self._build_caches()
        self._add_adapters()
        self._setup_optimization()
        self._prepare()
        status = self._train()
        return self._finish(status)

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        c = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        project = ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs"))
        self.accelerator = Accelerator(
            gradient_accumulation_steps=c.gradient_accumulation_steps, mixed_precision=c.mixed_precision,
            log_with="tensorboard" if c.report_to == "tensorboard" else None, project_config=project)
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.weight_dtype = WEIGHT_DTYPES.get(self.accelerator.mixed_precision, torch.float32)
        _quiet_libraries(self.is_main)
        if c.allow_tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        set_seed(c.seed)
        if self.is_main:
            # inputs are fingerprinted before training, like StageRun does
            self.input_fingerprints = {"train_data": fingerprint(self.data.folder),
                                       "base_model": fingerprint(self.base_dir)}
        logger.info("process %d/%d on %s, mixed precision %s", self.accelerator.process_index + 1,
                    self.accelerator.num_processes, self.device, self.accelerator.mixed_precision)

    def _load_models(self) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        base = str(self.base_dir)
        # frozen weights in the compute dtype; safetensors only (no pickle from a downloaded base)
        weights = {"variant": self.config.variant, "use_safetensors": True}
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
            self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=self.weight_dtype,
                                                              **weights)
            self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=self.weight_dtype, **weights)
            self.unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=self.weight_dtype,
                                                             **weights)
            # the paper trained with the DDPM noise schedule of the base (SD1.5: scaled_linear, 1000 steps)
            self.noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise TrainingInputError(f"cannot load base model {self.config.pretrained_model_name_or_path} "
                                     f"(safetensors weights only): {exc}") from exc
        if self.config.prediction_type:
            self.noise_scheduler.register_to_config(prediction_type=self.config.prediction_type)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        for model in (self.unet, self.vae, self.text_encoder):
            model.requires_grad_(False)
            model.to(self.device)
        steps.prepare_unet(self.unet, self.config.attention, self.config.channels_last,
                           self.config.gradient_checkpointing)
        if self.config.gradient_checkpointing and self.config.train_text_encoder:
            self.text_encoder.gradient_checkpointing_enable()

    def _build_caches(self) -> None:
        c, t0 = self.config, time.perf_counter()
        if c.with_prior_preservation:
            from dermt2im_hub.training.prior import ensure_class_images

            folder = Path(c.class_data_dir) if c.class_data_dir else self.output_dir / ".cache" / "class_images"
            components = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                          "tokenizer": self.tokenizer}
            self.class_examples = ensure_class_images(self.accelerator, folder, self.base_dir, components,
                                                      c.class_prompt, c.num_class_images, c.resolution,
                                                      c.prior_generation_steps, progress=self.is_main)
        self.latents = self._encode(self.data.examples, c.random_flip)
        self.class_latents = self._encode(self.class_examples, False) if self.class_examples else None
        prompts = list(dict.fromkeys([e.prompt for e in self.data.examples + self.class_examples]))
        index = {p: i for i, p in enumerate(prompts)}
        self.example_prompt = torch.tensor([index[e.prompt] for e in self.data.examples], device=self.device)
        self.class_prompt_index = index.get(c.class_prompt, 0)
        self.prompt_table = build_prompt_table(self.tokenizer, self.text_encoder, prompts, self.device,
                                               encode=not c.train_text_encoder)
        self.timings["caching_seconds"] = round(time.perf_counter() - t0, 3)

    def _encode(self, examples, with_flips: bool):
        from dermt2im_hub.manifest import tree_fingerprint

        c = self.config
        batch = c.vae_batch_size or c.train_batch_size
        if c.cache_dir is None:  # in memory: every process encodes for itself
            return load_or_encode_latents(self.vae, examples, c.resolution, with_flips, None, "", batch,
                                          progress=self.is_main)
        with self.accelerator.main_process_first():  # on disk: the main process fills it, the others read it
            return load_or_encode_latents(self.vae, examples, c.resolution, with_flips, c.cache_dir,
                                          tree_fingerprint(self.base_dir / "vae"), batch, progress=self.is_main)

    def _add_adapters(self) -> None:
        from accelerate.utils import set_seed
        from diffusers.training_utils import cast_training_params

        c = self.config
        set_seed(c.seed)  # the adapter's initial weights do not depend on what ran before
        self.unet_config = add_unet_lora(self.unet, c.rank, c.unet_alpha, c.target_modules, c.lora_dropout)
        trained = [self.unet]
        if c.train_text_encoder:
            self.te_config = add_text_encoder_lora(self.text_encoder, c.te_rank, c.te_alpha,
                                                   c.text_encoder_target_modules, c.lora_dropout)
            trained.append(self.text_encoder)
        # LoRA weights train in fp32 whatever the compute dtype (fp16 updates of small deltas underflow)
        cast_training_params(trained, dtype=torch.float32)

    def _setup_optimization(self) -> None:
        from diffusers.optimization import get_scheduler

        c, acc = self.config, self.accelerator
        world = acc.num_processes
        scale = c.gradient_accumulation_steps * c.train_batch_size * world if c.scale_lr else 1
        groups = [{"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": c.learning_rate * scale}]
        if c.train_text_encoder:
            te_lr = c.text_encoder_lr if c.text_encoder_lr is not None else c.learning_rate
            groups.append({"params": [p for p in self.text_encoder.parameters() if p.requires_grad],
                           "lr": te_lr * scale})
        self.lora_parameters = [p for g in groups for p in g["params"]]
        self.optimizer = steps.build_optimizer(groups, c.optimizer, (c.adam_beta1, c.adam_beta2),
                                               c.adam_weight_decay, c.adam_epsilon, fused=c.fused_optimizer)
        self.sampler = steps.EpochSampler(len(self.data.examples), c.train_batch_size, world, acc.process_index,
                                          c.seed, c.random_flip, len(self.class_examples))
        self.updates_per_epoch = math.ceil(self.sampler.steps_per_epoch / c.gradient_accumulation_steps)
        self.max_steps = c.max_train_steps or c.num_train_epochs * self.updates_per_epoch
        self.num_epochs = math.ceil(self.max_steps / self.updates_per_epoch)
        # accelerate steps a prepared scheduler once per process per update, hence the factor `world`
        self.lr_scheduler = get_scheduler(c.lr_scheduler, self.optimizer, num_warmup_steps=c.lr_warmup_steps * world,
                                          num_training_steps=self.max_steps * world, num_cycles=c.lr_num_cycles,
                                          power=c.lr_power)

    def _prepare(self) -> None:
        c, acc = self.config, self.accelerator
        unet = torch.compile(self.unet) if c.torch_compile else self.unet
        models = [unet] + ([self.text_encoder] if c.train_text_encoder else [])
        prepared = acc.prepare(*models, self.optimizer, self.lr_scheduler)
        self.unet = prepared[0]
        if c.train_text_encoder:
            self.text_encoder = prepared[1]
        self.optimizer, self.lr_scheduler = prepared[-2], prepared[-1]
        self.trained_models = prepared[: len(models)]
        register_lora_checkpoint_hooks(acc, {"unet": self.unet, "text_encoder": self.text_encoder})
        self.progress = TrainingProgress(data_fingerprint=_examples_digest(self.data.examples))
        acc.register_for_checkpointing(self.progress)
        if c.report_to == "tensorboard":
            acc.init_trackers(STAGE, config=_tracker_hparams(config_to_dict(c)))
        if self.resume_from is not None:
            logger.info("resuming from %s", self.resume_from)
            acc.load_state(str(self.resume_from))
            logger.info("resumed at step %d of %d", self.progress.global_step, self.max_steps)

    # ------------------------------------------------------------------ loop

    def _batch(self, plan: steps.BatchPlan, generator: torch.Generator):
        indices = plan.indices.to(self.device, non_blocking=True)
        latents = self.latents.sample(indices, plan.views.to(self.device, non_blocking=True), generator)
        prompt_ids = self.example_prompt[indices]
        num_prior = 0
        if plan.class_indices is not None:
            class_idx = plan.class_indices.to(self.device, non_blocking=True)
            latents = torch.cat([latents, self.class_latents.sample(class_idx, torch.zeros_like(class_idx),
                                                                    generator)])
            prompt_ids = torch.cat([prompt_ids, torch.full_like(class_idx, self.class_prompt_index)])
            num_prior = len(class_idx)
        text_encoder = self.text_encoder if self.config.train_text_encoder else None
        return latents, self.prompt_table.hidden_states(prompt_ids, text_encoder), num_prior

    def _optimizer_step(self) -> torch.Tensor:
        """One update: `gradient_accumulation_steps` micro-steps; returns the mean loss (on device, no sync)."""
        c, acc = self.config, self.accelerator
        total = torch.zeros((), device=self.device)
        for k in range(c.gradient_accumulation_steps):
            micro_step = self.progress.global_step * c.gradient_accumulation_steps + k
            generator = steps.seeded_generator(self.device, c.seed, acc.process_index, micro_step)
            with acc.accumulate(*self.trained_models):
                latents, hidden_states, num_prior = self._batch(self.sampler.plan(micro_step), generator)
                loss = steps.diffusion_loss(
                    self.unet, self.noise_scheduler, latents, hidden_states, generator, self.prediction_type,
                    c.snr_gamma, c.noise_offset, num_prior, c.prior_loss_weight, c.channels_last)
                acc.backward(loss)
                if acc.sync_gradients and c.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.lora_parameters, c.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
        return total / c.gradient_accumulation_steps

    def _train(self) -> str:
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        self.sample_writer = self._sample_writer() if self.is_main else None
        bar = tqdm(total=self.max_steps, initial=self.progress.global_step, desc="train_lora", unit="step",
                   disable=not self.is_main)
        stop = StopRequest().install()
        window, window_steps, status = torch.zeros((), device=self.device), 0, "complete"
        self.last_checkpoint_step, t0 = None, time.perf_counter()
        first_step = self.progress.global_step
        try:
            while self.progress.global_step < self.max_steps:
                window += self._optimizer_step()
                window_steps += 1
                self.progress.global_step += 1
                step = self.progress.global_step
                bar.update(1)
                maybe_simulate_interrupt(step)
                stopping = stop.should_stop(acc)
                checkpoint_now = stopping or (c.checkpointing_steps and step % c.checkpointing_steps == 0)
                if step % c.logging_steps == 0 or checkpoint_now or step == self.max_steps:
                    self._log_loss(window / window_steps, step, bar)
                    window, window_steps = torch.zeros((), device=self.device), 0
                if checkpoint_now:
                    self.last_checkpoint_step = step
                    save_checkpoint(acc, self.output_dir, step, c.checkpoints_total_limit)
                if c.validation_steps and step % c.validation_steps == 0 and step != self.max_steps:
                    self._write_samples(f"step-{step:06d}", step)
                if stopping:
                    status = "interrupted"
                    break
        finally:
            stop.restore()
            bar.close()
        self.timings["training_seconds"] = round(time.perf_counter() - t0, 3)
        self.timings["steps_this_run"] = self.progress.global_step - first_step
        return status

    def _log_loss(self, mean_loss: torch.Tensor, step: int, bar) -> None:
        value = float(self.accelerator.reduce(mean_loss.detach().reshape(1), reduction="mean").item())
        self.progress.loss_history.append((step, value))
        lr = self.lr_scheduler.get_last_lr()[0]
        self.accelerator.log({"train/loss": value, "train/lr": lr}, step=step)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")

    # ------------------------------------------------------------------ outputs

    def _sample_writer(self) -> SampleWriter:
        c = self.config
        te = self.accelerator.unwrap_model(self.text_encoder)
        unet = self.accelerator.unwrap_model(self.unet, keep_torch_compile=False)
        prompts = c.validation_prompts or self.data.prompts
        return SampleWriter(self.base_dir, unet, te, self.vae, self.tokenizer, prompts, c.validation_seeds,
                            c.resolution, c.validation_inference_steps, c.validation_guidance_scale)

    def _write_samples(self, name: str, step: int) -> list[dict]:
        if not self.is_main:
            return []
        samples = self.sample_writer.write(self.output_dir / SAMPLES_DIR / name, self.accelerator.autocast(),
                                           rel_to=self.output_dir)
        log_samples_to_tracker(self.accelerator, samples, step)
        return samples

    def _finish(self, status: str) -> TrainResult:
        acc, c = self.accelerator, self.config
        step = self.progress.global_step
        if status == "complete" and c.checkpointing_steps and self.last_checkpoint_step != step:
            save_checkpoint(acc, self.output_dir, step, c.checkpoints_total_limit)  # lets a later run extend it
        acc.wait_for_everyone()
        files: dict[str, str] = {}
        if self.is_main:
            files = self._write_outputs(status)
        acc.wait_for_everyone()
        acc.end_training()
        if status == "interrupted":
            logger.warning("training stopped at step %d; continue with --resume_from_checkpoint latest", step)
        return TrainResult(self.output_dir, status, step, files, self.is_main)

    def _write_outputs(self, status: str) -> dict[str, str]:
        c = self.config
        files: dict[str, str] = {}
        samples: list[dict] = []
        if status == "complete":
            files = save_adapter_files(
                self.output_dir, self.accelerator.unwrap_model(self.unet, keep_torch_compile=False),
                self.unet_config, self.accelerator.unwrap_model(self.text_encoder) if c.train_text_encoder else None,
                self.te_config, c.kohya_weight_name, c.save_precision, c.pretrained_model_name_or_path, c.resolution)
            samples = self._write_samples("final", self.progress.global_step)
        write_loss_history(self.progress.loss_history, self.output_dir)
        save_config(c, self.output_dir / CONFIG_NAME)
        self._write_manifest(status, files, samples)
        if status == "complete":
            self._publish()
        return files

    def _write_manifest(self, status: str, files: dict[str, str], samples: list[dict]) -> None:
        from dermt2im_hub.training.facts import card_facts, run_facts

        outputs = {"weight_files": files, "training_config": CONFIG_NAME, "loss_curve": LOSS_CURVE_NAME,
                   "loss_history": LOSS_CSV_NAME, "samples": [s["path"] for s in samples],
                   "tensorboard_logs": "logs" if self.config.report_to == "tensorboard" else None}
        extra = {"card": card_facts(self, files, samples), **run_facts(self)}
        write_manifest(self.output_dir, STAGE, self.config, outputs=outputs, started_at=self.started_at,
                       status=status, extra=extra, input_fingerprints=self.input_fingerprints)

    def _publish(self) -> None:
        from dermt2im_hub.hub import push_folder, render_card

        c = self.config
        render_card(self.output_dir, repo_id=c.hub_model_id)
        if c.push_to_hub:
            commit = push_folder(self.output_dir, c.hub_model_id, private=c.hub_private,
                                 commit_message=f"LoRA adapter, {self.progress.global_step} steps")
            logger.info("pushed to %s", getattr(commit, "commit_url", c.hub_model_id))


def _examples_digest(examples: list[TrainingExample]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(f"{e.sha256} {e.prompt}" for e in examples).encode()).hexdigest()


def _tracker_hparams(values: dict) -> dict:
    """TensorBoard hparams take scalars and strings only."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in values.items()}


def _quiet_libraries(is_main: bool) -> None:
    import diffusers
    import transformers

    if is_main:
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()


__all__ = ["LoraTrainer", "Preflight", "TrainResult", "base_revision", "preflight", "train_lora"]
