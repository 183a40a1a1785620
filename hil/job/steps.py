"""The steps of the ``hil run`` job, each a plain function a bench script can call on its own (see
``examples/hil_job.py``), and :data:`STEPS`, the table :func:`hil.job.runner.run_job` runs in order.

=================  ===========================================================================
step               writes (inside the run folder)
=================  ===========================================================================
:func:`train_models`     ``student/`` (a ``hil train`` run, or the given trained run is used as is),
                         ``teacher/`` when an NTKD method is asked for and no checkpoint is given
:func:`export`           ``design/`` (``kernels.npy`` + ``optics.yaml``, :func:`hil.export.export_design`)
:func:`bench_config`     ``bench.yaml``: the bench config; on a simulated bench its camera looks
                         through the exported design with the fabrication errors of ``fabrication``;
                         its ``camera.locate`` the run's ``grid.yaml`` once the locate step wrote one
:func:`locate_design`    ``locate.json`` (what was done or why nothing was), and, when the bench's
                         camera names a ``locate`` file that does not exist yet, ``grid.yaml`` +
                         ``grid.png`` (:func:`calibration.locate.locate_into`, as ``hil locate``)
:func:`calibrate_bench`  ``calibration.h5`` (:func:`calibration.calibrate`, never overwritten;
                         ``calibration.partial.h5`` while it runs, each stage saved as it finishes)
                         and its report ``calibration/report.md`` (+ ``report.json``, PNGs)
:func:`capture_sets`     ``captures/train.h5`` (the largest captured fraction of the training split;
                         the smaller fractions are its first rows of every class, so nested),
                         ``captures/val.h5`` (captured validation images) and ``captures/test.h5``
                         (the held-out captured test set), at an exposure chosen from the calibration
                         (``captures/exposure.json``), each refused when too many pixels clip;
                         :func:`capture_perfect`: ``captures/test_perfect.h5`` (error-free optics)
:func:`finetune_all`     ``finetune/<method>_<fraction>.pt`` + ``finetune.json`` (one entry per method,
                         fraction and seed, written as each finishes; the ``design_ft`` control too)
:func:`evaluate`         ``evaluation.json``: design accuracy (simulation; the task's metric, mean
                         IoU for segmentation: :mod:`hil.job.task`), the controls, uncompensated
                         (nominal features, no calibration), calibration layer only, and every
                         fine-tuned backend
:func:`hil.job.report.report`  ``report.json``, ``summary.md``, ``psfs.png``, ``accuracy.png``, ``curves.png``,
                         ``design.png``
=================  ===========================================================================

A step stopped midway resumes: training from its checkpoint, calibration after its last finished
stage, a capture after its last complete frame, fine-tuning after its last finished method.

The compensation methods (:data:`hil.finetune.COMPENSATIONS`): ``e2e`` (task loss on the real captures
read through the calibration layer), ``ntkd`` (task + NTK distillation from a teacher that sees the raw
images of the same samples), each of the two with **synthetic captures** added: training images
that were not captured, rendered through the calibrated forward model and read through the same layer
(:func:`hil.finetune.synthetic_features`), and each on the nominal features of the captures without
the layer (``e2e_nominal``, ``ntkd_nominal``). Every method, and the ``design_ft`` control
(:mod:`hil.job.controls`), gets the same fixed number of optimiser steps, learning rate, batch size
and seeds, and keeps the backend best on the captured validation images. The NTKD methods run only
with a teacher ``finetune.teacher_margin`` above the design.

Identity: a calibration is used only with the design it was measured against and a fine-tuned backend
only with the design and calibration it was trained on (:class:`JobMismatchError` otherwise); a
capture file only with its design and calibration (:class:`hil.data.errors.CaptureFileError`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import yaml

from calibration.api import calibrate
from calibration.file import FILE_NAME as CALIBRATION_FILE
from calibration.file import PARTIAL_NAME as CALIBRATION_PARTIAL
from calibration.file import load_calibration, save_calibration
from calibration.locate import GridLocation, locate_into
from drivers.bench_fits import check_bench_fits
from drivers.clock import make_clock
from drivers.config import open_bench
from drivers.exposure import exposure_held
from onn_core.config import load_yaml, to_plain
from onn_core.errors import ConfigError, HilError, InputError
from onn_core.files import atomic_write, resolve_relative
from simulator.system import OpticalSystem

from ..api import train, train_val_indices
from ..capture import capture, design_fingerprint
from ..checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_model, model_config_of
from ..data import build_datasets
from ..data.captures import CaptureDataset
from ..data.errors import CaptureFileError
from ..export import export_design
from ..finetune import COMPENSATIONS, CapturedSet, finetune, read_synthetic, synthetic_features, write_synthetic
from .config import FinetuneStep, Job, bench_settings, fabrication_errors, job_device, training_config
from .disk import bench_frame_bytes, check_free_space
from .controls import DESIGN_FT, PERFECT_CAPTURE, nominal_set, ntkd_methods, teacher_check
from .exposure import check_clipping, choose_exposure, clipping
from .report import CALIBRATION_REPORT_DIR, REPORT_FILES, report
from .state import write_json
from .task import job_task

log = logging.getLogger(__name__)


class JobMismatchError(HilError):
    """A calibration, capture or fine-tuned backend belongs to another design or calibration."""


# ------------------------------------------------------------------------------------------ models
def train_models(job: Job) -> dict:
    """Train (or locate) the student and, for NTKD, the teacher; returns ``{"student": run dir,
    "teacher": run dir or checkpoint, or None}``."""
    cfg, out = job.config, {}
    for role in ("teacher", "student"):
        step = getattr(cfg, role)
        if step is None or (role == "teacher" and not cfg.needs_teacher):
            out[role] = None
            continue
        if step.run_dir or step.checkpoint:
            out[role] = str(job.path(step.run_dir or step.checkpoint))
            continue
        run_dir = job.run_dir / role
        metrics = run_dir / "metrics.json"
        if not metrics.is_file() or "test" not in json.loads(metrics.read_text()):
            log.info("training the %s in simulation into %s", role, run_dir)
            train(training_config(job, role), run_dir)
        out[role] = str(run_dir)
    if not Path(out["student"]).is_dir():
        raise ConfigError("student.run_dir", out["student"], "a run folder of `hil train`")
    return out


def model_sources(job: Job) -> list[Path]:
    """What :func:`train_models` produces or uses: the role folders trained inside the run folder, the
    checkpoint files of given runs."""
    out = []
    for role in ("student", "teacher"):
        step = getattr(job.config, role)
        if step is None or (role == "teacher" and not job.config.needs_teacher):
            continue
        given = step.run_dir or step.checkpoint
        out.append(find_checkpoint(job.path(given)) if given else job.run_dir / role)
    return out


def student_model_config(job: Job) -> dict:
    """The student's ``model`` config section: from its ``hil train`` config (with the ``set``
    overrides), or from the checkpoint of the given run."""
    step = job.config.student
    if step.config is not None:
        return training_config(job, "student").model
    checkpoint = find_checkpoint(job.path(step.run_dir or step.checkpoint))
    try:
        return model_config_of(load_checkpoint(checkpoint), checkpoint)
    except CheckpointError as exc:
        raise ConfigError("student.run_dir", step.run_dir, f"a `hil train` run ({exc})") from exc


# ------------------------------------------------------------------------------------------ design
def export(job: Job, student_run) -> Path:
    """Export the student's optics into ``design/``; returns its ``optics.yaml``."""
    return export_design(student_run, job.run_dir / "design")


