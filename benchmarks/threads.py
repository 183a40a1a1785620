"""Torch's CPU thread count held at a benchmark's stated value for one measurement."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the body on ``count`` torch threads; the previous count is restored after it, error or not."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
