"""The stages `dermt2im run` chains, each a thin call into its own subpackage.

Every stage gets its resolved config from its section of the recipe plus the paths this run wires in, writes
one folder under the run's output, and is skipped when `PipelineState` says it is up to date. Training,
generation and the classifier benchmark run in child processes through their own command lines (and so
through `accelerate launch` when `run.num_processes` > 1), which is how a user would run them by hand and
keeps each stage's GPU memory its own.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermt2im_hub.config import ConfigError, config_to_dict, load_config, save_config
from dermt2im_hub.pipeline.config import RealSource, RunConfig

EMBEDDED_TINY_BASE = "embedded:tiny-sd15"  # run.base_model value: the tiny base pretrained on phantoms (shipped)
# validation.fidelity.classifier value: the tiny world's judge, trained from scratch on phantoms the run never uses
EMBEDDED_PHANTOM_JUDGE = "embedded:phantom-judge"
PIPELINE_DIR = ".pipeline"  # resolved stage configs and the push record


class PipelineError(RuntimeError):
    """A stage failed or refused to go on; the message says which and why."""


@dataclass
class RunLayout:
    """Where every stage of one run writes (all under `root`)."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    def source_images(self, source: RealSource) -> Path:
        return self.inputs / source.name if source.source == "phantoms" else Path(source.images or "")

    @property
    def tiny_base(self) -> Path:
        return self.inputs / "tiny-base"

    @property
    def phantom_judge(self) -> Path:
        return self.inputs / "phantom-judge"

    def data(self, name: str) -> Path:
        return self.root / "data" / name

    lora = property(lambda self: self.root / "lora")
    generated = property(lambda self: self.root / "generated")
    qa = property(lambda self: self.root / "qa")
    synthetic_dataset = property(lambda self: self.root / "datasets" / "synthetic")
    real_dataset = property(lambda self: self.root / "datasets" / "real")
    benchmark = property(lambda self: self.root / "benchmark")
    results = property(lambda self: self.root / "benchmark" / "results")
    leaderboard = property(lambda self: self.root / "leaderboard")
    validation = property(lambda self: self.root / "validation")
    pipeline_dir = property(lambda self: self.root / PIPELINE_DIR)

    def resolved_config(self, stage: str) -> Path:
        return self.pipeline_dir / f"{stage}.yaml"


@dataclass
class StageSpec:
    """One unit of work: its name, output folder, the folders it reads and its resolved config."""

    name: str
    folder: Path
    inputs: list[Path]
    config: Any
    action: Any  # callable(StageSpec) -> None
    extra_key: Any = None
    notes: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- helpers


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(argv: list[str], what: str) -> None:
    """Run `python -m dermt2im_hub.cli ARGV` (a stage's own command line) and fail loudly if it fails."""
    from dermt2im_hub.utils.launch import call_child

    command = [sys.executable, "-m", "dermt2im_hub.cli", *argv]
    # Ctrl-C: the child (a trainer) saves its checkpoint before this returns; a re-run then resumes from it
    code = call_child(command, _child_env())
    if code != 0:
        raise PipelineError(f"{what} failed (exit code {code}); command: {' '.join(command)}")


def _write_resolved(layout: RunLayout, stage: str, config: Any) -> Path:
    return save_config(config, layout.resolved_config(stage))


def base_model_path(run: RunConfig, layout: RunLayout) -> str | None:
    if run.base_model == EMBEDDED_TINY_BASE:
        return str(layout.tiny_base)
    return run.base_model


# ------------------------------------------------------------------------------------- stage builders


