import math

import pytest
import torch

from simulator.display import DisplayModel, PhaseSLMModel
from onn_core.errors import InputError

f64 = torch.float64


def test_gamma_curve_exact_values():
    display = DisplayModel(pixel_pitch_m=8e-6, bit_depth=8, gamma=2.2, max_radiance_w_sr_m2=100.0)
    out = display(torch.tensor([0, 255, 128, 51]), dtype=f64)
    expected = [0.0, 100.0, 100 * (128 / 255) ** 2.2, 100 * 0.2**2.2]
    assert out.dtype == f64
    assert out.tolist() == pytest.approx(expected, rel=1e-14, abs=0)
    assert display(torch.tensor([255])).dtype == torch.float32


def test_lut_exact_values_and_linear_interpolation():
    lut = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=f64)
    display = DisplayModel(pixel_pitch_m=1e-5, bit_depth=2, lut=lut, max_radiance_w_sr_m2=2.0)
    assert display(torch.tensor([[0, 1], [2, 3]]), dtype=f64).tolist() == [[0.0, 0.2], [1.0, 2.0]]
    assert display(torch.tensor([1.5, 3.0], dtype=f64)).tolist() == pytest.approx([0.6, 2.0], abs=1e-15)
    from_list = DisplayModel(pixel_pitch_m=1e-5, bit_depth=2, lut=[0, 0.1, 0.5, 1], max_radiance_w_sr_m2=2.0)  # YAML
    assert from_list(torch.tensor([2]), dtype=f64).tolist() == [1.0]


def test_lut_interpolation_gradient():
    display = DisplayModel(pixel_pitch_m=1e-5, bit_depth=2, lut=torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=f64), max_radiance_w_sr_m2=2.0)
    gray = torch.tensor([0.3, 1.5, 2.25], dtype=f64, requires_grad=True)
    display(gray).sum().backward()
    # slope of the LUT segment times max radiance
    assert gray.grad.tolist() == pytest.approx([0.2, 0.8, 1.0], abs=1e-14)
    assert torch.autograd.gradcheck(lambda g: DisplayModel(pixel_pitch_m=1e-5, gamma=2.2)(g), (torch.tensor([10.3, 100.7, 200.2], dtype=f64, requires_grad=True),))


def test_render_fill_factor_exact_block_and_power():
    display = DisplayModel(pixel_pitch_m=4e-6, bit_depth=8, gamma=1.0, fill_factor=0.25, max_radiance_w_sr_m2=255.0)
    gray = torch.tensor([[10, 0], [0, 255]])
    fine = display.render(gray, upsample=4, dtype=f64)
    assert fine.shape == (8, 8)
    # emitter = centred square half the pitch wide: the middle 2x2 samples of each 4x4 block, at 4x radiance
    expected_block = torch.zeros(4, 4, dtype=f64)
    expected_block[1:3, 1:3] = 4.0
    torch.testing.assert_close(fine[:4, :4], 10 * expected_block, rtol=0, atol=1e-12)
    torch.testing.assert_close(fine[4:, 4:], 255 * expected_block, rtol=0, atol=1e-12)
    # three samples per pixel: edge samples a quarter covered
    fine3 = display.render(gray, upsample=3, dtype=f64)
    profile = torch.tensor([0.25, 1.0, 0.25], dtype=f64)
    torch.testing.assert_close(fine3[:3, :3], 10 * 4 * profile[:, None] * profile[None, :], rtol=0, atol=1e-12)
    # power per pixel (radiance x area) is preserved for every upsampling
    for s in (1, 3, 4, 7):
        assert float(display.render(gray, s, dtype=f64).sum()) / s**2 == pytest.approx(265.0, rel=1e-12)
    grid = display.render_grid((2, 2), 4)
    assert grid.shape == (8, 8) and grid.spacing_m == (1e-6, 1e-6)


def test_linear_phase_lut_and_wrapping_exact():
    slm = PhaseSLMModel(bit_depth=8)
    assert slm(torch.tensor([0, 64, 128]), dtype=f64).tolist() == [0.0, math.pi / 2, math.pi]
    radians = torch.tensor(
        [math.pi, -math.pi / 2, 2 * math.pi, 2 * math.pi - 0.001, 4 * math.pi + 2 * math.pi * 10 / 256, 2 * math.pi * 0.51 / 256, -1e-6],
        dtype=f64,
    )
    assert slm.phase_to_gray(radians).tolist() == [128, 192, 0, 0, 10, 1, 0]
    assert slm.phase_to_gray(radians).dtype == torch.int64


