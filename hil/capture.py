"""Capture a dataset through the fabricated optics into an HDF5 file, safely and resumably.

:func:`capture` shows each selected sample on the bench's SLM, captures the frame that saw it and
appends one row to a captures file (schema ``onn-hil/captures`` v1 of :mod:`hil.data.captures`, which
it extends compatibly; written by :mod:`hil.data.capture_writer`). :func:`stratified_indices` picks
the samples: a seeded, class-balanced fraction of a split (:func:`uniform_indices`: a seeded uniform
one, for targets without classes such as segmentation masks).

File layout (what the v1 reader needs, plus):

* datasets, one row per shown sample, first axis resizable, each with a fletcher32 checksum:
  ``frames`` (the raw camera frame, camera dtype; one row per chunk, shuffle + gzip by default),
  ``labels`` (the class label; :data:`DENSE_TARGET` for a mask, read back from the source dataset by
  index), ``indices`` (index in the source dataset), ``shown`` (the integer image displayed),
  ``exposure_s``, ``timestamp_s`` (the frame's exposure start, bench clock), ``saturated_pixels``;
* ``planned``: every source index this file is meant to hold, in capture order (what a resumed
  capture checks it continues);
* ``count``: a scalar dataset, the number of complete rows;
* attributes: ``schema``, ``schema_version``, ``created_utc``, ``versions`` (toolkit and dependencies,
  JSON), ``settings`` (the devices' settings snapshot at the start, JSON), ``config`` (the bench's
  resolved config and the caller's, JSON), ``calibration_id`` ("" without one), ``design_id`` (the
  fingerprint of the design the optics were made from, :func:`design_fingerprint`), ``faults`` (JSON:
  device faults met and retried, by kind, over every call) and ``invocations`` (calls that wrote it).

Nothing lost: rows are appended in HDF5's single-writer/multiple-reader mode, each flushed before
``count`` is raised, so a ``kill -9`` loses at most the frame in flight. Running :func:`capture` again
with the same ``out`` and indices continues after the last complete row (no gap, no duplicate); a
file its writer did not close, or a truncated one, is first recovered (its intact complete rows kept,
the count logged), with ``recapture_corrupt`` every complete frame is verified and one failing its
checksum is captured again. A foreign file, one for other indices, another design or calibration is
refused with a clear message and never touched. A full disk (any write error) stops the capture with
one :class:`~hil.data.errors.CaptureWriteError`, the complete rows kept.

Device faults: a transient failure (timeout, I/O error, stale frame) is retried, waiting
``retry_wait_s`` (doubling) between attempts, up to ``frame_retries`` further attempts per frame;
every failure is counted by device and kind. A device that stays down (disconnected, or failing
every attempt) stops the capture with the file closed and consistent: call again to continue.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from onn_core.errors import InputError

from .data.capture_writer import (CaptureWriter, corrupt_rows, create_capture_file, needs_recovery, recover,
                                  remove_stale_temporaries, set_attrs)
from .data.captures import CAPTURE_SCHEMA, check_identity, open_capture, read_rows
from .data.errors import CaptureFileError, DatasetError, TruncatedCaptureError

log = logging.getLogger(__name__)

#: Per-row datasets written besides ``frames`` and ``shown``, with their dtype.
ROW_FIELDS = {"labels": "i8", "indices": "i8", "exposure_s": "f8", "timestamp_s": "f8", "saturated_pixels": "i8"}
#: Packages whose versions a captures file records.
RECORDED_PACKAGES = ("onn-hil", "torch", "numpy", "h5py", "opencv-python", "pyserial", "slmsuite")
#: The ``labels`` entry of a sample whose target is not a class label (a segmentation mask, (1, H, W)):
#: its target is read back from the source dataset by its ``indices`` entry (:func:`row_label`).
DENSE_TARGET = -1
#: Fault kind of each transient device error class (by name).
FAULT_KINDS = {"DeviceTimeout": "timeout", "DeviceFault": "io_error", "StaleFrame": "stale"}


@dataclass
class CaptureSummary:
    """What :func:`capture` did: rows now in the file, rows added by this call, frames with
    saturated pixels and frames that stayed dark (both counted over this call), whether the file
    was recovered first, rows recaptured for a failed checksum, and the device faults met by this
    call by ``"device.kind"`` (``camera.timeout``, ``slm.io_error``, ``camera.stale``,
    ``camera.stale_frames_discarded``, ``camera.frame_index_gaps``, ...)."""

    path: Path
    count: int
    added: int
    saturated_frames: int
    dark_frames: int
    recovered: bool
    recaptured: list = field(default_factory=list)
    faults: dict = field(default_factory=dict)


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


def stratified_rows(labels: torch.Tensor, fraction: float, class_counts: dict[int, int]) -> torch.Tensor:
    """Rows of a capture (in capture order) forming a stratified ``fraction`` of a split whose classes
    have ``class_counts`` samples: the first ``round(fraction n_c)`` captured rows of every class."""
    rows = []
    for label, n in sorted(class_counts.items()):
        mine = torch.nonzero(labels == label).flatten()
        take = max(1, round(fraction * n))
        if take > len(mine):
            raise InputError(f"the capture holds {len(mine)} samples of class {label}, fewer than the {take} of "
                             f"fraction {fraction}: capture the largest fraction first")
        rows.append(mine[:take])
    return torch.sort(torch.cat(rows)).values


def uniform_indices(count: int, fraction: float, seed: int, *, exclude=()) -> np.ndarray:
    """A seeded uniform subset of ``range(count)`` (for targets without classes, e.g. segmentation
    masks): ``round(fraction * count)`` indices (at least one), drawn without the ``exclude`` indices,
    in a seeded random order (so that its first rows are a uniform subset too)."""
    if not 0 < float(fraction) <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(int(count)), np.asarray(list(exclude), dtype=np.int64))
    take = max(1, round(fraction * int(count)))
    if take > len(pool):
        raise InputError(f"{len(pool)} samples are left, fewer than the {take} asked for")
    return rng.permutation(rng.choice(pool, size=take, replace=False))


def row_label(target) -> int:
    """The ``labels`` entry of a sample's target: a class label as an int, or :data:`DENSE_TARGET` for a
    dense target (a mask), which a reader takes back from the source dataset by the row's index."""
    target = torch.as_tensor(target)
    return int(target) if target.numel() == 1 and target.ndim <= 1 else DENSE_TARGET


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


