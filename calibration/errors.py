"""Errors of the calibration capability (they derive from the toolkit's :class:`HilError`)."""

from __future__ import annotations

from pathlib import Path

from onn_core.errors import HilError


class CalibrationError(HilError):
    """A calibration measurement or fit failed; the message says why and what to change.

    ``diagnostic`` is the path of an image saved to show the failure (None when none was saved).
    """

    def __init__(self, message: str, diagnostic: Path | None = None):
        self.diagnostic = None if diagnostic is None else Path(diagnostic)
        super().__init__(message if diagnostic is None else f"{message} (diagnostic image: {diagnostic})")


class CalibrationFileError(HilError, ValueError):
    """A calibration file is foreign, truncated, of another schema version, or from another bench."""
