"""Several builder configs in one dataset repo: where a built folder's files go, and how its card merges.

A `dermt2im build-dataset` folder holds one builder config (synthetic, a1111 or real) with everything of it
under `data/<config>/` (dermt2im_hub.dataset.layout). Pushed to a dataset repo (through the publishing gate):

- README.md goes to the root; files under `data/<config>/` keep their path; every other file of the folder
  (manifest.json, config.yaml ...) goes under `data/<config>/` too, so two configs never write the same file;
- the push replaces exactly the remote files under `data/<config>/` (`delete_patterns`): re-pushing `synthetic`
  leaves `real`'s files alone;
- the card's `configs:` and `dataset_info` blocks are merged with the remote README's: remote configs are
  kept, except those of the same name and those reading only files under `data/<config>/` (the push replaces
  those files); the remote default stays the default, else the pushed config's is; exactly one is default.
  The front matter's lists (tags, licences, annotation creators, task and size categories, source datasets)
  become the union of both cards' (the repo holds both configs) and the repo keeps its pretty_name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONFIG_NAMES = ("synthetic", "a1111", "real")  # dermt2im_hub.dataset.config.CONFIG_NAMES (hub cannot import it)
DATA_DIR = "data"
CARD_NAME = "README.md"


def config_prefix(config_name: str) -> str:
    if config_name not in CONFIG_NAMES:  # it becomes a repo path: only the known names
        raise ValueError(f"unknown builder config {config_name!r}; expected one of {', '.join(CONFIG_NAMES)}")
    return f"{DATA_DIR}/{config_name}/"


def repo_path(path: str, config_name: str) -> str:
    """Where a file of a built folder (repo-relative path) goes in a repo holding several configs."""
    prefix = config_prefix(config_name)
    return path if path == CARD_NAME or path.startswith(prefix) else prefix + path


def replaced_patterns(config_name: str) -> list[str]:
    """The remote files a push of `config_name` replaces (upload_folder's delete_patterns; `*` crosses `/`)."""
    return [config_prefix(config_name) + "*"]


def _data_paths(config: Mapping[str, Any]) -> list[str]:
    """Every path pattern a `configs:` entry reads (data_files: a string, a list, or [{split, path}])."""
    files = config.get("data_files")
    items = files if isinstance(files, list) else [files]
    paths: list[str] = []
    for item in items:
        value = item.get("path") if isinstance(item, Mapping) else item
        paths.extend(str(p) for p in (value if isinstance(value, list) else [value]) if p)
    return paths


def _replaced(config: Mapping[str, Any], names: set[str], prefix: str) -> bool:
    paths = _data_paths(config)
    return config.get("config_name", "default") in names or bool(paths) and all(p.startswith(prefix) for p in paths)


def merge_configs(ours: list[dict[str, Any]], theirs: Any, config_name: str) -> list[dict[str, Any]]:
    """The merged `configs:` block (module doc): the remote order, the pushed configs in the place of the first
    one they replace (else at the end), one default."""
    prefix = config_prefix(config_name)
    names = {c["config_name"] for c in ours}
    remote = [dict(c) for c in (theirs if isinstance(theirs, list) else []) if isinstance(c, Mapping)]
    kept_default = any(c.get("default") and not _replaced(c, names, prefix) for c in remote)
    ours = [{k: v for k, v in c.items() if k != "default" or not kept_default} for c in ours]
    merged: list[dict[str, Any]] = []
    for config in remote:
        if not _replaced(config, names, prefix):
            merged.append(config)
        elif ours:
            merged.extend(ours)
            ours = []
    merged.extend(ours)
    defaults = [i for i, c in enumerate(merged) if c.get("default")]
    for index in defaults[1:]:  # a remote card with several defaults: the first one stays
        merged[index].pop("default")
    if not defaults and merged:
        merged[0]["default"] = True
    return merged


def as_info_list(info: Any) -> list[dict[str, Any]]:
    """A `dataset_info` block as a list of per-config entries (a single mapping is the `default` config's unless it
    names one)."""
    if isinstance(info, Mapping):
        return [{"config_name": "default", **info}]
    return [dict(i) for i in info if isinstance(i, Mapping)] if isinstance(info, list) else []


def merge_dataset_info(ours: Any, theirs: Any, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-config `dataset_info` entries of the merged configs: ours for the pushed configs, the remote ones for
    the configs kept, in the configs' order."""
    entries = {i.get("config_name", "default"): i for i in as_info_list(theirs)}
    entries.update({i.get("config_name", "default"): i for i in as_info_list(ours)})
    return [entries[c["config_name"]] for c in configs if c.get("config_name") in entries]


def config_rows(configs: list[dict[str, Any]], info: list[dict[str, Any]],
                recorded: Mapping[str, Mapping[str, int]] | None = None) -> list[dict[str, Any]]:
    """One row per config for the card's table: name, default, rows per split (from dataset_info, else the
    counts this build recorded, else None) and the paths it reads."""
    by_name = {i.get("config_name", "default"): i for i in info}
    rows = []
    for config in configs:
        name = config.get("config_name", "default")
        splits = by_name.get(name, {}).get("splits")
        counts = ({s["name"]: s.get("num_examples") for s in splits if isinstance(s, Mapping) and "name" in s}
                  if isinstance(splits, list) else None) or (dict((recorded or {}).get(name) or {}) or None)
        rows.append({"config_name": name, "default": bool(config.get("default")), "rows": counts,
                     "paths": _data_paths(config)})
    return rows


# front-matter keys that describe the repo's data as a whole: a push adds its values to the remote card's
UNION_KEYS = ("license", "tags", "annotations_creators", "task_categories", "size_categories", "source_datasets")


def merge_front_matter(ours: dict[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """Our card's front matter with the remote card's values of UNION_KEYS added (remote first, no duplicates;
    a single value stays a string when both cards agree), the remote pretty_name and the remote keys ours lacks
    (a language someone added by hand ...) kept. configs and dataset_info are merged beforehand."""
    merged = {**{k: v for k, v in theirs.items() if k not in ("configs", "dataset_info")}, **ours}
    for key in UNION_KEYS:
        values: list[Any] = []
        for value in (theirs.get(key), ours.get(key)):
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item and item not in values:
                    values.append(item)
        if values:
            merged[key] = values[0] if key == "license" and len(values) == 1 else values
    if isinstance(theirs.get("pretty_name"), str) and theirs["pretty_name"]:
        merged["pretty_name"] = theirs["pretty_name"]
    return merged
