"""The residual stage's widened kernel error (a halo beyond the design's window) and the held-out
residual, by round trip on simulated benches with known injected errors (seeds not the examples')."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from calibration import fit as fit_module
from calibration import fit_model, kernel_error
from calibration.fit import FitSettings, MismatchFit, fit_mismatch
from calibration.kernel_error import effective_parameters
from calibration.psf import PSFMeasurement
from tests.calibration.test_fit import measure, nominal

K, MARGIN = 7, 2  # examples/optics.yaml: 7 x 7 design, PSF window 11 x 11


def halo_kernel_error(fraction: float = 0.1, seed: int = 5) -> torch.Tensor:
    """A relative kernel error (16, 1, 11, 11) that is 0 on the design's 7 x 7 and a smooth halo on the
    ring around it holding ``fraction`` of each PSF's light (brighter nearer the core, uneven)."""
    design = nominal().design.psfs().double()
    rms = design.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    total = design.sum(dim=(-2, -1), keepdim=True)
    window = K + 2 * MARGIN
    y, x = torch.meshgrid(torch.arange(window) - window // 2, torch.arange(window) - window // 2, indexing="ij")
    ring = (torch.maximum(y.abs(), x.abs()) > K // 2).double()
    profile = ring * torch.exp(-torch.hypot(y.double(), x.double()) / 3.0)
    generator = torch.Generator().manual_seed(seed)
    uneven = 1 + 0.3 * torch.rand((16, 1, window, window), generator=generator, dtype=torch.float64)
    halo = profile * uneven
    halo = halo / halo.sum(dim=(-2, -1), keepdim=True) * fraction * total
    return halo / rms


def added_light(errors: fit_module.FabricationErrors, design) -> torch.Tensor:
    """The light the kernel error adds to each fabricated PSF (P, C, 11, 11) in the sensor frame, per unit
    brightness: the PSFs with the errors minus those without the kernel error (either frame)."""
    without = fit_module.FabricationErrors.from_dict({**errors.to_dict(), "errors": {
        name: value for name, value in errors.to_dict()["errors"].items() if name != "kernel_error"}})
    brightness = errors.brightness[:, None, None, None]
    return (errors.fabricate(design, MARGIN) - without.fabricate(design, MARGIN)) / brightness


def ring_light(added: torch.Tensor) -> torch.Tensor:
    """Light of ``added`` (P, C, 11, 11) outside the design's 7 x 7 window (P,)."""
    inner = torch.zeros_like(added, dtype=torch.bool)
    inner[..., MARGIN:MARGIN + K, MARGIN:MARGIN + K] = True
    return added.masked_fill(inner, 0).sum(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def halo_device():
    truth = halo_kernel_error()
    errors = {"num_psfs": 16, "errors": {"kernel_error": truth.tolist(),
                                         "shift_px": [[0.15 * (p % 3), -0.1 * (p % 4)] for p in range(16)],
                                         "brightness": [1 + 0.02 * (p % 5) for p in range(16)]}}
    measurement, _ = measure(errors, seed=2, averages=4)
    return measurement, fit_module.FabricationErrors.from_dict(errors)


def test_the_widened_kernel_error_recovers_a_known_halo(halo_device):
    measurement, truth = halo_device
    settings = FitSettings(stages=("geometry", "residual"), kernel_error_prior=1.0)
    fit = fit_mismatch(measurement, nominal(), settings=settings)
    narrow = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry", "residual"),
                                                                      kernel_error_prior=1.0, kernel_error_window_px=K))
    assert tuple(fit.errors.kernel_error.shape) == (16, 1, K + 2 * MARGIN, K + 2 * MARGIN)
    assert fit.chi2_reduced["residual"] < 1.2
    assert narrow.chi2_reduced["residual"] > 3 * fit.chi2_reduced["residual"]  # the 7 x 7 one cannot hold it
    # the fit's kernel error acts in the sensor frame, the injected one on the design: compare the light each adds
    design = nominal().design.psfs().double()
    true_added, fitted_added = added_light(truth, design), added_light(fit.errors, design)
    # the light of each fabricated PSF is what the data determine, to well under 1 %
    fitted_psfs, true_psfs = fit.errors.fabricate(design, MARGIN), truth.fabricate(design, MARGIN)
    torch.testing.assert_close(fitted_psfs.sum(dim=(1, 2, 3)), true_psfs.sum(dim=(1, 2, 3)), rtol=0.005, atol=0)
    # how it splits between brightness and the halo is the prior's choice (a kernel error shaped like the PSF
    # is a brightness): the kernel error's prior moves ~1 % of the light, ~10 % of the halo, into brightness
    torch.testing.assert_close(ring_light(fitted_added), ring_light(true_added), rtol=0.15, atol=0)
    # the light each tile receives, crosstalk exchanged (none here), is stated with its sigma: the calibrated
    # system's, and the truth's within it
    throughput = np.array([p.value for p in fit.parameters if p.kind == "throughput"])
    throughput_sigma = np.array([p.sigma for p in fit.parameters if p.kind == "throughput"])
    calibrated = nominal().double()
    calibrated.errors = fit_module.FabricationErrors.from_dict(fit.errors.to_dict())
    np.testing.assert_allclose(throughput, calibrated.throughput().numpy(), rtol=1e-10)
    fabricated = nominal().double()
    fabricated.errors = truth
    assert np.all(np.abs(throughput - fabricated.throughput().numpy()) < 3 * throughput_sigma)
    assert np.all(throughput_sigma < 0.005)
    sigma = {p.name: p.sigma for p in fit.parameters}
    brightness_z = (fit.errors.brightness - truth.brightness).abs() / torch.tensor([sigma[f"brightness[{i}]"] for i in range(16)])
    assert float(brightness_z.max()) < 3
    # the halo's shape too, not only its light
    correlation = torch.corrcoef(torch.stack([fitted_added.flatten(), true_added.flatten()]))[0, 1]
    assert float(correlation) > 0.9
    # every fitted value is counted: dof = pixels - physical - the kernel error's effective number
    physical = sum(p.identifiable for p in fit.parameters if p.kind != "throughput")
    assert fit.dof["residual"] == pytest.approx(measurement.mask.sum() - physical - fit.kernel_error_parameters)
    assert 16 * K * K < fit.kernel_error_parameters <= 16 * (K + 2 * MARGIN) ** 2
    # the calibrated forward model (the errors through their file form: the sensor-frame kernel error on the
    # widened window) reproduces the fit's model frame
    system = nominal().double()
    system.errors = fit_module.FabricationErrors.from_dict(fit.errors.to_dict())
    psfs = system.fabricated_psfs()
    assert psfs.shape[-1] == K + 2 * MARGIN
    gray = torch.from_numpy(measurement.pattern.astype(np.int64))[None, None]
    design = system.design.psfs()
    radiance = system.relative_radiance(gray, design) - system.relative_radiance(torch.zeros_like(gray), design)
    scale = system.sensor.quantum_efficiency / fit_module.PixelNoise.from_sensor(system.sensor).e_per_dn
    rate = system.radiance_frame(radiance, psfs, clamp=False)[0].detach().numpy() * scale
    np.testing.assert_allclose(rate, fit.model_rate, rtol=0, atol=1e-9 * np.abs(fit.model_rate).max())


def test_the_dof_counts_every_value_of_the_widened_kernel_error(halo_device):
    """With a weak prior the hat-matrix trace is
    exactly the number of values: 16 PSFs x 11 x 11 (the 7 x 7 window's 784 and the 1152 added)."""
    measurement, _ = halo_device
    settings = FitSettings()
    model = fit_model.FitModel(measurement, nominal(), fit_module.PixelNoise.from_sensor(nominal().sensor),
                              settings.aberration, settings)
    theta = model.identity()
    delta = torch.full((16, 1, 11, 11), 0.05, dtype=torch.float64)
    jacobian = kernel_error.kernel_error_jacobian(model, theta, delta)
    assert jacobian.shape == (measurement.mask.sum(), 16 * 11 * 11)
    assert effective_parameters(jacobian, 1e6) == pytest.approx(16 * 11 * 11, abs=1e-3)
    assert effective_parameters(jacobian[:, :0], 1e6) == 0.0


def test_the_blockwise_normal_matrix_equals_the_dense_one(halo_device):
    measurement, _ = halo_device
    settings = FitSettings()
    model = fit_model.FitModel(measurement, nominal(), fit_module.PixelNoise.from_sensor(nominal().sensor),
                              settings.aberration, settings)
    theta = model.identity()
    theta[model.block("shift_px")] = 0.3
    delta = torch.full((16, 1, 11, 11), 0.05, dtype=torch.float64)
    dense = kernel_error.kernel_error_jacobian(model, theta, delta)
    residual = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gram, jr, jo = kernel_error.kernel_error_normal(model, theta, delta, residual, residual[:, None])
    reference = dense.T @ dense
    assert float((gram - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
    torch.testing.assert_close(jr, dense.T @ residual, rtol=1e-10, atol=0)
    torch.testing.assert_close(jo[:, 0], jr)


def test_a_kernel_error_window_that_does_not_fit_the_psf_window_is_refused(halo_device):
    measurement, _ = halo_device
    for window in (5, 13):
        with pytest.raises(fit_module.InputError, match="kernel_error_window_px"):
            fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry", "residual"),
                                                                      kernel_error_window_px=window))
    with pytest.raises(fit_module.InputError, match="odd"):
        FitSettings(kernel_error_window_px=8)


def test_the_holdout_residual_is_the_noise_inside_the_model_and_above_it_outside(tmp_path):
    """A device inside the fitted model (shift, brightness; geometry fit): the held-out frames (another
    phase of the point grid, two images) differ from the calibrated model by the noise alone (~1). A
    blur the fit does not model: well above 1."""
    spec = {"shift_std_px": 0.5, "brightness_rel_std": 0.1}
    inside, _ = measure({"seed": 41, "spec": spec}, seed=3, averages=2)
    fit = fit_mismatch(inside, nominal(), settings=FitSettings(stages=("geometry",)))
    holdout = fit.holdout_residual_over_noise
    assert set(holdout) == {"point_grid", "images", "all"}
    assert 0.9 < holdout["all"] < 1.1 and 0.9 < holdout["point_grid"] < 1.1
    outside, _ = measure({"seed": 41, "spec": {**spec, "blur_sigma_max_px": 0.6}}, seed=3, averages=2)
    wrong = fit_mismatch(outside, nominal(), settings=FitSettings(stages=("geometry",)))
    assert wrong.holdout_residual_over_noise["all"] > 1.5
    # both travel through the file
    with h5py.File(tmp_path / "c.h5", "w") as f:
        inside.to_hdf5(f.create_group("psf"))
        fit.to_hdf5(f.create_group("fit"))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        back, back_fit = PSFMeasurement.from_hdf5(f["psf"]), MismatchFit.from_hdf5(f["fit"])
    assert back.holdout.kinds == ["point_grid", "image", "image"]
    np.testing.assert_array_equal(back.holdout.rate, inside.holdout.rate)
    assert back_fit.holdout_residual_over_noise == holdout
