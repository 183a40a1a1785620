import math

import pytest
import torch

from simulator import config as config_io
from onn_core.errors import ConfigError, InputError
from simulator.sensor import SensorModel, area_resample, area_resample_matrix

SAMPLES = 200_000


def _gen(seed=1234):
    return torch.Generator().manual_seed(seed)


def _assert_mean_var(x, mean, var, fourth_central_moment):
    """Sample mean and variance within 5 standard errors of their expected values."""
    n = x.numel()
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n)
    se_var = math.sqrt((fourth_central_moment - var**2) / n)
    assert abs(float(x.var()) - var) < 5 * se_var


def test_poisson_shot_noise_mean_and_variance():
    lam = 50.0
    sensor = SensorModel(quantum_efficiency=0.5, dark_current_e_per_s=4.0, exposure_s=2.5)
    out = sensor(torch.full((SAMPLES, 1), 80.0, dtype=torch.float64), generator=_gen())
    # 0.5 * 80 photo-electrons + 4 e-/s * 2.5 s dark electrons = 50 e-, Poisson: variance = mean
    _assert_mean_var(out, lam, lam, lam * (1 + 3 * lam))
    assert torch.equal(out, out.round())  # electron counts are integers


def test_read_noise_mean_and_variance():
    sigma = 3.0
    sensor = SensorModel(read_noise_e=sigma, shot_noise=False)
    out = sensor(torch.zeros(SAMPLES, 1, dtype=torch.float64), generator=_gen())
    _assert_mean_var(out, 0.0, sigma**2, 3 * sigma**4)


def test_shot_and_read_noise_add_in_variance_and_gain_scales():
    lam, sigma, gain = 30.0, 4.0, 2.0
    sensor = SensorModel(read_noise_e=sigma, gain_e_per_dn=gain, offset_dn=100.0)
    out = sensor(torch.full((SAMPLES, 1), lam, dtype=torch.float64), generator=_gen(7))
    electrons = (out - 100.0) * gain
    var = lam + sigma**2
    fourth = lam * (1 + 3 * lam) + 6 * lam * sigma**2 + 3 * sigma**4  # independent sum
    _assert_mean_var(electrons, lam, var, fourth)


def test_noise_switch_gives_expected_values():
    sensor = SensorModel(read_noise_e=5.0, quantum_efficiency=0.8, dark_current_e_per_s=2.0, exposure_s=0.5, noise=False)
    x = torch.tensor([[0.0, 10.0], [100.0, 2.5]], dtype=torch.float64)
    torch.testing.assert_close(sensor(x), 0.8 * x + 1.0, rtol=0, atol=1e-12)


def test_quantisation_offset_and_clipping_exact():
    sensor = SensorModel(gain_e_per_dn=2.5, offset_dn=10.0, bit_depth=8, noise=False)
    electrons = torch.tensor([[0.0, 1.2, 3.75, 1000.0, 1.25]], dtype=torch.float64)
    # DN = e/2.5 + 10 = 10, 10.48, 11.5, 410, 10.5 -> nearest code (halves up), clipped at 255
    assert sensor(electrons).tolist() == [[10.0, 10.0, 12.0, 255.0, 11.0]]
    below = SensorModel(offset_dn=-5.0, bit_depth=8, noise=False)
    assert below(torch.tensor([[0.0, 7.0]])).tolist() == [[0.0, 2.0]]


def test_full_well_saturation_exact():
    sensor = SensorModel(full_well_e=100.0, gain_e_per_dn=2.5, offset_dn=10.0, bit_depth=10, noise=False)
    electrons = torch.tensor([[50.0, 100.0, 150.0, 1e6]], dtype=torch.float64)
    assert sensor(electrons).tolist() == [[30.0, 50.0, 50.0, 50.0]]


def test_bit_justification_exact():
    photons = torch.tensor([[0.0, 1.0, 2.6, 4095.7, 9999.0]], dtype=torch.float64)
    left = SensorModel(bit_depth=12, container_bits=16, justify="left", noise=False)
    assert left(photons).tolist() == [[0.0, 16.0, 48.0, 65520.0, 65520.0]]
    assert left.max_dn == 65520.0
    right = SensorModel(bit_depth=12, container_bits=16, justify="right", noise=False)
    assert right(photons).tolist() == [[0.0, 1.0, 3.0, 4095.0, 4095.0]]
    noisy = SensorModel(bit_depth=12, container_bits=16, read_noise_e=3.0)(torch.full((50, 50), 700.0), generator=_gen())
    assert torch.equal(torch.remainder(noisy, 16), torch.zeros_like(noisy))


