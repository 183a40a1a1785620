"""`hil devices`, `hil snap`, `hil show` on a simulated bench (virtual clock, direct render)."""

import json

import cv2
import numpy as np
import pytest
import yaml

from hil.cli import main


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
    meta = json.loads(out.with_suffix(".json").read_text())
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
