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


STUDENT = {"name": "optical_student", "num_kernels": 2, "kernel_size": 3, "image_size": 8, "hidden": [4], "pool": 1,
           "num_classes": 3, "seed": 0, "optics": {"photometry": {"photons_per_s": 1e5}}}


def _bright_student():
    """A student whose kernels hold 3x a unit light budget (each part: 3 x 3 entries of 1/3)."""
    model = build_model({**STUDENT, "transmission": None})
    with torch.no_grad():
        model.frontend.design.weight.fill_(1 / 3)
    return model


def _largest_psf_sum(model) -> float:
    return float(model.frontend.design.psfs().sum(dim=(1, 2, 3)).max())


def test_a_student_saved_before_the_config_schema_keeps_its_kernels(tmp_path):
    """A checkpoint without ``config_schema`` (written before the light budget, as ``torch.save`` writes it
    here) whose resolved config has no ``transmission``: built with none, the kernels used as stored
    (the default budget would divide them by 3 and change the student's function); its stored value
    when it has one."""
    model = _bright_student()
    for name, config in (("old.pt", STUDENT), ("old_budget.pt", {**STUDENT, "transmission": 1.0})):
        torch.save({"format": "hil-checkpoint", "version": 1, "model": model.state_dict(), "config": {"model": config}},
                   tmp_path / name)
    assert _largest_psf_sum(load_model(tmp_path / "old.pt")) == pytest.approx(3.0)
    assert _largest_psf_sum(load_model(tmp_path / "old_budget.pt")) <= 1.0 + 1e-6


def test_a_current_checkpoint_uses_its_stored_or_the_default_transmission(tmp_path):
    """save_checkpoint records ``config_schema``: the stored ``transmission`` is used (None included), and
    a hand-written config without the key (test_one_system's export) takes the current default, 1.0."""
    from hil.checkpoint import CONFIG_SCHEMA, load_checkpoint

    model = _bright_student()
    save_checkpoint(tmp_path / "none.pt", {"model": model.state_dict(), "config": {"model": {**STUDENT, "transmission": None}}})
    save_checkpoint(tmp_path / "hand.pt", {"model": model.state_dict(), "config": {"model": STUDENT}})
    assert load_checkpoint(tmp_path / "hand.pt")["config_schema"] == CONFIG_SCHEMA == 2
    assert _largest_psf_sum(load_model(tmp_path / "none.pt")) == pytest.approx(3.0)
    assert _largest_psf_sum(load_model(tmp_path / "hand.pt")) <= 1.0 + 1e-6


def test_hil_train_writes_the_config_schema(tmp_path):
    """A (tiny) ``hil train`` run's checkpoints record the config schema."""
    from hil.api import train
    from hil.checkpoint import CONFIG_SCHEMA, load_checkpoint

    data = torch.utils.data.TensorDataset(torch.rand(40, 1, 28, 28), torch.arange(40) % 10)
    train({"task": "classification", "model": LENET, "data": {"batch_size": 8, "val_size": 8},
           "train": {"epochs": 1, "progress": False}}, tmp_path, datasets=(data, None, 10))
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "checkpoints" / name)["config_schema"] == CONFIG_SCHEMA
