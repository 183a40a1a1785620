"""A fabricated device the calibration model does not contain: PSFs from wave optics.

The cascade of :mod:`simulator.fabrication` (kernel error, blur, Zernike filter, shift, brightness)
is also the model the calibration fit adjusts, so a device drawn from it cannot tell whether a fit
holds outside its own model. A :class:`WaveDevice` computes its PSFs the physical way instead: the
nominal meta-optic of the design (:func:`simulator.wave_masks.design_masks`: one phase-only mask per
PSF and channel whose binned sensor intensity matches the design PSF) is fabricated with errors that
act on the mask, and its light is propagated to the sensor by the angular spectrum
(:func:`simulator.propagation.propagate_asm`) and summed over the sensor pixels.

Fabrication errors (:class:`WaveErrorSpec` magnitudes; one device's values in :class:`WaveErrors`)
-------------------------------------------------------------------------------------------------------
* ``height_scale_error`` (device): the etch depth is ``1 + e`` times the design's, so the wrapped
  design phase ``phi in [0, 2 pi)`` becomes ``(1 + e) phi``. A wrapped phase scaled this way no
  longer cancels at the 2 pi steps: part of the light (~``e^2`` for small ``e``) goes into the
  undiffracted zero order, an unfocused patch the size of the aperture: background.
* ``phase_noise_rms_rad``, ``phase_noise_correlation_m`` (per PSF and channel): a spatially
  correlated height error, white Gaussian noise smoothed by a Gaussian of that standard deviation (m),
  its mean over the aperture removed and scaled to that RMS (rad) over the aperture. It scatters light
  out of the designed pattern (a Strehl-like loss ``~ exp(-rms^2)`` of the coherent part).
* ``aperture_erosion_m`` (device): every edge of the square aperture moves in by this much; the
  edge cells transmit the fraction of their area left (amplitude), so less light passes and the
  diffraction of the edge changes.
* ``zernike_std_m`` (per PSF): Noll ``j = 1..J`` wavefront (metres RMS over the disk circumscribing
  the square aperture, :func:`simulator.metaoptic.aperture_wavefront_m`; sign convention of
  :mod:`simulator.zernike`), added to the mask's phase as ``2 pi W / lambda``.
* ``distance_error_m`` (device): the sensor sits this much farther than designed (defocus).
* ``shift_std_px`` (per PSF): the sub-optic is misregistered by ``(dy, dx)`` sensor pixels relative
  to the sensor: the field behind the mask is translated by that much (a Fourier phase ramp on a grid
  zero-padded to twice its size: band-limited interpolation of the sampled mask) before it propagates,
  so the sensor sees the moved continuous intensity. Unlike the cascade's bilinear shift of binned
  PSFs, the pixels integrate the moved light.
* ``transmission_rel_std`` (per PSF): the sub-aperture's power transmission is ``T (1 + N(0, s))``,
  clipped to ``[0, 1]``.

Units and light: a PSF pixel holds the fraction of the light falling on the (nominal) aperture that
reaches it, times the sub-aperture's power transmission ``T`` (:mod:`simulator.wave_masks`), so with
zero errors the window holds exactly the design PSF's total weight, and with any errors a PSF's sum
over the whole simulated sensor region is at most ``T <= 1`` (propagation loses light beyond the
region, never adds any). PSFs are non-negative (intensities).

With zero errors the device reproduces the design up to the masks' retrieval error (``nrmse`` of the
window's shape, :attr:`MaskDesign.nrmse`, ~0.04 for the example design; the window's total weight is
exact): that residual is part of what a real meta-optic shows too.

Frame-level errors (crosstalk, vignetting, stray light) are those of the cascade model
(:func:`simulator.fabrication.apply_frame_errors`), from the optional ``frame`` mapping.

YAML (an optics file's ``errors``; ``model: cascade`` or no ``model`` is the cascade)::

    errors:
      model: wave
      seed: 1
      optics: {wavelengths_m: [532.0e-9], f_number: 4.0, aperture_px: 30, samples_per_pixel: 3}
      spec: {shift_std_px: 0.3, height_scale_error: 0.05, phase_noise_rms_rad: 0.2, ...}
      frame: {crosstalk: 0.005, background: 4000.0}

Cost: the masks once per design (:mod:`simulator.wave_masks`, seconds), then one propagation per device
(tens of milliseconds for 16 PSFs). Seeded: the same design, settings and seed give the same device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from onn_core import config as config_io
from onn_core.errors import ConfigError, InputError
from .fabrication import FRAME_FIELDS, ErrorSpec, FabricationErrors
from .fft import ifft2
from .field import Grid
from .metaoptic import aperture_center_m, aperture_wavefront_m
from .validation import check_tensor
from .wave_masks import MaskDesign, WaveOptics, design_masks, sensor_pixels
from .zernike import wavefront_to_phase

#: Keys of an ``errors`` mapping with ``model: wave``.
WAVE_KEYS = ("model", "seed", "optics", "spec", "frame")
#: ErrorSpec fields allowed in the ``frame`` mapping (frame-level errors only).
FRAME_SPEC_KEYS = ("crosstalk", "vignetting_poly", "vignetting_tan_edge", "background", "background_gradient_std")
#: The frame-level errors are drawn with the device's seed plus this (a stream apart from the PSF errors').
FRAME_SEED_OFFSET = 1_000_003
#: Lower bound of a WaveErrorSpec field and whether the bound itself is excluded (others: >= 0).
_LOWER_BOUNDS = {"height_scale_error": (-1.0, True), "distance_error_m": (-math.inf, True),
                 "phase_noise_correlation_m": (0.0, True)}


@dataclass(frozen=True)
class WaveErrorSpec:
    """Magnitudes of a wave device's fabrication errors (module docstring for each).

    shift_std_px: each of dy, dx ~ N(0, s) sensor pixels per PSF. transmission_rel_std: T (1 + N(0, s))
    per PSF. height_scale_error: etch depth 1 + e (device). phase_noise_rms_rad,
    phase_noise_correlation_m: correlated phase error per PSF and channel. aperture_erosion_m: edge
    erosion (device). zernike_std_m: standard deviation per Noll term j = 1..J (metres RMS), per PSF.
    distance_error_m: sensor distance error (device).
    """

    shift_std_px: float = 0.0
    transmission_rel_std: float = 0.0
    height_scale_error: float = 0.0
    phase_noise_rms_rad: float = 0.0
    phase_noise_correlation_m: float = 2e-6
    aperture_erosion_m: float = 0.0
    zernike_std_m: tuple[float, ...] = ()
    distance_error_m: float = 0.0

    def __post_init__(self):
        if isinstance(self.zernike_std_m, list):
            object.__setattr__(self, "zernike_std_m", tuple(self.zernike_std_m))
        for f in fields(self):
            values = getattr(self, f.name)
            low, strict = _LOWER_BOUNDS.get(f.name, (0.0, False))
            for i, v in enumerate(values if isinstance(values, tuple) else (values,)):
                number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                if not number or v < low or (strict and v == low):
                    bound = f" {'>' if strict else '>='} {low:g}" if math.isfinite(low) else ""
                    raise ConfigError(f"{f.name}[{i}]" if isinstance(values, tuple) else f.name, v,
                                      f"a finite number{bound}")


@dataclass(frozen=True, eq=False)
class WaveErrors:
    """One device's fabrication errors (None / 0: none). Shapes for ``P`` PSFs, ``C`` channels,
    ``n x n`` cells: shift_px (P, 2) sensor pixels; transmission_scale (P,); phase_error_rad
    (P, C, n, n); zernike_m (P, J) metres; the rest scalars (module docstring)."""

    shift_px: torch.Tensor | None = None
    transmission_scale: torch.Tensor | None = None
    height_scale_error: float = 0.0
    phase_error_rad: torch.Tensor | None = None
    aperture_erosion_m: float = 0.0
    zernike_m: torch.Tensor | None = None
    distance_error_m: float = 0.0


def eroded_aperture(grid: Grid, aperture_px: int, erosion_m: float) -> torch.Tensor:
    """Amplitude transmission (rows, cols) of the square aperture of ``aperture_px`` cells
    (:func:`simulator.metaoptic.square_aperture`) with every edge moved in by ``erosion_m``: each cell
    transmits the fraction of its area inside the smaller square (exactly the clear aperture at 0)."""
    delta = grid.spacing_m[0]
    half = aperture_px * delta / 2 - erosion_m
    if not 0 < half:
        raise InputError(f"aperture_erosion_m ({erosion_m}) must be below half the aperture side "
                         f"({aperture_px * delta / 2} m)")
    y, x = grid.axes(torch.float64)

    def overlap(axis, centre):
        low = torch.maximum(axis - delta / 2, torch.tensor(centre - half, dtype=torch.float64))
        high = torch.minimum(axis + delta / 2, torch.tensor(centre + half, dtype=torch.float64))
        return ((high - low) / delta).clamp(0.0, 1.0)

    cy, cx = aperture_center_m(grid, aperture_px)
    return overlap(y, cy)[:, None] * overlap(x, cx)[None, :]


def correlated_phase_noise(shape: tuple[int, ...], grid: Grid, aperture: torch.Tensor, rms_rad: float,
                           correlation_m: float, generator: torch.Generator) -> torch.Tensor:
    """Correlated random phase maps (*shape, rows, cols), rad: white Gaussian noise smoothed by a
    Gaussian of standard deviation ``correlation_m`` (periodic on the grid), its mean over the aperture
    (where ``aperture > 0``) removed and scaled to RMS ``rms_rad`` there."""
    white = torch.randn((*shape, *grid.shape), generator=generator, dtype=torch.float64)
    fy, fx = grid.freq_mesh(dtype=torch.float64)
    smooth = ifft2(torch.fft.fft2(white) * torch.exp(-2 * math.pi**2 * correlation_m**2 * (fy**2 + fx**2))).real
    inside = aperture > 0
    values = smooth[..., inside]
    centred = smooth - values.mean(dim=-1)[..., None, None]
    return rms_rad * centred / values.std(dim=-1, correction=0)[..., None, None]


def translate(field: torch.Tensor, shift_cells: torch.Tensor) -> torch.Tensor:
    """Fields (P, C, rows, cols) moved by ``shift_cells`` (P, 2) = (dy, dx) cells (+ = towards higher
    row / column indices): a Fourier phase ramp on the grid zero-padded to twice its size, cropped;
    what moves beyond the grid is lost."""
    rows, cols = field.shape[-2:]
    fy = torch.fft.fftfreq(2 * rows, dtype=torch.float64)
    fx = torch.fft.fftfreq(2 * cols, dtype=torch.float64)
    angle = shift_cells[:, 0, None, None] * fy[:, None] + shift_cells[:, 1, None, None] * fx[None, :]
    ramp = torch.exp(-2j * math.pi * angle).to(field.dtype)
    spectrum = torch.fft.fft2(field, s=(2 * rows, 2 * cols)) * ramp[:, None]
    return ifft2(spectrum)[..., :rows, :cols]


def wave_psfs(masks: MaskDesign, errors: WaveErrors | None = None) -> torch.Tensor:
    """The fabricated PSFs (P, C, N, N) float64 over the whole simulated sensor region (module docstring:
    units) of the masks ``masks`` with ``errors`` (None: the nominal device)."""
    errors = errors or WaveErrors()
    optics, grid = masks.optics, masks.grid
    p, c = masks.phase.shape[:2]
    phase = masks.phase.double() * (1.0 + float(errors.height_scale_error))
    if errors.phase_error_rad is not None:
        phase = phase + check_tensor("phase_error_rad", errors.phase_error_rad).double().expand_as(phase)
    if errors.zernike_m is not None and errors.zernike_m.shape[-1]:
        zernike = check_tensor("zernike_m", errors.zernike_m, ndim=2).double()
        phase = phase + wavefront_to_phase(aperture_wavefront_m(grid, optics.aperture_px, zernike), masks.wavelengths_m)
    amplitude = eroded_aperture(grid, optics.aperture_px, float(errors.aperture_erosion_m))
    distance = masks.distance_m + float(errors.distance_error_m)
    if not distance > 0:
        raise InputError(f"distance_error_m ({errors.distance_error_m}) puts the sensor behind the mask "
                         f"(design distance {masks.distance_m} m)")
    mask_field = amplitude.float() * torch.exp(1j * phase.float())
    if errors.shift_px is not None and bool((errors.shift_px != 0).any()):
        shift = check_tensor("shift_px", errors.shift_px, ndim=2).double()
        mask_field = translate(mask_field, shift * optics.samples_per_pixel)
    pixels = sensor_pixels(mask_field, grid, masks.wavelengths_m, distance, optics.samples_per_pixel).double()
    transmission = masks.transmission
    if errors.transmission_scale is not None:
        scale = check_tensor("transmission_scale", errors.transmission_scale, ndim=1).double()
        transmission = (transmission * scale[:, None]).clamp(0.0, 1.0)
    aperture_power = float(masks.aperture.double().square().sum())
    return pixels * (transmission / aperture_power)[..., None, None]


def sample_wave_errors(spec: WaveErrorSpec, masks: MaskDesign, seed: int) -> WaveErrors:
    """Draw one device's errors with magnitudes ``spec`` from a generator seeded with ``seed`` (same seed,
    same errors)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    p, c = masks.phase.shape[:2]

    def normal(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    zstd = torch.tensor(spec.zernike_std_m, dtype=torch.float64)
    shift = spec.shift_std_px * normal(p, 2)
    scale = 1 + spec.transmission_rel_std * normal(p)
    zernike = zstd * normal(p, len(spec.zernike_std_m))
    noise = None
    if spec.phase_noise_rms_rad > 0:
        noise = correlated_phase_noise((p, c), masks.grid, masks.aperture, spec.phase_noise_rms_rad,
                                       spec.phase_noise_correlation_m, generator)
    return WaveErrors(shift_px=shift, transmission_scale=scale, height_scale_error=spec.height_scale_error,
                      phase_error_rad=noise, aperture_erosion_m=spec.aperture_erosion_m, zernike_m=zernike,
                      distance_error_m=spec.distance_error_m)


class WaveDevice(nn.Module):
    """A fabricated frontend whose PSFs come from wave optics (module docstring).

    It stands where :class:`~simulator.fabrication.FabricationErrors` stands in an
    :class:`~simulator.system.OpticalSystem` (``system.errors``): it has ``num_psfs``, the frame-level
    error tensors, :meth:`tensors`, :meth:`fabricate` and :meth:`to_dict`. ``shift_px`` (P, 2) is the
    true misregistration in sensor pixels (what the cascade's ``shift_px`` estimates).

    Parameters
    ----------
    design_psfs : Tensor (P, C, K, K)
        The design the device realises (non-negative).
    pixel_pitch_m : float
        Sensor pixel pitch (m).
    optics : WaveOptics
    spec : WaveErrorSpec
    seed : int
        Seeds the errors (the frame-level ones with ``seed +`` :data:`FRAME_SEED_OFFSET`).
    frame : ErrorSpec or None
        Frame-level errors (only the fields :data:`FRAME_SPEC_KEYS` may be non-zero).
    """

    def __init__(self, design_psfs: torch.Tensor, *, pixel_pitch_m: float, optics: WaveOptics = WaveOptics(),
                 spec: WaveErrorSpec = WaveErrorSpec(), seed: int = 0, frame: ErrorSpec | None = None):
        super().__init__()
        check_tensor("design_psfs", design_psfs, ndim=4)
        self.num_psfs = design_psfs.shape[0]
        self.optics, self.spec, self.seed, self.frame_spec = optics, spec, seed, frame
        if frame is not None:
            psf_level = [f.name for f in fields(ErrorSpec) if f.name not in FRAME_SPEC_KEYS
                         and getattr(frame, f.name) != f.default]
            if psf_level:
                raise InputError(f"frame holds PSF-level errors {psf_level}: a wave device's PSF errors are its spec's")
        self.masks = design_masks(design_psfs, optics, pixel_pitch_m)
        self.wave_errors = sample_wave_errors(spec, self.masks, seed)
        self.register_buffer("design_psfs", design_psfs.detach().to("cpu", torch.float64).clone())
        self.register_buffer("sensor_psfs", wave_psfs(self.masks, self.wave_errors))
        self.register_buffer("shift_px", self.wave_errors.shift_px.clone())
        frame_errors = FabricationErrors.sample(self.num_psfs, frame or ErrorSpec(), seed + FRAME_SEED_OFFSET)
        for name in FRAME_FIELDS:
            self.register_buffer(name, frame_errors.tensors()[name])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor that decides the device's frames, by name."""
        return {**{name: getattr(self, name) for name in FRAME_FIELDS}, "sensor_psfs": self.sensor_psfs,
                "shift_px": self.shift_px}

    def fabricate(self, psfs: torch.Tensor, margin_px: int = 0) -> torch.Tensor:
        """The fabricated PSFs (P, C, K + 2 margin, K + 2 margin) of the design ``psfs`` (which must be the
        one the device realises), centred on pixel ``(K // 2, K // 2)`` widened by the margin, zero beyond
        the simulated region; dtype and device follow ``psfs``."""
        check_tensor("psfs", psfs, ndim=4)
        if tuple(psfs.shape) != tuple(self.design_psfs.shape) or not torch.equal(
                psfs.detach().to(self.design_psfs.device, torch.float64), self.design_psfs):
            raise InputError("a wave device realises the design it was built from; these PSFs "
                             f"{tuple(psfs.shape)} are another design (rebuild the device from the optics config)")
        if isinstance(margin_px, bool) or not isinstance(margin_px, int) or margin_px < 0:
            raise InputError(f"margin_px must be an int >= 0, got {margin_px!r}")
        window = psfs.shape[-1] + 2 * margin_px
        n = self.sensor_psfs.shape[-1]
        start = n // 2 - window // 2
        pad = max(0, -start, start + window - n)
        padded = torch.nn.functional.pad(self.sensor_psfs, (pad,) * 4)
        start += pad
        return padded[..., start:start + window, start:start + window].to(device=psfs.device, dtype=psfs.dtype)

    def to_dict(self) -> dict:
        """The ``errors`` mapping that rebuilds this device (:func:`wave_device_from_config`)."""
        frame = None
        if self.frame_spec is not None:
            plain = config_io.to_plain(self.frame_spec)
            frame = {key: plain[key] for key in FRAME_SPEC_KEYS}
        return {"model": "wave", "seed": self.seed, "optics": config_io.to_plain(self.optics),
                "spec": config_io.to_plain(self.spec), "frame": frame}

    def extra_repr(self) -> str:
        return f"num_psfs={self.num_psfs}, seed={self.seed}, spec={self.spec}"


def _build(cls, mapping, path: str):
    """:func:`onn_core.config.build`, with the range errors ``cls`` raises (naming a bare field) given
    the full path."""
    try:
        return config_io.build(cls, mapping, path)
    except ConfigError as exc:
        if exc.path.startswith(path):
            raise
        raise ConfigError(f"{path}.{exc.path}", exc.value, exc.expected) from None


def wave_device_from_config(mapping: dict, design_psfs: torch.Tensor, pixel_pitch_m: float, *,
                            path: str = "errors") -> WaveDevice:
    """A :class:`WaveDevice` from an ``errors`` mapping with ``model: wave`` (module docstring);
    :class:`~onn_core.errors.ConfigError` names the YAML path of a bad field."""
    if not isinstance(mapping, dict) or mapping.get("model") != "wave":
        raise ConfigError(f"{path}.model", mapping.get("model") if isinstance(mapping, dict) else mapping, "'wave'")
    for key in mapping:
        if key not in WAVE_KEYS:
            raise ConfigError(f"{path}.{key}", mapping[key], f"one of the fields of model 'wave': {list(WAVE_KEYS)}")
    seed = mapping.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}.seed", seed, "an int")
    optics = _build(WaveOptics, mapping.get("optics") or {}, f"{path}.optics")
    spec = _build(WaveErrorSpec, mapping.get("spec") or {}, f"{path}.spec")
    frame = mapping.get("frame")
    if frame is not None:
        if not isinstance(frame, dict):
            raise ConfigError(f"{path}.frame", frame, f"a mapping of frame-level errors {list(FRAME_SPEC_KEYS)}")
        for key in frame:
            if key not in FRAME_SPEC_KEYS:
                raise ConfigError(f"{path}.frame.{key}", frame[key],
                                  f"one of the frame-level errors {list(FRAME_SPEC_KEYS)}")
        frame = ErrorSpec.from_dict(frame, f"{path}.frame")
    return WaveDevice(design_psfs, pixel_pitch_m=pixel_pitch_m, optics=optics, spec=spec, seed=seed, frame=frame)


__all__ = ["FRAME_SEED_OFFSET", "FRAME_SPEC_KEYS", "WAVE_KEYS", "WaveDevice", "WaveErrorSpec", "WaveErrors",
           "correlated_phase_noise", "eroded_aperture", "sample_wave_errors", "translate", "wave_device_from_config",
           "wave_psfs"]
