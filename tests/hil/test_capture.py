"""Capturing a dataset through a bench into HDF5: selection, exact rows, resume after a stop, a
kill -9 and a disconnect, refusal of foreign files."""

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from drivers.clock import VirtualClock
from drivers.config import open_bench
from drivers.errors import DeviceDisconnected
from hil.capture import CaptureFileError, capture, stratified_indices
from hil.data.captures import CaptureDataset

ROOT = Path(__file__).resolve().parents[2]
DN_PER_LEVEL_S = 1000.0


def bench_config(**camera):
    return {"clock": "virtual",
            "slm": {"backend": "simulated-slm", "shape": [6, 5], "bit_depth": 8, "latency_s": 0.001, "settle_s": 0.001},
            "camera": {"backend": "simulated-camera", "render": "direct", "direct_dn_per_level_s": DN_PER_LEVEL_S,
                       "exposure_s": 0.01, **camera}}


def toy_dataset(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 6, 5), generator=gen).float() / 255
    return TensorDataset(images, torch.arange(n) % 4)


def expected_frame(dataset, index):
    return np.rint(np.rint(dataset[index][0][0].numpy() * 255) * DN_PER_LEVEL_S * 0.01).astype(np.uint16)


def test_stratified_indices_are_balanced_seeded_and_exclusive():
    labels = np.repeat(np.arange(10), 100)
    picked = stratified_indices(labels, 0.03, seed=1)
    assert np.bincount(labels[picked]).tolist() == [3] * 10 and len(set(picked)) == 30
    assert np.array_equal(picked, stratified_indices(labels, 0.03, seed=1))
    assert not np.array_equal(np.sort(picked), np.sort(stratified_indices(labels, 0.03, seed=2)))
    held_out = stratified_indices(labels, 0.1, seed=3, exclude=picked)
    assert not set(held_out) & set(picked) and np.bincount(labels[held_out]).tolist() == [10] * 10
    with pytest.raises(ValueError, match="fraction"):
        stratified_indices(labels, 0.0, seed=0)


def test_capture_writes_exact_rows_that_the_reader_reads(tmp_path):
    dataset, indices = toy_dataset(), np.array([7, 3, 11, 0, 25])
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, indices, tmp_path / "c.h5", config={"purpose": "test"}, progress=False)
    assert (summary.count, summary.added, summary.recovered) == (5, 5, False)
    reader = CaptureDataset(tmp_path / "c.h5")
    assert len(reader) == 5 and reader.source_indices.tolist() == indices.tolist()
    for row, index in enumerate(indices):
        frame, label = reader[row]
        assert np.array_equal(frame[0].numpy(), expected_frame(dataset, index)) and int(label) == index % 4
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["shown"].dtype == np.uint8 and np.array_equal(f["shown"][1], np.rint(dataset[3][0][0].numpy() * 255))
        assert np.all(f["exposure_s"][()] == 0.01) and np.all(np.diff(f["timestamp_s"][()]) > 0)
        assert '"purpose": "test"' in f.attrs["config"] and "torch" in f.attrs["versions"]
        assert "exposure_s" in f.attrs["settings"]


def test_a_disconnect_stops_cleanly_and_a_rerun_continues_without_gap_or_duplicate(tmp_path):
    dataset, indices = toy_dataset(), np.arange(30)[::-1].copy()
    out = tmp_path / "c.h5"
    with open_bench(bench_config(faults={"disconnect_after_frames": 12}), clock=VirtualClock()) as bench:
        with pytest.raises(DeviceDisconnected):
            capture(bench, dataset, indices, out, progress=False)
    stopped = len(CaptureDataset(out))
    assert 0 < stopped < 30
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, indices, out, progress=False)
    assert (summary.count, summary.added) == (30, 30 - stopped)
    reader = CaptureDataset(out)
    assert reader.source_indices.tolist() == indices.tolist()
    for row in (0, stopped - 1, stopped, 29):
        assert np.array_equal(reader[row][0][0].numpy(), expected_frame(dataset, indices[row]))


