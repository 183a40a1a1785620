"""A fabricated optical frontend: design PSFs + fabrication errors + display + sensor, composed.

This is the forward model that simulated devices and the calibration fit share:

``gray (N, C, H, W)`` display gray levels
  -> :class:`~simulator.display.DisplayModel`: pixel radiance (W sr^-1 m^-2)
  -> every fabricated PSF (design PSFs with :func:`~simulator.fabrication.apply_psf_errors`), as a
     linear, true convolution (:func:`~simulator.conv.optical_conv2d`, mode ``"full"`` by default:
     tiles of ``(H + K - 1, W + K - 1)`` pixels hold the whole blurred image; ``"same"``: ``(H, W)``
     tiles centred on the optical axis pixel ``K // 2``)
  -> tile assembly (:class:`~simulator.layout.TileLayout`, PSF ``p`` in tile ``p``, row-major)
  -> times ``photons_per_radiance`` (expected photons reaching a sensor pixel per unit of display
     radiance and of PSF weight during the exposure; it lumps the display pixel's area, the collected
     solid angle, the exposure time and the photon energy)
  -> frame errors (:func:`~simulator.fabrication.apply_frame_errors`: crosstalk, vignetting, stray light)
  -> clipped at 0 photons (filters can ring slightly negative)
  -> :class:`~simulator.sensor.SensorModel`: DN, float, quantised if the sensor has an ADC.

Geometry: one display pixel images onto one sensor pixel, and one PSF pixel is one sensor pixel
(the display-to-sensor magnification is folded into the design); the sensor's own resampling stage
is therefore not used by the frontend.

Design PSFs are non-negative ``(P, C, K, K)``; signed design kernels ``(M, C, K, K)`` become ``P = 2M``
PSFs ordered ``[k1+, k1-, k2+, k2-, ...]`` (:meth:`FabricatedFrontend.from_kernels`, as
:meth:`simulator.conv.IncoherentConv2d.psfs`), so the backend subtracts tile ``2i + 1`` from ``2i``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import config as config_io
from .conv import IncoherentConv2d, optical_conv2d
from .display import DisplayModel
from .errors import ConfigError, InputError
from .fabrication import AberrationOptics, ErrorSpec, FabricationErrors, apply_frame_errors, apply_psf_errors
from .layout import TileLayout
from .sensor import SensorModel
from .validation import check_positive, check_tensor

DESIGN_GENERATORS = ("random_signed", "file", "inline")
_UINT16_MAX = 65535


class FabricatedFrontend(nn.Module):
    """Display -> fabricated PSFs -> tiled camera frame -> sensor (module docstring).

    Parameters
    ----------
    psfs : (P, C, K, K) tensor
        Non-negative design PSFs (float32 or float64; the frontend computes in this dtype).
    image_shape : (int, int)
        Shape (H, W) of the display image, in display pixels.
    errors : FabricationErrors or None
        Fabrication errors for the P PSFs; None: identity (the design itself).
    display : DisplayModel or None
        None: an 8-bit display with gamma 2.2 and unit radiance (pitch 1e-5 m, unused here).
    sensor : SensorModel or None
        None: an ideal sensor (no noise, no ADC): the output is the expected photo-electrons.
    mode : "full" | "same"
        Convolution output size per tile (module docstring).
    gap_px : int
        Dark pixels between tiles, when ``layout`` is None.
    layout : TileLayout or None
        None: ``TileLayout.for_count(P, tile_shape, gap_px)``. A given layout must have the tile shape.
    photons_per_radiance : float
        Expected photons per (W sr^-1 m^-2 x unit PSF weight) per sensor pixel and exposure.
    seed : int
        Seeds the generator that :meth:`render` uses for sensor noise (advances with each call).
    design_config : dict or None
        The ``design`` mapping the PSFs came from, kept for :meth:`to_config` (None: inline PSFs).
    """

    def __init__(self, psfs: torch.Tensor, image_shape, *, errors: FabricationErrors | None = None,
                 display: DisplayModel | None = None, sensor: SensorModel | None = None, mode: str = "full",
                 gap_px: int = 0, layout: TileLayout | None = None, photons_per_radiance: float = 1.0,
                 seed: int = 0, design_config: dict | None = None):
        super().__init__()
        check_tensor("psfs", psfs, ndim=4)
        if psfs.dtype not in (torch.float32, torch.float64):
            raise InputError(f"psfs must be float32 or float64, got {psfs.dtype}")
        if float(psfs.min()) < 0:
            raise InputError("psfs must be non-negative (intensities); split signed kernels with from_kernels()")
        if psfs.shape[-1] != psfs.shape[-2]:
            raise InputError(f"psfs must be square (P, C, K, K), got shape {tuple(psfs.shape)}")
        if mode not in ("full", "same"):
            raise InputError(f"mode must be 'full' or 'same', got {mode!r}")
        if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_shape)):
            raise InputError(f"image_shape must be a pair of positive ints (H, W), got {image_shape!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int, got {seed!r}")
        p, _, k, _ = psfs.shape
        self.register_buffer("design_psfs", psfs.detach().clone())
        self.image_shape, self.mode, self.seed = tuple(image_shape), mode, seed
        grow = k - 1 if mode == "full" else 0
        tile_shape = (self.image_shape[0] + grow, self.image_shape[1] + grow)
        self.layout = layout or TileLayout.for_count(p, tile_shape, gap_px)
        if tuple(self.layout.tile_shape) != tile_shape or self.layout.capacity < p:
            raise InputError(f"layout must have tile_shape {tile_shape} and room for {p} tiles, got {self.layout}")
        self.errors = errors if errors is not None else FabricationErrors.identity(p)
        if self.errors.num_psfs != p:
            raise InputError(f"errors are for {self.errors.num_psfs} PSFs but the design has {p}")
        self.display = display or DisplayModel(pixel_pitch_m=1e-5)
        self.sensor = sensor or SensorModel(noise=False)
        self.photons_per_radiance = check_positive("photons_per_radiance", photons_per_radiance)
        self._generator = torch.Generator(device=psfs.device).manual_seed(seed)
        self._design_config = design_config

    # ------------------------------------------------------------------------------------------ builders
    @classmethod
    def from_kernels(cls, kernels: torch.Tensor, image_shape, **kwargs) -> "FabricatedFrontend":
        """Frontend realising signed kernels (M, C, K, K) as 2M PSFs ``[k1+, k1-, ...]``."""
        return cls(signed_kernels_to_psfs(kernels), image_shape, **kwargs)

    # --------------------------------------------------------------------------------------- forward
    @property
    def num_psfs(self) -> int:
        return self.design_psfs.shape[0]

    def fabricated_psfs(self) -> torch.Tensor:
        """The design PSFs with the fabrication errors applied, (P, C, K, K)."""
        return apply_psf_errors(self.design_psfs, self.errors)

    def _radiance(self, gray: torch.Tensor) -> torch.Tensor:
        if not isinstance(gray, torch.Tensor) or gray.ndim != 4:
            raise InputError(f"gray must be a (N, C, H, W) tensor, got {type(gray).__name__} {getattr(gray, 'shape', '')}")
        if gray.is_floating_point():
            check_tensor("gray", gray)
        c = self.design_psfs.shape[1]
        if gray.shape[1] != c or tuple(gray.shape[-2:]) != self.image_shape:
            raise InputError(f"gray must have shape (N, {c}, {self.image_shape[0]}, {self.image_shape[1]}), "
                             f"got {tuple(gray.shape)}")
        return self.display.forward(gray.to(self.design_psfs.device), self.design_psfs.dtype)

    def forward(self, gray: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Camera frames (N, rows, cols) in DN (float) of display gray levels ``gray`` (N, C, H, W).

        ``generator`` seeds the sensor noise (the global RNG when None). Differentiable in the error
        tensors (see ``FabricationErrors.make_trainable``) and in floating ``gray``; through the
        sensor's noise and rounding by its straight-through gradient.
        """
        radiance = self._radiance(gray)
        features = optical_conv2d(radiance, self.fabricated_psfs(), mode=self.mode)
        photons = self.layout.assemble(features) * self.photons_per_radiance
        photons = apply_frame_errors(photons, self.errors, self.layout).clamp(min=0)
        return self.sensor.forward(photons, generator=generator)

    def ideal_features(self, gray: torch.Tensor) -> torch.Tensor:
        """The design's feature maps (N, P, h, w) in expected photons: design PSFs, no fabrication errors,
        no sensor (for tests and as the calibration fit's reference)."""
        radiance = self._radiance(gray)
        return optical_conv2d(radiance, self.design_psfs, mode=self.mode) * self.photons_per_radiance

    def render(self, gray: np.ndarray) -> np.ndarray:
        """One camera frame (rows, cols) uint16 of a display image ``gray`` (H, W) or (H, W, C), unsigned
        integers. Sensor noise uses the frontend's own generator (seeded by ``seed``), so a fresh frontend
        renders the same sequence of frames. DN beyond 0..65535 are clipped; without an ADC they are
        rounded to the nearest integer."""
        if not isinstance(gray, np.ndarray) or gray.ndim not in (2, 3) or gray.dtype.kind != "u":
            raise InputError(f"gray must be a numpy array (rows, cols) or (rows, cols, channels) of unsigned ints, "
                             f"got {type(gray).__name__} {getattr(gray, 'dtype', '')} {getattr(gray, 'shape', '')}")
        if self._generator.device != self.design_psfs.device:  # the module was moved: reseed on its device
            self._generator = torch.Generator(device=self.design_psfs.device).manual_seed(self.seed)
        image = gray[None] if gray.ndim == 2 else np.moveaxis(gray, -1, 0)
        tensor = torch.from_numpy(image.astype(np.int64))[None]
        with torch.no_grad():
            frame = self.forward(tensor, generator=self._generator)[0]
        return np.clip(np.rint(frame.cpu().numpy()), 0, _UINT16_MAX).astype(np.uint16)

    # --------------------------------------------------------------------------------------- configs
    @classmethod
    def from_config(cls, mapping: dict, *, base_dir=None, path: str = "frontend") -> "FabricatedFrontend":
        """Build from a YAML mapping (see ``examples/frontend.yaml``); ConfigError names bad fields.

        Keys: ``design`` (required), ``image_shape`` (required), ``mode``, ``gap_px``,
        ``photons_per_radiance``, ``seed``, ``dtype`` ("float32"/"float64"), ``display``, ``sensor`` (the
        fields of DisplayModel / SensorModel), ``errors`` (null; ``{spec: {...}, seed: int,
        shift_method, aberration}`` to sample; or the explicit form of ``FabricationErrors.to_dict()``).
        ``base_dir`` resolves relative design file paths.
        """
        if not isinstance(mapping, dict):
            raise ConfigError(path, mapping, "a mapping")
        known = {"design", "image_shape", "mode", "gap_px", "photons_per_radiance", "seed", "dtype", "display",
                 "sensor", "errors"}
        for key in mapping:
            if key not in known:
                raise ConfigError(f"{path}.{key}", mapping[key], f"one of the known fields {sorted(known)}")
        dtype_name = mapping.get("dtype", "float32")
        if dtype_name not in ("float32", "float64"):
            raise ConfigError(f"{path}.dtype", dtype_name, "'float32' or 'float64'")
        dtype = getattr(torch, dtype_name)
        psfs = design_psfs_from_config(mapping.get("design"), base_dir=base_dir, path=f"{path}.design").to(dtype)
        image_shape = mapping.get("image_shape")
        if (not isinstance(image_shape, list) or len(image_shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_shape)):
            raise ConfigError(f"{path}.image_shape", image_shape, "a list of two positive ints [H, W]")
        mode = mapping.get("mode", "full")
        if mode not in ("full", "same"):
            raise ConfigError(f"{path}.mode", mode, "'full' or 'same'")
        gap_px = mapping.get("gap_px", 0)
        if isinstance(gap_px, bool) or not isinstance(gap_px, int) or gap_px < 0:
            raise ConfigError(f"{path}.gap_px", gap_px, "an int >= 0")
        seed = mapping.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{path}.seed", seed, "an int")
        photons = mapping.get("photons_per_radiance", 1.0)
        if isinstance(photons, bool) or not isinstance(photons, (int, float)) or not math.isfinite(photons) or photons <= 0:
            raise ConfigError(f"{path}.photons_per_radiance", photons, "a finite number > 0")
        display = config_io.build(DisplayModel, mapping.get("display") or {"pixel_pitch_m": 1e-5}, f"{path}.display")
        sensor = config_io.build(SensorModel, mapping.get("sensor") or {"noise": False}, f"{path}.sensor")
        errors = errors_from_config(mapping.get("errors"), psfs.shape, path=f"{path}.errors")
        return cls(psfs, tuple(image_shape), errors=errors, display=display, sensor=sensor, mode=mode,
                   gap_px=gap_px, photons_per_radiance=float(photons), seed=seed, design_config=mapping["design"])

    @classmethod
    def from_yaml(cls, path) -> "FabricatedFrontend":
        """:meth:`from_config` of a YAML file (``yaml.safe_load``); design files resolve next to it."""
        return cls.from_config(config_io.load_yaml(path), base_dir=Path(path).parent)

    def to_config(self) -> dict:
        """A mapping that :meth:`from_config` turns back into an equal frontend: the design as given
        to :meth:`from_config` (or inline PSFs), the errors explicitly (exact values)."""
        design = self._design_config or {
            "generator": "inline", "signed": False, "psfs": self.design_psfs.detach().cpu().double().tolist()}
        return {
            "design": design,
            "image_shape": list(self.image_shape),
            "mode": self.mode,
            "gap_px": self.layout.gap_px,
            "photons_per_radiance": self.photons_per_radiance,
            "seed": self.seed,
            "dtype": str(self.design_psfs.dtype).removeprefix("torch."),
            "display": config_io.to_plain(self.display),
            "sensor": config_io.to_plain(self.sensor),
            "errors": self.errors.to_dict(),
        }

    def extra_repr(self) -> str:
        p, c, k, _ = self.design_psfs.shape
        return (f"psfs=({p}, {c}, {k}, {k}), image_shape={self.image_shape}, mode={self.mode!r}, "
                f"frame_shape={self.layout.frame_shape}")


