"""The lab-like simulated bench (examples/bench_lab_sim.yaml): the camera delivers its own sensor format
with the design's image placed as configured, and its config fields are checked by name."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from drivers.clock import VirtualClock
from drivers.config import open_bench
from onn_core.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _config(**camera):
    config = yaml.safe_load((EXAMPLES / "bench_lab_sim.yaml").read_text())
    config["camera"]["optics"] = str(EXAMPLES / "optics.yaml")
    config["camera"].pop("locate")  # the camera's own frames (the location is tested in tests/calibration)
    config["camera"].update(camera)
    return config


def test_the_lab_bench_delivers_the_sensor_format_with_the_image_where_placed():
    config = _config()
    placement = config["camera"]["placement"]
    with open_bench(config, clock=VirtualClock()) as bench:
        assert bench.camera.sensor_shape == tuple(placement["sensor_shape"])
        assert bench.camera.pixel_pitch_m == pytest.approx(3.45e-6 / placement["magnification"])
        dark = bench.measure(np.zeros((28, 28), np.uint8)).frame.image.astype(float)
        lit = bench.measure(np.full((28, 28), 255, np.uint8)).frame.image.astype(float)
    signal = np.clip(lit - dark, 0, None)
    signal[signal < 0.2 * signal.max()] = 0
    rows, cols = np.nonzero(signal)
    weights = signal[rows, cols]
    centroid = np.array([np.average(rows, weights=weights), np.average(cols, weights=weights)])
    # the tiles' light is centred near where the design frame's centre lands (the tiles' brightness differs)
    assert np.hypot(*(centroid - placement["center_px"])) < 0.05 * 164 * placement["magnification"]


def test_the_simulated_display_shows_the_image_zoomed_in_a_larger_screen():
    with open_bench(_config(), clock=VirtualClock()) as bench:
        slm = bench.slm
        assert slm.pixel_pitch_m == pytest.approx(3.45e-6) and slm.window == ((1080, 1920), (400, 1100), 2)
        image = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
        slm.show(image)
        screen = slm.screen()
        assert screen.shape == (1080, 1920) and screen.sum() == 4 * image.astype(int).sum()
        assert np.array_equal(screen[400:456:2, 1100:1156:2], image) and np.array_equal(screen[401:457:2, 1101:1157:2], image)
        assert slm.settings()["zoom"] == 2


@pytest.mark.parametrize("slm, field", [
    ({"window": {"size": [1080, 1920], "zoom": 0}}, "slm.window.zoom"),
    ({"window": {"size": [40, 40], "zoom": 2}}, "slm.window.size"),
    ({"window": {"size": [100, 100], "offset": [50, 50], "zoom": 2}}, "slm.window.offset"),
    ({"window": {"zoom": 1}}, "slm.pixel_pitch_m"),  # 1.725 um image pixels: not the optics' 3.45 um
])
def test_bad_screen_fields_are_named(slm, field):
    config = _config()
    config["slm"].update(slm)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as caught:
        open_bench(config, clock=VirtualClock())
    assert caught.value.path == field


@pytest.mark.parametrize("camera, field", [
    ({"placement": {"magnification": -2}}, "camera.placement.magnification"),
    ({"placement": {"center_px": [1, 2, 3]}}, "camera.placement.center_px"),
    ({"placement": None, "defects": {"prnu_rel_std": 0.01}}, "camera.placement"),
    ({"defects": {"dsnu_e_per_s_std": -1}}, "camera.defects.dsnu_e_per_s_std"),
    ({"render": "direct", "optics": None}, "camera.placement"),
])
def test_bad_lab_camera_fields_are_named(camera, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        open_bench(_config(**camera), clock=VirtualClock())


def test_a_region_of_interest_renders_only_that_region_and_equals_the_crop_of_the_whole_frame():
    """The lab camera renders just its ROI (LabRenderer.render(..., roi=)); with the sensor's noise off the
    frame is exactly the crop of the whole sensor's frame (same placement, defects, gain and black level):
    the warp computes every camera pixel on its own and the fixed pattern is the whole sensor's, cropped."""
    optics = yaml.safe_load((EXAMPLES / "optics.yaml").read_text())
    optics["sensor"]["noise"] = False
    image = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    with open_bench(_config(optics=optics), clock=VirtualClock()) as bench:
        camera = bench.camera
        calls = []
        render = camera._render
        camera._render = lambda gray, exposure_s, **kw: calls.append(kw) or render(gray, exposure_s, **kw)
        camera.gain, camera.black_level = 1.5, 40.0
        whole = bench.measure(image).frame.image
        roi = (300, 480, 450, 470)  # holds the placed tiles' middle, cuts through others
        camera.roi = roi
        part = bench.measure(image).frame.image
    assert calls == [{}, {"roi": roi}]
    r0, c0, rows, cols = roi
    assert part.shape == (rows, cols) and whole[r0:r0 + rows, c0:c0 + cols].max() > 1000
    assert np.array_equal(part, whole[r0:r0 + rows, c0:c0 + cols])
