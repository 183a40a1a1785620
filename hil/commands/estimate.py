"""``hil estimate CONFIG``: before fabrication, how many kernels fit and what accuracy they can reach."""

from __future__ import annotations

import argparse
import logging


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="layout (kernel count) and NTK accuracy estimate of an optical student, before training",
        description="Stage 1 of the method: from a YAML estimate config (see examples/estimate_fmnist.yaml and "
                    "hil.estimate), plan the metasurface layout (kernels, tile grid on the sensor) and estimate the "
                    "test accuracy (mIoU for segmentation) of the optical student's architecture by kernel ridge "
                    "regression with its neural tangent kernel: for the layout's (or model.num_kernels) random "
                    "kernels, for infinitely many, and along an optional sweep. Writes config.yaml, estimate.json, "
                    "estimate.png and layout.png into the output folder and prints a one-line JSON summary.")
    parser.add_argument("config", help="estimate config YAML file")
    parser.add_argument("--out-dir", help="output folder (default: out_dir of the config, else runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted path, e.g. --set data.train_size=2000 "
                             "(VALUE is parsed as YAML); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_estimate)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Run the estimate; print ``{"out_dir", "metric", "kernels", "estimate", "interval",
    "infinite_width", "extrapolated", "infinite_width_extrapolated", "layout_grid"}`` (metrics in
    percent; the extrapolated ones null without ``data.extrapolate_to``) on one line; return 0."""
    import json
    from pathlib import Path

    from hil.commands.train import parse_overrides
    from hil.estimate import estimate, load_estimate_config

    cfg = load_estimate_config(args.config, parse_overrides(args.overrides))
    out_dir = args.out_dir or cfg.out_dir or str(Path("runs") / Path(args.config).stem)
    estimate_log = logging.getLogger("hil.estimate")  # the result table is shown at the CLI's default level
    previous_level = estimate_log.level
    if estimate_log.getEffectiveLevel() > logging.INFO:
        estimate_log.setLevel(logging.INFO)
    try:
        result = estimate(cfg, out_dir, progress=not args.no_progress)
    finally:
        estimate_log.setLevel(previous_level)
    main, inf = result.estimate, result.infinite
    print(json.dumps({
        "out_dir": str(out_dir), "metric": result.metric_name, "kernels": main.kernels,
        "estimate": round(100 * main.metric, 2), "interval": [round(100 * v, 2) for v in main.interval],
        "infinite_width": round(100 * inf.metric, 2),
        "extrapolated": None if main.extrapolated is None else round(100 * main.extrapolated, 2),
        "infinite_width_extrapolated": None if inf.extrapolated is None else round(100 * inf.extrapolated, 2),
        "layout_grid": None if result.layout is None else list(result.layout.grid),
    }))
    return 0
