"""The real-only reference classifier of the label-fidelity check: load one, or fine-tune one on real images.

A classifier is any 2-class timm model: a folder with `config.json` + `model.safetensors` (what the benchmark
saves for each run, and what `fine_tune_reference` writes), `local-dir:FOLDER`, `hf-hub:ID`, or a timm name.
Preprocessing always follows the model's own timm data config (`timm.data.resolve_data_config`), so a model
fine-tuned at 160 px is scored at 160 px with its own mean/std.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermt2im_hub.config import ConfigError
from dermt2im_hub.labels import CLASS_NAMES, LABEL_TO_ID
from dermt2im_hub.manifest import StageRun
from dermt2im_hub.quality.images import real_items
from dermt2im_hub.utils.files import is_safetensors

log = logging.getLogger(__name__)

REFERENCE_STAGE = "train_reference_classifier"
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class Classifier:
    model: torch.nn.Module
    data_config: dict[str, Any]
    name: str  # what the user gave


def _model_id(spec: str) -> str:
    path = Path(spec)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file() or not is_safetensors(weights):
            raise ConfigError(f"classifier folder {spec} has no model.safetensors (pickle weights are refused)")
        return f"local-dir:{path.resolve()}"
    return spec


def load_classifier(spec: str, pretrained: bool = True, **kwargs) -> Classifier:
    """A timm model with its data config; refuses anything that is not a benign/malignant classifier."""
    import timm

    model = timm.create_model(_model_id(spec), pretrained=pretrained, **kwargs)
    if model.num_classes != len(CLASS_NAMES):
        raise ConfigError(f"classifier {spec!r} has {model.num_classes} outputs, not {len(CLASS_NAMES)} "
                          "(benign, malignant): fine-tune it on real images first (validation.fidelity.real)")
    names = getattr(model, "pretrained_cfg", {}).get("label_names")
    if names and list(names) != list(CLASS_NAMES):
        raise ConfigError(f"classifier {spec!r} labels {names}, expected {list(CLASS_NAMES)}")
    model.eval()
    return Classifier(model, dict(timm.data.resolve_data_config({}, model=model)), spec)


def _transform(data_config: dict[str, Any], normalized: bool = True):
    import timm

    config = dict(data_config)
    if not normalized:  # uint8-cacheable pixels; normalisation happens per batch
        config.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return timm.data.create_transform(**config, is_training=False)


def pixels(images, data_config: dict[str, Any]) -> torch.Tensor:
    """uint8 N x 3 x H x W after the model's resize + centre crop (from PIL images)."""
    transform = _transform(data_config, normalized=False)
    return torch.stack([(transform(image) * 255).round().to(torch.uint8) for image in images])


def normalize(batch: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)
    return (batch.float() / 255 - mean) / std


@torch.no_grad()
def predict(classifier: Classifier, images: list, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N x 2, benign then malignant) of PIL images."""
    classifier.model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = pixels(images[start:start + batch_size], classifier.data_config)
        logits = classifier.model(normalize(batch, classifier.data_config))
        out.append(torch.softmax(logits.float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)))


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips and quarter turns: a dermoscopic lesion has no up or left."""
    flips = torch.rand(len(batch), 2, generator=generator) < 0.5
    turns = torch.randint(0, 4, (len(batch),), generator=generator)
    out = []
    for image, (flip_h, flip_v), k in zip(batch, flips, turns):
        image = image.flip(-1) if flip_h else image
        image = image.flip(-2) if flip_v else image
        out.append(torch.rot90(image, int(k), dims=(-2, -1)))
    return torch.stack(out)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, hold-out indices) with the same class shares in both."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = max(1, round(len(members) * fraction))
        held.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(np.array(train)), np.sort(np.array(held))


def _load_real(folder: str | Path) -> tuple[list, np.ndarray, list[str]]:
    from PIL import Image

    items = [item for item in real_items(folder) if item.label in CLASS_NAMES]
    if len({item.label for item in items}) < len(CLASS_NAMES):
        raise ConfigError(f"{folder}: the reference classifier needs real images of both classes "
                          "(benign/ and malignant/ folders, or labelled metadata rows)")
    images = []
    for item in items:
        with Image.open(item.path) as image:
            images.append(image.convert("RGB"))
    return images, np.array([LABEL_TO_ID[item.label] for item in items]), [item.file_name for item in items]


def _holdout_metrics(classifier: Classifier, cached: torch.Tensor, labels: np.ndarray, batch_size: int) -> dict:
    classifier.model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(classifier.model(normalize(cached[i:i + batch_size],
                                                                    classifier.data_config)), 1)
                           for i in range(0, len(cached), batch_size)]).numpy()
    predicted = probs.argmax(1)
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in range(len(CLASS_NAMES))]
    return {"n": int(len(labels)), "accuracy": float(np.mean(predicted == labels)),
            "balanced_accuracy": float(np.mean(recalls))}


