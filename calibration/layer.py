"""The calibration layer: a raw camera frame -> the feature tensor the digital backend reads.

:meth:`simulator.system.OpticalSystem.features` cuts the tiles where the design puts them and
converts DN with the nominal sensor. A fabricated device's tiles sit elsewhere (sub-pixel), its
PSFs are brighter or dimmer, its frame is vignetted, and its camera has its own gain and dark
level; :class:`CalibrationLayer` undoes what the calibration measured, in this order:

1. subtract the dark frame at the exposure (sensor offset, dark current and stray light) and convert
   to photo-electrons with the measured conversion gain;
2. divide by the fitted vignetting (relative, 1 at the frame centre);
3. cut each tile at its nominal place and move its content back by the fitted PSF shift (a Fourier
   phase ramp, sub-pixel: on the example bench it leaves 0.32 of the design-relative feature error
   where bilinear interpolation left 0.42 and whole-pixel rounding 0.37), then divide by the fitted
   brightness;
4. the feature formula of training (:meth:`~simulator.system.OpticalSystem.features_from_electrons`):
   the "same" crop, tile ``2i`` minus tile ``2i + 1``, divided by the expected photo-electrons per
   unit (``QE x photons_per_s x exposure``, nominal).

So on a device built exactly to its design the layer gives what training saw (up to the stray light,
which training's pair difference cancels and the layer removes). What it cannot undo -- PSF shapes
(blur, aberrations, kernel errors), rotation, magnification and crosstalk -- is left to the
post-fabrication fine-tuning of the backend, which learns on this layer's output.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from onn_core.errors import InputError
from simulator.fabrication import FabricationErrors, apply_frame_errors, fourier_shift
from simulator.system import OpticalSystem


class CalibrationLayer(nn.Module):
    """Frames (N, rows, cols) in DN -> features (N, P/2, H s, W s) (module docstring).

    Parameters
    ----------
    system : OpticalSystem
        The nominal optics (layout, crop, units).
    shift_px : (P, 2) tensor
        Fitted (dy, dx) of every PSF, sensor pixels.
    brightness : (P,) tensor
        Fitted relative brightness of every PSF.
    vignetting : (rows, cols) tensor
        Relative illumination of the frame (1 = as designed).
    e_per_dn : float
        Measured conversion gain, electrons per frame DN.
    dark_dn : callable exposure_s -> (rows, cols) array
        The dark frame (DN) at an exposure.
    """

    def __init__(self, system: OpticalSystem, *, shift_px: torch.Tensor, brightness: torch.Tensor,
                 vignetting: torch.Tensor, e_per_dn: float, dark_dn: Callable[[float], np.ndarray]):
        super().__init__()
        p = system.num_psfs
        if tuple(shift_px.shape) != (p, 2) or tuple(brightness.shape) != (p,):
            raise InputError(f"shift_px must be ({p}, 2) and brightness ({p},) for this system's {p} PSFs, got "
                             f"{tuple(shift_px.shape)} and {tuple(brightness.shape)}")
        if tuple(vignetting.shape) != system.frame_shape:
            raise InputError(f"vignetting must have the frame's shape {system.frame_shape}, got {tuple(vignetting.shape)}")
        if not bool((brightness > 0).all()):
            raise InputError("every fitted brightness must be > 0 (a PSF with no light cannot be calibrated)")
        self.system = system
        self.e_per_dn = float(e_per_dn)
        self.dark_dn = dark_dn
        self.register_buffer("shift_px", shift_px.detach().double().clone())
        self.register_buffer("brightness", brightness.detach().double().clone())
        self.register_buffer("vignetting", vignetting.detach().double().clone())

    @classmethod
    def from_errors(cls, system: OpticalSystem, errors: FabricationErrors, *, e_per_dn: float,
                    dark_dn: Callable[[float], np.ndarray]) -> "CalibrationLayer":
        """The layer that undoes the shift, brightness and vignetting of fitted ``errors``."""
        return cls(system, shift_px=errors.shift_px, brightness=errors.brightness,
                   vignetting=vignetting_map(errors, system), e_per_dn=e_per_dn, dark_dn=dark_dn)

    def forward(self, frames, exposure_s: float) -> torch.Tensor:
        """Raw frames (N, rows, cols) or (rows, cols), DN, at ``exposure_s`` -> features."""
        batch = _as_batch(frames, self.system.frame_shape)
        dark = torch.as_tensor(np.asarray(self.dark_dn(exposure_s), dtype=np.float64))
        return self.from_electrons((batch - dark) * self.e_per_dn, exposure_s)

    def from_electrons(self, electrons: torch.Tensor, exposure_s: float) -> torch.Tensor:
        """Dark-subtracted photo-electrons (N, rows, cols) -> features (steps 2-4 of the module docstring)."""
        system = self.system
        batch = _as_batch(electrons, system.frame_shape) / self.vignetting
        tiles = system.layout.extract(batch, system.num_psfs)  # (N, P, h, w)
        tiles = shift_tiles(tiles, -self.shift_px) / self.brightness[None, :, None, None]
        return system.features_from_electrons(tiles, exposure_s).float()


def vignetting_map(errors: FabricationErrors, system: OpticalSystem) -> torch.Tensor:
    """Relative illumination (rows, cols) of ``errors``' vignetting alone on ``system``'s frame."""
    only = FabricationErrors(errors.num_psfs, vignetting_poly=errors.vignetting_poly.detach(),
                             vignetting_tan_edge=errors.vignetting_tan_edge.detach())
    ones = torch.ones(1, *system.frame_shape, dtype=torch.float64)
    return apply_frame_errors(ones, only, system.layout)[0]


def shift_tiles(tiles: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Move the content of tile ``p`` of (N, P, h, w) by ``shift_px[p]`` = (dy, dx) pixels (Fourier
    phase ramp on the zero-padded tile: sub-pixel without the blur of an interpolation)."""
    return fourier_shift(tiles.transpose(0, 1), shift_px.to(tiles.dtype)).transpose(0, 1)


def _as_batch(frames, shape) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(frames, dtype=np.float64)) if not isinstance(frames, torch.Tensor) \
        else frames.double()
    batch = tensor[None] if tensor.ndim == 2 else tensor
    if batch.ndim != 3 or tuple(batch.shape[-2:]) != tuple(shape):
        raise InputError(f"frames must be (N, {shape[0]}, {shape[1]}) or ({shape[0]}, {shape[1]}), got {tuple(tensor.shape)}")
    return batch
