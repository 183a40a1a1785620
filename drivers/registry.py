"""Backends by name: a built-in table plus third-party backends found through entry points.

A backend is a :class:`~drivers.camera.Camera` or :class:`~drivers.slm.SLM` subclass (or another
:class:`~drivers.device.Device`) named in a bench config (``camera: {backend: opencv, ...}``). Names map to
``"module:Class"`` strings and are imported only when used, so a backend with a missing optional
dependency does not break the others.

Third-party packages add backends with an entry point in the group :data:`ENTRY_POINT_GROUP`; in their
``setup.cfg``::

    [options.entry_points]
    onn_hil.drivers =
        mycam = my_package.camera:MyCamera

or ``pyproject.toml``: ``[project.entry-points."onn_hil.drivers"]`` ``mycam = "my_package.camera:MyCamera"``.
Built-in names win over entry points of the same name (a warning is logged).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import metadata

from .errors import DeviceNotFound

log = logging.getLogger(__name__)

#: Entry-point group through which installed packages add backends.
ENTRY_POINT_GROUP = "onn_hil.drivers"

#: Built-in backends: name -> "module:Class". Backends in this package are added HERE (one line
#: each, lazily imported); external packages use the entry-point group instead.
BUILTIN_BACKENDS: dict[str, str] = {
    "simulated-camera": "drivers.simulated:SimulatedCamera",
    "simulated-slm": "drivers.simulated:SimulatedSLM",
    "opencv": "drivers.opencv_camera:OpenCVCamera",
    "display": "drivers.display_slm:DisplaySLM",
    "serial-light": "drivers.serial_devices:SerialLightSource",
    "slmsuite-camera": "drivers.slmsuite_adapter:SlmsuiteCamera",
    "slmsuite-slm": "drivers.slmsuite_adapter:SlmsuiteSLM",
}

#: Backends registered at run time with :func:`register_backend` (tests, bench scripts).
_RUNTIME_BACKENDS: dict[str, object] = {}


@dataclass(frozen=True)
class BackendInfo:
    """Where a backend comes from: ``target`` ("module:Class") and ``source`` ("builtin",
    "runtime" or "entry point (distribution)")."""

    name: str
    target: str
    source: str


def _target_of(obj) -> str:
    return obj if isinstance(obj, str) else f"{obj.__module__}:{obj.__qualname__}"


def available_backends() -> dict[str, BackendInfo]:
    """Every backend name known now, without importing any backend module."""
    found: dict[str, BackendInfo] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found[ep.name] = BackendInfo(ep.name, ep.value, f"entry point ({dist.name if dist else 'unknown'})")
    for name, target in BUILTIN_BACKENDS.items():
        if name in found:
            log.warning("entry point %r (%s) is shadowed by the built-in backend of that name", name, found[name].target)
        found[name] = BackendInfo(name, target, "builtin")
    for name, obj in _RUNTIME_BACKENDS.items():
        found[name] = BackendInfo(name, _target_of(obj), "runtime")
    return dict(sorted(found.items()))


def register_backend(name: str, target, *, replace: bool = False) -> None:
    """Add a backend at run time: ``target`` is a class or a ``"module:Class"`` string."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if not replace and (name in BUILTIN_BACKENDS or name in _RUNTIME_BACKENDS):
        raise ValueError(f"backend {name!r} is already registered (pass replace=True to replace it)")
    _RUNTIME_BACKENDS[name] = target


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend` (no-op if absent)."""
    _RUNTIME_BACKENDS.pop(name, None)


def import_target(target: str, *, name: str = "") -> type:
    """Import ``"module:Class"``; failures raise :class:`DeviceNotFound` chained to the ImportError."""
    module_name, _, attr = target.partition(":")
    label = f"backend {name!r} ({target})" if name else target
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except ImportError as exc:
        raise DeviceNotFound(f"{label} cannot be imported: {exc}") from exc
    except AttributeError as exc:
        raise DeviceNotFound(f"{label}: module {module_name!r} has no {attr!r}") from exc
    if not attr or not isinstance(obj, type):
        raise DeviceNotFound(f"{label} is not a class ('module:Class' expected)")
    return obj


def load_backend(name: str) -> type:
    """The backend class registered as ``name``.

    Raises
    ------
    DeviceNotFound
        No backend of that name (the message lists the known ones), or its module cannot be imported
        (chained to the ImportError, e.g. a missing optional dependency).
    """
    obj = _RUNTIME_BACKENDS.get(name)
    if obj is not None and not isinstance(obj, str):
        return obj
    backends = available_backends()
    if name not in backends:
        raise DeviceNotFound(f"no backend named {name!r}; known backends: {', '.join(backends) or 'none'}")
    return import_target(backends[name].target, name=name)
