"""drivers.exposure: auto_exposure on the camera interface, exposure_held, capture_stack, and
Bench.read's retries, on simulated devices (direct render: DN = gray x 1000 x exposure_s)."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.bench import Bench
from drivers.errors import DeviceDisconnected, ExposureError
from drivers.exposure import MIN_SIGNAL_FRACTION, capture_stack, exposure_held
from drivers.faults import FaultConfig
from drivers.simulated import SimulatedSLM, direct_render
from onn_core.errors import InputError
from tests.drivers.conftest import DN_PER_LEVEL_S, make_pair
from tests.drivers.test_bench import _NoTimestampCamera

SATURATION_DN = 65535.0


def scene(peak: int = 200) -> np.ndarray:
    """A gray ramp with one bright pixel ``peak`` and everything else at most 100."""
    image = np.tile(np.arange(0, 100, 100 // 6, dtype=np.uint8)[:6], (6, 1))
    image[2, 3] = peak
    return image


@pytest.mark.parametrize("start_s, target", [(1e-4, 0.7), (0.2, 0.7), (1.0, 0.5), (0.001, 0.9)])
def test_auto_exposure_brings_the_peak_to_the_target_fraction(clock, start_s, target):
    slm, camera = make_pair(clock, exposure_s=start_s, exposure_limits_s=(1e-5, 10.0))
    with Bench(slm, camera) as bench:
        exposure = bench.auto_exposure(scene(), target_fraction=target)
        assert camera.exposure_s == exposure  # left set
        peak = bench.measure(scene()).frame.image.max()
    assert peak / SATURATION_DN == pytest.approx(target, rel=0.1)


def test_percentile_and_region_choose_the_statistic(clock):
    slm, camera = make_pair(clock, exposure_limits_s=(1e-5, 10.0))
    with Bench(slm, camera) as bench:
        by_peak = bench.auto_exposure(scene(), target_fraction=0.5, tolerance=0.01)
        outside = bench.auto_exposure(scene(), target_fraction=0.5, region=(0, 0, 2, 6), tolerance=0.01)
        robust = bench.auto_exposure(scene(), target_fraction=0.5, percentile=90, tolerance=0.01)
    # the bright pixel (200) sets the peak; rows 0-1 reach 80; the 90th percentile ignores the one pixel
    assert by_peak * DN_PER_LEVEL_S * 200 == pytest.approx(0.5 * SATURATION_DN, rel=0.01)
    assert outside * DN_PER_LEVEL_S * 80 == pytest.approx(0.5 * SATURATION_DN, rel=0.01)
    assert robust > 2 * by_peak


def test_auto_exposure_works_on_a_bare_camera_and_within_a_limit(clock):
    slm, camera = make_pair(clock, exposure_limits_s=(1e-5, 10.0))
    slm.show(np.full((6, 6), 100, np.uint8))
    exposure = camera.auto_exposure(target_fraction=0.8, limit_dn=10000.0)
    assert exposure * DN_PER_LEVEL_S * 100 == pytest.approx(8000.0, rel=0.1)


def test_auto_exposure_reads_a_bounded_number_of_frames(clock):
    slm, camera = make_pair(clock, exposure_s=1e-5, exposure_limits_s=(1e-5, 10.0))
    slm.show(scene())
    clock.advance(slm.latency_s + slm.settle_s)
    reads = []

    def read():
        reads.append(camera.exposure_s)
        return camera.snap()

    with pytest.raises(ExposureError, match="no exposure in 3 frames") as info:
        camera.auto_exposure(read=read, max_frames=3)
    assert reads == pytest.approx([1e-5, 1e-4, 1e-3]) and info.value.saturated is None  # stepped by decades
    assert camera.exposure_s == 1e-5  # restored after the failure
    assert camera.auto_exposure(read=read, max_frames=5) == pytest.approx(0.7 * SATURATION_DN / 200 / 1000, rel=0.1)
    assert len(reads) == 3 + 5  # decades up to 1e-2 s (3 % of the range), then the linear prediction hits


def test_saturated_at_the_shortest_exposure_is_named(clock):
    render = direct_render(DN_PER_LEVEL_S * 1e6)
    slm, camera = make_pair(clock, render=render, exposure_limits_s=(1e-5, 10.0))
    with Bench(slm, camera) as bench, pytest.raises(ExposureError, match=r"saturates .* shortest exposure 1e-05 s") as info:
        bench.auto_exposure(scene())
    assert info.value.saturated is True and camera.exposure_s == 0.010  # the exposure it had is restored


def test_too_dark_at_the_longest_exposure_is_named(clock):
    slm, camera = make_pair(clock, exposure_limits_s=(1e-5, 0.01))
    with Bench(slm, camera) as bench:
        with pytest.raises(ExposureError, match=r"no light.*longest exposure 0.01 s") as info:
            bench.auto_exposure(np.ones((6, 6), np.uint8))
        assert info.value.saturated is False and camera.exposure_s == 0.010
        with pytest.raises(ExposureError, match="all 0"):
            bench.auto_exposure(np.zeros((6, 6), np.uint8))
    assert 1000 * 0.01 / SATURATION_DN < MIN_SIGNAL_FRACTION  # the scene really is below the floor


@pytest.mark.parametrize("kwargs, name", [({"target_fraction": 1.0}, "target_fraction"), ({"percentile": 0}, "percentile"),
                                          ({"max_frames": 0}, "max_frames"), ({"region": (5, 5, 2, 2)}, "region"),
                                          ({"limit_dn": -1.0}, "limit_dn"), ({"tolerance": 0}, "tolerance")])
def test_bad_arguments_are_refused_before_any_frame(clock, kwargs, name):
    slm, camera = make_pair(clock)
    before = camera.settings()
    with pytest.raises(InputError, match=name):
        camera.auto_exposure(read=lambda: pytest.fail("no frame may be read"), **kwargs)
    assert camera.settings() == before


def test_exposure_held_restores_on_success_and_after_an_exception(clock):
    slm, camera = make_pair(clock, exposure_s=0.010)
    with exposure_held(camera) as original:
        camera.exposure_s = 0.5
    assert original == 0.010 and camera.exposure_s == 0.010
    with pytest.raises(KeyError), exposure_held(camera):
        camera.exposure_s = 0.5
        raise KeyError("boom")
    assert camera.exposure_s == 0.010


def test_exposure_held_lets_the_original_error_through_when_the_restore_fails(clock):
    def unplugged(exposure_s):
        raise ConnectionError("gone")

    slm, camera = make_pair(clock, exposure_s=0.010, camera_faults=FaultConfig(disconnect_after_frames=0))
    with pytest.raises(DeviceDisconnected, match="snap"), exposure_held(camera):
        camera.exposure_s = 0.5
        camera._set_exposure = unplugged  # the cable is pulled: the restore fails too
        camera.snap()
    assert camera.exposure_s == 0.5


@pytest.mark.parametrize("trigger_mode", ["software", "free-run"])
def test_capture_stack_from_a_bench_is_fresh_and_shaped(clock, trigger_mode):
    slm, camera = make_pair(clock, trigger_mode=trigger_mode)
    image = np.arange(36, dtype=np.uint8).reshape(6, 6)
    with Bench(slm, camera) as bench:
        bench.measure(np.zeros((6, 6), np.uint8))
        stack = capture_stack(bench, 5, image)
    assert stack.shape == (5, 6, 6) and stack.dtype == camera.dtype == np.uint16
    for frame in stack:
        assert np.array_equal(np.rint(frame / (DN_PER_LEVEL_S * camera.exposure_s)), image)


def test_capture_stack_from_a_camera_and_bad_arguments(clock):
    slm, camera = make_pair(clock)
    slm.show(np.full((6, 6), 7, np.uint8))
    clock.advance(slm.latency_s + slm.settle_s)
    stack = capture_stack(camera, 3)
    assert stack.shape == (3, 6, 6) and np.array_equal(np.rint(stack / 10.0), np.full((3, 6, 6), 7))
    with pytest.raises(InputError, match="shows nothing"):
        capture_stack(camera, 2, np.zeros((6, 6), np.uint8))
    with Bench(slm, camera) as bench:
        with pytest.raises(InputError, match="needs the image"):
            capture_stack(bench, 2)
        with pytest.raises(InputError, match="positive integer"):
            capture_stack(bench, 0, np.zeros((6, 6), np.uint8))


def test_read_needs_a_measure_first(clock):
    with Bench(*make_pair(clock)) as bench, pytest.raises(InputError, match="measure"):
        bench.read()


def test_stacks_survive_camera_and_slm_faults_through_the_retries(clock):
    """3 % camera faults (timeouts, I/O errors, stale and dropped frames) and 2 % SLM faults: every
    frame of every stack is still of the image shown, and nothing is lost."""
    camera_faults = FaultConfig(seed=3, timeout_rate=0.01, exception_rate=0.01, stale_rate=0.005, drop_rate=0.005)
    slm_faults = FaultConfig(seed=4, timeout_rate=0.01, exception_rate=0.01)
    slm, camera = make_pair(clock, camera_faults=camera_faults, slm_faults=slm_faults)
    rng = np.random.default_rng(5)
    with Bench(slm, camera) as bench:
        for _ in range(200):
            image = rng.integers(0, 256, (6, 6)).astype(np.uint8)
            stack = capture_stack(bench, 4, image)
            for frame in stack:
                assert np.array_equal(np.rint(frame / (DN_PER_LEVEL_S * camera.exposure_s)), image)
    assert sum(camera.faults.counts.values()) > 5 and sum(slm.faults.counts.values()) > 0


def test_free_run_camera_without_timestamps_reads_fresh_stacks(clock):
    slm = SimulatedSLM(shape=(6, 6), bit_depth=8, pixel_pitch_m=8e-6, latency_s=0.0, settle_s=0.003, clock=clock)
    camera = _NoTimestampCamera(slm, direct_render(DN_PER_LEVEL_S), trigger_mode="free-run", exposure_s=0.004,
                                clock=clock)
    with Bench(slm, camera) as bench:
        for level in (10, 20, 30):
            stack = capture_stack(bench, 4, np.full((6, 6), level, np.uint8))
            assert [int(np.rint(f.mean() / 4.0)) for f in stack] == [level] * 4


def test_bench_blank_retries_transient_slm_failures(clock):
    slm, camera = make_pair(clock, slm_faults=FaultConfig(seed=4, exception_rate=0.5))
    with Bench(slm, camera, retries=20) as bench:
        for level in range(1, 20):
            bench.measure(np.full((6, 6), level, np.uint8))
            bench.blank()
            assert not slm.last_frame.any()
    assert slm.faults.counts["exception"] > 0
