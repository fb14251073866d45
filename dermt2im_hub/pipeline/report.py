"""The run report: OUT/report.md and OUT/report.html, built from the stage folders' own files and manifests.

It shows what a researcher looks at first: the contact sheet per class x sampler, the LoRA loss curve and
validation images, the QA / privacy summary, the leaderboard table and plot, and a link to every Hub-ready
folder. Image links are relative to OUT, so the HTML opens from disk (or a copied folder) without a server;
a link to a file that does not exist is left out rather than drawn broken.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from dermt2im_hub.manifest import try_read_manifest
from dermt2im_hub.utils.files import atomic_write_text

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #8a4b2a; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; color: #5b3019; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #d8d2cc; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4eee9; }
img { max-width: 100%; border: 1px solid #ddd; margin: .3rem 0; image-rendering: auto; }
.gallery img { width: 160px; margin-right: .4rem; image-rendering: pixelated; }
code { background: #f4f4f4; padding: 0 .2rem; }
.note { color: #666; font-size: .9rem; }
"""


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _image(path: Path, root: Path, alt: str) -> str | None:
    return f"![{alt}]({_rel(path, root)})" if path.is_file() else None


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _flatten(facts: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary dicts as `a / b / c` rows (thresholds are config, shown in the stage's own card)."""
    rows = []
    for key, value in facts.items():
        if key in ("thresholds", "histogram"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, name + " / ")
        else:
            rows.append((name, value))
    return rows


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_short(v) for v in value) or "none"
    return str(value)[:200]


def _recorded_seconds(folder: Path) -> float | None:
    """The time a stage's earlier run took, as its manifest records it (`extra.elapsed_seconds`, else
    `ended_at - started_at`); None when the manifest records neither."""
    manifest = try_read_manifest(folder) or {}
    elapsed = (manifest.get("extra") or {}).get("elapsed_seconds")
    if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool):
        return float(elapsed)
    try:
        started = _dt.datetime.fromisoformat(manifest["started_at"])
        ended = _dt.datetime.fromisoformat(manifest["ended_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (ended - started).total_seconds()


def _stage_time(outcome, root: Path) -> str:
    """Seconds for a stage that ran now; a stage skipped because it was up to date did no work this run, so it
    says so (with the earlier run's time when its manifest has it) rather than a misleading 0.0."""
    if outcome.status == "ran":
        return f"{outcome.seconds:.1f} s"
    if outcome.status == "up to date":
        earlier = _recorded_seconds(outcome.folder) if outcome.folder != root else None
        if earlier is None:
            return "up to date"
        return f"up to date (earlier run: {earlier:.1f} s)" if earlier >= 0.05 else "up to date (earlier run: < 0.1 s)"
    return "not run"


def _stage_table(summary) -> list[str]:
    lines = ["| stage | status | time | folder |", "|---|---|---|---|"]
    for outcome in summary.outcomes:
        folder = _rel(outcome.folder, summary.output) if outcome.folder != summary.output else "."
        lines.append(f"| {outcome.name} | {outcome.status} | {_stage_time(outcome, summary.output)} "
                     f"| [{folder}]({folder}) |")
    return lines


def _lora_section(layout, root: Path) -> list[str]:
    lines = ["## LoRA fine-tuning", ""]
    manifest = try_read_manifest(layout.lora)
    if not manifest:
        return lines + ["Not run yet.", ""]
    card = (manifest.get("extra") or {}).get("card") or {}
    lines.append(f"Steps: {card.get('steps', 'not recorded')}, final loss: {card.get('final_loss', 'not recorded')}, "
                 f"training time: {card.get('training_seconds', 'not recorded')} s.")
    lines.append("")
    curve = _image(layout.lora / "loss_curve.png", root, "LoRA loss curve")
    if curve:
        lines += [curve, ""]
    samples = [s for s in card.get("sample_images") or [] if (layout.lora / s.get("path", "")).is_file()]
    if samples:
        lines += ["Validation images (fixed seeds, one per class prompt):", "", '<div class="gallery" markdown="1">', ""]
        lines += [_image(layout.lora / s["path"], root, s.get("prompt", "sample")) for s in samples]
        lines += ["", "</div>", ""]
    return lines


def _generation_section(layout, root: Path) -> list[str]:
    lines = ["## Generated images", ""]
    manifest = try_read_manifest(layout.generated)
    if not manifest:
        return lines + ["Not run yet.", ""]
    outputs = manifest.get("outputs") or {}
    counts = {k: v for k, v in outputs.items() if isinstance(v, (int, float, str)) and not str(k).endswith("path")}
    if counts:
        lines += ["| what | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()] + [""]
    sheet = _image(layout.generated / "contact_sheet.png", root, "contact sheet (class x sampler)")
    lines += ["Contact sheet (rows: class x sampler):", "", sheet or "No contact sheet was written.", ""]
    return lines


def _qa_section(layout, root: Path) -> list[str]:
    lines = ["## Quality and privacy", ""]
    manifest = try_read_manifest(layout.qa)
    if not manifest:
        return lines + ["Not run yet.", ""]
    card = (manifest.get("extra") or {}).get("card") or {}
    qa = dict(card.get("qa") or {}) if isinstance(card.get("qa"), dict) else {}
    # FID / KID / precision-recall ride in the qa card dict but are not the artifact filter's: their own heading,
    # with the feature extractor whose space they are measured in
    fidelity = qa.pop("fidelity", None)
    if isinstance(fidelity, dict) and fidelity and qa.get("feature_extractor") is not None:
        fidelity = {"feature_extractor": qa.pop("feature_extractor"), **fidelity}
    for title, facts in (("Artifact filter", qa), ("Fidelity (FID, KID, precision / recall)", fidelity),
                         ("Memorization audit", card.get("memorization")), ("Skin tone (ITA)", card.get("skin_tone"))):
        if not isinstance(facts, dict) or not facts:
            continue
        lines += [f"### {title}", "", "| measure | value |", "|---|---|"]
        for name, value in _flatten(facts):
            lines.append(f"| {html.escape(name)} | {html.escape(_short(value))} |")
        lines.append("")
    plot = _image(layout.qa / "ita_histogram.png", root, "ITA histogram, real vs synthetic")
    if plot:
        lines += [plot, ""]
    pairs = sorted((layout.qa / "closest_pairs").glob("*.png"))[:4] if (layout.qa / "closest_pairs").is_dir() else []
    if pairs:
        lines += ["Closest synthetic / training pairs (left synthetic, right real):", ""]
        lines += [_image(p, root, p.stem) for p in pairs] + [""]
    return lines


def _leaderboard_section(layout, root: Path) -> list[str]:
    lines = ["## Classifier benchmark", ""]
    table = layout.leaderboard / "leaderboard.md"
    if not table.is_file():
        return lines + ["Not run yet.", ""]
    body = table.read_text(encoding="utf-8").splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]
    # demote the leaderboard's own headings below this section
    lines += [("##" + line) if line.startswith("#") else line for line in body] + [""]
    plot = _image(layout.leaderboard / "synthetic_fraction.png", root, "accuracy vs synthetic fraction")
    if plot:
        lines += [plot, ""]
    return lines


def _folders_section(layout, run, root: Path) -> list[str]:
    from dermt2im_hub.pipeline.stages import stage_folders

    lines = ["## Hub-ready folders", "", "Each holds its `manifest.json` and a card (`README.md`); publish one with "
             "`dermt2im push FOLDER --repo-id ORG/NAME` (private unless `--public`).", "",
             "| folder | stage | card |", "|---|---|---|"]
    for folder in stage_folders(layout, run):
        manifest = try_read_manifest(folder) or {}
        rel = _rel(folder, root)
        card = f"[README.md]({rel}/README.md)" if (folder / "README.md").is_file() else "none"
        lines.append(f"| [{rel}]({rel}) | {manifest.get('stage', '?')} | {card} |")
    return lines + [""]


def report_markdown(layout, run, summary) -> str:
    root = layout.root
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Derm-T2IM run report", "", f"Output folder `{root}`, written {now}.", ""]
    lines += ["## Stages", ""] + _stage_table(summary) + [""]
    lines += _generation_section(layout, root)
    lines += _lora_section(layout, root)
    lines += _qa_section(layout, root)
    lines += _leaderboard_section(layout, root)
    lines += _folders_section(layout, run, root)
    lines += ['<p class="note">Research use only: not a medical device; no diagnosis or patient-facing use.</p>', ""]
    return "\n".join(line for line in lines if line is not None)


def markdown_to_html(text: str, title: str) -> str:
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "md_in_html"])
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(layout, run, summary) -> Path:
    text = report_markdown(layout, run, summary)
    atomic_write_text(layout.root / REPORT_MD, text)
    atomic_write_text(layout.root / REPORT_HTML, markdown_to_html(text, "Derm-T2IM run report"))
    return layout.root / REPORT_HTML