def design_config(design_optics: Path) -> dict:
    """The exported design's optics mapping with its design file's path made absolute (so that the
    systems built from it, and the calibration that records it, work from any folder)."""
    optics = load_yaml(design_optics)
    optics["design"]["path"] = str((Path(design_optics).parent / optics["design"]["path"]).resolve())
    return optics


def design_identity(design_optics: Path) -> tuple[OpticalSystem, str]:
    """The nominal system of an exported design and its fingerprint (:func:`hil.capture.design_fingerprint`)."""
    system = OpticalSystem.from_config(design_config(design_optics))
    return system, design_fingerprint(system.design.psfs().detach())


# ------------------------------------------------------------------------------------------ bench
def bench_config(job: Job, design_optics: Path, *, fabricated: bool = True) -> dict:
    """The bench mapping the job opens (also written to ``bench.yaml``): the config's bench; if its
    camera is simulated, looking through the exported design with ``fabrication``'s errors (the
    ``errors`` section of that optics file; none: the design itself); if its camera names a
    ``locate`` file and the locate step wrote the run's ``grid.yaml``, that one. ``fabricated`` False: the
    design without errors (the ``perfect_fabrication`` control's bench; not written)."""
    bench = bench_settings(job)
    camera = bench.get("camera") or {}
    if camera.get("backend") == "simulated-camera":
        optics = design_config(design_optics)
        errors = fabrication_errors(job) if fabricated else None
        if errors is not None:
            optics["errors"] = errors
        camera["optics"] = optics
        bench["camera"] = camera
    elif job.config.fabrication is not None and fabricated:
        log.warning("fabrication %s ignored: the bench's camera is real (%s); set fabrication: null in the run YAML",
                    job.config.fabrication, camera.get("backend"))
    if camera.get("locate") is not None and (job.run_dir / LOCATION_FILE).is_file():
        camera["locate"] = str(job.run_dir / LOCATION_FILE)  # located by the job's locate step for this design
    if fabricated:
        with atomic_write(job.run_dir / "bench.yaml", "w") as fh:
            yaml.safe_dump(bench, fh, sort_keys=False)
    return bench


def simulated_bench(job: Job) -> bool:
    """Whether the job's bench camera is simulated (so that the optics it looks through can be chosen)."""
    return (bench_settings(job).get("camera") or {}).get("backend") == "simulated-camera"


def open_job_bench(job: Job, bench: dict, *, located: bool = True):
    """Open the job's bench (relative paths in its config resolve against the config's bench file);
    ``located`` False: the camera's own frames, whatever ``camera.locate`` says."""
    clock = make_clock(job.config.clock) if job.config.clock is not None else None
    return open_bench(_with_base(bench, job.path(job.config.bench).parent), clock=clock, located=located)


# ------------------------------------------------------------------------------------------ location
LOCATION_FILE = "grid.yaml"


def bench_location_file(job: Job) -> Path | None:
    """The `hil locate` file the bench file's camera names (``camera.locate``, relative to the bench
    file), or None when it names none."""
    locate = (bench_settings(job).get("camera") or {}).get("locate")
    if locate is None:
        return None
    if not isinstance(locate, str):
        raise ConfigError("camera.locate", locate, "the path of a `hil locate` file (e.g. grid.yaml)")
    return resolve_relative(locate, job.path(job.config.bench).parent).resolve()


