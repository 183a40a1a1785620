"""The geometry stage's result, :class:`GeometryCalibration`: per tile a homography (display -> frame)
and the tile's offset, stored with the calibration codec (:mod:`calibration.hdf5`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onn_core.errors import InputError

from ..errors import CalibrationFileError
from ..hdf5 import read_dataclass, write_dataclass

#: Schema name and version written to (and required from) an HDF5 group.
SCHEMA = "onn_hil.calibration.geometry"
SCHEMA_VERSION = 1


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Homography ``h`` (3, 3) applied to ``points`` (n, 2) (row, col)."""
    mapped = np.c_[points, np.ones(len(points))] @ h.T
    return mapped[:, :2] / mapped[:, 2:]


@dataclass(frozen=True)
class GeometryCalibration:
    """Where each sub-optic images the display: per tile a homography and the tile's offset.

    Coordinates are (row, col) with integer values at pixel centres (see the module docstring).

    Attributes
    ----------
    homographies : (P, 3, 3) float64
        Display (row, col) -> frame (row, col) of the spot's intensity centroid, per tile (H[2, 2] = 1).
    nominal_homographies : (P, 3, 3) float64
        The same for the nominal system's predicted frames.
    offsets_px : (P, 2) float64
        (dy, dx): mean shift of the tile's spots from their nominal positions (sensor pixels).
    rms_px : (P,) float64
        Reprojection RMS of the inlier spots (sensor pixels).
    inliers : (P,) int64
        Spots the homography was fitted to.
    display_points : (M, 2) float64
        The dots shown (display row, col), all patterns.
    sensor_points : (P, M, 2) float64
        Their measured spot centroids per tile (NaN where a spot was too weak to use).
    inlier_mask : (P, M) bool
    snr : (P,) float64
        Median spot signal-to-noise ratio per tile (window sum over its noise).
    nominal_origins_px : (P, 2) int64
        Top-left pixel of each tile in the nominal layout.
    tile_shape : (int, int)
    image_shape, frame_shape : (int, int)
        Display (H, W) and camera frame (rows, cols).
    image : (rows, cols) float32
        Sum of the dark-subtracted pattern frames (DN), for overlays.
    exposure_s : float
    averages : int
    """

    homographies: np.ndarray
    nominal_homographies: np.ndarray
    offsets_px: np.ndarray
    rms_px: np.ndarray
    inliers: np.ndarray
    display_points: np.ndarray
    sensor_points: np.ndarray
    inlier_mask: np.ndarray
    snr: np.ndarray
    nominal_origins_px: np.ndarray
    tile_shape: tuple[int, int]
    image_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    image: np.ndarray
    exposure_s: float
    averages: int

    def __post_init__(self):
        p, m = self.sensor_points.shape[:2]
        expected = {"homographies": (p, 3, 3), "nominal_homographies": (p, 3, 3), "offsets_px": (p, 2),
                    "rms_px": (p,), "inliers": (p,), "display_points": (m, 2), "sensor_points": (p, m, 2),
                    "inlier_mask": (p, m), "snr": (p,), "nominal_origins_px": (p, 2),
                    "image": tuple(self.frame_shape)}
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise InputError(f"GeometryCalibration.{name} must have shape {shape}, "
                                 f"got {np.shape(getattr(self, name))}")

    @property
    def num_tiles(self) -> int:
        return len(self.offsets_px)

    def project(self, tile: int, display_points) -> np.ndarray:
        """Frame (row, col) where tile ``tile`` images display points ``(n, 2)`` (row, col)."""
        return apply_homography(self.homographies[tile], np.asarray(display_points, dtype=np.float64))

    def residuals_px(self) -> np.ndarray:
        """(P, M, 2): measured spot centroids minus the fitted homography's projection (NaN where unused)."""
        return np.stack([self.sensor_points[p] - self.project(p, self.display_points) for p in range(self.num_tiles)])

    def tile_origins_px(self) -> np.ndarray:
        """(P, 2) float64: the fitted (sub-pixel) top-left of each tile, nominal origin + offset."""
        return self.nominal_origins_px + self.offsets_px

    def summary(self) -> dict:
        """Plain figures for logs and reports."""
        return {
            "tiles": self.num_tiles,
            "points_per_tile": int(len(self.display_points)),
            "rms_px_max": float(self.rms_px.max()),
            "rms_px_mean": float(self.rms_px.mean()),
            "inliers_min": int(self.inliers.min()),
            "snr_min": float(self.snr.min()),
            "offset_px_max": float(np.abs(self.offsets_px).max()),
            "offsets_px": self.offsets_px.round(4).tolist(),
            "exposure_s": self.exposure_s,
            "averages": self.averages,
        }

    # ---------------------------------------------------------------------------------------- HDF5
    def to_hdf5(self, group) -> None:
        """Write into the empty h5py ``group`` with the calibration codec (:mod:`calibration.hdf5`)."""
        write_dataclass(group, self, SCHEMA, SCHEMA_VERSION)

    @classmethod
    def from_hdf5(cls, group) -> "GeometryCalibration":
        """Read what :meth:`to_hdf5` wrote; a foreign, other-version, incomplete, corrupted or
        inconsistent group raises :class:`~calibration.errors.CalibrationFileError` naming what is wrong."""
        try:
            return read_dataclass(cls, group, SCHEMA, SCHEMA_VERSION)
        except InputError as exc:
            raise CalibrationFileError(f"HDF5 group {group.name!r} is inconsistent: {exc}") from exc
