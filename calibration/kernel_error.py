"""The residual stage's kernel error (:mod:`calibration.fit`): a regularised correction added to every
placed PSF in the sensor frame, ``(P, C, K', K')``, fitted by L-BFGS together with the geometry
(:func:`fit_kernel_error`); its derivatives by forward-mode differentiation, one tangent per kernel
value and colour class of PSFs (:func:`kernel_error_passes`); the normal equations of its Jacobian
block by block (:func:`kernel_error_normal`); and what it costs in degrees of freedom
(:func:`effective_parameters`).
"""

from __future__ import annotations

import numpy as np
import torch

from .fit_model import FitModel


def kernel_error_rate(model: FitModel, theta: torch.Tensor, kernel_error: torch.Tensor):
    """The model's rate over the masked pixels as a function of the kernel error alone, at ``theta``,
    for forward-mode differentiation."""
    with torch.no_grad():
        shaped = model.shaped(theta)

    def rate(delta):
        return model.image(theta, shaped, delta)[model.mask]

    return rate


def kernel_error_passes(model: FitModel, theta: torch.Tensor, kernel_error: torch.Tensor) -> torch.Tensor:
    """d rate / d kernel_error over the masked pixels, (5 colour classes, C * K' * K' values, pixels), by
    forward-mode automatic differentiation: one tangent per kernel value and colour class (PSFs whose
    tiles are >= 3 grid steps apart move together; PSF ``p``'s column is its class's, on ``near[p]``)."""
    shape = kernel_error.shape
    slots = int(np.prod(shape[1:]))
    tangents = torch.zeros(5, slots, model.p, slots, dtype=torch.float64, device=model.device)
    diagonal = torch.arange(slots, device=model.device)
    for p in range(model.p):
        tangents[model.colour[p], diagonal, p, diagonal] = 1.0

    rate = kernel_error_rate(model, theta, kernel_error)

    def derivative(tangent):
        return torch.func.jvp(rate, (kernel_error,), (tangent.reshape(shape),))[1]

    passes = torch.func.vmap(derivative, chunk_size=slots)(tangents.reshape(-1, *shape))
    return passes.reshape(5, slots, -1)


def kernel_error_jacobian(model: FitModel, theta: torch.Tensor, kernel_error: torch.Tensor) -> torch.Tensor:
    """d(model/sigma)/d kernel_error over the masked pixels (pixels, P * C * K' * K'), dense."""
    passes = kernel_error_passes(model, theta, kernel_error)
    columns = torch.stack([passes[model.colour[p]] * model.near[p] for p in range(model.p)])  # (P, slots, pixels)
    return columns.reshape(-1, passes.shape[-1]).T / model.sigma[:, None]