def locate_design(job: Job, design_optics: Path, system) -> dict:
    """Find the exported design's tile grid in the camera frame when the bench's camera names a
    ``locate`` file that does not exist yet (a camera frame larger than the design's, the grid not
    yet located): the bench opened on its camera's own frames shows the patterns of ``hil locate``
    (:func:`calibration.locate.locate_into`), and the location goes into the run folder's
    ``grid.yaml`` (with ``grid.png``), which the job's bench then uses as ``camera.locate``
    (:func:`bench_config`): the location belongs to this run's design, so the file the bench names
    is not written (nor shared between runs). A bench without ``camera.locate``, or whose file
    exists (used as is), is left alone, unless that file was located for another design frame (an
    older design): then the grid is located again into the run folder, with a warning. Returns and writes the record ``locate.json``
    (``skipped``: why nothing was done). A grid not found raises
    :class:`calibration.locate.LocateError` naming the run folder's ``grid.png``, which shows the frame."""
    named = bench_location_file(job)
    output = job.run_dir / LOCATION_FILE
    located_for = located_design_shape(named) if named is not None and named.is_file() else None
    other = located_for not in (None, system.frame_shape)
    if named is None:
        record = {"skipped": "the bench's camera names no locate file (its frames are the design's)"}
    elif named.is_file() and not other:
        record = {"skipped": f"the bench's camera.locate file {named} exists: used as is", "grid": str(named)}
    else:
        why = (f"was located for a design frame of {located_for}, this design's is "
               f"{system.frame_shape}" if other else "does not exist")
        log.log(logging.WARNING if other else logging.INFO, "locating the design's grid in the camera frame into "
                "%s (the bench's camera.locate, %s, %s)", output, named, why)
        with open_job_bench(job, bench_config(job, design_optics), located=False) as bench:
            location = locate_into(bench, system, output)
        record = {"grid": str(output), "bench_file": f"{named} {why}", "picture": str(output.with_suffix(".png")), "roi": list(location.roi),
                  "frame_shape": list(location.frame_shape), "magnification": location.magnification,
                  "rotation_deg": float(np.degrees(location.rotation_rad)), "mirror": bool(location.mirror),
                  "spots": location.spots, "residual_rms_px": location.residual_rms_px}
    write_json(job.run_dir / "locate.json", record)
    if "skipped" in record:
        log.info("step locate skipped: %s", record["skipped"])
    return record


def located_design_shape(path: Path) -> tuple[int, int] | None:
    """The design frame (rows, cols) a `hil locate` file was located for; None for a file that is not one
    (the bench names it when it opens)."""
    try:
        return tuple(GridLocation.load(path).design_shape)
    except ConfigError:
        return None


def _with_base(bench: dict, base: Path) -> dict:
    """``bench`` with relative file paths (``lut_file``, ``optics``, a camera's ``locate`` file) made absolute."""
    out = copy.deepcopy(bench)
    for device in ("slm", "camera", "light"):
        section = out.get(device) or {}
        for key in ("lut_file", "optics", "locate"):
            if isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
                section[key] = str((base / section[key]).resolve())
    return out


# ------------------------------------------------------------------------------------------ calibration
def calibrate_bench(job: Job, bench, system, *, progress: bool = True):
    """Calibrate ``bench`` against the nominal design ``system`` into ``calibration.h5`` (kept if it
    exists: loaded and checked against the bench and the design instead) on the job's ``device``;
    returns the :class:`calibration.api.Calibration`. Every stage is saved as it finishes in
    ``calibration.partial.h5``, from which a stopped job continues (the stages whose settings changed
    measured again; a partial file of another bench or design is refused, naming it), removed once
    ``calibration.h5`` is written; the calibration report (:func:`calibration.report.write_report`:
    ``report.md``, ``report.json``, the PNGs) goes into ``calibration/``, apart from the job's own
    report. A failed geometry stage saves its annotated frame into the run folder
    (``geometry_failure.png``, :mod:`calibration.geometry.overlay`) and its
    :class:`~calibration.errors.CalibrationError` names it."""
    path = job.run_dir / CALIBRATION_FILE
    if path.is_file():
        calibration = load_calibration(path, bench=bench)
        check_calibration_design(calibration, path, design_fingerprint(system.design.psfs().detach()))
        return calibration
    settings = {**job.config.calibration, "device": str(job_device(job))}
    partial = job.run_dir / CALIBRATION_PARTIAL
    calibration = calibrate(bench, system, settings, diagnostics_dir=job.run_dir, progress_file=partial,
                            progress=progress)
    save_calibration(calibration, path, partial_file=partial)
    from calibration.report import write_report  # matplotlib: only when a calibration was made

    write_report(calibration, job.run_dir / CALIBRATION_REPORT_DIR)
    return calibration


def load_job_calibration(job: Job, design_id: str):
    """The run's ``calibration.h5``, refused unless it was measured against the design ``design_id``."""
    path = job.run_dir / CALIBRATION_FILE
    if not path.is_file():
        raise InputError(f"no calibration at {path}: run the calibrate step first (hil run --from calibrate)")
    calibration = load_calibration(path)
    check_calibration_design(calibration, path, design_id)
    return calibration


def check_calibration_design(calibration, path: Path, design_id: str) -> None:
    """Refuse (:class:`JobMismatchError`) a calibration measured against another design than ``design_id``."""
    measured = design_fingerprint(calibration.nominal_system().design.psfs().detach())
    if measured != design_id:
        raise JobMismatchError(f"{path} is calibration {calibration.calibration_id} of design {measured}, not of this "
                               f"run's design {design_id}: calibrate again (hil run --from calibrate)")


