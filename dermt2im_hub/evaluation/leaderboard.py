"""`dermt2im leaderboard RESULTS_DIR`: the paper's Table IV from the benchmark's run records, made honest.

From `RESULTS_DIR/records/*.json` it writes (default `RESULTS_DIR/leaderboard/`, stage "leaderboard"):

    leaderboard.md            Table IV layout (mean +- SD over seeds, the paper's number beside each cell),
                              hybrid - real differences with bootstrap 95% CIs (over seeds and images), exact McNemar p-values
                              (Holm-adjusted across models x test sets), every mix, and subgroups
    leaderboard.json          the same numbers, machine-readable
    synthetic_fraction.png    accuracy and balanced accuracy vs synthetic fraction, per model and test set
    classifiers/<model>__<mix>/model-index.md    front matter with `model-index` (mean over seeds) to merge
                                                  into that classifier's card
    classifiers/<model>__<mix>/.eval_results/<test set>_<metric>.yaml   the Hub's newer eval-results format
    manifest.json, README.md  (the results card)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dermt2im_hub.config import ConfigError
from dermt2im_hub.evaluation.benchmark import COUNT_KEYS, read_records, slug
from dermt2im_hub.evaluation.stats import (
    discordant_pairs,
    holm,
    mcnemar_exact,
    mean_sd,
    paired_bootstrap_difference,
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
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "ece")
INDEX_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity")
COMPARED_METRICS = ("accuracy", "balanced_accuracy")
PLOT_NAME = "synthetic_fraction.png"


def paper_model(model_name: str) -> str | None:
    """The paper's name for a timm model, when it is one of the two the paper trained."""
    name = model_name.lower()
    if "vit_base_patch16" in name or "vit-base-patch16" in name:
        return "ViT-B/16"
    if "mobilenetv2" in name:
        return "MobileNetV2"
    return None


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
        summaries.append({"model": model, "mix": mix, "test_set": test_set, "test_set_index": order[test_set],
                          "synthetic_fraction": first["synthetic_fraction"], "size_policy": first["size_policy"],
                          "seeds": sorted(rec["seed"] for rec, _ in members), "n_images": members[0][1]["n"],
                          "n_malignant": members[0][1]["metrics"].get("n_malignant"),
                          "training_images": _training_counts([rec for rec, _ in members]),
                          "metrics": metrics, "subgroups": _subgroup_means(members)})
    return summaries


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


