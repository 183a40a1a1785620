"""Empirical NTK: exact kernel against a naive autograd loop, estimators' convergence, per-block
kernels, the teacher cache, and the gradient the NTK term gives (or, for one linear layer, does not)."""

import pytest
import torch
from torch import nn

from hil.losses import kernel_discrepancy
from hil.models import FCBackend, OpticalStudent, build_model
from hil.ntk import TeacherKernel, empirical_ntk, ntk_exact, ntk_features, select_parameters
from onn_core.errors import InputError


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 36, 8), nn.Tanh(), nn.Linear(8, 4)
    ).double()


def small_student(hidden=(6,), seed=0):
    """2 signed 3x3 kernels (ideal optics) on 6x6 images, an FC backend with ``hidden`` layers; float64."""
    frontend = build_model({"name": "optical_student", "image_size": 6, "num_kernels": 2, "kernel_size": 3,
                            "seed": seed}).frontend.double()
    torch.manual_seed(seed)
    return OpticalStudent(frontend, FCBackend((2, 6, 6), 4, hidden, pool=1).double())


def naive_ntk(model, x, params=None, weights=None):
    """Theta_ij = sum_c <df_c(x_i)/dtheta, df_c(x_j)/dtheta> by one autograd.grad per (sample, output);
    with ``weights`` the scalar per sample is ``weights . f(x_i)`` instead (one gradient per sample)."""
    chosen = list(select_parameters(model, params).values())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        scalars = [out[c] for c in range(out.numel())] if weights is None else [(out * weights).sum()]
        grads = []
        for s in scalars:
            g = torch.autograd.grad(s, chosen, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1) for p, gi in zip(chosen, g)]))
        rows.append(torch.stack(grads))
    jac = torch.stack(rows)  # (n, C, P)
    return torch.einsum("ncp,mcp->nm", jac, jac)


@pytest.fixture
def batch():
    return torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture
def images():
    """Display images for the optical student: intensities in [0, 1]."""
    return torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("per_sample", ["vmap", "loop"])
