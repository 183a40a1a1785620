"""Fixtures shared by every test."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def seeded_global_rngs():
    """Every test starts from the same global random state (``random``, numpy and, once a test module
    has imported it, torch), so a random input a test draws without its own generator -- a model's
    initial weights, a shape-only check -- is the same on every run. Tests whose values matter draw
    from their own seeded generator as well. torch is not imported here: the drivers' tests check
    that drivers import without it."""
    random.seed(0)
    np.random.seed(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
    yield
