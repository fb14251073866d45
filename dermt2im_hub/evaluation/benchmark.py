"""The classifier benchmark: models x mixes x seeds, each run trained, tested and written down.

    run_benchmark(config)                      # the whole sweep; returns OUTPUT/results
    train_classifier(config, model, mix, seed, data)   # one run (used by the sweep)

Output (config.output_dir):

    results/                       a Hub-ready dataset (stage "benchmark")
        records/<run_id>.json      one JSON per run: config, data fingerprints, versions, metrics with CIs,
                                   subgroups, every test image's prediction and probability
        metrics.jsonl              one flat row per (run, test set)  -> config "metrics" of the dataset card
        predictions.jsonl          one row per (run, test image)     -> config "predictions"
        manifest.json, README.md
    classifiers/<run_id>/          a Hub-ready timm model (stage "train_classifier"): model.safetensors,
                                   config.json (timm pretrained_cfg), .eval_results/*.yaml, manifest, README.md

A run whose record exists with the same settings and data is skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermt2im_hub.config import ConfigError, config_to_dict, save_config
from dermt2im_hub.evaluation import cache
from dermt2im_hub.evaluation.config import EvaluationConfig, TestSetConfig
from dermt2im_hub.evaluation.data import (
    ImageTable,
    assert_disjoint,
    exclusion_from_config,
    exclusion_of,
    group_holdout,
    load_table,
)
from dermt2im_hub.evaluation.mixes import MissingSyntheticDataError, Mix, check_mixes, plan_mixes, select_mix
from dermt2im_hub.evaluation.scoring import prediction_rows, score_test_set
from dermt2im_hub.hub.eval_results import eval_results_entries, hub_dataset_id, hub_metric_id
from dermt2im_hub.labels import CLASS_NAMES
from dermt2im_hub.manifest import StageRun, package_versions, write_manifest
from dermt2im_hub.utils.files import atomic_write_json, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

RECORDS_DIR = "records"  # not "runs/": the Hub push layer ignores runs/ (experiment-tracker logs)
RECORD_SCHEMA = 1
METRICS_FILE = "metrics.jsonl"
COUNT_KEYS = frozenset({"n", "n_malignant", "n_benign"})  # image counts in a metrics dict, not metrics
PREDICTIONS_FILE = "predictions.jsonl"
# The paper's ViT weights: timm's copy of the original Google ImageNet-21k checkpoint.
PAPER_WEIGHTS = {"vit_base_patch16_224.orig_in21k": "google/vit-base-patch16-224-in21k"}
# Settings that change what a run computes (the rest, e.g. workers or the output folder, do not).
_RUN_SETTINGS = ("pretrained", "pretrained_files", "model_kwargs", "image_size", "frozen_groups",
                 "freeze_batch_norm", "validation_split", "validation_fraction", "shrink_short_mixes", "epochs",
                 "batch_size", "learning_rate", "min_learning_rate",
                 "weight_decay", "warmup_epochs", "label_smoothing", "early_stopping_patience", "mixed_precision",
                 "budget", "augmentation", "subgroups", "age_bands", "ece_bins", "bootstrap_resamples", "confidence")


@dataclass
class BenchmarkData:
    real_train: ImageTable
    validation: ImageTable
    synthetic: ImageTable | None
    test_sets: list[tuple[TestSetConfig, ImageTable]]
    training_images_checked: int = 0


# ---------------------------------------------------------------------------------------------- data


def _source(given, configured: str | None, what: str, option: str):
    if given is not None:
        return given
    if not configured:
        raise ConfigError(f"no {what}: set {option} to a dataset folder or Hub id")
    return configured


def prepare_data(config: EvaluationConfig, real=None, synthetic=None, test_sets: dict[str, Any] | None = None,
                 needs_synthetic: bool = True) -> BenchmarkData:
    """Load every split, hold out validation if needed, and refuse any training image that is a test image
    (same image id, lesion, patient or bytes)."""
    real_source = _source(real, config.real.path, "real dataset", "evaluation.real.path")
    # a source filter keeps a second source (HAM10000 in the paper) out of training and early stopping alike
    real_args = {"config_name": config.real.config_name, "revision": config.real.revision,
                 "source_filter": config.real.source}
    real_train = load_table(real_source, config.real.split, "real train", **real_args)
    try:
        validation = load_table(real_source, config.validation_split, "real validation", **real_args)
    except ConfigError as exc:
        if "has no split" not in str(exc):
            raise
        logger.info("no %r split: holding out %.0f%% of real train (whole patients) for early stopping",
                    config.validation_split, 100 * config.validation_fraction)
        train_rows, validation_rows = group_holdout(real_train, config.validation_fraction)
        real_train, validation = (real_train.subset(train_rows, "real train"),
                                  real_train.subset(validation_rows, "real validation"))

    synthetic_table = None
    if needs_synthetic:
        configured = config.synthetic.path if config.synthetic is not None else None
        if synthetic is None and not configured:
            raise MissingSyntheticDataError(
                "the hybrid/sweep/equal-size arms train on synthetic images, but no synthetic dataset was given: "
                "set evaluation.synthetic.path (the dataset stage's output, config `synthetic`) or run only the "
                "real-only arm (evaluation.arms=[real])")
        spec = config.synthetic
        synthetic_table = load_table(synthetic if synthetic is not None else configured, spec.split, "synthetic",
                                     spec.config_name, spec.revision, spec.source)

    tests = []
    for spec in config.test_sets:
        given = (test_sets or {}).get(spec.name)
        source = given if given is not None else (spec.path or real_source)
        same_as_real = given is None and spec.path is None
        config_name = spec.config_name or (config.real.config_name if same_as_real else None)
        revision = spec.revision or (config.real.revision if same_as_real else None)
        tests.append((spec, load_table(source, spec.split, spec.name, config_name, revision, spec.source,
                                       whole_class_folder=True)))

    exclusion = exclusion_of([t for _, t in tests], exclusion_from_config(config.exclusion_file, real_source))
    training = [real_train, validation] + ([synthetic_table] if synthetic_table is not None else [])
    checked = assert_disjoint(training, exclusion)
    return BenchmarkData(real_train, validation, synthetic_table, tests, checked)


# ---------------------------------------------------------------------------------------------- one run


def model_label(model_name: str) -> str:
    """A short name for a model source: a timm name as is, `hf-hub:ORG/NAME` -> ORG-NAME, `local-dir:PATH` ->
    the folder's name (the rest of the path says where it lies on one machine, not what it is)."""
    source, _, rest = model_name.partition(":")
    if source == "local-dir" and rest:
        return Path(rest.rstrip("/")).name or rest
    if source == "hf-hub" and rest:
        return rest.split("@", 1)[0].replace("/", "-")
    return model_name


