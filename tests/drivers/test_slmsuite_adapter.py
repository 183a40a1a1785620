"""The slmsuite adapters against slmsuite's own simulated SLM and camera (a Fourier-plane camera: it
records |FFT(exp(i phase))|^2 of the SLM), with a blazed grating as the analytic oracle."""

import sys

import numpy as np
import pytest

pytest.importorskip("slmsuite")

from slmsuite.hardware.cameras.simulated import SimulatedCamera  # noqa: E402
from slmsuite.hardware.slms.simulated import SimulatedSLM  # noqa: E402

from drivers.device import OpenContext  # noqa: E402
from drivers.bench import Bench  # noqa: E402
from drivers.clock import RealClock  # noqa: E402
from drivers.errors import DeviceFault, DeviceTimeout, MissingDependency, UnsupportedFeature  # noqa: E402
from onn_core.lut import LUT  # noqa: E402
from drivers.registry import load_backend  # noqa: E402
from drivers.slmsuite_adapter import SlmsuiteCamera, SlmsuiteSLM  # noqa: E402
from onn_core.errors import ConfigError  # noqa: E402
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


def _ramp(period_px) -> np.ndarray:
    """Phase (rad) rising by 2 pi every ``period_px`` columns (flat for None)."""
    cols = np.arange(COLS)[None, :] * np.ones((ROWS, 1))
    return np.zeros((ROWS, COLS)) if period_px is None else 2 * np.pi * cols / period_px


