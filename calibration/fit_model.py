"""The forward model the mismatch fit (:mod:`calibration.fit`) adjusts, and its Jacobian.

:class:`FitModel` holds the measured data and the system to evaluate, maps a flat parameter vector
``theta`` (shift, rotation, magnification, brightness per PSF; crosstalk, vignetting; blur and Zernike
terms per PSF) to :class:`~simulator.fabrication.FabricationErrors` and renders the model's signal
rate (DN/s) with them.

Its Jacobian (:meth:`FitModel.jacobian`) comes by forward-mode automatic differentiation
(``"autodiff"``, the default: the image by ``torch.func.jvp`` in one ``vmap``; the PSF shapes, the
costly block, apart: each PSF's depends on its own blur and Zernike terms only, so one derivative per
term serves every PSF, the Zernike terms' in closed form, one FFT each) or by central differences in
float64 (``"finite_differences"``, the reference: two forward passes per parameter group, only the
perturbed PSFs' shapes recomputed). Both use the tiles' block structure (a PSF's parameters change
only its own tile and its 4 neighbours') and agree to 1e-6 away from the shift model's kinks (tests).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from onn_core.errors import InputError
from simulator.fabrication import (AberrationOptics, FabricationErrors, aberration_transfer_derivatives,
                                   error_shapes, exchanged_light, gaussian_transfer, place_psfs, shape_psfs)
from simulator.system import OpticalSystem
from simulator.validation import is_transformed
from simulator.zernike import noll_to_nm

from .noise import PixelNoise
from .psf import PSFMeasurement

if TYPE_CHECKING:
    from .fit import FitSettings

#: How the Levenberg-Marquardt Jacobian is computed (:meth:`FitModel.jacobian`).
JACOBIANS = ("autodiff", "finite_differences")
#: The parameter kinds that change a PSF's shape (blur, aberration), before it is placed.
SHAPE_KINDS = ("blur_variance_px2", "zernike_waves")
_BLUR_FLOOR = 1e-12
#: Finite-difference steps of the Jacobian, per kind (in the kind's fitted unit).
FD_STEP = {"shift_px": 1e-4, "rotation_rad": 1e-5, "magnification": 1e-5, "brightness": 1e-5, "crosstalk": 1e-6,
           "vignetting_tan2": 1e-5, "blur_variance_px2": 1e-4, "zernike_waves": 1e-4}


class FitModel:
    """Measured data, the system to evaluate, and the map from a flat parameter vector to errors.

    Every tensor lives on ``device`` (None: the CPU): the system's copy, the data and every tensor the
    fit makes (:meth:`tensor` for those built from numpy); results leave it through ``.cpu()``."""

    def __init__(self, measurement: PSFMeasurement, system: OpticalSystem, noise: PixelNoise,
                 aberration: AberrationOptics, settings: FitSettings, device: torch.device | str | None = None):
        self.device = torch.device("cpu" if device is None else device)
        self.system = copy.deepcopy(system).double().to(self.device).eval()
        self.system.requires_grad_(False)
        p, self.channels, k, _ = self.system.design.psfs().shape
        self.p, self.k, self.aberration = p, k, aberration
        margin = self.system.geometry.psf_margin_px
        self.kernel_window = k + 2 * margin if settings.kernel_error_window_px is None else settings.kernel_error_window_px
        if not (k <= self.kernel_window <= k + 2 * margin) or (self.kernel_window - k) % 2:
            raise InputError(f"fit.kernel_error_window_px must be the design's {k} px plus an even number up to "
                             f"2 x geometry.psf_margin_px = {2 * margin} (at most {k + 2 * margin}), "
                             f"got {settings.kernel_error_window_px}")
        self.method = settings.jacobian
        self.num_zernike = max(settings.zernike_noll, default=0)
        self.zernike_index = [j - 1 for j in settings.zernike_noll]
        self.even = [noll_to_nm(j)[0] % 2 == 0 for j in settings.zernike_noll]  # W(-r) = W(r)
        mask = self.tensor(measurement.mask)
        self.mask = mask
        self.data = self.tensor(measurement.rate)[mask]
        self.sigma = self.tensor(np.sqrt(measurement.variance))[mask]
        self.scale = self.system.sensor.quantum_efficiency / noise.e_per_dn  # DN per photon
        gray = self.tensor(measurement.pattern.astype(np.int64))[None, None]
        design = self.system.design.psfs()
        self.radiance = (self.system.relative_radiance(gray, design)
                         - self.system.relative_radiance(torch.zeros_like(gray), design))
        self.design_psfs = design
        self._shaped: tuple | None = None  # (shape parameters, shaped PSFs) of the last remembered call
        self.kernel_error: torch.Tensor | None = None  # held fixed while the physical parameters refit
        self.layout = [  # (kind, field, shape)
            ("shift_px", "shift_px", (p, 2)), ("rotation_rad", "rotation_rad", (p,)),
            ("magnification", "magnification", (p,)), ("brightness", "brightness", (p,)),
            ("crosstalk", "crosstalk", ()), ("vignetting_tan2", "vignetting_tan_edge", ()),
            ("blur_variance_px2", "blur_sigma_px", (p,)), ("zernike_waves", "zernike_m", (p, len(self.zernike_index))),
        ]
        self.sizes = [int(np.prod(shape)) for _, _, shape in self.layout]
        # the (frame-level) errors the fit leaves at identity, on the device (FabricationErrors' own are on the CPU)
        fitted = {name for _, name, _ in self.layout}
        self.unfitted = {name: torch.full(shape, value, dtype=torch.float64, device=self.device)
                         for name, (shape, value) in error_shapes(p, self.num_zernike).items() if name not in fitted}
        self.offsets = np.cumsum([0] + self.sizes)
        # which PSF each parameter belongs to (-1: frame-level) and its slot within the PSF
        self.owner = np.concatenate([np.repeat(np.arange(p), size // p) if shape else [-1]
                                     for (_, _, shape), size in zip(self.layout, self.sizes)]).astype(np.int64)
        self.slot = [(kind, i % (size // p) if shape else 0) for (kind, _, shape), size in zip(self.layout, self.sizes)
                     for i in range(size)]
        grid_cols = self.system.layout.grid_cols
        rows, cols = np.divmod(np.arange(p), grid_cols)
        self.colour = (rows + 2 * cols) % 5  # equal colours are >= 3 grid steps apart
        tile_of = torch.full(self.system.frame_shape, -1, dtype=torch.int64, device=self.device)
        for t in range(p):
            r, c = self.system.layout.tile_slices(t)
            tile_of[r, c] = t
        tile_of = tile_of[mask]
        self.tile_of = tile_of
        adjacent = self.tensor(np.abs(rows[:, None] - rows[None]) + np.abs(cols[:, None] - cols[None]) <= 1)
        self.near = torch.stack([adjacent[t][tile_of.clamp(min=0)] & (tile_of >= 0) for t in range(p)]).double()

    def tensor(self, values) -> torch.Tensor:
        """``values`` (a numpy array, a list) as a tensor on the model's device, dtype kept."""
        return torch.as_tensor(values, device=self.device)

    def block(self, kind: str) -> slice:
        i = [entry[0] for entry in self.layout].index(kind)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def identity(self) -> torch.Tensor:
        theta = torch.zeros(int(self.offsets[-1]), dtype=torch.float64, device=self.device)
        theta[self.block("magnification")] = 1.0
        theta[self.block("brightness")] = 1.0
        return theta

    def errors(self, theta: torch.Tensor, kernel_error: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> FabricationErrors:
        """The errors of parameter vector ``theta`` (for the PSFs ``rows`` only, when given)."""
        values = dict(self.unfitted)  # frame-level: the same for any rows
        for (kind, name, shape), start, size in zip(self.layout, self.offsets, self.sizes):
            part = theta[int(start):int(start) + size].reshape(shape)
            if kind in ("vignetting_tan2", "blur_variance_px2"):
                part = torch.sqrt(part.clamp(min=0) + _BLUR_FLOOR)
            elif kind == "zernike_waves":
                full = torch.zeros(self.p, self.num_zernike, dtype=theta.dtype, device=self.device)
                wavelength = self.aberration.wavelengths_m[0]
                if self.zernike_index:
                    full = full.index_copy(1, self.tensor(self.zernike_index), part * wavelength)
                part = full
            if rows is not None and shape:
                part = part[rows]
            values[name] = part
        count = self.p if rows is None else len(rows)
        if rows is not None and kernel_error is not None:
            kernel_error = kernel_error[rows]
        return FabricationErrors(count, num_zernike=self.num_zernike, aberration=self.aberration,
                                 kernel_error=kernel_error, kernel_error_frame="sensor", **values)

    def rate(self, theta: torch.Tensor, kernel_error: torch.Tensor | None = None, remember: bool = True) -> torch.Tensor:
        """Model signal rate (DN/s), whole frame. The shaped PSFs (blur, aberration: the costly part; the
        kernel error acts after them, in the sensor frame) are recomputed only for the PSFs whose shape
        parameters differ from the last remembered call."""
        kernel_error = self.kernel_error if kernel_error is None else kernel_error
        shaped = self.shaped(theta, remember)
        return self.image(theta, shaped, kernel_error)

    def shaped(self, theta: torch.Tensor, remember: bool = True) -> torch.Tensor:
        """The blurred and aberrated design PSFs (P, C, K', K') of ``theta``, cached (see :meth:`rate`)."""
        shape_params = torch.cat([theta[self.block("blur_variance_px2")].reshape(self.p, -1),
                                  theta[self.block("zernike_waves")].reshape(self.p, -1)], dim=1)
        cached = self._shaped
        if cached is None or shape_params.requires_grad or is_transformed(shape_params):
            shaped = self._shape(theta)
        else:
            rows = torch.nonzero((shape_params != cached[0]).any(dim=1)).flatten()
            shaped = cached[1]
            if len(rows):
                shaped = shaped.clone()
                shaped[rows] = shape_psfs(self.design_psfs[rows], self.errors(theta, None, rows),
                                          self.system.geometry.psf_margin_px)
        if remember and not (shaped.requires_grad or is_transformed(shaped)):
            self._shaped = (shape_params.clone(), shaped)
        return shaped

    def _shape(self, theta: torch.Tensor) -> torch.Tensor:
        """The blurred and aberrated design PSFs (P, C, K', K') of ``theta``, uncached."""
        return shape_psfs(self.design_psfs, self.errors(theta), self.system.geometry.psf_margin_px)

    def light(self, theta: torch.Tensor, kernel_error: torch.Tensor | None = None) -> torch.Tensor:
        """Each placed PSF's light (P,): blurred, aberrated, moved, with the kernel error and brightness
        (before the frame-level crosstalk and vignetting), summed over its window and channels; in
        the design PSFs' unit. Differentiable in ``theta`` and ``kernel_error``."""
        return place_psfs(self._shape(theta), self.errors(theta, kernel_error)).sum(dim=(1, 2, 3))

    def throughput(self, theta: torch.Tensor, kernel_error: torch.Tensor | None = None) -> torch.Tensor:
        """Per tile (P,), :meth:`light` exchanged with the neighbours' by crosstalk, over the design PSF's
        light (:meth:`simulator.system.OpticalSystem.throughput` of the fitted errors; inf or NaN for a
        design PSF without light). Differentiable in ``theta`` and ``kernel_error``."""
        crosstalk = self.errors(theta).crosstalk
        light = exchanged_light(self.light(theta, kernel_error), crosstalk, self.system.layout)
        return light / self.design_psfs.sum(dim=(1, 2, 3))

    def image(self, theta: torch.Tensor, shaped: torch.Tensor, kernel_error: torch.Tensor | None) -> torch.Tensor:
        """Model signal rate (DN/s), whole frame, of ``shaped`` PSFs placed and imaged with ``theta``'s
        geometry and photometry (linear in ``shaped``)."""
        errors = self.errors(theta, kernel_error)
        self.system.errors = errors
        return self.system.radiance_frame(self.radiance, place_psfs(shaped, errors), clamp=False)[0] * self.scale

    def predicted(self, pattern: np.ndarray, theta: torch.Tensor, kernel_error: torch.Tensor | None) -> torch.Tensor:
        """Model signal rate (DN/s), whole frame, of another displayed ``pattern`` (gray levels)."""
        gray = self.tensor(np.asarray(pattern).astype(np.int64))[None, None]
        radiance, design = self.radiance, self.design_psfs
        self.radiance = (self.system.relative_radiance(gray, design)
                         - self.system.relative_radiance(torch.zeros_like(gray), design))
        try:
            with torch.no_grad():
                return self.rate(theta, kernel_error, remember=False)
        finally:
            self.radiance = radiance

    def whitened(self, theta: torch.Tensor, kernel_error: torch.Tensor | None = None) -> torch.Tensor:
        return (self.data - self.rate(theta, kernel_error)[self.mask]) / self.sigma

    def jacobian(self, theta: torch.Tensor, free: np.ndarray) -> torch.Tensor:
        """d(model/sigma)/d theta over the masked pixels, columns for the ``free`` indices, by
        forward-mode automatic differentiation (``jacobian="autodiff"``: one ``torch.func.jvp`` per
        group below, all groups in one ``vmap``) or by central differences (``"finite_differences"``:
        one-sided at a non-negativity bound and on a whole-pixel shift, steps :data:`FD_STEP` per kind).

        Block structure: a PSF's parameters change only its own tile and, by crosstalk, its 4
        neighbours; so one tangent (or difference) moves the same parameter of every PSF of a colour
        class whose tiles are >= 3 grid steps apart, and each PSF's column is read off its own
        neighbourhood (5 classes instead of P; the few frame-level parameters get one each).
        """
        groups: dict[tuple, list[int]] = {}
        for index in free:
            owner = self.owner[index]
            key = (self.slot[index], -1 - int(index) if owner < 0 else self.colour[owner])
            groups.setdefault(key, []).append(int(index))
        change = (self._autodiff_changes if self.method == "autodiff" else self._difference_changes)(theta, groups)
        columns = torch.zeros(int(self.mask.sum()), len(free), dtype=torch.float64, device=self.device)
        for n, index in enumerate(free):
            owner = self.owner[index]
            column = change[int(index)] if owner < 0 else change[int(index)] * self.near[owner]
            columns[:, n] = column / self.sigma
        return columns

    def _autodiff_changes(self, theta: torch.Tensor, groups: dict) -> dict[int, torch.Tensor]:
        """Per index, d rate / d theta along its group's tangent (masked pixels), by ``torch.func``.

        Two blocks: a PSF's shape (blur, aberration: the costly part) depends on its own shape
        parameters only, so one tangent per shape slot gives every PSF's shape derivative at once
        (:meth:`_shape_derivatives`); the image is linear in the shaped PSFs, so a shape group's
        derivative is the image's derivative along those shape derivatives, and every group's is one
        ``vmap`` of image ``jvp``s."""
        kernel_error = self.kernel_error
        keys = list(groups)
        slots = sorted({key[0] for key in keys if key[0][0] in SHAPE_KINDS})
        with torch.no_grad():
            shaped = self.shaped(theta)
        shape_derivatives = self._shape_derivatives(theta, slots)
        theta_tangents = torch.zeros(len(keys), theta.numel(), dtype=theta.dtype, device=self.device)
        shaped_tangents = torch.zeros(len(keys), *shaped.shape, dtype=shaped.dtype, device=self.device)
        for g, key in enumerate(keys):
            indices = groups[key]
            if key[0][0] in SHAPE_KINDS:
                owners = self.tensor(self.owner[indices])
                shaped_tangents[g, owners] = shape_derivatives[key[0]][owners]
            else:
                theta_tangents[g, indices] = 1.0

        def image(t, psfs):
            return self.image(t, psfs, kernel_error)[self.mask]

        passes = torch.func.vmap(lambda a, b: torch.func.jvp(image, (theta, shaped), (a, b))[1])(
            theta_tangents, shaped_tangents)
        return {index: passes[g] for g, key in enumerate(keys) for index in groups[key]}

    def _shape_derivatives(self, theta: torch.Tensor, slots: list[tuple[str, int]]) -> dict[tuple, torch.Tensor]:
        """Per shape slot ``(kind, slot)``, every PSF's shaped PSF (P, C, K', K') differentiated by its
        own parameter in that slot (blur variance per px^2, Zernike term per wave), by forward mode.

        The shaped PSFs are linear in their filter ``T = G H`` (:func:`~simulator.fabrication.shape_psfs`
        with a given transfer), G the blur's and H the aberration's, so ``d shaped`` is the shaping by
        ``dG H`` or ``G dH``: the Zernike terms' ``dH`` in closed form, all terms from one aberrated OTF
        (:func:`~simulator.fabrication.aberration_transfer_derivatives`), the blur's ``dG`` by
        ``torch.func.jvp`` without differentiating H at all."""
        if not slots:
            return {}
        margin = self.system.geometry.psf_margin_px
        k = self.k + 2 * margin
        errors = self.errors(theta)

        def blur(t):
            return gaussian_transfer(self.errors(t).blur_sigma_px, k)[:, None]

        zernike = [slot for slot in slots if slot[0] == "zernike_waves"]
        h = dh = None
        if zernike or bool((errors.zernike_m != 0).any()):
            modes = tuple(self.zernike_index[slot] for _, slot in zernike)
            h, dh = aberration_transfer_derivatives(errors.zernike_m, self.aberration, self.channels, k,
                                                    theta.dtype, modes)
            dh = dh * self.aberration.wavelengths_m[0]  # per wave (the fit's Zernike unit, errors())
        g = blur(theta)
        derivatives = {slot: shape_psfs(self.design_psfs, errors, margin, transfer=g * dh[i])
                       for i, slot in enumerate(zernike)}
        if ("blur_variance_px2", 0) in slots:
            dg = torch.func.jvp(blur, (theta,), (self._slot_tangent(theta, ("blur_variance_px2", 0)),))[1]
            derivatives[("blur_variance_px2", 0)] = shape_psfs(self.design_psfs, errors, margin,
                                                               transfer=dg if h is None else dg * h)
        return derivatives

    def _slot_tangent(self, theta: torch.Tensor, slot: tuple[str, int]) -> torch.Tensor:
        """The unit tangent moving every PSF's parameter in ``slot`` ``(kind, slot)`` together."""
        kind, index = slot
        block = self.block(kind)
        tangent = torch.zeros_like(theta)
        tangent[block.start + index:block.stop:(block.stop - block.start) // self.p] = 1.0
        return tangent

    def _difference_changes(self, theta: torch.Tensor, groups: dict) -> dict[int, torch.Tensor]:
        """Per index, the finite difference of the rate (masked pixels) along its group's step."""
        steps = np.zeros(theta.numel())
        for kind, _, _ in self.layout:
            steps[self.block(kind)] = FD_STEP[kind]
        nonneg = self.nonnegative()
        out = {}
        with torch.no_grad():
            centre = self.rate(theta)[self.mask]
            for indices in groups.values():
                h = float(steps[indices[0]])
                up = theta.clone()
                up[indices] += h
                high = self.rate(up, remember=False)[self.mask]
                forward = (high - centre) / h
                if nonneg[indices[0]] and float(theta[indices].min()) < h:
                    change = {index: forward for index in indices}
                else:
                    down = theta.clone()
                    down[indices] -= h
                    low = self.rate(down, remember=False)[self.mask]
                    central, backward = (high - low) / (2 * h), (centre - low) / h
                    change = {index: self._difference(theta[index], kind_of=index, h=h, forward=forward,
                                                      central=central, backward=backward) for index in indices}
                out.update(change)
        return out

    def _difference(self, value, *, kind_of: int, h: float, forward, central, backward):
        """The bilinear model of a shift has kinks at whole pixels: within ``h`` of one, a central
        difference would mix the slopes of both sides, so take the one-sided difference on the side
        of the point's own piece."""
        if self.slot[kind_of][0] != "shift_px":
            return central
        fraction = float(value) - math.floor(float(value))
        return forward if fraction < h else backward if fraction > 1 - h else central

    def nonnegative(self) -> np.ndarray:
        """Parameters bounded below by 0 (variances, squared tangent, crosstalk)."""
        mask = np.zeros(int(self.offsets[-1]), dtype=bool)
        for kind in ("vignetting_tan2", "blur_variance_px2", "crosstalk"):
            mask[self.block(kind)] = True
        return mask


__all__ = ["FD_STEP", "JACOBIANS", "SHAPE_KINDS", "FitModel"]
