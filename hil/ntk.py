"""Empirical neural tangent kernels (NTK) of a network on a batch: exact, and estimators that scale.

Definition
----------
For a network ``f(x; theta)`` with ``C`` outputs per sample (logits, or every pixel of a dense output,
flattened) and a batch ``x_1 .. x_n``, the empirical NTK restricted to a parameter subset ``S`` is the
``n x n`` matrix (outputs and parameters contracted)::

    Theta_ij = sum_c sum_{p in S} d f_c(x_i) / d theta_p * d f_c(x_j) / d theta_p  =  (J J^T)_ij

with ``J_i`` the ``C x |S|`` Jacobian of sample ``i``, so ``Theta = sum_c J_c J_c^T``. Teacher and
student with different parameter and output counts give comparable ``n x n`` matrices. ``S`` is chosen
by :func:`select_parameters`: all parameters, the trainable ones (``requires_grad``), or a named block
(``"frontend"``, ``"backend"``: the NTK of that block alone, "per-block kernels").

Differentiability: every function here follows autograd. When grad mode is on and parameters of the
model require grad, the returned kernel is differentiable with respect to **all** of them
(second order: ``torch.func`` transforms compose with ``torch.autograd``); wrap the call in
``torch.no_grad()`` for a constant kernel (the frozen teacher's).

Methods (``method=`` of :func:`empirical_ntk`)
-----------------------------------------------
``"exact"``
    Per-sample Jacobians ``J_i`` by ``torch.func.jacrev`` (``vmap`` over samples, or a Python loop for a
    call that ``vmap`` refuses -- data-dependent checks such as a sensor model testing its input's
    values, or random draws shared over the batch such as sensor noise; the loop is several times
    slower; out-of-memory and other errors are raised, never retried in the loop), then
    ``Theta = sum_p J_p J_p^T`` per parameter tensor. Cost: ``n C`` backward passes of one sample,
    memory ``n C |S|`` numbers. The reference; fine for small students and LeNet-size teachers with a
    few classes.
``"exact_mlp"`` (the exact kernel, closed form for a fully connected tail)
    For models ending in an MLP (``Linear`` layers with ``ReLU`` between, after parameter-free modules
    such as pooling and ``Flatten``): an :class:`~hil.models.FCBackend`, an ``nn.Sequential`` of that
    form, an optical student (``frontend`` -> such a ``backend``) or a LeNet (``features`` ->
    ``classifier``). With ``a^l_i`` the input of linear layer ``l`` and ``D^l_i`` the (units x C)
    derivative of the outputs with respect to its pre-activations (``D^L = I``, ``D^l = diag(relu'(z^l))
    W_{l+1}^T D^{l+1}``), the tail's part is ``sum_l <D^l_i, D^l_j>_F (a^l_i . a^l_j + 1)`` (the ``+ 1``
    only where the bias is selected): no per-sample Jacobians, ``O(n^2 (width + C units))``. Selected
    parameters before the tail (the optics, a CNN's convolutions) add ``sum_c G_c G_c^T`` with ``G_c`` the
    per-sample gradients of output ``c`` over those parameters only (``C`` vmapped backward passes, as in
    ``"exact"`` but over a few hundred or thousand parameters). Equal to ``"exact"`` to round-off and
    differentiable the same way; a model of another form raises :class:`InputError`.
``"jvp_projection"`` (random sketch of parameter space)
    ``Theta = J J^T = E_u[(J u)(J u)^T]`` for ``u ~ N(0, I_|S|)``. ``J u`` for the whole batch is one
    forward-mode pass (``torch.func.jvp``). With ``m`` draws, ``phi_i = [J_i u_1, ..., J_i u_m] /
    sqrt(m)`` (``m C`` numbers per sample) and ``Theta ~ Phi Phi^T``: unbiased, relative error
    ``~ 1 / sqrt(m)``. Cost ``m`` forward-mode passes on the batch, independent of ``|S|`` and ``C``
    -- it scales to big teachers and dense (segmentation) outputs. ``output_sketch_dim=k`` further
    multiplies each ``J_i u`` by a Gaussian ``C x k`` matrix ``R / sqrt(k)``, a fresh one per direction
    (``E[R R^T] / k = I``: still unbiased), so a per-sample feature holds ``m k`` numbers whatever ``C`` is.
``"finite_difference"`` (the NTK-SAP route)
    As ``"jvp_projection"`` but ``J u`` is taken from outputs under random parameter perturbations,
    ``(f(theta + eps u) - f(theta - eps u)) / (2 eps)`` (error ``O(eps^2)`` plus round-off ``~
    machine_eps |f| / eps``). Needs only forward passes (any model, no forward-mode AD support) and a
    deterministic model (no noise: both passes must see the same randomness).
``"output_projection"`` (random sketch of output space)
    ``Theta = E_v[G_v G_v^T]`` with ``G_v[i] = d (v . f(x_i)) / d theta`` and ``v ~ N(0, I_C)`` shared by
    all samples: per-sample gradients of one scalar per projection, ``m`` vmapped backward passes.
    Suits dense outputs of models with few parameters (a differentiable student kernel).
``"sum_of_logits"``
    ``G[i] = d (sum_c f_c(x_i)) / d theta``, ``Theta' = G G^T`` = ``sum_{c,c'} <df_c, df_c'>``: not the NTK
    (it adds the cross-class terms), deterministic and ``C`` times cheaper than exact.

Cost of the teacher
-------------------
(docs/method.md#practical-notes: with per-sample gradients for both kernels, an NTKD step cost ~3x
a KD step, ~40 % of the kernel work being the frozen teacher's.)
The teacher and the data are fixed, so its kernel needs no recomputation: :class:`TeacherKernel`
caches the exact kernel per batch (keyed by the dataset indices of the batch, for fixed kernel
batches) or, for the sketch methods, the per-sample features ``phi_i`` (keyed by dataset index; the
sketch directions are fixed by a seed): any later batch's kernel is then one ``Phi Phi^T`` product.
The cache holds ``m C'`` numbers per sample (``m = 64``, ``C = 10``: 2.5 kB, 140 MB for 55 000
samples); its sketch error is fixed per sample pair (the same directions every epoch), not redrawn.
The directions themselves (``m`` draws of ``|S|`` numbers: drawing them took longer than a LeNet's
``m`` forward-mode passes on 16 samples) are drawn once per model and seed and kept with the model.

Caveat: single linear layers
----------------------------
If the parameters the kernel is taken over are those of **one linear layer** ``f = W h + b`` whose
input ``h`` does not depend on them, then ``d f_c / d W_ck = h_k`` and ``d f_c / d b_c = 1``, so
``Theta_ij = C (h_i . h_j + 1)`` does not depend on ``W`` or ``b`` at all: an NTK-matching loss gives
that layer **no gradient** (only the task loss trains it). E.g. with a frozen optical frontend and a
one-layer backend, NTKD reduces to the task loss. Use a backend with a hidden layer (or train the
frontend too) for the NTK term to act.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

from onn_core.errors import InputError
from onn_core.validation import check_positive

log = logging.getLogger(__name__)

METHODS = ("exact", "exact_mlp", "jvp_projection", "finite_difference", "output_projection", "sum_of_logits")
#: Methods whose kernel is ``Phi Phi^T`` of per-sample features of fixed size (cacheable per sample).
FEATURE_METHODS = ("jvp_projection", "finite_difference")

ParamSpec = None | str | Sequence[str] | Callable[[str], bool]

# Models whose vmap refusal was already logged at INFO (later refusals are logged at DEBUG).
_VMAP_REFUSAL_REPORTED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
# Per model, the sketch directions last drawn for it: (key, directions, generator state after them).
_DIRECTIONS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _refused_by_vmap(exc: RuntimeError) -> bool:
    """Whether ``exc`` is ``vmap`` declining the model -- data-dependent control flow, ``.item()``, a
    random draw shared over a batched input, an operator without a batching rule -- which a Python loop
    over the samples avoids. Out-of-memory and every other error are not."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    message = str(exc).lower()
    return "vmap" in message or "batching rule" in message


