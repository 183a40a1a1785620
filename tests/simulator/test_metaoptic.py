"""Meta-optic design: the meta-atom model, the phase mask, and PSF optimisation at a small size."""

import math

import numpy as np
import pytest
import torch

from onn_core.errors import InputError
from simulator.field import Grid
from simulator.field import Field
from simulator.metaoptic import (
    MetaAtomModel,
    PhaseMask,
    aberrated_design_psf,
    aperture_center_m,
    aperture_wavefront_m,
    binned_psf,
    design_psf,
    square_aperture,
)
from simulator.propagation import propagate_asm

BLOB = torch.tensor([[0.5, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 0.5]])
SMALL = dict(aperture_px=32, spacing_m=586e-9, distance_m=120e-6, magnification_px=6)


def test_meta_atom_phase_is_monotone_smooth_and_scales_as_one_over_wavelength():
    model = MetaAtomModel()
    radii = torch.linspace(model.min_radius_m, model.max_radius_m, 200, dtype=torch.float64, requires_grad=True)
    phase = model.phase(radii, [450e-9, 635e-9])
    assert phase.shape == (2, 200)
    assert bool((phase.diff(dim=-1) > 0).all())
    torch.testing.assert_close(phase[0] * 450e-9, phase[1] * 635e-9)
    # r -> 0 leaves an empty cell: no phase; full coverage in this model is close to one wave
    assert float(model.phase(torch.zeros(1, dtype=torch.float64), 532e-9)[0, 0]) == 0.0
    assert 0.8 * 2 * math.pi < model.phase_range(532e-9) < 1.5 * 2 * math.pi
    (grad,) = torch.autograd.grad(phase.sum(), radii)
    assert bool(torch.isfinite(grad).all()) and bool((grad > 0).all())


def _sinc2_fraction(width):
    """Fraction of a 1-D sinc^2 pattern (first zeros at +-1) inside +-width/2, by the trapezoid rule."""
    t = np.linspace(-width / 2, width / 2, 200001)
    return float(np.trapezoid(np.sinc(t) ** 2, t))


def test_lens_initialised_mask_focuses_like_a_square_aperture_lens():
    # square aperture D = 64 cells; in focus the PSF is sinc^2(D x / (lambda z)) per axis (Fraunhofer)
    spacing, z, wavelength, m = 586e-9, 300e-6, 532e-9, 8
    grid = Grid.square(64, spacing)
    mask = PhaseMask(grid, [wavelength], 64, init_focal_length_m=z)
    with torch.no_grad():
        field = mask()
        psf, window_power = binned_psf(propagate_asm(field, z), 5, m)
    efficiency = window_power / field.power()
    assert psf.shape == (1, 1, 5, 5)
    torch.testing.assert_close(psf.sum(), torch.tensor(1.0))
    pixel_in_zeros = m * spacing * 64 * spacing / (wavelength * z)  # kernel pixel / (lambda z / D)
    centre = _sinc2_fraction(pixel_in_zeros) ** 2 / _sinc2_fraction(5 * pixel_in_zeros) ** 2
    assert float(psf[0, 0, 2, 2]) == pytest.approx(centre, rel=0.03)
    assert float(efficiency) == pytest.approx(_sinc2_fraction(5 * pixel_in_zeros) ** 2, rel=0.03)



@pytest.mark.parametrize("aperture_px", [32, 31])
def test_clear_aperture_with_a_lens_start_focuses_symmetrically_on_the_aperture_centre(aperture_px):
    """Even aperture: centred between pixels n//2 - 1 and n//2 (the PSF equals its flip about 31.5);
    odd: on pixel n//2 (symmetric about 32) -- the lens start is centred on the aperture either way."""
    grid, z = Grid.square(64, 586e-9), 120e-6
    mask = PhaseMask(grid, [532e-9], aperture_px, init_focal_length_m=z, dtype=torch.float64)
    with torch.no_grad():
        intensity = propagate_asm(mask(), z).intensity[0, 0]
    half = 0.5 if aperture_px % 2 == 0 else 0.0
    assert aperture_center_m(grid, aperture_px) == (-half * 586e-9, -half * 586e-9)
    sym = intensity if half else intensity[1:, 1:]  # the part that maps onto itself under the flip
    torch.testing.assert_close(sym, sym.flip(0, 1), rtol=1e-9, atol=1e-9 * float(intensity.max()))
    torch.testing.assert_close(sym, sym.T, rtol=1e-9, atol=1e-9 * float(intensity.max()))
    peak = divmod(int(intensity.argmax()), 64)
    assert peak in ((31, 31), (31, 32), (32, 31), (32, 32)) if half else peak == (32, 32)


