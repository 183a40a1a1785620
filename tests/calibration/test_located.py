"""Calibration through ``camera.locate`` on the lab-like bench: the design's frame lies somewhere on a
larger sensor (random placement: offset, rotation, non-integer magnification, distortion); `hil locate`
finds it, the located camera resamples each frame into the design frame, and calibration and the
calibration layer work on those as on a bench built to the design."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from calibration.api import calibrate
from calibration.locate import locate
from drivers.config import open_bench
from drivers.located import LocatedCamera
from onn_core.errors import ConfigError
from simulator.placement import Placement
from simulator.system import OpticalSystem
from tests.calibration.benches import bench_config, example_optics

SPEC = {"shift_std_px": 0.5, "brightness_rel_std": 0.1, "crosstalk": 0.003, "vignetting_tan_edge": 0.1}
ERRORS = {"errors": {"seed": 19, "spec": SPEC}}
QUICK = {"stages": ["geometry", "psf", "fit"], "geometry": {"averages": 2, "phases": 2}, "psf": {"averages": 2},
         "fit": {"stages": ["geometry", "photometry", "optics"], "zernike_noll": []}}
SENSOR = (640, 720)


def nominal() -> OpticalSystem:
    return OpticalSystem.from_config({**example_optics(), "errors": None}).eval()


def lab_config(placement: Placement, overrides=ERRORS) -> dict:
    """The calibration tests' bench with its camera's frame placed on a larger sensor."""
    config = bench_config(overrides, exposure_s=0.01 * placement.magnification**2)
    config["camera"]["placement"] = {k: list(v) if isinstance(v, tuple) else v
                                     for k, v in dataclasses.asdict(placement).items()}
    return config


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A random placement (seeded), located and calibrated; and the same optics on the design's bench."""
    placement = Placement.random(11, (164, 164), SENSOR, magnification=(2.0, 2.6), max_radial_k1=0.01)
    config = lab_config(placement)
    grid = tmp_path_factory.mktemp("located") / "grid.yaml"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with open_bench(config) as bench:
            locate(bench, nominal(), averages=1).save(grid)
        config["camera"]["locate"] = str(grid)
        with open_bench(config) as bench:
            calibration = calibrate(bench, nominal(), QUICK)
            truth = bench.camera.optics.errors
        with open_bench(bench_config(ERRORS)) as bench:
            design_calibration = calibrate(bench, nominal(), QUICK)
    finally:
        torch.set_num_threads(threads)
    return placement, config, calibration, design_calibration, truth


def test_the_located_camera_delivers_the_design_frame(lab):
    placement, config, calibration, _, _ = lab
    located = calibration.bench_settings["camera"]["located"]
    assert calibration.bench_settings["camera"]["sensor_shape"] == [164, 164]
    assert located["camera_sensor_shape"] == list(SENSOR)
    assert located["magnification"] == pytest.approx(placement.magnification, rel=0.01)
    assert 0 < located["shot_noise_factor"] < 1 and located["read_noise_factor"] > 0
    with open_bench(config, located=False) as bench:  # what `hil locate` opens: the camera's own frames
        assert bench.camera.shape == SENSOR and not isinstance(bench.camera, LocatedCamera)


def test_calibration_recovers_the_injected_errors_through_the_located_map(lab):
    """Tile shifts up to a common translation (the placement cannot tell it from a shift of every tile),
    brightness up to a common factor within a few percent."""
    _, _, calibration, _, truth = lab
    fit = calibration.fit.errors
    error = (fit.shift_px - truth.shift_px).numpy()
    assert np.abs(error - error.mean(axis=0)).max() < 0.15
    assert np.abs(error.mean(axis=0)).max() < 0.3
    ratio = (fit.brightness / truth.brightness).numpy()
    assert np.abs(ratio / ratio.mean() - 1).max() < 0.05 and ratio.mean() == pytest.approx(1, abs=0.05)


def test_features_through_the_located_camera_are_close_to_the_design_bench(lab):
    """The same images through the lab bench (located, its calibration's layer) and through the design's
    bench (its own calibration): the features agree within 0.3 of their norm (two captures on the design
    bench differ by 0.11: noise; the rest is the resampling's blur, which fine-tuning learns)."""
    _, config, calibration, design_calibration, _ = lab
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    features = []
    for bench_cfg, cal in ((config, calibration), (bench_config(ERRORS), design_calibration)):
        layer = cal.layer()
        with open_bench(bench_cfg) as bench:
            frames = [bench.measure(image).frame for image in images]
        features.append(layer(np.stack([f.image for f in frames]), frames[0].exposure_s).flatten())
    lab_features, design_features = features
    assert float((lab_features - design_features).norm() / design_features.norm()) < 0.3
    assert float(torch.corrcoef(torch.stack(features))[0, 1]) > 0.95


def test_a_roi_not_holding_the_grid_or_a_missing_location_is_refused(lab, tmp_path):
    placement, config, _, _, _ = lab
    with pytest.raises(ConfigError) as info:
        open_bench({**config, "camera": {**config["camera"], "roi": {"offset": [0, 0], "size": [100, 100]}}})
    assert info.value.path == "camera.roi" and "holding the located grid" in str(info.value)
    with pytest.raises(ConfigError) as info:
        open_bench({**config, "camera": {**config["camera"], "locate": str(tmp_path / "none.yaml")}})
    assert info.value.path == "camera.locate" and "hil locate" in str(info.value)
