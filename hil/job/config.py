"""The ``hil run`` config (``examples/run_sim.yaml``): its schema, the loaded job, and its identity.

A job's **identity** is what its outputs depend on: the resolved config, the fabrication description
(the ``errors`` section of the ``fabrication`` optics file, its seed included) and the bench file's
settings. Each top-level field affects the job from one step on (:data:`FIRST_STEP`): a change is
harmless while that step has not run, and makes a finished run folder another run once it has
(:mod:`hil.job.state`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onn_core.config import build, load_yaml, to_plain
from onn_core.errors import ConfigError
from onn_core.files import resolve_relative
from simulator.device import check_device_name, resolve_device

from ..finetune import COMPENSATIONS

# the first step whose output depends on each top-level field of the identity (None: no output does)
FIRST_STEP = {"student": "train", "teacher": "train", "bench": "locate",
              "bench_settings": "locate", "fabrication": "calibrate", "fabrication_errors": "calibrate",
              "calibration": "calibrate", "data": "capture", "capture": "capture", "finetune": "finetune",
              "out_dir": None, "clock": None, "threads": None, "device": None}


@dataclass
class TrainStep:
    """How a model is obtained: trained here from a ``hil train`` config (``config``, with ``set``:
    ``{dotted path: value}`` overrides, as ``hil train --set``; a relative path among them, e.g.
    ``model.optics: optics_x.yaml``, is relative to the run config that sets it, not to the training
    config: :func:`training_config`), or an existing run folder ``run_dir`` (or, for the teacher, a
    ``checkpoint`` file)."""

    config: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    checkpoint: str | None = None

    def __post_init__(self):
        given = [name for name in ("config", "run_dir", "checkpoint") if getattr(self, name)]
        if len(given) != 1:
            raise ConfigError("config | run_dir | checkpoint", given, "exactly one of them")


@dataclass
class CaptureStep:
    """Which samples are captured: stratified ``fractions`` of the training split (each per class;
    uniform for segmentation, :mod:`hil.job.task`; the largest is captured, the others are nested in
    it), ``test_size`` held-out test images and ``val_size`` captured validation images (from the
    training split, disjoint from the captured training samples; the fine-tuning keeps the backend
    best on them), drawn with ``seed``.

    Exposure (:mod:`hil.job.exposure`): ``exposure_s`` (s) fixes it; null chooses it from the
    calibration so that the brightest expected frame peaks at ``1 - headroom`` of the camera's range.
    A capture set with more than ``max_clipped_fraction`` of its pixels clipped is refused."""

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1])
    test_size: int = 2000
    val_size: int = 500
    seed: int = 0
    exposure_s: float | None = None
    headroom: float = 0.25
    max_clipped_fraction: float = 0.001

    def __post_init__(self):
        if not 0 < self.headroom < 1:
            raise ConfigError("capture.headroom", self.headroom, "a fraction of the camera's range in (0, 1)")
        if not 0 <= self.max_clipped_fraction < 1:
            raise ConfigError("capture.max_clipped_fraction", self.max_clipped_fraction, "a fraction in [0, 1)")
        if self.exposure_s is not None and not self.exposure_s > 0:
            raise ConfigError("capture.exposure_s", self.exposure_s, "an exposure > 0 (s), or null to choose it")
        if self.val_size < 0:
            raise ConfigError("capture.val_size", self.val_size, "a number of images >= 0")


@dataclass
class FinetuneStep:
    """The compensation: ``methods`` (of :data:`hil.finetune.COMPENSATIONS`), each trained for ``steps``
    Adam steps of ``batch_size`` at ``lr`` on every captured fraction, once per seed of ``seeds``;
    ``synthetic``: how many uncaptured training images the synthetic methods render; ``loss``: NTKD
    settings (:class:`hil.config.LossConfig` fields); ``teacher_margin``: how far the teacher must be
    above the design on the test images for the NTKD methods to run (:mod:`hil.job.controls`).
    Every run keeps the backend best on the captured validation images (``capture.val_size``)."""

    methods: list[str] = field(default_factory=lambda: list(COMPENSATIONS))
    steps: int = 400
    lr: float = 3e-3
    batch_size: int = 64
    seeds: list[int] = field(default_factory=lambda: [0])
    synthetic: int = 5000
    loss: dict[str, Any] = field(default_factory=lambda: {"kernel_batch": 64, "student_method": "exact_mlp",
                                                          "teacher_method": "jvp_projection"})
    teacher_margin: float = 0.03

    def __post_init__(self):
        bad = [m for m in self.methods if m not in COMPENSATIONS]
        if bad or not self.methods:
            raise ConfigError("finetune.methods", self.methods, f"a non-empty list of {list(COMPENSATIONS)}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.synthetic < 0 or not self.seeds:
            raise ConfigError("finetune", {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
                                           "synthetic": self.synthetic, "seeds": self.seeds},
                              "steps >= 1, batch_size >= 1, lr > 0, synthetic >= 0, at least one seed")


@dataclass
class JobConfig:
    """A ``hil run`` config (examples/run_sim.yaml). Relative paths are relative to the config file.
    ``clock`` overrides the bench's (``virtual``: a simulated bench runs as fast as it renders).
    ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``: CUDA when available) runs the student and
    teacher training (it sets their ``train.device``), the synthetic captures' rendering, the
    fine-tuning and the calibration's mismatch fit; a resumed run may change it (not part of what
    the outputs are: :data:`FIRST_STEP`)."""

    out_dir: str
    bench: str
    student: TrainStep
    teacher: TrainStep | None = None
    fabrication: str | None = None
    data: dict[str, Any] = field(default_factory=lambda: {"dataset": "fashion_mnist"})
    calibration: dict[str, Any] = field(default_factory=dict)
    capture: CaptureStep = field(default_factory=CaptureStep)
    finetune: FinetuneStep = field(default_factory=FinetuneStep)
    clock: str | None = None
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        check_device_name(self.device, "device")
        if any(COMPENSATIONS[m].loss == "ntkd" for m in self.finetune.methods) and self.teacher is None:
            raise ConfigError("teacher", None, "a teacher (config, run_dir or checkpoint) for the NTKD methods "
                              f"{[m for m in self.finetune.methods if COMPENSATIONS[m].loss == 'ntkd']}")
        if not self.capture.fractions or not all(0 < f <= 1 for f in self.capture.fractions):
            raise ConfigError("capture.fractions", self.capture.fractions, "a non-empty list of numbers in (0, 1]")

    @property
    def needs_teacher(self) -> bool:
        """Whether a fine-tuning method distils from the teacher."""
        return any(COMPENSATIONS[m].loss != "task" for m in self.finetune.methods)


@dataclass
class Job:
    """A loaded job: its config, the folder its relative paths refer to, its run folder, and optionally
    a bench script's own ``datasets = (train split, test split)`` of ``(image (C, H, W) in [0, 1], label)``
    TensorDatasets used instead of ``config.data``."""

    config: JobConfig
    base_dir: Path
    run_dir: Path
    datasets: tuple | None = None

    def path(self, value: str | None) -> Path | None:
        """A path of the config resolved against the config file's folder (None stays None)."""
        return None if value is None else resolve_relative(value, self.base_dir).resolve()


