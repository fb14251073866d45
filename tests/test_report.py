"""The run report (report.md / report.html) built from a fixture run folder: hostile strings stay text, the top
says what world the run is, and it renders as a person reads it (captions, plain values, one self-contained file).

The fixture writes the manifests and files the stages write, with hostile values where a user or a third party
controls them (prompts, file names, tiny-base notes, leaderboard names, config values, the output path itself),
so these tests take well under a second each instead of a demo run."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from dermt2im_hub.manifest import write_manifest
from dermt2im_hub.pipeline.report import REPORT_HTML, REPORT_MD, run_nature, write_report
from dermt2im_hub.pipeline.report_doc import md_escape
from dermt2im_hub.pipeline.runner import RunSummary, StageOutcome
from dermt2im_hub.pipeline.stages import RunLayout

# issue 20's recipe, plus a Markdown link / remote image / bare URL / raw ESC / table pipe / emphasis and entity
HOSTILE = ("a dermoscopic image of a benign skin lesion](x.png) <script>alert(document.domain)</script> "
           "<img src=x onerror=alert(1)> ![y](javascript:alert(2)) [click](javascript:alert(3)) "
           "![x](http://evil.example/x.png) http://evil.example/a www.evil.example \x1b[31m red | cell *em* _u_ "
           "&lt;b&gt; `tick` <a href=\"javascript:alert(4)\">a</a>")
HOSTILE_FILE = "01-<img src=x onerror=alert(5)>](javascript:alert(6)) \"q' ~~s~~.png--real-<b>1.png"
ITA_METHOD = "ITA = atan2(L* - 50, b*) in degrees from median L*, b* of non-lesion skin (CIELAB, D65)"


def _png(path: Path, colour=(200, 120, 90), size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _fingerprint(path: Path | str) -> dict:
    return {"path": str(path), "kind": "stage_output", "sha256": "0" * 64}


def make_run(root: Path, images: str = "phantoms", base: str = "tiny-random") -> RunLayout:
    """A finished run's folders, as the stages write them. images: phantoms | isic; base: tiny-random |
    tiny-pretrained | a Hub id."""
    layout = RunLayout(root)
    source_folder = root / "inputs" / "phantoms" if images == "phantoms" else root / "isic-images"
    if images == "phantoms":
        write_manifest(source_folder, "phantoms", config={"num_images": 4})
    else:
        source_folder.mkdir(parents=True)
    data = layout.data("phantoms" if images == "phantoms" else "isic")
    write_manifest(data, "preprocess", config={"source": "folder" if images == "phantoms" else "isic",
                                               "prompt_template": HOSTILE},
                   input_fingerprints={"images": _fingerprint(source_folder)})
    row = {"file_name": "benign/x.png", "source": "phantom" if images == "phantoms" else "isic", "prompt": HOSTILE}
    (data / "metadata.jsonl").write_text(json.dumps(row) + "\n")

    base_path = str(layout.tiny_base) if base.startswith("tiny") else base
    if base.startswith("tiny"):
        info = {"what": "random-weight Stable Diffusion 1.5-shaped pipeline made by dermt2im make-tiny-base "
                        + HOSTILE, "unet_parameters": 792964, "note": HOSTILE}
        if base == "tiny-pretrained":
            info = {"what": "tiny SD1.5-shaped pipeline pretrained on phantom images " + HOSTILE, "pretrained": True,
                    "world": "phantoms + a tiny base trained on them", "weights_sha256": {"unet/x": "0" * 64}}
        layout.tiny_base.mkdir(parents=True)
        (layout.tiny_base / "dermt2im_tiny_base.json").write_text(json.dumps(info))

    samples = [f"samples/final/00-{HOSTILE_FILE}", "samples/final/01-malignant-seed0.png"]
    for name in samples:
        _png(layout.lora / name)
    _png(layout.lora / "loss_curve.png", (255, 255, 255), (64, 48))
    card = {"steps": 60, "final_loss": 0.364562, "training_seconds": 1.345, "base_model": base_path,
            "sample_images": [{"path": samples[0], "prompt": HOSTILE},
                              {"path": samples[1], "prompt": "a dermoscopic image of a malignant skin lesion"},
                              {"path": "../../../../../../etc/passwd", "prompt": "outside the run"}]}
    write_manifest(layout.lora, "train_lora", extra={"card": card},
                   input_fingerprints={"base_model": _fingerprint(base_path), "train_data": _fingerprint(data)})

    _png(layout.generated / "contact_sheet.png", (90, 90, 90), (40, 20))
    write_manifest(layout.generated, "generate", outputs={"num_images": 4, "contact_sheet": "contact_sheet.png",
                                                         "per_sampler": {"Euler a": 2, HOSTILE: 2}},
                   extra={"base_model": {"id": base_path}})

    _png(layout.qa / "ita_histogram.png")
    _png(layout.qa / "closest_pairs" / HOSTILE_FILE, (10, 200, 10), (32, 16))
    qa_card = {"qa": {"num_images": 4, "passed": 4, "rejected": 0, "reasons": {}, "note": HOSTILE,
                      "feature_extractor": "resnet18 [random init, seed 0] @64px",
                      "fidelity": {"overall": {"fid": 1.08, "kid": 0.0054}}},
               "memorization": {"audited": True, "flagged": 0, "flagged_published": None, "methods": []},
               "skin_tone": {"method": ITA_METHOD, "synthetic_median_ita": 44.75}}
    write_manifest(layout.qa, "qa", config={"features": {"model": "resnet18", "weights": None}},
                   extra={"card": qa_card})

    write_manifest(layout.results, "benchmark", config={"pretrained": False, "models": [HOSTILE]})
    _png(layout.leaderboard / "synthetic_fraction.png", (250, 250, 250), (48, 32))
    (layout.leaderboard / "leaderboard.md").write_text(
        "# Derm-T2IM classifier benchmark\n\n## Every mix (%, ECE as a fraction)\n\n"
        f"| Model | Test set | Mix | accuracy |\n|---|---|---|---|\n| `{HOSTILE}` | {HOSTILE} | real | 55.00 ± 7.07 |\n"
        f"\n{HOSTILE}\n")
    write_manifest(layout.leaderboard, "leaderboard")
    return layout


def render(layout: RunLayout) -> tuple[str, str]:
    outcomes = [StageOutcome("train_lora", layout.lora, "ran", 9.4),
                StageOutcome("generate", layout.generated, "up to date"), StageOutcome("qa", layout.qa, "ran", 5.1)]
    run = SimpleNamespace(real_sources=[SimpleNamespace(name=p.name) for p in sorted((layout.root / "data").iterdir())]
                          if (layout.root / "data").is_dir() else [])
    write_report(layout, run, RunSummary(layout.root, outcomes))
    return (layout.root / REPORT_MD).read_text(encoding="utf-8"), (layout.root / REPORT_HTML).read_text(encoding="utf-8")


class Page(HTMLParser):
    """What a browser would act on: tags, attributes, link targets, and the text a reader sees."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.inner: dict[str, list[str]] = {"td": [], "figcaption": [], "em": []}  # each element's text
        self.feed(text)

    cells = property(lambda self: self.inner["td"])
    captions = property(lambda self: self.inner["figcaption"])

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)
            if tag in self.inner:
                self.inner[tag].append("")

    def handle_endtag(self, tag):
        if tag in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag):]

    def handle_data(self, data):
        self.text.append(data)
        for tag, texts in self.inner.items():
            if tag in self.stack and texts:
                texts[-1] += data

    def targets(self, tag: str, name: str) -> list[str]:
        return [value for t, n, value in self.attributes if (t, n) == (tag, name)]


