"""Find the design's tile grid in a full camera frame (``hil locate``): where the optical system's image
landed on a real camera, before any finer calibration.

A real camera's frame (e.g. 1024 x 1280) holds the design's frame (:attr:`OpticalSystem.frame_shape`,
e.g. 164 x 164) somewhere, rotated, at a magnification that is no whole number, perhaps mirrored.
:func:`locate_grid` finds it from four displayed patterns (:func:`patterns`): blank, white, the left
half lit, and a grid of dots; :func:`locate` shows them on a bench and calls it.

The steps
---------
1. **Tiles**: white minus blank (3 x 3 median against hot pixels), thresholded; each connected bright
   region is one tile. Exactly as many regions as the design has PSFs, none touching the frame's edge,
   or the grid is refused (blank, saturated, partly outside, another design).
2. **Lattice**: the nearest-neighbour vectors between tile centroids give the grid's rotation (modulo
   90 degrees, taken within +-45) and spacing, hence each region's (row, column) in the grid.
3. **Mirror**: with the left half of the image lit, the light in every tile moves towards the design's
   left; whether that is the camera's "left" (along the grid's column axis) tells a mirror image. A grid
   with empty cells (e.g. 8 tiles on 3 x 3) must agree.
4. **Coarse fit**: a similarity (least squares) from the tiles' light centroids in the nominal design
   frame to those measured.
5. **Dots**: every dot of every tile is found near where the coarse fit puts it (a windowed centroid),
   and an affine map design -> frame is fitted to all of them, each tile with its own translation (a
   fabricated tile is shifted); dots off by more than a design pixel are left out and the map fitted
   again (:func:`_affine_with_tile_shifts`).

The result, :class:`GridLocation`, holds the affine maps both ways (on ``(row, col)`` pixel
coordinates, a pixel's centre at integers), the rotation, magnification and mirror, and the region of
interest that holds the design frame; :meth:`GridLocation.save` writes it as YAML (atomically) for a
bench config to name. A frame in which the grid cannot be found raises :class:`LocateError`, whose
message says what was seen and whose ``annotated`` image (:func:`annotate`) shows it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from drivers.located import LOCATION_SCHEMA, LOCATION_VERSION
from onn_core.errors import ConfigError, HilError, InputError

log = logging.getLogger(__name__)

__all__ = ["GridLocation", "LocateError", "annotate", "locate", "locate_grid", "locate_into", "nominal_system",
           "patterns"]

SCHEMA, VERSION = LOCATION_SCHEMA, LOCATION_VERSION  # what a bench's camera.locate reads (drivers.located)
#: Threshold of the tile mask, as a fraction of the brightest (median-filtered) white signal.
TILE_THRESHOLD = 0.15
#: Least peak signal, in robust noise sigmas, for a frame to count as lit.
MIN_SNR = 10.0
#: Fewest pixels of a bright region that can be a tile (smaller ones are noise or hot pixels).
MIN_REGION_PX = 9
#: Largest fraction of the lit pixels that may be saturated.
MAX_SATURATED_FRACTION = 0.01
#: Largest deviation of a tile from the fitted lattice, in lattice spacings (below 0.5: each region still
#: rounds to one cell). A tile's light centroid sits off its centre by its PSF's: a trained design's
#: scattered signed-kernel parts put some 0.3 spacings off (examples/run_lab_sim.yaml).
LATTICE_TOLERANCE = 0.4
#: Largest RMS residual of the dots' affine fit, in design pixels (beyond it: not this design).
MAX_RESIDUAL_DESIGN_PX = 0.75
#: F ratio above which the tiles' own translations count as seen (:func:`_affine_with_tile_shifts`).
TILE_SHIFT_F = 4.0
#: Passes that leave out the dots the map does not fit (:func:`locate_grid`).
OUTLIER_PASSES = 3
#: Centroid iterations that re-centre each dot's window.
DOT_ITERATIONS = 3


class LocateError(HilError):
    """The grid was not found; the message says what was seen, ``annotated`` (RGB uint8) shows it."""

    def __init__(self, message: str, annotated: np.ndarray | None = None):
        super().__init__(message)
        self.annotated = annotated


# ============================================================================================ patterns
def dot_spacing(kernel_size: int) -> int:
    """Display pixels between the dots: their images (PSF support ``kernel_size``) stay 3 pixels apart, so a
    window of radius ``(spacing + 1) / 2`` around a dot holds its whole image and none of its neighbours'."""
    return kernel_size + 3


