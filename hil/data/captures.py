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
* ``content``: ``"frames"`` (raw camera frames, the default when absent) or ``"features"`` (feature
  tensors that were never camera frames: synthetic captures, :func:`hil.finetune.write_synthetic`);
* ``design_id`` and ``calibration_id`` (strings, "" when unknown): the optics the frames were
  captured through and the calibration they are read with (:func:`check_identity`);
* anything else the writer records (toolkit and dependency versions, timestamps, device settings,
  resolved config, faults met), untouched here.

Datasets (row ``i`` = one shown sample; first axis resizable, chunked one row per chunk or more):

* ``frames``: (N, rows, cols) or (N, channels, rows, cols), any integer or float type, camera units (DN);
* ``labels``: (N,) integer class labels of the shown samples;
* ``indices``: (N,) integer index of each shown sample in its source dataset (so the teacher can be
  given the raw image of the same sample).

Reading safely
--------------
Files are opened without SWMR (:func:`open_capture`; ``live=True`` follows a writer known to be
running), through :mod:`hil.data.h5view`, so a truncated file or one a killed writer left open is
recognised at once: rows whose bytes are all in the file are counted (:func:`intact_rows`) and a file
missing any complete row is refused with :class:`TruncatedCaptureError` (the capture step recovers
it). Datasets written with checksums (fletcher32) are verified on every read; a row that fails raises
:class:`CorruptFrameError` naming it (:func:`read_rows`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import CaptureFileError, CorruptFrameError, DatasetError, TruncatedCaptureError
from .h5view import open_for_reading

CAPTURE_SCHEMA = "onn-hil/captures"
CAPTURE_SCHEMA_VERSION = 1
CAPTURE_DATASETS = ("frames", "labels", "indices")


def open_capture(path, *, live: bool = False):
    """``(h5py.File, FileState)`` of a captures file opened read-only: in SWMR mode with ``live`` (a
    writer is appending to it now), else safely whatever state it is in (module docstring).

    Raises
    ------
    DatasetError
        No such file, or not readable as HDF5.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"capture file {path} does not exist")
    try:
        if live:
            return h5py.File(path, "r", swmr=True), None
        f, state = open_for_reading(path)
    except OSError as exc:
        raise DatasetError(f"cannot open capture file {path} as HDF5: {exc}") from exc
    if not state.healthy:
        try:  # what lies in the lost bytes fails here, at once
            dict(f.attrs)
            if "count" in f:
                f["count"][()]
        except (OSError, RuntimeError) as exc:
            f.close()
            raise TruncatedCaptureError(path, None, 0, _damage(state)) from exc
    return f, state


def _damage(state) -> str:
    """How a file was left, in words."""
    if state.truncated:
        return f"{state.size} of {state.stored_eof} bytes"
    return f"its writer did not close it; {state.size} bytes"


def complete_rows(f) -> int:
    """The number of complete rows the open captures file claims (module docstring), checked against
    the datasets' lengths."""
    written = min(len(f[name]) for name in CAPTURE_DATASETS)
    if "count" in f:
        count = int(np.asarray(f["count"][()]).reshape(-1)[0])
    else:
        count = int(f.attrs["count"]) if "count" in f.attrs else written
    if not 0 <= count <= written:
        raise DatasetError(f"{f.filename}: count = {count} but the datasets hold {written} rows")
    return count


def intact_rows(f, count: int, size: int, names=None) -> int:
    """How many leading rows (of ``count``) of the per-row datasets ``names`` (default: every dataset
    whose first axis is resizable) have all their bytes within the first ``size`` bytes of the file."""
    import h5py

    names = names or [name for name, item in f.items()
                      if isinstance(item, h5py.Dataset) and item.maxshape and item.maxshape[0] is None]
    intact = count
    for name in names:
        data = f[name]
        rows_per_chunk = data.chunks[0]
        inside = set()

        def note(chunk, inside=inside):
            if chunk.byte_offset is not None and chunk.byte_offset + chunk.size <= size:
                inside.add(chunk.chunk_offset[0] // rows_per_chunk)

        try:
            data.id.chunk_iter(note)
        except (OSError, RuntimeError):  # the chunk index itself is lost
            return 0
        row = 0
        while row < intact and row // rows_per_chunk in inside:
            row += rows_per_chunk
        intact = min(intact, row)
    return intact


def read_rows(f, name: str, rows, path=None) -> np.ndarray:
    """``f[name][rows]`` (a slice or an index), every row verified against its checksum where the
    dataset has one; a row that fails raises :class:`CorruptFrameError` naming it."""
    data = f[name]
    try:
        return data[rows]
    except OSError as exc:
        first = rows.start or 0 if isinstance(rows, slice) else int(rows)
        stop = (rows.stop if rows.stop is not None else len(data)) if isinstance(rows, slice) else first + 1
        for row in range(first, stop):
            try:
                data[row]
            except OSError as failed:
                raise CorruptFrameError(path or f.filename, row, name, str(failed)) from failed
        raise CaptureFileError(f"{path or f.filename}: cannot read {name}[{rows}]: {exc}") from exc


def check_identity(attrs, path, *, design_id: str | None = None, calibration_id: str | None = None) -> None:
    """Refuse (:class:`CaptureFileError`) a captures file (its attributes ``attrs``) recorded through
    another design than ``design_id`` or for another calibration than ``calibration_id``, or one that
    records none (nothing then tells which optics its frames saw). ``None`` skips that check."""
    for what, wanted, relation, hint in (
            ("design", design_id, "captured through", "its frames belong to other optics"),
            ("calibration", calibration_id, "paired with", "it is paired with another calibration of the bench")):
        if wanted is None:
            continue
        recorded = attrs.get(f"{what}_id", "")
        recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
        if not recorded:
            raise CaptureFileError(f"{path} records no {what} id, so nothing tells it belongs to this run's {what} "
                                   f"{wanted}: capture again into another file")
        if recorded != wanted:
            raise CaptureFileError(f"{path} was {relation} {what} {recorded}, not this run's {what} {wanted}: "
                                   f"{hint}; capture again into another file")


class CaptureDataset(Dataset):
    """Items ``(frame, label)`` of a captures file: frame float32 (channels, rows, cols) in the file's
    units (DN) divided by ``frame_scale``, label int64. ``source_indices`` (N,) int64 maps row -> index
    of the shown sample in its source dataset. Frames are read lazily, row by row, and verified
    against their checksums. ``live=True`` follows a file a writer is appending to now (SWMR)."""

    def __init__(self, path, *, frame_scale: float = 1.0, live: bool = False):
        self.path = Path(path)
        if not float(frame_scale) > 0:
            raise DatasetError(f"frame_scale must be > 0, got {frame_scale!r}")
        self.frame_scale, self.live = float(frame_scale), bool(live)
        self._file, self._pid = None, None
        self.refresh()

    def _open(self):
        if self._file is not None and self._pid == os.getpid():
            return self._file
        self._file, state = open_capture(self.path, live=self.live)
        self._state, self._pid = state, os.getpid()
        return self._file

    def refresh(self) -> int:
        """Re-read the schema and the number of complete rows (rows appended since become visible);
        returns that number. A truncated file raises :class:`TruncatedCaptureError`."""
        if self._file is not None:
            self.close()
        f = self._open()
        try:
            self._read_header(f)
        except BaseException:
            self.close()
            raise
        return self.count

    def _read_header(self, f) -> None:
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
        count = complete_rows(f)
        if self._state is not None and not self._state.healthy:
            intact = intact_rows(f, count, self._state.size)
            if intact < count:
                raise TruncatedCaptureError(self.path, count, intact, _damage(self._state))
        self.count = count
        self.labels = torch.from_numpy(np.asarray(read_rows(f, "labels", slice(0, count), self.path), dtype=np.int64))
        self.source_indices = torch.from_numpy(np.asarray(read_rows(f, "indices", slice(0, count), self.path), dtype=np.int64))
        self.attrs = {k: v for k, v in f.attrs.items()}

    def check_identity(self, *, design_id: str | None = None, calibration_id: str | None = None) -> None:
        """:func:`check_identity` of this file."""
        check_identity(self.attrs, self.path, design_id=design_id, calibration_id=calibration_id)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not -self.count <= index < self.count:
            raise IndexError(f"row {index} out of range for {self.count} complete rows")
        raw = read_rows(self._open(), "frames", index % self.count, self.path)
        frame = torch.from_numpy(np.asarray(raw, dtype=np.float32))
        if frame.ndim == 2:
            frame = frame[None]
        return frame / self.frame_scale if self.frame_scale != 1.0 else frame, self.labels[index]

    def has(self, name: str) -> bool:
        """Whether the file holds a dataset ``name``."""
        return name in self._open()

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of dataset ``name``, verified (:func:`read_rows`)."""
        return read_rows(self._open(), name, slice(start, min(stop, self.count)), self.path)

    def close(self) -> None:
        """Close the file handle (reopened on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __getstate__(self):  # handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state


__all__ = ["CAPTURE_DATASETS", "CAPTURE_SCHEMA", "CAPTURE_SCHEMA_VERSION", "CaptureDataset", "check_identity",
           "complete_rows", "intact_rows", "open_capture", "read_rows"]
