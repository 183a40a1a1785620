"""`hil devices`, `hil snap`, `hil show` on a simulated bench (virtual clock, direct render)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from hil.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_yaml(tmp_path):
    config = {
        "clock": "virtual",
        "slm": {"backend": "simulated-slm", "shape": [6, 8]},
        "camera": {"backend": "simulated-camera", "render": "direct", "exposure_s": 0.01},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_devices_lists_backends(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "camera" in lines["simulated-camera"] and "ok" in lines["simulated-camera"]
    assert "slm" in lines["simulated-slm"] and "builtin" in lines["simulated-slm"]
    assert "onn_hil.drivers" in out


def test_snap_writes_the_frame_and_its_metadata(bench_yaml, tmp_path, capsys):
    image = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), image)
    out = tmp_path / "out" / "frame.png"
    assert main(["snap", str(bench_yaml), "-o", str(out), "--image", str(tmp_path / "in.png"), "--exposure-s", "0.02"]) == 0
    frame = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert frame.dtype == np.uint16 and np.array_equal(frame, image.astype(np.uint16) * 20)
    meta = json.loads((out.parent / "frame.png.json").read_text())
    assert meta["exposure_s"] == pytest.approx(0.02) and meta["meta"]["slm_frame_id"] == 0
    assert meta["config"]["camera"]["render"] == "direct" and meta["settings"]["camera"]["exposure_s"] == pytest.approx(0.02)
    assert main(["snap", str(bench_yaml), "-o", str(tmp_path / "frame.npy")]) == 0
    assert np.load(tmp_path / "frame.npy").shape == (6, 8)


def test_show_displays_and_rejects_bad_images(bench_yaml, tmp_path, capsys):
    np.save(tmp_path / "ok.npy", np.full((6, 8), 3, np.uint8))
    assert main(["show", str(bench_yaml), str(tmp_path / "ok.npy"), "--hold-s", "1"]) == 0
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5), np.uint8))
    assert main(["show", str(bench_yaml), str(tmp_path / "wrong.npy")]) == 2
    assert "does not match the SLM's (6, 8)" in capsys.readouterr().err
    assert main(["show", str(bench_yaml), str(tmp_path / "missing.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_bad_config_names_the_yaml_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("camera:\n  backend: simulated-camera\n  render: direct\n  exposure_s: fast\n")
    assert main(["snap", str(path), "-o", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "camera.exposure_s" in err and "'fast'" in err and "a number" in err
    assert main(["snap", str(tmp_path / "nowhere.yaml")]) == 2
    assert "readable YAML file" in capsys.readouterr().err


def test_bench_script_example_runs_and_saves_frames(bench_yaml, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "bench_script.py"
    spec = importlib.util.spec_from_file_location("bench_script_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run"
    assert module.main([str(bench_yaml), "--out", str(out)]) == 0
    frames = sorted(out.glob("frame_*.npy"))
    assert len(frames) == 4
    bright = np.load(frames[1])
    assert np.all(bright == 255 * 10)  # direct render: 1000 DN per level per s x 10 ms
    assert json.loads((out / "frame_002.json").read_text())["pattern"] == "point"
    assert yaml.safe_load((out / "config.yaml").read_text())["camera"]["render"] == "direct"


def test_frames_of_one_stem_keep_their_own_sidecars(bench_yaml, tmp_path):
    for suffix in (".png", ".tif", ".npy"):
        assert main(["snap", str(bench_yaml), "-o", str(tmp_path / f"frame{suffix}")]) == 0
    for suffix in (".png", ".tif", ".npy"):
        meta = json.loads((tmp_path / f"frame{suffix}.json").read_text())
        assert meta["image"] == f"frame{suffix}"
    assert not (tmp_path / "frame.json").exists()


@pytest.mark.parametrize("name", ["f.jpg", "f.jpeg", "f.bmp", "f.webp", "frame"])
def test_lossy_or_narrow_formats_are_refused(bench_yaml, tmp_path, capsys, name):
    """A uint16 frame as JPEG (8 bits, lossy) came out as all 255 with exit 0: now refused up front."""
    assert main(["snap", str(bench_yaml), "-o", str(tmp_path / name)]) == 2
    assert "frames are written as .png or .tif" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [bench_yaml]


def test_unwritable_outputs_exit_2_with_a_message_and_leave_nothing(bench_yaml, tmp_path, capsys, monkeypatch):
    (tmp_path / "plain_file").write_text("")
    for suffix in (".png", ".npy"):
        assert main(["snap", str(bench_yaml), "-o", str(tmp_path / "plain_file" / f"f{suffix}")]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "plain_file" in err and "Traceback" not in err

    # a read-only folder (simulated: root may write anywhere)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    for suffix in (".png", ".tif", ".npy"):
        assert main(["snap", str(bench_yaml), "-o", str(read_only / f"f{suffix}")]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {read_only / f'f{suffix}'}: Permission denied" in err, err
    assert list(read_only.iterdir()) == []


def test_a_frame_is_never_left_without_its_sidecar(bench_yaml, tmp_path, capsys, monkeypatch):
    """The sidecar fails to be written (metadata that cannot be encoded): no frame is left either."""
    import drivers.images

    real_dumps = json.dumps
    monkeypatch.setattr(drivers.images.json, "dumps", lambda *a, **k: real_dumps(float("nan"), allow_nan=False))
    assert main(["snap", str(bench_yaml), "-o", str(tmp_path / "f.png")]) == 2
    assert "metadata cannot be written as JSON" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()
    monkeypatch.setattr(drivers.images.json, "dumps", real_dumps)
    real_replace = os.replace

    def sidecar_rename_fails(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", sidecar_rename_fails)
    assert main(["snap", str(bench_yaml), "-o", str(tmp_path / "f.png")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.yaml"]


def test_a_failing_file_operation_exits_2_without_a_traceback(tmp_path, capsys, monkeypatch):
    import hil.commands.devices

    (tmp_path / "plain_file").write_text("")
    monkeypatch.setattr(hil.commands.devices, "cmd_devices", lambda args: (tmp_path / "plain_file" / "out").mkdir())
    assert main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hil devices: error: ") and "plain_file" in err and "Traceback" not in err


def test_snap_through_a_recorded_video_camera(tmp_path):
    """A video-file camera returns at once: its frames are fresh all the same (software-triggered)."""
    frames = [np.full((6, 8), 40 * (k + 1), np.uint8) for k in range(3)]
    writer = cv2.VideoWriter(str(tmp_path / "run.avi"), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), 10.0,
                             (8, 6), [cv2.VIDEOWRITER_PROP_IS_COLOR, 0])
    for frame in frames:
        writer.write(frame)
    writer.release()
    config = {"clock": "real", "slm": {"backend": "simulated-slm", "shape": [6, 8], "latency_s": 0.001},
              "camera": {"backend": "opencv", "source": "run.avi", "pixel_pitch_m": 3.45e-6}}
    (tmp_path / "video.yaml").write_text(yaml.safe_dump(config))
    np.save(tmp_path / "in.npy", np.full((6, 8), 9, np.uint8))
    out = tmp_path / "f.png"
    assert main(["snap", str(tmp_path / "video.yaml"), "-o", str(out), "--image", str(tmp_path / "in.npy")]) == 0
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), frames[0])
    assert json.loads((tmp_path / "f.png.json").read_text())["meta"]["source_frame"] == 0


RECORDING_BACKENDS = """
import os
from dataclasses import dataclass

