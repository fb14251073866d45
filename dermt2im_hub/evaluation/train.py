"""Training and inference of one timm classifier with accelerate.

AdamW (timm's optimizer factory: no weight decay on norms and biases), linear warmup then cosine decay
(timm's scheduler, stepped per update), mixed precision and multi-GPU through accelerate, class-balanced
sampling, batched device-side augmentation, early stopping on validation balanced accuracy with the best
weights kept. Training length is a budget of samples seen (`TrainingBudget`), identical for every arm. Images come from the decoded-image cache as uint8 arrays.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dermt2im_hub.config import ConfigError
from dermt2im_hub.evaluation.augment import Augment, Normalize
from dermt2im_hub.evaluation.config import EvaluationConfig
from dermt2im_hub.labels import CLASS_NAMES

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ data loading


def _as_is(batch):
    """collate_fn for datasets whose __getitems__ already returns a whole batch."""
    return batch


class CachedTrainingSet(torch.utils.data.Dataset):
    """Rows drawn from several decoded pools (real, synthetic); a batch is gathered in one indexing call."""

    def __init__(self, pools: list[np.ndarray], pool_rows: list[np.ndarray], labels: list[np.ndarray]):
        self.pools = pools
        self.pool_of = np.concatenate([np.full(len(rows), i, dtype=np.int64) for i, rows in enumerate(pool_rows)])
        self.row_of = np.concatenate([np.asarray(rows, dtype=np.int64) for rows in pool_rows])
        self.labels = np.concatenate([np.asarray(lab, dtype=np.int64) for lab in labels])

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitems__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        pool_of, row_of = self.pool_of[indices], self.row_of[indices]
        side = self.pools[0].shape[1]
        images = np.empty((len(indices), side, side, 3), dtype=np.uint8)
        for pool in np.unique(pool_of):
            in_pool = pool_of == pool
            images[in_pool] = self.pools[pool][row_of[in_pool]]
        return torch.from_numpy(images), torch.from_numpy(self.labels[indices])

    def __getitem__(self, index):
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


class CachedImages(torch.utils.data.Dataset):
    """A decoded array for inference; a batch is one slice."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (np.diff(indices) == 1).all():
            return torch.from_numpy(np.ascontiguousarray(self.images[indices[0]:indices[-1] + 1]))
        return torch.from_numpy(self.images[indices])

    def __getitem__(self, index):
        return self.__getitems__([index])[0]


