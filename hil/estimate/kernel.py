"""Neural tangent kernels of optical students in their infinite-width limit, composed analytically.

The architecture (the optical student of :mod:`hil.models`), in NTK parameterisation -- every weight
and bias ``N(0, 1)``, each layer's sum scaled by ``1 / sqrt(fan_in)``::

    r          = display(x)                       relative radiance (C, H, W); no parameters
    z_m        = (w_m * r) / sqrt(D)              M signed kernels w_m (C, K, K), D = C K^2, "same" conv
    u          = avgpool_p(z)                     features (M, Q), Q = (H // p) (W // p) positions
    a^1        = sigma_w W^1 u / sqrt(M Q) + sigma_b b^1
    a^(l+1)    = sigma_w W^(l+1) relu(a^l) / sqrt(n_l) + sigma_b b^(l+1),   l = 1 .. L
    f          = a^(L+1)                          the outputs (logits)

``L`` is the number of hidden ReLU layers of the backend. The **segmentation** variant has no pooling
and no flattening: every pixel is a point of its own (``Q = 1``) and the decoder is modelled as ``L``
ReLU layers of 1x1 convolutions; its spatial context beyond the frontend's K x K kernel is not.

Composition rules (``sigma_w^2``: ``weight_variance``, ``sigma_b^2``: ``bias_variance``)
--------------------------------------------------------------------------------------
* **Linear optical convolution + pooling** (Arora et al. 2019, the CNTK's linear layer): with
  ``P_q(x)`` the radiance patch (D values) seen at pooled position ``q`` (averaged over the pool block),
  the features' kernel is ``B_G(x, x') = 1/(Q D) sum_q P_q(x)^T G P_q(x')`` with
  ``G = (1/M) sum_m w_m w_m^T``. Infinitely many random kernels give ``G = I`` (``B_I``); a bank of
  ``M`` kernels gives its own ``G`` (rank ``min(M, D)``: few kernels see only an ``M``-dimensional
  subspace of every patch).
* **First FC layer** (flattened features): NNGP ``Sigma^1 = sigma_w^2 B_G + sigma_b^2``; NTK
  ``Theta^1 = Sigma^1 + sigma_w^2 B_I`` where the last term is the tangent of the trained optical
  kernels (left out when the frontend is frozen).
* **ReLU layer** (Cho & Saul's arc-cosine kernels; Jacot et al.'s NTK recursion): with
  ``cos t = Sigma(x, x') / sqrt(Sigma(x, x) Sigma(x', x'))``::

      Sigma^(l+1) = sigma_w^2 sqrt(Sigma(x, x) Sigma(x', x')) (sin t + (pi - t) cos t) / (2 pi) + sigma_b^2
      Theta^(l+1) = Sigma^(l+1) + sigma_w^2 (pi - t) / (2 pi) Theta^l

The output kernel ``Theta^(L+1)`` is the NTK of every output (the NTK is ``Theta I_C``); an empirical
NTK summed over ``C`` outputs (:func:`hil.ntk.empirical_ntk`) tends to ``C Theta^(L+1)``.

A finite bank (``bank`` given) is the "random network of that size": its kernels enter through ``G``
exactly, with the backend infinitely wide. Where the frontend is trained, its tangent term takes the
many-kernel value ``sigma_w^2 B_I``; for ``M`` kernels the exact term differs by ``O(1/M)`` of it
(the correlation between a hidden unit's gate and its own weights; measured against 2048-wide
networks on 6 x 6 inputs: 10 % relative error for 4 kernels, 3 % for 64). With a frozen frontend the
kernel is exact for the bank. :class:`WideStudent` is the finite-width network these kernels are the limit
of, to check them against :func:`hil.ntk.empirical_ntk` as the width grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simulator.conv import optical_conv2d
from onn_core.errors import InputError


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def patch_maps(radiance: torch.Tensor, kernel_size: int, pool: int | None) -> torch.Tensor:
    """The radiance patch every output pixel of a K x K "same" optical convolution sees.

    Parameters
    ----------
    radiance : (N, C, H, W) tensor
        Relative radiance (dimensionless, 0..1) in sensor-pixel samples.
    kernel_size : int
        ``K`` (pixels).
    pool : int or None
        Average-pooling block (pixels), as the backend's; ``None``: no pooling.

    Returns
    -------
    (N, D, H', W') tensor, ``D = C K^2``: channel ``d`` is the convolution of ``radiance`` with the
    ``d``-th unit kernel (through :func:`simulator.conv.optical_conv2d`, so the frontend's own index
    convention), pooled. A signed kernel ``w`` (flattened to D) gives features ``sum_d w_d map_d``.
    """
    if not isinstance(radiance, torch.Tensor) or radiance.ndim != 4:
        raise InputError(f"radiance must be a (N, C, H, W) tensor, got {getattr(radiance, 'shape', radiance)!r}")
    k = _check_int("kernel_size", kernel_size, 1)
    c = radiance.shape[1]
    basis = torch.eye(c * k * k, dtype=radiance.dtype, device=radiance.device).reshape(c * k * k, c, k, k)
    maps = optical_conv2d(radiance, basis, mode="same")
    if pool is not None and _check_int("pool", pool, 1) > 1:
        maps = F.avg_pool2d(maps, pool)
    return maps


def bank_factor(bank: torch.Tensor) -> torch.Tensor:
    """``L`` (D, r) with ``L L^T = G = (1/M) sum_m w_m w_m^T`` for a bank of kernels (M, C, K, K), the
    bank first scaled to unit mean square (the NTK parameterisation's unit-variance weights); ``r =
    min(M, D)`` (the bank itself / sqrt(M) when ``M <= D``, else the symmetric square root of ``G``)."""
    if not isinstance(bank, torch.Tensor) or bank.ndim != 4:
        raise InputError(f"bank must be a (M, C, K, K) tensor of signed kernels, got {getattr(bank, 'shape', bank)!r}")
    w = bank.detach().reshape(bank.shape[0], -1).double()
    scale = w.square().mean()
    if not bool(scale > 0):
        raise InputError("bank must hold a kernel that is not all zeros")
    w = w / scale.sqrt()
    m, d = w.shape
    if m <= d:
        return w.T / math.sqrt(m)
    values, vectors = torch.linalg.eigh(w.T @ w / m)
    return vectors * values.clamp(min=0).sqrt()


@dataclass
class PointFeatures:
    """Features of a set of points (images, or pixels for segmentation) from which the kernel between
    two sets is formed: ``sigma`` with ``sigma_i . sigma_j = B_G``, ``tangent`` with
    ``tangent_i . tangent_j = B_I`` (``None``: the same as ``sigma``, for infinitely many kernels),
    and their squared norms (the diagonals)."""

    sigma: torch.Tensor
    tangent: torch.Tensor | None
    sigma_diag: torch.Tensor
    tangent_diag: torch.Tensor

    def __len__(self) -> int:
        return self.sigma.shape[0]

    @staticmethod
    def cat(parts: "list[PointFeatures]") -> "PointFeatures":
        """The points of several feature sets, in order."""
        tangent = None if parts[0].tangent is None else torch.cat([p.tangent for p in parts])
        return PointFeatures(torch.cat([p.sigma for p in parts]), tangent, torch.cat([p.sigma_diag for p in parts]),
                             torch.cat([p.tangent_diag for p in parts]))

    def select(self, index) -> "PointFeatures":
        """The features of a subset of points (an index tensor or slice)."""
        return PointFeatures(self.sigma[index], None if self.tangent is None else self.tangent[index],
                             self.sigma_diag[index], self.tangent_diag[index])


class ArchitectureKernel:
    """The NTK of an optical student's architecture (module docstring), between sets of points.

    Parameters
    ----------
    kernel_size : int
        Optical kernel side ``K`` (pixels).
    depth : int
        Hidden ReLU layers ``L`` of the backend (>= 1).
    pool : int or None
        Average pooling of the features (pixels) before the FC layers; ``None``: per-pixel points
        (segmentation).
    bank : (M, C, K, K) tensor or None
        A finite bank of kernels; ``None``: infinitely many random kernels.
    frontend_trained : bool
        Include the optical kernels' own tangent term (they are trained with the backend).
    weight_variance, bias_variance : float
        ``sigma_w^2`` and ``sigma_b^2`` of the backend's layers (radiance in units of full white; with
        ``sigma_b^2 = 0`` the kernel is homogeneous in brightness).
    """

    def __init__(self, kernel_size: int, depth: int, pool: int | None, *, bank: torch.Tensor | None = None,
                 frontend_trained: bool = True, weight_variance: float = 2.0, bias_variance: float = 0.1):
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)
        self.depth = _check_int("depth", depth, 1)
        self.pool = None if pool is None else _check_int("pool", pool, 1)
        if bank is not None and tuple(bank.shape[-2:]) != (kernel_size, kernel_size):
            raise InputError(f"bank kernels must be {kernel_size} x {kernel_size}, got shape {tuple(bank.shape)}")
        if not weight_variance > 0 or not bias_variance >= 0:
            raise InputError(f"weight_variance must be > 0 and bias_variance >= 0, got {weight_variance!r}, "
                             f"{bias_variance!r}")
        self.factor = None if bank is None else bank_factor(bank)
        self.num_kernels = None if bank is None else int(bank.shape[0])
        self.frontend_trained = bool(frontend_trained)
        self.weight_variance, self.bias_variance = float(weight_variance), float(bias_variance)

    def features(self, radiance: torch.Tensor) -> PointFeatures:
        """Features of the points of ``radiance`` (N, C, H, W): one point per image, or, without
        pooling (segmentation), one per pixel in row-major order (``N H W`` points). In the dtype of
        ``radiance`` (float32 halves the cost of the kernel's inner products; its rounding moves the
        diagonal by ~1e-4 relative through the arc-cosine's square root at angle 0)."""
        maps = patch_maps(radiance, self.kernel_size, self.pool)  # (N, D, H', W')
        n, d, h, w = maps.shape
        if self.pool is None:  # a point per pixel: (N H W, D)
            patches, scale = maps.permute(0, 2, 3, 1).reshape(n * h * w, d), d
        else:  # a point per image: (N, Q, D)
            patches, scale = maps.reshape(n, d, h * w).transpose(1, 2), d * h * w
        patches = patches / math.sqrt(scale)
        tangent = patches.reshape(patches.shape[0], -1)
        if self.factor is None:
            sigma, kept = tangent, None
        else:
            sigma = (patches @ self.factor.to(patches)).reshape(patches.shape[0], -1)
            kept = tangent if self.frontend_trained else None
        tangent_diag = tangent.double().square().sum(1)
        return PointFeatures(sigma, kept, sigma.double().square().sum(1), tangent_diag)

    def __call__(self, rows: PointFeatures, cols: PointFeatures) -> torch.Tensor:
        """The kernel block ``Theta(rows, cols)`` (n_rows, n_cols), float64."""
        wv, bv = self.weight_variance, self.bias_variance
        linear = (rows.sigma @ cols.sigma.T).double()
        sigma = wv * linear + bv
        if not self.frontend_trained:
            theta = sigma
        elif rows.tangent is None:  # infinitely many kernels: B_I = B_G
            theta = sigma + wv * linear
        else:
            theta = sigma + wv * (rows.tangent @ cols.tangent.T).double()
        return relu_layers(sigma, theta, wv * rows.sigma_diag + bv, wv * cols.sigma_diag + bv, self.depth, wv, bv)

    def diagonal(self, points: PointFeatures) -> torch.Tensor:
        """``Theta(x, x)`` of every point (n,), float64 (as :meth:`__call__`'s diagonal, computed alone)."""
        wv, bv = self.weight_variance, self.bias_variance
        sigma = wv * points.sigma_diag + bv
        theta = sigma + (wv * points.tangent_diag if self.frontend_trained else 0.0)
        for _ in range(self.depth):  # angle 0: E[relu^2] = Sigma / 2, E[relu'^2] = 1 / 2
            sigma = wv * sigma / 2 + bv
            theta = sigma + wv * theta / 2
        return theta

    def describe(self) -> str:
        kernels = "infinitely many" if self.num_kernels is None else str(self.num_kernels)
        return (f"{kernels} {self.kernel_size}x{self.kernel_size} kernels, pool {self.pool}, {self.depth} ReLU "
                f"layer(s), frontend {'trained' if self.frontend_trained else 'frozen'}")


def relu_layers(sigma: torch.Tensor, theta: torch.Tensor, diag_rows: torch.Tensor, diag_cols: torch.Tensor,
                depth: int, weight_variance: float, bias_variance: float) -> torch.Tensor:
    """``depth`` ReLU layers (each followed by a linear layer) applied to a block of NNGP ``sigma`` and
    NTK ``theta`` kernels whose NNGP diagonals are ``diag_rows`` (n,) and ``diag_cols`` (m,); returns
    the output NTK block (arc-cosine recursion, module docstring). Float64."""
    wv, bv = weight_variance, bias_variance
    for _ in range(depth):
        norm = torch.sqrt(diag_rows[:, None] * diag_cols[None, :])
        cos = torch.where(norm > 0, sigma / norm.clamp(min=torch.finfo(norm.dtype).tiny), 0.0).clamp(-1.0, 1.0)
        angle = torch.arccos(cos)
        sigma = wv * norm * (torch.sin(angle) + (math.pi - angle) * cos) / (2 * math.pi) + bv
        theta = sigma + wv * (math.pi - angle) / (2 * math.pi) * theta
        diag_rows, diag_cols = wv * diag_rows / 2 + bv, wv * diag_cols / 2 + bv
    return theta


class WideStudent(nn.Module):
    """The finite network whose infinite-width NTK :class:`ArchitectureKernel` computes: ``width``
    random kernels (or a given ``bank``), average pooling by ``pool``, ``depth`` hidden ReLU layers of
    ``width`` units and ``num_outputs`` outputs, in NTK parameterisation (all parameters ``N(0, 1)``,
    seeded). Input: relative radiance (N, C, H, W); output (N, num_outputs)."""

    def __init__(self, in_shape: tuple[int, int, int], kernel_size: int, pool: int, depth: int, width: int,
                 num_outputs: int, *, bank: torch.Tensor | None = None, weight_variance: float = 2.0,
                 bias_variance: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        c, h, w = in_shape
        k, pool = _check_int("kernel_size", kernel_size, 1), _check_int("pool", pool, 1)
        width = _check_int("width", width, 1)
        generator = torch.Generator().manual_seed(seed)

        def normal(*shape):
            return nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))

        if bank is None:
            self.kernels = normal(width, c, k, k)
        else:  # the bank scaled to unit mean square, as bank_factor does
            scaled = bank.detach().to(dtype)
            self.kernels = nn.Parameter(scaled / scaled.square().mean().sqrt())
        self.pool, self.sigma_w, self.sigma_b = pool, math.sqrt(weight_variance), math.sqrt(bias_variance)
        fan_in = self.kernels.shape[0] * (h // pool) * (w // pool)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_out in [width] * _check_int("depth", depth, 1) + [num_outputs]:
            self.weights.append(normal(fan_out, fan_in))
            self.biases.append(normal(fan_out))
            fan_in = fan_out

    def forward(self, radiance: torch.Tensor) -> torch.Tensor:
        d = self.kernels[0].numel()
        z = optical_conv2d(radiance, self.kernels / math.sqrt(d), mode="same")
        h = (F.avg_pool2d(z, self.pool) if self.pool > 1 else z).flatten(1)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if i:
                h = torch.relu(h)
            h = self.sigma_w * h @ weight.T / math.sqrt(weight.shape[1]) + self.sigma_b * bias
        return h
