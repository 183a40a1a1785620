"""Post-fabrication compensation: retrain only the digital backend on captured frames (METHOD.md,
stage 3).

The optics are frozen; what changes is the backend that reads them. :func:`captured_features` turns
the raw frames of a captures file into the feature tensors the backend reads, through an optical
system's :meth:`~simulator.system.OpticalSystem.features` (the *calibration layer*: tile positions,
dark level, conversion gain and exposure of that system; the student's own design system until a
calibration supplies fitted ones). :func:`finetune` then trains a copy of the student's backend on
those features with the task loss ("end-to-end compensation"), classic KD, or NTKD, where the frozen
teacher sees the raw images of the same samples (``source_indices``) and the student's kernel is over
the backend's parameters only. :func:`accuracy` scores a backend on captured features.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from simulator.errors import InputError

from .data.captures import CaptureDataset

log = logging.getLogger(__name__)

METHODS = ("task", "kd", "ntkd")


@dataclass
class CapturedSet:
    """Features of captured frames (N, M, h, w) float32, their labels (N,) and the index of each shown
    sample in its source dataset (N,)."""

    features: torch.Tensor
    labels: torch.Tensor
    source_indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def captured_features(captures, system, *, rows_per_batch: int = 256) -> CapturedSet:
    """Features of every complete row of a captures file (path or :class:`CaptureDataset`), each frame
    read with its own exposure, through ``system`` (the calibration layer, module docstring)."""
    import h5py

    data = captures if isinstance(captures, CaptureDataset) else CaptureDataset(captures)
    features = None
    with h5py.File(data.path, "r", swmr=True) as f:
        if "exposure_s" not in f:
            raise InputError(f"{data.path} has no per-frame exposure_s (written by hil.capture); cannot scale its frames")
        with torch.no_grad():
            for start in range(0, data.count, rows_per_batch):
                stop = min(start + rows_per_batch, data.count)
                frames = torch.from_numpy(f["frames"][start:stop].astype(np.float64))
                exposures = np.asarray(f["exposure_s"][start:stop], dtype=np.float64)
                for exposure in np.unique(exposures):  # usually one: rows of one exposure go together
                    rows = np.flatnonzero(exposures == exposure)
                    values = system.features(frames[rows], float(exposure)).float()
                    if features is None:
                        features = torch.empty((data.count, *values.shape[1:]))
                    features[start + rows] = values
    return CapturedSet(features, data.labels.clone(), data.source_indices.clone())


class PairedObjective:
    """An objective whose teacher sees the raw source image of each captured sample: calls ``inner``
    with ``teacher_x = source_inputs[source_indices[indices]]`` and the source indices (the teacher's
    per-sample cache key)."""

    def __init__(self, inner, source_inputs: torch.Tensor, source_indices: torch.Tensor):
        self.inner, self.source_inputs, self.source_indices = inner, source_inputs, source_indices

    def __call__(self, model, inputs, targets, *, indices):
        source = self.source_indices[indices]
        teacher_x = self.source_inputs[source].to(inputs.device)
        return self.inner(model, inputs, targets, teacher_x=teacher_x, indices=source)


def accuracy(backend: nn.Module, data: CapturedSet, batch_size: int = 1000) -> float:
    """Fraction of ``data`` the backend classifies right (eval mode, no gradients)."""
    was_training = backend.training
    backend.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            logits = backend(data.features[start:start + batch_size])
            correct += int((logits.argmax(1) == data.labels[start:start + batch_size]).sum())
    backend.train(was_training)
    return correct / len(data)


def finetune(student, train: CapturedSet, *, method: str = "task", teacher: nn.Module | None = None,
             source_inputs: torch.Tensor | None = None, loss: dict | None = None, epochs: int = 10,
             lr: float = 1e-3, batch_size: int = 64, seed: int = 0, val: CapturedSet | None = None,
             out_dir=None, progress: bool = False):
    """Retrain a copy of ``student.backend`` on captured features; returns ``(backend, TrainResult)``.

    ``method``: ``task`` (cross-entropy), ``kd`` or ``ntkd`` (``teacher`` and the raw ``source_inputs``
    (N_source, C, H, W) of the captured samples' source dataset needed; ``loss``: further fields of
    :class:`hil.config.LossConfig`). ``val`` selects the best epoch (else the last is kept). With
    ``out_dir`` the run is checkpointed and resumes like ``hil train``.
    """
    from .losses import build_objective
    from .trainer import Trainer

    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method != "task" and (teacher is None or source_inputs is None):
        raise InputError(f"method {method!r} needs the teacher and the source images its captures came from")
    if len(train) < batch_size:
        raise InputError(f"{len(train)} captured samples are fewer than one batch of {batch_size}")
    backend = copy.deepcopy(student.backend).train().requires_grad_(True)
    objective = build_objective({"method": method, "seed": seed, **(loss or {})}, "classification", teacher)
    if method != "task":
        objective = PairedObjective(objective, source_inputs, train.source_indices)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainer = Trainer(backend, objective, TensorDataset(train.features, train.labels), task="classification",
                          num_classes=int(train.labels.max()) + 1, optimizer=torch.optim.Adam(backend.parameters(), lr=lr),
                          val_data=None if val is None else TensorDataset(val.features, val.labels),
                          batch_size=batch_size, epochs=epochs, seed=seed, progress=progress,
                          out_dir=None if out_dir is None else Path(out_dir))
        result = trainer.fit()
    return backend.eval(), result


__all__ = ["CapturedSet", "METHODS", "PairedObjective", "accuracy", "captured_features", "finetune"]