def _fit_all(classifier: Classifier, cached: torch.Tensor, labels: np.ndarray, train_idx: np.ndarray,
             held_idx: np.ndarray, config, generator: torch.Generator, progress: bool) -> list[dict]:
    """Every layer trained (AdamW, cosine), flips and quarter turns; hold-out metrics after each epoch. As in the
    benchmark: a pretrained model's new head starts at zero and batch norm keeps its stored statistics (folded
    weights such as the TF MobileNetV2's change meaning under batch statistics); the saved model is plain timm."""
    from timm.layers import freeze_batch_norm_2d
    from tqdm.auto import tqdm

    from dermt2im_hub.evaluation.benchmark import standard_layers, zero_new_head

    if config.pretrained:
        zero_new_head(classifier.model)
        classifier.model = freeze_batch_norm_2d(classifier.model)
    model = classifier.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * config.epochs)
    history = []
    for epoch in range(config.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        losses = []
        for start in tqdm(range(0, len(order), config.batch_size), disable=not progress,
                          desc=f"reference epoch {epoch + 1}/{config.epochs}"):
            batch = order[start:start + config.batch_size]
            inputs = normalize(_augment(cached[batch], generator), classifier.data_config)
            loss = torch.nn.functional.cross_entropy(model(inputs), torch.as_tensor(labels[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        held = _holdout_metrics(classifier, cached[held_idx], labels[held_idx], config.batch_size)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **held})
        log.info("reference epoch %d: loss %.4f, hold-out accuracy %.4f", epoch + 1, history[-1]["train_loss"],
                 held["accuracy"])
    classifier.model = standard_layers(model).eval()
    return history


def _features(classifier: Classifier, cached: torch.Tensor, batch_size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    model = classifier.model.eval()
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(cached), batch_size), disable=not progress, desc="reference features"):
            inputs = normalize(cached[start:start + batch_size], classifier.data_config)
            out.append(model.forward_head(model.forward_features(inputs), pre_logits=True).float().numpy())
    return np.concatenate(out)


def _fit_head(classifier: Classifier, cached: torch.Tensor, labels: np.ndarray, train_idx: np.ndarray,
              held_idx: np.ndarray, config, progress: bool) -> dict:
    """A linear probe: frozen pretrained features, sklearn's logistic regression (on standardised features),
    folded into the model's own classifier layer so the result is an ordinary timm model folder."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features = _features(classifier, cached, config.batch_size, progress)
    scaler = StandardScaler().fit(features[train_idx])
    probe = LogisticRegression(max_iter=3000, C=config.probe_c).fit(scaler.transform(features[train_idx]),
                                                                      labels[train_idx])
    weight = probe.coef_[0] / scaler.scale_  # logit(malignant) = w . (x - mean) / scale + b
    bias = probe.intercept_[0] - float(np.dot(weight, scaler.mean_))
    head = classifier.model.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = torch.as_tensor(weight, dtype=head.weight.dtype)  # softmax([0, z]) = sigmoid(z)
        head.bias[1] = float(bias)
    held = _holdout_metrics(classifier, cached[held_idx], labels[held_idx], config.batch_size)
    log.info("reference linear probe: hold-out accuracy %.4f", held["accuracy"])
    return {"epoch": None, "train_loss": None, **held}


def fine_tune_reference(real: str | Path, out_dir: str | Path, config, progress: bool = True) -> Path:
    """Fine-tune `config.reference_model` (a FidelityConfig) on the real images into a timm model folder with a
    manifest (stage `train_reference_classifier`) recording the hold-out accuracy. Returns the folder."""
    from timm.models import save_for_hf

    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    with StageRun(out_dir, REFERENCE_STAGE, config, inputs={"real": real}) as run:
        classifier = load_classifier(config.reference_model, pretrained=config.pretrained,
                                     num_classes=len(CLASS_NAMES))
        if config.image_size:
            classifier.data_config["input_size"] = (3, config.image_size, config.image_size)
        images, labels, _ = _load_real(real)
        train_idx, held_idx = stratified_holdout(labels, config.holdout_fraction, config.seed)
        cached = pixels(images, classifier.data_config)
        del images
        if config.train_layers == "head":
            history = [_fit_head(classifier, cached, labels, train_idx, held_idx, config, progress)]
        else:
            history = _fit_all(classifier, cached, labels, train_idx, held_idx, config, generator, progress)
        model = classifier.model
        save_for_hf(model, str(out_dir), model_config={"label_names": list(CLASS_NAMES)}, safe_serialization=True,
                    data_config={k: v for k, v in classifier.data_config.items() if k in DATA_CONFIG_KEYS})
        run.outputs.update(weights="model.safetensors", timm_config="config.json")
        run.extra.update(holdout=history[-1], history=history, train_images=int(len(train_idx)),
                         card={"model_name": config.reference_model, "labels": list(CLASS_NAMES),
                               "training_mix": {"real_images": int(len(train_idx)), "synthetic_images": 0,
                                                "synthetic_fraction": 0.0},
                               "results": [{"test_set": "real hold-out", "split": "hold-out",
                                            "metrics": {k: history[-1][k] for k in ("accuracy",
                                                                                    "balanced_accuracy")}}]})
    return out_dir