@pytest.mark.parametrize("period_px", [None, 8, 4, 16, -8])
def test_blazed_grating_through_the_bench_lands_where_slmsuite_puts_it(period_px):
    """A phase ramp of 2 pi per ``period`` pixels diffracts all light into one far-field pixel, shifted by
    COLS/period from the zero order towards larger column indices (slmsuite's convention), exactly as
    slmsuite's own set_phase of the same ramp."""
    slm, camera = _pair(exposure_s=0.05)
    with Bench(slm, camera) as bench:
        image = bench.measure(_ramp(period_px), phase=True).frame.image
        slm.device.set_phase(_ramp(period_px), settle=False)
        own = np.asarray(camera.device.get_image())
    shift = 0 if period_px is None else COLS // period_px
    expected = np.zeros((ROWS, COLS), np.uint8)
    expected[ROWS // 2, COLS // 2 + shift] = int(PIXELS * 0.05)  # counts = power * exposure * gain, truncated
    assert np.array_equal(image, expected)
    assert np.array_equal(image, own)


def _slm_with(setup):
    device = SimulatedSLM((COLS, ROWS), pitch_um=(8, 8), **setup.get("device", {}))
    if "gamma" in setup:
        device.set_gamma(setup["gamma"])
    if "source_phase" in setup:
        device.source["phase"] = setup["source_phase"]
    return SlmsuiteSLM(device, name="slm")


SETUPS = {
    "linear": {},
    "wavelength-scaled": {"device": {"wav_um": 1.0, "wav_design_um": 1.064}},
    "less-range": {"device": {"wav_um": 1.064, "wav_design_um": 1.0}},
    "gamma": {"gamma": np.linspace(0, 1.1, 256) + 0.01 * np.sin(np.arange(256))},
    "corrected": {"source_phase": np.random.default_rng(1).uniform(-3, 3, (ROWS, COLS))},
}


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
def test_phase_frames_are_slmsuites_own(setup):
    """show_phase / measure(phase=True) give the integer frame slmsuite's set_phase makes of the same
    phase: its sign, its wavelength scaling, its gamma LUT and its wavefront correction."""
    with _slm_with(setup) as slm:
        phase = np.random.default_rng(0).uniform(-10, 10, (ROWS, COLS))
        ours = slm.show_phase(phase)
        theirs = np.array(slm.device.set_phase(phase.copy(), settle=False))
        assert np.array_equal(ours, theirs)
        # and the LUT says what slmsuite realises at each level
        realised = np.mod(slm.device._gray2phase(np.arange(256)), 2 * np.pi)
        assert np.allclose(np.mod(slm.lut.values, 2 * np.pi), realised, atol=1e-5)


def test_wavelength_scaling_realises_the_asked_phase():
    """With wav_design_um = 1.064 (slmsuite scales gray levels by phase_scaling = 0.94), a phase of pi
    is realised as pi -- by slmsuite's simulated SLM -- within one level, not 2 pi / 0.94 - pi."""
    with _slm_with(SETUPS["wavelength-scaled"]) as slm:
        realise = slm.device._display2phase  # the simulated device's own gray -> phase (its truth)
        zero = realise(slm.show_phase(np.zeros((ROWS, COLS))))
        half = realise(slm.show_phase(np.full((ROWS, COLS), np.pi)))
        step = 2 * np.pi / (256 * slm.device.phase_scaling)
        assert np.allclose(np.angle(np.exp(1j * (half - zero - np.pi))), 0, atol=step)


def test_assigning_a_lut_sets_slmsuites_gamma():
    with _slm_with({}) as slm:
        measured = LUT(-2 * np.pi * (np.linspace(0, 1.05, 256) ** 1.2), "phase")
        slm.lut = measured
        assert np.allclose(np.asarray(slm.device.gamma) * 2 * np.pi * slm.device._gamma_sign, measured.values)
        phase = np.random.default_rng(2).uniform(0, 2 * np.pi, (ROWS, COLS))
        assert np.array_equal(slm.to_phase_frame(phase), np.array(slm.device.set_phase(phase.copy(), settle=False)))
        assert np.allclose(slm.lut.values - slm.lut.values[0], measured.values - measured.values[0], atol=1e-5)


def test_exposure_is_set_on_the_device_and_scales_the_counts():
    slm, camera = _pair(exposure_s=0.05)
    with slm, camera:
        slm.blank()
        camera.exposure_s = 0.1
        assert camera.device.exposure_s == 0.1 and camera.exposure_s == 0.1
        assert camera.snap().image.max() == int(PIXELS * 0.1)
        for gain in (1.0, 2.0):  # no gain control: whatever the value
            with pytest.raises(UnsupportedFeature):
                camera.gain = gain
        camera.roi = (ROWS // 2 - 2, COLS // 2 - 3, 4, 6)
        crop = camera.snap().image
        assert crop.shape == (4, 6) and crop[2, 3] == int(PIXELS * 0.1) and crop.sum() == crop[2, 3]


@pytest.mark.parametrize("exposure_s", [1e-3, 1e-2, 5e-2])
def test_bench_measures_fresh_frames_at_any_exposure(exposure_s):
    """slmsuite's simulated camera returns in well under the exposure; its frames are still fresh (the
    camera is software-triggered: exposed after the request, which follows the settling)."""
    slm, camera = _pair(exposure_s=exposure_s)
    with Bench(slm, camera, retries=0) as bench:
        for k in range(10):
            period = (8, -8)[k % 2]
            m = bench.measure(_ramp(period), phase=True)
            assert m.attempts == 1 and m.stale_frames == 0 and m.frame.timing == "triggered"
            peak = np.unravel_index(np.argmax(m.frame.image), m.frame.image.shape)
            assert peak == (ROWS // 2, COLS // 2 + COLS // period), "the frame saw this measurement's grating"


def test_camera_opens_within_its_exposure_limits():
    """slmsuite's simulated camera starts at 1 s: outside these limits, the adapter starts at the nearer
    limit; ``exposure_s`` (also a YAML field) sets the starting exposure on the device."""
    device = SimulatedSLM((COLS, ROWS), pitch_um=(8, 8))
    assert SimulatedCamera(device).get_exposure() == 1.0
    with SlmsuiteCamera(SimulatedCamera(device, pitch_um=(5, 5)), exposure_limits_s=(1e-5, 0.1)) as camera:
        assert camera.exposure_s == 0.1 == camera.device.get_exposure()
    with SlmsuiteCamera(SimulatedCamera(device, pitch_um=(5, 5)), exposure_s=0.02) as camera:
        assert camera.exposure_s == 0.02 == camera.device.get_exposure()
    context = OpenContext(clock=RealClock(), peers={"slm": SlmsuiteSLM(device)})
    settings = {"device_class": "slmsuite.hardware.cameras.simulated:SimulatedCamera", "pass_slm": True,
                "device_kwargs": {"pitch_um": [5, 5]}, "exposure_s": 0.03, "exposure_limits_s": [1e-5, 0.1]}
    with load_backend("slmsuite-camera").from_config(settings, context, "camera") as camera:
        assert camera.exposure_s == 0.03 == camera.device.get_exposure()
    with pytest.raises(ConfigError) as info:
        load_backend("slmsuite-camera").from_config({**settings, "exposure_s": 0.5}, context, "camera")
    assert info.value.path == "camera.exposure_s" and "must be in [1e-05, 0.1]" in str(info.value)


class _StalledCamera(SimulatedCamera):
    """slmsuite's simulated camera whose hardware never delivers: counts the attempts."""

    attempts = 0

    def _get_image_hw(self, timeout_s=0, quantize=True):
        type(self).attempts += 1
        raise TimeoutError(f"no frame within {timeout_s} s")


def test_one_hardware_attempt_per_snap_the_bench_retries():
    """slmsuite's capture_attempts (5) would multiply every timeout and the bench's retries."""
    slm = SlmsuiteSLM(SimulatedSLM((COLS, ROWS), pitch_um=(8, 8)), settle_s=0.0)
    camera = SlmsuiteCamera(_StalledCamera(slm.device, pitch_um=(5, 5)), exposure_s=1e-3)
    _StalledCamera.attempts = 0
    with Bench(slm, camera, retries=3, timeout_s=0.01) as bench:
        with pytest.raises(DeviceTimeout):
            camera.snap()
        assert _StalledCamera.attempts == 1
        with pytest.raises(DeviceTimeout):
            bench.measure(np.zeros((ROWS, COLS), np.uint8))
        assert _StalledCamera.attempts == 1 + 4


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
    with pytest.raises(ConfigError, match="slm.device_class.*not a class"):
        load_backend("slmsuite-slm").from_config({"device_class": "slmsuite.hardware.slms.slm:LUT_SIZE"}, context, "slm")
    with pytest.raises(ConfigError, match="camera.pass_slm"):
        load_backend("slmsuite-camera").from_config(
            {"device_class": "slmsuite.hardware.cameras.simulated:SimulatedCamera", "pass_slm": True},
            OpenContext(clock=RealClock()), "camera")


def test_missing_slmsuite_says_how_to_install(monkeypatch):
    device = SimulatedSLM((COLS, ROWS), pitch_um=(8, 8))
    monkeypatch.setitem(sys.modules, "slmsuite", None)  # import slmsuite -> ImportError
    with pytest.raises(MissingDependency, match=r"onn-hil\[slmsuite\]"):
        SlmsuiteSLM(device)
