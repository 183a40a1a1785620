"""How a fabricated frontend differs from its design: a differentiable fabrication-error model.

The paper's measurement model per kernel (docs/method.md#fabrication-error-model) is ``y = alpha * (a * (k + delta))``
shifted by ``beta``, plus sensor noise. :class:`FabricationErrors` holds that model's parameters and a
few more that real benches show, every one a tensor so that a calibration fit can make any of them
trainable (:meth:`FabricationErrors.make_trainable`):

Per PSF (``P`` PSFs, ``C`` channels, ``K x K`` pixels; all pixel units are sensor pixels):

=====================  ===========  ===========================================================
name                   shape        meaning (identity value)
=====================  ===========  ===========================================================
``brightness``         (P,)         alpha: multiplies the PSF's energy (1)
``shift_px``           (P, 2)       beta = (dy, dx): +dy moves the PSF down, +dx right (0)
``rotation_rad``       (P,)         rotation about pixel ``(K//2, K//2)``; positive = counter-
                                    clockwise as displayed (rows down), the ``torch.rot90`` sense (0)
``magnification``      (P,)         scale about the same pixel (1)
``blur_sigma_px``      (P,)         standard deviation of a discrete Gaussian blur (0)
``zernike_m``          (P, J)       Zernike coefficients, Noll ``j = 1..J``, RMS-normalised, in
                                    metres of wavefront (0); ``J`` may be 0
``kernel_error``       (P, C, K, K) delta, relative: the PSF gains ``delta * rms(psf)`` (0), or None;
                                    or (P, C, K + 2w, K + 2w), reaching w px beyond the design (w <=
                                    the margin); where it acts: ``kernel_error_frame`` below
=====================  ===========  ===========================================================

``kernel_error_frame`` says where the kernel error acts. ``"design"`` (default): on the design's
kernel, before blur, aberration and the geometric transform, as fabrication errs (relative to the
RMS of the design's K x K). ``"sensor"``: on the placed PSF in sensor pixels, after the geometric
transform and before brightness (relative to the RMS of the blurred, aberrated PSF over its whole
window; a narrower kernel error is centred and zero-padded); there it is a plain additive correction,
not clamped at zero (the cascade's aberration filter itself dips below zero, see below). A calibration
fit uses ``"sensor"``:
there no interpolation stands between the kernel error and the data, so it can hold any pixel
pattern at any shift, rotation or magnification (a bilinear resampling at a fractional shift
averages neighbouring pixels and cannot produce pixel-scale structure behind it).

Frame level (the camera frame before the sensor, in whatever unit it carries; the optical system,
:mod:`simulator.system`, applies them to photons per second, so stray light scales with exposure):

* ``crosstalk`` (): fraction of each tile's image that leaks into each of its 4 grid neighbours
  (energy-conserving within the grid: a tile with ``n`` neighbours keeps ``1 - n * crosstalk``).
* ``vignetting_poly`` (2,): ``v = 1 + a1 rho^2 + a2 rho^4`` and ``vignetting_tan_edge`` (): a cos^4
  fall-off ``v *= (1 + (t rho)^2)^-2`` where ``t`` is the tangent of the field angle at the frame's
  corner; ``rho`` = distance from the frame centre / half the frame diagonal.
* ``background`` (): stray light added everywhere, and ``background_gradient`` (2,): its slope per
  pixel along (rows, cols) about the frame centre.

Order of the PSF stages (:func:`apply_psf_errors`): kernel error (design frame) -> blur and aberration
(one Fourier-domain filter) -> geometric transform (rotation, magnification, shift) -> kernel error
(sensor frame) -> brightness.

Energy: the kernel error, blur and aberration filters and the geometric transform conserve a
centred PSF's energy up to what leaves the window (cut off); ``apply_psf_errors(..., margin_px)``
widens the window so that it keeps what these stages move outwards (the optical system does, see
:mod:`simulator.system`); brightness scales it exactly. The geometric transform resamples with bilinear
interpolation divided by ``magnification**2`` (the Jacobian). For a pure shift, bilinear
interpolation is the exact pixel-area resampling of a piecewise-constant image (its weights are the
overlaps of the shifted pixel with its four neighbours) and conserves energy exactly while the PSF
stays inside the window; for rotation and magnification its energy error is second order in the
PSF's curvature (below 1e-3 for a Gaussian of sigma 3 px magnified 1.3x, see tests). With
``shift_method="fourier"`` the shift is instead a Fourier phase ramp on the window
zero-padded to twice its size: exact for band-limited content, but it rings (negative lobes) on
PSFs with sharp pixel-scale features.

Aberration model (a cascade, and where it is exact)
---------------------------------------------------
The Zernike aberration multiplies the PSF's optical transfer function by the aberration transfer
function ``H(f) = OTF_ab(f) / OTF_dl(f)``, where ``OTF_ab`` is the (normalised) autocorrelation of the
aberrated circular pupil ``P(u) exp(i 2 pi W(u) / lambda)`` and ``OTF_dl`` that of the clear pupil
``P(u)``; equivalently the PSF is convolved with the normalised incoherent PSF of the aberrated pupil
deconvolved by the diffraction-limited one. ``H = 1`` exactly for zero coefficients (so the design's
own diffraction is not applied twice), ``H(0) = 1`` (energy is conserved) and ``|H| <= 1`` (the
aberrated MTF never exceeds the diffraction-limited one). Frequencies beyond the pupil's cutoff
(where ``OTF_dl`` < 1e-9) pass unchanged. Parameters: ``aberration_wavelengths_m`` (one per channel,
or one for all), ``aberration_f_number`` (image-side f-number of the sub-optic) and
``pixel_pitch_m`` (sensor pixel); the spatial frequencies are those of the pixel grid, ``f = k / (M
pitch)``, and ``OTF`` is evaluated there without the pixel's own MTF (it cancels in the ratio).

The filter is applied as a linear convolution of the K x K window with the impulse response ``h`` (the
inverse transform of ``H`` over the pixel-grid band) cropped to the lags ``|dy|, |dx| <= K-1``: exactly
the lags that map the window onto itself, so nothing wraps around the window. ``h`` is computed by an
inverse DFT of ``H`` sampled ``impulse_oversampling`` (default 3) times finer in frequency than the
``2K-1`` grid (its tail aliases onto the cropped lags only from ``3 (2K-1) - K`` lags away). ``h`` decays
slowly (``H`` is cut at the pixel band's edge), so this converges only like ``1 / oversampling`` while
the cost grows like its square: for the example optics (lambda F# = 0.39 px, 0.06 waves of defocus and
astigmatism, 0.04 of coma, K = 11) the filtered PSF is within 9.9e-4 of its peak of the convolution
with ``h`` from a 21x finer grid (oversampling 1, the bare ``2K-1`` grid: 3.3e-3; 5: 5.4e-4; 7: 3.4e-4),
and 16 PSFs of K = 15 take 0.09 s (1: 0.008 s, 5: 0.25 s, 7: 0.55 s; one CPU thread). The default
trades that accuracy for a fit 2.8x faster: the example device simulated at 9 and fitted at 3 or at 5
ends at the same reduced chi-square (1.0279) and held-out residual (1.0011x the noise) as fitted at
9; its geometric parameters move by up to 0.33 (at 5: 0.04) and one PSF's Zernike terms by 1.9 (0.12)
of their statistical sigma, which on that bench is 3e-4 px for a shift, far below the sampling
systematic a shift's stated sigma carries (:mod:`calibration.sampling`). When
the pixel samples the PSF at Nyquist or finer (lambda F# >= 2 px) the pupil's cut-off lies inside the band, ``H``
jumps there and ``h`` converges more slowly still (errors ~1e-3 of its peak). ``H(0) = 1``: the energy
leaving the window is only what ``h`` carries beyond the cropped lags. ``H`` is cut at the pixel band's
edge, so ``h`` has negative lobes (a point's filtered image has -0.10 of its light in them for the example
optics), and a PSF with pixel-scale structure filtered by it can dip below zero (on examples/optics.yaml's
device: down to -3.5 % of the peak for 0.12 waves of defocus): the cascade keeps them, conserving energy,
rather than clamp and add light.

This is exact (paraxial scalar optics, incoherent light, thin phase screen in the pupil) when the
design PSF is the diffraction-limited PSF of the same clear pupil, i.e. for a point kernel, because
then ``OTF_design * H = OTF_ab``. For a structured design phase ``phi_d`` in the *same* pupil it is an
approximation: the true OTF is the autocorrelation of ``P exp(i (phi_d + 2 pi W / lambda))``, which is
not the product of separate autocorrelations; the error grows with the aberration's RMS and with how
much ``phi_d`` varies over the pupil shift ``lambda F# f``. Measured (lambda F# = 2.5 px, 31 x 31
window, aberration 0.07 waves defocus + 0.04 waves astigmatism, max error / peak of the true PSF):
0.4 % for a clear-pupil design; with a design phase of coma + trefoil of 0.1 / 0.3 / 1 wave RMS the
cascade is off by 9 / 28 / 19 % while ignoring the aberration altogether is off by 28 / 16 / 9 %.
So for strongly structured meta-optic phases the cascade is a phenomenological blur, not a
physical prediction; the physical route there is to add the Zernike phase to the designed mask and
propagate again (:mod:`simulator.metaoptic`). It is also exact for an incoherent cascade,
e.g. when the aberration belongs to a separate stage that re-images an incoherent intermediate image
and whose transfer function is ``H``. It ignores aliasing of pupil frequencies beyond the pixel's
Nyquist frequency (``pixel_pitch_m < lambda F# / 2`` keeps every frequency of the pupil on the grid).

Every function here is differentiable in the PSFs and in every error tensor. A stage whose
parameters are exactly at identity and do not require grad is skipped, so identity errors leave the
PSFs bit-exact.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from . import config as config_io
from onn_core.errors import ConfigError, InputError
from .fft import ifft2
from .field import Grid
from .layout import TileLayout
from .pupil import circular_pupil
from .sampling import fast_fft_size
from .validation import check_positive, check_tensor, complex_dtype_for, is_transformed
from .zernike import zernike_basis

#: Per-PSF error tensors, their trailing shape after P, and their identity value.
PSF_FIELDS = {
    "brightness": ((), 1.0),
    "shift_px": ((2,), 0.0),
    "rotation_rad": ((), 0.0),
    "magnification": ((), 1.0),
    "blur_sigma_px": ((), 0.0),
}
#: Frame-level error tensors, their shape and identity value.
FRAME_FIELDS = {
    "crosstalk": ((), 0.0),
    "vignetting_poly": ((2,), 0.0),
    "vignetting_tan_edge": ((), 0.0),
    "background": ((), 0.0),
    "background_gradient": ((2,), 0.0),
}
SHIFT_METHODS = ("bilinear", "fourier")
#: Where a kernel error acts (module docstring).
KERNEL_ERROR_FRAMES = ("design", "sensor")
#: Relative threshold below which the diffraction-limited OTF counts as zero (beyond the cutoff).
_OTF_CUTOFF_RTOL = 1e-9
#: Minimum number of pupil samples across the diameter when evaluating the aberration OTF.
_MIN_PUPIL_SAMPLES = 32


@dataclass(frozen=True)
class ErrorSpec:
    """Magnitudes from which :meth:`FabricationErrors.sample` draws random errors (all >= 0).

    brightness_rel_std: alpha ~ 1 + N(0, s). shift_std_px: each of dy, dx ~ N(0, s) px.
    rotation_std_rad: N(0, s). magnification_rel_std: m ~ 1 + N(0, s). blur_sigma_max_px: sigma ~
    U(0, s). zernike_std_m: one standard deviation (metres RMS) per Noll term j = 1.. (its length is J).
    kernel_error_rms: relative RMS of delta (needs ``kernel_shape``). crosstalk, vignetting_poly,
    vignetting_tan_edge, background: fixed values. background_gradient_std: slope ~ N(0, s) per px.
    """

    brightness_rel_std: float = 0.0
    shift_std_px: float = 0.0
    rotation_std_rad: float = 0.0
    magnification_rel_std: float = 0.0
    blur_sigma_max_px: float = 0.0
    zernike_std_m: tuple[float, ...] = ()
    kernel_error_rms: float = 0.0
    crosstalk: float = 0.0
    vignetting_poly: tuple[float, float] = (0.0, 0.0)
    vignetting_tan_edge: float = 0.0
    background: float = 0.0
    background_gradient_std: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            values = getattr(self, f.name)
            for i, v in enumerate(values if isinstance(values, tuple) else (values,)):
                where = f"{f.name}[{i}]" if isinstance(values, tuple) else f.name
                finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                if not finite or (f.name != "vignetting_poly" and v < 0):
                    bound = "" if f.name == "vignetting_poly" else " >= 0"
                    raise InputError(f"{where} must be a finite number{bound}, got {v!r}")

    @classmethod
    def from_dict(cls, mapping: dict, path: str = "") -> "ErrorSpec":
        """Validate a YAML mapping (ConfigError names the bad field)."""
        return config_io.build(cls, mapping, path)


@dataclass(frozen=True)
class AberrationOptics:
    """Optics behind the Zernike aberration transfer function (see the module docstring).

    wavelengths_m: one per channel (or one for all channels), metres. f_number: image-side f-number
    of a sub-optic. pixel_pitch_m: sensor pixel pitch, metres. impulse_oversampling: odd; the filter's
    impulse response is computed on a frequency grid this many times finer than the ``2K-1`` window's,
    then cropped to the window's lags (module docstring: its accuracy and cost).
    """

    wavelengths_m: tuple[float, ...] = (532e-9,)
    f_number: float = 2.5
    pixel_pitch_m: float = 3.45e-6
    impulse_oversampling: int = 3

    def __post_init__(self):
        if not isinstance(self.wavelengths_m, (tuple, list)) or not self.wavelengths_m:
            raise InputError(f"wavelengths_m must be a non-empty list of wavelengths in metres, got {self.wavelengths_m!r}")
        for i, w in enumerate(self.wavelengths_m):
            check_positive(f"wavelengths_m[{i}]", w)
        object.__setattr__(self, "wavelengths_m", tuple(float(w) for w in self.wavelengths_m))
        check_positive("f_number", self.f_number)
        check_positive("pixel_pitch_m", self.pixel_pitch_m)
        over = self.impulse_oversampling
        if isinstance(over, bool) or not isinstance(over, int) or over < 1 or over % 2 == 0:
            raise InputError(f"impulse_oversampling must be an odd int >= 1 (the impulse response stays real), "
                             f"got {over!r}")


class FabricationErrors(nn.Module):
    """Per-PSF and frame-level fabrication errors of a frontend with ``num_psfs`` PSFs.

    Every error is a float64 buffer (see the module docstring for names, shapes and meaning);
    :meth:`make_trainable` turns chosen ones into ``nn.Parameter`` for a calibration fit. Build with
    :meth:`identity`, :meth:`sample` or :meth:`from_dict` / :meth:`from_yaml`, or pass tensors as
    keyword arguments (missing ones are identity).
    """

    def __init__(
        self,
        num_psfs: int,
        *,
        num_zernike: int = 0,
        aberration: AberrationOptics | None = None,
        shift_method: Literal["bilinear", "fourier"] = "bilinear",
        kernel_error: torch.Tensor | None = None,
        kernel_error_frame: Literal["design", "sensor"] = "design",
        **values,
    ):
        super().__init__()
        if isinstance(num_psfs, bool) or not isinstance(num_psfs, int) or num_psfs < 1:
            raise InputError(f"num_psfs must be an int >= 1, got {num_psfs!r}")
        if isinstance(num_zernike, bool) or not isinstance(num_zernike, int) or num_zernike < 0:
            raise InputError(f"num_zernike must be an int >= 0, got {num_zernike!r}")
        if shift_method not in SHIFT_METHODS:
            raise InputError(f"shift_method must be one of {SHIFT_METHODS}, got {shift_method!r}")
        if kernel_error_frame not in KERNEL_ERROR_FRAMES:
            raise InputError(f"kernel_error_frame must be one of {KERNEL_ERROR_FRAMES}, got {kernel_error_frame!r}")
        self.num_psfs, self.shift_method, self.kernel_error_frame = num_psfs, shift_method, kernel_error_frame
        self.aberration = aberration or AberrationOptics()
        specs = error_shapes(num_psfs, num_zernike)
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise InputError(f"unknown fabrication error {unknown[0]!r}; known: {sorted(specs) + ['kernel_error']}")
        for name, (shape, identity) in specs.items():
            given = values.get(name)
            if given is None:
                tensor = torch.full(shape, identity, dtype=torch.float64)
            else:
                tensor = _as_error_tensor(name, given, shape)
            if isinstance(tensor, nn.Parameter):  # a caller's trainable tensor stays a parameter
                setattr(self, name, tensor)
            else:
                self.register_buffer(name, tensor)
        if kernel_error is not None:
            kernel_error = _as_error_tensor("kernel_error", kernel_error, None)
            if kernel_error.ndim != 4 or kernel_error.shape[0] != num_psfs:
                raise InputError(f"kernel_error must have shape ({num_psfs}, C, K, K), got {tuple(kernel_error.shape)}")
        self.register_buffer("kernel_error", kernel_error)

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def identity(cls, num_psfs: int, **kwargs) -> "FabricationErrors":
        """Errors that change nothing."""
        return cls(num_psfs, **kwargs)

    @classmethod
    def sample(
        cls,
        num_psfs: int,
        spec: ErrorSpec | dict,
        seed: int,
        *,
        kernel_shape: tuple[int, int, int] | None = None,
        aberration: AberrationOptics | None = None,
        shift_method: str = "bilinear",
    ) -> "FabricationErrors":
        """Draw random errors with magnitudes ``spec`` from a ``torch.Generator`` seeded with ``seed``.

        ``kernel_shape`` = (C, K, K) is required when ``spec.kernel_error_rms > 0`` (the delta pattern
        is fixed at this shape). Same seed -> identical errors.
        """
        spec = spec if isinstance(spec, ErrorSpec) else ErrorSpec.from_dict(spec)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int, got {seed!r}")
        gen = torch.Generator().manual_seed(seed)

        def normal(*shape):
            return torch.randn(shape, generator=gen, dtype=torch.float64)

        p, zstd = num_psfs, torch.tensor(spec.zernike_std_m, dtype=torch.float64)
        values = dict(
            brightness=1 + spec.brightness_rel_std * normal(p),
            shift_px=spec.shift_std_px * normal(p, 2),
            rotation_rad=spec.rotation_std_rad * normal(p),
            magnification=1 + spec.magnification_rel_std * normal(p),
            blur_sigma_px=spec.blur_sigma_max_px * torch.rand(p, generator=gen, dtype=torch.float64),
            zernike_m=zstd * normal(p, len(spec.zernike_std_m)),
            crosstalk=torch.tensor(spec.crosstalk, dtype=torch.float64),
            vignetting_poly=torch.tensor(spec.vignetting_poly, dtype=torch.float64),
            vignetting_tan_edge=torch.tensor(spec.vignetting_tan_edge, dtype=torch.float64),
            background=torch.tensor(spec.background, dtype=torch.float64),
            background_gradient=spec.background_gradient_std * normal(2),
        )
        delta = None
        if spec.kernel_error_rms > 0:
            if kernel_shape is None or len(kernel_shape) != 3:
                raise InputError("kernel_shape=(C, K, K) is required to sample a kernel_error pattern")
            delta = spec.kernel_error_rms * normal(p, *kernel_shape)
        return cls(p, num_zernike=len(spec.zernike_std_m), aberration=aberration, shift_method=shift_method,
                   kernel_error=delta, **values)

    def make_trainable(self, *names: str) -> "FabricationErrors":
        """Turn the named error buffers into ``nn.Parameter`` (for a calibration fit); returns self."""
        for name in names:
            if name not in self._buffers or self._buffers[name] is None:
                raise InputError(f"no fabrication error tensor named {name!r}; have {sorted(self.tensors())}")
            tensor = self._buffers.pop(name)
            setattr(self, name, nn.Parameter(tensor.detach().clone()))
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every error tensor (buffers and parameters) by name; ``kernel_error`` only when set."""
        out = {n: getattr(self, n) for n in [*PSF_FIELDS, "zernike_m", *FRAME_FIELDS]}
        if self.kernel_error is not None:
            out["kernel_error"] = self.kernel_error
        return out

    def fabricate(self, psfs: torch.Tensor, margin_px: int = 0) -> torch.Tensor:
        """The fabricated PSFs of the design ``psfs``: :func:`apply_psf_errors` (the cascade). A device
        computed otherwise (:class:`simulator.wave_device.WaveDevice`) has its own ``fabricate``."""
        return apply_psf_errors(psfs, self, margin_px)

    # ------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """Plain nested lists of Python floats (exact: float64 values survive ``repr``)."""
        return {
            "num_psfs": self.num_psfs,
            "shift_method": self.shift_method,
            "kernel_error_frame": self.kernel_error_frame,
            "aberration": config_io.to_plain(self.aberration),
            "errors": {name: t.detach().cpu().double().tolist() for name, t in self.tensors().items()},
        }

    @classmethod
    def from_dict(cls, mapping: dict, path: str = "fabrication") -> "FabricationErrors":
        """Inverse of :meth:`to_dict`; a bad field raises ConfigError naming its path."""
        if not isinstance(mapping, dict):
            raise ConfigError(path, mapping, "a mapping with num_psfs, errors (and shift_method, kernel_error_frame, "
                              "aberration)")
        known = {"num_psfs", "shift_method", "kernel_error_frame", "aberration", "errors"}
        for key in mapping:
            if key not in known:
                raise ConfigError(f"{path}.{key}", mapping[key], f"one of the known fields {sorted(known)}")
        num_psfs = mapping.get("num_psfs")
        if isinstance(num_psfs, bool) or not isinstance(num_psfs, int) or num_psfs < 1:
            raise ConfigError(f"{path}.num_psfs", num_psfs, "an int >= 1")
        shift_method = mapping.get("shift_method", "bilinear")
        if shift_method not in SHIFT_METHODS:
            raise ConfigError(f"{path}.shift_method", shift_method, f"one of {list(SHIFT_METHODS)}")
        frame = mapping.get("kernel_error_frame", "design")
        if frame not in KERNEL_ERROR_FRAMES:
            raise ConfigError(f"{path}.kernel_error_frame", frame, f"one of {list(KERNEL_ERROR_FRAMES)}")
        aberration = config_io.build(AberrationOptics, mapping.get("aberration") or {}, f"{path}.aberration")
        errors = mapping.get("errors") or {}
        if not isinstance(errors, dict):
            raise ConfigError(f"{path}.errors", errors, "a mapping from error name to value")
        zern = errors.get("zernike_m")
        num_zernike = len(zern[0]) if isinstance(zern, list) and zern and isinstance(zern[0], list) else 0
        shapes = error_shapes(num_psfs, num_zernike)
        values = {}
        for name, value in errors.items():
            where = f"{path}.errors.{name}"
            if name not in shapes and name != "kernel_error":
                raise ConfigError(where, value, f"one of {sorted([*shapes, 'kernel_error'])}")
            expected = f"shape {shapes[name][0]}" if name in shapes else f"shape ({num_psfs}, C, K, K)"
            try:
                tensor = torch.tensor(value, dtype=torch.float64)
            except (TypeError, ValueError) as exc:
                raise ConfigError(where, value, f"a number or nested list of numbers of {expected}") from exc
            good_shape = (tuple(tensor.shape) == shapes[name][0] if name in shapes
                          else tensor.ndim == 4 and tensor.shape[0] == num_psfs)
            if not good_shape or not bool(torch.isfinite(tensor).all()):
                raise ConfigError(where, value, f"finite numbers of {expected}, got shape {tuple(tensor.shape)}")
            values[name] = tensor
        return cls(num_psfs, num_zernike=num_zernike, aberration=aberration, shift_method=shift_method,
                   kernel_error_frame=frame, **values)

    def to_yaml(self, path) -> None:
        """Write :meth:`to_dict` as YAML (atomic)."""
        config_io.save_yaml(self.to_dict(), Path(path))

    @classmethod
    def from_yaml(cls, path) -> "FabricationErrors":
        """Read a file written by :meth:`to_yaml` (``yaml.safe_load``)."""
        return cls.from_dict(config_io.load_yaml(path), path="fabrication")

    def extra_repr(self) -> str:
        return (f"num_psfs={self.num_psfs}, num_zernike={self.zernike_m.shape[-1]}, shift_method={self.shift_method!r}, "
                f"kernel_error_frame={self.kernel_error_frame!r}")


