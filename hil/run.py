"""Moved to :mod:`hil.job` (config, state, steps, runner, report); this module re-exports it for one
release. The student is loaded with :func:`hil.checkpoint.load_model`."""

from .checkpoint import load_model as load_student
from .job import *  # noqa: F401,F403
from .job import __all__ as _job_all

__all__ = [*_job_all, "load_student"]
