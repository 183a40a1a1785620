"""Capture throughput of the Bench on simulated devices with realistic timing, on the REAL clock.

Each ``Bench.measure`` shows an image, waits for the SLM to settle and captures a software-triggered
frame, so the device-limited time per measurement is ``latency + settle + exposure + readout``. We report

- ``efficiency``: achieved measurements per second / device-limited rate (goal >= 0.95);
- ``overhead_us_per_frame``: (elapsed - N x device time) / N on the real clock: the toolkit's code plus
  the operating system's wake-up delays (two sleeps per measurement: settle, then exposure + readout);
- ``overhead_us_per_frame_median`` and ``efficiency_median``: the same from the median duration of one
  measurement, which leaves out the rare long wake-ups of a loaded machine;
- ``toolkit_cpu_us_per_frame``: wall time per measurement of the same loop on a virtual clock (no
  sleeping at all): the toolkit's own code path alone;
- ``sleep_reference_efficiency``: a bare loop of the same two ``time.sleep`` calls, measured in the
  same run: the best a sleeping Python loop reaches on this machine (the reference to compare with).

Frames are 64 x 64 through the ideal ``direct`` render, so the optics simulation does not count as
overhead. The optics are measured apart, on the shipped example bench (``examples/bench_sim.yaml``:
16 PSFs through ``examples/optics.yaml``, 164 x 164 frames) on a virtual clock:

- ``render_over_device_time``: median wall time of one ``Bench.measure`` there (rendering through the
  optical system + the toolkit's code; the virtual clock does not sleep) / that bench's device time
  (latency + settle + exposure + readout); goal <= 0.1, i.e. simulation never the bottleneck;
- ``render_ms_per_frame`` and ``render_uncached_ms_per_frame``: ``OpticalSystem.render`` alone, with
  the fabricated PSFs cached (as the camera runs) and recomputed for every frame (as before caching);
- ``second_bench``: the same figures for a second bench shape (:data:`SECOND_BENCH`: 5 signed 9 x 9
  kernels, 2 sensor pixels per display pixel, 212 x 284 frames).

Capture files (:func:`hil.capture.capture` into HDF5, frames chunked per frame, fletcher32), for each
frame compression (none, shuffle + gzip level 1, the default, and shuffle + lzf):

- ``efficiency_capture_uncompressed`` / ``efficiency_capture_compressed`` (gzip) and
  ``capture_file.efficiency`` (``efficiency_runs``: each run, for the noise): as ``efficiency``, for
  whole captures into a file on the real clock (same bench, same run, interleaved);
- ``uncompressed_bytes_per_frame`` / ``compressed_bytes_per_frame`` (gzip) and
  ``capture_file.bytes_per_frame``: stored frame bytes per frame of the example bench (noisy 164 x
  164 frames through the optics), and ``capture_file.example_capture_ms_per_frame``: wall time per
  captured frame there (virtual clock, rendering included).

Prints a table and, last, one line of JSON; writes benchmarks/results/capture.json.

Each loop is run ``--repeats`` times, interleaved (so load changes hit them alike), and the median kept.
On a shared machine the OS wake-up delays dominate the overhead: compare with the bare sleep loop.

Usage: python benchmarks/capture.py [--n 300] [--repeats 3] [--exposure-s 0.01] [--settle-s 0.005]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers import Bench, RealClock, VirtualClock, open_bench  # noqa: E402
from drivers.simulated import SimulatedCamera, SimulatedSLM, direct_render  # noqa: E402
from onn_core.config import load_yaml  # noqa: E402
from benchmarks.report import finish  # noqa: E402

SHAPE = (64, 64)
#: Changes to examples/optics.yaml of the second bench shape of the render figures.
SECOND_BENCH = {"design": {"num_kernels": 5, "kernel_size": 9}, "geometry": {"magnification": 2.0}}


def make_bench(clock, args) -> Bench:
    slm = SimulatedSLM(shape=SHAPE, bit_depth=8, pixel_pitch_m=8e-6, latency_s=args.latency_s, settle_s=args.settle_s, clock=clock)
    camera = SimulatedCamera(slm, direct_render(1000.0), exposure_s=args.exposure_s, readout_s=args.readout_s, clock=clock)
    return Bench(slm, camera)


def run_loop(clock, args, images) -> tuple[float, np.ndarray]:
    """Wall seconds for len(images) measurements, and the duration (s) of each."""
    durations = np.empty(len(images))
    with make_bench(clock, args) as bench:
        bench.measure(images[0])  # warm-up
        start = time.perf_counter()
        for i, image in enumerate(images):
            t = time.perf_counter()
            m = bench.measure(image)
            durations[i] = time.perf_counter() - t
            assert m.frame.meta["slm_frame_id"] == m.slm_frame_id
        return time.perf_counter() - start, durations


def measure_example_bench(n: int, changes: dict | None = None) -> dict:
    """Render cost of the shipped example bench against its device time (module docstring), its optics
    with ``changes`` (per section of examples/optics.yaml, e.g. :data:`SECOND_BENCH`)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (28, 28)).astype(np.uint8) for _ in range(n)]
    config = load_yaml(ROOT / "examples" / "bench_sim.yaml")
    optics = load_yaml(ROOT / "examples" / "optics.yaml")
    for section, values in (changes or {}).items():
        optics[section] = {**optics[section], **values}
    config["camera"]["optics"] = optics
    with open_bench(config, clock=VirtualClock()) as bench:
        slm, camera, system = bench.slm, bench.camera, bench.camera.optics
        device_s = slm.latency_s + slm.settle_s + camera.exposure_s + camera.readout_s
        bench.measure(images[0])
        durations = []
        for image in images:
            start = time.perf_counter()
            bench.measure(image)
            durations.append(time.perf_counter() - start)

        def render_ms(invalidate: bool) -> float:
            times = []
            for image in images:
                if invalidate:
                    system.clear_cache()  # what every frame cost before the PSFs were cached
                start = time.perf_counter()
                system.render(image, camera.exposure_s)
                times.append(time.perf_counter() - start)
            return float(np.median(times)) * 1e3

        cached, uncached = render_ms(False), render_ms(True)
    return {"example_bench_device_s": device_s, "measure_ms_median": float(np.median(durations)) * 1e3,
            "render_over_device_time": float(np.median(durations)) / device_s,
            "render_ms_per_frame": cached, "render_uncached_ms_per_frame": uncached,
            "example_frame_shape": list(system.frame_shape)}


