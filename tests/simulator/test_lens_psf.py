"""PSFs of circular apertures against the Airy oracle, thin lenses, defocus, and the 4f system."""

import math

import numpy as np
import pytest
import torch
from scipy.special import j0, j1

from onn_core.errors import InputError
from simulator.field import Field, Grid
from simulator.lens import FourF, apply_thin_lens, four_f, thin_lens_phase
from simulator.propagation import propagate_asm, propagate_fresnel
from simulator.pupil import circular_pupil, disk_area_fraction, psf_from_pupil
from simulator.zernike import defocus_to_noll_coefficient, zernike_wavefront

WAVELENGTH = 0.5e-6
FOCAL = 10e-3
RADIUS = 1e-3  # aperture radius: f-number N = f / (2 a) = 5
F_NUMBER = FOCAL / (2 * RADIUS)
LN = WAVELENGTH * F_NUMBER  # lambda N, the PSF length scale
PUPIL_GRID = Grid.square(256, 2 * RADIUS / 200)  # 200 samples across the aperture, 256 px grid


@pytest.fixture(scope="module")
def pupil():
    return circular_pupil(PUPIL_GRID, RADIUS, dtype=torch.float64)


def airy(r):
    v = np.pi * np.asarray(r) / LN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(v == 0, 1.0, (2 * j1(v) / v) ** 2)


