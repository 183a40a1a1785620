"""``hil snap`` writes, beside the raw frame, an 8-bit preview stretched for viewing."""

from __future__ import annotations

import cv2
import numpy as np

from hil.cli import main
from hil.commands.devices import preview_image
from tests.drivers.test_cli_devices import bench_yaml  # noqa: F401  (the fixture: a simulated 6 x 8 bench)


def test_snap_writes_a_viewable_preview_beside_the_raw_frame(bench_yaml, tmp_path, capsys):
    shown = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)            # 0 .. 235
    cv2.imwrite(str(tmp_path / "in.png"), shown)
    out = tmp_path / "frame.png"
    assert main(["snap", str(bench_yaml), "-o", str(out), "--image", str(tmp_path / "in.png"), "--exposure-s", "0.02"]) == 0
    raw = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    preview = cv2.imread(str(tmp_path / "frame.png.preview.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() == 235 * 20                 # dim in a 16-bit viewer: 7 % of full scale
    assert preview.dtype == np.uint8 and preview.shape == raw.shape
    assert preview.min() == 0 and preview.max() == 255                      # stretched to the full 8 bits
    order = np.argsort(raw, axis=None, kind="stable")
    assert np.all(np.diff(preview.ravel()[order].astype(int)) >= 0)          # monotonic in the raw values
    assert "frame.png.preview.png" in capsys.readouterr().out
    # frames of one stem keep their own previews, like their sidecars
    assert main(["snap", str(bench_yaml), "-o", str(tmp_path / "frame.npy")]) == 0
    assert (tmp_path / "frame.npy.preview.png").is_file() and (tmp_path / "frame.png.preview.png").is_file()


def test_preview_stretch_clips_outliers_and_survives_flat_frames():
    rng = np.random.default_rng(0)
    frame = rng.integers(1000, 1100, size=(100, 100)).astype(np.uint16) * 16  # a 12-bit camera in 16 bits
    frame[0, 0] = 65535                                                     # one hot pixel
    preview, (low, high) = preview_image(frame)
    assert 1000 * 16 <= low < high < 65535                                  # the hot pixel does not set the scale
    assert preview[0, 0] == 255 and preview.dtype == np.uint8
    assert np.count_nonzero(preview > 128) > 1000                           # the scene uses the range
    flat, stretch = preview_image(np.full((4, 4), 77, np.uint16))
    assert stretch == (77.0, 77.0) and not flat.any()
    rgb, _ = preview_image(np.dstack([frame, frame // 2, frame // 4]))
    assert rgb.shape == (100, 100, 3) and rgb[..., 0].mean() > rgb[..., 2].mean()
