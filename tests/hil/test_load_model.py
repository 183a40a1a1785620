"""hil.checkpoint.load_model: the one way from a run folder or checkpoint file to a frozen model."""

import pytest
import torch

from hil.checkpoint import CheckpointError, find_checkpoint, load_model, save_checkpoint
from hil.models import build_model
from onn_core.errors import ConfigError

LENET = {"name": "lenet"}


def test_a_run_folder_or_its_checkpoint_gives_the_same_frozen_model(tmp_path):
    torch.manual_seed(0)
    model = build_model(LENET)
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", {"model": model.state_dict(), "config": {"model": LENET}})
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"model": model.state_dict(), "config": {"model": LENET}})
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "best.pt"  # best before last
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for source in (tmp_path, tmp_path / "checkpoints" / "last.pt"):
        loaded = load_model(source)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_wrong_model_or_a_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a `hil train` run folder"):
        load_model(tmp_path)
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"model": {}, "config": {"model": LENET}})
    with pytest.raises(ConfigError, match="'model.name' = 'lenet': expected 'optical_student' \\(the model of "):
        load_model(tmp_path, name="optical_student")
    save_checkpoint(tmp_path / "bare.pt", {"model": {}})
    with pytest.raises(CheckpointError, match="stores no model config"):
        load_model(tmp_path / "bare.pt")