def error_shapes(num_psfs: int, num_zernike: int) -> dict[str, tuple[tuple[int, ...], float]]:
    """Shape and identity value of every error tensor except ``kernel_error``."""
    return {**{k: ((num_psfs, *s), v) for k, (s, v) in PSF_FIELDS.items()},
            "zernike_m": ((num_psfs, num_zernike), 0.0),
            **dict(FRAME_FIELDS)}


def _as_error_tensor(name: str, value, shape) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if not tensor.is_floating_point():
        tensor = tensor.double()
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise InputError(f"fabrication error {name!r} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"fabrication error {name!r} contains NaN or inf")
    return tensor if isinstance(value, nn.Parameter) else tensor.to(torch.float64)


def _at_identity(tensor: torch.Tensor | None, value: float) -> bool:
    """True when a stage can be skipped: no derivative wanted (no gradient, no forward-mode tangent of
    ``torch.func.jvp``) and every entry equals its identity value."""
    if tensor is None or tensor.numel() == 0:  # e.g. no Zernike terms: nothing to apply
        return True
    wanted = tensor.requires_grad or is_transformed(tensor)
    return not wanted and bool((tensor == value).all())


# ------------------------------------------------------------------------------------------ PSF stages
def apply_psf_errors(psfs: torch.Tensor, errors: FabricationErrors, margin_px: int = 0) -> torch.Tensor:
    """The fabricated PSFs: ``psfs`` (P, C, K, K), non-negative design PSFs, with ``errors`` applied.

    Stages in order: kernel error, blur + aberration (:func:`shape_psfs`), geometric transform,
    brightness (:func:`place_psfs`); module docstring. ``margin_px`` widens the window by that many
    zero pixels on every side after the kernel error (which stays on the design's K x K support, or its own
    wider window), so
    that light the later stages move outwards is kept: the result is (P, C, K + 2 margin, K + 2
    margin), centred on the same pixel. Differentiable in ``psfs`` and every error tensor; dtype and
    device follow ``psfs``.
    """
    return place_psfs(shape_psfs(psfs, errors, margin_px), errors)


def shape_psfs(psfs: torch.Tensor, errors: FabricationErrors, margin_px: int = 0,
               transfer: torch.Tensor | None = None) -> torch.Tensor:
    """The stages of :func:`apply_psf_errors` that change a PSF's shape: kernel error, the margin, then
    blur and aberration (P, C, K + 2 margin, K + 2 margin). ``transfer``: the blur and aberration
    filter if already known (:func:`shape_transfer` of the same errors), to skip computing it."""
    check_tensor("psfs", psfs, ndim=4)
    p, c, k1, k2 = psfs.shape
    if k1 != k2:
        raise InputError(f"psfs must be square (P, C, K, K), got shape {tuple(psfs.shape)}")
    if p != errors.num_psfs:
        raise InputError(f"psfs hold {p} PSFs (dim 0) but the fabrication errors are for {errors.num_psfs}")
    if isinstance(margin_px, bool) or not isinstance(margin_px, int) or margin_px < 0:
        raise InputError(f"margin_px must be an int >= 0, got {margin_px!r}")
    out = psfs
    pad = margin_px
    if errors.kernel_error is not None and errors.kernel_error_frame == "design":
        out = add_kernel_error(out, errors.kernel_error)
        pad -= (out.shape[-1] - k1) // 2  # a kernel error wider than the design already widened it
        if pad < 0:
            raise InputError(f"kernel_error is {errors.kernel_error.shape[-1]} px wide, more than the PSF window "
                             f"{k1 + 2 * margin_px} (design {k1} + 2 x margin_px {margin_px})")
    if pad:
        out = torch.nn.functional.pad(out, (pad,) * 4)
    k1 += 2 * margin_px
    transfer = shape_transfer(errors, c, k1, psfs.dtype) if transfer is None else transfer
    return out if transfer is None else filter_psfs(out, transfer)


def shape_transfer(errors: FabricationErrors, channels: int, k: int, dtype) -> torch.Tensor | None:
    """The blur and aberration filter (P, C, M, M) for a K x K window (None when both are at identity)."""
    blur, zern = errors.blur_sigma_px, errors.zernike_m
    if _at_identity(blur, 0.0) and _at_identity(zern, 0.0):
        return None
    transfer = gaussian_transfer(blur.to(dtype), k)[:, None]
    if not _at_identity(zern, 0.0):
        transfer = transfer * aberration_transfer(zern.to(dtype), errors.aberration, channels, k, dtype)
    return transfer


def place_psfs(psfs: torch.Tensor, errors: FabricationErrors) -> torch.Tensor:
    """The stages of :func:`apply_psf_errors` that move and scale a PSF: rotation, magnification and
    shift, a kernel error in the sensor frame (module docstring), then brightness, on (P, C, K', K') PSFs."""
    if psfs.shape[0] != errors.num_psfs:
        raise InputError(f"psfs hold {psfs.shape[0]} PSFs (dim 0) but the fabrication errors are for {errors.num_psfs}")
    out = psfs
    rot, mag, shift = errors.rotation_rad, errors.magnification, errors.shift_px
    geometric_shift = shift if errors.shift_method == "bilinear" else torch.zeros_like(shift)
    if not (_at_identity(rot, 0.0) and _at_identity(mag, 1.0) and _at_identity(geometric_shift, 0.0)):
        out = affine_resample(out, rot.to(psfs), mag.to(psfs), geometric_shift.to(psfs))
    if errors.shift_method == "fourier" and not _at_identity(shift, 0.0):
        out = fourier_shift(out, shift.to(psfs))
    if errors.kernel_error is not None and errors.kernel_error_frame == "sensor":
        out = add_sensor_kernel_error(out, errors.kernel_error, psfs)
    if not _at_identity(errors.brightness, 1.0):
        out = out * errors.brightness.to(psfs)[:, None, None, None]
    return out


def add_kernel_error(psfs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``relu(psf + delta * rms(psf))`` per PSF and channel: delta is relative to each slice's RMS (over
    the design's K x K window), and an intensity cannot go negative. ``delta`` has the PSFs' shape
    (P, C, K, K), or a window ``K + 2 w`` wide centred on it (P, C, K + 2 w, K + 2 w): the design is
    zero-padded by ``w`` first, so the error reaches light the design puts nowhere (a halo); the result
    then has the wider window."""
    w2 = _window_pad(delta, psfs, delta_wider=True, psfs_name="the PSFs",
                     expected="it must have their shape, or a window wider by an even number of pixels")
    rms = psfs.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    if w2:
        psfs = torch.nn.functional.pad(psfs, (w2 // 2,) * 4)
    return torch.relu(psfs + delta.to(psfs) * rms)


def _window_pad(delta: torch.Tensor, psfs: torch.Tensor, *, delta_wider: bool, psfs_name: str, expected: str) -> int:
    """The even number of pixels by which the square window of a kernel error ``delta`` (P, C, W, W) is
    wider than that of ``psfs`` (P, C, K, K) (``delta_wider``) or narrower (otherwise); InputError naming
    both shapes and ``expected`` when they do not pair."""
    w2 = -1
    if delta.ndim == 4:
        w2 = delta.shape[-1] - psfs.shape[-1] if delta_wider else psfs.shape[-1] - delta.shape[-1]
    if (delta.ndim != 4 or tuple(delta.shape[:2]) != tuple(psfs.shape[:2]) or delta.shape[-2] != delta.shape[-1]
            or w2 < 0 or w2 % 2):
        raise InputError(f"kernel_error has shape {tuple(delta.shape)} but {psfs_name} have {tuple(psfs.shape)} "
                         f"({expected})")
    return w2


def add_sensor_kernel_error(placed: torch.Tensor, delta: torch.Tensor, shaped: torch.Tensor) -> torch.Tensor:
    """``placed + delta * rms(shaped)``: a kernel error in the sensor frame (module docstring) on
    PSFs ``placed`` (P, C, K', K') that were ``shaped`` before the geometric transform, each slice's RMS
    over its whole window; ``delta`` (P, C, W, W) with ``W <= K'`` (odd difference: centred, zero-padded)."""
    w2 = _window_pad(delta, placed, delta_wider=False, psfs_name="the placed PSFs",
                     expected="a sensor-frame kernel error must be as wide as their window, or narrower by an even number")
    rms = shaped.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    if w2:
        delta = torch.nn.functional.pad(delta, (w2 // 2,) * 4)
    return placed + delta.to(placed) * rms


def _lag_axis(size: int, dtype, device) -> torch.Tensor:
    """Signed lags (pixels) of a length-``size`` DFT in FFT order: 0, 1, ..., -1."""
    return torch.fft.fftfreq(size, d=1.0 / size, dtype=dtype, device=device)


def _filter_size(k: int) -> int:
    """Size of the circular filter window for a K-pixel PSF: ``2K - 1`` keeps every lag that maps the
    window onto itself distinct, so the circular product equals the linear convolution on the window."""
    return 2 * k - 1


def gaussian_transfer(sigma_px: torch.Tensor, k: int) -> torch.Tensor:
    """DFT (size ``2K-1`` per axis, FFT order) of the discrete Gaussian of variance ``sigma**2`` px^2,
    shape (P, M, M): per axis ``T(n) = exp(-t) I_n(t)`` (``I_n`` the modified Bessel function, ``t =
    sigma**2``), whose DFT is ``exp(-t (1 - cos 2 pi f))``. It is the pixel-grid counterpart of a
    Gaussian (non-negative, sums to 1, variance exactly ``t``, and two blurs add their variances) and,
    unlike a sampled Gaussian, it changes linearly with the variance from ``t = 0`` (a delta), so a fit
    can start at no blur. Its tail beyond the ``2K-1`` window wraps; that is below 1e-9 of the peak
    for ``t <= 2`` and ``K >= 7``."""
    m = _filter_size(k)
    f = torch.fft.fftfreq(m, dtype=sigma_px.dtype, device=sigma_px.device)
    axis = 1 - torch.cos(2 * math.pi * f)
    variance = sigma_px[:, None, None] ** 2
    return torch.exp(-variance * (axis[:, None] + axis[None, :])).to(complex_dtype_for(sigma_px.dtype))


def aberration_transfer(zernike_m: torch.Tensor, optics: AberrationOptics, channels: int, k: int, dtype) -> torch.Tensor:
    """DFT (size ``2K-1`` per axis, FFT order) of the aberration filter's impulse response cropped to the
    lags ``|dy|, |dx| <= K-1`` that map a K x K window onto itself, shape (P, C, M, M), for Zernike
    coefficients ``zernike_m`` (P, J) in metres (module docstring). With :func:`filter_psfs` this is the
    exact linear convolution of the window with that impulse response.

    The impulse response is the inverse DFT of ``H = OTF_ab / OTF_dl`` sampled on a grid
    ``optics.impulse_oversampling`` times finer in frequency than the ``2K-1`` one (its tail wraps only
    from beyond that many window widths), then cropped.
    """
    return aberration_transfer_derivatives(zernike_m, optics, channels, k, dtype, ())[0]


def aberration_transfer_derivatives(zernike_m: torch.Tensor, optics: AberrationOptics, channels: int, k: int, dtype,
                                    modes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`aberration_transfer` (P, C, M, M) and its derivatives (len(modes), P, C, M, M): entry ``i``
    is every PSF's transfer differentiated by its own coefficient ``zernike_m[p, modes[i]]`` (per metre;
    ``modes``: 0-based Noll indices), in closed form (:func:`_otf_ratio`: one more FFT per mode, the
    aberrated pupil's own shared). The transfer stays differentiable by autograd; the derivatives are not."""
    wavelengths = optics.wavelengths_m
    if len(wavelengths) not in (1, channels):
        raise InputError(f"aberration wavelengths_m has {len(wavelengths)} entries, expected 1 or {channels} (channels)")
    m = _filter_size(k)
    m_fine = optics.impulse_oversampling * m  # odd: H stays Hermitian on the grid, so the impulse response is real
    lags = _lag_axis(m, torch.float64, zernike_m.device).long() % m_fine
    rows = []
    for wavelength in (wavelengths * channels if len(wavelengths) == 1 else wavelengths):
        impulse = ifft2(_otf_ratio(zernike_m, wavelength, optics, m_fine, dtype, modes)).real  # linear in the ratio
        rows.append(torch.fft.fft2(impulse[..., lags[:, None], lags[None, :]]))
    transfer = torch.stack(rows, dim=-3)
    return transfer[0], transfer[1:]


def _otf_ratio(zernike_m: torch.Tensor, wavelength: float, optics: AberrationOptics, m: int, dtype,
               modes: tuple[int, ...] = ()) -> torch.Tensor:
    """``OTF_ab / OTF_dl`` at the pixel-grid frequencies ``k / (m pitch)`` of a size-``m`` DFT (FFT order),
    1 beyond the pupil's cutoff, then its derivative by each PSF's coefficient ``modes[i]`` (per metre;
    0 beyond the cutoff): (1 + len(modes), P, m, m).

    The derivatives in closed form: the aberrated pupil ``A = P exp(i phi)`` moves by ``dA = i dphi A``
    (``dphi = 2 pi Z_j / lambda``), so its power spectrum ``|F A|^2`` by ``Re(conj(F A) F (2 dA))``: one
    FFT per mode, and the rest of the chain (the autocorrelation from the power spectrum, the division
    by ``OTF_dl``) is linear."""
    # Pupil samples across the diameter such that pixel-grid frequency k/(m pitch) is a lag of
    # q*k pupil samples: n_D = q m pitch / (lambda F#).
    samples_per_lag = optics.pixel_pitch_m / (wavelength * optics.f_number) * m
    q = max(1, math.ceil(_MIN_PUPIL_SAMPLES / samples_per_lag))
    n_diameter = q * samples_per_lag
    support = math.ceil(n_diameter) + 2  # samples the (anti-aliased) pupil touches
    # Lags at or beyond the support have a zero OTF: clamp them to +-support, which the circular
    # autocorrelation of size >= 2 support + 1 holds unwrapped (and zero), as it does every smaller lag.
    reach = min(q * (m - 1) // 2, support)
    n = fast_fft_size(support + reach + 1)
    lags = tuple(min(max(q * int(k), -reach), reach) for k in _lag_axis(m, torch.float64, "cpu"))
    pupil, basis, lags, otf_dl = _clear_pupil(n, n_diameter, zernike_m.shape[-1], lags, dtype, zernike_m.device)
    phase = (2.0 * math.pi / wavelength) * torch.tensordot(zernike_m.to(dtype), basis, dims=([-1], [0]))
    field = torch.complex(pupil * torch.cos(phase), pupil * torch.sin(phase))
    spectrum = torch.fft.fft2(field, s=(n, n))
    otf_ab = [_autocorrelation(spectrum.real.square() + spectrum.imag.square(), n, lags)]
    for mode in modes:  # one at a time: each temporary is as large as the pupil's own
        slope = (4.0 * math.pi / wavelength) * basis[mode]  # 2 d phase / d coefficient
        moved = torch.fft.fft2(torch.complex(-slope * field.imag, slope * field.real), s=(n, n))
        otf_ab.append(_autocorrelation(torch.addcmul(spectrum.real * moved.real, spectrum.imag, moved.imag), n, lags))
    otf_ab = torch.stack(otf_ab)
    passband = otf_dl.abs() > _OTF_CUTOFF_RTOL * otf_dl[..., :1, :1].abs()
    beyond = torch.ones_like(otf_ab).index_fill(0, torch.arange(1, len(otf_ab), device=otf_ab.device), 0)
    return torch.where(passband, otf_ab / torch.where(passband, otf_dl, torch.ones_like(otf_dl)), beyond)


@functools.lru_cache(maxsize=16)
def _clear_pupil(n: int, n_diameter: float, num_zernike: int, lags: tuple[int, ...], dtype,
                 device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clear circular pupil ``n_diameter`` samples across, cropped to the rows and columns it touches,
    the Noll modes 1..``num_zernike`` there (pupil radius 1), ``lags`` (signed pupil samples, one axis) as a
    tensor, and the pupil's autocorrelation (the diffraction-limited OTF) at those lags on an ``n x n``
    circular grid; cached: they do not depend on the aberration."""
    grid = Grid.square(n, 2.0 / n_diameter)  # normalised pupil coordinates: radius 1
    pupil = circular_pupil(grid, 1.0, dtype=dtype, device=device)
    rows, cols = (torch.nonzero(pupil.sum(dim=d) > 0).flatten() for d in (1, 0))
    rows, cols = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    basis = zernike_basis(num_zernike, grid, 1.0, dtype=dtype, device=device)[:, rows, cols]
    pupil = pupil[rows, cols]
    lags = torch.tensor(lags, dtype=torch.int64, device=device)
    return pupil, basis, lags, _autocorrelation(torch.fft.fft2(pupil, s=(n, n)).abs().square(), n, lags)


def _autocorrelation(power: torch.Tensor, n: int, lags: torch.Tensor) -> torch.Tensor:
    """Circular autocorrelation ``sum_u F(u + s) conj(F(u))`` of a field F zero-padded to ``n x n``
    (``n >=`` its support ``+ max|lag|``: no lag wraps) from its power spectrum ``power = |DFT F|^2``
    (..., n, n), at the lags ``s = (lags[i], lags[j])`` (signed samples), (..., L, L); linear in
    ``power`` (any real spectrum is taken). A real spectrum's inverse DFT is Hermitian: only the lags
    ``s_x >= 0`` are transformed (one-sided along x, then only those columns along y), the others are
    the conjugates of their mirror images."""
    reach = int(lags.abs().max())
    half = torch.fft.ifft(torch.fft.ihfft(power, dim=-1)[..., :reach + 1], dim=-2)  # lags (all s_y, s_x >= 0)
    negative = lags[None, :] < 0
    rows = torch.where(negative, -lags[:, None], lags[:, None]) % n
    value = half[..., rows, lags.abs()[None, :].expand_as(rows)]
    return torch.where(negative, value.conj(), value)


def filter_psfs(psfs: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Linear convolution of each (P, C, K, K) slice with the kernel on lags ``|dy|, |dx| <= K-1`` whose
    ``2K-1``-point DFT (FFT order) is ``transfer`` (broadcastable to (P, C, M, M)), on the K x K window:
    those lags are distinct modulo ``2K-1``, so the circular product does not wrap."""
    k = psfs.shape[-1]
    m = _filter_size(k)
    spectrum = torch.fft.fft2(psfs, s=(m, m)) * transfer
    return ifft2(spectrum).real[..., :k, :k].to(psfs.dtype)


def affine_resample(psfs: torch.Tensor, rotation_rad: torch.Tensor, magnification: torch.Tensor,
                    shift_px: torch.Tensor) -> torch.Tensor:
    """Move the content at ``p`` (relative to pixel ``(K//2, K//2)``) to ``m R p + shift`` by bilinear
    interpolation, dividing by ``m**2`` so that energy is conserved. Zero outside the window.

    rotation_rad (P,), magnification (P,), shift_px (P, 2) as (dy, dx). See the module docstring for
    the convention and accuracy.
    """
    p, c, k, _ = psfs.shape
    centre = float(k // 2)
    axis = torch.arange(k, dtype=psfs.dtype, device=psfs.device) - centre
    y_out = axis[None, :, None] - shift_px[:, 0, None, None]
    x_out = axis[None, None, :] - shift_px[:, 1, None, None]
    cos, sin = torch.cos(rotation_rad)[:, None, None], torch.sin(rotation_rad)[:, None, None]
    mag = magnification[:, None, None]
    x_in = (cos * x_out - sin * y_out) / mag + centre
    y_in = (sin * x_out + cos * y_out) / mag + centre
    x0, y0 = torch.floor(x_in), torch.floor(y_in)
    wx, wy = x_in - x0, y_in - y0
    padded = torch.nn.functional.pad(psfs, (1, 1, 1, 1)).reshape(p, c, (k + 2) ** 2)

    def gather(yi, xi):
        yi = (yi.clamp(-1, k) + 1).long()
        xi = (xi.clamp(-1, k) + 1).long()
        index = (yi * (k + 2) + xi).reshape(p, 1, k * k).expand(p, c, k * k)
        return padded.gather(-1, index).reshape(p, c, k, k)

    wx, wy = wx[:, None], wy[:, None]
    out = ((1 - wy) * ((1 - wx) * gather(y0, x0) + wx * gather(y0, x0 + 1))
           + wy * ((1 - wx) * gather(y0 + 1, x0) + wx * gather(y0 + 1, x0 + 1)))
    return out / (mag[:, None] ** 2)


def fourier_shift(psfs: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Shift each (P, C, H, W) slice by ``shift_px`` (P, 2) = (dy, dx) pixels with a Fourier phase
    ramp on the window zero-padded to ``(2H, 2W)`` (then cropped): exact for band-limited content."""
    h, w = psfs.shape[-2:]

    def ramp(shift, n):
        f = torch.fft.fftfreq(n, dtype=psfs.dtype, device=psfs.device)
        nyquist = torch.zeros_like(f, dtype=torch.bool)
        nyquist[n // 2] = True  # its bin has no sign: a real ramp (cos) keeps the result real
        angle = -2 * math.pi * shift[:, None] * f
        return torch.where(nyquist, torch.cos(angle).to(complex_dtype_for(f.dtype)), torch.exp(1j * angle))

    ramp = ramp(shift_px[:, 0], 2 * h)[:, :, None] * ramp(shift_px[:, 1], 2 * w)[:, None, :]
    spectrum = torch.fft.fft2(psfs, s=(2 * h, 2 * w)) * ramp[:, None]
    return ifft2(spectrum).real[..., :h, :w]


# ---------------------------------------------------------------------------------------- frame stages
def apply_frame_errors(frame: torch.Tensor, errors: FabricationErrors, layout: TileLayout) -> torch.Tensor:
    """Crosstalk between tiles, then vignetting, then background, on ``frame`` (N, rows, cols).

    Differentiable in the frame and in the frame-level error tensors; identity errors return the
    frame unchanged.
    """
    check_tensor("frame", frame, ndim=3)
    if tuple(frame.shape[-2:]) != tuple(layout.frame_shape):
        raise InputError(f"frame has shape {tuple(frame.shape[-2:])} but the layout's frame_shape is {layout.frame_shape}")
    out = frame
    if not _at_identity(errors.crosstalk, 0.0):
        out = out + layout.assemble(crosstalk_change(layout.extract(out), errors.crosstalk.to(frame), layout))
    poly, tan_edge = errors.vignetting_poly, errors.vignetting_tan_edge
    if not (_at_identity(poly, 0.0) and _at_identity(tan_edge, 0.0)):
        y, x = _centred_axes(frame)
        rho2 = (y**2 + x**2) / max(float(y[0, 0] ** 2 + x[0, 0] ** 2), 1.0)  # 1 at the corners
        a = poly.to(frame)
        vignette = (1 + a[0] * rho2 + a[1] * rho2**2) / (1 + tan_edge.to(frame) ** 2 * rho2) ** 2
        out = out * vignette
    if not (_at_identity(errors.background, 0.0) and _at_identity(errors.background_gradient, 0.0)):
        y, x = _centred_axes(frame)
        g = errors.background_gradient.to(frame)
        out = out + errors.background.to(frame) + g[0] * y + g[1] * x
    return out


def crosstalk_change(tiles: torch.Tensor, fraction: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """What crosstalk adds to each tile (N, capacity, h, w): ``c * (sum of 4-neighbours - n * own)``."""
    n, _, h, w = tiles.shape
    grid = tiles.reshape(n, layout.grid_rows, layout.grid_cols, h, w)
    padded = torch.nn.functional.pad(grid, (0, 0, 0, 0, 1, 1, 1, 1))
    neighbours = (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:])
    ones = torch.ones(layout.grid_rows, layout.grid_cols, dtype=tiles.dtype, device=tiles.device)
    ones = torch.nn.functional.pad(ones, (1, 1, 1, 1))
    count = (ones[:-2, 1:-1] + ones[2:, 1:-1] + ones[1:-1, :-2] + ones[1:-1, 2:])[None, :, :, None, None]
    return (fraction * (neighbours - count * grid)).reshape(n, -1, h, w)


def exchanged_light(light: torch.Tensor, crosstalk: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """The light (P,) each tile receives when crosstalk exchanges the tiles' images: tile ``p`` keeps
    ``1 - n c`` of its own PSF's ``light`` (P,) and gains ``c`` of each of its ``n`` grid neighbours'."""
    tiles = torch.nn.functional.pad(light, (0, layout.capacity - light.shape[0]))[None, :, None, None]
    return light + crosstalk_change(tiles, crosstalk.to(light), layout)[0, :light.shape[0], 0, 0]


def _centred_axes(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates relative to the frame centre: y (rows, 1) and x (1, cols), in pixels."""
    rows, cols = frame.shape[-2:]
    y = torch.arange(rows, dtype=frame.dtype, device=frame.device)[:, None] - (rows - 1) / 2
    x = torch.arange(cols, dtype=frame.dtype, device=frame.device)[None, :] - (cols - 1) / 2
    return y, x
