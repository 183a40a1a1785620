"""What a calibration is: its stages (:data:`STAGES`), its config (:class:`CalibrationConfig`, the
``calibration`` section of a config file) and its result (:class:`Calibration`: the calibrated forward
model and the calibration layer), with the comparison of bench settings that decides whether two
calibrations were measured on the same bench (:func:`changed_settings`).

:func:`calibration.api.calibrate` makes a :class:`Calibration`; :mod:`calibration.file` saves and loads it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from onn_core import config as config_io
from onn_core.errors import ConfigError
from simulator.device import check_device_name
from simulator.fabrication import FabricationErrors
from simulator.system import OpticalSystem

from .display_response import DisplayCalibration
from .fit import FitSettings, MismatchFit
from .geometry import GeometryCalibration
from .layer import CalibrationLayer
from .noise import PixelNoise
from .psf import PSFMeasurement
from .sensor import SensorCalibration

STAGES = ("sensor", "display", "geometry", "psf", "fit")
#: The stages that read frames from the bench (the fit works on the PSF stage's frames alone).
MEASURING_STAGES = ("sensor", "display", "geometry", "psf")
#: Device settings that do not matter to a calibration (per device; calibration.file warns about the others).
IGNORED_SETTINGS = frozenset({"exposure_s", "timeout_s", "retries", "max_stale_reads", "name", "frames_served",
                              "faults"})


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
    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``: CUDA when available): where the mismatch fit
    (:func:`~calibration.fit.fit_mismatch`) computes, in float64; checked and resolved before anything
    is measured (CUDA where there is none is refused naming ``calibration.device``). Its results are on
    the CPU either way; the measuring stages do not use it."""

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
    """What :func:`calibration.api.calibrate` measured and fitted on one bench (module docstring)."""

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
    #: Where stages came from when not measured by this calibration: ``{"measurements_from":
    #: {"calibration_id", "path", "stages"}}`` (stages copied from an earlier calibration); empty otherwise.
    provenance: dict = field(default_factory=dict)

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
        if self.provenance:
            out["provenance"] = copy.deepcopy(self.provenance)
        for stage in self.stages:
            out[stage] = getattr(self, stage).summary()
        return out




def changed_settings(before: dict, now: dict) -> list[str]:
    """``device.key: before, now`` for every device setting (slm, camera, light) that differs, those of
    :data:`IGNORED_SETTINGS` left out."""
    before, now = _normal(before or {}), _normal(now or {})
    changed = []
    for device in ("slm", "camera", "light"):
        old, new = before.get(device) or {}, now.get(device) or {}
        for key in sorted(set(old) | set(new)):
            if key not in IGNORED_SETTINGS and old.get(key) != new.get(key):
                changed.append(f"{device}.{key}: {old.get(key)!r} then, {new.get(key)!r} now")
    return changed


def same_plain(a, b) -> bool:
    """Whether two config-like values are equal once written as JSON (tuples as lists, numbers as stored)."""
    return _normal(a) == _normal(b)


def _normal(value):
    return json.loads(json.dumps(config_io.to_plain(value)))


__all__ = ["Calibration", "CalibrationConfig", "DisplaySettings", "GeometrySettings", "IGNORED_SETTINGS",
           "MEASURING_STAGES", "PSFSettings", "STAGES", "SensorSettings", "changed_settings", "same_plain"]