import numpy as np

from drivers.camera import Camera
from drivers.frames import RawFrame
from drivers.slm import SLM


class RecordingSLM(SLM):
    \"\"\"Writes every frame it shows (its maximum) and its closing to the file $SLM_LOG.\"\"\"

    @dataclass
    class Config:
        shape: tuple[int, int] = (4, 4)

    def __init__(self, *, shape=(4, 4), name=None, clock=None):
        super().__init__(shape=shape, bit_depth=8, pixel_pitch_m=8e-6, name=name, clock=clock)
        self.log = open(os.environ["SLM_LOG"], "a", buffering=1)

    def _show(self, frame):
        self.log.write(f"show {int(frame.max())}\\n")

    def _close(self):
        self.log.write("close\\n")
        self.log.close()


class DarkCamera(Camera):
    def __init__(self, *, name=None, clock=None):
        super().__init__(sensor_shape=(2, 2), bit_depth=8, pixel_pitch_m=1e-6, exposure_s=0.01,
                         exposure_limits_s=(1e-4, 1.0), name=name, clock=clock)

    def _snap(self, timeout_s):
        return RawFrame(np.zeros((2, 2), np.uint8))
"""


@pytest.mark.parametrize("hold", [[], ["--hold-s", "60"]], ids=["until-stopped", "hold-s"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_show_stopped_by_a_signal_blanks_the_slm_and_exits_128_plus_signal(tmp_path, signum, hold):
    (tmp_path / "recording_backends.py").write_text(RECORDING_BACKENDS)
    config = {"clock": "real", "slm": {"backend": "recording-slm", "shape": [4, 4]}, "camera": {"backend": "dark-camera"}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    np.save(tmp_path / "image.npy", np.full((4, 4), 200, np.uint8))
    log = tmp_path / "slm.log"
    script = textwrap.dedent(f"""
        import sys
        from drivers.registry import register_backend
        register_backend("recording-slm", "recording_backends:RecordingSLM")
        register_backend("dark-camera", "recording_backends:DarkCamera")
        from hil.cli import main
        sys.exit(main({["show", str(tmp_path / "bench.yaml"), str(tmp_path / "image.npy"), *hold]!r}))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]), SLM_LOG=str(log))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        line = proc.stderr.readline()
        assert line.startswith("showing"), line + proc.stderr.read()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert log.read_text().splitlines() == ["show 200", "show 0", "close"]
