"""PSF capture and the mismatch fit, by round trip: inject known fabrication errors into a simulated
bench, measure, fit, compare with the truth (seeds and magnitudes are not examples/optics.yaml's)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from calibration import fit as fit_module
from calibration.errors import CalibrationError
from calibration import fit_model
from calibration.fit import FitSettings, MismatchFit, fit_mismatch, sigma_scale, variance_along
from calibration.kernel_error import effective_parameters, prior_factor
from calibration.psf import measure_psfs, point_grid, window_mask
from drivers.bench_fits import BenchMismatch
from onn_core.errors import InputError
from simulator.system import OpticalSystem
from tests.calibration.benches import example_optics, simulated_bench

#: Injected errors within the fitted model (no Zernike terms, no kernel error).
SPEC = {"shift_std_px": 0.6, "rotation_std_rad": 0.012, "magnification_rel_std": 0.015, "brightness_rel_std": 0.12,
        "blur_sigma_max_px": 0.6, "crosstalk": 0.004, "vignetting_tan_edge": 0.15, "background": 2500.0}
GEOMETRY_PHOTOMETRY_OPTICS = FitSettings(stages=("geometry", "photometry", "optics"), zernike_noll=())


def nominal() -> OpticalSystem:
    return OpticalSystem.from_config({**example_optics(), "errors": None})


def measure(errors: dict | None, seed: int = 0, **kwargs):
    with simulated_bench({"errors": errors, "seed": seed}) as bench:
        return measure_psfs(bench, nominal(), **kwargs), bench.camera.optics.errors


def test_point_sources_do_not_overlap_and_cover_every_tile():
    system = nominal()
    points = point_grid(system)
    window = system.fabricated_psfs().shape[-1]
    assert len(points) == 9 and np.diff(np.unique(points[:, 0])).min() >= window
    mask = window_mask(system, points)
    assert mask.sum() == system.num_psfs * len(points) * window**2  # disjoint windows, all inside tiles


def test_fit_recovers_injected_errors_within_the_acceptance():
    measurement, truth = measure({"seed": 31, "spec": SPEC}, averages=4)
    fit = fit_mismatch(measurement, nominal(), settings=GEOMETRY_PHOTOMETRY_OPTICS)
    e = fit.errors
    assert float((e.shift_px - truth.shift_px).abs().max()) < 0.05
    assert math.degrees(float((e.rotation_rad - truth.rotation_rad).abs().max())) < 0.05
    assert float((e.magnification - truth.magnification).abs().max()) < 1e-3
    assert float((e.brightness / truth.brightness - 1).abs().max()) < 0.01
    assert float((e.blur_sigma_px - truth.blur_sigma_px).abs().max()) < 0.05
    assert abs(float(e.crosstalk - truth.crosstalk)) < 5e-4
    assert abs(float(e.vignetting_tan_edge - truth.vignetting_tan_edge)) < 0.01
    assert 0.8 <= fit.chi2_reduced["optics"] <= 1.2
    assert fit.chi2_reduced["design"] > 100 * fit.chi2_reduced["optics"]
    # inside the model the misfit is the noise's: no scaling; dof = pixels - 16 x (shift 2, rotation,
    # magnification, brightness, blur) - crosstalk - vignetting
    assert fit.sigma_scale == 1.0
    assert fit.dof["optics"] == measurement.mask.sum() - 16 * 6 - 2
    assert fit.psf_residual_after < 0.1 * fit.psf_residual_before
    # the stated uncertainties are consistent with the errors: |z| < 4 for every shift
    sigma = {p.name: p.sigma for p in fit.parameters}
    for i in range(truth.num_psfs):
        for axis in range(2):
            error = float(e.shift_px[i, axis] - truth.shift_px[i, axis])
            assert abs(error) < 4 * sigma[f"shift_px[{i}][{axis}]"]
    assert all(p.identifiable for p in fit.parameters)


@pytest.mark.slow
def test_stated_shift_uncertainties_cover_the_errors_at_their_rate():
    """Over noise realisations, ~68 % of shift errors lie within 1 sigma (Fisher) and ~95 % within 2."""
    inside1 = inside2 = total = 0
    spec = {"shift_std_px": 0.5, "brightness_rel_std": 0.1}
    for seed in range(12):
        measurement, truth = measure({"seed": 41, "spec": spec}, seed=seed, averages=2)
        # the device's PSFs are the fit's own bilinear model: no structure below the pixels, no sampling systematic
        fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",), sampling_draws=0))
        sigma = {p.name: p.sigma for p in fit.parameters}
        for i in range(truth.num_psfs):
            for axis in range(2):
                z = abs(float(fit.errors.shift_px[i, axis] - truth.shift_px[i, axis])) / sigma[f"shift_px[{i}][{axis}]"]
                inside1 += z < 1
                inside2 += z < 2
                total += 1
    assert 0.6 <= inside1 / total <= 0.76
    assert 0.9 <= inside2 / total <= 0.99


def test_a_zernike_term_the_data_cannot_see_is_flagged_and_left_at_the_design():
    """At ~1e4 photo-electrons per PSF, spherical aberration (Noll 11) on a 7 x 7 PSF sampled at 0.4
    lambda F# is noise: it is reported as not identifiable, fixed at 0, instead of a fitted value."""
    dim = {**example_optics(), "photometry": {"photons_per_s": 1.0e5, "exposure_s": 0.01}}
    with simulated_bench({"errors": {"seed": 3, "spec": {"shift_std_px": 0.3}}, "photometry": dim["photometry"]},
                         exposure_s=0.01) as bench:
        system = OpticalSystem.from_config({**dim, "errors": None})
        measurement = measure_psfs(bench, system, averages=1, exposures_s=[0.01])
    fit = fit_mismatch(measurement, system, settings=FitSettings(stages=("geometry", "optics"), zernike_noll=(11,),
                                                                 max_iterations=8))
    spherical = [p for p in fit.parameters if "noll 11" in p.name]
    assert spherical and not any(p.identifiable for p in spherical)
    assert float(fit.errors.zernike_m[:, 10].abs().max()) == 0.0
    shifts = [p for p in fit.parameters if p.kind == "shift_px"]
    assert all(p.identifiable for p in shifts)


