"""The capture exposure of a ``hil run`` and the clipping check of its capture sets.

:func:`choose_exposure`: the images the job will capture go through the calibrated forward model
(:meth:`calibration.api.Calibration.calibrated_system`, noise free, no sensor clipping) to find the
one whose frame is expected brightest (the :data:`CANDIDATES` images with the brightest patch of the
PSF's size are rendered); the bench shows it and :meth:`drivers.bench.Bench.auto_exposure`
brings its peak to ``1 - capture.headroom`` of the camera's range (black level to saturation), so
every frame of the capture stays below saturation with that headroom. ``capture.exposure_s`` fixes
the exposure instead. The choice is kept in ``captures/exposure.json`` and reused when the capture
resumes.

:func:`clipping`: per capture set, the fraction of pixels at saturation and of frames with any;
:func:`check_clipping` refuses (:class:`ClippedCaptureError`) a set above ``capture.max_clipped_fraction``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from onn_core.errors import HilError

from ..capture import display_image
from ..data.captures import CaptureDataset
from .state import write_json

log = logging.getLogger(__name__)

EXPOSURE_FILE = "exposure.json"
#: Images rendered through the calibrated model to find the brightest frame (the brightest by patch).
CANDIDATES = 128


class ClippedCaptureError(HilError):
    """A capture set holds more clipped (saturated) pixels than ``capture.max_clipped_fraction``."""


def brightest_image(system, images: torch.Tensor, candidates: int = CANDIDATES) -> tuple[int, float]:
    """``(row, photons per second)``: the image of ``images`` (N, C, H, W) in [0, 1] whose frame through
    ``system`` (an :class:`~simulator.system.OpticalSystem`) has the highest expected pixel, and that
    pixel's photon rate (noise free, before the sensor). Only the ``candidates`` images with the
    brightest patch of the PSF's size (the largest local mean, which bounds what a PSF of that support
    can gather) are rendered."""
    size = system.design.psfs().shape[-1]
    with torch.no_grad():
        patches = torch.nn.functional.avg_pool2d(images.sum(1, keepdim=True), size, stride=1,
                                                 padding=size // 2, count_include_pad=True)
        rows = torch.argsort(patches.flatten(1).amax(1), descending=True)[:candidates]
        system.eval()
        rates = system.photon_rate_frame(system.gray_levels(images[rows]))
    peaks = rates.flatten(1).amax(1)
    top = int(peaks.argmax())
    return int(rows[top]), float(peaks[top])


def choose_exposure(bench, calibration, images: torch.Tensor, *, headroom: float, exposure_s: float | None,
                    out_dir: Path) -> dict:
    """The capture exposure (module docstring), recorded in ``out_dir/exposure.json`` and reused from
    it when present; returns the record: ``exposure_s`` (s), ``chosen`` (``auto`` or ``config``) and,
    for ``auto``, ``brightest`` (its row in ``images``), ``predicted_peak_photons_per_s`` and
    ``target_fraction`` of the camera's range."""
    record_file = Path(out_dir) / EXPOSURE_FILE
    if record_file.is_file():
        return json.loads(record_file.read_text())
    if exposure_s is not None:
        record = {"exposure_s": float(exposure_s), "chosen": "config"}
    else:
        row, peak = brightest_image(calibration.calibrated_system(), images)
        shown = display_image(images[row], bench.slm)
        target = 1.0 - headroom
        chosen = bench.auto_exposure(shown, target_fraction=target)
        record = {"exposure_s": float(chosen), "chosen": "auto", "brightest": row,
                  "predicted_peak_photons_per_s": peak, "target_fraction": target}
        log.info("capture exposure %g s: the brightest expected frame (image %d of the capture) peaks at %.0f %% of "
                 "the camera's range", chosen, row, 100 * target)
    record_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(record_file, record)
    return record


def clipping(path) -> dict:
    """Of the complete frames of a captures file: ``clipped_pixel_fraction`` (pixels at the camera's
    saturation over all pixels) and ``clipped_frame_fraction`` (frames with any such pixel)."""
    data = CaptureDataset(path)
    try:
        saturated = np.asarray(data.rows("saturated_pixels", 0, data.count), dtype=np.int64)
        pixels = int(data[0][0].numel()) if data.count else 1
    finally:
        data.close()
    frames = max(len(saturated), 1)
    return {"clipped_pixel_fraction": float(saturated.sum()) / (frames * pixels),
            "clipped_frame_fraction": float(np.count_nonzero(saturated)) / frames}


def check_clipping(path, stats: dict, *, limit: float, exposure_s: float) -> None:
    """Refuse (:class:`ClippedCaptureError`) a capture set whose ``stats`` (:func:`clipping`) exceed
    ``limit`` (``capture.max_clipped_fraction``); the file is kept as it is."""
    if stats["clipped_pixel_fraction"] <= limit:
        return
    raise ClippedCaptureError(
        f"{path}: {stats['clipped_pixel_fraction']:.3%} of the pixels are clipped ({stats['clipped_frame_fraction']:.1%} "
        f"of the frames) at exposure {exposure_s:g} s, above capture.max_clipped_fraction = {limit:g}. The file is "
        f"kept. Shorten the exposure (raise capture.headroom, or set capture.exposure_s below {exposure_s:g}) and run "
        f"again: the capture step starts afresh and the clipped file is moved into stale/")


__all__ = ["ClippedCaptureError", "EXPOSURE_FILE", "brightest_image", "check_clipping", "choose_exposure", "clipping"]
