"""Classifier training and evaluation throughput (issue 11, item 4), decoding and augmentation included.

    python bench/classifier.py                                  # CPU, 64 px, small counts
    python bench/classifier.py --device cuda                    # GPU: 224 px, ViT-B/16 and MobileNetV2, bf16

For each model it times, on N 512-px PNGs (a few phantom images encoded once and repeated, so decoding
costs what a real 512-px PNG costs):

- cache:   decoding + resizing every image once into the decoded-image cache (train and eval caches);
- loader:  our training input pipeline alone: DataLoader workers gathering cached uint8 batches, class-
           balanced sampling, pinned memory, host->device copy and the batched device augmentation;
- naive:   what a plain timm script does per epoch instead: DataLoader workers decoding each PNG and
           running timm's training transform (random resized crop, flip, colour jitter) on the CPU;
- train:   `dermt2im_hub.evaluation.train.fit` (AdamW, warmup + cosine, mixed precision, augmentation),
           images/s of its last epoch (the first one pays for warm-up);
- eval:    inference over the eval cache (`predict_probabilities`), second pass.

Data loading is not the bottleneck when loader >> train. Needs torch, timm, accelerate, scikit-learn,
Pillow, OpenCV (phantoms) and PyYAML; not datasets or evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source tree that is not installed (the GPU machine)
    sys.path.insert(0, str(ROOT))

PAPER_MODELS = ["vit_base_patch16_224", "mobilenetv2_100"]


def encoded_pngs(n: int, size: int, variants: int = 8) -> tuple[list[bytes], list[int]]:
    """N PNG byte strings (a few distinct phantoms repeated) and their labels, alternating classes."""
    from dermt2im_hub.labels import CLASS_NAMES
    from dermt2im_hub.testing.phantoms import PhantomConfig, render_phantom
    from dermt2im_hub.utils.files import encode_png

    config = PhantomConfig(size=size)
    base = [encode_png(render_phantom(i, CLASS_NAMES[i % 2], config)) for i in range(variants)]
    return [base[i % variants] for i in range(n)], [i % 2 for i in range(n)]


def timed(fn):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def steady_rate(loader, consume, max_batches: int) -> float:
    """Images/s over `max_batches` batches after one whole warm-up epoch (worker start-up excluded);
    the loader's persistent workers keep going across epochs."""
    import torch

    for batch in loader:  # warm-up epoch
        consume(batch)
    seen, start = 0, time.perf_counter()
    while seen < max_batches * loader.batch_size:
        for batch in loader:
            seen += consume(batch)
            if seen >= max_batches * loader.batch_size:
                break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return seen / max(time.perf_counter() - start, 1e-9)


def loader_rate(loader, augment, device, max_batches: int) -> float:
    """Images/s our loader + host->device copy + device augmentation deliver with no model attached."""
    return steady_rate(loader, lambda batch: augment(batch[0].to(device, non_blocking=True)).shape[0], max_batches)


class NaiveDecodeDataset:
    """Per-epoch decoding with timm's CPU training transform (the usual timm-script pipeline)."""

    def __init__(self, pngs, labels, transform):
        self.pngs, self.labels, self.transform = pngs, labels, transform

    def __len__(self):
        return len(self.pngs)

    def __getitem__(self, index):
        import io

        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.pngs[index])).convert("RGB")), self.labels[index]


