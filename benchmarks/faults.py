"""Nothing hangs, nothing bad is used silently: the job's calibration and capture under device faults,
and what a truncated file, a full disk and a corrupt frame give.

Figures (benchmarks/results/faults.json):

- ``soak``: on simulated benches with 3 % camera faults (0.75 % each of timeouts, I/O errors, stale
  and dropped frames) and 2 % SLM faults (1 % each of timeouts and I/O errors), on the virtual clock:
  the job's calibration (the stages and settings of examples/run_sim.yaml) on the example bench
  (examples/bench_sim.yaml, rendering through examples/optics.yaml), and a capture of ``--frames``
  frames through an ideal relay (so that every stored frame can be checked exactly against the image
  shown). ``{frames, wrong_frames, invocations, faults_by_kind, calibration_completed}``:
  ``invocations`` is the number of :func:`hil.capture.capture` calls it took to capture every frame
  (each call continues the last), ``faults_by_kind`` the faults the simulated devices injected
  (``injected``, by device and kind, calibration and capture together) and those capture met and
  retried (``capture``, its count by device and kind).
- ``truncated_capture_exit_s``: wall seconds of ``hil capture`` (a fresh process: interpreter and
  imports included) on a captures file cut to two thirds, until it exits with its error
  (``truncated_capture_exit_code``, and the error line, in ``details``).
- ``disk_full_exit_code``: the exit status of ``hil capture`` writing onto a full disk: a 2 MiB tmpfs
  where it can be mounted (root), else a disk reported full (``details.disk_full_method``).
- ``corrupt_frame_detected``: bytes of one stored frame are overwritten; reading the file
  (:func:`hil.finetune.captured_features`) raises the error naming that frame.

Expected: ``wrong_frames`` 0, ``invocations`` 1, calibration completed, truncated file reported in under
5 s, disk full exit 2, corruption detected. Prints a table and, last, one line of JSON.

Usage: python benchmarks/faults.py [--frames 3000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers import VirtualClock, open_bench  # noqa: E402
from drivers.errors import DeviceError  # noqa: E402
from hil.capture import capture  # noqa: E402
from hil.data.captures import CaptureDataset, open_capture  # noqa: E402
from hil.data.errors import CorruptFrameError  # noqa: E402
from benchmarks.report import finish  # noqa: E402

CAMERA_FAULTS = {"timeout_rate": 0.0075, "exception_rate": 0.0075, "stale_rate": 0.0075, "drop_rate": 0.0075}
SLM_FAULTS = {"timeout_rate": 0.01, "exception_rate": 0.01}
RELAY_SHAPE = (16, 16)
DN_PER_LEVEL_S = 1000.0
EXPOSURE_S = 0.01
MAX_INVOCATIONS = 50
FASHION = Path("/usr/share/datasets/fashion-mnist")


def with_faults(config: dict, seed: int) -> dict:
    config = json.loads(json.dumps(config))
    config["clock"] = "virtual"
    config["slm"]["faults"] = {"seed": seed, **SLM_FAULTS}
    config["camera"]["faults"] = {"seed": seed + 1, **CAMERA_FAULTS}
    return config


def example_bench_config() -> dict:
    config = yaml.safe_load((ROOT / "examples" / "bench_sim.yaml").read_text())
    config["camera"]["optics"] = str(ROOT / "examples" / "optics.yaml")
    return config


def relay_bench_config() -> dict:
    return {"slm": {"backend": "simulated-slm", "shape": list(RELAY_SHAPE), "bit_depth": 8, "latency_s": 0.010,
                    "settle_s": 0.005},
            "camera": {"backend": "simulated-camera", "render": "direct", "direct_dn_per_level_s": DN_PER_LEVEL_S,
                       "exposure_s": EXPOSURE_S, "readout_s": 0.002}}


def add_counts(total: dict, device: str, counts: dict) -> None:
    for kind, n in counts.items():
        if n:
            key = f"{device}.{kind}"
            total[key] = total.get(key, 0) + int(n)


def soak_calibration(injected: dict) -> dict:
    """The job's calibration on the example bench with faults: ``{completed, seconds, error}``."""
    from calibration.api import calibrate
    from simulator.system import OpticalSystem

    job = yaml.safe_load((ROOT / "examples" / "run_sim.yaml").read_text())
    system = OpticalSystem.from_yaml(ROOT / "examples" / "optics.yaml")
    start = time.perf_counter()
    error = None
    with open_bench(with_faults(example_bench_config(), seed=11), clock=VirtualClock()) as bench:
        try:
            calibrate(bench, system, job.get("calibration"))
        except DeviceError as exc:
            error = f"{type(exc).__name__}: {exc} {' '.join(getattr(exc, '__notes__', []))}".strip()
        add_counts(injected, "slm", bench.slm.faults.counts)
        add_counts(injected, "camera", bench.camera.faults.counts)
    return {"completed": error is None, "seconds": time.perf_counter() - start, "error": error}


