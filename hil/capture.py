"""Capture a dataset through the fabricated optics into an HDF5 file, safely and resumably.

:func:`capture` shows each selected sample on the bench's SLM, captures the frame that saw it and
appends one row to a captures file (schema ``onn-hil/captures`` v1 of :mod:`hil.data.captures`, which
it extends compatibly). :func:`stratified_indices` picks the samples: a seeded, class-balanced
fraction of a split.

File layout (what the v1 reader needs, plus):

* datasets, one row per shown sample, chunked one row per chunk, first axis resizable: ``frames``
  (the raw camera frame, camera dtype), ``labels``, ``indices`` (index in the source dataset),
  ``shown`` (the integer image displayed), ``exposure_s``, ``timestamp_s`` (the frame's exposure
  start, bench clock), ``saturated_pixels``;
* ``planned``: every source index this file is meant to hold, in capture order (what a resumed
  capture checks it continues);
* ``count``: a scalar dataset, the number of complete rows;
* attributes: ``schema``, ``schema_version``, ``created_utc``, ``versions`` (toolkit and dependencies,
  JSON), ``settings`` (the devices' settings snapshot at the start, JSON), ``config`` (the bench's
  resolved config and the caller's, JSON), ``calibration_id`` ("" without one), ``design_id`` (the
  fingerprint of the design the optics were made from, :func:`design_fingerprint`; "" if not given).

Nothing lost: the file is written in HDF5's single-writer/multiple-reader (SWMR) mode; each row's
data is flushed before ``count`` is raised and flushed, so a reader, or a resumed capture, sees only
complete rows, and a ``kill -9`` loses at most the frame in flight. Running :func:`capture` again
with the same ``out`` and indices continues after the last complete row (no duplicate, no gap); a
file that another process killed mid-write (HDF5 then refuses to reopen it for writing) is first
recovered by copying its complete rows into a fresh file that atomically replaces it. A foreign
file, one for other indices or another design, or a truncated one is refused with a clear message
and never touched.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from onn_core.errors import HilError, InputError

from .data.captures import CAPTURE_SCHEMA, CAPTURE_SCHEMA_VERSION

log = logging.getLogger(__name__)

#: Per-row datasets written besides ``frames``, with their dtype.
ROW_FIELDS = {"labels": "i8", "indices": "i8", "exposure_s": "f8", "timestamp_s": "f8", "saturated_pixels": "i8"}
#: Packages whose versions a captures file records.
RECORDED_PACKAGES = ("onn-hil", "torch", "numpy", "h5py", "opencv-python", "pyserial", "slmsuite")


class CaptureFileError(HilError):
    """A captures file cannot be continued: foreign, for other samples, or damaged."""


@dataclass
class CaptureSummary:
    """What :func:`capture` did: rows now in the file, rows added by this call, frames with
    saturated pixels and frames that stayed dark (both counted over this call)."""

    path: Path
    count: int
    added: int
    saturated_frames: int
    dark_frames: int
    recovered: bool


def stratified_indices(labels, fraction: float, seed: int, *, exclude=()) -> np.ndarray:
    """A seeded, class-balanced subset of ``labels``' indices: ``round(fraction * n_c)`` samples of every
    class ``c`` (at least one), drawn without the ``exclude`` indices, in a seeded random order."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if not 0 < float(fraction) <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    excluded = np.zeros(len(labels), bool)
    excluded[np.asarray(list(exclude), dtype=np.int64)] = True
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero((labels == label) & ~excluded)
        take = max(1, round(fraction * np.count_nonzero(labels == label)))
        if take > len(pool):
            raise InputError(f"class {label} has {len(pool)} samples left, fewer than the {take} asked for")
        chosen.append(rng.choice(pool, size=take, replace=False))
    return rng.permutation(np.concatenate(chosen))


def display_image(image: torch.Tensor, slm) -> np.ndarray:
    """A dataset image (C, H, W) with intensities in [0, 1] -> the integer frame the SLM shows, as (H, W)
    or (H, W, C) in the SLM's dtype: :func:`simulator.display.quantise_intensities`, the rule the optical
    system's training forward applies, so the bench shows exactly the levels training assumed."""
    from simulator.display import quantise_intensities

    image = torch.as_tensor(image)
    if not image.is_floating_point() or image.ndim != 3:
        raise InputError(f"dataset images must be floating (C, H, W) tensors, got {image.dtype} {tuple(image.shape)}")
    if not (bool(torch.isfinite(image).all()) and float(image.min()) >= 0 and float(image.max()) <= 1):
        raise InputError("dataset images must hold intensities in [0, 1]")
    levels = quantise_intensities(image, slm.max_level + 1).numpy()
    levels = levels[0] if levels.shape[0] == 1 else np.moveaxis(levels, 0, -1)
    if levels.shape != tuple(slm.shape):
        raise InputError(f"dataset images are {levels.shape} but the SLM shows {tuple(slm.shape)}")
    return levels.astype(slm.dtype)