def load_job(path, out_dir=None) -> Job:
    """A :class:`Job` from a ``hil run`` YAML file (``out_dir`` overrides the config's)."""
    path = Path(path)
    cfg = build(JobConfig, load_yaml(path), "")
    base = path.resolve().parent
    run_dir = Path(out_dir).resolve() if out_dir is not None else (base / cfg.out_dir).resolve()
    return Job(cfg, base, run_dir)


#: The fields of a ``hil train`` config that hold paths (:func:`hil.config.parse_run_config`), and the
#: suffixes of the ``data.options`` entries that do.
TRAIN_PATH_FIELDS = ("model.optics", "data.root", "teacher.checkpoint", "out_dir")
TRAIN_PATH_OPTIONS = ("_path", "root")


def training_config(job: Job, role: str):
    """The :class:`hil.config.RunConfig` that trains ``role`` (``student`` or ``teacher``): its ``config``
    file with its ``set`` overrides, their relative paths (:func:`resolved_overrides`) resolved against
    the run config's folder. A missing file is refused naming ``<role>.config``."""
    from ..config import load_run_config

    step = getattr(job.config, role)
    path = job.path(step.config)
    if not path.is_file():
        raise ConfigError(f"{role}.config", step.config, f"a `hil train` config file (no file at {path})")
    overrides = resolved_overrides(step.set, job.base_dir)
    overrides["train.device"] = str(job_device(job))  # the job's device trains its models
    return load_run_config(path, overrides)


