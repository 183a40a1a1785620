"""Look-up tables of display/SLM response: gray level -> intensity (amplitude displays) or phase.

A :class:`LUT` holds one value per gray level (``0 .. 2**bit_depth - 1``): relative intensity in
[0, 1] for amplitude displays (OLED, LCD, DMD), phase in radians for phase SLMs. It converts both ways;
the inverse picks, for every requested value, the gray level whose value is nearest (circularly, modulo
2 pi, for phase; ties go to the lower value, i.e. the one preceding it on the circle). It is the one
table the drivers (SLM backends) and the differentiable display models of :mod:`simulator.display`
share. Measured LUTs replace the nominal one: :meth:`LUT.from_measurement` interpolates a
sparse measurement onto every gray level; :meth:`LUT.save` / :meth:`LUT.from_file` store it as a
two-column text file ``gray value``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_write

KINDS = ("intensity", "phase")
TWO_PI = 2.0 * math.pi


class LUT:
    """Gray level -> intensity (relative, [0, 1]) or phase (radians) for every level of a display.

    Parameters
    ----------
    values : array_like, shape (2**bit_depth,)
        Value of each gray level, finite: intensity non-decreasing; phase in radians, unwrapped, in any
        order (most phase SLMs lower the phase delay as the level rises; a measured response wiggles).
    kind : {"intensity", "phase"}
    """

    def __init__(self, values, kind: str = "intensity"):
        if kind not in KINDS:
            raise InputError(f"LUT kind must be one of {KINDS}, got {kind!r}")
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or v.size < 2:
            raise InputError(f"LUT values must be a 1-D array of at least 2 levels, got shape {v.shape}")
        bit_depth = int(round(math.log2(v.size)))
        if 2**bit_depth != v.size:
            raise InputError(f"LUT must have 2**bit_depth values (one per gray level), got {v.size}")
        if not np.isfinite(v).all():
            raise InputError("LUT values contain NaN or inf")
        if kind == "intensity" and np.any(np.diff(v) < 0):
            raise InputError("intensity LUT values must be non-decreasing in gray level")
        self.kind = kind
        self.bit_depth = bit_depth
        self.values = v
        self.values.flags.writeable = False

    # ----------------------------------------------------------------------------------- builders
    @classmethod
    def linear(cls, bit_depth: int, kind: str = "intensity") -> "LUT":
        """Nominal LUT: intensity ``g / g_max`` or phase ``2 pi g / 2**bit_depth``."""
        levels = np.arange(2**bit_depth, dtype=np.float64)
        if kind == "phase":
            return cls(TWO_PI * levels / levels.size, kind)
        return cls(levels / levels[-1], kind)

    @classmethod
    def gamma(cls, bit_depth: int, gamma: float = 2.2) -> "LUT":
        """Intensity LUT ``(g / g_max) ** gamma`` of a display with that gamma."""
        if not gamma > 0:
            raise InputError(f"gamma must be > 0, got {gamma!r}")
        levels = np.arange(2**bit_depth, dtype=np.float64)
        return cls((levels / levels[-1]) ** gamma, "intensity")

    @classmethod
    def from_measurement(cls, gray, values, bit_depth: int, kind: str = "intensity") -> "LUT":
        """Interpolate a measured response at some gray levels onto every level.

        ``gray`` are distinct integer levels in ``[0, 2**bit_depth - 1]`` and ``values`` the measured
        intensity (any unit; normalised to [0, 1] by the value at the brightest level measured, after
        subtracting the darkest) or phase in radians (unwrapped). Noise that makes the measurement
        dip is removed by taking the running maximum, so the LUT is monotonic.
        """
        g = np.asarray(gray)
        v = np.asarray(values, dtype=np.float64)
        if g.ndim != 1 or g.shape != v.shape or g.size < 2:
            raise InputError(f"gray and values must be 1-D of equal length >= 2, got {g.shape} and {v.shape}")
        if not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() > 2**bit_depth - 1:
            raise InputError(f"gray must be integers in [0, {2**bit_depth - 1}], got {g.min()}..{g.max()}")
        order = np.argsort(g)
        g, v = g[order], v[order]
        if np.any(np.diff(g) == 0):
            raise InputError("gray levels in a measurement must be distinct")
        v = np.maximum.accumulate(v)
        if kind == "intensity":
            span = v[-1] - v[0]
            if span <= 0:
                raise InputError("measured intensity does not increase with gray level")
            v = (v - v[0]) / span
        full = np.interp(np.arange(2**bit_depth), g, v)
        return cls(full, kind)

    @classmethod
    def from_file(cls, path, kind: str = "intensity") -> "LUT":
        """Read a two-column text file (``gray value`` per line, ``#`` comments) of every gray level."""
        try:
            table = np.loadtxt(Path(path), dtype=np.float64, comments="#", ndmin=2)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read LUT file {path}: {exc}") from exc
        if table.shape[1] != 2:
            raise InputError(f"LUT file {path} must have 2 columns (gray value), got {table.shape[1]}")
        gray = table[:, 0]
        if not np.array_equal(gray, np.arange(gray.size)):
            raise InputError(f"LUT file {path} must list every gray level 0, 1, ... in order")
        return cls(table[:, 1], kind)

    def save(self, path) -> None:
        """Write the two-column text file read by :meth:`from_file` (atomically)."""
        with atomic_write(path, "w") as fh:
            fh.write(f"# onn-hil LUT kind={self.kind} bit_depth={self.bit_depth}\n# gray value\n")
            for g, v in enumerate(self.values):
                fh.write(f"{g} {float(v)!r}\n")

    # ----------------------------------------------------------------------------------- mapping
    @property
    def levels(self) -> int:
        """Number of gray levels, ``2**bit_depth``."""
        return self.values.size

    def to_value(self, gray) -> np.ndarray:
        """Value (intensity or phase in radians) of integer gray levels, float64, same shape."""
        g = np.asarray(gray)
        if not np.issubdtype(g.dtype, np.integer) or (g.size and (g.min() < 0 or g.max() >= self.levels)):
            raise InputError(f"gray must be integers in [0, {self.levels - 1}]")
        return self.values[g]

    def to_gray(self, values) -> np.ndarray:
        """Gray level (int64) whose LUT value is nearest each requested value.

        Phase is compared modulo 2 pi (any real phase is accepted); intensity outside the LUT's range
        maps to the end levels.
        """
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise InputError(f"{self.kind} values contain NaN or inf")
        if self.kind == "phase":
            # nearest level on the circle by a binary search in the sorted wrapped table: memory O(n),
            # any level order (measured responses wiggle; many SLMs lower the phase as the level rises)
            table = np.mod(self.values, TWO_PI)
            order = np.argsort(table, kind="stable")
            ring = table[order]
            wrapped = np.mod(v, TWO_PI)
            above = np.searchsorted(ring, wrapped) % self.levels
            below = (above - 1) % self.levels
            to_above = np.mod(ring[above] - wrapped, TWO_PI)
            to_below = np.mod(wrapped - ring[below], TWO_PI)
            return order[np.where(to_below <= to_above, below, above)].astype(np.int64)
        idx = np.clip(np.searchsorted(self.values, v), 1, self.levels - 1)
        below, above = self.values[idx - 1], self.values[idx]
        return np.where(v - below <= above - v, idx - 1, idx).astype(np.int64)

    def __eq__(self, other) -> bool:
        return isinstance(other, LUT) and self.kind == other.kind and np.array_equal(self.values, other.values)

    def __repr__(self) -> str:
        return f"LUT(kind={self.kind!r}, bit_depth={self.bit_depth}, range=[{self.values[0]:.4g}, {self.values[-1]:.4g}])"
