"""Simulated benches with known injected errors, for the calibration tests.

Every bench looks at the display through an :class:`~simulator.system.OpticalSystem` built from
``examples/optics.yaml`` with the overrides given here; the truth (``bench.camera.optics``) is for
the tests' assertions only -- calibration code never reads it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from drivers.config import open_bench
from onn_core import config as config_io

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_optics() -> dict:
    """The example optics mapping (design, geometry, photometry, display, sensor, errors)."""
    return config_io.load_yaml(EXAMPLES / "optics.yaml")


def merged(base: dict, overrides: dict | None) -> dict:
    """``base`` with ``overrides`` merged in recursively (a None value deletes the key)."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def bench_config(optics_overrides: dict | None = None, *, exposure_s: float = 0.01,
                 exposure_limits_s=(1e-5, 10.0)) -> dict:
    """A bench mapping: simulated SLM + simulated camera through the example optics with overrides
    merged in (e.g. ``{"sensor": {"noise": False}}``), except ``errors``, which replaces the example's
    (``{"errors": None}``: the design itself; ``{"errors": {"seed": 7, "spec": {...}}}``: only those
    errors), on a virtual clock (nothing sleeps)."""
    overrides = dict(optics_overrides or {})
    optics = merged(example_optics(), {k: v for k, v in overrides.items() if k != "errors"})
    if "errors" in overrides:  # the injected errors replace the example's (never merged with them)
        optics["errors"] = overrides["errors"]
    shape = optics["image_shape"]
    return {
        "clock": "virtual",
        "slm": {"backend": "simulated-slm", "shape": list(shape), "bit_depth": optics["display"]["bit_depth"],
                "pixel_pitch_m": optics["geometry"]["display_pixel_pitch_m"], "latency_s": 0.0, "settle_s": 0.0},
        "camera": {"backend": "simulated-camera", "optics": optics, "exposure_s": exposure_s,
                   "exposure_limits_s": list(exposure_limits_s), "readout_s": 0.0},
    }


def simulated_bench(optics_overrides: dict | None = None, **kwargs):
    """Open :func:`bench_config` (use as a context manager)."""
    return open_bench(bench_config(optics_overrides, **kwargs))


def calibrate_on_one_thread(errors: dict, config: dict):
    """:func:`calibration.api.calibrate` (with ``config``) of a simulated bench with the injected ``errors``
    against the example's nominal optics, on one torch thread (reproducible); returns the calibration and
    the bench's true optics."""
    from calibration.api import calibrate
    from simulator.system import OpticalSystem

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with simulated_bench({"errors": errors}) as bench:
            nominal = OpticalSystem.from_config({**example_optics(), "errors": None})
            return calibrate(bench, nominal, config), bench.camera.optics
    finally:
        torch.set_num_threads(threads)
