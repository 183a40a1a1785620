"""Opening devices and benches from YAML.

A bench config names a backend per device, with its settings, plus the clock and the bench's retry
policy::

    clock: real                # or virtual (simulated devices only: nothing waits for real)
    bench: {retries: 3, timeout_s: 1.0}
    slm:
      backend: simulated-slm   # a name from `hil devices` (the default: simulated)
      shape: [64, 64]
      settle_s: 5e-3
    camera:
      backend: simulated-camera
      exposure_s: 10e-3
      optics: optics.yaml      # the optical system; relative paths are relative to this file
      roi: {offset: [100, 200], size: [512, 640]}   # optional: (row, col) and (rows, cols) on the sensor
      locate: grid.yaml        # optional: frames resampled into the design frame located by `hil locate`

Every camera backend takes ``camera.roi`` (:class:`RegionOfInterest`): frames then hold that part of the
sensor only, set on the device where the backend can and cropped in software otherwise
(:attr:`drivers.camera.Camera.roi`); a region outside the sensor is refused naming ``camera.roi``.
``camera.locate`` names a `hil locate` file (relative to this file): the camera then delivers the
design's frame, resampled from the located grid (:mod:`drivers.located`); a ``roi`` that does not hold
the grid is refused naming ``camera.roi``.

An optional ``light:`` section opens a light source (a backend of kind ``light-source``, e.g.
``{backend: serial-light, url: /dev/ttyUSB0}``) that the bench closes with the rest (its shutter
closes then).

The SLM is opened first, then the camera (which may need it: a simulated camera looks at the simulated
SLM), then the light. A bad field raises :class:`~onn_core.errors.ConfigError` naming its YAML path
(``camera.exposure_s``); if a device fails to open, the ones opened before are closed again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onn_core.config import build, load_yaml, to_plain
from onn_core.errors import ConfigError

from .device import Device, OpenContext, config_errors
from .bench import Bench
from .clock import Clock, make_clock
from .errors import DeviceNotFound
from .located import load_location, locate_camera
from .registry import available_backends, load_backend

#: Backend used for a device whose config names none.
DEFAULT_BACKENDS = {"slm": "simulated-slm", "camera": "simulated-camera"}


@dataclass
class RegionOfInterest:
    """``camera.roi``: the part of the sensor that frames hold, in sensor pixels.

    Attributes
    ----------
    offset : (int, int)
        (row, col) of its top-left pixel.
    size : (int, int)
        (rows, cols).
    """

    offset: tuple[int, int]
    size: tuple[int, int]

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """``(row0, col0, rows, cols)`` as :attr:`drivers.camera.Camera.roi` takes it."""
        return (*self.offset, *self.size)


def apply_roi(camera, spec, path: str = "camera.roi") -> None:
    """Set ``camera.roi`` from its YAML mapping ``spec`` (:class:`RegionOfInterest`); a region that does
    not fit the sensor raises :class:`ConfigError` naming ``path``."""
    region = build(RegionOfInterest, spec, path)
    try:
        camera.roi = region.roi
    except ValueError as exc:
        rows, cols = camera.sensor_shape
        raise ConfigError(path, spec, f"a region inside the camera's {rows} x {cols} sensor "
                          f"(offset >= 0, offset + size <= [{rows}, {cols}], size >= 1): {exc}") from exc


@dataclass
class BenchSettings:
    """The ``bench:`` section: retries after transient failures, per-frame timeout (s), stale reads."""

    retries: int = 3
    timeout_s: float | None = None
    max_stale_reads: int = 4


@dataclass
class BenchConfig:
    """A whole bench config (the device sections are validated by their backends)."""

    slm: dict[str, Any] = field(default_factory=dict)
    camera: dict[str, Any] = field(default_factory=dict)
    light: dict[str, Any] | None = None
    clock: Literal["real", "virtual"] = "real"
    bench: BenchSettings = field(default_factory=BenchSettings)


def load_bench_config(config) -> tuple[BenchConfig, Path]:
    """Validate a bench config given as a YAML path, a mapping or a :class:`BenchConfig`.

    Returns the config and the folder relative paths are resolved against.
    """
    if isinstance(config, BenchConfig):
        return config, Path.cwd()
    if isinstance(config, (str, Path)):
        path = Path(config)
        data = load_yaml(path)
        if not data:
            raise ConfigError(str(path), data, "a bench config with slm and camera sections (the file is empty)")
        return build(BenchConfig, data, ""), path.resolve().parent
    if isinstance(config, dict):
        return build(BenchConfig, config, ""), Path.cwd()
    raise ConfigError("<root>", type(config).__name__, "a YAML file path, a mapping or a BenchConfig")


def open_device(kind: str, settings: dict, context: OpenContext, path: str | None = None, *,
                located: bool = True) -> Device:
    """Open one device of role ``kind`` ("slm", "camera", "light-source") from its settings mapping.

    ``settings["backend"]`` names the backend (default :data:`DEFAULT_BACKENDS`); the rest goes to the
    backend's :meth:`~drivers.device.Device.from_config`. ``path`` (default ``kind``) prefixes errors.
    A camera's ``roi`` is set after it opened (:func:`apply_roi`); its ``locate`` file, unless
    ``located`` is False, makes it a :class:`~drivers.located.LocatedCamera`.
    """
    path = path or kind
    if not isinstance(settings, dict):
        raise ConfigError(path, settings, "a mapping of device settings")
    settings = dict(settings)
    name = settings.pop("backend", DEFAULT_BACKENDS.get(kind))
    known = available_backends()
    if not isinstance(name, str) or name not in known:
        raise ConfigError(f"{path}.backend", name, f"one of the backends {sorted(known)}")
    cls = load_backend(name)
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise DeviceNotFound(f"backend {name!r} ({known[name].target}) is not a drivers.device.Device subclass")
    if cls.kind != kind:
        raise ConfigError(f"{path}.backend", name, f"a {kind} backend (this one is a {cls.kind})")
    roi = settings.pop("roi", None) if kind == "camera" else None
    locate = settings.pop("locate", None) if kind == "camera" else None
    device = cls.from_config(settings, context, path)
    with contextlib.ExitStack() as opened:  # closes the camera if its roi or location is refused
        opened.enter_context(device)
        if roi is not None:
            apply_roi(device, roi, f"{path}.roi")
        if locate is not None and located:
            if not isinstance(locate, str):
                raise ConfigError(f"{path}.locate", locate, "the path of a `hil locate` file (e.g. grid.yaml)")
            source = context.resolve(locate)
            device = locate_camera(device, load_location(source, f"{path}.locate"), source=str(source),
                                   field=f"{path}.locate", roi_field=f"{path}.roi" if roi is not None else None)
        opened.pop_all()
    return device


def open_bench(config, *, clock: Clock | None = None, located: bool = True) -> Bench:
    """Open a :class:`~drivers.bench.Bench` from a bench config (YAML path, mapping or
    :class:`BenchConfig`); ``clock`` overrides the config's ``clock``; ``located=False`` ignores
    ``camera.locate`` (the camera's own frames: what `hil locate` looks at).

    The bench's ``config`` attribute holds the resolved config (to save next to outputs).
    """
    cfg, base_dir = load_bench_config(config)
    context = OpenContext(clock=clock if clock is not None else make_clock(cfg.clock), base_dir=base_dir)
    with contextlib.ExitStack() as opened:  # closes what was opened if anything later fails
        slm = opened.enter_context(open_device("slm", cfg.slm, context))
        context.peers["slm"] = slm
        camera = opened.enter_context(open_device("camera", cfg.camera, context, located=located))
        context.peers["camera"] = camera
        light = None
        if cfg.light is not None:
            light = opened.enter_context(open_device("light-source", cfg.light, context, "light"))
        settings = cfg.bench
        with config_errors(to_plain(settings), "bench"):
            bench = Bench(slm, camera, light=light, retries=settings.retries, timeout_s=settings.timeout_s,
                          max_stale_reads=settings.max_stale_reads, config=to_plain(cfg))
        opened.pop_all()
    return bench
