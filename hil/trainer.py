"""A small, exactly resumable training loop for teachers and optical students.

The loop is generic: it trains any ``nn.Module`` with an *objective* ``objective(model, inputs,
targets, indices=...) -> terms`` whose ``terms.total`` is the loss to minimise and ``terms.parts`` a
dict of named floats to log (the objectives of :mod:`hil.losses`: task loss, classic KD, NTKD;
``indices`` are the dataset indices of the batch, so a frozen teacher's per-sample results can be
cached), on a map-style dataset whose items are ``(input, target)``.

Exact resumption: the batch order of epoch ``e`` is a permutation drawn from ``seed + e`` alone
(:class:`BatchOrder`), and a checkpoint records the model, optimiser, scheduler, global RNG states,
the epoch and the batch position inside it, the running loss of the epoch, the early-stopping state
and the metrics history. Training N steps straight and training k steps, being killed, and resuming
to N give bit-identical weights on the same machine and thread count.

Interrupts: during :meth:`Trainer.fit`, SIGINT (Ctrl-C) or SIGTERM lets the step in progress finish,
then ``checkpoints/last.pt`` is written with the state after that step (so the resume stays
bit-identical) and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised; a second signal
stops at once, without saving.

Resuming with a changed config (``fit(config_changes=...)``, decided by the caller, e.g.
:func:`hil.api.train`): the optimiser's hyperparameters and the learning-rate schedule are those of
the objects the trainer was built with, at the resumed step, not the checkpoint's; the changes are
logged and recorded in ``metrics.json`` (``config_changes``: the step they took effect and each
field's old and new value).

Data parallel: when ``torch.distributed`` is initialised with more than one process (e.g. under
``torchrun``), the model is wrapped in ``DistributedDataParallel`` and each global batch of the
permutation is split evenly over the processes (rank ``r`` takes every ``world``-th sample), and the
gradients are averaged. For an objective that is a mean over samples (the task loss, KD) that is the
gradient of single-process training on the same global batch; for NTKD it is not (each process takes
the NTK term on its own shard, see :mod:`hil.losses`). The processes agree after every step whether
one of them diverged or was interrupted, so all raise together. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset, default_collate

from onn_core.config import save_yaml
from onn_core.errors import ConfigError, HilError, InputError
from onn_core.files import atomic_write
from onn_core.progress import Throttle, format_duration, progress_bar, progress_enabled

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .metrics import ConfusionAccumulator, predictions, summary_metrics

log = logging.getLogger(__name__)

Objective = Callable[..., "hil.losses.LossTerms"]
StepCallback = Callable[["Trainer"], None]

#: Steps timed in a process before the run's duration is estimated and logged.
ESTIMATE_AFTER_STEPS = 5
#: Signals after which :meth:`Trainer.fit` saves a checkpoint and stops.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingDiverged(HilError):
    """The training loss became NaN or infinite (lower the learning rate or check the data)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (``signum``) after ``step`` optimiser steps; ``checkpoint`` is the
    file holding the state after that step, ``None`` if nothing was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = int(signum), int(step), checkpoint
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"{signal.Signals(signum).name} after step {step}: {saved}")


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def process_rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


class BatchOrder:
    """Deterministic mini-batches: epoch ``e`` visits ``randperm(n, seed + e)`` in global batches of
    ``batch_size`` (the incomplete last batch is dropped, so every step sees the same batch size).

    With ``world_size > 1`` each global batch is split: rank ``r`` gets its samples ``r, r + world, ...``.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, *, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1 or num_samples < batch_size:
            raise InputError(f"batch_size must be in [1, {num_samples}] (the number of samples), got {batch_size}")
        if batch_size % world_size:
            raise InputError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """This rank's sample indices of the batches ``start, start + 1, ...`` of ``epoch``."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.arange(self.num_samples)
        for b in range(start, len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank::self.world_size].tolist()


