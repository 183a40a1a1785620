"""Moved to :mod:`onn_core.lut`; this re-export is kept for one release (import from ``onn_core.lut``)."""

from onn_core.lut import *  # noqa: F401,F403