def test_aperture_wavefront_covers_the_corners_of_the_square():
    """Zernike disk = the square's circumscribed circle: the corner cells carry Z4 and Z6 at rho ~ 1."""
    n, d, aperture_px = 40, 1e-6, 32
    grid = Grid.square(n, d)
    coeffs = torch.tensor([0.0, 0.0, 0.0, 30e-9, 0.0, 20e-9], dtype=torch.float64)
    w = aperture_wavefront_m(grid, aperture_px, coeffs)
    axis = (np.arange(n) - n // 2 + 0.5) * d  # even aperture: centred half a cell towards -y/-x
    y, x = np.meshgrid(axis, axis, indexing="ij")
    radius = aperture_px * d / math.sqrt(2)
    rho2 = (x**2 + y**2) / radius**2
    expected = 30e-9 * math.sqrt(3) * (2 * rho2 - 1) + 20e-9 * math.sqrt(6) * (x**2 - y**2) / radius**2
    inside = square_aperture(grid, aperture_px, torch.float64).numpy() > 0
    np.testing.assert_allclose(w.numpy()[inside], expected[inside], rtol=0, atol=1e-15)
    top = n // 2 - aperture_px // 2
    corner = w[top, top]  # rho = 31/32 of the way to the circle
    assert float(corner) == pytest.approx(30e-9 * math.sqrt(3) * (2 * (31 / 32) ** 2 - 1), rel=1e-9)


def test_aberrated_design_psf_is_the_design_with_the_wavefront_over_the_whole_square():
    result = design_psf(BLOB, [532e-9], steps=3, **SMALL)
    coeffs = torch.tensor([0.0, 0.0, 0.0, 40e-9, 0.0, 30e-9], dtype=torch.float64)
    grid, n = result.grid, SMALL["aperture_px"]
    w = aperture_wavefront_m(grid, n, coeffs)
    assert bool((w[square_aperture(grid, n) > 0] != 0).all())  # no cell left without phase
    phase = result.phase + (2 * math.pi * w / 532e-9).to(result.phase.dtype)
    field = Field(square_aperture(grid, n) * torch.exp(1j * phase), grid, (532e-9,))
    expected, _ = binned_psf(propagate_asm(field, SMALL["distance_m"]), 3, SMALL["magnification_px"])
    torch.testing.assert_close(aberrated_design_psf(result, coeffs), expected)

def test_design_psf_matches_a_blob_target():
    result = design_psf(BLOB, [532e-9], steps=150, seed=0, **SMALL)
    history = result.loss_history
    assert len(history) == 150 and history[-1] < 1e-3 * history[0]
    assert result.psf.shape == (1, 3, 3) and result.phase.shape == (1, 32, 32)
    # documented figure (module docstring of tests / report): nrmse < 1e-3 after 150 steps at this size
    assert float(result.nrmse[0]) < 1e-3
    torch.testing.assert_close(result.target, BLOB / BLOB.sum())
    assert 0 < float(result.window_efficiency[0]) <= 1


def test_aberrated_design_psf_reproduces_the_design_and_defocus_changes_it():
    result = design_psf(BLOB, [532e-9], steps=5, **SMALL)
    zero = aberrated_design_psf(result, torch.zeros(4))
    torch.testing.assert_close(zero, result.psf, atol=1e-6, rtol=0)
    defocused = aberrated_design_psf(result, torch.tensor([0.0, 0.0, 0.0, 0.25 * 532e-9]))
    assert float((defocused - result.psf).abs().max()) > 1e-3
    torch.testing.assert_close(defocused.sum(), torch.tensor(1.0))


def test_design_psf_batched_targets_and_radius_parametrisation_over_two_wavelengths():
    targets = torch.stack([BLOB, BLOB.T.flip(0) + torch.eye(3)])
    model = MetaAtomModel(period_m=586e-9, max_radius_m=250e-9)  # one atom per grid cell
    result = design_psf(targets, [532e-9, 635e-9], steps=60, parametrisation="radius", atom_model=model, **SMALL)
    assert result.psf.shape == (2, 2, 3, 3) and result.nrmse.shape == (2, 2)
    assert result.radii_m is not None and result.radii_m.shape == (2, 32, 32)
    assert float(result.radii_m.min()) >= model.min_radius_m and float(result.radii_m.max()) <= model.max_radius_m
    assert result.loss_history[-1] < 0.5 * result.loss_history[0]


def test_design_psf_rejects_bad_input():
    with pytest.raises(InputError, match="non-negative"):
        design_psf(-BLOB, [532e-9], steps=1, **SMALL)
    with pytest.raises(InputError, match="square"):
        design_psf(torch.ones(3, 4), [532e-9], steps=1, **SMALL)
    with pytest.raises(InputError, match="magnification_px"):
        design_psf(BLOB, [532e-9], steps=1, **{**SMALL, "magnification_px": 0})
    with pytest.raises(InputError, match="distance_m"):
        design_psf(BLOB, [532e-9], steps=1, **{**SMALL, "distance_m": -1.0})
    with pytest.raises(InputError, match="max_radius_m"):
        MetaAtomModel(max_radius_m=400e-9)
    with pytest.raises(InputError, match="period_m"):
        design_psf(BLOB, [532e-9], steps=1, parametrisation="radius", **SMALL)


@pytest.mark.slow
def test_paper_scale_design_runs():
    """The paper's scale: 1600 px aperture on a 586 nm grid, 2.4 mm, 20 px per kernel pixel, 7x7 (about
    5 s per step on one CPU core, so only 20 steps here; the paper runs ~500)."""
    target = torch.rand((7, 7), generator=torch.Generator().manual_seed(0))
    result = design_psf(target, [532e-9], aperture_px=1600, spacing_m=586e-9, distance_m=2.4e-3,
                        magnification_px=20, steps=20)
    assert result.grid.shape == (1600, 1600)
    assert result.loss_history[-1] < 0.5 * result.loss_history[0]