def naive_rate(pngs, labels, data_config, batch_size, workers, max_batches) -> float:
    import torch
    from timm.data import create_transform

    transform = create_transform(**{k: data_config[k] for k in ("input_size", "interpolation", "mean", "std")},
                                 is_training=True, hflip=0.5, vflip=0.5, color_jitter=0.2)
    loader = torch.utils.data.DataLoader(NaiveDecodeDataset(pngs, labels, transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    return steady_rate(loader, lambda batch: batch[0].shape[0], max_batches)


def bench_model(name: str, args, pngs, labels) -> dict:
    import numpy as np
    import torch

    from dermt2im_hub.config import load_config
    from dermt2im_hub.evaluation import cache
    from dermt2im_hub.evaluation.augment import Augment
    from dermt2im_hub.evaluation.config import EvaluationConfig
    from dermt2im_hub.evaluation.train import (
        CachedTrainingSet,
        balanced_sampler,
        create_classifier,
        fit,
        get_accelerator,
        inference_loader,
        make_loader,
        predict_probabilities,
        unwrap,
    )

    config = load_config(EvaluationConfig, overrides={
        "models": [name], "pretrained": False, "image_size": args.image_size, "epochs": args.epochs,
        "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "num_workers": args.workers,
        "mixed_precision": args.precision, "early_stopping_patience": args.epochs + 1, "compile": args.compile,
        "channels_last": True})
    accelerator = get_accelerator(config)
    device = accelerator.device
    model, data_config = create_classifier(name, config)
    labels_array = np.asarray(labels, dtype=np.int64)
    cache.clear_memory_cache()
    train_pool, t_train_cache = timed(lambda: cache.cached_images(pngs, f"bench-{len(pngs)}", data_config, "train",
                                                                  None, args.workers, progress=False))
    eval_images, t_eval_cache = timed(lambda: cache.cached_images(pngs, f"bench-{len(pngs)}", data_config, "eval",
                                                                  None, args.workers, progress=False))
    train_set = CachedTrainingSet([train_pool], [np.arange(len(pngs))], [labels_array])
    augment = Augment(config.augmentation, data_config["input_size"][-1], data_config["mean"], data_config["std"],
                      channels_last=device.type == "cuda").to(device)
    loader = make_loader(train_set, args.batch_size, args.workers, device.type == "cuda",
                         balanced_sampler(labels_array, torch.Generator().manual_seed(0)), drop_last=True)
    supply = loader_rate(loader, augment, device, args.loader_batches)
    naive = naive_rate(pngs, labels, data_config, args.batch_size, args.workers, args.loader_batches)

    validation = eval_images[: min(len(eval_images), args.eval_batch_size)]
    model, result = fit(model, data_config, train_set, validation, labels_array[: len(validation)], config, 0,
                        accelerator, progress=False)
    train_rate = result.history[-1]["train_images_per_second"]
    from dermt2im_hub.evaluation.augment import Normalize

    normalize = Normalize(data_config["mean"], data_config["std"], device.type == "cuda").to(device)
    eval_loader = inference_loader(eval_images, config, accelerator)
    predict_probabilities(model, eval_loader, normalize, accelerator)  # warm-up pass
    _, t_eval = timed(lambda: predict_probabilities(model, eval_loader, normalize, accelerator))
    params = sum(p.numel() for p in unwrap(accelerator, model).parameters())
    accelerator.free_memory()
    return {
        "model": name, "params_M": round(params / 1e6, 2), "size": data_config["input_size"][-1],
        "device": str(device), "precision": accelerator.mixed_precision, "images": len(pngs),
        "batch": args.batch_size, "workers": args.workers,
        "cache_train_img_s": len(pngs) / t_train_cache, "cache_eval_img_s": len(pngs) / t_eval_cache,
        "loader_img_s": supply, "naive_loader_img_s": naive, "train_img_s": train_rate,
        "eval_img_s": len(eval_images) / t_eval,
    }


def print_table(rows: list[dict]) -> None:
    columns = [("model", "model"), ("size", "px"), ("device", "device"), ("precision", "precision"),
               ("cache_train_img_s", "decode->cache (train) img/s"), ("cache_eval_img_s", "decode->cache (eval) img/s"),
               ("loader_img_s", "our loader+aug img/s"), ("naive_loader_img_s", "per-epoch decode+timm aug img/s"),
               ("train_img_s", "train img/s"), ("eval_img_s", "eval img/s")]
    print("| " + " | ".join(title for _, title in columns) + " | loader / train |")
    print("|" + "---|" * (len(columns) + 1))
    for row in rows:
        cells = [f"{row[key]:.0f}" if isinstance(row[key], float) else str(row[key]) for key, _ in columns]
        print("| " + " | ".join(cells) + f" | {row['loader_img_s'] / row['train_img_s']:.1f}x |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="+", default=PAPER_MODELS, help="timm names (random init)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 64 on CPU, 224 on CUDA")
    parser.add_argument("--source-size", type=int, default=512, help="side of the PNGs decoded (default 512)")
    parser.add_argument("--num-images", type=int, default=None, help="default: 64 on CPU, 4096 on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on CUDA")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="default: 32 on CPU, 512 on CUDA")
    parser.add_argument("--epochs", type=int, default=2, help="train epochs; the last one is timed")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs, at most 12)")
    parser.add_argument("--loader-batches", type=int, default=None, help="batches timed for loader rates")
    parser.add_argument("--precision", default=None, help="no, bf16, fp16 (default: bf16 on CUDA, no on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gpu = args.device == "cuda"
    if not gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks the CPU
    args.image_size = args.image_size or (224 if gpu else 64)
    args.num_images = args.num_images or (4096 if gpu else 64)
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.eval_batch_size = args.eval_batch_size or (512 if gpu else 32)
    args.workers = args.workers if args.workers is not None else min(12, os.cpu_count() or 1)
    args.loader_batches = args.loader_batches or (64 if gpu else 8)
    args.precision = args.precision or ("bf16" if gpu else "no")

    pngs, labels = encoded_pngs(args.num_images, args.source_size)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.num_images} PNGs of {args.source_size} px ({sum(map(len, pngs[:8])) / 8 / 1024:.0f} KiB each)",
          flush=True)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args, pngs, labels))
        if args.json:  # after every model: a run cut off by gpu.sh's time limit keeps the models it finished
            args.json.write_text(json.dumps(rows, indent=2))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