def assert_nothing_executable(page: Page, root: Path, allow_data_images: bool) -> None:
    """No script, no event handler, no javascript:/remote URL; every link or image is a file of this run."""
    assert "script" not in page.tags and "iframe" not in page.tags and "object" not in page.tags
    assert not [a for a in page.attributes if a[1].lower().startswith("on")], "event-handler attribute from data"
    urls = [(t, n) for t, n, _ in page.attributes if n in ("href", "src", "srcset", "action", "formaction", "poster")]
    assert set(urls) <= {("a", "href"), ("img", "src")}, urls
    for tag, name in (("a", "href"), ("img", "src")):
        for value in page.targets(tag, name):
            if allow_data_images and tag == "img" and value.startswith("data:image/png;base64,"):
                continue
            assert not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", value) and not value.startswith("//"), value
            assert (root / unquote(value)).resolve().is_relative_to(root.resolve()), value
            assert (root / unquote(value)).exists(), value  # x.png, y or a remote image would not be


def markdown_renderings(md: str) -> list[str]:
    """report.md as two Markdown engines render it (raw HTML allowed, as GitHub's renderer sees it first)."""
    import markdown

    pages = [markdown.markdown(md, extensions=["tables"])]
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return pages
    return pages + [MarkdownIt("commonmark", {"html": True}).enable("table").render(md)]


