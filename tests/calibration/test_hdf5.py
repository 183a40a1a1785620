"""The HDF5 codec of calibration results: round trip by type hints, schema and version checks, and
Fletcher-32 checksums that turn changed bytes into an error naming the dataset."""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
import pytest

from calibration.errors import CalibrationFileError
from calibration.hdf5 import read_dataclass, read_group, write_dataclass, write_group


@dataclass(frozen=True)
class Result:
    image: np.ndarray
    curve: np.ndarray
    gain: float
    frames: int
    reached: bool
    label: str
    shape: tuple[int, int]
    per_stage: dict


def result() -> Result:
    rng = np.random.default_rng(5)
    return Result(image=rng.random((16, 12)), curve=rng.random(40), gain=2.5, frames=7, reached=True,
                  label="lab", shape=(16, 12), per_stage={"a": 1.5, "b": [1, 2]})


def corrupt(path, dataset: str) -> None:
    """Flip bytes in the middle of the first stored chunk of ``dataset`` (the file stays valid HDF5)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        chunk = bytearray(fh.read(4))
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xA5 for b in chunk))


def test_a_dataclass_round_trips_with_its_types_schema_and_checksums(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        write_dataclass(f.create_group("r"), result(), "test.result", 3)
    with h5py.File(path, "r") as f:
        assert f["r"].attrs["schema"] == "test.result" and f["r"].attrs["schema_version"] == 3
        assert f["r/image"].fletcher32 and f["r/curve"].fletcher32 and f["r/image"].compression == "gzip"
        back = read_dataclass(Result, f["r"], "test.result", 3)
    original = result()
    np.testing.assert_array_equal(back.image, original.image)
    np.testing.assert_array_equal(back.curve, original.curve)
    assert (back.gain, back.frames, back.reached, back.label, back.shape, back.per_stage) == (
        2.5, 7, True, "lab", (16, 12), {"a": 1.5, "b": [1, 2]})
    assert type(back.frames) is int and type(back.reached) is bool and type(back.shape) is tuple


def test_another_schema_version_or_a_missing_field_is_refused(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        write_dataclass(f.create_group("r"), result(), "test.result", 3)
        write_group(f.create_group("partial"), "test.result", 3, arrays={"image": np.zeros((2, 2))})
        with pytest.raises(CalibrationFileError, match="must be empty"):
            write_group(f["r"], "test.result", 3)
    with h5py.File(path, "r") as f:
        with pytest.raises(CalibrationFileError, match="schema 'test.result', expected 'other'"):
            read_dataclass(Result, f["r"], "other", 3)
        with pytest.raises(CalibrationFileError, match="test.result version 3, this toolkit reads version 4"):
            read_dataclass(Result, f["r"], "test.result", 4)
        with pytest.raises(CalibrationFileError, match="dataset 'curve' missing"):
            read_dataclass(Result, f["partial"], "test.result", 3)
        with pytest.raises(CalibrationFileError, match="attribute 'gain' missing"):
            read_group(f["partial"], "test.result", 3, attrs=("gain",))


@pytest.mark.parametrize("name", ["curve", "image"])  # plain (1-D) and gzip-compressed (2-D) datasets
def test_changed_bytes_of_a_dataset_are_reported_naming_it(tmp_path, name):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        write_dataclass(f.create_group("r"), result(), "test.result", 3)
    corrupt(path, f"r/{name}")
    with h5py.File(path, "r") as f:
        with pytest.raises(CalibrationFileError, match=f"dataset /r/{name} is corrupted"):
            read_dataclass(Result, f["r"], "test.result", 3)
