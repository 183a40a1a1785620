"""``hil train CONFIG``: train a teacher or an optical student from a YAML run config."""

from __future__ import annotations

import argparse
import logging


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a teacher or an optical student (task loss, KD or NTKD) from a YAML config",
        description="Train from a YAML run config (see hil.config). Writes config.yaml, metrics.json and "
                    "checkpoints/{last,best}.pt under the output folder and resumes from checkpoints/last.pt "
                    "if present (refused if the config changed, unless --resume-changed). Logs the run's "
                    "estimated duration after a few steps and one line per epoch. Ctrl-C (or SIGTERM) saves "
                    "the last completed step and exits with 130 (143). Under torchrun, trains data-parallel "
                    "(DistributedDataParallel).")
    parser.add_argument("config", help="run config YAML file")
    parser.add_argument("--out-dir", help="output folder (default: out_dir of the config, else runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted path, e.g. --set loss.method=kd "
                             "(VALUE is parsed as YAML; relative paths are relative to the config file's "
                             "folder, as in the file); repeatable")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    resume.add_argument("--resume-changed", action="store_true",
                        help="resume even if the config differs from the checkpoint's: the new optimiser "
                             "settings, schedule, loss and run length apply from the resumed step on (each "
                             "change is logged and recorded in metrics.json); data, model, seed, optim.name "
                             "and train.freeze can never change on resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    parser.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with values parsed by ``yaml.safe_load``."""
    import yaml

    from onn_core.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", item, "KEY=VALUE with a dotted KEY such as loss.method")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key.strip()}", value, f"a YAML value ({getattr(exc, 'problem', None) or exc})") from exc
    return out


def run(args: argparse.Namespace) -> int:
    """Train; returns 0. Interrupted (SIGINT, SIGTERM), training saves the last completed step and raises
    :class:`~hil.trainer.TrainingInterrupted`, which :func:`hil.cli.main` turns into ``128 + signal``."""
    import json
    import os
    from pathlib import Path

    from hil.api import train
    from hil.config import load_run_config
    from hil.metrics import summary_metrics

    changes = parse_overrides(args.overrides)
    if args.no_progress:
        changes["train.progress"] = False
    cfg = load_run_config(args.config, changes)
    out_dir = args.out_dir or cfg.out_dir or str(Path("runs") / Path(args.config).stem)
    # The training log (resume, estimated duration, one line per epoch, interrupts) is shown at the
    # CLI's default level (warnings only).
    trainer_log = logging.getLogger("hil.trainer")
    previous_level = trainer_log.level
    if trainer_log.getEffectiveLevel() > logging.INFO:
        trainer_log.setLevel(logging.INFO)
    try:
        result = train(cfg, out_dir, resume=not args.no_resume, resume_changed=args.resume_changed)
    finally:
        trainer_log.setLevel(previous_level)
    summary = {"out_dir": str(out_dir), "steps": result.steps, "epochs": result.epochs_completed,
               "best_epoch": result.best_epoch, "best_val": result.best_metric,
               "test": {k: result.test_metrics[k] for k in summary_metrics(cfg.task)} if result.test_metrics else {}}
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line under torchrun
        print(json.dumps(summary))
    return 0
