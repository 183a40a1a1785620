"""Phase retrieval against PSFs from an independent numpy FFT computation (tests/calibration/psf_oracle.py).

Geometry: a 0.64 mm pupil sampled by 64, f = 12.8 mm, 500 nm, 5 um pixels: lambda F# = 2 pixels (Nyquist),
3 x 3 point samples per pixel, 32 x 32 pixel windows. The diversity PSF sits 1.6 mm beyond the focus
(0.89 waves of W020), where the oracle's FFT size is a whole number (432 instead of 384).
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from calibration.errors import CalibrationFileError
from calibration.phase_retrieval import PhaseRetrievalResult, PupilModel, retrieve_zernike, to_external_convention
from onn_core.errors import InputError
from simulator.field import Grid
from simulator.metaoptic import square_aperture
from simulator.pupil import circular_pupil, psf_from_pupil
from simulator.zernike import noll_to_nm, zernike_wavefront

from . import psf_oracle as oracle

WAVELENGTH, PITCH, OVERSAMPLE, SAMPLES, DX = 500e-9, 5e-6, 3, 64, 10e-6
DIAMETER = SAMPLES * DX
FOCAL = 384 * PITCH * DX / (OVERSAMPLE * WAVELENGTH)  # FFT size 384 in focus
DEFOCUS = FOCAL * 48 / 384
N = SAMPLES + 2  # the pupil array: the disk and its anti-aliased edge
WINDOW = 32
#: Noll 4..11 in waves: defocus, astigmatism, coma, trefoil, spherical (0.058 waves RMS in all).
TRUTH = {4: 0.03, 5: -0.02, 6: 0.025, 7: 0.015, 8: -0.01, 9: 0.02, 10: -0.012, 11: 0.018}
EVEN = {4, 5, 6, 11}


def oracle_psfs(coeffs_waves: dict, defocus=(0.0, DEFOCUS), pupil=None, radius=DIAMETER / 2, design_phase=None):
    pupil = oracle.disk(N, DX, DIAMETER / 2) if pupil is None else pupil
    w = oracle.wavefront({j: c * WAVELENGTH for j, c in coeffs_waves.items()}, pupil.shape[0], DX, radius)
    return np.stack([oracle.psf(pupil, DX, w, wavelength=WAVELENGTH, focal_length=FOCAL, pixel_pitch=PITCH,
                                window=WINDOW, defocus=d, oversample=OVERSAMPLE, design_phase=design_phase)
                     for d in defocus])


def circular_model(design_phase=None) -> PupilModel:
    grid = Grid.square(N, DX)
    return PupilModel(grid, torch.as_tensor(oracle.disk(N, DX, DIAMETER / 2)), DIAMETER / 2,
                      design_phase_rad=None if design_phase is None else torch.as_tensor(design_phase))


def fit(psfs, defocus=(0.0, DEFOCUS), pupil=None, **kwargs):
    return retrieve_zernike(psfs, pupil or circular_model(), wavelength_m=WAVELENGTH, focal_length_m=FOCAL,
                            pixel_pitch_m=PITCH, diversity_defocus_m=defocus, oversample=OVERSAMPLE, **kwargs)


def truth_vector(noll=range(2, 12), flip_even=False):
    return np.array([(-1 if flip_even and j in EVEN else 1) * TRUTH.get(j, 0.0) for j in noll])


def rms_error_waves(result, truth):
    modes = np.isin(result.noll, list(range(4, 12)))
    return float(np.sqrt(np.mean((result.coefficients_waves() - truth)[modes] ** 2)))


def test_noiseless_psfs_with_diversity_give_noll_4_to_11_exactly():
    result = fit(oracle_psfs(TRUTH) * 1e6)
    assert rms_error_waves(result, truth_vector()) < 1e-6  # acceptance: < 1e-2; measured 1.4e-10
    assert not result.ambiguous.any() and result.reduced_chi2 < 1e-6
    np.testing.assert_allclose(result.flux_e, 1e6, rtol=1e-6)
    # refitted from the twin start, the defocused PSF brings the fit back to the truth
    np.testing.assert_allclose(result.twin_coefficients_m, result.coefficients_m, rtol=0, atol=1e-6 * WAVELENGTH)


def test_a_single_in_focus_psf_reports_the_twin_of_the_even_modes():
    result = fit(oracle_psfs(TRUTH, defocus=(0.0,)) * 1e6, defocus=(0.0,))
    np.testing.assert_array_equal(result.ambiguous, [j in EVEN for j in range(2, 12)])
    solutions = [result.coefficients_m / WAVELENGTH, result.twin_coefficients_m / WAVELENGTH]
    truth, twin = truth_vector(), truth_vector(flip_even=True)
    # one solution is the truth, the other its twin (even modes flipped together, odd ones kept)
    assert min(np.abs(solutions[0] - truth).max(), np.abs(solutions[1] - truth).max()) < 1e-6
    assert min(np.abs(solutions[0] - twin).max(), np.abs(solutions[1] - twin).max()) < 1e-6
    assert abs(result.twin_delta_deviance) < 1e-3
    assert "sign ambiguous" in result.summary()


def test_a_known_design_phase_that_is_not_odd_resolves_the_twin_from_one_psf():
    y, x = oracle.pupil_coordinates(N, DX)
    rho, theta = np.hypot(x, y) / (DIAMETER / 2), np.arctan2(y, x)
    design = 2 * np.pi * (0.25 * oracle.zernike(4, rho, theta) + 0.15 * oracle.zernike(6, rho, theta))
    psfs = oracle_psfs(TRUTH, defocus=(0.0,), design_phase=design) * 1e6
    result = fit(psfs, defocus=(0.0,), pupil=circular_model(design))
    assert not result.ambiguous.any()
    assert rms_error_waves(result, truth_vector()) < 1e-6


def test_positive_tilt_moves_the_psf_towards_plus_x_and_is_fitted_positive():
    c2, c3 = 0.2, -0.1  # waves
    psf = oracle_psfs({2: c2, 3: c3}, defocus=(0.0,))[0]
    rows, cols = np.indices(psf.shape)
    centroid = np.array([(rows * psf).sum(), (cols * psf).sum()]) / psf.sum() - WINDOW // 2
    radius = DIAMETER / 2
    # Z2 = 2 rho cos(theta): the ray angle is 2 c2 / R, the PSF moves by 2 c2 f / R along +x (columns)
    expected_px = np.array([2 * c3, 2 * c2]) * WAVELENGTH * FOCAL / radius / PITCH
    assert expected_px[1] > 0.9 and expected_px[0] < -0.4
    np.testing.assert_allclose(centroid, expected_px, atol=0.05)  # the window cuts the far rings (1.4 %)
    with torch.inference_mode():  # the fit makes its own autograd context (pupil tensors made here too)
        result = fit(psf * 1e6, defocus=(0.0,), noll=(2, 3), pupil=circular_model())
    np.testing.assert_allclose(result.coefficients_waves()[:2], [c2, c3], atol=1e-6)


def test_poisson_and_read_noise_errors_agree_with_the_cramer_rao_bound():
    """1e5 electrons per PSF, 2 e- read noise, one seed: the error's chi-square over Noll 2..11 with the
    reported covariance stays below its 99.9 % quantile (29.6 for 10 modes) and the noise model fits."""
    expected = oracle_psfs(TRUTH) * 1e5
    rng = np.random.default_rng(3)
    data = rng.poisson(expected) + rng.normal(0.0, 2.0, expected.shape)
    result = fit(data, read_noise_e=2.0)
    error = result.coefficients_m - truth_vector() * WAVELENGTH
    chi2 = float(error @ np.linalg.solve(result.covariance_m2, error))
    assert chi2 < 29.6, chi2
    assert 0.85 < result.reduced_chi2 < 1.15
    sigma_waves = result.uncertainty_m / WAVELENGTH
    assert 1e-4 < sigma_waves.max() < 3e-3  # the bound is a real, finite figure at this photon count
    assert rms_error_waves(result, truth_vector()) < 0.01


@pytest.mark.slow
def test_crlb_coverage_over_seeds():
    """30 noise draws: about 68 % of the Noll 2..11 errors lie within one reported sigma and the mean
    chi-square of the error vector is the number of modes (10)."""
    expected = oracle_psfs(TRUTH) * 2e4
    inside, chi2 = [], []
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        result = fit(rng.poisson(expected).astype(float), starts=2)
        error = result.coefficients_m - truth_vector() * WAVELENGTH
        inside.extend(np.abs(error) < result.uncertainty_m)
        chi2.append(float(error @ np.linalg.solve(result.covariance_m2, error)))
    assert 0.60 < np.mean(inside) < 0.76, np.mean(inside)
    assert 8.0 < np.mean(chi2) < 12.5, np.mean(chi2)  # chi2(10) mean 10, std of the mean 0.8


def test_square_meta_optic_aperture_with_its_circumscribed_zernike_disk():
    """The meta-optic's pupil: an odd square aperture (centred on the axis pixel), Zernike radius = half
    its diagonal, as in simulator.metaoptic.aberrated_design_psf."""
    aperture_px = 45
    grid = Grid.square(N, DX)
    model = PupilModel.square(grid, aperture_px)
    np.testing.assert_array_equal(model.transmission.numpy(), square_aperture(grid, aperture_px, torch.float64).numpy())
    assert model.zernike_radius_m == pytest.approx(aperture_px * DX / math.sqrt(2))
    psfs = oracle_psfs(TRUTH, pupil=model.transmission.numpy(), radius=model.zernike_radius_m) * 1e6
    result = fit(psfs, pupil=model)
    assert rms_error_waves(result, truth_vector()) < 1e-6 and not result.ambiguous.any()


def test_hdf5_round_trip_and_foreign_group(tmp_path):
    result = fit(oracle_psfs(TRUTH) * 1e6, noll=(4, 5, 6))
    with h5py.File(tmp_path / "pr.h5", "w") as f:
        result.to_hdf5(f.create_group("phase"))
        f.create_group("other").attrs["schema"] = "something-else"
    with h5py.File(tmp_path / "pr.h5", "r") as f:
        back = PhaseRetrievalResult.from_hdf5(f["phase"])
        with pytest.raises(CalibrationFileError, match="schema"):
            PhaseRetrievalResult.from_hdf5(f["other"])
    for name in ("noll", "coefficients_m", "uncertainty_m", "covariance_m2", "ambiguous", "flux_e", "model_e"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.wavelength_m == result.wavelength_m and back.iterations == result.iterations
    assert back.summary() == result.summary()


def test_bad_input_names_the_problem():
    psfs = oracle_psfs(TRUTH) * 1e6
    with pytest.raises(InputError, match="diversity_defocus_m"):
        fit(psfs, defocus=(0.0,))
    with pytest.raises(InputError, match="noll"):
        fit(psfs, noll=(1, 4))
    with pytest.raises(InputError, match="oversample"):
        retrieve_zernike(psfs, circular_model(), wavelength_m=WAVELENGTH, focal_length_m=FOCAL, pixel_pitch_m=PITCH,
                         diversity_defocus_m=(0.0, DEFOCUS), oversample=2)
    with pytest.raises(InputError, match="hold light"):
        fit(np.zeros_like(psfs))
    with pytest.raises(InputError, match="shape"):
        PupilModel(Grid.square(N, DX), torch.ones(N, N + 1), 1e-3)


# ------------------------------------------------------------------ sign convention against other codes
# The same Noll coefficients (tilt, defocus, astigmatism, coma, trefoil) on the same sampled pupil: a clear
# circle and an off-axis circle (not centro-symmetric, which tells a sign convention from the twin ambiguity).
COMPARE_WAVELENGTH, COMPARE_RADIUS, COMPARE_FOCAL, COMPARE_SAMPLES = 1e-6, 1.0, 10.0, 127  # odd: one centre pixel
COMPARE_DX = 2.2 * COMPARE_RADIUS / COMPARE_SAMPLES
COMPARE_COEFFS = np.array([0, 0, 0, 0.05, 0.04, 0.03, 0.05, -0.03, 0.02, 0.01]) * COMPARE_WAVELENGTH


def compare_pupils():
    grid = Grid.square(COMPARE_SAMPLES, COMPARE_DX)
    return {"circular": circular_pupil(grid, COMPARE_RADIUS, dtype=torch.float64).numpy(),
            "off-axis": circular_pupil(grid, 0.5 * COMPARE_RADIUS, center_m=(0.2, 0.35), dtype=torch.float64).numpy()}


def compare_out_grid():
    return Grid.square(33, COMPARE_WAVELENGTH / (4 * COMPARE_RADIUS) * COMPARE_FOCAL)  # lambda / D / 2


def our_psf(transmission, coeffs):
    """This module's forward model (simulator.pupil.psf_from_pupil with the Zernike wavefront)."""
    grid = Grid.square(COMPARE_SAMPLES, COMPARE_DX)
    w = zernike_wavefront(torch.as_tensor(coeffs, dtype=torch.float64), grid, COMPARE_RADIUS)
    return psf_from_pupil(torch.from_numpy(transmission), grid, COMPARE_WAVELENGTH, COMPARE_FOCAL, compare_out_grid(),
                          wavefront_m=w)[0].numpy()