def radial_profile(pupil, start, stop, num):
    """PSF / analytic peak on the x axis at ``num`` points from ``start`` to ``stop`` (metres)."""
    step = (stop - start) / (num - 1)
    line = Grid((1, num), (step, step), (0.0, start + (num // 2) * step))
    psf = psf_from_pupil(pupil, PUPIL_GRID, WAVELENGTH, FOCAL, line, normalize=None)[0, 0]
    peak = (math.pi * RADIUS**2 / (WAVELENGTH * FOCAL)) ** 2
    x = line.axes(torch.float64)[1]
    return x.numpy(), (psf / peak).numpy()


def test_area_weighted_pupil_has_the_exact_disk_area():
    for center in [(0.0, 0.0), (3.3e-6, -7.1e-6)]:
        weights = disk_area_fraction(PUPIL_GRID, RADIUS, center_m=center)
        assert float(weights.sum()) * PUPIL_GRID.pixel_area_m2 == pytest.approx(math.pi * RADIUS**2, rel=1e-12)
        assert float(weights.min()) >= 0 and float(weights.max()) <= 1
    hard = circular_pupil(PUPIL_GRID, RADIUS, antialias=False, dtype=torch.float64)
    assert set(torch.unique(hard).tolist()) == {0.0, 1.0}


def test_airy_pattern_from_antialiased_pupil(pupil):
    out_grid = Grid.square(129, LN / 8)  # +-8 lambda N at 8 samples per lambda N
    psf = psf_from_pupil(pupil, PUPIL_GRID, WAVELENGTH, FOCAL, out_grid, normalize=None)[0]
    peak = (math.pi * RADIUS**2 / (WAVELENGTH * FOCAL)) ** 2  # (A / (lambda f))^2: absolute scale checked too
    y, x = out_grid.mesh(torch.float64)
    r = torch.sqrt(x**2 + y**2).numpy()
    inside = r <= 8 * LN
    error = np.abs(psf.numpy() / peak - airy(r))[inside].max()
    assert error < 3e-5
    hard = circular_pupil(PUPIL_GRID, RADIUS, antialias=False, dtype=torch.float64)
    hard_psf = psf_from_pupil(hard, PUPIL_GRID, WAVELENGTH, FOCAL, out_grid, normalize=None)[0]
    assert np.abs(hard_psf.numpy() / peak - airy(r))[inside].max() > 10 * error  # why the anti-aliasing matters


def test_first_dark_ring_and_fwhm(pupil):
    x, profile = radial_profile(pupil, 1.1 * LN, 1.35 * LN, 251)
    i = int(np.argmin(profile))
    a, b, c = profile[i - 1 : i + 2]
    first_zero = x[i] + 0.5 * (a - c) / (a - 2 * b + c) * (x[1] - x[0])  # parabola through the minimum
    assert first_zero / LN == pytest.approx(1.2197, rel=5e-3)
    x, profile = radial_profile(pupil, 0.0, 0.8 * LN, 161)
    k = int(np.nonzero(profile < 0.5)[0][0])
    x_half = x[k - 1] + (0.5 - profile[k - 1]) / (profile[k] - profile[k - 1]) * (x[k] - x[k - 1])
    assert 2 * x_half / LN == pytest.approx(1.029, rel=2e-3)


@pytest.mark.parametrize("ring_radius, expected", [(1.2197, 0.838), (2.2331, 0.910), (3.2383, 0.938)])
def test_encircled_energy_at_dark_rings(pupil, ring_radius, expected):
    out_grid = Grid.square(161, LN / 16)  # +-5 lambda N
    psf = psf_from_pupil(pupil, PUPIL_GRID, WAVELENGTH, FOCAL, out_grid, normalize=None)[0]
    # Normalised by the power pi R^2 of the continuous aperture the Airy oracle describes. (The sampled
    # pupil's own power sum(w^2) dx^2 is 0.3 % lower: fractional edge weights w^2 < w model the disk blurred
    # by the pixel box, whose missing power is in far wings, not in the core.)
    power_in = math.pi * RADIUS**2
    weights = disk_area_fraction(out_grid, ring_radius * LN)
    encircled = float((psf * weights).sum()) * out_grid.pixel_area_m2 / power_in
    v = math.pi * ring_radius
    analytic = 1 - j0(v) ** 2 - j1(v) ** 2
    assert encircled == pytest.approx(analytic, rel=5e-3)
    assert encircled == pytest.approx(expected, rel=5e-3)


def lens_grid_setup():
    # 1 um pixels, 64 um aperture radius, f = 2.56 mm: N = 20, lambda N = 10 samples.
    grid = Grid.square(256, 1e-6)
    radius, focal = 64e-6, 2.56e-3
    field = Field.plane_wave(grid, (WAVELENGTH,), dtype=torch.float64)
    return grid, radius, focal, apply_thin_lens(field, focal, radius)


def test_thin_lens_focus_has_airy_fwhm():
    grid, radius, focal, lensed = lens_grid_setup()
    focus = propagate_asm(lensed, focal).intensity[0]
    row = focus[128].numpy()
    x = grid.axes()[1].numpy()
    half = 0.5 * row.max()
    k = 128 + int(np.nonzero(row[128:] < half)[0][0])
    x_half = x[k - 1] + (half - row[k - 1]) / (row[k] - row[k - 1]) * (x[k] - x[k - 1])
    ln = WAVELENGTH * focal / (2 * radius)
    assert 2 * x_half / ln == pytest.approx(1.029, rel=2e-2)
    assert int(np.argmax(row)) == 128  # focus on the axis pixel


def test_defocus_zernike_equals_moving_the_observation_plane():
    # Fresnel regime: lens f then propagation to f + dz is, exactly, the focus of a lens f + dz with the
    # extra wavefront -(r^2/2)(1/f - 1/(f+dz)) = pure Noll defocus c4 Z4 plus piston. The two paths differ
    # only in discretisation (TF convolution of the sampled lens field vs matrix Fourier transform of the
    # area-weighted pupil); the in-focus comparison of the same two paths sets that floor (~7e-4 of the
    # peak here), so the defocused comparison must stay within 2e-3 of the peak.
    grid, radius, focal, lensed = lens_grid_setup()
    pupil = circular_pupil(grid, radius, dtype=torch.float64)
    focused = propagate_asm(lensed, focal).intensity[0]
    ideal = psf_from_pupil(pupil, grid, WAVELENGTH, focal, grid, normalize=None)[0]
    floor = float((focused - ideal).abs().max() / ideal.max())
    assert floor < 1e-3

    dz = 0.5e-3  # W020 = 0.26 lambda: a visibly blurred PSF
    c4 = defocus_to_noll_coefficient(dz, radius, focal)
    coeffs = torch.zeros(4, dtype=torch.float64)
    coeffs[3] = c4
    wavefront = zernike_wavefront(coeffs, grid, radius, clip_to_disk=False)
    predicted = psf_from_pupil(pupil, grid, WAVELENGTH, focal + dz, grid, wavefront_m=wavefront, normalize=None)[0]
    in_focus = psf_from_pupil(pupil, grid, WAVELENGTH, focal + dz, grid, normalize=None)[0]
    peak = float(in_focus.max())
    for propagate in (propagate_fresnel, propagate_asm):  # ASM adds non-paraxial terms k a^4/(8 z^3) < 3e-3 rad
        observed = propagate(lensed, focal + dz).intensity[0]
        assert float((observed - predicted).abs().max()) / peak < 2e-3
    assert float((in_focus - predicted).abs().max()) / peak > 0.1  # the defocus term is not negligible
    # the paraxial shortcut c4 = NA^2 dz / (4 sqrt 3) differs from the exact one by the factor f / (f + dz)
    na = radius / focal
    assert -c4 == pytest.approx(na**2 * dz / (4 * math.sqrt(3)) * focal / (focal + dz), rel=1e-12)



@pytest.mark.parametrize("noll, axis", [(2, 1), (3, 0)])
def test_positive_tilt_moves_the_psf_towards_plus_x_or_plus_y(noll, axis):
    """Sign convention (simulator.zernike): a positive Noll-2 (Noll-3) coefficient shifts the focal spot by
    exactly ``2 c f / R`` towards +x, increasing column (+y, increasing row). The polynomial is extended
    over the anti-aliased edge pixels so that the wavefront is an exact linear phase on every lit sample."""
    grid = Grid.square(64, 1e-6)
    radius, focal = 24e-6, 1e-3
    out = Grid.square(48, WAVELENGTH * focal / (4 * 2 * radius))  # 4 samples per lambda F#
    pupil = circular_pupil(grid, radius, dtype=torch.float64)
    shift = 5  # samples
    coeffs = torch.zeros(noll, dtype=torch.float64)
    coeffs[noll - 1] = shift * out.spacing_m[0] * radius / (2 * focal)
    wavefront = zernike_wavefront(coeffs, grid, radius, clip_to_disk=False)
    centred = psf_from_pupil(pupil, grid, WAVELENGTH, focal, out, normalize=None)[0]
    tilted = psf_from_pupil(pupil, grid, WAVELENGTH, focal, out, wavefront_m=wavefront, normalize=None)[0]
    moved = centred.roll(shift, dims=axis)
    keep = [slice(None), slice(None)]
    keep[axis] = slice(shift, None)  # away from the rolled-in edge
    torch.testing.assert_close(tilted[tuple(keep)], moved[tuple(keep)], rtol=0, atol=1e-12 * float(centred.max()))
    peak = divmod(int(tilted.argmax()), 48)
    assert peak[axis] == 24 + shift and peak[1 - axis] == 24

def test_thin_lens_gradcheck_in_field_and_focal_length():
    grid = Grid.square(8, 1e-6)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn((1, 8, 8), dtype=torch.complex128, generator=gen, requires_grad=True)
    focal_mm = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

    def run(d, f):
        return apply_thin_lens(Field(d, grid, (WAVELENGTH,)), f * 1e-3, aperture_radius_m=3e-6).data

    assert torch.autograd.gradcheck(run, (data, focal_mm), eps=1e-6, atol=1e-7, fast_mode=True)
    phase = thin_lens_phase(grid, (WAVELENGTH,), 1e-3, dtype=torch.float64)
    y, x = grid.mesh()
    assert torch.allclose(phase[0], -math.pi * (x**2 + y**2) / (WAVELENGTH * 1e-3))


def four_f_setup(n=33):
    grid = Grid.square(n, 2e-6)
    return grid, (0.5e-6, 0.6e-6), 20e-3, 30e-3


def test_four_f_all_pass_images_inverted_and_magnified():
    grid, wavelengths, f1, f2 = four_f_setup()
    gen = torch.Generator().manual_seed(4)
    amplitude = torch.zeros((2, 33, 33), dtype=torch.complex128)
    amplitude[:, 12:20, 10:24] = torch.randn((2, 8, 14), dtype=torch.complex128, generator=gen)
    field = Field(amplitude[:, None].expand(2, 2, 33, 33).contiguous(), grid, wavelengths)
    system = FourF(grid, wavelengths, f1, f2, mode="phase", dtype=torch.float64)
    with torch.no_grad():
        out = system(field)
    m = f2 / f1
    assert out.grid.spacing_m == pytest.approx((2e-6 * m, 2e-6 * m))
    # odd n: output pixel i images input pixel n - 1 - i, amplitude scaled by -1/M (power conserved).
    # The default Fourier window is exactly one period for the shortest wavelength: a perfect image.
    expected = -field.data.flip(-1, -2) / m
    assert float((out.data[:, 0] - expected[:, 0]).abs().max()) < 1e-12
    assert float(out.power()[:, 0].sum() / field.power()[:, 0].sum()) == pytest.approx(1.0, rel=1e-12)
    # the longer wavelength's highest frequencies fall outside the window (a stop): power can only drop
    assert float(out.power()[:, 1].sum() / field.power()[:, 1].sum()) < 1.0


def test_four_f_intensity_psf_is_the_point_source_response():
    grid, wavelengths, f1, f2 = four_f_setup()
    system = FourF(grid, wavelengths, f1, f2, stop_radius_m=0.4 * 0.5e-6 * f1 / 2e-6, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(1))
    kernel = system.intensity_psf().detach()
    assert kernel.shape == (2, 33, 33)
    point = torch.zeros((2, 33, 33), dtype=torch.complex128)
    point[:, 16, 16] = 1.0
    with torch.no_grad():
        out = system(Field(point, grid, wavelengths))
    m = f2 / f1
    referred = out.intensity.flip(-1, -2) * m**2  # unit-amplitude point; M^2 undoes the magnification
    assert torch.allclose(referred, kernel, atol=1e-10 * float(kernel.max()))
    # an all-pass filter's kernel sums to 1 (all the incoherent light passes) for the shortest wavelength
    open_system = FourF(grid, wavelengths, f1, f2, mode="phase", dtype=torch.float64)
    assert float(open_system.intensity_psf()[0].detach().sum()) == pytest.approx(1.0, rel=1e-9)


def test_four_f_gradcheck_in_filter_parameters():
    grid = Grid.square(6, 2e-6)
    system = FourF(grid, 0.5e-6, 10e-3, 10e-3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(5)
    field = Field(torch.randn((1, 6, 6), dtype=torch.complex128, generator=gen), grid, (0.5e-6,))
    logit = system.amplitude_logit.detach().clone().requires_grad_(True)
    phase = system.phase_rad.detach().clone().requires_grad_(True)

    def run(amp_logit, phase_rad):
        filt = torch.polar(torch.sigmoid(amp_logit), phase_rad)
        return four_f(field, 10e-3, 10e-3, filt, system.fourier_grid).data

    assert torch.autograd.gradcheck(run, (logit, phase), fast_mode=True)
    psf = system.intensity_psf()
    psf.sum().backward()
    # the filter's own parameters are in the graph: the transmitted light depends on the amplitude
    assert float(system.amplitude_logit.grad.abs().sum()) > 0
    assert system.phase_rad.grad is not None and bool(torch.isfinite(system.phase_rad.grad).all())


def test_psf_normalisations_dtypes_and_batching():
    grid = Grid.square(32, 10e-6)
    pupil = circular_pupil(grid, 100e-6)  # float32 by default
    wavefront = torch.zeros((3, 32, 32))
    wavefront[1] = 0.1e-6  # piston: no change to the PSF
    out_grid = Grid.square(17, 5e-6)
    psf = psf_from_pupil(pupil, grid, (0.5e-6, 0.6e-6), 10e-3, out_grid, wavefront_m=wavefront)
    assert psf.shape == (3, 2, 17, 17) and psf.dtype == torch.float32
    assert torch.allclose(psf.sum(dim=(-2, -1)), torch.ones(3, 2), atol=1e-6)
    assert torch.allclose(psf[0], psf[1], atol=1e-7)
    peak = psf_from_pupil(pupil.double(), grid, 0.5e-6, 10e-3, out_grid, normalize="peak")
    assert peak.dtype == torch.float64 and float(peak.max()) == 1.0 and float(peak[0, 8, 8]) == 1.0
    with pytest.raises(InputError, match="normalize"):
        psf_from_pupil(pupil, grid, 0.5e-6, 10e-3, out_grid, normalize="max")
