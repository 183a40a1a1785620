"""The training loop: exact resumption (in-process stop, a real SIGKILL, SIGINT/SIGTERM saves), resuming
with new hyperparameters, early stopping, freezing, learning on a separable problem, batch order."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hil.checkpoint import load_checkpoint
from hil.losses import TaskObjective, bce_dice_loss
from hil.trainer import BatchOrder, Trainer, TrainingDiverged, TrainingInterrupted, freeze_parts
from onn_core.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]


class TwoPart(nn.Module):
    """A stand-in for an optical student: a conv 'frontend' and a linear 'backend' (with dropout, so
    the global RNG matters for exact resumption)."""

    def __init__(self):
        super().__init__()
        self.frontend = nn.Conv2d(1, 2, 3, padding=1)
        self.backend = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * 6 * 6, 3))

    def forward(self, x):
        return self.backend(torch.relu(self.frontend(x)))


def blobs(n, seed):
    """Three classes of 6x6 images: a bright blob in one of three places, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 6, 6, generator=g)
    for cls, (r, c) in enumerate([(1, 1), (1, 4), (4, 2)]):
        x[y == cls, 0, r, c] += 2.0
    return torch.utils.data.TensorDataset(x, y)


def make_trainer(out_dir, max_steps=None, epochs=3, callbacks=(), patience=None, seed=0, lr=0.05, every=1):
    torch.manual_seed(seed)
    model = TwoPart()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15)
    return Trainer(model, TaskObjective(), blobs(40, 1), val_data=blobs(30, 2),
                   task="classification", num_classes=3, optimizer=opt, scheduler=sched, batch_size=8,
                   epochs=epochs, max_steps=max_steps, seed=seed, out_dir=out_dir, checkpoint_every_steps=every,
                   early_stopping_patience=patience, callbacks=callbacks, config={"seed": seed})


def kill_self_at(step):
    def callback(trainer):
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return callback


def run_until_killed(out_dir, step):
    """Entry point of the subprocess of test_resume_after_sigkill."""
    make_trainer(out_dir, callbacks=[kill_self_at(step)]).fit()


def run_until_signalled(out_dir, step, signum, times):
    """Entry point of the subprocesses of test_signal_*: train with checkpoints only at epoch ends, send
    ``signum`` to this process ``times`` times after step ``step``; exit 3 with the interrupt as JSON."""

    def send(trainer):
        if trainer.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)

    try:
        make_trainer(out_dir, callbacks=[send], every=0).fit()
    except TrainingInterrupted as exc:
        checkpoint = None if exc.checkpoint is None else str(exc.checkpoint)
        print(json.dumps({"signum": exc.signum, "step": exc.step, "checkpoint": checkpoint}))
        sys.exit(3)