def poppy_psf(transmission, coeffs):
    poppy = pytest.importorskip("poppy")
    units = pytest.importorskip("astropy.units")
    system = poppy.OpticalSystem(pupil_diameter=COMPARE_SAMPLES * COMPARE_DX * units.m, npix=COMPARE_SAMPLES, oversample=2)
    system.add_pupil(poppy.ArrayOpticalElement(transmission=transmission, pixelscale=COMPARE_DX * units.m / units.pixel))
    system.add_pupil(poppy.ZernikeWFE(radius=COMPARE_RADIUS, coefficients=list(coeffs)))
    pixel = (COMPARE_WAVELENGTH / (4 * COMPARE_RADIUS) * units.rad).to(units.arcsec).value
    system.add_detector(pixelscale=pixel, fov_pixels=33, oversample=1)
    psf = system.calc_psf(wavelength=COMPARE_WAVELENGTH, display=False)[0].data
    return psf / psf.sum()


def hcipy_psf(transmission, coeffs):
    hcipy = pytest.importorskip("hcipy")
    pupil_grid = hcipy.make_pupil_grid(COMPARE_SAMPLES, COMPARE_SAMPLES * COMPARE_DX)
    opd = sum(c * hcipy.mode_basis.zernike(*hcipy.noll_to_zernike(j), D=2 * COMPARE_RADIUS)(pupil_grid)
              for j, c in enumerate(coeffs, start=1))
    # hcipy.Field arrays are flattened with x (columns) fastest, as numpy's ravel of (rows, cols)
    field = hcipy.Field(transmission.ravel() * np.exp(2j * np.pi * opd / COMPARE_WAVELENGTH), pupil_grid)
    out = compare_out_grid()
    focal_grid = hcipy.make_uniform_grid([33, 33], [33 * out.spacing_m[0]] * 2)
    propagator = hcipy.FraunhoferPropagator(pupil_grid, focal_grid, focal_length=COMPARE_FOCAL)
    psf = propagator(hcipy.Wavefront(field, COMPARE_WAVELENGTH)).power.shaped
    return psf / psf.sum()


