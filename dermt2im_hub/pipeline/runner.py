"""`dermt2im run RECIPE.yaml`: every stage in order, skipping the ones that are up to date.

    preprocess -> train_lora -> generate -> qa -> dataset (synthetic + real) -> benchmark -> leaderboard
    -> cards -> push (when run.push names repos) -> report

`--set SECTION.KEY=VALUE` overrides any recipe key (e.g. `--set generation.num_images=600`); the merged recipe
is saved as OUT/.pipeline/recipe.yaml and each stage's resolved config as OUT/.pipeline/STAGE.yaml.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dermt2im_hub.config import (
    ConfigError,
    check_config_data,
    config_to_dict,
    deep_merge,
    load_config,
    parse_overrides,
    read_yaml,
)
from dermt2im_hub.hub.online import require_online
from dermt2im_hub.pipeline import stages as st
from dermt2im_hub.pipeline.config import SECTION, STAGES, RunConfig
from dermt2im_hub.pipeline.state import PipelineState, stage_key
from dermt2im_hub.utils.files import atomic_write_text
from dermt2im_hub.utils.logging import get_logger

logger = get_logger("pipeline")


@dataclass
class StageOutcome:
    name: str
    folder: Path
    status: str  # "ran" | "up to date" | "skipped (before --from)"
    seconds: float = 0.0


@dataclass
class RunSummary:
    output: Path
    outcomes: list[StageOutcome] = field(default_factory=list)
    report: Path | None = None
    pushed: dict[str, str] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        return [o.name for o in self.outcomes if o.status == "ran"]


def merged_recipe(recipe: Path, overrides: Iterable[str] | dict | None, output: Path | None) -> dict:
    data = deep_merge(read_yaml(recipe), parse_overrides(overrides))
    if output is not None:
        data.setdefault(SECTION, {})
        data[SECTION] = {**(data[SECTION] or {}), "output": str(output)}
    unknown = [k for k in data if k not in ("data", "training", "generation", "quality", "dataset", "evaluation",
                                            "validation", SECTION)]
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} in {recipe} (known: data, training, generation, quality, "
                          "dataset, evaluation, validation, run)")
    return data


def _check_sections(data: dict, recipe: Path) -> None:
    """Every stage section's keys and values, checked now: a typo in a late section (or its --set) must not
    surface only after the earlier stages, training included, have run."""
    from dermt2im_hub.data.config import DataConfig
    from dermt2im_hub.dataset.config import DatasetConfig
    from dermt2im_hub.evaluation.config import EvaluationConfig
    from dermt2im_hub.evaluation.train import check_model_names
    from dermt2im_hub.generation.plan import GenerationConfig
    from dermt2im_hub.quality.config import QualityConfig
    from dermt2im_hub.training.config import TrainLoraConfig
    from dermt2im_hub.validation.config import ValidationConfig

    for section, cls in (("data", DataConfig), ("training", TrainLoraConfig), ("generation", GenerationConfig),
                         ("quality", QualityConfig), ("dataset", DatasetConfig), ("evaluation", EvaluationConfig),
                         ("validation", ValidationConfig), (SECTION, RunConfig)):
        given = data.get(section) or {}
        config = check_config_data(cls, given, f"{recipe.name} [{section}]")
        if section != SECTION:  # the run section's own checks run once its paths are resolved
            config.validate()  # values too (samplers, schedules, arms ...); paths are filled in by each stage
        if section == "evaluation":
            check_model_names(config.models)  # a typo here would surface after training and generation
        # --set values typed as the fields want them (a string field keeps its text), so the saved recipe holds
        # what each stage will read
        resolved = config_to_dict(config)
        if section in data:  # an absent section stays absent (validation runs only when the recipe has one)
            data[section] = {key: resolved[key] for key in given}


def _check_stage_name(name: str | None) -> None:
    if name is not None and name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")


def run_pipeline(recipe: str | Path, overrides: Iterable[str] | dict | None = None, output: str | Path | None = None,
                 from_stage: str | None = None, until_stage: str | None = None) -> RunSummary:
    _check_stage_name(from_stage)
    _check_stage_name(until_stage)
    recipe = Path(recipe)
    st.check_recipe(recipe)
    data = merged_recipe(recipe, overrides, Path(output) if output else None)
    _check_sections(data, recipe)
    run = load_config(RunConfig, None, data.get(SECTION) or {})
    run.require_inputs()
    layout = st.RunLayout(Path(run.output))
    resolved = layout.resolved_config("recipe")
    resolved.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(resolved, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    state = PipelineState(layout.root)
    summary = RunSummary(layout.root)
    first = STAGES.index(from_stage) if from_stage else 0
    last = STAGES.index(until_stage) if until_stage else len(STAGES) - 1

    def active(group: str) -> bool:
        return first <= STAGES.index(group) <= last

    if active("push") and st.push_targets(run, layout):
        require_online("run.push")  # before the first stage, not after the last

    groups: list[tuple[str, Callable[[], list[st.StageSpec]]]] = [
        ("preprocess", lambda: st.phantom_specs(run, layout) + st.preprocess_specs(resolved, run, layout)),
        ("train_lora", lambda: [st.train_spec(resolved, run, layout)]),
        ("generate", lambda: [st.generate_spec(resolved, run, layout)]),
        ("qa", lambda: [st.qa_spec(resolved, run, layout)]),
        ("dataset", lambda: st.dataset_specs(resolved, run, layout)),
        ("benchmark", lambda: [st.benchmark_spec(resolved, run, layout)]),
        ("leaderboard", lambda: [st.leaderboard_spec(run, layout)]),
        ("validate", lambda: st.validate_specs(resolved, run, layout)),
    ]
    for group, build in groups:
        if STAGES.index(group) > last:
            break
        for spec in build():
            if not active(group):
                _require_done(spec)
                summary.outcomes.append(StageOutcome(spec.name, spec.folder, "skipped (before --from)"))
                continue
            summary.outcomes.append(_run_stage(spec, state))
    if active("cards"):
        started = time.perf_counter()
        st.render_all_cards(layout, run)
        summary.outcomes.append(StageOutcome("cards", layout.root, "ran", time.perf_counter() - started))
    if active("push") and st.push_targets(run, layout):
        started = time.perf_counter()
        summary.pushed = st.push_all(run, layout)
        summary.outcomes.append(StageOutcome("push", layout.root, "ran", time.perf_counter() - started))
    if run.report:
        from dermt2im_hub.pipeline.report import write_report

        summary.report = write_report(layout, run, summary)
    return summary


def _require_done(spec: st.StageSpec) -> None:
    from dermt2im_hub.manifest import try_read_manifest

    manifest = try_read_manifest(spec.folder)
    if not manifest or manifest.get("status") != "complete":
        raise ConfigError(f"--from skips {spec.name}, but {spec.folder} holds no finished output; "
                          "run that stage first (drop --from)")


def _run_stage(spec: st.StageSpec, state: PipelineState) -> StageOutcome:
    key = stage_key(spec.config, spec.inputs, spec.extra_key)
    if state.is_up_to_date(spec.name, key, spec.folder):
        logger.info("%s: up to date (%s)", spec.name, spec.folder)
        return StageOutcome(spec.name, spec.folder, "up to date")
    logger.info("%s: running -> %s", spec.name, spec.folder)
    state.prepare(spec.name, key, spec.folder)
    started = time.perf_counter()
    spec.action(spec)
    state.finish(spec.name, key, spec.folder)
    return StageOutcome(spec.name, spec.folder, "ran", time.perf_counter() - started)
