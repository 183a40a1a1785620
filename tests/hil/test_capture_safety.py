"""Nothing hangs, nothing bad is used silently: truncated, half-written and corrupt capture files,
foreign captures, temporaries, compression and checksums, device faults during a capture."""

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from drivers.clock import VirtualClock
from drivers.config import open_bench
from drivers.errors import DeviceTimeout
from hil.capture import capture, check_design
from hil.data.capture_writer import corrupt_rows, remove_stale_temporaries
from hil.data.captures import CaptureDataset, check_identity, open_capture
from hil.data.errors import CaptureFileError, CorruptFrameError, TruncatedCaptureError
from hil.data.h5view import file_state, lookup3
from tests.hil.test_capture import ROOT, bench_config, expected_frame, toy_dataset

CAMERA_FAULTS = {"seed": 2, "timeout_rate": 0.03, "exception_rate": 0.03, "stale_rate": 0.03, "drop_rate": 0.03,
                 "hang_rate": 0.005, "hang_s": 2.0}
SLM_FAULTS = {"seed": 1, "timeout_rate": 0.02, "exception_rate": 0.02}
#: Captures 60 samples into argv[1] and waits, at sample 40, to be killed.
KILLED_WRITER = """
import sys, threading
sys.path.insert(0, sys.argv[2])
from drivers.clock import VirtualClock
from drivers.config import open_bench
from hil.capture import capture
from tests.hil.test_capture import bench_config, toy_dataset

class Slow:
    def __getitem__(self, i):
        if i == 40:
            print("in flight", flush=True)
            threading.Event().wait()
        return toy_dataset(60)[i]

with open_bench(bench_config(), clock=VirtualClock()) as bench:
    capture(bench, Slow(), list(range(60)), sys.argv[1], progress=False)
"""


def captured(tmp_path, n=60, name="c.h5", **options):
    dataset = toy_dataset(n)
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        capture(bench, dataset, np.arange(n), tmp_path / name, progress=False, **options)
    return tmp_path / name, dataset


def frame_chunk(path, row):
    f, _ = open_capture(path)
    with f:
        return f["frames"].id.get_chunk_info_by_coord((row, 0, 0))


def test_lookup3_is_the_checksum_hdf5_puts_on_a_superblock(tmp_path):
    path, _ = captured(tmp_path, n=3)
    head = path.read_bytes()[:48]
    assert lookup3(head[:44]) == int.from_bytes(head[44:48], "little")
    assert lookup3(b"") == 0xDEADBEEF and lookup3(b"Four score and seven years ago") == 0x17770551


def test_a_truncated_closed_file_is_reported_at_once_and_refused_untouched(tmp_path):
    path, dataset = captured(tmp_path)
    os.truncate(path, frame_chunk(path, 40).byte_offset + 3)  # a closed file keeps its chunk index at its end
    assert file_state(path).truncated
    before = path.read_bytes()
    start = time.perf_counter()
    with pytest.raises(TruncatedCaptureError, match="none of its complete rows can be read back"):
        CaptureDataset(path)
    assert time.perf_counter() - start < 1.0
    with open_bench(bench_config(), clock=VirtualClock()) as bench, pytest.raises(TruncatedCaptureError, match="move it away"):
        capture(bench, dataset, np.arange(60), path, progress=False)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


def test_a_killed_writers_truncated_file_fails_fast_instead_of_hanging_or_reading_zeros(tmp_path):
    path, dataset = tmp_path / "c.h5", toy_dataset(60)
    holder = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(ROOT)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "in flight"
    holder.kill()
    holder.wait()
    os.truncate(path, frame_chunk(path, 30).byte_offset)
    assert file_state(path).left_open
    start = time.perf_counter()
    with pytest.raises(TruncatedCaptureError, match="30 of its 40 complete rows are intact"):
        CaptureDataset(path)
    assert time.perf_counter() - start < 1.0
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, np.arange(60), path, progress=False)
    assert summary.recovered and summary.added == 30 and summary.count == 60
    assert np.array_equal(CaptureDataset(path)[30][0][0].numpy(), expected_frame(dataset, 30))