def phantom_specs(run: RunConfig, layout: RunLayout) -> list[StageSpec]:
    """Embedded inputs: phantom image sources and the tiny base (only what the recipe asks for)."""
    from dermt2im_hub.testing.phantoms import PhantomConfig

    specs = []
    for source in run.real_sources:
        if source.source != "phantoms":
            continue
        config = load_config(PhantomConfig, overrides={"num_images": source.num_images, "size": source.image_size,
                                                       "seed": source.seed})
        specs.append(StageSpec(f"inputs:{source.name}", layout.source_images(source), [], config, _make_phantoms))
    if run.base_model == EMBEDDED_TINY_BASE:
        from dermt2im_hub.testing.tiny_base import shipped_base_info

        weights = shipped_base_info()["weights_sha256"]  # a new shipped version re-runs the stage
        specs.append(StageSpec("inputs:tiny-base", layout.tiny_base, [], {"pretrained": True, "weights": weights},
                               _make_tiny_base))
    return specs


def _make_phantoms(spec: StageSpec) -> None:
    from dermt2im_hub.testing.phantoms import make_phantoms

    make_phantoms(spec.folder, spec.config)


def _make_tiny_base(spec: StageSpec) -> None:
    from dermt2im_hub.manifest import write_manifest
    from dermt2im_hub.testing.tiny_base import make_tiny_base

    make_tiny_base(spec.folder, pretrained=True)
    write_manifest(spec.folder, "tiny_base", spec.config, outputs={"pipeline": "model_index.json"})


def preprocess_specs(recipe: Path, run: RunConfig, layout: RunLayout) -> list[StageSpec]:
    from dermt2im_hub.data.config import DataConfig

    specs = []
    tests = [s for s in run.real_sources if s.test_only]
    # test sources first: their metadata and preprocessed folders are every other source's exclusion list
    for source in tests + [s for s in run.real_sources if not s.test_only]:
        overrides = dict(source.overrides)
        overrides.update(source="folder" if source.source == "phantoms" else source.source,
                         images=str(layout.source_images(source)), metadata=list(source.metadata),
                         output=str(layout.data(source.name)))
        excluded = [] if source.test_only else [
            *(m for t in tests for m in t.metadata), *(str(layout.data(t.name)) for t in tests)]
        if excluded:
            overrides["exclude_sources"] = [*overrides.get("exclude_sources", []), *excluded]
        config = load_config(DataConfig, recipe, overrides, section="data")
        inputs = [layout.source_images(source)] if source.source == "phantoms" else []
        extra = None if source.source == "phantoms" else _fingerprint_paths([source.images, *source.metadata,
                                                                             *excluded])
        specs.append(StageSpec(f"preprocess:{source.name}", layout.data(source.name), inputs, config,
                               _preprocess, extra_key=extra))
    return specs


def _fingerprint_paths(paths: list[str | None]) -> list[Any]:
    """Cheap identity of user inputs (path, size, mtime of the top level), so new downloads re-run the stage."""
    identity = []
    for path in paths:
        p = Path(path) if path else None
        if p is None or not p.exists():
            identity.append(str(path))
            continue
        stat = p.stat()
        entries = sorted(os.listdir(p)) if p.is_dir() else []
        identity.append([str(p.resolve()), stat.st_size, int(stat.st_mtime), len(entries)])
    return identity


def _preprocess(spec: StageSpec) -> None:
    from dermt2im_hub.data.preprocess import run_preprocess

    result = run_preprocess(spec.config)
    if not result.records:
        raise PipelineError(f"{spec.name}: no usable images (see {spec.folder / 'report.json'})")


def train_spec(recipe: Path, run: RunConfig, layout: RunLayout) -> StageSpec:
    from dermt2im_hub.training.config import TrainLoraConfig

    overrides: dict[str, Any] = {"train_data_dir": str(layout.data(run.lora_source.name)),
                                 "output_dir": str(layout.lora),
                                 "test_exclusion": str(layout.pipeline_dir / "lora_test_exclusion.json")}
    if run.base_model:
        overrides["pretrained_model_name_or_path"] = base_model_path(run, layout)
    config = load_config(TrainLoraConfig, recipe, overrides, section="training")
    inputs = [layout.data(run.lora_source.name)]
    if run.base_model == EMBEDDED_TINY_BASE:
        inputs.append(layout.tiny_base)
    return StageSpec("train_lora", layout.lora, inputs, config, _train,
                     notes={"num_processes": run.num_processes, "accelerate_config": run.accelerate_config,
                            "layout": layout, "sources": [(layout.data(s.name), s.test_only)
                                                          for s in run.real_sources]})


