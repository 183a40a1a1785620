"""Moved to :mod:`onn_core.files`; this re-export is kept for one release (import from ``onn_core.files``)."""

from onn_core.files import *  # noqa: F401,F403