def fetch_batch(dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the items ``indices`` of a map-style dataset of ``(input, target)`` pairs."""
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tensors[0][idx], tensors[1][idx]
    inputs, targets = default_collate([dataset[i] for i in indices])
    return inputs, targets


def freeze_parts(model: nn.Module, parts: Sequence[str]) -> None:
    """Stop training the parameters of the named submodules (e.g. ``["frontend"]``)."""
    for i, name in enumerate(parts):
        part = getattr(model, name, None)
        if not isinstance(part, nn.Module):
            children = [n for n, _ in model.named_children()]
            raise ConfigError(f"train.freeze[{i}]", name, f"a submodule of {type(model).__name__}: one of {children}")
        part.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require gradients; raises if there are none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{type(model).__name__} has no trainable parameters (is everything frozen?)")
    return params


@dataclass
class TrainResult:
    """What a finished run returns (and writes to ``metrics.json``)."""

    steps: int
    epochs_completed: int
    stopped_early: bool
    best_epoch: int | None
    best_metric: float | None
    history: list[dict] = field(default_factory=list)
    test_metrics: dict | None = None
    out_dir: Path | None = None
    mean_step_s: float | None = None


class Trainer:
    """Train ``model`` with ``objective`` on ``train_data``; evaluate on ``val_data`` every epoch.

    Parameters
    ----------
    task : ``"classification"`` or ``"segmentation"`` (how outputs become labels for the metrics).
    num_classes : classes of the confusion matrix (2 for a binary mask).
    batch_size : global batch size (samples per optimiser step, over all processes).
    max_steps : stop after that many optimiser steps in total (``None``: ``epochs`` epochs).
    progress : allow a progress bar per epoch (rank 0), drawn by the toolkit's one console rule
        (:mod:`onn_core.progress`: only when standard error is a terminal, unless forced with
        ``--progress`` or ``ONN_PROGRESS=1``); ``False``: never. Log lines are written either way: the
        run's estimated duration after :data:`ESTIMATE_AFTER_STEPS` steps and one line per epoch, at
        most one every :data:`onn_core.progress.LOG_INTERVAL_S` seconds (the last epoch's always;
        every epoch stays in ``metrics.json`` and at debug level).
    checkpoint_every_steps : also write ``checkpoints/last.pt`` every that many steps (0: per epoch).
    early_stopping_patience : stop after that many epochs without a better ``monitor`` on ``val_data``.
    callbacks : called as ``callback(trainer)`` after every optimiser step (and its checkpoint).
    config : the resolved config (plain dict) stored in checkpoints; with ``out_dir`` also written as
        ``config.yaml``.
    """

    def __init__(self, model: nn.Module, objective: Objective, train_data, *, task: str, num_classes: int,
                 optimizer: torch.optim.Optimizer, scheduler=None, val_data=None, batch_size: int = 128,
                 eval_batch_size: int = 500, epochs: int = 1, max_steps: int | None = None, seed: int = 0,
                 out_dir=None, checkpoint_every_steps: int = 0, early_stopping_patience: int | None = None,
                 monitor: str = "accuracy", device="cpu", progress: bool = False, config: dict | None = None,
                 callbacks: Sequence[StepCallback] = (), restore_best: bool = True):
        if task not in ("classification", "segmentation"):
            raise InputError(f"task must be 'classification' or 'segmentation', got {task!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.objective, self.train_data, self.val_data = objective, train_data, val_data
        self.task, self.num_classes = task, int(num_classes)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.epochs, self.max_steps, self.seed = int(epochs), max_steps, int(seed)
        self.eval_batch_size = int(eval_batch_size)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every_steps = int(checkpoint_every_steps)
        self.patience, self.monitor = early_stopping_patience, monitor
        self.progress, self.config, self.callbacks = progress, config, list(callbacks)
        self.restore_best = restore_best
        self.rank, self.world_size = process_rank_and_world()
        self.order = BatchOrder(len(train_data), batch_size, self.seed, rank=self.rank, world_size=self.world_size)
        self.total_steps = self.epochs * len(self.order)
        if max_steps is not None:
            self.total_steps = min(self.total_steps, int(max_steps))
        self.trained_model = self._wrap_data_parallel(self.model)
        # Progress state (all of it goes into the checkpoint).
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_loss_sum = 0.0
        self.epoch_logs_sum: dict[str, float] = {}
        self.history: list[dict] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.evals_without_improvement = 0
        self.stopped_early = False
        self.config_changes: list[dict] = []
        self._best_state: dict | None = None
        self._step_times: list[float] = []
        self._signal: int | None = None  # the stop signal received during fit()
        self._fit_start: tuple[float, int] | None = None  # (perf_counter, step) when fit() began training
        self._epoch_lines = Throttle()  # one epoch line every few seconds at most (onn_core.progress)

    # ----------------------------------------------------------------------------------- files
    @property
    def last_checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "last.pt" if self.out_dir else None

    @property
    def best_checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "best.pt" if self.out_dir else None

    def _is_writer(self) -> bool:
        return self.out_dir is not None and self.rank == 0

    def _wrap_data_parallel(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def state_dict(self) -> dict:
        """The full training state (tensors and plain values)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": capture_rng_state(),
            "progress": {
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_loss_sum": self.epoch_loss_sum, "epoch_logs_sum": dict(self.epoch_logs_sum),
                "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "evals_without_improvement": self.evals_without_improvement, "stopped_early": self.stopped_early,
                "seed": self.seed, "batch_size": self.order.batch_size,
            },
            "history": copy.deepcopy(self.history),
            "config": self.config,
            "config_changes": copy.deepcopy(self.config_changes),
            "task": self.task,
            "num_classes": self.num_classes,
        }

    def load_state_dict(self, state: dict, new_hyperparameters: bool = False) -> None:
        """Restore what :meth:`state_dict` saved (the model and optimiser must be built the same way).

        ``new_hyperparameters``: keep the optimiser's hyperparameters (learning rate, weight decay,
        momentum, ...) and the schedule of the objects this trainer was built with, at the restored
        step, instead of the checkpoint's; the optimiser's running state (moments) is restored. Call it
        before training: the optimiser must still hold its initial hyperparameters.
        """
        progress = state["progress"]
        if progress["seed"] != self.seed or progress["batch_size"] != self.order.batch_size:
            raise InputError(f"checkpoint was written with seed {progress['seed']} and batch_size "
                             f"{progress['batch_size']}, this run has seed {self.seed} and batch_size "
                             f"{self.order.batch_size}: cannot resume exactly")
        self.model.load_state_dict(state["model"])
        initial = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        if new_hyperparameters:
            for group, hyperparameters in zip(self.optimizer.param_groups, initial):
                group.update(hyperparameters)
            if self.scheduler is not None:  # replay the new schedule up to the restored step
                with warnings.catch_warnings():  # torch warns of scheduler steps without optimiser steps
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    for _ in range(state["progress"]["step"]):
                        self.scheduler.step()
        elif self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step, self.epoch = progress["step"], progress["epoch"]
        self.batch_in_epoch = progress["batch_in_epoch"]
        self.epoch_loss_sum = progress["epoch_loss_sum"]
        self.epoch_logs_sum = dict(progress["epoch_logs_sum"])
        self.best_metric, self.best_epoch = progress["best_metric"], progress["best_epoch"]
        self.evals_without_improvement = progress["evals_without_improvement"]
        self.stopped_early = progress["stopped_early"]
        self.history = list(state["history"])
        self.config_changes = list(state.get("config_changes", []))
        best = self.best_checkpoint_path
        if best is not None and best.is_file():
            self._best_state = load_checkpoint(best, map_location=self.device)["model"]

    def save(self) -> None:
        """Write ``checkpoints/last.pt`` (rank 0 with an ``out_dir`` only)."""
        if self._is_writer():
            save_checkpoint(self.last_checkpoint_path, self.state_dict())

    def write_metrics(self, extra: dict | None = None) -> None:
        """Write ``metrics.json`` (history, best epoch, plus ``extra`` entries) atomically (rank 0)."""
        if not self._is_writer():
            return
        import json

        payload = {"task": self.task, "monitor": self.monitor, "steps": self.step, "best_epoch": self.best_epoch,
                   "best_metric": self.best_metric, "stopped_early": self.stopped_early, "history": self.history}
        if self.config_changes:
            payload["config_changes"] = self.config_changes
        payload.update(extra or {})
        with atomic_write(self.out_dir / "metrics.json", "w") as fh:
            json.dump(payload, fh, indent=1, allow_nan=True)

    # ----------------------------------------------------------------------------------- loop
    @property
    def best_state(self) -> dict | None:
        """The model's state dict at the best validation evaluation so far (None before one)."""
        return self._best_state

    def _finished(self) -> bool:
        return (self.stopped_early or self.epoch >= self.epochs
                or (self.max_steps is not None and self.step >= self.max_steps))

    def fit(self, resume: bool = True, config_changes: dict[str, tuple] | None = None) -> TrainResult:
        """Train until ``epochs``, ``max_steps`` or early stopping; resume from ``last.pt`` if present.

        ``config_changes``: ``{dotted path: (old, new)}``, how this trainer's config differs from the
        checkpoint's, accepted by the caller (:func:`hil.config.config_changes`); on a resume they are
        applied (see the module docstring), logged and recorded. Raises :class:`TrainingInterrupted`
        after saving on SIGINT/SIGTERM (signal handlers are installed when called from the main thread).
        """
        if resume and self.last_checkpoint_path is not None and self.last_checkpoint_path.is_file():
            state = load_checkpoint(self.last_checkpoint_path, map_location=self.device)
            self.load_state_dict(state, new_hyperparameters=bool(config_changes))
            if self.rank == 0:
                log.info("resuming from step %d of %d (%s, epoch %d, batch %d of %d)", self.step, self.total_steps,
                         self.last_checkpoint_path, self.epoch + 1, self.batch_in_epoch, len(self.order))
            if config_changes and self._finished():
                if self.rank == 0:
                    log.warning("the run is finished (step %d of %d): its changed config (%s) is not applied",
                                self.step, self.total_steps, ", ".join(config_changes))
            elif config_changes:
                self._record_config_changes(config_changes)
        if self._is_writer() and self.config is not None and not self._finished():
            save_yaml(self.config, self.out_dir / "config.yaml")
        previous_handlers = self._install_signal_handlers()
        try:
            self._train()
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        self.write_metrics()
        return TrainResult(steps=self.step, epochs_completed=self.epoch, stopped_early=self.stopped_early,
                           best_epoch=self.best_epoch, best_metric=self.best_metric, history=list(self.history),
                           out_dir=self.out_dir, mean_step_s=self.mean_step_s)

    def _train(self) -> None:
        """The epochs of :meth:`fit`, ending with the checkpoint; raises :class:`TrainingInterrupted`."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._fit_start = (time.perf_counter(), self.step)
        interrupted = False
        show_bar = self.rank == 0 and progress_enabled(self.progress)
        while not self._finished() and not interrupted:
            with logging_redirect_tqdm() if show_bar else contextlib.nullcontext():
                bar = progress_bar(total=len(self.order), initial=self.batch_in_epoch, enabled=show_bar,
                                   desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="step")
                for indices in self.order.batches(self.epoch, self.batch_in_epoch):
                    loss = self._train_step(indices)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # drawn with the update, as the rule allows
                    bar.update(1)
                    if self.checkpoint_every_steps and self.step % self.checkpoint_every_steps == 0:
                        self.save()
                    for callback in self.callbacks:
                        callback(self)
                    self._log_estimate()
                    interrupted = self._any_process(self._signal is not None)
                    if interrupted or (self.max_steps is not None and self.step >= self.max_steps):
                        break
                bar.close()
            if self.batch_in_epoch == len(self.order):
                self._end_epoch()
            self.save()
        if interrupted or self._any_process(self._signal is not None):
            signum = self._signal if self._signal is not None else signal.SIGINT  # another process's signal
            if self.rank == 0:
                where = (f"saved the checkpoint of step {self.step} to {self.last_checkpoint_path}; run the same "
                         "command again to resume" if self.out_dir is not None else "nothing saved (no out_dir)")
                log.warning("%s: stopped after step %d of %d; %s", signal.Signals(signum).name, self.step,
                            self.total_steps, where)
            raise TrainingInterrupted(signum, self.step, self.last_checkpoint_path)

    def _install_signal_handlers(self) -> dict:
        """Route :data:`STOP_SIGNALS` to :meth:`_on_signal`; returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._signal = None
        return {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:
            raise TrainingInterrupted(signum, self.step, None)
        self._signal = signum
        log.warning("%s received: stopping after the current step and saving a checkpoint (send it again to stop "
                    "at once, without saving)", signal.Signals(signum).name)

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process (a collective call: every process must make it)."""
        dist = _dist() if self.world_size > 1 else None
        if dist is None:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _record_config_changes(self, changes: dict[str, tuple]) -> None:
        if self.rank == 0:
            for path, (old, new) in changes.items():
                log.warning("resuming at step %d with a changed config: %s = %r (was %r)", self.step, path, new, old)
        self.config_changes.append({"step": self.step, "changes": {path: list(v) for path, v in changes.items()}})

    def _log_estimate(self) -> None:
        """Once, after :data:`ESTIMATE_AFTER_STEPS` steps of this process: the run's estimated duration."""
        if len(self._step_times) != ESTIMATE_AFTER_STEPS or self.rank != 0 or self.step >= self.total_steps:
            return
        per_step = self.mean_step_s
        log.info("about %.3g s per step: %d steps take about %s, %s left (validation not included)", per_step,
                 self.total_steps, format_duration(per_step * self.total_steps),
                 format_duration(per_step * (self.total_steps - self.step)))

    def _time_left(self) -> str:
        """Remaining time at the wall-clock pace of this ``fit`` so far (validation included)."""
        start, first_step = self._fit_start
        done = self.step - first_step
        if done <= 0 or self.step >= self.total_steps:
            return ""
        pace = (time.perf_counter() - start) / done
        return f"; about {format_duration(pace * (self.total_steps - self.step))} left"

    @property
    def mean_step_s(self) -> float | None:
        """Mean wall time of an optimiser step in this process so far (s), first step excluded."""
        times = self._step_times[1:] or self._step_times
        return sum(times) / len(times) if times else None

    def _train_step(self, indices: list[int]) -> float:
        start = time.perf_counter()
        inputs, targets = fetch_batch(self.train_data, indices)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.trained_model.train()
        terms = self.objective(self.trained_model, inputs, targets, indices=torch.as_tensor(indices, dtype=torch.long))
        loss, logs = terms.total, terms.parts
        finite = bool(torch.isfinite(loss.detach()))
        if self._any_process(not finite):  # before backward: its all-reduce would wait for a process that raised
            value = float(loss.detach()) if not finite else "finite here but not in another process"
            raise TrainingDiverged(f"training loss became {value} at step {self.step + 1} "
                                   f"(epoch {self.epoch + 1}); lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        value = float(loss.detach())
        self.epoch_loss_sum += value
        for key, v in logs.items():
            self.epoch_logs_sum[key] = self.epoch_logs_sum.get(key, 0.0) + float(v)
        self._step_times.append(time.perf_counter() - start)
        return value

    def _end_epoch(self) -> None:
        steps = max(self.batch_in_epoch, 1)
        entry = {"epoch": self.epoch + 1, "step": self.step, "train_loss": self.epoch_loss_sum / steps,
                 **{f"train_{k}": v / steps for k, v in self.epoch_logs_sum.items()}}
        if self.val_data is not None:
            metrics = self.evaluate(self.val_data)
            entry.update({f"val_{k}": metrics[k] for k in summary_metrics(self.task)})
            value = metrics[self.monitor]
            if self.best_metric is None or value > self.best_metric:
                self.best_metric, self.best_epoch = value, self.epoch + 1
                self.evals_without_improvement = 0
                # state_dict values are tensors, or plain extra state (e.g. the fabrication-draw counter)
                self._best_state = {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
                                    for k, v in self.model.state_dict().items()}
                if self._is_writer():
                    save_checkpoint(self.best_checkpoint_path, {"model": self._best_state, "config": self.config,
                                                                "task": self.task, "num_classes": self.num_classes,
                                                                "epoch": self.epoch + 1, "metrics": metrics})
            else:
                self.evals_without_improvement += 1
                if self.patience is not None and self.evals_without_improvement >= self.patience:
                    self.stopped_early = True
                    log.info("early stop after epoch %d: no better val %s for %d epochs", self.epoch + 1,
                             self.monitor, self.patience)
        self.history.append(entry)
        if self.rank == 0:
            last = self.stopped_early or self.epoch + 1 >= self.epochs or self.step >= self.total_steps
            level = logging.INFO if self._epoch_lines.ready(force=last) else logging.DEBUG
            log.log(level, "epoch %d/%d (step %d): %s%s", self.epoch + 1, self.epochs, self.step,
                    ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)), self._time_left())
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum = 0.0
        self.epoch_logs_sum = {}
        self.write_metrics()

    @torch.no_grad()
    def evaluate(self, data, model: nn.Module | None = None) -> dict:
        """Accuracy, mIoU, per-class IoU and confusion matrix of ``model`` (default: the trained one)
        on ``data``, summed over all processes."""
        model = model or self.model
        was_training = model.training
        model.eval()
        acc = ConfusionAccumulator(self.num_classes)
        mine = list(range(len(data)))[self.rank::self.world_size]
        for start in range(0, len(mine), self.eval_batch_size):
            inputs, targets = fetch_batch(data, mine[start:start + self.eval_batch_size])
            output = model(inputs.to(self.device))
            labels = predictions(output, self.task)
            acc.update(labels.cpu(), targets.long().cpu())
        acc.all_reduce()
        model.train(was_training)
        return acc.compute()
