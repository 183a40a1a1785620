"""The schema of a ``hil train`` job: YAML validated into typed dataclasses.

One file describes one run: what is trained (``job``: a teacher or an optical student), on which
task and data, with which loss (task only, classic KD or NTKD), optimiser and schedule, and how the
run is checkpointed and stopped. Validation goes through :func:`onn_core.config.build`, so a bad field
raises :class:`~onn_core.errors.ConfigError` naming its dotted YAML path. Example::

    job: student
    task: classification
    seed: 0
    data: {dataset: fashion_mnist, batch_size: 128}
    model: {name: optical_student, num_kernels: 8, kernel_size: 7}
    teacher: {checkpoint: runs/teacher/checkpoints/best.pt}
    loss: {method: ntkd, task_weight: 1.0, ntk_weight: 1.0, discrepancy: cka}
    optim: {name: adam, lr: 0.001}
    train: {epochs: 10, early_stopping_patience: 3}

Relative paths (``data.root``, ``data.options`` entries whose name ends in ``_path`` or ``root``,
``teacher.checkpoint``, ``out_dir``) are resolved against the folder of the YAML file by
:func:`load_run_config`, also where they come from its ``overrides`` (``hil train --set``).

Resuming a run (:func:`config_changes`): fields of :data:`RESUME_IGNORED` may differ from the
checkpoint's config, fields of :data:`RESUME_FIXED` never, any other only when the caller accepts the
change (``hil train --resume-changed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onn_core.config import build, load_yaml, to_plain
from onn_core.errors import ConfigError
from onn_core.files import resolve_relative

from .losses import DEFAULT_KERNEL_BATCH, DISCREPANCIES
from .ntk import METHODS as NTK_METHODS

#: Fields a resumed run can never change (it would iterate over other data, load the checkpoint's
#: weights into another model, or its optimiser state into another optimiser): start afresh instead.
RESUME_FIXED = ("job", "task", "seed", "model", "data.dataset", "data.root", "data.train_subset", "data.val_size",
                "data.batch_size", "data.options", "optim.name", "train.freeze")
#: Fields that do not change what a run computes (where it writes, how it shows progress, how often it
#: writes ``last.pt``): they may differ from the checkpoint's config on resume.
RESUME_IGNORED = ("out_dir", "train.progress", "train.checkpoint_every_steps")


@dataclass
class DataConfig:
    """Which data, how much of it, and the batch size.

    ``batch_size`` is the global batch (split evenly across data-parallel processes). ``train_subset``
    keeps a seeded random subset of that many training samples (``None``: all). ``val_size`` samples
    are held out of the training split for early stopping and model selection; the test split is
    only evaluated at the end. ``options`` go to the dataset builder (:func:`hil.data.build_datasets`);
    relative paths in those whose name ends in ``_path`` or ``root`` are resolved like ``root``.
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    train_subset: int | None = None
    val_size: int = 5000
    test_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 500
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}", getattr(self, name), "an integer >= 1")
        if self.val_size < 0:
            raise ConfigError("data.val_size", self.val_size, "an integer >= 0")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name}", getattr(self, name), "null or an integer >= 1")


@dataclass
class TeacherConfig:
    """The frozen teacher of a student job: a checkpoint written by a ``job: teacher`` run (its model
    config is read from the checkpoint)."""

    checkpoint: str


