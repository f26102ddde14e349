"""The type-driven validator behind `spec`: frozen dataclasses' annotations are the schema.

A field's YAML key is the camelCase of its name unless `metadata["key"]` says otherwise; fields marked
`metadata["internal"]` are ours and never parsed. Also the YAML loader: YAML 1.2 booleans (only true/false, as
Go's yaml.v3 reads them) and duplicate keys refused with their line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

__all__ = ["Invalid", "Loader", "kind_of", "parse_object", "to_json"]


class Invalid(Exception):
    """A validation failure at `path` (joined to the message as `path: message`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)


_FIELDS: dict[type, list[tuple[str, str, Any, dataclasses.Field[Any]]]] = {}


def _fields(cls: type) -> list[tuple[str, str, Any, dataclasses.Field[Any]]]:
    """(yaml key, attribute, type, field) for each parsed field of a dataclass (computed once per class)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            head, *rest = f.name.split("_")
            key = f.metadata.get("key") or head + "".join(w.capitalize() for w in rest)
            out.append((key, f.name, hints[f.name], f))
        _FIELDS[cls] = out
    return _FIELDS[cls]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if origin is tuple:
        return "a list"
    return "a mapping"


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _matches(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is str:
        return isinstance(value, str)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list)
    return isinstance(value, dict)  # Mapping, dict or a dataclass


def _parse(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        for option in options:
            if _matches(option, value):
                return _parse(option, value, path)
        wanted = " or ".join(_describe(o) for o in options)
        hint = ' (quote octal modes: "0644")' if path.endswith("mode") and isinstance(value, int) else ""
        raise Invalid(path, f"expected {wanted}, got {kind_of(value)}{hint}")
    if not _matches(tp, value):
        hint = ' (quote octal modes: "0644")' if path.endswith("mode") and isinstance(value, int) else ""
        raise Invalid(path, f"expected {_describe(tp)}, got {kind_of(value)}{hint}")
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        return tuple(_parse(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict):
        val_tp = typing.get_args(tp)[1]
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise Invalid(path, f"keys must be strings, got {kind_of(k)} {k!r}")
            out[k] = v if val_tp is Any else _parse(val_tp, v, f"{path}.{k}")
        return types.MappingProxyType(out) if origin is Mapping else out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return parse_object(tp, value, path)
    return value


def parse_object(cls: type, value: dict[Any, Any], path: str, *, skip: Iterable[str] = ()) -> Any:
    known = {key: (attr, tp, f) for key, attr, tp, f in _fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key in skip:
            continue
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=1)
            raise Invalid(where, "unknown key" + (f" (did you mean {near[0]!r}?)" if near else ""))
        attr, tp, _ = known[key]
        kwargs[attr] = _parse(tp, v, where)
    for key, (attr, _, f) in known.items():
        if attr not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise Invalid(f"{path}.{key}" if path else key, "required")
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """A parsed dataclass back to YAML/JSON form (YAML keys; unset and default fields left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for key, attr, _, f in _fields(type(obj)):
            v = getattr(obj, attr)
            if v is None or (f.default is not dataclasses.MISSING and v == f.default):
                continue
            out[key] = to_json(v)
        return out
    if isinstance(obj, tuple | list):
        return [to_json(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


class Loader(yaml.SafeLoader):
    """YAML 1.2-style booleans (only true/false, like Go's yaml.v3) and duplicate keys refused."""


Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_mapping(loader: Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
