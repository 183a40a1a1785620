"""``hil train CONFIG``: train a teacher or an optical student from a YAML run config."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a teacher or an optical student (task loss, KD or NTKD) from a YAML config",
        description="Train from a YAML run config (see hil.config). Writes config.yaml, metrics.json and "
                    "checkpoints/{last,best}.pt under the output folder and resumes from checkpoints/last.pt "
                    "if present. Under torchrun, trains data-parallel (DistributedDataParallel).")
    parser.add_argument("config", help="run config YAML file")
    parser.add_argument("--out-dir", help="output folder (default: out_dir of the config, else runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted path, e.g. --set loss.method=kd "
                             "(VALUE is parsed as YAML); repeatable")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with values parsed by ``yaml.safe_load``."""
    import yaml

    from simulator.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", item, "KEY=VALUE with a dotted KEY such as loss.method")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from hil.api import train
    from hil.config import load_run_config, replace

    cfg = load_run_config(args.config)
    changes = parse_overrides(args.overrides)
    if args.no_progress:
        changes["train.progress"] = False
    if changes:
        cfg = replace(cfg, **changes)
    out_dir = args.out_dir or cfg.out_dir or str(Path("runs") / Path(args.config).stem)
    result = train(cfg, out_dir, resume=not args.no_resume)
    summary = {"out_dir": str(out_dir), "steps": result.steps, "epochs": result.epochs_completed,
               "best_epoch": result.best_epoch, "best_val": result.best_metric,
               "test": {k: v for k, v in (result.test_metrics or {}).items() if k in ("accuracy", "miou")}}
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line under torchrun
        print(json.dumps(summary))
    return 0
