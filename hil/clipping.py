"""A warning when the frames an optical student trains through clip.

The student's frontend renders camera frames with the sensor model of ``model.optics`` (full well, ADC
range): a design whose PSFs carry too much light, or optics with too long an exposure, trains through
a saturated sensor, whose features no longer follow the kernels. :func:`clip_watch` gives
:func:`hil.api.train` a step callback that checks the expected (noise-free) frames of a fixed sample
of training images at the first step and every ``every_steps`` steps, and warns once when more than
:data:`CLIPPED_WARN` of their pixels reach saturation, naming the config fields to change.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

#: Fraction of clipped pixels above which training warns.
CLIPPED_WARN = 1e-3
#: Training images whose frames are checked.
SAMPLE = 64


def clipped_fraction(system, images: torch.Tensor) -> float:
    """Fraction of the pixels of the expected (noise-free) frames of ``images`` (N, C, H, W) in [0, 1]
    through ``system`` (an :class:`~simulator.system.OpticalSystem`) at or above the sensor's
    saturation (0 for a sensor that does not clip)."""
    saturation = system.sensor.saturation_dn
    if saturation is None:
        return 0.0
    with torch.no_grad():
        frames = system.frame(system.gray_levels(images), noise=False)
    return float((frames >= saturation).double().mean())


class ClipWatch:
    """Step callback (``callback(trainer)``): :func:`clipped_fraction` of ``images`` through ``system``
    at the first step and every ``every_steps`` steps; one warning for the run."""

    def __init__(self, system, images: torch.Tensor, every_steps: int = 200):
        self.system, self.images, self.every_steps = system, images, every_steps
        self.warned = False

    def __call__(self, trainer) -> None:
        if self.warned or (trainer.step != 1 and trainer.step % self.every_steps):
            return
        fraction = clipped_fraction(self.system, self.images.to(next(self.system.parameters()).device))
        if fraction > CLIPPED_WARN:
            self.warned = True
            log.warning("step %d: %.1f %% of the pixels of the frames the student trains through are clipped at the "
                        "sensor's saturation: shorten model.optics.photometry.exposure_s (or lower photons_per_s), or "
                        "lower model.transmission", trainer.step, 100 * fraction)


def clip_watch(model, train_set, every_steps: int = 200) -> tuple:
    """``(ClipWatch,)`` for an optical student whose frontend renders frames (an
    :class:`~simulator.system.OpticalSystem`) and whose sensor clips; ``()`` otherwise."""
    from simulator.system import OpticalSystem

    from .trainer import fetch_batch

    frontend = getattr(model, "frontend", None)
    if not isinstance(frontend, OpticalSystem) or frontend.sensor.saturation_dn is None or len(train_set) == 0:
        return ()
    images, _ = fetch_batch(train_set, list(range(min(SAMPLE, len(train_set)))))
    return (ClipWatch(frontend, images, every_steps),)


__all__ = ["CLIPPED_WARN", "ClipWatch", "clip_watch", "clipped_fraction"]