# ------------------------------------------------------------------------------------------ data and capture
def datasets(job: Job):
    """``(train split, test split)`` of the job's dataset (datasets with ``tensors`` = (images in [0, 1],
    targets: labels, or masks for segmentation, :mod:`hil.job.task`): the bench script's
    ``job.datasets``, or ``config.data`` (``root`` relative to the config file), loaded once."""
    if job.datasets is None:
        data = dict(job.config.data)
        if data.get("root") is not None:
            data["root"] = str(job.path(data["root"]))
        train_split, test_split, _ = build_datasets(data, job_task(job).name)
        if test_split is None:
            raise ConfigError("data.dataset", data.get("dataset"), "a dataset with a test split")
        job.datasets = (train_split, test_split)
    return job.datasets


def capture_plan(job: Job, train_labels, test_labels) -> dict:
    """The seeded samples the job captures, stratified by class (uniform for segmentation:
    :meth:`hil.job.task.Task.sample`): ``{"train": indices, "test": indices, "val": indices}``; the
    validation images are neither captured for training nor seen by the student
    (:func:`student_training_rows`)."""
    c, task = job.config.capture, job_task(job)
    if not 0 < c.test_size <= len(test_labels):
        raise ConfigError("capture.test_size", c.test_size, f"a number in [1, {len(test_labels)}] (the size of the "
                          "dataset's test split)")
    plan = {"train": task.sample(train_labels, max(c.fractions), c.seed),
            "test": task.sample(test_labels, c.test_size / len(test_labels), c.seed + 1)}
    if c.val_size:
        seen = np.union1d(plan["train"], student_training_rows(job, len(train_labels)))
        if c.val_size > len(train_labels) - len(seen):
            raise ConfigError("capture.val_size", c.val_size, f"at most {len(train_labels) - len(seen)} (the training "
                              "images neither captured for training nor seen by the student)")
        plan["val"] = task.sample(train_labels, c.val_size / len(train_labels), c.seed + 2, exclude=seen)
    return plan


def student_training_rows(job: Job, size: int) -> np.ndarray:
    """Indices of the job's training split (``size`` images) that the student trains or trained on: the
    seeded split of its run config (:func:`hil.api.train_val_indices`); none when it trained on another
    dataset or its checkpoint does not record its data. The validation captures avoid them: a
    fine-tuned backend chosen on images the design memorised would be one that stays close to the design."""
    step = job.config.student
    if step.config:
        config = to_plain(training_config(job, "student"))
    else:
        given = job.path(step.run_dir or step.checkpoint)
        config = load_yaml(given / "config.yaml") if (given / "config.yaml").is_file() else \
            load_checkpoint(find_checkpoint(given))["config"]
    data = config.get("data")
    if not data or "seed" not in config or data.get("dataset") != (job.config.data or {}).get("dataset", "fashion_mnist"):
        return np.zeros(0, np.int64)  # a checkpoint that does not say, or another dataset
    train, _ = train_val_indices(size, data["val_size"], data.get("train_subset"), config["seed"])
    return np.asarray(train, np.int64)


def capture_splits(job: Job) -> dict:
    """The source split of every capture set: ``{"train": train split, "val": train split, "test": test split}``."""
    train_split, test_split = datasets(job)
    return {"train": train_split, "val": train_split, "test": test_split}


def capture_sets(job: Job, bench, calibration, design_id: str, progress: bool = True) -> dict:
    """Capture the planned training, validation and test samples (resumable; refused before the first
    frame when the run folder's disk cannot hold them: :func:`hil.job.disk.check_free_space`) at the
    exposure :func:`hil.job.exposure.choose_exposure` picks; returns per set its frames, clipped-pixel
    and clipped-frame fractions (:func:`hil.job.exposure.clipping`) and dark frames, and the exposure.
    A set with too many clipped pixels is refused (:class:`hil.job.exposure.ClippedCaptureError`)."""
    train_split, test_split = datasets(job)
    plan = capture_plan(job, train_split.tensors[1].numpy(), test_split.tensors[1].numpy())
    splits = capture_splits(job)
    check_free_space(job.run_dir, sum(len(rows) for rows in plan.values()), bench_frame_bytes(bench))
    c = job.config.capture
    folder = job.run_dir / "captures"
    images = torch.cat([splits[name].tensors[0][torch.from_numpy(rows)] for name, rows in plan.items()])
    exposure = choose_exposure(bench, calibration, images, headroom=c.headroom, exposure_s=c.exposure_s, out_dir=folder)
    out = {"exposure": exposure}
    with exposure_held(bench.camera):
        bench.camera.exposure_s = exposure["exposure_s"]
        for split, rows in plan.items():
            path = folder / f"{split}.h5"
            summary = capture(bench, splits[split], rows, path, calibration_id=calibration.calibration_id,
                              design_id=design_id, config={"split": split, **to_plain(c)}, progress=progress)
            stats = clipping(path)
            out[split] = {"frames": summary.count, **stats, "dark_frames": summary.dark_frames}
            check_clipping(path, stats, limit=c.max_clipped_fraction, exposure_s=exposure["exposure_s"])
    return out


