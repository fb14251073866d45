"""End to end: `dermt2im run` on the demo recipe (shrunk), skip logic, report; `dermt2im demo` wiring."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dermt2im_hub.config import ConfigError
from dermt2im_hub.pipeline.demo import demo_recipe
from dermt2im_hub.pipeline.runner import run_pipeline

# the demo recipe, smaller still: every stage runs, each on a handful of images
SHRINK = [
    "run.real_sources.0.num_images=32",
    "training.max_train_steps=8", "training.checkpointing_steps=4", "training.validation_inference_steps=2",
    "generation.num_images=12", "generation.steps=2-3",
    "evaluation.models=[mobilenetv2_050, vit_tiny_patch16_224]", "evaluation.seeds=[0]", "evaluation.epochs=1",
    "evaluation.bootstrap_resamples=50",
]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if (tag, name) in (("img", "src"), ("a", "href")) and value and not re.match(r"^[a-z]+:", value):
                self.links.append(value)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    first = run_pipeline(demo_recipe(), SHRINK, out)
    return out, first


@pytest.mark.slow
def test_run_writes_every_stage_and_a_report(demo_run):
    out, summary = demo_run
    expected = {"inputs:phantoms", "inputs:tiny-base", "preprocess:phantoms", "train_lora", "generate", "qa",
                "dataset:synthetic", "dataset:real", "benchmark", "leaderboard", "inputs:phantom-judge", "validate",
                "cards"}
    assert expected <= set(summary.ran)
    for folder in ("data/phantoms", "lora", "generated", "qa", "datasets/synthetic", "datasets/real",
                   "benchmark/results", "leaderboard", "validation"):
        manifest = json.loads((out / folder / "manifest.json").read_text())
        assert manifest["status"] == "complete", folder
        assert (out / folder / "README.md").is_file(), folder
    # the leaderboard has a row for every model x mix x test set
    board = json.loads((out / "leaderboard" / "leaderboard.json").read_text())
    cells = {(s["model"], s["mix"], s["test_set"]) for s in board["summaries"]}
    models = {"mobilenetv2_050", "vit_tiny_patch16_224"}
    assert {(m, t) for m, _, t in cells} == {(m, "phantom-test") for m in models}
    assert len({mix for _, mix, _ in cells}) == 2
    # the report shows images that exist (no broken links)
    html = (out / "report.html").read_text()
    parser = _Links()
    parser.feed(html)
    images = [link for link in parser.links if link.endswith(".png")]
    assert any("contact_sheet" in i for i in images) and any("loss_curve" in i for i in images)
    assert any("synthetic_fraction" in i for i in images)
    # label fidelity of the kept images, judged by the phantom judge (a timm folder the validate stage loads)
    validation = json.loads((out / "validation" / "report.json").read_text())
    assert validation["fidelity"]["overall"]["n"] > 0
    assert validation["fidelity"]["classifier"] == str(out / "inputs" / "phantom-judge")
    assert "Label fidelity" in html and "judge of the tiny world" in html
    for link in parser.links:
        assert (out / link).exists(), link


@pytest.mark.slow
def test_second_run_does_no_work_and_a_changed_generation_config_reruns_only_what_follows(demo_run):
    out, _ = demo_run
    lora_weights = (out / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    again = run_pipeline(demo_recipe(), SHRINK, out)
    assert again.ran == ["cards"]  # cards are re-rendered from manifests every time (cheap, idempotent)
    report = (out / "report.md").read_text()
    assert "| train_lora | up to date | up to date (earlier run: " in report and "| 0.0 |" not in report
    changed = run_pipeline(demo_recipe(), SHRINK + ["generation.cfg=5.0"], out)
    assert {"generate", "qa", "dataset:synthetic", "benchmark", "leaderboard"} <= set(changed.ran)
    assert not {"preprocess:phantoms", "train_lora", "dataset:real", "inputs:tiny-base"} & set(changed.ran)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == lora_weights
    rows = [json.loads(line) for line in (out / "generated" / "metadata.jsonl").read_text().splitlines()]
    assert rows and all(row["cfg_scale"] == 5.0 for row in rows)
    assert (out / "generated.previous" / "manifest.json").is_file()  # the old output is kept aside, not lost


def test_report_says_up_to_date_and_gives_fidelity_its_own_heading(tmp_path):
    """A re-run's up-to-date stages say so (with the earlier run's time from their manifest), not 0.0 s; FID / KID /
    precision-recall sit under their own heading, not under the artifact filter, in report.md and report.html."""
    from types import SimpleNamespace

    from dermt2im_hub.manifest import write_manifest
    from dermt2im_hub.pipeline.report import REPORT_HTML, REPORT_MD, write_report
    from dermt2im_hub.pipeline.runner import RunSummary, StageOutcome
    from dermt2im_hub.pipeline.stages import RunLayout

    layout = RunLayout(tmp_path)
    fidelity = {"overall": {"fid": 1.06, "kid": 0.0052, "precision": 0.5, "recall": 0.25},
                "per_class": {"benign": {"fid": 1.19, "kid": 0.0057, "precision": 0.4, "recall": 0.3}}}
    card = {"qa": {"num_images": 96, "passed": 90, "rejected": 6, "pass_rate": 0.9375, "reasons": {"blur": 6},
                   "feature_extractor": "resnet18 @64px", "fidelity": fidelity},
            "memorization": {"audited": True, "flagged": 0}}
    write_manifest(layout.qa, "qa", extra={"elapsed_seconds": 7.447, "card": card})
    write_manifest(layout.lora, "train_lora", started_at="2026-01-01T10:00:00+00:00",
                   ended_at="2026-01-01T10:00:05+00:00")
    write_manifest(layout.generated, "generate")  # an earlier run whose time is not recorded
    write_manifest(layout.leaderboard, "leaderboard", extra={"elapsed_seconds": 0.04})
    summary = RunSummary(tmp_path, outcomes=[
        StageOutcome("train_lora", layout.lora, "up to date"), StageOutcome("generate", layout.generated, "up to date"),
        StageOutcome("qa", layout.qa, "up to date"), StageOutcome("leaderboard", layout.leaderboard, "up to date"),
        StageOutcome("cards", tmp_path, "ran", 0.31)])
    write_report(layout, SimpleNamespace(real_sources=[]), summary)
    md = (tmp_path / REPORT_MD).read_text()
    assert "| qa | up to date | up to date (earlier run: 7.4 s) |" in md
    assert "| train_lora | up to date | up to date (earlier run: 5.0 s) |" in md
    assert "| generate | up to date | up to date |" in md and "| cards | ran | 0.3 s |" in md
    assert "| leaderboard | up to date | up to date (earlier run: < 0.1 s) |" in md
    assert "0.0" not in md.split("## Generated images")[0]
    for text, heading in ((md, "### {}"), ((tmp_path / REPORT_HTML).read_text(), "<h3>{}")):
        artifact = text.index(heading.format("Artifact filter"))
        fidelity_at = text.index(heading.format("Fidelity"))
        memorization = text.index(heading.format("Memorization audit"))
        assert artifact < fidelity_at < memorization
        assert "blur" in text[artifact:fidelity_at]
        assert not any(word in text[artifact:fidelity_at] for word in ("fid", "kid", "precision", "recall"))
        assert all(f"{row}" in text[fidelity_at:memorization]
                   for row in ("overall / fid", "overall / kid", "per_class / benign / precision", "resnet18"))


def test_from_needs_finished_earlier_stages(tmp_path):
    with pytest.raises(ConfigError, match="run that stage first"):
        run_pipeline(demo_recipe(), SHRINK, tmp_path, from_stage="generate")


def test_unknown_section_and_stage_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generaton: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'generaton'"):
        run_pipeline(bad, output=tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown stage 'train'"):
        run_pipeline(demo_recipe(), output=tmp_path / "out", until_stage="train")
    # a typo in a late section, or a wrong type, is said before the first stage runs, not when its stage comes
    with pytest.raises(ConfigError, match="unknown key 'num_image' in demo.yaml \\[generation\\]"):
        run_pipeline(demo_recipe(), ["generation.num_image=3"], tmp_path / "typo")
    with pytest.raises(ConfigError, match=r"\[evaluation\].epochs: expected an integer"):
        run_pipeline(demo_recipe(), ["evaluation.epochs=many"], tmp_path / "typo")
    with pytest.raises(ConfigError, match="unknown sampler 'Eulr'"):
        run_pipeline(demo_recipe(), ["generation.samplers=[Euler, Eulr]"], tmp_path / "typo")
    with pytest.raises(ConfigError, match="'mobilenetv2_05' is not a timm model name; did you mean"):
        run_pipeline(demo_recipe(), ["evaluation.models=[mobilenetv2_05]"], tmp_path / "typo")
    assert not (tmp_path / "typo" / "inputs").exists()
    # a push that cannot happen (the tests run offline) is said before the first stage, not after the last
    with pytest.raises(ConfigError, match="run.push needs the Hub"):
        run_pipeline(demo_recipe(), ["run.push.lora=org/derm-lora"], tmp_path / "pushed")
    assert not (tmp_path / "pushed" / "inputs").exists()
    with pytest.raises(ConfigError, match="run.push.dataset must look like ORG/NAME"):
        run_pipeline(demo_recipe(), ["run.push.dataset=org/derm/set"], tmp_path / "pushed")
    with pytest.raises(ConfigError, match="run.push.results 'org/x--y' is not a valid Hub repo id"):
        run_pipeline(demo_recipe(), ["run.push.results=org/x--y"], tmp_path / "pushed")
    assert not (tmp_path / "pushed" / "inputs").exists()


def test_until_says_what_was_not_run(tmp_path, run_cli):
    code, out, err = run_cli("run", demo_recipe(), "--output", tmp_path, "--until", "preprocess",
                             *[f"--set={item}" for item in SHRINK])
    assert code == 0, err
    assert "Stopped after preprocess (--until): train_lora, generate" in out and "without --until" in out


def test_paper_recipe_asks_for_its_data(tmp_path):
    recipe = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"
    with pytest.raises(ConfigError, match="images. is not set"):
        run_pipeline(recipe, output=tmp_path)


def test_demo_recipe_is_shipped_and_matches_configs():
    shipped = demo_recipe().read_text()
    assert shipped == (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text()
    assert "embedded:tiny-sd15" in shipped


@pytest.mark.slow
def test_ctrl_c_keeps_finished_stages_and_the_same_command_resumes(demo_run, monkeypatch):
    out, _ = demo_run
    from dermt2im_hub.pipeline import stages

    changed = SHRINK + ["generation.cfg=5.0", "quality.top_k_pairs=3"]

    def interrupted_qa(spec):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(stages, "_qa", interrupted_qa)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(demo_recipe(), changed, out)
    state = json.loads((out / "pipeline_state.json").read_text())["stages"]
    assert state["qa"]["status"] == "running" and state["generate"]["status"] == "complete"
    resumed = run_pipeline(demo_recipe(), changed, out)
    assert "qa" in resumed.ran and "generate" not in resumed.ran and "train_lora" not in resumed.ran
    assert json.loads((out / "qa" / "manifest.json").read_text())["status"] == "complete"
