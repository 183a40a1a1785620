"""Python API of training for bench scripts: ``train(config_or_path, out_dir) -> TrainResult``.

This is what ``hil train`` runs. It seeds everything, builds the datasets, the model (and, for a
student, the frozen teacher from its checkpoint), the objective (task loss, KD or NTKD), optimiser and
schedule, trains with :class:`hil.trainer.Trainer` (resuming from ``out_dir/checkpoints/last.pt``),
then evaluates the best model on the test split and adds the result to ``metrics.json``.
Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) it joins the process group (gloo on CPU,
NCCL on CUDA) and trains data-parallel.

A resume whose config differs from the checkpoint's is refused (:class:`ResumeConfigError`, naming
the fields) unless ``resume_changed=True`` (see :mod:`hil.config` for the fields that may differ
freely and those that never may). The global random generators, torch's thread count and its
deterministic-algorithms mode are set for the run and restored when :func:`train` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from onn_core.errors import ConfigError, HilError

from .checkpoint import capture_rng_state, load_checkpoint, load_model, restore_rng_state
from .clipping import clip_watch
from .config import RunConfig, config_changes, fixed_on_resume, load_run_config, parse_run_config, run_config_to_dict
from .trainer import Objective, Trainer, TrainResult, freeze_parts, trainable_parameters

log = logging.getLogger(__name__)


class ResumeConfigError(HilError):
    """A run folder's checkpoint was written with another config than the one asked to resume it."""


def resolve_config(config_or_path) -> RunConfig:
    """A :class:`RunConfig` from a config object, a plain mapping or a YAML path."""
    if isinstance(config_or_path, RunConfig):
        return config_or_path
    if isinstance(config_or_path, dict):
        return parse_run_config(config_or_path)
    return load_run_config(config_or_path)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cuda`` under torchrun -> this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device", name, "'cpu' (no CUDA device is available)")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


def split_train_val(dataset, val_size: int, train_subset: int | None, seed: int):
    """Seeded disjoint ``(train, val)`` subsets of a training split: ``val_size`` samples held out, and
    at most ``train_subset`` of the rest kept."""
    train, val = train_val_indices(len(dataset), val_size, train_subset, seed)
    return Subset(dataset, train), (Subset(dataset, val) if val else None)


def train_val_indices(n: int, val_size: int, train_subset: int | None, seed: int) -> tuple[list[int], list[int]]:
    """The sorted ``(train, val)`` indices :func:`split_train_val` takes from a split of ``n`` samples."""
    if val_size >= n:
        raise ConfigError("data.val_size", val_size, f"fewer than the {n} training samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val, train = order[:val_size], order[val_size:]
    if train_subset is not None:
        train = train[:train_subset]
    return sorted(train), sorted(val)


def build_datasets(cfg: RunConfig, datasets=None):
    """``(train, val, test, num_classes)``: the config's dataset (see :mod:`hil.data`), or the given
    ``datasets = (train_split, test_split or None, num_classes)``, split by ``cfg.data``."""
    if datasets is None:
        from . import data

        datasets = data.build_datasets(cfg.data, cfg.task)
    train_full, test, num_classes = datasets
    train, val = split_train_val(train_full, cfg.data.val_size, cfg.data.train_subset, cfg.seed)
    if test is not None and cfg.data.test_subset is not None:
        test = Subset(test, list(range(min(cfg.data.test_subset, len(test)))))
    return train, val, test, num_classes


def build_model(model_cfg: dict) -> nn.Module:
    """The model named by a ``model`` config section (see :func:`hil.models.build_model`)."""
    from . import models

    return models.build_model(model_cfg)


def build_objective(cfg: RunConfig, teacher: nn.Module | None) -> Objective:
    """The training objective of a run: task loss, KD or NTKD (:func:`hil.losses.build_objective`)."""
    if cfg.data.dataset == "captures" and cfg.loss.method != "task":
        # Distillation on captures needs the teacher to see the raw images behind each frame
        # (docs/method.md#stage-3-compensation); hil.finetune pairs them, a plain training run does not.
        raise ConfigError("loss.method", cfg.loss.method,
                          "'task' for data.dataset 'captures' (KD/NTKD on captured frames would feed the "
                          "teacher camera frames instead of the raw images)")
    from . import losses

    loss = cfg.loss if cfg.loss.seed is not None else dataclasses.replace(cfg.loss, seed=cfg.seed)
    return losses.build_objective(loss, cfg.task, teacher)


def build_optimizer(cfg: RunConfig, model: nn.Module, total_steps: int):
    """Optimiser over the trainable parameters and its per-step schedule."""
    params = trainable_parameters(model)
    o = cfg.optim
    if o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    elif o.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
                 if o.schedule == "cosine" else None)
    return optimizer, scheduler


def _init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group if launched by torchrun and not yet joined; True if joined here."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("cpu:gloo,cuda:nccl")  # metrics are reduced as CPU tensors
    else:
        dist.init_process_group("gloo")
    return True


