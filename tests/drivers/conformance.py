"""Conformance suite: the behaviour every Camera and SLM backend must show.

Call it from a backend's test file with a factory that opens a fresh device::

    from tests.drivers.conformance import check_camera, check_slm

    def test_my_camera_conforms(tmp_path):
        check_camera(lambda: MyCamera(...))

Each check opens devices with the factory (several times), closes them, and fails with a plain
``assert`` naming the broken rule. Optional features (gain, ROI, trigger modes, black level) must either
work or raise :class:`UnsupportedFeature`; everything else is mandatory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from drivers.camera import Camera
from drivers.frames import Frame
from drivers.slm import SLM
from drivers.errors import DeviceClosed, ExposureError, UnsupportedFeature
from onn_core.lut import LUT
from onn_core.errors import InputError

CAMERA_SETTING_KEYS = {"exposure_s", "gain", "black_level", "roi", "trigger_mode", "sensor_shape", "dtype", "bit_depth", "pixel_pitch_m"}
SLM_SETTING_KEYS = {"shape", "dtype", "bit_depth", "pixel_pitch_m", "latency_s", "settle_s", "modulation", "wavelength_m"}


def _check_frame(camera: Camera, frame: Frame) -> None:
    assert isinstance(frame, Frame), f"snap must return a Frame, got {type(frame).__name__}"
    assert frame.image.shape[:2] == camera.shape, f"frame shape {frame.image.shape} != camera.shape {camera.shape}"
    assert frame.image.dtype == camera.dtype, f"frame dtype {frame.image.dtype} != camera.dtype {camera.dtype}"
    assert frame.exposure_s == camera.exposure_s
    assert math.isfinite(frame.timestamp_s)
    assert frame.settings["exposure_s"] == camera.exposure_s


def check_camera(make_camera) -> None:
    """Run every camera rule against devices from ``make_camera()``."""
    with make_camera() as cam:
        assert isinstance(cam, Camera)
        rows, cols = cam.shape
        assert cam.shape == cam.sensor_shape and rows >= 1 and cols >= 1
        assert cam.roi == (0, 0, rows, cols)
        assert np.issubdtype(cam.dtype, np.unsignedinteger)
        assert 1 <= cam.bit_depth <= cam.dtype.itemsize * 8
        assert 0 < cam.saturation_dn <= np.iinfo(cam.dtype).max
        assert cam.pixel_pitch_m > 0
        lo, hi = cam.exposure_limits_s
        assert 0 < lo <= cam.exposure_s <= hi
        assert cam.trigger_mode in ("software", "free-run")

        # snap / grab: one type, increasing indices, per-frame metadata
        first = cam.snap()
        _check_frame(cam, first)
        frames = cam.grab(3)
        assert len(frames) == 3
        indices = [first.index] + [f.index for f in frames]
        assert all(b > a for a, b in zip(indices, indices[1:])), f"frame indices must increase, got {indices}"
        stamps = [first.timestamp_s] + [f.timestamp_s for f in frames]
        assert all(b >= a for a, b in zip(stamps, stamps[1:])), f"timestamps must not decrease, got {stamps}"
        for bad in (0, -1, 1.5, True):
            with pytest.raises(InputError):
                cam.grab(bad)
        for bad in (0, -1.0, float("nan"), "soon"):
            with pytest.raises(InputError):
                cam.snap(timeout_s=bad)
        assert isinstance(cam.flush(), int) and cam.flush() >= 0

        # exposure: limits enforced, value read back
        target = min(hi, max(lo, 2 * cam.exposure_s))
        cam.exposure_s = target
        assert cam.exposure_s == pytest.approx(target, rel=0.05, abs=1e-6)
        assert cam.snap().exposure_s == cam.exposure_s
        before = cam.exposure_s
        for bad in (hi * 2, lo / 2, -1.0, float("nan"), float("inf")):
            with pytest.raises(InputError):
                cam.exposure_s = bad
        assert cam.exposure_s == before, "a rejected exposure must leave the exposure unchanged"

        # optional features: work or say so
        glo, ghi = cam.gain_limits
        try:
            cam.gain = ghi
            assert cam.gain == pytest.approx(ghi, rel=0.05)
            cam.gain = glo
        except UnsupportedFeature:
            pass
        # a camera without gain control (limits (1, 1)) says so whatever the value; others check the range
        with pytest.raises(UnsupportedFeature if cam.gain_limits == (1.0, 1.0) else InputError):
            cam.gain = ghi * 2 + 1
        try:
            cam.roi = (0, 0, max(1, rows // 2), max(1, cols // 2))
            assert cam.shape == (max(1, rows // 2), max(1, cols // 2))
            _check_frame(cam, cam.snap())
            cam.roi = None
            assert cam.shape == (rows, cols)
        except UnsupportedFeature:
            assert cam.shape == (rows, cols)
        with pytest.raises(InputError):
            cam.roi = (0, 0, rows + 1, cols)
        with pytest.raises(InputError):
            cam.trigger_mode = "sometimes"
        for mode in ("free-run", "software"):
            try:
                cam.trigger_mode = mode
                assert cam.trigger_mode == mode
                _check_frame(cam, cam.snap())
            except UnsupportedFeature:
                pass

        # averaging and HDR: float frames, exposure restored
        avg = cam.average(2)
        assert avg.image.dtype == np.float64 and avg.image.shape[:2] == cam.shape
        assert avg.meta["averaged"] == 2
        exposure = cam.exposure_s
        hdr = cam.hdr([max(lo, exposure / 2), exposure])
        assert hdr.image.dtype == np.float64 and hdr.image.shape[:2] == cam.shape
        assert cam.exposure_s == exposure, "hdr must restore the exposure"

        # exposure search: a bounded number of frames, then an exposure within the limits left set, or
        # ExposureError saying why (the scene may be too dark or too bright for this camera)
        try:
            chosen = cam.auto_exposure(max_frames=4)
            assert lo <= chosen <= hi and cam.exposure_s == chosen
        except ExposureError as exc:
            assert exc.saturated in (True, False, None) and str(exc)
        cam.exposure_s = exposure

        # settings: a plain, YAML-safe snapshot
        settings = cam.settings()
        assert CAMERA_SETTING_KEYS <= set(settings), f"settings lack {CAMERA_SETTING_KEYS - set(settings)}"
        yaml.safe_dump(settings)
        assert not cam.closed
    assert cam.closed, "leaving the with-block must close the camera"

    cam = make_camera()
    cam.close()
    cam.close()  # idempotent
    assert cam.closed
    with pytest.raises(DeviceClosed):
        cam.snap()
    with pytest.raises(DeviceClosed):
        cam.exposure_s = cam.exposure_limits_s[0]


def check_slm(make_slm) -> None:
    """Run every SLM rule against devices from ``make_slm()``."""
    with make_slm() as slm:
        assert isinstance(slm, SLM)
        assert len(slm.shape) in (2, 3) and min(slm.shape) >= 1
        assert slm.dtype == (np.uint8 if slm.bit_depth <= 8 else np.uint16)
        assert slm.max_level == 2**slm.bit_depth - 1
        assert slm.pixel_pitch_m > 0 and slm.latency_s >= 0 and slm.settle_s >= 0
        assert isinstance(slm.lut, LUT) and slm.lut.levels == 2**slm.bit_depth
        assert slm.lut.kind == ("phase" if slm.modulation == "phase" else "intensity")

        rng = np.random.default_rng(0)
        image = rng.integers(0, slm.max_level + 1, size=slm.shape).astype(slm.dtype)
        start_id = slm.frame_id
        shown = slm.show(image)
        assert shown.dtype == slm.dtype and np.array_equal(shown, image), "show must return the exact frame displayed"
        assert not shown.flags.writeable
        assert slm.frame_id == start_id + 1
        assert np.array_equal(slm.last_frame, image)
        assert slm.settled_at_s == pytest.approx(slm.shown_at_s + slm.latency_s + slm.settle_s)
        slm.wait_settled()
        assert slm.clock.now() >= slm.settled_at_s

        # validation: shape, dtype, range -- nothing is shown when rejected
        wrong_shape = np.zeros(tuple(s + 1 for s in slm.shape), slm.dtype)
        too_bright = np.full(slm.shape, slm.max_level + 1, np.int64)
        for bad in (wrong_shape, too_bright, np.full(slm.shape, -1, np.int64), np.full(slm.shape, 1.5),
                    np.full(slm.shape, np.nan), np.ones(slm.shape, bool)):
            with pytest.raises(InputError):
                slm.show(bad)
        assert slm.frame_id == start_id + 1, "a rejected image must not be shown"
        half = slm.show(np.full(slm.shape, 0.5))
        assert np.all(half == round(0.5 * slm.max_level)), "floats in [0, 1] scale to the full range"

        if slm.modulation == "phase":
            phase = rng.uniform(-10, 10, size=slm.shape)
            a = slm.show_phase(phase)
            b = slm.show_phase(phase + 2 * np.pi)
            assert np.array_equal(a, b), "show_phase must wrap modulo 2 pi"
            assert np.array_equal(a, slm.to_phase_frame(phase))
            # the LUT describes what show_phase realises: within one level step of the asked phase
            realised = slm.lut.to_value(a)
            error = np.abs(np.angle(np.exp(1j * (realised - phase))))
            assert error.max() <= np.abs(np.diff(slm.lut.values)).max() + 1e-6, "lut disagrees with show_phase"
        else:
            with pytest.raises(UnsupportedFeature):
                slm.show_phase(np.zeros(slm.shape))
            ramp = np.linspace(0, 1, int(np.prod(slm.shape))).reshape(slm.shape)
            assert np.array_equal(slm.show_intensity(ramp), slm.lut.to_gray(ramp))

        blank = slm.blank()
        assert not blank.any() and not slm.last_frame.any()

        settings = slm.settings()
        assert SLM_SETTING_KEYS <= set(settings), f"settings lack {SLM_SETTING_KEYS - set(settings)}"
        yaml.safe_dump(settings)
    assert slm.closed, "leaving the with-block must close the SLM"

    slm = make_slm()
    slm.close()
    slm.close()
    assert slm.closed
    with pytest.raises(DeviceClosed):
        slm.show(np.zeros(slm.shape, slm.dtype))