def capture_seconds(clock, args, dataset, out: Path, compression) -> float:
    """Wall seconds of one :func:`hil.capture.capture` of ``dataset`` into a new file ``out``."""
    from hil.capture import capture

    out.unlink(missing_ok=True)
    with make_bench(clock, args) as bench:
        bench.measure(np.zeros(SHAPE, np.uint8))  # warm-up
        start = time.perf_counter()
        capture(bench, dataset, np.arange(len(dataset)), out, compression=compression, progress=False)
        return time.perf_counter() - start


def measure_example_captures(n: int, folder: Path) -> dict:
    """Stored bytes and wall time per frame of captures of the example bench, by compression."""
    import torch
    from torch.utils.data import TensorDataset

    import h5py
    from hil.capture import capture

    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (n, 1, 28, 28))).float() / 255
    dataset = TensorDataset(images, torch.zeros(n, dtype=torch.int64))
    out = {"bytes_per_frame": {}, "example_capture_ms_per_frame": {}}
    with open_bench(ROOT / "examples" / "bench_sim.yaml", clock=VirtualClock()) as bench:
        for name, compression in COMPRESSION_VARIANTS.items():
            path = folder / f"example_{name}.h5"
            start = time.perf_counter()
            capture(bench, dataset, np.arange(n), path, compression=compression, progress=False)
            out["example_capture_ms_per_frame"][name] = (time.perf_counter() - start) / n * 1e3
            with h5py.File(path, "r") as f:
                out["bytes_per_frame"][name] = f["frames"].id.get_storage_size() / n
    return out


