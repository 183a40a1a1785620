"""The run config schema and the ``hil train`` command: overrides and relative paths, refused and
accepted changed resumes, Ctrl-C, what the command logs and prints, and what ``hil.api.train`` leaves
behind."""

import argparse
import functools
import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from hil.checkpoint import load_checkpoint
from hil.cli import main
from hil.commands import train as train_command
from hil.config import load_run_config, parse_run_config, replace
from onn_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

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


def test_relative_paths_in_options_and_overrides_resolve_against_the_yaml_folder(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({**STUDENT, "data": {"dataset": "captures", "root": "caps/train.h5", "options": {
        "test_path": "caps/test.h5", "frame_scale": 2.0}}}))
    cfg = load_run_config(path)
    assert (cfg.data.root, cfg.data.options) == (str(folder / "caps/train.h5"),
                                                 {"test_path": str(folder / "caps/test.h5"), "frame_scale": 2.0})
    cfg = load_run_config(path, {"data.options.test_path": "../other.h5", "teacher.checkpoint": "t2.pt",
                                 "data.root": "/data/train.h5", "optim.lr": 0.01})
    assert cfg.data.options["test_path"] == str(tmp_path / "other.h5")
    assert (cfg.teacher.checkpoint, cfg.data.root, cfg.optim.lr) == (str(folder / "t2.pt"), "/data/train.h5", 0.01)
    with pytest.raises(ConfigError) as err:
        load_run_config(path, {"loss.method.name": "kd"})
    assert err.value.path == "loss.method"


@pytest.mark.parametrize("value", ["ten", 1, 2.5, True])
def test_bad_capture_num_classes_names_its_field(value):
    from hil.data import build_datasets

    with pytest.raises(ConfigError) as err:
        build_datasets({"dataset": "captures", "root": "none.h5", "options": {"num_classes": value}}, "classification")
    assert err.value.path == "data.options.num_classes"


def test_ntk_sketch_seed_defaults_to_the_run_seed():
    from hil.api import build_objective

    def seeds(**changes):
        objective = build_objective(parse_run_config({**STUDENT, **changes}), teacher=torch.nn.Linear(2, 2))
        return objective.seed, objective.teacher_kernel.seed

    assert seeds() == (0, 0)
    assert seeds(seed=7) == (7, 7)
    assert seeds(seed=7, loss={"method": "ntkd", "seed": 3}) == (3, 3)


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
    from hil.cli import main

    assert main(["train", str(path), "--set", "train.epochs=[1"]) == 2  # malformed YAML value: a message, no traceback