def balanced_sampler(labels: np.ndarray, generator: torch.Generator,
                     draws: int | None = None) -> torch.utils.data.WeightedRandomSampler:
    """Draws each class equally often (with replacement); `draws` per pass (default: as many as images)."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(np.float64)
    weights = 1.0 / counts[labels]
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                                  draws or len(labels), replacement=True, generator=generator)


@dataclass(frozen=True)
class TrainingBudget:
    """How long a run trains, in training samples seen: the same numbers for every arm of a sweep.

    Training runs in rounds of `round_samples` class-balanced draws, with a validation check after each; warm-up
    and early-stopping patience are samples too. Counting epochs of each arm's own training set instead would
    give a hybrid set four times the real-only set's steps, warm-up and patience, and any hybrid gain would be
    confounded with training length.
    """

    samples: int
    round_samples: int
    warmup_samples: int
    patience_samples: int
    source: str = "explicit"

    @property
    def rounds(self) -> int:
        return max(1, round(self.samples / self.round_samples))

    @property
    def patience_rounds(self) -> int:
        return max(1, math.ceil(self.patience_samples / self.round_samples))

    def as_record(self) -> dict:
        return {"unit": "training samples seen (class-balanced draws)", "samples": self.rounds * self.round_samples,
                "round_samples": self.round_samples, "rounds": self.rounds, "warmup_samples": self.warmup_samples,
                "patience_samples": self.patience_rounds * self.round_samples, "source": self.source,
                "unit_note": "identical for every arm: validation after every round; warm-up and patience in the "
                             "same samples"}


def split_budget(budget: TrainingBudget, first_share: float) -> tuple[TrainingBudget, TrainingBudget]:
    """Two phases (synthetic pre-training, real fine-tuning) whose rounds add up to `budget`'s; each phase gets
    at least one round and its own warm-up and patience."""
    rounds = budget.rounds
    first = min(max(1, round(first_share * rounds)), max(1, rounds - 1))
    second = max(1, rounds - first)
    return tuple(dataclasses.replace(budget, samples=n * budget.round_samples,
                                     source=f"{budget.source}, phase {i + 1} of 2")
                 for i, n in enumerate((first, second)))


def join_phases(first: FitResult, second: FitResult) -> FitResult:
    """One FitResult for pre-training then fine-tuning: the second phase's best weights and score count."""
    history = [{**h, "phase": "synthetic"} for h in first.history] + [{**h, "phase": "real"} for h in second.history]
    budget = {**second.budget, "samples": first.budget["samples"] + second.budget["samples"],
              "rounds": first.budget["rounds"] + second.budget["rounds"],
              "steps": first.budget["steps"] + second.budget["steps"],
              "source": first.budget["source"].rsplit(", phase", 1)[0],
              "phases": [{"phase": "synthetic", **first.budget}, {"phase": "real", **second.budget}]}
    seen = first.images_seen + second.images_seen
    seconds = first.train_seconds + second.train_seconds
    return FitResult(history=history, best_epoch=len(first.history) + second.best_epoch,
                     best_validation_balanced_accuracy=second.best_validation_balanced_accuracy,
                     stopped_early=second.stopped_early, train_seconds=seconds,
                     train_images_per_second=seen / max(seconds, 1e-9), steps=first.steps + second.steps,
                     images_seen=seen, budget=budget)


def training_budget(config: EvaluationConfig, real_training_images: int) -> TrainingBudget:
    """The sweep's budget: `config.budget` where set, else counted in epochs of the real-only training set
    (`epochs`, `warmup_epochs`, `early_stopping_patience`), the same samples for every arm."""
    epoch = max(1, int(real_training_images))
    given = config.budget
    round_samples = given.round_samples or epoch
    source = ("budget.samples" if given.samples else
              f"epochs ({config.epochs}) x real-only training images ({epoch})")
    return TrainingBudget(
        samples=given.samples or config.epochs * epoch, round_samples=round_samples,
        warmup_samples=given.warmup_samples if given.warmup_samples is not None
        else int(round(config.warmup_epochs * epoch)),
        patience_samples=given.patience_samples or config.early_stopping_patience * round_samples,
        source=source)


def make_loader(dataset, batch_size: int, num_workers: int, pin_memory: bool, sampler=None,
                drop_last: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                       num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
                                       collate_fn=_as_is, persistent_workers=num_workers > 0)


# ------------------------------------------------------------------------------------------ model set-up


