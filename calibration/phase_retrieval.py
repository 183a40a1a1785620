"""Phase retrieval: fit the Zernike wavefront of a sub-optic's pupil to its measured PSF(s).

Forward model (the physical route of :mod:`simulator.pupil` / :mod:`simulator.metaoptic`, not the
cascade filter of :mod:`simulator.fabrication`): the known pupil transmission ``P`` (circular, or the
square aperture of a meta-optic) carries the known design phase ``phi_d`` (relative to an ideal lens of
focal length ``f``) and the unknown wavefront ``W = sum_j c_j Z_j`` (Noll, metres RMS over the Zernike
disk); a PSF recorded ``dz`` beyond the focus is ``|FT|^2`` at scale ``lambda z``, ``z = f + dz``, of

    P exp(i phi_d) exp(i 2 pi (W + W_dz) / lambda),   W_dz = -(r^2 / 2) (1/f - 1/z)

(paraxial Fresnel; :func:`simulator.pupil.psf_from_pupil`, a matrix Fourier transform). Each camera
pixel records the mean of ``oversample x oversample`` point samples at its sub-pixel centres (midpoint
rule for the pixel's area integral; odd ``oversample``) times the pixel area, as a fraction of the
power through the pupil; pixel ``(r, c)`` of a ``(rows, cols)`` window is centred at ``((r - rows//2)
p, (c - cols//2) p)`` from the optical axis. Fitted per PSF: its total flux (electrons, light outside
the window included); shared: the coefficients. The fit maximises the likelihood of the shifted-Poisson
model of a photon-counting camera with Gaussian read noise ``sigma`` (electrons): ``y + sigma^2 ~
Poisson(mu + sigma^2)``, with L-BFGS (torch, float64) from a few random starts.

Sign convention (how to compare with an interferometer)
-------------------------------------------------------
``W`` is an optical path *added* to the wave, with time dependence ``exp(-i omega t)``: the pupil
field is multiplied by ``exp(+i 2 pi W / lambda)`` (:mod:`simulator.zernike`), so positive ``W`` is a
delay (more glass). A positive Noll-2 coefficient (``Z2 = 2 rho cos theta``: more path towards +x)
tilts the wavefront so the PSF moves towards **+x, increasing column index**, by ``2 c2 f / R``
(``R`` the Zernike radius): like a prism, light bends towards the thick side. Noll-3 likewise moves it
towards +y (increasing row index). A positive defocus ``c4`` moves the best focus beyond the nominal
one, to ``dz ~ 4 sqrt(3) c4 f^2 / R^2`` (observing ``dz`` beyond the focus adds ``c4 = W020 / (2
sqrt 3)``, ``W020 = -R^2 dz / (2 f (f + dz))``).

Other codes, checked with the same Noll coefficients on the same sampled pupil
(``tests/calibration/test_phase_retrieval.py``, which runs where the ``[compare]`` extra is installed):

* **HCIPy** (0.7) and **prysm** (0.21): ``exp(+i 2 pi OPD / lambda)`` and a forward Fourier transform
  to the focal plane, as here: their OPD equals this ``W`` and their PSFs equal ours (HCIPy to 2e-15 of
  the peak on the same pupil, also off-axis; prysm, checked once outside the test suite since it needs
  setuptools' ``pkg_resources``, to 4e-3 with its own hard-edged pupil and grid, tilt and coma moving
  the same way).
* **poppy** (>= 1.0, measured with 1.1.2): the same ``exp(+i 2 pi OPD / lambda)`` but an inverse FFT
  from pupil to image (its "phase increasing with time" convention), so a positive OPD is a wavefront
  *ahead*: its PSF for the same coefficients is ours **rotated by 180 degrees** about the optical
  axis, for any pupil, and equals ours for the **negated** coefficients, ``OPD_poppy = -W`` (both exact
  to 1e-15 of the peak). For a pupil that is centro-symmetric about the Zernike centre (a clear
  circle or square), negating only the odd modes (tilt, coma, trefoil) gives the same PSF too -- that
  is the twin ambiguity below, not a convention: with an off-axis or otherwise asymmetric pupil only
  the full negation holds.

:func:`to_external_convention` turns fitted coefficients into the ones to give each of these codes
for the same wavefront. Interferometer and lens-design reports that write the field as ``exp(-i k W)``
("wavefront ahead of the reference is positive") share poppy's sign. Before comparing with anything
else, check with a tilt: a known positive Noll-2 should move its PSF towards +x (increasing column).

The twin ambiguity
------------------
``|FT[P(r) exp(i phi(r))]|^2 = |FT[P(-r) exp(-i phi(-r))]|^2``: with a centro-symmetric pupil and no
phase that breaks the symmetry, the wavefront ``W(r)`` and its twin ``-W(-r)`` make the same PSF. The
twin flips the sign of every even-``m`` mode (``Z(-r) = Z(r)``: defocus, astigmatism, spherical,
Noll 4, 5, 6, 11) *together* and keeps the odd ones (tilt, coma, trefoil). A PSF at a known defocus
(``diversity_defocus_m`` with a non-zero entry) or a known design phase that is not odd about the axis
resolves it. :func:`retrieve_zernike` tests it on the data: it refits from the twin of its best fit,
and when the two fits are distinct (Mahalanobis distance^2 > ``ambiguity_chi2``) yet the data cannot
tell them apart (deviance difference < ``ambiguity_chi2``) the even modes are flagged ``ambiguous`` and
the twin fit is reported beside the best one.

Uncertainty: the Cramer-Rao bound from the Fisher information of the noise model at the fit,
``F = J^T diag(1 / (mu + sigma^2)) J`` (``J = d mu / d theta`` over every pixel, fluxes included and
marginalised), which maximum likelihood attains at high photon counts. Tests: against PSFs from an
independent numpy FFT computation (``tests/calibration/psf_oracle.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from onn_core.errors import InputError
from simulator.field import Grid
from simulator.metaoptic import aperture_center_m, square_aperture
from simulator.pupil import circular_pupil, psf_from_pupil
from simulator.zernike import noll_to_nm, zernike_wavefront

from .hdf5 import read_dataclass, write_dataclass

__all__ = ["EXTERNAL_SIGN", "PupilModel", "PhaseRetrievalResult", "retrieve_zernike", "to_external_convention",
           "SCHEMA", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

SCHEMA = "onn-hil/phase-retrieval"
SCHEMA_VERSION = 1
#: Default fitted modes: tilt (the PSF's position in its window) and Noll 4..11.
DEFAULT_NOLL = tuple(range(2, 12))
#: Factor that turns this module's Noll coefficients into another code's for the same wavefront (module
#: docstring: sign convention).
EXTERNAL_SIGN = {"hcipy": 1.0, "prysm": 1.0, "poppy": -1.0}


def to_external_convention(coefficients_m, code: str) -> np.ndarray:
    """The Noll coefficients (metres RMS, any shape) that ``code`` ("hcipy", "prysm" or "poppy") needs to
    describe the same wavefront as ``coefficients_m`` in this module's convention: the same PSF, in the
    same orientation, for any pupil. Every mode keeps its sign for HCIPy and prysm and flips it for
    poppy (>= 1.0); the mapping is its own inverse."""
    if code not in EXTERNAL_SIGN:
        raise InputError(f"code must be one of {sorted(EXTERNAL_SIGN)}, got {code!r}")
    return EXTERNAL_SIGN[code] * np.asarray(coefficients_m, dtype=np.float64)



@dataclass(frozen=True, eq=False)
class PupilModel:
    """What is known of a sub-optic's pupil.

    Attributes
    ----------
    grid : Grid
        Pupil-plane sampling (metres; the optical axis at coordinate 0).
    transmission : Tensor (rows, cols)
        Real amplitude transmission, e.g. :func:`simulator.pupil.circular_pupil`.
    zernike_radius_m : float
        Radius of the Zernike disk (``rho = 1``), metres.
    zernike_center_m : (float, float)
        Centre of the Zernike disk and of the diversity defocus (the optical axis), metres.
    design_phase_rad : Tensor (rows, cols) or None
        Known phase (radians) at the fit's wavelength on top of the ideal lens: for a meta-optic mask
        ``phi_mask``, ``phi_mask - thin_lens_phase(grid, wavelength, f, center_m=axis)``.
    """

    grid: Grid
    transmission: torch.Tensor
    zernike_radius_m: float
    zernike_center_m: tuple[float, float] = (0.0, 0.0)
    design_phase_rad: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.grid, Grid):
            raise InputError(f"PupilModel grid must be a simulator.field.Grid, got {type(self.grid).__name__}")
        for name in ("transmission", "design_phase_rad"):
            value = getattr(self, name)
            if value is None:
                continue
            tensor = torch.as_tensor(value, dtype=torch.float64)
            if tuple(tensor.shape) != self.grid.shape or not bool(torch.isfinite(tensor).all()):
                raise InputError(f"PupilModel {name} must be finite with the grid's shape {self.grid.shape}, got "
                                 f"shape {tuple(tensor.shape)}")
            object.__setattr__(self, name, tensor)
        if not float(self.transmission.abs().sum()) > 0:
            raise InputError("PupilModel transmission is zero everywhere: no light passes")
        if not (math.isfinite(self.zernike_radius_m) and self.zernike_radius_m > 0):
            raise InputError(f"PupilModel zernike_radius_m must be > 0 (metres), got {self.zernike_radius_m!r}")
        object.__setattr__(self, "zernike_center_m", tuple(float(c) for c in self.zernike_center_m))

    @classmethod
    def circular(cls, diameter_m: float, samples: int = 64, design_phase_rad=None) -> "PupilModel":
        """A clear circular pupil of ``diameter_m`` sampled by ``samples`` across (area-weighted edge,
        :func:`simulator.pupil.circular_pupil`), Zernike disk = the pupil, on a ``samples + 2`` grid."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 8:
            raise InputError(f"samples must be an int >= 8 (pupil samples across the diameter), got {samples!r}")
        grid = Grid.square(samples + 2, diameter_m / samples)
        return cls(grid, circular_pupil(grid, diameter_m / 2, dtype=torch.float64), diameter_m / 2,
                   design_phase_rad=design_phase_rad)

    @classmethod
    def square(cls, grid: Grid, aperture_px: int, design_phase_rad=None) -> "PupilModel":
        """A meta-optic's square aperture of ``aperture_px`` cells on ``grid``
        (:func:`simulator.metaoptic.square_aperture`), Zernike disk = its circumscribed circle centred on
        :func:`simulator.metaoptic.aperture_center_m`, as in :func:`simulator.metaoptic.aberrated_design_psf`."""
        if isinstance(aperture_px, bool) or not isinstance(aperture_px, int) or not 1 <= aperture_px <= min(grid.shape):
            raise InputError(f"aperture_px must be an int in 1..{min(grid.shape)}, got {aperture_px!r}")
        return cls(grid, square_aperture(grid, aperture_px, torch.float64), aperture_px * grid.spacing_m[0] / math.sqrt(2),
                   aperture_center_m(grid, aperture_px), design_phase_rad)


