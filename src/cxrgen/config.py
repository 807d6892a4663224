"""Typed configs: dataclasses with a help string per field, filled from defaults, then a YAML file, then flags.

A command's config is a dataclass whose fields carry `option(default, help)`. Nested dataclasses become
groups: the field `prompts.max_tokens` is `prompts: {max_tokens: ...}` in YAML and `--prompts.max-tokens` on the
command line. Validation lives in each dataclass's `__post_init__` and raises `ConfigError` naming the fix.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is wrong; the message says which and what to do."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = None,
    positional: bool = False,
    path: bool = False,
) -> Any:
    """A config field with a help string. Lists get a fresh copy per instance; `factory` builds nested configs;
    `positional` makes it a positional command-line argument (`cxrgen report DIR`); `path` marks a local path (or a
    hub id), which outputs record relative to themselves (see `to_dict`)."""
    meta = {"help": help, "positional": positional, "path": path}
    if factory is None and isinstance(default, list | dict):
        factory = lambda value=default: copy.deepcopy(value)  # noqa: E731
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", description: str | None = None) -> None:
    """Add one flag per field of `cls` (recursively for nested dataclasses). Defaults are suppressed so that
    only flags given on the command line override the YAML file."""
    hints = _hints(cls)
    group = parser if not prefix else parser.add_argument_group(prefix.rstrip("."), description)
    for f in dataclasses.fields(cls):
        tp, optional = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_arguments(parser, tp, prefix + f.name + ".", f.metadata.get("help"))
            continue
        kwargs: dict[str, Any] = {
            "dest": prefix + f.name,
            "default": argparse.SUPPRESS,
            "metavar": f.name.upper(),
        }
        help_text = f.metadata.get("help", "")
        default = _default_of(f)
        if default is not None and default != [] and not isinstance(default, bool):
            help_text += f" (default: {default})"
        kwargs["help"] = help_text.replace("%", "%%")  # argparse formats help with %: "~30%" must stay text
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            del kwargs["metavar"]
        elif origin is list:
            (item,) = get_args(tp)
            kwargs["nargs"] = "*"
            _set_scalar(kwargs, item)
        else:
            _set_scalar(kwargs, tp)
        if optional and tp is not bool and origin is not list:
            kwargs["type"] = _none_or(kwargs.get("type", str))
        if "choices" in kwargs:
            kwargs.pop("metavar", None)
        if f.metadata.get("positional"):
            kwargs.pop("dest")
            group.add_argument(prefix + f.name, nargs="?", **kwargs)
            continue
        flags = [_flag(prefix, f.name)]
        if prefix and f.name == "enabled" and tp is bool:  # a group that is off by default: --utility for short
            flags.append(_flag("", prefix.rstrip(".")))
        group.add_argument(*flags, **kwargs)


def _none_or(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _set_scalar(kwargs: dict[str, Any], tp: Any) -> None:
    if get_origin(tp) is Literal:
        kwargs["choices"] = list(get_args(tp))
        kwargs["type"] = type(get_args(tp)[0])
    elif tp in (int, float, str):
        kwargs["type"] = tp
    elif tp is Path:
        kwargs["type"] = str
    else:
        kwargs["type"] = str


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return None if dataclasses.is_dataclass(value) else value
    return None


def namespace_to_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line, as {dotted.name: value}. Parser-internal entries start with '_'."""
    return {k: v for k, v in vars(ns).items() if not k.startswith("_")}


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


# settings that moved in 0.2 (issue 14): a YAML file or script written before gets the new name, not a guess
RENAMED = {
    "image.size": "image.resolution",
    "size": "resolution",
    "captions": "folder.captions",
    "labels_csv": "mimic.labels_csv",
    "split_csv": "mimic.split_csv",
    "sections_csv": "mimic.sections_csv",
    "patients_csv": "mimic.patients_csv",
    "report_section": "mimic.report_section",
    "uncertain": "mimic.uncertain (or chexpert.uncertain)",
    "bootstrap": "fidelity.groups",
    "fidelity.bootstrap": "fidelity.groups",  # issue 15: a jackknife's groups, not bootstrap rounds
    "prdc_k": "fidelity.prdc_k",
    "per_prompt": "diversity.per_prompt",
    "diversity_pairs": "diversity.pairs",
    "memorization_margin": "memorization.margin",
    "forgetting_images": "forgetting.images",
    "forgetting_steps": "forgetting.steps",
    "forgetting": "forgetting.enabled",  # was a switch, now a group
}
# settings that are gone, with why
RETIRED = {
    name: "KID is now computed over all pairs of images, without subsets"
    for name in ("kid_subsets", "kid_subset_size", "fidelity.kid_subsets", "fidelity.kid_subset_size")
}


