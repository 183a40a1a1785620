"""Camera and SLM drivers, the Bench that couples them, and their backends.

Open a bench from YAML and measure::

    from drivers import open_bench

    with open_bench("examples/bench_sim.yaml") as bench:
        m = bench.measure(image)      # shows, waits until settled, captures a fresh frame
        m.frame.image, m.frame.exposure_s

Backends (``hil devices`` lists them) are classes derived from :class:`Camera` / :class:`SLM`; see
:mod:`drivers.device`, :mod:`drivers.camera` and :mod:`drivers.slm` for the hooks a backend fills in and :mod:`drivers.registry` for adding one.
"""

from .camera import Camera
from .device import Device, OpenContext
from .frames import Frame, RawFrame
from .slm import SLM
from .bench import Bench, Measurement
from .bench_fits import BenchMismatch, check_bench_fits
from .clock import Clock, RealClock, VirtualClock
from .config import BenchConfig, open_bench, open_device
from .errors import (
    ConfigError,
    DeviceClosed,
    DeviceDisconnected,
    DeviceError,
    DeviceFault,
    DeviceNotFound,
    DeviceTimeout,
    ExposureError,
    HilError,
    InputError,
    MissingDependency,
    StaleFrame,
    UnsupportedFeature,
)
from .exposure import auto_exposure, capture_stack, exposure_held
from .faults import FaultConfig
from onn_core.lut import LUT
from .registry import ENTRY_POINT_GROUP, available_backends, load_backend, register_backend

__all__ = [
    "LUT", "SLM", "Bench", "BenchConfig", "BenchMismatch", "Camera", "Clock", "ConfigError", "Device", "DeviceClosed",
    "DeviceDisconnected", "DeviceError", "DeviceFault", "DeviceNotFound", "DeviceTimeout", "ENTRY_POINT_GROUP", "ExposureError",
    "FaultConfig", "Frame", "HilError", "InputError", "Measurement", "MissingDependency", "OpenContext",
    "RawFrame", "RealClock", "StaleFrame", "UnsupportedFeature", "VirtualClock", "auto_exposure", "available_backends", "capture_stack", "check_bench_fits", "exposure_held",
    "load_backend", "open_bench", "open_device", "register_backend",
]
