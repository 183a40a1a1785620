"""A camera whose frames are the design's frame: ``camera.locate`` (a `hil locate` file) in a bench config.

A real camera's frame is larger than the design's (:attr:`OpticalSystem.frame_shape`), holds it
somewhere, rotated, at a magnification that is no whole number of pixels. `hil locate`
(:mod:`calibration.locate`) measures where: an affine map design -> camera frame and the region of
interest that holds the design frame. :class:`LocatedCamera` wraps the bench's camera and delivers,
for every camera frame, the design frame: the camera's region of interest is set to the grid's
(on the device where the backend can, :attr:`drivers.camera.Camera.roi`), and each frame is resampled
through the located map (:class:`FrameMap`). Calibration, capture and the calibration layer then see
the frame they were designed for; the geometry stage refines the located map's residue (distortion,
fabrication shifts) as it does on a bench built to the design.

Why resample the frames (and not teach every stage the camera's own pixels): the calibration fit,
the layer and training model the design frame's pixels; one resampling at the bench keeps them one
model. The alternative, fitting through a resampling forward model in camera pixels, would be more
exact for the noise but would put the placement into every stage.

The resampling (light-conserving)
---------------------------------
A design pixel ``i`` covers ``|det A|`` camera pixels (``A``: the map's linear part). It is integrated
over its area: ``k x k`` sample points (``k`` = :data:`SUBSAMPLES` per camera pixel width), each in
the camera pixel that holds it, weigh the camera pixels by the part of the design pixel they cover::

    D_i = black + sum_j w_ij (F_j - black),        sum_j w_ij = |det A|

so a design pixel holds the light its area received (the lab renderer, :mod:`simulator.placement`,
does the reverse), and the photometry (electrons per DN, photons per second) stays the camera's. No
interpolation kernel widens a spot beyond the camera pixels it lit: the only blur is the camera's
own pixels', ``1 / magnification`` of a design pixel, so a magnification of 2 or more keeps the PSFs
close to the design's sampling. Frames are rounded to whole DN (uint32); a design pixel fed by a
saturated camera pixel is set to :attr:`~drivers.camera.Camera.saturation_dn`.

The noise
---------
A camera pixel's reading has variance ``S_j / g + r^2`` (shot noise at gain ``g`` e-/DN, read noise
``r`` DN). The design pixel's is ``sum_j w_ij^2 (S_j / g + r^2) ~ c_i D_i / g + d_i r^2`` with
``c_i = sum_j w_ij^2 / sum_j w_ij`` (< 1: neighbouring design pixels share camera pixels) and
``d_i = sum_j w_ij^2``. Their means over the frame are in :meth:`LocatedCamera.settings`
(``located.shot_noise_factor`` c, ``located.read_noise_factor`` d); the calibration's noise model
(:meth:`calibration.api.Calibration.pixel_noise`) uses them so that the fit's weights are the
variances of these frames and its photometry is still the camera's gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onn_core.config import load_yaml
from onn_core.errors import ConfigError

from .camera import Camera
from .errors import DeviceFault
from .frames import RawFrame

__all__ = ["FrameMap", "LOCATION_SCHEMA", "LocatedCamera", "Location", "load_location", "locate_camera"]

#: Sample points per camera pixel width and axis that integrate a design pixel (module docstring).
SUBSAMPLES = 4
#: Sample points handled at once while building a :class:`FrameMap` (bounds its memory, ~100 MB).
SAMPLES_PER_CHUNK = 2_000_000
#: Schema and version of the files `hil locate` writes (:class:`calibration.locate.GridLocation`).
LOCATION_SCHEMA, LOCATION_VERSION = "onn-hil.grid-location", 1


@dataclass(frozen=True)
class Location:
    """What a bench needs of a `hil locate` file (pixel coordinates ``(row, col)``, centres at integers).

    Attributes
    ----------
    frame_shape, design_shape : (int, int)
        The located camera frames' and the design frame's (rows, cols).
    design_to_frame : ndarray (2, 3)
        ``frame = A @ design + b``, as ``[A | b]``.
    roi : (int, int, int, int)
        ``(row0, col0, rows, cols)`` of the located frames that holds the design frame.
    """

    frame_shape: tuple[int, int]
    design_shape: tuple[int, int]
    design_to_frame: np.ndarray
    roi: tuple[int, int, int, int]

    @property
    def magnification(self) -> float:
        """Camera pixels per design pixel (the square root of the area ratio)."""
        return math.sqrt(abs(np.linalg.det(self.design_to_frame[:, :2])))


def load_location(path, field: str = "camera.locate") -> Location:
    """Read a `hil locate` file; a missing or foreign file raises :class:`ConfigError` naming ``field``."""
    if not Path(path).is_file():
        raise ConfigError(field, str(path), "a `hil locate` file (write it first: hil locate BENCH --optics OPTICS "
                          "-o FILE)")
    data = load_yaml(path) or {}
    if data.get("schema") != LOCATION_SCHEMA or data.get("version") != LOCATION_VERSION:
        raise ConfigError(field, str(path), f"a `hil locate` file (schema {LOCATION_SCHEMA!r} version "
                          f"{LOCATION_VERSION}), got schema {data.get('schema')!r}")
    try:
        affine = np.asarray(data["design_to_frame"], dtype=np.float64).reshape(2, 3)
        location = Location(tuple(int(v) for v in data["frame_shape"]), tuple(int(v) for v in data["design_shape"]),
                            affine, tuple(int(v) for v in data["roi"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(field, str(path), f"a `hil locate` file with frame_shape, design_shape, design_to_frame "
                          f"and roi ({exc})") from None
    if len(location.frame_shape) != 2 or len(location.design_shape) != 2 or len(location.roi) != 4 \
            or not np.isfinite(affine).all() or location.magnification == 0:
        raise ConfigError(field, str(path), "a `hil locate` file of one invertible 2-D map")
    return location


class FrameMap:
    """The light-conserving resampling of a camera region into the design frame (module docstring).

    Parameters
    ----------
    design_to_region : array (2, 3)
        ``region = A @ design + b``: design pixels to pixels of the region (its top-left pixel at (0, 0)).
    design_shape, region_shape : (int, int)
        (rows, cols) of the design frame and of the camera region.

    Attributes
    ----------
    design, source, weight : ndarray (n,)
        The sparse weights ``w_ij``: design pixel (flat index), region pixel (flat index), weight.
    area : float
        ``|det A|``: camera pixels per design pixel (``sum_j w_ij`` of a design pixel inside the region).
    """

    def __init__(self, design_to_region, design_shape, region_shape):
        affine = np.asarray(design_to_region, dtype=np.float64).reshape(2, 3)
        self.design_shape = tuple(int(v) for v in design_shape)
        self.region_shape = tuple(int(v) for v in region_shape)
        self.area = float(abs(np.linalg.det(affine[:, :2])))
        k = SUBSAMPLES * max(1, math.ceil(math.sqrt(self.area)))
        sub = (np.arange(k) + 0.5) / k - 0.5
        rows, cols = self.design_shape
        pixels = self.region_shape[0] * self.region_shape[1]
        keys, counts = [], []
        step = max(1, SAMPLES_PER_CHUNK // (cols * k * k))
        for first in range(0, rows, step):  # design rows in chunks: memory stays bounded
            q = np.meshgrid(np.arange(first, min(first + step, rows)), np.arange(cols), sub, sub, indexing="ij")
            points = np.stack([(q[0] + q[2]).ravel(), (q[1] + q[3]).ravel()], axis=-1) @ affine[:, :2].T + affine[:, 2]
            r, c = np.rint(points[:, 0]).astype(np.int64), np.rint(points[:, 1]).astype(np.int64)
            inside = (r >= 0) & (c >= 0) & (r < self.region_shape[0]) & (c < self.region_shape[1])
            design = (q[0] * cols + q[1]).astype(np.int64).ravel()[inside]
            key, count = np.unique(design * pixels + r[inside] * self.region_shape[1] + c[inside], return_counts=True)
            keys.append(key)
            counts.append(count)
        self.weight = np.concatenate(counts) * (self.area / k**2)
        self.design, self.source = np.divmod(np.concatenate(keys), pixels)

    @property
    def size(self) -> int:
        return self.design_shape[0] * self.design_shape[1]

    def _sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.design, values, minlength=self.size).reshape(self.design_shape)

    def apply(self, region: np.ndarray) -> np.ndarray:
        """``sum_j w_ij x_j``: a region image (rows, cols) -> the design frame (float64)."""
        return self._sum(self.weight * np.asarray(region, dtype=np.float64).ravel()[self.source])

    def touched(self, mask: np.ndarray) -> np.ndarray:
        """Design pixels fed by any ``True`` pixel of a region mask (bool)."""
        return self._sum(np.asarray(mask, dtype=np.float64).ravel()[self.source]) > 0

    def weight_sums(self) -> np.ndarray:
        """``sum_j w_ij`` per design pixel (``area`` inside the region, less where it leaves it)."""
        return self._sum(self.weight)

    def noise_factors(self) -> tuple[float, float]:
        """Means over the design frame of ``c_i = sum w^2 / sum w`` and ``d_i = sum w^2`` (module docstring)."""
        squares, sums = self._sum(self.weight**2), self.weight_sums()
        fed = sums > 0
        return float(np.mean(squares[fed] / sums[fed])), float(np.mean(squares[fed]))


class LocatedCamera(Camera):
    """A camera delivering the design frame: the wrapped camera's frames, cropped to the located grid and
    resampled into the design's frame shape (module docstring).

    Parameters
    ----------
    camera : Camera
        The bench's camera (closed with this one). Its region of interest is set to ``grid_roi``.
    design_to_sensor : array (2, 3)
        The located map, design pixels -> sensor pixels of ``camera``.
    design_shape : (int, int)
        The design frame's (rows, cols).
    grid_roi : (int, int, int, int)
        The sensor region ``(row0, col0, rows, cols)`` that holds the design frame.
    source : str, optional
        Where the location came from (a file name, for the settings).
    """

    def __init__(self, camera: Camera, design_to_sensor, design_shape, grid_roi, *, source: str | None = None):
        self.inner = camera
        rows, cols = camera.sensor_shape
        r0, c0, nr, nc = grid_roi
        # one more pixel on every side: the bilinear neighbours of the design frame's edge samples
        region = (max(r0 - 1, 0), max(c0 - 1, 0))
        region += (min(r0 + nr + 1, rows) - region[0], min(c0 + nc + 1, cols) - region[1])
        camera.roi = region
        affine = np.asarray(design_to_sensor, dtype=np.float64).reshape(2, 3).copy()
        affine[:, 2] -= region[:2]
        self.map = FrameMap(affine, design_shape, region[2:])
        self.design_to_sensor = np.asarray(design_to_sensor, dtype=np.float64).reshape(2, 3)
        self.source = source
        self._shot_factor, self._read_factor = self.map.noise_factors()
        black, top = camera.black_level, camera.saturation_dn
        saturation = math.ceil(black + float(self.map.weight_sums().max()) * (top - black))
        super().__init__(sensor_shape=design_shape, bit_depth=camera.bit_depth,
                         pixel_pitch_m=camera.pixel_pitch_m * math.sqrt(self.map.area),
                         exposure_s=camera.exposure_s, exposure_limits_s=camera.exposure_limits_s, dtype=np.uint32,
                         gain=camera.gain, gain_limits=camera.gain_limits, black_level=black,
                         trigger_mode=camera.trigger_mode, saturation_dn=saturation, name=camera.name,
                         clock=camera.clock, default_timeout_s=camera.default_timeout_s)

    @property
    def optics(self):
        """The wrapped camera's optical system, if it is simulated (None otherwise)."""
        return getattr(self.inner, "optics", None)

    def _snap(self, timeout_s: float) -> RawFrame:
        inner = self.inner
        frame = inner.snap(max(timeout_s - inner.exposure_s, 1e-6))
        image = frame.image
        if image.ndim != 2:
            raise DeviceFault(f"a located camera maps monochrome frames, {inner.name} delivered {image.shape}",
                              device=self.name)
        black = inner.black_level
        mapped = black + self.map.apply(image.astype(np.float64) - black)
        mapped = np.clip(np.rint(mapped), 0, self.saturation_dn)
        mapped[self.map.touched(image >= inner.saturation_dn)] = self.saturation_dn
        timestamp = frame.timestamp_s if frame.timing == "device" else None
        return RawFrame(mapped.astype(self.dtype), timestamp, frame.index, dict(frame.meta))

    def _set_exposure(self, exposure_s: float) -> float:
        self.inner.exposure_s = exposure_s
        return self.inner.exposure_s

    def _set_gain(self, gain: float) -> float:
        self.inner.gain = gain
        return self.inner.gain

    def _set_black_level(self, black_level: float) -> float:
        self.inner.black_level = black_level
        return self.inner.black_level

    def _set_trigger_mode(self, mode: str) -> None:
        self.inner.trigger_mode = mode

    def _flush(self) -> int:
        return self.inner.flush()

    def _close(self) -> None:
        self.inner.close()

    def _extra_settings(self) -> dict:
        inner = self.inner
        return {"located": {
            "source": self.source, "design_to_sensor": self.design_to_sensor.tolist(),
            "magnification": math.sqrt(self.map.area), "shot_noise_factor": self._shot_factor,
            "read_noise_factor": self._read_factor, "camera_backend": type(inner).__name__,
            "camera_sensor_shape": list(inner.sensor_shape), "camera_roi": list(inner.roi),
            "camera_roi_mode": inner.roi_mode, "camera_saturation_dn": inner.saturation_dn}}


