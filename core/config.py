"""Typed dataclass configs: validation that names the bad field, JSON round trips.

Every config in modaflow is a ``@dataclass`` that inherits :class:`Config`. Each field has a
docstring (a string literal right below it, as in litgpt); :func:`field_docs` reads them so
the CLI can show them as ``--help``. YAML/JSON are only serialisations: :meth:`Config.from_dict`
rejects unknown keys and wrong types with an error that names the field, and no config is
ever built by ``exec``/``eval``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from .io import atomic_write_text

__all__ = ["Config", "ConfigError", "field_docs"]

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config field is missing, unknown, of the wrong type or out of range."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints are accepted for
    floats, lists for tuples, dicts for nested configs). Raise ``ConfigError`` naming
    ``where`` otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where}: expected a sequence ({_type_name(tp)}), got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value, where=where)
        raise ConfigError(f"{where}: expected a {tp.__name__} mapping, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a bool, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass
class Config:
    """Base class of every typed config. Subclasses are dataclasses; they override
    :meth:`validate` to check ranges (raise :class:`ConfigError` naming the field).
    Types are checked on construction."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], where))
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError` naming the bad field."""

    def _require(self, ok: bool, name: str, expected: str) -> None:
        """Raise ``ConfigError`` for field ``name`` (``fm.path``: a nested config's field) unless ``ok``."""
        if not ok:
            value = self
            for part in name.split("."):
                value = getattr(value, part)
            raise ConfigError(f"{type(self).__name__}.{name}: expected {expected}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], where: str | None = None) -> C:
        """Build from a mapping; unknown or missing keys raise ``ConfigError`` naming them."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {unknown}; known fields are {sorted(names)}"
            )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ]
        if missing:
            raise ConfigError(f"{where}: missing required field(s) {missing}")
        hints = _hints(cls)
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self, path: str | Path) -> None:
        """Write as JSON, atomically (temp file + rename)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        """Read a config written by :meth:`to_json`; errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal below each field), for
    ``--help``. Inherited fields are included; a field without a docstring maps to ``""``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        stmts = body.body
        for node, nxt in zip(stmts, stmts[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}
