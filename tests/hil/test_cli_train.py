"""The run config schema and the ``hil train`` command."""

import argparse
import json

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from hil.commands import train as train_command
from hil.config import load_run_config, parse_run_config, replace
from simulator.errors import ConfigError

STUDENT = {"job": "student", "task": "classification", "model": {"name": "optical_student"},
           "teacher": {"checkpoint": "t/best.pt"}, "loss": {"method": "ntkd", "discrepancy": "cka"}}


def test_config_defaults_and_relative_paths(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(STUDENT))
    cfg = load_run_config(path)
    assert cfg.teacher.checkpoint == str(tmp_path / "t/best.pt")
    assert (cfg.data.batch_size, cfg.optim.name, cfg.train.epochs, cfg.monitor) == (128, "adam", 10, "accuracy")
    changed = replace(cfg, **{"loss.method": "kd", "train.freeze": ["frontend"]})
    assert changed.loss.method == "kd" and changed.train.freeze == ["frontend"]


@pytest.mark.parametrize("change, path", [
    ({"loss": {"method": "ntkd", "discrepancy": "cosine"}}, "loss.discrepancy"),
    ({"loss": {"kd_mix": 1.5}}, "loss.kd_mix"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"device": "tpu"}}, "train.device"),
    ({"teacher": None}, "teacher.checkpoint"),
    ({"job": "teacher"}, "loss.method"),
    ({"model": {"kernels": 8}}, "model.name"),
    ({"trian": {}}, "trian"),
])
def test_bad_fields_name_their_yaml_path(change, path):
    with pytest.raises(ConfigError) as err:
        parse_run_config({**STUDENT, **change})
    assert err.value.path == path


def test_distillation_on_captured_frames_is_refused():
    """KD/NTKD on captures would feed the teacher camera frames instead of the raw images (METHOD stage 3)."""
    from hil.api import build_objective

    cfg = parse_run_config({**STUDENT, "data": {"dataset": "captures"}})
    with pytest.raises(ConfigError) as err:
        build_objective(cfg, teacher=torch.nn.Linear(2, 2))
    assert err.value.path == "loss.method" and "raw images" in str(err.value)


def hil_train(argv):
    """Parse and run ``hil train ARGV`` through this command's own parser (as hil.cli does)."""
    parser = argparse.ArgumentParser(prog="hil")
    train_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_set_override_must_be_key_value(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(STUDENT))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        hil_train([str(path), "--set", "loss.method"])
    assert train_command.parse_overrides(["a.b=1", "c=[x, 2]"]) == {"a.b": 1, "c": ["x", 2]}


def test_teacher_then_students_through_the_api(tmp_path):
    """A LeNet teacher job, then KD and NTKD optical-student jobs that load its checkpoint, on tiny
    synthetic data; every run writes its resolved config, metrics and checkpoints."""
    from hil.api import train

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = 0.1 * torch.rand(96, 1, 16, 16, generator=g)
    for cls in range(3):
        x[y == cls, 0, 4 * cls + 2:4 * cls + 6, 3:13] += 0.8  # a bright bar whose height gives the class
    data = (TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:]), 3)
    common = {"task": "classification", "data": {"val_size": 16, "batch_size": 16, "eval_batch_size": 32},
              "train": {"epochs": 2, "progress": False}, "optim": {"lr": 0.01}}
    teacher = train({**common, "job": "teacher", "model": {"name": "lenet", "num_classes": 3, "image_size": 16}},
                    tmp_path / "teacher", datasets=data)
    assert teacher.steps == 2 * (48 // 16)
    # as in examples/train_fmnist_ntkd.yaml: sensor noise and fabrication errors redrawn every step (the
    # draw counter is plain extra state in the model's state_dict, kept with the best epoch's weights)
    student_model = {"name": "optical_student", "image_size": 16, "num_kernels": 2, "kernel_size": 3,
                     "num_classes": 3, "hidden": [8], "sensor": {"read_noise_e": 2.0}, "photons_per_unit": 1000.0,
                     "fabrication": {"brightness_rel_std": 0.05, "shift_std_px": 0.2}}
    for method in ("kd", "ntkd"):
        out = tmp_path / method
        result = train({**common, "model": student_model, "loss": {"method": method, "kernel_batch": 4},
                        "teacher": {"checkpoint": str(tmp_path / "teacher/checkpoints/best.pt")}}, out, datasets=data)
        assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["test"]["confusion"] and len(metrics["history"]) == 2
        assert ("train_ntk" in metrics["history"][0]) == (method == "ntkd")
        assert ("train_kd" in metrics["history"][0]) == (method == "kd")
        saved = load_run_config(out / "config.yaml")
        assert saved.loss.method == method and saved.teacher.checkpoint.endswith("best.pt")


def write_idx(path, array):
    """An uncompressed IDX file of a uint8 array (the MNIST format)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.tobytes())


def tiny_idx_folder(folder, n_train=160, n_test=40):
    """MNIST-format files of 16x16 images of 3 classes (a bright bar whose height gives the class)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 30, (n, 16, 16))
        for i, c in enumerate(labels):
            images[i, 4 * c + 2:4 * c + 6, 3:13] += 200
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)


def test_hil_train_command_writes_outputs_and_resumes(tmp_path, capsys):
    tiny_idx_folder(tmp_path / "idx")
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump({
        "job": "teacher", "task": "classification", "model": {"name": "lenet", "image_size": 16, "num_classes": 3},
        "data": {"dataset": "mnist", "root": "idx", "val_size": 32, "batch_size": 32},
        "optim": {"lr": 0.01}, "train": {"epochs": 1}}))
    out = tmp_path / "run"
    argv = [str(path), "--out-dir", str(out), "--no-progress", "--set", "train.epochs=3"]
    assert hil_train(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 * (128 // 32) and summary["epochs"] == 3
    assert summary["test"]["accuracy"] > 0.6  # the bars are easy; chance is 1/3
    assert load_run_config(out / "config.yaml").train.epochs == 3
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == summary["test"]["accuracy"]
    # a second call finds the finished run in out/checkpoints and resumes it: no further steps
    assert hil_train(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