_ACCELERATOR = None


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def get_accelerator(config: EvaluationConfig):
    """One Accelerator per process (accelerate's state is process-wide), created on first use."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        # non-blocking host-to-device copies overlap with compute when the loader pins memory (GPU only)
        loading = DataLoaderConfiguration(non_blocking=torch.cuda.is_available())
        _ACCELERATOR = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision),
                                   dataloader_config=loading)
    return _ACCELERATOR


def check_model_names(names: list[str]) -> None:
    """Unknown timm names (or pretrained tags) fail before any data is read or model trained."""
    import difflib

    import timm

    for name in names:
        if ":" in name:  # local-dir:FOLDER, hf-hub:ID: resolved when the model is built
            continue
        known = timm.is_model(name) and ("." not in name or name in timm.list_pretrained(name))
        if not known:
            close = difflib.get_close_matches(name, timm.list_models(pretrained="." in name), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
            raise ConfigError(f"evaluation.models: {name!r} is not a timm model name{hint}")


def create_classifier(model_name: str, config: EvaluationConfig) -> tuple[torch.nn.Module, dict]:
    """A 2-class timm model and its data config (size, mean/std, interpolation, crop_pct)."""
    import timm
    from timm.models import get_pretrained_cfg

    kwargs = dict(config.model_kwargs.get(model_name, {}))
    known_cfg = get_pretrained_cfg(model_name)
    if config.image_size and known_cfg is not None and known_cfg.fixed_input_size:
        kwargs.setdefault("img_size", config.image_size)  # ViTs build their position embedding for one size
    weights_file = config.pretrained_files.get(model_name)
    if weights_file:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file)}
    try:
        model = timm.create_model(model_name, pretrained=config.pretrained, num_classes=len(CLASS_NAMES), **kwargs)
    except OSError as exc:  # the Hub's errors (not cached, offline, HTTP) are OSErrors
        if not config.pretrained or weights_file:
            raise
        raise ConfigError(f"pretrained weights of {model_name!r} could not be loaded from the Hub or its cache "
                          f"({type(exc).__name__}: {exc}); give a local file with --pretrained-files "
                          f"'{{{model_name}: FILE.safetensors}}', or train from scratch with --no-pretrained") from exc
    data_config = dict(timm.data.resolve_model_data_config(model))
    if config.image_size:
        data_config["input_size"] = (3, config.image_size, config.image_size)
    return model, data_config


def _optimizer_and_schedule(model, config: EvaluationConfig, steps_per_round: int, budget: TrainingBudget,
                            samples_per_step: int):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    extra = {"fused": True} if torch.cuda.is_available() else {}
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.learning_rate, weight_decay=config.weight_decay,
                                    **extra)
    total = max(1, budget.rounds * steps_per_round)
    warmup = max(0, min(total - 1, int(round(budget.warmup_samples / samples_per_step))))
    schedule = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=config.min_learning_rate,
                                 warmup_t=warmup, warmup_lr_init=config.min_learning_rate, warmup_prefix=True,
                                 t_in_epochs=False)
    return optimizer, schedule


# ------------------------------------------------------------------------------------------ fit / predict


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_validation_balanced_accuracy: float = float("nan")
    stopped_early: bool = False
    train_seconds: float = 0.0
    train_images_per_second: float = 0.0
    steps: int = 0
    images_seen: int = 0
    budget: dict = field(default_factory=dict)


def unwrap(accelerator, model) -> torch.nn.Module:
    """The plain timm module (no DDP or torch.compile wrapper), whose state dict has timm's key names."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def predict_probabilities(model, loader, normalize: Normalize, accelerator) -> np.ndarray:
    """P(malignant) for every image of a prepared inference loader, in loader order."""
    model.eval()
    chunks = []
    with torch.inference_mode():
        for images in loader:
            logits = model(normalize(images))
            chunks.append(accelerator.gather_for_metrics(logits.float().softmax(dim=-1)[:, 1]).cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.float32)


def inference_loader(images: np.ndarray, config: EvaluationConfig, accelerator):
    loader = make_loader(CachedImages(images), config.eval_batch_size, config.num_workers,
                         pin_memory=accelerator.device.type == "cuda")
    return accelerator.prepare_data_loader(loader)


def _balanced_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, (probabilities >= 0.5).astype(np.int64)))


def _train_epoch(model, loader, augment: Augment, optimizer, schedule, step: int, config: EvaluationConfig,
                 accelerator, description: str, progress: bool) -> tuple[float, int, int]:
    """One pass over the loader; returns (mean loss, images this process saw, optimizer steps so far)."""
    from tqdm.auto import tqdm

    model.train()
    loss_sum, seen = torch.zeros((), device=accelerator.device), 0
    for images, labels in tqdm(loader, desc=description, leave=False, disable=not progress, unit="batch"):
        logits = model(augment(images))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        schedule.step_update(num_updates=step)
        loss_sum += loss.detach()  # summed on the device: no host sync per step
        seen += labels.shape[0]
    # .item() waits for the queued GPU work, so the epoch's time covers all of it
    return float(loss_sum.item()) / max(1, len(loader)), seen, step


