"""The temporal noise of a camera pixel, in the frame's DN: the model the calibration fits weight by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.sensor import SensorModel


@dataclass(frozen=True)
class PixelNoise:
    """Temporal noise of one pixel reading, in the camera frame's DN (Poisson-Gaussian).

    With the conversion gain ``e_per_dn`` in electrons per frame DN: ``var = shot_factor * max(mean -
    offset_dn, 0) / e_per_dn + read_noise_dn**2 + step_dn**2 / 12`` (shot noise, read noise, and the
    quantisation of an ADC step of ``step_dn`` frame DN). ``shot_factor`` is 1 for a camera's own
    pixels and less for frames resampled from them (:mod:`drivers.located`: neighbouring pixels share
    camera pixels, so a pixel's shot noise is less than its electrons'). ``e_per_dn_rel_sigma``: the
    relative standard error of ``e_per_dn`` where it was measured (0: taken as known, e.g. nominal); a
    light measured in DN converts to photons no better than that.
    """

    e_per_dn: float
    offset_dn: float
    read_noise_dn: float
    step_dn: float = 1.0
    shot_factor: float = 1.0
    e_per_dn_rel_sigma: float = 0.0

    @classmethod
    def from_sensor(cls, sensor: SensorModel) -> "PixelNoise":
        """The nominal noise of a :class:`~simulator.sensor.SensorModel` (frame DN include the
        left-justification factor of a container wider than the ADC)."""
        scale = sensor.justify_scale
        return cls(e_per_dn=sensor.gain_e_per_dn / scale, offset_dn=sensor.offset_dn * scale,
                   read_noise_dn=sensor.read_noise_e / sensor.gain_e_per_dn * scale,
                   step_dn=float(scale) if sensor.bit_depth is not None else 0.0)

    def variance_dn2(self, mean_dn: np.ndarray) -> np.ndarray:
        """Expected variance (DN^2) of a single reading whose expectation is ``mean_dn``."""
        signal = np.maximum(np.asarray(mean_dn, dtype=np.float64) - self.offset_dn, 0.0)
        return self.shot_factor * signal / self.e_per_dn + self.read_noise_dn**2 + self.step_dn**2 / 12.0