def dot_positions(image_shape, kernel_size: int) -> np.ndarray:
    """Display pixels (n, 2) (row, col) of the dot pattern: a centred grid :func:`dot_spacing` apart."""
    spacing = dot_spacing(kernel_size)
    axes = []
    for size in image_shape:
        count = max(1, (size - 1) // spacing + 1)
        start = (size - 1 - (count - 1) * spacing) // 2
        axes.append(start + spacing * np.arange(count))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)


def patterns(image_shape, kernel_size: int, levels: int = 256) -> dict[str, np.ndarray]:
    """The displayed images (H, W) uint8/uint16: ``dark`` (blank), ``white``, ``left`` (the left half lit)
    and ``dots`` (:func:`dot_positions`), at the top gray level ``levels - 1``."""
    h, w = image_shape
    dtype = np.uint8 if levels <= 256 else np.uint16
    top = levels - 1
    images = {name: np.zeros((h, w), dtype) for name in ("dark", "white", "left", "dots")}
    images["white"][:] = top
    images["left"][:, : w // 2] = top
    rows, cols = dot_positions((h, w), kernel_size).T
    images["dots"][rows, cols] = top
    return images


# ============================================================================================ result
@dataclass(frozen=True)
class GridLocation:
    """Where the design frame lies in a camera frame (pixel coordinates ``(row, col)``).

    Attributes
    ----------
    frame_shape, design_shape : (int, int)
        The camera frame's and the design frame's (rows, cols).
    design_to_frame : ndarray (2, 3)
        Affine map: ``frame = A @ design + b`` with ``[A | b]``.
    rotation_rad, magnification : float
        Of the map's closest similarity: camera pixels per design pixel; the column axis turned towards
        the row axis by ``rotation_rad`` (the convention of :class:`simulator.placement.Placement`).
    mirror : bool
        The image is mirrored (the map's determinant is negative).
    roi : (int, int, int, int)
        ``(row0, col0, rows, cols)``: the part of the frame that holds the design frame.
    spots : int
        Dots the affine fit used; ``residual_rms_px``: their RMS residual (camera pixels).
    """

    frame_shape: tuple[int, int]
    design_shape: tuple[int, int]
    design_to_frame: np.ndarray
    rotation_rad: float
    magnification: float
    mirror: bool
    roi: tuple[int, int, int, int]
    spots: int
    residual_rms_px: float

    @classmethod
    def from_affine(cls, affine, frame_shape, design_shape, spots: int, residual_rms_px: float,
                    margin_design_px: float = 2.0) -> "GridLocation":
        """The location of a design -> frame affine map; its ROI holds the design frame plus a margin."""
        affine = np.asarray(affine, dtype=np.float64).reshape(2, 3)
        a = affine[:, :2]
        mirror = bool(np.linalg.det(a) < 0)
        similar = a @ np.diag([1.0, -1.0]) if mirror else a
        rotation = math.atan2(similar[0, 1] - similar[1, 0], similar[0, 0] + similar[1, 1])
        location = cls(tuple(int(v) for v in frame_shape), tuple(int(v) for v in design_shape), affine, rotation,
                       float(math.sqrt(abs(np.linalg.det(a)))), mirror, (0, 0, 0, 0), int(spots), float(residual_rms_px))
        h, w = design_shape
        m = margin_design_px + 0.5
        corners = location.to_frame(np.array([[-m, -m], [-m, w - 1 + m], [h - 1 + m, -m], [h - 1 + m, w - 1 + m]]))
        r0, c0 = (math.floor(v) for v in corners.min(axis=0))
        r1, c1 = (math.ceil(v) + 1 for v in corners.max(axis=0))
        return dataclasses.replace(location, roi=(r0, c0, r1 - r0, c1 - c0))

    @property
    def roi_inside(self) -> bool:
        """Whether the ROI lies inside the frame."""
        r0, c0, nr, nc = self.roi
        return r0 >= 0 and c0 >= 0 and r0 + nr <= self.frame_shape[0] and c0 + nc <= self.frame_shape[1]

    def to_frame(self, points) -> np.ndarray:
        """Design-frame points (..., 2) -> camera-frame points (..., 2), pixels."""
        return np.asarray(points, dtype=np.float64) @ self.design_to_frame[:, :2].T + self.design_to_frame[:, 2]

    def to_design(self, points) -> np.ndarray:
        """Camera-frame points (..., 2) -> design-frame points (..., 2), pixels."""
        inverse = np.linalg.inv(self.design_to_frame[:, :2])
        return (np.asarray(points, dtype=np.float64) - self.design_to_frame[:, 2]) @ inverse.T

    def frame_to_design(self) -> np.ndarray:
        """The inverse affine map (2, 3): ``design = A' @ frame + b'``."""
        inverse = np.linalg.inv(self.design_to_frame[:, :2])
        return np.hstack([inverse, (-inverse @ self.design_to_frame[:, 2])[:, None]])

    def tile_corners(self, layout, count: int) -> np.ndarray:
        """The outer corners of tiles ``0..count-1`` of ``layout`` in the camera frame (count, 4, 2):
        top-left, top-right, bottom-right, bottom-left (pixel edges, not centres)."""
        return self.to_frame(design_tile_corners(layout, count))

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": VERSION, "frame_shape": list(self.frame_shape),
                "design_shape": list(self.design_shape), "roi": list(self.roi),
                "design_to_frame": self.design_to_frame.tolist(), "frame_to_design": self.frame_to_design().tolist(),
                "rotation_rad": self.rotation_rad, "rotation_deg": math.degrees(self.rotation_rad),
                "magnification": self.magnification, "mirror": self.mirror, "spots": self.spots,
                "residual_rms_px": self.residual_rms_px}

    def save(self, path) -> None:
        """Write as YAML, atomically (:func:`onn_core.config.save_yaml`)."""
        from onn_core.config import save_yaml

        save_yaml(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "GridLocation":
        """Read a file :meth:`save` wrote; ConfigError names a bad field."""
        from onn_core.config import load_yaml

        data = load_yaml(path)
        if data.get("schema") != SCHEMA or data.get("version") != VERSION:
            raise ConfigError(f"{path}.schema", data.get("schema"), f"{SCHEMA!r} version {VERSION} (a `hil locate` file)")
        try:
            affine = np.asarray(data["design_to_frame"], dtype=np.float64).reshape(2, 3)
            return cls.from_affine(affine, data["frame_shape"], data["design_shape"], data["spots"],
                                   data["residual_rms_px"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(str(path), "(a grid location)", f"the fields of a `hil locate` file ({exc})") from exc


def design_tile_corners(layout, count: int) -> np.ndarray:
    """Outer corners (count, 4, 2) of the first ``count`` tiles of ``layout`` in design-frame pixels."""
    corners = []
    for index in range(count):
        rows, cols = layout.tile_slices(index)
        top, bottom, left, right = rows.start - 0.5, rows.stop - 0.5, cols.start - 0.5, cols.stop - 0.5
        corners.append([[top, left], [top, right], [bottom, right], [bottom, left]])
    return np.array(corners, dtype=np.float64)


# ============================================================================================ search
def _robust_sigma(values: np.ndarray) -> float:
    median = np.median(values)
    return float(1.4826 * np.median(np.abs(values - median))) or 1.0


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, scale, translation; no reflection) source -> target, (2, 3)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t.T @ s)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / (s**2).sum())
    a = scale * rotation
    return np.hstack([a, (mu_t - a @ mu_s)[:, None]])


