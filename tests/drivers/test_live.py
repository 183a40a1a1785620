"""`hil live`: the composed view (saturation overlay, scaling, histogram, focus) without a window, the
keys on a simulated bench, and the window in a real X server (Xvfb), read back pixel for pixel."""

import cv2
import numpy as np
import pytest

from drivers import VirtualClock, open_bench
from drivers.errors import DeviceFault, DeviceNotFound
from drivers.live_view import (
    HISTOGRAM_ROWS,
    SATURATED_RGB,
    ViewInfo,
    compose_view,
    focus_metric,
    histogram,
    scale_to_8bit,
    tile_focus,
    view_scale,
)
from drivers.live_window import EXPOSURE_STEP, LiveWindow
from hil.cli import main
from onn_core.errors import InputError
from tests.drivers.test_display_slm import _assert_on_screen

BENCH = "examples/bench_sim.yaml"


def _red(view: np.ndarray) -> np.ndarray:
    return np.all(view == SATURATED_RGB, axis=-1)


# --------------------------------------------------------------------------- the view, no window

@pytest.mark.parametrize("frame_shape, max_shape, zoom", [((20, 30), (40, 60), 2), ((40, 60), (20, 30), 1)])
def test_saturated_pixels_get_the_overlay_colour_at_exactly_those_pixels(frame_shape, max_shape, zoom):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 4000, frame_shape).astype(np.uint16)
    saturated = rng.random(frame_shape) < 0.05
    frame[saturated] = rng.choice([4095, 4200], saturated.sum())  # at and above saturation
    view = compose_view(frame, ViewInfo(saturation_dn=4095), max_shape)
    if zoom > 1:
        expected = np.kron(saturated, np.ones((zoom, zoom), bool))
    else:  # binned 2 x 2: a view pixel is saturated where any of its block is
        expected = saturated.reshape(frame_shape[0] // 2, 2, frame_shape[1] // 2, 2).any(axis=(1, 3))
    rows, cols = expected.shape
    assert np.array_equal(_red(view[:rows, :cols]), expected)
    assert view.shape[:2] == (rows + HISTOGRAM_ROWS + 18, cols)
    strip = view[rows:rows + HISTOGRAM_ROWS]
    assert _red(strip[:, -1]).any() and not _red(strip[:, :-1]).any()  # the saturated bin, and only it


def test_log_and_linear_scaling_map_known_values():
    values = np.array([-5, 0, 63, 4095, 5000])
    assert scale_to_8bit(values, 4095, 0, "log").tolist() == [0, 0, 128, 255, 255]  # log(64) = log(4096) / 2
    assert scale_to_8bit(values + 100, 4195, 100, "log").tolist() == [0, 0, 128, 255, 255]  # from the black level
    assert scale_to_8bit([0, 1000, 2000], 2000, 0, "linear").tolist() == [0, 128, 255]
    with pytest.raises(InputError, match="scale"):
        scale_to_8bit(values, 4095, 0, "gamma")
    with pytest.raises(InputError, match="saturation_dn"):
        scale_to_8bit(values, 100, 100)


def test_histogram_counts():
    frame = np.array([[0, 10, 99, 100], [150, 1e6, 55, 54.9]])
    counts = histogram(frame, 100, 10)
    assert counts.tolist() == [1, 1, 0, 0, 0, 2, 0, 0, 0, 4]  # at or above saturation in the last bin
    assert histogram(np.stack([frame] * 3, axis=-1), 100, 10).tolist() == counts.tolist()  # colour: channel max


def test_focus_metric_ranks_a_sharp_tile_above_a_blurred_one():
    sharp = np.random.default_rng(1).random((24, 24)) * 1000
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0) * 3  # brighter too: the metric ignores brightness
    frame = np.hstack([sharp, blurred])
    tiles = np.array([[[-0.5, -0.5], [-0.5, 23.5], [23.5, 23.5], [23.5, -0.5]],
                      [[-0.5, 23.5], [-0.5, 47.5], [23.5, 47.5], [23.5, 23.5]]])
    focus = tile_focus(frame, tiles)
    assert focus[0] == pytest.approx(focus_metric(sharp)) and focus[1] == pytest.approx(focus_metric(blurred))
    assert focus[0] > 5 * focus[1]
    assert focus_metric(5 * sharp) == pytest.approx(focus_metric(sharp))
    assert focus_metric(np.zeros((4, 4))) == 0.0
    view = compose_view(frame, ViewInfo(saturation_dn=5000, tiles=tiles), (48, 96))  # outlines drawn
    assert np.all(view[0, 0] == (0, 255, 0)) and np.all(view[47, 95] == (0, 255, 0))


def test_view_scale_fits_the_frame():
    assert view_scale((164, 164), (480, 640)) == (2, 1)
    assert view_scale((1024, 1280), (480, 640)) == (1, 3)


# --------------------------------------------------------------------------- keys, no window

@pytest.fixture
def bench():
    with open_bench(BENCH, clock=VirtualClock()) as opened:
        yield opened


