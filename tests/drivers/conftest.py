"""Shared fixtures for the driver tests: a virtual clock and small simulated benches."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.clock import VirtualClock
from drivers.simulated import SimulatedCamera, SimulatedSLM, direct_render
from tests.drivers.xvfb import window_manager, x_display, xvfb  # noqa: F401  (registered here once: one X server per session)

#: DN per gray level per second of exposure of the test render (exact for 1 ms multiples).
DN_PER_LEVEL_S = 1000.0


def make_pair(clock, *, shape=(6, 6), slm_faults=None, camera_faults=None, render=None, latency_s=0.010,
              settle_s=0.005, **camera_kwargs):
    """A small simulated SLM + camera on ``clock`` with the direct (pixel-for-pixel) render."""
    slm = SimulatedSLM(shape=shape, bit_depth=8, pixel_pitch_m=8e-6, latency_s=latency_s, settle_s=settle_s,
                       faults=slm_faults, clock=clock, name="slm")
    camera_kwargs.setdefault("exposure_s", 0.010)
    camera = SimulatedCamera(slm, render or direct_render(DN_PER_LEVEL_S), faults=camera_faults, clock=clock,
                             name="camera", **camera_kwargs)
    return slm, camera


def gray_seen(frame, exposure_s: float) -> np.ndarray:
    """Invert the direct render: the gray image a frame saw."""
    scale = DN_PER_LEVEL_S * exposure_s
    return np.rint(frame.image / scale).astype(np.int64)


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def pair(clock):
    slm, camera = make_pair(clock)
    yield slm, camera
    slm.close()
    camera.close()
