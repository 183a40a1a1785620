"""The hardware-in-the-loop job, ``hil run CONFIG``: train -> export design -> fabricate/open the bench
-> locate the design in the camera frame (a bench whose camera names a ``locate`` file not yet written) -> calibrate -> capture -> fine-tune -> evaluate -> report, into one run folder
(docs/method.md#stage-3-compensation).

=====================  =====================================================================
module                 holds
=====================  =====================================================================
:mod:`.config`         the config schema (:class:`JobConfig`), :func:`load_job`, the job's identity
:mod:`.task`           the task of ``data.dataset`` (classification or segmentation): its labels, its
                       samples, its metric (accuracy or mean IoU) and the metric's name
:mod:`.state`          ``state.json``: finished steps, the files each wrote, the identity
:mod:`.steps`          the steps, plain functions a bench script calls (``examples/hil_job.py``),
                       and :data:`STEPS`, their table
:mod:`.exposure`       the capture exposure (from the calibration) and the clipping check
:mod:`.controls`       the teacher check, the ``design_ft`` and ``perfect_fabrication`` controls,
                       the design's convergence
:mod:`.validate`       the checks made before the first step; :mod:`.disk` the free-space check
:mod:`.runner`         :func:`run_job`: the table in order, resumable (``--from``, ``--until``)
:mod:`.report`         ``report.json`` and ``summary.md``; :mod:`.plots` its figures
=====================  =====================================================================
"""

from .config import CaptureStep, FinetuneStep, Job, JobConfig, TrainStep, job_identity, load_job
from .report import report
from .runner import check_run, run_job
from .state import JobConfigChanged, read_state
from .steps import (STEP_NAMES, STEPS, JobMismatchError, RunContext, Step, bench_config,
                    calibrate_bench, capture_plan, capture_sets, datasets, design_config, design_identity,
                    evaluate, export, finetune_all, fraction_key, load_job_calibration, open_job_bench,
                    score_runs, synthetic_set, train_models)
from .task import Task, job_task
from .disk import DiskSpaceError
from .exposure import ClippedCaptureError
from .validate import preflight

__all__ = ["STEPS", "STEP_NAMES", "CaptureStep", "ClippedCaptureError", "DiskSpaceError", "FinetuneStep", "Job",
           "JobConfig", "JobConfigChanged", "JobMismatchError", "RunContext", "Step", "Task", "TrainStep", "bench_config",
           "calibrate_bench", "capture_plan", "check_run", "capture_sets", "datasets", "design_config",
           "design_identity", "evaluate", "export", "finetune_all", "fraction_key", "job_identity", "job_task",
           "load_job", "load_job_calibration", "open_job_bench", "preflight", "read_state", "report", "run_job",
           "score_runs", "synthetic_set", "train_models"]
