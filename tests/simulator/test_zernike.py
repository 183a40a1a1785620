"""Zernike polynomials: Noll ordering and normalisation, index converters, wavefronts and gradients."""

import math

import numpy as np
import pytest
import torch

from onn_core.errors import InputError
from simulator.field import Grid
from simulator.zernike import (
    nm_to_noll,
    noll_to_nm,
    noll_to_osa,
    osa_to_noll,
    wavefront_to_phase,
    zernike_basis,
    zernike_polynomial,
    zernike_wavefront,
)

# Noll (1976), table 1: j -> (n, m) with m < 0 for the sin terms.
NOLL_TABLE = {1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2), 7: (3, -1), 8: (3, 1),
              9: (3, -3), 10: (3, 3), 11: (4, 0), 12: (4, 2), 13: (4, -2), 14: (4, 4), 15: (4, -4),
              16: (5, 1), 17: (5, -1), 18: (5, 3), 19: (5, -3), 20: (5, 5), 21: (5, -5), 22: (6, 0)}


def test_noll_table():
    for j, nm in NOLL_TABLE.items():
        assert noll_to_nm(j) == nm


def test_index_converters_round_trip_1_to_66():
    osa = [noll_to_osa(j) for j in range(1, 67)]
    assert sorted(osa) == list(range(66))  # radial orders 0..10, a bijection onto OSA 0..65
    for j in range(1, 67):
        assert nm_to_noll(*noll_to_nm(j)) == j
        assert osa_to_noll(noll_to_osa(j)) == j
        n, m = noll_to_nm(j)
        assert noll_to_osa(j) == (n * (n + 2) + m) // 2
    # OSA/ANSI examples: j=3 is (2, -2) oblique astigmatism = Noll 5; j=12 is spherical (4, 0) = Noll 11
    assert osa_to_noll(3) == 5 and osa_to_noll(4) == 4 and osa_to_noll(12) == 11


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4"])
def test_bad_noll_index_raises(bad):
    with pytest.raises(InputError, match="Noll index"):
        noll_to_nm(bad)


def test_invalid_nm_raises():
    with pytest.raises(InputError, match="not a Zernike mode"):
        nm_to_noll(3, 2)


def test_known_low_order_values():
    rho = torch.linspace(0, 1, 11, dtype=torch.float64)
    theta = torch.linspace(-3, 3, 11, dtype=torch.float64)
    s3, s5, s6, s8 = math.sqrt(3), math.sqrt(5), math.sqrt(6), math.sqrt(8)
    expected = {
        1: torch.ones_like(rho),
        2: 2 * rho * torch.cos(theta),
        3: 2 * rho * torch.sin(theta),
        4: s3 * (2 * rho**2 - 1),
        5: s6 * rho**2 * torch.sin(2 * theta),
        6: s6 * rho**2 * torch.cos(2 * theta),
        7: s8 * (3 * rho**3 - 2 * rho) * torch.sin(theta),
        8: s8 * (3 * rho**3 - 2 * rho) * torch.cos(theta),
        11: s5 * (6 * rho**4 - 6 * rho**2 + 1),
    }
    for j, values in expected.items():
        assert torch.allclose(zernike_polynomial(j, rho, theta), values, atol=1e-13), j


def test_orthonormal_on_the_unit_disk():
    # Exact quadrature for polynomials: Gauss-Legendre in rho (degree <= 2 * 10 + 1) x uniform theta.
    nodes, weights = np.polynomial.legendre.leggauss(24)
    rho = torch.tensor((nodes + 1) / 2, dtype=torch.float64)
    w_rho = torch.tensor(weights / 2, dtype=torch.float64) * rho  # r dr
    num_theta = 48
    theta = torch.arange(num_theta, dtype=torch.float64) * (2 * math.pi / num_theta)
    rr, tt = torch.meshgrid(rho, theta, indexing="ij")
    modes = torch.stack([zernike_polynomial(j, rr, tt) for j in range(1, 67)]).reshape(66, -1)
    weight = (w_rho[:, None] * (2 * math.pi / num_theta)).expand_as(rr).reshape(-1) / math.pi
    gram = (modes * weight) @ modes.T
    assert torch.allclose(gram, torch.eye(66, dtype=torch.float64), atol=1e-11)


def test_sampled_basis_is_nearly_orthonormal_on_a_grid():
    grid = Grid.square(128, 1.0 / 60)  # radius 1 = 60 samples
    basis = zernike_basis(15, grid, 1.0)
    inside = basis[0] != 0
    gram = (basis.reshape(15, -1) @ basis.reshape(15, -1).T) / float(inside.sum())
    assert torch.allclose(gram, torch.eye(15, dtype=torch.float64), atol=2e-2)


def test_wavefront_is_the_weighted_sum_and_differentiable():
    grid = Grid.square(16, 0.1e-3)
    gen = torch.Generator().manual_seed(0)
    coeffs = (torch.randn((2, 3, 7), dtype=torch.float64, generator=gen) * 1e-7).requires_grad_(True)
    w = zernike_wavefront(coeffs, grid, 0.7e-3, center_m=(0.05e-3, -0.1e-3))
    assert w.shape == (2, 3, 16, 16) and w.dtype == torch.float64
    basis = zernike_basis(7, grid, 0.7e-3, center_m=(0.05e-3, -0.1e-3))
    assert torch.allclose(w, (coeffs[..., None, None] * basis).sum(-3))
    scaled = coeffs.detach().mul(1e7).requires_grad_(True)  # coefficients in units of 100 nm
    assert torch.autograd.gradcheck(lambda c: zernike_wavefront(c * 1e-7, grid, 0.7e-3), (scaled,), fast_mode=True)
    w32 = zernike_wavefront(coeffs.detach().float(), grid, 0.7e-3)
    assert w32.dtype == torch.float32


def test_wavefront_to_phase_adds_the_wavelength_axis():
    w = torch.full((5, 4, 4), 0.25e-6, dtype=torch.float64)
    phase = wavefront_to_phase(w, (0.5e-6, 1e-6))
    assert phase.shape == (5, 2, 4, 4)
    assert torch.allclose(phase[:, 0], torch.full_like(w, math.pi)) and torch.allclose(phase[:, 1], w * 0 + math.pi / 2)
