"""Checkpoints: RNG round trip, atomic replacement, safe loading, clear errors."""

import random

import numpy as np
import pytest
import torch

from hil.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, model_state_from, restore_rng_state,
                            save_checkpoint)


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], \
        float(np.random.randn()), random.gauss(0, 1)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(), random.gauss(0, 1)  # leave cached Gaussians behind, they are part of the state
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    expected = draws()
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draws() == expected


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "step": 2})
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]

    class Boom(Exception):
        pass

    class Exploding:
        def __reduce__(self):
            raise Boom()

    with pytest.raises(Exception):
        save_checkpoint(path, {"bad": Exploding()})
    assert load_checkpoint(path)["step"] == 2  # the failed write left the old checkpoint intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_refuses_pickled_objects_foreign_files_and_missing_files(tmp_path):
    torch.save({"format": "hil-checkpoint", "version": 1, "obj": np.random.default_rng(0)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a hil-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "torn.pt")


def test_model_state_selects_a_part():
    state = {"model": {"frontend.w": torch.ones(1), "backend.0.w": torch.zeros(1)}}
    assert list(model_state_from(state, "backend")) == ["0.w"]
    assert len(model_state_from(state)) == 2
