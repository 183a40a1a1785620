"""The references that make the job's figures mean what they say (docs/method.md#measuring-compensation-honestly):

* the **teacher check** (:func:`teacher_check`): NTKD distils from a teacher, which must be at least
  ``finetune.teacher_margin`` above the design on the same test images; otherwise the NTKD methods are
  left out of the fine-tuning, the report and the summary;
* ``design_ft``: the methods' fine-tuning recipe (same images, steps, learning rate, batch size,
  seeds, validation selection) on the *simulated nominal* features of the same images, with sensor
  noise on (:func:`hil.finetune.simulated_features` at the capture exposure); the recovered fraction
  of a method is ``(method - uncompensated) / (design_ft - uncompensated)``;
* ``perfect_fabrication``: the held-out test images captured on the same bench with no fabrication
  errors (a simulated camera only) and read nominally by the student's own backend: what the sensor
  and bench cost without fabrication;
* the **design's convergence** (:func:`design_convergence`): its validation curve, flat within
  :data:`FLAT_POINTS` over the last :data:`FLAT_EPOCHS` epochs under a decaying learning rate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..finetune import COMPENSATIONS, simulated_features
from .config import Job
from .task import job_task

log = logging.getLogger(__name__)

#: The control fine-tuned on simulated nominal features.
DESIGN_FT = "design_ft"
#: Where ``perfect_fabrication`` captures its test set (inside the run folder).
PERFECT_CAPTURE = "captures/test_perfect.h5"
#: Convergence: validation accuracy within this many points over the last epochs ...
FLAT_POINTS = 0.3
#: ... over this many epochs.
FLAT_EPOCHS = 3


def ntkd_methods(methods) -> list[str]:
    """The methods of ``methods`` that distil from the teacher."""
    return [m for m in methods if COMPENSATIONS[m].loss != "task"]


def teacher_check(job: Job, student, teacher, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy (the task's metric, :mod:`hil.job.task`; ``labels``: masks for segmentation) of
    ``teacher`` (on the raw ``images``) and of the design (``student`` in simulation, noise free) on
    the same test images; ``usable``: the teacher is at least
    ``finetune.teacher_margin`` above the design."""
    margin, task = job.config.finetune.teacher_margin, job_task(job)
    scores = {name: task.score_model(model, images, labels) for name, model in (("teacher", teacher), ("design", student))}
    usable = scores["teacher"] >= scores["design"] + margin
    if not usable:
        log.warning("the teacher (%s %.2f %%) is not %.1f points above the design (%.2f %%) on the test images: the NTKD "
                    "methods are left out (train a stronger teacher, or lower finetune.teacher_margin)",
                    task.metric_name, 100 * scores["teacher"], 100 * margin, 100 * scores["design"])
    return {**scores, "margin": margin, "usable": usable}


def nominal_set(job: Job, system, split, rows: torch.Tensor, exposure_s: float, seed: int):
    """:func:`hil.finetune.simulated_features` of ``split[rows]`` through the nominal ``system``."""
    images, labels = split.tensors[0][rows], split.tensors[1][rows]
    return simulated_features(system, images, labels, rows, exposure_s=exposure_s, seed=seed)


def design_convergence(run_dir, metric: str = "accuracy", metric_name: str | None = None) -> dict | None:
    """The design student's validation curve (``curve``: ``[{epoch, val_accuracy}]``; ``val_<metric>``
    for another ``metric``, e.g. ``miou`` for segmentation, then also ``metric``) from its run's
    ``metrics.json``, its ``schedule`` (``optim.schedule`` of its ``config.yaml``) and ``converged``:
    the schedule decays and the validation accuracy of the last :data:`FLAT_EPOCHS` epochs spans at
    most :data:`FLAT_POINTS` points. None for a run without ``metrics.json`` (e.g. a checkpoint file)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json" if run_dir.is_dir() else None
    if metrics is None or not metrics.is_file():
        return None
    key = f"val_{metric}"
    history = json.loads(metrics.read_text()).get("history", [])
    curve = [{"epoch": h["epoch"], key: h[key]} for h in history if key in h]
    config = run_dir / "config.yaml"
    schedule = "constant"
    if config.is_file():
        from onn_core.config import load_yaml

        schedule = (load_yaml(config).get("optim") or {}).get("schedule", "constant")
    last = [100 * c[key] for c in curve[-FLAT_EPOCHS:]]
    flat = len(last) == FLAT_EPOCHS and max(last) - min(last) <= FLAT_POINTS
    out = {"curve": curve, "schedule": schedule, "converged": bool(flat and schedule != "constant"),
           "criterion": f"validation {metric_name or metric} within {FLAT_POINTS} points over the last {FLAT_EPOCHS} "
                        "epochs, under a decaying learning-rate schedule"}
    return out if metric == "accuracy" else {**out, "metric": metric}


__all__ = ["DESIGN_FT", "FLAT_EPOCHS", "FLAT_POINTS", "PERFECT_CAPTURE", "design_convergence", "nominal_set", "ntkd_methods", "teacher_check"]
