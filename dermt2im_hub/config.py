"""Stage configuration: one dataclass per stage, loaded from YAML plus command-line overrides.

Rules every stage relies on:
- A YAML file is either flat (the stage's own fields) or a whole-recipe file with one section per stage
  (`configs/paper.yaml`); `section=` picks the stage's part.
- Unknown keys are an error that names the key and the known ones (typos never pass silently).
- Values are checked against the field types (int, float, bool, str, lists, dicts, Optional, nested dataclasses).
- Overrides are `key=value` strings (dotted keys reach nested dataclasses; values parse as YAML) or a dict.
- `save_config` writes the resolved config next to an output, so every output says how it was made.

`add_config_arguments` / `config_from_args` turn a config dataclass into argparse options, so every
subcommand's `--help` documents its settings from the field metadata (`field(metadata={"help": ...})`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says what and where."""


class CommandLineText(str):
    """A value typed on the command line (`--option TEXT`, `--set key=TEXT`). It is read as YAML (numbers,
    lists, null) for every field except a string field, which takes the text exactly as typed: a negative
    prompt `yes` stays 'yes', `[blurry]` and `{label}` stay text."""

    def parsed(self) -> Any:
        try:
            return yaml.safe_load(str(self))
        except yaml.YAMLError:
            return str(self)  # not YAML (e.g. "a: b: c"): keep the text as typed


yaml.SafeDumper.add_representer(CommandLineText, lambda dumper, text: dumper.represent_str(str(text)))


def _takes_text(tp) -> bool:
    """A field whose value is text as typed: str, Path, or a Literal of strings (`no` must not become False)."""
    if tp in (str, Path):
        return True
    return typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(tp))


def _finite(number: float, value: Any, where: str) -> float:
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number (NaN and infinity are refused)")
    return number


def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp):
    """(inner type, allows None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        allows_none = len(args) != len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], allows_none
        return tp, allows_none
    return tp, False


def _coerce(value: Any, tp, where: str) -> Any:
    """Check/convert one value against a field type; raise ConfigError naming `where`."""
    inner, allows_none = _unwrap_optional(tp)
    if isinstance(value, CommandLineText):
        if _takes_text(inner):
            # the text as typed; `null` / `~` still clear an optional string on purpose
            return None if allows_none and value.strip() in ("null", "~") else str(value)
        parsed = value.parsed()
        is_list = typing.get_origin(inner) in (list, tuple, Iterable, typing.Sequence) or inner in (list, tuple)
        # a list field given one item (`--seeds 0`) or "a,b": comma-separated items, read below
        value = str(value) if is_list and parsed is not None and not isinstance(parsed, (list, tuple)) else parsed
    if value is None:
        if allows_none or inner is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {_type_name(inner)})")
    if inner is Any:
        if isinstance(value, float):
            _finite(value, value, where)
        return value
    if _is_dataclass_type(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {inner.__name__}, got {value!r}")
        return _build(inner, value, where)
    origin = typing.get_origin(inner)
    if origin in (list, tuple, Iterable, typing.Sequence) or inner in (list, tuple):
        if isinstance(value, str):
            # "a,b,c" on the command line means a list
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(inner)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or inner is tuple) else items
    if origin is dict or inner is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = typing.get_args(inner)
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        allowed = typing.get_args(inner)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(inner):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {inner}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "1", "on", "false", "no", "0", "off"}:
            return value.lower() in {"true", "yes", "1", "on"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value) if isinstance(value, int) else int(as_float)
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
        return _finite(number, value, where)
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if inner is Path:
        return Path(value)
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {unknown[0]!r} in {where} (known keys: {known})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def check_config_data(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """The config `data` builds, or ConfigError for an unknown key or a value of the wrong type (no `validate()`:
    inputs that are filled in later may still be missing)."""
    return _build(cls, data, where)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """`["lora.rank=8", "samplers=[Euler, PLMS]"]` -> nested dict. Values are `CommandLineText`: YAML for
    every field but a string field, which takes the text as typed."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            key, raw = item.split("=", 1)
            items.append((key.strip(), CommandLineText(raw) if raw.strip() else None))
    nested: dict[str, Any] = {}
    for key, value in items:
        parts = key.replace("-", "_").split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict, update: Mapping) -> dict:
    """`update` into `base`, recursively. A mapping with integer keys updates items of a list
    (`run.real_sources.0.images=...` sets the first source's images)."""
    merged = dict(base)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = deep_merge(dict(current), value)
        elif isinstance(value, Mapping) and isinstance(current, list) and all(str(k).isdigit() for k in value):
            items = list(current)
            for index, item_update in value.items():
                index = int(index)
                if index >= len(items):
                    raise ConfigError(f"override {key}.{index}: the list has only {len(items)} item(s)")
                items[index] = deep_merge(dict(items[index]), item_update) if isinstance(
                    item_update, Mapping) and isinstance(items[index], Mapping) else item_update
            merged[key] = items
        else:
            merged[key] = value
    return merged


