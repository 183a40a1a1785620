"""The calibration command line: ``hil calibrate CONFIG --out DIR [--stages ...]`` and
``hil calibrate --report-only DIR`` (also installed as ``hil-calibrate``). This module holds its
arguments and its body; :mod:`hil.cli` hosts it.

The config (YAML, paths relative to it)::

    bench: bench_sim.yaml        # the bench to calibrate
    optics: optics.yaml          # the nominal optical system (its `errors` are ignored: they are measured)
    calibration: {...}           # calibration.api.CalibrationConfig (stages, per-stage settings, fit)

Writes ``DIR/calibration.h5`` (never over an earlier one: the command refuses a DIR that holds one)
and the report (:mod:`calibration.report`), and prints where they are. ``--report-only DIR`` opens no
bench: it rebuilds the report (``report.md``, ``report.json``, the PNGs) from ``DIR/calibration.h5``,
e.g. after a run killed between writing the file and its report. Exit status 0 on success, 2
for a bad config, a failed measurement or fit, or a file problem, 128 + signal when interrupted;
the bench blanks the SLM on every exit, and an interrupted run leaves no calibration file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onn_core import config as config_io
from onn_core.errors import ConfigError, InputError

FILE_NAME = "calibration.h5"


@dataclass
class CalibrateCommandConfig:
    bench: str
    optics: str
    calibration: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="calibration config YAML (see examples/calibrate_sim.yaml)")
    parser.add_argument("--out", help="output folder (calibration.h5 + report); required with CONFIG")
    # the stage names of calibration.api.STAGES (not imported here: `hil --help` stays light)
    parser.add_argument("--stages", help="comma-separated subset of sensor,display,geometry,psf,fit "
                                         "(default: the config's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where the computation runs (default: the config's calibration.device, else cpu)")
    parser.add_argument("--report-only", metavar="DIR",
                        help=f"only rebuild the report (report.md, report.json, PNGs) from DIR/{FILE_NAME}; "
                             "opens no bench")


def run(args: argparse.Namespace) -> int:
    if args.report_only is not None:
        if args.config or args.out or args.stages or getattr(args, "device", None):
            raise InputError("--report-only DIR takes no CONFIG, --out or --stages: it rebuilds the report of "
                             "the calibration file already in DIR")
        return rebuild_report(args.report_only)
    if args.config is None or args.out is None:
        raise InputError("give a calibration config and --out DIR (or --report-only DIR to rebuild a report)")
    return calibrate_command(args)


def rebuild_report(folder) -> int:
    """Write the report of ``folder/calibration.h5`` (or of the calibration file ``folder``) next to it;
    prints where. A missing, foreign or corrupted file raises
    :class:`~calibration.errors.CalibrationFileError`."""
    from .file import load_calibration
    from .report import write_report

    folder = Path(folder)
    target = folder if folder.is_file() else folder / FILE_NAME
    calibration = load_calibration(target)
    report = write_report(calibration, target.parent)
    print(f"calibration {calibration.calibration_id}: {target}")
    print(f"report: {report['markdown']}")
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    """``hil calibrate CONFIG --out DIR``: measure, save, write the report."""
    from drivers import open_bench
    from simulator.system import OpticalSystem

    from .api import CalibrationConfig, calibrate
    from .errors import CalibrationFileError
    from .file import save_calibration
    from .report import write_report

    path = Path(args.config)
    cfg = config_io.build(CalibrateCommandConfig, config_io.load_yaml(path), "")
    base = path.resolve().parent
    settings = dict(cfg.calibration)
    if args.stages:
        settings["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    if getattr(args, "device", None):
        settings["device"] = args.device
    calibration_config = CalibrationConfig.from_dict(settings)
    optics = config_io.load_yaml(base / cfg.optics)
    if not isinstance(optics, dict):
        raise ConfigError("optics", cfg.optics, "a YAML file holding an optics mapping")
    optics["errors"] = None  # the nominal system: calibration measures the errors
    system = OpticalSystem.from_config(optics, base_dir=(base / cfg.optics).parent)
    out = Path(args.out)
    target = out / FILE_NAME
    if target.exists():
        raise CalibrationFileError(f"{target} exists: an earlier calibration is never overwritten; choose another --out")
    with open_bench(base / cfg.bench) as bench:
        calibration = calibrate(bench, system, calibration_config, diagnostics_dir=out)
    save_calibration(calibration, target)
    report = write_report(calibration, out)
    print(f"calibration {calibration.calibration_id}: {target}")
    print(f"report: {report['markdown']}")
    return 0