def merged_exclusion(sources: list[tuple[Path, bool]], path: Path):
    """Every source's test split plus every image of a test_only source, saved to `path` (the LoRA refuses
    all of them before its first step)."""
    from dermt2im_hub.records import EXCLUSION_NAME, TestExclusion, read_records

    merged = TestExclusion(source="dermt2im run")
    for folder, test_only in sources:
        if test_only and (folder / "metadata.jsonl").is_file():
            merged = merged.merge(TestExclusion.from_records(read_records(folder), source=str(folder)))
        elif (folder / EXCLUSION_NAME).is_file():
            merged = merged.merge(TestExclusion.load(folder / EXCLUSION_NAME))
    merged.save(path)
    return merged


def _train(spec: StageSpec) -> None:
    layout: RunLayout = spec.notes["layout"]
    merged_exclusion(spec.notes["sources"], Path(spec.config.test_exclusion))
    argv = ["train-lora", "--config", str(_write_resolved(layout, "train_lora", spec.config))]
    if spec.notes["accelerate_config"]:
        argv += ["--accelerate-config", spec.notes["accelerate_config"]]
    if spec.notes["num_processes"] > 1:
        argv += ["--num-processes", str(spec.notes["num_processes"])]
    run_child(argv, "LoRA training")


def generate_spec(recipe: Path, run: RunConfig, layout: RunLayout) -> StageSpec:
    from dermt2im_hub.generation.plan import GenerationConfig

    overrides: dict[str, Any] = {"lora": [str(layout.lora)], "output": str(layout.generated)}
    if run.base_model:
        overrides["base"] = base_model_path(run, layout)
    config = load_config(GenerationConfig, recipe, overrides, section="generation")
    config.require_inputs()
    return StageSpec("generate", layout.generated, [layout.lora], config, _generate,
                     notes={"num_processes": run.num_processes, "layout": layout})


def _generate(spec: StageSpec) -> None:
    layout: RunLayout = spec.notes["layout"]
    argv = ["generate", "--config", str(_write_resolved(layout, "generate", spec.config)),
            "--num-processes", str(spec.notes["num_processes"])]
    run_child(argv, "generation")


def qa_spec(recipe: Path, run: RunConfig, layout: RunLayout) -> StageSpec:
    from dermt2im_hub.quality.config import QualityConfig

    overrides = {"allow_memorized": True} if run.allow_memorized else {}
    config = load_config(QualityConfig, recipe, overrides, section="quality")
    return StageSpec("qa", layout.qa, [layout.generated, layout.data(run.lora_source.name)], config, _qa,
                     notes={"real": layout.data(run.lora_source.name), "generated": layout.generated,
                            "allow_memorized": run.allow_memorized})


def _qa(spec: StageSpec) -> None:
    from dermt2im_hub.quality.run import run_qa

    result = run_qa(spec.notes["generated"], spec.notes["real"], spec.config, output_dir=spec.folder)
    if result.memorization_blocked and not spec.notes["allow_memorized"]:
        raise PipelineError(f"the memorization audit flagged generated images that look like training images "
                            f"(see {result.report_path}); look at the pairs it saved, then re-run with "
                            "--set run.allow_memorized=true only if they are not copies")


