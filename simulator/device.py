"""The compute device a config asks for: ``auto`` (CUDA when available, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``; asking for CUDA where there is none is refused naming the config field."""

from __future__ import annotations

import torch

from onn_core.errors import ConfigError

#: What a ``device`` field may say.
DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def check_device_name(name, field: str = "device") -> str:
    """``name`` if it is one of :data:`DEVICE_CHOICES` (:class:`ConfigError` naming ``field`` otherwise)."""
    if not isinstance(name, str) or not (name in ("auto", "cpu", "cuda") or
                                         (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(field, name, DEVICE_CHOICES)
    return name


def resolve_device(name, field: str = "device") -> torch.device:
    """The device ``name`` asks for (``auto``: CUDA if :func:`torch.cuda.is_available`, else the CPU); a
    CUDA device where none is available is refused with a :class:`ConfigError` naming ``field``."""
    name = check_device_name(name, field)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(field, name, "'cpu' or 'auto' (no CUDA device is available here)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(field, name, f"a CUDA device index below {torch.cuda.device_count()}")
    return torch.device(name)


__all__ = ["DEVICE_CHOICES", "check_device_name", "resolve_device"]
