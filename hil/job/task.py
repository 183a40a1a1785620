"""The job's task, in one place: what a label is, how samples are drawn, how a model is scored and what
the score is called, for classification (``fashion_mnist``, ...) and segmentation (``fashion_masking``).

The task is the one of the config's ``data.dataset`` (:data:`hil.data.TASK_OF`; :func:`job_task`).

=====================  ===========================================  ===========================================
                       classification                               segmentation
=====================  ===========================================  ===========================================
target of a sample     an int class label                           a mask (1, H, W) uint8 in {0, 1}
in a captures file     ``labels``: the label                        ``labels``: :data:`hil.capture.DENSE_TARGET`;
                                                                    the mask read back from the source split by
                                                                    the row's ``indices`` (:meth:`Task.retarget`)
captured samples       stratified by class                          uniform (:func:`hil.capture.uniform_indices`)
                       (:func:`hil.capture.stratified_indices`)
a captured fraction    the first rows of every class                the first rows of the capture
                       (:func:`hil.capture.stratified_rows`)
metric                 ``accuracy``                                 ``miou`` (mean IoU of object and background
                                                                    over every pixel, :func:`hil.metrics.mean_iou`)
=====================  ===========================================  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from onn_core.errors import InputError

from ..capture import stratified_indices, stratified_rows, uniform_indices
from ..data import TASK_OF
from ..finetune import TASK_METRIC, CapturedSet, captured_features, score
from ..metrics import ConfusionAccumulator, predictions
from .config import Job


@dataclass(frozen=True)
class Task:
    """The job's task (module docstring): ``name`` (``classification`` | ``segmentation``), ``metric`` (the
    key of :meth:`hil.metrics.ConfusionAccumulator.compute`: ``accuracy`` | ``miou``), ``metric_name``
    (for people: ``accuracy`` | ``mIoU``) and ``values_key`` (the per-seed scores of a fine-tuned method
    in ``evaluation.json``: ``accuracies`` | ``mious``)."""

    name: str
    metric: str
    metric_name: str
    values_key: str

    @property
    def dense(self) -> bool:
        """Whether a sample's target is a mask (not stored in a captures file)."""
        return self.name == "segmentation"

    # ------------------------------------------------------------------ scores
    def score(self, backend, data: CapturedSet) -> float:
        """The metric of ``backend`` on captured features (:func:`hil.finetune.score`)."""
        return score(backend, data, self.name)

    def score_outputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The metric of model outputs (logits) against their targets (labels or masks)."""
        if not self.dense:
            return float((outputs.argmax(1) == targets).float().mean())
        confusion = ConfusionAccumulator(2)
        confusion.update(predictions(outputs, self.name), targets.long())
        return confusion.compute()[self.metric]

    def score_model(self, model, images: torch.Tensor, targets: torch.Tensor, batch: int = 1000) -> float:
        """The metric of ``model`` (eval mode, no gradients) on ``images`` against ``targets``."""
        model.eval()
        with torch.no_grad():
            outputs = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
        return self.score_outputs(outputs, targets)

    # ------------------------------------------------------------------ samples
    def sample(self, targets, fraction: float, seed: int, *, exclude=()) -> np.ndarray:
        """Seeded indices of ``fraction`` of a split whose targets are ``targets``: stratified by class, or
        uniform for masks, in a seeded random order."""
        if self.dense:
            return uniform_indices(len(targets), fraction, seed, exclude=exclude)
        return stratified_indices(targets, fraction, seed, exclude=exclude)

    def fraction_rows(self, captured: CapturedSet, fraction: float, split_targets: torch.Tensor) -> torch.Tensor:
        """Rows of a capture (in capture order) forming ``fraction`` of a split whose targets are
        ``split_targets``: the first ``round(fraction n_c)`` rows of every class, or for masks the first
        ``round(fraction n)`` rows (a capture in a seeded random order: a uniform subset, nested)."""
        if not self.dense:
            counts = {int(c): int(n) for c, n in zip(*np.unique(split_targets.numpy(), return_counts=True))}
            return stratified_rows(captured.labels, fraction, counts)
        take = max(1, round(fraction * len(split_targets)))
        if take > len(captured):
            raise InputError(f"the capture holds {len(captured)} samples, fewer than the {take} of fraction {fraction}: "
                             "capture the largest fraction first")
        return torch.arange(take)

    # ------------------------------------------------------------------ targets
    def retarget(self, data: CapturedSet, split) -> CapturedSet:
        """``data`` with the targets its file does not hold (masks) taken from ``split`` (a dataset with
        ``tensors``) by source index; classification: ``data`` as it is."""
        if not self.dense:
            return data
        return CapturedSet(data.features, split.tensors[1][data.source_indices], data.source_indices)

    def captured(self, path, reader, split, **identity) -> CapturedSet:
        """:func:`hil.finetune.captured_features` of ``path`` through ``reader``, with their targets
        (:meth:`retarget` from ``split``)."""
        return self.retarget(captured_features(path, reader, **identity), split)


#: The tasks by name.
TASKS = {"classification": Task("classification", TASK_METRIC["classification"], "accuracy", "accuracies"),
         "segmentation": Task("segmentation", TASK_METRIC["segmentation"], "mIoU", "mious")}


def job_task(job: Job) -> Task:
    """The :class:`Task` of the job's ``data.dataset`` (:data:`hil.data.TASK_OF`; default ``fashion_mnist``)."""
    dataset = (job.config.data or {}).get("dataset", "fashion_mnist")
    return TASKS[TASK_OF.get(dataset, "classification")]


__all__ = ["TASKS", "Task", "job_task"]