def test_exact_kernel_equals_naive_loop(batch, per_sample):
    model = small_cnn()
    expected = naive_ntk(model, batch)
    got = ntk_exact(model, batch, per_sample=per_sample)
    assert got.shape == (5, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    torch.testing.assert_close(got, got.T)
    assert float(torch.linalg.eigvalsh(got.detach()).min()) > -1e-8 * float(expected.abs().max())


def test_exact_kernel_of_optical_student_equals_naive_loop(images):
    student = small_student()
    expected = naive_ntk(student, images)
    got = empirical_ntk(student, images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_per_block_kernels_add_up_and_match_naive(images):
    student = small_student()
    full = empirical_ntk(student, images)
    front = empirical_ntk(student, images, params="frontend")
    back = empirical_ntk(student, images, params=["backend"])
    torch.testing.assert_close(front + back, full)
    torch.testing.assert_close(front, naive_ntk(student, images, params="frontend"))
    assert float(front.detach().abs().max()) > 0 and float(back.detach().abs().max()) > 0


def test_sum_of_logits_kernel_is_gram_of_summed_output_gradients(batch):
    model = small_cnn()
    ones = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(model, batch, method="sum_of_logits"), naive_ntk(model, batch, weights=ones))


@pytest.mark.parametrize(
    "method, extra",
    [("jvp_projection", {}), ("finite_difference", {"epsilon": 1e-4}), ("output_projection", {}),
     ("jvp_projection", {"output_sketch_dim": 3})],
)
def test_estimators_converge_like_inverse_sqrt_samples(batch, method, extra):
    model = small_cnn()
    exact = ntk_exact(model, batch).detach()

    def mean_error(samples):
        errors = []
        for seed in range(4):
            with torch.no_grad():
                est = empirical_ntk(model, batch, method=method, num_projections=samples, seed=seed, **extra)
            errors.append(float(torch.linalg.matrix_norm(est - exact) / torch.linalg.matrix_norm(exact)))
        return sum(errors) / len(errors)

    coarse, fine = mean_error(4), mean_error(64)
    # 16x more samples: error / 4 expected for an unbiased Monte-Carlo estimate; allow noise.
    assert 2.5 < coarse / fine < 7
    assert fine < 0.25


def test_estimator_is_reproducible_for_a_seed_and_varies_across_seeds(batch):
    model = small_cnn()
    with torch.no_grad():
        a = empirical_ntk(model, batch, method="jvp_projection", num_projections=4, seed=3)
        b = empirical_ntk(model, batch, method="jvp_projection", num_projections=4, seed=3)
        c = empirical_ntk(model, batch, method="jvp_projection", num_projections=4, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_teacher_kernel_caches_features_per_sample(batch):
    teacher = small_cnn()
    cached = TeacherKernel(teacher, method="jvp_projection", num_projections=16, seed=0)
    first = cached(batch, torch.arange(5))
    assert (cached.hits, cached.misses) == (0, 5)
    order = torch.tensor([4, 0, 2])
    again = cached(batch[order], order)
    assert (cached.hits, cached.misses) == (3, 5)
    torch.testing.assert_close(again, first[order][:, order])
    fresh = TeacherKernel(teacher, method="jvp_projection", num_projections=16, seed=0, cache=False)(batch[order])
    torch.testing.assert_close(again, fresh)
    assert not again.requires_grad


def test_teacher_kernel_caches_exact_kernels_per_batch(batch):
    teacher = small_cnn()
    cached = TeacherKernel(teacher, method="exact")
    first = cached(batch, [0, 1, 2, 3, 4])
    second = cached(batch, [0, 1, 2, 3, 4])
    assert (cached.hits, cached.misses) == (1, 1)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, naive_ntk(teacher, batch))


def test_ntk_term_gradient_reaches_backend_and_optics(images):
    student = small_student()
    target = empirical_ntk(small_cnn(seed=1), images).detach()
    loss = kernel_discrepancy("cka", target, empirical_ntk(student, images, params="trainable"))
    loss.backward()
    for name, p in student.named_parameters():
        if name == "backend.layers.3.bias":  # the output bias: d f_c / d b_c = 1 whatever the weights
            assert p.grad is None or float(p.grad.abs().max()) == 0
        else:
            assert p.grad is not None and float(p.grad.abs().max()) > 0, name
    assert float(student.frontend.design.weight.grad.norm()) > 1e-8
    assert float(student.backend.layers[1].weight.grad.norm()) > 1e-8


def test_single_linear_layer_gets_no_ntk_gradient(images):
    """With the optics frozen and one linear layer f = W h + b training, Theta_ij = C (h_i.h_j + 1)
    does not depend on W or b: the NTK term's gradient vanishes (to round-off), while a hidden layer
    does get one."""
    target = empirical_ntk(small_cnn(seed=1), images).detach()

    def grads(hidden, discrepancy):
        student = small_student(hidden=hidden).freeze("frontend")
        kernel = empirical_ntk(student, images, params="trainable")
        weights = [p for p in student.parameters() if p.requires_grad]
        distance = kernel_discrepancy(discrepancy, target, kernel)
        # autograd may see no path at all from the weights to the kernel: the gradient is exactly zero
        ntk_grads = torch.autograd.grad(distance, weights, allow_unused=True) if distance.requires_grad else []
        task_grads = torch.autograd.grad(student(images).square().mean(), weights)
        ntk_norm = sum(float(g.norm()) for g in ntk_grads if g is not None)
        return ntk_norm / sum(float(g.norm()) for g in task_grads), kernel, student

    for discrepancy in ("mse", "cka"):
        ratio, kernel, student = grads((), discrepancy)
        assert ratio < 1e-10
        h = student.frontend(images).flatten(1)
        torch.testing.assert_close(kernel, 4 * (h @ h.T + 1))
        ratio_hidden, _, _ = grads((6,), discrepancy)
        assert ratio_hidden > 1e-4


def test_kernel_from_build_model_student_with_noise_and_fabrication_errors():
    student = build_model({"name": "optical_student", "image_size": 8, "num_kernels": 2, "kernel_size": 3,
                           "hidden": [4], "pool": 2, "fabrication": {"brightness_rel_std": 0.1, "shift_std_px": 0.2},
                           "optics": {"sensor": {"read_noise_e": 1.0}, "photometry": {"photons_per_s": 1e4}}})
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    from hil.models import hold_random_draws

    with hold_random_draws(student):
        kernel = empirical_ntk(student, x)
    assert student.frontend.draws.draws == 1
    assert kernel.shape == (3, 3) and bool(torch.isfinite(kernel).all())
    kernel.trace().backward()
    assert float(student.frontend.design.weight.grad.abs().sum()) > 0


def test_bad_arguments_raise_clear_errors(batch):
    model = small_cnn()
    with pytest.raises(InputError, match="selects no parameter"):
        empirical_ntk(model, batch, params="backend")
    with pytest.raises(InputError, match="method must be one of"):
        empirical_ntk(model, batch, method="magic")
    with pytest.raises(InputError, match="num_projections"):
        ntk_features(model, batch, num_projections=0)
    with pytest.raises(InputError, match="indices has 2 entries"):
        TeacherKernel(model, method="jvp_projection", num_projections=2)(batch, [0, 1])


def test_sketched_student_kernel_has_unbiased_gradients(batch, method="jvp_projection"):
    """The sketches are linear in Phi Phi^T, so the gradient of a linear functional <W, K_hat> is an
    unbiased estimate of that of the exact kernel: it converges as the number of projections grows."""
    model = small_cnn()
    weights = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    params = list(model.parameters())[:-1]  # the output bias has no gradient (see test above)

    def gradient(**kwargs):
        g = torch.autograd.grad((empirical_ntk(model, batch, **kwargs) * weights).sum(), params)
        return torch.cat([t.reshape(-1) for t in g])

    exact = gradient(method="exact")

    def error(samples):
        errors = [float((gradient(method=method, num_projections=samples, seed=s) - exact).norm() / exact.norm())
                  for s in range(2)]
        return sum(errors) / 2

    coarse, fine = error(4), error(64)
    assert coarse / fine > 2 and fine < 0.8  # 16x more projections: error / 4 expected


class Branching(nn.Module):
    """A linear model that counts its forward calls; while ``branch`` is set, forward takes a branch
    on its output's values (data-dependent control flow, which vmap refuses); ``error`` is raised
    by forward when set."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3).double()
        self.branch, self.error, self.calls = True, None, 0

    def forward(self, x):
        self.calls += 1
        if self.error is not None:
            raise self.error
        out = self.linear(x)
        if self.branch and bool(out.sum() > -1e9):
            out = out * 1.0
        return out


@pytest.mark.parametrize("method, vector_calls, loop_calls",
                         [("exact", 1, 5), ("sum_of_logits", 1, 5), ("finite_difference", 2, 8)])
def test_vmap_refusal_uses_the_loop_for_that_call_only(method, vector_calls, loop_calls):
    """Refused: one vectorised attempt, then a loop over the 5 samples (or, finite differences, two
    forward calls for each of the 4 directions); the next call, which vmap accepts, is vectorised
    again and gives the same kernel."""
    model, x = Branching(), torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    looped = empirical_ntk(model, x, method=method, num_projections=4)
    assert model.calls == 1 + loop_calls
    model.branch, model.calls = False, 0
    vectorised = empirical_ntk(model, x, method=method, num_projections=4)
    assert model.calls == vector_calls
    torch.testing.assert_close(vectorised, looped)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory"),
                                   RuntimeError("mat1 and mat2 shapes cannot be multiplied")])
def test_out_of_memory_and_other_errors_are_raised_not_looped(error):
    model = Branching()
    model.branch, model.error = False, error
    with pytest.raises(type(error), match=str(error)):
        empirical_ntk(model, torch.rand(5, 4, dtype=torch.float64))
    assert model.calls == 1


def test_sketch_directions_are_drawn_once_per_model_and_seed(batch, monkeypatch):
    """Drawing the directions is the costly part of a small teacher's sketch: a model's latest ones are
    reused, with the same features (output sketch included) as when drawn afresh."""
    from hil import ntk

    model = small_cnn()
    first = ntk_features(model, batch, num_projections=4, seed=3, output_sketch_dim=2)
    draws = []
    real = ntk._directions
    monkeypatch.setattr(ntk, "_directions", lambda *args: draws.append(1) or real(*args))
    torch.testing.assert_close(ntk_features(model, batch, num_projections=4, seed=3, output_sketch_dim=2), first,
                               rtol=0, atol=0)
    assert draws == []
    other = ntk_features(model, batch, num_projections=4, seed=4, output_sketch_dim=2)
    assert len(draws) == 4 and not torch.allclose(other, first)
    torch.testing.assert_close(ntk_features(small_cnn(), batch, num_projections=4, seed=3, output_sketch_dim=2), first,
                               rtol=0, atol=0)
    assert len(draws) == 8  # another model object: drawn afresh, the same directions


def lenet_like(seed=0):
    """A small CNN in the teacher's form: ``features`` (convolutions) -> ``classifier`` (an MLP)."""
    torch.manual_seed(seed)
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(18, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                                     nn.Linear(5, 3))
    model.forward = lambda x: model.classifier(model.features(x))
    return model.double()


@pytest.mark.parametrize("params", [None, "backend", "frontend", ["backend.layers.3"], "backend.layers.1.bias"])
def test_closed_form_mlp_kernel_equals_naive_loop_for_every_block(images, params):
    student = small_student(hidden=(6, 5))
    expected = naive_ntk(student, images, params)
    got = empirical_ntk(student, images, method="exact_mlp", params=params)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12 * float(expected.abs().max()))