def bars():
    """``(train, test, num_classes)``: 64 + 32 16x16 images of 3 classes, a bright bar whose height gives
    the class."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = 0.1 * torch.rand(96, 1, 16, 16, generator=g)
    for cls in range(3):
        x[y == cls, 0, 4 * cls + 2:4 * cls + 6, 3:13] += 0.8
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:]), 3


def test_teacher_then_students_through_the_api(tmp_path):
    """A LeNet teacher job, then KD and NTKD optical-student jobs that load its checkpoint, on tiny
    synthetic data; every run writes its resolved config, metrics and checkpoints."""
    from hil.api import train

    data = bars()
    common = {"task": "classification", "data": {"val_size": 16, "batch_size": 16, "eval_batch_size": 32},
              "train": {"epochs": 2, "progress": False}, "optim": {"lr": 0.01}}
    teacher = train({**common, "job": "teacher", "model": {"name": "lenet", "num_classes": 3, "image_size": 16}},
                    tmp_path / "teacher", datasets=data)
    assert teacher.steps == 2 * (48 // 16)
    # as in examples/train_fmnist_ntkd.yaml: sensor noise and fabrication errors redrawn every step (the
    # draw counter is plain extra state in the model's state_dict, kept with the best epoch's weights)
    student_model = {"name": "optical_student", "image_size": 16, "num_kernels": 2, "kernel_size": 3,
                     "num_classes": 3, "hidden": [8], "fabrication": {"brightness_rel_std": 0.05, "shift_std_px": 0.2},
                     "optics": {"sensor": {"read_noise_e": 2.0}, "photometry": {"photons_per_s": 1e5}}}
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
        assert saved.out_dir == str(out)  # where the run was written


def test_train_leaves_global_random_state_and_threads_as_it_found_them():
    from hil.api import train

    def seed():
        torch.manual_seed(123), np.random.seed(5), random.seed(6)

    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    threads = torch.get_num_threads()
    seed()
    expected = draw()
    seed()
    train({"job": "teacher", "task": "classification", "model": {"name": "lenet", "num_classes": 3, "image_size": 16},
           "data": {"val_size": 16, "batch_size": 16}, "train": {"epochs": 1, "progress": False,
                                                               "threads": 2 if threads == 1 else 1}}, datasets=bars())
    assert torch.get_num_threads() == threads
    assert draw() == expected


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


def teacher_yaml(tmp_path, root="idx"):
    """A LeNet teacher job on :func:`tiny_idx_folder` data: 128 training samples, 4 steps per epoch."""
    tiny_idx_folder(tmp_path / "idx")
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump({
        "job": "teacher", "task": "classification", "model": {"name": "lenet", "image_size": 16, "num_classes": 3},
        "data": {"dataset": "mnist", "root": root, "val_size": 32, "batch_size": 32},
        "optim": {"lr": 0.01}, "train": {"epochs": 1}}))
    return path


def test_hil_train_command_writes_outputs_and_resumes(tmp_path, capsys, caplog):
    path = teacher_yaml(tmp_path, root="elsewhere")
    out = tmp_path / "run"
    # relative paths set on the command line are relative to the config file, like those in it
    argv = [str(path), "--out-dir", str(out), "--no-progress", "--set", "train.epochs=3", "--set", "data.root=idx"]
    assert hil_train(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 * (128 // 32) and summary["epochs"] == 3
    assert list(summary["test"]) == ["accuracy"]  # no mIoU for classification
    assert summary["test"]["accuracy"] > 0.6  # the bars are easy; chance is 1/3
    saved = load_run_config(out / "config.yaml")
    assert (saved.train.epochs, saved.data.root) == (3, str(tmp_path / "idx"))
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == summary["test"]["accuracy"]
    # shown at the CLI's default level (caplog's level is left alone): the estimated duration after 5
    # steps, then epoch lines, at most one every few seconds (onn_core.progress.LOG_INTERVAL_S), the first
    # and the last always; every epoch is in metrics.json
    messages = [r.getMessage() for r in caplog.records if r.name == "hil.trainer"]
    assert [m for m in messages if m.startswith("about ")][0].split(": ")[1].startswith("12 steps take about ")
    epochs = [m.split(" (")[0] for m in messages if m.startswith("epoch ")]
    assert epochs[0] == "epoch 1/3" and epochs[-1] == "epoch 3/3" and len(set(epochs)) == len(epochs)
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2, 3]
    assert logging.getLogger("hil.trainer").level == logging.NOTSET  # the command restored it
    # a second call finds the finished run in out/checkpoints and resumes it: no further steps
    caplog.clear()
    assert hil_train(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert "resuming from step 12 of 12" in caplog.text


def test_resume_with_a_changed_config_is_refused_unless_asked(tmp_path, capsys, caplog):
    path = teacher_yaml(tmp_path)
    out = tmp_path / "run"
    base = ["train", str(path), "--out-dir", str(out), "--no-progress"]
    assert main(base) == 0  # 1 epoch, 4 steps at lr 0.01
    last, config = out / "checkpoints/last.pt", out / "config.yaml"
    before = last.read_bytes(), config.read_text()
    capsys.readouterr()
    changed = ["--set", "optim.lr=0.02", "--set", "train.epochs=2"]
    assert main(base + changed) == 2
    err = capsys.readouterr().err
    assert "optim.lr = 0.02 (was 0.01), train.epochs = 2 (was 1)" in err and "--resume-changed" in err
    assert (last.read_bytes(), config.read_text()) == before  # nothing ran, nothing recorded
    # the data, the model, the seed... can never change on resume
    assert main(base + ["--resume-changed", "--set", "data.batch_size=16"]) == 2
    assert "cannot change data.batch_size = 16 (was 32)" in capsys.readouterr().err
    assert (last.read_bytes(), config.read_text()) == before
    # continued with the new values: the optimiser runs at the new rate, and the change is recorded
    assert main(base + ["--resume-changed"] + changed) == 0
    state = load_checkpoint(last)
    assert state["progress"]["step"] == 8 and [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.02]
    assert load_run_config(config).optim.lr == state["config"]["optim"]["lr"] == 0.02
    assert json.loads((out / "metrics.json").read_text())["config_changes"] == [
        {"step": 4, "changes": {"optim.lr": [0.01, 0.02], "train.epochs": [1, 2]}}]
    assert "resuming at step 4 with a changed config: optim.lr = 0.02 (was 0.01)" in caplog.text


def interrupted_hil_train(argv, step):
    """Entry point of the subprocess of test_ctrl_c...: ``hil ARGV`` with a SIGINT sent to itself
    after ``step`` steps; exits with the command's status."""
    import hil.api

    def interrupt(trainer):
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    hil.api.train = functools.partial(hil.api.train, callbacks=[interrupt])
    sys.exit(main(argv))


def test_ctrl_c_saves_the_last_step_and_exits_130(tmp_path, caplog):
    path = teacher_yaml(tmp_path)
    argv = ["train", str(path), "--out-dir", str(tmp_path / "run"), "--no-progress", "--set", "train.epochs=2"]
    code = f"from tests.hil.test_cli_train import interrupted_hil_train; interrupted_hil_train({argv!r}, 3)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    last = tmp_path / "run/checkpoints/last.pt"
    assert f"SIGINT: stopped after step 3 of 8; saved the checkpoint of step 3 to {last}" in proc.stderr
    assert load_checkpoint(last)["progress"]["step"] == 3  # checkpoint_every_steps 0: only epoch ends otherwise
    assert main(argv) == 0
    assert "resuming from step 3 of 8" in caplog.text