@pytest.fixture()
def hostile_run(tmp_path):
    # the output folder's own name is hostile too (it is printed in the report)
    return make_run(tmp_path / "out <script>alert(7)</script>")


# ------------------------------------------------------------------------------------------ 20.1 stored XSS


def test_hostile_strings_stay_text_in_report_html(hostile_run):
    _, html = render(hostile_run)
    page = Page(html)
    assert_nothing_executable(page, hostile_run.root, allow_data_images=True)
    text = "".join(page.text)
    assert "<script>alert(document.domain)</script>" in text  # shown as text, not dropped
    assert "<img src=x onerror=alert(1)>" in text
    assert "\x1b" not in html
    # the validation image outside the run folder is not read into the report
    assert "outside the run" not in text


def test_hostile_strings_make_no_link_or_image_in_report_md(hostile_run):
    md, _ = render(hostile_run)
    assert "\x1b" not in md
    for rendered in markdown_renderings(md):
        page = Page(rendered)
        assert_nothing_executable(page, hostile_run.root, allow_data_images=False)
        assert "<script>alert(document.domain)</script>" in "".join(page.text)
        # `*em*`, `_u_` and `L*` stay literal: the only emphasis is a figure's whole caption
        assert set(page.inner["em"]) <= set(page.targets("img", "alt")), page.inner["em"]
        assert "*em* _u_" in "".join(page.text) and "L* - 50, b*" in "".join(page.text)
        # every image is one the report placed (validation, contact sheet, plots, pairs), none from a prompt
        images = [unquote(src) for src in page.targets("img", "src")]
        assert images and all(Path(src).suffix == ".png" and (hostile_run.root / src).is_file() for src in images)
        assert not [src for src in images if src.endswith("x.png")]


def test_md_escape_leaves_plain_text_plain():
    assert md_escape("| qa | up to date (earlier run: 7.4 s) |") == r"\| qa \| up to date (earlier run: 7.4 s) \|"
    assert md_escape("per_class / benign / kid_std") == "per_class / benign / kid_std"
    assert md_escape("1.2 s") == "1.2 s" and md_escape("1. x") == r"1\. x" and md_escape("- x") == r"\- x"


# ------------------------------------------------------------------------------------------ 19.3 the run's nature


def _top(md: str, html: str) -> tuple[str, str]:
    """The part above the first section: what a reader sees before any number."""
    top_html = html.split("</style>")[1].split("<h2>")[0].replace("</th><td>", ": ").replace("</tr>", "\n")
    return md.split("## Stages")[0], "".join(Page(top_html).text)


@pytest.mark.parametrize("images, base, world, words", [
    ("phantoms", "tiny-random", "demo", ["Demo run:", "phantom images", "random-weight tiny base",
                                         "base model pretrained: no (random weights)",
                                         "classifiers pretrained: no (random init)"]),
    ("isic", "tiny-pretrained", "tiny base", ["Tiny-base run:", "pretrained tiny base", "real: isic",
                                              "base model pretrained: yes", "phantoms + a tiny base trained on them"]),
    ("phantoms", "tiny-pretrained", "demo", ["Demo run:", "phantom images", "pretrained tiny base",
                                             "base model pretrained: yes"]),
    ("isic", "runwayml/stable-diffusion-v1-5", "real data",
     ["Real-data run:", "runwayml/stable-diffusion-v1-5", "base model pretrained: not recorded"]),
])
def test_report_top_says_what_world_the_run_is(tmp_path, images, base, world, words):
    layout = make_run(tmp_path / "out", images, base)
    assert run_nature(layout, SimpleNamespace(real_sources=[])).world == world
    md, html = render(layout)
    top_md, top_html = _top(md, html)
    flat_md = re.sub(r"\\(.)", r"\1", top_md).replace("> - ", "").replace("**", "")
    flat_html = re.sub(r"\s+", " ", top_html)
    for word in words:
        assert word in flat_md, word
        assert word in flat_html, word


def test_report_of_a_folder_without_manifests_says_not_recorded(tmp_path):
    md, html = render(RunLayout(tmp_path))
    top_md, top_html = _top(md, html)
    assert "What this run is was not recorded" in top_md and "What this run is was not recorded" in top_html
    assert top_md.count("not recorded") >= 5


