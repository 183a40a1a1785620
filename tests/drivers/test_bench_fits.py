"""check_bench_fits: one check of a bench against an optical system, one error naming every field."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from drivers.bench_fits import BenchMismatch, check_bench_fits, check_slm_fits
from onn_core.errors import ConfigError


def optics(image_shape=(28, 28), frame_shape=(120, 120), channels=1, bit_depth=8, pitch_m=3.45e-6):
    """A duck-typed optical system: only what the check reads."""
    psfs = np.zeros((4, channels, 7, 7))
    return SimpleNamespace(image_shape=image_shape, frame_shape=frame_shape, num_psfs=4,
                           design=SimpleNamespace(psfs=lambda: psfs), display=SimpleNamespace(bit_depth=bit_depth),
                           geometry=SimpleNamespace(display_pixel_pitch_m=pitch_m))


def bench(slm_shape=(28, 28), camera_shape=(120, 120), bit_depth=8, pitch_m=3.45e-6):
    return SimpleNamespace(slm=SimpleNamespace(shape=slm_shape, bit_depth=bit_depth, pixel_pitch_m=pitch_m),
                           camera=SimpleNamespace(shape=camera_shape))


def test_a_bench_that_fits_passes():
    check_bench_fits(bench(), optics())
    check_bench_fits(bench(slm_shape=(28, 28, 3)), optics(channels=3))


@pytest.mark.parametrize("kwargs, field, optics_field, named", [
    ({"slm_shape": (28, 29)}, "slm.shape", "image_shape", "image_shape"),
    ({"slm_shape": (28, 28, 3)}, "slm.shape", "design", "design"),
    ({"bit_depth": 10}, "slm.bit_depth", "display.bit_depth", "display.bit_depth"),
    ({"pitch_m": 8e-6}, "slm.pixel_pitch_m", "geometry.display_pixel_pitch_m", "geometry.display_pixel_pitch_m"),
    ({"camera_shape": (1080, 1440)}, "camera.shape", "frame_shape", "geometry: gap_px"),
])
def test_each_contradiction_names_the_bench_field_and_the_optics_field(kwargs, field, optics_field, named):
    with pytest.raises(BenchMismatch) as info:
        check_bench_fits(bench(**kwargs), optics(), optics_path="camera.optics")
    error = info.value
    assert isinstance(error, ConfigError) and error.path == field
    assert [m.bench_field for m in error.mismatches] == [field]
    assert f"{field}: " in str(error) and f"camera.optics.{named}" in str(error)
    assert error.expected.startswith(f"camera.optics.{optics_field} = ")


def test_every_contradiction_is_reported_at_once():
    with pytest.raises(BenchMismatch, match=r"slm\.shape: the SLM shows \(12, 13\).*camera\.shape: the camera "
                                            r"delivers \(1080, 1440\) frames but the optics' 4 tiles need a "
                                            r"\(120, 120\) frame") as info:
        check_bench_fits(bench(slm_shape=(12, 13), camera_shape=(1080, 1440)), optics(image_shape=(12, 12)))
    assert [m.bench_field for m in info.value.mismatches] == ["slm.shape", "camera.shape"]


def test_the_slm_alone_is_checked_without_a_camera():
    check_slm_fits(bench(camera_shape=(1, 1)).slm, optics())
    with pytest.raises(BenchMismatch, match="bit_depth"):
        check_slm_fits(bench(bit_depth=12).slm, optics())