def dataset_specs(recipe: Path, run: RunConfig, layout: RunLayout) -> list[StageSpec]:
    from dermt2im_hub.dataset.config import DatasetConfig

    memorized = {"allow_memorized": True} if run.allow_memorized else {}
    synthetic = load_config(DatasetConfig, recipe, {"config_name": "synthetic", "push_to_hub": None, **memorized},
                            section="dataset")
    real = load_config(DatasetConfig, recipe, {
        "config_name": "real", "split_by": "none", "push_to_hub": None, "sample_grid_per_class": 2,
        "pretty_name": "Derm-T2IM real dermoscopy (preprocessed, lesion/patient-disjoint splits)",
    }, section="dataset")
    real_inputs = [layout.data(s.name) for s in run.real_sources]
    return [
        StageSpec("dataset:synthetic", layout.synthetic_dataset, [layout.generated, layout.qa], synthetic,
                  _build_dataset, notes={"inputs": [layout.generated]}),
        StageSpec("dataset:real", layout.real_dataset, real_inputs, real, _build_dataset,
                  notes={"inputs": real_inputs}),
    ]


def _build_dataset(spec: StageSpec) -> None:
    from dermt2im_hub.dataset.export import build_dataset

    build_dataset(spec.notes["inputs"], spec.folder, spec.config)


def benchmark_spec(recipe: Path, run: RunConfig, layout: RunLayout) -> StageSpec:
    from dermt2im_hub.evaluation.config import EvaluationConfig

    exclusion = layout.pipeline_dir / "test_exclusion.json"
    overrides = {"real": {"path": str(layout.real_dataset)}, "synthetic": {"path": str(layout.synthetic_dataset)},
                 "output_dir": str(layout.benchmark), "exclusion_file": str(exclusion)}
    config = load_config(EvaluationConfig, recipe, overrides, section="evaluation")
    inputs = [layout.real_dataset, layout.synthetic_dataset] + [layout.data(s.name) for s in run.real_sources]
    return StageSpec("benchmark", layout.results, inputs, config, _benchmark,
                     notes={"layout": layout, "exclusion": exclusion, "num_processes": run.num_processes,
                            "sources": [layout.data(s.name) for s in run.real_sources]})


def _benchmark(spec: StageSpec) -> None:
    from dermt2im_hub.records import EXCLUSION_NAME, TestExclusion

    # every source's held-out test split, so no classifier trains on any of them
    merged = TestExclusion(source="dermt2im run")
    for folder in spec.notes["sources"]:
        if (folder / EXCLUSION_NAME).is_file():
            merged = merged.merge(TestExclusion.load(folder / EXCLUSION_NAME))
    merged.save(spec.notes["exclusion"])
    layout: RunLayout = spec.notes["layout"]
    config_path = _write_resolved(layout, "benchmark", spec.config)
    if spec.notes["num_processes"] > 1:
        from dermt2im_hub.utils.launch import accelerate_launch, call_child

        prefix, env = accelerate_launch(spec.notes["num_processes"])
        command = prefix + ["-m", "dermt2im_hub.evaluation.launch", "--config", str(config_path), "--no-leaderboard"]
        if call_child(command, {**env, "PYTHONUNBUFFERED": "1"}) != 0:
            raise PipelineError(f"classifier benchmark failed; command: {' '.join(command)}")
        return
    run_child(["benchmark", "--config", str(config_path), "--no-leaderboard"], "classifier benchmark")


def leaderboard_spec(run: RunConfig, layout: RunLayout) -> StageSpec:
    return StageSpec("leaderboard", layout.leaderboard, [layout.results], {"results": "benchmark/results"},
                     _leaderboard, notes={"results": layout.results})


def _leaderboard(spec: StageSpec) -> None:
    from dermt2im_hub.evaluation.leaderboard import render_leaderboard

    render_leaderboard(spec.notes["results"], spec.folder)