def select_section(data: Mapping[str, Any], section: str | None) -> dict:
    """A stage's part of a whole-recipe file, or the file itself when it is flat."""
    if section and isinstance(data.get(section), Mapping):
        return dict(data[section])
    return dict(data)


def _typed_leaves(value: Any) -> bool:
    if isinstance(value, Mapping):  # an empty mapping ({} in code) replaces the field: nothing was typed
        return bool(value) and all(_typed_leaves(v) for v in value.values())
    return isinstance(value, CommandLineText)


def _field_defaults_for(cls, data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """`data` plus, for every mapping-valued field that a command-line override reaches into but `data` does not
    give, the field's default: `--set transformations.size.huge.weight=2` then changes one weight of the default
    mapping instead of replacing the whole mapping."""
    if not _is_dataclass_type(cls):
        return dict(data)
    data = dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _type_hints(cls)
    for key, value in overrides.items():
        f = fields.get(key)
        if f is None or not isinstance(value, Mapping):
            continue
        inner, _ = _unwrap_optional(hints[key])
        current = data.get(key)
        if _is_dataclass_type(inner):
            if current is None or isinstance(current, Mapping):
                data[key] = _field_defaults_for(inner, current or {}, value)
            continue
        is_mapping = typing.get_origin(inner) is dict or inner is dict
        # only what was typed (`--set a.b.c=V`) merges; a mapping given in code replaces the field as before
        if is_mapping and current is None and key not in data and _typed_leaves(value):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else (  # type: ignore[misc]
                f.default if f.default is not dataclasses.MISSING else None)
            if isinstance(default, Mapping):
                data[key] = copy.deepcopy(config_to_dict(default))
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Defaults <- YAML file (its `section`, when it has one) <- overrides; validated."""
    data: dict[str, Any] = {}
    where = cls.__name__
    if path is not None:
        data = select_section(read_yaml(path), section)
        where = f"{Path(path).name}" + (f" [{section}]" if section else "")
    parsed = parse_overrides(overrides)
    data = deep_merge(_field_defaults_for(cls, data, parsed), parsed)
    config = _build(cls, data, where)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def config_to_dict(config: Any) -> dict:
    """Plain YAML/JSON-safe dict (Paths become strings, tuples lists)."""

    def clean(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return clean(config)


def save_config(config: Any, path: str | Path) -> Path:
    from dermt2im_hub.utils.files import atomic_write_text

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
    return atomic_write_text(path, text)


# ---------------------------------------------------------------- argparse integration


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: Iterable[str] = ()):
    """One `--option` per config field (nested dataclasses as `--group.option`), all defaulting to None
    so that only options the user typed override the YAML file. Help text comes from field metadata."""
    skip = set(skip)
    hints = _type_hints(cls)
    group = parser if prefix else parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        name = prefix + f.name
        tp, _ = _unwrap_optional(hints[f.name])
        if _is_dataclass_type(tp):
            add_config_arguments(group, tp, prefix=name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_text = f.metadata.get("help", "")
        if isinstance(default, list) and any(dataclasses.is_dataclass(item) for item in default):
            default = [config_to_dict(item) for item in default]  # as it is written in YAML, not the repr
        if default is None and "default" in help_text.lower():
            pass  # the help already says what an unset value means ("default: the one inside ...")
        else:
            help_text = f"{help_text} (default: {default!r})" if help_text else f"default: {default!r}"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help: "10% larger" would garble it
        dest = "cfg__" + name.replace(".", "__")
        if tp is bool:
            group.add_argument(_flag(name), dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(_flag(name), dest=dest, default=None, metavar=f.name.upper(), help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Options the user actually gave, as dotted keys; string values parse as YAML scalars."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("cfg__") or value is None:
            continue
        key = dest[len("cfg__"):].replace("__", ".")
        if isinstance(value, str) and not isinstance(value, CommandLineText):
            value = CommandLineText(value)  # "null" / "~" set a field to None on purpose
        elif isinstance(value, list):
            value = [CommandLineText(v) if isinstance(v, str) else v for v in value]
        out[key] = value
    return out


def config_from_args(cls: type[T], args: argparse.Namespace, section: str | None = None) -> T:
    """YAML from `args.config` (if any) <- `--set key=value` items <- explicit `--options`."""
    overrides = parse_overrides(getattr(args, "set", None) or [])
    overrides = deep_merge(overrides, parse_overrides(overrides_from_args(args)))
    return load_config(cls, getattr(args, "config", None), overrides, section=section)


def add_common_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config file (flat, or a recipe with a "
                        "section per stage such as configs/paper.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (dotted for nested keys); repeatable")
