"""A small benign/malignant classifier trained on real phantoms: the judge of label fidelity in the tiny world.

Label fidelity = the share of generated images that this classifier labels with their prompt's class. It is
trained only on phantoms (rendered like the data stage sees them: 128 px, downsampled to 64 px) from a seed that
neither the base nor the demo uses, with a light blur so it also reads VAE-decoded images, which are softer.
A timm model (`test_resnet`, about 0.37M parameters), trained from scratch on CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dermt2im_hub.labels import CLASS_NAMES

CLASSIFIER_PHANTOM_SEED = 2000  # the base trains on seed 1000, the demo on seed 0


@dataclass
class PhantomClassifier:
    model: torch.nn.Module
    size: int
    train_accuracy: float

    @torch.no_grad()
    def predict(self, images: Sequence) -> list[str]:
        """Class names for PIL images or uint8 H x W x 3 arrays (resized to the classifier's side)."""
        batch = _to_batch([np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
                           for image in images], self.size)
        self.model.eval()
        return [CLASS_NAMES[int(i)] for i in self.model(batch).argmax(1)]

    def fidelity(self, images: Sequence, labels: Sequence[str]) -> float:
        """Share of `images` predicted as their given label."""
        predicted = self.predict(images)
        return float(np.mean([p == label for p, label in zip(predicted, labels)]))


def _to_batch(pixels: list[np.ndarray], size: int) -> torch.Tensor:
    import cv2

    resized = [p if p.shape[0] == size else cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in pixels]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _blur(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur of random strength on half the batch (decoded images are softer than renders)."""
    import torchvision.transforms.functional as F

    out = batch.clone()
    for i in range(len(batch)):
        if torch.rand(1, generator=generator).item() < 0.5:
            sigma = 0.3 + 1.2 * torch.rand(1, generator=generator).item()
            out[i] = F.gaussian_blur(batch[i], kernel_size=5, sigma=sigma)
    return out


def train_phantom_classifier(num_images: int = 512, seed: int = CLASSIFIER_PHANTOM_SEED, size: int = 64,
                             epochs: int = 6, batch_size: int = 32, model_name: str = "test_resnet",
                             threads: int = 1) -> PhantomClassifier:
    """Render `num_images` phantoms (half per class) and train a timm classifier on them; deterministic."""
    import timm

    from dermt2im_hub.testing.pretrain import PretrainConfig, render_training_set

    pixels, _, labels = render_training_set(PretrainConfig(num_images=num_images, phantom_seed=seed, size=size))
    images = _to_batch(list(pixels), size)
    targets = torch.tensor([CLASS_NAMES.index(label) for label in labels])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = timm.create_model(model_name, pretrained=False, num_classes=len(CLASS_NAMES))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
        generator = torch.Generator().manual_seed(seed)
        steps = epochs * (len(images) // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                batch = torch.rot90(images[index], int(torch.randint(0, 4, (1,), generator=generator)), dims=(2, 3))
                loss = torch.nn.functional.cross_entropy(model(_blur(batch, generator)), targets[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        model.eval()
        with torch.no_grad():
            train_accuracy = float((model(images).argmax(1) == targets).float().mean())
    finally:
        torch.set_num_threads(previous_threads)
    return PhantomClassifier(model, size, train_accuracy)


JUDGE_STAGE = "phantom_judge"
JUDGE_TEST_SEED = 7  # unseen phantoms on which the written judge's accuracy is recorded


def write_phantom_judge(output_dir, num_images: int = 512, test_images: int = 128):
    """Train the judge and save it as a timm model folder (config.json with its data config + model.safetensors)
    with a manifest recording its accuracy on unseen phantoms, so `dermt2im validate --classifier DIR` (and the
    demo's validate stage) score generated images with it. Returns the folder."""
    from pathlib import Path

    from timm.models import save_for_hf

    from dermt2im_hub.manifest import StageRun
    from dermt2im_hub.testing.pretrain import PretrainConfig, render_training_set

    output_dir = Path(output_dir)
    facts = {"num_images": num_images, "phantom_seed": CLASSIFIER_PHANTOM_SEED, "model": "test_resnet", "size": 64}
    with StageRun(output_dir, JUDGE_STAGE, facts) as run:
        judge = train_phantom_classifier(num_images=num_images)
        pixels, _, labels = render_training_set(PretrainConfig(num_images=test_images, phantom_seed=JUDGE_TEST_SEED))
        accuracy = judge.fidelity(list(pixels), labels)
        # the judge reads pixels in [-1, 1] at 64 px: timm's transform with mean = std = 0.5 and no crop does the same
        data_config = {"input_size": (3, judge.size, judge.size), "interpolation": "bilinear", "crop_pct": 1.0,
                       "crop_mode": "center", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
        save_for_hf(judge.model, str(output_dir), model_config={"label_names": list(CLASS_NAMES)},
                    safe_serialization=True, data_config=data_config)
        run.outputs.update(weights="model.safetensors", timm_config="config.json")
        run.extra.update(unseen_phantom_accuracy=accuracy, unseen_phantoms=test_images, unseen_phantom_seed=JUDGE_TEST_SEED,
                         train_accuracy=judge.train_accuracy,
                         what="benign/malignant judge of the tiny world: a timm test_resnet trained from scratch on "
                              "real phantoms (never on generated images)")
    return output_dir
