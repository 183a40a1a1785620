"""The mismatch fit on a torch device (``fit_mismatch(..., device=...)``, ``calibration.device``): on the
CPU exactly today's fit, on CUDA the same fit to rounding, its results on the CPU either way."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import calibration.api as api
from calibration import fit as fit_module
from calibration.fit import FitSettings, fit_mismatch
from simulator.device import resolve_device
from tests.calibration.benches import simulated_bench
from tests.calibration.test_fit import measure, nominal

#: A short fit that runs every device code path of the geometry stage (Levenberg-Marquardt, finite-difference
#: Jacobian, Fisher sigmas) and of the residual stage (kernel error on the design's 7 x 7 window: L-BFGS, the
#: curvature, the block products, the marginal sigmas, the effective parameters), and the held-out frames.
SHORT = FitSettings(stages=("geometry", "residual"), kernel_error_window_px=7, max_iterations=2)
#: The other Jacobian and the optics stage (blur, a Zernike term), briefly.
OPTICS = FitSettings(stages=("geometry", "photometry", "optics"), zernike_noll=(4,), max_iterations=2,
                     jacobian="autodiff")
SPEC = {"shift_std_px": 0.2, "brightness_rel_std": 0.05, "kernel_error_rms": 0.05}


@pytest.fixture(scope="module")
def measurement():
    return measure({"seed": 12, "spec": SPEC}, averages=1)[0]


@pytest.fixture
def quick(monkeypatch):
    """No restarts of stuck PSFs and one residual round (the same code paths, fewer passes: CI's time)."""
    monkeypatch.setattr(fit_module, "STUCK_CHI2_FACTOR", math.inf)
    monkeypatch.setattr(fit_module, "RESIDUAL_ALTERNATIONS", 0)


def outputs(fit) -> dict:
    """Everything a fit returns, in plain form (tensors as nested lists of floats)."""
    return {"errors": fit.errors.to_dict(), "parameters": fit.table(), "chi2": fit.chi2_reduced, "dof": fit.dof,
            "kernel": fit.kernel_error_parameters, "scale": fit.sigma_scale, "before": fit.psf_residual_before,
            "after": fit.psf_residual_after, "holdout": fit.holdout_residual_over_noise}


def assert_on_the_cpu(fit):
    assert isinstance(fit.model_rate, np.ndarray) and fit.model_rate.dtype == np.float64
    assert isinstance(fit.design_rate, np.ndarray) and fit.design_rate.dtype == np.float64
    for name, tensor in fit.errors.tensors().items():
        assert tensor.device.type == "cpu" and tensor.dtype == torch.float64, name


def test_the_fit_on_the_cpu_device_is_the_default_fit_bit_for_bit_and_makes_no_tensor_elsewhere(measurement, quick):
    """``device="cpu"`` is the default fit exactly. It runs here with torch's default device set to "meta" (no
    data): a tensor made without the model's device lands there and fails, so none is (on CUDA it would be a
    CPU tensor meeting CUDA ones)."""
    default = fit_mismatch(measurement, nominal(), settings=SHORT)
    system = nominal()
    with torch.device("meta"):
        on_cpu = fit_mismatch(measurement, system, settings=SHORT, device="cpu")
    assert "residual" in on_cpu.chi2_reduced and on_cpu.holdout_residual_over_noise
    assert outputs(on_cpu) == outputs(default)
    np.testing.assert_array_equal(on_cpu.model_rate, default.model_rate)
    np.testing.assert_array_equal(on_cpu.design_rate, default.design_rate)
    assert_on_the_cpu(on_cpu)


def test_calibrate_gives_the_fit_its_resolved_device(monkeypatch):
    """``calibration.device`` (also ``hil calibrate --device`` and ``hil run``'s ``device``) reaches the fit."""
    seen = []
    monkeypatch.setattr(api, "measure_psfs", lambda *args, **kwargs: None)
    monkeypatch.setattr(api, "fit_mismatch", lambda *args, **kwargs: seen.append(kwargs["device"]))
    with simulated_bench({"errors": None}) as bench:
        api.calibrate(bench, nominal(), {"stages": ["psf", "fit"], "device": "auto"}, progress=False)
    assert seen == [resolve_device("auto")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("settings", [SHORT, OPTICS], ids=["residual", "optics-autodiff"])
def test_the_fit_on_cuda_matches_the_cpu(measurement, settings):
    """The same fit in float64 on CUDA: other kernels round otherwise, so equal to ~1e-8, not bit for bit;
    its results come back on the CPU."""
    cpu = fit_mismatch(measurement, nominal(), settings=settings)
    cuda = fit_mismatch(measurement, nominal(), settings=settings, device="cuda")
    assert_on_the_cpu(cuda)
    np.testing.assert_allclose(cuda.design_rate, cpu.design_rate, rtol=1e-10, atol=1e-10 * np.abs(cpu.design_rate).max())
    scale = np.abs(cpu.model_rate).max()
    np.testing.assert_allclose(cuda.model_rate, cpu.model_rate, rtol=1e-8, atol=1e-8 * scale)
    assert cuda.chi2_reduced.keys() == cpu.chi2_reduced.keys() and cuda.dof.keys() == cpu.dof.keys()
    for stage, chi2 in cpu.chi2_reduced.items():
        assert cuda.chi2_reduced[stage] == pytest.approx(chi2, rel=1e-8), stage
        assert cuda.dof[stage] == pytest.approx(cpu.dof[stage], rel=1e-8), stage
    assert [(p.name, p.identifiable) for p in cuda.parameters] == [(p.name, p.identifiable) for p in cpu.parameters]
    for a, b in zip(cuda.parameters, cpu.parameters):
        assert a.value == pytest.approx(b.value, rel=1e-8, abs=1e-8 * b.sigma), a.name
        assert a.sigma == pytest.approx(b.sigma, rel=1e-6), a.name
    if cpu.errors.kernel_error is not None:
        torch.testing.assert_close(cuda.errors.kernel_error, cpu.errors.kernel_error, rtol=1e-8, atol=1e-8)
