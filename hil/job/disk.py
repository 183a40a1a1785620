"""Free disk space against what a capture will write: checked before the job's first step (from the
bench file) and again when the bench is open (from its devices), with how much is needed."""

from __future__ import annotations

import logging
import shutil
from math import prod
from pathlib import Path

import numpy as np

from onn_core.errors import HilError

log = logging.getLogger(__name__)

ROW_BYTES = 64  # per captured frame besides its pixels and the shown image: label, index, exposure, time
SPARE_BYTES = 64 * 2**20  # kept free beyond the captures (HDF5 metadata, fine-tuned backends, reports)


class DiskSpaceError(HilError):
    """The run folder's file system has too little free space for what the job will write."""


def frame_bytes(frame_shape, frame_dtype, image_shape, shown_dtype) -> int:
    """Bytes one captured sample takes uncompressed: the camera frame, the shown image and :data:`ROW_BYTES`."""
    return (prod(frame_shape) * np.dtype(frame_dtype).itemsize + prod(image_shape) * np.dtype(shown_dtype).itemsize
            + ROW_BYTES)


def bench_frame_bytes(bench) -> int:
    """:func:`frame_bytes` of an open bench's camera frames and SLM images."""
    return frame_bytes(bench.camera.shape, bench.camera.dtype, bench.slm.shape, bench.slm.dtype)


def check_free_space(run_dir, frames: int, per_frame: int) -> None:
    """Refuse (:class:`DiskSpaceError`, saying how much is needed) a capture of ``frames`` samples of
    ``per_frame`` bytes that the file system of ``run_dir`` cannot hold besides :data:`SPARE_BYTES`,
    counting what ``run_dir/captures/`` already holds (a capture resumes)."""
    run_dir = Path(run_dir)
    captures = run_dir / "captures"
    held = sum(f.stat().st_size for f in captures.glob("*.h5")) if captures.is_dir() else 0
    needed = max(frames * per_frame - held, 0) + SPARE_BYTES
    where = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if free < needed:
        raise DiskSpaceError(f"{where} has {free / 1e6:.1f} MB free, but capturing {frames} samples of about "
                             f"{per_frame} bytes each needs {needed / 1e6:.1f} MB (with {SPARE_BYTES / 1e6:.0f} MB "
                             "to spare): free space or choose another --out-dir")
    log.info("capture needs about %.1f MB; %.1f MB free", needed / 1e6, free / 1e6)


__all__ = ["ROW_BYTES", "SPARE_BYTES", "DiskSpaceError", "bench_frame_bytes", "check_free_space", "frame_bytes"]