def run_id_for(model_name: str, mix: Mix, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in model_label(model_name))
    return f"{safe}__{mix.name}__seed{seed}"


def check_weight_sources(config: EvaluationConfig) -> None:
    """A weights file beside a timm config.json is a model folder: its preprocessing (mean/std, size) and
    architecture arguments (e.g. padding) live in that config, which a bare weights file would lose."""
    for model_name, path in config.pretrained_files.items():
        folder = Path(path).parent
        if (folder / "config.json").is_file():
            raise ConfigError(f"evaluation.pretrained_files[{model_name!r}]: {path} lies in a timm model folder; name "
                              f"the model 'local-dir:{folder}' instead (without pretrained_files), so that its own "
                              "data config and model arguments are used")


def _run_settings(config: EvaluationConfig) -> dict[str, Any]:
    return {k: v for k, v in config_to_dict(config).items() if k in _RUN_SETTINGS}


def run_fingerprint(config: EvaluationConfig, model_name: str, mix: Mix, seed: int, data: BenchmarkData) -> str:
    """What one run computes from: settings, model, mix, seed and its data (the synthetic data only where the
    mix uses it, so a real-only run stays done when synthetic data is added later)."""
    synthetic = data.synthetic if mix.synthetic_fraction > 0 else None
    inputs = [t.origin.get("content_sha256") for t in (data.real_train, data.validation, synthetic) if t]
    inputs += [t.origin.get("content_sha256") for _, t in data.test_sets]
    blob = json.dumps([_run_settings(config), model_name, mix.key, seed, inputs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def sweep_fingerprint(config: EvaluationConfig, data: BenchmarkData) -> str:
    """What every run aggregated in one results folder must share: the settings that change what a run
    computes, the real and test data (not the model, mix or seed, and not the synthetic data, which only the
    r > 0 runs use: see synthetic_fingerprint). Runs of one sweep may come from several invocations, e.g. one
    model per machine, or the real-only arm first and the synthetic arms later."""
    inputs = [t.origin.get("content_sha256") for t in (data.real_train, data.validation)]
    inputs += [t.origin.get("content_sha256") for _, t in data.test_sets]
    blob = json.dumps([_run_settings(config), inputs, config.hybrid_fraction], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def synthetic_fingerprint(data: BenchmarkData) -> str | None:
    return data.synthetic.origin.get("content_sha256") if data.synthetic is not None else None


def freeze_for_fine_tuning(model, config: EvaluationConfig) -> tuple[Any, dict[str, Any]]:
    """Freeze the first `config.frozen_groups` of timm's coarse parameter groups (stem, then block stages, in
    forward order), batch norm statistics included, and with `freeze_batch_norm` every batch norm layer.
    Returns the model (timm swaps modules) and what was frozen, for the record."""
    from timm.layers import freeze_batch_norm_2d
    from timm.models import group_parameters
    from timm.utils.model import freeze

    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [groups[key] for key in sorted(groups)]
    if config.frozen_groups >= len(ordered):
        raise ConfigError(f"evaluation.frozen_groups={config.frozen_groups}: the model has {len(ordered)} parameter "
                          f"groups and the last (the head) must train; use at most {len(ordered) - 1}")
    frozen_names = [name for group in ordered[:config.frozen_groups] for name in group]
    if frozen_names:  # whole modules, so that their batch norm statistics stop moving too
        freeze(model, sorted({name.rsplit(".", 1)[0] for name in frozen_names}))
    if config.freeze_batch_norm:
        model = freeze_batch_norm_2d(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {"frozen_groups": config.frozen_groups, "parameter_groups": len(ordered),
               "frozen_parameter_tensors": len(frozen_names), "trainable_parameters": int(trainable),
               "batch_norm": "frozen (stored statistics)" if config.freeze_batch_norm else
               ("frozen in the frozen groups, trained elsewhere" if frozen_names else "trained")}
    return model, summary


def zero_new_head(model) -> str:
    """Start the new 2-class head at zero logits (p = 0.5). timm initialises a fresh classifier for its class
    count: MobileNet/EfficientNet draw from +-1/sqrt(num_classes), +-0.71 for two classes, so pretrained
    features (up to 6 after ReLU6, 1280 of them) gave logits in the tens and a first loss near 10, whose
    gradients wrecked the pretrained blocks before the head had learned anything."""
    import torch

    head = model.get_classifier()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.zero_()
    return "new head initialised at zero"


def standard_layers(model):
    """Frozen batch norm back to timm's trainable layers, so that the saved model is the plain architecture."""
    from timm.layers import unfreeze_batch_norm_2d

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return unfreeze_batch_norm_2d(model)


def split_grouping(table: ImageTable) -> str:
    """How the real data could be kept apart: by patient, by lesion, or only by image (no ids)."""
    for key, grouping in (("patient_id", "patient"), ("lesion_id", "lesion")):
        if any(table.columns.get(key) or []):
            return grouping
    return "image"


def _pretrained_weights(model, model_name: str, config: EvaluationConfig) -> str | None:
    if model_name in config.pretrained_files:
        return str(config.pretrained_files[model_name])
    if not config.pretrained:
        return None
    if model_name.startswith("local-dir:"):
        return f"local folder {model_label(model_name)}"
    if model_name.startswith("hf-hub:"):
        return model_name.split(":", 1)[1]
    return PAPER_WEIGHTS.get(model_name) or model.pretrained_cfg.get("hf_hub_id") or model_name


def _cached(table: ImageTable, data_config: dict, mode: str, config: EvaluationConfig, progress: bool) -> np.ndarray:
    from dermt2im_hub.evaluation.train import get_accelerator

    # with a cache folder the main process decodes and writes the file; the other processes then map it
    first = get_accelerator(config).main_process_first() if config.cache_dir else contextlib.nullcontext()
    with first:
        return cache.cached_images(table.images, table.cache_key, data_config, mode, config.cache_dir,
                                   config.num_workers, progress)


def _training_pools(data: BenchmarkData, data_config: dict, config: EvaluationConfig, progress: bool):
    side = cache.train_side(data_config)
    real = _cached(data.real_train, data_config, "train", config, progress)
    if data.synthetic is None:
        return real, np.zeros((0, side, side, 3), np.uint8)
    return real, _cached(data.synthetic, data_config, "train", config, progress)


def _eval_images(table: ImageTable, data_config: dict, config: EvaluationConfig, progress: bool) -> np.ndarray:
    return _cached(table, data_config, "eval", config, progress)


def _dataset_refs(data: BenchmarkData) -> dict[str, Any]:
    refs = {"real": data.real_train.origin, "validation": data.validation.origin,
            "synthetic": data.synthetic.origin if data.synthetic else None}
    refs["test_sets"] = {table.name: table.origin for _, table in data.test_sets}
    return refs


def _hub_dataset_ids(config: EvaluationConfig) -> list[str]:
    from dermt2im_hub.hub.resolve import is_remote_hub_id

    sources = [config.real.path, config.synthetic.path if config.synthetic else None]
    sources += [t.hub_id or t.path for t in config.test_sets]
    return [s for s in dict.fromkeys(sources) if is_remote_hub_id(s)]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _training_set(data: BenchmarkData, mix: Mix, seed: int, data_config: dict, config: EvaluationConfig,
                  progress: bool):
    """The mix's rows of the decoded real and synthetic pools, as one training set."""
    from dermt2im_hub.evaluation.train import CachedTrainingSet

    synthetic_labels = data.synthetic.labels if data.synthetic else np.zeros(0, np.int64)
    real_rows, synthetic_rows = select_mix(data.real_train.labels, synthetic_labels, mix, seed,
                                           shrink=config.shrink_short_mixes)
    real_pool, synthetic_pool = _training_pools(data, data_config, config, progress)
    return CachedTrainingSet([real_pool, synthetic_pool], [real_rows, synthetic_rows],
                             [data.real_train.labels[real_rows], synthetic_labels[synthetic_rows]])


def _test(model, data: BenchmarkData, data_config: dict, config: EvaluationConfig, seed: int, accelerator,
          progress: bool) -> tuple[list[dict], list[dict]]:
    """(results per test set, one prediction row per test image)."""
    from dermt2im_hub.evaluation.augment import Normalize
    from dermt2im_hub.evaluation.train import inference_loader, predict_probabilities

    channels_last = config.channels_last and accelerator.device.type == "cuda"
    normalize = Normalize(data_config["mean"], data_config["std"], channels_last).to(accelerator.device)
    results, predictions = [], []
    for spec, table in data.test_sets:
        loader = inference_loader(_eval_images(table, data_config, config, progress), config, accelerator)
        probabilities = predict_probabilities(model, loader, normalize, accelerator)
        result = score_test_set(table, probabilities, config, seed)
        result["dataset_id"] = spec.hub_id or spec.path
        results.append(result)
        predictions += prediction_rows(table, probabilities, config)
    return results, predictions


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def model_architecture(model, model_name: str) -> str:
    """timm's architecture name (what `timm.create_model` builds), also for hf-hub: and local-dir: sources."""
    return str(getattr(model, "pretrained_cfg", {}).get("architecture") or model_name.split(":")[-1])


def _training_summary(fitted, accelerator) -> dict[str, Any]:
    return {"epochs_run": len(fitted.history), "best_epoch": fitted.best_epoch,
            "best_validation_balanced_accuracy": fitted.best_validation_balanced_accuracy,
            "stopped_early": fitted.stopped_early, "train_seconds": fitted.train_seconds,
            "train_images_per_second": fitted.train_images_per_second, "history": fitted.history,
            "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device)}


def _mix_summary(train_set, pretrained_on: BenchmarkData | None = None, fitted=None) -> dict[str, Any]:
    if pretrained_on is not None:  # two phases: every synthetic image, then the real set; the fraction is of samples
        phases = fitted.budget["phases"]
        return {"real_images": len(pretrained_on.real_train), "synthetic_images": len(pretrained_on.synthetic),
                "synthetic_fraction": phases[0]["samples"] / max(1, fitted.budget["samples"]),
                "phases": ["synthetic", "real"]}
    n_real, n_synthetic = (int(len(rows)) for rows in (train_set.row_of[train_set.pool_of == 0],
                                                       train_set.row_of[train_set.pool_of == 1]))
    return {"real_images": n_real, "synthetic_images": n_synthetic,
            "synthetic_fraction": n_synthetic / max(1, n_real + n_synthetic),
            "per_class": {name: int((train_set.labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}}


def train_classifier(config: EvaluationConfig, model_name: str, mix: Mix, seed: int, data: BenchmarkData,
                     output_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one classifier on one mix with one seed, test it on every test set, write its classifier
    folder and results record; returns the record."""
    import torch
    from accelerate.utils import set_seed

    from dermt2im_hub.evaluation.train import (
        create_classifier,
        fit,
        get_accelerator,
        join_phases,
        split_budget,
        training_budget,
        unwrap,
    )

    accelerator = get_accelerator(config)
    output_dir = Path(output_dir or config.output_dir)
    run_id, started = run_id_for(model_name, mix, seed), _now()
    set_seed(seed)
    model, data_config = create_classifier(model_name, config)
    model, fine_tuning = freeze_for_fine_tuning(model, config)
    if config.pretrained:
        fine_tuning["head"] = zero_new_head(model)
    train_set = _training_set(data, mix, seed, data_config, config, progress)
    validation_images = _eval_images(data.validation, data_config, config, progress)
    # one budget for every arm, counted in the real-only training set (not this mix's size)
    budget = training_budget(config, len(data.real_train))
    if mix.size_policy == "pretrain":  # synthetic first, then the real set: the same total budget in two phases
        first, second = split_budget(budget, config.pretrain_share)
        model, pretrained = fit(model, data_config, train_set, validation_images, data.validation.labels, config,
                                seed, accelerator, progress, budget=first)
        train_set = _training_set(data, Mix(0.0), seed, data_config, config, progress)
        model, tuned = fit(unwrap(accelerator, model), data_config, train_set, validation_images,
                           data.validation.labels, config, seed, accelerator, progress, budget=second)
        fitted = join_phases(pretrained, tuned)
    else:
        model, fitted = fit(model, data_config, train_set, validation_images, data.validation.labels, config, seed,
                            accelerator, progress, budget=budget)
    results, predictions = _test(model, data, data_config, config, seed, accelerator, progress)
    record = {
        "schema": RECORD_SCHEMA, "run_id": run_id,
        "run_sha256": run_fingerprint(config, model_name, mix, seed, data),
        "sweep_sha256": sweep_fingerprint(config, data),
        "synthetic_sha256": synthetic_fingerprint(data) if mix.synthetic_fraction > 0 else None,
        "model": model_name, "pretrained_weights": _pretrained_weights(model, model_name, config),
        "mix": mix.name, "arms": list(mix.arms), "synthetic_fraction": mix.synthetic_fraction,
        "size_policy": mix.size_policy, "hybrid_fraction": config.hybrid_fraction, "seed": seed,
        "training_mix": _mix_summary(train_set, data if mix.size_policy == "pretrain" else None, fitted),
        "budget": fitted.budget,
        "architecture": model_architecture(model, model_name),
        "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
        "model_args": _jsonable(getattr(unwrap(accelerator, model), "_model_args", None) or {}),
        "training": {**_training_summary(fitted, accelerator), "fine_tuning": fine_tuning},
        "split_grouping": split_grouping(data.real_train),
        "datasets": _dataset_refs(data),
        "results": results,
        "predictions": predictions,
        "classifier_dir": f"classifiers/{run_id}",
        "config": config_to_dict(config),
        "versions": package_versions(),
        "started_at": started,
        "ended_at": _now(),
    }
    if accelerator.is_main_process:
        save_classifier(output_dir / "classifiers" / run_id, standard_layers(unwrap(accelerator, model)),
                        data_config, record,
                        config, _hub_dataset_ids(config))
        atomic_write_json(output_dir / "results" / RECORDS_DIR / f"{run_id}.json", record)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


# ---------------------------------------------------------------------------------------------- outputs


def card_results(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Contract 4's classifier `results`: metrics without the counts, CIs as [low, high]."""
    rows = []
    for result in record["results"]:
        metrics = {k: v for k, v in result["metrics"].items() if k not in COUNT_KEYS}
        rows.append({"test_set": result["test_set"], "split": result.get("split"), "n": result["n"],
                     "dataset_id": result.get("dataset_id"), "metrics": metrics, "ci": result["ci"],
                     "confidence": result.get("confidence")})
    return rows


def write_eval_results(folder: Path, results: list[dict[str, Any]], notes_suffix: str,
                       metrics=("accuracy", "balanced_accuracy", "auroc")) -> list[Path]:
    """`.eval_results/<test set>_<metric>.yaml`, one file per score (dermt2im_hub.hub.eval_results: fractions,
    evaluate's metric ids, the test set's Hub id when it has one)."""
    import yaml

    written = []
    date = _dt.date.today().isoformat()
    for result in results:
        for metric in metrics:
            value = (result.get("metrics") or {}).get(metric)
            if value is None:
                continue
            name = f"{slug(result['test_set'])}_{hub_metric_id(metric)}.yaml"
            dataset_id = hub_dataset_id(result.get("dataset_id"), result["test_set"])
            entries = eval_results_entries(dataset_id, metric, value,
                                           f"{metric} (fraction) on {result['test_set']} ({result.get('split')}, "
                                           f"n={result.get('n')}); {notes_suffix}", date=date)
            written.append(atomic_write_text(folder / ".eval_results" / name,
                                             yaml.safe_dump(entries, sort_keys=False)))
    return written


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(text)).strip("-").lower() or "test"


def save_classifier(folder: Path, model, data_config: dict, record: dict[str, Any], config: EvaluationConfig,
                    hub_datasets: list[str]) -> Path:
    """A Hub-ready timm model folder: safetensors weights, timm config.json, eval results, manifest, card."""
    from timm.models import save_for_hf

    from dermt2im_hub.hub.cards import render_card

    folder.mkdir(parents=True, exist_ok=True)
    # the tag names these weights (timm would otherwise keep the tag of the architecture's default checkpoint)
    model_config = {"label_names": list(CLASS_NAMES), "pretrained_cfg": {"tag": f"dermt2im-{record['mix']}",
                                                                         "license": config.license}}
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True,
                data_config={k: v for k, v in data_config.items() if k in ("input_size", "interpolation", "mean",
                                                                           "std", "crop_pct", "crop_mode")})
    mix = record["training_mix"]
    card = {
        "model_name": record.get("architecture") or record["model"], "model_source": record["model"],
        "pretrained_weights": record["pretrained_weights"],
        "data_config": record["data_config"], "model_args": record.get("model_args"),
        "split_grouping": record.get("split_grouping"),
        "num_labels": len(CLASS_NAMES), "labels": list(CLASS_NAMES), "weight_file": "model.safetensors",
        "training_mix": {"real_images": mix["real_images"], "synthetic_images": mix["synthetic_images"],
                         "synthetic_fraction": round(mix["synthetic_fraction"], 4),
                         "datasets": hub_datasets or None},
        "hyperparameters": _hyperparameters(config, record),
        "seed": record["seed"], "results": card_results(record), "datasets": hub_datasets,
        "license": config.license,
    }
    write_eval_results(folder, card["results"], f"seed {record['seed']}, mix {record['mix']}")
    save_config(config, folder / "evaluation_config.yaml")
    write_manifest(folder, "train_classifier", config, outputs={
        "weights": "model.safetensors", "timm_config": "config.json", "run_id": record["run_id"],
        "best_epoch": record["training"]["best_epoch"]}, started_at=record["started_at"],
        extra={"card": card, "run_sha256": record["run_sha256"]},
        input_fingerprints={"datasets": record["datasets"]})
    render_card(folder)
    return folder


def _budget_text(budget: dict[str, Any]) -> str:
    phases = " in two phases (synthetic, then real)" if budget.get("phases") else ""
    return (f"{budget.get('samples')} training samples seen{phases}: {budget.get('rounds')} rounds of "
            f"{budget.get('round_samples')}, {budget.get('steps')} steps; the same for every arm of the sweep")


def _hyperparameters(config: EvaluationConfig, record: dict[str, Any]) -> dict[str, Any]:
    training = record["training"]
    return {
        "optimizer": "AdamW", "learning_rate": config.learning_rate, "min_learning_rate": config.min_learning_rate,
        "schedule": f"linear warmup {(record.get('budget') or {}).get('warmup_samples')} samples + cosine",
        "weight_decay": config.weight_decay,
        "batch_size_per_device": config.batch_size, "num_processes": training["num_processes"],
        "training_budget": _budget_text(record.get("budget") or {}), "rounds_run": training["epochs_run"],
        "best_round": training["best_epoch"],
        "early_stopping": "validation balanced accuracy, patience "
                          f"{(record.get('budget') or {}).get('patience_samples')} samples",
        "mixed_precision": training["mixed_precision"], "sampling": "class-balanced",
        "input_size": record["data_config"]["input_size"][-1],
        "augmentation": config_to_dict(config.augmentation),
    }


def read_records(results_dir: str | Path) -> list[dict[str, Any]]:
    folder = Path(results_dir) / RECORDS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{results_dir} has no {RECORDS_DIR}/ folder: is it the results/ folder "
                                "written by `dermt2im benchmark`?")
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def _metrics_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from dermt2im_hub.evaluation.metrics import METRIC_NAMES

    rows = []
    for record in records:
        for result in record["results"]:
            row = {key: record[key] for key in ("run_id", "model", "mix", "synthetic_fraction", "size_policy",
                                                "seed")}
            row.update(test_set=result["test_set"], split=result.get("split"), n=result["n"])
            row.update({name: result["metrics"].get(name) for name in METRIC_NAMES})
            for name, (low, high) in result["ci"].items():
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
            rows.append(row)
    return rows


def write_results_files(results_dir: Path, config: EvaluationConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.jsonl + predictions.jsonl from every record; returns (manifest outputs, dataset card facts)."""
    from dermt2im_hub.utils.files import write_jsonl

    records = read_records(results_dir)
    metrics_rows = _metrics_rows(records)
    write_jsonl(results_dir / METRICS_FILE, metrics_rows)
    write_jsonl(results_dir / PREDICTIONS_FILE, ({"run_id": r["run_id"], **p} for r in records
                                                 for p in r["predictions"]))
    card = {
        "pretty_name": "Derm-T2IM classifier benchmark results",
        "num_rows": len(metrics_rows),
        "configs": [
            {"config_name": "metrics", "data_files": [{"split": "train", "path": METRICS_FILE}], "default": True},
            {"config_name": "predictions", "data_files": [{"split": "train", "path": PREDICTIONS_FILE}]},
        ],
        "license": config.license,
        "source_datasets": _hub_dataset_ids(config),
    }
    outputs = {"records": len(records), "record_folder": RECORDS_DIR, "metrics": METRICS_FILE,
               "predictions": PREDICTIONS_FILE}
    return outputs, card


def render_results_card(results_dir: Path, repo_id: str | None = None) -> Path:
    """The results folder's card: the generic stage card, whose front matter carries the `configs:` block the
    run recorded (metrics.jsonl and predictions.jsonl as two loadable configs on the Hub)."""
    from dermt2im_hub.hub.cards import render_card

    return render_card(results_dir, repo_id=repo_id)


# ---------------------------------------------------------------------------------------------- the sweep


def set_aside_other_sweeps(results_dir: Path, sweep: str, synthetic: str | None) -> list[Path]:
    """Move records of another sweep out of results/records/ (with their classifier folders) into
    OUTPUT/records-set-aside/<time>/, so that a mean over seeds never mixes them; nothing is deleted. Another
    sweep: other settings or real/test data, an r > 0 run made with other synthetic data (when this run has
    synthetic data), or a record from a version that did not name its sweep. Returns the moved records."""
    folder = results_dir / RECORDS_DIR
    moved: list[Path] = []
    if not folder.is_dir():
        return moved
    target = results_dir.parent / "records-set-aside" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            record = {}
        uses_synthetic = (record.get("synthetic_fraction") or 0) > 0
        if record.get("sweep_sha256") == sweep and not (
                synthetic is not None and uses_synthetic and record.get("synthetic_sha256") != synthetic):
            continue
        target.mkdir(parents=True, exist_ok=True)
        moved.append(path.rename(target / path.name))
        classifier = results_dir.parent / "classifiers" / path.stem  # would otherwise be published as current
        if classifier.is_dir():
            (target / "classifiers").mkdir(exist_ok=True)
            classifier.rename(target / "classifiers" / path.stem)
    if moved:
        logger.warning("%d run record(s) in %s came from other settings or data: moved to %s (not averaged with "
                       "this sweep)", len(moved), folder, target)
    return moved


def _runs_done(results_dir: Path, plan: list, config: EvaluationConfig, data: BenchmarkData, accelerator) -> list:
    """Which planned runs have a current record, decided by the main process and sent to every rank: ranks
    that disagreed (a records folder not shared, a record written in between) would hang in collectives."""
    done = [_done(results_dir, run_id_for(model, mix, seed), run_fingerprint(config, model, mix, seed, data))
            for model, mix, seed in plan] if accelerator.is_main_process else [False] * len(plan)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        done = broadcast_object_list(done)
    return done


def _done(results_dir: Path, run_id: str, fingerprint: str) -> bool:
    path = results_dir / RECORDS_DIR / f"{run_id}.json"
    if not path.is_file():
        return False
    with contextlib.suppress(json.JSONDecodeError, OSError):
        return json.loads(path.read_text(encoding="utf-8")).get("run_sha256") == fingerprint
    return False


def run_benchmark(config: EvaluationConfig, *, real=None, synthetic=None, test_sets: dict[str, Any] | None = None,
                  progress: bool = True) -> Path:
    """Every model x mix x seed of `config`; returns the results folder. `real`, `synthetic` and
    `test_sets` ({name: dataset}) replace the configured paths with in-memory datasets or other paths."""
    from dermt2im_hub.evaluation.train import check_model_names, get_accelerator

    config.validate()
    check_model_names(config.models)
    check_weight_sources(config)
    accelerator = get_accelerator(config)
    mixes = plan_mixes(config.arms, config.hybrid_fraction, config.synthetic_fractions)
    data = prepare_data(config, real, synthetic, test_sets,
                        needs_synthetic=any(m.synthetic_fraction > 0 for m in mixes))
    check_mixes(data.real_train.labels, data.synthetic.labels if data.synthetic else None, mixes,
                config.shrink_short_mixes)  # a short mix fails before the first run trains
    output_dir = Path(config.output_dir)
    results_dir = output_dir / "results"
    inputs = {"real": config.real.path if real is None else None,
              "synthetic": (config.synthetic.path if config.synthetic else None) if synthetic is None else None}
    inputs = {k: v for k, v in inputs.items() if v}
    plan = [(model, mix, seed) for model in config.models for mix in mixes for seed in config.seeds]
    logger.info("%d runs: %d model(s) x %d mix(es) x %d seed(s); %d training images checked against the test sets",
                len(plan), len(config.models), len(mixes), len(config.seeds), data.training_images_checked)
    if accelerator.is_main_process:
        set_aside_other_sweeps(results_dir, sweep_fingerprint(config, data), synthetic_fingerprint(data))
    accelerator.wait_for_everyone()
    done = _runs_done(results_dir, plan, config, data, accelerator)
    with StageRun(results_dir, "benchmark", config, inputs=inputs) if accelerator.is_main_process \
            else contextlib.nullcontext() as stage:
        for index, (model_name, mix, seed) in enumerate(plan, 1):
            run_id = run_id_for(model_name, mix, seed)
            if done[index - 1]:
                logger.info("[%d/%d] %s: done earlier, skipped", index, len(plan), run_id)
                continue
            logger.info("[%d/%d] %s", index, len(plan), run_id)
            train_classifier(config, model_name, mix, seed, data, output_dir, progress)
        if stage is not None:
            save_config(config, results_dir / "evaluation_config.yaml")
            stage.outputs, stage.extra["card"] = write_results_files(results_dir, config)
            stage.extra["training_images_checked_against_test_sets"] = data.training_images_checked
    if accelerator.is_main_process:
        render_results_card(results_dir)
    cache.clear_memory_cache()
    return results_dir


def load_metrics_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(results_dir) / METRICS_FILE)
