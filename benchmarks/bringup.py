"""Bringing up a bench: how well `hil locate` finds the design's tile grid on the lab-like simulated bench.

Over ``--n`` random placements (seed ``i`` for placement ``i``; offset anywhere the grid fits on a
1024 x 1280 sensor, rotation within +-15 deg, magnification 0.5-3, mirror half the time, radial
distortion |k1| <= 0.02), a simulated bench is built whose camera sees ``examples/optics.yaml`` (the
fabricated device: PSF shifts ~0.3 design px, ...) through that placement with a fixed pattern (PRNU 1 %,
DSNU, hot pixels), on a virtual clock; :func:`calibration.locate.locate` shows its patterns (auto
exposure, one frame each) and fits the grid. Reported:

- ``locate_success_rate``: found, with the right mirror;
- ``locate_error_px``: RMS distance (camera pixels) of the tiles' outer corners as located (the coarse
  affine map, before any geometry calibration) from where the placement puts them, mean +- std and max,
  also in design pixels; ``ideal``: the same with the nominal optics and no distortion (the
  algorithm's own error: what is left when the affine model is exact);
- ``locate_seconds``: wall time of one ``locate`` (rendering the ~10 frames included), median and max.

Prints a table and, last, one line of JSON; writes benchmarks/results/bringup.json.

Usage: python benchmarks/bringup.py [--n 20] [--first-seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.locate import LocateError, design_tile_corners, locate, nominal_system  # noqa: E402
from drivers import Bench, VirtualClock  # noqa: E402
from drivers.simulated import SimulatedCamera, SimulatedSLM, sensor_format  # noqa: E402
from onn_core.files import atomic_write  # noqa: E402
from simulator.placement import LabRenderer, Placement, SensorDefects  # noqa: E402
from simulator.system import OpticalSystem  # noqa: E402

SENSOR = (1024, 1280)
DEFECTS = SensorDefects(prnu_rel_std=0.01, dsnu_e_per_s_std=20.0, hot_pixel_fraction=1e-4,
                        hot_pixel_dark_current_e_per_s=2e4, defect_seed=7)


def lab_bench(system, placement: Placement) -> Bench:
    clock = VirtualClock()
    slm = SimulatedSLM(shape=system.image_shape, bit_depth=8, pixel_pitch_m=system.geometry.display_pixel_pitch_m,
                       latency_s=0.01, settle_s=0.005, clock=clock)
    bits, saturation, black = sensor_format(system.sensor)
    camera = SimulatedCamera(slm, LabRenderer(system, placement, DEFECTS).render, exposure_s=0.01, bit_depth=bits,
                             saturation_dn=saturation, native_black_level_dn=black, clock=clock)
    return Bench(slm, camera)


def one(system, nominal, seed: int, distortion: bool) -> dict:
    placement = Placement.random(seed, nominal.frame_shape, SENSOR, max_radial_k1=0.02 if distortion else 0.0)
    with lab_bench(system, placement) as bench:
        start = time.perf_counter()
        try:
            location = locate(bench, nominal, averages=1)
        except LocateError as exc:
            return {"seed": seed, "found": False, "error": str(exc), "seconds": time.perf_counter() - start}
        seconds = time.perf_counter() - start
    corners = design_tile_corners(nominal.layout, nominal.num_psfs)
    error = location.to_frame(corners) - placement.to_camera(corners, nominal.frame_shape)
    rms = float(np.sqrt((error**2).sum(axis=-1).mean()))
    return {"seed": seed, "found": location.mirror == placement.mirror, "seconds": seconds,
            "corner_rms_px": rms, "corner_rms_design_px": rms / placement.magnification,
            "magnification": placement.magnification, "rotation_deg": math.degrees(placement.rotation_rad),
            "mirror": placement.mirror, "radial_k1": placement.radial_k1, "spots": location.spots}


def summary(rows: list[dict]) -> dict:
    found = [r for r in rows if r["found"]]
    errors = np.array([r["corner_rms_px"] for r in found]) if found else np.array([np.nan])
    design = np.array([r["corner_rms_design_px"] for r in found]) if found else np.array([np.nan])
    seconds = np.array([r["seconds"] for r in rows])
    return {"locate_success_rate": len(found) / len(rows),
            "locate_error_px": {"mean": float(errors.mean()), "std": float(errors.std()), "max": float(errors.max())},
            "locate_error_design_px": {"mean": float(design.mean()), "std": float(design.std()), "max": float(design.max())},
            "locate_seconds": {"median": float(np.median(seconds)), "max": float(seconds.max())},
            "failures": [{"seed": r["seed"], "error": r.get("error", "wrong mirror")} for r in rows if not r["found"]]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="random placements per condition (default 20)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bringup.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    fabricated = OpticalSystem.from_yaml(ROOT / "examples" / "optics.yaml").eval()
    nominal = nominal_system(ROOT / "examples" / "optics.yaml")
    seeds = list(range(args.first_seed, args.first_seed + args.n))
    conditions = {"lab": (fabricated, True), "ideal": (nominal, False)}
    rows = {name: [one(system, nominal, seed, distortion) for seed in seeds] for name, (system, distortion) in conditions.items()}
    result = {
        "benchmark": "bringup",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": 1},
        "seeds": seeds,
        "what": "coarse affine map of `hil locate` (before geometry calibration); corner error = RMS distance of the "
                "tiles' outer corners from the truth, camera pixels",
        **summary(rows["lab"]),
        "ideal": summary(rows["ideal"]),
        "placements": rows,
    }
    print(f"{'condition':10s} {'success':>8s} {'corner RMS px':>20s} {'design px':>16s} {'seconds':>8s}")
    for name in conditions:
        s = summary(rows[name])
        e, d = s["locate_error_px"], s["locate_error_design_px"]
        print(f"{name:10s} {s['locate_success_rate']:8.2f} {e['mean']:9.3f} +- {e['std']:.3f} (max {e['max']:.2f}) "
              f"{d['mean']:7.3f} +- {d['std']:.3f} {s['locate_seconds']['median']:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "placements"}))
    return result


if __name__ == "__main__":
    main()