@dataclass(frozen=True, eq=False)
class PhaseRetrievalResult:
    """Outcome of :func:`retrieve_zernike` (``J`` fitted modes, ``D`` PSFs).

    Attributes
    ----------
    noll : (J,) int
        Fitted Noll indices.
    coefficients_m : (J,) float
        Best-fit coefficients, metres RMS (module docstring: sign convention).
    uncertainty_m : (J,) float
        One-sigma Cramer-Rao bound at the fit (fluxes marginalised), metres.
    covariance_m2 : (J, J) float
        Its covariance, m^2.
    ambiguous : (J,) bool
        Modes whose sign the data cannot tell (even modes under the twin ambiguity).
    twin_coefficients_m : (J,) float
        The best fit started from the twin of ``coefficients_m``: equal to it (within the
        uncertainties) when the twin is resolved, the other solution when ``ambiguous``.
    twin_delta_deviance : float
        Deviance of the twin fit minus the best fit's (>= 0; < ``ambiguity_chi2``: indistinguishable).
    flux_e : (D,) float
        Fitted total electrons per PSF (light outside the window included).
    model_e : (D, rows, cols) float
        The best-fit model PSFs in electrons (for residual plots).
    diversity_defocus_m : (D,) float
        Sensor position of each PSF beyond the focus, metres.
    reduced_chi2 : float
        ``sum (y - mu)^2 / (mu + sigma^2) / (pixels - parameters)``: ~1 when the model and the noise
        model fit.
    deviance : float
        The shifted-Poisson deviance at the fit.
    wavelength_m, focal_length_m, pixel_pitch_m, zernike_radius_m, read_noise_e : float
        The fit's settings.
    iterations : int
        L-BFGS iterations of the best fit.
    """

    noll: np.ndarray
    coefficients_m: np.ndarray
    uncertainty_m: np.ndarray
    covariance_m2: np.ndarray
    ambiguous: np.ndarray
    twin_coefficients_m: np.ndarray
    twin_delta_deviance: float
    flux_e: np.ndarray
    model_e: np.ndarray
    diversity_defocus_m: np.ndarray
    reduced_chi2: float
    deviance: float
    wavelength_m: float
    focal_length_m: float
    pixel_pitch_m: float
    zernike_radius_m: float
    read_noise_e: float
    iterations: int

    def coefficients_waves(self) -> np.ndarray:
        """``coefficients_m / wavelength_m``."""
        return self.coefficients_m / self.wavelength_m

    def summary(self) -> str:
        """A human-readable table of the fit."""
        lines = [f"phase retrieval at {self.wavelength_m * 1e9:.1f} nm, f = {self.focal_length_m * 1e3:.4g} mm, "
                 f"pixel {self.pixel_pitch_m * 1e6:.4g} um, {len(self.flux_e)} PSF(s) at defocus "
                 f"{', '.join(f'{d * 1e6:.4g}' for d in self.diversity_defocus_m)} um; reduced chi2 "
                 f"{self.reduced_chi2:.3f}",
                 "  Noll   coefficient (waves)   +- 1 sigma    note"]
        for j, c, s, amb in zip(self.noll, self.coefficients_m, self.uncertainty_m, self.ambiguous):
            note = "sign ambiguous (twin)" if amb else ""
            lines.append(f"  {int(j):4d}   {c / self.wavelength_m:+18.5f}   {s / self.wavelength_m:10.5f}    {note}")
        if self.ambiguous.any():
            lines.append(f"  twin solution (delta deviance {self.twin_delta_deviance:.3g}): "
                         + " ".join(f"{c / self.wavelength_m:+.5f}" for c in self.twin_coefficients_m)
                         + " waves; add a defocused PSF (diversity) to resolve it")
        return "\n".join(lines)

    def to_hdf5(self, group) -> None:
        """Write into an h5py group (arrays as datasets, scalars and the schema as attributes)."""
        write_dataclass(group, self, SCHEMA, SCHEMA_VERSION)

    @classmethod
    def from_hdf5(cls, group) -> "PhaseRetrievalResult":
        """Read what :meth:`to_hdf5` wrote (:class:`~calibration.errors.CalibrationFileError` otherwise)."""
        return read_dataclass(cls, group, SCHEMA, SCHEMA_VERSION)