@pytest.mark.slow
def test_even_zernike_terms_are_fitted_and_their_sign_reported_undetermined():
    defocus_m = [(-1) ** p * (30 + 2 * p) * 1e-9 for p in range(16)]
    errors = {"num_psfs": 16, "aberration": example_optics()["errors"]["aberration"],
              "errors": {"zernike_m": [[0.0, 0.0, 0.0, c] for c in defocus_m],
                         "shift_px": [[0.1 * (p % 3), -0.05 * (p % 4)] for p in range(16)]}}
    measurement, truth = measure(errors, averages=4)
    fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry", "optics"), zernike_noll=(4,)))
    # the PSF determines |c| (an even mode's sign changes nothing in the cascade model)
    torch.testing.assert_close(fit.errors.zernike_m[:, 3].abs(), truth.zernike_m[:, 3].abs(), atol=3e-9, rtol=0)
    defocus = [p for p in fit.parameters if "noll 4" in p.name]
    assert len(defocus) == 16 and all(p.identifiable and p.sign_ambiguous for p in defocus)
    assert 0.8 <= fit.chi2_reduced["optics"] <= 1.2


def test_the_residual_stage_absorbs_a_kernel_error_and_sharpens_the_geometry():
    spec = {"shift_std_px": 0.4, "brightness_rel_std": 0.1, "kernel_error_rms": 0.15}
    measurement, truth = measure({"seed": 12, "spec": spec}, averages=4)
    # in the fit's own model (bilinear placement): the sigmas without the sampling systematic
    geometry = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",), sampling_draws=0))
    fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry", "residual"), kernel_error_prior=0.2,
                                                                    sampling_draws=0))
    assert fit.chi2_reduced["residual"] < 0.05 * fit.chi2_reduced["geometry"]
    # every fitted value counts: the physical ones and the kernel error's effective number (< its 16 x 11 x 11
    # values: the kernel error spans the whole PSF window by default, the design's 7 x 7 and a 2 px ring)
    physical = sum(p.identifiable for p in fit.parameters if p.kind != "throughput")
    assert 50 < fit.kernel_error_parameters < 16 * 11 * 11
    assert fit.dof["residual"] == pytest.approx(measurement.mask.sum() - physical - fit.kernel_error_parameters)
    inner = fit.errors.kernel_error[..., 2:9, 2:9]  # the design's window, where the injected one lives
    correlation = torch.corrcoef(torch.stack([inner.flatten(), truth.kernel_error.flatten()]))[0, 1]
    assert float(correlation) > 0.6
    # the shifts' stated sigmas now include what the kernel error could do instead (it may move light as well):
    # larger than the geometry stage's, and covering the truth; without the kernel error they did not
    def z_scores(result):
        named = {p.name: p.sigma for p in result.parameters}
        sigma = torch.tensor([[named[f"shift_px[{i}][{a}]"] for a in range(2)] for i in range(16)], dtype=torch.float64)
        return (result.errors.shift_px - truth.shift_px).abs() / sigma

    assert float(z_scores(geometry).median()) > 3
    assert float((z_scores(fit) < 2).double().mean()) >= 0.9