def test_integer_binning_preserves_energy_and_sums_blocks():
    x = torch.rand(2, 3, 12, 18, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sensor = SensorModel(input_pitch_m=1e-6, pixel_pitch_m=3e-6, noise=False)
    out = sensor(x)
    assert out.shape == (2, 3, 4, 6)
    torch.testing.assert_close(out[..., 1, 2], x[..., 3:6, 6:9].sum(dim=(-2, -1)))
    torch.testing.assert_close(out.sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))
    # the general area-weighted path gives the same binning
    a = area_resample_matrix(12, 3.0)
    torch.testing.assert_close(a @ x[0, 0] @ area_resample_matrix(18, 3.0).T, out[0, 0])


def test_non_integer_resampling_is_area_weighted_and_energy_preserving():
    # 1-D: 3 samples [1, 2, 3] into pixels 1.5 samples wide: [1 + 0.5*2, 0.5*2 + 3] = [2, 4]
    a = area_resample_matrix(3, 1.5)
    torch.testing.assert_close(a @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([2.0, 4.0], dtype=torch.float64))
    x = torch.rand(4, 13, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for ratio in (1.5, 2.0, 2.7, 0.6):  # 2.0 does not divide 13 rows: last pixel half covered
        out = area_resample(x, ratio)
        assert out.shape[-2:] == (math.ceil(13 / ratio), math.ceil(10 / ratio))
        torch.testing.assert_close(out.sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))