def check_resume(config: dict, checkpoint: Path, resume_changed: bool = False) -> dict[str, tuple]:
    """How ``config`` (plain) differs from the config ``checkpoint`` was written with,
    ``{dotted path: (old, new)}`` (:func:`hil.config.config_changes`).

    Raises :class:`ResumeConfigError` naming the fields if any differ and ``resume_changed`` is false,
    or if a field that a resumed run cannot change (:data:`hil.config.RESUME_FIXED`) differs.
    """
    previous = load_checkpoint(checkpoint).get("config")
    changes = config_changes(previous, config) if isinstance(previous, dict) else {}
    fixed = fixed_on_resume(changes)

    def listed(items: dict) -> str:
        return ", ".join(f"{path} = {new!r} (was {old!r})" for path, (old, new) in items.items())

    if fixed:
        raise ResumeConfigError(f"{checkpoint} was written with another config, and a resumed run cannot change "
                                f"{listed(fixed)}: start afresh with --no-resume (resume=False) or another "
                                "--out-dir, or resume with the checkpoint's values")
    if changes and not resume_changed:
        raise ResumeConfigError(f"{checkpoint} was written with another config: {listed(changes)}. Resume with "
                                "the checkpoint's values, continue this run with the new ones with --resume-changed "
                                "(resume_changed=True), or start afresh with --no-resume (resume=False) or another "
                                "--out-dir")
    return changes


def train(config_or_path, out_dir=None, *, resume: bool = True, resume_changed: bool = False, callbacks=(),
          datasets=None) -> TrainResult:
    """Run one training job; returns its :class:`TrainResult` (with ``test_metrics``).

    ``config_or_path``: a :class:`RunConfig`, a plain mapping or a YAML path. ``out_dir`` (default: the
    config's ``out_dir``) receives ``config.yaml``, ``metrics.json`` and ``checkpoints/``; ``None`` in
    both places trains without writing files. ``resume``: continue from ``out_dir/checkpoints/last.pt``
    if it exists, with the same config (:func:`check_resume`), or, with ``resume_changed``, with a
    changed one: the new optimiser hyperparameters and schedule (at the resumed step), loss, teacher
    and run length apply from the resumed step on, and each change is logged and recorded in
    ``metrics.json``. ``datasets``: optional ``(train_split, test_split or None, num_classes)`` of
    ``(input, target)`` items used instead of ``cfg.data.dataset`` (e.g. a bench script's own data);
    ``cfg.data`` still sets the validation split and batch sizes. ``callbacks``: called as
    ``callback(trainer)`` after every optimiser step. Raises :class:`hil.trainer.TrainingInterrupted`
    after saving a checkpoint on SIGINT/SIGTERM.
    """
    cfg = resolve_config(config_or_path)
    out_dir = Path(out_dir) if out_dir is not None else (Path(cfg.out_dir) if cfg.out_dir else None)
    if out_dir is not None:  # the config records where the run was written
        cfg = dataclasses.replace(cfg, out_dir=str(out_dir.resolve()))
    config = run_config_to_dict(cfg)
    last = out_dir / "checkpoints" / "last.pt" if out_dir is not None else None
    changes = check_resume(config, last, resume_changed) if resume and last is not None and last.is_file() else {}
    rng_state, threads = capture_rng_state(), torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    joined = False
    try:
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        joined = _init_distributed(device)
        torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
        seed_everything(cfg.seed)
        train_set, val_set, test_set, num_classes = build_datasets(cfg, datasets)
        model = build_model(cfg.model)
        freeze_parts(model, cfg.train.freeze)
        teacher = load_model(cfg.teacher.checkpoint, device) if cfg.teacher is not None else None
        objective = build_objective(cfg, teacher)
        steps_per_epoch = len(train_set) // cfg.data.batch_size
        total = cfg.train.epochs * steps_per_epoch
        total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        optimizer, scheduler = build_optimizer(cfg, model, total)
        callbacks = (*callbacks, *clip_watch(model, train_set))
        trainer = Trainer(
            model, objective, train_set, val_data=val_set, task=cfg.task, num_classes=num_classes,
            optimizer=optimizer, scheduler=scheduler, batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size, epochs=cfg.train.epochs, max_steps=cfg.train.max_steps,
            seed=cfg.seed, out_dir=out_dir, checkpoint_every_steps=cfg.train.checkpoint_every_steps,
            early_stopping_patience=cfg.train.early_stopping_patience, monitor=cfg.monitor, device=device,
            progress=cfg.train.progress, config=config, callbacks=callbacks)
        result = trainer.fit(resume=resume, config_changes=changes)
        if test_set is not None:
            result.test_metrics = trainer.evaluate(test_set)
            trainer.write_metrics({"test": result.test_metrics, "mean_step_s": result.mean_step_s})
            log.info("test %s = %.4f", cfg.monitor, result.test_metrics[cfg.monitor])
        return result
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        restore_rng_state(rng_state)
        torch.set_num_threads(threads)
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