def soak_capture(frames: int, folder: Path, injected: dict) -> dict:
    """Capture ``frames`` images through the faulty relay bench, calling capture until done."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (frames, 1, *RELAY_SHAPE), generator=gen).float() / 255
    dataset = TensorDataset(images, torch.arange(frames) % 10)
    out, invocations = folder / "soak.h5", 0
    config = with_faults(relay_bench_config(), seed=21)
    start = time.perf_counter()
    with open_bench(config, clock=VirtualClock()) as bench:
        while invocations < MAX_INVOCATIONS:
            invocations += 1
            try:
                capture(bench, dataset, np.arange(frames), out, progress=False)
                break
            except DeviceError as exc:
                print(f"capture call {invocations} stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        add_counts(injected, "slm", bench.slm.faults.counts)
        add_counts(injected, "camera", bench.camera.faults.counts)
    reader = CaptureDataset(out)
    expected = np.rint(np.rint(images[:, 0].numpy() * 255) * DN_PER_LEVEL_S * EXPOSURE_S)
    wrong = sum(not np.array_equal(reader[row][0][0].numpy(), expected[row]) for row in range(len(reader)))
    wrong += frames - len(reader)  # frames never captured count as wrong
    recorded = json.loads(reader.attrs.get("faults", "{}"))
    reader.close()
    return {"frames": frames, "wrong_frames": int(wrong),
            "invocations": invocations, "capture_faults": recorded, "seconds": time.perf_counter() - start}


def small_capture(folder: Path, name: str, n: int = 60) -> Path:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, *RELAY_SHAPE), generator=gen).float() / 255
    config = relay_bench_config()
    config["clock"] = "virtual"
    with open_bench(config, clock=VirtualClock()) as bench:
        capture(bench, TensorDataset(images, torch.arange(n) % 10), np.arange(n), folder / name, progress=False)
    return folder / name


def corrupt_frame_detected(folder: Path) -> bool:
    """Overwrite bytes of frame 17's chunk; True if reading names frame 17."""
    from hil.finetune import captured_features

    path = small_capture(folder, "corrupt.h5")
    f, _ = open_capture(path)
    with f:
        offset = f["frames"].id.get_chunk_info_by_coord((17, 0, 0)).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 1)
        fh.write(b"\x5a\xa5\x5a\xa5")
    try:
        captured_features(path, lambda frames, exposure_s: frames.reshape(len(frames), -1))
    except CorruptFrameError as exc:
        return exc.row == 17
    return False


def run_hil(args: list[str], prelude: str = "") -> tuple[int, float, str]:
    """``(exit status, wall seconds, last stderr line)`` of ``hil ARGS`` in a fresh interpreter."""
    code = f"import sys\n{prelude}\nfrom hil.cli import main\nsys.exit(main({args!r}))"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    lines = result.stderr.strip().splitlines()
    return result.returncode, time.perf_counter() - start, lines[-1] if lines else ""


def capture_config(folder: Path, out: Path) -> Path:
    bench = example_bench_config()
    bench["clock"] = "virtual"
    (folder / "bench.yaml").write_text(yaml.safe_dump(bench))
    config = {"bench": str(folder / "bench.yaml"), "split": "test", "select": {"fraction": 0.02, "seed": 3},
              "out": str(out)}
    (folder / f"{out.stem}.yaml").write_text(yaml.safe_dump(config))
    return folder / f"{out.stem}.yaml"


def truncated_exit(folder: Path) -> dict:
    """``hil capture`` continuing a captures file cut to two thirds (module docstring)."""
    out = folder / "truncated.h5"
    config = capture_config(folder, out)
    status, _, line = run_hil(["capture", str(config), "--no-progress"])
    if status != 0:
        raise RuntimeError(f"the capture to truncate failed: {line}")
    os.truncate(out, out.stat().st_size * 2 // 3)
    status, seconds, line = run_hil(["capture", str(config), "--no-progress"])
    return {"seconds": seconds, "exit_code": status, "message": line}


def disk_full_exit(folder: Path) -> dict:
    """``hil capture`` onto a full disk: a small tmpfs where possible, else a disk reported full."""
    mount = folder / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    try:
        config = capture_config(folder, mount / "full.h5")
        prelude = "" if mounted else ("import collections, hil.data.capture_writer as w\n"
                                      "w.shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(1, 1, 0)")
        status, seconds, line = run_hil(["capture", str(config), "--no-progress"], prelude)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=False)
    return {"exit_code": status, "method": "2 MiB tmpfs" if mounted else "free space reported as 0 (no mount permission)",
            "message": line, "seconds": seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames of the soak capture")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="faults_bench_"))
    try:
        injected: dict = {}
        calibration = soak_calibration(injected)
        captured = soak_capture(args.frames, folder, injected)
        truncated = truncated_exit(folder) if FASHION.is_dir() else None
        disk_full = disk_full_exit(folder) if FASHION.is_dir() else None
        corrupt = corrupt_frame_detected(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "benchmark": "faults",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "soak": {"frames": captured["frames"], "wrong_frames": captured["wrong_frames"],
                 "invocations": captured["invocations"],
                 "faults_by_kind": {"injected": injected, "capture": captured["capture_faults"]},
                 "calibration_completed": calibration["completed"]},
        "truncated_capture_exit_s": None if truncated is None else truncated["seconds"],
        "disk_full_exit_code": None if disk_full is None else disk_full["exit_code"],
        "corrupt_frame_detected": corrupt,
        "details": {"calibration": calibration, "capture_seconds": captured["seconds"],
                    "camera_fault_rates": CAMERA_FAULTS, "slm_fault_rates": SLM_FAULTS,
                    "truncated_capture": truncated, "disk_full": disk_full},
    }
    rows = [
        ("soak frames", result["soak"]["frames"], "captured through the faulty relay bench"),
        ("wrong frames", result["soak"]["wrong_frames"], "expected 0"),
        ("capture invocations", result["soak"]["invocations"], "expected 1"),
        ("calibration completed", result["soak"]["calibration_completed"], calibration["error"] or f"{calibration['seconds']:.0f} s"),
        ("faults injected", sum(injected.values()), ", ".join(f"{k} {v}" for k, v in sorted(injected.items()))),
        ("truncated file reported", result["truncated_capture_exit_s"], "seconds, expected < 5"),
        ("disk full exit code", result["disk_full_exit_code"], "expected 2"),
        ("corrupt frame detected", corrupt, "expected True"),
    ]
    return finish(rows, result, args.out, name_width=26, value_width=10)


if __name__ == "__main__":
    main()