# ------------------------------------------------------------------------------------------ 19.9 rendering


def test_formula_asterisks_and_python_values_read_as_text(hostile_run):
    md, html = render(hostile_run)
    page = Page(html)
    assert ITA_METHOD in "".join(page.text) and "em" not in page.tags
    for rendered in markdown_renderings(md):
        assert "L* - 50, b*" in "".join(Page(rendered).text)
    cells = {cell.strip() for cell in page.cells}
    assert not cells & {"{}", "[]", "True", "False", "None"}, cells & {"{}", "[]", "True", "False", "None"}
    assert {"yes", "none", "not recorded"} <= cells  # audited, reasons / methods, flagged_published


def test_validation_images_have_their_prompt_as_caption(hostile_run):
    _, html = render(hostile_run)
    captions = [re.sub(r"\s+", " ", c).strip() for c in Page(html).captions]
    assert re.sub(r"\s+", " ", HOSTILE.replace("\x1b", " ")) in captions
    assert "a dermoscopic image of a malignant skin lesion" in captions
    assert any(c.startswith("Contact sheet") for c in captions)


def test_report_html_is_one_self_contained_file(hostile_run):
    _, html = render(hostile_run)
    page = Page(html)
    sources = page.targets("img", "src")
    assert len(sources) >= 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert (hostile_run.generated / "contact_sheet.png").read_bytes() in inlined
    assert (hostile_run.lora / "loss_curve.png").read_bytes() in inlined
    assert not [t for t in page.tags if t in ("link", "script", "iframe")]  # no stylesheet or script from elsewhere
    assert ("meta", "http-equiv", "Content-Security-Policy") in page.attributes


def test_wide_tables_scroll_inside_the_page(hostile_run):
    """The mixes table has 13 columns: every table sits in a scrolling box, so none spills over the page."""
    _, html = render(hostile_run)
    assert re.search(r"\.table-wrap\s*\{[^}]*overflow-x:\s*auto", html)
    assert html.count("<table><thead>") == html.count('<div class="table-wrap"><table><thead>') > 0


def test_accuracy_stays_visible_under_an_equal_balanced_accuracy():
    """Balanced test sets give accuracy == balanced accuracy: the first-drawn line must still show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dermt2im_hub.evaluation.leaderboard import _plot_panel

    metrics = {"mean": 0.55, "sd": 0.07}
    summaries = [{"size_policy": "full", "synthetic_fraction": r,
                  "metrics": {"accuracy": metrics, "balanced_accuracy": metrics}} for r in (0.0, 0.5, 0.75)]
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    _plot_panel(ax, summaries)
    ax.set_xlim(-0.05, 1.05)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    plt.close(fig)

    def count(rgb):
        return int((np.abs(pixels - np.array(rgb)).sum(axis=2) < 60).sum())

    blue, orange = count((31, 119, 180)), count((255, 127, 14))  # tab:blue (accuracy), tab:orange
    assert orange > 0 and blue > 0.5 * orange, (blue, orange)


def test_contact_sheet_labels_are_readable_and_keep_their_spaces(tmp_path):
    from dermt2im_hub.generation.outputs import write_contact_sheet

    rows = []
    for label in ("benign", "malignant"):
        for sampler in ("Euler a", "PLMS"):
            name = f"{label}/{sampler.replace(' ', '_')}.png"
            _png(tmp_path / name, (0, 200, 0), (32, 32))
            rows.append({"label": label, "sampler": sampler, "file_name": name})
    sheet = np.asarray(Image.open(write_contact_sheet(tmp_path, rows, per_cell=4, thumb=64)).convert("RGB")).astype(int)
    tiles = (sheet == (0, 200, 0)).all(axis=2)
    top, left = int(np.argmax(tiles.any(axis=1))), int(np.argmax(tiles.any(axis=0)))
    band = sheet[:top, left:left + 128].sum(axis=2) < 3 * 128  # the header over the first ("Euler a") column
    rows_with_ink = np.flatnonzero(band.any(axis=1))
    assert rows_with_ink.size and rows_with_ink[-1] - rows_with_ink[0] + 1 >= 14  # cap height + descender, px
    ink = np.flatnonzero(band.any(axis=0))
    gaps = np.diff(ink) - 1  # blank columns between inked ones: letter spacing, and the space of "Euler a"
    assert gaps.max() >= 5, gaps.max()  # the bitmap font left 3 px: "Eulera"