def capture_perfect(job: Job, design_id: str, exposure_s: float, progress: bool = True) -> dict | None:
    """The ``perfect_fabrication`` control's capture: the planned test images on the job's bench with
    no fabrication errors, at the capture exposure, into ``captures/test_perfect.h5`` (resumable);
    returns its frames and clipping, or None (nothing captured) when the bench's camera is real or the
    job has no ``fabrication``."""
    if job.config.fabrication is None or not simulated_bench(job):
        return None
    train_split, test_split = datasets(job)
    rows = capture_plan(job, train_split.tensors[1].numpy(), test_split.tensors[1].numpy())["test"]
    path = job.run_dir / PERFECT_CAPTURE
    config = bench_config(job, job.run_dir / "design" / "optics.yaml", fabricated=False)
    with open_job_bench(job, config) as bench:
        bench.camera.exposure_s = exposure_s
        summary = capture(bench, test_split, rows, path, design_id=design_id,
                          config={"split": "test_perfect", **to_plain(job.config.capture)}, progress=progress)
    return {"frames": summary.count, **clipping(path), "dark_frames": summary.dark_frames}


# ------------------------------------------------------------------------------------------ fine-tuning
def fraction_key(fraction: float) -> str:
    """The key of a captured fraction in the results (``0.01`` -> ``"0.01"``)."""
    return f"{fraction:g}"


def check_backend_identity(entry: dict, file: Path, design_id: str, calibration_id: str) -> None:
    """Refuse (:class:`JobMismatchError`) a fine-tuned backend entry trained on another design or calibration."""
    for name, expected in (("design_id", design_id), ("calibration_id", calibration_id)):
        if entry.get(name) != expected:
            raise JobMismatchError(f"{file}: the backend {entry['backend']} was fine-tuned with {name} "
                                   f"{entry.get(name)!r}, not this run's {expected!r}: move {file} and its backends "
                                   "away to fine-tune again (hil run --from finetune)")


def finetune_all(job: Job, student, calibration, design_id: str, teacher_path=None, *,
                 settings: FinetuneStep | None = None, fractions=None, name: str = "finetune",
                 progress: bool = False, sets: dict | None = None) -> dict:
    """Fine-tune a copy of the student's backend with the ``design_ft`` control and every method on
    every captured fraction and seed (module docstring; ``settings`` and ``fractions`` default to the
    job's), each keeping the backend best on the captured validation images. The NTKD methods run only
    with a teacher that passes :func:`hil.job.controls.teacher_check` (kept in
    ``<name>/teacher_check.json``). Results are appended to ``<name>.json`` (backends in ``<name>/``) as
    each run ends, with the design and calibration they were trained on and their recipe (``images``:
    a digest of the training images, ``steps``, ``lr``, ``batch_size``, ``seed``); a rerun skips those
    already there. ``sets``: :func:`captured_sets` with every feature kind the methods read, when the
    caller holds them (one that fine-tunes many times reads them once). Returns ``{method: {fraction:
    [entry per seed]}}``."""
    cfg = settings or job.config.finetune
    results_file = job.run_dir / f"{name}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    (job.run_dir / name).mkdir(parents=True, exist_ok=True)
    methods = usable_methods(job, student, cfg.methods, teacher_path, job.run_dir / name / "teacher_check.json")
    device = job_device(job)
    teacher = load_model(teacher_path, device) if ntkd_methods(methods) else None
    train_split, _ = datasets(job)
    if sets is None:
        sets = captured_sets(job, student, calibration, design_id, {COMPENSATIONS[m].features for m in methods})
    task = job_task(job)
    reference = next(iter(sets["train"].values()))
    synthetic = None
    for fraction in sorted(fractions or job.config.capture.fractions):
        rows = task.fraction_rows(reference, fraction, train_split.tensors[1])
        key = fraction_key(fraction)
        for method in (DESIGN_FT, *methods):
            kind = feature_kind(method)
            for seed in cfg.seeds:
                done = [entry for entry in results.get(method, {}).get(key, []) if entry["seed"] == seed]
                for entry in done:
                    check_backend_identity(entry, results_file, design_id, calibration.calibration_id)
                if done:
                    continue
                data = sets["train"][kind].subset(rows)
                if method != DESIGN_FT and COMPENSATIONS[method].synthetic and cfg.synthetic:
                    if synthetic is None:
                        synthetic = synthetic_set(job, calibration, design_id, train_split, cfg.synthetic)
                    data = CapturedSet.concat(data, synthetic)
                loss_method = "task" if method == DESIGN_FT else COMPENSATIONS[method].loss
                start = time.perf_counter()
                log.info("fine-tuning %s on %d captured (+%d synthetic) samples, fraction %s, seed %d", method,
                         len(rows), len(data) - len(rows), key, seed)
                backend, result = finetune(student, data, method=loss_method, teacher=teacher,
                                           source_inputs=train_split.tensors[0], loss=cfg.loss, lr=cfg.lr,
                                           batch_size=cfg.batch_size, max_steps=cfg.steps, seed=seed,
                                           val=sets["val"].get(kind), progress=progress, device=device,
                                           task=task.name)
                file = f"{name}/{method}_{key}_seed{seed}.pt"
                with atomic_write(job.run_dir / file) as fh:
                    torch.save(backend.state_dict(), fh)
                entry = {"seed": seed, "backend": file, "design_id": design_id,
                         "calibration_id": calibration.calibration_id, "captured": len(rows),
                         "synthetic": len(data) - len(rows), "images": images_digest(data.source_indices[:len(rows)]),
                         "steps": result.steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
                         "best_epoch": result.best_epoch, f"best_val_{task.metric}": result.best_metric,
                         "seconds": round(time.perf_counter() - start, 2), "mean_step_s": result.mean_step_s,
                         "curve": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]}
                results.setdefault(method, {}).setdefault(key, []).append(entry)
                write_json(results_file, results)
    return results