@pytest.mark.parametrize("name", ["circular", "off-axis"])
def test_poppy_psfs_are_ours_rotated_by_180_degrees_and_its_opd_is_minus_ours(name):
    transmission = compare_pupils()[name]
    ours = our_psf(transmission, COMPARE_COEFFS)
    ours /= ours.sum()
    theirs = poppy_psf(transmission, COMPARE_COEFFS)
    peak = ours.max()
    assert np.abs(theirs - ours).max() > 0.1 * peak  # the conventions differ
    np.testing.assert_allclose(theirs, ours[::-1, ::-1], atol=1e-9 * peak, rtol=0)
    np.testing.assert_allclose(poppy_psf(transmission, to_external_convention(COMPARE_COEFFS, "poppy")), ours,
                               atol=1e-9 * peak, rtol=0)
    # flipping only the odd modes matches only for a centro-symmetric pupil (the twin ambiguity)
    odd = np.array([-1.0 if noll_to_nm(j)[1] % 2 else 1.0 for j in range(1, len(COMPARE_COEFFS) + 1)])
    odd_flipped = our_psf(transmission, COMPARE_COEFFS * odd)
    odd_flipped /= odd_flipped.sum()
    assert (np.abs(theirs - odd_flipped).max() < 1e-9 * peak) == (name == "circular")


@pytest.mark.parametrize("name", ["circular", "off-axis"])
def test_hcipy_opd_equals_ours(name):
    transmission = compare_pupils()[name]
    ours = our_psf(transmission, COMPARE_COEFFS)
    ours /= ours.sum()
    theirs = hcipy_psf(transmission, to_external_convention(COMPARE_COEFFS, "hcipy"))
    np.testing.assert_allclose(theirs, ours, atol=1e-6 * ours.max(), rtol=0)


def test_to_external_convention_is_its_own_inverse_and_refuses_unknown_codes():
    coeffs = np.array([[1e-8, -2e-8], [3e-8, 0.0]])
    for code in ("poppy", "hcipy", "prysm"):
        np.testing.assert_array_equal(to_external_convention(to_external_convention(coeffs, code), code), coeffs)
    np.testing.assert_array_equal(to_external_convention(coeffs, "poppy"), -coeffs)
    with pytest.raises(InputError, match="code"):
        to_external_convention(coeffs, "zemax")