def build(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Construct `cls` from nested plain values, checking names and types with messages that name the fix."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            if where + name in RENAMED:
                new = RENAMED[where + name]
                raise ConfigError(f"setting '{where}{key}' is now '{new}' (--{new.split(' ')[0].replace('_', '-')})")
            if where + name in RETIRED:
                raise ConfigError(f"setting '{where}{key}' is gone: {RETIRED[where + name]}")
            close = difflib.get_close_matches(name, list(fields), n=3)
            hint = f"; did you mean {', '.join(where + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown setting '{where}{key}'{hint}")
        tp, optional = _strip_optional(hints[name])
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                moved = f" ('{where}{name}' is now '{RENAMED[where + name]}')" if where + name in RENAMED else ""
                raise ConfigError(f"setting '{where}{name}' must be a mapping of settings{moved}")
            kwargs[name] = build(tp, value, where + name + ".")
        else:
            kwargs[name] = _coerce(value, tp, optional, where + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [n for n, f in fields.items() if n not in kwargs and _is_required(f)]
        if missing:
            flags = ", ".join(m.upper() if fields[m].metadata.get("positional") else _flag(where, m) for m in missing)
            raise ConfigError(f"missing required setting(s): {flags}") from exc
        raise


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]


def _coerce(value: Any, tp: Any, optional: bool, name: str) -> Any:
    if value is None:
        if optional:
            return None
        raise ConfigError(f"setting '{name}' may not be empty")
    origin = get_origin(tp)
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, str | int | float):
            value = [value]
        if optional and [str(v).lower() for v in value] in ([], ["all"], ["none"]):
            return None  # an optional list filter given as empty, 'all' or 'none' means: no restriction
        return [_coerce(v, item, False, name) for v in value]
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"setting '{name}' is {value!r}; choose one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"setting '{name}' must be true or false, not {value!r}")
        return value
    if tp in (int, float):
        try:
            number = tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting '{name}' must be a number, not {value!r}") from exc
        if tp is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"setting '{name}' must be a whole number, not {value!r}")
        return number
    if tp in (str, Path):
        return str(value)
    return value


def load(
    cls: type[T],
    config_file: str | Path | None,
    overrides: dict[str, Any],
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults, then `base` (a preset), then the YAML file, then command-line overrides ({dotted.name: value})."""
    values = merge(base or {}, read_yaml(config_file) if config_file else {})
    return build(cls, merge(values, nest(overrides)))


def to_dict(config: Any, relative_to: str | Path | None = None) -> dict[str, Any]:
    """A plain, YAML/JSON-ready copy of a config. With `relative_to` (the output folder that records it), the
    local paths of path fields are written relative to that folder, so shared outputs do not tell the user's
    directory layout and still lead to their inputs when moved together."""
    plain = dataclasses.asdict(config)
    if relative_to is not None:
        _relative_paths(config, plain, Path(relative_to))
    return plain


def _relative_paths(config: Any, plain: dict[str, Any], root: Path) -> None:
    from .provenance import portable

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _relative_paths(value, plain[f.name], root)
        elif f.metadata.get("path") and isinstance(value, str):
            plain[f.name] = portable(value, root)
        elif f.metadata.get("path") and isinstance(value, list):
            plain[f.name] = [portable(v, root) if isinstance(v, str) else v for v in value]


def with_groups(cls: type[T], groups: dict[str, tuple[type, str]]) -> type[T]:
    """`cls` with one nested settings group per entry (name -> (dataclass, help)): how registered parts (release
    readers, training methods, metrics) bring their own options, as `--<name>.<option>` flags and YAML mappings."""
    fields = [(name, tp, option(factory=tp, help=help)) for name, (tp, help) in groups.items()]
    made = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    made.__module__, made.__qualname__ = cls.__module__, cls.__qualname__
    made.__doc__ = cls.__doc__
    return made


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' (0-based shard i of n) as (i, n); None is the whole job, (0, 1)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "0/1")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard must be 'i/n' with 0 <= i < n (e.g. 0/4), not {text!r}")
    return int(m.group(1)), int(m.group(2))


def check_fraction(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, not {value}")