def feature_kind(method: str) -> str:
    """How the data of ``method`` is read: ``simulated`` for the ``design_ft`` control, else its
    :class:`hil.finetune.Compensation` ``features`` (``layer`` or ``nominal``)."""
    return "simulated" if method == DESIGN_FT else COMPENSATIONS[method].features


def images_digest(source_indices: torch.Tensor) -> str:
    """A short digest of the set of training images (source indices) a run trained on."""
    values = np.sort(source_indices.numpy().astype(np.int64))
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def usable_methods(job: Job, student, methods, teacher_path, record: Path) -> list[str]:
    """``methods`` without the NTKD ones when the teacher fails :func:`hil.job.controls.teacher_check`
    on the captured test images (written to ``record``, read back from it when present)."""
    if not ntkd_methods(methods):
        return list(methods)
    if record.is_file():
        check = json.loads(record.read_text())
    else:
        if not teacher_path:
            raise ConfigError("teacher", None, f"a teacher for the methods {ntkd_methods(methods)}")
        _, test_split = datasets(job)
        rows = torch.from_numpy(capture_plan(job, datasets(job)[0].tensors[1].numpy(),
                                             test_split.tensors[1].numpy())["test"])
        check = teacher_check(job, student, load_model(teacher_path), test_split.tensors[0][rows],
                              test_split.tensors[1][rows])
        write_json(record, check)
    return list(methods) if check["usable"] else [m for m in methods if m not in ntkd_methods(methods)]


def captured_sets(job: Job, student, calibration, design_id: str, kinds) -> dict:
    """``{"train" | "val": {kind: CapturedSet}}``: the captured training and validation sets read
    through the calibration layer (``layer``) or nominally (``nominal``) as ``kinds`` ask, and their
    ``simulated`` nominal features (:func:`hil.job.controls.nominal_set`) for ``design_ft``; no
    ``val`` without a validation capture."""
    identity = {"design_id": design_id, "calibration_id": calibration.calibration_id}
    readers = {"layer": calibration.layer(), "nominal": student.frontend}
    splits, task = capture_splits(job), job_task(job)
    out = {}
    for offset, split in enumerate(("train", "val")):
        path = job.run_dir / "captures" / f"{split}.h5"
        if not path.is_file():
            out[split] = {}
            continue
        sets = {kind: task.captured(path, readers[kind], splits[split], **identity)
                for kind in {"layer", *kinds} - {"simulated"}}
        rows = sets["layer"].source_indices
        sets["simulated"] = nominal_set(job, calibration.nominal_system(), splits[split], rows, capture_exposure(path),
                                        job.config.capture.seed + offset)
        out[split] = sets
    return out


def capture_exposure(path: Path) -> float:
    """The exposure (s) of the frames of a captures file (the first one if they differ)."""
    data = CaptureDataset(path)
    exposures = np.unique(np.asarray(data.rows("exposure_s", 0, data.count)))
    data.close()
    if len(exposures) != 1:
        log.warning("%s holds %d exposures; synthetic captures use the first, %g s", path, len(exposures), exposures[0])
    return float(exposures[0])


def synthetic_set(job: Job, calibration, design_id: str, train_split, count: int):
    """Synthetic captures of ``count`` training images never captured, for training or validation (a
    seeded choice), at the exposure of the real captures; kept in ``synthetic_<count>.h5`` (the capture
    schema, for this design and calibration: :func:`hil.finetune.write_synthetic`) and reused while
    they match."""
    cache = job.run_dir / f"synthetic_{count}.h5"
    identity = {"design_id": design_id, "calibration_id": calibration.calibration_id}
    _, test_split = datasets(job)
    plan = capture_plan(job, train_split.tensors[1].numpy(), test_split.tensors[1].numpy())
    captured = np.concatenate([plan["train"], plan.get("val", np.zeros(0, np.int64))])
    if cache.is_file():
        try:
            data = job_task(job).retarget(read_synthetic(cache, **identity), train_split)
            overlap = np.intersect1d(np.asarray(data.source_indices), captured)
            if not len(overlap):
                return data
            log.warning("rendering the synthetic captures again: %s holds %d images now captured for training "
                        "or validation (the capture plan changed)", cache, len(overlap))
        except CaptureFileError as exc:
            log.warning("rendering the synthetic captures again: %s", exc)
    exposure_s = capture_exposure(job.run_dir / "captures" / "train.h5")
    pool = np.setdiff1d(np.arange(len(train_split)), captured)
    rng = np.random.default_rng(job.config.capture.seed + 1000)
    chosen = torch.from_numpy(np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)))
    log.info("rendering %d synthetic captures through the calibrated forward model", len(chosen))
    images, labels = train_split.tensors[0][chosen], train_split.tensors[1][chosen]
    data = synthetic_features(calibration, images, labels, chosen, exposure_s=exposure_s, seed=job.config.capture.seed,
                              device=job_device(job))
    write_synthetic(cache, data, **identity, exposure_s=exposure_s, seed=job.config.capture.seed)
    return data