def signed_kernels_to_psfs(kernels: torch.Tensor) -> torch.Tensor:
    """Signed kernels (M, C, K, K) -> non-negative PSFs (2M, C, K, K) ordered ``[k1+, k1-, ...]``."""
    return IncoherentConv2d.from_kernels(kernels.detach()).psfs().detach()


def random_signed_kernels(num_kernels: int, kernel_size: int, channels: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian kernels (M, C, K, K), float64, each normalised to unit L1 norm (so the light of
    its two PSFs adds up to 1)."""
    kernels = torch.randn((num_kernels, channels, kernel_size, kernel_size),
                          generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return kernels / kernels.abs().sum(dim=(1, 2, 3), keepdim=True)


def load_kernel_file(file_path: Path) -> torch.Tensor:
    """A float tensor from ``.npy`` (no pickles) or ``.pt`` (``weights_only=True``)."""
    if file_path.suffix == ".npy":
        return torch.from_numpy(np.load(file_path, allow_pickle=False)).double()
    if file_path.suffix == ".pt":
        loaded = torch.load(file_path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, torch.Tensor):
            raise InputError(f"{file_path} must hold one tensor, got {type(loaded).__name__}")
        return loaded.double()
    raise InputError(f"design file must end in .npy or .pt, got {file_path}")


def design_psfs_from_config(design, *, base_dir=None, path: str = "design") -> torch.Tensor:
    """Design PSFs (P, C, K, K) float64 from a ``design`` mapping:

    * ``{generator: random_signed, num_kernels, kernel_size, channels (1), seed (0)}``
    * ``{generator: file, path: kernels.npy|.pt, signed: true|false}``
    * ``{generator: inline, psfs: nested list, signed: false}`` (or ``kernels`` with ``signed: true``)

    Signed kernels are split into ``[k1+, k1-, ...]`` PSFs.
    """
    if not isinstance(design, dict):
        raise ConfigError(path, design, f"a mapping with generator one of {list(DESIGN_GENERATORS)}")
    generator = design.get("generator")
    allowed = {"random_signed": {"generator", "num_kernels", "kernel_size", "channels", "seed"},
               "file": {"generator", "path", "signed"},
               "inline": {"generator", "psfs", "kernels", "signed"}}
    if generator not in allowed:
        raise ConfigError(f"{path}.generator", generator, f"one of {list(DESIGN_GENERATORS)}")
    for key in design:
        if key not in allowed[generator]:
            raise ConfigError(f"{path}.{key}", design[key], f"one of the fields of generator {generator!r}: "
                                                          f"{sorted(allowed[generator])}")
    if generator == "random_signed":
        ints = {}
        for key, minimum, default in (("num_kernels", 1, None), ("kernel_size", 1, None), ("channels", 1, 1),
                                      ("seed", None, 0)):
            value = design.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
                raise ConfigError(f"{path}.{key}", value, "an int" + (f" >= {minimum}" if minimum is not None else ""))
            ints[key] = value
        return signed_kernels_to_psfs(random_signed_kernels(**ints))
    signed = design.get("signed", generator == "file")
    if not isinstance(signed, bool):
        raise ConfigError(f"{path}.signed", signed, "true or false")
    if generator == "file":
        file_name = design.get("path")
        if not isinstance(file_name, str):
            raise ConfigError(f"{path}.path", file_name, "a path to a .npy or .pt file")
        file_path = Path(file_name)
        if not file_path.is_absolute() and base_dir is not None:
            file_path = Path(base_dir) / file_path
        try:
            values = load_kernel_file(file_path)
        except (OSError, InputError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{path}.path", file_name, f"a readable .npy/.pt tensor file ({exc})") from exc
    else:
        key = "kernels" if signed else "psfs"
        try:
            values = torch.tensor(design.get(key), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{path}.{key}", design.get(key), "a nested list of numbers (P, C, K, K)") from exc
    if values.ndim != 4 or values.shape[-1] != values.shape[-2] or not bool(torch.isfinite(values).all()):
        raise ConfigError(path, f"tensor of shape {tuple(values.shape)}", "finite values of shape (P, C, K, K)")
    if signed:
        return signed_kernels_to_psfs(values)
    if float(values.min()) < 0:
        raise ConfigError(path, "negative PSF values", "non-negative PSFs (or signed: true for signed kernels)")
    return values


def errors_from_config(errors, psf_shape, *, path: str = "errors") -> FabricationErrors:
    """FabricationErrors from ``null`` (identity), a sampling mapping ``{spec, seed, shift_method,
    aberration}`` or the explicit form of :meth:`FabricationErrors.to_dict`."""
    p, c, k, _ = psf_shape
    if errors is None:
        return FabricationErrors.identity(p)
    if not isinstance(errors, dict):
        raise ConfigError(path, errors, "null, a sampling mapping {spec, seed} or an explicit errors mapping")
    if "spec" not in errors:
        built = FabricationErrors.from_dict(errors, path=path)
        if built.num_psfs != p:
            raise ConfigError(f"{path}.num_psfs", built.num_psfs, f"{p} (the design's PSF count)")
        return built
    allowed = {"spec", "seed", "shift_method", "aberration"}
    for key in errors:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", errors[key], f"one of {sorted(allowed)}")
    seed = errors.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}.seed", seed, "an int")
    shift_method = errors.get("shift_method", "bilinear")
    if shift_method not in ("bilinear", "fourier"):
        raise ConfigError(f"{path}.shift_method", shift_method, "'bilinear' or 'fourier'")
    spec = ErrorSpec.from_dict(errors["spec"], f"{path}.spec")
    aberration = config_io.build(AberrationOptics, errors.get("aberration") or {}, f"{path}.aberration")
    return FabricationErrors.sample(p, spec, seed, kernel_shape=(c, k, k), aberration=aberration,
                                    shift_method=shift_method)


__all__ = ["FabricatedFrontend", "design_psfs_from_config", "errors_from_config", "load_kernel_file",
           "random_signed_kernels", "signed_kernels_to_psfs"]
