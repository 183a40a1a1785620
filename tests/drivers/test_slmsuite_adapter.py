"""The slmsuite adapters against slmsuite's own simulated SLM and camera (a Fourier-plane camera: it
records |FFT(exp(i phase))|^2 of the SLM), with a blazed grating as the analytic oracle."""

import sys

import numpy as np
import pytest

pytest.importorskip("slmsuite")

from slmsuite.hardware.cameras.simulated import SimulatedCamera  # noqa: E402
from slmsuite.hardware.slms.simulated import SimulatedSLM  # noqa: E402

from drivers.base import OpenContext  # noqa: E402
from drivers.clock import RealClock  # noqa: E402
from drivers.errors import DeviceFault, MissingDependency, UnsupportedFeature  # noqa: E402
from drivers.registry import load_backend  # noqa: E402
from drivers.slmsuite_adapter import SlmsuiteCamera, SlmsuiteSLM  # noqa: E402
from simulator.errors import ConfigError  # noqa: E402
from tests.drivers.conformance import check_camera, check_slm  # noqa: E402

ROWS, COLS = 32, 48
PIXELS = ROWS * COLS  # the simulated far field carries this total power


def _pair(exposure_s=0.05):
    slm = SlmsuiteSLM(SimulatedSLM((COLS, ROWS), pitch_um=(8, 8)), name="slm")
    camera = SlmsuiteCamera(SimulatedCamera(slm.device, pitch_um=(5, 5)), name="camera")
    camera.exposure_s = exposure_s
    return slm, camera


def test_slm_mirrors_the_slmsuite_device():
    slm, camera = _pair()
    with slm, camera:
        assert slm.shape == (ROWS, COLS) and slm.bit_depth == 8 and slm.dtype == np.uint8
        assert slm.pixel_pitch_m == pytest.approx(8e-6) and slm.modulation == "phase"
        assert slm.wavelength_m == pytest.approx(slm.device.wav_um * 1e-6)
        assert slm.settle_s == slm.device.settle_time_s
        frame = np.random.default_rng(0).integers(0, 256, (ROWS, COLS), dtype=np.uint8)
        slm.show(frame)
        assert np.array_equal(slm.device.display, frame)  # integer data reaches the device unchanged
        assert camera.shape == (ROWS, COLS) and camera.pixel_pitch_m == pytest.approx(5e-6)
    assert slm.closed and camera.closed


@pytest.mark.parametrize("period_px", [None, 8, 4, 16, -8])
def test_blazed_grating_moves_all_light_to_one_order(period_px):
    """A phase ramp of 2 pi per ``period`` pixels diffracts all light into one far-field pixel, shifted
    by COLS/period from the zero order (slmsuite's sign: towards smaller column indices)."""
    slm, camera = _pair(exposure_s=0.05)
    with slm, camera:
        cols = np.arange(COLS)[None, :] * np.ones((ROWS, 1))
        phase = np.zeros((ROWS, COLS)) if period_px is None else 2 * np.pi * cols / period_px
        shown = slm.show_phase(phase)
        if period_px is not None:  # an exact ramp: 256 / |period| levels per pixel, wrapped
            assert np.array_equal(shown, (cols.astype(int) * 256 // period_px % 256).astype(np.uint8))
        image = camera.snap().image
    shift = 0 if period_px is None else COLS // period_px
    peak = (ROWS // 2, COLS // 2 - shift)
    expected = np.zeros((ROWS, COLS), np.uint8)
    expected[peak] = int(PIXELS * 0.05)  # counts = power * exposure * gain, truncated
    assert np.array_equal(image, expected)


def test_exposure_is_set_on_the_device_and_scales_the_counts():
    slm, camera = _pair(exposure_s=0.05)
    with slm, camera:
        slm.blank()
        camera.exposure_s = 0.1
        assert camera.device.exposure_s == 0.1 and camera.exposure_s == 0.1
        assert camera.snap().image.max() == int(PIXELS * 0.1)
        with pytest.raises(UnsupportedFeature):
            camera.gain = 1.0
        camera.roi = (ROWS // 2 - 2, COLS // 2 - 3, 4, 6)
        crop = camera.snap().image
        assert crop.shape == (4, 6) and crop[2, 3] == int(PIXELS * 0.1) and crop.sum() == crop[2, 3]


def test_slmsuite_errors_are_chained_not_swallowed():
    slm, camera = _pair()
    with slm, camera:
        camera.device.noise = {"cosmic": lambda img: img}  # slmsuite rejects this source when rendering
        with pytest.raises(DeviceFault) as info:
            camera.snap()
        assert isinstance(info.value.__cause__, RuntimeError) and "cosmic" in str(info.value.__cause__)


def test_adapters_conform():
    device = SimulatedSLM((COLS, ROWS), pitch_um=(8, 8))
    check_slm(lambda: SlmsuiteSLM(SimulatedSLM((COLS, ROWS), pitch_um=(8, 8))))
    check_camera(lambda: SlmsuiteCamera(SimulatedCamera(device, pitch_um=(5, 5))))


def test_bench_config_builds_both_through_the_registry():
    context = OpenContext(clock=RealClock())
    slm = load_backend("slmsuite-slm").from_config(
        {"device_class": "slmsuite.hardware.slms.simulated:SimulatedSLM",
         "device_kwargs": {"resolution": [COLS, ROWS], "pitch_um": [8, 8]}, "settle_s": 0.01}, context, "slm")
    context.peers["slm"] = slm
    camera = load_backend("slmsuite-camera").from_config(
        {"device_class": "slmsuite.hardware.cameras.simulated:SimulatedCamera", "pass_slm": True,
         "device_kwargs": {"pitch_um": [5, 5]}}, context, "camera")
    with slm, camera:
        assert isinstance(slm, SlmsuiteSLM) and isinstance(camera, SlmsuiteCamera)
        assert camera.device._slm is slm.device and slm.settle_s == 0.01 and slm.name == "slm"
        camera.exposure_s = 0.05
        slm.blank()
        assert camera.snap().image[ROWS // 2, COLS // 2] == int(PIXELS * 0.05)
    with pytest.raises(ConfigError, match="slm.device_class"):
        load_backend("slmsuite-slm").from_config({"device_class": "os:system"}, context, "slm")
    with pytest.raises(ConfigError, match="camera.pass_slm"):
        load_backend("slmsuite-camera").from_config(
            {"device_class": "slmsuite.hardware.cameras.simulated:SimulatedCamera", "pass_slm": True},
            OpenContext(clock=RealClock()), "camera")


def test_missing_slmsuite_says_how_to_install(monkeypatch):
    device = SimulatedSLM((COLS, ROWS), pitch_um=(8, 8))
    monkeypatch.setitem(sys.modules, "slmsuite", None)  # import slmsuite -> ImportError
    with pytest.raises(MissingDependency, match=r"onn-hil\[slmsuite\]"):
        SlmsuiteSLM(device)