def design_id_of(system) -> str:
    """:func:`design_fingerprint` of an :class:`~simulator.system.OpticalSystem`'s design PSFs."""
    with torch.no_grad():
        return design_fingerprint(system.design.psfs().detach().cpu().numpy())


def check_design(path, design_id: str, calibration_id: str | None = None) -> None:
    """Refuse (:class:`CaptureFileError`) a captures file recorded through another design than
    ``design_id`` (or for another calibration than ``calibration_id``), or one recording none
    (:func:`hil.data.captures.check_identity`)."""
    f, _ = open_capture(path)
    with f:
        attrs = dict(f.attrs)
    check_identity(attrs, path, design_id=design_id, calibration_id=calibration_id)


def capture(bench, dataset, indices, out, *, calibration_id: str = "", design_id: str = "",
            config: dict | None = None, progress: bool = True, compression: str | None = "gzip",
            recapture_corrupt: bool = False, frame_retries: int = 8, retry_wait_s: float = 0.1) -> CaptureSummary:
    """Show ``dataset[i]`` for every ``i`` of ``indices`` on ``bench`` and append its frame to ``out``.

    Parameters
    ----------
    bench : drivers.Bench
    dataset
        Items ``(image (C, H, W) in [0, 1], label)``.
    indices : sequence of int
        The samples, in capture order.
    out : path
        The captures file; an existing one for the same ``indices``, design and calibration is
        continued (module docstring).
    calibration_id, design_id : str
        Recorded in the file; an existing file must record the same (each checked when given).
    config : dict, optional
        Recorded with the bench's resolved config.
    compression : {"gzip", "lzf", None}
        Of the frames of a new file (:data:`hil.data.capture_writer.COMPRESSIONS`).
    recapture_corrupt : bool
        Verify every complete frame of an existing file first and capture again those failing their
        checksum (else a corrupt frame is reported when read).
    frame_retries : int
        Further attempts per frame after a transient device failure.
    retry_wait_s : float
        Wait (s, bench clock) before the first retry of a frame, doubling for each further one.

    Raises
    ------
    CaptureFileError
        ``out`` is foreign, for other samples, another design or calibration, or unrecoverable.
    CaptureWriteError
        Writing failed (disk full, ...); the complete rows are kept.
    DeviceError
        A device stayed down (disconnected, or ``frame_retries`` retries failed); the file is closed
        and consistent: call again to continue.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0:
        raise InputError(f"indices must be a non-empty 1-D sequence of sample indices, got shape {indices.shape}")
    if len(np.unique(indices)) != len(indices):
        raise InputError("indices must not repeat a sample")
    if isinstance(frame_retries, bool) or not isinstance(frame_retries, int) or frame_retries < 0:
        raise InputError(f"frame_retries must be an integer >= 0, got {frame_retries!r}")
    out = Path(out)
    recovered = False
    if out.exists():
        remove_stale_temporaries(out)
        recovered = _prepare_existing(out, indices, design_id, calibration_id)
    else:
        _create(out, bench, indices, calibration_id, design_id, config, compression)
    summary = CaptureSummary(out, 0, 0, 0, 0, recovered)
    faults = _FaultCounter()
    bad = corrupt_rows(out) if recapture_corrupt else []
    try:
        with CaptureWriter(out) as writer, _retrying_here(bench):
            summary.count = writer.rows
            if bad:
                log.warning("%s: frames %s fail their checksum; capturing them again", out, bad)
            for row in bad:
                values = _capture_row(bench, dataset, int(indices[row]), faults, frame_retries, retry_wait_s, summary,
                                      file_rows=writer.rows)
                writer.rewrite(row, values)
                summary.recaptured.append(row)
            if writer.rows:
                log.warning("continuing %s after %d of %d frames", out, writer.rows, len(indices))
            from onn_core.progress import progress_bar

            with progress_bar(total=len(indices), initial=writer.rows, desc="capture", unit="frame", enabled=progress) as bar:
                for row in range(writer.rows, len(indices)):
                    values = _capture_row(bench, dataset, int(indices[row]), faults, frame_retries, retry_wait_s,
                                          summary, file_rows=writer.rows)
                    writer.append(values)
                    summary.count, summary.added = writer.rows, summary.added + 1
                    bar.update(1)
    except BaseException:
        _record_faults(out, faults, quiet=True)
        raise
    summary.faults = dict(faults)
    _record_faults(out, faults)
    if faults:
        log.warning("device faults met and retried: %s", ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    for what, n in (("with saturated pixels", summary.saturated_frames), ("that stayed dark", summary.dark_frames)):
        if n:
            log.warning("%d of %d frames captured %s (check camera.exposure_s in the bench YAML)", n, summary.added, what)
    return summary


class _FaultCounter(collections.Counter):
    """Faults by ``"device.kind"``, and the last frame index seen (for gaps)."""

    last_index: int | None = None

    def count_error(self, exc) -> None:
        self[f"{getattr(exc, 'device', None) or 'bench'}.{FAULT_KINDS.get(type(exc).__name__, type(exc).__name__)}"] += 1

    def count_measurement(self, measurement, camera: str) -> None:
        if measurement.stale_frames:
            self[f"{camera}.stale_frames_discarded"] += measurement.stale_frames
        index = measurement.frame.index
        if self.last_index is not None and index > self.last_index + 1 + measurement.stale_frames:
            self[f"{camera}.frame_index_gaps"] += 1
        self.last_index = index


@contextlib.contextmanager
def _retrying_here(bench):
    """Inside the block the bench makes one attempt per call: :func:`capture` retries, and counts
    every failure by kind."""
    saved, bench.retries = bench.retries, 0
    try:
        yield
    finally:
        bench.retries = saved


def _capture_row(bench, dataset, index: int, faults: _FaultCounter, retries: int, wait_s: float,
                 summary: CaptureSummary, *, file_rows: int) -> dict:
    """Show sample ``index`` and measure it (retrying transient failures); the row's values."""
    from drivers.bench import RETRYABLE

    image, label = dataset[index]
    shown = display_image(image, bench.slm)
    for attempt in range(retries + 1):
        try:
            measurement = bench.measure(shown)
            break
        except RETRYABLE as exc:
            faults.count_error(exc)
            if attempt == retries:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"capture stopped: {retries + 1} attempts at sample {index} failed; the file holds "
                                 f"{file_rows} complete frames; run the capture again to continue")
                raise
            bench.clock.sleep(wait_s * 2 ** attempt)
    faults.count_measurement(measurement, bench.camera.name)
    frame = measurement.frame
    saturated = int(np.count_nonzero(frame.image >= bench.camera.saturation_dn))
    summary.saturated_frames += saturated > 0
    summary.dark_frames += _is_dark(frame.image, bench.camera)
    return {"frames": frame.image, "shown": shown, "labels": row_label(label), "indices": index,
            "exposure_s": frame.exposure_s, "timestamp_s": frame.timestamp_s, "saturated_pixels": saturated}