def signalled_run(out_dir, step, signum, times=1):
    code = (f"from tests.hil.test_trainer import run_until_signalled; "
            f"run_until_signalled({str(out_dir)!r}, {step}, {int(signum)}, {times})")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stop_and_resume_is_bit_identical(tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.fit()
    assert straight.step == 15  # 3 epochs of 40 // 8 batches
    stopped = make_trainer(tmp_path / "split", max_steps=7)  # stops mid-epoch 2
    stopped.fit()
    assert stopped.step == 7
    resumed = make_trainer(tmp_path / "split")
    resumed.fit()
    a = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "split/checkpoints/last.pt")
    assert_same_weights(a["model"], b["model"])
    assert a["history"] == b["history"]
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    code = f"from tests.hil.test_trainer import run_until_killed; run_until_killed({str(tmp_path / 'k')!r}, 9)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert load_checkpoint(tmp_path / "k/checkpoints/last.pt")["progress"]["step"] == 9
    resumed = make_trainer(tmp_path / "k")
    resumed.fit()
    straight = make_trainer(tmp_path / "s")
    straight.fit()
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert not list((tmp_path / "k/checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_last_step_and_resume_is_bit_identical(tmp_path, signum):
    """Checkpoints only at epoch ends (5 steps each); a signal after step 7 saves step 7."""
    proc = signalled_run(tmp_path / "i", 7, signum)
    assert proc.returncode == 3, proc.stderr
    last = tmp_path / "i/checkpoints/last.pt"
    assert json.loads(proc.stdout) == {"signum": signum, "step": 7, "checkpoint": str(last)}
    assert f"saved the checkpoint of step 7 to {last}" in proc.stderr
    assert load_checkpoint(last)["progress"]["step"] == 7
    resumed = make_trainer(tmp_path / "i", every=0)
    resumed.fit()
    straight = make_trainer(tmp_path / "s", every=0)
    straight.fit()
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert resumed.history == straight.history
    assert not list((tmp_path / "i/checkpoints").glob("*.tmp"))


def test_second_signal_stops_at_once_without_saving(tmp_path):
    proc = signalled_run(tmp_path, 7, signal.SIGINT, times=2)
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout) == {"signum": signal.SIGINT, "step": 7, "checkpoint": None}
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["progress"]["step"] == 5  # the end of epoch 1


def test_fit_restores_the_signal_handlers(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = []
    make_trainer(None, max_steps=2, callbacks=[lambda t: seen.append(signal.getsignal(signal.SIGINT))]).fit()
    assert seen and all(h is not before[signal.SIGINT] for h in seen)
    assert {s: signal.getsignal(s) for s in before} == before


def test_resume_with_new_hyperparameters_follows_the_new_schedule(tmp_path):
    """Resumed with a new learning rate (cosine schedule), the run continues on the schedule it would
    have had with that rate from the start, with the optimiser's moments from the checkpoint."""
    lrs = {"resumed": [], "straight": []}

    def record(name):
        return lambda trainer: lrs[name].append((trainer.step, trainer.optimizer.param_groups[0]["lr"]))

    make_trainer(tmp_path, max_steps=7).fit()
    saved = load_checkpoint(tmp_path / "checkpoints/last.pt")
    probe = make_trainer(None, lr=0.1)
    probe.load_state_dict(saved, new_hyperparameters=True)
    assert torch.equal(probe.optimizer.state_dict()["state"][0]["exp_avg"], saved["optimizer"]["state"][0]["exp_avg"])
    resumed = make_trainer(tmp_path, lr=0.1, callbacks=[record("resumed")])
    resumed.fit(config_changes={"optim.lr": (0.05, 0.1)})
    make_trainer(None, lr=0.1, callbacks=[record("straight")]).fit()
    assert lrs["resumed"] == lrs["straight"][7:] and len(lrs["resumed"]) == 8
    assert resumed.config_changes == [{"step": 7, "changes": {"optim.lr": [0.05, 0.1]}}]
    assert json.loads((tmp_path / "metrics.json").read_text())["config_changes"] == resumed.config_changes


def test_learns_writes_config_metrics_and_restores_best(tmp_path):
    trainer = make_trainer(tmp_path, epochs=4)
    result = trainer.fit()
    assert result.best_metric >= 0.9  # the blobs are easily separable
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert "val_miou" not in metrics["history"][0]  # classification: accuracy only
    assert (tmp_path / "config.yaml").read_text().strip() == "seed: 0"
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert best["epoch"] == result.best_epoch
    assert_same_weights(best["model"], trainer.model.state_dict())  # the model ends at its best epoch
    assert trainer.evaluate(blobs(30, 2))["accuracy"] == pytest.approx(result.best_metric)


def test_early_stopping_stops_after_patience(tmp_path):
    trainer = make_trainer(None, epochs=50, patience=2)
    result = trainer.fit()
    assert result.stopped_early
    vals = [h["val_accuracy"] for h in result.history]
    assert result.epochs_completed == result.best_epoch + 2 < 50
    assert max(vals[result.best_epoch:]) <= vals[result.best_epoch - 1]


def test_freeze_frontend_keeps_it_fixed():
    torch.manual_seed(0)
    model = TwoPart()
    freeze_parts(model, ["frontend"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    Trainer(model, TaskObjective(), blobs(16, 0), task="classification", num_classes=3,
            optimizer=opt, batch_size=8, epochs=1).fit()
    after = model.state_dict()
    assert torch.equal(before["frontend.weight"], after["frontend.weight"])
    assert not torch.equal(before["backend.2.weight"], after["backend.2.weight"])
    with pytest.raises(ConfigError, match=r"train.freeze\[0\].*optics"):
        freeze_parts(model, ["optics"])


def test_diverging_loss_stops_with_a_clear_error():
    torch.manual_seed(0)
    model = TwoPart()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    trainer = Trainer(model, TaskObjective(), blobs(16, 0), task="classification", num_classes=3, optimizer=opt,
                      batch_size=8, epochs=50)
    with pytest.raises(TrainingDiverged, match="lower optim.lr"):
        trainer.fit()


def test_batch_order_is_a_seeded_permutation_split_over_ranks():
    order = BatchOrder(10, 4, seed=3)
    batches = list(order.batches(0))
    assert len(batches) == 2 and all(len(b) == 4 for b in batches)
    assert len(set(sum(batches, []))) == 8
    assert batches == list(BatchOrder(10, 4, seed=3).batches(0))
    assert batches != list(order.batches(1))
    assert list(order.batches(0, start=1)) == batches[1:]
    ranks = [list(BatchOrder(10, 4, seed=3, rank=r, world_size=2).batches(0)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in batches]
    with pytest.raises(InputError, match="divisible"):
        BatchOrder(10, 3, seed=0, world_size=2)
    with pytest.raises(InputError, match="batch_size"):
        BatchOrder(3, 4, seed=0)


def test_segmentation_task_objective_and_metrics():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 4, 4)
    y = (x > 0.5).float()  # foreground = bright pixels: a 1x1 conv can learn it
    model = nn.Conv2d(1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(x, y)
    trainer = Trainer(model, TaskObjective(bce_dice_loss), data, val_data=data, task="segmentation",
                      num_classes=2, optimizer=opt, batch_size=8, epochs=30)
    result = trainer.fit()
    assert result.best_metric > 0.9
    predicted = (model(x) > 0).squeeze(1)
    truth = y.bool().squeeze(1)
    ious = [((predicted == c) & (truth == c)).sum() / ((predicted == c) | (truth == c)).sum() for c in (False, True)]
    assert trainer.evaluate(data)["miou"] == pytest.approx(float(sum(ious) / 2))
