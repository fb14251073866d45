"""Model and dataset cards rendered from an output folder's `manifest.json` alone (contract 4).

    render_card("outputs/lora")          # writes outputs/lora/README.md, kind chosen from the manifest's stage

A card is a pure function of the manifest: the facts come from `manifest["extra"]["card"]` (every key
optional), plus the stage, resolved config, inputs and package versions. Any fact that is missing renders as
"not recorded" instead of an empty section, so a card never claims more than the run wrote down.

Rendering goes through huggingface_hub's `ModelCard.from_template` / `DatasetCard.from_template` with
`ModelCardData` / `DatasetCardData` (front matter) and `EvalResult` (the classifier's model-index); the Jinja
templates live in the repository's `model_cards/` folder, installed as the `dermt2im_hub.model_cards` package,
and are read with importlib.resources, so an installed wheel renders the same cards as a source checkout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from dermt2im_hub.hub.configs import (
    as_info_list,
    config_rows,
    merge_configs,
    merge_dataset_info,
    merge_front_matter,
)
from dermt2im_hub.hub.eval_results import hub_dataset_id, hub_metric_id
from dermt2im_hub.hub.nature import run_nature
from dermt2im_hub.hub.redact import cut_local_paths
from dermt2im_hub.hub.resolve import is_remote_hub_id, require_hub_id
from dermt2im_hub.manifest import read_manifest
from dermt2im_hub.utils.files import atomic_write_text

NOT_RECORDED = "not recorded"
CARD_NAME = "README.md"
TEMPLATE_PACKAGE = "dermt2im_hub.model_cards"
PLACEHOLDER_REPO_ID = "YOUR_ORG/YOUR_REPO"

KINDS = ("lora", "dataset", "classifier", "results", "stage")
STAGE_KINDS = {"train_lora": "lora", "build_dataset": "dataset", "train_classifier": "classifier",
               "leaderboard": "results"}
# Shared sections rendered once and dropped into every card (plain jinja2.Template, as from_template uses,
# has no loader for {% include %}).
PARTIALS = ("provenance", "responsible_use", "citation")

LORA_TAGS = ["lora", "diffusers", "text-to-image", "stable-diffusion", "dermatology", "medical",
             "template:sd-lora"]
CLASSIFIER_TAGS = ["image-classification", "timm", "dermatology", "medical", "skin-lesion"]
DATASET_TAGS = ["dermatology", "medical", "skin-lesion", "dermoscopy", "synthetic", "stable-diffusion", "lora"]
SYNTHETIC_ONLY_TAGS = {"synthetic", "stable-diffusion", "lora"}
RESULTS_TAGS = ["dermatology", "medical", "leaderboard", "image-classification"]
DATASET_TASKS = ["image-classification", "text-to-image"]

# When a run records no licence, the card uses the licence its inputs force (and says so in the body):
# the adapter inherits Stable Diffusion's CreativeML OpenRAIL-M; data and models trained on ISIC/HAM10000
# images inherit the non-commercial CC BY-NC 4.0 of HAM10000 and part of the ISIC Archive.
DEFAULT_LICENSES = {"lora": "creativeml-openrail-m", "dataset": "cc-by-nc-4.0", "classifier": "cc-by-nc-4.0",
                    "results": "cc-by-nc-4.0", "stage": "cc-by-nc-4.0"}
# A dataset's default depends on what its builder config read. `synthetic` (our generator's output) and
# `real` (preprocessed ISIC/HAM10000-style folders) are what this pipeline makes from non-commercial sources;
# `a1111` reads third-party PNGs whose terms nothing recorded names, and a manifest without a builder config
# says nothing either: those cards say "not recorded" and the front matter says `unknown` (a Hub licence id).
UNKNOWN_LICENSE = "unknown"
DATASET_DEFAULT_LICENSES = {"synthetic": "cc-by-nc-4.0", "real": "cc-by-nc-4.0"}
BUILDER_CONFIGS = ("synthetic", "a1111", "real")
DEFAULT_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights default
DEFAULT_CLASSIFIER_WEIGHT_NAME = "model.safetensors"  # timm's push_to_hub / save_for_hf default

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


class CardError(ValueError):
    """A card cannot be rendered (unknown kind, missing manifest)."""


# ---------------------------------------------------------------------------------------------- helpers


def is_recorded(value: Any) -> bool:
    """False for facts a run did not write down: None, empty strings and empty containers."""
    if value is None or isinstance(value, jinja2.Undefined):
        return False
    if isinstance(value, (str, list, tuple, dict, set)):
        return len(value) > 0
    return True


def show(value: Any, suffix: str = "") -> str:
    """A fact as Markdown-safe text (md_text), or "not recorded"."""
    if not is_recorded(value):
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}{suffix}"
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{md_text(str(k))}: {show(v)}" for k, v in value.items())
    return f"{md_text(str(value))}{suffix}"


# Control characters (C0 but tab and newline, DEL, C1: ESC sequences recolour terminals that print a README)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Markdown punctuation that can open a link, an image (both need `[`), a link reference definition, a code span or
# a table cell (CommonMark lets any ASCII punctuation be backslash-escaped; the escaped character renders as
# itself). Raw HTML and <autolinks> need `<`, written as an entity. Emphasis is left alone: it makes nothing live.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`\[\]|])")


def strip_control(text: str) -> str:
    return _CONTROL.sub("", text)


def md_text(text: str) -> str:
    """Untrusted text (prompts, file names, infotext, metadata) as inert Markdown on one line: no link, image,
    emphasis, code span, raw HTML, table-cell break, autolinked URL or control character survives; the rendered
    card shows the text as it was."""
    text = strip_control(text).replace("\r", " ").replace("\n", " ")
    text = _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    # GFM autolinks bare URLs and www. names: break the pattern without changing what is shown
    return re.sub(r"(?i)(://|www\.)", lambda m: "\\:\\/\\/" if m.group(1) == "://" else "www\\.", text)


def code(value: Any) -> str:
    """Untrusted text as an inline code span (nothing inside is rendered): a backtick run longer than any in
    the text delimits it; control characters and line breaks are removed."""
    if not is_recorded(value):
        return NOT_RECORDED
    text = strip_control(str(value)).replace("\r", " ").replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_link_target(path: Any) -> str | None:
    """A path inside the repo usable as a Markdown image/link target, or None: a URL with a scheme, an absolute
    path or one leaving the repo would load something from elsewhere (a remote image, a javascript: link)."""
    from urllib.parse import quote

    if not is_recorded(path):
        return None
    text = strip_control(str(path)).replace("\\", "/")
    parts = text.split("/")
    if ":" in text or text.startswith("/") or ".." in parts or not text.strip():
        return None
    return quote(text, safe="/._-")


def kv_table(mapping: Any, key_header: str = "name", value_header: str = "value") -> str:
    """A two-column Markdown table, or "not recorded" when the mapping is empty or missing."""
    if not is_recorded(mapping) or not isinstance(mapping, Mapping):
        return show(mapping)
    lines = [f"| {key_header} | {value_header} |", "|---|---|"]
    lines += [f"| {md_text(str(k))} | {show(v)} |" for k, v in mapping.items()]
    return "\n".join(lines)


def rows_table(rows: Any, columns: list[str], headers: list[str] | None = None) -> str:
    """A Markdown table of dict rows (missing cells say "not recorded"), or "not recorded" without rows."""
    if not is_recorded(rows) or not isinstance(rows, (list, tuple)):
        return show(rows)
    headers = headers or columns
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        row = row if isinstance(row, Mapping) else {columns[0]: row}
        lines.append("| " + " | ".join(show(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def size_category(num_rows: int | None) -> str | None:
    if num_rows is None:
        return None
    for limit, label in _SIZE_CATEGORIES:
        if num_rows < limit:
            return label
    return "n>1T"


def card_kind(manifest: Mapping[str, Any], kind: str | None = None) -> str:
    """The card kind: explicit, else from the manifest's stage (unknown stages get the generic card)."""
    if kind is None:
        kind = STAGE_KINDS.get(str(manifest.get("stage")), "stage")
    if kind not in KINDS:
        raise CardError(f"unknown card kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return kind


# Stages whose folders hold images or tables, not weights: they belong in dataset repos.
DATA_STAGES = frozenset({"phantoms", "preprocess", "generate", "qa", "build_dataset", "benchmark"})


def card_repo_type(kind: str, stage: str | None = None) -> str:
    """The Hub repo type a card kind (and its stage, for the generic card) belongs in; `dermt2im push`
    defaults to the same, so a card's snippet loads from the repo type it was pushed to."""
    return "dataset" if kind == "dataset" or stage in DATA_STAGES else "model"


def read_template(name: str) -> str:
    """A template's text from the installed `dermt2im_hub.model_cards` package (a wheel, a zip or a source tree)."""
    resource = resources.files(TEMPLATE_PACKAGE).joinpath(name)
    if resource.is_file():
        return resource.read_text(encoding="utf-8")
    raise CardError(f"card template {name!r} is missing from the {TEMPLATE_PACKAGE} package")


# ---------------------------------------------------------------------------------------------- facts


class Facts(dict):
    """Recorded facts; a fact that is absent reads as None (so templates show "not recorded" for it)."""

    def __missing__(self, key):
        return None


def _as_facts(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Facts({k: _as_facts(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return [_as_facts(v) for v in value]
    return value


def _card_facts(manifest: Mapping[str, Any]) -> Facts:
    extra = manifest.get("extra") or {}
    facts = extra.get("card") if isinstance(extra, Mapping) else None
    return _as_facts(facts) if isinstance(facts, Mapping) else Facts()


def _repo_name(repo_id: str) -> str:
    return repo_id.split("/")[-1]


# What an input fingerprint's sha256 is of, by fingerprint kind (dermt2im_hub.manifest.fingerprint). These
# identify inputs for resume and provenance checks; they are not model hashes (docs/hub.md).
FINGERPRINT_MEANINGS = {
    "stage_output": "its manifest.json",
    "folder": "all its files (fingerprint of path, size and sha256 of each)",
    "file": "the file",
}


def _inputs_rows(inputs: Any) -> list[dict[str, Any]]:
    """Inputs as (role, kind, name, sha256, what the sha256 is of); local paths are cut to their last part so
    a public card does not reveal a machine's directory layout."""
    rows = []
    for role, info in (inputs or {}).items():
        if not isinstance(info, Mapping):
            rows.append({"role": role, "kind": None, "name": info, "sha256": None, "hash_of": None})
            continue
        name = info.get("path")
        if info.get("kind") != "reference" and name:
            name = Path(str(name)).name
        hash_of = FINGERPRINT_MEANINGS.get(str(info.get("kind"))) if info.get("sha256") else None
        rows.append({"role": role, "kind": info.get("kind"), "name": name, "sha256": info.get("sha256"),
                     "hash_of": hash_of})
    return rows


def _instance_prompts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [str(v) for _, v in sorted(value.items()) if is_recorded(v)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if is_recorded(v)]
    return []


def _sample_images(value: Any) -> list[dict[str, str]]:
    samples = []
    for item in value if isinstance(value, (list, tuple)) else []:
        if isinstance(item, Mapping) and is_recorded(item.get("path")):
            samples.append({"path": Path(str(item["path"])).as_posix(), "prompt": str(item.get("prompt") or "")})
    return samples


def code_fence(text: str) -> str:
    """A backtick fence longer than any backtick run in `text`: config values are untrusted (prompts, paths)
    and a line of ``` inside them must not close the code block and let the rest render as Markdown/HTML."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _common_context(manifest: Mapping[str, Any], kind: str, repo_id: str | None) -> dict[str, Any]:
    facts = _card_facts(manifest)
    repo_id = repo_id or facts.get("repo_id") or PLACEHOLDER_REPO_ID
    versions = {k: v for k, v in (manifest.get("versions") or {}).items() if v}
    host = manifest.get("host") or {}
    extra = manifest.get("extra") or {}
    config = manifest.get("config")
    config_yaml = yaml.safe_dump(config, sort_keys=False).strip() if is_recorded(config) else None
    license_recorded = is_recorded(facts.get("license"))
    # the card's fact, else the resolved dataset config's name (the publishing gate reads the same two)
    built_with = config.get("config_name") if isinstance(config, Mapping) else None
    recorded_config = facts.get("builder_config") or (built_with if manifest.get("stage") == "build_dataset" else None)
    builder_config = recorded_config if recorded_config in BUILDER_CONFIGS else None
    if license_recorded:
        license_id = facts.get("license")
    elif kind == "dataset":
        license_id = DATASET_DEFAULT_LICENSES.get(builder_config, UNKNOWN_LICENSE)
    else:
        license_id = DEFAULT_LICENSES[kind]
    return {
        "f": facts,
        "kind": kind,
        "repo_id": repo_id,
        "repo_name": _repo_name(repo_id),
        "repo_id_is_placeholder": repo_id == PLACEHOLDER_REPO_ID,
        "repo_type": card_repo_type(kind, manifest.get("stage")),
        "stage": manifest.get("stage"),
        "status": manifest.get("status"),
        "started_at": manifest.get("started_at"),
        "ended_at": manifest.get("ended_at"),
        "elapsed_seconds": extra.get("elapsed_seconds") if isinstance(extra, Mapping) else None,
        "extra": extra if isinstance(extra, Mapping) else {},
        "platform": host.get("platform"),
        "python_version": host.get("python"),
        "package_version": versions.get("dermt2im-hub"),
        "versions_table": kv_table(versions, "package", "version"),
        "inputs_table": rows_table(_inputs_rows(manifest.get("inputs")), ["role", "kind", "name", "sha256", "hash_of"],
                                   ["role", "kind", "name", "sha256", "sha256 of"]),
        "outputs_table": kv_table(manifest.get("outputs"), "output", "value"),
        "config_yaml": config_yaml,
        "config_fence": code_fence(config_yaml or ""),
        "config_sha256": manifest.get("config_sha256"),
        "license": license_id,
        "license_recorded": license_recorded,
        "license_unknown": license_id == UNKNOWN_LICENSE and not license_recorded,
        "builder_config": builder_config,
        # hair removal of the images behind this card, as recorded (a bool), else None ("not recorded")
        "hair_removal": facts.get("hair_removal") if isinstance(facts.get("hair_removal"), bool) else None,
        "show": show,
        "code": code,
        "md_link_target": md_link_target,
        "kv_table": kv_table,
        "rows_table": rows_table,
        "is_recorded": is_recorded,
        "NOT_RECORDED": NOT_RECORDED,
    }


def _lora_context(ctx: dict[str, Any]) -> dict[str, Any]:
    f = ctx["f"]
    weights = f.get("weight_files") if isinstance(f.get("weight_files"), Mapping) else {}
    prompts = _instance_prompts(f.get("instance_prompts"))
    ctx.update(
        weight_name=weights.get("diffusers") or DEFAULT_LORA_WEIGHT_NAME,
        weight_files=weights,
        instance_prompts=prompts,
        example_prompt=prompts[0] if prompts else "malignant mole on neck",
        samples=_sample_images(f.get("sample_images")),
        base_model_id=_public_name(f.get("base_model")) or "stable-diffusion-v1-5/stable-diffusion-v1-5",
        base_model_shown=_public_name(f.get("base_model")),
        base_model_hash=_hash_text(f.get("base_model_sha256"), f.get("base_model_hash_of")),
    )
    return ctx


def _hash_text(sha256: Any, hashed: Any) -> str:
    """A base model's hash with what it is a hash of (several hashes of one model exist; docs/hub.md)."""
    if not is_recorded(sha256):
        return f"sha256 {NOT_RECORDED}"
    if is_recorded(hashed):
        return f"sha256 of {code(hashed)}: {show(sha256)}"
    return f"sha256 {show(sha256)} (what it is a hash of: {NOT_RECORDED})"


def _public_name(value: Any) -> str | None:
    """A Hub id as is; a local path cut to its last part (a card must not reveal a machine's layout)."""
    if not is_recorded(value):
        return None
    return str(value) if is_remote_hub_id(value) else Path(str(value)).name


def _dataset_context(ctx: dict[str, Any]) -> dict[str, Any]:
    f = ctx["f"]
    configs = _clean_configs([c for c in (f.get("configs") or []) if isinstance(c, Mapping)])
    info = as_info_list(_plain(f.get("dataset_info")))
    own_names = [c["config_name"] for c in configs]
    remote = ctx.get("repo_card_data")
    if remote is not None and ctx["builder_config"]:  # a push into a repo that may hold other configs
        configs = merge_configs(configs, _plain(remote.get("configs")), ctx["builder_config"])
        info = merge_dataset_info(info, _plain(remote.get("dataset_info")), configs)
    models = [dict(m, hash_of=m.get("hash_of") or NOT_RECORDED) for m in (f.get("base_models") or [])
              if isinstance(m, Mapping)]
    # the config this card's sections describe: the builder config when the block names it
    this_config = ctx["builder_config"] if ctx["builder_config"] in own_names else next(iter(own_names), None)
    ctx.update(
        configs=configs,
        dataset_info=info,
        config_rows=config_rows(configs, info, f.get("config_rows")),
        this_config=this_config,
        first_split=next((d["split"] for c in configs if c["config_name"] == this_config for d in c["data_files"]),
                         "train"),
        subset_example=next((n for n in own_names if this_config and n.startswith(f"{this_config}-")), None),
        other_configs=[c["config_name"] for c in configs if c["config_name"] not in own_names],
        num_rows=_dataset_rows(f),
        base_models=models,
        has_adapters=is_recorded(f.get("adapters")),
        dataset_title=str(f.get("pretty_name")) if is_recorded(f.get("pretty_name"))
        else DEFAULT_DATASET_TITLES.get(ctx["builder_config"], DEFAULT_DATASET_TITLE),
    )
    return ctx


def _dataset_rows(f: Mapping[str, Any]) -> int | None:
    """num_rows, else the sum over splits (a count per split, or a mapping with num_rows)."""
    if isinstance(f.get("num_rows"), int):
        return f["num_rows"]
    splits = f.get("splits")
    if isinstance(splits, Mapping) and splits:
        counts = [v if isinstance(v, int) else (v or {}).get("num_rows") for v in splits.values()]
        if all(isinstance(c, int) for c in counts):
            return sum(counts)
    return None


def _classifier_context(ctx: dict[str, Any]) -> dict[str, Any]:
    f = ctx["f"]
    ctx.update(
        results=[r for r in (f.get("results") or []) if isinstance(r, Mapping)],
        weight_name=f.get("weight_file") or DEFAULT_CLASSIFIER_WEIGHT_NAME,
        timm_model_name=f.get("model_name") or "vit_base_patch16_224",
        num_labels_value=f.get("num_labels") or len(f.get("labels") or []) or 2,
        training_mix=f.get("training_mix") if isinstance(f.get("training_mix"), Mapping) else {},
    )
    return ctx


def _results_context(ctx: dict[str, Any]) -> dict[str, Any]:
    runs = ctx["f"].get("runs")
    # `runs` is a list of run records or just their number; the card shows how many
    ctx["runs_count"] = len(runs) if isinstance(runs, (list, tuple)) else runs
    return ctx


def _stage_context(ctx: dict[str, Any]) -> dict[str, Any]:
    # a generate run records the base model it loaded and its hash (the same quantity as a LoRA card's and a
    # dataset card's base-model hash) outside the card facts; the generic card shows it when present
    base = ctx["extra"].get("base_model") if isinstance(ctx["extra"].get("base_model"), Mapping) else None
    ctx.update(image_folder=IMAGE_FOLDER_SPLIT if ctx["stage"] in IMAGE_FOLDER_STAGES else None,
               stage_base_model=_public_name(base.get("id")) if base else None,
               stage_base_model_hash=_hash_text(base.get("sha256"), base.get("hashed_file")) if base else None)
    return ctx


_CONTEXT_BUILDERS = {"lora": _lora_context, "dataset": _dataset_context, "classifier": _classifier_context,
                     "results": _results_context, "stage": _stage_context}


# ---------------------------------------------------------------------------------------------- front matter


def _lora_card_data(ctx: dict[str, Any]):
    from huggingface_hub import ModelCardData

    f = ctx["f"]
    # the Hub shows a widget's output url as an image: only files of the repo, never a remote URL
    widget = [{"text": strip_control(s["prompt"]), "output": {"url": md_link_target(s["path"])}}
              for s in ctx["samples"] if md_link_target(s["path"])]
    return ModelCardData(
        base_model=f.get("base_model") if is_remote_hub_id(f.get("base_model")) else None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=ctx["license"],
        tags=list(LORA_TAGS),
        datasets=_hub_ids(f.get("datasets")) or None,
        instance_prompt=ctx["instance_prompts"][0] if ctx["instance_prompts"] else None,
        widget=widget or None,
    )


def _classifier_card_data(ctx: dict[str, Any]):
    from huggingface_hub import EvalResult, ModelCardData

    f = ctx["f"]
    eval_results = []
    for result in ctx["results"]:
        test_set = str(result.get("test_set") or NOT_RECORDED)
        for metric, value in (result.get("metrics") or {}).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            eval_results.append(EvalResult(  # hub.eval_results: fractions, evaluate's ids, Hub dataset ids
                task_type="image-classification", task_name="Binary skin-lesion classification",
                dataset_type=hub_dataset_id(result.get("dataset_id"), test_set), dataset_name=test_set,
                dataset_split=result.get("split"), metric_type=hub_metric_id(metric), metric_name=str(metric),
                metric_value=float(value),
            ))
    pretrained = f.get("pretrained_weights")
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=ctx["license"],
        tags=list(CLASSIFIER_TAGS),
        datasets=_hub_ids(f.get("datasets")) or None,
        base_model=pretrained if is_remote_hub_id(pretrained) else None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=ctx["repo_name"] if eval_results else None,
        eval_results=eval_results or None,
    )


def _dataset_card_data(ctx: dict[str, Any]):
    from huggingface_hub import DatasetCardData

    f = ctx["f"]
    size = size_category(ctx["num_rows"])
    data = DatasetCardData(
        license=ctx["license"],
        task_categories=list(DATASET_TASKS),
        size_categories=[size] if size else None,
        pretty_name=ctx["dataset_title"],
        annotations_creators=["expert-generated"] if ctx["builder_config"] == "real" else ["machine-generated"],
        tags=_dataset_tags(ctx),
        source_datasets=_hub_ids(f.get("source_datasets")) or None,
        configs=ctx["configs"] or None,
        # `datasets` keys its cache of a local folder on this block (and checks each config's row counts with
        # it); keep it when a card is re-rendered
        dataset_info=json.loads(json.dumps(ctx["dataset_info"])) if ctx["dataset_info"] else None,
    )
    remote = ctx.get("repo_card_data")
    if remote is None or not ctx["builder_config"]:
        return data
    # the repo holds the remote card's configs too: its tags, licences ... stay (hub.configs)
    return DatasetCardData(**merge_front_matter(data.to_dict(), _plain(remote)))


DEFAULT_DATASET_TITLE = "Derm-T2IM skin lesions"
DEFAULT_DATASET_TITLES = {"synthetic": "Derm-T2IM synthetic skin lesions",
                          "a1111": "Derm-T2IM skin lesions (AUTOMATIC1111 images)",
                          "real": "Derm-T2IM real dermoscopy (preprocessed)"}


def _dataset_tags(ctx: dict[str, Any]) -> list[str]:
    """Tags that the recorded facts support: `synthetic`/`stable-diffusion` for generated images only, `lora`
    only when adapters were recorded."""
    if ctx["builder_config"] not in ("synthetic", "a1111"):
        return [t for t in DATASET_TAGS if t not in SYNTHETIC_ONLY_TAGS]
    return [t for t in DATASET_TAGS if t != "lora" or ctx["has_adapters"]]


def _clean_configs(configs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Hub's `configs:` block: config_name plus data_files as [{split, path}] (order kept)."""
    cleaned = []
    for config in configs:
        files = [{"split": str(d["split"]), "path": d["path"]} for d in config.get("data_files") or []
                 if isinstance(d, Mapping) and d.get("split") and d.get("path")]
        entry = {"config_name": str(config.get("config_name") or "default"), "data_files": files}
        if config.get("default"):
            entry["default"] = True
        cleaned.append(entry)
    return cleaned


def _generic_card_data(ctx: dict[str, Any], tags: list[str]):
    from huggingface_hub import ModelCardData

    # a folder of data files (the benchmark's metrics and predictions) records its `configs:` block, so that
    # load_dataset(REPO, NAME) finds them whichever command renders the card
    configs = [_plain(c) for c in ctx["f"].get("configs") or [] if isinstance(c, Mapping) and c.get("config_name")]
    configs = configs or image_folder_configs(ctx["stage"])
    extra = {"configs": configs} if configs else {}
    if configs and isinstance(ctx["f"].get("pretty_name"), str):
        extra["pretty_name"] = ctx["f"]["pretty_name"]
    return ModelCardData(license=ctx["license"], tags=list(tags),
                         datasets=_hub_ids(ctx["f"].get("datasets")) or None, **extra)


# Stages that write an image folder (contract 1 and 2: {benign,malignant}/*.png + metadata.jsonl): their card's
# `configs:` block makes load_dataset(FOLDER or REPO) read exactly the images and their metadata rows, never the
# folder's other JSON files (test_exclusion.json, manifest.json) as a split. One split, `images`: the rows'
# own `split` column (preprocess) says train/validation/test.
IMAGE_FOLDER_STAGES = frozenset({"phantoms", "preprocess", "generate"})
IMAGE_FOLDER_SPLIT = "images"


def image_folder_configs(stage: Any) -> list[dict[str, Any]]:
    if stage not in IMAGE_FOLDER_STAGES:
        return []
    return [{"config_name": "default", "data_files": [
        {"split": IMAGE_FOLDER_SPLIT, "path": ["benign/*.png", "malignant/*.png", "metadata.jsonl"]}]}]


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (front matter is dumped with yaml.safe_dump)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _hub_ids(value: Any) -> list[str]:
    """Dataset references that are Hub ids (front matter only takes those); local paths stay in the body."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    ids = [(v.get("id") if isinstance(v, Mapping) else v) for v in value]
    return [i for i in ids if is_remote_hub_id(i)]


_CARD_DATA_BUILDERS = {
    "lora": _lora_card_data,
    "classifier": _classifier_card_data,
    "dataset": _dataset_card_data,
    "results": lambda ctx: _generic_card_data(ctx, RESULTS_TAGS),
    "stage": lambda ctx: _generic_card_data(ctx, ["dermatology", "medical", "dermt2im"]),
}


# ---------------------------------------------------------------------------------------------- rendering


def _render_partials(ctx: dict[str, Any]) -> dict[str, str]:
    environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return {name: environment.from_string(read_template(f"_{name}.md.j2")).render(**ctx).strip()
            for name in PARTIALS}


def build_card(manifest: Mapping[str, Any], kind: str | None = None, repo_id: str | None = None,
               repo_card_data: Mapping[str, Any] | None = None):
    """The ModelCard/DatasetCard for a manifest (no file is read or written).

    Every absolute local path in the manifest (config values, facts, inputs, free text) is cut to its last
    part first, so a public card does not reveal a machine's directory layout. `repo_card_data`: the front
    matter of the card already in the target dataset repo, whose configs the card keeps (hub.configs)."""
    from huggingface_hub import DatasetCard, ModelCard

    banner = run_banner(manifest, card_kind(manifest, kind))  # follows the recorded local folders: before cutting
    manifest = cut_local_paths(manifest)
    kind = card_kind(manifest, kind)
    ctx = _common_context(manifest, kind, repo_id)
    ctx["repo_card_data"] = repo_card_data
    ctx = _CONTEXT_BUILDERS[kind](ctx)
    ctx.update(_render_partials(ctx))
    card_data = _CARD_DATA_BUILDERS[kind](ctx)
    card_class = DatasetCard if kind == "dataset" else ModelCard
    card = card_class.from_template(card_data, template_str=read_template(f"{kind}.md.j2"), **ctx)
    return card_class(_tidy(strip_control(_after_title(str(card), banner))))


def run_banner(manifest: Mapping[str, Any], kind: str) -> str | None:
    """What world the run lives in (demo / real data; tiny or pretrained base; hub.nature), and for a classifier
    whether it started from pretrained weights: a quoted line under the card's title."""
    lines = [run_nature(manifest).sentence()]
    facts = _card_facts(manifest)
    if kind == "classifier" and "pretrained_weights" in facts:
        start = facts["pretrained_weights"]
        lines.append(f"The classifier started from pretrained weights {code(_public_name(start))}." if start
                     else "The classifier was trained from random initialisation (not pretrained).")
    lines = [line for line in lines if line]
    return "\n".join(f"> {line}" + ("  " if i < len(lines) - 1 else "") for i, line in enumerate(lines)) or None


def _after_title(text: str, banner: str | None) -> str:
    """`banner` as the first paragraph under the card's first `# ` heading (after the front matter)."""
    if not banner:
        return text
    match = re.search(r"^# .*$", text.split("\n---\n", 1)[-1], re.MULTILINE)
    if match is None:
        return text
    head, sep, body = text.partition("\n---\n") if text.startswith("---") else ("", "", text)
    start = match.end()
    return f"{head}{sep}{body[:start]}\n\n{banner}\n{body[start:]}"


def _tidy(text: str) -> str:
    """Template conditionals leave runs of blank lines; Markdown needs at most one."""
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def load_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest.json as a mapping, or a CardError saying what is wrong with it."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError as error:
        raise CardError(str(error)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(f"{folder}/manifest.json cannot be read ({type(error).__name__}: {error}); re-run the "
                        "stage that wrote it") from None
    if not isinstance(manifest, Mapping):
        raise CardError(f"{folder}/manifest.json holds a JSON {type(manifest).__name__}, not a stage manifest "
                        "(an object with stage, config, extra ...)")
    return manifest


def render_card(folder: str | os.PathLike, kind: str | None = None, repo_id: str | None = None) -> Path:
    """Write `folder/README.md` from `folder/manifest.json` and return its path.

    `kind` overrides the stage's card kind; `repo_id` (else the fact `repo_id`, else a placeholder) is the id
    the how-to-use snippet loads from."""
    folder = Path(folder)
    if repo_id is not None:
        require_hub_id(repo_id, "--repo-id")
    try:
        card = build_card(load_manifest(folder), kind=kind, repo_id=repo_id)
    except (TypeError, AttributeError, KeyError, ValueError, jinja2.TemplateError) as error:
        if isinstance(error, CardError):
            raise
        raise CardError(f"{folder}/manifest.json: a recorded fact does not have the shape its card needs "
                        f"({type(error).__name__}: {error}); fix or re-run the stage that wrote it") from None
    return atomic_write_text(folder / CARD_NAME, str(card))