def compare_arms(records: list[dict], n_resamples: int = 2000, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Hybrid vs real-only per (model, test set): two-level bootstrap CIs (seeds and images) of the differences, exact McNemar on
    the seed-ensembled predictions, Holm across the whole family of comparisons."""
    hybrid_fraction = _hybrid_fraction(records)
    by_arm: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        arm = arm_of(record, hybrid_fraction)
        if arm in ("real", "hybrid"):
            by_arm[(record["model"], arm)].append(record)
    comparisons = []
    for model in sorted({model for model, _ in by_arm}):
        real, hybrid = by_arm.get((model, "real")), by_arm.get((model, "hybrid"))
        if not real or not hybrid:
            continue
        for test_set in [res["test_set"] for res in real[0]["results"]]:
            real_ids, labels, real_pred, real_prob = _prediction_matrix(real, test_set)
            hybrid_ids, hybrid_labels, hybrid_pred, hybrid_prob = _prediction_matrix(hybrid, test_set)
            # pairing is per image: the same ids, not merely the same label vector
            if real_ids != hybrid_ids or not np.array_equal(labels, hybrid_labels):
                raise ValueError(f"{model}: real-only and hybrid runs were tested on different {test_set} images")
            entry = {"model": model, "test_set": test_set, "n_images": int(labels.size),
                     "seeds_real": len(real), "seeds_hybrid": len(hybrid), "hybrid_fraction": hybrid_fraction}
            for index, metric in enumerate(COMPARED_METRICS):
                entry[metric] = paired_bootstrap_difference(metric, labels, hybrid_pred, real_pred, n_resamples,
                                                            confidence, seed=index)
            # McNemar needs one prediction per image and arm: the seeds' mean probability, thresholded
            ensemble_hybrid = (hybrid_prob.mean(axis=0) >= 0.5).astype(int)
            ensemble_real = (real_prob.mean(axis=0) >= 0.5).astype(int)
            only_hybrid, only_real = discordant_pairs(labels, ensemble_hybrid, ensemble_real)
            entry["mcnemar"] = {"hybrid_only_correct": only_hybrid, "real_only_correct": only_real,
                                "p_value": mcnemar_exact(only_hybrid, only_real)}
            comparisons.append(entry)
    adjusted = holm([c["mcnemar"]["p_value"] for c in comparisons])
    for comparison, p in zip(comparisons, adjusted):
        comparison["mcnemar"]["p_holm"] = p
    return comparisons


# ---------------------------------------------------------------------------------------------- tables


def _find(summaries: list[dict], model: str, test_set: str, arm: str, hybrid_fraction: float) -> dict | None:
    for s in summaries:
        if s["model"] == model and s["test_set"] == test_set and arm_of(s, hybrid_fraction) == arm:
            return s
    return None


def table_iv(summaries: list[dict], hybrid_fraction: float) -> str:
    """Rows = models, columns = test set x (real-only, hybrid), each with the paper's number beside ours."""
    models = sorted({s["model"] for s in summaries}, key=lambda m: (paper_model(m) or "~", m))
    test_sets = _test_set_order(summaries)
    header = ["Model"]
    for test_set in test_sets:
        header += [f"{test_set} real-only", "paper", f"{test_set} hybrid ({hybrid_fraction:.0%} synthetic)",
                   "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        label = f"{paper_model(model)} (`{model}`)" if paper_model(model) else f"`{model}`"
        cells = [label]
        for test_set in test_sets:
            paper = PAPER_TABLE_IV.get((paper_model(model), paper_test_set(test_set)), {})
            for arm in ("real", "hybrid"):
                summary = _find(summaries, model, test_set, arm, hybrid_fraction)
                cells.append(_mean_sd_cell(summary["metrics"].get("accuracy") if summary else None))
                cells.append(f"{paper[arm]:.2f}" if arm in paper else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
            "depends on the class balance), so compare the direction of the hybrid − real-only change, not "
            "the numbers cell by cell.")


def differences_table(comparisons: list[dict], confidence: float) -> str:
    if not comparisons:
        return "No model has both a real-only and a hybrid arm: nothing to compare."
    level = f"{confidence:.0%}"
    lines = [f"| Model | Test set | Δ accuracy (pp) [{level} CI] | Δ balanced accuracy (pp) [{level} CI] | "
             "McNemar b/c | McNemar p | Holm p | seeds (real/hybrid) |", "|" + "---|" * 8]
    for c in comparisons:
        cells = [f"`{c['model']}`", c["test_set"]]
        for metric in COMPARED_METRICS:
            d = c[metric]
            interval = f"[{_signed_pct(d['ci_low'])}, {_signed_pct(d['ci_high'])}]"
            cells.append(f"{_signed_pct(d['difference'])} {interval}")
        m = c["mcnemar"]
        cells += [f"{m['hybrid_only_correct']}/{m['real_only_correct']}", f"{m['p_value']:.3g}",
                  f"{m['p_holm']:.3g}", f"{c['seeds_real']}/{c['seeds_hybrid']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


def mixes_table(summaries: list[dict]) -> str:
    header = ["Model", "Test set", "Mix", "r", "size", "real / synthetic train images", "seeds", *TABLE_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = _test_set_order(summaries)
    for s in sorted(summaries, key=lambda s: (s["model"], order.index(s["test_set"]), s["size_policy"],
                                              s["synthetic_fraction"])):
        counts = s.get("training_images") or {}
        cells = [f"`{s['model']}`", s["test_set"], s["mix"], f"{s['synthetic_fraction']:.2f}", s["size_policy"],
                 f"{_count(counts.get('real_images'))} / {_count(counts.get('synthetic_images'))}",
                 str(len(s["seeds"]))]
        cells += [_mean_sd_cell(s["metrics"].get(name), 1.0 if name == "ece" else 100.0) for name in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count(value) -> str:
    return "–" if value is None else str(value)


def subgroups_table(summaries: list[dict], hybrid_fraction: float) -> str:
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
    return "\n".join(lines)


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


def render_markdown(summaries: list[dict], comparisons: list[dict], records: list[dict], confidence: float) -> str:
    hybrid_fraction = _hybrid_fraction(records)
    seeds = sorted({r["seed"] for r in records})
    return "\n\n".join([
        TABLE_IV_HEADING,
        f"Ours: mean ± SD over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). Paper: one run per cell.",
        table_iv(summaries, hybrid_fraction),
        test_sets_note(summaries),
        "## Hybrid − real-only (percentage points)",
        f"Two-level bootstrap over seeds and test images ({confidence:.0%} percentile CI; the same images for "
        "both arms, each arm's seeds drawn with replacement and averaged). "
        "McNemar: exact binomial test on the images only one arm classifies correctly (b = hybrid only, "
        "c = real-only only), using each arm's seed-averaged probability; Holm-adjusted across models x "
        "test sets.",
        differences_table(comparisons, confidence),
        "## Every mix (%, ECE as a fraction)",
        mixes_table(summaries),
        "## Subgroups (mean over seeds, %)",
        subgroups_table(summaries, hybrid_fraction),
    ]) + "\n"


# ---------------------------------------------------------------------------------------------- plot


def render_plot(summaries: list[dict], path: Path, hybrid_fraction: float) -> Path:
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
            paper = PAPER_TABLE_IV.get((paper_model(model), paper_test_set(test_set)))
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
        render_plot(summaries, output_dir / PLOT_NAME, _hybrid_fraction(records))
        metadata = write_hub_metadata(output_dir, summaries, records)
        run.outputs = {"table": "leaderboard.md", "json": "leaderboard.json", "plot": PLOT_NAME,
                       "hub_metadata_files": len(metadata), "records": len(records)}
        run.extra["card"] = {
            "table_markdown": markdown, "plot": PLOT_NAME, "paper_table": PAPER_TABLE_MARKDOWN,
            "runs": len(records), "models": sorted({r["model"] for r in records}),
            "test_sets": _test_set_order(summaries),
            "license": config.get("license"),
        }
    render_card(output_dir)
    return output_dir


def _paper_rows() -> list[dict[str, Any]]:
    return [{"model": model, "test_set": test_set, "real_only": cells["real"], "hybrid": cells["hybrid"]}
            for (model, test_set), cells in PAPER_TABLE_IV.items()]


def iter_model_index(output_dir: str | Path) -> Iterable[Path]:
    return sorted(Path(output_dir).glob("classifiers/*/model-index.md"))