def test_keys_act_on_the_bench(bench):
    white = np.full(bench.slm.shape, 255, bench.slm.dtype)
    saved = []
    live = LiveWindow(bench, patterns={"w": ("white", white)}, save=lambda b, f: saved.append(f) or "x.png")
    exposure = bench.camera.exposure_s
    assert live.handle(ord("+")) and bench.camera.exposure_s == pytest.approx(exposure * EXPOSURE_STEP, rel=1e-3)
    assert live.handle(ord("-")) and bench.camera.exposure_s == pytest.approx(exposure, rel=1e-3)  # as the camera rounds
    assert live.handle(ord("l")) and live.scale == "log"
    assert live.handle(ord("w")) and live._pending is white
    assert live.handle(-1)
    assert live.handle(ord("s")) and len(saved) == 1
    assert not live.handle(ord("q")) and not live.handle(27)
    with pytest.raises(InputError, match="taken"):
        LiveWindow(bench, patterns={"s": ("white", white)})


def test_without_an_x_server_the_live_view_says_so(bench, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":4093")  # nothing listens there
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(DeviceNotFound, match="DISPLAY=':4093'"):
        LiveWindow(bench).run(frames=1)


# --------------------------------------------------------------------------- in Xvfb

@pytest.mark.display
def test_the_window_shows_the_composed_view_and_the_display_is_blanked_after(x_display):
    position = (23, 11)
    with open_bench(BENCH) as bench:
        white = np.full(bench.slm.shape, 255, bench.slm.dtype)
        live = LiveWindow(bench, patterns={"w": ("white", white)}, position=position, max_shape=(328, 328),
                          window_name="live-test")
        views = []
        show_next = live.show_next

        def show_and_check():
            view = show_next()
            if len(views) == 2:  # the third frame: white, 1.4 x the exposure -> saturated
                _assert_on_screen(x_display, view, position)
            views.append(view)
            return view

        live.show_next = show_and_check
        assert live.run(frames=3, keys="w+") == 3
        assert _red(views[2][:328, :328]).any()
        assert not bench.closed and np.all(bench.slm.last_frame == 0)  # blanked, still open
    _assert_on_screen(x_display, np.zeros((0, 0), np.uint8), (0, 0))  # the window is gone


@pytest.mark.display
def test_an_exception_in_the_loop_closes_the_window_and_blanks_the_display(x_display, monkeypatch):
    with open_bench(BENCH) as bench:
        snap, calls = bench.camera.snap, []

        def failing_snap(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise DeviceFault("unplugged", device="camera")
            return snap(*args, **kwargs)

        monkeypatch.setattr(bench.camera, "snap", failing_snap)
        white = np.full(bench.slm.shape, 255, bench.slm.dtype)
        live = LiveWindow(bench, patterns={"w": ("white", white)}, max_shape=(164, 164), window_name="live-fail")
        with pytest.raises(DeviceFault, match="unplugged"):
            live.run(keys="w")  # frame 1, white shown for frame 2, then the camera fails
        assert np.all(bench.slm.last_frame == 0)
        _assert_on_screen(x_display, np.zeros((0, 0), np.uint8), (0, 0))


@pytest.mark.display
def test_hil_live_runs_saves_and_leaves_no_window(x_display, tmp_path, capsys):
    status = main(["live", BENCH, "--frames", "4", "--keys", "wdls", "--max-size", "164", "164",
                   "--save-dir", str(tmp_path), "--position", "5", "5"])
    assert status == 0 and "4 frames shown" in capsys.readouterr().out
    saved = tmp_path / "live_0001.png"
    assert saved.is_file() and (tmp_path / "live_0001.png.json").is_file()
    assert (tmp_path / "live_0001.png.preview.png").is_file()
    _assert_on_screen(x_display, np.zeros((0, 0), np.uint8), (0, 0))


def test_tile_outlines_from_a_locate_file_and_from_the_calibrations_geometry(bench, tmp_path):
    from types import SimpleNamespace

    from calibration.locate import GridLocation, design_tile_corners
    from hil.commands.live import _tiles

    system = bench.camera.optics
    design = design_tile_corners(system.layout, system.num_psfs)
    assert np.array_equal(_tiles(system, None, None, bench.camera), design)  # the camera's frame is the design's
    shift = np.array([3.0, -2.0])
    GridLocation.from_affine(np.array([[1.0, 0, shift[0]], [0, 1, shift[1]]]), bench.camera.shape,
                             system.frame_shape, 40, 0.1).save(tmp_path / "grid.yaml")
    assert np.allclose(_tiles(system, None, tmp_path / "grid.yaml", bench.camera), design + shift)
    origins = np.array([[10.0, 20.0], [50.5, 60.25]])
    geometry = SimpleNamespace(tile_shape=(5, 7), tile_origins_px=lambda: origins)
    tiles = _tiles(system, geometry, None, bench.camera)
    assert np.allclose(tiles[1], [[50.0, 59.75], [50.0, 66.75], [55.0, 66.75], [55.0, 59.75]])  # pixel edges
    other = SimpleNamespace(shape=(100, 100))
    assert _tiles(system, None, None, other) is None  # nothing places the design frame in another frame
