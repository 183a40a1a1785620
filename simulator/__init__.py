"""Differentiable optics for hybrid optical neural networks: fields, propagation, meta-optic PSFs,
incoherent optical convolution, display and sensor models, fabrication errors, and the one optical
system (:class:`simulator.system.OpticalSystem`) that training, the simulated bench and calibration
share. Pure torch."""

from onn_core.errors import ConfigError, HilError, InputError, SamplingError
from .field import Field, Grid

__all__ = ["ConfigError", "HilError", "InputError", "SamplingError", "Field", "Grid"]
