"""``run_job``: the steps of :data:`hil.job.steps.STEPS` in order, into one run folder, resumable.

Before the first step: the config's identity is checked against the run folder's (a change is
accepted while the steps it affects have not run), every finished step's outputs are checked against
their record (a missing or damaged one is made again, with every later step), and
:func:`hil.job.validate.preflight` checks what the steps about to run need. Then each step not yet
finished runs and is recorded in ``state.json`` with the files it wrote (:mod:`hil.job.state`).
``from_step`` redoes a step and the ones after it; ``until`` stops after a step (e.g. ``export``, to
send the design to fabrication, resuming later with the bench).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from onn_core.config import to_plain
from onn_core.errors import InputError

from .config import FIRST_STEP, Job, job_identity
from .state import check_identity, describe_outputs, first_damaged_step, mark_finished, read_state, record_identity, unfinish
from .steps import STEP_NAMES, STEPS, RunContext
from .validate import preflight

log = logging.getLogger(__name__)


def run_job(job: Job, *, progress: bool = True, from_step: str | None = None, until: str | None = None) -> Path | None:
    """Run every step not yet finished (``state.json``) up to ``until`` (default: all), redoing
    ``from_step`` and the later ones; returns the path of ``summary.md``, or None when stopped before
    the report."""
    for option, name in (("--from", from_step), ("--until", until)):
        if name is not None and name not in STEP_NAMES:
            raise InputError(f"{option} {name!r}: expected one of {list(STEP_NAMES)}")
    last = STEP_NAMES.index(until) if until is not None else len(STEPS) - 1
    if from_step is not None and STEP_NAMES.index(from_step) > last:
        raise InputError(f"--from {from_step} comes after --until {until}: nothing would run")
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if job.config.threads is not None:
        torch.set_num_threads(job.config.threads)
    try:
        redo = _prepare(job, from_step, last)
        ctx = RunContext(job, progress)
        try:
            for step in STEPS[:last + 1]:
                if not step.bench:
                    ctx.release_bench()
                if step.name in read_state(run_dir)["finished"]:
                    log.info("step %s: finished earlier, skipped", step.name)
                    continue
                log.info("step %s%s", step.name, " (again)" if step.name in redo else "")
                start = time.perf_counter()
                step.run(ctx)
                mark_finished(run_dir, step.name, time.perf_counter() - start, describe_outputs(run_dir, step.outputs(job)))
        finally:
            ctx.release_bench()
        if last < len(STEPS) - 1:
            log.info("stopped after step %s (--until); rerun without --until to continue", STEP_NAMES[last])
            return None
        return run_dir / "summary.md"
    finally:
        torch.set_num_threads(threads)


def check_run(job: Job) -> None:
    """Refuse (:class:`~hil.job.state.JobConfigChanged`) a ``job`` whose run folder's finished steps ran
    with another config, as :func:`run_job` does before it resumes: for code that reads a finished run's
    outputs through a job it loaded itself (a benchmark, a script)."""
    check_identity(job.run_dir, job_identity(job), read_state(job.run_dir)["finished"])


def _prepare(job: Job, from_step: str | None, last: int) -> list[str]:
    """Everything before the first step (module docstring); returns the steps to redo, whose outputs
    were moved aside."""
    run_dir = job.run_dir
    first = STEP_NAMES.index(from_step) if from_step is not None else len(STEPS)
    finished = [s for s in read_state(run_dir)["finished"] if STEP_NAMES.index(s) < first]
    identity = job_identity(job)
    changes = check_identity(run_dir, identity, finished)
    for path, (old, new) in changes.items():
        log.info("config change accepted (its steps have not run): %s = %r (was %r)", path, new, old)
        step = FIRST_STEP.get(path.split(".")[0], "train")
        if step is not None:  # partial outputs made with the old value are not resumed
            first = min(first, STEP_NAMES.index(step))
    damaged, problems = first_damaged_step(run_dir, [s for s in finished if STEP_NAMES.index(s) < first])
    if damaged is not None:
        log.warning("step %s is run again: %s", damaged, "; ".join(problems))
        first = STEP_NAMES.index(damaged)
    finished = [s for s in finished if STEP_NAMES.index(s) < first]
    preflight(job, [s for s in STEP_NAMES[:last + 1] if s not in finished])
    redo = list(STEP_NAMES[first:])
    unfinish(run_dir, redo, [path for step in STEPS[first:] for path in (*step.outputs(job), *step.aside(job))])
    record_identity(run_dir, identity, to_plain(job.config))
    return redo


__all__ = ["check_run", "run_job"]
