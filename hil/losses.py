"""Training objectives: task losses, classic knowledge distillation (KD) and NTK distillation (NTKD).

Task losses
    Classification: cross-entropy on logits (N, classes). Segmentation (binary masks): BCE on logits
    (N, 1, H, W) plus ``dice_weight * (1 - soft Dice)`` (:func:`bce_dice_loss`).
KD (Hinton et al.)
    ``(1 - mix) * L_task + mix * T^2 * KL(softmax(t / T) || softmax(s / T))``, KL averaged over samples
    (and pixels for dense outputs). One-channel (binary) logits ``z`` are read as the two-class logits
    ``(0, z)``, so the same formula covers binary segmentation.
NTKD
    ``L = a * L_task + b * D(Theta_teacher, Theta_student)`` on the first ``kernel_batch`` samples of
    the batch (:data:`DEFAULT_KERNEL_BATCH` by default): the teacher's empirical NTK without gradient
    (:class:`hil.ntk.TeacherKernel`, cached), the student's differentiated through (second order).
    Kernels: see :mod:`hil.ntk`. Under data-parallel training each process holds its own shard of the
    global batch, so each computes the NTK term on the first ``kernel_batch`` samples *of its shard*
    and the gradients are averaged: a mean of per-process kernel losses, not the loss of one kernel
    over the global batch that single-process training computes (the task loss, a mean over
    samples, is the same either way).
Kernel discrepancies ``D`` (:data:`DISCREPANCIES`)
    ``mse``: ``mean((A - B)^2)``, the paper's; dominated by scale when the two kernels' magnitudes differ
    by orders (they do: docs/method.md#loss-and-kernel-discrepancies). ``normalized``: MSE of ``A / ||A||_F`` and ``B / ||B||_F``;
    ``normalized_trace``: MSE of ``A / tr(A) * n`` and ``B / tr(B) * n`` (mean diagonal 1). ``cka``:
    ``1 - CKA``, centred kernel alignment ``<HAH, HBH>_F / (||HAH||_F ||HBH||_F)``, ``H = I - 11^T/n``
    (invariant to scale and to adding a constant to every entry). ``normalized_trace`` is the paper's MSE
    with the kernels brought to one scale by their traces.
Kernel-target alignment (``alignment_weight = c``)
    ``+ c * (1 - KTA)`` with ``KTA = CKA(Theta_student, Y Y^T)`` (:func:`kernel_target_alignment`), ``Y``
    the one-hot labels of the kernel batch (or the flattened masks): it pulls the student's kernel
    towards the labels' similarity, with no teacher; alone (``ntk_weight = 0``) it is a teacher-free
    kernel regulariser, the baseline against which NTKD's use of the teacher is judged.

Objectives share one call signature so a trainer can swap them::

    terms = objective(student, x, targets, teacher_x=None, indices=None)
    terms.total.backward()

``x`` is the student's input, ``teacher_x`` the teacher's (default ``x``; they differ after
fabrication, when the student sees captured frames and the teacher the raw images), ``indices`` the
samples' dataset indices (for the teacher-kernel cache). ``terms`` is a :class:`LossTerms`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from onn_core.errors import ConfigError, InputError

from .models import hold_random_draws
from .ntk import METHODS, TeacherKernel, empirical_ntk

DISCREPANCIES = ("mse", "normalized", "normalized_trace", "cka")
#: Samples per batch the NTKD kernels are taken on (``n x n`` kernels), unless configured otherwise.
DEFAULT_KERNEL_BATCH = 16


# ----------------------------------------------------------------------------------------- task losses


def dice_score(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice per sample, ``(2 sum(p m) + smooth) / (sum(p) + sum(m) + smooth)`` with ``p =
    sigmoid(logits)``, sums over all but dim 0; shape (N,). ``masks`` in {0, 1} (or [0, 1])."""
    _check_same_shape(logits, masks)
    p = torch.sigmoid(logits).flatten(1)
    m = masks.to(p.dtype).flatten(1)
    return (2 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)


def bce_dice_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """``BCE(logits, masks)`` (mean over pixels) ``+ dice_weight * mean_n(1 - dice_score)``."""
    _check_same_shape(logits, masks)
    bce = F.binary_cross_entropy_with_logits(logits, masks.to(logits.dtype))
    return bce + dice_weight * (1 - dice_score(logits, masks, smooth)).mean()