def design_fingerprint(psfs) -> str:
    """A short fingerprint (sha256, 16 hex digits) of a design's PSFs or kernels (array-like), rounded to
    float32, to tell the captures of one design from another's."""
    import hashlib

    values = np.ascontiguousarray(np.asarray(psfs, dtype=np.float32))
    return hashlib.sha256(str(values.shape).encode() + values.tobytes()).hexdigest()[:16]


def check_design(path, design_id: str) -> None:
    """Refuse (:class:`CaptureFileError`) a captures file recorded through another design than
    ``design_id``; one recorded without a design id is accepted with a warning."""
    import h5py

    with h5py.File(path, "r", swmr=True) as f:
        recorded = f.attrs.get("design_id", "")
    recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
    if not recorded:
        log.warning("%s records no design id: cannot check it was captured through this design", path)
    elif recorded != design_id:
        raise CaptureFileError(f"{path} was captured through design {recorded}, not this run's design {design_id}: "
                               "its frames belong to other optics; capture again into another file")


def capture(bench, dataset, indices, out, *, calibration_id: str = "", design_id: str = "",
            config: dict | None = None, progress: bool = True) -> CaptureSummary:
    """Show ``dataset[i]`` for every ``i`` of ``indices`` on ``bench`` and append its frame to ``out``.

    ``dataset`` items are ``(image (C, H, W) in [0, 1], label)``. Resumes an earlier capture of the
    same ``indices`` (and ``design_id``) into ``out`` (module docstring). ``config`` (plain mapping) is
    recorded with the bench's resolved config. A device error stops the capture with the file closed and consistent;
    call again to continue.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0:
        raise InputError(f"indices must be a non-empty 1-D sequence of sample indices, got shape {indices.shape}")
    if len(np.unique(indices)) != len(indices):
        raise InputError("indices must not repeat a sample")
    out = Path(out)
    if out.exists():
        count = _check_resumable(out, indices)
        if design_id:
            check_design(out, design_id)
    else:
        _create(out, bench, indices, _first_frame_shape(bench), calibration_id, design_id, config)
        count = 0
    handle, recovered = _open_for_append(out, count)
    with handle as f:
        f.swmr_mode = True
        done = int(f["count"][()])
        summary = CaptureSummary(out, done, 0, 0, 0, recovered)
        if done:
            log.warning("continuing %s after %d of %d frames", out, done, len(indices))
        from onn_core.progress import progress_bar

        with progress_bar(total=len(indices), initial=done, desc="capture", unit="frame", enabled=progress) as bar:
            for row in range(done, len(indices)):
                image, label = dataset[int(indices[row])]
                shown = display_image(image, bench.slm)
                frame = bench.measure(shown).frame
                saturated = int(np.count_nonzero(frame.image >= bench.camera.saturation_dn))
                _append(f, row, frame, shown, int(label), int(indices[row]), saturated)
                summary.count, summary.added = row + 1, summary.added + 1
                summary.saturated_frames += saturated > 0
                summary.dark_frames += _is_dark(frame.image, bench.camera)
                bar.update(1)
    for what, n in (("with saturated pixels", summary.saturated_frames), ("that stayed dark", summary.dark_frames)):
        if n:
            log.warning("%d of %d frames captured %s (check the exposure)", n, summary.added, what)
    return summary


def _first_frame_shape(bench) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the camera's frames (from one blank measurement)."""
    frame = bench.measure(np.zeros(bench.slm.shape, bench.slm.dtype)).frame
    return frame.image.shape, frame.image.dtype


def _is_dark(image: np.ndarray, camera) -> bool:
    """True when no pixel rises above the black level by more than 1 % of the range."""
    black = float(camera.black_level)
    return float(image.max()) - black <= 0.01 * (float(camera.saturation_dn) - black)


