"""Device errors: the part of the toolkit's exception hierarchy that drivers raise.

Everything derives from :class:`onn_core.errors.HilError`, so a bench script catches every toolkit
failure with one clause. A backend's own exception (a vendor SDK error, an ``OSError`` from a serial
port, ...) is never swallowed: the driver layer raises one of these classes *from* it, so the
original is kept as ``__cause__``.

::

    HilError
    ├── ConfigError, InputError, ...          (onn_core.errors)
    │   └── BenchMismatch                     the bench does not fit the optics (drivers.bench_fits)
    ├── ExposureError                         no exposure gives the wanted signal (drivers.exposure)
    └── DeviceError                           any device failure; .device names the device
        ├── DeviceTimeout    (TimeoutError)   no answer/frame within the timeout
        ├── DeviceDisconnected (ConnectionError) the device went away; reopen it
        ├── DeviceNotFound   (LookupError)    no such device or backend
        ├── DeviceClosed                      the device was used after close()
        ├── DeviceFault                       the backend failed in another way (I/O error, ...)
        ├── StaleFrame                        a frame was exposed before the image settled
        ├── UnsupportedFeature (NotImplementedError) the backend cannot do this
        └── MissingDependency (ImportError)   an optional package is not installed
"""

from __future__ import annotations

import contextlib
import errno

from onn_core.errors import ConfigError, HilError, InputError

__all__ = [
    "ConfigError",
    "DeviceClosed",
    "DeviceDisconnected",
    "DeviceError",
    "DeviceFault",
    "DeviceNotFound",
    "DeviceTimeout",
    "ExposureError",
    "HilError",
    "InputError",
    "MissingDependency",
    "StaleFrame",
    "UnsupportedFeature",
    "backend_errors",
]


class DeviceError(HilError):
    """A device failed. ``device`` is the device's name (or None)."""

    def __init__(self, message: str, *, device: str | None = None):
        self.device = device
        super().__init__(f"{device}: {message}" if device else message)


class DeviceTimeout(DeviceError, TimeoutError):
    """The device did not answer (or deliver a frame) within the timeout."""


class DeviceDisconnected(DeviceError, ConnectionError):
    """The device is no longer reachable (unplugged, link lost); it must be reopened."""


class DeviceNotFound(DeviceError, LookupError):
    """No such device (nothing at that address) or no backend of that name."""


class DeviceClosed(DeviceError):
    """The device was used after ``close()``."""


class DeviceFault(DeviceError):
    """The backend failed in a way not covered by a more specific class (I/O error, SDK error, ...)."""


class StaleFrame(DeviceError):
    """Frames kept arriving that were exposed before the shown image had settled."""


class UnsupportedFeature(DeviceError, NotImplementedError):
    """The backend cannot do this (e.g. set the gain of a webcam)."""


class ExposureError(HilError):
    """No exposure within the camera's limits gives the wanted signal. ``saturated``: True when even the
    shortest exposure saturates, False when the longest stays too dark, None when the search ran out of
    frames. Not a device failure: the light level (or the search's settings) must change."""

    def __init__(self, message: str, *, device: str | None = None, saturated: bool | None = None):
        self.device, self.saturated = device, saturated
        super().__init__(f"{device}: {message}" if device else message)


class MissingDependency(DeviceError, ImportError):
    """An optional package a backend needs is not installed; the message says how to install it."""

    def __init__(self, package: str, install: str, *, device: str | None = None):
        self.package = package
        super().__init__(f"needs the optional package '{package}' (install it with: {install})", device=device)


def _translate(exc: BaseException, action: str, device: str | None) -> DeviceError:
    """The :class:`DeviceError` subclass that stands for a backend's exception."""
    text = f"{action} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(text, device=device)
    if isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENODEV, errno.ENXIO, errno.EPIPE, errno.EIO)
    ):
        return DeviceDisconnected(text, device=device)
    if isinstance(exc, (FileNotFoundError, LookupError)):
        return DeviceNotFound(text, device=device)
    if isinstance(exc, NotImplementedError):
        return UnsupportedFeature(text, device=device)
    return DeviceFault(text, device=device)


@contextlib.contextmanager
def backend_errors(action: str, device: str | None = None):
    """Translate exceptions raised inside the block into :class:`DeviceError` subclasses.

    Toolkit errors (:class:`HilError`) pass through unchanged; any other ``Exception`` becomes the
    matching :class:`DeviceError` raised *from* it (so the backend's exception stays as
    ``__cause__``). ``KeyboardInterrupt`` and ``SystemExit`` are never caught.
    """
    try:
        yield
    except HilError:
        raise
    except Exception as exc:
        raise _translate(exc, action, device) from exc
