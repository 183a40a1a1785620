"""The calibration file: one HDF5 file per calibration, written once, read with checks.

Layout: root attributes ``schema`` (:data:`SCHEMA`), ``schema_version``, ``calibration_id``,
``created_utc``, ``saved_utc``, ``toolkit_version``, ``versions_json`` (Python and dependency
versions), ``bench_settings_json`` (the devices' settings while measuring), ``config_json`` (the
resolved calibration config), ``optics_json`` (the nominal optical system), ``stages`` and, when stages
were copied from an earlier calibration, ``provenance_json`` (:attr:`Calibration.provenance`: its
``calibration_id``, file and the stages copied); one group
per stage (``sensor``, ``display``, ``geometry``, ``psf``, ``fit``), each with its own schema name and
version, written by the codec of :mod:`calibration.hdf5` (datasets with Fletcher-32 checksums).
Version 2 (this one) added the checksums and the fit's own schema; version 1 files are refused.

Writing is atomic (a temporary file in the same folder, flushed, then renamed) and never replaces an
existing file: an earlier calibration stays as it was. A **partial** calibration
(:func:`save_partial`: the calibration so far, written after every stage by
:func:`calibration.api.calibrate` with ``progress_file``, conventionally :data:`PARTIAL_NAME` beside the
final file) has the same layout plus the root attributes ``partial`` (true) and ``stages_done``; it
replaces its previous self atomically, and :func:`save_calibration` removes it once the finished file
is written. :func:`load_calibration` refuses a partial file unless ``partial_ok`` (saying how to
resume). Reading refuses, with
:class:`~calibration.errors.CalibrationFileError`, a file that is not HDF5 or is truncated, one of
another schema or version, one missing a stage it lists, and one whose data fail their checksums
(naming the dataset); given the bench, it refuses a
calibration of another frame or display size and warns about every device setting that differs
from those it was measured with.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

import h5py

from onn_core import config as config_io

from .display_response import DisplayCalibration
from .errors import CalibrationFileError
from .fit import MismatchFit
from .geometry import GeometryCalibration
from .psf import PSFMeasurement
from .result import STAGES, Calibration, changed_settings
from .sensor import SensorCalibration

log = logging.getLogger(__name__)

SCHEMA, SCHEMA_VERSION = "onn_hil.calibration", 2
_STAGE_TYPES = {"sensor": SensorCalibration, "display": DisplayCalibration, "geometry": GeometryCalibration,
                "psf": PSFMeasurement, "fit": MismatchFit}
_JSON_ATTRS = ("bench_settings", "config", "optics")
#: Settings whose change does not matter to a calibration (per device).
#: The file name of the finished calibration in an output folder, and of the partial one beside it.
FILE_NAME, PARTIAL_NAME = "calibration.h5", "calibration.partial.h5"


def versions() -> dict:
    """Python, toolkit and dependency versions (recorded with every calibration)."""
    out = {"python": platform.python_version()}
    for name in ("onn-hil", "torch", "numpy", "h5py", "opencv-python", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def save_calibration(calibration: Calibration, path, *, partial_file=None) -> Path:
    """Write ``calibration`` to ``path`` (a new file; an existing one is refused, never replaced).
    ``partial_file``: its progress file (:func:`save_partial`), removed once ``path`` is written (left
    alone, with a warning, when it holds another calibration)."""
    path = Path(path)
    if path.exists():
        raise CalibrationFileError(f"{path} exists: a calibration is never overwritten; choose a new file name")
    _write(calibration, path, partial=False)
    log.info("calibration %s written to %s", calibration.calibration_id, path)
    if partial_file is not None and Path(partial_file).is_file():
        found = partial_identity(partial_file)
        if found == calibration.calibration_id:
            Path(partial_file).unlink()
        else:
            log.warning("%s is not the progress of calibration %s (it holds %s): left as it is", partial_file,
                        calibration.calibration_id, found)
    return path


def save_partial(calibration: Calibration, path) -> Path:
    """Write the calibration so far (its stages done) to ``path``, marked partial, atomically replacing
    the partial file of the same calibration there (a finished calibration, or a partial one of another
    calibration, is refused: never replaced)."""
    path = Path(path)
    if path.exists():
        found = partial_identity(path)
        if found != calibration.calibration_id:
            held = "a finished calibration" if found is None else f"partial calibration {found}"
            raise CalibrationFileError(f"{path} holds {held}, not the progress of calibration "
                                       f"{calibration.calibration_id}: it is not replaced; choose another file")
    _write(calibration, path, partial=True)
    log.info("calibration %s so far (stages %s) saved in %s", calibration.calibration_id,
             ", ".join(calibration.stages), path)
    return path


def partial_identity(path) -> str | None:
    """The ``calibration_id`` of the partial calibration file ``path``; None for a finished one (or a
    file that is no calibration at all)."""
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("partial", False):
                return None
            return str(f.attrs.get("calibration_id"))
    except OSError:
        return None


def _write(calibration: Calibration, path: Path, *, partial: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with h5py.File(temporary, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["calibration_id"] = calibration.calibration_id
            f.attrs["created_utc"] = calibration.created_utc
            f.attrs["saved_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.attrs["toolkit_version"] = versions()["onn-hil"] or "unknown"
            f.attrs["versions_json"] = json.dumps(versions())
            for name in _JSON_ATTRS:
                f.attrs[f"{name}_json"] = json.dumps(config_io.to_plain(getattr(calibration, name)))
            if calibration.provenance:
                f.attrs["provenance_json"] = json.dumps(config_io.to_plain(calibration.provenance))
            f.attrs["stages"] = json.dumps(calibration.stages)
            if partial:
                f.attrs["partial"] = True
                f.attrs["stages_done"] = json.dumps(calibration.stages)
            for stage in calibration.stages:
                getattr(calibration, stage).to_hdf5(f.create_group(stage))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        if not partial and path.exists():  # appeared meanwhile
            raise CalibrationFileError(f"{path} appeared while writing; the new calibration is left in {temporary}")
        os.replace(temporary, path)
    except BaseException:
        if temporary.exists() and (partial or not path.exists()):
            temporary.unlink()
        raise


def load_calibration(path, bench=None, *, partial_ok: bool = False) -> Calibration:
    """Read a calibration file (module docstring for the checks); ``bench``: the bench it will be
    used on, checked against the one it was measured on. A partial file (:func:`save_partial`) is
    refused unless ``partial_ok`` (to resume it, or reuse its measurements)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(f"{path}: no such calibration file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CalibrationFileError(f"{path} is not a readable HDF5 file (truncated or foreign): {exc}") from exc
    with f:
        schema = f.attrs.get("schema")
        schema = schema.decode() if isinstance(schema, bytes) else schema
        if schema != SCHEMA:
            raise CalibrationFileError(f"{path} is not a calibration file (schema {schema!r}, expected {SCHEMA!r})")
        version = int(f.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise CalibrationFileError(f"{path} is calibration schema version {version}; this toolkit reads "
                                       f"{SCHEMA_VERSION}: calibrate again (hil calibrate) to get a file it reads")
        if f.attrs.get("partial", False) and not partial_ok:
            done = f.attrs.get("stages_done", "[]")
            raise CalibrationFileError(
                f"{path} is a partial calibration (stages done: {', '.join(json.loads(done)) or 'none'}), not a "
                "finished one: rerun the same `hil calibrate CONFIG --out DIR` (or `hil run`) to continue it from "
                "the first missing stage, or fit its measurements into a new folder with "
                f"`hil calibrate CONFIG --out NEWDIR --stages fit --from {path}`")
        try:
            stages = json.loads(f.attrs["stages"])
            values = {name: json.loads(f.attrs[f"{name}_json"]) for name in _JSON_ATTRS}
            values.update(created_utc=str(f.attrs["created_utc"]), calibration_id=str(f.attrs["calibration_id"]))
            values["provenance"] = json.loads(f.attrs["provenance_json"]) if "provenance_json" in f.attrs else {}
            for stage in stages:
                if stage not in STAGES or stage not in f:
                    raise CalibrationFileError(f"{path}: stage {stage!r} listed but missing (truncated file?)")
                values[stage] = _STAGE_TYPES[stage].from_hdf5(f[stage])
        except (KeyError, ValueError, OSError) as exc:
            if isinstance(exc, CalibrationFileError):
                raise
            raise CalibrationFileError(f"{path}: incomplete or corrupted calibration file ({exc})") from exc
    calibration = Calibration(**values)
    if bench is not None:
        check_bench(calibration, bench)
    return calibration


def check_bench(calibration: Calibration, bench) -> list[str]:
    """Refuse a calibration of another frame or display size; warn about (and return) each device
    setting that differs from those it was measured with."""
    measured = calibration.bench_settings
    now = config_io.to_plain(bench.settings())
    system = calibration.nominal_system()
    if tuple(bench.camera.shape) != system.frame_shape or tuple(bench.slm.shape) != system.image_shape:
        raise CalibrationFileError(
            f"calibration {calibration.calibration_id} is of a bench with a {system.frame_shape} frame and a "
            f"{system.image_shape} display; this bench has {tuple(bench.camera.shape)} and {tuple(bench.slm.shape)}")
    changed = changed_settings(measured, now)
    if changed:
        log.warning("calibration %s was measured with other device settings: %s (restore them in the bench YAML, "
                    "or calibrate again with hil calibrate)", calibration.calibration_id, "; ".join(changed))
    return changed


__all__ = ["FILE_NAME", "PARTIAL_NAME", "SCHEMA", "SCHEMA_VERSION", "check_bench", "load_calibration", "partial_identity",
           "save_calibration", "save_partial", "versions"]