def test_kill_minus_9_loses_at_most_the_frame_in_flight_and_the_capture_resumes(tmp_path):
    out = tmp_path / "c.h5"
    script = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from drivers.clock import VirtualClock
        from drivers.config import open_bench
        from hil.capture import capture
        from tests.hil.test_capture import bench_config, toy_dataset

        class Slow:
            def __init__(self, data):
                self.data = data
            def __getitem__(self, i):
                if i == 40:  # frame 40 in flight: wait here to be killed
                    print("in flight", flush=True)
                    threading.Event().wait()
                return self.data[i]

        with open_bench(bench_config(), clock=VirtualClock()) as bench:
            capture(bench, Slow(toy_dataset(200)), list(range(200)), {str(out)!r}, progress=False)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "in flight"
    child.kill()
    child.wait()
    survived = len(CaptureDataset(out))
    assert survived == 40  # every frame before the one in flight
    dataset = toy_dataset(200)
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, list(range(200)), out, progress=False)
    assert summary.recovered and summary.count == 200 and summary.added == 200 - survived
    reader = CaptureDataset(out)
    assert reader.source_indices.tolist() == list(range(200))
    for row in (0, survived - 1, survived, 199):
        assert np.array_equal(reader[row][0][0].numpy(), expected_frame(dataset, row))


def test_foreign_or_mismatched_files_are_refused_and_left_untouched(tmp_path):
    dataset = toy_dataset()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["schema"] = "somebody-else"
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        capture(bench, dataset, [1, 2, 3], tmp_path / "mine.h5", progress=False)
        for path, message in ((foreign, "not a captures file"), (garbage, "not a readable HDF5"),
                              (tmp_path / "mine.h5", "started for other samples")):
            before = path.read_bytes()
            with pytest.raises(CaptureFileError, match=message):
                capture(bench, dataset, [1, 2, 4], path, progress=False)
            assert path.read_bytes() == before


def test_saturated_and_dark_frames_are_counted_and_warned(tmp_path, caplog):
    images = torch.stack([torch.zeros(1, 6, 5), torch.ones(1, 6, 5), torch.full((1, 6, 5), 0.5)])
    dataset = TensorDataset(images, torch.arange(3))
    with open_bench(bench_config(exposure_s=0.3), clock=VirtualClock()) as bench:
        summary = capture(bench, dataset, [0, 1, 2], tmp_path / "c.h5", progress=False)
    assert (summary.saturated_frames, summary.dark_frames) == (1, 1)
    assert "saturated" in caplog.text and "dark" in caplog.text


def test_a_capture_of_another_design_is_refused_and_left_untouched(tmp_path):
    from hil.capture import check_design, design_fingerprint

    kernels = np.arange(18.0).reshape(2, 1, 3, 3)
    design_a = design_fingerprint(kernels)
    changed = kernels.copy()
    changed[1, 0, 2, 2] += 1e-3
    assert design_a == design_fingerprint(kernels.astype(np.float32)) != design_fingerprint(changed)
    dataset = toy_dataset()
    with open_bench(bench_config(), clock=VirtualClock()) as bench:
        capture(bench, dataset, [1, 2, 3], tmp_path / "a.h5", design_id=design_a, progress=False)
        before = (tmp_path / "a.h5").read_bytes()
        with pytest.raises(CaptureFileError, match=f"captured through design {design_a}, not this run's design"):
            capture(bench, dataset, [1, 2, 3], tmp_path / "a.h5", design_id=design_fingerprint(changed), progress=False)
        assert (tmp_path / "a.h5").read_bytes() == before
        capture(bench, dataset, [1, 2, 3], tmp_path / "a.h5", design_id=design_a, progress=False)  # same design: fine
    check_design(tmp_path / "a.h5", design_a)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["design_id"] == design_a
