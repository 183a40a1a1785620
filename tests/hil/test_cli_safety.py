"""The ``hil`` command's one policy for signals and file errors: SIGINT 130, SIGTERM 143, one line;
a full disk exits 2 with one line (never a traceback or a crash) and the capture resumes."""

import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from hil import cli as hil_cli
from hil.data.captures import CaptureDataset

ROOT = Path(__file__).resolve().parents[2]
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)")


@pytest.fixture
def signalling_command(monkeypatch):
    """A ``hil`` subcommand ``signal NAME`` that sends itself that signal and waits to be stopped."""
    module = types.ModuleType("fake_signal_command")

    def run(args):
        os.kill(os.getpid(), getattr(signal, args.name))
        time.sleep(30)
        return 0

    def register(subparsers):
        parser = subparsers.add_parser("signal")
        parser.add_argument("name")
        parser.set_defaults(func=run)

    module.register = register
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(hil_cli, "COMMAND_MODULES", (*hil_cli.COMMAND_MODULES, module.__name__))


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_every_command_exits_128_plus_the_signal_with_one_line(signalling_command, capsys, name, status):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    start = time.perf_counter()
    assert hil_cli.main(["signal", name]) == status
    assert time.perf_counter() - start < 10
    assert capsys.readouterr().err.strip() == f"hil signal: interrupted ({name})"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def capture_config(folder, out, fraction=0.02):
    bench = yaml.safe_load((ROOT / "examples" / "bench_sim.yaml").read_text())
    bench["clock"] = "virtual"
    bench["camera"]["optics"] = str(ROOT / "examples" / "optics.yaml")
    (folder / "bench.yaml").write_text(yaml.safe_dump(bench))
    config = {"bench": str(folder / "bench.yaml"), "split": "test", "select": {"fraction": fraction, "seed": 3},
              "out": str(out)}
    (folder / "capture.yaml").write_text(yaml.safe_dump(config))
    return folder / "capture.yaml"


def run_hil(*args, prelude=""):
    code = f"import sys\n{prelude}\nfrom hil.cli import main\nsys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@needs_fashion
@pytest.mark.parametrize("where", ["free-space check", "HDF5 write error"])
def test_a_full_disk_exits_2_with_one_line_and_the_capture_resumes(tmp_path, small_disk, where):
    out = small_disk / "c.h5"
    config = capture_config(tmp_path, out)
    # "HDF5 write error": no free-space check, so HDF5 itself fails to write (it raises RuntimeError on flush)
    prelude = "import hil.data.capture_writer as w; w.FREE_SPACE_RESERVE_BYTES = -10**12" if where != "free-space check" else ""
    result = run_hil("capture", str(config), "--no-progress", prelude=prelude)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("hil capture: error: cannot write") and "No space left" in lines[0]
    kept = shutil.copy(out, tmp_path / "c.h5")
    assert 0 < len(CaptureDataset(kept)) < 200  # readable as it is
    result = run_hil("capture", str(capture_config(tmp_path, kept)), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len(CaptureDataset(kept)) == 200