def resolved_overrides(overrides: dict, base: Path) -> dict:
    """``overrides`` (``{dotted path: value}``, a value possibly a mapping of further fields) with the
    relative paths among them (:data:`TRAIN_PATH_FIELDS`, ``data.options`` entries ending in
    :data:`TRAIN_PATH_OPTIONS`) made absolute against ``base``."""
    def resolve(dotted: str, value):
        if isinstance(value, dict):
            return {key: resolve(f"{dotted}.{key}", item) for key, item in value.items()}
        is_path = dotted in TRAIN_PATH_FIELDS or (dotted.startswith("data.options.")
                                                  and dotted.endswith(TRAIN_PATH_OPTIONS))
        return str(resolve_relative(value, base).resolve()) if is_path and isinstance(value, str) else value

    return {dotted: resolve(dotted, value) for dotted, value in (overrides or {}).items()}


def job_device(job: Job) -> torch.device:
    """The device the job computes on (``device``; :func:`simulator.device.resolve_device`): CUDA asked
    for where there is none is refused naming ``device``."""
    return resolve_device(job.config.device, "device")


def fabrication_errors(job: Job) -> dict | None:
    """The ``errors`` section of the job's ``fabrication`` optics file (None without one); refused
    (:class:`ConfigError` naming ``fabrication``) if the file is missing or has no errors section."""
    if job.config.fabrication is None:
        return None
    path = job.path(job.config.fabrication)
    if not path.is_file():
        raise ConfigError("fabrication", job.config.fabrication, f"an optics file (no file at {path})")
    fabricated = load_yaml(path)
    if "errors" not in fabricated:
        raise ConfigError("fabrication", job.config.fabrication, "an optics file with an errors section")
    errors = copy.deepcopy(fabricated["errors"])
    if isinstance(errors, dict) and errors.get("aberration") is None:
        errors.pop("aberration", None)
    return errors


def bench_settings(job: Job) -> dict:
    """The bench file's mapping (refused naming ``bench`` if the file is missing)."""
    path = job.path(job.config.bench)
    if not path.is_file():
        raise ConfigError("bench", job.config.bench, f"a bench config file (no file at {path})")
    return load_yaml(path)


def job_identity(job: Job) -> dict:
    """What the job's outputs depend on (module docstring): the plain config plus ``fabrication_errors``
    and ``bench_settings``, the contents of the files the config names; as JSON reads it back (so that
    it compares equal to the identity ``state.json`` recorded)."""
    identity = {**to_plain(job.config), "fabrication_errors": fabrication_errors(job), "bench_settings": bench_settings(job)}
    return json.loads(json.dumps(identity, default=str))


__all__ = ["FIRST_STEP", "TRAIN_PATH_FIELDS", "CaptureStep", "FinetuneStep", "Job", "JobConfig", "TrainStep",
           "bench_settings", "fabrication_errors", "job_device", "job_identity", "load_job", "resolved_overrides",
           "training_config"]
