"""The run report: OUT/report.md and OUT/report.html, built from the stage folders' own files and manifests.

It opens with what the run is (demo on phantoms, a tiny base on real images, or real data; whether the base
model is pretrained), read from the manifests, so no number below is mistaken for a result about skin lesions.
Then what a researcher looks at first: the contact sheet per class x sampler, the LoRA loss curve and captioned
validation images, the QA / privacy summary, the leaderboard tables and plot, and a link to every Hub-ready
folder. Sections are built as blocks from data (`report_doc`), and each format escapes every string itself:
prompts, file names and config values are untrusted. report.html is one self-contained file (images inlined);
each image links to its full-size file beside it. A file outside the output folder or missing is left out.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.pipeline.report_doc import (
    Block,
    Callout,
    Code,
    Figure,
    Gallery,
    Heading,
    Inlines,
    Link,
    Para,
    Strong,
    Table,
    link_target,
    to_html,
    to_markdown,
)
from dermt2im_hub.utils.files import atomic_write_text

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TITLE = "Derm-T2IM run report"
TINY_BASE_INFO = "dermt2im_tiny_base.json"  # written by `dermt2im make-tiny-base` into the base folder
NOT_RECORDED = "not recorded"

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1200px; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #8a4b2a; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; color: #5b3019; }
.table-wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .88rem; }
th, td { border: 1px solid #d8d2cc; padding: .3rem .5rem; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f4eee9; }
figure { margin: .6rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #444; max-width: 60rem; overflow-wrap: anywhere; }
.gallery { display: flex; flex-wrap: wrap; gap: 1rem; }
.gallery figure { width: 200px; }
.gallery img { width: 200px; image-rendering: pixelated; }
.gallery.pairs figure, .gallery.pairs img { width: 400px; image-rendering: auto; }
code { background: #f4f4f4; padding: 0 .2rem; overflow-wrap: break-word; }
.note { color: #666; font-size: .9rem; }
.callout { border-left: 6px solid #b26b00; background: #fff6e5; padding: .6rem 1rem; margin: 1rem 0; }
.callout.real { border-color: #2e7d32; background: #eef7ee; }
.callout .headline { font-size: 1.05rem; margin: .2rem 0 .5rem; }
.callout table { margin: .3rem 0; background: #fff; }
"""


# ---------------------------------------------------------------------------------------------- reading


