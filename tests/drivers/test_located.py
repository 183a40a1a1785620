"""The located camera's resampling (drivers.located.FrameMap) against oracles: an identity map copies
the frame, light is conserved, and the noise factors predict the variance of resampled noisy frames."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.located import FrameMap


def _rotation_map(magnification, angle, offset):
    c, s = math.cos(angle), math.sin(angle)
    a = magnification * np.array([[c, s], [-s, c]])
    return np.hstack([a, np.asarray(offset, dtype=float)[:, None]])


def test_an_integer_shift_copies_the_frame_and_has_plain_pixel_noise():
    frame = np.random.default_rng(0).uniform(0, 100, (20, 24))
    mapping = FrameMap([[1, 0, 3], [0, 1, 5]], (12, 14), frame.shape)
    np.testing.assert_allclose(mapping.apply(frame), frame[3:15, 5:19], rtol=1e-12)
    assert mapping.noise_factors() == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("magnification, angle", [(2.37, 0.07), (1.3, -0.2), (0.7, 0.3)])
def test_light_is_conserved(magnification, angle):
    design = (16, 18)
    size = math.ceil(magnification * 30) + 8
    affine = _rotation_map(magnification, angle, (size / 2 - magnification * 8.5,) * 2)
    mapping = FrameMap(affine, design, (size, size))
    np.testing.assert_allclose(mapping.weight_sums(), magnification**2, rtol=1e-9)
    # a smooth light (constant over each camera pixel's few samples): the design frame holds its total
    rows, cols = np.mgrid[0:size, 0:size]
    centre = affine[:, :2] @ [7.5, 8.5] + affine[:, 2]  # of the design frame, whose edge is 6 sigma away
    light = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * (1.2 * magnification) ** 2))
    assert mapping.apply(light).sum() == pytest.approx(light.sum(), rel=5e-3)  # sampled at 4 per camera pixel


def test_the_noise_factors_predict_the_variance_of_resampled_noisy_frames():
    """Poisson-Gaussian camera frames (gain 1 e-/DN, read noise 3 DN) of a flat light: the resampled
    frames' variance is c * mean + d * 3^2 (module docstring of drivers.located)."""
    rng = np.random.default_rng(1)
    mapping = FrameMap(_rotation_map(2.37, 0.07, (12.0, 14.0)), (10, 10), (48, 52))
    flux, read = 200.0, 3.0
    frames = rng.poisson(flux, (2000, 48, 52)) + rng.normal(0, read, (2000, 48, 52))
    mapped = np.stack([mapping.apply(f) for f in frames])
    c, d = mapping.noise_factors()
    predicted = c * mapped.mean(axis=0) + d * read**2
    assert np.mean(mapped.var(axis=0, ddof=1)) == pytest.approx(np.mean(predicted), rel=0.03)
    assert 0.1 < c < 1 and d > 1