@dataclass
class LossConfig:
    """``L = task_weight * L_task + ntk_weight * D(K_teacher, K_student)`` for ``ntkd``;
    ``(1 - kd_mix) * L_task + kd_mix * T^2 KL`` for ``kd``; ``L_task`` alone for ``task``.

    NTK term (:class:`hil.losses.NTKDObjective`): kernels on the first ``kernel_batch`` samples of each
    batch (under data-parallel training: of each process's shard of it), the frozen teacher's by
    ``teacher_method`` (cached per sample for the sketch methods), the student's by ``student_method``
    over its trainable parameters, differentiated (second order); methods as in :mod:`hil.ntk`
    (``num_projections``, ``output_sketch_dim`` for the estimators; ``seed`` seeds their random
    directions, ``null``: the run's ``seed``). ``exact`` student kernels cost far more than
    ``sum_of_logits`` ones on noisy optical students (see ``examples/train_fmnist_ntkd.yaml``).
    ``discrepancy``: how two kernels are compared (``mse`` raw, ``normalized`` / ``normalized_trace``
    MSE of kernels scaled to unit Frobenius norm / unit mean diagonal, ``cka`` 1 - centred kernel
    alignment). ``alignment_weight``: weight of a kernel-target alignment term on the student's kernel
    (:func:`hil.losses.kernel_target_alignment`; 0: off).
    """

    method: Literal["task", "kd", "ntkd"] = "task"
    task_weight: float = 1.0
    ntk_weight: float = 1.0
    temperature: float = 4.0
    kd_mix: float = 0.5
    discrepancy: Literal[DISCREPANCIES] = "cka"
    kernel_batch: int = DEFAULT_KERNEL_BATCH
    student_method: Literal[NTK_METHODS] = "exact"
    teacher_method: Literal[NTK_METHODS] = "exact"
    num_projections: int = 64
    output_sketch_dim: int | None = None
    seed: int | None = None
    alignment_weight: float = 0.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError("loss.temperature", self.temperature, "a number > 0")
        if not 0.0 <= self.kd_mix <= 1.0:
            raise ConfigError("loss.kd_mix", self.kd_mix, "a number in [0, 1]")
        for name in ("task_weight", "ntk_weight", "alignment_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}", getattr(self, name), "a number >= 0")
        if self.kernel_batch < 2:
            raise ConfigError("loss.kernel_batch", self.kernel_batch, "an integer >= 2")
        if self.num_projections < 1:
            raise ConfigError("loss.num_projections", self.num_projections, "an integer >= 1")
        if self.output_sketch_dim is not None and self.output_sketch_dim < 1:
            raise ConfigError("loss.output_sketch_dim", self.output_sketch_dim, "null or an integer >= 1")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (stepped once per optimiser step)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["constant", "cosine"] = "constant"

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError("optim.lr", self.lr, "a number > 0")
        if self.weight_decay < 0:
            raise ConfigError("optim.weight_decay", self.weight_decay, "a number >= 0")