def _manifest(folder: Path | None) -> dict[str, Any]:
    """A folder's manifest.json as a dict ({} when missing, unreadable or not a JSON object)."""
    if folder is None:
        return {}
    try:
        data = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _card(folder: Path) -> dict:
    return _dict(_dict(_manifest(folder).get("extra")).get("card"))


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _value(value: Any) -> str:
    """A value as a person reads it: yes/no, none, not recorded, 4 significant digits (never `{}` or `True`)."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) or "none"
    return str(value)[:300]


def _caption(prompt: Any) -> str:
    return str(prompt)[:1000] if prompt else "prompt not recorded"


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


def _inside(path: Path, root: Path) -> Path | None:
    """`path` resolved, when it is a file inside `root` (a manifest could name ../../anything, or a link)."""
    try:
        resolved = path.resolve()
        resolved.relative_to(root.resolve())
    except (OSError, ValueError):
        return None
    return resolved if resolved.is_file() else None


def _figure(path: Path, root: Path, caption: str) -> Figure | None:
    resolved = _inside(path, root)
    return Figure(resolved, caption, link_target(resolved, root)) if resolved else None


def _relative_to(path: Path, root: Path) -> str:
    """`path` relative to `root` when inside it (the report names its own folder's contents that way)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (OSError, ValueError):
        return str(path)


def _folder_link(folder: Path, root: Path) -> Inlines:
    """A link to a stage folder inside the run; a folder elsewhere is named, not linked."""
    try:
        rel = folder.resolve().relative_to(root.resolve()).as_posix() or "."
    except (OSError, ValueError):
        return Code(str(folder))
    return Link(rel, link_target(folder, root))


# ---------------------------------------------------------------------------------------------- what the run is


@dataclass
class RunNature:
    """What world a run lives in, as its manifests record it (None / "not recorded" where they do not)."""

    world: str  # "demo" | "tiny base" | "real data" | "not recorded"
    images: list[tuple[str, str]] = field(default_factory=list)  # (name, "phantoms" | "real: SOURCE")
    base_model: str | None = None
    tiny_base: dict | None = None  # dermt2im_tiny_base.json of the base folder, when it is one
    base_pretrained: bool | None = None
    classifiers_pretrained: bool | None = None
    feature_extractor: str | None = None


def _data_folders(layout, run) -> list[Path]:
    names = [getattr(source, "name", None) for source in getattr(run, "real_sources", None) or []]
    if names:
        return [layout.data(name) for name in names if isinstance(name, str)]
    data = layout.root / "data"
    return sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []


def _first_row_source(folder: Path) -> str | None:
    try:
        with open(folder / "metadata.jsonl", encoding="utf-8") as handle:
            row = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    return row.get("source") if isinstance(row, dict) else None


def _image_kind(folder: Path) -> str | None:
    """"phantoms" when the data stage read images `make-phantoms` wrote, "real: SOURCE" otherwise."""
    manifest = _manifest(folder)
    if manifest.get("stage") != "preprocess":
        return None
    images = _dict(_dict(manifest.get("inputs")).get("images")).get("path")
    origin = _manifest(Path(images)) if isinstance(images, str) else {}
    if origin.get("stage") == "phantoms" or _first_row_source(folder) == "phantom":
        return "phantoms"
    return f"real: {_value(_dict(manifest.get('config')).get('source'))}"


def _base_model(layout) -> str | None:
    lora_base = _dict(_dict(_manifest(layout.lora).get("inputs")).get("base_model")).get("path")
    generation_base = _dict(_dict(_manifest(layout.generated).get("extra")).get("base_model")).get("id")
    for candidate in (lora_base, generation_base, _card(layout.lora).get("base_model")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def _tiny_base_info(base: str | None) -> dict | None:
    if not base or not (Path(base) / TINY_BASE_INFO).is_file():
        return None
    return _load_json(Path(base) / TINY_BASE_INFO)


def _tiny_base_pretrained(info: dict) -> bool | None:
    """The tiny base's own record: a `pretrained` flag, else the `what` line of a random-weight base."""
    if isinstance(info.get("pretrained"), bool):
        return info["pretrained"]
    return False if "random-weight" in str(info.get("what", "")) else None


def run_nature(layout, run) -> RunNature:
    images = [(folder.name, kind) for folder in _data_folders(layout, run) if (kind := _image_kind(folder))]
    base = _base_model(layout)
    tiny = _tiny_base_info(base)
    if base and Path(base).is_absolute():
        base = _relative_to(Path(base), layout.root)
    pretrained = _tiny_base_pretrained(tiny) if tiny is not None else None
    kinds = {kind.split(":")[0] for _, kind in images}
    if kinds == {"phantoms"}:
        world = "demo"
    elif kinds == {"real"} and tiny is not None:
        world = "tiny base"
    elif kinds == {"real"} and base is not None:
        world = "real data"
    else:
        world = NOT_RECORDED
    benchmark = _dict(_manifest(layout.results).get("config")).get("pretrained")
    qa = _dict(_manifest(layout.qa).get("extra")).get("card")
    return RunNature(world, images, base, tiny, pretrained,
                     benchmark if isinstance(benchmark, bool) else None,
                     _dict(_dict(qa).get("qa")).get("feature_extractor"))


def _pretrained_words(flag: bool | None, no: str) -> str:
    return NOT_RECORDED if flag is None else ("yes" if flag else no)


def _headline(nature: RunNature) -> list:
    tiny = None if nature.tiny_base is None else {
        True: "a pretrained tiny base", False: "a random-weight tiny base", None: "a tiny base"}[nature.base_pretrained]
    if nature.world == "demo":
        return [Strong("Demo run:"), f" phantom images (procedural drawings, not real lesions)"
                f"{' and ' + tiny if tiny else ''}. The images, FID, memorization audit and accuracies below "
                "exercise the code; they say nothing about skin lesions or about the method."]
    if nature.world == "tiny base":
        return [Strong("Tiny-base run:"), f" real images, but the generator is {tiny}, far smaller than Stable "
                "Diffusion 1.5: the synthetic images and everything measured on them are not the paper's."]
    if nature.world == "real data":
        return [Strong("Real-data run:"), " real images and the base model below."]
    return [Strong("What this run is was not recorded:"), " no manifest here says which images and base model "
            "it used, so read every number below with care."]


def _nature_block(nature: RunNature) -> Callout:
    images = "; ".join(f"data/{name}: {'phantoms drawn by the run' if kind == 'phantoms' else kind}"
                       for name, kind in nature.images) or NOT_RECORDED
    if nature.tiny_base is not None:
        info = nature.tiny_base
        base: Inlines = [Code(nature.base_model),
                         f" — tiny base: {_value(info.get('what'))}"
                         + (f"; UNet parameters: {info['unet_parameters']:,}"
                            if isinstance(info.get("unet_parameters"), int) else "")
                         + "".join(f"; {_value(info[key])}" for key in ("world", "note") if info.get(key))]
    else:
        base = Code(nature.base_model) if nature.base_model else NOT_RECORDED
    rows: list[tuple[str, Inlines]] = [
        ("world", nature.world),
        ("images (training and test)", images),
        ("base model", base),
        ("base model pretrained", _pretrained_words(nature.base_pretrained, "no (random weights)")),
        ("classifiers pretrained", _pretrained_words(nature.classifiers_pretrained, "no (random init)")),
        ("FID / audit feature extractor", _value(nature.feature_extractor)),
    ]
    css = "callout real" if nature.world == "real data" else "callout"
    return Callout(_headline(nature), rows, css)


# ---------------------------------------------------------------------------------------------- sections


def _recorded_seconds(folder: Path) -> float | None:
    """The time a stage's earlier run took, as its manifest records it (`extra.elapsed_seconds`, else
    `ended_at - started_at`); None when the manifest records neither."""
    manifest = _manifest(folder)
    elapsed = _dict(manifest.get("extra")).get("elapsed_seconds")
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


def _stage_section(summary) -> list[Block]:
    rows = [[outcome.name, outcome.status, _stage_time(outcome, summary.output),
             _folder_link(outcome.folder, summary.output)] for outcome in summary.outcomes]
    return [Heading(2, "Stages"), Table(["stage", "status", "time", "folder"], rows)]


def _generation_section(layout, root: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Generated images")]
    manifest = _manifest(layout.generated)
    if not manifest:
        return blocks + [Para("Not run yet.")]
    rows = []
    for key, value in _dict(manifest.get("outputs")).items():
        target = _inside(layout.generated / value, root) if isinstance(value, str) and value else None
        rows.append([str(key), Link(value, link_target(target, root)) if target else _value(value)])
    if rows:
        blocks.append(Table(["what", "value"], rows))
    sheet = _figure(layout.generated / "contact_sheet.png", root,
                    "Contact sheet: one row per class, one column per sampler")
    return blocks + [sheet or Para("No contact sheet was written.")]


def _lora_section(layout, root: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "LoRA fine-tuning")]
    if not _manifest(layout.lora):
        return blocks + [Para("Not run yet.")]
    card = _card(layout.lora)
    seconds = card.get("training_seconds")
    blocks.append(Para(f"Steps: {_value(card.get('steps'))}, final loss: {_value(card.get('final_loss'))}, "
                       f"training time: {_value(seconds)}{' s' if isinstance(seconds, (int, float)) else ''}."))
    curve = _figure(layout.lora / "loss_curve.png", root, "LoRA training loss")
    if curve:
        blocks.append(curve)
    samples = [s for s in card.get("sample_images") or [] if isinstance(s, dict) and isinstance(s.get("path"), str)]
    figures = [f for s in samples if (f := _figure(layout.lora / s["path"], root, _caption(s.get("prompt"))))]
    if figures:
        blocks += [Para("Validation images (fixed seeds, one per class prompt; each caption is its prompt):"),
                   Gallery(figures)]
    return blocks


def _pair_caption(stem: str) -> str:
    synthetic, _, real = stem.partition("--")
    synthetic = re.sub(r"^\d+-", "", synthetic)
    return f"synthetic {synthetic} (left) / training {real} (right)" if real else stem


def _qa_section(layout, root: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Quality and privacy")]
    if not _manifest(layout.qa):
        return blocks + [Para("Not run yet.")]
    card = _card(layout.qa)
    qa = dict(_dict(card.get("qa")))
    # FID / KID / precision-recall ride in the qa card dict but are not the artifact filter's: their own heading,
    # with the feature extractor whose space they are measured in
    fidelity = qa.pop("fidelity", None)
    if isinstance(fidelity, dict) and fidelity and qa.get("feature_extractor") is not None:
        fidelity = {"feature_extractor": qa.pop("feature_extractor"), **fidelity}
    for title, facts in (("Artifact filter", qa), ("Fidelity (FID, KID, precision / recall)", fidelity),
                         ("Memorization audit", card.get("memorization")), ("Skin tone (ITA)", card.get("skin_tone"))):
        if isinstance(facts, dict) and facts:
            blocks += [Heading(3, title),
                       Table(["measure", "value"], [[name, _value(value)] for name, value in _flatten(facts)])]
    plot = _figure(layout.qa / "ita_histogram.png", root, "ITA histogram, real vs synthetic")
    if plot:
        blocks.append(plot)
    pairs_dir = layout.qa / "closest_pairs"
    pairs = sorted(pairs_dir.glob("*.png"))[:4] if pairs_dir.is_dir() else []
    figures = [f for p in pairs if (f := _figure(p, root, _pair_caption(p.stem)))]
    if figures:
        blocks += [Para("Closest synthetic / training pairs (left synthetic, right real):"), Gallery(figures, "pairs")]
    return blocks


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def _code_spans(text: str) -> list:
    """`x` spans as Code, the rest as text (the only inline markup leaderboard.md uses)."""
    parts = re.split(r"(`[^`]+`)", text)
    return [Code(p[1:-1]) if p.startswith("`") and p.endswith("`") and len(p) > 1 else p for p in parts if p]


def markdown_tables_to_blocks(text: str, heading_level: int = 3) -> list[Block]:
    """The leaderboard's Markdown (headings, paragraphs, pipe tables) as report blocks, so its cells are escaped
    like every other string rather than passed to a Markdown renderer (model and test-set names are config)."""
    blocks: list[Block] = []
    table: Table | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = _split_row(stripped)
            if table is None:
                table = Table([_code_spans(c) for c in cells], [])
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                table.rows.append([_code_spans(c) for c in cells])
            continue
        if table is not None:
            blocks.append(table)
            table = None
        heading = re.match(r"(#+)\s+(.*)", stripped)
        if heading:
            blocks.append(Heading(min(6, heading_level + len(heading.group(1)) - 2), heading.group(2)))
        elif stripped:
            blocks.append(Para(_code_spans(stripped)))
    return blocks + ([table] if table is not None else [])


def _leaderboard_section(layout, root: Path) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Classifier benchmark")]
    table = layout.leaderboard / "leaderboard.md"
    if _inside(table, root) is None:
        return blocks + [Para("Not run yet.")]
    body = table.read_text(encoding="utf-8", errors="replace").splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]  # the leaderboard's own title; this section has one
    blocks += markdown_tables_to_blocks("\n".join(body))
    plot = _figure(layout.leaderboard / "synthetic_fraction.png", root,
                   "Accuracy (solid) and balanced accuracy (dashed) vs synthetic fraction, mean ± SD over seeds")
    return blocks + ([plot] if plot else [])


def _validation_section(layout, root: Path) -> list[Block]:
    """Label fidelity (and the other validate checks' headlines) when the run has a validate stage."""
    from dermt2im_hub.validation.summary import percent
    if not _manifest(layout.validation):
        return []
    report = _load_json(layout.validation / "report.json")
    blocks: list[Block] = [Heading(2, "Validation of the synthetic images")]
    fidelity = _dict(report.get("fidelity"))
    if fidelity:
        spec = fidelity.get("classifier")
        recorded = _inside(Path(spec) / "manifest.json", root) if isinstance(spec, str) and spec else None
        classifier = _manifest(recorded.parent if recorded else None)
        judged_by = _value(_dict(classifier.get("extra")).get("what") or fidelity.get("classifier"))
        blocks += [Heading(3, "Label fidelity"),
                   Para(f"Share of kept synthetic images that a classifier trained on real images only labels with "
                        f"their prompt's class (the paper: 72 %). Classifier: {judged_by}."),
                   Table(["images", "label fidelity"],
                         [["all", percent(fidelity.get("overall"))]]
                         + [[f"class {name}", percent(value)]
                            for name, value in _dict(fidelity.get("per_class")).items()]
                         + [[f"sampler {name}", percent(value)]
                            for name, value in _dict(fidelity.get("per_sampler")).items()])]
        sheet = _figure(layout.validation / "least_faithful.png", root,
                        "The least faithful images: intended -> predicted label, P(intended)")
        if sheet:
            blocks.append(sheet)
    summary = layout.validation / "summary.md"
    blocks.append(Para(["All numbers: ", Link("summary.md", link_target(summary, root))
                        if _inside(summary, root) else "summary.md (missing)", "."]))
    return blocks


def _folders_section(layout, run, root: Path) -> list[Block]:
    from dermt2im_hub.pipeline.stages import stage_folders

    rows = []
    for folder in stage_folders(layout, run):
        card = (Link("README.md", link_target(folder / "README.md", root))
                if _inside(folder / "README.md", root) else "none")
        rows.append([_folder_link(folder, root), _value(_manifest(folder).get("stage", "?")), card])
    return [Heading(2, "Hub-ready folders"),
            Para(["Each holds its ", Code("manifest.json"), " and a card (", Code("README.md"),
                  "); publish one with ", Code("dermt2im push FOLDER --repo-id ORG/NAME"), " (private unless ",
                  Code("--public"), ")."]),
            Table(["folder", "stage", "card"], rows)]


def report_blocks(layout, run, summary) -> list[Block]:
    root = layout.root
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [Heading(1, TITLE), _nature_block(run_nature(layout, run)),
                           Para(["Output folder ", Code(str(root)), f", written {now}. Images are inlined in "
                                 "report.html; each links to its full-size file in this folder."])]
    blocks += _stage_section(summary)
    blocks += _generation_section(layout, root)
    blocks += _lora_section(layout, root)
    blocks += _qa_section(layout, root)
    blocks += _leaderboard_section(layout, root)
    blocks += _validation_section(layout, root)
    blocks += _folders_section(layout, run, root)
    return blocks + [Para("Research use only: not a medical device; no diagnosis or patient-facing use.", "note")]


def write_report(layout, run, summary) -> Path:
    blocks = report_blocks(layout, run, summary)
    atomic_write_text(layout.root / REPORT_MD, to_markdown(blocks))
    atomic_write_text(layout.root / REPORT_HTML, to_html(blocks, TITLE, _CSS))
    return layout.root / REPORT_HTML
