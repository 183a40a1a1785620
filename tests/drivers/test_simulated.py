"""Simulated SLM and camera: conformance, the timing model (settle mix, stale free-run frames,
flush), and seeded fault injection."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from drivers.clock import VirtualClock
from drivers.config import open_bench
from drivers.errors import DeviceDisconnected, DeviceFault, DeviceTimeout, UnsupportedFeature
from drivers.faults import FaultConfig, FaultInjector
from onn_core.lut import LUT
from drivers.simulated import SimulatedCamera, SimulatedSLM, direct_render
from onn_core.errors import ConfigError
from tests.drivers.conformance import check_camera, check_slm
from tests.drivers.conftest import DN_PER_LEVEL_S, gray_seen, make_pair


@pytest.mark.parametrize("trigger_mode", ["software", "free-run"])
def test_simulated_camera_conforms(trigger_mode):
    check_camera(lambda: make_pair(VirtualClock(), trigger_mode=trigger_mode)[1])


@pytest.mark.parametrize("modulation", ["amplitude", "phase"])
def test_simulated_slm_conforms(modulation):
    check_slm(lambda: SimulatedSLM(shape=(5, 7), bit_depth=8, pixel_pitch_m=8e-6, modulation=modulation,
                                   latency_s=0.01, settle_s=0.02, clock=VirtualClock()))


def test_colour_slm_conforms_and_direct_render_sums_channels():
    clock = VirtualClock()
    check_slm(lambda: SimulatedSLM(shape=(4, 4, 3), bit_depth=10, pixel_pitch_m=8e-6, clock=clock))
    slm = SimulatedSLM(shape=(4, 4, 3), bit_depth=10, pixel_pitch_m=8e-6, clock=clock)
    cam = SimulatedCamera(slm, direct_render(DN_PER_LEVEL_S), exposure_s=0.001)
    slm.show(np.stack([np.full((4, 4), v, np.uint16) for v in (1, 2, 1000)], axis=-1))
    clock.advance(1.0)
    assert np.all(cam.snap().image == 1003)


def test_software_trigger_sees_settled_image_exactly(pair, clock):
    slm, cam = pair
    image = np.arange(36, dtype=np.uint8).reshape(6, 6)
    slm.show(image)
    clock.sleep_until(slm.settled_at_s)
    frame = cam.snap()
    assert frame.meta == {"slm_frame_id": slm.frame_id}
    assert frame.timestamp_s == slm.settled_at_s
    assert np.array_equal(gray_seen(frame, cam.exposure_s), image)
    # the frame is delivered after exposure + readout
    assert clock.now() == pytest.approx(slm.settled_at_s + cam.exposure_s + cam.readout_s)


def test_exposure_during_settle_gives_the_analytic_mixture(clock):
    # latency 0, settle 10 ms, exposure 10 ms starting at the show: the new image's weight ramps
    # 0 -> 1 over the whole exposure, so the exposure sees half of each
    slm, cam = make_pair(clock, latency_s=0.0, settle_s=0.010)
    slm.show(np.full((6, 6), 100, np.uint8))
    clock.advance(1.0)
    slm.show(np.full((6, 6), 200, np.uint8))
    frame = cam.snap()
    assert frame.meta["slm_frame_id"] is None
    assert frame.meta["slm_mix"] == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    assert np.all(gray_seen(frame, cam.exposure_s) == 150)
    # latency 10 ms, settle 0: the first 10 ms exposure sees only the old image (stale, but pure)
    slm2, cam2 = make_pair(VirtualClock(), latency_s=0.010, settle_s=0.0)
    slm2.show(np.full((6, 6), 7, np.uint8))
    cam2.clock.advance(1.0)
    slm2.show(np.full((6, 6), 9, np.uint8))
    stale = cam2.snap()
    assert stale.meta["slm_frame_id"] == 0 and np.all(gray_seen(stale, cam2.exposure_s) == 7)


def test_free_run_buffers_stale_frames_until_flushed(clock):
    slm, cam = make_pair(clock, trigger_mode="free-run", buffer_frames=3, readout_s=0.002)
    period = cam.period_s
    assert period == cam.exposure_s
    slm.show(np.full((6, 6), 1, np.uint8))
    clock.advance(0.5)  # ~50 frames exposed, only the first 3 kept
    slm.show(np.full((6, 6), 2, np.uint8))
    slm.wait_settled()
    stale = cam.snap()
    assert stale.index == 0 and stale.timestamp_s == pytest.approx(0.0)
    # exposed over [0, 10 ms], before the first show became visible (latency 10 ms): the initial blank
    assert stale.meta["slm_frame_id"] == -1 and not stale.image.any()
    assert cam.frames_lost > 40
    dropped = cam.flush()
    assert dropped == 2  # the two left from before (no time passed since the snap)
    fresh = [cam.snap() for _ in range(3)]
    assert [f.index for f in fresh] == list(range(fresh[0].index, fresh[0].index + 3))
    # after the flush, the first frame is the one in progress: at most one may predate settling
    settled = [f for f in fresh if f.timestamp_s >= slm.settled_at_s]
    assert len(settled) >= 2
    for f in settled:
        assert f.meta["slm_frame_id"] == 1 and np.all(gray_seen(f, cam.exposure_s) == 2)


def test_exposure_read_back_is_quantised_and_restarts_free_run(clock):
    slm, cam = make_pair(clock, exposure_step_s=1e-4, trigger_mode="free-run")
    cam.exposure_s = 0.01234
    assert cam.exposure_s == pytest.approx(0.0123)
    clock.advance(0.2)
    cam.exposure_s = 0.02
    assert cam.flush() == 0, "changing the exposure restarts the free-run sequence"


def test_gain_black_level_roi_in_simulation(pair, clock):
    slm, cam = pair
    slm.show(np.full((6, 6), 10, np.uint8))
    clock.advance(1.0)
    cam.gain = 2.0
    cam.black_level = 5
    cam.roi = (1, 2, 3, 4)
    frame = cam.snap()
    assert frame.image.shape == (3, 4) and frame.gain == 2.0
    assert np.all(frame.image == 10 * DN_PER_LEVEL_S * cam.exposure_s * 2 + 5)
    assert frame.settings["roi"] == [1, 2, 3, 4]


def test_gain_scales_the_signal_above_the_native_black_level(clock):
    slm = SimulatedSLM(shape=(2, 2), bit_depth=8, pixel_pitch_m=8e-6, clock=clock)
    render = lambda gray, e: (gray.astype(np.uint16) + 100)  # a sensor whose dark pixels read 100 DN
    cam = SimulatedCamera(slm, render, native_black_level_dn=100)
    assert cam.black_level == 100
    slm.show(np.array([[0, 10], [20, 30]], np.uint8))
    clock.advance(1.0)
    cam.gain = 3.0
    assert cam.snap().image.tolist() == [[100, 130], [160, 190]]
    cam.black_level = 40
    assert cam.snap().image.tolist() == [[40, 70], [100, 130]]


def test_hdr_recovers_a_scene_beyond_one_exposure():
    # 12-bit sensor (saturates at 4095), DN = level * 4e4/s * exposure; black level 0
    clock = VirtualClock()
    slm = SimulatedSLM(shape=(2, 3), bit_depth=8, pixel_pitch_m=8e-6, clock=clock)
    render = lambda gray, e: np.minimum(np.rint(gray * 4e4 * e), 4095).astype(np.uint16)
    cam = SimulatedCamera(slm, render, exposure_s=0.01, bit_depth=12, saturation_dn=4095)
    scene = np.array([[1, 5, 10], [50, 100, 255]], np.uint8)
    slm.show(scene)
    clock.advance(1.0)
    hdr = cam.hdr([0.0004, 0.002, 0.01])
    assert cam.exposure_s == 0.01
    # at 10 ms, levels > 10 saturate (DN 4000 for level 10), but the bracket recovers them
    assert np.allclose(hdr.image, scene * 4e4 * 0.01, rtol=0.01)
    assert hdr.exposure_s == 0.01 and hdr.meta["saturated_pixels"] == 0
    avg = cam.average(4)
    assert avg.image.dtype == np.float64 and avg.meta["indices"] == [3, 4, 5, 6]


def test_unsupported_feature_from_a_minimal_backend():
    from drivers.camera import Camera
    from drivers.frames import RawFrame

    class Minimal(Camera):
        def __init__(self):
            super().__init__(sensor_shape=(2, 2), bit_depth=8, pixel_pitch_m=1e-6, exposure_s=0.01,
                             exposure_limits_s=(0.001, 1.0), clock=VirtualClock())

        def _snap(self, timeout_s):
            return RawFrame(np.zeros((2, 2), np.uint8))

        def _set_exposure(self, exposure_s):
            raise RuntimeError("vendor: exposure register locked")

    cam = Minimal()
    with pytest.raises(UnsupportedFeature):
        cam.gain = 1.0
    cam.roi = (0, 0, 1, 1)  # every backend has a region of interest: a software crop by default
    assert cam.roi_mode == "software" and cam.snap().image.shape == (1, 1)
    cam.roi = None
    with pytest.raises(UnsupportedFeature):
        cam.trigger_mode = "free-run"
    with pytest.raises(DeviceFault) as info:
        cam.exposure_s = 0.1
    assert isinstance(info.value.__cause__, RuntimeError) and cam.exposure_s == 0.01
    frame = cam.snap()
    assert frame.index == 1 and cam.snap().index == 2  # the base class counts frames


def test_fault_injector_is_seeded_and_rates_match():
    cfg = FaultConfig(seed=3, timeout_rate=0.1, exception_rate=0.2, stale_rate=0.05)
    a, b = FaultInjector(cfg), FaultInjector(cfg)
    seq_a = [a.draw(float(i)) for i in range(20000)]
    assert seq_a == [b.draw(float(i)) for i in range(20000)]
    n = len(seq_a)
    assert a.counts["timeout"] / n == pytest.approx(0.1, abs=0.01)
    assert a.counts["exception"] / n == pytest.approx(0.2, abs=0.012)
    assert a.counts["stale"] / n == pytest.approx(0.05, abs=0.008)
    assert a.counts["hang"] == a.counts["drop"] == 0
    with pytest.raises(ValueError, match="sum"):
        FaultConfig(timeout_rate=0.6, exception_rate=0.6)


def test_camera_faults_surface_as_documented_errors(clock):
    slm, cam = make_pair(clock, camera_faults=FaultConfig(seed=1, exception_rate=1.0))
    with pytest.raises(DeviceFault) as info:
        cam.snap()
    assert isinstance(info.value.__cause__, OSError)

    slm, cam = make_pair(clock, camera_faults=FaultConfig(timeout_rate=1.0))
    t = clock.now()
    with pytest.raises(DeviceTimeout):
        cam.snap(timeout_s=0.5)
    assert clock.now() - t == pytest.approx(0.5 + cam.exposure_s), "a timeout waits out timeout + exposure"

    slm, cam = make_pair(clock, camera_faults=FaultConfig(hang_rate=0.5, hang_s=3.0, seed=2))
    outcomes = []
    for _ in range(20):
        try:
            cam.snap(timeout_s=0.1)
            outcomes.append(clock.now())
        except DeviceTimeout:
            outcomes.append(None)
    first_hang = outcomes.index(None)
    # a hang lasts 3 s: with 0.11 s per timed-out call, the next ~27 calls all time out
    assert all(o is None for o in outcomes[first_hang:])

    slm, cam = make_pair(clock, camera_faults=FaultConfig(disconnect_after_frames=2))
    cam.snap(), cam.snap()
    for call in (cam.snap, cam.flush):
        with pytest.raises(DeviceDisconnected) as info:
            call()
        assert isinstance(info.value.__cause__, ConnectionError)


def test_stale_and_drop_faults(clock):
    slm, cam = make_pair(clock, camera_faults=FaultConfig(stale_rate=1.0))
    first = cam.snap()
    again = cam.snap()  # the previous frame, delivered again
    assert again.index == first.index and again.timestamp_s == first.timestamp_s

    slm, cam = make_pair(clock, camera_faults=FaultConfig(seed=0, drop_rate=1.0))
    a, b = cam.snap(), cam.snap()
    assert b.index - a.index == 2, "a dropped frame leaves a gap in the index"


def test_slm_faults(clock):
    slm, _ = make_pair(clock, slm_faults=FaultConfig(exception_rate=1.0))
    with pytest.raises(DeviceFault):
        slm.show(np.zeros((6, 6), np.uint8))
    assert slm.frame_id == -1, "a failed show is not counted"
    with pytest.raises(ValueError, match="cameras only"):
        SimulatedSLM(shape=(2, 2), bit_depth=8, pixel_pitch_m=1e-6, faults=FaultConfig(stale_rate=0.1))


def test_simulated_lut_replaced_by_measured(pair):
    slm, _ = pair
    measured = LUT.from_measurement([0, 128, 255], [0.0, 0.7, 1.0], bit_depth=8)
    slm.lut = measured
    shown = slm.show_intensity(np.full((6, 6), 0.7))
    assert np.all(shown == 128)
    from onn_core.errors import InputError
    with pytest.raises(InputError):
        slm.lut = LUT.linear(8, "phase")


# ------------------------------------------------------------------------------ through the optics
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_bench_config(**camera):
    config = yaml.safe_load((EXAMPLES / "bench_sim.yaml").read_text())
    config["camera"] = {**config["camera"], "optics": str(EXAMPLES / "optics.yaml"), **camera}
    return config


@pytest.mark.parametrize("field, value, optics_field", [
    ("bit_depth", 10, "display.bit_depth"),
    ("pixel_pitch_m", 8e-6, "geometry.display_pixel_pitch_m"),
    ("shape", [20, 20], "image_shape"),
])
def test_an_slm_that_contradicts_the_optics_is_refused_naming_both_fields(field, value, optics_field):
    config = example_bench_config()
    config["slm"][field] = value
    with pytest.raises(ConfigError, match=f"camera.optics.{optics_field}".replace(".", r"\.")) as info:
        open_bench(config, clock=VirtualClock())
    assert info.value.path == f"slm.{field}"


def test_camera_pitch_comes_from_the_optics_and_a_contradiction_is_refused():
    with open_bench(example_bench_config(), clock=VirtualClock()) as bench:
        assert bench.camera.pixel_pitch_m == bench.camera.optics.geometry.sensor_pixel_pitch_m == 3.45e-6
    with pytest.raises(ConfigError, match="sensor_pixel_pitch_m") as info:
        open_bench(example_bench_config(pixel_pitch_m=5e-6), clock=VirtualClock())
    assert info.value.path == "camera.pixel_pitch_m"
    with pytest.raises(ConfigError, match=r"camera\.optics") as info:
        open_bench(example_bench_config(frontend="frontend.yaml"), clock=VirtualClock())
    assert info.value.path == "camera.frontend"


def test_a_container_wider_than_the_simulated_frames_is_refused():
    optics = yaml.safe_load((EXAMPLES / "optics.yaml").read_text())
    optics["sensor"]["container_bits"] = 32
    with pytest.raises(ConfigError, match="at most 16 bits") as info:
        open_bench(example_bench_config(optics=optics), clock=VirtualClock())
    assert info.value.path == "camera.optics.sensor.container_bits"


def test_exposure_is_an_argument_the_optics_description_does_not_change():
    with open_bench(example_bench_config(), clock=VirtualClock()) as bench:
        before = bench.camera.optics.to_config()
        image = np.full((28, 28), 90, np.uint8)
        short = bench.measure(image).frame.image.astype(float)
        bench.camera.exposure_s = 0.02
        long = bench.measure(image).frame.image.astype(float)
        assert bench.camera.optics.to_config() == before
    black = bench.camera.black_level
    assert (long - black).mean() == pytest.approx(2 * (short - black).mean(), rel=0.02)


def test_hdr_merges_pixels_clipped_at_the_full_well_correctly():
    """The example sensor's full well (~4040 DN) sits below its ADC maximum (4095): pixels clipped
    there must count as saturated, so the merged bright tiles match the expected unclipped counts."""
    with open_bench(example_bench_config(), clock=VirtualClock()) as bench:
        system, camera = bench.camera.optics, bench.camera
        assert camera.saturation_dn == system.sensor.saturation_dn < 4095 * 16
        image = np.full((28, 28), 255, np.uint8)
        bench.slm.show(image)
        bench.clock.sleep(1.0)
        camera.exposure_s = 0.04
        exposures = [0.005, 0.01, 0.02, 0.04]
        merged = camera.hdr(exposures)
        clipped_at_longest = camera.snap().image >= camera.saturation_dn
    ideal = dataclasses.replace(system.sensor, full_well_e=None, bit_depth=None, container_bits=None, noise=False)
    expected = (ideal.forward(system.photon_rate_frame(torch.from_numpy(image.astype(np.int64))[None, None]) * 0.04,
                              exposure_s=0.04)[0].numpy() - ideal.offset_dn) * 16
    assert clipped_at_longest.sum() > 1000
    ratio = merged.image[clipped_at_longest] / expected[clipped_at_longest]
    assert abs(float(np.median(ratio)) - 1) < 0.02 and float(np.percentile(ratio, 5)) > 0.9
