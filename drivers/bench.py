"""The Bench: one SLM and one camera (and optionally a light source), measured together safely.

:meth:`Bench.measure` shows an image, waits on the shared clock until the SLM has settled, makes sure
the frame it returns was exposed entirely after that (see :meth:`Bench.measure`: by the camera's
timestamp, by its software trigger, or by counting the frames of a free-running camera after a flush),
and retries transient failures (:class:`DeviceTimeout`, :class:`DeviceFault`, :class:`StaleFrame`) a
bounded number of times.

Closing a bench blanks the SLM and closes its devices, whatever happened: use it as a context manager
(``with open_bench(cfg) as bench:``). While a bench is open, SIGTERM (what ``timeout``, ``kill`` and
systemd send) is raised as :class:`Terminated`, a ``KeyboardInterrupt``, so it cleans up like Ctrl-C.
Ctrl-C or SIGTERM arriving while the bench cleans up is held back until the cleanup is done; a second
one is let through at once (to interrupt a hung vendor call). A bench never closed is closed when it is
garbage-collected or at interpreter exit (it is referenced weakly, so it can be collected).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from onn_core.errors import InputError
from onn_core.validation import check_positive

from .camera import Camera
from .device import Device
from .frames import Frame
from .slm import SLM
from .errors import DeviceClosed, DeviceFault, DeviceTimeout, StaleFrame

log = logging.getLogger(__name__)

#: Errors after which ``measure`` tries again (others -- disconnects, bad input -- are raised at once).
RETRYABLE = (DeviceTimeout, DeviceFault, StaleFrame)
#: Signals that interrupt a bench script: Ctrl-C and SIGTERM.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
#: Frames of a free-running camera without timestamps that may have begun before the flush: the one
#: being read out and the one being exposed when it happened.
FREE_RUN_UNSURE_FRAMES = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a bench was open: raised like Ctrl-C so that the bench cleans up.

    ``signum`` is the signal's number (a command line exits with ``128 + signum``).
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = int(signum)
        super().__init__(f"terminated by {signal.Signals(signum).name}")


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


def _deliver(signum: int, handler) -> None:
    """Act on signal ``signum`` as ``handler`` (the one in place before the bench took it) would."""
    if handler == signal.SIG_IGN:
        return
    if callable(handler):
        handler(signum, None)
        return
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold Ctrl-C and SIGTERM back inside the block (main thread only) and deliver the first one when
    the block ends; a second one is delivered at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}

    def hold(signum, frame):
        if caught:
            _deliver(signum, previous[signum])
            return
        caught.append(signum)
        log.warning("%s held back until the bench is closed; send it again to interrupt the cleanup",
                    signal.Signals(signum).name)

    try:
        for signum in INTERRUPTS:
            previous[signum] = signal.signal(signum, hold)
    except ValueError:  # signals unavailable (embedded interpreter)
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        _deliver(caught[0], previous[caught[0]])


#: A token per bench not yet closed (not the bench itself: an abandoned bench can be collected, and is
#: then closed by its finalizer).
_open_benches: set[object] = set()


def _on_sigterm(signum, frame) -> None:
    """SIGTERM handler while benches are open: raise :class:`Terminated` where the program is."""
    raise Terminated(signum)


def _install_sigterm_handler() -> None:
    """Route SIGTERM to :func:`_on_sigterm` unless the program handles it itself (main thread only)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _remove_sigterm_handler() -> None:
    """Give SIGTERM its default action back once no bench is open."""
    if (not _open_benches and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _shut_down(token: object, slm: SLM, devices: tuple, retries: int) -> None:
    """Blank ``slm`` (retrying transient failures) and close ``devices`` in order; failures are logged.
    The bench of ``token`` then no longer counts as open."""
    try:
        _blank_and_close(slm, devices, retries)
    finally:
        _open_benches.discard(token)
        _remove_sigterm_handler()


def _blank_and_close(slm: SLM, devices: tuple, retries: int) -> None:
    if not slm.closed:
        for attempt in range(1, retries + 2):
            try:
                slm.blank()
                break
            except RETRYABLE as exc:
                log.warning("bench close: blanking the SLM failed (attempt %d): %s", attempt, exc)
            except Exception as exc:
                log.warning("bench close: could not blank the SLM: %s", exc)
                break
    for device in devices:
        try:
            device.close()
        except Exception as exc:
            log.warning("bench close: could not close %s: %s", device.name, exc)


class Bench:
    """One SLM and one camera on one clock, and optionally a light source.

    Parameters
    ----------
    slm : SLM
    camera : Camera
        Their clocks must share a timeline (the same object, or both real).
    light : Device, optional
        A light source (e.g. :class:`~drivers.serial_devices.SerialLightSource`), closed with the bench
        right after the SLM is blanked (its shutter closes then).
    retries : int
        Further attempts after a transient failure in :meth:`measure`.
    timeout_s : float, optional
        Per-frame camera timeout (s) beyond the exposure (default: the camera's).
    max_stale_reads : int
        Frames read per attempt before giving up with :class:`StaleFrame`.
    config : dict, optional
        The resolved configuration the bench was opened with (kept for metadata).
    """

    def __init__(self, slm: SLM, camera: Camera, *, light: Device | None = None, retries: int = 3,
                 timeout_s: float | None = None, max_stale_reads: int = 4, config: dict | None = None):
        if not isinstance(slm, SLM) or not isinstance(camera, Camera):
            raise InputError(f"Bench needs an SLM and a Camera, got {type(slm).__name__} and {type(camera).__name__}")
        if light is not None and not isinstance(light, Device):
            raise InputError(f"light must be a drivers.device.Device, got {type(light).__name__}")
        if not slm.clock.shares_timeline(camera.clock):
            raise InputError("the SLM and the camera must share one clock (timestamps are compared)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(max_stale_reads, bool) or not isinstance(max_stale_reads, int) or max_stale_reads < 1:
            raise InputError(f"max_stale_reads must be an integer >= 1, got {max_stale_reads!r}")
        self.slm, self.camera, self.light = slm, camera, light
        self.retries, self.max_stale_reads = retries, max_stale_reads
        self.timeout_s = None if timeout_s is None else check_positive("timeout_s", timeout_s)
        self.config = config or {}
        self._last_index: int | None = None
        devices = (slm, camera) if light is None else (light, slm, camera)
        token = object()
        _open_benches.add(token)
        _install_sigterm_handler()
        # closes the devices when close() is called, when the bench is collected, or at exit
        self._shut_down = weakref.finalize(self, _shut_down, token, slm, devices, retries)

    @property
    def clock(self):
        """The clock the bench waits on (the camera's)."""
        return self.camera.clock

    @property
    def closed(self) -> bool:
        return not self._shut_down.alive

    def settings(self) -> dict:
        """Snapshot of the devices' settings and the bench's own."""
        snapshot = {"slm": self.slm.settings(), "camera": self.camera.settings()}
        if self.light is not None:
            snapshot["light"] = self.light.settings()
        snapshot["bench"] = {"retries": self.retries, "timeout_s": self.timeout_s, "max_stale_reads": self.max_stale_reads}
        return snapshot

    # --------------------------------------------------------------------------------- measuring
    def measure(self, image, *, phase: bool = False, timeout_s: float | None = None) -> Measurement:
        """Show ``image`` (gray levels, or radians with ``phase=True``) and capture the frame that sees it.

        The frame is fresh -- exposed entirely after the image settled, and newer than the last one
        returned -- by what the camera knows (:attr:`~drivers.frames.Frame.timing`): its exposure
        timestamp; else, in software-trigger mode, that it was exposed after the request (which
        follows the settling); else (free-running without timestamps) its index: after a flush, the
        first :data:`FREE_RUN_UNSURE_FRAMES` frames may have begun before it and are discarded.

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
        if self.closed:
            raise DeviceClosed("bench used after close()")
        if phase:
            if self.slm.modulation != "phase":
                raise InputError("phase=True needs a phase SLM")
            frame_to_show = self.slm.to_phase_frame(image)
        else:
            frame_to_show = self.slm.to_frame(image)
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        shown, shown_id, stale = None, -1, 0

        def attempt() -> Measurement:
            nonlocal shown, shown_id, stale
            if shown is None:
                shown = self.slm.show(frame_to_show)
                shown_id = self.slm.frame_id
            settled_at = self.slm.settled_at_s
            self.slm.wait_settled()
            try:
                frame, discarded = self._fresh_frame(settled_at, timeout)
            except StaleFrame:
                stale += self.max_stale_reads
                raise
            stale += discarded
            self._last_index = frame.index
            return Measurement(frame, shown, shown_id, self.slm.shown_at_s, settled_at, 0, stale)

        measurement, attempts = self._retrying("measure", attempt)
        return dataclasses.replace(measurement, attempts=attempts)

    def read(self, *, timeout_s: float | None = None) -> Frame:
        """Another frame of the image last shown (by :meth:`measure`), with the same guarantees and
        retries: exposed entirely after the image settled and newer than the last frame returned.

        Use it after :meth:`measure` for more frames of one image (a stack) without showing it again.

        Raises
        ------
        InputError
            Nothing has been shown yet.
        DeviceTimeout, DeviceFault, StaleFrame, DeviceDisconnected, DeviceClosed
            As :meth:`measure`.
        """
        if self.closed:
            raise DeviceClosed("bench used after close()")
        if self.slm.frame_id < 0 or self._last_index is None:
            raise InputError("Bench.read() reads more frames of the image shown by measure(); call measure() first")
        timeout = timeout_s if timeout_s is not None else self.timeout_s

        def attempt() -> Frame:
            settled_at = self.slm.settled_at_s
            self.slm.wait_settled()
            frame, _ = self._fresh_frame(settled_at, timeout, continuing=True)
            self._last_index = frame.index
            return frame

        return self._retrying("read", attempt)[0]

    def blank(self) -> None:
        """Show gray level 0 everywhere (dark for a display), retrying transient SLM failures like
        :meth:`measure`."""
        if self.closed:
            raise DeviceClosed("bench used after close()")
        self._retrying("blank", self.slm.blank)

    def auto_exposure(self, image, **kwargs) -> float:
        """:meth:`Camera.auto_exposure <drivers.camera.Camera.auto_exposure>` (its keyword arguments)
        with ``image`` shown, every frame read by :meth:`measure` (fresh, retried). Returns the exposure
        (s), which is left set."""
        return self.camera.auto_exposure(read=lambda: self.measure(image).frame, **kwargs)

    def _retrying(self, action: str, attempt):
        """``(attempt(), attempts used)``, calling ``attempt`` again after a :data:`RETRYABLE` failure, at
        most :attr:`retries` more times; then the last failure is raised (with a note saying so)."""
        for number in range(1, self.retries + 2):
            try:
                return attempt(), number
            except RETRYABLE as exc:
                last_error = exc
                log.info("%s attempt %d/%d failed: %s", action, number, self.retries + 1, exc)
        if hasattr(last_error, "add_note"):  # Python >= 3.11
            last_error.add_note(f"Bench.{action} gave up after {self.retries + 1} attempts")
        raise last_error

    def _fresh_frame(self, settled_at_s: float, timeout_s: float | None, *, continuing: bool = False) -> tuple[Frame, int]:
        """A frame exposed entirely after ``settled_at_s`` and newer than the last one returned.
        ``continuing``: the last frame returned was already fresh (a stack), so a free-running camera is
        not flushed and any newer frame of it is fresh."""
        if self.camera.trigger_mode == "free-run" and not continuing:
            self.camera.flush()
        first_index = self._last_index - FREE_RUN_UNSURE_FRAMES + 1 if continuing else None  # after the flush
        for discarded in range(self.max_stale_reads):
            frame = self.camera.snap(timeout_s)
            repeated = self._last_index is not None and frame.index <= self._last_index
            if frame.timing == "estimated":
                first_index = frame.index if first_index is None else first_index
                fresh = frame.index >= first_index + FREE_RUN_UNSURE_FRAMES
            else:
                fresh = frame.timestamp_s >= settled_at_s
            if fresh and not repeated:
                return frame, discarded
            log.debug("discarded frame %d (exposure from %.6f s (%s), image settled at %.6f s%s)", frame.index,
                      frame.timestamp_s, frame.timing, settled_at_s, ", repeated index" if repeated else "")
        raise StaleFrame(f"{self.max_stale_reads} frames in a row were exposed before the image settled", device=self.camera.name)

    # --------------------------------------------------------------------------------- closing
    def close(self) -> None:
        """Blank the SLM and close the devices (idempotent; failures are logged). Ctrl-C and SIGTERM
        are held back meanwhile; a second one interrupts the cleanup."""
        if self.closed:
            return
        try:
            with _interrupts_deferred():
                self._shut_down()
        finally:
            _remove_sigterm_handler()  # (held back above: the deferral had replaced it)

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Bench slm={self.slm!r} camera={self.camera!r}{' closed' if self.closed else ''}>"
