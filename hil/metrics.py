"""Evaluation metrics from a confusion matrix: accuracy, per-class IoU and mean IoU.

Classification and segmentation share one representation: a ``(C, C)`` integer confusion matrix whose
row is the true class and column the predicted class. Segmentation counts every pixel; a binary mask
task has ``C = 2`` (background 0, foreground 1). Accumulating counts (not averages) makes the metrics
exact when summed over batches and over data-parallel processes.
"""

from __future__ import annotations

import torch

from onn_core.errors import InputError


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count (true, predicted) pairs: a ``(num_classes, num_classes)`` int64 matrix, rows = true class.

    ``predicted`` and ``target`` are integer class labels of the same shape (any shape: ``(N,)`` for
    classification, ``(N, H, W)`` for segmentation).
    """
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    if predicted.shape != target.shape:
        raise InputError(f"predicted shape {tuple(predicted.shape)} differs from target shape {tuple(target.shape)}")
    p = predicted.reshape(-1).long().cpu()
    t = target.reshape(-1).long().cpu()
    for name, labels in (("predicted", p), ("target", t)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise InputError(f"{name} labels must lie in [0, {num_classes - 1}], got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(confusion: torch.Tensor) -> float:
    """Fraction of correct predictions (trace / total); NaN for an empty matrix."""
    total = int(confusion.sum())
    return float(confusion.diagonal().sum()) / total if total else float("nan")


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each class, ``TP / (TP + FP + FN)``; NaN where a class never occurs."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the targets or predictions."""
    iou = iou_per_class(confusion)
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if bool(present.any()) else float("nan")


def summary_metrics(task: str) -> tuple[str, ...]:
    """The names of the metrics that summarise a run of ``task`` (keys of
    :meth:`ConfusionAccumulator.compute`): ``("accuracy",)`` for classification, ``("accuracy",
    "miou")`` (pixel accuracy, mean IoU) for segmentation."""
    if task == "classification":
        return ("accuracy",)
    if task == "segmentation":
        return ("accuracy", "miou")
    raise InputError(f"task must be 'classification' or 'segmentation', got {task!r}")


def predictions(output: torch.Tensor, task: str) -> torch.Tensor:
    """Class labels from a model output.

    ``classification``: ``(N, C)`` logits -> argmax ``(N,)``. ``segmentation``: ``(N, 1, H, W)`` logits
    of the foreground -> ``(N, H, W)`` labels (1 where logit > 0), or ``(N, C, H, W)`` -> argmax over C.
    """
    if task == "classification":
        if output.ndim != 2:
            raise InputError(f"classification output must be (N, classes), got shape {tuple(output.shape)}")
        return output.argmax(1)
    if task == "segmentation":
        if output.ndim != 4:
            raise InputError(f"segmentation output must be (N, C, H, W), got shape {tuple(output.shape)}")
        return (output[:, 0] > 0).long() if output.shape[1] == 1 else output.argmax(1)
    raise InputError(f"task must be 'classification' or 'segmentation', got {task!r}")


class ConfusionAccumulator:
    """Sum confusion matrices over batches (and, with :meth:`all_reduce`, over processes)."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of integer labels."""
        self.confusion += confusion_matrix(predicted, target.reshape(predicted.shape), self.num_classes)

    def all_reduce(self) -> None:
        """Sum the counts of every process of the default ``torch.distributed`` group (no-op if none)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """``accuracy``, ``miou``, ``iou`` (per class) and ``confusion`` (nested lists) as plain types."""
        return {
            "accuracy": accuracy(self.confusion),
            "miou": mean_iou(self.confusion),
            "iou": [float(v) for v in iou_per_class(self.confusion)],
            "confusion": self.confusion.tolist(),
        }
