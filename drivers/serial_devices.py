"""Serial-controlled lab devices: a pyserial line transport and a line-protocol device on top.

:class:`SerialTransport` opens a port only through ``serial.serial_for_url`` (so a device path,
``loop://``, ``socket://host:port``, ``rfc2217://`` ... all work) and reads and writes whole lines with
a finite timeout. :class:`LineProtocolDevice` sends commands and checks replies (``OK``,
``ERR <msg>``, values), retrying after timeouts and garbled replies and reopening the port after the
device was unplugged. :class:`SerialLightSource` speaks the protocol documented in
:mod:`drivers.firmware_emulator` (shutter + relative power), which that module also emulates.

Error mapping (pyserial's exceptions are kept as ``__cause__``):

- port cannot be opened -> :class:`DeviceNotFound`
- read/write fails on an open port (cable pulled) -> :class:`DeviceDisconnected`
- no (complete) reply within the timeout -> :class:`DeviceTimeout`
- undecodable, overlong or unparseable reply -> :class:`DeviceFault`; ``ERR`` reply ->
  :class:`CommandRejected` (a :class:`DeviceFault`)
- use after ``close()`` -> :class:`DeviceClosed`
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from onn_core.validation import check_positive

from .device import Device
from .clock import Clock
from .errors import DeviceClosed, DeviceDisconnected, DeviceError, DeviceFault, DeviceNotFound, DeviceTimeout, InputError

__all__ = ["CommandRejected", "LineProtocolDevice", "SerialLightSource", "SerialLightSourceConfig", "SerialTransport"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: First and longest pause (s) between attempts to reopen a lost port.
RECONNECT_FIRST_PAUSE_S = 0.01
RECONNECT_MAX_PAUSE_S = 0.2


def _port_errors() -> tuple[type[BaseException], ...]:
    """What pyserial raises when a port's device vanished (``termios.error`` is no ``OSError``)."""
    import serial

    errors: list[type[BaseException]] = [serial.SerialException, OSError]
    try:
        import termios
    except ImportError:  # Windows
        pass
    else:
        errors.append(termios.error)
    return tuple(errors)


class CommandRejected(DeviceFault):
    """The device understood a command and refused it (an ``ERR <message>`` reply); not retried."""