@dataclass
class TrainConfig:
    """Length, checkpointing, stopping, freezing and the compute device of a run.

    ``max_steps`` caps the optimiser steps (``None``: ``epochs`` full epochs). ``checkpoint_every_steps``
    writes ``checkpoints/last.pt`` every that many steps (0: at the end of each epoch only).
    ``early_stopping_patience``: stop after that many evaluations without improvement of the monitored
    validation metric (``accuracy`` for classification, ``miou`` for segmentation). ``freeze`` names
    model parts (attributes such as ``frontend``, ``backend``) whose parameters are not trained.
    ``deterministic``: ``torch.use_deterministic_algorithms`` during the run (matters on CUDA; warns
    where an operation has no deterministic implementation). ``threads``: torch intra-op threads.
    """

    epochs: int = 10
    max_steps: int | None = None
    checkpoint_every_steps: int = 0
    early_stopping_patience: int | None = None
    freeze: list[str] = field(default_factory=list)
    device: str = "cpu"
    deterministic: bool = True
    progress: bool = True
    threads: int | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError("train.epochs", self.epochs, "an integer >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("train.max_steps", self.max_steps, "null or an integer >= 1")
        if self.checkpoint_every_steps < 0:
            raise ConfigError("train.checkpoint_every_steps", self.checkpoint_every_steps, "an integer >= 0")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError("train.early_stopping_patience", self.early_stopping_patience, "null or an integer >= 1")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ConfigError("train.device", self.device, "'cpu', 'cuda', 'cuda:N' or 'auto'")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("train.threads", self.threads, "null or an integer >= 1")


@dataclass
class RunConfig:
    """One training job. ``job: teacher`` trains an electronic teacher with the task loss;
    ``job: student`` trains a model (usually an optical student), with a ``teacher`` for KD/NTKD."""

    task: Literal["classification", "segmentation"]
    model: dict[str, Any]
    job: Literal["teacher", "student"] = "student"
    seed: int = 0
    out_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if "name" not in self.model:
            raise ConfigError("model.name", None, "a model name (e.g. lenet, unet, optical_student)")
        if self.job == "teacher" and self.loss.method != "task":
            raise ConfigError("loss.method", self.loss.method, "'task' for a teacher job")
        if self.loss.method in ("kd", "ntkd") and self.teacher is None:
            raise ConfigError("teacher.checkpoint", None, f"a teacher checkpoint for loss.method {self.loss.method!r}")

    @property
    def monitor(self) -> str:
        """The validation metric that selects the best model and drives early stopping."""
        return "accuracy" if self.task == "classification" else "miou"


def parse_run_config(mapping: dict, base_dir=None) -> RunConfig:
    """Validate a mapping into a :class:`RunConfig`; relative paths resolved against ``base_dir``."""
    cfg = build(RunConfig, mapping)
    if isinstance(cfg.model.get("optics"), str):  # the bench's optics file: inlined, so runs record it
        from .models import student_optics_from_file

        cfg.model["optics"] = student_optics_from_file(resolve_relative(cfg.model["optics"], base_dir))
    if base_dir is not None:
        base = Path(base_dir)
        if cfg.data.root is not None:
            cfg.data.root = _resolve(base, cfg.data.root)
        for key, value in cfg.data.options.items():
            if isinstance(value, str) and key.endswith(("_path", "root")):
                cfg.data.options[key] = _resolve(base, value)
        if cfg.teacher is not None:
            cfg.teacher.checkpoint = _resolve(base, cfg.teacher.checkpoint)
        if cfg.out_dir is not None:
            cfg.out_dir = _resolve(base, cfg.out_dir)
    return cfg


def load_run_config(path, overrides: dict | None = None) -> RunConfig:
    """Read a run YAML file (``yaml.safe_load``), set ``overrides`` ``{dotted path: value}`` in it (e.g.
    ``{"optim.lr": 0.01}``, as ``hil train --set``) and validate it; relative paths, in the file or in
    ``overrides``, are resolved against the file's folder."""
    path = Path(path)
    mapping = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(mapping, dotted, value)
    return parse_run_config(mapping, base_dir=path.resolve().parent)


def run_config_to_dict(cfg: RunConfig) -> dict:
    """The config as plain nested dicts (for checkpoints and JSON)."""
    return to_plain(cfg)


def replace(cfg: RunConfig, **changes) -> RunConfig:
    """A copy of ``cfg`` with dotted-path changes, e.g. ``replace(cfg, **{"loss.method": "kd"})``,
    re-validated."""
    plain = run_config_to_dict(cfg)
    for dotted, value in changes.items():
        _set_dotted(plain, dotted, value)
    return build(RunConfig, plain)


def config_changes(previous: dict, current: dict) -> dict[str, tuple]:
    """``{dotted path: (previous value, current value)}`` of the fields that differ between two plain
    configs (e.g. a checkpoint's and a resumed run's), sorted by path, the fields of
    :data:`RESUME_IGNORED` left out; a field absent on one side counts as ``None``."""
    out: dict[str, tuple] = {}
    _diff(previous, current, "", out)
    return {path: values for path, values in sorted(out.items()) if not _under(path, RESUME_IGNORED)}


def fixed_on_resume(changes: dict[str, tuple]) -> dict[str, tuple]:
    """The entries of :func:`config_changes` that a resumed run cannot take (under :data:`RESUME_FIXED`)."""
    return {path: values for path, values in changes.items() if _under(path, RESUME_FIXED)}


def _diff(old, new, path: str, out: dict) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in set(old) | set(new):
            _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key), out)
    elif old != new:
        out[path] = (old, new)


def _under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _set_dotted(mapping: dict, dotted: str, value) -> None:
    """Set ``mapping[a][b][c] = value`` for ``dotted = "a.b.c"``, creating missing (or null) mappings."""
    node = mapping
    *parents, leaf = dotted.split(".")
    for i, key in enumerate(parents):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(".".join(parents[:i + 1]), child, f"a mapping (to set {dotted} in)")
        node = child
    node[leaf] = value


def _resolve(base: Path, value: str) -> str:
    return str(resolve_relative(value, base).resolve())


__all__ = [f.__name__ for f in (parse_run_config, load_run_config, run_config_to_dict, replace, config_changes,
                                 fixed_on_resume)] + [
    "DataConfig", "TeacherConfig", "LossConfig", "OptimConfig", "TrainConfig", "RunConfig", "RESUME_FIXED",
    "RESUME_IGNORED",
]
