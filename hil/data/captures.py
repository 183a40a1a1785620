"""Reading capture files: camera frames of a dataset shown through the fabricated optics (HDF5).

Schema ``onn-hil/captures``, version 1 (what the capture step writes)
--------------------------------------------------------------------
File attributes:

* ``schema`` = ``"onn-hil/captures"``, ``schema_version`` = 1 (int);
* ``count`` (int): the number of **complete** rows. A writer appends a frame, its label and index,
  flushes, and only then increments ``count``; a reader never looks beyond it, so a file still
  being written (or cut by a crash) reads consistently. A writer in HDF5 SWMR mode (which cannot
  change attributes) keeps it instead in an integer dataset ``count`` of shape () or (1,), which
  takes precedence. Without either, the shortest of the three datasets' lengths is used.
* anything else the writer records (toolkit and dependency versions, timestamps, device settings,
  resolved config, calibration id), untouched here.

Datasets (row ``i`` = one shown sample; first axis resizable, chunked one row per chunk or more):

* ``frames``: (N, rows, cols) or (N, channels, rows, cols), any integer or float type, camera units (DN);
* ``labels``: (N,) integer class labels of the shown samples;
* ``indices``: (N,) integer index of each shown sample in its source dataset (so the teacher can be
  given the raw image of the same sample).

The reader opens the file lazily, once per process (safe with ``DataLoader`` workers), in SWMR mode
when the file allows it; :meth:`CaptureDataset.refresh` re-reads ``count`` to see rows appended since.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError

CAPTURE_SCHEMA = "onn-hil/captures"
CAPTURE_SCHEMA_VERSION = 1
CAPTURE_DATASETS = ("frames", "labels", "indices")


class CaptureDataset(Dataset):
    """Items ``(frame, label)`` of a captures file: frame float32 (channels, rows, cols) in the file's
    units (DN) divided by ``frame_scale``, label int64. ``source_indices`` (N,) int64 maps row -> index
    of the shown sample in its source dataset. Frames are read lazily, row by row."""

    def __init__(self, path, *, frame_scale: float = 1.0):
        self.path = Path(path)
        if not float(frame_scale) > 0:
            raise DatasetError(f"frame_scale must be > 0, got {frame_scale!r}")
        self.frame_scale = float(frame_scale)
        self._file, self._pid = None, None
        self.refresh()

    def _open(self):
        import h5py

        if self._file is not None and self._pid == os.getpid():
            return self._file
        if not self.path.is_file():
            raise DatasetError(f"capture file {self.path} does not exist")
        try:
            try:
                handle = h5py.File(self.path, "r", swmr=True)
            except (OSError, ValueError):
                handle = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetError(f"cannot open capture file {self.path} as HDF5: {exc}") from exc
        self._file, self._pid = handle, os.getpid()
        return handle

    def refresh(self) -> int:
        """Re-read the schema and the number of complete rows (rows appended since become visible);
        returns that number."""
        if self._file is not None:
            self.close()
        f = self._open()
        schema, version = f.attrs.get("schema"), f.attrs.get("schema_version")
        if isinstance(schema, bytes):
            schema = schema.decode()
        if schema != CAPTURE_SCHEMA:
            raise DatasetError(f"{self.path}: attribute schema = {schema!r}, expected {CAPTURE_SCHEMA!r}")
        if version is None or int(version) > CAPTURE_SCHEMA_VERSION:
            raise DatasetError(f"{self.path}: schema_version = {version!r}; this reader knows up to {CAPTURE_SCHEMA_VERSION}")
        missing = [name for name in CAPTURE_DATASETS if name not in f]
        if missing:
            raise DatasetError(f"{self.path}: missing dataset(s) {missing}; expected {list(CAPTURE_DATASETS)}")
        frames = f["frames"]
        if frames.ndim not in (3, 4):
            raise DatasetError(f"{self.path}: frames has shape {frames.shape}; expected (N, rows, cols) or (N, channels, rows, cols)")
        written = min(len(f[name]) for name in CAPTURE_DATASETS)
        if "count" in f:
            count = int(np.asarray(f["count"][()]).reshape(-1)[0])
        else:
            count = int(f.attrs["count"]) if "count" in f.attrs else written
        if not 0 <= count <= written:
            raise DatasetError(f"{self.path}: count = {count} but the datasets hold {written} rows")
        self.count = count
        self.labels = torch.from_numpy(np.asarray(f["labels"][:count], dtype=np.int64))
        self.source_indices = torch.from_numpy(np.asarray(f["indices"][:count], dtype=np.int64))
        self.attrs = {k: v for k, v in f.attrs.items()}
        return count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not -self.count <= index < self.count:
            raise IndexError(f"row {index} out of range for {self.count} complete rows")
        frame = torch.from_numpy(np.asarray(self._open()["frames"][index % self.count], dtype=np.float32))
        if frame.ndim == 2:
            frame = frame[None]
        return frame / self.frame_scale if self.frame_scale != 1.0 else frame, self.labels[index]

    def close(self) -> None:
        """Close the file handle (reopened on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __getstate__(self):  # handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state