def _is_dark(image: np.ndarray, camera) -> bool:
    """True when no pixel rises above the black level by more than 1 % of the range."""
    black = float(camera.black_level)
    return float(image.max()) - black <= 0.01 * (float(camera.saturation_dn) - black)


def _create(out: Path, bench, indices: np.ndarray, calibration_id: str, design_id: str, config, compression) -> None:
    """A new captures file with no rows (frame format from one blank measurement)."""
    frame = bench.measure(np.zeros(bench.slm.shape, bench.slm.dtype)).frame
    row_fields = {"shown": (tuple(bench.slm.shape), bench.slm.dtype), **{k: ((), v) for k, v in ROW_FIELDS.items()}}
    attrs = {"created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "versions": _versions(), "settings": json.loads(json.dumps(bench.settings(), default=str)),
             "config": {"bench": getattr(bench, "config", None), "capture": config},
             "calibration_id": calibration_id, "design_id": design_id, "content": "frames"}
    create_capture_file(out, frame_shape=frame.image.shape, frame_dtype=frame.image.dtype, row_fields=row_fields,
                        planned=indices, attrs=attrs, compression=compression)


def check_continuable(out) -> tuple[bool, int, int]:
    """Refuse (:class:`CaptureFileError`) an existing ``out`` that no capture can continue: not HDF5, not
    a captures file, or damaged with no row left readable. Returns ``(needs recovery, complete rows,
    intact rows)`` (:func:`hil.data.capture_writer.needs_recovery`). Cheap: call it before opening a
    bench to report a bad file at once."""
    out = Path(out)
    try:
        f, _ = open_capture(out)
    except CaptureFileError:
        raise
    except DatasetError as exc:
        raise CaptureFileError(f"{out} exists but is not a readable HDF5 file ({exc.__cause__ or exc}); it was "
                               "left untouched: move it away or choose another output path") from exc
    with f:
        schema = f.attrs.get("schema")
        if schema != CAPTURE_SCHEMA or "planned" not in f or "count" not in f:
            raise CaptureFileError(f"{out} is not a captures file of this toolkit (schema {schema!r}); "
                                   "it was left untouched: choose another output path")
    damaged, count, intact = needs_recovery(out)
    if damaged and count and not intact:
        raise TruncatedCaptureError(out, count, 0, "nothing readable; it was left untouched")
    return damaged, count, intact


