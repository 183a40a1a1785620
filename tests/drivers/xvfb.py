"""A real X server for display tests: Xvfb with its framebuffer kept as a file, read back pixel-exactly.

``Xvfb -fbdir DIR`` keeps the screen's memory as the XWD file ``DIR/Xvfb_screen0`` (memory-mapped, so
it is always current); :meth:`XvfbServer.screen` parses it with :mod:`drivers.xwd`. That is the real
read-back of what is on the screen. (``xwd -root`` is not used: on Debian 12's Xvfb 21.1 it returns
depth-24 windows of Qt clients packed at 3 bytes per pixel, shifted and colour-rotated, while the
framebuffer and ``xwd -id WINDOW`` hold the right pixels.)

Use the ``xvfb`` fixture (one server per test session) together with ``x_display``, which points
``DISPLAY`` at it for one test; ``window_manager`` also runs openbox on it for one test. Qt connects to the display once per process, at the first window, so
every display test of a session shares the server. Tests skip only when Xvfb is not installed or
cannot start; CI installs it (Debian package ``xvfb``; ``openbox`` for the window-manager test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from drivers.xwd import read_xwd

SCREEN_SHAPE = (480, 640)  # rows, cols of the virtual screen


class XvfbServer:
    """Start ``Xvfb`` on a free display number and stop it.

    Parameters
    ----------
    shape : (rows, cols)
        Screen size in pixels.
    depth : int
        Colour depth in bits (24: 8 bits per channel).
    start_timeout_s : float
        How long to wait for the server to report its display number.
    """

    def __init__(self, shape=SCREEN_SHAPE, depth: int = 24, start_timeout_s: float = 10.0):
        self.shape = tuple(shape)
        self.depth = depth
        self.start_timeout_s = start_timeout_s
        self.display: str | None = None
        self._dir = None
        self._proc: subprocess.Popen | None = None

    @property
    def framebuffer_path(self) -> Path:
        return Path(self._dir.name) / "Xvfb_screen0"

    def start(self) -> "XvfbServer":
        """Launch Xvfb (``-displayfd`` picks a free display); raise ``RuntimeError`` if it fails."""
        exe = shutil.which("Xvfb")
        if exe is None:
            raise RuntimeError("Xvfb is not installed (Debian/Ubuntu: apt-get install xvfb)")
        self._dir = tempfile.TemporaryDirectory(prefix="hil-xvfb-")
        read_fd, write_fd = os.pipe()
        rows, cols = self.shape
        cmd = [exe, "-displayfd", str(write_fd), "-screen", "0", f"{cols}x{rows}x{self.depth}",
               "-fbdir", self._dir.name, "-nolisten", "tcp", "-noreset", "-nocursor"]
        self._proc = subprocess.Popen(cmd, pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        os.close(write_fd)
        try:
            number = self._read_display_number(read_fd)
        finally:
            os.close(read_fd)
        if number is None:
            err = self._stop_and_collect()
            raise RuntimeError(f"Xvfb did not start: {err.strip()[-500:]}")
        self.display = f":{number}"
        return self

    def _read_display_number(self, fd: int) -> int | None:
        import select

        text = b""
        while not text.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], self.start_timeout_s)
            chunk = os.read(fd, 64) if ready else b""
            if not chunk:
                return None
            text += chunk
        return int(text)

    def _stop_and_collect(self) -> str:
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return (err or b"").decode(errors="replace")

    def stop(self) -> None:
        """Terminate the server and remove its framebuffer directory; idempotent."""
        self._stop_and_collect()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def screen(self) -> np.ndarray:
        """The whole screen now, RGB uint8 (rows, cols, 3), read from the live framebuffer."""
        return read_xwd(self.framebuffer_path)

    def __enter__(self) -> "XvfbServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def xvfb():
    """One Xvfb server for the test session (skips the test when Xvfb cannot start)."""
    server = XvfbServer()
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"no X server can start here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def x_display(xvfb, monkeypatch):
    """Point ``DISPLAY`` (and Qt) at the session's Xvfb for one test; yields the server."""
    monkeypatch.setenv("DISPLAY", xvfb.display)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    return xvfb



@pytest.fixture
def window_manager(x_display, tmp_path):
    """Run the ``openbox`` window manager on the session's Xvfb for one test (skips without openbox).

    Waits until openbox has started (its ``--startup`` command touches a file), stops it afterwards.
    """
    exe = shutil.which("openbox")
    if exe is None:
        pytest.skip("openbox is not installed (Debian package openbox)")
    ready = tmp_path / "wm-ready"
    proc = subprocess.Popen([exe, "--sm-disable", "--startup", f"touch {ready}"],
                            env={**os.environ, "DISPLAY": x_display.display},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(ready.exists, timeout_s=10.0, what="openbox to start")
        yield x_display
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _wait_for(condition, *, timeout_s: float, what: str) -> None:
    import time

    stop = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > stop:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
