"""`dermt2im leaderboard RESULTS_DIR`: the paper's Table IV from the benchmark's run records, made honest.

From `RESULTS_DIR/records/*.json` it writes (default `RESULTS_DIR/leaderboard/`, stage "leaderboard"):

    leaderboard.md            Table IV layout (mean +- SD over seeds, the paper's number beside each cell where
                              the setup is the paper's), every hybrid cell with its verdict: the seed-aware
                              test (seeds and test images, Holm-adjusted across models x test sets), its CI and
                              the smallest difference the run could detect; every other mix against real-only;
                              the ensemble McNemar and DeLong tests (secondary, labelled); operating points;
                              subgroups with CIs
    leaderboard.json          the same numbers, machine-readable
    synthetic_fraction.png    accuracy and balanced accuracy vs synthetic fraction, per model and test set
    classifiers/<model>__<mix>/model-index.md    front matter with `model-index` (mean over seeds) to merge
                                                  into that classifier's card
    classifiers/<model>__<mix>/.eval_results/<test set>_<metric>.yaml   the Hub's newer eval-results format
    manifest.json, README.md  (the results card)
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dermt2im_hub.config import ConfigError
from dermt2im_hub.evaluation.benchmark import COUNT_KEYS, read_records, slug
from dermt2im_hub.evaluation.stats import (
    delong_difference,
    detectable_difference,
    discordant_pairs,
    holm,
    mcnemar_exact,
    mean_sd,
    seed_image_test,
    sensitivity_at_specificity,
)
from dermt2im_hub.hub.eval_results import eval_results_entries, hub_dataset_id, hub_metric_id
from dermt2im_hub.manifest import StageRun, try_read_manifest
from dermt2im_hub.utils.files import atomic_save_figure, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# Table IV of Derm-T2IM (arXiv 2401.05159): test accuracy (%), one run per cell.
PAPER_TABLE_IV = {
    ("MobileNetV2", "ISIC"): {"real": 78.89, "hybrid": 81.35},
    ("MobileNetV2", "HAM10000"): {"real": 70.33, "hybrid": 73.58},
    ("ViT-B/16", "ISIC"): {"real": 90.74, "hybrid": 93.03},
    ("ViT-B/16", "HAM10000"): {"real": 81.50, "hybrid": 85.02},
}
# The paper's test set sizes (its class balance is not reported).
PAPER_TEST_N = {"ISIC": 659, "HAM10000": 227}
PAPER_TABLE_MARKDOWN = """| model | ISIC real-only | ISIC hybrid | HAM10000 real-only | HAM10000 hybrid |
|---|---|---|---|---|
| MobileNetV2 | 78.89 | 81.35 | 70.33 | 73.58 |
| ViT-B/16 | 90.74 | 93.03 | 81.50 | 85.02 |"""
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "sens@spec80",
                 "sens@spec90", "ece")
OPERATING_POINTS = {"sens@spec80": 0.8, "sens@spec90": 0.9}
INDEX_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity")
COMPARED_METRICS = ("accuracy", "balanced_accuracy")
PLOT_NAME = "synthetic_fraction.png"


def paper_model(model_name: str) -> str | None:
    """The paper's name for a timm model family (ViT-B/16, MobileNetV2), by architecture only: use
    `paper_setup` before showing that name beside a result."""
    name = model_name.lower()
    if "vit_base_patch16" in name or "vit-base-patch16" in name:
        return "ViT-B/16"
    if "mobilenetv2" in name:
        return "MobileNetV2"
    return None


PAPER_INPUT_SIZE = 224
# The paper's setups: architecture (timm id without a weights tag), and which pretrained weights count.
PAPER_SETUPS = {
    "ViT-B/16": {"architecture": "vit_base_patch16_224", "weights": ("orig_in21k", "vit-base-patch16-224-in21k")},
    "MobileNetV2": {"architecture": "mobilenetv2_100", "weights": None},  # the paper does not name its weights
}


def _architecture(model_name: str) -> str:
    """`local-dir:/x/mobilenetv2_100.tf_in1k` -> mobilenetv2_100; `vit_base_patch16_224.orig_in21k` -> vit_..."""
    name = model_name.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1].lower()
    return name.split(".", 1)[0]


def paper_setup(model_name: str, pretrained_weights: str | None, input_size: int | None) -> tuple[str | None, str]:
    """(the paper's model name, "") when the timm id, the pretrained weights and the input size are the
    paper's; else (None, why not). Only then does a cell sit beside the paper's number under its name."""
    family = paper_model(model_name)
    if family is None:
        return None, "not a model of the paper"
    setup, reasons = PAPER_SETUPS[family], []
    if _architecture(model_name) != setup["architecture"]:
        reasons.append(f"architecture {_architecture(model_name)}, paper {setup['architecture']}")
    if not pretrained_weights:
        reasons.append("trained from random initialisation, paper fine-tuned pretrained weights")
    elif setup["weights"] and not any(tag in f"{model_name} {pretrained_weights}".lower()
                                      for tag in setup["weights"]):
        reasons.append(f"weights {pretrained_weights}, paper {setup['weights'][-1]}")
    if input_size != PAPER_INPUT_SIZE:
        reasons.append(f"input {input_size} px, paper {PAPER_INPUT_SIZE} px")
    return (None, "; ".join(reasons)) if reasons else (family, "")


def _record_setup(record: dict) -> tuple[str | None, str]:
    size = (record.get("data_config") or {}).get("input_size") or [None]
    return paper_setup(record["model"], record.get("pretrained_weights"), size[-1])


def model_setups(records: list[dict]) -> dict[str, tuple[str | None, str]]:
    """model -> (paper name or None, why not); the paper's name needs every run of that model to match."""
    setups: dict[str, tuple[str | None, str]] = {}
    for record in records:
        name, why = _record_setup(record)
        previous = setups.get(record["model"])
        if previous is None or (previous[0] and not name):
            setups[record["model"]] = (name, why)
    return setups


def model_label(model: str, setups: dict[str, tuple[str | None, str]]) -> str:
    name, why = setups.get(model, (None, ""))
    if name:
        return f"{name} (`{model}`)"
    return f"`{model}` (not the paper's setup: {why or 'not recorded'})"


def paper_test_set(test_set: str) -> str | None:
    name = test_set.lower()
    if "ham" in name:
        return "HAM10000"
    if "isic" in name:
        return "ISIC"
    return None


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _mean_sd_cell(summary: dict | None, scale: float = 100.0) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    mean, sd = summary["mean"] * scale, summary.get("sd")
    return f"{mean:.2f} ± {sd * scale:.2f}" if sd is not None else f"{mean:.2f}"


# ---------------------------------------------------------------------------------------------- aggregation


def _test_set_order(summaries: list[dict]) -> list[str]:
    """Test sets in the order the benchmark config listed them (the paper's: ISIC, then HAM10000)."""
    return [name for _, name in sorted({(s["test_set_index"], s["test_set"]) for s in summaries})]


def _hybrid_fraction(records: list[dict]) -> float:
    values = [r.get("hybrid_fraction", 0.75) for r in records]
    return max(set(values), key=values.count)


def arm_of(record: dict, hybrid_fraction: float) -> str | None:
    """real / hybrid / equal_size for the mixes Table IV compares; None for other sweep points."""
    r, policy = record["synthetic_fraction"], record["size_policy"]
    if r == 0:
        return "real"
    if policy == "pretrain":
        return "pretrain_finetune"
    if abs(r - hybrid_fraction) < 1e-9:
        return "hybrid" if policy == "full" else "equal_size"
    return None


def aggregate(records: list[dict]) -> list[dict[str, Any]]:
    """Mean, SD and n over seeds of every metric, per (model, mix, test set)."""
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    order: dict[str, int] = {}
    for record in records:
        for index, result in enumerate(record["results"]):
            order.setdefault(result["test_set"], index)
            groups[(record["model"], record["mix"], result["test_set"])].append((record, result))
    summaries = []
    for (model, mix, test_set), members in sorted(groups.items()):
        first = members[0][0]
        metrics = {}
        for name in members[0][1]["metrics"]:
            if name in COUNT_KEYS:
                continue
            mean, sd, n = mean_sd([res["metrics"].get(name) for _, res in members])
            metrics[name] = {"mean": mean, "sd": sd, "n": n}
        for name, specificity in OPERATING_POINTS.items():
            mean, sd, n = mean_sd([_operating_point(rec, test_set, specificity) for rec, _ in members])
            metrics[name] = {"mean": mean, "sd": sd, "n": n}
        summaries.append({"model": model, "mix": mix, "test_set": test_set, "test_set_index": order[test_set],
                          "synthetic_fraction": first["synthetic_fraction"], "size_policy": first["size_policy"],
                          "seeds": sorted(rec["seed"] for rec, _ in members), "n_images": members[0][1]["n"],
                          "n_malignant": members[0][1]["metrics"].get("n_malignant"),
                          "training_images": _training_counts([rec for rec, _ in members]),
                          "budget": _budget_samples([rec for rec, _ in members]),
                          "metrics": metrics, "subgroups": _subgroup_means(members)})
    return summaries


def _operating_point(record: dict, test_set: str, specificity: float) -> float | None:
    rows = [p for p in record.get("predictions", []) if p["test_set"] == test_set]
    if not rows:
        return None
    return sensitivity_at_specificity([p["label"] for p in rows], [p["prob_malignant"] for p in rows], specificity)


def _budget_samples(records: list[dict]):
    values = sorted({(r.get("budget") or {}).get("samples") for r in records} - {None})
    return values[0] if len(values) == 1 else (f"{values[0]}-{values[-1]}" if values else None)


def _subgroup_means(members: list[tuple[dict, dict]]) -> list[dict[str, Any]]:
    values: dict[tuple, dict] = {}
    for _, result in members:
        for sub in result.get("subgroups", []):
            entry = values.setdefault((sub["attribute"], sub["group"]), {"n": sub["n"], "accuracy": [],
                                                                            "balanced_accuracy": []})
            for name in ("accuracy", "balanced_accuracy"):
                entry[name].append(sub["metrics"].get(name))
    return [{"attribute": a, "group": g, "n": e["n"], "accuracy": mean_sd(e["accuracy"])[0],
             "balanced_accuracy": mean_sd(e["balanced_accuracy"])[0]} for (a, g), e in values.items()]


def _training_counts(records: list[dict]) -> dict[str, Any]:
    """Real and synthetic training images of a mix (the same in every seed; a range if they are not)."""
    counts = {}
    for kind in ("real_images", "synthetic_images"):
        values = sorted({(r.get("training_mix") or {}).get(kind) for r in records} - {None})
        counts[kind] = values[0] if len(values) == 1 else (f"{values[0]}-{values[-1]}" if values else None)
    return counts


def _prediction_matrix(records: list[dict], test_set: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, labels, hard predictions (seeds x images), probabilities (seeds x images)), aligned by id."""
    per_run = [{p["image_id"]: p for p in r["predictions"] if p["test_set"] == test_set} for r in records]
    ids = sorted(per_run[0])
    if any(sorted(run) != ids for run in per_run):
        raise ValueError(f"runs disagree on the images of test set {test_set!r}: "
                         "were they scored on different data?")
    labels = np.array([per_run[0][i]["label"] for i in ids])
    predictions = np.array([[run[i]["prediction"] for i in ids] for run in per_run])
    probabilities = np.array([[run[i]["prob_malignant"] for i in ids] for run in per_run])
    return ids, labels, predictions, probabilities


def _image_groups(records: list[dict], test_set: str, ids: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """(attribute, group) -> image mask, from the `groups` the prediction rows carry (none in older records)."""
    rows = {p["image_id"]: p.get("groups") or {} for p in records[0]["predictions"] if p["test_set"] == test_set}
    masks: dict[tuple[str, str], np.ndarray] = {}
    for index, image_id in enumerate(ids):
        for attribute, group in rows[image_id].items():
            if group is not None:
                masks.setdefault((attribute, group), np.zeros(len(ids), dtype=bool))[index] = True
    return masks


def _arm_name(record: dict, hybrid_fraction: float) -> str:
    arm = arm_of(record, hybrid_fraction)
    return arm if arm else f"sweep r={record['synthetic_fraction']:.2f}"


def _compare_one(model: str, test_set: str, arm_runs: list[dict], real_runs: list[dict], hybrid_fraction: float,
                 confidence: float) -> dict[str, Any]:
    real_ids, labels, real_pred, real_prob = _prediction_matrix(real_runs, test_set)
    arm_ids, arm_labels, arm_pred, arm_prob = _prediction_matrix(arm_runs, test_set)
    # pairing is per image: the same ids, not merely the same label vector
    if real_ids != arm_ids or not np.array_equal(labels, arm_labels):
        raise ValueError(f"{model}: real-only and {arm_runs[0]['mix']} runs were tested on different {test_set} "
                         "images")
    first = arm_runs[0]
    arm = _arm_name(first, hybrid_fraction)
    entry = {"model": model, "test_set": test_set, "mix": first["mix"], "arm": arm, "primary": arm == "hybrid",
             "synthetic_fraction": first["synthetic_fraction"], "size_policy": first["size_policy"],
             "n_images": int(labels.size), "seeds_real": len(real_runs), "seeds_arm": len(arm_runs),
             "hybrid_fraction": hybrid_fraction}
    for metric in COMPARED_METRICS:
        entry[metric] = seed_image_test(metric, labels, arm_pred, real_pred, confidence)
    # secondary: one prediction per image and arm (the seeds' mean probability): about these two ensembles only
    ensemble_arm, ensemble_real = arm_prob.mean(axis=0), real_prob.mean(axis=0)
    only_arm, only_real = discordant_pairs(labels, ensemble_arm >= 0.5, ensemble_real >= 0.5)
    entry["mcnemar"] = {"test": "exact McNemar, seed ensemble vs seed ensemble",
                        "arm_only_correct": only_arm, "real_only_correct": only_real,
                        "discordance": (only_arm + only_real) / max(1, labels.size),
                        "ensemble_accuracy_arm": float(((ensemble_arm >= 0.5) == labels).mean()),
                        "ensemble_accuracy_real": float(((ensemble_real >= 0.5) == labels).mean()),
                        "p_value": mcnemar_exact(only_arm, only_real)}
    entry["delong"] = {"test": "paired DeLong, seed-ensemble scores",
                       **delong_difference(labels, ensemble_arm, ensemble_real)}
    masks = _image_groups(real_runs, test_set, real_ids)
    entry["subgroups"] = []
    for (attribute, group), mask in sorted(masks.items()):
        if mask.sum() < 2:
            continue
        test = seed_image_test("accuracy", labels[mask], arm_pred[:, mask], real_pred[:, mask], confidence)
        entry["subgroups"].append({
            "attribute": attribute, "group": group, "n": int(mask.sum()),
            "accuracy_real": float((real_pred[:, mask] == labels[mask]).mean()),
            "accuracy_arm": float((arm_pred[:, mask] == labels[mask]).mean()),
            **{k: test[k] for k in ("difference", "ci_low", "ci_high", "p_value")}})
    return entry


def compare_arms(records: list[dict], n_resamples: int = 2000, confidence: float = 0.95,
                 alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every mix against real-only per (model, test set), paired on the test images.

    The verdict is the seed-aware test (`stats.seed_image_test`: seed-to-seed and test-image variation),
    Holm-adjusted across models x test sets: the hybrid comparisons (Table IV) are one family, every other
    arm (equal size, sweep points, ...) a second. The ensemble McNemar and DeLong tests are secondary.
    `n_resamples` is kept for callers of the bootstrap era; the primary test needs no resampling.
    """
    del n_resamples
    hybrid_fraction = _hybrid_fraction(records)
    by_mix: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        by_mix[(record["model"], record["mix"])].append(record)
    comparisons = []
    for model in sorted({model for model, _ in by_mix}):
        real = by_mix.get((model, "real"))
        if not real:
            continue
        mixes = sorted((m for (name, m) in by_mix if name == model and m != "real"),
                       key=lambda m: (_arm_name(by_mix[(model, m)][0], hybrid_fraction) != "hybrid", m))
        for mix in mixes:
            for test_set in [res["test_set"] for res in real[0]["results"]]:
                comparisons.append(_compare_one(model, test_set, by_mix[(model, mix)], real, hybrid_fraction,
                                                confidence))
    for family in ([c for c in comparisons if c["primary"]], [c for c in comparisons if not c["primary"]]):
        _adjust(family, alpha)
    return comparisons


def _adjust(family: list[dict], alpha: float) -> None:
    """Holm within the family; the detectable difference at Holm's strictest level (alpha / family size)."""
    if not family:
        return
    for metric in COMPARED_METRICS:
        for comparison, p in zip(family, holm([c[metric]["p_value"] for c in family])):
            test = comparison[metric]
            test.update(p_holm=p, significant=p < alpha, alpha=alpha, family_size=len(family))
            test["detectable_difference"] = detectable_difference(test["se"] ** 2, test["df"], alpha / len(family))
            test["detect_alpha"] = alpha / len(family)
    for comparison, p in zip(family, holm([c["mcnemar"]["p_value"] for c in family])):
        comparison["mcnemar"]["p_holm"] = p


# ---------------------------------------------------------------------------------------------- tables


def _find(summaries: list[dict], model: str, test_set: str, arm: str, hybrid_fraction: float) -> dict | None:
    for s in summaries:
        if s["model"] == model and s["test_set"] == test_set and arm_of(s, hybrid_fraction) == arm:
            return s
    return None


def verdict(test: dict | None) -> str:
    """"p_Holm 0.003" when significant after Holm, else "n.s. (p_Holm 0.21)"."""
    if not test or test.get("p_holm") is None:
        return "no test"
    if test["significant"]:
        return f"p_Holm {test['p_holm']:.2g}"
    return f"n.s. (p_Holm {test['p_holm']:.2g})"


def _hybrid_cell(summary: dict | None, comparison: dict | None) -> str:
    cell = _mean_sd_cell(summary["metrics"].get("accuracy") if summary else None)
    if not comparison:
        return cell
    test = comparison["accuracy"]
    return (f"{cell}; Δ {_signed_pct(test['difference'])} [{_signed_pct(test['ci_low'])}, "
            f"{_signed_pct(test['ci_high'])}]; {verdict(test)}; {_detectable(test.get('detectable_difference'))}")


def _detectable(value: float | None) -> str:
    """"detectable ≥ 3.40" (pp); a run that could not detect even a 100-point difference says so."""
    if value is None:
        return "detectable: not estimable (the arms never disagree)"
    return f"detectable ≥ {_pct(value)}" if value < 1.0 else "detectable: nothing (≥ 100 pp; too few seeds/images)"


def table_iv(summaries: list[dict], hybrid_fraction: float, comparisons: list[dict] | None = None,
             setups: dict[str, tuple[str | None, str]] | None = None) -> str:
    """Rows = models, columns = test set x (real-only, hybrid), the paper's number beside ours only where the
    setup is the paper's; every hybrid cell carries its difference, CI, verdict and detectable difference."""
    setups = setups or {}
    models = sorted({s["model"] for s in summaries}, key=lambda m: (setups.get(m, (None,))[0] or "~", m))
    test_sets = _test_set_order(summaries)
    header = ["Model"]
    for test_set in test_sets:
        header += [f"{test_set} real-only", "paper", f"{test_set} hybrid ({hybrid_fraction:.0%} synthetic)",
                   "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        paper_name = setups.get(model, (None, ""))[0]
        cells = [model_label(model, setups)]
        for test_set in test_sets:
            paper = PAPER_TABLE_IV.get((paper_name, paper_test_set(test_set)), {}) if paper_name else {}
            comparison = next((c for c in comparisons or [] if c["model"] == model and c["test_set"] == test_set
                               and c["primary"]), None)
            real = _find(summaries, model, test_set, "real", hybrid_fraction)
            cells.append(_mean_sd_cell(real["metrics"].get("accuracy") if real else None))
            cells.append(f"{paper['real']:.2f}" if paper else "–")
            cells.append(_hybrid_cell(_find(summaries, model, test_set, "hybrid", hybrid_fraction), comparison))
            cells.append(f"{paper['hybrid']:.2f}" if paper else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading_note(comparisons: list[dict], confidence: float) -> str:
    primary = [c for c in comparisons if c["primary"]]
    if not primary:
        return "No model has both a real-only and a hybrid arm: no verdict."
    size, alpha = primary[0]["accuracy"]["family_size"], primary[0]["accuracy"]["alpha"]
    seeds = sorted({c["seeds_real"] for c in primary} | {c["seeds_arm"] for c in primary})
    seed_note = ("" if min(seeds) > 1 else " With one seed per arm the seed-to-seed spread cannot be estimated: "
                 "the interval and test cover the test images only.")
    return (f"How to read a hybrid cell: mean ± SD over seeds; Δ = hybrid − real-only in percentage points with "
            f"its {confidence:.0%} CI, which covers both seed-to-seed variation and test-set sampling; the verdict "
            f"is the seed-aware t-test (seeds and test images), Holm-adjusted over the {size} model × test-set "
            f"comparison(s): \"n.s.\" means this run cannot tell the two arms apart at alpha = {alpha:g}, whatever "
            f"the sign of Δ. \"detectable ≥ x\": the smallest true difference this run would find with 80 % "
            f"power at alpha {alpha:g}/{size} (from its observed seed spread and discordance).{seed_note}")


def paper_cells_note() -> str:
    """The paper's accuracies are not whole images over its stated test-set sizes: say so."""
    odd = []
    for (model, test_set), cells in PAPER_TABLE_IV.items():
        n = PAPER_TEST_N[test_set]
        for arm, value in cells.items():
            images = value / 100 * n
            if abs(images - round(images)) > 0.05:
                odd.append(f"{model} {test_set} {'real-only' if arm == 'real' else 'hybrid'} {value:.2f} % of "
                           f"{n} = {images:.1f} images")
    if not odd:
        return ""
    return ("Caveat on the paper's numbers: " + "; ".join(odd) + ". These are not whole-image counts over the "
            "stated test-set sizes, so the paper's cells came from other test sets, rounding or averaging than "
            "it reports; read them as approximate.")


def test_sets_note(summaries: list[dict]) -> str:
    """Ours and the paper's test sets are different images: say how many, and how balanced ours are, so the
    paper column is read as a reference point, not as a like-for-like comparison."""
    parts = []
    for test_set in _test_set_order(summaries):
        first = next(s for s in summaries if s["test_set"] == test_set)
        n, malignant = first["n_images"], first.get("n_malignant")
        share = f", {malignant / n:.0%} malignant" if malignant is not None and n else ""
        paper_n = PAPER_TEST_N.get(paper_test_set(test_set) or "")
        paper = f"paper n = {paper_n}, class balance not reported" if paper_n else "not in the paper"
        parts.append(f"{test_set}: ours n = {n}{share}; {paper}")
    return ("Test sets: " + "; ".join(parts) + ". Ours and the paper's are different images (and accuracy "
            "depends on the class balance), so the paper column is a reference point, not a like-for-like "
            "comparison; a model that is not the paper's setup gets no paper number.")


def differences_table(comparisons: list[dict], confidence: float) -> str:
    if not comparisons:
        return "No model has both a real-only and another arm: nothing to compare."
    level = f"{confidence:.0%}"
    header = ["Model", "Test set", "arm", f"Δ accuracy (pp) [{level} CI]", "verdict", "detectable (pp)",
              f"Δ balanced accuracy (pp) [{level} CI]", "verdict", "seeds (real/arm)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        cells = [f"`{c['model']}`", c["test_set"], c["arm"]]
        for metric in COMPARED_METRICS:
            d = c[metric]
            cells.append(f"{_signed_pct(d['difference'])} [{_signed_pct(d['ci_low'])}, {_signed_pct(d['ci_high'])}]")
            cells.append(verdict(d))
            if metric == "accuracy":
                cells.append(_detectable(d.get("detectable_difference")).removeprefix("detectable").strip(" :"))
        cells.append(f"{c['seeds_real']}/{c['seeds_arm']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ensembles_table(comparisons: list[dict]) -> str:
    if not comparisons:
        return "Nothing to compare."
    header = ["Model", "Test set", "arm", "ensemble accuracy real-only", "ensemble accuracy arm",
              "b/c (arm only / real-only only)", "discordance", "McNemar p", "McNemar Holm p",
              "ensemble AUROC real-only / arm", "DeLong p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        m, d = c["mcnemar"], c["delong"]
        auroc = (f"{d['auroc_b']:.3f} / {d['auroc_a']:.3f}" if d.get("auroc_a") is not None else "–")
        delong_p = f"{d['p_value']:.3g}" if d.get("p_value") is not None else "–"
        lines.append("| " + " | ".join([
            f"`{c['model']}`", c["test_set"], c["arm"], _pct(m["ensemble_accuracy_real"]),
            _pct(m["ensemble_accuracy_arm"]), f"{m['arm_only_correct']}/{m['real_only_correct']}",
            f"{100 * m['discordance']:.1f} %", f"{m['p_value']:.3g}", f"{m['p_holm']:.3g}", auroc, delong_p]) + " |")
    return "\n".join(lines)


def _signed_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


def mixes_table(summaries: list[dict]) -> str:
    header = ["Model", "Test set", "Mix", "r", "size", "real / synthetic train images", "training budget", "seeds",
              *TABLE_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = _test_set_order(summaries)
    for s in sorted(summaries, key=lambda s: (s["model"], order.index(s["test_set"]), s["size_policy"],
                                              s["synthetic_fraction"])):
        counts = s.get("training_images") or {}
        cells = [f"`{s['model']}`", s["test_set"], s["mix"], f"{s['synthetic_fraction']:.2f}", s["size_policy"],
                 f"{_count(counts.get('real_images'))} / {_count(counts.get('synthetic_images'))}",
                 _count(s.get("budget")), str(len(s["seeds"]))]
        cells += [_mean_sd_cell(s["metrics"].get(name), 1.0 if name == "ece" else 100.0) for name in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count(value) -> str:
    return "–" if value is None else str(value)


def subgroups_table(summaries: list[dict], hybrid_fraction: float, comparisons: list[dict] | None = None,
                    confidence: float = 0.95) -> str:
    rows = [(c, sub) for c in comparisons or [] if c["primary"] for sub in c.get("subgroups", [])]
    if rows:
        lines = [f"| Model | Test set | attribute | group | n | real-only acc | hybrid acc | Δ (pp) "
                 f"[{confidence:.0%} CI, seeds and images] | p (unadjusted) |", "|" + "---|" * 9]
        for c, sub in rows:
            lines.append(f"| `{c['model']}` | {c['test_set']} | {sub['attribute']} | {sub['group']} | {sub['n']} | "
                         f"{_pct(sub['accuracy_real'])} | {_pct(sub['accuracy_arm'])} | "
                         f"{_signed_pct(sub['difference'])} [{_signed_pct(sub['ci_low'])}, "
                         f"{_signed_pct(sub['ci_high'])}] | {sub['p_value']:.2g} |")
        return ("Subgroups are many small tests: read the intervals, not the p-values, and treat any single "
                "subgroup difference as a question for the next study.\n\n" + "\n".join(lines))
    return _subgroup_means_table(summaries, hybrid_fraction)


def _subgroup_means_table(summaries: list[dict], hybrid_fraction: float) -> str:
    """Records written before prediction rows carried their groups: means only, no intervals."""
    rows = []
    order = _test_set_order(summaries)
    for s in sorted(summaries, key=lambda s: (s["model"], order.index(s["test_set"]))):
        arm = arm_of(s, hybrid_fraction)
        if arm not in ("real", "hybrid"):
            continue
        for sub in s["subgroups"]:
            rows.append((s["model"], s["test_set"], sub["attribute"], sub["group"], sub["n"], arm, sub["accuracy"],
                         sub["balanced_accuracy"]))
    if not rows:
        return "No test set records sex, age or site."
    merged: dict[tuple, dict] = {}
    for model, test_set, attribute, group, n, arm, acc, bacc in rows:
        merged.setdefault((model, test_set, attribute, group, n), {})[arm] = (acc, bacc)
    lines = ["| Model | Test set | attribute | group | n | real-only acc | hybrid acc | real-only bal. acc | "
             "hybrid bal. acc |", "|" + "---|" * 9]
    for (model, test_set, attribute, group, n), arms in merged.items():
        real, hybrid = arms.get("real", (None, None)), arms.get("hybrid", (None, None))
        lines.append(f"| `{model}` | {test_set} | {attribute} | {group} | {n} | {_pct(real[0])} | "
                     f"{_pct(hybrid[0])} | {_pct(real[1])} | {_pct(hybrid[1])} |")
    return "No intervals: these records predate per-image groups.\n\n" + "\n".join(lines)


TABLE_IV_HEADING = "## Test accuracy (%), laid out like the paper's Table IV"


def table_iv_section(markdown: str) -> str:
    """The Table IV part of leaderboard.md: its heading, the table and the test-set note, up to the next heading
    ("" when the text has no such section)."""
    lines = markdown.splitlines()
    if TABLE_IV_HEADING not in lines:
        return ""
    start = lines.index(TABLE_IV_HEADING)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end]).strip() + "\n"


def budget_note(records: list[dict]) -> str:
    budgets = {json.dumps((r.get("budget") or {}).get("samples")) for r in records}
    if budgets == {"null"}:
        return "Training budget: not recorded (records from before budgets were explicit)."
    if len(budgets) == 1:
        budget = records[0]["budget"]
        return (f"Training budget: {budget.get('samples')} training samples seen per run in every arm "
                f"({budget.get('unit_note', 'the same for real-only and hybrid')}), so a hybrid gain is not "
                "just more optimizer steps.")
    return ("Training budget differs between runs (see the mixes table): a difference between arms mixes more "
            "data with more steps.")


def verdict_lines(comparisons: list[dict], setups: dict[str, tuple[str | None, str]]) -> list[str]:
    """One sentence per Table IV comparison, for the results card and the report."""
    lines = []
    for c in comparisons:
        if not c["primary"]:
            continue
        test = c["accuracy"]
        said = ("hybrid differs from real-only" if test.get("significant")
                else "not significant: this run cannot tell hybrid from real-only")
        lines.append(f"{model_label(c['model'], setups)} on {c['test_set']}: Δ accuracy "
                     f"{_signed_pct(test['difference'])} pp [{_signed_pct(test['ci_low'])}, "
                     f"{_signed_pct(test['ci_high'])}], {verdict(test)}: {said} "
                     f"({_detectable(test.get('detectable_difference'))}; seeds {c['seeds_real']}/"
                     f"{c['seeds_arm']}, n = {c['n_images']})")
    return lines


def setup_banner(summaries: list[dict], setups: dict[str, tuple[str | None, str]]) -> str:
    """A visible warning when nothing in the table is the paper's setup (a demo, phantoms, tiny models)."""
    foreign_tests = [t for t in _test_set_order(summaries) if paper_test_set(t) is None]
    parts = []
    if not any(name for name, _ in setups.values()):
        parts.append("no model here is the paper's setup (timm id, pretrained weights, 224 px)")
    if foreign_tests:
        parts.append(f"test set(s) {', '.join(foreign_tests)} are not the paper's ISIC or HAM10000")
    if not parts:
        return ""
    return ("> **Not comparable with the paper:** " + "; ".join(parts) + ". A demo or a check of the machinery, "
            "not a reproduction: read no number here as evidence about synthetic data.")


def render_markdown(summaries: list[dict], comparisons: list[dict], records: list[dict], confidence: float) -> str:
    hybrid_fraction = _hybrid_fraction(records)
    seeds = sorted({r["seed"] for r in records})
    setups = model_setups(records)
    return "\n\n".join(part for part in [
        TABLE_IV_HEADING,
        setup_banner(summaries, setups),
        f"Ours: mean ± SD over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). Paper: one run per cell.",
        table_iv(summaries, hybrid_fraction, comparisons, setups),
        reading_note(comparisons, confidence),
        test_sets_note(summaries),
        paper_cells_note(),
        budget_note(records),
        "## Every arm − real-only (percentage points)",
        "The seed-aware test (see above) for every arm against real-only; hybrid rows are Table IV's family, the "
        "other arms (equal size, sweep points, synthetic-then-real) a second Holm family. Equal size vs hybrid "
        "separates \"more data\" from \"synthetic data\"; every arm trains for the same budget.",
        differences_table(comparisons, confidence),
        "## Ensemble vs ensemble (secondary)",
        "Each arm's seeds averaged into one classifier (mean probability, threshold 0.5). Exact McNemar on the "
        "images only one ensemble gets right and paired DeLong on the ensembles' AUROC: tests about these two "
        "ensembles on these images, not about the recipes (they ignore seed-to-seed variation and reject a true "
        "null far more often than 5 %: bench/null_simulation.py). Not the verdict.",
        ensembles_table(comparisons),
        "## Every mix (%, ECE as a fraction)",
        "sens@spec80 / sens@spec90: sensitivity at the threshold that keeps specificity at least 80 % / 90 % "
        "(per run, from its test-set ROC curve).",
        mixes_table(summaries),
        "## Subgroups",
        subgroups_table(summaries, hybrid_fraction, comparisons, confidence),
    ] if part) + "\n"


# ---------------------------------------------------------------------------------------------- plot


def render_plot(summaries: list[dict], path: Path, hybrid_fraction: float,
                setups: dict[str, tuple[str | None, str]] | None = None) -> Path:
    """Accuracy and balanced accuracy (mean +- SD) vs synthetic fraction; one panel per model x test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({s["model"] for s in summaries})
    test_sets = _test_set_order(summaries)
    fig, axes = plt.subplots(len(models), len(test_sets), figsize=(4.2 * len(test_sets), 3.4 * len(models)),
                             squeeze=False, sharey=True)
    for row, model in enumerate(models):
        for col, test_set in enumerate(test_sets):
            ax = axes[row][col]
            _plot_panel(ax, [s for s in summaries if s["model"] == model and s["test_set"] == test_set])
            paper_name = (setups or {}).get(model, (None, ""))[0]  # only a paper setup sits beside the paper
            paper = PAPER_TABLE_IV.get((paper_name, paper_test_set(test_set))) if paper_name else None
            if paper:
                ax.scatter([0.0, hybrid_fraction], [paper["real"], paper["hybrid"]], marker="*", s=90,
                           color="black", zorder=5, label="paper (accuracy, 1 run)")
            ax.set_title(f"{model}\n{test_set}", fontsize=9)
            ax.set_xlabel("synthetic fraction of the training set")
            ax.set_xlim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("%")
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return atomic_save_figure(fig, path, dpi=120)


def _plot_panel(ax, summaries: list[dict]) -> None:
    # the two metrics often coincide (balanced test sets): solid vs dashed lines, filled vs hollow markers and
    # a small sideways dodge keep the first one visible under the second
    styles = {"accuracy": ("tab:blue", "accuracy", "-", "o", -0.012),
              "balanced_accuracy": ("tab:orange", "balanced accuracy", "--", "s", 0.012)}
    for metric, (colour, label, line, marker, dodge) in styles.items():
        full = sorted((s for s in summaries if s["size_policy"] == "full"), key=lambda s: s["synthetic_fraction"])
        points = [(s["synthetic_fraction"] + dodge, s["metrics"].get(metric) or {}) for s in full]
        points = [(x, m) for x, m in points if m.get("mean") is not None]
        if points:
            ax.errorbar([x for x, _ in points], [100 * m["mean"] for _, m in points],
                        yerr=[100 * (m.get("sd") or 0.0) for _, m in points], color=colour, ls=line, marker=marker,
                        ms=5, mfc=colour if line == "-" else "none", lw=2.2 if line == "-" else 1.4, capsize=3,
                        label=label)
        equal = [(s["synthetic_fraction"] + dodge, s["metrics"].get(metric) or {}) for s in summaries
                 if s["size_policy"] == "equal"]
        equal = [(x, m) for x, m in equal if m.get("mean") is not None]
        if equal:
            ax.errorbar([x for x, _ in equal], [100 * m["mean"] for _, m in equal],
                        yerr=[100 * (m.get("sd") or 0.0) for _, m in equal], color=colour,
                        marker="s", mfc="none", ls="none", capsize=3, label=f"{label}, equal size")


# ---------------------------------------------------------------------------------------------- Hub metadata


def model_index_card(model: str, mix: str, summaries: list[dict], dataset_ids: dict[str, str | None]):
    """A ModelCard holding only front matter: `model-index` with the mean over seeds of each metric."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = []
    for s in summaries:
        for metric in INDEX_METRICS:
            summary = s["metrics"].get(metric) or {}
            if summary.get("mean") is None:
                continue
            results.append(EvalResult(
                task_type="image-classification", task_name="Binary skin-lesion classification",
                dataset_type=hub_dataset_id(dataset_ids.get(s["test_set"]), s["test_set"]),
                dataset_name=s["test_set"], dataset_split="test", metric_type=hub_metric_id(metric),
                metric_name=f"{metric} (mean of {summary['n']} seed(s)"
                            + (f", SD {summary['sd']:.4f})" if summary.get("sd") is not None else ")"),
                metric_value=round(summary["mean"], 6)))
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", model_name=f"{model}__{mix}",
                         eval_results=results or None)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n")


def write_hub_metadata(output_dir: Path, summaries: list[dict], records: list[dict]) -> list[Path]:
    """model-index.md and .eval_results/*.yaml for every (model, mix)."""
    import yaml

    dataset_ids = {}
    for record in records:
        for result in record["results"]:
            dataset_ids.setdefault(result["test_set"], result.get("dataset_id"))
    written = []
    for model, mix in sorted({(s["model"], s["mix"]) for s in summaries}):
        group = [s for s in summaries if s["model"] == model and s["mix"] == mix]
        folder = output_dir / "classifiers" / f"{slug(model)}__{mix}"
        card = model_index_card(model, mix, group, dataset_ids)
        written.append(atomic_write_text(folder / "model-index.md", str(card)))
        for s in group:
            for metric in ("accuracy", "balanced_accuracy"):
                summary = s["metrics"].get(metric) or {}
                if summary.get("mean") is None:
                    continue
                sd = f" ± {summary['sd']:.4f}" if summary.get("sd") is not None else ""
                entries = eval_results_entries(  # one scale with model-index: fractions (hub.eval_results)
                    hub_dataset_id(dataset_ids.get(s["test_set"]), s["test_set"]), metric, summary["mean"],
                    f"{metric} (fraction) on {s['test_set']} (test, n={s['n_images']}), mean{sd} over {summary['n']} "
                    f"seed(s); mix {mix} ({s['synthetic_fraction']:.0%} synthetic, {s['size_policy']} size)")
                path = folder / ".eval_results" / f"{slug(s['test_set'])}_{hub_metric_id(metric)}.yaml"
                written.append(atomic_write_text(path, yaml.safe_dump(entries, sort_keys=False)))
    return written


# ---------------------------------------------------------------------------------------------- entry point


def render_leaderboard(results_dir: str | Path, output_dir: str | Path | None = None,
                       bootstrap_resamples: int | None = None, confidence: float | None = None) -> Path:
    """Write the leaderboard folder from a benchmark results folder; returns the folder."""
    from dermt2im_hub.hub.cards import render_card

    results_dir = Path(results_dir)
    records = read_records(results_dir)
    if not records:
        raise FileNotFoundError(f"{results_dir}/records has no run records yet: run `dermt2im benchmark` first")
    # `dermt2im benchmark` sets other sweeps aside; records copied in by hand are refused
    sweeps = {r.get("sweep_sha256") for r in records}
    synthetic = {r.get("synthetic_sha256") for r in records if (r.get("synthetic_fraction") or 0) > 0}
    if len(sweeps) > 1 or len(synthetic) > 1:
        raise ConfigError(f"{results_dir}/records mixes runs of different settings or data (their sweep_sha256 "
                          "or synthetic_sha256 differ); means over seeds would mix them. Keep one sweep per folder.")
    config = records[0].get("config") or {}
    if bootstrap_resamples is None:
        bootstrap_resamples = config.get("bootstrap_resamples", 2000)
    n_resamples = bootstrap_resamples
    level = confidence if confidence is not None else config.get("confidence", 0.95)
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence must be within (0, 1), e.g. 0.95; got {level}")
    if n_resamples < 1:
        raise ConfigError(f"bootstrap_resamples must be at least 1, got {n_resamples}")
    output_dir = Path(output_dir) if output_dir else results_dir / "leaderboard"
    stage = (try_read_manifest(output_dir) or {}).get("stage")
    if stage and stage != "leaderboard":
        raise ConfigError(f"{output_dir} holds the output of stage {stage!r}; choose an empty folder or an earlier "
                          "leaderboard output")
    settings = {"results_dir": str(results_dir), "bootstrap_resamples": n_resamples, "confidence": level}
    with StageRun(output_dir, "leaderboard", settings, inputs={"results": results_dir}) as run:
        summaries = aggregate(records)
        comparisons = compare_arms(records, n_resamples, level)
        markdown = render_markdown(summaries, comparisons, records, level)
        atomic_write_text(output_dir / "leaderboard.md", "# Derm-T2IM classifier benchmark\n\n" + markdown)
        atomic_write_json(output_dir / "leaderboard.json", {"summaries": summaries, "comparisons": comparisons,
                                                             "paper_table_iv": _paper_rows()})
        render_plot(summaries, output_dir / PLOT_NAME, _hybrid_fraction(records), model_setups(records))
        metadata = write_hub_metadata(output_dir, summaries, records)
        run.outputs = {"table": "leaderboard.md", "json": "leaderboard.json", "plot": PLOT_NAME,
                       "hub_metadata_files": len(metadata), "records": len(records)}
        run.extra["card"] = {
            "table_markdown": markdown, "plot": PLOT_NAME, "paper_table": PAPER_TABLE_MARKDOWN,
            "runs": len(records), "models": sorted({r["model"] for r in records}),
            "test_sets": _test_set_order(summaries),
            "license": config.get("license"),
            "verdicts": verdict_lines(comparisons, model_setups(records)),
            "budget": budget_note(records),
        }
    render_card(output_dir)
    return output_dir


def _paper_rows() -> list[dict[str, Any]]:
    return [{"model": model, "test_set": test_set, "real_only": cells["real"], "hybrid": cells["hybrid"]}
            for (model, test_set), cells in PAPER_TABLE_IV.items()]


def iter_model_index(output_dir: str | Path) -> Iterable[Path]:
    return sorted(Path(output_dir).glob("classifiers/*/model-index.md"))