class _Model:
    """The forward model: parameters (coefficients in waves, log fluxes) -> expected electrons (D, H, W)."""

    def __init__(self, pupil: PupilModel, noll, wavelength_m, focal_length_m, pixel_pitch_m, defocus_m, window,
                 oversample):
        self.pupil, self.wavelength, self.window, self.oversample = pupil, wavelength_m, window, oversample
        self.num_modes = len(noll)
        grid = pupil.grid
        basis = zernike_wavefront(torch.eye(max(noll), dtype=torch.float64), grid, pupil.zernike_radius_m,
                                  center_m=pupil.zernike_center_m, clip_to_disk=False)  # over edge pixels too
        self.basis = basis[[j - 1 for j in noll]]  # (J, rows, cols), metres per metre
        y, x = grid.mesh(torch.float64)
        r2 = (y - pupil.zernike_center_m[0]) ** 2 + (x - pupil.zernike_center_m[1]) ** 2
        self.distances = [focal_length_m + dz for dz in defocus_m]
        self.defocus_w = [-0.5 * r2 * (1 / focal_length_m - 1 / z) for z in self.distances]
        rows, cols = window
        s = oversample
        step = pixel_pitch_m / s
        # sub-pixel sample q sits at ((q - q_first) / s - rows // 2) p with q_first = s // 2 (module docstring)
        center = ((rows * s) // 2 - (rows // 2 * s + s // 2)) * step, ((cols * s) // 2 - (cols // 2 * s + s // 2)) * step
        self.out_grid = Grid((rows * s, cols * s), (step, step), center)
        self.pixel_area = step * step
        self.power = float((pupil.transmission ** 2).sum()) * grid.pixel_area_m2
        phase = pupil.design_phase_rad  # cloned: a pupil built under inference_mode holds inference tensors
        self.amplitude = (pupil.transmission.clone() if phase is None
                          else torch.polar(pupil.transmission.clone(), phase.clone()))

    def psfs(self, waves: torch.Tensor) -> torch.Tensor:
        """Unit-flux pixel PSFs (D, rows, cols) for coefficients in waves (J,)."""
        w = torch.tensordot(waves * self.wavelength, self.basis, dims=1)
        out = []
        for z, w_dz in zip(self.distances, self.defocus_w):
            intensity = psf_from_pupil(self.amplitude, self.pupil.grid, self.wavelength, z, self.out_grid,
                                       wavefront_m=w + w_dz, normalize=None)[0]
            rows, cols = self.window
            s = self.oversample
            pixels = intensity.reshape(rows, s, cols, s).sum(dim=(1, 3))
            out.append(pixels * (self.pixel_area / self.power))
        return torch.stack(out)

    def expected(self, params: torch.Tensor) -> torch.Tensor:
        """Expected electrons (D, rows, cols) for ``params = [waves (J), log flux (D)]``."""
        waves, log_flux = params[:self.num_modes], params[self.num_modes:]
        return self.psfs(waves) * torch.exp(log_flux)[:, None, None]


def _deviance(mu: torch.Tensor, data: torch.Tensor, variance0: float) -> torch.Tensor:
    """Shifted-Poisson deviance ``2 sum [y' log(y' / mu') - (y' - mu')]`` with ``x' = x + sigma^2``."""
    m = (mu + variance0).clamp_min(1e-300)
    y = (data + variance0).clamp_min(0.0)
    return 2.0 * (torch.xlogy(y, y) - torch.xlogy(y, m) - (y - m)).sum()


def _fit(model: _Model, data: torch.Tensor, variance0: float, start: torch.Tensor, max_iterations: int):
    """Maximum likelihood from ``start``; returns (params, deviance, iterations)."""
    params = start.clone().requires_grad_(True)
    scale = 1.0 / float((data + variance0).clamp_min(0).sum())  # O(1) loss for L-BFGS's tolerances
    optimiser = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iterations, history_size=50,
                                  tolerance_grad=1e-14, tolerance_change=1e-18, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = _deviance(model.expected(params), data, variance0) * scale
        loss.backward()
        return loss

    optimiser.step(closure)
    iterations = optimiser.state[params].get("n_iter", 0)
    with torch.no_grad():
        deviance = float(_deviance(model.expected(params), data, variance0))
    return params.detach(), deviance, int(iterations)


def _fisher(model: _Model, params: torch.Tensor, variance0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Fisher information of all parameters, expected electrons) at ``params``."""
    jacobian = torch.autograd.functional.jacobian(lambda p: model.expected(p).reshape(-1), params,
                                                  vectorize=True, strategy="forward-mode")
    with torch.no_grad():
        mu = model.expected(params).reshape(-1)
    weights = 1.0 / (mu + variance0).clamp_min(1e-300)
    return jacobian.T @ (jacobian * weights[:, None]), mu


def _as_psfs(psfs) -> torch.Tensor:
    data = torch.as_tensor(np.asarray(psfs, dtype=np.float64) if not isinstance(psfs, torch.Tensor) else psfs)
    data = data.detach().to(torch.float64).cpu()
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or min(data.shape[-2:]) < 3:
        raise InputError(f"psfs must be (rows, cols) or (D, rows, cols) with at least 3 x 3 pixels, got shape "
                         f"{tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise InputError("psfs contain NaN or inf")
    if not float(data.sum(dim=(-2, -1)).min()) > 0:
        raise InputError("every PSF must hold light (a positive sum of electrons); is the background subtracted "
                         "too hard or the exposure too short?")
    return data


def retrieve_zernike(psfs, pupil: PupilModel, *, wavelength_m: float, focal_length_m: float, pixel_pitch_m: float,
                     diversity_defocus_m=(0.0,), noll=DEFAULT_NOLL, read_noise_e: float = 0.0, oversample: int = 3,
                     ambiguity_chi2: float = 9.0, starts: int = 3, start_waves: float = 0.03, seed: int = 0,
                     max_iterations: int = 400) -> PhaseRetrievalResult:
    """Fit the Zernike coefficients of a sub-optic's pupil to its measured PSF(s).

    Parameters
    ----------
    psfs : array (rows, cols) or (D, rows, cols)
        Measured PSFs in electrons (dark and background subtracted, flat-fielded), each window centred
        near the optical axis' pixel ``(rows // 2, cols // 2)``; ``D`` = len(``diversity_defocus_m``).
    pupil : PupilModel
        The known pupil (transmission, Zernike disk, design phase).
    wavelength_m, focal_length_m, pixel_pitch_m : float
        Wavelength, lens-to-focus distance and camera pixel pitch, metres.
    diversity_defocus_m : sequence of float
        Sensor position of each PSF beyond the focus, metres (0: in focus; a non-zero one resolves the
        twin ambiguity of even modes).
    noll : sequence of int
        Fitted Noll modes (>= 2; piston does nothing). Default 2..11: tilt is the PSF's position.
    read_noise_e : float
        Gaussian read noise, electrons RMS.
    oversample : int
        Odd number of point samples per pixel and axis (module docstring).
    ambiguity_chi2 : float
        Deviance (and Mahalanobis distance^2) threshold of the twin test.
    starts, start_waves, seed : int, float, int
        L-BFGS runs from ``starts`` random starts, coefficients ~ N(0, ``start_waves``) waves (seeded),
        the best kept; then one more from its twin (module docstring).
    max_iterations : int
        L-BFGS iterations per start.

    Returns
    -------
    PhaseRetrievalResult
    """
    data = _as_psfs(psfs)
    defocus = tuple(float(d) for d in np.atleast_1d(np.asarray(diversity_defocus_m, dtype=np.float64)))
    if len(defocus) != data.shape[0]:
        raise InputError(f"diversity_defocus_m has {len(defocus)} entries but psfs hold {data.shape[0]} PSF(s)")
    for name, value in (("wavelength_m", wavelength_m), ("focal_length_m", focal_length_m),
                        ("pixel_pitch_m", pixel_pitch_m)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be > 0 (metres), got {value!r}")
    if any(not math.isfinite(d) or focal_length_m + d <= 0 for d in defocus):
        raise InputError(f"diversity_defocus_m must be finite and > -focal_length_m, got {defocus}")
    noll = tuple(int(j) for j in noll)
    if not noll or min(noll) < 2 or len(set(noll)) != len(noll):
        raise InputError(f"noll must be distinct Noll indices >= 2 (piston has no effect on a PSF), got {noll}")
    if not (math.isfinite(read_noise_e) and read_noise_e >= 0):
        raise InputError(f"read_noise_e must be >= 0 (electrons RMS), got {read_noise_e!r}")
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1 or oversample % 2 == 0:
        raise InputError(f"oversample must be an odd int >= 1, got {oversample!r}")
    if not ambiguity_chi2 > 0:
        raise InputError(f"ambiguity_chi2 must be > 0, got {ambiguity_chi2!r}")
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise InputError(f"starts must be an int >= 1, got {starts!r}")

    with torch.inference_mode(False), torch.enable_grad():  # the fit needs autograd even if the caller has none
        data = data.clone()  # not an inference tensor
        model = _Model(pupil, noll, wavelength_m, focal_length_m, pixel_pitch_m, defocus, tuple(data.shape[-2:]),
                       oversample)
        variance0 = float(read_noise_e) ** 2
        j = len(noll)
        generator = torch.Generator().manual_seed(seed)
        log_flux = torch.log(data.sum(dim=(-2, -1)))
        best, best_dev, iterations = None, math.inf, 0
        for _ in range(starts):
            # not flat: with a symmetric pupil, W = 0 is a stationary point of every even mode
            waves = start_waves * torch.randn(j, generator=generator, dtype=torch.float64)
            params, dev, n_iter = _fit(model, data, variance0, torch.cat([waves, log_flux]), max_iterations)
            if dev < best_dev:
                best, best_dev, iterations = params, dev, n_iter
        even = torch.tensor([noll_to_nm(k)[1] % 2 == 0 for k in noll])
        twin_start = best.clone()
        twin_start[:j] = torch.where(even, -best[:j], best[:j])
        twin, twin_dev, twin_iterations = _fit(model, data, variance0, twin_start, max_iterations)
        if twin_dev < best_dev:  # the flat start found the worse of the two
            best, best_dev, twin, twin_dev, iterations = twin, twin_dev, best, best_dev, twin_iterations
        fisher, mu = _fisher(model, best, variance0)
    covariance = torch.linalg.pinv(fisher, hermitian=True)
    cov_waves = covariance[:j, :j]
    difference = (twin - best)[:j]
    distance2 = float(difference @ torch.linalg.pinv(cov_waves, hermitian=True) @ difference)
    ambiguous = bool(twin_dev - best_dev < ambiguity_chi2 and distance2 > ambiguity_chi2)
    residual = data.reshape(-1) - mu
    dof = max(residual.numel() - fisher.shape[0], 1)
    reduced_chi2 = float((residual**2 / (mu + variance0).clamp_min(1e-300)).sum()) / dof
    if ambiguous:
        logger.warning("phase retrieval: the twin wavefront (even modes' signs flipped) fits as well "
                       "(delta deviance %.3g): add a defocused PSF to resolve the signs", twin_dev - best_dev)
    wl = wavelength_m
    return PhaseRetrievalResult(
        noll=np.asarray(noll, dtype=np.int64),
        coefficients_m=best[:j].numpy() * wl,
        uncertainty_m=np.sqrt(np.clip(np.diag(cov_waves.numpy()), 0, None)) * wl,
        covariance_m2=cov_waves.numpy() * wl * wl,
        ambiguous=(even.numpy() & ambiguous),
        twin_coefficients_m=twin[:j].numpy() * wl,
        twin_delta_deviance=float(twin_dev - best_dev),
        flux_e=torch.exp(best[j:]).numpy(),
        model_e=mu.reshape(data.shape).numpy(),
        diversity_defocus_m=np.asarray(defocus),
        reduced_chi2=reduced_chi2,
        deviance=float(best_dev),
        wavelength_m=float(wavelength_m),
        focal_length_m=float(focal_length_m),
        pixel_pitch_m=float(pixel_pitch_m),
        zernike_radius_m=float(pupil.zernike_radius_m),
        read_noise_e=float(read_noise_e),
        iterations=iterations,
    )
