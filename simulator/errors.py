"""Moved to :mod:`onn_core.errors`; this re-export is kept for one release (import from ``onn_core.errors``)."""

from onn_core.errors import *  # noqa: F401,F403