def test_same_seed_same_frame_other_seed_other_frame():
    sensor = SensorModel(read_noise_e=2.0, bit_depth=10, gain_e_per_dn=0.5)
    x = torch.full((32, 32), 40.0)
    first, again, other = (sensor(x, generator=_gen(s)) for s in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_gradcheck_through_differentiable_stages():
    sensor = SensorModel(
        input_pitch_m=1e-6, pixel_pitch_m=1.5e-6, quantum_efficiency=0.7, dark_current_e_per_s=3.0,
        full_well_e=1e4, gain_e_per_dn=1.7, offset_dn=4.0, noise=False,
    )  # fmt: skip
    x = (torch.rand(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10).requires_grad_()
    assert torch.autograd.gradcheck(sensor, (x,))


def test_straight_through_gradients_of_shot_noise_and_adc():
    sensor = SensorModel(quantum_efficiency=0.5, gain_e_per_dn=2.0, read_noise_e=1.0, bit_depth=12, container_bits=16)
    photons = torch.tensor([[100.0, 150.0, 1e6]], dtype=torch.float64, requires_grad=True)
    out = sensor(photons, generator=_gen())
    weights = torch.tensor([[1.0, -3.0, 2.0]], dtype=torch.float64)
    (out * weights).sum().backward()
    # documented surrogate: d out / d photons = QE / gain * 16 (left justification) through the Poisson
    # draw and the rounding; 0 where the ADC clips (third pixel saturates)
    expected = weights * torch.tensor([[0.5 / 2.0 * 16, 0.5 / 2.0 * 16, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(photons.grad, expected, rtol=0, atol=1e-12)


def test_fft_roundoff_negatives_are_zero_photons():
    sensor = SensorModel(noise=False)
    out = sensor(torch.tensor([[-1e-12, 5.0]], dtype=torch.float64))
    assert out.tolist() == [[0.0, 5.0]]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"bit_depth": 0}, "bit_depth"),
        ({"bit_depth": 33}, "bit_depth"),
        ({"bit_depth": 12, "container_bits": 8}, "container_bits"),
        ({"container_bits": 16}, "container_bits"),
        ({"pixel_pitch_m": -1e-6}, "pixel_pitch_m"),
        ({"input_pitch_m": 0.0}, "input_pitch_m"),
        ({"quantum_efficiency": 1.5}, "quantum_efficiency"),
        ({"read_noise_e": -1.0}, "read_noise_e"),
        ({"gain_e_per_dn": 0.0}, "gain_e_per_dn"),
        ({"exposure_s": float("nan")}, "exposure_s"),
        ({"bit_depth": 8, "justify": "middle"}, "justify"),
        ({"prnu_rel_std": -0.1}, "prnu_rel_std"),
        ({"hot_pixel_fraction": 1.5}, "hot_pixel_fraction"),
        ({"dead_pixel_fraction": -0.1}, "dead_pixel_fraction"),
        ({"hot_pixel_dark_current_e_per_s": -1.0}, "hot_pixel_dark_current_e_per_s"),
        ({"defect_seed": 1.5}, "defect_seed"),
    ],
)
def test_bad_settings_are_named(kwargs, name):
    with pytest.raises(InputError, match=name):
        SensorModel(**kwargs)


def test_bad_input_is_named():
    sensor = SensorModel()
    with pytest.raises(InputError, match="NaN"):
        sensor(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(InputError, match=">= 0"):
        sensor(torch.tensor([[1.0, -0.5]]))
    with pytest.raises(InputError, match="floating"):
        sensor(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(InputError, match="dims"):
        sensor(torch.ones(3))


def test_no_fixed_pattern_by_default():
    sensor = SensorModel(read_noise_e=2.0, dark_current_e_per_s=3.0)
    assert not sensor.has_fixed_pattern
    pattern = sensor.fixed_pattern((4, 5))
    assert not pattern.hot.any() and not pattern.dead.any()
    assert torch.equal(pattern.response, torch.ones(4, 5, dtype=torch.float64))
    assert torch.equal(pattern.dark_current_e_per_s, torch.full((4, 5), 3.0, dtype=torch.float64))
    # hot pixels without extra dark current are no different from the others
    assert not SensorModel(hot_pixel_fraction=0.5).has_fixed_pattern


def test_fixed_pattern_statistics_and_exact_expected_frame():
    sensor = SensorModel(quantum_efficiency=0.5, dark_current_e_per_s=2.0, prnu_rel_std=0.03, hot_pixel_fraction=0.02,
                         hot_pixel_dark_current_e_per_s=500.0, dead_pixel_fraction=0.01, defect_seed=11,
                         gain_e_per_dn=2.0, offset_dn=7.0, noise=False)
    shape = (300, 400)
    pattern = sensor.fixed_pattern(shape)
    n = shape[0] * shape[1]
    for mask, fraction in ((pattern.hot, 0.02 * 0.99), (pattern.dead, 0.01)):  # hot excludes dead pixels
        assert abs(int(mask.sum()) - fraction * n) < 5 * math.sqrt(fraction * n)
    assert not (pattern.hot & pattern.dead).any()
    alive = pattern.response[~pattern.dead]
    assert abs(float(alive.std()) - 0.03) < 5 * 0.03 / math.sqrt(2 * alive.numel())
    assert abs(float(alive.mean()) - 1.0) < 5 * 0.03 / math.sqrt(alive.numel())
    photons = torch.full(shape, 80.0, dtype=torch.float64)
    out = sensor(photons, exposure_s=0.5)
    expected = (80.0 * 0.5 * pattern.response + pattern.dark_current_e_per_s * 0.5) / 2.0 + 7.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.equal(out[pattern.dead], torch.full_like(out[pattern.dead], 7.0))  # offset only
    torch.testing.assert_close(out[pattern.hot].mean(), torch.tensor((40.0 + 502.0 * 0.5) / 2.0 + 7.0, dtype=torch.float64),
                               rtol=0, atol=5 * 20 * 0.03 / math.sqrt(int(pattern.hot.sum())))


def test_fixed_pattern_is_seeded_and_noise_independent():
    kwargs = dict(prnu_rel_std=0.05, dead_pixel_fraction=0.05, read_noise_e=1.0)
    first = SensorModel(defect_seed=3, **kwargs).fixed_pattern((20, 30))
    assert torch.equal(first.response, SensorModel(defect_seed=3, **kwargs).fixed_pattern((20, 30)).response)
    assert not torch.equal(first.response, SensorModel(defect_seed=4, **kwargs).fixed_pattern((20, 30)).response)
    # the frame's noise draws do not move the fixed pattern: two noisy frames agree on the dead pixels
    sensor = SensorModel(defect_seed=3, **kwargs)
    frames = [sensor(torch.full((20, 30), 1000.0), generator=_gen(s)) for s in (1, 2)]
    for frame in frames:
        assert float(frame[first.dead].abs().max()) < 8.0  # read noise only
        assert float(frame[~first.dead].min()) > 500.0


def test_fixed_pattern_fields_build_from_a_config_and_are_named():
    sensor = config_io.build(SensorModel, {"prnu_rel_std": 0.01, "hot_pixel_fraction": 0.001,
                                           "hot_pixel_dark_current_e_per_s": 100.0, "defect_seed": 5}, "optics.sensor")
    assert sensor.has_fixed_pattern and sensor.defect_seed == 5
    with pytest.raises(ConfigError, match="optics.sensor.defect_seed"):
        config_io.build(SensorModel, {"defect_seed": "a"}, "optics.sensor")


def test_fixed_pattern_gradient_is_the_response():
    sensor = SensorModel(quantum_efficiency=0.8, prnu_rel_std=0.1, dead_pixel_fraction=0.2, defect_seed=2, noise=False)
    photons = torch.full((6, 7), 50.0, dtype=torch.float64, requires_grad=True)
    sensor(photons).sum().backward()
    torch.testing.assert_close(photons.grad, 0.8 * sensor.fixed_pattern((6, 7)).response, rtol=0, atol=1e-12)
