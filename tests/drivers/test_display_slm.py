"""The display SLM in a real X server (Xvfb), checked by reading the framebuffer back pixel for pixel;
and the XWD reader that does the reading, against XWD bytes built by hand."""

import shutil
import struct
import subprocess
import time

import cv2
import numpy as np
import pytest

from drivers.device import OpenContext
from drivers.clock import RealClock
from drivers.display_slm import DisplaySLM, x_display_reachable
from drivers.errors import DeviceClosed, DeviceFault, DeviceNotFound
from drivers.registry import load_backend
from drivers.xwd import parse_xwd
from onn_core.errors import ConfigError, InputError
from tests.drivers.conformance import check_slm

PITCH_M = 8e-6


def _region(screen: np.ndarray, position, shape) -> np.ndarray:
    x, y = position
    return screen[y : y + shape[0], x : x + shape[1]]


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    return np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame


def _assert_on_screen(server, frame, position, deadline_s: float = 20.0) -> None:
    """The screen holds ``frame`` exactly at ``position`` and nothing (black) anywhere else.

    Qt and the X server paint asynchronously (a window is painted only once the X server has exposed
    it, which can take long for the first window of a busy process), so the framebuffer is polled,
    with the GUI event loop running as in a bench's settle wait, until it matches or ``deadline_s``
    passes; a mismatch then fails with the first bad pixel.
    """
    expected = None
    stop = time.monotonic() + deadline_s
    while True:
        screen = server.screen()
        if expected is None:
            expected = np.zeros_like(screen)
            x, y = position
            expected[y : y + frame.shape[0], x : x + frame.shape[1]] = _as_rgb(frame)
        if np.array_equal(screen, expected) or time.monotonic() > stop:
            break
        cv2.waitKey(2)
    bad = np.argwhere((screen != expected).any(-1))
    assert bad.size == 0, (f"{len(bad)} pixels differ, first at (row, col) {tuple(bad[0])}: "
                           f"screen {screen[tuple(bad[0])]}, expected {expected[tuple(bad[0])]}")


# --------------------------------------------------------------------------- XWD reader (no X server)

def _xwd_bytes(rgb: np.ndarray, *, bpp: int, msb_first: bool, pad_to: int = 4, name: bytes = b"test\0") -> bytes:
    rows, cols, _ = rgb.shape
    value = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    nbytes = bpp // 8
    shifts = [8 * k for k in range(nbytes)]
    if msb_first:
        shifts.reverse()
    pixel_bytes = np.stack([(value >> s) & 0xFF for s in shifts], axis=-1).astype(np.uint8)
    stride = -(-cols * nbytes // pad_to) * pad_to
    body = np.full((rows, stride), 0xAB, np.uint8)  # padding that must be ignored
    body[:, : cols * nbytes] = pixel_bytes.reshape(rows, -1)
    ncolors = 2
    header_size = 100 + len(name)
    fields = [header_size, 7, 2, 24, cols, rows, 0, int(msb_first), 32, int(msb_first), 32, bpp, stride, 4,
              0xFF0000, 0xFF00, 0xFF, 8, 256, ncolors, cols, rows, 0, 0, 0]
    return struct.pack(">25I", *fields) + name + bytes(12 * ncolors) + body.tobytes()


@pytest.mark.parametrize("bpp, msb_first", [(32, False), (32, True), (24, False), (24, True)])
def test_xwd_reader_round_trip(bpp, msb_first):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    header, decoded = parse_xwd(_xwd_bytes(rgb, bpp=bpp, msb_first=msb_first))
    assert (header.pixmap_width, header.pixmap_height, header.bits_per_pixel) == (7, 5, bpp)
    assert np.array_equal(decoded, rgb)


def test_xwd_reader_rejects_what_it_cannot_read():
    good = _xwd_bytes(np.zeros((2, 2, 3), np.uint8), bpp=32, msb_first=False)
    with pytest.raises(InputError, match="too short"):
        parse_xwd(good[:50])
    with pytest.raises(InputError, match="truncated"):
        parse_xwd(good[:-1])
    with pytest.raises(InputError, match="file version 6"):
        parse_xwd(good[:4] + struct.pack(">I", 6) + good[8:])
    with pytest.raises(InputError, match="bits_per_pixel 16"):
        parse_xwd(good[:44] + struct.pack(">I", 16) + good[48:])


# --------------------------------------------------------------------------- without an X server

def test_unreachable_display_is_not_found(monkeypatch, tmp_path):
    monkeypatch.setenv("DISPLAY", ":4093")  # nothing listens there
    assert not x_display_reachable(":4093")
    with pytest.raises(DeviceNotFound, match="DISPLAY=:4093"):
        DisplaySLM((4, 4), PITCH_M)
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(DeviceNotFound, match="DISPLAY is not set"):
        DisplaySLM((4, 4), PITCH_M)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (4, 4, 2)}, "shape"),
    ({"position": (1,)}, "position"),
    ({"zoom": 0}, "zoom"),
    ({"zoom": 2.0}, "zoom"),
    ({"window_size": (3, 100)}, "size must hold the 4x4 image at zoom 1"),
    ({"zoom": 3, "window_size": (100, 11)}, "size must hold the 4x4 image at zoom 3"),
    ({"window_size": (100, 100), "image_offset": (97, 0)}, "offset must keep"),
    ({"window_size": (100, 100), "image_offset": (-1, 0)}, "offset"),
    ({"pump_events": 0}, "pump_events"),
    ({"window_name": ""}, "window_name"),
])
def test_bad_arguments_are_refused_before_any_window(kwargs, match):
    args = {"shape": (4, 4), "pixel_pitch_m": PITCH_M, **kwargs}
    with pytest.raises(InputError, match=match):
        DisplaySLM(**args)