def _create(out: Path, bench, indices: np.ndarray, frame_format, calibration_id: str, design_id: str, config) -> None:
    """A new captures file with no rows, written to a temporary name and renamed into place."""
    import h5py

    (shape, dtype) = frame_format
    shown_shape = tuple(bench.slm.shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update({
                "schema": CAPTURE_SCHEMA, "schema_version": CAPTURE_SCHEMA_VERSION,
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "versions": json.dumps(_versions()), "settings": json.dumps(bench.settings(), default=str),
                "config": json.dumps({"bench": getattr(bench, "config", None), "capture": config}, default=str),
                "calibration_id": calibration_id, "design_id": design_id,
            })
            f.create_dataset("frames", (0, *shape), dtype, maxshape=(None, *shape), chunks=(1, *shape))
            f.create_dataset("shown", (0, *shown_shape), bench.slm.dtype, maxshape=(None, *shown_shape),
                             chunks=(1, *shown_shape))
            for name, kind in ROW_FIELDS.items():
                f.create_dataset(name, (0,), kind, maxshape=(None,), chunks=(1024,))
            f.create_dataset("planned", data=indices)
            f.create_dataset("count", (), "i8", data=0)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _append(f, row: int, frame, shown: np.ndarray, label: int, index: int, saturated: int) -> None:
    """Write one row, flush it, then raise ``count`` (and flush): a reader never sees half a row."""
    values = {"frames": frame.image, "shown": shown, "labels": label, "indices": index,
              "exposure_s": frame.exposure_s, "timestamp_s": frame.timestamp_s, "saturated_pixels": saturated}
    for name, value in values.items():
        data = f[name]
        data.resize(row + 1, axis=0)
        data[row] = value
        data.flush()
    f["count"][()] = row + 1
    f["count"].flush()


def _check_resumable(out: Path, indices: np.ndarray) -> int:
    """Refuse a file this capture must not continue; returns its number of complete rows."""
    import h5py

    try:
        handle = h5py.File(out, "r", swmr=True)
    except OSError as exc:
        raise CaptureFileError(f"{out} exists but is not a readable HDF5 file ({exc}); it was left untouched: "
                               "move it away or choose another output path") from exc
    with handle as f:
        schema = f.attrs.get("schema")
        if schema != CAPTURE_SCHEMA or "planned" not in f or "count" not in f:
            raise CaptureFileError(f"{out} is not a captures file of this toolkit (schema {schema!r}); "
                                   "it was left untouched: choose another output path")
        planned = np.asarray(f["planned"][()])
        if not np.array_equal(planned, indices):
            raise CaptureFileError(f"{out} was started for other samples ({len(planned)} planned, first "
                                   f"{planned[:3].tolist()}); this capture asks for {len(indices)} (first "
                                   f"{indices[:3].tolist()}): choose another output path")
        count = int(f["count"][()])
        lengths = {name: len(f[name]) for name in ("frames", "shown", *ROW_FIELDS)}
        if any(n < count for n in lengths.values()):
            raise CaptureFileError(f"{out} is damaged: count = {count} but datasets hold {lengths}; left untouched")
    return count


def _open_for_append(out: Path, count: int):
    """``(h5py.File open for appending, recovered)``: a file left open by a killed writer (which HDF5
    refuses to reopen for writing) is first replaced by a copy of its ``count`` complete rows."""
    import h5py

    try:
        return h5py.File(out, "a", libver="latest"), False
    except OSError:
        log.warning("%s was left open by a writer that did not close it (killed?); recovering its %d "
                    "complete rows", out, count)
        _recover(out, count)
        return h5py.File(out, "a", libver="latest"), True


def _recover(out: Path, count: int) -> None:
    """Copy the complete rows and the attributes of ``out`` into a fresh file that replaces it."""
    import h5py

    tmp = out.with_name(f".{out.name}.{os.getpid()}.recover.tmp")
    try:
        with h5py.File(out, "r", swmr=True) as src, h5py.File(tmp, "w", libver="latest") as dst:
            dst.attrs.update(dict(src.attrs))
            for name in ("frames", "shown", *ROW_FIELDS):
                data = src[name]
                dst.create_dataset(name, data=data[:count], maxshape=(None, *data.shape[1:]), chunks=data.chunks)
            dst.create_dataset("planned", data=src["planned"][()])
            dst.create_dataset("count", (), "i8", data=count)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


__all__ = ["CaptureFileError", "CaptureSummary", "capture", "check_design", "design_fingerprint", "display_image",
           "stratified_indices"]
