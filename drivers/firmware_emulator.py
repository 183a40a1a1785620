"""An emulator of a serial light source's firmware, so bench scripts and tests run without hardware.

The emulated device is a light source with a shutter, driven by a line protocol (ASCII, one command
per line, terminator ``\\n``; a trailing ``\\r`` is ignored; commands are case-insensitive):

=====================  =================================  ==========================================
command                reply                              effect
=====================  =================================  ==========================================
``*IDN?``              ``<vendor>,<model>,<serial>,<fw>``  identification
``*RST``               ``OK``                             shutter closed, power 0
``SHUTTER OPEN``       ``OK``                             opens the shutter
``SHUTTER CLOSE``      ``OK``                             closes the shutter
``SHUTTER?``           ``OPEN`` or ``CLOSED``             shutter state
``POWER <p>``          ``OK``                             sets the relative power, ``0 <= p <= 1``
``POWER?``             ``<p>`` (6 decimals)               relative power
anything else          ``ERR <message>``                  nothing
=====================  =================================  ==========================================

:class:`LightSourceFirmware` is the protocol's state machine (no I/O). :class:`PtyFirmwareEmulator`
serves it on a real pseudo-terminal from a thread: a driver opens :attr:`PtyFirmwareEmulator.port`
(a stable symlink to the current pty, like a udev ``/dev/serial/by-id`` link) exactly as it would
open a USB-serial adapter. ``unplug()`` and ``plug()`` emulate pulling and reinserting the cable.
Faults (garbage, partial replies, silence) can be queued for the next replies to test drivers.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import tempfile
import threading
import tty

from .errors import InputError

__all__ = ["FAULTS", "LightSourceFirmware", "PtyFirmwareEmulator"]

log = logging.getLogger(__name__)

#: Fault kinds that :meth:`LightSourceFirmware.inject_fault` accepts: what the next reply becomes.
FAULTS = ("garbage", "partial", "silence")

_GARBAGE_REPLY = b"\xff\xfe#?\x00garbage\n"


class LightSourceFirmware:
    """The emulated firmware's state and protocol (see the module docstring); no I/O.

    Parameters
    ----------
    serial_number : str
        Reported in the ``*IDN?`` reply.
    """

    IDN_PREFIX = "ONN-HIL,EMULATED-LIGHTSOURCE"
    FIRMWARE_VERSION = "1.0"

    def __init__(self, serial_number: str = "0001"):
        self.serial_number = serial_number
        self.shutter_open = False
        self.power = 0.0
        self.commands_seen: list[str] = []
        self._faults: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()

    def inject_fault(self, kind: str, count: int = 1) -> None:
        """Make the next ``count`` replies faulty: ``"garbage"`` (bytes that are no valid reply),
        ``"partial"`` (the first half of the reply, no terminator) or ``"silence"`` (no reply).
        The command itself is still executed, as a real device that garbles its answer would."""
        if kind not in FAULTS:
            raise InputError(f"fault kind must be one of {FAULTS}, got {kind!r}")
        if int(count) < 1:
            raise InputError(f"fault count must be >= 1, got {count!r}")
        with self._lock:
            self._faults.extend([kind] * int(count))

    def reply_bytes(self, line: bytes) -> bytes:
        """The bytes the device sends back for one received line (without its terminator)."""
        reply = (self.handle(line.decode("ascii", errors="replace")) + "\n").encode("ascii")
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault == "garbage":
            return _GARBAGE_REPLY
        if fault == "partial":
            return reply[: max(1, len(reply) // 2)]
        if fault == "silence":
            return b""
        return reply

    def handle(self, line: str) -> str:
        """Execute one command line and return the reply text (without terminator)."""
        text = line.strip()
        self.commands_seen.append(text)
        words = text.upper().split()
        if not words:
            return "ERR empty command"
        head, args = words[0], words[1:]
        if head == "*IDN?" and not args:
            return f"{self.IDN_PREFIX},{self.serial_number},{self.FIRMWARE_VERSION}"
        if head == "*RST" and not args:
            self.shutter_open, self.power = False, 0.0
            return "OK"
        if head == "SHUTTER?" and not args:
            return "OPEN" if self.shutter_open else "CLOSED"
        if head == "SHUTTER":
            if args in (["OPEN"], ["CLOSE"]):
                self.shutter_open = args[0] == "OPEN"
                return "OK"
            return "ERR SHUTTER expects OPEN or CLOSE"
        if head == "POWER?" and not args:
            return f"{self.power:.6f}"
        if head == "POWER":
            return self._set_power(args)
        return f"ERR unknown command '{text}'"

    def _set_power(self, args: list[str]) -> str:
        if len(args) != 1:
            return "ERR POWER expects one value in [0, 1]"
        try:
            value = float(args[0])
        except ValueError:
            return f"ERR POWER value '{args[0]}' is not a number"
        if not 0.0 <= value <= 1.0:  # also rejects nan
            return f"ERR POWER value {args[0]} outside [0, 1]"
        self.power = value
        return "OK"


class PtyFirmwareEmulator:
    """Serves a :class:`LightSourceFirmware` on a pseudo-terminal from a background thread.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). A driver opens :attr:`port`
    with ``serial.serial_for_url(port)``.

    Parameters
    ----------
    firmware : LightSourceFirmware, optional
        The firmware to serve (a fresh one by default); its state survives unplug/plug.
    link_path : str, optional
        Where to create the symlink to the current pty slave; a new temporary path by default.
    poll_s : float
        How often the thread checks for a stop request, in seconds.
    """

    def __init__(self, firmware: LightSourceFirmware | None = None, link_path: str | None = None,
                 poll_s: float = 0.01):
        self.firmware = firmware or LightSourceFirmware()
        self._tmpdir = None
        if link_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="hil-pty-")
            link_path = os.path.join(self._tmpdir.name, "lightsource")
        self.port = link_path
        self.poll_s = poll_s
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def plugged(self) -> bool:
        """True while the pseudo-terminal exists and is served."""
        return self._thread is not None

    def start(self) -> "PtyFirmwareEmulator":
        """Create the pty (``plug()``) and return self."""
        self.plug()
        return self

    def plug(self) -> None:
        """Create a fresh pseudo-terminal, point :attr:`port` at it and serve it."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation
        self._master_fd, self._slave_fd = master, slave
        if os.path.lexists(self.port):
            os.unlink(self.port)
        os.symlink(os.ttyname(slave), self.port)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(master,), name="pty-firmware", daemon=True)
        self._thread.start()
        log.debug("emulator plugged at %s -> %s", self.port, os.ttyname(slave))

    def unplug(self) -> None:
        """Emulate pulling the cable: stop serving, close the pty and remove :attr:`port`."""
        if not self.plugged:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        for fd in (self._master_fd, self._slave_fd):
            os.close(fd)
        self._master_fd = self._slave_fd = None
        if os.path.lexists(self.port):
            os.unlink(self.port)
        log.debug("emulator unplugged from %s", self.port)

    def stop(self) -> None:
        """Unplug and remove the temporary directory (if one was made)."""
        self.unplug()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "PtyFirmwareEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, master: int) -> None:
        pending = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([master], [], [], self.poll_s)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: no client has the slave open right now
                self._stop.wait(self.poll_s)
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                reply = self.firmware.reply_bytes(line.rstrip(b"\r"))
                if reply:
                    os.write(master, reply)