@pytest.mark.parametrize("window, field", [
    ({"zoom": 0}, "slm.window.zoom"),
    ({"size": [10, 10]}, "slm.window.size"),
    ({"size": [100, 100], "offset": [90, 0]}, "slm.window.offset"),
    ({"position": [1, 2, 3]}, "slm.window.position"),
    ({"monitor": 2}, "slm.window.monitor"),
])
def test_bad_window_fields_are_named_before_any_window(window, field):
    context = OpenContext(clock=RealClock())
    with pytest.raises(ConfigError, match=f"'{field}'"):
        DisplaySLM.from_config({"shape": [28, 28], "pixel_pitch_m": PITCH_M, "window": window}, context, "slm")


@pytest.mark.parametrize("moved", ["position", "fullscreen"])
def test_window_fields_at_the_top_level_say_where_they_moved(moved):
    context = OpenContext(clock=RealClock())
    with pytest.raises(ConfigError, match=f"'slm.{moved}'.*slm.window.{moved}"):
        DisplaySLM.from_config({"shape": [28, 28], "pixel_pitch_m": PITCH_M, moved: None}, context, "slm")


# --------------------------------------------------------------------------- in Xvfb

@pytest.mark.display
def test_gray_frames_land_pixel_exact_then_blank_then_next(x_display):
    position, shape = (37, 21), (71, 83)  # odd sizes: no row padding luck
    rng = np.random.default_rng(7)
    with DisplaySLM(shape, PITCH_M, position=position, window_name="slm-gray") as slm:
        _assert_on_screen(x_display, np.zeros(shape, np.uint8), position)  # opens dark
        first = rng.integers(0, 256, shape, dtype=np.uint8)
        slm.show(first)
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        _assert_on_screen(x_display, first, position)
        start = time.monotonic()
        slm.hold(0.2)  # as `hil show` does: the frame stays, the GUI keeps running
        assert time.monotonic() - start >= 0.2
        _assert_on_screen(x_display, first, position)
        slm.blank()
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        _assert_on_screen(x_display, np.zeros(shape, np.uint8), position)
        second = rng.integers(0, 256, shape, dtype=np.uint8)
        slm.show(second)
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        _assert_on_screen(x_display, second, position)
        assert slm.window_rect() == (*position, shape[1], shape[0])
    _assert_on_screen(x_display, np.zeros((0, 0), np.uint8), (0, 0))  # closed: the window is gone


@pytest.mark.display
def test_rgb_and_float_frames(x_display):
    position, shape = (300, 200), (70, 96, 3)
    with DisplaySLM(shape, PITCH_M, position=position, window_name="slm-rgb") as slm:
        rgb = np.zeros(shape, np.uint8)
        rgb[..., 0] = np.arange(96, dtype=np.uint8)[None, :] * 2  # red ramps along columns
        rgb[..., 1] = np.arange(70, dtype=np.uint8)[:, None] * 3  # green along rows
        rgb[..., 2] = 201
        slm.show(rgb)
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        _assert_on_screen(x_display, rgb, position)
        ramp = np.linspace(0, 1, 70 * 96 * 3).reshape(shape)
        shown = slm.show(ramp)
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        assert np.array_equal(shown, np.rint(ramp * 255).astype(np.uint8))
        _assert_on_screen(x_display, shown, position)


@pytest.mark.display
@pytest.mark.skipif(shutil.which("xwd") is None, reason="xwd (Debian package x11-apps) not installed")
def test_window_read_back_with_xwd(x_display, monkeypatch):
    shape = (70, 75)
    frame = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    with DisplaySLM(shape, PITCH_M, position=(5, 6), window_name="slm-xwd-id") as slm:
        slm.show(frame)
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        ids = subprocess.run(["xdotool", "search", "--name", "^slm-xwd-id$"], capture_output=True, text=True,
                             env={"DISPLAY": x_display.display}) if shutil.which("xdotool") else None
        if ids is None or not ids.stdout.split():
            pytest.skip("xdotool cannot find the window id")
        raw = subprocess.run(["xwd", "-silent", "-id", ids.stdout.split()[0]], capture_output=True, check=True,
                             env={"DISPLAY": x_display.display}).stdout
    header, window = parse_xwd(raw)
    assert (header.window_x, header.window_y) == (5, 6)
    assert np.array_equal(window, _as_rgb(frame))