def validate_specs(recipe: Path, run: RunConfig, layout: RunLayout) -> list[StageSpec]:
    """`dermt2im validate` on the kept generated images, only when the recipe has a `validation:` section.
    One-way flow: its real-only reference classifier (and detector) train on the LoRA source's train split
    (data stage output), never on the benchmark's test sets; `validation.fidelity.classifier` may name one."""
    from dermt2im_hub.config import read_yaml
    from dermt2im_hub.validation.config import SECTION, ValidationConfig

    section = read_yaml(recipe).get(SECTION, False)
    if section is False:
        return []
    section, real = section or {}, str(layout.data(run.lora_source.name))
    overrides: dict[str, Any] = {"detection.real": (section.get("detection") or {}).get("real") or real}
    classifier = (section.get("fidelity") or {}).get("classifier")
    specs = []
    if classifier == EMBEDDED_PHANTOM_JUDGE:
        specs.append(StageSpec("inputs:phantom-judge", layout.phantom_judge, [], {"judge": "phantoms, seed 2000"},
                               _make_phantom_judge))
        overrides["fidelity.classifier"] = str(layout.phantom_judge)
    elif not classifier:
        overrides["fidelity.real"] = (section.get("fidelity") or {}).get("real") or real
    config = load_config(ValidationConfig, recipe, overrides, section=SECTION)
    inputs = [layout.generated, layout.qa, layout.data(run.lora_source.name)] + [s.folder for s in specs]
    return specs + [StageSpec("validate", layout.validation, inputs, config, _validate,
                              notes={"generated": layout.generated})]


def _make_phantom_judge(spec: StageSpec) -> None:
    from dermt2im_hub.testing.phantom_classifier import write_phantom_judge

    write_phantom_judge(spec.folder)


def _validate(spec: StageSpec) -> None:
    from dermt2im_hub.validation.run import run_validation

    run_validation(spec.notes["generated"], spec.config, spec.folder)


def stage_folders(layout: RunLayout, run: RunConfig) -> list[Path]:
    """Every output folder of a run, in pipeline order (for cards, the report and pushes)."""
    folders = [layout.data(s.name) for s in run.real_sources]
    folders += [layout.lora, layout.generated, layout.qa, layout.synthetic_dataset, layout.real_dataset,
                layout.results, layout.leaderboard, layout.validation]
    classifiers = layout.benchmark / "classifiers"
    if classifiers.is_dir():
        folders += sorted(p for p in classifiers.iterdir() if (p / "manifest.json").is_file())
    return [f for f in folders if (f / "manifest.json").is_file()]


def render_all_cards(layout: RunLayout, run: RunConfig) -> list[Path]:
    """Re-render every folder's README.md from its manifest (cards are pure functions of manifests); a folder
    that run.push publishes gets its repo id, so the card's how-to-use snippet loads from that repo."""
    from dermt2im_hub.hub.cards import render_card

    repo_ids = {folder: repo_id for folder, repo_id, _ in push_targets(run, layout)}
    return [render_card(folder, repo_id=repo_ids.get(folder)) for folder in stage_folders(layout, run)]


def push_targets(run: RunConfig, layout: RunLayout) -> list[tuple[Path, str, str]]:
    targets = [(layout.lora, run.push.lora, "model"), (layout.synthetic_dataset, run.push.dataset, "dataset"),
               (layout.real_dataset, run.push.real_dataset, "dataset"), (layout.results, run.push.results, "dataset")]
    return [(folder, repo, kind) for folder, repo, kind in targets if repo]


def push_all(run: RunConfig, layout: RunLayout) -> dict[str, str]:
    """Upload each configured folder (private unless run.push.public) through the publishing gate; naming
    run.push.real_dataset is the explicit ask to publish real images. Returns "REPO (FOLDER)" -> commit URL
    (the synthetic and real datasets may be two configs of one repo: both pushes are listed)."""
    from dermt2im_hub.hub import push_folder

    urls = {}
    for folder, repo_id, repo_type in push_targets(run, layout):
        pushed = push_folder(folder, repo_id, repo_type=repo_type, private=not run.push.public,
                             commit_message=f"dermt2im run: {folder.name}", allow_memorized=run.allow_memorized,
                             allow_real_images=folder == layout.real_dataset)
        urls[f"{repo_id} ({folder.relative_to(layout.root)})"] = pushed
    return urls


def describe_config(config: Any) -> dict:
    return config_to_dict(config) if not isinstance(config, dict) else config


def check_recipe(recipe: Path) -> None:
    if not Path(recipe).is_file():
        raise ConfigError(f"recipe not found: {recipe}")
