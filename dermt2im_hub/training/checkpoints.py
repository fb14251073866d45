"""Resumable checkpoints (accelerate save_state/load_state) and a graceful Ctrl-C.

A checkpoint is `OUTPUT/checkpoints/checkpoint-<step>/`: accelerate's optimizer, LR-scheduler, grad-scaler
and per-process RNG states, the LoRA tensors as safetensors (a save hook keeps accelerate from writing
the whole frozen UNet), and `TrainingProgress` (step count, loss history). The data order and the noise
are functions of the step count (`step.EpochSampler`, `step.seeded_generator`), so nothing else is needed
to continue exactly where a run stopped. Checkpoints are written to a hidden `.partial` folder and renamed
when complete, so `latest` never picks a half-written one; `checkpoints_total_limit` keeps the newest N.
Resuming loads only a checkpoint of the run's own output folder: accelerate unpickles the optimizer, scheduler
and RNG states (pickles can run code), so a folder from elsewhere is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from dermt2im_hub.utils.logging import get_logger

logger = get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Set by tests to deliver a real SIGINT to the trainer right after this optimizer step.
INTERRUPT_ENV = "DERMT2IM_TEST_INTERRUPT_AT_STEP"


@dataclass
class TrainingProgress:
    """Registered with accelerate so it travels in every checkpoint."""

    global_step: int = 0
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    data_fingerprint: str = ""

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "loss_history": [list(p) for p in self.loss_history],
                "data_fingerprint": self.data_fingerprint}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.loss_history = [(int(s), float(v)) for s, v in state.get("loss_history", [])]
        saved = state.get("data_fingerprint", "")
        if saved and self.data_fingerprint and saved != self.data_fingerprint:
            logger.warning("resuming with different training data than the checkpoint was made with: the data "
                           "order will not match the interrupted run")


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume_checkpoint(spec: str | None, output_dir: Path) -> Path | None:
    """`latest` -> newest checkpoint of this output folder (None when there is none); else one of this output
    folder's checkpoints, by name (`checkpoint-500`) or path, which must exist."""
    from dermt2im_hub.training.inputs import TrainingInputError

    if not spec:
        return None
    root = Path(output_dir) / CHECKPOINTS_DIR
    if spec == "latest":
        found = list_checkpoints(root)
        if not found:
            logger.info("resume_from_checkpoint=latest: no checkpoint in %s yet, starting from step 0", root)
            return None
        path = found[-1][1]
    else:
        path = Path(spec)
        if not path.is_dir() and (root / spec).is_dir():
            path = root / spec
        if not path.is_dir():
            raise TrainingInputError(f"checkpoint to resume from not found: {spec}")
    if not _CHECKPOINT_RE.match(path.resolve().name) or path.resolve().parent != root.resolve():
        raise TrainingInputError(
            f"resume_from_checkpoint {spec!r} is not a checkpoint of this run's output folder ({root}/checkpoint-N): "
            "only those are loaded, since a checkpoint's optimizer and RNG states are pickles, which can run code. "
            "To continue another run, train into its output folder with resume_from_checkpoint=latest.")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, total_limit: int | None) -> Path:
    """Collective: every process calls it. Rotates old checkpoints first, then writes and renames."""
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"checkpoint-{step}"
    partial = root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        existing = [p for s, p in list_checkpoints(root) if s != step]
        if total_limit is not None and len(existing) >= total_limit:
            for old in existing[: len(existing) - total_limit + 1]:
                logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", old.name, total_limit)
                shutil.rmtree(old)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def register_lora_checkpoint_hooks(accelerator, named_models: dict[str, object]) -> None:
    """Save/load only the LoRA tensors of the prepared models (`{"unet": unet, "text_encoder": te}`)."""
    from safetensors.torch import load_file, save_file

    from dermt2im_hub.training.lora import load_peft_state_dict, peft_state_dict

    def name_of(model) -> str:
        unwrapped = accelerator.unwrap_model(model)
        for name, candidate in named_models.items():
            if accelerator.unwrap_model(candidate) is unwrapped:
                return name
        raise RuntimeError(f"unexpected model in checkpoint: {type(unwrapped).__name__}")

    def save_hook(models, weights, output_dir):
        for model in models:
            if accelerator.is_main_process:
                tensors = {k: v.detach().float().cpu().contiguous()
                           for k, v in peft_state_dict(accelerator.unwrap_model(model)).items()}
                save_file(tensors, os.path.join(output_dir, f"{name_of(model)}_lora.safetensors"))
        weights.clear()  # accelerate would otherwise save every frozen base weight too

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            tensors = load_file(os.path.join(input_dir, f"{name_of(model)}_lora.safetensors"))
            load_peft_state_dict(accelerator.unwrap_model(model), tensors)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class StopRequest:
    """First SIGINT/SIGTERM: finish the current step, save a checkpoint and stop. Second: stop at once."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook launcher): keep the defaults
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint after this step (again to stop at once)",
                       self.signal_name)

    def should_stop(self, accelerator) -> bool:
        """Agreed across processes, so every rank stops at the same step and joins the checkpoint save."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def maybe_simulate_interrupt(step: int) -> None:
    """Tests: deliver a real SIGINT to this process after optimizer step `$DERMT2IM_TEST_INTERRUPT_AT_STEP`."""
    target = os.environ.get(INTERRUPT_ENV)
    if target and int(target) == step:
        os.kill(os.getpid(), signal.SIGINT)
