"""The autodiff Jacobian's fast paths (``FitSettings.jacobian="autodiff"``): the shape block's derivatives
(blur, Zernike terms in closed form) against central differences of the shaped PSFs, and a whole
(short) fit by autodiff against the same fit by finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibration import fit as fit_module
from calibration import fit_model
from calibration.fit import FitSettings, fit_mismatch
from tests.calibration.test_fit import measure, nominal

#: Central-difference steps of the shape parameters here (blur variance px^2, Zernike waves): small enough
#: that the difference's own error is below 1e-8 of the derivative (module FD_STEP's 1e-4 waves is not, for
#: the even modes: see test_fit's Jacobian test).
STEPS = {"blur_variance_px2": 1e-5, "zernike_waves": 1e-5}


@pytest.fixture(scope="module")
def measurement():
    return measure({"seed": 12, "spec": {"shift_std_px": 0.2, "brightness_rel_std": 0.05, "blur_sigma_max_px": 0.4,
                                         "zernike_std_m": [0.0, 0.0, 0.0, 3e-8, 1.5e-8, 1.5e-8]}}, averages=1)[0]


def model_at_a_generic_point(measurement, settings):
    """A fit model and a parameter vector with every kind away from its design value (shifts 0.3-0.7 px
    from a whole pixel, different blur and Zernike terms per PSF)."""
    model = fit_model.FitModel(measurement, nominal(), fit_module.PixelNoise.from_sensor(nominal().sensor),
                              settings.aberration, settings)
    theta = model.identity()
    rng = np.random.default_rng(1)
    theta[model.block("shift_px")] = torch.from_numpy(rng.uniform(0.3, 0.7, model.p * 2))
    for kind, low, high in (("rotation_rad", -0.01, 0.01), ("blur_variance_px2", 0.02, 0.2),
                            ("zernike_waves", -0.05, 0.05)):
        block = model.block(kind)
        theta[block] = torch.from_numpy(rng.uniform(low, high, block.stop - block.start))
    theta[model.block("crosstalk")], theta[model.block("vignetting_tan2")] = 0.003, 0.02
    return model, theta


def test_the_shape_derivatives_equal_central_differences_of_the_shaped_psfs(measurement):
    """Every PSF's shaped PSF differentiated by its own blur variance and by each of its Zernike terms (Noll
    4-6) equals the central difference moving that parameter of all PSFs at once (a PSF's shape depends
    on its own parameters only), to 1e-7 relative."""
    model, theta = model_at_a_generic_point(measurement, FitSettings())
    slots = [("blur_variance_px2", 0)] + [("zernike_waves", j) for j in range(3)]
    derivatives = model._shape_derivatives(theta, slots)
    assert set(derivatives) == set(slots)
    for slot in slots:
        step = model._slot_tangent(theta, slot) * STEPS[slot[0]]
        with torch.no_grad():
            difference = (model._shape(theta + step) - model._shape(theta - step)) / (2 * STEPS[slot[0]])
        error = float((derivatives[slot] - difference).abs().max() / difference.abs().max())
        assert error < 1e-7, (slot, error)


def test_the_shape_derivatives_without_zernike_terms_are_the_blur_alone(measurement):
    """No Zernike term fitted (``zernike_noll=()``): the blur's derivative, no aberration filter."""
    model, theta = model_at_a_generic_point(measurement, FitSettings(zernike_noll=()))
    step = model._slot_tangent(theta, ("blur_variance_px2", 0)) * 1e-5
    with torch.no_grad():
        difference = (model._shape(theta + step) - model._shape(theta - step)) / 2e-5
    derivative = model._shape_derivatives(theta, [("blur_variance_px2", 0)])[("blur_variance_px2", 0)]
    assert float((derivative - difference).abs().max() / difference.abs().max()) < 1e-7


@pytest.mark.slow
def test_an_autodiff_fit_is_the_finite_difference_fit(measurement, monkeypatch):
    """The fit through the optics stage (blur, Noll 4-5), converged, gives the same parameters by either
    Jacobian to 1e-4 of their sigmas (measured 4e-7), the same sigmas and reduced chi-squares (4 min).
    Unconverged they differ more (3 iterations a run: 0.04 sigma, optics chi-square 4e-4): the differences
    are one-sided at the blur's lower bound, with an O(step) error the closed form does not have."""
    monkeypatch.setattr(fit_module, "STUCK_CHI2_FACTOR", math.inf)
    monkeypatch.setitem(fit_model.FD_STEP, "zernike_waves", STEPS["zernike_waves"])
    fits = {method: fit_mismatch(measurement, nominal(), settings=FitSettings(
        stages=("geometry", "photometry", "optics"), zernike_noll=(4, 5), jacobian=method))
        for method in fit_model.JACOBIANS}
    autodiff, reference = fits["autodiff"], fits["finite_differences"]
    for stage, chi2 in reference.chi2_reduced.items():
        assert autodiff.chi2_reduced[stage] == pytest.approx(chi2, rel=1e-9), stage
    for mine, theirs in zip(autodiff.parameters, reference.parameters):
        assert mine.name == theirs.name and mine.identifiable == theirs.identifiable
        if math.isfinite(theirs.sigma):
            assert abs(mine.value - theirs.value) < 1e-4 * theirs.sigma, mine.name
            assert mine.sigma == pytest.approx(theirs.sigma, rel=1e-4), mine.name
