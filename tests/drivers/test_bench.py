"""The Bench: fresh frames only, bounded retries, cleanup on every exit (Ctrl-C included), and a
2,000-call fault soak on the virtual clock."""

import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest

from drivers.bench import Bench, Terminated, _interrupts_deferred
from drivers.clock import VirtualClock
from drivers.errors import DeviceClosed, DeviceDisconnected, DeviceFault, DeviceTimeout, StaleFrame
from drivers.faults import FaultConfig
from drivers.simulated import SimulatedCamera, SimulatedSLM, direct_render
from onn_core.errors import InputError
from tests.drivers.conftest import DN_PER_LEVEL_S, gray_seen, make_pair

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("trigger_mode", ["software", "free-run"])
def test_measure_returns_the_frame_of_the_settled_image(clock, trigger_mode):
    slm, cam = make_pair(clock, trigger_mode=trigger_mode)
    rng = np.random.default_rng(0)
    with Bench(slm, cam) as bench:
        last_index = -1
        for _ in range(20):
            image = rng.integers(0, 256, (6, 6)).astype(np.uint8)
            clock.advance(rng.uniform(0, 0.05))  # irregular gaps between measurements
            m = bench.measure(image)
            assert np.array_equal(m.shown, image)
            assert np.array_equal(gray_seen(m.frame, cam.exposure_s), image)
            assert m.frame.meta["slm_frame_id"] == m.slm_frame_id == slm.frame_id
            assert m.frame.timestamp_s >= m.settled_at_s == m.shown_at_s + slm.latency_s + slm.settle_s
            assert m.frame.index > last_index
            last_index = m.frame.index
            assert m.attempts == 1
    assert slm.closed and cam.closed and not slm.last_frame.any()


def test_free_run_measure_discards_frames_exposed_before_settling(clock):
    slm, cam = make_pair(clock, trigger_mode="free-run", exposure_s=0.004, latency_s=0.0, settle_s=0.003)
    with Bench(slm, cam) as bench:
        stale = sum(bench.measure(np.full((6, 6), v, np.uint8)).stale_frames for v in range(1, 40))
    assert stale > 0, "in free-run, the frame in progress at the flush predates the settle and must be discarded"


class _NoTimestampCamera(SimulatedCamera):
    """The simulated camera without its exposure timestamps, like a webcam: only frame indices."""

    def _snap(self, timeout_s):
        return dataclasses.replace(super()._snap(timeout_s), timestamp_s=None)


def test_free_run_without_timestamps_discards_the_frames_begun_before_the_flush(clock):
    """Without timestamps the frame read out and the frame exposed during the flush may predate the
    settling: the bench counts frames past them instead of guessing their start."""
    slm = SimulatedSLM(shape=(6, 6), bit_depth=8, pixel_pitch_m=8e-6, latency_s=0.0, settle_s=0.003, clock=clock)
    cam = _NoTimestampCamera(slm, direct_render(DN_PER_LEVEL_S), trigger_mode="free-run", exposure_s=0.004,
                             clock=clock)
    rng = np.random.default_rng(1)
    with Bench(slm, cam) as bench:
        for level in range(1, 60):
            clock.advance(rng.uniform(0, 0.01))
            image = np.full((6, 6), level, np.uint8)
            m = bench.measure(image)
            assert m.frame.timing == "estimated"
            assert m.frame.meta["slm_frame_id"] == m.slm_frame_id, f"level {level}: the frame saw a mix of images"
            assert np.array_equal(gray_seen(m.frame, cam.exposure_s), image)


def test_measure_timing_is_the_device_limit_in_software_mode(clock):
    slm, cam = make_pair(clock)
    with Bench(slm, cam) as bench:
        t0 = clock.now()
        bench.measure(np.zeros((6, 6), np.uint8))
        assert clock.now() - t0 == pytest.approx(slm.latency_s + slm.settle_s + cam.exposure_s + cam.readout_s)


def test_retries_are_bounded_and_the_last_error_is_raised(clock):
    slm, cam = make_pair(clock, camera_faults=FaultConfig(timeout_rate=1.0))
    bench = Bench(slm, cam, retries=2, timeout_s=0.1)
    t0 = clock.now()
    with pytest.raises(DeviceTimeout) as info:
        bench.measure(np.ones((6, 6), np.uint8))
    assert info.value.__notes__ == ["Bench.measure gave up after 3 attempts"]
    # shown once, settled once, then 3 attempts each waiting timeout + exposure
    assert clock.now() - t0 == pytest.approx(slm.latency_s + slm.settle_s + 3 * (0.1 + cam.exposure_s))
    assert slm.frame_id == 0
    bench.close()

    slm, cam = make_pair(clock, camera_faults=FaultConfig(stale_rate=1.0))
    with Bench(slm, cam, retries=1, max_stale_reads=3) as bench:
        bench.slm.show(np.zeros((6, 6), np.uint8))
        cam.snap()  # something to repeat
        with pytest.raises(StaleFrame):
            bench.measure(np.ones((6, 6), np.uint8))


