"""Mismatch fit: the fabrication errors that make the simulator reproduce the measured PSFs.

The model of a :class:`~calibration.psf.PSFMeasurement` is the optical system itself
(:class:`~simulator.system.OpticalSystem`): the design PSFs with trial
:class:`~simulator.fabrication.FabricationErrors`, imaging the displayed points (minus the black
display) onto the tiled frame, with crosstalk and vignetting, in DN/s (``QE / e_per_dn`` times the
photon rate). Pixels are weighted by the inverse of their measured variance (the noise model of the
measurement), so the weighted sum of squares is a chi-square.

Stages (each refits its own parameters together with the earlier stages' ones, starting from them):

==============  ==============================================================================
geometry        per PSF: shift (dy, dx) px, rotation (rad), magnification, brightness
photometry      + crosstalk between neighbouring tiles, cos^4 vignetting (its squared tangent)
optics          + per PSF: blur (its variance, px^2) and Zernike terms (Noll ``zernike_noll``, m)
residual        a regularised relative kernel error on the whole PSF window (the design's K x K and
                the margin around it, ``kernel_error_window_px``), in the sensor frame, together
                with the geometry; then, in turn, every physical parameter refitted given it and
                it refitted
==============  ==============================================================================

The first three stages are solved by Levenberg-Marquardt (Marquardt's diagonal scaling, so units do
not matter; one damping per PSF) with the Jacobian of the forward model
(:meth:`calibration.fit_model.FitModel.jacobian`: forward-mode automatic differentiation by default,
central differences as the reference, ``FitSettings.jacobian``). Both converge to the same fit
(through the optics stage 4e-7 of a sigma apart, tests; the example device's full fit, whose L-BFGS
stops on a tolerance, within 0.007 sigma); benchmarks/calibration.py times them.

The residual stage (:mod:`calibration.kernel_error`) minimises chi-square plus
``sum(delta^2) / kernel_error_prior^2`` with L-BFGS
over the kernel error and the geometric parameters (shift, rotation, magnification, brightness: in
units of their Fisher sigma times the root of a kernel value's chi-square curvature, so that L-BFGS
moves both kinds alike), the others held fixed; then all physical parameters are refitted (LM) with
the kernel error held fixed, and the two again, :data:`RESIDUAL_ALTERNATIONS` times. The prior is on
the kernel error alone, so it cannot take over a shift or a brightness (they cost nothing); the
geometry moves with it because an unmodelled part of the PSFs biases the earlier stages' geometry (a
halo's light taken for a brighter, larger core), and a kernel error fitted at a fixed biased geometry
absorbs the bias, which alternating one side at a time removes only slowly (on a cascade device with
a 10 % halo: reduced chi-square 3.0 after the rounds, against 0.98 with the geometry moving along).
The kernel error is an additive correction (not clamped at zero: the model is linear in it, so no
value can get stuck where a clamp has no slope).

The kernel error acts in the sensor frame (``kernel_error_frame="sensor"`` of
:class:`~simulator.fabrication.FabricationErrors`): on the placed PSF, after the geometric transform,
so no bilinear resampling stands between it and the data. Placed before it (on the design's kernel,
as the cascade device's own kernel error is), a fractional shift, rotation or magnification averages
neighbouring pixels and the kernel error cannot make the pixel-scale structure of a real PSF behind
it: on a wave device (below) the PSFs the fit placed at a fractional shift stayed at 10-60 times the
noise, and the geometry stage's spurious rotations (up to 7 degrees) and magnifications stayed with
them (reduced chi-square 13.6 against 1.03 in the sensor frame, same device, same data).

The kernel error spans the whole PSF window by default: a real optic (e.g. a meta-optic, see
:mod:`simulator.wave_device`) puts light where the design puts none, a faint halo around the design's
K x K (12 % of the light on the wave device of ``examples/optics_wave.yaml``); a kernel error on the
design's window cannot hold it and the misfit biases every other parameter (there: reduced chi-square
~42, shifts off by up to ~160 sigma). Its extra values are ordinary kernel-error values (relative to the
design's RMS, the same prior) and count in the degrees of freedom like the others.

Held-out frames: where the measurement has them (:class:`~calibration.psf.HoldoutFrames`: the point
grid moved by half its spacing, images), the calibrated model predicts them and
:attr:`MismatchFit.holdout_residual_over_noise` is the residual RMS over the expected noise RMS
(:func:`holdout_residuals`): 1 where the model predicts frames it was not fitted to down to the noise.

Reparametrisations that let a fit start at the design: blur enters through its variance (the PSF
depends on sigma only through sigma^2, so d/d sigma = 0 at 0, but d/d variance is not); the
vignetting tangent likewise through its square. Even Zernike modes (defocus, astigmatism,
spherical) change the cascade model's PSF only through an even function of their coefficient, as a
symmetric pupil's PSF does (the OTF of an even wavefront is real and unchanged by ``W -> -W``): they
start at a small positive value (``ZERNIKE_START_WAVES``) and their sign is reported as not
determined (``sign_ambiguous``); phase diversity (:mod:`calibration.phase_retrieval`) resolves it.

Uncertainties: the covariance of the physical parameters is the inverse of the Fisher information
``J^T W J`` of the Gaussian noise model at the optimum (the Cramer-Rao bound). After the residual
stage it is the marginal one, the kernel error integrated out under its Gaussian prior (the inverse
of the Schur complement ``J^T W J - C^T (G + I / prior^2)^-1 C``, :func:`_marginal_information`): the kernel
error can move light as a shift does, so a shift is known only as well as the prior tells the two
apart (on the in-model test device the geometry stage's sigmas missed the true shifts by a median of
~8 sigma; the marginal ones cover them). Degrees of freedom
count every fitted value: ``dof = pixels - free physical parameters - n_kernel``, where ``n_kernel``
is the effective number of parameters of the regularised kernel error, the trace of its hat matrix
``sum(lambda / (lambda + 1 / kernel_error_prior^2))`` over the eigenvalues ``lambda`` of ``J_d^T W J_d``
(``J_d``: the model's Jacobian in the kernel error at the optimum; 0 <= n_kernel <= its size, the
kernel values the data pin down counting 1, those the prior holds counting 0). Where the last stage's
reduced chi-square exceeds 1 by more than :data:`CHI2_SIGNIFICANCE` standard deviations of a
chi-square of that many degrees of freedom (``sqrt(2 / dof)``: the misfit is the model's, not the
noise's), every sigma is multiplied by ``sqrt(reduced chi-square)`` (:attr:`MismatchFit.sigma_scale`;
1 otherwise). Each shift's sigma then adds, in quadrature, the sampling systematic of placing a PSF
whose structure below the pixel scale is unknown by resampling its pixel values
(:mod:`calibration.sampling`, :attr:`Parameter.systematic`; ``FitSettings.sampling_draws`` 0: none),
and states the pull towards whole pixels that this sampling puts into the fitted shift
(:attr:`Parameter.sampling_pull`): the sigma is that of the physical misregistration,
:meth:`MismatchFit.misregistration_px` (the fitted shift less its pull); ``errors.shift_px`` keeps the
least-squares shifts, which predict frames best. Derived: each tile's throughput (``throughput[p]``
rows: its PSF's light, crosstalk exchanged with its neighbours', over the design PSF's,
:meth:`calibration.fit_model.FitModel.throughput`), with its sigma from the joint covariance of the
physical parameters and the kernel error (:func:`variance_along`) and the measured conversion gain's
error (``PixelNoise.e_per_dn_rel_sigma``): the light the frames determine, which brightness, crosstalk
and the kernel error share only as their prior has it. A parameter whose
standard deviation exceeds its :data:`IDENTIFIABLE_SIGMA` (the data cannot tell it from zero at a
useful level) is flagged, fixed at its design value and the stage refitted without it, instead of
returning noise as a value.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch

from onn_core import config as config_io
from onn_core.errors import InputError
from simulator.fabrication import AberrationOptics, FabricationErrors
from simulator.system import OpticalSystem

from .fit_model import JACOBIANS, FitModel
from .hdf5 import read_group, write_group
from .kernel_error import (effective_parameters_of_gram, fit_kernel_error, kernel_error_curvature,
                           kernel_error_normal, kernel_error_start, prior_factor)
from .noise import PixelNoise
from .psf import PSFMeasurement
from .sampling import sampling_pull_px, shift_systematic_px

log = logging.getLogger(__name__)

STAGES = ("geometry", "photometry", "optics", "residual")
#: Schema name and version of a stored :class:`MismatchFit` (:mod:`calibration.hdf5`).
SCHEMA, SCHEMA_VERSION = "onn_hil.calibration.fit", 2
#: Start of even Zernike terms, in waves RMS (their gradient vanishes at 0).
ZERNIKE_START_WAVES = 0.02
#: Largest standard deviation at which a parameter counts as measured (per kind; Zernike in waves).
IDENTIFIABLE_SIGMA = {
    "shift_px": 0.1, "rotation_rad": 0.01, "magnification": 0.01, "brightness": 0.05,
    "crosstalk": 0.005, "vignetting_tan2": 0.05, "blur_variance_px2": 0.1, "zernike_waves": 0.05,
}
#: Rounds of refitting the physical parameters given the kernel error, then the kernel error given
#: them, after the residual stage's first fit (the kernel error stays regularised and is held fixed
#: while the physical parameters move, so it cannot take over their physics).
RESIDUAL_ALTERNATIONS = 2
#: A tile whose chi-square per pixel exceeds this many times the median is refitted from other starts.
STUCK_CHI2_FACTOR = 3.0
#: Shift moves (dy, dx) px tried as restarts of a stuck PSF (besides its shift mirrored across the
#: nearest whole pixel, where the bilinear model has a kink).
RESCUE_SHIFTS_PX = ((0, 0), (0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5))
#: Levenberg-Marquardt iterations over a stuck PSF's own parameters from each restart.
RESCUE_ITERATIONS = 15
#: Levenberg-Marquardt stops when a step lowers chi-square by less than this fraction of it, or by less
#: than this absolute amount (a change far below 1 in chi-square moves no parameter by a sigma's worth).
TOLERANCE_REL, TOLERANCE_CHI2 = 1e-7, 1e-2
#: Sigmas are scaled by sqrt(reduced chi-square) when it exceeds 1 by more than this many sqrt(2 / dof).
CHI2_SIGNIFICANCE = 3.0


@dataclass(frozen=True)
class FitSettings:
    """What the mismatch fit adjusts and how long it may try.

    stages: subset of :data:`STAGES`, in order. zernike_noll: Noll indices fitted in the optics stage
    (>= 4; tilt is the shift). kernel_error_prior: prior RMS of the relative kernel error.
    kernel_error_window_px: side of the kernel error's window, centred on the design's K x K: K + 2 w
    with ``w <= geometry.psf_margin_px`` (odd); None (default): the whole PSF window, K + 2 margin, so
    the residual stage also absorbs light the design puts nowhere (a halo: module docstring).
    max_iterations: per Levenberg-Marquardt run. aberration: the optics behind the Zernike
    terms (wavelength, image-side f-number of a sub-optic, sensor pixel pitch). jacobian: one of
    :data:`JACOBIANS`, how the Levenberg-Marquardt Jacobian is computed (module docstring).
    sampling_draws: speckle draws of the shifts' sampling systematic (:mod:`calibration.sampling`,
    added to their sigma in quadrature); 0: none (a device whose PSFs are the fit's own bilinear model).
    """

    stages: tuple[str, ...] = STAGES
    zernike_noll: tuple[int, ...] = (4, 5, 6)
    kernel_error_prior: float = 0.1
    kernel_error_window_px: int | None = None
    max_iterations: int = 60
    aberration: AberrationOptics = field(default_factory=AberrationOptics)
    jacobian: str = "autodiff"
    sampling_draws: int = 32

    def __post_init__(self):
        if self.jacobian not in JACOBIANS:
            raise InputError(f"jacobian must be one of {JACOBIANS}, got {self.jacobian!r}")
        stages = tuple(self.stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages or list(stages) != sorted(stages, key=STAGES.index):
            raise InputError(f"stages must be a non-empty ordered subset of {STAGES}, got {self.stages!r}")
        object.__setattr__(self, "stages", stages)
        noll = tuple(int(j) for j in self.zernike_noll)
        if any(j < 4 for j in noll) or len(set(noll)) != len(noll):
            raise InputError(f"zernike_noll must list distinct Noll indices >= 4, got {self.zernike_noll!r}")
        object.__setattr__(self, "zernike_noll", noll)
        if not (self.kernel_error_prior > 0):
            raise InputError(f"kernel_error_prior must be > 0, got {self.kernel_error_prior!r}")
        window = self.kernel_error_window_px
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0):
            raise InputError(f"kernel_error_window_px must be an odd int (K + 2 w) or None, got {window!r}")
        if isinstance(self.max_iterations, bool) or not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise InputError(f"max_iterations must be an int >= 1, got {self.max_iterations!r}")
        if isinstance(self.sampling_draws, bool) or not isinstance(self.sampling_draws, int) or self.sampling_draws < 0:
            raise InputError(f"sampling_draws must be an int >= 0, got {self.sampling_draws!r}")


@dataclass(frozen=True)
class Parameter:
    """One fitted quantity: its value, Fisher standard deviation, and whether the data determine it."""

    name: str              # e.g. "shift_px[3][0]"
    #: key of IDENTIFIABLE_SIGMA, or "throughput": derived, a tile's light (its PSF's, crosstalk exchanged)
    #: over its design PSF's; the frames determine it, brightness, crosstalk and kernel error share it by the prior
    kind: str
    value: float           # in the kind's unit (Zernike: metres)
    sigma: float           # same unit: Fisher sigma x MismatchFit.sigma_scale (+ systematic in quadrature); inf where singular
    identifiable: bool
    sign_ambiguous: bool = False
    systematic: float = 0.0  # the part of sigma from the sampling systematic (shifts only, px; calibration.sampling)
    #: shifts only (px): the fitted value's pull towards whole pixels (calibration.sampling.sampling_pull_px);
    #: ``value - sampling_pull`` estimates the physical misregistration, the quantity ``sigma`` is stated for
    sampling_pull: float = 0.0


@dataclass
class MismatchFit:
    """The fitted errors, their uncertainties, and how well the model matches (see module docstring)."""

    errors: FabricationErrors
    parameters: list[Parameter]
    chi2_reduced: dict[str, float]                # per stage, and "design" (identity errors)
    dof: dict[str, float]                         # degrees of freedom of each chi2_reduced (module docstring)
    kernel_error_parameters: float                # effective number of kernel-error values (0 without residual)
    sigma_scale: float                            # factor applied to every Fisher sigma (>= 1)
    psf_residual_before: float                    # relative L2, measured vs design model
    psf_residual_after: float                     # relative L2, measured vs calibrated model
    model_rate: np.ndarray                        # calibrated model (DN/s), frame shape
    design_rate: np.ndarray                       # design model (DN/s), frame shape
    settings: FitSettings = field(default_factory=FitSettings)
    #: residual RMS over the expected noise RMS on frames the fit never saw (``point_grid``, ``images``,
    #: ``all`` pooled; 1.0 = the model predicts them to the noise): :func:`holdout_residuals`. Empty
    #: when the measurement has no held-out frames.
    holdout_residual_over_noise: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [{"name": p.name, "kind": p.kind, "value": p.value, "sigma": p.sigma,
                 "identifiable": p.identifiable, "sign_ambiguous": p.sign_ambiguous, "systematic": p.systematic,
                 "sampling_pull": p.sampling_pull}
                for p in self.parameters]

    def misregistration_px(self) -> np.ndarray:
        """(P, 2) px: the physical optic-to-sensor misregistration, the fitted shifts less their sampling
        pull (:attr:`Parameter.sampling_pull`); ``errors.shift_px`` keeps the least-squares shifts, the
        ones that predict frames best."""
        shift = self.errors.shift_px.detach().cpu().numpy().astype(np.float64)
        pulls = [p.sampling_pull for p in self.parameters if p.kind == "shift_px"]  # (P, 2) in order, or none
        return shift - np.reshape(pulls, shift.shape) if pulls else shift

    def summary(self) -> dict:
        flagged = [p.name for p in self.parameters if not p.identifiable]
        return {"chi2_reduced": self.chi2_reduced, "dof": self.dof, "sigma_scale": self.sigma_scale,
                "kernel_error_parameters": self.kernel_error_parameters,
                "psf_residual_before": self.psf_residual_before,
                "psf_residual_after": self.psf_residual_after, "parameters": len(self.parameters),
                "unidentifiable": flagged, "stages": list(self.settings.stages),
                "holdout_residual_over_noise": self.holdout_residual_over_noise}

    def to_hdf5(self, group: h5py.Group) -> None:
        """Write into the empty h5py ``group`` with the codec of :mod:`calibration.hdf5` (schema
        :data:`SCHEMA` version :data:`SCHEMA_VERSION`; the parameter table and the model frames as
        checksummed datasets, the errors, reduced chi-squares and settings as JSON)."""
        dtype = np.dtype([("name", h5py.string_dtype()), ("kind", h5py.string_dtype()), ("value", "f8"),
                          ("sigma", "f8"), ("identifiable", "?"), ("sign_ambiguous", "?"), ("systematic", "f8"),
                          ("sampling_pull", "f8")])
        table = np.array([tuple(row.values()) for row in self.table()], dtype=dtype)
        write_group(group, SCHEMA, SCHEMA_VERSION,
                    arrays={"parameters": table, "model_rate": self.model_rate, "design_rate": self.design_rate},
                    attrs={"psf_residual_before": self.psf_residual_before,
                           "psf_residual_after": self.psf_residual_after, "sigma_scale": self.sigma_scale,
                           "kernel_error_parameters": self.kernel_error_parameters},
                    json_attrs={"errors": self.errors.to_dict(), "chi2_reduced": self.chi2_reduced, "dof": self.dof,
                                "settings": config_io.to_plain(self.settings),
                                "holdout_residual_over_noise": self.holdout_residual_over_noise})

    @classmethod
    def from_hdf5(cls, group: h5py.Group) -> "MismatchFit":
        """Read what :meth:`to_hdf5` wrote (:class:`~calibration.errors.CalibrationFileError` if it is
        foreign, of another version, incomplete or corrupted)."""
        values = read_group(group, SCHEMA, SCHEMA_VERSION, arrays=("parameters", "model_rate", "design_rate"),
                            attrs=("psf_residual_before", "psf_residual_after", "sigma_scale",
                                   "kernel_error_parameters"),
                            json_attrs=("errors", "chi2_reduced", "dof", "settings"))
        holdout = (read_group(group, SCHEMA, SCHEMA_VERSION, json_attrs=("holdout_residual_over_noise",))
                   if "holdout_residual_over_noise_json" in group.attrs else {})  # absent in older files
        params = [Parameter(name=_text(r["name"]), kind=_text(r["kind"]), value=float(r["value"]),
                            sigma=float(r["sigma"]), identifiable=bool(r["identifiable"]),
                            sign_ambiguous=bool(r["sign_ambiguous"]),
                            # older files: neither
                            systematic=float(r["systematic"]) if "systematic" in r.dtype.names else 0.0,
                            sampling_pull=float(r["sampling_pull"]) if "sampling_pull" in r.dtype.names else 0.0)
                  for r in values["parameters"]]
        return cls(errors=FabricationErrors.from_dict(values["errors"]), parameters=params,
                   chi2_reduced=values["chi2_reduced"], dof=values["dof"],
                   kernel_error_parameters=float(values["kernel_error_parameters"]),
                   sigma_scale=float(values["sigma_scale"]),
                   psf_residual_before=float(values["psf_residual_before"]),
                   psf_residual_after=float(values["psf_residual_after"]),
                   model_rate=values["model_rate"], design_rate=values["design_rate"],
                   settings=config_io.build(FitSettings, values["settings"], "fit.settings"),
                   holdout_residual_over_noise=holdout.get("holdout_residual_over_noise", {}))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _chi2_reduced(model: FitModel, theta, kernel_error, nparams: float) -> tuple[float, float]:
    """Reduced chi-square and its degrees of freedom (pixels - ``nparams``, at least 1)."""
    with torch.no_grad():
        r = model.whitened(theta, kernel_error)
    dof = max(r.numel() - nparams, 1.0)
    return float(r.square().sum()) / dof, float(dof)


def sigma_scale(chi2_reduced: float, dof: float) -> float:
    """``sqrt(chi2_reduced)`` where it exceeds 1 by more than :data:`CHI2_SIGNIFICANCE` ``sqrt(2 / dof)``
    (a misfit larger than the noise can explain), else 1."""
    excess = chi2_reduced - 1.0 > CHI2_SIGNIFICANCE * math.sqrt(2.0 / dof)
    return math.sqrt(chi2_reduced) if excess else 1.0


def _levenberg_marquardt(model: FitModel, theta: torch.Tensor, free: np.ndarray, max_iterations: int) -> torch.Tensor:
    """Levenberg-Marquardt over the ``free`` parameters with one damping per PSF and one for the
    frame-level parameters: a PSF's parameters move (almost only) its own tile, so a PSF whose step
    overshoots (its tile's chi-square rose) is damped harder without holding the others back (with a
    single damping the two slowest of the example device's 16 PSFs set everyone's pace: its optics stage
    took ~1.5x as long). A step is taken when the total chi-square falls; stops as
    :data:`TOLERANCE_REL`, :data:`TOLERANCE_CHI2`."""
    theta = theta.clone()
    nonneg = model.nonnegative()
    p = model.p
    slot = model.tensor(np.where(model.owner[free] < 0, p, model.owner[free])).long()  # damping of each column
    pixel_slot = torch.where(model.tile_of < 0, p, model.tile_of)  # pixels between tiles: the frame's slot

    def tile_costs(residual):
        return torch.zeros(p + 1, dtype=residual.dtype, device=residual.device).index_add_(0, pixel_slot, residual.square())

    with torch.no_grad():
        r = model.whitened(theta)  # kept with theta: the accepted trial's own
    costs = tile_costs(r)
    cost = float(costs.sum())
    damping = torch.full((p + 1,), 1e-3, dtype=costs.dtype, device=costs.device)
    for _ in range(max_iterations):
        jac = model.jacobian(theta, free)
        hessian = jac.T @ jac
        gradient = jac.T @ r
        diag = torch.diag(hessian).clamp(min=1e-12)
        improved = False
        for _ in range(20):
            step = torch.linalg.solve(hessian + torch.diag(damping[slot] * diag), gradient)
            trial = theta.clone()
            trial[free] += step
            trial[nonneg] = trial[nonneg].clamp(min=0)
            with torch.no_grad():
                trial_r = model.whitened(trial)
            trial_costs = tile_costs(trial_r)
            trial_cost = float(trial_costs.sum())
            worse = trial_costs > costs
            if trial_cost < cost:
                improved = True
                decrease = cost - trial_cost
                damping = torch.where(worse, damping * 2, (damping / 3).clamp(min=1e-9))
                theta, r, cost, costs = trial, trial_r, trial_cost, trial_costs
                break
            worse[p] = True  # the frame-level parameters share every rejection
            damping = torch.where(worse, damping * 8, damping)
        if not improved or decrease < max(TOLERANCE_REL * cost, TOLERANCE_CHI2):
            break
    return theta


def _fisher_information(model: FitModel, theta: torch.Tensor, free: np.ndarray) -> torch.Tensor:
    """``J^T J`` of the whitened Jacobian in the ``free`` parameters at ``theta``: the Fisher information."""
    jac = model.jacobian(theta, free)
    return jac.T @ jac


def _marginal_information(jac: torch.Tensor, cross: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """The information on the physical parameters with the kernel error marginalised under its Gaussian
    prior: the Schur complement ``J^T J - C^T (G + I / prior^2)^-1 C`` (``J`` the whitened Jacobian in the
    physical parameters, ``G = J_d^T J_d`` and ``C = J_d^T J`` of the kernel error; ``factor``: the
    Cholesky factor of ``G + I / prior^2``, :func:`~calibration.kernel_error.prior_factor`); its inverse
    is their covariance: what the data say about a shift once the kernel error may move light as well."""
    return jac.T @ jac - cross.T @ torch.cholesky_solve(cross, factor)


def _throughput(model: FitModel, theta: torch.Tensor, kernel_error: torch.Tensor | None, free: np.ndarray,
                information: torch.Tensor, cross: torch.Tensor | None,
                factor: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """Each tile's throughput (:meth:`~calibration.fit_model.FitModel.throughput`) and its standard
    deviation (P,) from the covariance of the free physical parameters and the kernel error
    (:func:`variance_along`); NaN and inf for a design PSF without light."""
    lit = model.design_psfs.sum(dim=(1, 2, 3)) > 0
    if kernel_error is None:
        grad_theta, grad_delta = torch.func.jacrev(model.throughput)(theta), None
    else:
        grad_theta, grad_delta = torch.func.jacrev(model.throughput, argnums=(0, 1))(theta, kernel_error)
        grad_delta = grad_delta.reshape(model.p, -1).T
    variance = variance_along(grad_theta[:, free].T, grad_delta, information, cross, factor)
    with torch.no_grad():
        value = torch.where(lit, model.throughput(theta, kernel_error), math.nan)
    sigma = torch.where(lit, variance.clamp(min=0).sqrt(), math.inf)
    return value.cpu().numpy(), sigma.detach().cpu().numpy()


def variance_along(grad_physical: torch.Tensor, grad_kernel: torch.Tensor | None, information: torch.Tensor,
                   cross: torch.Tensor | None = None, factor: torch.Tensor | None = None) -> torch.Tensor:
    """Variances (Q,) of Q derived quantities with gradients ``grad_physical`` (free parameters, Q) and
    ``grad_kernel`` (kernel-error values, Q; None: no kernel error): ``g^T N^-1 g`` for the normal
    matrix ``N = [[J^T J, C^T], [C, A]]``, ``A = G + I / prior^2`` (``factor``: its Cholesky factor,
    ``cross``: ``C``), without forming ``N^-1``: ``v^T S^-1 v + g_d^T A^-1 g_d`` with ``v = g_p - C^T
    A^-1 g_d`` and ``S`` = ``information``, the Schur complement (:func:`_marginal_information`); without
    a kernel error ``g_p^T information^-1 g_p``. inf where ``information`` is singular."""
    along, variance = grad_physical, torch.zeros(grad_physical.shape[1], dtype=information.dtype,
                                                 device=information.device)
    if grad_kernel is not None:
        explained = torch.cholesky_solve(grad_kernel, factor)
        variance = (grad_kernel * explained).sum(dim=0)
        along = along - cross.T @ explained
    try:
        return variance + (along * torch.linalg.solve(information, along)).sum(dim=0)
    except torch.linalg.LinAlgError:
        return torch.full_like(variance, math.inf)


def _sigma_of_fisher(fisher: np.ndarray) -> np.ndarray:
    try:
        cov = np.linalg.inv(fisher)
        sigma = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        sigma = np.full(len(fisher), np.inf)
    return np.where(np.isfinite(sigma), sigma, np.inf)


def fit_mismatch(measurement: PSFMeasurement, system: OpticalSystem, *, noise: PixelNoise | None = None,
                 settings: FitSettings | None = None, device: torch.device | str | None = None) -> MismatchFit:
    """Fit the fabrication errors of ``system``'s design to ``measurement`` (module docstring).

    ``noise`` must be the one the measurement's variance came from (for the DN scale; default the
    nominal of ``system.sensor``). ``device`` (a torch device or its name; None: the CPU): where the fit
    computes, in float64 (a copy of ``system`` goes there); the result is on the CPU either way (on
    CUDA it equals the CPU's to rounding, not bit for bit: other kernels, another summation order).
    """
    settings = settings or FitSettings()
    noise = noise or PixelNoise.from_sensor(system.sensor)
    aberration = settings.aberration
    if measurement.rate.shape != system.frame_shape:
        raise InputError(f"the measurement's frames are {measurement.rate.shape} but the optics' layout is {system.frame_shape}")
    model = FitModel(measurement, system, noise, aberration, settings, device)
    theta = model.identity()
    chi2, dof = {}, {}
    chi2["design"], dof["design"] = _chi2_reduced(model, theta, None, 0)
    with torch.no_grad():
        design_rate = model.rate(theta)
    theta[model.block("brightness")], theta[model.block("shift_px")] = _start(model, design_rate)
    wavelength = aberration.wavelengths_m[0]
    active: list[str] = []
    kinds = {"geometry": ["shift_px", "rotation_rad", "magnification", "brightness"],
             "photometry": ["crosstalk", "vignetting_tan2"], "optics": ["blur_variance_px2", "zernike_waves"]}
    fixed = np.zeros(theta.numel(), dtype=bool)
    sigma = np.full(theta.numel(), np.inf)
    information, information_free = None, None
    for stage in settings.stages:
        if stage == "residual":
            break
        active += kinds[stage]
        if stage == "optics" and model.zernike_index:
            z = theta[model.block("zernike_waves")].reshape(model.p, -1)
            z[:, model.tensor(model.even)] = ZERNIKE_START_WAVES
            theta[model.block("zernike_waves")] = z.reshape(-1)
        for _ in range(3):  # fit, flag what the data cannot determine, refit without it
            free = np.flatnonzero(_mask_of(model, active) & ~fixed)
            theta = _levenberg_marquardt(model, theta, free, settings.max_iterations)
            if stage == "geometry":
                theta = _rescue_stuck_shifts(model, theta, free, settings.max_iterations)
            sigma[:] = np.inf
            information, information_free = _fisher_information(model, theta, free), free
            sigma[free] = _sigma_of_fisher(information.cpu().numpy())
            unknown = _unidentifiable(model, sigma, free)
            log.debug("stage %s: %d free, %d not identifiable", stage, len(free), len(unknown))
            if not len(unknown):
                break
            fixed[unknown] = True
            theta[unknown] = model.identity()[unknown]
        chi2[stage], dof[stage] = _chi2_reduced(model, theta, None, len(free))
        log.info("calibration fit, %s stage: reduced chi-square %.3g", stage, chi2[stage])
    kernel_error, kernel_parameters, cross, factor = None, 0.0, None, None
    free = np.flatnonzero(_mask_of(model, active) & ~fixed)
    physical = len(free)
    if "residual" in settings.stages:
        # the geometric parameters move with the kernel error (a kernel error alone would keep their bias)
        joint = np.intersect1d(free, np.flatnonzero(_mask_of(model, kinds["geometry"])))
        # in units of their Fisher sigmas times the root of a kernel value's curvature: L-BFGS then sees
        # moves of either kind as equally curved (with the sigmas alone, ~1e3 times flatter: it would
        # hardly move them)
        curvature = kernel_error_curvature(model, theta, kernel_error_start(model, None))
        steps = model.tensor(np.where(np.isfinite(sigma[joint]), sigma[joint], 1e-3) * math.sqrt(curvature))
        for round_ in range(1 + RESIDUAL_ALTERNATIONS):
            if round_:  # every physical parameter again, given the kernel error (which stays fixed there)
                model.kernel_error = kernel_error
                theta = _levenberg_marquardt(model, theta, free, settings.max_iterations)
                model.kernel_error = None
            theta, kernel_error = fit_kernel_error(model, theta, kernel_error, joint, steps,
                                                   prior=settings.kernel_error_prior,
                                                   max_iterations=settings.max_iterations * 4)
        model.kernel_error = kernel_error
        jac = model.jacobian(theta, free)
        model.kernel_error = None
        pixels = int(model.mask.sum())
        residual = torch.zeros(pixels, dtype=torch.float64, device=model.device)
        gram, _, cross = kernel_error_normal(model, theta, kernel_error, residual, jac)
        sigma[:] = np.inf
        factor = prior_factor(gram, settings.kernel_error_prior)
        information = _marginal_information(jac, cross, factor)
        sigma[free] = _sigma_of_fisher(information.cpu().numpy())
        kernel_parameters = effective_parameters_of_gram(gram, settings.kernel_error_prior, factor)
        chi2["residual"], dof["residual"] = _chi2_reduced(model, theta, kernel_error, physical + kernel_parameters)
    elif not np.array_equal(information_free, free):  # the last refit flagged parameters it did not refit without
        information = _fisher_information(model, theta, free)
    last = settings.stages[-1]
    scale = sigma_scale(chi2[last], dof[last])
    sigma = sigma * scale
    throughput = _throughput(model, theta, kernel_error, free, information, cross, factor)
    systematic, pull = np.zeros_like(sigma), np.zeros_like(sigma)
    if "shift_px" in active:
        systematic, pull = _sampling_systematic(model, theta, settings)
    sigma = np.sqrt(sigma**2 + systematic**2)
    with torch.no_grad():
        model_rate = model.rate(theta, kernel_error)
        errors = model.errors(theta, kernel_error)
    data = model.data
    norm = float(data.norm())
    before = float((design_rate[model.mask] - data).norm()) / norm
    after = float((model_rate[model.mask] - data).norm()) / norm
    params = _parameters(model, theta, sigma, systematic, pull, fixed, active, wavelength)
    # the light in photons is known no better than the conversion gain that turns the frames' DN into them
    params += [Parameter(name=f"throughput[{p}]", kind="throughput", value=float(value),
                         sigma=float(math.hypot(spread * scale, value * noise.e_per_dn_rel_sigma)),
                         identifiable=bool(np.isfinite(value))) for p, (value, spread) in enumerate(zip(*throughput))]
    holdout = {}
    if getattr(measurement, "holdout", None) is not None:
        frames = measurement.holdout
        holdout = holdout_residuals(frames, [model.predicted(pattern, theta, kernel_error).cpu().numpy()
                                             for pattern in frames.patterns])
        log.info("calibration fit: held-out residual over the noise %s", holdout)
    return MismatchFit(errors=_detached(errors), parameters=params, chi2_reduced=chi2, dof=dof,
                       kernel_error_parameters=kernel_parameters, sigma_scale=scale, psf_residual_before=before,
                       psf_residual_after=after, model_rate=model_rate.cpu().numpy(),
                       design_rate=design_rate.cpu().numpy(), settings=settings, holdout_residual_over_noise=holdout)


def holdout_residuals(frames, predicted) -> dict[str, float]:
    """Residual RMS over the expected noise RMS, ``sqrt(mean((rate - model)^2 / variance))`` over each
    held-out frame's masked pixels, pooled per kind (``point_grid``, ``images``) and over all (``all``);
    ``frames``: :class:`~calibration.psf.HoldoutFrames`, ``predicted``: the model's rate frames (DN/s).
    1.0: the model predicts frames it was not fitted to to the noise; above it, by how much it fails."""
    pooled: dict[str, list] = {}
    for kind, rate, variance, mask, model in zip(frames.kinds, frames.rate, frames.variance, frames.mask, predicted):
        z2 = (rate[mask] - np.asarray(model)[mask]) ** 2 / variance[mask]
        name = "images" if kind == "image" else kind
        pooled.setdefault(name, []).append(z2)
        pooled.setdefault("all", []).append(z2)
    return {name: float(np.sqrt(np.concatenate(parts).mean())) for name, parts in pooled.items()}


def _tile_chi2(model: FitModel, theta: torch.Tensor) -> np.ndarray:
    """Chi-square per pixel of every PSF's tile (P,)."""
    with torch.no_grad():
        r2 = model.whitened(theta).square()
    own = torch.stack([model.tile_of == p for p in range(model.p)]).double()
    return ((own * r2).sum(dim=1) / own.sum(dim=1).clamp(min=1)).cpu().numpy()


def _rescue_stuck_shifts(model: FitModel, theta: torch.Tensor, free: np.ndarray, max_iterations: int) -> torch.Tensor:
    """A PSF whose tile fits far worse than the others is taken for stuck in a spurious minimum (the
    cost is multimodal at the pixel scale: bilinear resampling has kinks at whole-pixel shifts): try
    its rotation and magnification back at the design with its shift as fitted, moved by
    :data:`RESCUE_SHIFTS_PX` and mirrored across the nearest whole pixel; fit its own parameters from
    each, keep the best, and refit all."""
    per_tile = _tile_chi2(model, theta)
    stuck = np.flatnonzero(per_tile > STUCK_CHI2_FACTOR * max(np.median(per_tile), 1.0))
    if not len(stuck):
        return theta
    shift, rotation, magnification = (model.block(k) for k in ("shift_px", "rotation_rad", "magnification"))
    for p in stuck:
        best, best_cost = theta, per_tile[p]
        y, x = float(theta[shift.start + 2 * p]), float(theta[shift.start + 2 * p + 1])
        mirrored = (2 * round(y) - y, 2 * round(x) - x)  # the same distance across the nearest kink
        starts = [(y + dy, x + dx) for dy, dx in RESCUE_SHIFTS_PX]
        starts += [(mirrored[0], x), (y, mirrored[1]), mirrored]
        for start in starts:
            trial = theta.clone()  # rotation and magnification back at the design, the shift moved
            trial[rotation.start + p], trial[magnification.start + p] = 0.0, 1.0
            trial[shift.start + 2 * p], trial[shift.start + 2 * p + 1] = start
            own = np.asarray([i for i in free if model.owner[i] == p])
            trial = _levenberg_marquardt(model, trial, own, RESCUE_ITERATIONS)
            cost = _tile_chi2(model, trial)[p]
            if cost < best_cost:
                best, best_cost = trial, cost
        theta = best
    log.info("calibration fit: PSFs %s restarted from a neighbouring shift", stuck.tolist())
    return _levenberg_marquardt(model, theta, free, max_iterations)


def _mask_of(model: FitModel, kinds) -> np.ndarray:
    mask = np.zeros(int(model.offsets[-1]), dtype=bool)
    for kind in kinds:
        mask[model.block(kind)] = True
    return mask


def _start(model: FitModel, design_rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per PSF, a start near the answer (the cost is multimodal in the shift, as the PSFs are
    structured at the pixel scale): brightness = measured over modelled light in its tile, shift =
    the difference of their intensity centroids."""
    brightness = torch.ones(model.p, dtype=torch.float64, device=model.device)
    shift = torch.zeros(model.p, 2, dtype=torch.float64, device=model.device)
    measured = torch.zeros_like(design_rate)
    measured[model.mask] = model.data
    for p in range(model.p):
        rows, cols = model.system.layout.tile_slices(p)
        a, b = measured[rows, cols].clamp(min=0), design_rate[rows, cols]
        if float(b.sum()) > 0 and float(a.sum()) > 0:
            brightness[p] = float(a.sum()) / float(b.sum())
            shift[p] = _centroid(a) - _centroid(b)
    return brightness, shift.reshape(-1)


def _centroid(image: torch.Tensor) -> torch.Tensor:
    y = torch.arange(image.shape[0], dtype=image.dtype, device=image.device)
    x = torch.arange(image.shape[1], dtype=image.dtype, device=image.device)
    total = image.sum()
    return torch.stack([(image.sum(1) * y).sum() / total, (image.sum(0) * x).sum() / total])


def _unidentifiable(model: FitModel, sigma: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The free parameters whose Fisher sigma exceeds their kind's :data:`IDENTIFIABLE_SIGMA`."""
    limits = np.empty(len(sigma))
    for kind, _, _ in model.layout:
        limits[model.block(kind)] = IDENTIFIABLE_SIGMA[kind]
    return free[~(sigma[free] <= limits[free])].astype(np.int64)


def _sampling_systematic(model: FitModel, theta: torch.Tensor, settings: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per parameter of ``theta``: the shifts' sampling systematic and pull (px, :mod:`calibration.sampling`)
    of the fitted shapes, 0 elsewhere and with ``settings.sampling_draws`` 0."""
    systematic, pull = np.zeros(theta.numel()), np.zeros(theta.numel())
    if settings.sampling_draws:
        block = model.block("shift_px")
        with torch.no_grad():
            shaped = model.shaped(theta, remember=False)
        draws = settings.sampling_draws
        systematic[block] = shift_systematic_px(shaped, settings.aberration, draws=draws).reshape(-1).numpy()
        fitted = theta[block].detach().reshape(-1, 2)
        pull[block] = sampling_pull_px(shaped, fitted, settings.aberration, draws=draws).reshape(-1).numpy()
    return systematic, pull


def _parameters(model: FitModel, theta, sigma, systematic, pull, fixed, active, wavelength) -> list[Parameter]:
    out = []
    for kind, _, shape in model.layout:
        if kind not in active:
            continue
        block = model.block(kind)
        for flat, i in enumerate(range(block.start, block.stop)):
            index = np.unravel_index(flat, shape) if shape else ()
            name = kind + "".join(f"[{v}]" for v in index)
            value, s = float(theta[i]), float(sigma[i])
            ambiguous = False
            if kind == "zernike_waves":
                mode = index[1]
                name = f"zernike_m[{index[0]}][noll {model.zernike_index[mode] + 1}]"
                value, s = value * wavelength, s * wavelength
                ambiguous = model.even[mode]
            out.append(Parameter(name=name, kind=kind, value=value, sigma=s, identifiable=not fixed[i],
                                 sign_ambiguous=ambiguous and not fixed[i], systematic=float(systematic[i]),
                                 sampling_pull=float(pull[i])))
    return out


def _detached(errors: FabricationErrors) -> FabricationErrors:
    """A copy of ``errors`` outside any autograd graph, on the CPU (whatever torch's default device)."""
    with torch.device("cpu"):
        return FabricationErrors.from_dict(errors.to_dict())


__all__ = ["FitSettings", "IDENTIFIABLE_SIGMA", "MismatchFit", "Parameter", "SCHEMA", "SCHEMA_VERSION", "STAGES", "fit_mismatch",
           "holdout_residuals"]
