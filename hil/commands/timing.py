"""``hil timing BENCH [-o timing.yaml]``: measure the display's latency and settle time through the camera.

Opens the bench (the camera's own frames, whatever ``camera.locate`` says), switches the display between
two uniform gray levels and follows the camera's frames by their exposure timestamps until the image
is steady (:func:`drivers.timing.measure_timing`); prints the values for the bench config's
``slm.latency_s`` and ``slm.settle_s`` with the brackets they were measured in, and writes them as YAML,
atomically. A camera without exposure timestamps, a change the camera does not see, or an image never
steady within ``--max-wait-s``: one line saying so, exit status 2.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "timing", help="measure the display's latency and settle time (slm.latency_s, slm.settle_s)",
        description="Switch the display of CONFIG between two gray levels, follow the camera's frames by their "
                    "timestamps until the image is steady, and print and write the values for slm.latency_s and "
                    "slm.settle_s. Shorter exposures resolve finer (about the exposure / --repeats).")
    p.add_argument("config", type=Path, help="bench YAML (e.g. examples/bench_lab_sim.yaml)")
    p.add_argument("-o", "--output", type=Path, default=Path("timing.yaml"),
                   help="where to write the values (default timing.yaml)")
    p.add_argument("--exposure-s", type=float, default=None, help="camera exposure (s) while measuring")
    p.add_argument("--low", type=int, default=None, help="gray level before the change (default: half scale)")
    p.add_argument("--high", type=int, default=None, help="gray level after the change (default: full scale)")
    p.add_argument("--repeats", type=int, default=8, help="transitions followed (default 8)")
    p.add_argument("--max-wait-s", type=float, default=1.0,
                   help="longest time (s) the display may take to become steady (default 1)")
    p.set_defaults(func=cmd_timing)


def cmd_timing(args) -> int:
    from drivers import open_bench
    from drivers.timing import measure_timing
    from onn_core.config import save_yaml

    with open_bench(args.config, located=False) as bench:
        if args.exposure_s is not None:
            bench.camera.exposure_s = args.exposure_s
        result = measure_timing(bench, low=args.low, high=args.high, repeats=args.repeats,
                                max_wait_s=args.max_wait_s)
    save_yaml({"bench": str(args.config), **result.settings()}, args.output)
    (l0, l1), (s0, s1) = result.latency_bounds_s, result.settle_bounds_s
    print(f"slm.latency_s: {result.latency_s:.6g}   # measured in [{l0:.6g}, {l1:.6g}] s\n"
          f"slm.settle_s: {result.settle_s:.6g}   # steady {s0:.6g} to {s1:.6g} s after the change began\n"
          f"({result.fractions.size} frames at exposure {result.exposure_s:g} s; written to {args.output})")
    return 0
