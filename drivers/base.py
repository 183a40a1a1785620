"""Old home of the device base classes, kept so that ``from drivers.base import ...`` keeps working
for one release: import from :mod:`drivers.device` (:class:`Device`, :class:`OpenContext`),
:mod:`drivers.frames` (:class:`Frame`, :class:`RawFrame`), :mod:`drivers.camera` (:class:`Camera`) and
:mod:`drivers.slm` (:class:`SLM`) instead."""

from .camera import TRIGGER_MODES, Camera
from .device import DEFAULT_TIMEOUT_S, Device, OpenContext, config_errors, integer_dtype_for
from .frames import Frame, RawFrame
from .slm import MODULATIONS, SLM

__all__ = ["Camera", "DEFAULT_TIMEOUT_S", "Device", "Frame", "MODULATIONS", "OpenContext", "RawFrame", "SLM",
           "TRIGGER_MODES", "config_errors", "integer_dtype_for"]
