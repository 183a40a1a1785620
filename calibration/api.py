"""``calibrate(bench, system, config) -> Calibration``: every stage on one bench, one result object.

Stages run in this order (each optional, :data:`STAGES`): **sensor** (photon transfer, dark, defects:
:mod:`calibration.sensor`), **display** (gray level -> radiance, LUT: :mod:`calibration.display_response`),
**geometry** (display -> camera homographies, tile offsets: :mod:`calibration.geometry`), **psf** (point
sources through every sub-optic: :mod:`calibration.psf`) and **fit** (fabrication errors through the
optical system: :mod:`calibration.fit`). Later stages use earlier results: the PSF capture and the
fit weigh pixels with the sensor's measured noise, and the layer converts DN with its gain.

Resumption and reuse: with ``progress_file`` the calibration so far is written there (atomically, the
calibration file's layout marked partial, :func:`calibration.file.save_partial`) as each stage
finishes, and a later call with the same nominal optics, bench settings and stage settings continues
from the first stage missing (a stage whose settings changed is measured again, with every later
one); a progress file of other optics or another bench is refused, never used nor deleted. With
``source`` (an earlier calibration, finished or partial) the stages not in ``recompute`` are copied
from it instead of measured, e.g. a refit of its measurements with other fit settings, which needs no
bench (``bench=None``). Progress: one line (and, on a terminal, a bar of the frames read with the
time left) per stage, :class:`StageProgress`.

A :class:`Calibration` gives the two things post-fabrication fine-tuning needs: the **calibrated
forward model** (:meth:`Calibration.calibrated_system`: the design with the fitted errors, the
measured display LUT and sensor) and the **calibration layer** (:meth:`Calibration.layer`: raw frame
-> aligned features). :mod:`calibration.file` saves and loads it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import os
import time
import uuid

import numpy as np
import torch

from drivers.bench_fits import check_bench_fits
from onn_core import config as config_io
from onn_core.errors import ConfigError, HilError
from onn_core.progress import Throttle, format_duration, progress_bar
from simulator.device import resolve_device
from simulator.system import OpticalSystem

from .display_response import default_levels, measure_display_response
from .errors import CalibrationError, CalibrationFileError
from .file import load_calibration, partial_identity, save_partial
from .fit import fit_mismatch
from .geometry import measure_geometry
from .psf import HOLDOUT_IMAGES, measure_psfs
from .result import (IGNORED_SETTINGS, MEASURING_STAGES, STAGES, Calibration, CalibrationConfig, changed_settings,
                     same_plain)
from .sensor import measure_sensor

log = logging.getLogger(__name__)


def calibrate(bench, system: OpticalSystem, config: CalibrationConfig | dict | None = None, *,
              diagnostics_dir=None, progress_file=None, source: Calibration | None = None,
              source_path=None, recompute=None, progress: bool | None = True) -> Calibration:
    """Run the configured stages on ``bench`` against the nominal ``system`` (module docstring).

    Parameters
    ----------
    bench : drivers.bench.Bench or None
        None only when no measuring stage runs (every stage measured is copied from ``source``).
    diagnostics_dir : path, optional
        Where a failed geometry stage saves its annotated frame
        (:data:`calibration.geometry.DIAGNOSTIC_NAME`; its error names the file); None: nowhere.
    progress_file : path, optional
        The calibration so far, written (atomically, marked partial) after every stage; when it
        exists, the calibration continues from it (module docstring). The caller writes the finished
        file and removes this one: :func:`calibration.file.save_calibration` (``partial_file=``).
    source : Calibration, optional
        An earlier calibration (finished or partial; :func:`calibration.file.load_calibration` with
        ``partial_ok=True``) of the same nominal optics and bench: the stages of ``config`` not in
        ``recompute`` are copied from it (with its settings for them), recorded in
        :attr:`Calibration.provenance` (with ``source_path``, where it was read from).
    recompute : sequence of str, optional
        The stages measured or fitted here (default: every stage of ``config``); with ``source``.
    progress : bool or None
        False: no bar (stage lines are still logged); otherwise the toolkit's rule
        (:mod:`onn_core.progress`).

    Raises :class:`~drivers.bench_fits.BenchMismatch` before anything is shown when the bench does not
    fit ``system``, :class:`~calibration.errors.CalibrationError` (with the stage named) when a
    measurement or fit fails, and :class:`~calibration.errors.CalibrationFileError` for a progress
    file of another calibration; the SLM is left blank by the bench on any exit.
    """
    config = config if isinstance(config, CalibrationConfig) else CalibrationConfig.from_dict(config)
    device = resolve_device(config.device, "calibration.device")
    recompute = tuple(config.stages if recompute is None else recompute)
    bad = [s for s in recompute if s not in config.stages]
    if bad:
        raise ConfigError("recompute", list(recompute), f"stages of the calibration's own {list(config.stages)}")
    copied = [s for s in config.stages if s not in recompute]
    if copied and source is None:
        raise ConfigError("recompute", list(recompute), f"every stage of {list(config.stages)} unless a source "
                          f"calibration gives {copied}")
    measuring = [s for s in recompute if s in MEASURING_STAGES]
    if bench is None and measuring:
        raise CalibrationError(f"stages {measuring} measure on a bench, and no bench was given")
    optics = _nominal_config(system)
    if source is not None:
        missing = [s for s in copied if getattr(source, s) is None]
        if missing:
            raise CalibrationError(f"calibration {source.calibration_id} has no stage {missing} to copy (it holds "
                                   f"{source.stages}): measure them too")
        if not same_plain(source.optics, optics):
            raise CalibrationError(f"calibration {source.calibration_id} was measured against other nominal optics "
                                   "than this config's: its measurements are not reused")
    if bench is not None:
        check_bench_fits(bench, system)
        bench_settings = config_io.to_plain(bench.settings())
        if source is not None:
            _refuse_other_bench(source.bench_settings, bench_settings, f"calibration {source.calibration_id}")
    else:
        bench_settings = copy.deepcopy(source.bench_settings)
    plain = config_io.to_plain(config)
    for stage in copied:  # the settings the copied stages were measured with
        plain[stage] = copy.deepcopy(source.config.get(stage, plain[stage]))
    provenance = {}
    if copied:
        provenance["measurements_from"] = {"calibration_id": source.calibration_id, "stages": copied,
                                           "path": None if source_path is None else str(source_path)}
        stale = [s for s in copied if any(config.stages.index(r) < config.stages.index(s) for r in recompute)]
        if stale:
            log.warning("stages %s are copied from calibration %s although earlier stages are redone (%s): they "
                        "do not see the new results; redo them too unless that is meant", stale,
                        source.calibration_id, ", ".join(recompute))
        if source.provenance.get("measurements_from"):
            provenance["measurements_from"]["source_provenance"] = source.provenance["measurements_from"]
    result = Calibration(optics=optics, bench_settings=bench_settings, config=plain,
                         created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         calibration_id=uuid.uuid4().hex, provenance=provenance)
    kept: list[str] = []
    if progress_file is not None and os.path.exists(progress_file):
        if partial_identity(progress_file) is None:
            raise CalibrationFileError(f"{progress_file} is a finished calibration (or no calibration file at all), "
                                       "not the progress of one: give another progress file")
        earlier = load_calibration(progress_file, partial_ok=True)
        kept = _resumable(earlier, result, config.stages, progress_file)
        result.calibration_id, result.created_utc = earlier.calibration_id, earlier.created_utc
        for stage in kept:
            setattr(result, stage, getattr(earlier, stage))
    counting = _CountingBench(bench) if bench is not None else None
    report = StageProgress(config.stages, enabled=progress)
    for index, stage in enumerate(config.stages):
        if stage in kept:
            report.skipped(index, stage, f"kept from {progress_file}")
            continue
        if stage in copied:
            setattr(result, stage, getattr(source, stage))
            report.skipped(index, stage, f"copied from calibration {source.calibration_id}")
        else:
            try:
                with report.stage(index, stage, expected_frames(stage, config, system)) as on_frame:
                    if counting is not None:
                        counting.on_frame = on_frame
                    _run_stage(stage, counting, system, config, result, diagnostics_dir, device)
            except BaseException as exc:  # CalibrationError, ExposureError, device errors, Ctrl-C
                if isinstance(exc, HilError) and hasattr(exc, "add_note"):
                    exc.add_note(f"in calibration stage {stage!r}")
                if progress_file is not None and result.stages:
                    log.warning("calibration %s stopped in stage %s; stages %s are saved in %s: the same command "
                                "continues from stage %s", result.calibration_id, stage, ", ".join(result.stages),
                                progress_file, stage)
                raise
            finally:
                if counting is not None:
                    counting.on_frame = None
        if progress_file is not None:
            save_partial(result, progress_file)
    report.finished()
    if bench is not None:
        bench.blank()
    return result


def _resumable(earlier: Calibration, result: Calibration, stages, path) -> list[str]:
    """The stages of the progress file ``earlier`` (at ``path``) that ``result`` keeps: the longest
    common start of ``stages`` and its stages, each with the same settings (a later stage uses the
    earlier ones' results). Refuses
    (:class:`~calibration.errors.CalibrationFileError`, naming the file) a file of other optics, another
    bench or other copied measurements."""
    what = f"{path} (partial calibration {earlier.calibration_id}, stages {earlier.stages})"
    advice = "move it away (or choose another output folder) to start afresh; it is not deleted"
    if not same_plain(earlier.optics, result.optics):
        raise CalibrationFileError(f"{what} was measured against other nominal optics than these: {advice}")
    changed = changed_settings(earlier.bench_settings, result.bench_settings)
    if changed:
        raise CalibrationFileError(f"{what} was measured on another bench ({'; '.join(changed)}): {advice}")
    before = (earlier.provenance.get("measurements_from") or {}).get("calibration_id")
    now = (result.provenance.get("measurements_from") or {}).get("calibration_id")
    if before != now:
        raise CalibrationFileError(f"{what} reuses the measurements of calibration {before}, this run those of {now}: "
                                   f"{advice}")
    kept = []
    for index, stage in enumerate(stages):
        if index >= len(earlier.stages) or earlier.stages[index] != stage:
            reason = "not measured yet" if getattr(earlier, stage) is None else "an earlier stage differs"
        elif not same_plain(earlier.config.get(stage), result.config.get(stage)):
            reason = "its settings changed"
        else:
            kept.append(stage)
            continue
        if len(kept) < len(earlier.stages):
            log.info("%s: stage %s is run again (%s), with every later stage", path, stage, reason)
        break
    log.info("continuing calibration %s from %s: stages %s kept", earlier.calibration_id, path, kept or "none")
    return kept


def _refuse_other_bench(before: dict, now: dict, what: str) -> None:
    changed = changed_settings(before, now)
    if changed:
        raise CalibrationError(f"{what} was measured on another bench ({'; '.join(changed)}): its measurements "
                               "are not mixed with this bench's (measure every stage here instead)")


# ---------------------------------------------------------------------------------------- progress
#: Frames an automatic exposure reads, roughly (for the time-left estimate only).
_AUTO_EXPOSURE_FRAMES = 6


def expected_frames(stage: str, config: CalibrationConfig, system: OpticalSystem) -> int | None:
    """Roughly how many frames ``stage`` reads with ``config`` (None for the fit): the total of its
    progress bar, from which the time left is estimated (the bar grows when a stage reads more)."""
    a = _AUTO_EXPOSURE_FRAMES
    if stage == "sensor":
        s = config.sensor
        return a + 2 + s.read_frames + s.frames + 2 * s.frames * s.num_exposures
    if stage == "display":
        d = config.display
        return a + (d.levels + 1) * d.frames
    if stage == "geometry":
        g = config.geometry
        return g.averages * (g.phases**2 + 1)
    if stage == "psf":
        p = config.psf
        return a + 4 * p.averages + (1 + HOLDOUT_IMAGES) * (a + 2 * p.averages)
    return None


class StageProgress:
    """Progress of the stages of one calibration: a log line as each starts (``calibration stage 2/5
    display``, the time since the calibration started) and ends, and while a measuring stage reads
    frames a bar of them with the time left (:func:`onn_core.progress.progress_bar`: drawn on a
    terminal only) and at most one log line every :data:`onn_core.progress.LOG_INTERVAL_S` with
    the frames read and the time left."""

    def __init__(self, stages, enabled: bool | None = True, clock=time.monotonic):
        self.stages, self.enabled, self.clock = tuple(stages), enabled, clock
        self.start = clock()

    def _where(self, index: int, stage: str) -> str:
        return f"calibration stage {index + 1}/{len(self.stages)} {stage}"

    def elapsed(self) -> str:
        return format_duration(self.clock() - self.start)

    def skipped(self, index: int, stage: str, why: str) -> None:
        log.info("%s: %s", self._where(index, stage), why)

    @contextlib.contextmanager
    def stage(self, index: int, stage: str, expected: int | None):
        where = self._where(index, stage)
        log.info("%s: started (%s into the calibration)", where, self.elapsed())
        started, frames, throttle = self.clock(), [0], Throttle(clock=self.clock)
        throttle.ready()  # the first line after LOG_INTERVAL_S of frames, when the rate means something
        bar = (progress_bar(total=expected, desc=where, unit="frame", enabled=self.enabled)
               if expected is not None else None)

        def on_frame():
            frames[0] += 1
            if bar is None:
                return
            if bar.total is not None and frames[0] > bar.total:
                bar.total = frames[0] + max(1, bar.total // 10)
            bar.update(1)
            if throttle.ready():
                spent = self.clock() - started
                left = (bar.total - frames[0]) * spent / frames[0] if spent > 0 else float("nan")
                log.info("%s: %d of about %d frames, %s, about %s left", where, frames[0], bar.total,
                         format_duration(spent), format_duration(left))

        try:
            yield on_frame
        finally:
            if bar is not None:
                bar.close()
        log.info("%s: done in %s%s (%s into the calibration)", where, format_duration(self.clock() - started),
                 f", {frames[0]} frames" if frames[0] else "", self.elapsed())

    def finished(self) -> None:
        log.info("calibration: %d stages done in %s", len(self.stages), self.elapsed())


class _CountingBench:
    """The bench, every frame read through :meth:`measure` or :meth:`read` reported to ``on_frame``
    (the frames of an automatic exposure included); everything else is the bench's own."""

    def __init__(self, bench):
        self._bench, self.on_frame = bench, None

    def __getattr__(self, name):
        return getattr(self._bench, name)

    def _count(self, value):
        if self.on_frame is not None:
            self.on_frame()
        return value

    def measure(self, image, **kwargs):
        return self._count(self._bench.measure(image, **kwargs))

    def read(self, **kwargs):
        return self._count(self._bench.read(**kwargs))

    def auto_exposure(self, image, **kwargs) -> float:
        return self._bench.camera.auto_exposure(read=lambda: self.measure(image).frame, **kwargs)


def _run_stage(stage: str, bench, system: OpticalSystem, config: CalibrationConfig, result: Calibration,
               diagnostics_dir=None, device: torch.device | None = None) -> None:
    if stage == "sensor":
        s = config.sensor
        result.sensor = measure_sensor(bench, frames=s.frames, read_frames=s.read_frames, num_exposures=s.num_exposures)
    elif stage == "display":
        d = config.display
        result.display = measure_display_response(bench, levels=default_levels(bench.slm.bit_depth, d.levels),
                                                  frames=d.frames, sensor=result.sensor)
    elif stage == "geometry":
        g = config.geometry
        result.geometry = measure_geometry(bench, system, averages=g.averages, phases=g.phases,
                                           diagnostics_dir=diagnostics_dir)
        margin = system.geometry.psf_margin_px
        worst = float(np.abs(result.geometry.offsets_px).max())
        if worst > margin:
            raise CalibrationError(f"a tile is displaced by {worst:.2f} px, more than geometry.psf_margin_px = {margin}: "
                                   "the PSF windows would cut its light; raise psf_margin_px in the optics")
    elif stage == "psf":
        p = config.psf
        result.psf = measure_psfs(bench, system, noise=result.pixel_noise(), averages=p.averages,
                                  bracket_factor=p.bracket_factor)
    elif stage == "fit":
        result.fit = fit_mismatch(result.psf, system, noise=result.pixel_noise(), settings=config.fit,
                                  device=device)


def _nominal_config(system: OpticalSystem) -> dict:
    optics = system.to_config()
    optics["errors"] = None  # the nominal system: the design itself
    # the design's PSFs themselves, so the calibration file needs no design file nor its folder
    optics["design"] = {"generator": "inline", "signed": False,
                        "psfs": system.design.psfs().detach().cpu().double().tolist()}
    return optics


__all__ = ["Calibration", "CalibrationConfig", "IGNORED_SETTINGS", "MEASURING_STAGES", "STAGES", "StageProgress",
           "calibrate", "changed_settings", "expected_frames", "same_plain"]