# ------------------------------------------------------------------------------------------ evaluation
def score_runs(job: Job, student, data, results: dict, reference: dict | None = None, *,
               design_id: str | None = None, calibration_id: str | None = None) -> dict:
    """Accuracy (the task's metric, :mod:`hil.job.task`) of every fine-tuned backend of ``results``
    (:func:`finetune_all`) on ``data``: one :class:`~hil.finetune.CapturedSet`, or ``{kind: CapturedSet}``
    read per method's :func:`feature_kind`. Returns ``{method: {fraction: {mean, std, seeds, accuracies
    (segmentation: mious), recovered_fraction}}}`` (``std`` None for one seed); ``recovered_fraction`` = (mean -
    uncompensated) / (target - uncompensated) with ``reference`` = ``{uncompensated, design_ft:
    {fraction: mean}}`` (target: ``design_ft`` of the same fraction) or ``{uncompensated, design}``,
    when given and the target is above uncompensated. With ``design_id`` and ``calibration_id``, a
    backend trained on others is refused."""
    out: dict = {}
    task = job_task(job)
    for method, fractions in results.items():
        for key, entries in fractions.items():
            values = []
            for entry in entries:
                if design_id is not None:
                    check_backend_identity(entry, job.run_dir / entry["backend"], design_id, calibration_id)
                backend = copy.deepcopy(student.backend)
                backend.load_state_dict(torch.load(job.run_dir / entry["backend"], weights_only=True))
                values.append(task.score(backend, data if isinstance(data, CapturedSet) else data[feature_kind(method)]))
            values = np.array(values)
            mean = float(values.mean())
            target = None if reference is None else (
                reference["design_ft"].get(key) if "design_ft" in reference else reference["design"])
            lost = None if target is None else target - reference["uncompensated"]
            out.setdefault(method, {})[key] = {
                "mean": mean, "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "seeds": [e["seed"] for e in entries], task.values_key: values.tolist(),
                "recovered_fraction": (mean - reference["uncompensated"]) / lost if lost and lost > 0 else None}
    return out


def evaluate(job: Job, student, calibration, design_id: str, name: str = "finetune") -> dict:
    """Accuracies (the task's metric: mean IoU for segmentation, then ``metric``: ``miou``;
    :mod:`hil.job.task`) on the held-out captured test set (``evaluation.json``): ``design`` (the student in
    simulation on the same test images, noise free), ``design_noisy`` (its backend on their simulated
    nominal features with sensor noise at the capture exposure), ``perfect_fabrication`` (its backend
    on the nominal features of the test images captured through error-free optics; None without that
    capture), ``uncompensated`` (its backend on the nominal features of the captured frames: no
    calibration, no retraining), ``calibration_layer`` (its backend on the calibration layer's
    features, no retraining), ``teacher`` (:func:`hil.job.controls.teacher_check`, None without NTKD
    methods), ``design_ft`` (the control, per fraction, on the simulated nominal test features),
    ``by_fraction[method][fraction]`` (:func:`score_runs`, recovered against ``design_ft``) and
    ``left_out`` (methods asked for but not reported, with the reason). Written to
    ``evaluation.json`` (``evaluation_<name>.json`` for another ``name``)."""
    test_file = job.run_dir / "captures" / "test.h5"
    identity = {"design_id": design_id, "calibration_id": calibration.calibration_id}
    _, test_split = datasets(job)
    task = job_task(job)
    data = {"nominal": task.captured(test_file, student.frontend, test_split, **identity),
            "layer": task.captured(test_file, calibration.layer(), test_split, **identity)}
    rows = data["layer"].source_indices
    data["simulated"] = nominal_set(job, calibration.nominal_system(), test_split, rows, capture_exposure(test_file),
                                    job.config.capture.seed + 2)
    with torch.no_grad():
        images = test_split.tensors[0][rows]
        logits = torch.cat([student(images[i:i + 1000]) for i in range(0, len(images), 1000)])
    perfect = job.run_dir / PERFECT_CAPTURE
    out = {"test_samples": len(rows), "design": task.score_outputs(logits, data["layer"].labels),
           "design_noisy": task.score(student.backend, data["simulated"]),
           "perfect_fabrication": task.score(student.backend, task.captured(perfect, student.frontend, test_split,
                                                                            design_id=design_id))
           if perfect.is_file() else None,
           "uncompensated": task.score(student.backend, data["nominal"]),
           "calibration_layer": task.score(student.backend, data["layer"])}
    if task.dense:  # the metric is named where it is not accuracy (classification's evaluation.json unchanged)
        out["metric"] = task.metric
    results_file = job.run_dir / f"{name}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    check_file = job.run_dir / name / "teacher_check.json"
    out["teacher"] = json.loads(check_file.read_text()) if check_file.is_file() else None
    out["left_out"] = {m: "the teacher is not finetune.teacher_margin above the design"
                       for m in ntkd_methods(job.config.finetune.methods)
                       if out["teacher"] is not None and not out["teacher"]["usable"]}
    scores = dict(design_id=design_id, calibration_id=calibration.calibration_id)
    out["design_ft"] = score_runs(job, student, data, {DESIGN_FT: results.get(DESIGN_FT, {})}, **scores).get(DESIGN_FT, {})
    reference = {"uncompensated": out["uncompensated"], "design_ft": {k: v["mean"] for k, v in out["design_ft"].items()}}
    methods = {m: v for m, v in results.items() if m != DESIGN_FT and m not in out["left_out"]}
    out["by_fraction"] = score_runs(job, student, data, methods, reference, **scores)
    write_json(job.run_dir / ("evaluation.json" if name == "finetune" else f"evaluation_{name}.json"), out)
    return out


