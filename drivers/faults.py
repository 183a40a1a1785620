"""Seeded fault injection for the simulated devices.

A :class:`FaultConfig` (the ``faults:`` section of a simulated device in a bench YAML) gives per-call
probabilities of each fault; a :class:`FaultInjector` draws them from its own seeded generator, so a
run with the same seed and the same calls fails in the same places.

Faults, per call of ``snap`` (camera) or ``show`` (SLM):

- ``timeout``: the answer comes after the caller's deadline: the call waits out its timeout, then
  fails with a timeout;
- ``exception``: the backend raises an I/O error (``OSError``), which the driver layer chains into
  :class:`~drivers.errors.DeviceFault`;
- ``hang``: the device stops answering for ``hang_s`` seconds: every call in that time times out;
- ``stale`` (camera): the previous frame is delivered again, with its old index and timestamp;
- ``drop`` (camera): a frame is lost; the next one is delivered (a gap in the frame index);
- ``disconnect_after_frames``: after that many successful frames (camera) or shows (SLM), every call
  fails as if the cable were pulled (``ConnectionError``, chained into
  :class:`~drivers.errors.DeviceDisconnected`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Faults drawn per call, in the order their probabilities are stacked.
RANDOM_FAULTS = ("timeout", "exception", "hang", "stale", "drop")
CAMERA_ONLY = ("stale", "drop")


@dataclass
class FaultConfig:
    """Probabilities (per call, each in [0, 1], summing to <= 1) and parameters of injected faults."""

    seed: int = 0
    timeout_rate: float = 0.0
    exception_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 2.0
    stale_rate: float = 0.0
    drop_rate: float = 0.0
    disconnect_after_frames: int | None = None

    def __post_init__(self):
        for name in RANDOM_FAULTS:
            rate = getattr(self, f"{name}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}_rate must be in [0, 1], got {rate!r}")
        if self.total_rate > 1.0:
            raise ValueError(f"fault rates must sum to <= 1, got {self.total_rate:g}")
        if not self.hang_s > 0:
            raise ValueError(f"hang_s must be > 0, got {self.hang_s!r}")
        if self.disconnect_after_frames is not None and self.disconnect_after_frames < 0:
            raise ValueError(f"disconnect_after_frames must be >= 0 or null, got {self.disconnect_after_frames!r}")

    @property
    def total_rate(self) -> float:
        """Probability that a call draws some fault."""
        return sum(getattr(self, f"{name}_rate") for name in RANDOM_FAULTS)

    @property
    def active(self) -> bool:
        return self.total_rate > 0 or self.disconnect_after_frames is not None


class FaultInjector:
    """Draws the faults of a :class:`FaultConfig` call by call and keeps count of them.

    Attributes
    ----------
    counts : dict
        How many times each fault was injected (``timeout``, ..., ``disconnect``).
    frames : int
        Successful frames/shows so far (for ``disconnect_after_frames``).
    """

    def __init__(self, config: FaultConfig | None = None):
        self.config = config if config is not None else FaultConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self._thresholds = np.cumsum([getattr(self.config, f"{n}_rate") for n in RANDOM_FAULTS])
        self._any_random = self.config.total_rate > 0
        self.counts = {name: 0 for name in (*RANDOM_FAULTS, "disconnect")}
        self.frames = 0
        self.hung_until_s = -np.inf

    @property
    def disconnected(self) -> bool:
        n = self.config.disconnect_after_frames
        return n is not None and self.frames >= n

    def draw(self, now_s: float, allowed=RANDOM_FAULTS) -> str | None:
        """The fault of this call: ``"disconnect"``, ``"hung"`` (inside a hang), one of
        :data:`RANDOM_FAULTS` restricted to ``allowed``, or None."""
        if self.disconnected:
            self.counts["disconnect"] += 1
            return "disconnect"
        if now_s < self.hung_until_s:
            return "hung"
        if not self._any_random:
            return None
        u = self._rng.random()
        index = int(np.searchsorted(self._thresholds, u, side="right"))
        if index >= len(RANDOM_FAULTS) or RANDOM_FAULTS[index] not in allowed:
            return None
        fault = RANDOM_FAULTS[index]
        self.counts[fault] += 1
        if fault == "hang":
            self.hung_until_s = now_s + self.config.hang_s
        return fault

    def delivered(self) -> None:
        """Count one successful frame/show."""
        self.frames += 1