def _vmap_or_loop(model: nn.Module, vectorised: Callable[[], object], loop: Callable[[], object], over: str):
    """``vectorised()``, or ``loop()`` for this call only if vmap refuses ``model``
    (:func:`_refused_by_vmap`); any other error, out-of-memory included, propagates. ``over`` names what
    vmap maps over (for the log)."""
    try:
        return vectorised()
    except RuntimeError as exc:
        if not _refused_by_vmap(exc):
            raise
        level = logging.DEBUG if model in _VMAP_REFUSAL_REPORTED else logging.INFO
        _VMAP_REFUSAL_REPORTED.add(model)
        log.log(level, "vmap over %s refused by %s (%s); this call uses a loop", over, type(model).__name__, exc)
    return loop()


def select_parameters(model: nn.Module, params: ParamSpec = None) -> dict[str, torch.Tensor]:
    """The named parameters the kernel is taken over.

    Parameters
    ----------
    model : nn.Module
    params : None | "trainable" | str | sequence of str | callable
        ``None``: all parameters. ``"trainable"``: those with ``requires_grad``. A name or a sequence of
        names: a parameter is kept when its name equals one of them or starts with ``name + "."``
        (so ``"backend"`` selects the whole backend block). A callable ``name -> bool``: a filter.

    Returns
    -------
    dict name -> parameter tensor (the model's own tensors, in ``named_parameters`` order).
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = named
    elif isinstance(params, str) and params == "trainable":
        chosen = {k: p for k, p in named.items() if p.requires_grad}
    elif callable(params):
        chosen = {k: p for k, p in named.items() if params(k)}
    else:
        prefixes = [params] if isinstance(params, str) else list(params)
        if not all(isinstance(s, str) for s in prefixes):
            raise InputError(f"params must be None, 'trainable', names, or a callable; got {params!r}")
        chosen = {k: p for k, p in named.items() if any(k == s or k.startswith(s + ".") for s in prefixes)}
    if not chosen:
        raise InputError(
            f"params={params!r} selects no parameter of {type(model).__name__}; "
            f"its parameters are {sorted(named)[:8]}{'...' if len(named) > 8 else ''}"
        )
    return chosen


def _flat_outputs(out: torch.Tensor, n: int) -> torch.Tensor:
    """(n, ...) model output -> (n, C)."""
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != n:
        raise InputError(f"model output must be a tensor with the batch ({n}) on dim 0, got {getattr(out, 'shape', out)}")
    return out.reshape(n, -1)


def _gram(jacobians: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """sum over parameter tensors of J J^T, each J of shape (n, ..., *param_shape) flattened to (n, -1)."""
    kernel = None
    for jac in jacobians.values():
        flat = jac.reshape(n, -1)
        term = flat @ flat.T
        kernel = term if kernel is None else kernel + term
    return kernel


def ntk_exact(model: nn.Module, x: torch.Tensor, *, params: ParamSpec = None, per_sample: str = "auto") -> torch.Tensor:
    """Exact empirical NTK ``Theta_ij = sum_c <df_c(x_i)/dtheta, df_c(x_j)/dtheta>`` (n x n).

    ``per_sample``: ``"vmap"`` (vectorised over samples), ``"loop"`` (one ``jacrev`` per sample, for
    models with data-dependent control flow in forward) or ``"auto"`` (vmap; the loop for a call that
    vmap refuses, see :func:`_refused_by_vmap`). See the module docstring for differentiability and cost.
    """
    chosen = select_parameters(model, params)
    n = x.shape[0]

    def single(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    jac_fn = jacrev(single)
    if per_sample not in ("auto", "vmap", "loop"):
        raise InputError(f"per_sample must be 'auto', 'vmap' or 'loop', got {per_sample!r}")

    def vectorised():
        return vmap(jac_fn, in_dims=(None, 0), randomness="same")(chosen, x)

    def loop():
        rows = [jac_fn(chosen, x[i]) for i in range(n)]
        return {k: torch.stack([r[k] for r in rows]) for k in chosen}

    if per_sample == "vmap":
        return _gram(vectorised(), n)
    if per_sample == "loop":
        return _gram(loop(), n)
    return _gram(_vmap_or_loop(model, vectorised, loop, "samples"), n)


def _tail_modules(model: nn.Module) -> tuple[nn.Module | None, str, nn.Sequential, str]:
    """``(prefix, prefix name, tail, tail name)`` of a model of the form ``"exact_mlp"`` handles: a
    ``Sequential`` (or a module whose ``layers`` is one), or ``frontend -> backend`` / ``features ->
    classifier`` with such a second part. Parameter names of the tail start with ``tail name + "."``."""

    def sequential(module: nn.Module, name: str) -> tuple[nn.Sequential, str]:
        if isinstance(module, nn.Sequential):
            return module, name
        if isinstance(getattr(module, "layers", None), nn.Sequential):
            return module.layers, f"{name}.layers" if name else "layers"
        raise InputError(f"method 'exact_mlp' needs a fully connected tail (an nn.Sequential, or a module with "
                         f"one as .layers); {type(module).__name__} has none: use method 'exact'")

    for first, second in (("frontend", "backend"), ("features", "classifier")):
        if isinstance(getattr(model, first, None), nn.Module) and isinstance(getattr(model, second, None), nn.Module):
            tail, name = sequential(getattr(model, second), second)
            return getattr(model, first), first, tail, name
    tail, name = sequential(model, "")
    return None, "", tail, name


def _split_tail(tail: nn.Sequential) -> tuple[list[nn.Module], list[nn.Linear]]:
    """(leading parameter-free modules, linear layers) of ``[free]* Linear (ReLU Linear)*``."""
    modules = list(tail)
    lead = 0
    while lead < len(modules) and not isinstance(modules[lead], nn.Linear):
        if any(True for _ in modules[lead].parameters()):
            break
        lead += 1
    body = modules[lead:]
    linears = body[0::2]
    if (not body or len(body) % 2 == 0 or not all(isinstance(m, nn.Linear) for m in linears)
            or not all(type(m) is nn.ReLU for m in body[1::2])):
        raise InputError("method 'exact_mlp' needs a tail of parameter-free modules, then Linear (ReLU Linear)*; got "
                         f"{[type(m).__name__ for m in modules]}: use method 'exact'")
    return modules[:lead], linears


def ntk_exact_mlp(model: nn.Module, x: torch.Tensor, *, params: ParamSpec = None) -> torch.Tensor:
    """Exact empirical NTK (as :func:`ntk_exact`) in closed form for the fully connected tail (see
    ``"exact_mlp"`` in the module docstring); parameters before the tail by per-sample gradients."""
    chosen = select_parameters(model, params)
    prefix, prefix_name, tail, tail_name = _tail_modules(model)
    lead, linears = _split_tail(tail)
    names = {id(m): f"{tail_name}.{i}" if tail_name else str(i) for i, m in enumerate(tail)}
    in_prefix = {k: p for k, p in chosen.items() if prefix is not None and k.startswith(prefix_name + ".")}
    tail_params = {f"{names[id(m)]}.{w}" for m in linears for w in ("weight", "bias")}
    outside = sorted(set(chosen) - set(in_prefix) - tail_params)
    if outside:
        raise InputError(f"method 'exact_mlp' covers the parameters of the prefix and the fully connected tail; "
                         f"{outside[:4]} are neither: use method 'exact'")
    n = x.shape[0]
    h = prefix(x) if prefix is not None else x
    for module in lead:
        h = module(h)
    inputs, slopes = [h.reshape(n, -1)], []
    for linear in linears[:-1]:
        z = linear(inputs[-1])
        slopes.append((z > 0).to(z.dtype))
        inputs.append(torch.relu(z))
    num_outputs = linears[-1].out_features
    kernel = inputs[0].new_zeros((n, n))
    deriv = None  # D of the current layer's outputs, (n, units, C); None: the network's outputs (D = I)
    for depth in reversed(range(len(linears))):
        linear, a = linears[depth], inputs[depth]
        if deriv is None:
            outer = torch.full_like(kernel, float(num_outputs))  # <I, I>_F = C
        else:
            flat = deriv.reshape(n, -1)
            outer = flat @ flat.T
        base = names[id(linear)]
        if f"{base}.weight" in chosen:
            kernel = kernel + outer * (a @ a.T)
        if f"{base}.bias" in chosen:
            kernel = kernel + outer
        if depth:  # D of the layer below: diag(relu'(z)) W^T D
            back = linear.weight.T.unsqueeze(0) if deriv is None else torch.einsum("ku,nkc->nuc", linear.weight, deriv)
            deriv = slopes[depth - 1].unsqueeze(2) * back
    for c in range(num_outputs if in_prefix else 0):
        onehot = torch.zeros(num_outputs, dtype=x.dtype, device=x.device)
        onehot[c] = 1
        kernel = kernel + _gram(_per_sample_gradients(model, in_prefix, x, onehot), n)
    return kernel


def _directions(chosen: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One Gaussian direction u ~ N(0, I) in the selected parameter space (drawn on the CPU, then moved)."""
    return {
        k: torch.randn(p.shape, generator=generator, dtype=torch.float64).to(dtype=p.dtype, device=p.device)
        for k, p in chosen.items()
    }