def test_closed_form_mlp_kernel_of_a_cnn_with_an_mlp_tail_and_of_a_bare_mlp(batch):
    cnn = lenet_like()
    torch.testing.assert_close(empirical_ntk(cnn, batch, method="exact_mlp"), naive_ntk(cnn, batch), rtol=1e-10,
                               atol=1e-12)
    mlp = cnn.classifier
    h = cnn.features(batch).detach()
    torch.testing.assert_close(empirical_ntk(mlp, h, method="exact_mlp"), naive_ntk(mlp, h), rtol=1e-10, atol=1e-12)


def test_closed_form_mlp_kernel_has_the_exact_kernels_second_order_gradient(images):
    student = small_student(hidden=(6,))
    target = torch.randn(5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    params = list(student.parameters())

    def grads(method):
        loss = ((empirical_ntk(student, images, method=method) - target) ** 2).sum()
        return torch.autograd.grad(loss, params, allow_unused=True)

    for a, b in zip(grads("exact"), grads("exact_mlp")):
        if a is None:  # the last bias: the kernel does not depend on it
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12 * float(a.abs().max()))


def test_closed_form_mlp_kernel_refuses_other_architectures(batch):
    with pytest.raises(InputError, match="use method 'exact'"):
        empirical_ntk(small_cnn(), batch, method="exact_mlp")  # Tanh between its linear layers


def test_teacher_kernel_precomputed_on_a_fixed_set_serves_sub_blocks(batch):
    teacher = lenet_like()
    cached = TeacherKernel(teacher, method="exact_mlp")
    cached.precompute(batch, [10, 11, 12, 13, 14])
    order = [14, 10, 12]
    got = cached(batch[[4, 0, 2]], order)
    assert (cached.hits, cached.misses) == (1, 0)
    torch.testing.assert_close(got, naive_ntk(teacher, batch[[4, 0, 2]]), rtol=1e-10, atol=1e-12)
    cached(batch[:2], [10, 99])  # an index outside the fixed set: computed as usual
    assert cached.misses == 1
    with pytest.raises(InputError, match="distinct"):
        cached.precompute(batch[:2], [3, 3])