@pytest.mark.display
def test_show_after_close_and_from_config(x_display):
    cls = load_backend("display")
    assert cls is DisplaySLM
    context = OpenContext(clock=RealClock())
    slm = cls.from_config({"shape": [70, 72], "pixel_pitch_m": PITCH_M, "window": {"position": [10, 20]},
                           "window_name": "slm-config"}, context, "slm")
    assert slm.name == "slm" and slm.position == (10, 20) and slm.shape == (70, 72)
    slm.show(np.full((70, 72), 99, np.uint8))
    slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
    _assert_on_screen(x_display, np.full((70, 72), 99, np.uint8), (10, 20))
    assert slm.settings()["position"] == [10, 20]
    slm.close()
    slm.close()
    with pytest.raises(DeviceClosed):
        slm.show(np.zeros((70, 72), np.uint8))
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
    with pytest.raises(ConfigError, match="slm.window.position"):
        cls.from_config({"shape": [70, 72], "pixel_pitch_m": PITCH_M, "window": {"position": "left"}}, context, "slm")


@pytest.mark.display
def test_display_slm_conforms(x_display):
    check_slm(lambda: DisplaySLM((72, 80), PITCH_M, position=(64, 32), window_name="slm-conformance"))


def _window_content(shape, frame, offset, zoom):
    window = np.zeros((*shape, *frame.shape[2:]), np.uint8)
    zoomed = np.kron(frame, np.ones((zoom, zoom, *([1] * (frame.ndim - 2))), np.uint8))
    window[offset[0]:offset[0] + zoomed.shape[0], offset[1]:offset[1] + zoomed.shape[1]] = zoomed
    return window


@pytest.mark.display
def test_a_small_image_zoomed_at_an_offset_in_a_larger_window_lands_pixel_exact(x_display):
    # the design's 28 x 28 image (below Qt's smallest window) at zoom 3, 13 rows and 29 columns into a
    # 110 x 150 window at desktop (37, 21)
    shape, window, offset, zoom, position = (28, 28), (110, 150), (13, 29), 3, (37, 21)
    frame = np.random.default_rng(11).integers(0, 256, shape, dtype=np.uint8)
    with DisplaySLM(shape, PITCH_M, position=position, window_size=window, image_offset=offset, zoom=zoom,
                    window_name="slm-zoom") as slm:
        assert slm.pixel_pitch_m == pytest.approx(3 * PITCH_M) and slm.screen_pixel_pitch_m == PITCH_M
        assert slm.window_rect() == (*position, 150, 110)
        assert slm.image_rect() == (37 + 29, 21 + 13, 84, 84)
        slm.show(frame)
        slm.wait_settled()
        _assert_on_screen(x_display, _window_content(window, frame, offset, zoom), position)
        slm.blank()
        slm.wait_settled()
        _assert_on_screen(x_display, np.zeros(window, np.uint8), position)
    rgb = np.random.default_rng(12).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    with DisplaySLM((30, 20, 3), PITCH_M, position=(5, 9), window_size=(100, 90), zoom=2,
                    window_name="slm-zoom-rgb") as slm:
        assert slm.image_offset == (20, 25)  # centred by default
        slm.show(rgb)
        slm.wait_settled()
        _assert_on_screen(x_display, _window_content((100, 90), rgb, (20, 25), 2), (5, 9))


@pytest.mark.display
def test_frame_smaller_than_the_smallest_window_is_refused(x_display):
    # Qt centres (or scales) frames below its 69x69 minimum window: not pixel-exact, so refused.
    with pytest.raises(DeviceFault, match="image area is"):
        DisplaySLM((16, 24), PITCH_M, position=(64, 32), window_name="slm-too-small")
    _assert_on_screen(x_display, np.zeros((0, 0), np.uint8), (0, 0))  # and no window is left behind


@pytest.mark.display
def test_under_a_window_manager_fullscreen_is_pixel_exact_and_a_decorated_window_is_refused(window_manager):
    rows, cols = window_manager.shape
    # Detected when the window opens, or -- if the window manager acts late (a loaded machine) -- at a
    # later show(); a window manager that never touches the window within 10 s fails the test.
    with pytest.raises(DeviceFault, match="window manager moved, decorated or resized it"):
        with DisplaySLM((100, 120), PITCH_M, position=(40, 30), window_name="slm-decorated", open_wait_s=1.0) as slm:
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                slm.show(np.zeros((100, 120), np.uint8))
                cv2.waitKey(20)
    # a full-screen window of the monitor's size, the image zoomed 4 x at an offset inside it
    image = np.random.default_rng(5).integers(0, 256, (28, 32, 3), dtype=np.uint8)
    frame = _window_content((rows, cols), image, (150, 301), 4)
    with DisplaySLM((28, 32, 3), PITCH_M, position=(0, 0), fullscreen=True, window_size=(rows, cols),
                    image_offset=(150, 301), zoom=4, window_name="slm-fullscreen") as slm:
        assert slm.window_rect() == (0, 0, cols, rows)
        slm.show(image)
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        _assert_on_screen(window_manager, frame, (0, 0))
        slm.blank()
        slm.wait_settled()  # as the bench does: the GUI runs while the frame settles
        _assert_on_screen(window_manager, np.zeros_like(frame), (0, 0))