def test_saturated_and_empty_frames_are_refused_with_the_reason():
    with simulated_bench({"errors": None}, exposure_s=2.0, exposure_limits_s=(0.5, 10.0)) as bench:
        with pytest.raises(CalibrationError, match="saturate"):
            measure_psfs(bench, nominal(), averages=1, exposures_s=[2.0])
    dark = {"num_psfs": 16, "errors": {"brightness": [0.0] * 16}}
    with simulated_bench({"errors": dark}) as bench:
        with pytest.raises(CalibrationError, match="too dark"):
            measure_psfs(bench, nominal(), averages=1, exposures_s=[0.01])


def test_a_bench_of_another_frame_size_is_refused():
    other = {**example_optics(), "errors": None, "geometry": {**example_optics()["geometry"], "gap_px": 6}}
    with simulated_bench({"errors": None}) as bench:
        with pytest.raises(BenchMismatch, match=r"camera\.shape: .*gap_px"):
            measure_psfs(bench, OpticalSystem.from_config(other))


def test_effective_parameters_of_a_regularised_fit_is_the_trace_of_its_hat_matrix():
    """J = diag(3, 0.5, 0) with prior 1: 9/10 + 0.25/1.25 + 0 (a value the data do not see counts 0)."""
    jacobian = torch.tensor([[3.0, 0, 0], [0, 0.5, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert effective_parameters(jacobian, 1.0) == pytest.approx(0.9 + 0.2)
    assert effective_parameters(jacobian, 1e6) == pytest.approx(2.0)  # a weak prior: the plain count


@pytest.mark.parametrize("prior", [0.1, 1.0, 30.0])
def test_effective_parameters_of_known_singular_values(prior):
    """J = U diag(s) V^T with singular values over 6 decades and 10 exact zeros: sum s^2 / (s^2 + prior^-2)."""
    rng = np.random.default_rng(3)
    singular = np.concatenate([np.logspace(-3, 3, 30), np.zeros(10)])
    u, _ = np.linalg.qr(rng.normal(size=(80, 40)))
    v, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    jacobian = u @ np.diag(singular) @ v.T
    expected = float(np.sum(singular**2 / (singular**2 + prior**-2)))
    assert effective_parameters(torch.from_numpy(jacobian), prior) == pytest.approx(expected, rel=1e-6)


def test_variance_along_derived_quantities_equals_the_dense_inverse():
    """g^T N^-1 g by the Schur complement (no N^-1 formed) against numpy's inverse of the whole normal
    matrix [[J^T J, J^T J_d], [J_d^T J, J_d^T J_d + I / prior^2]], with and without a kernel error."""
    rng = np.random.default_rng(4)
    jac, jac_d, prior = rng.normal(size=(200, 6)), rng.normal(size=(200, 30)) * 0.3, 0.5
    grad_p, grad_d = rng.normal(size=(6, 3)), rng.normal(size=(30, 3))
    normal = np.block([[jac.T @ jac, jac.T @ jac_d], [jac_d.T @ jac, jac_d.T @ jac_d + np.eye(30) / prior**2]])
    grad = np.concatenate([grad_p, grad_d])
    expected = np.einsum("iq,ij,jq->q", grad, np.linalg.inv(normal), grad)
    t = {name: torch.from_numpy(value) for name, value in
         {"jac": jac, "jac_d": jac_d, "grad_p": grad_p, "grad_d": grad_d}.items()}
    factor = prior_factor(t["jac_d"].T @ t["jac_d"], prior)
    cross = t["jac_d"].T @ t["jac"]
    information = fit_module._marginal_information(t["jac"], cross, factor)
    got = variance_along(t["grad_p"], t["grad_d"], information, cross, factor)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    plain = variance_along(t["grad_p"], None, t["jac"].T @ t["jac"])
    np.testing.assert_allclose(plain.numpy(), np.einsum("iq,ij,jq->q", grad_p, np.linalg.inv(jac.T @ jac), grad_p),
                               rtol=1e-10)


def test_sigmas_are_scaled_only_by_a_significant_misfit():
    assert sigma_scale(1.02, 10_000) == 1.0  # 1.4 sqrt(2/dof): noise
    assert sigma_scale(4.0, 10_000) == 2.0
    assert sigma_scale(0.7, 10_000) == 1.0  # never shrunk


def test_a_missing_model_term_scales_the_sigmas_and_the_file_keeps_the_scale(monkeypatch, tmp_path):
    """A device with a vignetting polynomial (not in the fit model): the reduced chi-square is well above
    1, every stated sigma is the Fisher one times sqrt(reduced chi-square), and the file keeps it."""
    spec = {"shift_std_px": 0.3, "brightness_rel_std": 0.1, "vignetting_poly": [0.8, -0.8]}  # brighter outwards
    measurement, _ = measure({"seed": 5, "spec": spec}, averages=2)
    fisher = []
    original = fit_module._fisher_information

    def recorded(*args):
        information = original(*args)
        fisher.append(fit_module._sigma_of_fisher(information.numpy()))
        return information

    monkeypatch.setattr(fit_module, "_fisher_information", recorded)
    # the scaled Fisher sigmas alone (the sampling systematic adds to the shifts' after the scaling: test_sampling)
    fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry", "photometry"), sampling_draws=0))
    chi2 = fit.chi2_reduced["photometry"]
    assert chi2 > 1.3 and fit.sigma_scale == pytest.approx(math.sqrt(chi2))
    stated = np.array([p.sigma for p in fit.parameters if p.identifiable and p.kind != "throughput"])
    np.testing.assert_allclose(stated, fisher[-1][np.isfinite(fisher[-1])] * fit.sigma_scale, rtol=1e-12)
    assert fit.summary()["sigma_scale"] == fit.sigma_scale
    with h5py.File(tmp_path / "fit.h5", "w") as f:
        fit.to_hdf5(f.create_group("fit"))
    with h5py.File(tmp_path / "fit.h5", "r") as f:
        back = MismatchFit.from_hdf5(f["fit"])
    assert back.sigma_scale == fit.sigma_scale and back.dof == fit.dof
    assert [p.sigma for p in back.parameters] == [p.sigma for p in fit.parameters]


def test_the_autodiff_jacobian_equals_the_finite_difference_one_away_from_the_kinks(monkeypatch):
    """Every column (all parameter kinds, Zernike 4-6, crosstalk, vignetting) agrees to 1e-6 relative at
    a point where every shift is 0.3-0.7 px from a whole pixel (the bilinear shift model's kinks,
    where the two sides' slopes differ and each method takes one side). The Zernike step is 1e-5
    waves here: at the default 1e-4 the even modes' columns differ by up to 3e-3 (the difference's
    own error, which falls below 1e-8 at 1e-5)."""
    monkeypatch.setitem(fit_model.FD_STEP, "zernike_waves", 1e-5)
    measurement, _ = measure(None, averages=1)
    settings = FitSettings()
    model = fit_model.FitModel(measurement, nominal(), fit_module.PixelNoise.from_sensor(nominal().sensor),
                              settings.aberration, settings)
    theta = model.identity()
    rng = np.random.default_rng(0)
    theta[model.block("shift_px")] = torch.from_numpy(rng.uniform(0.3, 0.7, model.p * 2))
    for kind, value in (("rotation_rad", 0.01), ("crosstalk", 0.003), ("vignetting_tan2", 0.02),
                        ("blur_variance_px2", 0.1), ("zernike_waves", 0.03)):
        theta[model.block(kind)] = value
    free = np.arange(theta.numel())
    columns = {}
    for method in fit_model.JACOBIANS:
        model.method = method
        columns[method] = model.jacobian(theta, free)
    reference = columns["finite_differences"]
    error = (columns["autodiff"] - reference).norm(dim=0) / reference.norm(dim=0)
    assert float(error.max()) < 1e-6


def test_an_unknown_jacobian_method_is_refused_naming_the_choices():
    with pytest.raises(InputError, match=r"jacobian must be one of \('autodiff', 'finite_differences'\)"):
        FitSettings(jacobian="secant")