def _sketch_directions(model: nn.Module, chosen: dict[str, torch.Tensor], m: int, seed: int):
    """``(directions, generator)``: the ``m`` Gaussian directions that ``seed`` gives for the parameters
    ``chosen``, and the generator positioned after drawing them (for the output sketch). The latest
    ones of each model are kept and reused while the seed, ``m`` and the parameters' names, shapes,
    dtypes and devices stay the same (see the module docstring)."""
    key = (int(seed), m, tuple((k, tuple(p.shape), p.dtype, p.device) for k, p in chosen.items()))
    cached = _DIRECTIONS.get(model)
    if cached is None or cached[0] != key:
        generator = torch.Generator().manual_seed(int(seed))
        directions = [_directions(chosen, generator) for _ in range(m)]
        cached = _DIRECTIONS[model] = (key, directions, generator.get_state())
    generator = torch.Generator()
    generator.set_state(cached[2])
    return cached[1], generator


def ntk_features(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "jvp_projection",
    num_projections: int = 64,
    seed: int = 0,
    params: ParamSpec = None,
    epsilon: float = 1e-3,
    output_sketch_dim: int | None = None,
) -> torch.Tensor:
    """Per-sample sketch features ``Phi`` (n, m * C') with ``Theta ~ Phi Phi^T`` (unbiased).

    Parameters
    ----------
    method : "jvp_projection" | "finite_difference"
        How ``J u`` is obtained (forward-mode AD, or central differences with step ``epsilon`` along
        ``u``, in parameter units: the perturbation of each parameter is ``epsilon * u_p``).
    num_projections : int
        ``m``, the number of Gaussian directions ``u`` (error ``~ 1/sqrt(m)``).
    seed : int
        Seeds the directions (and the output sketch): the same seed gives the same features for the
        same sample, so features of different batches can be cached and combined.
    output_sketch_dim : int or None
        ``C' = k`` (a fixed Gaussian projection of the ``C`` outputs), or ``None``: ``C' = C``.
    """
    if method not in FEATURE_METHODS:
        raise InputError(f"method must be one of {FEATURE_METHODS} for features, got {method!r}")
    m = int(num_projections)
    if m < 1:
        raise InputError(f"num_projections must be an int >= 1, got {num_projections!r}")
    if output_sketch_dim is not None and (isinstance(output_sketch_dim, bool) or int(output_sketch_dim) < 1):
        raise InputError(f"output_sketch_dim must be None or an int >= 1, got {output_sketch_dim!r}")
    eps = check_positive("epsilon", epsilon)
    chosen = select_parameters(model, params)
    n = x.shape[0]
    directions, generator = _sketch_directions(model, chosen, m, seed)

    def forward(p):
        return functional_call(model, p, (x,))

    def directional(u):  # J u, (n, C)
        if method == "jvp_projection":
            return _flat_outputs(jvp(forward, (chosen,), (u,))[1], n)
        plus = forward({k: p + eps * u[k] for k, p in chosen.items()})
        minus = forward({k: p - eps * u[k] for k, p in chosen.items()})
        return _flat_outputs((plus - minus) / (2 * eps), n)

    columns = _map_directions(model, directional, directions)  # (m, n, C)
    if output_sketch_dim is not None:  # a fresh Gaussian output sketch per direction keeps the average unbiased
        k = int(output_sketch_dim)
        sketch = torch.randn((m, columns.shape[2], k), generator=generator, dtype=torch.float64) / math.sqrt(k)
        columns = torch.bmm(columns, sketch.to(dtype=columns.dtype, device=columns.device))
    return columns.permute(1, 0, 2).reshape(n, -1) / math.sqrt(m)