def task_loss_for(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``cross_entropy`` for ``"classification"``, :func:`bce_dice_loss` for ``"segmentation"``."""
    if task == "classification":
        return F.cross_entropy
    if task == "segmentation":
        return bce_dice_loss
    raise InputError(f"task must be 'classification' or 'segmentation', got {task!r}")


def _check_same_shape(logits, masks) -> None:
    if logits.shape != masks.shape:
        raise InputError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} must have the same shape")


# ------------------------------------------------------------------------------------------------- KD


def _class_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) logits with C >= 2 unchanged; one-channel binary logits z -> two-class (0, z)."""
    if logits.ndim < 2:
        raise InputError(f"logits must be (N, C, ...), got shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` over dim 1, averaged over samples (and pixels)."""
    if student_logits.shape != teacher_logits.shape:
        raise InputError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ in shape")
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature!r}")
    s = F.log_softmax(_class_logits(student_logits) / temperature, dim=1)
    t = F.log_softmax(_class_logits(teacher_logits) / temperature, dim=1)
    kl = (t.exp() * (t - s)).sum(dim=1)
    return temperature**2 * kl.mean()


def kd_loss(student_logits, teacher_logits, targets, *, temperature: float = 4.0, mix: float = 0.5,
            task_loss: Callable = F.cross_entropy) -> torch.Tensor:
    """Classic KD: ``(1 - mix) * task_loss(s, targets) + mix * T^2 KL(softmax(t/T) || softmax(s/T))``."""
    if not 0.0 <= mix <= 1.0:
        raise InputError(f"mix must be in [0, 1], got {mix!r}")
    return (1 - mix) * task_loss(student_logits, targets) + mix * kd_divergence(student_logits, teacher_logits, temperature)


# ------------------------------------------------------------------------------------ discrepancies


def _check_kernels(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise InputError(f"kernels must be two square matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def kernel_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean((a - b)^2)`` (the paper's discrepancy; not scale-free)."""
    _check_kernels(a, b)
    return ((a - b) ** 2).mean()


def normalized_kernel_mse(a: torch.Tensor, b: torch.Tensor, norm: str = "fro") -> torch.Tensor:
    """MSE of the kernels each divided by its Frobenius norm (``norm="fro"``) or by its mean diagonal
    ``tr / n`` (``norm="trace"``); invariant to a positive scale of either kernel."""
    _check_kernels(a, b)
    if norm == "fro":
        return kernel_mse(a / torch.linalg.matrix_norm(a), b / torch.linalg.matrix_norm(b))
    if norm == "trace":
        n = a.shape[0]
        return kernel_mse(a * (n / torch.trace(a)), b * (n / torch.trace(b)))
    raise InputError(f"norm must be 'fro' or 'trace', got {norm!r}")


def centered_kernel_alignment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CKA ``<HaH, HbH>_F / (||HaH||_F ||HbH||_F)`` with the centring matrix ``H = I - 11^T / n``."""
    _check_kernels(a, b)
    ac = a - a.mean(0, keepdim=True) - a.mean(1, keepdim=True) + a.mean()
    bc = b - b.mean(0, keepdim=True) - b.mean(1, keepdim=True) + b.mean()
    return (ac * bc).sum() / (torch.linalg.matrix_norm(ac) * torch.linalg.matrix_norm(bc))


def target_kernel(targets: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``Y Y^T`` (n, n): ``Y`` the one-hot rows of integer class labels (n,) (``num_classes`` columns, by
    default ``max + 1``), or the flattened targets (n, ...) of any other shape (e.g. masks)."""
    if targets.ndim == 1 and not targets.is_floating_point():
        y = F.one_hot(targets.long(), num_classes or int(targets.max()) + 1).double()
    elif targets.ndim >= 2:
        y = targets.reshape(targets.shape[0], -1).double()
    else:
        raise InputError(f"targets must be integer labels (n,) or (n, ...) arrays, got {targets.dtype} {tuple(targets.shape)}")
    return y @ y.T


def kernel_target_alignment(kernel: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Centred kernel-target alignment ``CKA(kernel, Y Y^T)`` (:func:`target_kernel`), in [-1, 1]; 1 when
    the centred kernel is a positive multiple of the centred label kernel. ``nan`` if every target in
    the batch is the same (the centred label kernel is zero)."""
    return centered_kernel_alignment(kernel, target_kernel(targets).to(kernel.dtype))


def kernel_discrepancy(name: str, teacher_kernel: torch.Tensor, student_kernel: torch.Tensor) -> torch.Tensor:
    """``D(teacher, student)`` by name, one of :data:`DISCREPANCIES` (``cka`` gives ``1 - CKA``)."""
    if name == "mse":
        return kernel_mse(teacher_kernel, student_kernel)
    if name == "normalized":
        return normalized_kernel_mse(teacher_kernel, student_kernel, "fro")
    if name == "normalized_trace":
        return normalized_kernel_mse(teacher_kernel, student_kernel, "trace")
    if name == "cka":
        return 1 - centered_kernel_alignment(teacher_kernel, student_kernel)
    raise InputError(f"discrepancy must be one of {DISCREPANCIES}, got {name!r}")


# ----------------------------------------------------------------------------------------- objectives


@dataclass
class LossTerms:
    """``total`` (what to differentiate) and the detached parts by name, e.g. ``{"task": .., "ntk": ..}``;
    ``outputs`` are the student's outputs on the batch (for metrics), detached."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    outputs: torch.Tensor | None = None


class TaskObjective:
    """The task loss alone (teachers, and the "no transfer" baseline)."""

    def __init__(self, task_loss: Callable = F.cross_entropy):
        self.task_loss = task_loss

    def __call__(self, student: nn.Module, x, targets, *, teacher_x=None, indices=None) -> LossTerms:
        out = student(x)
        loss = self.task_loss(out, targets)
        return LossTerms(loss, {"task": float(loss.detach())}, out.detach())


class KDObjective:
    """Classic KD against a frozen ``teacher`` (put in eval mode); see :func:`kd_loss`."""

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, mix: float = 0.5, task_loss: Callable = F.cross_entropy):
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= mix <= 1.0:
            raise InputError(f"mix must be in [0, 1], got {mix!r}")
        self.teacher, self.temperature, self.mix, self.task_loss = teacher.eval(), float(temperature), float(mix), task_loss

    def __call__(self, student: nn.Module, x, targets, *, teacher_x=None, indices=None) -> LossTerms:
        out = student(x)
        with torch.no_grad():
            teacher_out = self.teacher.eval()(x if teacher_x is None else teacher_x)
        task = self.task_loss(out, targets)
        kd = kd_divergence(out, teacher_out, self.temperature)
        total = (1 - self.mix) * task + self.mix * kd
        return LossTerms(total, {"task": float(task.detach()), "kd": float(kd.detach())}, out.detach())


class NTKDObjective:
    """``a * L_task + b * D(Theta_teacher, Theta_student)``.

    Parameters
    ----------
    teacher : nn.Module
        Frozen; its kernel is taken over all its parameters, without gradient, cached per sample or
        batch when ``indices`` are passed (:class:`hil.ntk.TeacherKernel`).
    task_weight, ntk_weight : float
        ``a`` and ``b``.
    discrepancy : one of :data:`DISCREPANCIES`.
    kernel_batch : int
        The kernels use the first ``min(kernel_batch, N)`` samples of each batch (``n x n``); under
        data-parallel training, of each process's shard of it (see the module docstring).
    student_params : see :func:`hil.ntk.select_parameters`
        Which student parameters the student's kernel is taken over; default ``"trainable"`` (so a
        frozen frontend is treated as fixed hardware). The kernel is differentiated with respect to
        every trainable parameter (also outside this set).
    student_method, teacher_method : one of :data:`hil.ntk.METHODS`
        Kernel computation for each side (``teacher_method="jvp_projection"`` scales to big teachers and
        dense outputs and caches ``num_projections * C`` numbers per sample).
    num_projections, output_sketch_dim : passed to the estimators.
    alignment_weight : float
        ``c`` of the kernel-target alignment term ``c * (1 - KTA(Theta_student, targets))`` on the same
        samples (module docstring); 0 (default): none. With ``ntk_weight = 0`` the teacher's kernel is
        never computed.
    seed : int
        Seeds the random sketch directions of both kernels (``loss.seed`` of a run config, by default
        the run's seed): the same seed gives the same directions.
    """

    def __init__(self, teacher: nn.Module, *, task_loss: Callable = F.cross_entropy, task_weight: float = 1.0,
                 ntk_weight: float = 1.0, discrepancy: str = "cka", kernel_batch: int = DEFAULT_KERNEL_BATCH,
                 student_params="trainable", student_method: str = "exact", teacher_method: str = "exact",
                 num_projections: int = 64, seed: int = 0, output_sketch_dim: int | None = None,
                 cache_teacher: bool = True, alignment_weight: float = 0.0):
        if discrepancy not in DISCREPANCIES:
            raise InputError(f"discrepancy must be one of {DISCREPANCIES}, got {discrepancy!r}")
        for name, method in (("student_method", student_method), ("teacher_method", teacher_method)):
            if method not in METHODS:
                raise InputError(f"{name} must be one of {METHODS}, got {method!r}")
        if isinstance(kernel_batch, bool) or not isinstance(kernel_batch, int) or kernel_batch < 2:
            raise InputError(f"kernel_batch must be an int >= 2, got {kernel_batch!r}")
        if task_weight < 0 or ntk_weight < 0 or alignment_weight < 0:
            raise InputError(f"task_weight, ntk_weight and alignment_weight must be >= 0, got {task_weight!r}, "
                             f"{ntk_weight!r}, {alignment_weight!r}")
        self.task_loss, self.task_weight, self.ntk_weight = task_loss, float(task_weight), float(ntk_weight)
        self.alignment_weight = float(alignment_weight)
        self.discrepancy, self.kernel_batch = discrepancy, kernel_batch
        self.student_params, self.student_method = student_params, student_method
        self.num_projections, self.seed, self.output_sketch_dim = num_projections, seed, output_sketch_dim
        self.teacher_kernel = TeacherKernel(teacher, method=teacher_method, num_projections=num_projections, seed=seed,
                                            output_sketch_dim=output_sketch_dim, cache=cache_teacher)

    def kernels(self, student: nn.Module, x, *, teacher_x=None, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher kernel, student kernel) on the first ``kernel_batch`` samples; the student's is
        differentiable, computed with one fabrication-error draw for all samples."""
        k_student = self.student_kernel(student, x)
        n = k_student.shape[0]
        tx = (x if teacher_x is None else teacher_x)[:n]
        k_teacher = self.teacher_kernel(tx, None if indices is None else indices[:n])
        return k_teacher.to(k_student.dtype), k_student

    def student_kernel(self, student: nn.Module, x) -> torch.Tensor:
        """The student's differentiable kernel on the first ``kernel_batch`` samples (one
        fabrication-error draw for all of them)."""
        n = min(self.kernel_batch, x.shape[0])
        core = student.module if isinstance(student, nn.parallel.DistributedDataParallel) else student
        with hold_random_draws(core):
            return empirical_ntk(core, x[:n], method=self.student_method, params=self.student_params,
                                 num_projections=self.num_projections, seed=self.seed,
                                 output_sketch_dim=self.output_sketch_dim)

    def __call__(self, student: nn.Module, x, targets, *, teacher_x=None, indices=None) -> LossTerms:
        out = student(x)
        task = self.task_loss(out, targets)
        total = self.task_weight * task
        parts = {"task": float(task.detach())}
        if self.ntk_weight > 0:
            k_teacher, k_student = self.kernels(student, x, teacher_x=teacher_x, indices=indices)
            distance = kernel_discrepancy(self.discrepancy, k_teacher, k_student)
            total = total + self.ntk_weight * distance
            parts["ntk"] = float(distance.detach())
        if self.alignment_weight > 0:
            if self.ntk_weight <= 0:
                k_student = self.student_kernel(student, x)
            misalignment = 1 - kernel_target_alignment(k_student, targets[: k_student.shape[0]])
            total = total + self.alignment_weight * misalignment
            parts["alignment"] = float(misalignment.detach())
        return LossTerms(total, parts, out.detach())


def build_objective(loss_cfg, task: str, teacher: nn.Module | None = None):
    """An objective from a loss config (a mapping or an object with the fields of ``hil.config.LossConfig``:
    method task|kd|ntkd, task_weight, ntk_weight, temperature, kd_mix, discrepancy, kernel_batch; optional
    student_method, teacher_method, num_projections, seed, output_sketch_dim, student_params,
    alignment_weight)."""
    get = loss_cfg.get if isinstance(loss_cfg, dict) else (lambda k, d=None: getattr(loss_cfg, k, d))
    method = get("method", "task")
    task_loss = task_loss_for(task)
    if method == "task":
        return TaskObjective(task_loss)
    if teacher is None:
        raise ConfigError("teacher.checkpoint", None, f"a teacher for loss.method {method!r}")
    if method == "kd":
        return KDObjective(teacher, temperature=get("temperature", 4.0), mix=get("kd_mix", 0.5), task_loss=task_loss)
    if method == "ntkd":
        optional = {k: get(k) for k in ("student_method", "teacher_method", "num_projections", "seed",
                                        "output_sketch_dim", "student_params", "alignment_weight")
                    if get(k) is not None}
        try:
            return NTKDObjective(teacher, task_loss=task_loss, task_weight=get("task_weight", 1.0),
                                 ntk_weight=get("ntk_weight", 1.0), discrepancy=get("discrepancy", "cka"),
                                 kernel_batch=get("kernel_batch", DEFAULT_KERNEL_BATCH), **optional)
        except InputError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError("loss", method, str(exc)) from exc
    raise ConfigError("loss.method", method, "one of 'task', 'kd', 'ntkd'")
