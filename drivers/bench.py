"""The Bench: one SLM and one camera, measured together safely.

:meth:`Bench.measure` shows an image, waits on the shared clock until the SLM has settled, makes sure
the frame it returns was exposed entirely after that (a software trigger, or a flush of a free-running
camera's buffer plus a check of the frame's timestamp and index), and retries transient failures
(:class:`DeviceTimeout`, :class:`DeviceFault`, :class:`StaleFrame`) a bounded number of times.

Closing a bench blanks the SLM and closes both devices, whatever happened: use it as a context manager
(``with open_bench(cfg) as bench:``). Ctrl-C arriving while it cleans up is held back until the
cleanup is done; a bench never closed is closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
from dataclasses import dataclass

import numpy as np

from simulator.errors import InputError

from .base import Camera, Frame, SLM
from .errors import DeviceClosed, DeviceFault, DeviceTimeout, StaleFrame

log = logging.getLogger(__name__)

#: Errors after which ``measure`` tries again (others -- disconnects, bad input -- are raised at once).
RETRYABLE = (DeviceTimeout, DeviceFault, StaleFrame)


@dataclass(frozen=True)
class Measurement:
    """One image shown and the frame that saw it.

    Attributes
    ----------
    frame : Frame
        The camera frame, exposed entirely after ``settled_at_s``.
    shown : np.ndarray
        The exact integer frame the SLM displayed.
    slm_frame_id : int
        The SLM's counter for that show.
    shown_at_s, settled_at_s : float
        Clock times (s) when ``show`` returned and when the image had settled.
    attempts : int
        Attempts used (1 = no retry).
    stale_frames : int
        Frames read and discarded because they were exposed too early (or repeated).
    """

    frame: Frame
    shown: np.ndarray
    slm_frame_id: int
    shown_at_s: float
    settled_at_s: float
    attempts: int
    stale_frames: int


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C back inside the block (main thread only) and raise it when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # signals unavailable (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class Bench:
    """One SLM and one camera on one clock.

    Parameters
    ----------
    slm : SLM
    camera : Camera
        Their clocks must share a timeline (the same object, or both real).
    retries : int
        Further attempts after a transient failure in :meth:`measure`.
    timeout_s : float, optional
        Per-frame camera timeout beyond the exposure (default: the camera's).
    max_stale_reads : int
        Frames read per attempt before giving up with :class:`StaleFrame`.
    config : dict, optional
        The resolved configuration the bench was opened with (kept for metadata).
    """

    def __init__(self, slm: SLM, camera: Camera, *, retries: int = 3, timeout_s: float | None = None,
                 max_stale_reads: int = 4, config: dict | None = None):
        if not isinstance(slm, SLM) or not isinstance(camera, Camera):
            raise InputError(f"Bench needs an SLM and a Camera, got {type(slm).__name__} and {type(camera).__name__}")
        if not slm.clock.shares_timeline(camera.clock):
            raise InputError("the SLM and the camera must share one clock (timestamps are compared)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(max_stale_reads, bool) or not isinstance(max_stale_reads, int) or max_stale_reads < 1:
            raise InputError(f"max_stale_reads must be an integer >= 1, got {max_stale_reads!r}")
        self.slm, self.camera = slm, camera
        self.retries, self.timeout_s, self.max_stale_reads = retries, timeout_s, max_stale_reads
        self.config = config or {}
        self._last_index: int | None = None
        self._closed = False
        atexit.register(self.close)

    @property
    def clock(self):
        """The clock the bench waits on (the camera's)."""
        return self.camera.clock

    @property
    def closed(self) -> bool:
        return self._closed

    def settings(self) -> dict:
        """Snapshot of both devices' settings and the bench's own."""
        return {
            "slm": self.slm.settings(),
            "camera": self.camera.settings(),
            "bench": {"retries": self.retries, "timeout_s": self.timeout_s, "max_stale_reads": self.max_stale_reads},
        }

    # --------------------------------------------------------------------------------- measuring
    def measure(self, image, *, phase: bool = False, timeout_s: float | None = None) -> Measurement:
        """Show ``image`` (gray levels, or radians with ``phase=True``) and capture the frame that sees it.

        Raises
        ------
        InputError
            The image does not fit the SLM (raised before anything is shown).
        DeviceTimeout, DeviceFault, StaleFrame
            The last failure, once ``retries`` further attempts have failed too (a note on the
            exception says how many attempts were made).
        DeviceDisconnected, DeviceClosed, UnsupportedFeature
            At once (retrying cannot help).
        """
        if self._closed:
            raise DeviceClosed("bench used after close()")
        if phase:
            if self.slm.modulation != "phase":
                raise InputError("phase=True needs a phase SLM")
            gray = self.slm.lut.to_gray(np.asarray(image, dtype=np.float64)).astype(self.slm.dtype)
        else:
            gray = image
        frame_to_show = self.slm.to_frame(gray)
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        shown = None
        stale = 0
        last_error: Exception | None = None
        for attempt in range(1, self.retries + 2):
            try:
                if shown is None:
                    shown = self.slm.show(frame_to_show)
                    shown_id = self.slm.frame_id
                settled_at = self.slm.settled_at_s
                self.slm.wait_settled()
                frame, discarded = self._fresh_frame(settled_at, timeout)
                stale += discarded
                self._last_index = frame.index
                return Measurement(frame, shown, shown_id, self.slm.shown_at_s, settled_at, attempt, stale)
            except RETRYABLE as exc:
                if isinstance(exc, StaleFrame):
                    stale += self.max_stale_reads
                last_error = exc
                log.info("measure attempt %d/%d failed: %s", attempt, self.retries + 1, exc)
        if hasattr(last_error, "add_note"):  # Python >= 3.11
            last_error.add_note(f"Bench.measure gave up after {self.retries + 1} attempts")
        raise last_error

    def _fresh_frame(self, settled_at_s: float, timeout_s: float | None) -> tuple[Frame, int]:
        """A frame exposed entirely after ``settled_at_s`` and newer than the last one returned."""
        if self.camera.trigger_mode == "free-run":
            self.camera.flush()
        for discarded in range(self.max_stale_reads):
            frame = self.camera.snap(timeout_s)
            repeated = self._last_index is not None and frame.index <= self._last_index
            if frame.timestamp_s >= settled_at_s and not repeated:
                return frame, discarded
            log.debug("discarded frame %d (exposed at %.6f s, image settled at %.6f s%s)", frame.index,
                      frame.timestamp_s, settled_at_s, ", repeated index" if repeated else "")
        raise StaleFrame(f"{self.max_stale_reads} frames in a row were exposed before the image settled", device=self.camera.name)

    # --------------------------------------------------------------------------------- closing
    def close(self) -> None:
        """Blank the SLM and close both devices (idempotent; failures are logged, Ctrl-C held back)."""
        if self._closed:
            return
        with _sigint_deferred():
            self._closed = True
            atexit.unregister(self.close)
            self._blank()
            for device in (self.slm, self.camera):
                try:
                    device.close()
                except Exception as exc:
                    log.warning("bench close: could not close %s: %s", device.name, exc)

    def _blank(self) -> None:
        """Blank the SLM, retrying transient failures like :meth:`measure`."""
        if self.slm.closed:
            return
        for attempt in range(1, self.retries + 2):
            try:
                self.slm.blank()
                return
            except RETRYABLE as exc:
                log.warning("bench close: blanking the SLM failed (attempt %d): %s", attempt, exc)
            except Exception as exc:
                log.warning("bench close: could not blank the SLM: %s", exc)
                return

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Bench slm={self.slm!r} camera={self.camera!r}{' closed' if self._closed else ''}>"
