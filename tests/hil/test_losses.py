"""Task losses, KD and NTKD against hand-computed numbers and their defining formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hil.config import LossConfig
from hil.losses import (
    KDObjective, NTKDObjective, TaskObjective, bce_dice_loss, build_objective, centered_kernel_alignment, dice_score,
    kd_divergence, kd_loss, kernel_discrepancy, kernel_mse, kernel_target_alignment, normalized_kernel_mse,
    target_kernel,
)
from hil.models import FCBackend, OpticalStudent, build_model
from hil.ntk import empirical_ntk
from onn_core.errors import ConfigError, InputError


def test_kd_loss_equals_hand_computed_value():
    # T = 2: teacher logits (2 ln 3, 0) / T -> softmax (3/4, 1/4); student (0, 0) -> (1/2, 1/2).
    student = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[2 * math.log(3), 0.0]], dtype=torch.float64)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2)  # target class 0 under the uniform student
    got = kd_loss(student, teacher, torch.tensor([0]), temperature=2.0, mix=0.3)
    assert float(got) == pytest.approx(0.7 * ce + 0.3 * 4 * kl, rel=1e-12)
    assert float(kd_divergence(student, teacher, 2.0)) == pytest.approx(4 * kl, rel=1e-12)
    assert float(kd_divergence(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-15)


def test_binary_kd_reads_one_channel_logits_as_two_classes():
    s = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    two = lambda z: torch.cat([torch.zeros_like(z), z], 1)
    torch.testing.assert_close(kd_divergence(s, t, 3.0), kd_divergence(two(s), two(t), 3.0))
    p, q = torch.sigmoid(t / 3), torch.sigmoid(s / 3)  # Bernoulli KL per pixel, averaged
    bernoulli = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean()
    torch.testing.assert_close(kd_divergence(s, t, 3.0), 9 * bernoulli)


def test_dice_and_bce_exact_on_small_masks():
    masks = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]], dtype=torch.float64)
    zero = torch.zeros_like(masks)  # p = 1/2 everywhere
    assert float(dice_score(zero, masks)) == pytest.approx((2 * 1.5 + 1) / (2 + 3 + 1), rel=1e-12)
    assert float(bce_dice_loss(zero, masks)) == pytest.approx(math.log(2) + 1 - 4 / 6, rel=1e-12)
    probs = torch.tensor([[[[0.8, 0.2], [0.6, 0.9]]]], dtype=torch.float64)
    logits = torch.log(probs / (1 - probs))
    bce = -(math.log(0.8) + math.log(0.8) + math.log(0.6) + math.log(0.9)) / 4
    dice = (2 * (0.8 + 0.6 + 0.9) + 1) / (2.5 + 3 + 1)
    assert float(bce_dice_loss(logits, masks, dice_weight=0.5)) == pytest.approx(bce + 0.5 * (1 - dice), rel=1e-12)
    with pytest.raises(InputError, match="same shape"):
        bce_dice_loss(logits, masks[..., :1])


def test_discrepancies_match_their_definitions():
    rng = np.random.default_rng(0)
    a_np, b_np = rng.normal(size=(4, 6)), rng.normal(size=(4, 3))
    a_np, b_np = a_np @ a_np.T, b_np @ b_np.T
    a, b = torch.tensor(a_np), torch.tensor(b_np)
    assert float(kernel_mse(a, b)) == pytest.approx(np.mean((a_np - b_np) ** 2))
    h = np.eye(4) - 1 / 4
    ha, hb = h @ a_np @ h, h @ b_np @ h
    cka = np.trace(ha @ hb) / np.sqrt(np.trace(ha @ ha) * np.trace(hb @ hb))
    assert float(centered_kernel_alignment(a, b)) == pytest.approx(cka, rel=1e-12)
    assert float(kernel_discrepancy("cka", a, b)) == pytest.approx(1 - cka, rel=1e-12)
    # scale-free ones ignore the kernels' magnitudes; cka also a constant offset
    assert float(kernel_discrepancy("cka", a, 1e6 * a + 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(normalized_kernel_mse(a, 1e-4 * a)) == pytest.approx(0.0, abs=1e-15)
    assert float(normalized_kernel_mse(a, 50 * a, "trace")) == pytest.approx(0.0, abs=1e-12)
    expected = np.mean((a_np / np.linalg.norm(a_np) - b_np / np.linalg.norm(b_np)) ** 2)
    assert float(kernel_discrepancy("normalized", 7 * a, b)) == pytest.approx(expected, rel=1e-12)
    expected = np.mean((4 * a_np / np.trace(a_np) - 4 * b_np / np.trace(b_np)) ** 2)
    assert float(kernel_discrepancy("normalized_trace", a, b)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InputError, match="discrepancy must be one of"):
        kernel_discrepancy("cosine", a, b)


def tiny_teacher():
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def tiny_student():
    """2 signed 3x3 kernels (ideal optics) on 6x6 images, 2 FC layers; float64."""
    frontend = build_model({"name": "optical_student", "image_size": 6, "num_kernels": 2, "kernel_size": 3}).frontend
    torch.manual_seed(0)
    return OpticalStudent(frontend.double(), FCBackend((2, 6, 6), 4, (5,)).double())


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(2)
    return torch.rand(6, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)


def test_ntkd_objective_is_weighted_sum_and_trains_both_blocks(data):
    x, y = data
    teacher, student = tiny_teacher(), tiny_student()
    objective = NTKDObjective(teacher, task_weight=0.7, ntk_weight=2.0, discrepancy="cka", kernel_batch=4)
    terms = objective(student, x, y)
    k_teacher = empirical_ntk(teacher, x[:4]).detach()
    distance = kernel_discrepancy("cka", k_teacher, empirical_ntk(student, x[:4], params="trainable"))
    expected = 0.7 * F.cross_entropy(student(x), y) + 2.0 * distance
    assert float(terms.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    assert terms.parts["ntk"] == pytest.approx(float(distance.detach()), rel=1e-10)
    terms.total.backward()
    assert float(student.frontend.design.weight.grad.abs().sum()) > 0
    assert float(student.backend.layers[1].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert terms.outputs.shape == (6, 4) and not terms.outputs.requires_grad


def test_ntkd_term_alone_moves_the_optics(data):
    x, y = data
    teacher, student = tiny_teacher(), tiny_student()
    objective = NTKDObjective(teacher, task_weight=0.0, ntk_weight=1.0, discrepancy="normalized", kernel_batch=6)
    objective(student, x, y).total.backward()
    assert float(student.frontend.design.weight.grad.abs().sum()) > 0


def test_ntkd_with_teacher_input_and_cached_sketch_kernel(data):
    x, y = data
    teacher, student = tiny_teacher(), tiny_student()
    objective = NTKDObjective(teacher, teacher_method="jvp_projection", num_projections=8, kernel_batch=6)
    raw = x.flip(-1)
    first = objective(student, x, y, teacher_x=raw, indices=torch.arange(6))
    second = objective(student, x, y, teacher_x=raw, indices=torch.arange(6))
    assert objective.teacher_kernel.hits == 6 and objective.teacher_kernel.misses == 6
    assert first.parts == second.parts
    k_t, _ = objective.kernels(student, x, teacher_x=raw, indices=torch.arange(6))
    with torch.no_grad():
        fresh = empirical_ntk(teacher, raw, method="jvp_projection", num_projections=8, seed=0)
    torch.testing.assert_close(k_t, fresh)


def test_kd_and_task_objectives(data):
    x, y = data
    teacher, student = tiny_teacher(), tiny_student()
    kd = KDObjective(teacher, temperature=3.0, mix=0.25)(student, x, y)
    expected = kd_loss(student(x), teacher(x), y, temperature=3.0, mix=0.25)
    assert float(kd.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    task = TaskObjective()(student, x, y)
    assert float(task.total.detach()) == pytest.approx(float(F.cross_entropy(student(x), y).detach()), rel=1e-12)


def test_build_objective_from_loss_config(data):
    teacher = tiny_teacher()
    assert isinstance(build_objective({"method": "task"}, "classification"), TaskObjective)
    kd = build_objective({"method": "kd", "temperature": 10.0, "kd_mix": 0.5}, "classification", teacher)
    assert (kd.temperature, kd.mix) == (10.0, 0.5)
    ntkd = build_objective({"method": "ntkd", "discrepancy": "mse", "kernel_batch": 8, "ntk_weight": 3.0,
                            "teacher_method": "jvp_projection"}, "segmentation", teacher)
    assert (ntkd.discrepancy, ntkd.kernel_batch, ntkd.ntk_weight) == ("mse", 8, 3.0)
    assert ntkd.task_loss is bce_dice_loss and ntkd.teacher_kernel.method == "jvp_projection"
    with pytest.raises(ConfigError, match="loss.method"):
        build_objective({"method": "magic"}, "classification", teacher)
    with pytest.raises(ConfigError, match="teacher"):
        build_objective({"method": "kd"}, "classification")
    with pytest.raises(ConfigError):
        build_objective({"method": "ntkd", "discrepancy": "cosine"}, "classification", teacher)


def test_one_kernel_batch_default():
    """The run config, the objective and a loss mapping without kernel_batch agree."""
    teacher = tiny_teacher()
    from_mapping = build_objective({"method": "ntkd"}, "classification", teacher).kernel_batch
    assert LossConfig().kernel_batch == NTKDObjective(teacher).kernel_batch == from_mapping == 16


def test_kernel_target_alignment_against_hand_computed_values():
    labels = torch.tensor([0, 0, 1, 2])
    y = F.one_hot(labels, 3).double()
    assert float(kernel_target_alignment(3.0 * (y @ y.T) + 2.0, labels)) == pytest.approx(1.0, rel=1e-12)
    # identity kernel: centred I is H; <H, H Y Y^T H> = tr(H Y Y^T) and ||H||_F = sqrt(n - 1)
    h = torch.eye(4, dtype=torch.float64) - 0.25
    expected = float(torch.trace(h @ y @ y.T) / (math.sqrt(3) * torch.linalg.matrix_norm(h @ y @ y.T @ h)))
    identity = torch.eye(4, dtype=torch.float64)
    assert float(kernel_target_alignment(identity, labels)) == pytest.approx(expected, rel=1e-12)
    masks = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    expected_masks = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(target_kernel(masks), expected_masks)
    with pytest.raises(InputError, match="integer labels"):
        target_kernel(torch.tensor([0.5, 1.5]))


def test_alignment_term_alone_needs_no_teacher_kernel_and_adds_c_times_misalignment(data):
    x, y = data
    teacher, student = tiny_teacher(), tiny_student()
    objective = NTKDObjective(teacher, ntk_weight=0.0, alignment_weight=3.0, kernel_batch=4)
    objective.teacher_kernel = None  # never consulted with ntk_weight = 0
    terms = objective(student, x, y)
    kta = kernel_target_alignment(empirical_ntk(student, x[:4], params="trainable"), y[:4])
    expected = F.cross_entropy(student(x), y) + 3.0 * (1 - kta)
    assert float(terms.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
    assert terms.parts["alignment"] == pytest.approx(float(1 - kta.detach()), rel=1e-10)
    assert "ntk" not in terms.parts
    terms.total.backward()
    assert float(student.frontend.design.weight.grad.abs().sum()) > 0
    both = build_objective({"method": "ntkd", "ntk_weight": 1.0, "alignment_weight": 0.5, "kernel_batch": 4},
                           "classification", teacher)(student, x, y)
    assert set(both.parts) == {"task", "ntk", "alignment"}
    with pytest.raises(InputError, match="alignment_weight"):
        NTKDObjective(teacher, alignment_weight=-1.0)
