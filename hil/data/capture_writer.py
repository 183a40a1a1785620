"""Writing capture files (schema of :mod:`hil.data.captures`): create, append, recover, verify.

* :func:`create_capture_file`: a new file with no rows, written under a temporary name and renamed
  into place. Per-row datasets are chunked one row per chunk (frames) or 1024 rows (scalars), first
  axis resizable, every one with a fletcher32 checksum; frames are compressed (``COMPRESSIONS``:
  shuffle + gzip level 1 by default).
* :class:`CaptureWriter`: appends rows to a file in HDF5 single-writer/multiple-reader (SWMR) mode;
  each row's data is flushed before ``count`` is raised and flushed, so a reader or a rerun sees only
  complete rows and a ``kill -9`` loses at most the row in flight. Before each row it checks the free
  space (:data:`FREE_SPACE_RESERVE_BYTES` beyond the row): a full disk stops the capture with the file
  closed cleanly. Any write error that still happens (``OSError`` or h5py's ``RuntimeError``, on a
  write, flush or close) becomes one :class:`CaptureWriteError` saying how many rows are kept; the
  file is then left as it is, never closed (closing a file HDF5 failed to write can crash the
  process): :func:`files_left_open` lists them, and the next run recovers it like a killed writer's.
* :func:`recover`: a file its writer did not close, or a truncated one, is replaced by a copy of its
  intact complete rows (through a temporary ``.NAME.<pid>.recover.tmp``, removed on every exit path;
  :func:`remove_stale_temporaries` removes those a ``kill -9`` left behind).
* :func:`corrupt_rows`: the complete rows whose checksums fail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from .captures import CAPTURE_SCHEMA, CAPTURE_SCHEMA_VERSION, complete_rows, intact_rows, open_capture
from .errors import CaptureFileError, CaptureWriteError

log = logging.getLogger(__name__)

#: Frame compressions (h5py dataset options) by name; ``None`` stores frames as they are.
COMPRESSIONS = {"gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
                "lzf": {"compression": "lzf", "shuffle": True}, None: {}}
#: Rows per chunk of the scalar per-row datasets.
SCALAR_CHUNK_ROWS = 1024
#: Errors h5py raises when a write, flush or close fails (a full disk gives either).
WRITE_ERRORS = (OSError, RuntimeError)
#: Free space (bytes) a writer keeps beyond the next row, for HDF5's metadata.
FREE_SPACE_RESERVE_BYTES = 1 << 20
#: Files whose writing failed, left open on purpose (module docstring).
_LEFT_OPEN: list = []
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(recover\.)?tmp$")


def create_capture_file(out, *, frame_shape, frame_dtype, row_fields: dict, planned, attrs: dict,
                        compression: str | None = "gzip", extra: dict | None = None) -> None:
    """Create ``out`` with no rows.

    Parameters
    ----------
    out : path
    frame_shape, frame_dtype
        Shape (without the row axis) and dtype of one frame.
    row_fields : dict
        Further per-row datasets: name -> ``(shape without the row axis, dtype)``; shape ``()`` for a
        scalar per row.
    planned : array-like of int
        The source indices this file is meant to hold, in order (dataset ``planned``).
    attrs : dict
        File attributes besides ``schema`` and ``schema_version`` (strings or numbers; dicts are
        stored as JSON).
    compression : {"gzip", "lzf", None}
        Of ``frames`` (:data:`COMPRESSIONS`).
    """
    import h5py

    if compression not in COMPRESSIONS:
        raise CaptureFileError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update({"schema": CAPTURE_SCHEMA, "schema_version": CAPTURE_SCHEMA_VERSION,
                            **{k: json.dumps(v, default=str) if isinstance(v, dict) else v for k, v in attrs.items()}})
            _row_dataset(f, "frames", tuple(frame_shape), frame_dtype, compression)
            for name, (shape, dtype) in row_fields.items():
                _row_dataset(f, name, tuple(shape), dtype, None)
            f.create_dataset("planned", data=np.asarray(planned, dtype=np.int64), fletcher32=True)
            f.create_dataset("count", (), "i8", data=0)
        os.replace(tmp, out)
    except WRITE_ERRORS as exc:
        raise CaptureWriteError(f"cannot create {out}: {_reason(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _row_dataset(f, name: str, shape: tuple, dtype, compression: str | None):
    rows = 1 if shape else SCALAR_CHUNK_ROWS
    return f.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape), chunks=(rows, *shape),
                            fletcher32=True, **COMPRESSIONS[compression])


class CaptureWriter:
    """Appends rows to a captures file in SWMR mode (module docstring); a context manager.

    ``rows`` is the number of complete rows. :meth:`append` writes the next row, :meth:`rewrite` an
    earlier one (a recaptured frame). Leaving the block closes the file; :func:`set_attrs` afterwards
    updates attributes (which SWMR mode cannot).
    """

    def __init__(self, path):
        import h5py

        self.path, self._file, self.rows = Path(path), None, 0
        try:
            self._file = h5py.File(self.path, "a", libver="latest")
            self._datasets = {name: item for name, item in self._file.items()}  # (lookups by name are slow)
            self.rows = int(self._datasets["count"][()])
            self._file.swmr_mode = True
        except WRITE_ERRORS as exc:
            self.close()
            raise CaptureWriteError(f"cannot open {self.path} for writing: {_reason(exc)}") from exc

    def append(self, values: dict) -> None:
        """Write row ``rows`` (``values``: dataset name -> value; every per-row dataset), flush it, then
        raise ``count`` and flush it."""
        row = self.rows
        self._check_free_space(sum(np.asarray(v).nbytes for v in values.values()))
        with self._writing():
            for name, value in values.items():
                data = self._datasets[name]
                data.resize(row + 1, axis=0)
                data[row] = value
                data.flush()
            self._datasets["count"][()] = row + 1
            self._datasets["count"].flush()
        self.rows = row + 1

    def rewrite(self, row: int, values: dict) -> None:
        """Replace the values of complete row ``row`` (flushed)."""
        self._check_free_space(sum(np.asarray(v).nbytes for v in values.values()))
        with self._writing():
            for name, value in values.items():
                self._datasets[name][row] = value
                self._datasets[name].flush()

    def _check_free_space(self, row_bytes: int) -> None:
        free = shutil.disk_usage(self.path.parent).free
        needed = 2 * row_bytes + FREE_SPACE_RESERVE_BYTES
        if free < needed:
            self.close()
            raise CaptureWriteError(f"cannot write {self.path}: No space left on device ({free} bytes free, the "
                                    f"next frame needs about {needed}); its {self.rows} complete rows are kept: "
                                    "free space and run again to continue")

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except WRITE_ERRORS as exc:
            self._leave_open()
            raise CaptureWriteError(f"cannot write {self.path}: {_reason(exc)}; its {self.rows} complete rows are "
                                    "kept (the next run recovers them): free space (or fix the cause) and run "
                                    "again to continue") from exc

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is None:
            return
        try:
            self._file.close()
        except WRITE_ERRORS as exc:
            self._leave_open()
            raise CaptureWriteError(f"cannot finish writing {self.path}: {_reason(exc)}; its {self.rows} complete "
                                    "rows are kept (the next run recovers them): free space (or fix the cause) "
                                    "and run again to continue") from exc
        self._file = None

    def _leave_open(self) -> None:
        """After a failed write: keep the handle alive and never close it (module docstring)."""
        if self._file is not None:
            _LEFT_OPEN.append(self._file)
        self._file = None

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def files_left_open() -> list[str]:
    """Paths of the files whose writing failed in this process, left open on purpose: a program that
    saw a :class:`CaptureWriteError` should end with ``os._exit`` while any is listed (what ``hil``
    does), since HDF5 may crash closing them at exit."""
    return [handle.filename for handle in _LEFT_OPEN]


def set_attrs(path, values: dict) -> None:
    """Update attributes of a closed captures file (dicts stored as JSON); write errors raise
    :class:`CaptureWriteError`."""
    import h5py

    try:
        with h5py.File(path, "a", libver="latest") as f:
            f.attrs.update({k: json.dumps(v, default=str) if isinstance(v, dict) else v for k, v in values.items()})
    except WRITE_ERRORS as exc:
        raise CaptureWriteError(f"cannot update the attributes of {path}: {_reason(exc)}") from exc


def needs_recovery(path) -> tuple[bool, int, int]:
    """``(needs recovery, complete rows, intact rows)`` of a captures file: it needs recovery when its
    writer did not close it or it lost its end."""
    f, state = open_capture(path)
    with f:
        count = complete_rows(f)
        if state.healthy:
            return False, count, count
        return True, count, intact_rows(f, count, state.size)


def recover(path) -> int:
    """Replace ``path`` (a captures file its writer did not close, or a truncated one) by a copy of its
    attributes, ``planned`` and intact complete rows; returns the rows kept."""
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.recover.tmp")
    try:
        src, state = open_capture(path)
        with src, h5py.File(tmp, "w", libver="latest") as dst:
            count = complete_rows(src)
            kept = count if state.healthy else intact_rows(src, count, state.size)
            dst.attrs.update(dict(src.attrs))
            for name, data in src.items():
                if name == "count":
                    continue
                if data.maxshape and data.maxshape[0] is None:  # per-row
                    copy = dst.create_dataset_like(name, data, shape=(kept, *data.shape[1:]))
                    for start in range(0, kept, SCALAR_CHUNK_ROWS):
                        copy[start:min(start + SCALAR_CHUNK_ROWS, kept)] = data[start:min(start + SCALAR_CHUNK_ROWS, kept)]
                else:
                    dst.create_dataset_like(name, data)[()] = data[()]
            dst.create_dataset("count", (), "i8", data=kept)
        os.replace(tmp, path)
    except WRITE_ERRORS as exc:
        raise CaptureWriteError(f"cannot recover {path} (through {tmp.name}): {_reason(exc)}; {path} is unchanged") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return kept


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporary files (``.NAME.<pid>.tmp``, ``.NAME.<pid>.recover.tmp``) that writers of
    ``path`` no longer running left behind (a ``kill -9``); returns them."""
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*tmp"):
        match = _TEMPORARY.match(candidate.name)
        if match and match["name"] == path.name and not _running(int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        log.warning("removed %s left behind by an earlier writer of %s", ", ".join(p.name for p in removed), path)
    return removed


def corrupt_rows(path, names=("frames",)) -> list[int]:
    """The complete rows of ``path`` whose data in ``names`` fails its checksum."""
    f, _ = open_capture(path)
    bad = []
    with f:
        count = complete_rows(f)
        for name in names:
            data = f[name]
            for row in range(count):
                try:
                    data[row]
                except OSError:
                    bad.append(row)
    return sorted(set(bad))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds no temporary between calls
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reason(exc: BaseException) -> str:
    """One line for a write error: the OS's words where there are some."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return "No space left on device" if "No space left" in text or "ENOSPC" in text else text


__all__ = ["COMPRESSIONS", "CaptureWriter", "corrupt_rows", "create_capture_file", "files_left_open",
           "needs_recovery", "recover", "remove_stale_temporaries", "set_attrs"]
