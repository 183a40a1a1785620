"""Camera frames: :class:`RawFrame` (what a backend's ``_snap`` hook returns) and :class:`Frame` (what
:meth:`drivers.camera.Camera.snap` returns: the image and its metadata)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RawFrame:
    """What a camera backend's ``_snap`` returns.

    Attributes
    ----------
    image : np.ndarray
        (rows, cols) or (rows, cols, channels) of the camera's dtype: the window the device delivers (the
        whole sensor unless the backend's ``_set_roi`` applied one; the base class crops it to the ROI).
    timestamp_s : float, optional
        Start of the exposure on the camera's clock (s), when the device reports it. None: the device
        does not say; the base class then records what it knows (see :attr:`Frame.timing`).
    index : int, optional
        The device's frame counter. None: the base class counts frames itself.
    meta : mapping
        Backend-specific extras, copied into :attr:`Frame.meta`.
    """

    image: np.ndarray
    timestamp_s: float | None = None
    index: int | None = None
    meta: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """One camera frame and its metadata.

    Attributes
    ----------
    image : np.ndarray
        (rows, cols) or (rows, cols, channels): the camera's integer dtype for snapped frames, float64
        for averaged and high-dynamic-range frames (counts at ``exposure_s``, black level included for
        averages and subtracted for HDR).
    index : int
        Frame counter (the device's when it has one).
    timestamp_s : float
        Start of the exposure on the camera's clock (s), as far as it is known (see ``timing``).
    exposure_s : float
        Exposure time (s).
    gain : float
        Gain when the frame was taken.
    settings : mapping
        :meth:`Camera.settings` snapshot when the frame was taken.
    meta : mapping
        Backend extras (e.g. ``slm_frame_id`` for the simulated camera) and, for averaged/HDR frames,
        how they were made.
    timing : {"device", "triggered", "estimated"}
        What ``timestamp_s`` rests on. ``"device"``: the camera's own timestamp of the exposure start.
        ``"triggered"``: the camera has none, but it is in software-trigger mode, so the exposure
        started at or after ``timestamp_s``, the time the :meth:`Camera.snap` call began (a recorded
        file or a simulator may return at once). ``"estimated"``: a free-running camera without
        timestamps; ``timestamp_s`` is the time the frame arrived minus the exposure, and the exposure
        may have started earlier (only the frame counter orders such frames, see
        :meth:`drivers.bench.Bench.measure`).
    """

    image: np.ndarray
    index: int
    timestamp_s: float
    exposure_s: float
    gain: float
    settings: Mapping
    meta: Mapping = field(default_factory=dict)
    timing: str = "estimated"
