"""YAML configs validated into typed dataclasses.

:func:`build` turns a mapping (from :func:`load_yaml`) into a possibly nested dataclass, checking every
field against its type annotation. A bad field raises :class:`~onn_core.errors.ConfigError` naming its
dotted YAML path (``camera.exposure_s``), the value found and what was expected. Supported annotations:
``int``, ``float``, ``str``, ``bool``, ``Any``, ``Literal[...]``, ``Optional[X]`` / ``X | None``,
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]``, ``torch.Tensor`` (from nested lists
of numbers, float64; written back as lists by :func:`to_plain`) and nested dataclasses. Errors raised
by a dataclass's own ``__post_init__`` checks (``InputError``/``ValueError``) are re-raised as
``ConfigError`` at that dataclass's path. Numbers written like ``10e-3`` (which YAML 1.1 reads as strings) are accepted
for ``float`` fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import sys

import yaml

from .errors import ConfigError, InputError
from .files import atomic_write


def load_yaml(path) -> dict:
    """Read a YAML file whose top level is a mapping (``yaml.safe_load``)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:  # parsing the file (not its text) puts its name in error marks
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(str(path), None, f"a readable YAML file ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, "a mapping at the top level")
    return data


def save_yaml(data, path) -> None:
    """Write ``data`` (a dataclass or plain mapping) as YAML, atomically."""
    with atomic_write(path, "w") as fh:
        yaml.safe_dump(to_plain(data), fh, sort_keys=False)


def to_plain(obj):
    """Dataclasses, tuples, tensors and paths -> plain dicts, lists and strings for ``yaml.safe_dump``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if _is_tensor(obj):
        return obj.tolist()
    return obj


def build(cls, mapping, path: str = ""):
    """Validate ``mapping`` into an instance of dataclass ``cls``; ``path`` prefixes error locations."""
    if not isinstance(mapping, dict):
        raise ConfigError(path or "<root>", mapping, f"a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(_join(path, unknown[0]), mapping[unknown[0]], f"one of the known fields {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        where = _join(path, name)
        if name in mapping:
            kwargs[name] = _convert(mapping[name], hints[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(where, None, f"a value (required field of {cls.__name__})")
    try:
        return cls(**kwargs)
    except (InputError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(path or "<root>", mapping, str(exc)) from exc


def _join(path: str, name) -> str:
    return f"{path}.{name}" if path else str(name)


def _convert(value, hint, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(exc.expected)
        raise ConfigError(where, value, " or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(where, value, f"one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, value, f"a list ({_describe(hint)})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(where, value, f"a list of {len(args)} items ({_describe(hint)})")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, value, f"a mapping ({_describe(hint)})")
        vt = args[1] if args else Any
        return {k: _convert(v, vt, _join(where, k)) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, value, "an integer")
        return value
    if hint is float:
        return _to_float(value, where)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(where, value, "a string")
        return value
    if _is_tensor_type(hint):
        torch = sys.modules["torch"]
        try:
            return torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(where, value, "a (nested) list of numbers") from None
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(where, value, "a path string")
        return Path(value)
    raise TypeError(f"config annotation {hint!r} at {where} is not supported by onn_core.config.build")


def _to_float(value, where: str) -> float:
    # PyYAML (YAML 1.1) reads ``10e-3`` -- no dot -- as a string; SI configs are full of such values.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(where, value, "a number")


def _describe(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# torch is not imported here (a lab machine that drives a camera does not need it): a tensor can only
# reach these functions, and ``torch.Tensor`` can only be an annotation, once torch has been imported.
def _is_tensor(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_tensor_type(hint) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and hint is torch.Tensor
