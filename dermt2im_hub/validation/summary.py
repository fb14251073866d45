"""The validation report as markdown tables (summary.md) and as card facts, with the paper's numbers beside ours."""

from __future__ import annotations

from typing import Any

PAPER_FIDELITY = ("72 % (YOLOv8 trained on real ISIC images, 200 synthetic images; no interval reported; "
                  "arXiv 2401.05159)")


def percent(summary: Any) -> str:
    """An accuracy summary (stats.accuracy_summary) as "93.8 % (90/96; 95 % Wilson CI 87.0-97.1)"; "n/a" when it is
    missing or malformed (the run report reads report.json back from disk)."""
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), (int, float))
                                                for k in ("accuracy", "ci_low", "ci_high")):
        return "n/a"
    return (f"{100 * summary['accuracy']:.1f} % ({summary.get('correct')}/{summary.get('n')}; 95 % Wilson CI "
            f"{100 * summary['ci_low']:.1f}-{100 * summary['ci_high']:.1f})")


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fidelity_lines(f: dict[str, Any]) -> list[str]:
    lines = ["## Label fidelity (real-only classifier vs the prompt's label)", "",
             f"- classifier: `{f['classifier']}` (input {f['data_config'].get('input_size')}, "
             f"mean {f['data_config'].get('mean')}, std {f['data_config'].get('std')})",
             f"- accuracy: **{percent(f['overall'])}**; the paper: {PAPER_FIDELITY}"]
    holdout = f.get("reference_holdout")
    if holdout:
        lines.append(f"- the classifier on held-out real images: accuracy {holdout['accuracy']:.3f}, balanced "
                     f"accuracy {holdout['balanced_accuracy']:.3f} (n = {holdout['n']})")
    if f.get("unlabelled"):
        lines.append(f"- {f['unlabelled']} image(s) had no label in their prompt or folder and are not counted")
    lines += ["", "| group | accuracy |", "|---|---|"]
    lines += [f"| class {name} | {percent(s)} |" for name, s in f["per_class"].items()]
    lines += [f"| sampler {name} | {percent(s)} |" for name, s in f["per_sampler"].items()]
    matrix = f["confusion_matrix"]
    lines += ["", "Confusion matrix (rows: intended label, columns: predicted):", "",
              "| intended \\ predicted | " + " | ".join(matrix["classes"]) + " |",
              "|---|" + "---|" * len(matrix["classes"])]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
              for name, row in zip(matrix["classes"], matrix["counts"])]
    if f.get("contact_sheet"):
        lines += ["", f"Least-faithful images: `{f['contact_sheet']}`."]
    return lines


def _segmentation_lines(s: dict[str, Any]) -> list[str]:
    lines = ["## Zero-shot segmentation (SAM, prompted by the lesion prior)", "",
             f"- model: `{s['model']}`; lesion mask found in {s['found']}/{s['n']} images",
             f"- medians over found masks: area {_number(s['median_area'])}, compactness "
             f"{_number(s['median_compactness'])}, border irregularity {_number(s['median_border_irregularity'])}, "
             f"SAM IoU score {_number(s['median_iou_score'])}, stability {_number(s['median_stability'])}",
             f"- the paper: {s['paper']}"]
    calibration = s.get("calibration")
    if calibration:
        sam, prior = calibration["sam"], calibration["prior_only"]
        lines.append(f"- calibration on {sam['n']} real images with ground-truth masks: SAM Dice "
                     f"{_number(sam['mean_dice'])}, IoU {_number(sam['mean_iou'])}; the prior alone Dice "
                     f"{_number(prior['mean_dice'])}, IoU {_number(prior['mean_iou'])}")
    return lines


def _detection_lines(d: dict[str, Any]) -> list[str]:
    return ["## Detection (transformers detector fine-tuned on real images)", "",
            f"- model: `{d['model']}`, fine-tuned on {d['train_images']} real images; score threshold "
            f"{d['score_threshold']}",
            f"- detection rate: {percent(d['detection_rate'])}",
            f"- class accuracy of detected lesions: {percent(d['class_accuracy_detected'])}",
            f"- detected and correctly classified: {percent(d['detected_and_correct'])}; the paper: "
            f"{PAPER_FIDELITY}"]


def summary_markdown(report: dict[str, Any]) -> str:
    source = report["input"]
    lines = ["# Validation of synthetic images", "",
             f"Input: {source['num_images']} images ({source['kind']}); labels from {source['label_sources']}.", ""]
    for key, render in (("fidelity", _fidelity_lines), ("segmentation", _segmentation_lines),
                        ("detection", _detection_lines)):
        if key in report:
            lines += render(report[key]) + [""]
    return "\n".join(lines)


def card_facts(report: dict[str, Any]) -> dict[str, Any]:
    """Short strings for the generic stage card (manifest extra.card)."""
    facts: dict[str, Any] = {"input_kind": report["input"]["kind"], "num_images": report["input"]["num_images"]}
    if "fidelity" in report:
        f = report["fidelity"]
        facts.update(label_fidelity_classifier=f["classifier"], label_fidelity=percent(f["overall"]),
                     label_fidelity_paper=PAPER_FIDELITY)
        facts.update({f"label_fidelity_{name}": percent(s) for name, s in f["per_class"].items()})
    if "segmentation" in report:
        s = report["segmentation"]
        facts["segmentation"] = f"{s['model']}: lesion found in {s['found']}/{s['n']}"
        if s.get("calibration"):
            facts["segmentation_calibration_dice"] = s["calibration"]["sam"]["mean_dice"]
    if "detection" in report:
        d = report["detection"]
        facts.update(detection_model=d["model"], detection_rate=percent(d["detection_rate"]),
                     detection_class_accuracy=percent(d["class_accuracy_detected"]))
    return facts
