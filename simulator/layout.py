"""Where each sub-optic's image lands on the camera: a regular grid of tiles.

Every PSF of an optical frontend images the scene onto its own rectangular region (tile) of the
sensor. :class:`TileLayout` places a stack of ``P`` images of shape ``(h, w)`` on a
``grid_rows x grid_cols`` grid, row-major (tile ``i`` is at grid row ``i // grid_cols``, grid column
``i % grid_cols``), separated by ``gap_px`` dark pixels, the first tile's top-left pixel at
``origin_px``. All units here are sensor pixels.

:func:`kernel_grid` and :func:`kernel_count` are the stage-1 design count of how many kernels fit on a
metasurface (docs/method.md#layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from onn_core.errors import InputError
from .validation import check_positive, check_tensor

#: Relative tolerance for ``floor`` in :func:`kernel_grid`, so that a ratio that is an integer in exact
#: arithmetic (e.g. 1 mm / 0.1 mm) is not floored to one less by floating-point rounding.
_FLOOR_RTOL = 1e-9


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_int_pair(name: str, value, minimum: int) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputError(f"{name} must be a pair of ints (rows, cols), got {value!r}")
    return (_check_int(f"{name}[0]", value[0], minimum), _check_int(f"{name}[1]", value[1], minimum))


@dataclass(frozen=True)
class TileLayout:
    """A ``grid_rows x grid_cols`` grid of ``tile_shape`` = (h, w) tiles on a camera frame (pixels).

    Parameters
    ----------
    grid_rows, grid_cols : int
        Number of tile rows and columns (>= 1). Capacity = ``grid_rows * grid_cols`` tiles.
    tile_shape : (int, int)
        Height and width of one tile, in sensor pixels.
    gap_px : int
        Dark pixels between neighbouring tiles (both axes), >= 0.
    origin_px : (int, int)
        (row, col) of the top-left pixel of tile 0, >= 0.
    frame_shape : (int, int) or None
        Size of the camera frame in pixels. ``None``: the smallest frame holding the grid
        (origin + tiles + gaps). A given frame must be at least that large.
    """

    grid_rows: int
    grid_cols: int
    tile_shape: tuple[int, int]
    gap_px: int = 0
    origin_px: tuple[int, int] = (0, 0)
    frame_shape: tuple[int, int] | None = None

    def __post_init__(self):
        _check_int("grid_rows", self.grid_rows, 1)
        _check_int("grid_cols", self.grid_cols, 1)
        object.__setattr__(self, "tile_shape", _check_int_pair("tile_shape", self.tile_shape, 1))
        _check_int("gap_px", self.gap_px, 0)
        object.__setattr__(self, "origin_px", _check_int_pair("origin_px", self.origin_px, 0))
        needed = self._needed_shape()
        if self.frame_shape is None:
            object.__setattr__(self, "frame_shape", needed)
        else:
            shape = _check_int_pair("frame_shape", self.frame_shape, 1)
            if shape[0] < needed[0] or shape[1] < needed[1]:
                raise InputError(f"frame_shape {shape} is too small for the tile grid, which needs at least {needed}")
            object.__setattr__(self, "frame_shape", shape)

    def _needed_shape(self) -> tuple[int, int]:
        (h, w), g, (r0, c0) = self.tile_shape, self.gap_px, self.origin_px
        return (r0 + self.grid_rows * h + (self.grid_rows - 1) * g, c0 + self.grid_cols * w + (self.grid_cols - 1) * g)

    @classmethod
    def for_count(cls, count: int, tile_shape: tuple[int, int], gap_px: int = 0) -> "TileLayout":
        """The near-square grid for ``count`` tiles: ``grid_cols = ceil(sqrt(count))``,
        ``grid_rows = ceil(count / grid_cols)`` (so ``grid_cols >= grid_rows``, as on a landscape sensor)."""
        _check_int("count", count, 1)
        cols = math.isqrt(count - 1) + 1
        return cls(math.ceil(count / cols), cols, tile_shape, gap_px)

    @property
    def capacity(self) -> int:
        """Number of tiles the grid holds."""
        return self.grid_rows * self.grid_cols

    def tile_slices(self, index: int) -> tuple[slice, slice]:
        """(row slice, col slice) of tile ``index`` (row-major) in the frame."""
        _check_int("tile index", index, 0)
        if index >= self.capacity:
            raise InputError(f"tile index must be < capacity {self.capacity}, got {index}")
        (h, w), g, (r0, c0) = self.tile_shape, self.gap_px, self.origin_px
        r = r0 + (index // self.grid_cols) * (h + g)
        c = c0 + (index % self.grid_cols) * (w + g)
        return slice(r, r + h), slice(c, c + w)

    def assemble(self, images: torch.Tensor) -> torch.Tensor:
        """Place ``images`` of shape ``(*batch, P, h, w)`` (``P <= capacity``) into frames of shape
        ``(*batch, *frame_shape)``; pixels outside tiles are 0. Differentiable (pure reshapes and pads)."""
        check_tensor("images", images, min_ndim=3)
        (h, w), g = self.tile_shape, self.gap_px
        count = images.shape[-3]
        if tuple(images.shape[-2:]) != (h, w):
            raise InputError(f"images must have tile shape {(h, w)} on their last two dims, got {tuple(images.shape)}")
        if count > self.capacity:
            raise InputError(f"images hold {count} tiles but the layout has capacity {self.capacity}")
        batch = images.shape[:-3]
        x = images.reshape(-1, count, h, w)
        x = F.pad(x, (0, g, 0, g, 0, self.capacity - count))  # gap right/below each tile, empty tiles
        x = x.reshape(-1, self.grid_rows, self.grid_cols, h + g, w + g).permute(0, 1, 3, 2, 4)
        x = x.reshape(-1, self.grid_rows * (h + g), self.grid_cols * (w + g))
        x = x[:, : x.shape[1] - g, : x.shape[2] - g]
        (r0, c0), (rows, cols) = self.origin_px, self.frame_shape
        x = F.pad(x, (c0, cols - c0 - x.shape[2], r0, rows - r0 - x.shape[1]))
        return x.reshape(*batch, rows, cols)

    def extract(self, frame: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """Cut the tiles out of ``frame`` of shape ``(*batch, *frame_shape)``: returns
        ``(*batch, count, h, w)`` with ``count`` = capacity by default. Inverse of :meth:`assemble` on
        tile pixels."""
        check_tensor("frame", frame, min_ndim=2)
        if tuple(frame.shape[-2:]) != self.frame_shape:
            raise InputError(f"frame must have shape {self.frame_shape} on its last two dims, got {tuple(frame.shape)}")
        count = self.capacity if count is None else _check_int("count", count, 1)
        if count > self.capacity:
            raise InputError(f"count must be <= capacity {self.capacity}, got {count}")
        (h, w), g, (r0, c0) = self.tile_shape, self.gap_px, self.origin_px
        batch = frame.shape[:-2]
        x = frame.reshape(-1, *self.frame_shape)
        x = x[:, r0 : r0 + self.grid_rows * (h + g) - g, c0 : c0 + self.grid_cols * (w + g) - g]
        x = F.pad(x, (0, g, 0, g))
        x = x.reshape(-1, self.grid_rows, h + g, self.grid_cols, w + g).permute(0, 1, 3, 2, 4)
        x = x[..., :h, :w].reshape(-1, self.capacity, h, w)[:, :count]
        return x.reshape(*batch, count, h, w)


def kernel_grid(metasurface_hw_m: tuple[float, float], kernel_pitch_m: float, spacing_m: float) -> tuple[int, int]:
    """(rows, cols) of square kernels (sub-optics) of side ``kernel_pitch_m`` that fit on a metasurface
    of ``metasurface_hw_m`` = (height, width) in metres when neighbours are ``spacing_m`` apart:
    ``floor((h + d) / (k + d))`` rows and ``floor((w + d) / (k + d))`` columns (docs/method.md#layout, stage-1
    layout count; ``n`` sub-optics in a row need ``n k + (n - 1) d <= h``). 0 where none fits.
    """
    if not isinstance(metasurface_hw_m, (tuple, list)) or len(metasurface_hw_m) != 2:
        raise InputError(f"metasurface_hw_m must be a pair (height, width) in metres, got {metasurface_hw_m!r}")
    h = check_positive("metasurface_hw_m[0]", metasurface_hw_m[0])
    w = check_positive("metasurface_hw_m[1]", metasurface_hw_m[1])
    k = check_positive("kernel_pitch_m", kernel_pitch_m)
    d = check_positive("spacing_m", spacing_m, allow_zero=True)
    rows, cols = (math.floor((side + d) / (k + d) * (1 + _FLOOR_RTOL)) for side in (h, w))
    return rows, cols


def kernel_count(metasurface_hw_m: tuple[float, float], kernel_pitch_m: float, spacing_m: float) -> int:
    """How many square kernels (sub-optics) of side ``kernel_pitch_m`` fit on a metasurface of
    ``metasurface_hw_m`` = (height, width) in metres when neighbours are ``spacing_m`` apart:
    ``floor((h + d) / (k + d)) * floor((w + d) / (k + d))`` (the product of :func:`kernel_grid`).
    """
    rows, cols = kernel_grid(metasurface_hw_m, kernel_pitch_m, spacing_m)
    return rows * cols
