"""The lab-like camera (simulator.placement) against analytic oracles: the identity placement is the
design frame, light is conserved and per-pixel signals scale as 1 / magnification^2, a spot's centroid
lands where the transform says, the fixed pattern has the configured statistics, and all of it is seeded."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from onn_core.errors import ConfigError
from simulator.placement import LabRenderer, Placement, SensorDefects, lab_renderer
from simulator.system import OpticalSystem

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DESIGN = (164, 164)
PLACEMENTS = [  # (center_px, rotation_rad, magnification, mirror, radial_k1)
    ((400.3, 700.7), -0.23, 0.6, False, 0.0),
    ((512.0, 640.0), 0.26, 1.37, True, 0.02),
    ((380.9, 610.2), 0.05, 2.9, False, -0.03),
]


@pytest.fixture(scope="module")
def system():
    return OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval()


def _placement(center, rotation, magnification, mirror, k1, shape=(1024, 1280)):
    return Placement(shape, center, rotation, magnification, mirror, k1)


def _spot(centre_rc, shape=DESIGN, sigma_px=1.5):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((rows - centre_rc[0]) ** 2 + (cols - centre_rc[1]) ** 2) / (2 * sigma_px**2))


def _centroid(image):
    rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.array([(image * rows).sum(), (image * cols).sum()]) / image.sum()


def test_identity_placement_is_the_design_frame(system):
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    placement = Placement.identity(system.frame_shape)
    rates = torch.from_numpy(gray.astype(np.int64))[None, None]
    expected = system.photon_rate_frame(rates).double()
    assert torch.allclose(placement.warp(expected), expected, rtol=1e-12, atol=0)
    lab = LabRenderer(OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval(), placement)
    fresh = OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval()
    assert np.array_equal(lab.render(gray, 0.01), fresh.render(gray, 0.01))  # same noise sequence too


@pytest.mark.parametrize("magnification", [0.5, 0.8, 1.3, 2.9])
def test_light_is_conserved_and_per_pixel_signal_scales_as_one_over_m_squared(magnification):
    design = torch.zeros(1, *DESIGN, dtype=torch.float64)
    design[0, 30:130, 40:120] = 7.0  # a uniform patch
    design[0, 60:70, 50:60] += torch.rand(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    placement = _placement((500.2, 650.6), 0.21, magnification, False, 0.02)
    lab = placement.warp(design)
    assert abs(float(lab.sum() / design.sum()) - 1) < 2e-4
    flat = placement.to_camera(np.array([110.0, 100.0]), DESIGN).round().astype(int)  # inside the uniform part
    factor = 1 + 0.02 * np.sum((flat - np.array([511.5, 639.5])) ** 2) / (np.hypot(1024, 1280) / 2) ** 2
    expected = 7.0 / (magnification**2 * factor * (3 * factor - 2))  # 1 + 3 k rho^2 = 3 factor - 2
    assert float(lab[0, flat[0], flat[1]]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("center, rotation, magnification, mirror, k1", PLACEMENTS)
def test_a_spot_lands_where_the_transform_says(center, rotation, magnification, mirror, k1):
    placement = _placement(center, rotation, magnification, mirror, k1)
    for point in ([40.3, 101.7], [120.6, 20.2], [81.5, 81.5]):
        lab = placement.warp(torch.from_numpy(_spot(point))[None])[0].numpy()
        error = _centroid(lab) - placement.to_camera(np.array(point), DESIGN)
        assert np.hypot(*error) < 0.05, (point, error)
    assert np.allclose(placement.to_design(placement.to_camera(np.array(point), DESIGN), DESIGN), point, atol=1e-9)


def test_the_transform_follows_the_documented_conventions():
    placement = _placement((100.0, 200.0), np.pi / 2, 2.0, False, 0.0)
    centre = (np.array(DESIGN) - 1) / 2
    # the design's centre lands on center_px; its column axis turns towards the row axis
    assert np.allclose(placement.to_camera(centre, DESIGN), [100, 200])
    assert np.allclose(placement.to_camera(centre + [0, 1], DESIGN), [102, 200])
    mirrored = _placement((100.0, 200.0), 0.0, 1.0, True, 0.0)
    assert np.allclose(mirrored.to_camera(centre + [3, 1], DESIGN), [103, 199])


def test_a_design_frame_partly_outside_the_sensor_loses_only_that_light():
    design = torch.ones(1, *DESIGN, dtype=torch.float64)
    placement = _placement((10.0, 640.0), 0.0, 1.0, False, 0.0, shape=(100, 1280))  # rows above 0 are cut
    kept = placement.warp(design)
    assert float(kept.sum()) == pytest.approx(DESIGN[1] * (10 + 1 + 81.5), rel=1e-3)  # rows -71.5 .. 92.5 -> 0 .. 92


def test_fixed_pattern_statistics_match_the_settings(system):
    defects = SensorDefects(prnu_rel_std=0.02, dsnu_e_per_s_std=30.0, hot_pixel_fraction=1e-3,
                            hot_pixel_dark_current_e_per_s=5e4, defect_seed=3)
    lab = LabRenderer(system, _placement(None, 0.1, 1.5, False, 0.0), defects)
    pattern = lab.sensor.fixed_pattern(lab.frame_shape)
    n = pattern.hot.numel()
    assert abs(float(pattern.hot.double().mean()) - 1e-3) < 4 * np.sqrt(1e-3 / n)
    assert float(pattern.response.std()) == pytest.approx(0.02, rel=0.01)
    # dark current: max(0, N(mu, sigma)) per pixel, mean mu Phi(mu / sigma) + sigma phi(mu / sigma)
    mu, sigma = system.sensor.dark_current_e_per_s, 30.0
    normal = pattern.dark_current_e_per_s[~pattern.hot]
    expected = mu * stats.norm.cdf(mu / sigma) + sigma * stats.norm.pdf(mu / sigma)
    assert float(normal.mean()) == pytest.approx(expected, rel=0.01)
    # a dark frame (1 s: hot pixels saturate) shows the hot pixels where the pattern has them, and only there
    frame = lab.render(np.zeros((28, 28), np.uint8), 1.0)
    assert np.array_equal(frame > 0.5 * system.sensor.saturation_dn, pattern.hot.numpy())


def test_rendering_is_seeded(system):
    defects = SensorDefects(prnu_rel_std=0.01, hot_pixel_fraction=1e-4, hot_pixel_dark_current_e_per_s=1e4)
    placement = _placement((500.0, 600.0), 0.1, 1.7, False, 0.01)
    gray = np.full((28, 28), 200, np.uint8)
    a = LabRenderer(OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval(), placement, defects)
    b = LabRenderer(OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval(), placement, defects)
    first = a.render(gray, 0.05)
    assert np.array_equal(first, b.render(gray, 0.05))
    assert not np.array_equal(first, a.render(gray, 0.05))  # fresh noise on the next frame
    other = LabRenderer(system, placement, SensorDefects(prnu_rel_std=0.01, defect_seed=1))
    assert not torch.equal(other.sensor.fixed_pattern((64, 64)).response, a.sensor.fixed_pattern((64, 64)).response)


@pytest.mark.parametrize("section, mapping, field", [
    ("placement", {"magnification": 0}, "camera.placement.magnification"),
    ("placement", {"radial_k1": 0.3}, "camera.placement.radial_k1"),
    ("placement", {"sensor_shape": [1024]}, "camera.placement.sensor_shape"),
    ("placement", {"rotation": 0.1}, "camera.placement.rotation"),
    ("defects", {"prnu_rel_std": -0.1}, "camera.defects.prnu_rel_std"),
    ("defects", {"hot_pixel_fraction": 1.5}, "camera.defects.hot_pixel_fraction"),
])
def test_bad_fields_are_named(system, section, mapping, field):
    placement = mapping if section == "placement" else {}
    defects = mapping if section == "defects" else None
    with pytest.raises(ConfigError, match=f"'{field}'"):
        lab_renderer(system, placement, defects, "camera")