def test_phase_round_trip_every_level_with_nonlinear_lut():
    levels = torch.arange(256, dtype=f64)
    lut = 0.3 + 0.95 * 2 * math.pi * (levels / 256) ** 1.3
    slm = PhaseSLMModel(bit_depth=8, lut=lut)
    gray = torch.arange(256)
    phases = slm(gray, dtype=f64)
    torch.testing.assert_close(phases, lut, rtol=0, atol=0)
    assert torch.equal(slm.phase_to_gray(phases), gray)
    assert torch.equal(slm.phase_to_gray(phases - 6 * math.pi), gray)
    # halfway between the last level and lut[0] + 2 pi, nudged towards the wrap: level 0
    gap_middle = (lut[-1] + lut[0] + 2 * math.pi) / 2
    assert slm.phase_to_gray(torch.stack([gap_middle + 1e-9, gap_middle - 1e-9])).tolist() == [0, 255]


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: DisplayModel(pixel_pitch_m=-1e-6), "pixel_pitch_m"),
        (lambda: DisplayModel(pixel_pitch_m=1e-6, bit_depth=0), "bit_depth"),
        (lambda: DisplayModel(pixel_pitch_m=1e-6, bit_depth=17), "bit_depth"),
        (lambda: DisplayModel(pixel_pitch_m=1e-6, fill_factor=1.5), "fill_factor"),
        (lambda: DisplayModel(pixel_pitch_m=1e-6, bit_depth=2, lut=torch.ones(5)), "lut"),
        (lambda: DisplayModel(pixel_pitch_m=1e-6, bit_depth=1, lut=torch.tensor([-1.0, 1.0])), "lut"),
        (lambda: DisplayModel(pixel_pitch_m=1e-6, bit_depth=1, lut=["dark", "bright"]), "lut"),
        (lambda: PhaseSLMModel(bit_depth=20), "bit_depth"),
        (lambda: PhaseSLMModel(bit_depth=1, lut=torch.tensor([1.0, 0.5])), "increasing"),
        (lambda: PhaseSLMModel(bit_depth=1, lut=torch.tensor([0.0, 7.0])), "2 pi"),
    ],
)
def test_bad_settings_are_named(factory, name):
    with pytest.raises(InputError, match=name):
        factory()


def test_bad_gray_is_named():
    display, slm = DisplayModel(pixel_pitch_m=1e-6, bit_depth=8), PhaseSLMModel(bit_depth=8)
    for model in (display, slm):
        with pytest.raises(InputError, match=r"gray levels must lie in \[0, 255\]"):
            model(torch.tensor([0, 256]))
        with pytest.raises(InputError, match="gray levels"):
            model(torch.tensor([-0.5]))
        with pytest.raises(InputError, match="gray contains NaN"):
            model(torch.tensor([float("nan")]))
        with pytest.raises(InputError, match="gray must be"):
            model([1, 2])
    with pytest.raises(InputError, match="upsample"):
        display.render(torch.zeros(2, 2, dtype=torch.int64), 0)
    with pytest.raises(InputError, match="radians"):
        slm.phase_to_gray(torch.tensor([1, 2]))


def test_lut_survives_a_config_round_trip_and_gamma_below_one_has_finite_slope():
    from onn_core.config import build, to_plain

    display = build(DisplayModel, {"pixel_pitch_m": 8e-6, "bit_depth": 2, "lut": [0.0, 1 / 3, 2 / 3, 1.0]})
    again = build(DisplayModel, to_plain(display))
    gray = torch.tensor([0, 1, 2, 3])
    assert torch.equal(again.forward(gray, torch.float64), display.forward(gray, torch.float64))
    assert float(again.forward(torch.tensor([1]), torch.float64)) == pytest.approx(1 / 3)
    levels = torch.tensor([0.0, 2.0], dtype=torch.float64, requires_grad=True)
    DisplayModel(pixel_pitch_m=8e-6, gamma=0.5).forward(levels).sum().backward()
    assert bool(torch.isfinite(levels.grad).all())
