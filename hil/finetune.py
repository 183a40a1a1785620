"""Post-fabrication compensation: retrain only the digital backend on captured frames
(docs/method.md#stage-3-compensation).

The optics are frozen; what changes is the backend that reads them. :func:`captured_features` turns
the raw frames of a captures file into the feature tensors the backend reads, through the
*calibration layer* (:class:`calibration.layer.CalibrationLayer`: dark frame, measured gain,
vignetting, fitted tile shifts and brightness), or, for the uncompensated reference, through the
nominal :meth:`~simulator.system.OpticalSystem.features` of the design (tiles where the design puts
them, nominal sensor). :func:`synthetic_features` renders images that were never captured through the
calibrated forward model (:meth:`calibration.api.Calibration.calibrated_system`: the design with the
fitted errors, measured display and sensor) with sensor noise, and reads them through the same layer,
so they have the statistics of real captures. :func:`finetune` then trains a copy of the student's
backend on those features with the task loss ("end-to-end compensation"), classic KD, or NTKD, where
the frozen teacher sees the raw images of the same samples (``source_indices``) and the student's
kernel is over the backend's parameters only. :func:`accuracy` scores a backend on captured features
(:func:`score`: the task's metric, mean IoU for segmentation, whose labels are masks).

The job's compensation methods (:data:`COMPENSATIONS`): ``e2e`` (task loss on real captures),
``ntkd``, each of the two plus synthetic captures (``e2e_synthetic``, ``ntkd_synthetic``), and each
of the two on the nominal features of the captures, without the calibration layer (``e2e_nominal``,
``ntkd_nominal``). :func:`simulated_features` renders the same images through the design as designed
(the job's ``design_ft`` control: the same fine-tuning without fabrication).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from onn_core.errors import InputError

from .data.captures import CaptureDataset

log = logging.getLogger(__name__)

METHODS = ("task", "kd", "ntkd")


class Compensation(NamedTuple):
    """A compensation method of the job: its :func:`finetune` ``loss`` method, whether synthetic
    captures are added, and how captured frames become features: ``layer`` (the calibration layer) or
    ``nominal`` (the design's nominal tile cut, no calibration: the paper's setting)."""

    loss: str
    synthetic: bool
    features: str


#: The job's compensation methods.
COMPENSATIONS = {"e2e": Compensation("task", False, "layer"), "ntkd": Compensation("ntkd", False, "layer"),
                 "e2e_synthetic": Compensation("task", True, "layer"),
                 "ntkd_synthetic": Compensation("ntkd", True, "layer"),
                 "e2e_nominal": Compensation("task", False, "nominal"),
                 "ntkd_nominal": Compensation("ntkd", False, "nominal")}


@dataclass
class CapturedSet:
    """Features of captured frames (N, M, h, w) float32, their labels (N,) (for segmentation their masks
    (N, 1, H, W), taken from the source dataset: :mod:`hil.job.task`) and the index of each shown
    sample in its source dataset (N,)."""

    features: torch.Tensor
    labels: torch.Tensor
    source_indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> "CapturedSet":
        """The rows ``rows`` (indices or a boolean mask)."""
        rows = torch.as_tensor(rows)
        return CapturedSet(self.features[rows], self.labels[rows], self.source_indices[rows])

    @staticmethod
    def concat(*sets: "CapturedSet") -> "CapturedSet":
        return CapturedSet(torch.cat([s.features for s in sets]), torch.cat([s.labels for s in sets]),
                           torch.cat([s.source_indices for s in sets]))


def captured_features(captures, layer, *, design_id: str | None = None, calibration_id: str | None = None,
                      rows_per_batch: int = 256) -> CapturedSet:
    """Features of every complete row of a captures file (path or :class:`CaptureDataset`), each frame
    read with its own exposure, through ``layer``: a calibration layer (callable ``(frames_dn,
    exposure_s) -> features``) or an :class:`~simulator.system.OpticalSystem`, whose nominal
    :meth:`~simulator.system.OpticalSystem.features` are used.

    With ``design_id`` (``calibration_id``), a file captured through another design (paired with
    another calibration), or recording none, is refused (:class:`~hil.data.errors.CaptureFileError`).
    A truncated file raises :class:`~hil.data.errors.TruncatedCaptureError`, a frame failing its
    checksum :class:`~hil.data.errors.CorruptFrameError` naming it.
    """
    from simulator.system import OpticalSystem

    read = layer.features if isinstance(layer, OpticalSystem) else layer
    data = captures if isinstance(captures, CaptureDataset) else CaptureDataset(captures)
    data.check_identity(design_id=design_id, calibration_id=calibration_id)
    if data.attrs.get("content", "frames") != "frames":
        raise InputError(f"{data.path} holds {data.attrs['content']}, not camera frames: read it with read_synthetic")
    if data.count == 0:
        raise InputError(f"{data.path} holds no complete frame")
    if not data.has("exposure_s"):
        raise InputError(f"{data.path} has no per-frame exposure_s (written by hil.capture); cannot scale its frames")
    features = None
    with torch.no_grad():
        for start in range(0, data.count, rows_per_batch):
            stop = min(start + rows_per_batch, data.count)
            frames = torch.from_numpy(data.rows("frames", start, stop).astype(np.float64))
            exposures = np.asarray(data.rows("exposure_s", start, stop), dtype=np.float64)
            for exposure in np.unique(exposures):  # usually one: rows of one exposure go together
                rows = np.flatnonzero(exposures == exposure)
                values = read(frames[rows], float(exposure)).float()
                if features is None:
                    features = torch.empty((data.count, *values.shape[1:]))
                features[start + rows] = values
    return CapturedSet(features, data.labels.clone(), data.source_indices.clone())


def synthetic_features(calibration, images: torch.Tensor, labels: torch.Tensor, source_indices: torch.Tensor, *,
                       exposure_s: float, seed: int = 0, batch_size: int = 500, device="cpu") -> CapturedSet:
    """Synthetic captures of ``images`` (N, C, H, W) in [0, 1]: what the calibrated bench would record,
    read through the same calibration layer as real frames (module docstring).

    Each image is shown as the gray levels a capture shows (:func:`simulator.display.quantise_intensities`,
    as :func:`hil.capture.display_image`), rendered by ``calibration.calibrated_system()`` at
    ``exposure_s``, with the sensor noise of its sensor model (its ``noise`` switch; seeded by
    ``seed``); its dark-subtracted photo-electrons (the noise-free black frame of the same model
    removed) go through ``calibration.layer().from_electrons``. ``device``: where they are rendered
    (the features come back on the CPU; the noise draws of a CUDA generator differ from the CPU's).
    """
    system, layer = calibration.calibrated_system().to(device), calibration.layer().to(device)
    system.eval()
    with torch.no_grad():
        black = system.frame(torch.zeros((1, *images.shape[1:]), dtype=torch.int64, device=device), exposure_s,
                             noise=False)
        black_e = system.sensor.electrons(black)
    read = lambda frames: layer.from_electrons(system.sensor.electrons(frames) - black_e, exposure_s)  # noqa: E731
    return _rendered(system, read, images, labels, source_indices, exposure_s=exposure_s, seed=seed, noise=None,
                     batch_size=batch_size, device=device)


def simulated_features(system, images: torch.Tensor, labels: torch.Tensor, source_indices: torch.Tensor, *,
                       exposure_s: float, seed: int = 0, batch_size: int = 500) -> CapturedSet:
    """The simulated nominal features of ``images`` (N, C, H, W) in [0, 1]: frames of the design as
    designed (``system``, an :class:`~simulator.system.OpticalSystem`, no fabrication errors) at
    ``exposure_s``, with sensor noise on (seeded by ``seed``), read by its nominal
    :meth:`~simulator.system.OpticalSystem.features`: the data of the job's ``design_ft`` control."""
    return _rendered(system, lambda frames: system.features(frames, exposure_s), images, labels, source_indices,
                     exposure_s=exposure_s, seed=seed, noise=True, batch_size=batch_size)


def _rendered(system, read, images, labels, source_indices, *, exposure_s: float, seed: int, noise, batch_size: int,
              device="cpu"):
    """Frames of ``images`` shown as gray levels and rendered by ``system`` (``noise`` as
    :meth:`~simulator.system.OpticalSystem.frame`) on ``device`` (where ``system`` and ``read`` compute),
    read by ``read(frames_dn) -> features``, returned on the CPU."""
    if images.ndim != 4 or len(images) != len(labels) or len(images) != len(source_indices):
        raise InputError(f"images must be (N, C, H, W) with one label and source index each, got {tuple(images.shape)}, "
                         f"{len(labels)} labels, {len(source_indices)} indices")
    from simulator.display import quantise_intensities

    system.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            gray = quantise_intensities(images[start:start + batch_size].to(device), system.display.levels)
            out.append(read(system.frame(gray, exposure_s, noise=noise, generator=generator)).float().cpu())
    return CapturedSet(torch.cat(out), labels.clone(), source_indices.clone())


def write_synthetic(path, data: CapturedSet, *, calibration_id: str, design_id: str, exposure_s: float,
                    seed: int, compression: str | None = "gzip") -> Path:
    """Store synthetic captures (:func:`synthetic_features`) as a captures file (the schema of
    :mod:`hil.data.captures`, ``content = "features"``: row ``i`` of ``frames`` holds the features
    (M, h, w) float32 of sample ``source_indices[i]``; its ``labels`` entry the class label, or
    :data:`hil.capture.DENSE_TARGET` for a mask, which is not stored: a reader takes it back from the
    source dataset by index), with checksums, written under a temporary name
    and renamed into place (a crash leaves no partial file). Returns ``path``."""
    from .capture import row_label
    from .data.capture_writer import CaptureWriter, create_capture_file, remove_stale_temporaries

    path = Path(path)
    if len(data) == 0:
        raise InputError("no synthetic captures to write")
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    features = data.features.detach().cpu().numpy().astype(np.float32)
    try:
        create_capture_file(tmp, frame_shape=features.shape[1:], frame_dtype=np.float32,
                            row_fields={"labels": ((), "i8"), "indices": ((), "i8")},
                            planned=data.source_indices.numpy(), compression=compression,
                            attrs={"content": "features", "calibration_id": calibration_id, "design_id": design_id,
                                   "exposure_s": float(exposure_s), "seed": int(seed)})
        with CaptureWriter(tmp) as writer:
            for row in range(len(data)):
                writer.append({"frames": features[row], "labels": row_label(data.labels[row]),
                               "indices": int(data.source_indices[row])})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_synthetic(path, *, calibration_id: str | None = None, design_id: str | None = None) -> CapturedSet:
    """Synthetic captures written by :func:`write_synthetic`, read by the captures reader (checksums
    verified); refused (:class:`~hil.data.errors.CaptureFileError`) when made for another calibration
    or design than the ones given."""
    data = CaptureDataset(path)
    data.check_identity(design_id=design_id, calibration_id=calibration_id)
    if data.attrs.get("content") != "features":
        raise InputError(f"{path} holds camera frames, not synthetic features: read it with captured_features")
    features = torch.from_numpy(np.asarray(data.rows("frames", 0, data.count), dtype=np.float32))
    data.close()
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


#: The metric that scores (and selects) a backend of each task: a key of
#: :meth:`hil.metrics.ConfusionAccumulator.compute`.
TASK_METRIC = {"classification": "accuracy", "segmentation": "miou"}


def score(backend: nn.Module, data: CapturedSet, task: str = "classification", batch_size: int = 1000) -> float:
    """The task's metric (:data:`TASK_METRIC`) of the backend on ``data`` (eval mode, no gradients):
    :func:`accuracy` for classification; for segmentation (``data.labels`` the masks (N, 1, H, W)) the
    mean IoU of object and background over every pixel of ``data`` (:func:`hil.metrics.mean_iou`)."""
    if task == "classification":
        return accuracy(backend, data, batch_size)
    from .metrics import ConfusionAccumulator, predictions

    if task not in TASK_METRIC:
        raise InputError(f"task must be one of {list(TASK_METRIC)}, got {task!r}")
    was_training = backend.training
    backend.eval()
    confusion = ConfusionAccumulator(2)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            output = backend(data.features[start:start + batch_size])
            confusion.update(predictions(output, task), data.labels[start:start + batch_size].long())
    backend.train(was_training)
    return confusion.compute()[TASK_METRIC[task]]


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
             max_steps: int | None = None, out_dir=None, progress: bool = False, device="cpu",
             task: str = "classification"):
    """Retrain a copy of ``student.backend`` on captured features; returns ``(backend, TrainResult)``.

    ``method``: ``task`` (cross-entropy), ``kd`` or ``ntkd`` (``teacher`` and the raw ``source_inputs``
    (N_source, C, H, W) of the captured samples' source dataset needed; ``loss``: further fields of
    :class:`hil.config.LossConfig`). ``val`` (disjoint from ``train`` and from the test set) selects
    the backend: the best of every epoch's end and the last step (else the last is kept); the
    result's ``best_metric`` is its validation accuracy (mean IoU for segmentation).
    ``max_steps`` stops after that many optimiser steps (an equal budget whatever the set's size). With
    ``out_dir`` the run is checkpointed and resumes like ``hil train``. ``device``: where the backend
    trains (the ``teacher`` must be there already); the backend comes back on the CPU. ``task``:
    ``classification`` (``train.labels`` class labels) or ``segmentation`` (``train.labels`` masks (N,
    1, H, W), the loss BCE + Dice, the backend selected, and ``best_metric``, by mean IoU:
    :data:`TASK_METRIC`).
    """
    from .losses import build_objective
    from .trainer import Trainer

    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if task not in TASK_METRIC:
        raise InputError(f"task must be one of {list(TASK_METRIC)}, got {task!r}")
    if method != "task" and (teacher is None or source_inputs is None):
        raise InputError(f"method {method!r} needs the teacher and the source images its captures came from")
    if len(train) < batch_size:
        raise InputError(f"{len(train)} captured samples are fewer than one batch of {batch_size}")
    if max_steps is not None:
        epochs = -(-int(max_steps) // (len(train) // batch_size))
    backend = copy.deepcopy(student.backend).train().requires_grad_(True)
    objective = build_objective({"method": method, "seed": seed, **(loss or {})}, task, teacher)
    if method != "task":
        objective = PairedObjective(objective, source_inputs, train.source_indices)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainer = Trainer(backend, objective, TensorDataset(train.features, train.labels), task=task,
                          num_classes=int(train.labels.max()) + 1 if task == "classification" else 2,
                          monitor=TASK_METRIC[task], optimizer=torch.optim.Adam(backend.parameters(), lr=lr),
                          val_data=None if val is None else TensorDataset(val.features, val.labels),
                          batch_size=batch_size, epochs=epochs, max_steps=max_steps, seed=seed, progress=progress,
                          out_dir=None if out_dir is None else Path(out_dir), restore_best=False, device=device)
        result = trainer.fit()
    backend = backend.cpu()
    if val is not None:  # the last step may fall inside an epoch, which the trainer did not evaluate
        last = score(backend, val, task)
        if trainer.best_state is not None and result.best_metric >= last:
            backend.load_state_dict(trainer.best_state)
        else:
            result.best_metric, result.best_epoch = last, result.epochs_completed + 1
    return backend.eval(), result


__all__ = ["COMPENSATIONS", "CapturedSet", "Compensation", "METHODS", "PairedObjective", "TASK_METRIC", "accuracy",
           "captured_features", "finetune", "read_synthetic", "score", "simulated_features", "synthetic_features",
           "write_synthetic"]