COMPRESSION_VARIANTS = {"none": None, "gzip": "gzip", "lzf": "lzf"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="measurements per run")
    parser.add_argument("--exposure-s", type=float, default=0.010)
    parser.add_argument("--settle-s", type=float, default=0.005)
    parser.add_argument("--latency-s", type=float, default=0.001)
    parser.add_argument("--readout-s", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "capture.json")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, SHAPE).astype(np.uint8) for _ in range(args.n)]
    device_s = args.latency_s + args.settle_s + args.exposure_s + args.readout_s

    def efficiency_of(seconds: float) -> float:
        return args.n * device_s / seconds

    import tempfile

    import torch
    from torch.utils.data import TensorDataset

    dataset = TensorDataset(torch.from_numpy(np.stack(images)[:, None]).float() / 255, torch.zeros(args.n, dtype=torch.int64))
    folder = Path(tempfile.mkdtemp(prefix="capture_bench_"))
    file_s = {name: [] for name in COMPRESSION_VARIANTS}
    real_s, virtual_s, sleep_s, per_measure = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        for name, compression in COMPRESSION_VARIANTS.items():
            file_s[name].append(capture_seconds(RealClock(), args, dataset, folder / f"{name}.h5", compression))
        total, durations = run_loop(RealClock(), args, images)
        real_s.append(total)
        per_measure.append(durations)
        virtual_s.append(run_loop(VirtualClock(), args, images)[0])
        start = time.perf_counter()
        for _ in range(args.n):  # the same two waits as a measurement, nothing else
            time.sleep(args.latency_s + args.settle_s)
            time.sleep(args.exposure_s + args.readout_s)
        sleep_s.append(time.perf_counter() - start)
    real, virtual, sleep = (float(np.median(v)) for v in (real_s, virtual_s, sleep_s))
    typical_s = float(np.median(np.concatenate(per_measure)))

    result = {
        "benchmark": "capture",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "n": args.n,
        "repeats": args.repeats,
        "frame_shape": list(SHAPE),
        "latency_s": args.latency_s, "settle_s": args.settle_s, "exposure_s": args.exposure_s, "readout_s": args.readout_s,
        "device_limited_hz": 1.0 / device_s,
        "achieved_hz": args.n / real,
        "efficiency": efficiency_of(real),
        "efficiency_runs": [efficiency_of(v) for v in real_s],
        "overhead_us_per_frame": (real - args.n * device_s) / args.n * 1e6,
        "overhead_us_per_frame_median": (typical_s - device_s) * 1e6,
        "efficiency_median": device_s / typical_s,
        "toolkit_cpu_us_per_frame": virtual / args.n * 1e6,
        "sleep_reference_efficiency": efficiency_of(sleep),
        **measure_example_bench(min(args.n, 200)),
        "second_bench": {"optics_changes": SECOND_BENCH, **measure_example_bench(min(args.n, 200), SECOND_BENCH)},
    }
    files = {"efficiency": {name: efficiency_of(float(np.median(v))) for name, v in file_s.items()},
             "efficiency_runs": {name: [efficiency_of(t) for t in v] for name, v in file_s.items()},
             **measure_example_captures(min(args.n, 200), folder)}
    shutil.rmtree(folder, ignore_errors=True)
    result.update({
        "efficiency_capture_uncompressed": files["efficiency"]["none"],
        "efficiency_capture_compressed": files["efficiency"]["gzip"],
        "uncompressed_bytes_per_frame": files["bytes_per_frame"]["none"],
        "compressed_bytes_per_frame": files["bytes_per_frame"]["gzip"],
        "capture_file": files,
    })
    rows = [
        ("device-limited rate", f"{result['device_limited_hz']:.2f} /s", f"{device_s * 1e3:.1f} ms per measurement"),
        ("achieved rate (real clock)", f"{result['achieved_hz']:.2f} /s", f"median of {args.repeats} x {args.n} measurements"),
        ("efficiency", f"{result['efficiency']:.4f}", "goal >= 0.95"),
        ("overhead per frame", f"{result['overhead_us_per_frame']:.0f} us", "toolkit + OS wake-up delays"),
        ("median overhead per frame", f"{result['overhead_us_per_frame_median']:.0f} us", "typical measurement (load spikes excluded)"),
        ("efficiency of the median", f"{result['efficiency_median']:.4f}", "device time / median measurement time"),
        ("toolkit CPU per frame", f"{result['toolkit_cpu_us_per_frame']:.0f} us", "same loop, virtual clock"),
        ("bare sleep loop efficiency", f"{result['sleep_reference_efficiency']:.4f}", "same two sleeps, nothing else"),
        ("example bench: render/device", f"{result['render_over_device_time']:.3f}",
         f"measure {result['measure_ms_median']:.2f} ms vs device {result['example_bench_device_s'] * 1e3:.0f} ms; goal <= 0.1"),
        ("render, PSFs cached", f"{result['render_ms_per_frame']:.2f} ms", f"frame {result['example_frame_shape']}"),
        ("render, PSFs recomputed", f"{result['render_uncached_ms_per_frame']:.2f} ms", "every frame (before caching)"),
        ("second bench: render/device", f"{result['second_bench']['render_over_device_time']:.3f}",
         f"5 signed 9x9 kernels, 2 sensor px per display px, frame {result['second_bench']['example_frame_shape']}"),
        *[(f"capture to file, {name}", f"{files['efficiency'][name]:.4f}",
           f"efficiency; example bench {files['bytes_per_frame'][name]:.0f} B/frame, "
           f"{files['example_capture_ms_per_frame'][name]:.1f} ms/frame (virtual clock)") for name in COMPRESSION_VARIANTS],
    ]
    return finish(rows, result, args.out, name_width=28, value_width=14)


if __name__ == "__main__":
    main()
