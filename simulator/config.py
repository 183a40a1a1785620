"""Moved to :mod:`onn_core.config`; this re-export is kept for one release (import from ``onn_core.config``)."""

from onn_core.config import *  # noqa: F401,F403
