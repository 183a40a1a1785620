"""Teachers (LeNet, U-Net) and optical students (an optical frontend + a digital backend).

Teachers are electronic networks trained with the task loss; students are
:class:`OpticalStudent` ``(frontend, backend)``:

* frontends: a :class:`simulator.system.OpticalSystem` -- the same forward model the simulated bench
  renders and calibration fits -- whose design is trainable: signed kernels realised as PSF pairs
  (:class:`simulator.design.KernelDesign`, the meta-optic) or pairs of 4f systems with trainable
  Fourier-plane filters (:class:`FourFDesign`). It maps images (N, C, H, W) in [0, 1] to signed feature
  maps (N, m, H s, W s), through the display, the sensor (noise in training mode) and optional random
  fabrication errors redrawn at every training forward (robustness).
* backends: :class:`FCBackend` (2 or 3 fully connected layers, classification) and
  :class:`UpConvDecoder` (up-convolution decoder, segmentation logits (N, 1, H, W)).

:func:`build_model` builds any of them from a plain config mapping (the ``model:`` section of a run
YAML, see :class:`TeacherSpec`, :class:`UNetSpec` and :class:`OpticalStudentSpec` for the fields).
Outputs are logits: (N, classes) for classification, (N, 1, H, W) for binary segmentation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from onn_core.config import build
from onn_core.errors import ConfigError, InputError
from simulator.system import hold_random_draws  # noqa: F401  (re-exported: losses hold draws for NTKs)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- teachers


class LeNet(nn.Module):
    """LeNet-5-style CNN: conv5x5 (6w) - pool - conv5x5 (16w) - pool - FC 120w - FC 84w - FC classes.

    ``width`` multiplies every layer's width (``width=1``: 61.7 k parameters on 28x28 mono input).
    ``image_size`` (pixels, square) must be >= 12 so that both convolutions fit.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 1):
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("num_classes", num_classes, 2)
        _check_int("image_size", image_size, 12)
        _check_int("width", width, 1)
        side = (image_size // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6 * width, 16 * width, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * width * side * side, 120 * width), nn.ReLU(),
            nn.Linear(120 * width, 84 * width), nn.ReLU(),
            nn.Linear(84 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """Small U-Net: ``depth`` down steps (max-pool 2), channels ``base * 2**level``, transposed-conv up
    steps with skip connections, 1x1 output conv to ``out_channels`` logits. No normalisation layers
    (per-sample NTKs stay well defined). Input sides must be divisible by ``2**depth``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 2):
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("base_channels", base_channels, 1)
        _check_int("depth", depth, 1)
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
        self.merge = nn.ModuleList([_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = 2**self.depth
        if x.shape[-1] % step or x.shape[-2] % step:
            raise InputError(f"UNet of depth {self.depth} needs input sides divisible by {step}, got {tuple(x.shape[-2:])}")
        skips = []
        h = self.down[0](x)
        for block in self.down[1:]:
            skips.append(h)
            h = block(self.pool(h))
        for up, merge in zip(self.up, self.merge):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return self.head(h)


# ------------------------------------------------------------------------------------------ frontends


class FourFDesign(nn.Module):
    """A design (:mod:`simulator.design`) made of ``2 m`` 4f systems (:class:`simulator.lens.FourF`)
    with trainable Fourier-plane filters, in pairs: the incoherent PSF of system ``2i`` minus that of
    ``2i + 1`` is signed kernel ``i``. Each PSF is the 4f system's ``intensity_psf()`` on a
    ``kernel_size x kernel_size`` grid of pitch ``pixel_pitch_m`` (one slice per wavelength;
    ``len(wavelengths_m)`` must equal ``C``). Passive filters give PSFs that sum to <= 1: the light
    level is the optical system's photometry, not a gain."""

    def __init__(self, in_channels: int = 1, num_kernels: int = 8, kernel_size: int = 7, *,
                 wavelengths_m=(532e-9,), pixel_pitch_m: float = 8e-6, f1_m: float = 0.05, f2_m: float = 0.05,
                 filter_mode: str = "complex", seed: int = 0):
        super().__init__()
        from simulator.field import Grid
        from simulator.lens import FourF

        _check_int("in_channels", in_channels, 1)
        _check_int("num_kernels", num_kernels, 1)
        _check_int("kernel_size", kernel_size, 1)
        wavelengths = tuple(float(w) for w in (wavelengths_m if isinstance(wavelengths_m, (list, tuple)) else (wavelengths_m,)))
        if len(wavelengths) != in_channels:
            raise InputError(f"FourFDesign needs one wavelength per input channel ({in_channels}), got {wavelengths}")
        grid = Grid.square(kernel_size, pixel_pitch_m)
        generator = torch.Generator().manual_seed(int(seed))
        self.systems = nn.ModuleList(
            FourF(grid, list(wavelengths), f1_m, f2_m, mode=filter_mode, generator=generator) for _ in range(2 * num_kernels)
        )

    def psfs(self) -> torch.Tensor:
        """Non-negative PSF stack (2m, C, k, k), ``[k1+, k1-, k2+, ...]``."""
        return torch.stack([s.intensity_psf() for s in self.systems])


# ------------------------------------------------------------------------------------------- backends


class FCBackend(nn.Module):
    """Fully connected backend: optional average pooling by ``pool`` (pixels), flatten, then
    ``len(hidden) + 1`` linear layers with ReLU between (``hidden=(32,)``: 2 FC layers)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int = 10, hidden: tuple[int, ...] = (32,), pool: int = 1):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        _check_int("pool", pool, 1)
        _check_int("num_classes", num_classes, 2)
        layers: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
        layers.append(nn.Flatten())
        width = c * (h // pool) * (w // pool)
        for size in hidden:
            _check_int("hidden", size, 1)
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class UpConvDecoder(nn.Module):
    """Up-convolution decoder for segmentation: features (N, m, H, W) -> logits (N, out, H, W).

    conv3x3 (m -> w0), ReLU, max-pool 2, conv3x3 (w0 -> w1), ReLU, transposed conv 2x2 stride 2
    (w1 -> w0), ReLU, conv3x3 (2 w0 -> w0) on the up-sampled map concatenated with the first one, ReLU,
    conv1x1 (w0 -> out). H and W must be even.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, widths: tuple[int, int] = (32, 64)):
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        if len(widths) != 2:
            raise InputError(f"widths must be two ints (w0, w1), got {widths!r}")
        w0, w1 = (int(w) for w in widths)
        self.encode = nn.Sequential(nn.Conv2d(in_channels, w0, 3, padding=1), nn.ReLU())
        self.bottleneck = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(w0, w1, 3, padding=1), nn.ReLU(),
                                        nn.ConvTranspose2d(w1, w0, 2, stride=2), nn.ReLU())
        self.decode = nn.Sequential(nn.Conv2d(2 * w0, w0, 3, padding=1), nn.ReLU(), nn.Conv2d(w0, out_channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] % 2 or features.shape[-2] % 2:
            raise InputError(f"UpConvDecoder needs even feature sides, got {tuple(features.shape[-2:])}")
        h = self.encode(features)
        return self.decode(torch.cat([self.bottleneck(h), h], dim=1))


# -------------------------------------------------------------------------------------------- student


class OpticalStudent(nn.Module):
    """``backend(frontend(x))``. ``.frontend`` and ``.backend`` are the two blocks (their parameter names
    start with ``frontend.`` / ``backend.``, e.g. for per-block NTKs); :meth:`freeze` turns the gradient
    of one block off, e.g. ``student.freeze("frontend")`` to fine-tune the backend after fabrication."""

    def __init__(self, frontend: nn.Module, backend: nn.Module):
        super().__init__()
        self.frontend, self.backend = frontend, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend(self.frontend(x))

    def freeze(self, *parts: str, frozen: bool = True) -> "OpticalStudent":
        """Set ``requires_grad = not frozen`` for every parameter of the named parts; returns self."""
        for part in parts:
            if part not in ("frontend", "backend"):
                raise InputError(f"part must be 'frontend' or 'backend', got {part!r}")
            getattr(self, part).requires_grad_(not frozen)
        return self


# ------------------------------------------------------------------------------------------- builders


@dataclass
class TeacherSpec:
    """``model: {name: lenet, ...}``: :class:`LeNet` fields."""

    name: Literal["lenet"]
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    width: int = 1


@dataclass
class UNetSpec:
    """``model: {name: unet, ...}``: :class:`UNet` fields."""

    name: Literal["unet"]
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 16
    depth: int = 2


@dataclass
class OpticalStudentSpec:
    """``model: {name: optical_student, ...}``.

    frontend: ``incoherent_conv`` (a meta-optic: trainable signed kernels) or ``fourf`` (4f systems with
    trainable Fourier filters, :class:`FourFDesign`; ``fourf``: its keyword arguments). in_channels,
    image_size (display pixels, square input), num_kernels signed kernels of kernel_size pixels (2 PSFs
    each). optics: the optical system's description (:meth:`simulator.system.OpticalSystem.from_config`:
    geometry, photometry, display, sensor; the same section a bench's ``camera.optics`` holds, without
    ``design``, which the trained kernels are, and without ``errors``), or the path of such an optics
    file (:func:`student_optics_from_file`; the run config inlines it); null: ideal optics.
    fabrication: None or :class:`simulator.fabrication.ErrorSpec` fields: random PSF errors drawn at
    every training forward (robustness). transmission: the light budget of each sub-optic, the largest
    total weight of one PSF (:class:`simulator.design.KernelDesign`; 1: all the light reaching its
    sub-aperture; null: unconstrained). backend: ``fc`` (hidden: one size -> 2 FC layers, two -> 3 FC
    layers; pool: average pooling of the features, pixels; num_classes) or ``upconv`` (decoder_widths,
    out_channels). seed: initial kernels and draws.
    """

    name: Literal["optical_student"]
    frontend: Literal["incoherent_conv", "fourf"] = "incoherent_conv"
    in_channels: int = 1
    image_size: int = 28
    num_kernels: int = 8
    kernel_size: int = 7
    optics: dict[str, Any] | str | None = None
    fabrication: dict[str, Any] | None = None
    transmission: float | None = 1.0
    fourf: dict[str, Any] = field(default_factory=dict)
    backend: Literal["fc", "upconv"] = "fc"
    hidden: list[int] = field(default_factory=lambda: [32])
    pool: int = 2
    num_classes: int = 10
    out_channels: int = 1
    decoder_widths: list[int] = field(default_factory=lambda: [32, 64])
    seed: int = 0


#: Student fields of earlier versions, with where their role lives now.
_MOVED_STUDENT_FIELDS = {
    "sensor": "model.optics.sensor",
    "photons_per_unit": "model.optics.photometry (photons_per_s x exposure_s = photons per unit intensity)",
}

_SPECS = {"lenet": TeacherSpec, "unet": UNetSpec, "optical_student": OpticalStudentSpec}


def student_optics_from_file(path) -> dict:
    """The ``model.optics`` of a student from an optics YAML file (e.g. a bench's ``camera.optics``):
    everything but ``design`` (the student's trained kernels are the design), ``errors`` (one
    fabricated device; a student trains against ``model.fabrication`` draws instead) and ``seed`` (the
    bench's noise seed; the student's draws follow ``model.seed``). A display ``lut_file`` is made
    absolute, since the mapping no longer lives next to the file."""
    from onn_core.config import load_yaml
    from onn_core.files import resolve_relative

    mapping = load_yaml(path)
    dropped = [key for key in ("design", "errors", "seed") if mapping.pop(key, None) is not None]
    if dropped:
        log.info("model.optics from %s: %s not used in training", path, ", ".join(dropped))
    display = mapping.get("display") or {}
    if isinstance(display.get("lut_file"), str):
        display["lut_file"] = str(resolve_relative(display["lut_file"], Path(path).parent))
    return mapping


def _frontend(spec: OpticalStudentSpec):
    """The student's optical system: its design (trainable kernels or 4f filters) in the described optics."""
    from simulator.design import KernelDesign
    from simulator.fabrication import ErrorSpec
    from simulator.system import OpticalSystem

    if spec.frontend == "fourf":
        known = {"wavelengths_m", "pixel_pitch_m", "f1_m", "f2_m", "filter_mode"}
        if "psf_gain" in spec.fourf:
            raise ConfigError("model.fourf.psf_gain", spec.fourf["psf_gain"],
                              "no gain: the light level is model.optics.photometry (photons_per_s, exposure_s)")
        unknown = sorted(set(spec.fourf) - known)
        if unknown:
            raise ConfigError(f"model.fourf.{unknown[0]}", spec.fourf[unknown[0]], f"one of {sorted(known)}")
        design = FourFDesign(spec.in_channels, spec.num_kernels, spec.kernel_size, seed=spec.seed, **spec.fourf)
    else:
        _check_int("kernel_size", spec.kernel_size, 1)
        design = KernelDesign(shape=(spec.num_kernels, spec.in_channels, spec.kernel_size, spec.kernel_size),
                              seed=spec.seed, transmission=spec.transmission)
    optics = student_optics_from_file(spec.optics) if isinstance(spec.optics, str) else dict(spec.optics or {})
    shape = [spec.image_size, spec.image_size]
    if optics.setdefault("image_shape", shape) != shape:
        raise ConfigError("model.optics.image_shape", optics["image_shape"], f"{shape} (model.image_size)")
    optics.setdefault("seed", spec.seed)
    robustness = None if spec.fabrication is None else ErrorSpec.from_dict(spec.fabrication, "model.fabrication")
    return OpticalSystem.from_config(optics, path="model.optics", design=design, robustness=robustness)


def _backend(spec: OpticalStudentSpec, in_shape: tuple[int, int, int]) -> nn.Module:
    """The digital backend reading features of shape ``in_shape`` = (channels, rows, cols)."""
    if spec.backend == "fc":
        if not 1 <= len(spec.hidden) <= 2:
            raise ConfigError("model.hidden", spec.hidden, "one or two layer sizes (2 or 3 FC layers)")
        return FCBackend(in_shape, spec.num_classes, tuple(spec.hidden), spec.pool)
    if len(spec.decoder_widths) != 2:
        raise ConfigError("model.decoder_widths", spec.decoder_widths, "two channel counts [w0, w1]")
    return UpConvDecoder(in_shape[0], spec.out_channels, tuple(spec.decoder_widths))


def build_model(cfg: dict) -> nn.Module:
    """A model from the ``model:`` config mapping; ``cfg["name"]`` is ``lenet``, ``unet`` or
    ``optical_student`` (fields: :class:`TeacherSpec`, :class:`UNetSpec`, :class:`OpticalStudentSpec`).
    Raises :class:`~onn_core.errors.ConfigError` naming the bad ``model.*`` field."""
    if not isinstance(cfg, dict) or cfg.get("name") not in _SPECS:
        name = cfg.get("name") if isinstance(cfg, dict) else cfg
        raise ConfigError("model.name", name, f"one of {sorted(_SPECS)}")
    if cfg["name"] == "optical_student":
        for key, home in _MOVED_STUDENT_FIELDS.items():
            if key in cfg:
                raise ConfigError(f"model.{key}", cfg[key], f"no value here: set {home}")
    spec = build(_SPECS[cfg["name"]], cfg, "model")
    try:
        if isinstance(spec, TeacherSpec):
            return LeNet(spec.in_channels, spec.num_classes, spec.image_size, spec.width)
        if isinstance(spec, UNetSpec):
            return UNet(spec.in_channels, spec.out_channels, spec.base_channels, spec.depth)
        with torch.random.fork_rng(devices=[]):  # backend initialisation draws from the global RNG
            torch.manual_seed(spec.seed)
            frontend = _frontend(spec)
            return OpticalStudent(frontend, _backend(spec, (frontend.num_features, *frontend.feature_shape)))
    except InputError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError("model", cfg, str(exc)) from exc


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