def kernel_error_normal(model: FitModel, theta: torch.Tensor, kernel_error: torch.Tensor, residual: torch.Tensor,
                         other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(J_d^T J_d, J_d^T residual, J_d^T other)`` of the whitened kernel-error Jacobian ``J_d``
    (:func:`kernel_error_jacobian`), block by block: PSF ``p``'s columns live on its neighbourhood only,
    so a block (p, q) is a product over the pixels both neighbourhoods share (none beyond 2 grid steps);
    no dense (pixels, values) Jacobian is formed (equal to it to float64 rounding, see tests)."""
    passes = kernel_error_passes(model, theta, kernel_error)
    slots = passes.shape[1]
    near = model.near.bool()
    whitened = passes / model.sigma
    gram = torch.zeros(model.p * slots, model.p * slots, dtype=torch.float64, device=model.device)
    jr = torch.zeros(model.p * slots, dtype=torch.float64, device=model.device)
    jo = torch.zeros(model.p * slots, other.shape[1], dtype=torch.float64, device=model.device)
    for p in range(model.p):
        own = slice(p * slots, (p + 1) * slots)
        pixels = near[p]
        jr[own] = whitened[model.colour[p]][:, pixels] @ residual[pixels]
        jo[own] = whitened[model.colour[p]][:, pixels] @ other[pixels]
        for q in range(p, model.p):
            common = pixels & near[q]
            if not bool(common.any()):
                continue
            block = whitened[model.colour[p]][:, common] @ whitened[model.colour[q]][:, common].T
            gram[own, q * slots:(q + 1) * slots] = block
            gram[q * slots:(q + 1) * slots, own] = block.T
    return gram, jr, jo


def effective_parameters(jacobian: torch.Tensor, prior: float) -> float:
    """Effective number of parameters of the regularised least squares ``|r - J d|^2 + |d|^2 / prior^2``
    (whitened residuals ``r``, Jacobian ``J`` (pixels, values)): the trace of its hat matrix
    ``J (J^T J + I / prior^2)^-1 J^T``, ``sum(lambda / (lambda + prior^-2))`` over the eigenvalues of ``J^T J``."""
    return effective_parameters_of_gram(jacobian.T @ jacobian, prior)


def prior_factor(gram: torch.Tensor, prior: float) -> torch.Tensor:
    """The lower Cholesky factor ``L`` of the regularised Gram matrix ``G + I / prior^2`` (``G = J^T J``)."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky(gram + eye / prior**2)


def effective_parameters_of_gram(gram: torch.Tensor, prior: float, factor: torch.Tensor | None = None) -> float:
    """:func:`effective_parameters` from ``G = J^T J`` itself, as ``n - tr((G + I / prior^2)^-1) / prior^2``
    with the inverse's trace the squared norm of ``L^-1`` (``factor``: :func:`prior_factor`'s ``L``, when
    the caller has it; a quarter of the work of ``G``'s eigenvalues)."""
    factor = prior_factor(gram, prior) if factor is None else factor
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
    return float(gram.shape[0] - inverse.square().sum() / prior**2)


def fit_kernel_error(model: FitModel, theta: torch.Tensor, start: torch.Tensor | None, joint: np.ndarray,
                     steps: torch.Tensor, *, prior: float, max_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel error minimising chi-square + ``sum(delta^2) / prior^2`` (L-BFGS, at most
    ``max_iterations`` iterations), and with it the parameters ``joint`` of ``theta`` (the geometric
    ones, in units of ``steps``: see :func:`calibration.fit.fit_mismatch`), from ``start`` (None: zero).
    Returns ``(theta, delta)``."""
    delta = kernel_error_start(model, start).requires_grad_(True)
    index = model.tensor(np.asarray(joint, dtype=np.int64))
    moves = torch.zeros(len(index), dtype=torch.float64, device=model.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([delta, moves], max_iter=max_iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)
    count = model.data.numel()

    with torch.no_grad():
        shaped = model.shaped(theta)  # blur and aberration: not among the parameters moved here

    def trial():
        return theta.index_add(0, index, moves * steps) if len(index) else theta

    def closure():  # chi-square + prior, per residual (a well-scaled objective for L-BFGS' tolerances)
        optimiser.zero_grad()
        whitened = (model.data - model.image(trial(), shaped, delta)[model.mask]) / model.sigma
        loss = (whitened.square().sum() + delta.square().sum() / prior**2) / count
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return trial().detach(), delta.detach()


def kernel_error_start(model: FitModel, start: torch.Tensor | None) -> torch.Tensor:
    window = model.kernel_window
    return (torch.zeros((model.p, model.channels, window, window), dtype=torch.float64, device=model.device)
            if start is None else start.clone())


def kernel_error_curvature(model: FitModel, theta: torch.Tensor, kernel_error: torch.Tensor) -> float:
    """The mean diagonal of ``J_d^T W J_d`` (the chi-square's curvature per kernel-error value), by one
    forward-mode product along a random +-1 tangent (Hutchinson: ``E |J v|^2`` is the trace)."""
    generator = torch.Generator(device="cpu").manual_seed(0)  # drawn on the CPU: the same tangent on any device
    signs = torch.randint(0, 2, kernel_error.shape, generator=generator, device="cpu")
    tangent = (signs.double() * 2 - 1).to(model.device)
    change = torch.func.jvp(kernel_error_rate(model, theta, kernel_error), (kernel_error,), (tangent,))[1]
    return float((change / model.sigma).square().sum()) / kernel_error.numel()


__all__ = ["effective_parameters", "effective_parameters_of_gram", "fit_kernel_error", "kernel_error_curvature",
           "kernel_error_jacobian", "kernel_error_normal", "kernel_error_passes", "kernel_error_rate",
           "kernel_error_start", "prior_factor"]
