"""A lab camera's region of interest (simulator.placement): warping and rendering only a window of the
sensor gives exactly that crop of the whole sensor's (noise off), for magnified and minified (sub-sampled)
placements with and without distortion, the fixed pattern included; windows off the sensor are refused."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from onn_core.errors import InputError
from simulator.placement import LabRenderer, Placement, SensorDefects
from simulator.system import OpticalSystem

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFECTS = SensorDefects(prnu_rel_std=0.01, dsnu_e_per_s_std=20.0, hot_pixel_fraction=1e-3,
                        hot_pixel_dark_current_e_per_s=2e4, defect_seed=7)
PLACEMENTS = [  # (center_px, rotation_rad, magnification, mirror, radial_k1)
    ((531.4, 702.8), 0.07, 2.37, False, 0.01),
    ((400.3, 700.7), -0.23, 0.6, True, -0.03),   # minified: 2 x 2 sub-samples per camera pixel
    ((512.0, 640.0), 0.26, 1.37, True, 0.0),
]


@pytest.fixture(scope="module")
def system():
    return OpticalSystem.from_yaml(EXAMPLES / "optics.yaml").eval()


def _windows(placement):
    r0, r1, c0, c1 = placement._footprint((164, 164))
    return [(r0 + 7, c0 - 3, r1 - r0 - 20, c1 - c0 + 5),  # most of the image, one edge beyond it
            (r0 + 33, c0 + 41, 17, 300),                 # a strip through it
            (0, 0, 40, 50),                              # no light at all
            (0, 0, *placement.sensor_shape)]


@pytest.mark.parametrize("spec", PLACEMENTS)
def test_a_window_renders_exactly_the_crop_of_the_whole_sensor(system, spec):
    placement = Placement((1024, 1280), *spec)
    lab = LabRenderer(system, placement, DEFECTS)
    lab.sensor = dataclasses.replace(lab.sensor, noise=False)
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    whole = lab.render(gray, 0.05)
    rates = system.photon_rate_frame(torch.from_numpy(gray.astype(np.int64))[None, None]).double()
    warped = placement.warp(rates)
    for r0, c0, rows, cols in _windows(placement):
        part = lab.render(gray, 0.05, roi=(r0, c0, rows, cols))
        assert part.shape == (rows, cols)
        assert np.array_equal(part, whole[r0:r0 + rows, c0:c0 + cols])
        assert torch.equal(placement.warp(rates, (r0, c0, rows, cols)), warped[..., r0:r0 + rows, c0:c0 + cols])


def test_a_noisy_window_is_seeded_and_keeps_the_fixed_pattern(system):
    placement = Placement((1024, 1280), *PLACEMENTS[0])
    dark = np.zeros((28, 28), np.uint8)
    roi = (100, 200, 64, 80)
    a, b = LabRenderer(system, placement, DEFECTS), LabRenderer(system, placement, DEFECTS)
    first = a.render(dark, 1.0, roi=roi)
    assert np.array_equal(first, b.render(dark, 1.0, roi=roi))
    hot = a.sensor.fixed_pattern((1024, 1280)).hot[100:164, 200:280].numpy()
    assert hot.any() and first[hot].min() > np.percentile(first[~hot], 99.9)  # the whole sensor's hot pixels, cropped


@pytest.mark.parametrize("window", [(-1, 0, 10, 10), (0, 0, 0, 10), (1000, 0, 30, 10), (0, 1275, 10, 10)])
def test_a_window_off_the_sensor_is_refused(window):
    with pytest.raises(InputError, match="window"):
        Placement((1024, 1280)).warp(torch.ones(1, 8, 8), window)
