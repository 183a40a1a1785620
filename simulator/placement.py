"""A lab-like camera: the optical system's image lands somewhere on a larger sensor.

A real camera does not deliver the design's frame (:attr:`OpticalSystem.frame_shape`, e.g. 164 x 164):
its sensor has its own format (e.g. 1024 x 1280), and the design's tiles land somewhere on it,
rotated, at a magnification that is no whole number of pixels, with some lens distortion. The sensor
has its own fixed pattern (PRNU, DSNU, hot pixels). :class:`Placement` describes where the image lands;
:class:`LabRenderer` renders the frames of such a camera from an :class:`~simulator.system.OpticalSystem`.

Coordinates and conventions
---------------------------
Points are ``(row, col)`` in pixels, a pixel's centre at integer coordinates (pixel ``(i, j)`` covers
``[i - 1/2, i + 1/2] x [j - 1/2, j + 1/2]``). A design-frame point ``q`` lands on the camera at::

    u = center_px + magnification * R(rotation_rad) * F * (q - q_c)      (ideal, undistorted)
    d = c + (u - c) * (1 + radial_k1 * |u - c|^2 / R_s^2)                 (Brown radial distortion)

with ``q_c = ((H - 1) / 2, (W - 1) / 2)`` the design frame's centre, ``F`` the mirror (``mirror: true``
flips the design's columns), ``R(a)`` the rotation that turns the column axis towards the row axis by
``a`` (clockwise as displayed with row 0 at the top), ``c`` the sensor's centre and ``R_s`` half its
diagonal (so ``radial_k1`` is the relative radial stretch at the sensor's corner).

Photometry: the design frame holds photons per second per design pixel; the lab frame holds photons
per second per camera pixel. Light is conserved: a camera pixel collects the design frame's photon
density (bilinear interpolant) times the design area it covers, ``|dq/dd| = 1 / (m^2 (1 + k rho^2)
(1 + 3 k rho^2))``; so per-pixel signals scale as ``1 / magnification^2`` and the total is unchanged
(what lands outside the sensor is lost). Minified images (``magnification < 1``) are integrated over
each camera pixel by ``ceil(1 / magnification)^2`` sub-samples (area-aware, no aliasing); at the
identity placement the lab frame is exactly the design frame.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from onn_core.config import build
from onn_core.errors import ConfigError, InputError
from .sensor import SensorModel
from .validation import check_tensor

__all__ = ["FieldError", "LabRenderer", "Placement", "SensorDefects", "lab_renderer"]

#: Largest |radial_k1| accepted: the distortion stays monotonic and invertible over the sensor.
MAX_RADIAL_K1 = 0.1
#: Most fixed-point iterations that undo the radial distortion (they stop once a step is below 1e-10 px;
#: the error shrinks ~ (3 k)^n, below 1e-12 px for k <= 0.1).
_UNDISTORT_ITERATIONS = 30


class FieldError(InputError):
    """A bad value of one field (``field``, ``value``, ``expected``), so a config error can name its YAML path."""

    def __init__(self, field: str, value, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class Placement:
    """Where the design frame lands on a lab camera's sensor (module docstring for the conventions).

    Parameters
    ----------
    sensor_shape : (int, int)
        The camera sensor's (rows, cols) in pixels.
    center_px : (float, float) or None
        (row, col) on the sensor where the design frame's centre lands (pixels); None: the sensor's centre.
    rotation_rad : float
        Rotation of the design frame on the sensor (rad).
    magnification : float
        Camera pixels per design-frame pixel (> 0; need not be a whole number).
    mirror : bool
        The image is mirrored (the design's columns flipped) before the rotation.
    radial_k1 : float
        Radial distortion at the sensor's corner (|k1| <= 0.1; > 0 pincushion, < 0 barrel).
    """

    sensor_shape: tuple[int, int] = (1024, 1280)
    center_px: tuple[float, float] | None = None
    rotation_rad: float = 0.0
    magnification: float = 1.0
    mirror: bool = False
    radial_k1: float = 0.0

    def __post_init__(self):
        shape = self.sensor_shape
        if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in shape)):
            raise FieldError("sensor_shape", shape, "two ints >= 2 (rows, cols)")
        object.__setattr__(self, "sensor_shape", tuple(shape))
        if self.center_px is not None:
            if len(self.center_px) != 2 or not all(math.isfinite(float(v)) for v in self.center_px):
                raise FieldError("center_px", self.center_px, "null or two finite numbers (row, col)")
            object.__setattr__(self, "center_px", tuple(float(v) for v in self.center_px))
        if not math.isfinite(self.rotation_rad):
            raise FieldError("rotation_rad", self.rotation_rad, "finite")
        if not (math.isfinite(self.magnification) and self.magnification > 0):
            raise FieldError("magnification", self.magnification, "a number > 0 (camera pixels per design pixel)")
        if not abs(self.radial_k1) <= MAX_RADIAL_K1:
            raise FieldError("radial_k1", self.radial_k1, f"in [-{MAX_RADIAL_K1}, {MAX_RADIAL_K1}] (invertible over the sensor)")

    @classmethod
    def random(cls, seed: int, design_shape, sensor_shape=(1024, 1280), *, magnification=(0.5, 3.0),
               max_rotation_rad: float = math.radians(15), max_radial_k1: float = 0.02) -> "Placement":
        """A seeded random placement (the test bed of ``hil locate``): magnification uniform in the given
        range, rotation uniform within +-``max_rotation_rad``, mirrored half the time, ``radial_k1`` uniform
        within +-``max_radial_k1``, the centre anywhere the whole (rotated) design frame stays on the sensor."""
        rng = np.random.default_rng(seed)
        m = rng.uniform(*magnification)
        half = math.hypot(*design_shape) / 2 * m + 4  # the design frame's half-diagonal on the sensor, + margin
        if 2 * half > min(sensor_shape):
            raise InputError(f"a {design_shape} design frame at magnification {m:.3g} does not fit on a {sensor_shape} sensor")
        centre = (rng.uniform(half, sensor_shape[0] - half), rng.uniform(half, sensor_shape[1] - half))
        rotation = rng.uniform(-max_rotation_rad, max_rotation_rad)
        mirror = bool(rng.integers(2))
        return cls(tuple(sensor_shape), centre, rotation, m, mirror, rng.uniform(-max_radial_k1, max_radial_k1))

    @classmethod
    def identity(cls, design_shape) -> "Placement":
        """The placement whose lab frame is the design frame itself."""
        return cls(sensor_shape=tuple(int(v) for v in design_shape))

    # ----------------------------------------------------------------------------- geometry
    @property
    def center(self) -> np.ndarray:
        """(row, col) where the design frame's centre lands (pixels)."""
        rows, cols = self.sensor_shape
        return np.array(self.center_px if self.center_px is not None else ((rows - 1) / 2, (cols - 1) / 2))

    def linear(self) -> np.ndarray:
        """The 2 x 2 matrix ``magnification R F`` acting on (row, col) offsets from the design's centre."""
        c, s = math.cos(self.rotation_rad), math.sin(self.rotation_rad)
        rotation = np.array([[c, s], [-s, c]])  # (row, col): the column axis turns towards the row axis
        flip = np.diag([1.0, -1.0]) if self.mirror else np.eye(2)
        return self.magnification * rotation @ flip

    def _sensor_centre_and_radius(self) -> tuple[np.ndarray, float]:
        rows, cols = self.sensor_shape
        return np.array([(rows - 1) / 2, (cols - 1) / 2]), math.hypot(rows, cols) / 2

    def _radial_factor(self, u):
        centre, radius = self._sensor_centre_and_radius()
        rho2 = ((u[..., 0] - centre[0]) ** 2 + (u[..., 1] - centre[1]) ** 2) / radius**2
        return 1 + self.radial_k1 * rho2, rho2

    def _undistort(self, d):
        """Ideal points ``u`` of distorted points ``d`` (..., 2) (numpy or torch), by fixed-point iteration.
        Each point stops at its own first step below 1e-10 px, so its result does not depend on which other
        points are undone with it (a region of interest warps exactly as the whole sensor does)."""
        if self.radial_k1 == 0:
            return d
        centre, _ = self._sensor_centre_and_radius()
        where = np.where
        if isinstance(d, torch.Tensor):
            centre, where = torch.as_tensor(centre, dtype=d.dtype, device=d.device), torch.where
        u = d
        done = abs(d[..., 0]) < 0  # all False, numpy or torch
        for _ in range(_UNDISTORT_ITERATIONS):
            factor, _ = self._radial_factor(u)
            step = centre + (d - centre) / factor[..., None]
            moved = abs(step - u)
            u = where(done[..., None], u, step)
            done = done | ((moved[..., 0] < 1e-10) & (moved[..., 1] < 1e-10))
            if bool(done.all()):
                break
        return u

    def to_camera(self, points, design_shape) -> np.ndarray:
        """Design-frame points (..., 2) (row, col) -> where they land on the camera (..., 2), pixels."""
        q = np.asarray(points, dtype=np.float64)
        q_c = (np.asarray(design_shape, dtype=np.float64) - 1) / 2
        u = self.center + (q - q_c) @ self.linear().T
        centre, _ = self._sensor_centre_and_radius()
        factor, _ = self._radial_factor(u)
        return centre + (u - centre) * factor[..., None]

    def to_design(self, points, design_shape) -> np.ndarray:
        """Camera points (..., 2) (row, col) -> the design-frame points that land there (inverse of :meth:`to_camera`)."""
        u = self._undistort(np.asarray(points, dtype=np.float64))
        q_c = (np.asarray(design_shape, dtype=np.float64) - 1) / 2
        return q_c + (u - self.center) @ np.linalg.inv(self.linear()).T

    def pixel_pitch_m(self, design_pitch_m: float) -> float:
        """The camera's pixel pitch (m) when a design-frame pixel is ``design_pitch_m``, at the centre."""
        return design_pitch_m / self.magnification

    # ----------------------------------------------------------------------------- resampling
    def _footprint(self, design_shape) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the sensor window that can receive light from the design frame."""
        h, w = design_shape
        edge = np.array([[-1.5, -1.5], [-1.5, w + 0.5], [h + 0.5, -1.5], [h + 0.5, w + 0.5]])
        along = np.linspace(0, 1, 33)[:, None]  # the edges bow under distortion: sample them
        outline = np.concatenate([a + along * (b - a) for a, b in zip(edge, np.roll(edge, 1, axis=0))])
        land = self.to_camera(outline, design_shape)
        rows, cols = self.sensor_shape
        r0, c0 = (max(0, math.floor(v) - 1) for v in land.min(axis=0))
        r1, c1 = (min(n, math.ceil(v) + 2) for v, n in zip(land.max(axis=0), (rows, cols)))
        return r0, max(r0, r1), c0, max(c0, c1)

    def warp(self, values: torch.Tensor, window=None) -> torch.Tensor:
        """Resample design-frame quantities per pixel (*batch, H, W) (e.g. photons/s per pixel) onto the
        sensor, (*batch, rows, cols), conserving their sum (module docstring); differentiable in ``values``.
        ``window``: ``(row0, col0, rows, cols)`` of the sensor to compute (a camera's region of interest;
        default the whole sensor): the result is exactly that crop of the whole sensor's, at its share of
        the cost."""
        check_tensor("values", values, min_ndim=2)
        (h, w), batch = values.shape[-2:], values.shape[:-2]
        if h < 2 or w < 2:
            raise InputError(f"values must be at least 2 x 2 pixels, got {tuple(values.shape)}")
        window = self._window(window)
        wr0, wc0, rows, cols = window
        out = values.new_zeros(*batch, rows, cols)
        (r0, r1, c0, c1), n, grid, jacobian = _sampling(self, h, w, window)
        if grid is None:
            return out
        flat = values.reshape(-1, 1, h, w)
        grid, jacobian = grid.to(values.device), jacobian.to(values.device)
        sampled = F.grid_sample(flat.to(grid.dtype), grid.expand(flat.shape[0], *grid.shape[1:]), mode="bilinear",
                                padding_mode="zeros", align_corners=True)[:, 0] * jacobian
        pixels = sampled.reshape(-1, r1 - r0, n, c1 - c0, n).mean(dim=(2, 4)).to(values.dtype)
        out[..., r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0] = pixels.reshape(*batch, r1 - r0, c1 - c0)
        return out

    def _window(self, window) -> tuple[int, int, int, int]:
        """``window`` (row0, col0, rows, cols) checked to lie on the sensor; None: the whole sensor."""
        rows, cols = self.sensor_shape
        if window is None:
            return 0, 0, rows, cols
        r0, c0, nr, nc = (int(v) for v in window)
        if r0 < 0 or c0 < 0 or nr < 1 or nc < 1 or r0 + nr > rows or c0 + nc > cols:
            raise InputError(f"window {tuple(window)!r} must lie inside the {rows}x{cols} sensor with rows, cols >= 1")
        return r0, c0, nr, nc


@functools.lru_cache(maxsize=8)
def _sampling(placement: Placement, h: int, w: int, window: tuple[int, int, int, int]):
    """Where :meth:`Placement.warp` samples a (h, w) design frame for the sensor ``window`` (row0, col0, rows,
    cols) (cached per placement and window): the sensor pixels ``(r0, r1, c0, c1)`` that can receive light
    (inside the window), sub-samples per axis ``n``, the ``grid_sample`` grid (1, rows n, cols n, 2) and the
    area factor ``|dq/dd|`` of every sub-sample (float64, CPU); grid None when no light reaches the window.
    Every sub-sample is computed on its own, so a window's values are exactly those of the whole sensor."""
    r0, r1, c0, c1 = placement._footprint((h, w))
    wr0, wc0, rows, cols = window
    r0, r1, c0, c1 = max(r0, wr0), min(r1, wr0 + rows), max(c0, wc0), min(c1, wc0 + cols)
    r1, c1 = max(r0, r1), max(c0, c1)
    n = math.ceil(1 / placement.magnification - 1e-9)
    if r1 == r0 or c1 == c0:
        return (r0, r1, c0, c1), n, None, None
    dtype = torch.float64
    sub = (torch.arange(n, dtype=dtype) + 0.5) / n - 0.5
    rr = (torch.arange(r0, r1, dtype=dtype)[:, None] + sub).reshape(-1)
    cc = (torch.arange(c0, c1, dtype=dtype)[:, None] + sub).reshape(-1)
    u = placement._undistort(torch.stack(torch.meshgrid(rr, cc, indexing="ij"), dim=-1))
    factor, rho2 = placement._radial_factor(u)
    jacobian = 1 / (placement.magnification**2 * factor * (1 + 3 * placement.radial_k1 * rho2))
    (a, b), (c, d) = np.linalg.inv(placement.linear()).tolist()
    dr, dc = u[..., 0] - float(placement.center[0]), u[..., 1] - float(placement.center[1])
    qr, qc = a * dr + b * dc + (h - 1) / 2, c * dr + d * dc + (w - 1) / 2  # elementwise (no matmul kernel's blocking)
    grid = torch.stack([qc * (2 / (w - 1)) - 1, qr * (2 / (h - 1)) - 1], dim=-1)[None]
    return (r0, r1, c0, c1), n, grid, jacobian


@dataclass(frozen=True)
class SensorDefects:
    """The lab camera's own fixed pattern (:class:`~simulator.sensor.SensorModel` fields of the same
    names, replacing the optics' sensor's): PRNU ``prnu_rel_std``, DSNU ``dsnu_e_per_s_std`` (e-/s),
    hot pixels ``hot_pixel_fraction`` with ``hot_pixel_dark_current_e_per_s`` extra dark current (e-/s),
    drawn from ``defect_seed``."""

    prnu_rel_std: float = 0.0
    dsnu_e_per_s_std: float = 0.0
    hot_pixel_fraction: float = 0.0
    hot_pixel_dark_current_e_per_s: float = 0.0
    defect_seed: int = 0

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            try:
                dataclasses.replace(SensorModel(), **{name: value})
            except InputError as exc:
                raise FieldError(name, value, str(exc).split(" must be ", 1)[-1].rsplit(", got", 1)[0]) from exc

    def apply(self, sensor: SensorModel) -> SensorModel:
        """``sensor`` with these defects (its own validation names a bad value)."""
        return dataclasses.replace(sensor, **dataclasses.asdict(self))


class LabRenderer:
    """Frames of a lab-like camera: an optical system's photon rates, placed on a larger sensor.

    Parameters
    ----------
    system : OpticalSystem
        The one optical system (design, fabrication errors, display, photometry, sensor).
    placement : Placement
        Where its design frame lands on the sensor.
    defects : SensorDefects or None
        The camera's fixed pattern (None: the optics' sensor's own).
    """

    def __init__(self, system, placement: Placement, defects: SensorDefects | None = None):
        self.system, self.placement = system, placement
        self.sensor = defects.apply(system.sensor) if defects is not None else system.sensor
        self._generator = torch.Generator().manual_seed(system.seed)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.placement.sensor_shape

    def photon_rates(self, gray: torch.Tensor, roi=None) -> torch.Tensor:
        """Expected photons per second on every camera pixel (N, rows, cols) of display gray levels (N, C, H, W)
        (``roi``: only that region (row0, col0, rows, cols) of the sensor, as :meth:`Placement.warp`'s window)."""
        return self.placement.warp(self.system.photon_rate_frame(gray), roi)

    def render(self, gray: np.ndarray, exposure_s: float | None = None, roi=None) -> np.ndarray:
        """One camera frame (rows, cols) uint16 of a display image ``gray`` (H, W) or (H, W, C) of
        unsigned ints over ``exposure_s`` (s; default the optics' reference), with seeded sensor noise
        (a fresh renderer renders the same sequence). Values beyond 0..65535 are clipped.

        ``roi`` ``(row0, col0, rows, cols)``: render only that region of the sensor (a camera's region of
        interest), at its share of the cost. Its expected values (and fixed pattern) are exactly that crop of
        the whole sensor's; its noise is drawn for the region's pixels only, so a noisy region is another
        draw of the same distribution, not the crop of a whole noisy frame."""
        if not isinstance(gray, np.ndarray) or gray.ndim not in (2, 3) or gray.dtype.kind != "u":
            raise InputError(f"gray must be a numpy array (rows, cols) or (rows, cols, channels) of unsigned ints, "
                             f"got {type(gray).__name__} {getattr(gray, 'dtype', '')} {getattr(gray, 'shape', '')}")
        exposure_s = self.system.photometry.exposure_s if exposure_s is None else exposure_s
        window = self.placement._window(roi)
        image = gray[None] if gray.ndim == 2 else np.moveaxis(gray, -1, 0)
        with torch.no_grad():
            rates = self.photon_rates(torch.from_numpy(image.astype(np.int64))[None], window).cpu()
            sensor, photons = self.sensor, rates * exposure_s
            if sensor.has_fixed_pattern:  # the whole sensor's pattern, cropped to the window
                sensor, photons = self._windowed_pattern(photons, window, exposure_s)
            frame = sensor.forward(photons, generator=self._generator, exposure_s=exposure_s)[0]
        return np.clip(np.rint(frame.numpy()), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def _windowed_pattern(self, photons: torch.Tensor, window, exposure_s: float):
        """(sensor, photons) whose :meth:`SensorModel.forward` renders ``window`` of the sensor with the whole
        sensor's fixed pattern cropped to it (the sensor would draw a pattern for the shape it is given): the
        pattern's response and dark current are folded into the photons, and the returned sensor has none.
        Used for the whole sensor too, so a window's expected values are exactly the whole frame's crop."""
        r0, c0, rows, cols = window
        pattern = self.sensor.fixed_pattern(self.frame_shape)
        response = pattern.response[r0:r0 + rows, c0:c0 + cols].to(photons.dtype)
        dark = pattern.dark_current_e_per_s[r0:r0 + rows, c0:c0 + cols].to(photons.dtype)
        qe = self.sensor.quantum_efficiency
        plain = dataclasses.replace(self.sensor, prnu_rel_std=0.0, dsnu_e_per_s_std=0.0, hot_pixel_fraction=0.0,
                                    dead_pixel_fraction=0.0, dark_current_e_per_s=0.0)
        return plain, photons * response + dark * (exposure_s / qe)


def _build(cls, mapping, path: str):
    """``cls`` from a config mapping; a bad value raises ConfigError naming its field's YAML path."""
    try:
        return build(cls, mapping, path)
    except ConfigError as exc:
        cause = exc.__cause__
        if isinstance(cause, FieldError):
            raise ConfigError(f"{path}.{cause.field}", cause.value, cause.expected) from cause
        raise


def lab_renderer(system, placement, defects, path: str = "camera") -> LabRenderer:
    """The :class:`LabRenderer` of a camera config's ``placement`` and ``defects`` mappings (``defects``
    may be None); ConfigError names the bad field (``camera.placement.magnification``)."""
    return LabRenderer(system, _build(Placement, placement, f"{path}.placement"),
                       None if defects is None else _build(SensorDefects, defects, f"{path}.defects"))