def _map_directions(model: nn.Module, fn, directions: list[dict], chunk: int = 16) -> torch.Tensor:
    """``stack([fn(u) for u in directions])``, vectorised by ``vmap`` in chunks of ``chunk`` directions
    (a Python loop for a call that vmap refuses)."""

    def vectorised():
        out = []
        for start in range(0, len(directions), chunk):
            part = directions[start : start + chunk]
            stacked = {k: torch.stack([u[k] for u in part]) for k in part[0]}
            out.append(vmap(fn, randomness="same")(stacked))
        return torch.cat(out)

    return _vmap_or_loop(model, vectorised, lambda: torch.stack([fn(u) for u in directions]), "directions")


def _per_sample_gradients(model, chosen, x, weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-sample gradients of ``weights . f(x_i)`` (``weights=None``: plain sum over outputs)."""

    def scalar(p, xi):
        out = functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)
        return out.sum() if weights is None else (out * weights).sum()

    g = grad(scalar)

    def loop():
        rows = [g(chosen, x[i]) for i in range(x.shape[0])]
        return {k: torch.stack([r[k] for r in rows]) for k in chosen}

    return _vmap_or_loop(model, lambda: vmap(g, in_dims=(None, 0), randomness="same")(chosen, x), loop, "samples")


def ntk_output_projection(
    model: nn.Module, x: torch.Tensor, *, num_projections: int = 8, seed: int = 0, params: ParamSpec = None
) -> torch.Tensor:
    """Unbiased NTK estimate from ``m`` Gaussian projections ``v`` of the output space (see module doc)."""
    m = int(num_projections)
    if m < 1:
        raise InputError(f"num_projections must be an int >= 1, got {num_projections!r}")
    chosen = select_parameters(model, params)
    n = x.shape[0]
    with torch.no_grad():
        num_outputs = _flat_outputs(model(x[:1]), 1).shape[1]
    generator = torch.Generator().manual_seed(int(seed))
    projections = [
        {"v": torch.randn(num_outputs, generator=generator, dtype=torch.float64).to(dtype=x.dtype, device=x.device)}
        for _ in range(m)
    ]
    terms = _map_directions(model, lambda d: _gram(_per_sample_gradients(model, chosen, x, d["v"]), n), projections)
    return terms.mean(0)


def ntk_sum_of_logits(model: nn.Module, x: torch.Tensor, *, params: ParamSpec = None) -> torch.Tensor:
    """``G G^T`` with ``G[i]`` the gradient of the summed outputs of sample ``i`` (not the NTK: adds the
    cross-output terms ``<df_c, df_c'>``; see module docstring)."""
    chosen = select_parameters(model, params)
    return _gram(_per_sample_gradients(model, chosen, x, None), x.shape[0])


def empirical_ntk(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "exact",
    params: ParamSpec = None,
    num_projections: int = 64,
    seed: int = 0,
    epsilon: float = 1e-3,
    output_sketch_dim: int | None = None,
) -> torch.Tensor:
    """The (estimated) empirical NTK of ``model`` on the batch ``x`` (n, ...), an (n, n) tensor.

    ``method`` is one of :data:`METHODS` (see the module docstring); ``params`` as for
    :func:`select_parameters`; ``num_projections``, ``seed``, ``epsilon``, ``output_sketch_dim`` are used
    by the estimators that need them. Differentiable when grad mode is on and parameters require grad.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise InputError(f"x must be a tensor with a non-empty batch dim 0, got {getattr(x, 'shape', x)!r}")
    if method == "exact":
        return ntk_exact(model, x, params=params)
    if method == "exact_mlp":
        return ntk_exact_mlp(model, x, params=params)
    if method in FEATURE_METHODS:
        phi = ntk_features(
            model, x, method=method, num_projections=num_projections, seed=seed, params=params,
            epsilon=epsilon, output_sketch_dim=output_sketch_dim,
        )
        return phi @ phi.T
    if method == "output_projection":
        return ntk_output_projection(model, x, num_projections=num_projections, seed=seed, params=params)
    if method == "sum_of_logits":
        return ntk_sum_of_logits(model, x, params=params)
    raise InputError(f"method must be one of {METHODS}, got {method!r}")


class TeacherKernel:
    """The frozen teacher's NTK on batches, computed without gradient and cached.

    Parameters
    ----------
    teacher : nn.Module
        Put in eval mode here; its kernel is taken over ``params`` (default: all its parameters, frozen
        or not).
    method, num_projections, seed, epsilon, output_sketch_dim : see :func:`empirical_ntk`.
    cache : bool
        With ``indices`` given to :meth:`__call__`: for the sketch methods (``"jvp_projection"``,
        ``"finite_difference"``) cache each sample's features by dataset index (``m * C'`` numbers per
        sample, on the CPU), so any batch of already-seen samples costs one matrix product; for the
        other methods cache whole kernels keyed by the tuple of indices (helps when kernel batches
        repeat), at most ``max_cached_batches`` of them (least recently used dropped). For a fixed training
        set, :meth:`precompute` takes the whole kernel once.
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        method: str = "exact",
        params: ParamSpec = None,
        num_projections: int = 64,
        seed: int = 0,
        epsilon: float = 1e-3,
        output_sketch_dim: int | None = None,
        cache: bool = True,
        max_cached_batches: int = 1024,
    ):
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self.teacher = teacher.eval()
        self.method, self.params, self.seed = method, params, int(seed)
        self.num_projections, self.epsilon, self.output_sketch_dim = num_projections, epsilon, output_sketch_dim
        self.cache, self.max_cached_batches = bool(cache), int(max_cached_batches)
        self._features: dict[int, torch.Tensor] = {}
        self._kernels: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._full: torch.Tensor | None = None
        self._full_rows: dict[int, int] = {}
        self.hits = self.misses = 0

    def precompute(self, x: torch.Tensor, indices: torch.Tensor | Sequence[int]) -> None:
        """Take the kernel over a fixed set of samples at once (a few-label or fine-tuning training set,
        ``n x n``): a later call whose indices all lie among ``indices`` is served its sub-block."""
        keys = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if len(keys) != x.shape[0] or len(set(keys)) != len(keys):
            raise InputError(f"indices must be {x.shape[0]} distinct dataset indices, one per sample; got {len(keys)} "
                             f"({len(set(keys))} distinct)")
        out = self._compute(x)
        self._full = (out @ out.T if self.method in FEATURE_METHODS else out).cpu()
        self._full_rows = {k: i for i, k in enumerate(keys)}

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        """Features (sketch methods) or the kernel (others) of ``x``, without gradient."""
        with torch.no_grad():
            if self.method in FEATURE_METHODS:
                return ntk_features(
                    self.teacher, x, method=self.method, num_projections=self.num_projections, seed=self.seed,
                    params=self.params, epsilon=self.epsilon, output_sketch_dim=self.output_sketch_dim,
                )
            return empirical_ntk(
                self.teacher, x, method=self.method, params=self.params,
                num_projections=self.num_projections, seed=self.seed,
            )

    def __call__(self, x: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Kernel (n, n) of the teacher on ``x``; ``indices`` (n,) are the samples' dataset indices."""
        if self.teacher.training:
            self.teacher.eval()
        if indices is None or not self.cache:
            out = self._compute(x)
            return out @ out.T if self.method in FEATURE_METHODS else out
        keys = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if len(keys) != x.shape[0]:
            raise InputError(f"indices has {len(keys)} entries but the batch has {x.shape[0]} samples")
        if self._full is not None and all(k in self._full_rows for k in keys):
            self.hits += 1
            rows = torch.tensor([self._full_rows[k] for k in keys])
            return self._full[rows][:, rows].to(device=x.device)
        if self.method in FEATURE_METHODS:
            missing = [j for j, k in enumerate(keys) if k not in self._features]
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            if missing:
                fresh = self._compute(x[missing]).cpu()
                for j, row in zip(missing, fresh):
                    self._features[keys[j]] = row
            phi = torch.stack([self._features[k] for k in keys]).to(device=x.device)
            return phi @ phi.T
        key = tuple(keys)
        if key in self._kernels:
            self.hits += 1
            self._kernels.move_to_end(key)
            return self._kernels[key].to(device=x.device)
        self.misses += 1
        kernel = self._compute(x)
        self._kernels[key] = kernel.cpu()
        if len(self._kernels) > self.max_cached_batches:
            self._kernels.popitem(last=False)
        return kernel

    def clear(self) -> None:
        """Forget every cached feature and kernel (e.g. after the teacher changed)."""
        self._features.clear()
        self._kernels.clear()
        self._full, self._full_rows = None, {}