def test_transient_slm_failure_is_retried_by_showing_again(clock):
    slm, cam = make_pair(clock, slm_faults=FaultConfig(seed=4, exception_rate=0.5))
    with Bench(slm, cam, retries=10) as bench:
        attempts = [bench.measure(np.full((6, 6), v, np.uint8)).attempts for v in range(1, 30)]
        assert max(attempts) > 1
        assert slm.faults.counts["exception"] == sum(a - 1 for a in attempts)


def test_disconnect_is_raised_at_once_and_close_still_closes(clock):
    slm, cam = make_pair(clock, camera_faults=FaultConfig(disconnect_after_frames=1))
    bench = Bench(slm, cam, retries=5)
    bench.measure(np.ones((6, 6), np.uint8))
    with pytest.raises(DeviceDisconnected) as info:
        bench.measure(np.ones((6, 6), np.uint8))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert cam.faults.counts["disconnect"] == 1, "no retry after a disconnect"
    bench.close()
    bench.close()
    assert slm.closed and cam.closed and not slm.last_frame.any()
    with pytest.raises(DeviceClosed):
        bench.measure(np.ones((6, 6), np.uint8))


def test_close_closes_devices_even_when_blanking_fails(clock):
    slm, cam = make_pair(clock, slm_faults=FaultConfig(disconnect_after_frames=0))
    Bench(slm, cam).close()
    assert slm.closed and cam.closed


def test_bad_input_and_bad_pairs(clock):
    slm, cam = make_pair(clock)
    with Bench(slm, cam) as bench:
        with pytest.raises(InputError):
            bench.measure(np.zeros((5, 6), np.uint8))
        with pytest.raises(InputError):
            bench.measure(np.zeros((6, 6)), phase=True)
        assert slm.frame_id == -1, "nothing is shown for a rejected image"
    other = SimulatedSLM(shape=(6, 6), bit_depth=8, pixel_pitch_m=8e-6, clock=VirtualClock())
    with pytest.raises(InputError, match="clock"):
        Bench(other, make_pair(clock)[1])
    with pytest.raises(InputError):
        Bench(slm, cam, retries=-1)


def test_phase_measure(clock):
    slm = SimulatedSLM(shape=(6, 6), bit_depth=8, pixel_pitch_m=8e-6, modulation="phase", clock=clock)
    from drivers.simulated import SimulatedCamera, direct_render
    cam = SimulatedCamera(slm, direct_render(1000.0), clock=clock)
    with Bench(slm, cam) as bench:
        phase = np.full((6, 6), np.pi)
        m = bench.measure(phase, phase=True)
        assert np.all(m.shown == 128) and np.all(gray_seen(m.frame, cam.exposure_s) == 128)


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_an_interrupt_during_cleanup_is_held_back_until_it_is_done(signum, raised):
    before = signal.getsignal(signum)
    done = []
    with pytest.raises(raised):
        with _interrupts_deferred():
            signal.raise_signal(signum)
            done.append("cleanup finished")
    assert done == ["cleanup finished"]
    assert signal.getsignal(signum) == before


class _HangingBlankSLM(SimulatedSLM):
    """Its blank (at close) is a vendor call that hangs until the user presses Ctrl-C twice."""

    def _show(self, frame):
        if self.frame_id >= 0 and not frame.any():
            self.events = ["hung"]
            signal.raise_signal(signal.SIGINT)  # held back: the cleanup goes on
            self.events.append("first Ctrl-C held")
            signal.raise_signal(signal.SIGINT)  # a second one gets through
            self.events.append("second Ctrl-C held")
        super()._show(frame)