def locate_camera(camera: Camera, location: Location, *, source: str | None = None,
                  field: str = "camera.locate", roi_field: str | None = None) -> LocatedCamera:
    """``camera`` delivering the design frame of ``location`` (:class:`LocatedCamera`).

    The location's coordinates are the camera's full sensor's (it was located without a region of
    interest) or, when its frame shape is that of the camera's current region, that region's.

    Raises
    ------
    ConfigError
        The location was measured on frames of another shape (naming ``field``), or the camera's region
        of interest does not hold the located grid (naming ``roi_field``, default ``field``).
    """
    sensor, (r0, c0, nr, nc) = tuple(camera.sensor_shape), camera.roi
    if location.frame_shape == sensor:
        offset = (0, 0)
    elif location.frame_shape == (nr, nc):
        offset = (r0, c0)
    else:
        raise ConfigError(field, source, f"a location measured on this camera's frames ({sensor[0]} x {sensor[1]}, "
                          f"or its region of interest's {nr} x {nc}); it was measured on "
                          f"{location.frame_shape[0]} x {location.frame_shape[1]} frames: locate again")
    g0, gc0, gr, gc = location.roi
    grid = (g0 + offset[0], gc0 + offset[1], gr, gc)
    if grid[0] < r0 or grid[1] < c0 or grid[0] + gr > r0 + nr or grid[1] + gc > c0 + nc:
        where = roi_field or field
        raise ConfigError(where, [r0, c0, nr, nc] if roi_field else source,
                          f"a region of interest holding the located grid (rows {grid[0]}..{grid[0] + gr - 1}, cols "
                          f"{grid[1]}..{grid[1] + gc - 1} of the sensor, from {source or 'the location'})")
    affine = location.design_to_frame.copy()
    affine[:, 2] += offset
    return LocatedCamera(camera, affine, location.design_shape, grid, source=source)