# ------------------------------------------------------------------------------------------ the table
class RunContext:
    """What the steps of one :func:`hil.job.runner.run_job` hand each other, each made on first use:
    the models, the design and its fingerprint, the open bench, the calibration, the student."""

    def __init__(self, job: Job, progress: bool = True):
        self.job, self.progress = job, progress
        self._bench_stack = contextlib.ExitStack()
        self._bench = None

    @cached_property
    def models(self) -> dict:
        """:func:`train_models` (which only locates the runs once they are trained)."""
        return train_models(self.job)

    @cached_property
    def design(self) -> tuple[OpticalSystem, str]:
        """``(nominal system, design fingerprint)`` of the exported design."""
        return design_identity(self.job.run_dir / "design" / "optics.yaml")

    @property
    def bench(self):
        """The job's bench, opened on first use and checked against the design
        (:func:`drivers.bench_fits.check_bench_fits`)."""
        if self._bench is None:
            config = bench_config(self.job, self.job.run_dir / "design" / "optics.yaml")
            self._bench = self._bench_stack.enter_context(open_job_bench(self.job, config))
            check_bench_fits(self._bench, self.design[0], optics_path="design/optics.yaml")
        return self._bench

    def release_bench(self) -> None:
        """Close the bench if it is open (blanking the SLM)."""
        self._bench_stack.close()
        self._bench = None

    @cached_property
    def calibration(self):
        """The run's calibration of this design (:func:`load_job_calibration`)."""
        return load_job_calibration(self.job, self.design[1])

    @cached_property
    def student(self):
        """The trained student, frozen (:func:`hil.checkpoint.load_model`)."""
        return load_model(self.models["student"])


def _train(ctx: RunContext) -> None:
    ctx.models = train_models(ctx.job)


def _export(ctx: RunContext) -> None:
    export(ctx.job, ctx.models["student"])


def _locate(ctx: RunContext) -> None:
    locate_design(ctx.job, ctx.job.run_dir / "design" / "optics.yaml", ctx.design[0])


def _calibrate(ctx: RunContext) -> None:
    ctx.calibration = calibrate_bench(ctx.job, ctx.bench, ctx.design[0], progress=ctx.progress)


def _capture(ctx: RunContext) -> None:
    start = time.perf_counter()
    captured = capture_sets(ctx.job, ctx.bench, ctx.calibration, ctx.design[1], progress=ctx.progress)
    ctx.release_bench()
    perfect = capture_perfect(ctx.job, ctx.design[1], captured["exposure"]["exposure_s"], progress=ctx.progress)
    if perfect is not None:
        captured["test_perfect"] = perfect
    seconds = time.perf_counter() - start
    frames = sum(value["frames"] for name, value in captured.items() if name != "exposure")
    write_json(ctx.job.run_dir / "capture.json", {**captured, "seconds": seconds, "frames_per_s": frames / seconds})


def _finetune(ctx: RunContext) -> None:
    finetune_all(ctx.job, ctx.student, ctx.calibration, ctx.design[1], ctx.models["teacher"], progress=False)


def _evaluate(ctx: RunContext) -> None:
    evaluate(ctx.job, ctx.student, ctx.calibration, ctx.design[1])


def _report(ctx: RunContext) -> None:
    run = ctx.job.run_dir
    evaluation = json.loads((run / "evaluation.json").read_text())
    capture_info = json.loads((run / "capture.json").read_text()) if (run / "capture.json").is_file() else None
    report(ctx.job, evaluation, ctx.calibration, {"design_id": ctx.design[1], "models": ctx.models, "capture": capture_info})


class Step(NamedTuple):
    """One row of :data:`STEPS`: its ``name``, ``run(context)``, ``outputs(job)`` (the files and folders
    it writes, recorded when it finishes and moved aside when it must run again), whether it uses
    the ``bench``, and ``aside(job)``: files and folders it writes that are not recorded (a change to
    them does not make it run again) but are moved aside when it runs again (the calibration's partial
    file and report)."""

    name: str
    run: Callable[[RunContext], None]
    outputs: Callable[[Job], list[Path]]
    bench: bool = False
    aside: Callable[[Job], list[Path]] = lambda job: []


STEPS = (
    Step("train", _train, model_sources),
    Step("export", _export, lambda job: [job.run_dir / "design"]),
    Step("locate", _locate, lambda job: [job.run_dir / name for name in (LOCATION_FILE, "grid.png", "locate.json")]),
    Step("calibrate", _calibrate, lambda job: [job.run_dir / CALIBRATION_FILE], bench=True,
         aside=lambda job: [job.run_dir / CALIBRATION_PARTIAL, job.run_dir / CALIBRATION_REPORT_DIR]),
    Step("capture", _capture, lambda job: [job.run_dir / "captures", job.run_dir / "capture.json"], bench=True),
    Step("finetune", _finetune, lambda job: [job.run_dir / "finetune", job.run_dir / "finetune.json"]),
    Step("evaluate", _evaluate, lambda job: [job.run_dir / "evaluation.json"]),
    Step("report", _report, lambda job: [job.run_dir / name for name in REPORT_FILES]),
)
STEP_NAMES = tuple(step.name for step in STEPS)


__all__ = ["CALIBRATION_REPORT_DIR", "LOCATION_FILE", "STEPS", "STEP_NAMES", "JobMismatchError", "RunContext", "Step", "bench_config",
           "bench_location_file", "locate_design",
           "calibrate_bench", "capture_exposure", "capture_perfect", "capture_plan", "capture_sets", "capture_splits",
           "captured_sets",
           "check_backend_identity", "check_calibration_design", "feature_kind", "images_digest", "simulated_bench",
           "usable_methods",
           "datasets", "design_config", "design_identity", "evaluate", "export", "finetune_all",
           "fraction_key", "load_job_calibration", "model_sources", "open_job_bench", "score_runs",
           "student_model_config", "synthetic_set", "train_models"]