def _windowed_centroid(image: np.ndarray, centre, radius: float):
    """Centroid (row, col) and total of ``image`` inside a disc (signed weights: zero-mean noise adds no
    bias); None when the disc leaves the frame or holds no light."""
    r, c = centre
    r0, r1 = math.floor(r - radius), math.ceil(r + radius) + 1
    c0, c1 = math.floor(c - radius), math.ceil(c + radius) + 1
    if r0 < 0 or c0 < 0 or r1 > image.shape[0] or c1 > image.shape[1]:
        return None, 0.0
    rows, cols = np.mgrid[r0:r1, c0:c1]
    inside = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    weights = np.where(inside, image[r0:r1, c0:c1], 0.0)
    total = float(weights.sum())
    if total <= 0:
        return None, 0.0
    return np.array([(weights * rows).sum(), (weights * cols).sum()]) / total, total


def _noise_sigma(signal: np.ndarray) -> float:
    """Noise (DN) of a difference frame: the robust spread of neighbouring pixels' differences (signal edges
    are few), at least the quantisation noise of the frame's smallest step."""
    values = np.unique(signal[:: max(1, signal.shape[0] // 256)])
    step = float(np.diff(values).min()) if values.size > 1 else 1.0
    pairs = (signal[:, 1:] - signal[:, :-1]).ravel()
    return max(_robust_sigma(pairs) / math.sqrt(2), step / math.sqrt(6))


def _tile_regions(white: np.ndarray, count: int, saturated: np.ndarray | None):
    """Labels and the bright regions (list of dicts: label, centroid, box, edge) of the white frame."""
    import cv2

    clean = cv2.medianBlur(white.astype(np.float32), 3).astype(np.float64)
    sigma = _noise_sigma(white)
    peak = float(clean.max())
    seen = f"peak signal {peak:.0f} DN above the blank frame, noise {sigma:.1f} DN"
    if peak < MIN_SNR * sigma:
        raise LocateError(f"no grid: the frame is blank ({seen}); is the display on, the optics uncovered, "
                          f"the exposure long enough?", annotate(white))
    mask = clean > max(TILE_THRESHOLD * peak, MIN_SNR / 2 * sigma)
    if saturated is not None:
        lit = int(mask.sum())
        hit = int((saturated & mask).sum())
        if hit > MAX_SATURATED_FRACTION * lit:
            raise LocateError(f"no grid: the frame is saturated ({hit} of {lit} lit pixels at the saturation level); "
                              f"shorten the exposure or dim the display", annotate(white))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero((areas >= MIN_REGION_PX) & (areas >= 0.05 * areas.max())) if n > 1 else np.array([], int)
    rows, cols = white.shape
    regions = []
    if len(keep) <= 4 * count:  # more is noise or another scene: no need to measure each
        rr, cc = np.mgrid[0:rows, 0:cols]
        weight = np.bincount(labels.ravel(), clean.ravel(), n)
        centroids = np.stack([np.bincount(labels.ravel(), (clean * rr).ravel(), n),
                              np.bincount(labels.ravel(), (clean * cc).ravel(), n)], axis=-1) / weight[:, None]
        for label in keep:
            x, y, w, h = (int(v) for v in stats[label, :4])
            edge = x == 0 or y == 0 or x + w == cols or y + h == rows
            regions.append({"label": int(label), "centroid": centroids[label], "box": (x, y, w, h), "edge": edge})
    at_edge = sum(r["edge"] for r in regions)
    if len(keep) != count or at_edge:
        what = f"{len(keep)} bright regions ({seen})"
        if at_edge:
            reason = f"{at_edge} of them touch the frame's edge: the grid is partly outside the frame"
        elif len(keep) < count:
            reason = f"the design has {count} tiles: some are dark, merged or outside the frame (or another design)"
        else:
            reason = f"the design has {count} tiles (stray light, a different design, or tiles split by defects?)"
        raise LocateError(f"no grid: found {what}; {reason}", annotate(white, regions=regions))
    return labels, regions


def _lattice(regions, layout, count: int, white: np.ndarray):
    """(spacing scale, grid cells (count, 2), the grid's column axis (row, col)) of the tiles' centroids;
    the rotation is taken modulo 90 degrees, within +-45."""
    pts = np.array([r["centroid"] for r in regions])
    if count < 2:
        raise LocateError("a single tile has no lattice to orient by: locating needs a design of >= 2 tiles",
                          annotate(white, regions=regions))
    distances = np.linalg.norm(pts[None] - pts[:, None], axis=-1) + np.diag(np.full(count, np.inf))
    nearest = pts[distances.argmin(axis=1)] - pts
    angles = np.arctan2(nearest[:, 0], nearest[:, 1])
    rotation = 0.25 * math.atan2(np.sin(4 * angles).mean(), np.cos(4 * angles).mean())
    col_axis = np.array([math.sin(rotation), math.cos(rotation)])
    row_axis = np.array([math.cos(rotation), -math.sin(rotation)])
    (h, w), gap = layout.tile_shape, layout.gap_px
    pitch = np.array([h + gap, w + gap], dtype=np.float64)
    scale = float(np.median(distances.min(axis=1))) / pitch.min()
    along = np.stack([pts @ row_axis, pts @ col_axis], axis=-1) / (scale * pitch)
    along -= along.min(axis=0)
    cells = np.rint(along).astype(int)
    off = np.abs(along - cells).max()
    if off > LATTICE_TOLERANCE or len({tuple(c) for c in cells}) != count:
        raise LocateError(f"no grid: the {count} bright regions do not form a lattice of tiles (largest deviation "
                          f"{off:.2f} spacings at a spacing of {scale * pitch.min():.1f} px): another design?",
                          annotate(white, regions=regions))
    return scale, cells, col_axis


def _assign_tiles(cells: np.ndarray, layout, count: int, mirror: bool) -> np.ndarray | None:
    """Tile index of each region for a mirrored or direct image, or None if the grid's cells disagree."""
    width = cells[:, 1].max() + 1
    cols = (width - 1 - cells[:, 1]) if mirror else cells[:, 1]
    index = cells[:, 0] * layout.grid_cols + cols
    if (cols >= layout.grid_cols).any() or (cells[:, 0] >= layout.grid_rows).any() or set(index) != set(range(count)):
        return None
    return index


def _tile_centroids(rates: np.ndarray, layout, count: int) -> np.ndarray:
    """Light centroids (count, 2) of each tile of a design frame (rows, cols)."""
    out = []
    for index in range(count):
        rows, cols = layout.tile_slices(index)
        tile = rates[rows, cols]
        rr, cc = np.mgrid[rows, cols]
        out.append([(tile * rr).sum() / tile.sum(), (tile * cc).sum() / tile.sum()])
    return np.array(out)


def _mirrored(left: np.ndarray, labels: np.ndarray, regions, col_axis: np.ndarray) -> bool:
    """Whether the image is mirrored: with the left half of the image lit, each tile's light moves along
    ``-col_axis`` (the grid's column axis) in a direct image, along ``+col_axis`` in a mirrored one."""
    shifts = []
    for region in regions:
        rr, cc = np.nonzero(labels == region["label"])
        weights = np.clip(left[rr, cc], 0, None)
        if weights.sum() > 0:
            centroid = np.array([np.average(rr, weights=weights), np.average(cc, weights=weights)])
            shifts.append((centroid - region["centroid"]) @ col_axis)
    return bool(np.median(shifts) > 0) if shifts else False


def _dot_pairs(dots: np.ndarray, rates: np.ndarray, system, coarse: np.ndarray, scale: float):
    """Matched dot centroids ``(design (n, 2), frame (n, 2))``: each dot's light centroid in the nominal
    design frame ``rates``, and in the camera's ``dots`` frame near where the ``coarse`` map puts it (the
    window re-centred :data:`DOT_ITERATIONS` times); faint dots are left out."""
    shape, layout = system.image_shape, system.layout
    kernel = system.design.psfs().shape[-1]
    s = system.geometry.sensor_pixels_per_display_pixel
    window = layout.tile_shape[0] - shape[0] * s + 1
    radius = (dot_spacing(kernel) + 1) / 2 * s  # a dot's whole image, none of its neighbours'
    least = MIN_SNR * _noise_sigma(dots) * math.sqrt(math.pi) * radius * scale  # 10 sigma of the window's noise
    design_pts, frame_pts, tiles = [], [], []
    for tile in range(system.num_psfs):
        rows, cols = layout.tile_slices(tile)
        for dot in dot_positions(shape, kernel):
            guess = np.array([rows.start, cols.start]) + dot * s + (s - 1) / 2 + window // 2
            q, weight = _windowed_centroid(rates, guess, radius)
            if q is None or weight < 1e-3 * rates.max():
                continue
            p = coarse[:, :2] @ q + coarse[:, 2]
            for _ in range(DOT_ITERATIONS):
                p_new, weight = _windowed_centroid(dots, p, radius * scale)
                if p_new is None:
                    break
                p = p_new
            if p_new is not None and weight > least:
                design_pts.append(q)
                frame_pts.append(p)
                tiles.append(tile)
    return np.array(design_pts).reshape(-1, 2), np.array(frame_pts).reshape(-1, 2), np.array(tiles, dtype=int)


def _affine_with_tile_shifts(design: np.ndarray, frame: np.ndarray, tiles: np.ndarray, joint: bool = False):
    """The affine map ``frame = A @ design + b`` of the dots, allowing each tile its own translation
    ``t_tile`` (summing to zero) where the dots show them: a map fitted to all dots at once absorbs the
    affine part of the fabricated tiles' shifts (which the geometry calibration measures), ~0.5 % of
    scale for shifts of 0.5 px; with the translations, the map's linear part comes from the dots' layout
    within each tile. They are kept when they explain more than :data:`TILE_SHIFT_F` times the noise
    would (an F test), else the plain fit is less noisy (``joint``: kept always). Returns ``A`` (2, 2),
    ``b`` (2,) and the residuals (n, 2)."""
    labels, index = np.unique(tiles, return_inverse=True)
    fits = []
    for columns in (np.hstack([design, np.ones((len(design), 1))]), np.hstack([design, np.eye(len(labels))[index]])):
        coef, *_ = np.linalg.lstsq(columns, frame, rcond=None)
        fits.append((coef, frame - columns @ coef, 2 * (len(design) - columns.shape[1])))
    (plain, plain_res, _), (shifted, shifted_res, dof) = fits
    extra = 2 * (len(labels) - 1)
    if dof > 0 and extra > 0:
        gain = ((plain_res**2).sum() - (shifted_res**2).sum()) / extra
        if joint or gain > TILE_SHIFT_F * (shifted_res**2).sum() / dof:
            return shifted[:2].T, shifted[2:].mean(axis=0), shifted_res
    return plain[:2].T, plain[2], plain_res


def locate_grid(frames: dict, system, *, saturation_dn: float | None = None) -> GridLocation:
    """Find the design frame of ``system`` in camera frames of the displayed :func:`patterns`.

    Parameters
    ----------
    frames : dict
        Camera frames (rows, cols) of the patterns ``dark``, ``white``, ``left`` and ``dots`` (DN).
    system : simulator.system.OpticalSystem
        The nominal optical system (its design and layout; :func:`nominal_system`).
    saturation_dn : float, optional
        The camera's saturation level: a white frame with saturated tiles is refused.

    Returns
    -------
    GridLocation

    Raises
    ------
    LocateError
        The grid is not in the frames (message: what was seen; ``annotated``: the frame, marked).
    """
    import torch

    missing = {"dark", "white", "left", "dots"} - set(frames)
    if missing:
        raise InputError(f"frames must hold the patterns dark, white, left and dots; missing {sorted(missing)}")
    dark = np.asarray(frames["dark"], dtype=np.float64)
    white, left, dots = (np.asarray(frames[k], dtype=np.float64) - dark for k in ("white", "left", "dots"))
    if not dark.ndim == 2 or any(f.shape != dark.shape for f in (white, left, dots)):
        raise InputError(f"frames must be 2-D of one shape, got {[np.shape(frames[k]) for k in sorted(frames)]}")
    layout, count = system.layout, system.num_psfs
    saturated = None if saturation_dn is None else np.asarray(frames["white"]) >= saturation_dn
    labels, regions = _tile_regions(white, count, saturated)
    scale, cells, col_axis = _lattice(regions, layout, count, white)

    mirror = _mirrored(left, labels, regions, col_axis)
    index = _assign_tiles(cells, layout, count, mirror)
    if index is None:
        raise LocateError(f"no grid: the tiles' arrangement does not match the design's {layout.grid_rows} x "
                          f"{layout.grid_cols} layout {'mirrored' if mirror else 'unmirrored'} (as the half-lit "
                          f"pattern shows): another design?", annotate(white, regions=regions))

    shape = system.image_shape
    images = patterns(shape, system.design.psfs().shape[-1], system.display.levels)

    def design_rates(name):
        gray = torch.from_numpy(images[name].astype(np.int64))[None, None]
        with torch.no_grad():
            return system.photon_rate_frame(gray)[0].double().numpy()

    measured = np.array([regions[i]["centroid"] for i in np.argsort(index)])
    expected = _tile_centroids(design_rates("white"), layout, count)
    flip = np.diag([1.0, -1.0]) if mirror else np.eye(2)
    coarse = _similarity(expected @ flip, measured)
    coarse[:, :2] = coarse[:, :2] @ flip

    design_pts, frame_pts, tiles = _dot_pairs(dots, design_rates("dots"), system, coarse, scale)
    if len(design_pts) < 3:
        raise LocateError(f"no grid: {len(design_pts)} dots found where the tiles' lattice puts them (the dot "
                          f"pattern is too faint or another design)", annotate(dots, regions=regions))
    inliers = np.ones(len(design_pts), dtype=bool)
    for _ in range(OUTLIER_PASSES):  # the dots off by more than a design pixel are left out, then refitted
        *_, residual = _affine_with_tile_shifts(design_pts[inliers], frame_pts[inliers], tiles[inliers], joint=True)
        kept = np.linalg.norm(residual, axis=1) <= max(1.0, scale)
        if kept.all():
            break
        inliers[np.flatnonzero(inliers)[~kept]] = False
    a, b, residual = _affine_with_tile_shifts(design_pts[inliers], frame_pts[inliers], tiles[inliers])
    rms = float(np.sqrt((residual**2).sum(axis=1).mean()))
    location = GridLocation.from_affine(np.hstack([a, b[:, None]]), dark.shape, system.frame_shape,
                                        int(inliers.sum()), rms, margin_design_px=system.geometry.psf_margin_px)
    if rms > MAX_RESIDUAL_DESIGN_PX * location.magnification or inliers.sum() < 0.5 * len(inliers):
        raise LocateError(f"no grid: the dots do not fit the design ({inliers.sum()} of {len(inliers)} dots fit, "
                          f"RMS residual {rms:.2f} px): another design?", annotate(dots, location, system))
    log.info("located: rotation %.3f deg, magnification %.4f, mirror %s, %d dots, RMS %.3f px",
             math.degrees(location.rotation_rad), location.magnification, location.mirror, location.spots, rms)
    return location


# ============================================================================================ bench
def nominal_system(optics):
    """The nominal :class:`~simulator.system.OpticalSystem` of an optics YAML path or mapping: its
    ``errors`` dropped (they are what a calibration measures), in eval mode."""
    from pathlib import Path

    from onn_core.config import load_yaml
    from simulator.system import OpticalSystem

    base_dir = Path(optics).parent if isinstance(optics, (str, Path)) else None
    mapping = load_yaml(optics) if isinstance(optics, (str, Path)) else dict(optics)
    mapping["errors"] = None
    return OpticalSystem.from_config(mapping, base_dir=base_dir).eval()


def capture_patterns(bench, system, *, averages: int = 2, auto_exposure: bool = True) -> dict:
    """Show :func:`patterns` on ``bench`` and return the mean camera frame (float64) of each; with
    ``auto_exposure``, the white pattern's 99.9th percentile is first brought to 70 % of the range
    (a search that fails leaves the exposure as it was: :func:`locate_grid` then says what it sees)."""
    from drivers.errors import ExposureError
    from drivers.exposure import capture_stack, exposure_held

    if isinstance(averages, bool) or not isinstance(averages, int) or averages < 1:
        raise InputError(f"averages must be an integer >= 1, got {averages!r}")
    images = patterns(system.image_shape, system.design.psfs().shape[-1], system.display.levels)
    images = {k: v.astype(bench.slm.dtype) for k, v in images.items()}
    with exposure_held(bench.camera):
        if auto_exposure:
            try:
                bench.auto_exposure(images["white"], percentile=99.9)
            except ExposureError as exc:
                log.warning("auto exposure failed (%s); locating at %g s", exc, bench.camera.exposure_s)
        frames = {}
        for name, image in images.items():
            frames[name] = capture_stack(bench, averages, image).mean(axis=0, dtype=np.float64)
    return frames


def locate(bench, system, *, averages: int = 2, auto_exposure: bool = True) -> GridLocation:
    """Show the patterns on ``bench`` (:func:`capture_patterns`) and find ``system``'s grid in its
    camera's frames (:func:`locate_grid`)."""
    frames = capture_patterns(bench, system, averages=averages, auto_exposure=auto_exposure)
    return locate_grid(frames, system, saturation_dn=bench.camera.saturation_dn)


def locate_into(bench, system, output, *, averages: int = 2, auto_exposure: bool = True) -> GridLocation:
    """:func:`locate` on ``bench`` (its camera's own frames: open it with ``located=False``), the location
    written to ``output`` (YAML, atomically) with the annotated white frame beside it (``output`` with
    ``.png``; :func:`annotate`): what ``hil locate`` and the ``locate`` step of ``hil run`` do. A frame in
    which the grid is not found raises :class:`LocateError` naming the exposure and the PNG, which
    shows what was seen."""
    from pathlib import Path

    output = Path(output)
    png = output.with_suffix(".png")
    frames = capture_patterns(bench, system, averages=averages, auto_exposure=auto_exposure)
    try:
        location = locate_grid(frames, system, saturation_dn=bench.camera.saturation_dn)
    except LocateError as exc:
        write_png(png, exc.annotated if exc.annotated is not None else annotate(frames["white"]))
        raise LocateError(f"{exc} (frames at exposure {bench.camera.exposure_s:g} s; annotated frame: {png})") from exc
    location.save(output)
    write_png(png, annotate(frames["white"] - frames["dark"], location, system))
    return location


# ============================================================================================ picture
def annotate(frame: np.ndarray, location: GridLocation | None = None, system=None, *, regions=()) -> np.ndarray:
    """An RGB uint8 picture of ``frame`` (square-root stretch between its 1st and 99.9th percentiles)
    with the bright regions found (yellow boxes) and, given a location and its system, the tiles'
    outlines (green) and the ROI (blue)."""
    import cv2

    frame = np.asarray(frame, dtype=np.float64)
    low, high = np.percentile(frame, [1, 99.9])
    scaled = np.sqrt(np.clip((frame - low) / max(high - low, 1e-12), 0, 1))
    rgb = np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)
    thickness = max(1, round(max(frame.shape) / 600))
    for region in regions:
        x, y, w, h = region["box"]
        cv2.rectangle(rgb, (x, y), (x + w - 1, y + h - 1), (255, 255, 0), thickness)
    if location is not None:
        if system is not None:
            for corners in location.tile_corners(system.layout, system.num_psfs):
                cv2.polylines(rgb, [np.rint(corners[:, ::-1]).astype(np.int32)], True, (0, 255, 0), thickness)
        r0, c0, nr, nc = location.roi
        cv2.rectangle(rgb, (c0, r0), (c0 + nc - 1, r0 + nr - 1), (0, 128, 255), thickness)
    return rgb


def write_png(path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG, atomically."""
    import cv2

    from onn_core.files import atomic_write

    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise InputError(f"cannot encode a {rgb.shape} image as PNG")
    with atomic_write(path) as fh:
        fh.write(data.tobytes())
