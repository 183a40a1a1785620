"""simulator.fft.ifft2 against numpy, at the size where torch 2.13's own CPU ifft2 fails (2048^2, 2 threads)."""

import numpy as np
import pytest
import torch

from simulator.fft import ifft2
from simulator.field import Field, Grid
from simulator.propagation import propagate_asm


@pytest.mark.parametrize("shape", [(2048, 2048), (2, 3, 8), (5, 6)])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_ifft2_matches_numpy(shape, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, dtype=dtype, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = ifft2(x).numpy()
    finally:
        torch.set_num_threads(threads)
    ref = np.fft.ifft2(x.numpy())
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    assert np.abs(ours - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("dim", [0, 1])
def test_torch_1d_ifft_is_sound_at_2048(dim):
    """simulator.propagation inverts axis by axis with torch's own 1-D ifft: guard it at the bad size."""
    x = torch.randn(2048, 2048, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = torch.fft.ifft(x, dim=dim).numpy()
    finally:
        torch.set_num_threads(threads)
    ref = np.fft.ifft(x.numpy(), axis=dim)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_ifft2_inverts_fft2_and_carries_gradients():
    x = torch.randn(4, 6, dtype=torch.complex128, requires_grad=True)
    assert torch.allclose(ifft2(torch.fft.fft2(x)), x, atol=1e-13)
    assert torch.autograd.gradcheck(lambda t: ifft2(t), (x,))


def test_propagation_of_a_1024_field_conserves_power_in_float32():
    """1024^2 pads to 2048^2: the size where a direct torch.fft.ifft2 returns ~0 with 2 threads."""
    grid = Grid.square(1024, 2e-6)
    y, x = grid.mesh(dtype=torch.float32)
    beam = torch.exp(-(x**2 + y**2) / (200e-6) ** 2).to(torch.complex64)[None]
    field = Field(beam, grid, (633e-9,))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = propagate_asm(field, 1e-3)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(out.power(), field.power(), rtol=1e-4)
