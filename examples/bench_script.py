"""A bench script to copy: open the bench from YAML, measure a few images, save the frames.

Run it as ``python examples/bench_script.py [examples/bench_sim.yaml] [--out out/bench_script]``.
It works unchanged on real devices: point it at a bench YAML naming real backends (``hil devices``).
Each frame is written as ``frame_NNN.npy`` (exact DN) with a JSON sidecar of its metadata, and the
resolved config and device settings are written next to them. Ctrl-C stops it cleanly: the ``with``
block blanks the SLM and closes both devices on any exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers import DeviceError, open_bench  # noqa: E402
from onn_core.config import save_yaml  # noqa: E402

HERE = Path(__file__).resolve().parent


def test_images(shape, dtype, max_level: int) -> dict[str, np.ndarray]:
    """A few patterns that show what the optics do: a dark frame, a bright frame, one lit pixel, bars."""
    rows, cols = shape[:2]
    point = np.zeros(shape, dtype)
    point[rows // 2, cols // 2] = max_level
    bars = np.zeros(shape, dtype)
    bars[:, ::4] = max_level
    return {"dark": np.zeros(shape, dtype), "bright": np.full(shape, max_level, dtype), "point": point, "bars": bars}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=HERE / "bench_sim.yaml", help="bench YAML")
    parser.add_argument("--out", type=Path, default=Path("out/bench_script"), help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    with open_bench(args.config) as bench:
        save_yaml(bench.config, args.out / "config.yaml")  # the resolved config, next to the outputs
        (args.out / "settings.json").write_text(json.dumps(bench.settings(), indent=2, default=str))
        slm = bench.slm
        for number, (name, image) in enumerate(test_images(slm.shape, slm.dtype, slm.max_level).items()):
            try:
                m = bench.measure(image)
            except DeviceError as exc:  # retries exhausted, or the device went away
                print(f"{name}: failed: {exc}")
                continue
            frame = m.frame
            np.save(args.out / f"frame_{number:03d}.npy", frame.image)
            meta = {"pattern": name, "index": frame.index, "timestamp_s": frame.timestamp_s,
                    "exposure_s": frame.exposure_s, "gain": frame.gain, "attempts": m.attempts,
                    "settled_at_s": m.settled_at_s, "meta": frame.meta}
            (args.out / f"frame_{number:03d}.json").write_text(json.dumps(meta, indent=2, default=str))
            print(f"{name:>6}: frame {frame.index}, mean {frame.image.mean():8.1f} DN, max {frame.image.max():6d} DN")
    print(f"frames written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
