"""Shared fixtures of the calibration tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Simulated cameras render tiny convolutions and the fits run many small products: on a shared
    2-core machine one torch thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
