"""The OpenCV camera against real files written by OpenCV: lossless videos (FFV1, HuffYUV, PNG-in-AVI),
MJPG (lossy, bounded error), 16-bit FFV1, and PNG image sequences given as printf patterns."""

import os
import threading

import cv2
import numpy as np
import pytest

from drivers.device import OpenContext
from drivers.bench import Bench
from drivers.clock import RealClock
from drivers.errors import DeviceDisconnected, DeviceFault, DeviceNotFound, DeviceTimeout, UnsupportedFeature
from drivers.opencv_camera import OpenCVCamera
from drivers.registry import load_backend
from drivers.simulated import SimulatedSLM
from onn_core.errors import ConfigError, InputError
from tests.drivers.conformance import check_camera

PITCH_M = 3.45e-6
FPS = 10.0
SHAPE = (48, 64)
N_FRAMES = 5


def _random_bgr(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8) for _ in range(n)]


def _write_video(path, frames, fourcc, *, is_color=True, params=()):
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), FPS, SHAPE[::-1],
                             [cv2.VIDEOWRITER_PROP_IS_COLOR, int(is_color), *params])
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc} to {path.suffix}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Files written once per module: name -> (source, frames written)."""
    root = tmp_path_factory.mktemp("media")
    color = _random_bgr(N_FRAMES)
    gray = [f[..., 1].copy() for f in _random_bgr(3, seed=1)]
    deep = [np.random.default_rng(2).integers(0, 65536, SHAPE).astype(np.uint16) for _ in range(3)]
    y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    smooth = [np.stack([x * 3 + k, y * 4 + k, (x + y) * 2], -1).astype(np.uint8) for k in range(3)]
    out = {
        "ffv1.avi": (_write_video(root / "ffv1.avi", color, "FFV1"), color),
        "ffv1.mkv": (_write_video(root / "ffv1.mkv", color, "FFV1"), color),
        "huffyuv.avi": (_write_video(root / "huffyuv.avi", color, "HFYU"), color),
        "png.avi": (_write_video(root / "png.avi", color, "png "), color),
        "gray.avi": (_write_video(root / "gray.avi", gray, "FFV1", is_color=False), gray),
        "mjpg.avi": (_write_video(root / "mjpg.avi", smooth, "MJPG"), smooth),
        "gray16.mkv": (_write_video(root / "gray16.mkv", deep, "FFV1", is_color=False,
                                    params=(cv2.VIDEOWRITER_PROP_DEPTH, cv2.CV_16U)), deep),
    }
    (root / "seq").mkdir()
    for i, frame in enumerate(color):
        assert cv2.imwrite(str(root / "seq" / f"img_{i + 3:04d}.png"), frame)  # numbered from 3
    out["seq"] = (root / "seq" / "img_%04d.png", color)
    (root / "seq16").mkdir()
    for i, frame in enumerate(deep):
        assert cv2.imwrite(str(root / "seq16" / f"d_{i:03d}.png"), frame)
    out["seq16"] = (root / "seq16" / "d_%03d.png", deep)
    return out


def _rgb(bgr):
    return bgr[..., ::-1]


@pytest.mark.parametrize("name", ["ffv1.avi", "ffv1.mkv", "huffyuv.avi", "png.avi", "seq"])
def test_lossless_color_sources_read_back_exactly_in_order(media, name):
    source, written = media[name]
    with OpenCVCamera(str(source), PITCH_M, color=True) as cam:
        assert cam.shape == SHAPE and cam.dtype == np.uint8 and cam.bit_depth == 8
        frames = cam.grab(N_FRAMES + 2)  # past the end: loop rewinds
    for k, frame in enumerate(frames):
        assert frame.image.shape == (*SHAPE, 3)
        assert np.array_equal(frame.image, _rgb(written[k % N_FRAMES])), f"frame {k} differs"
        assert frame.meta["source_frame"] == k % N_FRAMES
    assert [f.index for f in frames] == list(range(N_FRAMES + 2))


def test_mono_is_itu601_luma_of_the_colour_frames(media):
    source, written = media["ffv1.avi"]
    with OpenCVCamera(str(source), PITCH_M) as cam:
        assert cam.shape == SHAPE
        images = [f.image for f in cam.grab(N_FRAMES)]
    for image, bgr in zip(images, written):
        assert image.shape == SHAPE and image.dtype == np.uint8
        b, g, r = (bgr[..., c].astype(np.float64) for c in range(3))
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        assert np.abs(image - luma).max() <= 1.0  # OpenCV rounds in 14-bit fixed point
        assert np.array_equal(image, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_gray_video_is_exact(media):
    source, written = media["gray.avi"]
    with OpenCVCamera(str(source), PITCH_M) as cam:
        assert [np.array_equal(f.image, w) for f, w in zip(cam.grab(3), written)] == [True] * 3


def test_mjpg_is_lossy_but_close(media):
    source, written = media["mjpg.avi"]
    with OpenCVCamera(str(source), PITCH_M, color=True) as cam:
        for frame, bgr in zip(cam.grab(3), written):
            error = np.abs(frame.image.astype(int) - _rgb(bgr))
            assert 0 < error.max() <= 16 and error.mean() <= 3.0


@pytest.mark.parametrize("name", ["gray16.mkv", "seq16"])
def test_16_bit_sources_read_back_exactly(media, name):
    source, written = media[name]
    with OpenCVCamera(str(source), PITCH_M, bit_depth=16) as cam:
        assert cam.dtype == np.uint16 and cam.saturation_dn == 65535
        for frame, expected in zip(cam.grab(3), written):
            assert frame.image.dtype == np.uint16 and np.array_equal(frame.image, expected)


@pytest.mark.parametrize("name", ["gray16.mkv", "seq16"])
def test_16_bit_sources_are_not_cut_to_8_bits(media, name):
    """At the default bit depth OpenCV would convert 16-bit frames to 8 bits (their top byte): refused."""
    source, _ = media[name]
    with pytest.raises(InputError, match="bit_depth 8 would keep only the top 8 bits.*gray16"):
        OpenCVCamera(str(source), PITCH_M)
    context = OpenContext(clock=RealClock(), base_dir=source.parent)
    with pytest.raises(ConfigError) as info:
        load_backend("opencv").from_config({"source": source.name, "pixel_pitch_m": PITCH_M}, context, "camera")
    assert info.value.path == "camera.bit_depth" and info.value.value == 8


def test_16_bit_request_on_an_8_bit_source_is_a_fault(media):
    with pytest.raises(DeviceFault, match="16-bit mono"):
        OpenCVCamera(str(media["ffv1.avi"][0]), PITCH_M, bit_depth=16)


def test_end_of_file_without_loop(media):
    source, _ = media["ffv1.avi"]
    with OpenCVCamera(str(source), PITCH_M, loop=False) as cam:
        cam.grab(N_FRAMES)
        with pytest.raises(DeviceDisconnected, match=f"end of .* after {N_FRAMES} frames"):
            cam.snap()


def test_roi_is_a_crop_of_the_frame(media):
    source, written = media["ffv1.avi"]
    with OpenCVCamera(str(source), PITCH_M, color=True) as cam:
        cam.roi = (2, 3, 10, 20)
        assert cam.shape == (10, 20)
        assert np.array_equal(cam.snap().image, _rgb(written[0])[2:12, 3:23])
        cam.roi = None
        assert np.array_equal(cam.snap().image, _rgb(written[1]))


def test_recorded_source_settings(media):
    source, _ = media["ffv1.avi"]
    with OpenCVCamera(str(source), PITCH_M) as cam:
        assert cam.fps == FPS
        assert cam.exposure_s == pytest.approx(1 / FPS) and cam.exposure_limits_s == (cam.exposure_s,) * 2
        with pytest.raises(InputError, match="exposure_s"):
            cam.exposure_s = 0.05
        for gain in (1.0, 2.0):  # no gain control: whatever the value
            with pytest.raises(UnsupportedFeature):
                cam.gain = gain
        with pytest.raises(UnsupportedFeature):
            cam.trigger_mode = "free-run"
        assert cam.flush() == 0  # a file buffers nothing stale
        settings = cam.settings()
        assert settings["source_kind"] == "file" and settings["api"] == "FFMPEG" and settings["fps"] == FPS
    with OpenCVCamera(str(source), PITCH_M, exposure_s=0.02) as cam:
        assert cam.exposure_s == 0.02


def test_sources_that_do_not_exist_or_cannot_be_read(tmp_path):
    with pytest.raises(DeviceNotFound, match="does not exist"):
        OpenCVCamera(str(tmp_path / "missing.avi"), PITCH_M)
    (tmp_path / "notes.avi").write_text("not a video")
    with pytest.raises(DeviceNotFound, match="cannot open"):
        OpenCVCamera(str(tmp_path / "notes.avi"), PITCH_M)
    with pytest.raises(DeviceNotFound, match="does not exist"):
        OpenCVCamera(str(tmp_path / "nowhere" / "img_%03d.png"), PITCH_M)
    with pytest.raises(DeviceNotFound, match="cannot open"):
        OpenCVCamera(57, PITCH_M, api="ffmpeg")  # no such camera
    for bad in (None, "", 1.5):
        with pytest.raises(InputError, match="source"):
            OpenCVCamera(bad, PITCH_M)
    with pytest.raises(InputError, match="api"):
        OpenCVCamera(str(tmp_path / "notes.avi"), PITCH_M, api="quicktime")


def test_a_source_that_blocks_times_out(tmp_path):
    fifo = tmp_path / "stalled.avi"
    os.mkfifo(fifo)  # opening it blocks until a writer appears, like a dead network stream
    try:
        with pytest.raises(DeviceTimeout, match="no answer"):
            OpenCVCamera(str(fifo), PITCH_M, timeout_s=0.02)
    finally:
        unblock = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
        unblock.start()  # lets the abandoned open() finish (it then fails: no video)
        unblock.join(timeout=5)


def test_an_open_that_returns_after_its_timeout_is_released(media, monkeypatch):
    """The abandoned open of a source that answers late: the capture it returns is released."""
    source, _ = media["ffv1.avi"]
    real_capture, late, answer = cv2.VideoCapture, [], threading.Event()

    def slow_capture(*args):
        answer.wait(30)
        late.append(real_capture(*args))
        return late[-1]

    monkeypatch.setattr(cv2, "VideoCapture", slow_capture)
    with pytest.raises(DeviceTimeout, match="open: no answer"):
        OpenCVCamera(str(source), PITCH_M, timeout_s=0.05)
    answer.set()
    for _ in range(3000):  # until the late open is back and released (bounded wait, not a timing check)
        if late and not late[0].isOpened():
            break
        threading.Event().wait(0.01)
    assert late and not late[0].isOpened(), "the late capture was left open"


def test_opened_from_config_relative_to_the_yaml_folder(media):
    source, written = media["ffv1.avi"]
    cls = load_backend("opencv")
    assert cls is OpenCVCamera
    context = OpenContext(clock=RealClock(), base_dir=source.parent)
    with cls.from_config({"source": source.name, "pixel_pitch_m": PITCH_M, "color": True}, context, "camera") as cam:
        assert cam.name == "camera" and cam.source == str(source)
        assert np.array_equal(cam.snap().image, _rgb(written[0]))
    with pytest.raises(ConfigError, match="camera.source"):
        cls.from_config({"source": [1, 2], "pixel_pitch_m": PITCH_M}, context, "camera")
    with pytest.raises(ConfigError, match="camera.color"):
        cls.from_config({"source": source.name, "pixel_pitch_m": PITCH_M, "color": "maybe"}, context, "camera")
    # a bad value found by the camera itself names its field, not the whole section
    with pytest.raises(ConfigError) as info:
        cls.from_config({"source": source.name, "pixel_pitch_m": PITCH_M, "exposure_s": -0.01}, context, "camera")
    assert info.value.path == "camera.exposure_s" and info.value.value == -0.01


def test_bench_with_a_recorded_camera_measures_its_frames_in_order(media):
    """A file is read at once (well within the nominal exposure of one frame interval); its frames
    are exposed after the request (software trigger), hence fresh: no stale-frame retries."""
    source, written = media["gray.avi"]
    clock = RealClock()
    slm = SimulatedSLM(shape=(4, 4), bit_depth=8, pixel_pitch_m=8e-6, latency_s=0.0, settle_s=1e-3, clock=clock)
    with Bench(slm, OpenCVCamera(str(source), PITCH_M, clock=clock), retries=0) as bench:
        measured = [bench.measure(np.full((4, 4), k, np.uint8)) for k in range(5)]
    assert [m.frame.meta["source_frame"] for m in measured] == [0, 1, 2, 0, 1]
    for m in measured:
        assert m.frame.timing == "triggered" and m.frame.timestamp_s >= m.settled_at_s and m.attempts == 1
        assert np.array_equal(m.frame.image, written[m.frame.meta["source_frame"]])


def test_opencv_camera_conforms(media):
    source, _ = media["ffv1.avi"]
    check_camera(lambda: OpenCVCamera(str(source), PITCH_M))


def test_roi_from_the_bench_config_is_a_software_crop(media):
    """``camera.roi`` of a bench config: OpenCV has no window of interest, so whole frames are cropped
    (recorded in each frame's settings); outside the sensor it is refused naming the field."""
    from drivers.config import open_device

    source, written = media["ffv1.avi"]
    context = OpenContext(clock=RealClock(), base_dir=source.parent)
    settings = {"backend": "opencv", "source": source.name, "pixel_pitch_m": PITCH_M, "color": True}
    with open_device("camera", {**settings, "roi": {"offset": [2, 3], "size": [10, 20]}}, context) as cam:
        frame = cam.snap()
        assert np.array_equal(frame.image, _rgb(written[0])[2:12, 3:23])
        assert frame.settings["roi"] == [2, 3, 10, 20] and frame.settings["roi_mode"] == "software"
    rows, cols = written[0].shape[:2]
    with pytest.raises(ConfigError, match=f"{rows} x {cols} sensor") as info:
        open_device("camera", {**settings, "roi": {"offset": [rows - 4, 0], "size": [8, 8]}}, context)
    assert info.value.path == "camera.roi"