def test_a_second_ctrl_c_interrupts_a_hung_cleanup(clock):
    slm = _HangingBlankSLM(shape=(6, 6), bit_depth=8, pixel_pitch_m=8e-6, clock=clock)
    cam = SimulatedCamera(slm, direct_render(DN_PER_LEVEL_S), clock=clock)
    bench = Bench(slm, cam)
    bench.measure(np.ones((6, 6), np.uint8))
    with pytest.raises(KeyboardInterrupt):
        bench.close()
    assert slm.events == ["hung", "first Ctrl-C held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    cam.close()


def test_an_abandoned_bench_is_collected_and_closed(clock):
    """Nothing (such as an atexit registration) keeps a bench alive; collected, it still cleans up."""
    slm, cam = make_pair(clock)
    bench = Bench(slm, cam)
    bench.measure(np.ones((6, 6), np.uint8))
    ref = weakref.ref(bench)
    del bench
    gc.collect()
    assert ref() is None, "the bench is kept alive"
    assert slm.closed and cam.closed and not slm.last_frame.any()


def test_sigterm_is_routed_to_the_bench_only_while_one_is_open(clock):
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with Bench(*make_pair(clock)):
        with Bench(*make_pair(clock)):
            with pytest.raises(Terminated):
                signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _tagged_image(tag: int, rng) -> np.ndarray:
    image = rng.integers(0, 256, (6, 6)).astype(np.uint8)
    image[0, 0], image[0, 1] = tag % 256, tag // 256
    return image


@pytest.mark.parametrize("rate", [0.01, 0.05], ids=["5pct-in-all", "5pct-of-each"])
@pytest.mark.parametrize("trigger_mode", ["software", "free-run"])
def test_fault_soak_2000_measurements(trigger_mode, rate):
    """2,000 measurements with camera faults (``rate`` each of timeout, exception, hang, stale, drop),
    SLM faults (``rate`` each of timeout, exception) and a camera disconnect every 700 frames (the
    bench is then reopened): every call returns exactly its own frame or raises a documented error
    after its retries; no frame is duplicated; every device ends closed and every SLM blank."""
    clock = VirtualClock()
    rng = np.random.default_rng(123)
    opened, benches = [], []
    documented = (DeviceTimeout, DeviceFault, StaleFrame, DeviceDisconnected)

    def new_bench(k):
        cam_faults = FaultConfig(seed=10 + k, timeout_rate=rate, exception_rate=rate, hang_rate=rate, hang_s=0.2,
                                 stale_rate=rate, drop_rate=rate, disconnect_after_frames=700)
        slm_faults = FaultConfig(seed=20 + k, timeout_rate=rate, exception_rate=rate)
        slm, cam = make_pair(clock, slm_faults=slm_faults, camera_faults=cam_faults, trigger_mode=trigger_mode)
        slm.default_timeout_s = 0.05
        opened.extend([slm, cam])
        bench = Bench(slm, cam, retries=3, timeout_s=0.05)
        benches.append(bench)
        return bench

    bench = new_bench(0)
    outcomes = {"ok": 0, **{cls.__name__: 0 for cls in documented}}
    seen = set()
    retried = 0
    for tag in range(2000):
        image = _tagged_image(tag, rng)
        try:
            m = bench.measure(image)
        except documented as exc:
            outcomes[type(exc).__name__] += 1
            if not isinstance(exc, DeviceDisconnected):
                assert exc.__notes__ == ["Bench.measure gave up after 4 attempts"]
            if isinstance(exc, DeviceDisconnected):
                bench.close()
                bench = new_bench(len(benches))
            continue
        outcomes["ok"] += 1
        retried += m.attempts > 1
        seen_gray = gray_seen(m.frame, bench.camera.exposure_s)
        assert np.array_equal(seen_gray, image), f"call {tag}: the frame shows another image"
        assert seen_gray[0, 0] + 256 * seen_gray[0, 1] == tag
        assert m.frame.meta["slm_frame_id"] == m.slm_frame_id, f"call {tag}: frame exposed another SLM frame"
        assert m.frame.timestamp_s >= m.settled_at_s
        key = (len(benches), m.frame.index)
        assert key not in seen, f"call {tag}: frame {m.frame.index} returned twice"
        seen.add(key)
    bench.close()

    assert sum(outcomes.values()) == 2000
    assert outcomes["ok"] > 1600 and outcomes["DeviceDisconnected"] >= 2, outcomes
    assert retried > 50, f"faults must have been recovered by retries ({retried}, {outcomes})"
    counts = {}
    for dev in opened:
        for k, v in dev.faults.counts.items():
            counts[k] = counts.get(k, 0) + v
    assert all(counts[k] > 0 for k in ("timeout", "exception", "hang", "stale", "drop", "disconnect")), counts
    assert all(dev.closed for dev in opened), "a device was left open"
    assert all(not b.slm.last_frame.any() for b in benches), "an SLM was left showing an image"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_a_capture_loop_blanks_and_closes(tmp_path, signum):
    """A real process on the real clock, interrupted with Ctrl-C or SIGTERM (what ``timeout`` and
    systemd send) in the middle of its loop: both arrive as KeyboardInterrupt."""
    state = tmp_path / "state.json"
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from drivers import open_bench
        config = {{
            "clock": "real",
            "slm": {{"backend": "simulated-slm", "shape": [8, 8], "latency_s": 0.001, "settle_s": 0.001}},
            "camera": {{"backend": "simulated-camera", "render": "direct", "exposure_s": 0.002, "readout_s": 0.0005}},
        }}
        bench = open_bench(config)
        n = 0
        try:
            with bench:
                while True:
                    bench.measure(np.full((8, 8), 1 + n % 250, np.uint8))
                    n += 1
                    if n == 5:
                        print("ready", flush=True)
        except KeyboardInterrupt as exc:
            with open({str(state)!r}, "w") as fh:
                json.dump({{"measured": n, "slm_closed": bench.slm.closed, "camera_closed": bench.camera.closed,
                           "bench_closed": bench.closed, "slm_max_level": int(bench.slm.last_frame.max()),
                           "slm_frame_id": bench.slm.frame_id}}, fh)
            sys.exit(128 + getattr(exc, "signum", 2))
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(state.read_text())
    assert result["measured"] >= 5
    assert result["slm_closed"] and result["camera_closed"] and result["bench_closed"]
    assert result["slm_max_level"] == 0, "the SLM must end blank"
    assert result["slm_frame_id"] == result["measured"] or result["slm_frame_id"] == result["measured"] + 1
