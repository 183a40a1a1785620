"""``camera.roi``: set on the device where the backend can, cropped in software otherwise, recorded in
every frame's settings; a region outside the sensor is refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.camera import Camera
from drivers.clock import VirtualClock
from drivers.config import open_bench
from drivers.errors import DeviceFault
from drivers.frames import RawFrame
from onn_core.errors import ConfigError

from .conftest import DN_PER_LEVEL_S


def _bench_config(roi=None):
    camera = {"backend": "simulated-camera", "render": "direct", "exposure_s": 0.01}
    if roi is not None:
        camera["roi"] = roi
    return {"clock": "virtual", "slm": {"backend": "simulated-slm", "shape": [12, 16]}, "camera": camera}


def test_simulated_camera_roi_from_the_bench_config_is_applied_on_the_device():
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    with open_bench(_bench_config({"offset": [2, 3], "size": [5, 7]})) as bench:
        frame = bench.measure(gray).frame
        assert bench.camera.roi == (2, 3, 5, 7) and bench.camera.roi_mode == "device"
        expected = np.rint(gray[2:7, 3:10] * DN_PER_LEVEL_S * frame.exposure_s)
        assert np.array_equal(frame.image, expected)
        assert frame.settings["roi"] == [2, 3, 5, 7] and frame.settings["device_roi"] == [2, 3, 5, 7]
        assert frame.settings["roi_mode"] == "device"


@pytest.mark.parametrize("roi, field", [
    ({"offset": [8, 0], "size": [5, 16]}, "camera.roi"),       # past the last row
    ({"offset": [-1, 0], "size": [4, 4]}, "camera.roi"),       # negative offset
    ({"offset": [0, 0], "size": [0, 4]}, "camera.roi"),        # empty
    ({"offset": [0, 0]}, "camera.roi.size"),                   # incomplete
    ({"offset": [0, 0], "size": [4, 4], "shape": 1}, "camera.roi.shape"),
])
def test_a_region_outside_the_sensor_is_refused_naming_the_field(roi, field):
    with pytest.raises(ConfigError) as info:
        open_bench(_bench_config(roi))
    assert info.value.path == field
    if field == "camera.roi":
        assert "12 x 16 sensor" in str(info.value)


class _WindowCamera(Camera):
    """A camera whose device window is aligned to 4 columns (as many sensors' are): the base class crops
    the rest of the ROI in software."""

    def __init__(self, clock):
        self.frame = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12)
        self.window = (0, 0, 8, 12)
        super().__init__(sensor_shape=(8, 12), bit_depth=12, pixel_pitch_m=5e-6, exposure_s=0.01,
                         exposure_limits_s=(1e-3, 1.0), clock=clock)

    def _set_exposure(self, exposure_s):
        return exposure_s

    def _set_roi(self, roi):
        r0, c0, rows, cols = roi
        left, right = 4 * (c0 // 4), min(12, 4 * -(-(c0 + cols) // 4))
        self.window = (r0, left, rows, right - left)
        return self.window

    def _snap(self, timeout_s):
        r0, c0, rows, cols = self.window
        return RawFrame(self.frame[r0:r0 + rows, c0:c0 + cols].copy())


def test_the_base_class_crops_what_the_device_window_leaves():
    with _WindowCamera(VirtualClock()) as camera:
        camera.roi = (1, 5, 3, 4)
        assert camera.roi_mode == "device+software" and camera.settings()["device_roi"] == [1, 4, 3, 8]
        assert np.array_equal(camera.snap().image, camera.frame[1:4, 5:9])
        camera.roi = None
        assert camera.roi_mode == "full" and np.array_equal(camera.snap().image, camera.frame)


def test_a_device_window_not_holding_the_roi_is_a_fault():
    with _WindowCamera(VirtualClock()) as camera:
        camera._set_roi = lambda roi: (0, 0, 2, 2)
        with pytest.raises(DeviceFault, match="does not hold the roi"):
            camera.roi = (1, 1, 3, 3)
        assert camera.roi == (0, 0, 8, 12)
