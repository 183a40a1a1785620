"""``calibrate(bench, system, config) -> Calibration``: every stage on one bench, one result object.

Stages run in this order (each optional, :data:`STAGES`): **sensor** (photon transfer, dark, defects:
:mod:`calibration.sensor`), **display** (gray level -> radiance, LUT: :mod:`calibration.display_response`),
**geometry** (display -> camera homographies, tile offsets: :mod:`calibration.geometry`), **psf** (point
sources through every sub-optic: :mod:`calibration.psf`) and **fit** (fabrication errors through the
optical system: :mod:`calibration.fit`). Later stages use earlier results: the PSF capture and the
fit weigh pixels with the sensor's measured noise, and the layer converts DN with its gain.

A :class:`Calibration` gives the two things post-fabrication fine-tuning needs: the **calibrated
forward model** (:meth:`Calibration.calibrated_system`: the design with the fitted errors, the
measured display LUT and sensor) and the **calibration layer** (:meth:`Calibration.layer`: raw frame
-> aligned features). :mod:`calibration.file` saves and loads it.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import math
import uuid
from dataclasses import dataclass, field

import numpy as np

from drivers.bench_fits import check_bench_fits
from onn_core import config as config_io
from onn_core.errors import ConfigError, HilError
from simulator.device import check_device_name, resolve_device
from simulator.fabrication import FabricationErrors
from simulator.system import OpticalSystem

from .display_response import DisplayCalibration, default_levels, measure_display_response
from .errors import CalibrationError
from .fit import FitSettings, MismatchFit, fit_mismatch
from .geometry import GeometryCalibration, measure_geometry
from .layer import CalibrationLayer
from .noise import PixelNoise
from .psf import PSFMeasurement, measure_psfs
from .sensor import SensorCalibration, measure_sensor

log = logging.getLogger(__name__)

STAGES = ("sensor", "display", "geometry", "psf", "fit")


@dataclass(frozen=True)
class SensorSettings:
    frames: int = 8
    read_frames: int = 16
    num_exposures: int = 10


@dataclass(frozen=True)
class DisplaySettings:
    levels: int = 33
    frames: int = 4


@dataclass(frozen=True)
class GeometrySettings:
    averages: int = 4
    phases: int = 3


@dataclass(frozen=True)
class PSFSettings:
    averages: int = 8
    bracket_factor: float = 8.0


@dataclass(frozen=True)
class CalibrationConfig:
    """The ``calibration`` section of a config (every field optional; see examples/calibrate_sim.yaml).
    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``): where the mismatch fit is to compute; checked
    and resolved (CUDA where there is none is refused naming ``calibration.device``), but the fit
    (:mod:`calibration.fit`) takes no device yet and runs on the CPU, saying so."""

    stages: tuple[str, ...] = STAGES
    sensor: SensorSettings = field(default_factory=SensorSettings)
    display: DisplaySettings = field(default_factory=DisplaySettings)
    geometry: GeometrySettings = field(default_factory=GeometrySettings)
    psf: PSFSettings = field(default_factory=PSFSettings)
    fit: FitSettings = field(default_factory=FitSettings)
    device: str = "cpu"

    def __post_init__(self):
        check_device_name(self.device, "calibration.device")
        stages = tuple(self.stages)
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise ConfigError("calibration.stages", list(self.stages), f"a non-empty list of {list(STAGES)}")
        if "fit" in stages and "psf" not in stages:
            raise ConfigError("calibration.stages", list(stages), "'psf' as well: the fit needs the PSF capture")
        object.__setattr__(self, "stages", tuple(s for s in STAGES if s in stages))

    @classmethod
    def from_dict(cls, mapping: dict | None, path: str = "calibration") -> "CalibrationConfig":
        return config_io.build(cls, mapping or {}, path)


@dataclass
class Calibration:
    """What :func:`calibrate` measured and fitted on one bench (module docstring)."""

    optics: dict                         # the nominal optical system's config
    bench_settings: dict                 # the devices' settings while measuring
    config: dict                         # the resolved calibration config
    created_utc: str
    calibration_id: str
    sensor: SensorCalibration | None = None
    display: DisplayCalibration | None = None
    geometry: GeometryCalibration | None = None
    psf: PSFMeasurement | None = None
    fit: MismatchFit | None = None

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if getattr(self, s) is not None]

    def nominal_system(self) -> OpticalSystem:
        return OpticalSystem.from_config(copy.deepcopy(self.optics))

    def pixel_noise(self) -> PixelNoise:
        """The measured noise model (or the nominal one without a sensor stage) of the frames calibrated.

        Frames resampled from a larger camera frame (a located camera, :mod:`drivers.located`, whose
        factors ``c``, ``d`` the bench settings recorded) have a shot-noise variance ``c`` times a pixel's
        and a read-noise variance ``d`` times: the sensor stage measured ``e_per_dn / c`` (the slope of
        variance against signal) and the read noise as it is in these frames, so the gain is
        ``c x`` that measured (the photometry stays the camera's) with ``shot_factor = c``; without a
        sensor stage the nominal read noise is scaled by ``sqrt(d)``.
        """
        located = (self.bench_settings.get("camera") or {}).get("located")
        if self.sensor is not None:
            noise = self.sensor.pixel_noise
            if located:
                c = located["shot_noise_factor"]
                noise = dataclasses.replace(noise, e_per_dn=noise.e_per_dn * c, shot_factor=c)
            return noise
        noise = PixelNoise.from_sensor(self.nominal_system().sensor)
        if located:
            noise = dataclasses.replace(noise, read_noise_dn=noise.read_noise_dn * math.sqrt(located["read_noise_factor"]),
                                        shot_factor=located["shot_noise_factor"])
        return noise

    def calibrated_system(self) -> OpticalSystem:
        """The calibrated forward model: the design with the fitted errors, the measured display LUT
        and the measured sensor gain, offset and read noise (nominal where a stage is missing)."""
        optics = copy.deepcopy(self.optics)
        if self.fit is not None:
            optics["errors"] = self.fit.errors.to_dict()
        if self.display is not None:
            optics["display"] = {k: v for k, v in optics.get("display", {}).items() if k not in ("gamma", "lut", "lut_file")}
            optics["display"]["lut"] = self.display.lut().values.tolist()
        if self.sensor is not None:
            nominal = self.nominal_system().sensor
            scale = nominal.justify_scale
            noise = self.pixel_noise()
            optics["sensor"] = {**optics.get("sensor", {}), "gain_e_per_dn": noise.e_per_dn * scale,
                                "offset_dn": noise.offset_dn / scale, "read_noise_e": noise.read_noise_dn * noise.e_per_dn}
        return OpticalSystem.from_config(optics)

    def layer(self) -> CalibrationLayer:
        """Raw frame -> aligned features (:mod:`calibration.layer`)."""
        system = self.nominal_system()
        noise = self.pixel_noise()
        if self.sensor is not None:
            dark = self.sensor.dark_frame
        else:
            def dark(exposure_s, offset=noise.offset_dn, shape=system.frame_shape):
                return np.full(shape, offset)
        if self.fit is not None:
            errors = self.fit.errors
        elif self.geometry is not None:  # tiles cut at the measured offsets
            errors = FabricationErrors(system.num_psfs, shift_px=np.asarray(self.geometry.offsets_px, dtype=np.float64))
        else:
            errors = FabricationErrors.identity(system.num_psfs)
        return CalibrationLayer.from_errors(system, errors, e_per_dn=noise.e_per_dn, dark_dn=dark)

    def summary(self) -> dict:
        out = {"calibration_id": self.calibration_id, "created_utc": self.created_utc, "stages": self.stages}
        for stage in self.stages:
            out[stage] = getattr(self, stage).summary()
        return out


def calibrate(bench, system: OpticalSystem, config: CalibrationConfig | dict | None = None, *,
              diagnostics_dir=None) -> Calibration:
    """Run the configured stages on ``bench`` against the nominal ``system`` (module docstring).
    ``diagnostics_dir``: where a failed geometry stage saves its annotated frame
    (:data:`calibration.geometry.DIAGNOSTIC_NAME`; its error names the file); None: nowhere.

    Raises :class:`~drivers.bench_fits.BenchMismatch` before anything is shown when the bench does not
    fit ``system``, and :class:`~calibration.errors.CalibrationError` (with the stage named) when a
    measurement or fit fails; the SLM is left blank by the bench on any exit.
    """
    config = config if isinstance(config, CalibrationConfig) else CalibrationConfig.from_dict(config)
    device = resolve_device(config.device, "calibration.device")
    if "fit" in config.stages and device.type != "cpu":
        log.warning("calibration.device %s: the mismatch fit takes no device yet and runs on the CPU", device)
    check_bench_fits(bench, system)
    result = Calibration(optics=_nominal_config(system), bench_settings=config_io.to_plain(bench.settings()),
                         config=config_io.to_plain(config),
                         created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         calibration_id=uuid.uuid4().hex)
    for stage in config.stages:
        log.info("calibration stage %s", stage)
        try:
            _run_stage(stage, bench, system, config, result, diagnostics_dir)
        except HilError as exc:  # CalibrationError, ExposureError, device errors
            if hasattr(exc, "add_note"):
                exc.add_note(f"in calibration stage {stage!r}")
            raise
    bench.blank()
    return result


def _run_stage(stage: str, bench, system: OpticalSystem, config: CalibrationConfig, result: Calibration,
               diagnostics_dir=None) -> None:
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
        result.fit = fit_mismatch(result.psf, system, noise=result.pixel_noise(), settings=config.fit)


def _nominal_config(system: OpticalSystem) -> dict:
    optics = system.to_config()
    optics["errors"] = None  # the nominal system: the design itself
    # the design's PSFs themselves, so the calibration file needs no design file nor its folder
    optics["design"] = {"generator": "inline", "signed": False,
                        "psfs": system.design.psfs().detach().cpu().double().tolist()}
    return optics


__all__ = ["Calibration", "CalibrationConfig", "STAGES", "calibrate"]