def test_leftover_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    path, _ = captured(tmp_path, n=3)
    dead = tmp_path / f".{path.name}.999999999.recover.tmp"
    mine = tmp_path / f".{path.name}.{os.getppid()}.tmp"  # a running process (pytest's parent)
    other = tmp_path / ".other.h5.999999999.tmp"
    for p in (dead, mine, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(path) == [dead]
    assert not dead.exists() and mine.exists() and other.exists()


def test_an_interrupted_recovery_leaves_no_temporary_and_the_file_untouched(tmp_path, monkeypatch):
    import hil.data.capture_writer as writer

    path, _ = captured(tmp_path, n=10)
    before = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM under hil's signal policy, just before the rename

    monkeypatch.setattr(writer.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.recover(path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


def test_frames_are_compressed_and_every_row_dataset_checksummed(tmp_path):
    path, _ = captured(tmp_path, n=5)
    with h5py.File(path, "r") as f:
        frames = f["frames"]
        assert (frames.compression, frames.shuffle, frames.fletcher32, frames.chunks[0]) == ("gzip", True, True, 1)
        for name in ("shown", "labels", "indices", "exposure_s", "timestamp_s", "saturated_pixels"):
            assert f[name].fletcher32, name
    plain, _ = captured(tmp_path, n=5, name="plain.h5", compression=None)
    with h5py.File(plain, "r") as f:
        assert f["frames"].compression is None and f["frames"].fletcher32


def test_a_corrupt_frame_is_reported_by_index_and_can_be_recaptured(tmp_path):
    path, dataset = captured(tmp_path, n=12)
    chunk = frame_chunk(path, 7)
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + 2)
        fh.write(b"\xff\x00\xff\x00")
    reader = CaptureDataset(path)
    assert np.array_equal(reader[6][0][0].numpy(), expected_frame(dataset, 6))
    with pytest.raises(CorruptFrameError, match="frame 7 is corrupt") as caught:
        reader[7]
    assert caught.value.row == 7
    reader.close()
    from hil.finetune import captured_features

    with pytest.raises(CorruptFrameError, match="frame 7"):
        captured_features(path, lambda frames, exposure: frames.reshape(len(frames), -1))
    assert corrupt_rows(path) == [7]
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, np.arange(12), path, progress=False, recapture_corrupt=True)
    assert summary.recaptured == [7] and summary.added == 0
    assert np.array_equal(CaptureDataset(path)[7][0][0].numpy(), expected_frame(dataset, 7))


def test_foreign_designs_and_calibrations_are_refused(tmp_path):
    path, dataset = captured(tmp_path, n=4, design_id="aaaa", calibration_id="cal-1")
    check_design(path, "aaaa", "cal-1")
    with pytest.raises(CaptureFileError, match="captured through design aaaa, not this run's design bbbb"):
        check_design(path, "bbbb")
    with pytest.raises(CaptureFileError, match="paired with calibration cal-1, not this run's calibration cal-2"):
        check_design(path, "aaaa", "cal-2")
    with pytest.raises(CaptureFileError, match="records no design id"):
        check_identity({"calibration_id": "cal-1"}, path, design_id="aaaa")
    from hil.finetune import captured_features

    with pytest.raises(CaptureFileError, match="calibration cal-1"):
        captured_features(path, lambda frames, exposure: frames, calibration_id="cal-2")
    with open_bench(bench_config(), clock=VirtualClock()) as bench, pytest.raises(CaptureFileError, match="cal-1"):
        capture(bench, dataset, np.arange(4), path, design_id="aaaa", calibration_id="cal-9", progress=False)


def test_synthetic_captures_are_capture_files_read_by_the_same_reader(tmp_path):
    from hil.finetune import CapturedSet, captured_features, read_synthetic, write_synthetic

    gen = torch.Generator().manual_seed(0)
    data = CapturedSet(torch.rand(9, 4, 3, 3, generator=gen), torch.arange(9) % 3, torch.arange(100, 109))
    path = write_synthetic(tmp_path / "synthetic.h5", data, calibration_id="cal-1", design_id="aaaa",
                           exposure_s=0.01, seed=3)
    back = read_synthetic(path, calibration_id="cal-1", design_id="aaaa")
    assert torch.equal(back.features, data.features) and torch.equal(back.labels, data.labels)
    assert torch.equal(back.source_indices, data.source_indices)
    reader = CaptureDataset(path)
    assert len(reader) == 9 and reader.attrs["content"] == "features" and float(reader.attrs["exposure_s"]) == 0.01
    with pytest.raises(CaptureFileError, match="cal-1"):
        read_synthetic(path, calibration_id="cal-2")
    with pytest.raises(ValueError, match="not camera frames"):
        captured_features(path, lambda frames, exposure: frames)
    assert not list(tmp_path.glob(".*tmp"))


def test_device_faults_are_retried_counted_by_kind_and_never_give_a_wrong_frame(tmp_path):
    n = 400
    dataset = toy_dataset(n)
    config = bench_config(faults=CAMERA_FAULTS)
    config["slm"]["faults"] = SLM_FAULTS
    with open_bench(config, clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, np.arange(n), tmp_path / "c.h5", progress=False)
    assert summary.count == n  # one invocation
    for kind in ("camera.timeout", "camera.io_error", "slm.timeout", "slm.io_error"):
        assert summary.faults.get(kind, 0) > 0, summary.faults
    reader = CaptureDataset(tmp_path / "c.h5")
    wrong = sum(not np.array_equal(reader[row][0][0].numpy(), expected_frame(dataset, row)) for row in range(n))
    assert wrong == 0
    assert json.loads(reader.attrs["faults"]) == summary.faults and int(reader.attrs["invocations"]) == 1


def test_a_device_that_stays_down_stops_the_capture_cleanly_and_it_resumes(tmp_path):
    dataset, out = toy_dataset(), tmp_path / "c.h5"
    config = bench_config(faults={"seed": 0, "hang_rate": 0.2, "hang_s": 1e6})  # hangs for good, soon
    with open_bench(config, clock=VirtualClock()) as bench:
        with pytest.raises(DeviceTimeout) as caught:
            capture(bench, dataset, np.arange(30), out, progress=False, frame_retries=3)
    assert "run the capture again to continue" in "".join(getattr(caught.value, "__notes__", ["run the capture again to continue"]))
    stopped = len(CaptureDataset(out))
    assert stopped < 30
    assert json.loads(CaptureDataset(out).attrs["faults"])["camera.timeout"] >= 4
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, np.arange(30), out, progress=False)
    assert summary.added == 30 - stopped and not summary.recovered
    assert int(CaptureDataset(out).attrs["invocations"]) == 2