class SerialTransport:
    """A line-oriented serial link.

    Parameters
    ----------
    url : str
        Anything ``serial.serial_for_url`` accepts: ``/dev/ttyUSB0``, ``loop://``, ``socket://h:p``.
    baudrate : int
        Line speed in bit/s (ignored by URL handlers that have none).
    timeout_s : float
        Default time to wait for a complete reply line, in seconds.
    write_timeout_s : float
        Time a write may block, in seconds.
    terminator : bytes
        End-of-line marker sent after each command and expected after each reply.
    max_line_bytes : int
        Longer replies are treated as garbage.
    name : str
        Device name used in error messages.
    """

    def __init__(self, url: str, *, baudrate: int = 115200, timeout_s: float = 0.5,
                 write_timeout_s: float = 0.5, terminator: bytes = b"\n", max_line_bytes: int = 1024,
                 name: str = "serial"):
        if not isinstance(url, str) or not url:
            raise InputError(f"url must be a non-empty string (device path or pyserial URL), got {url!r}")
        if not terminator:
            raise InputError("terminator must be a non-empty bytes string")
        self.url = url
        self.baudrate = int(baudrate)
        self.timeout_s = check_positive("timeout_s", timeout_s)
        self.write_timeout_s = check_positive("write_timeout_s", write_timeout_s)
        self.terminator = bytes(terminator)
        self.max_line_bytes = int(max_line_bytes)
        self.name = name
        self._port = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port (no-op when open); :class:`DeviceNotFound` if nothing is there."""
        if self._port is not None:
            return
        import serial

        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout_s,
                                               write_timeout=self.write_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceNotFound(f"cannot open serial port {self.url!r}: {exc}", device=self.name) from exc
        log.debug("%s: opened %s", self.name, self.url)

    def close(self) -> None:
        """Close the port; idempotent, never raises for a port that already vanished."""
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # a vanished port may fail to restore its settings; closing goes on
                log.warning("%s: closing %s failed (port gone?): %r", self.name, self.url, exc)

    def _require_port(self):
        if self._port is None:
            raise DeviceClosed(f"serial port {self.url!r} is not open", device=self.name)
        return self._port

    def discard_input(self) -> None:
        """Drop whatever the device sent that nobody read (late or stale replies)."""
        port = self._require_port()
        try:
            port.reset_input_buffer()
        except _port_errors() as exc:
            raise DeviceDisconnected(f"serial port {self.url!r} failed: {exc}", device=self.name) from exc

    def write_line(self, text: str) -> None:
        """Send ``text`` (ASCII, no terminator inside) followed by the terminator."""
        import serial

        try:
            data = text.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            raise InputError(f"command must be an ASCII string, got {text!r}") from None
        if self.terminator in data:
            raise InputError(f"command {text!r} must not contain the terminator {self.terminator!r}")
        port = self._require_port()
        try:
            port.write(data + self.terminator)
            port.flush()
        except serial.SerialTimeoutException as exc:
            raise DeviceTimeout(f"writing {text!r} to {self.url!r} timed out", device=self.name) from exc
        except _port_errors() as exc:
            raise DeviceDisconnected(f"writing {text!r} to {self.url!r} failed: {exc}", device=self.name) from exc

    def read_line(self, timeout_s: float | None = None) -> str:
        """Read one reply line (terminator and a trailing ``\\r`` stripped) within ``timeout_s``.

        Raises :class:`DeviceTimeout` on silence or a partial line (whose bytes are dropped),
        :class:`DeviceFault` on a non-ASCII or overlong line.
        """
        port = self._require_port()
        wait_s = self.timeout_s if timeout_s is None else check_positive("timeout_s", timeout_s)
        try:
            if port.timeout != wait_s:
                port.timeout = wait_s  # reconfigures the port: may fail if it vanished
            raw = port.read_until(self.terminator, self.max_line_bytes + len(self.terminator))
        except _port_errors() as exc:
            raise DeviceDisconnected(f"reading from {self.url!r} failed: {exc}", device=self.name) from exc
        if not raw.endswith(self.terminator):
            if len(raw) > self.max_line_bytes:
                raise DeviceFault(f"reply longer than {self.max_line_bytes} bytes: {raw[:40]!r}...",
                                  device=self.name)
            what = f"a partial reply {raw!r}" if raw else "no reply"
            raise DeviceTimeout(f"{what} within {wait_s} s from {self.url!r}", device=self.name)
        body = raw[: -len(self.terminator)].rstrip(b"\r")
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DeviceFault(f"garbled reply {raw!r} (not ASCII)", device=self.name) from exc
        if not text.isprintable():
            raise DeviceFault(f"garbled reply {raw!r} (control characters)", device=self.name)
        return text


class LineProtocolDevice(Device):
    """A device that answers each command line with one reply line.

    Replies ``OK`` acknowledge, ``ERR <message>`` reject (:class:`CommandRejected`, not retried: the
    device understood and refused), anything else is a value. A timeout, a garbled or unparseable
    reply is retried up to ``retries`` times (commands of such devices set a state, so repeating
    one is harmless); after a disconnect the port is reopened before the retry (``reconnect``),
    trying again with growing pauses (10 ms doubling up to 200 ms) for up to ``reconnect_timeout_s``
    (a cable briefly out, a USB adapter re-enumerating) before :class:`DeviceDisconnected` is final.
    Stale input is discarded before every command, so a late reply is never taken for the next one.

    Parameters
    ----------
    url : str
        Port path or pyserial URL (see :class:`SerialTransport`).
    baudrate : int
        Line speed in bit/s.
    timeout_s : float
        Time to wait for each reply, in seconds.
    retries : int
        Extra attempts after a failed one (0 = try once).
    reconnect : bool
        Reopen the port after a disconnect.
    reconnect_timeout_s : float
        How long (s) reopening keeps trying before the device counts as gone.
    name, clock
        See :class:`~drivers.device.Device` (the pauses between reopening attempts are slept on ``clock``).
    """

    kind = "serial-device"

    def __init__(self, url: str, *, baudrate: int = 115200, timeout_s: float = 0.5, retries: int = 2,
                 reconnect: bool = True, reconnect_timeout_s: float = 1.0, name: str | None = None,
                 clock: Clock | None = None):
        super().__init__(name=name, clock=clock, default_timeout_s=timeout_s)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be an integer >= 0, got {retries!r}")
        self.retries = retries
        self.reconnect_enabled = bool(reconnect)
        self.reconnect_timeout_s = check_positive("reconnect_timeout_s", reconnect_timeout_s, allow_zero=True)
        self._transport = SerialTransport(url, baudrate=baudrate, timeout_s=self.default_timeout_s,
                                          write_timeout_s=self.default_timeout_s, name=self.name)
        self._lock = threading.RLock()
        self.stats = {"commands": 0, "retries": 0, "reconnects": 0}
        self._transport.open()

    @property
    def url(self) -> str:
        return self._transport.url

    def query(self, command: str, parse: Callable[[str], T] | None = None) -> T | str:
        """Send ``command`` and return its reply, parsed by ``parse`` when given.

        ``parse`` raising ``ValueError`` marks the reply as garbled (retried).
        """
        self._check_open()
        return self._query(command, parse)

    def command(self, command: str) -> None:
        """Send ``command`` and require the acknowledgement ``OK``."""
        self.query(command, parse=_expect_ok)

    def reconnect(self) -> None:
        """Close and reopen the port now (:class:`DeviceDisconnected` if the device is absent)."""
        self._check_open()
        with self._lock:
            self._transport.close()
            self._reopen()

    def settings(self) -> dict:
        """Snapshot of the connection settings and counters, for metadata."""
        s = super().settings()
        t = self._transport
        s.update(url=t.url, baudrate=t.baudrate, timeout_s=t.timeout_s, retries=self.retries,
                 reconnect=self.reconnect_enabled, reconnect_timeout_s=self.reconnect_timeout_s,
                 stats=dict(self.stats))
        return s

    def _close(self) -> None:
        self._transport.close()

    def _query(self, command: str, parse):
        with self._lock:
            self.stats["commands"] += 1
            last: DeviceError | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats["retries"] += 1
                    log.info("%s: retrying %r (attempt %d/%d) after: %s", self.name, command, attempt + 1,
                             self.retries + 1, last)
                if not self._transport.is_open:
                    if not self.reconnect_enabled:
                        raise DeviceDisconnected(f"port {self.url!r} was lost and reconnect is off", device=self.name)
                    self._reopen()  # its DeviceDisconnected (after reconnect_timeout_s) is final
                try:
                    return self._attempt(command, parse)
                except CommandRejected:
                    raise
                except DeviceDisconnected as exc:
                    self._transport.close()  # reopened by the next attempt
                    last = exc
                except (DeviceTimeout, DeviceFault) as exc:
                    last = exc
            raise last

    def _attempt(self, command: str, parse):
        transport = self._transport
        transport.discard_input()
        transport.write_line(command)
        reply = transport.read_line()
        if reply.startswith("ERR"):
            raise CommandRejected(f"device rejected {command!r}: {reply}", device=self.name)
        if parse is None:
            return reply
        try:
            return parse(reply)
        except ValueError as exc:
            raise DeviceFault(f"unexpected reply {reply!r} to {command!r}: {exc}", device=self.name) from exc

    def _reopen(self) -> None:
        """Open the port again, retrying with growing pauses for up to ``reconnect_timeout_s``."""
        self.stats["reconnects"] += 1
        deadline_s = self.clock.now() + self.reconnect_timeout_s
        pause_s = RECONNECT_FIRST_PAUSE_S
        while True:
            try:
                self._transport.open()
                break
            except DeviceNotFound as exc:
                remaining_s = deadline_s - self.clock.now()
                if remaining_s <= 0:
                    raise DeviceDisconnected(f"device at {self.url!r} is gone (still absent after "
                                             f"{self.reconnect_timeout_s:g} s): {exc}", device=self.name) from exc
                self.clock.sleep(min(pause_s, remaining_s))
                pause_s = min(2 * pause_s, RECONNECT_MAX_PAUSE_S)
        log.info("%s: reconnected to %s", self.name, self.url)


def _expect_ok(reply: str) -> None:
    if reply != "OK":
        raise ValueError("expected 'OK'")


def _parse_shutter(reply: str) -> bool:
    if reply not in ("OPEN", "CLOSED"):
        raise ValueError("expected OPEN or CLOSED")
    return reply == "OPEN"


def _parse_fraction(reply: str) -> float:
    value = float(reply)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number in [0, 1]")
    return value


def _parse_idn(reply: str) -> str:
    if reply.count(",") != 3:
        raise ValueError("expected 'vendor,model,serial,firmware'")
    return reply


@dataclass
class SerialLightSourceConfig:
    """Bench-YAML settings of a ``serial-light`` device (see :class:`SerialLightSource`)."""

    url: str
    baudrate: int = 115200
    timeout_s: float = 0.5
    retries: int = 2
    reconnect: bool = True
    reconnect_timeout_s: float = 1.0


class SerialLightSource(LineProtocolDevice):
    """A light source with a shutter and relative power, speaking the protocol of
    :mod:`drivers.firmware_emulator` (``*IDN?``, ``SHUTTER OPEN|CLOSE``, ``SHUTTER?``, ``POWER <p>``,
    ``POWER?``, ``*RST``). Closing it closes the shutter first (when the device still answers).

    Bench YAML (backend name ``serial-light``)::

        light: {backend: serial-light, url: /dev/serial/by-id/usb-..., timeout_s: 0.5, retries: 2}
    """

    kind = "light-source"
    Config = SerialLightSourceConfig

    def identify(self) -> str:
        """The ``*IDN?`` string (vendor, model, serial number, firmware version)."""
        return self.query("*IDN?", parse=_parse_idn)

    def reset(self) -> None:
        """Shutter closed, power 0."""
        self.command("*RST")

    def open_shutter(self) -> None:
        self.command("SHUTTER OPEN")

    def close_shutter(self) -> None:
        self.command("SHUTTER CLOSE")

    def shutter_is_open(self) -> bool:
        return self.query("SHUTTER?", parse=_parse_shutter)

    def set_power(self, fraction: float) -> None:
        """Set the relative output power, ``0 <= fraction <= 1`` (dimensionless)."""
        value = check_positive("fraction", fraction, allow_zero=True)
        if value > 1.0:
            raise InputError(f"fraction must be in [0, 1], got {fraction!r}")
        self.command(f"POWER {value:.6f}")

    def power(self) -> float:
        """The relative output power the device reports, in [0, 1]."""
        return self.query("POWER?", parse=_parse_fraction)

    def _close(self) -> None:
        try:
            self._query("SHUTTER CLOSE", _expect_ok)
        except DeviceError as exc:
            log.warning("%s: could not close the shutter before closing: %s", self.name, exc)
        super()._close()
