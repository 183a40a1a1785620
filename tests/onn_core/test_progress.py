"""The one console rule (onn_core.progress): bars only on a terminal, forced by flag or environment,
throttled log lines; and the trainer and the ``hil`` command follow it."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from onn_core import progress
from onn_core.progress import ENV_VAR, Throttle, format_duration, progress_bar, progress_enabled, set_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def neutral(monkeypatch):
    """No forced setting from an earlier test, and no ONN_PROGRESS from the caller's environment."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_progress(None)
    yield
    set_progress(None)


def test_bars_follow_the_terminal():
    assert progress_enabled(True, io.StringIO()) is False       # a log file or a pipe: no bar
    assert progress_enabled(None, io.StringIO()) is False
    assert progress_enabled(True, FakeTerminal()) is True
    assert progress_enabled(False, FakeTerminal()) is False     # the caller's no wins


def test_bars_forced_by_flag_and_environment(monkeypatch):
    set_progress(True)                                          # hil --progress
    assert progress_enabled(True, io.StringIO()) is True
    assert progress_enabled(False, io.StringIO()) is False
    set_progress(False)                                         # hil --no-progress
    assert progress_enabled(True, FakeTerminal()) is False
    set_progress(None)
    monkeypatch.setenv(ENV_VAR, "1")
    assert progress_enabled(True, io.StringIO()) is True
    monkeypatch.setenv(ENV_VAR, "0")
    assert progress_enabled(True, FakeTerminal()) is False
    set_progress(True)                                          # the flag beats the environment
    assert progress_enabled(True, io.StringIO()) is True
    monkeypatch.setenv(ENV_VAR, "sometimes")
    set_progress(None)
    with pytest.raises(ValueError, match=ENV_VAR):
        progress_enabled(True, io.StringIO())


def test_a_disabled_bar_writes_nothing_and_a_forced_one_writes():
    log = io.StringIO()
    with progress_bar(range(50), desc="quiet", stream=log) as bar:
        assert sum(bar) == sum(range(50))                       # still iterates
    assert log.getvalue() == ""
    set_progress(True)
    with progress_bar(total=50, desc="forced", stream=log, leave=True) as bar:
        for _ in range(50):
            bar.update(1)
    out = log.getvalue()
    assert "forced" in out and "50/50" in out
    # forced onto a non-terminal: refreshed at most every FORCED_MININTERVAL_S, not 50 times
    assert out.count("\r") <= 3, out


def test_throttle_lets_one_line_through_per_interval():
    now = [0.0]
    throttle = Throttle(5.0, clock=lambda: now[0])
    seen = []
    for second in range(21):
        now[0] = float(second)
        seen.append(throttle.ready(force=second == 20))
    assert [s for s, ok in enumerate(seen) if ok] == [0, 5, 10, 15, 20]
    assert throttle.suppressed == 16
    with pytest.raises(ValueError):
        Throttle(-1.0)


def test_ground_floor_stays_light():
    code = ("import sys, onn_core.progress as p; p.progress_enabled(); "
            "bad = [m for m in ('torch', 'tqdm', 'simulator', 'hil', 'drivers', 'calibration') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trainer_draws_no_bar_into_a_log_and_throttles_epoch_lines(monkeypatch, caplog):
    torch = pytest.importorskip("torch")
    from torch.utils.data import TensorDataset

    from hil.losses import TaskObjective
    from hil.trainer import Trainer

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    trainer = Trainer(model, TaskObjective(), TensorDataset(x, y), task="classification", num_classes=2,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1), batch_size=8, epochs=6,
                      progress=True)
    with caplog.at_level(logging.DEBUG, logger="hil.trainer"):
        trainer.fit()
    assert stderr.getvalue() == ""                              # progress=True, but stderr is no terminal
    epoch_lines = [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    infos = [r for r in epoch_lines if r.levelno == logging.INFO]
    # six quick epochs: the first and the last at info, the rest at debug (within LOG_INTERVAL_S)
    assert [r.getMessage().split()[1] for r in infos] == ["1/6", "6/6"]
    assert len(epoch_lines) == 6


def test_hil_progress_flag_sets_the_rule(monkeypatch):
    from hil import cli

    seen = {}

    def fake_devices(args):
        seen["forced"] = progress._forced
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["devices"].set_defaults(func=fake_devices)
    assert cli.main(["--progress", "devices"]) == 0 and seen["forced"] is True
    assert cli.main(["--no-progress", "devices"]) == 0 and seen["forced"] is False
    assert cli.main(["devices"]) == 0 and seen["forced"] is None


@pytest.mark.parametrize("seconds, text", [(4.96, "5.0 s"), (-1.0, "0.0 s"), (45.4, "45 s"), (425.0, "7 min 05 s"),
                                           (7380.0, "2 h 03 min"), (float("inf"), "?"), (float("nan"), "?")])
def test_one_duration_format_for_every_progress_line(seconds, text):
    assert format_duration(seconds) == text
