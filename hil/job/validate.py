"""Checks of a ``hil run`` job before its first step, so that a mistake is reported in seconds, not
after training and calibration: the files the config names, the dataset and the sizes asked of it,
the bench's display against the design's image, and the free disk space against the capture."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from calibration.api import CalibrationConfig
from drivers.bench_fits import check_slm_fits
from drivers.device import integer_dtype_for
from onn_core.errors import ConfigError

from ..models import build_model
from .config import Job, bench_settings, training_config
from .disk import check_free_space, frame_bytes
from .steps import capture_plan, datasets, design_identity, model_sources, student_model_config


def preflight(job: Job, to_run) -> None:
    """Check everything that can be checked before the steps ``to_run`` (names) start: the student and
    teacher sources, the dataset (loaded; an empty ``data.root`` folder refused), ``capture.test_size``
    against the test split, and, for the bench steps, the calibration config, the SLM's shape against
    the design's image and the free disk space against the capture still to do. Raises a
    :class:`ConfigError` naming the field (or :class:`hil.job.disk.DiskSpaceError`). The dataset's
    images must have the design's shape."""
    to_run = set(to_run)
    model_sources(job)  # the given student run / teacher checkpoint exist
    teacher = job.config.teacher
    if teacher is not None and teacher.config is not None and job.config.needs_teacher and "train" in to_run:
        training_config(job, "teacher")
    system = _design_system(job)
    _check_data_root(job)
    train_split, test_split = datasets(job)
    check_image_shape(job, train_split, system)
    plan = capture_plan(job, train_split.tensors[1].numpy(), test_split.tensors[1].numpy())
    if to_run & {"locate", "calibrate", "capture"}:
        CalibrationConfig.from_dict(job.config.calibration, "calibration")
        check_display_shape(job, system)
    if "capture" in to_run:
        check_free_space(job.run_dir, sum(len(rows) for rows in plan.values()), planned_frame_bytes(job, system))


def _design_system(job: Job):
    """The design's nominal optical system: the exported one, or (before the export) the student's
    as its config builds it."""
    optics = job.run_dir / "design" / "optics.yaml"
    if optics.is_file():
        return design_identity(optics)[0]
    return build_model(student_model_config(job)).frontend


def _check_data_root(job: Job) -> None:
    root = job.config.data.get("root")
    if root is not None and job.datasets is None:
        path = job.path(root)
        if path.is_dir() and not any(path.iterdir()):
            raise ConfigError("data.root", root, f"a folder holding the dataset ({path} is empty)")


def check_image_shape(job: Job, train_split, system) -> None:
    """Refuse a dataset whose images (rows, cols) are not the design's: the SLM shows them pixel for pixel."""
    image = tuple(train_split.tensors[0].shape[-2:])
    if image != tuple(system.image_shape):
        raise ConfigError("data.dataset", job.config.data.get("dataset"), f"images of the design's shape "
                          f"{tuple(system.image_shape)} (rows, cols); this dataset's are {image}")


def check_display_shape(job: Job, system) -> None:
    """Refuse a bench file whose SLM (``slm.shape``, ``bit_depth``, ``pixel_pitch_m``) cannot show the
    design's images (:func:`drivers.bench_fits.check_slm_fits`), before the bench is opened. A display
    that places the image in a larger window (``slm.window``) is checked when it opens."""
    slm = bench_settings(job).get("slm") or {}
    if "window" in slm or not {"shape", "bit_depth", "pixel_pitch_m"} <= set(slm):
        return
    check_slm_fits(SimpleNamespace(shape=tuple(slm["shape"]), bit_depth=slm["bit_depth"],
                                   pixel_pitch_m=slm["pixel_pitch_m"]), system, optics_path="the design")


def planned_frame_bytes(job: Job, system) -> int:
    """:func:`hil.job.disk.frame_bytes` before the bench is open: the camera frame of ``camera.shape`` in
    the bench file (else the design's frame) in the sensor's container, the SLM's image."""
    settings = bench_settings(job)
    camera, slm = settings.get("camera") or {}, settings.get("slm") or {}
    sensor = system.sensor
    bits = camera.get("bit_depth") or sensor.container_bits or sensor.bit_depth
    return frame_bytes(camera.get("shape") or system.frame_shape, integer_dtype_for(bits) if bits else np.float32,
                       system.image_shape, integer_dtype_for(slm.get("bit_depth", 8)))


__all__ = ["check_display_shape", "check_image_shape", "planned_frame_bytes", "preflight"]