def _train_loader(train_set: CachedTrainingSet, config: EvaluationConfig, generator: torch.Generator,
                  accelerator, round_samples: int) -> torch.utils.data.DataLoader:
    """One round of `round_samples` draws; the batch size follows the budget, not the training set, so every
    arm takes the same steps."""
    batch_size = config.batch_size
    if round_samples < batch_size * accelerator.num_processes:  # a tiny budget: one smaller batch
        batch_size = max(2, round_samples // accelerator.num_processes)
    return make_loader(train_set, batch_size, config.num_workers, accelerator.device.type == "cuda",
                       balanced_sampler(train_set.labels, generator, round_samples),
                       drop_last=round_samples >= 2 * batch_size)  # never a batch of 1 (batch norm)


def fit(model, data_config: dict, train_set: CachedTrainingSet, validation_images: np.ndarray,
        validation_labels: np.ndarray, config: EvaluationConfig, seed: int, accelerator, progress: bool = True,
        budget: TrainingBudget | None = None):
    """Train for `budget` (default: `config.epochs` passes' worth of this training set) with early stopping;
    returns (the model with its best weights, FitResult). A "round" in the history is `budget.round_samples`
    draws."""
    budget = budget or training_budget(config, len(train_set))
    channels_last = config.channels_last and accelerator.device.type == "cuda"
    mean, std, size = data_config["mean"], data_config["std"], int(data_config["input_size"][-1])
    augment = Augment(config.augmentation, size, mean, std, channels_last).to(accelerator.device)
    normalize = Normalize(mean, std, channels_last).to(accelerator.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        model = torch.compile(model)
    generator = torch.Generator().manual_seed(seed)
    loader = _train_loader(train_set, config, generator, accelerator, budget.round_samples)
    samples_per_step = loader.batch_size * accelerator.num_processes
    steps_per_round = max(1, math.floor(budget.round_samples / samples_per_step))
    optimizer, schedule = _optimizer_and_schedule(model, config, steps_per_round, budget, samples_per_step)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    validation_loader = inference_loader(validation_images, config, accelerator)

    result, best_state, stale, step = FitResult(), None, 0, 0
    started = time.perf_counter()
    for epoch in range(budget.rounds):
        generator.manual_seed(seed * 100_003 + epoch)  # the same draw order in every process
        epoch_start = time.perf_counter()
        loss, seen, step = _train_epoch(model, loader, augment, optimizer, schedule, step, config, accelerator,
                                        f"epoch {epoch + 1}", progress)
        train_time = time.perf_counter() - epoch_start
        probabilities = predict_probabilities(model, validation_loader, normalize, accelerator)
        score = _balanced_accuracy(validation_labels, probabilities)
        images_seen = seen * accelerator.num_processes
        result.train_seconds += train_time
        result.images_seen += images_seen
        result.steps = step
        result.history.append({
            "epoch": epoch + 1, "samples_seen": result.images_seen, "train_loss": loss,
            "validation_balanced_accuracy": score,
            "learning_rate": optimizer.param_groups[0]["lr"],
            "train_images_per_second": images_seen / max(train_time, 1e-9),
        })
        if best_state is None or score > result.best_validation_balanced_accuracy:
            result.best_epoch, result.best_validation_balanced_accuracy, stale = epoch + 1, score, 0
            state = unwrap(accelerator, model).state_dict()
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        else:
            stale += 1
            if stale >= budget.patience_rounds:
                result.stopped_early = True
                break
    result.train_images_per_second = result.images_seen / max(result.train_seconds, 1e-9)
    result.budget = {**budget.as_record(), "batch_size_per_device": loader.batch_size,
                     "num_processes": accelerator.num_processes, "steps": budget.rounds * steps_per_round}
    logger.info("trained %d epochs in %.1fs (best epoch %d, validation balanced accuracy %.4f)",
                len(result.history), time.perf_counter() - started, result.best_epoch,
                result.best_validation_balanced_accuracy)
    unwrap(accelerator, model).load_state_dict(best_state)
    return model, result
