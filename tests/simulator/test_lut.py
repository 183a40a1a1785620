"""LUT: exact round trips, circular phase inverse, measured LUTs, file round trip."""

import math

import numpy as np
import pytest

from onn_core.lut import LUT
from onn_core.errors import InputError


def test_linear_intensity_round_trip_is_exact():
    lut = LUT.linear(8)
    gray = np.arange(256)
    assert np.array_equal(lut.to_gray(lut.to_value(gray)), gray)
    assert lut.to_value(np.array([0, 255])).tolist() == [0.0, 1.0]
    assert lut.to_gray([-0.5, 2.0]).tolist() == [0, 255]  # clipped to the ends


def test_gamma_inverse_linearises():
    lut = LUT.gamma(8, 2.0)
    # intensity 0.25 = (g/255)^2 -> g = 127.5: nearest levels 127/128 are equally far in gray, but not in value
    g = int(lut.to_gray(0.25))
    assert g in (127, 128)
    assert abs(lut.values[g] - 0.25) <= min(abs(lut.values[127] - 0.25), abs(lut.values[128] - 0.25))
    assert lut.to_gray(lut.values[200]) == 200


def test_phase_inverse_is_circular():
    lut = LUT.linear(8, "phase")  # level g -> 2 pi g / 256
    step = 2 * math.pi / 256
    assert lut.to_gray(2 * math.pi - 0.1 * step) == 0  # nearer to 0 (== 2 pi) than to level 255
    assert lut.to_gray(2 * math.pi - 0.9 * step) == 255
    assert lut.to_gray(-step) == 255
    phases = np.array([0.0, 1.0, 3.0, 6.0])
    assert np.array_equal(lut.to_gray(phases + 4 * math.pi), lut.to_gray(phases))
    assert lut.to_gray(10 * step) == 10


def test_phase_falling_with_level_is_a_valid_lut():
    """slmsuite's convention: the phase delay falls as the level rises (level g -> -2 pi (g + 1) / 256)."""
    step = 2 * math.pi / 256
    lut = LUT(-step * (np.arange(256) + 1), "phase")
    assert lut.to_gray(-step) == 0 and lut.to_gray(step) == 254 and lut.to_gray(0.0) == 255
    assert lut.to_gray(math.pi + 0.4 * step) == 127


def test_from_measurement_normalises_and_is_monotonic():
    gray = np.array([0, 64, 128, 192, 255])
    measured = np.array([10.0, 30.0, 29.0, 80.0, 110.0])  # a noisy dip at 128
    lut = LUT.from_measurement(gray, measured, bit_depth=8)
    assert lut.values[0] == 0.0 and lut.values[255] == 1.0
    assert np.all(np.diff(lut.values) >= 0)
    assert lut.values[64] == pytest.approx(0.2)
    assert lut.values[32] == pytest.approx(0.1)  # linear interpolation between measured levels
    with pytest.raises(InputError):
        LUT.from_measurement([0, 0], [1.0, 2.0], bit_depth=8)
    with pytest.raises(InputError):
        LUT.from_measurement([0, 300], [1.0, 2.0], bit_depth=8)


def test_file_round_trip(tmp_path):
    lut = LUT.gamma(4, 1.7)
    lut.save(tmp_path / "lut.txt")
    back = LUT.from_file(tmp_path / "lut.txt")
    assert back == lut
    (tmp_path / "bad.txt").write_text("0 0.0\n2 1.0\n")
    with pytest.raises(InputError, match="every gray level"):
        LUT.from_file(tmp_path / "bad.txt")
    with pytest.raises(InputError, match="cannot read"):
        LUT.from_file(tmp_path / "missing.txt")


def test_rejects_bad_tables():
    with pytest.raises(InputError, match="2\\*\\*bit_depth"):
        LUT(np.linspace(0, 1, 100))
    with pytest.raises(InputError, match="non-decreasing"):
        LUT(np.linspace(1, 0, 256))
    with pytest.raises(InputError, match="kind"):
        LUT(np.linspace(0, 1, 256), "colour")
    with pytest.raises(InputError):
        LUT.linear(8).to_value([256])


def test_phase_inverse_is_the_circular_nearest_level_for_any_level_order():
    rng = np.random.default_rng(0)
    for values in (np.linspace(5.0, -1.0, 64), np.cumsum(rng.uniform(0.0, 0.2, 64)) - 3.0):
        lut = LUT(values, "phase")
        wanted = rng.uniform(-20, 20, 2000)
        distance = np.abs(np.mod(wanted[:, None] - values[None, :] + np.pi, 2 * np.pi) - np.pi)
        got = lut.to_gray(wanted)
        np.testing.assert_allclose(distance[np.arange(2000), got], distance.min(axis=1), atol=1e-12)
