"""Kernel ridge regression with a chunked kernel, the regulariser chosen on a validation split, and a
bootstrap interval of the test metric.

``y(test) = K(test, train) (K(train, train) + lambda I)^-1 Y(train)`` (docs/method.md#accuracy-estimate), with
``Y`` the centred one-hot labels (classification: ``onehot - 1/C``, class = argmax) or the centred
mask (segmentation: ``mask - 1/2`` per pixel, object where > 0). ``lambda`` is a multiple of the mean
diagonal of ``K(train, train)`` taken from a grid; each candidate is one Cholesky factorisation
(float64, ``n^3 / 3`` operations; one that fails -- not positive definite in floating point -- is
skipped), and the one with the best validation metric wins (the larger one on a tie).

Memory: only ``K(train, train)`` (``8 n^2`` bytes: 800 MB for n = 10 000) and its factor are held;
validation and test kernels are formed ``chunk_size`` points at a time against the training points
and reduced at once to per-image confusion matrices. Evaluation data are images: every image is a
bootstrap unit (a classification sample; a segmentation scene, all of whose pixels are predicted).

Learning curve: ``n`` training points (a few thousand on 2 cores) are fewer than a student is trained
on, and a kernel's error falls with the data roughly as a power law ``a n^-b``. With
``extrapolate_to``, the same kernel is also solved on the first ``n/4`` and ``n/2`` points (its
sub-blocks: ~15 % more work), and the error is extrapolated along the fitted power law.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from onn_core.progress import progress_bar

from hil.metrics import accuracy, mean_iou
from onn_core.errors import InputError

from .kernel import ArchitectureKernel, PointFeatures

log = logging.getLogger(__name__)

#: Default regularisation grid, as multiples of the mean diagonal of the training kernel.
REGULARIZATION_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class EvalSet:
    """Images to evaluate on: ``radiance`` (N, C, H, W) and ``targets``: labels (N,) int64
    (classification) or masks (N, 1, H, W) in {0, 1} (segmentation)."""

    radiance: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.radiance.shape[0]


@dataclass
class RidgeResult:
    """Test metric (fraction) of the chosen regulariser, its bootstrap interval, the choice and the
    validation metric of every regulariser; ``learning_curve`` {training points: test metric};
    ``extrapolated`` metric (and interval) at the requested training-set size, or None."""

    metric: float
    interval: tuple[float, float]
    regularization: float
    val_metric: float
    val_scores: dict[float, float] = field(default_factory=dict)
    train_points: int = 0
    test_images: int = 0
    learning_curve: dict[int, float] = field(default_factory=dict)
    extrapolated: float | None = None
    extrapolated_interval: tuple[float, float] | None = None


def kernel_matrix(kernel: ArchitectureKernel, rows: PointFeatures, cols: PointFeatures, *, chunk_size: int = 1024,
                  progress: bool = False, desc: str = "kernel") -> torch.Tensor:
    """``kernel(rows, cols)`` (n_rows, n_cols) float64, formed ``chunk_size`` rows at a time."""
    out = torch.empty(len(rows), len(cols), dtype=torch.float64)
    for start in progress_bar(range(0, len(rows), chunk_size), desc=desc, enabled=progress):
        stop = min(start + chunk_size, len(rows))
        out[start:stop] = kernel(rows.select(slice(start, stop)), cols)
    return out


def ridge_solutions(train_kernel: torch.Tensor, targets: torch.Tensor, grid, *,
                    progress: bool = False) -> dict[float, torch.Tensor]:
    """``{lambda_rel: (K + lambda_rel mean(diag K) I)^-1 targets}`` (n, C) for every grid value whose
    Cholesky factorisation succeeds. ``train_kernel`` is modified in place and restored."""
    diagonal = train_kernel.diagonal().clone()
    scale = float(diagonal.mean())
    solutions = {}
    for rel in progress_bar(grid, desc="regulariser", enabled=progress):
        train_kernel.diagonal().add_(float(rel) * scale)
        try:
            factor, info = torch.linalg.cholesky_ex(train_kernel)
        finally:
            train_kernel.diagonal().copy_(diagonal)
        if int(info):
            log.info("regulariser %g: kernel not positive definite in float64, skipped", rel)
            continue
        solutions[float(rel)] = torch.cholesky_solve(targets, factor)
        del factor
    if not solutions:
        raise InputError(f"no regulariser of {list(grid)} gives a positive definite kernel; add larger values")
    return solutions


def regression_targets(targets: torch.Tensor, task: str, num_classes: int) -> torch.Tensor:
    """(n, C) float64 centred targets: ``onehot - 1/C`` (classification) or ``mask - 1/2`` (n, 1)."""
    if task == "classification":
        return torch.nn.functional.one_hot(targets.long(), num_classes).double() - 1.0 / num_classes
    return targets.reshape(-1, 1).double() - 0.5


def _labels(outputs: torch.Tensor, task: str) -> torch.Tensor:
    return outputs.argmax(-1) if task == "classification" else (outputs[..., 0] > 0).long()


def evaluate(kernel: ArchitectureKernel, train: PointFeatures, solutions: torch.Tensor, data: EvalSet, task: str,
             num_classes: int, *, chunk_size: int = 1024, progress: bool = False,
             desc: str = "evaluate") -> torch.Tensor:
    """Per-image confusion matrices (S, N, C', C') for ``S`` stacked solutions (S, n, C) on ``data``
    (``C' = 2`` for segmentation)."""
    s, _, c = solutions.shape
    stacked = solutions.permute(1, 0, 2).reshape(-1, s * c)
    classes = num_classes if task == "classification" else 2
    per_image = 1 if task == "classification" else data.radiance.shape[-2] * data.radiance.shape[-1]
    step = max(1, chunk_size // per_image)
    out = torch.zeros(s, len(data), classes * classes, dtype=torch.int64)
    for start in progress_bar(range(0, len(data), step), desc=desc, enabled=progress):
        stop = min(start + step, len(data))
        block = kernel(kernel.features(data.radiance[start:stop]), train)
        labels = _labels((block @ stacked).reshape(-1, s, c).transpose(0, 1), task)  # (S, points)
        truth = data.targets[start:stop].reshape(-1).long()
        image = torch.arange(stop - start).repeat_interleave(per_image)
        cells = (image * classes + truth) * classes + labels  # (S, points): image, true, predicted
        for i in range(s):
            out[i, start:stop] = torch.bincount(cells[i], minlength=(stop - start) * classes * classes).reshape(
                stop - start, -1)
    return out.reshape(s, len(data), classes, classes)


def metric_of(confusion: torch.Tensor, task: str) -> float:
    """Accuracy (classification) or mean IoU (segmentation) of a summed confusion matrix."""
    return accuracy(confusion) if task == "classification" else mean_iou(confusion)


def bootstrap_metrics(per_image: torch.Tensor, task: str, *, num: int = 1000, seed: int = 0) -> np.ndarray:
    """Metrics of ``num`` bootstrap resamples of the images: ``per_image`` (S, N, C, C) per-image
    confusion matrices of ``S`` predictors on the same ``N`` images; each resample draws ``N`` images
    with replacement, the same for every predictor. Returns (num, S)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise InputError(f"num must be an int >= 1, got {num!r}")
    s, n = per_image.shape[:2]
    rng = np.random.default_rng(seed)
    flat = per_image.reshape(s, n, -1).double()
    values = np.empty((num, s))
    for start in range(0, num, 100):  # counts of each image in 100 resamples at a time
        counts = torch.from_numpy(rng.multinomial(n, np.full(n, 1.0 / n), size=min(100, num - start))).double()
        sums = torch.einsum("bn,snk->bsk", counts, flat).round().long().reshape(len(counts), s, *per_image.shape[2:])
        values[start:start + len(counts)] = [[metric_of(c, task) for c in row] for row in sums]
    return values


def interval_of(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (percentile interval)."""
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence!r}")
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def extrapolate(sizes, metrics, target: float) -> float:
    """The metric at ``target`` training points from a power-law learning curve of the error,
    ``1 - metric = a n^-b`` fitted by least squares in log-log over ``sizes``. A curve that does not
    fall (``b <= 0``) gives the metric at the largest size; a perfect metric stays perfect."""
    errors = 1.0 - np.asarray(metrics, dtype=float)
    if np.any(errors <= 0):
        return 1.0
    slope, intercept = np.polyfit(np.log(np.asarray(sizes, dtype=float)), np.log(errors), 1)
    if slope >= 0:
        return float(metrics[int(np.argmax(sizes))])
    return float(1.0 - np.exp(intercept + slope * math.log(target)))


def kernel_regression(kernel: ArchitectureKernel, train: PointFeatures, train_targets: torch.Tensor, val: EvalSet,
                      test: EvalSet, task: str, num_classes: int, *, grid=REGULARIZATION_GRID, chunk_size: int = 1024,
                      bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0, extrapolate_to: int | None = None,
                      progress: bool = False) -> RidgeResult:
    """Kernel ridge regression of ``train_targets`` (labels (n,) or mask values (n,) per training
    point) with ``kernel``: the regulariser of ``grid`` with the best metric on ``val``, then the test
    metric and its bootstrap interval (module docstring).

    ``extrapolate_to``: also fit the first ``n/4`` and ``n/2`` training points (nested; sub-blocks of
    the same kernel, each with its own regulariser chosen on ``val``) and extrapolate the learning
    curve (:func:`extrapolate`) to that many points; the interval comes from the same bootstrap
    resamples, the curve refitted on each.
    """
    if task not in ("classification", "segmentation"):
        raise InputError(f"task must be 'classification' or 'segmentation', got {task!r}")
    n = len(train)
    if n != train_targets.shape[0]:
        raise InputError(f"{n} training points but {train_targets.shape[0]} targets")
    sizes = [n] if extrapolate_to is None else sorted({max(2, n // 4), max(2, n // 2), n})
    train_kernel = kernel_matrix(kernel, train, train, chunk_size=chunk_size, progress=progress, desc="train kernel")
    targets = regression_targets(train_targets, task, num_classes)
    candidates = []  # (size, regulariser, solution zero-padded to n rows)
    for size in sizes:
        for rel, alpha in ridge_solutions(train_kernel[:size, :size], targets[:size], grid, progress=progress).items():
            candidates.append((size, rel, torch.cat([alpha, alpha.new_zeros(n - size, alpha.shape[1])])))
    del train_kernel
    val_confusion = evaluate(kernel, train, torch.stack([c[2] for c in candidates]), val, task, num_classes,
                             chunk_size=chunk_size, progress=progress, desc="validation").sum(1)
    scores = [metric_of(c, task) for c in val_confusion]
    chosen = []
    for size in sizes:
        options = [i for i, c in enumerate(candidates) if c[0] == size]
        chosen.append(max(options, key=lambda i: (scores[i] if not math.isnan(scores[i]) else -1.0, candidates[i][1])))
    best = chosen[-1]
    log.info("regulariser %g x mean diagonal: validation %s %.4f", candidates[best][1],
             "accuracy" if task == "classification" else "mIoU", scores[best])
    per_image = evaluate(kernel, train, torch.stack([candidates[i][2] for i in chosen]), test, task, num_classes,
                         chunk_size=chunk_size, progress=progress, desc="test")
    metrics = [metric_of(p.sum(0), task) for p in per_image]
    resampled = bootstrap_metrics(per_image, task, num=bootstrap, seed=seed)
    result = RidgeResult(metrics[-1], interval_of(resampled[:, -1], confidence), candidates[best][1], scores[best],
                         {candidates[i][1]: scores[i] for i, c in enumerate(candidates) if c[0] == n}, n, len(test),
                         dict(zip(sizes, metrics)))
    if extrapolate_to is not None:
        result.extrapolated = extrapolate(sizes, metrics, extrapolate_to)
        result.extrapolated_interval = interval_of([extrapolate(sizes, row, extrapolate_to) for row in resampled],
                                                   confidence)
    return result