def _prepare_existing(out: Path, indices: np.ndarray, design_id: str, calibration_id: str) -> bool:
    """Refuse a file this capture must not continue; recover one its writer did not close or that lost
    its end. Returns whether it was recovered."""
    damaged, count, intact = check_continuable(out)
    f, _ = open_capture(out)
    with f:
        planned = np.asarray(read_rows(f, "planned", slice(None), out))
        if not np.array_equal(planned, indices):
            raise CaptureFileError(f"{out} was started for other samples ({len(planned)} planned, first "
                                   f"{planned[:3].tolist()}); this capture asks for {len(indices)} (first "
                                   f"{indices[:3].tolist()}): choose another output path")
        check_identity(dict(f.attrs), out, design_id=design_id or None, calibration_id=calibration_id or None)
    if not damaged:
        return False
    log.warning("%s was left open by a writer that did not close it (killed?) or lost its end: %d of its %d "
                "complete rows are intact; recovering them", out, intact, count)
    recover(out)
    return True


def _record_faults(out: Path, faults: collections.Counter, quiet: bool = False) -> None:
    """Add this call's faults (and one invocation) to the file's ``faults`` and ``invocations``. A file
    that cannot take them is logged, at debug level with ``quiet`` (while another error, which says
    why, stops the capture)."""
    from .data.errors import CaptureWriteError

    try:
        f, state = open_capture(out)
        with f:
            total = collections.Counter(json.loads(f.attrs.get("faults", "{}")))
            invocations = int(f.attrs.get("invocations", 0))
        if state is not None and not state.healthy:
            return  # its writer stopped mid-row: the next call recovers it first
        set_attrs(out, {"faults": dict(total + faults), "invocations": invocations + 1})
    except (DatasetError, CaptureWriteError) as exc:
        log.log(logging.DEBUG if quiet else logging.WARNING, "could not record the faults in %s: %s", out, exc)


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


__all__ = ["DENSE_TARGET", "CaptureFileError", "CaptureSummary", "capture", "check_continuable", "check_design",
           "design_fingerprint", "design_id_of", "display_image", "row_label", "stratified_indices", "stratified_rows",
           "uniform_indices"]
