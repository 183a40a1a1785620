"""The device base: :class:`Device` (name, clock, timeouts, context manager, idempotent close,
settings), opening from YAML (:meth:`Device.from_config`, :class:`OpenContext`) and the checks the
camera and SLM bases share.

Drivers are two-layer: the public methods of :class:`Device`, :class:`~drivers.camera.Camera` and
:class:`~drivers.slm.SLM` validate arguments, convert units, apply timeouts, translate backend
exceptions into :mod:`drivers.errors` and record metadata. A backend subclasses
:class:`~drivers.camera.Camera` or :class:`~drivers.slm.SLM`, opens its hardware in ``__init__`` and
then calls ``super().__init__`` with the device's *current* state (shape, bit depth, exposure read
back from the hardware, ...), and fills in a few small hooks (listed in :mod:`drivers.camera` and
:mod:`drivers.slm`); ``_close()`` (optional) releases the hardware (called once).

Hooks may raise anything: the base class re-raises it as the matching :class:`DeviceError` chained
to the original. Hooks that are not implemented raise :class:`UnsupportedFeature`.

Every device is a context manager, ``close()`` is idempotent, and a closed device raises
:class:`DeviceClosed`. Devices read time from a :class:`~drivers.clock.Clock` (``clock=``), never from
``time`` directly, so simulated benches run on a virtual clock in tests.

Opening from YAML: :meth:`Device.from_config` validates the device's settings mapping into the
backend's ``Config`` dataclass (with :func:`onn_core.config.build`, so a bad field is reported with its
YAML path) and passes its fields to the constructor as keyword arguments, plus ``name`` and ``clock``.
A backend whose constructor needs more (a file path relative to the YAML file, a peer device)
overrides :meth:`from_config` and uses the :class:`OpenContext`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onn_core.config import build
from onn_core.errors import ConfigError, InputError
from onn_core.files import resolve_relative
from onn_core.validation import check_positive

from .clock import Clock, RealClock
from .errors import DeviceClosed, UnsupportedFeature, backend_errors

#: Default per-call timeout (s) of blocking device calls (a camera adds its exposure to it).
DEFAULT_TIMEOUT_S = 1.0


@dataclass
class OpenContext:
    """What a backend may need when it is opened from a bench config.

    Attributes
    ----------
    clock : Clock
        The clock shared by every device of the bench.
    base_dir : Path
        Folder of the YAML file (relative paths in settings are relative to it).
    peers : dict
        Devices of the bench opened so far, by role (``"slm"`` is opened before ``"camera"``).
    """

    clock: Clock
    base_dir: Path = field(default_factory=Path.cwd)
    peers: dict = field(default_factory=dict)

    def resolve(self, path) -> Path:
        """``path`` relative to :attr:`base_dir` (absolute paths unchanged)."""
        return resolve_relative(path, self.base_dir)


@contextlib.contextmanager
def config_errors(settings: Mapping, path: str = ""):
    """Re-raise a bad-value error from opening a device (or bench) from YAML as a :class:`ConfigError`
    that names the YAML field.

    ``settings`` maps the section's field names to the values used (defaults included). The toolkit's
    checks start their message with the parameter's name (``"exposure_s must be in [1e-05, 10] s, got
    -1.0"``): when that name is a key of ``settings``, the error names ``path.<key>`` and its value;
    otherwise it names ``path``. :class:`ConfigError` passes unchanged.
    """
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:  # InputError included
        message = str(exc)
        key = message.split(" ", 1)[0]
        if key in settings:
            raise ConfigError(f"{path}.{key}" if path else key, settings[key], message) from exc
        raise ConfigError(path or "<root>", dict(settings), message) from exc


def integer_dtype_for(bit_depth: int) -> np.dtype:
    """Smallest unsigned container for ``bit_depth`` bits: uint8 up to 8 bits, else uint16."""
    if not isinstance(bit_depth, (int, np.integer)) or not 1 <= bit_depth <= 16:
        raise InputError(f"bit_depth must be an integer in [1, 16], got {bit_depth!r}")
    return np.dtype(np.uint8 if bit_depth <= 8 else np.uint16)



def check_shape(name: str, shape, ndims: Sequence[int] = (2,)) -> tuple[int, ...]:
    """``shape`` as a tuple of ``ndims`` positive ints, or :class:`InputError` naming ``name``."""
    try:
        t = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a tuple of positive integers, got {shape!r}") from None
    if len(t) not in ndims or min(t) < 1:
        raise InputError(f"{name} must be {' or '.join(map(str, ndims))} positive integers, got {shape!r}")
    return t


class Device:
    """Base of every device: name, clock, timeouts, context manager, idempotent close, settings.

    Parameters
    ----------
    name : str, optional
        Name used in errors and logs (default: the class name).
    clock : Clock, optional
        Clock for timestamps and waiting (default: a :class:`RealClock`).
    default_timeout_s : float
        Timeout (s) of blocking calls when none is given.
    """

    #: Role in a bench ("camera", "slm" or another word for auxiliary devices).
    kind = "device"
    #: Dataclass of the YAML settings accepted by :meth:`from_config` (None: the constructor has none).
    Config = None

    def __init__(self, *, name: str | None = None, clock: Clock | None = None, default_timeout_s: float = DEFAULT_TIMEOUT_S):
        self.name = name or type(self).__name__
        self.clock = clock if clock is not None else RealClock()
        self.default_timeout_s = check_positive("default_timeout_s", default_timeout_s)
        self._closed = False

    # --------------------------------------------------------------------------------- opening
    @classmethod
    def from_config(cls, settings: Mapping, context: OpenContext, path: str = ""):
        """Open the device from its YAML settings (without the ``backend`` key).

        The default validates ``settings`` into :attr:`Config` and calls
        ``cls(**fields, name=path, clock=context.clock)``; errors name ``path.field`` (the
        constructor's too, see :func:`config_errors`).
        """
        if cls.Config is None:
            if settings:
                key = next(iter(settings))
                raise ConfigError(f"{path}.{key}" if path else key, settings[key], f"no settings (backend {cls.__name__} takes none)")
            return cls(name=path or None, clock=context.clock)
        config = build(cls.Config, dict(settings), path)
        kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        with config_errors(kwargs, path):
            return cls(**kwargs, name=path or None, clock=context.clock)

    # --------------------------------------------------------------------------------- lifetime
    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Release the device. Idempotent: later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        with self._errors("close"):
            self._close()

    def _close(self) -> None:
        """Hook: release the hardware (called once)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceClosed("used after close()", device=self.name)

    def _errors(self, action: str):
        return backend_errors(action, self.name)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.default_timeout_s if timeout_s is None else check_positive("timeout_s", timeout_s)

    def _unsupported(self, feature: str):
        return UnsupportedFeature(f"{type(self).__name__} cannot {feature}", device=self.name)

    # --------------------------------------------------------------------------------- settings
    def settings(self) -> dict:
        """Snapshot of the device's settings as plain values (for metadata files)."""
        return {"name": self.name, "backend": type(self).__name__, "kind": self.kind}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} ({state})>"
