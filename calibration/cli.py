"""The calibration command line: ``hil calibrate CONFIG --out DIR [--stages ...] [--from SOURCE]`` and
``hil calibrate --report-only DIR`` (also installed as ``hil-calibrate``). This module holds its
arguments and its body; :mod:`hil.cli` hosts it.

The config (YAML, paths relative to it)::

    bench: bench_sim.yaml        # the bench to calibrate
    optics: optics.yaml          # the nominal optical system (its `errors` are ignored: they are measured)
    calibration: {...}           # calibration.api.CalibrationConfig (stages, per-stage settings, fit)

Writes ``DIR/calibration.h5`` (never over an earlier one: the command refuses a DIR that holds one)
and the report (:mod:`calibration.report`), and prints where they are. While it runs, every finished
stage is saved in ``DIR/calibration.partial.h5`` (:func:`calibration.file.save_partial`); the same
command after a stop (Ctrl-C, a failed stage, a crash) continues from the first stage missing, the
stages whose settings changed measured again with every later one; a partial file of other optics or
another bench is refused (move it away); it is removed once ``calibration.h5`` is written.

``--from SOURCE`` (a folder holding ``calibration.h5`` or ``calibration.partial.h5``, or such a file)
reuses an earlier calibration's measurements: the stages named in ``--stages`` (required) are measured
or fitted again, the others copied from SOURCE into a new calibration in ``--out`` (SOURCE is only
read), which records SOURCE's ``calibration_id`` (``provenance``). ``--stages fit --from OLD`` opens no
bench. ``--report-only DIR`` opens no bench: it rebuilds the report (``report.md``, ``report.json``,
the PNGs) from ``DIR/calibration.h5``, e.g. after a run killed between writing the file and its report
(in ``DIR/calibration/`` when DIR is a ``hil run`` folder, beside the job's own report). Exit status
0 on success, 2 for a bad config, a failed measurement or fit, or a file problem, 128 + signal when
interrupted; the bench blanks the SLM on every exit.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onn_core import config as config_io
from onn_core.errors import ConfigError, InputError

# as calibration.file's (not imported here: `hil --help` stays light)
FILE_NAME = "calibration.h5"
PARTIAL_NAME = "calibration.partial.h5"
#: The subfolder of a ``hil run`` folder that holds its calibration report.
JOB_REPORT_DIR = "calibration"


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
    parser.add_argument("--from", dest="source", metavar="SOURCE",
                        help=f"reuse the measurements of an earlier calibration (a folder with {FILE_NAME} or "
                             f"{PARTIAL_NAME}, or the file): the --stages given are redone, the others copied "
                             "into a new calibration in --out; --stages fit opens no bench")
    parser.add_argument("--report-only", metavar="DIR",
                        help=f"only rebuild the report (report.md, report.json, PNGs) from DIR/{FILE_NAME}; "
                             "opens no bench")


def run(args: argparse.Namespace) -> int:
    if args.report_only is not None:
        if args.config or args.out or args.stages or getattr(args, "device", None) or getattr(args, "source", None):
            raise InputError("--report-only DIR takes no CONFIG, --out, --stages or --from: it rebuilds the report of "
                             "the calibration file already in DIR")
        return rebuild_report(args.report_only)
    if args.config is None or args.out is None:
        raise InputError("give a calibration config and --out DIR (or --report-only DIR to rebuild a report)")
    return calibrate_command(args)


def rebuild_report(folder) -> int:
    """Write the report of ``folder/calibration.h5`` (or of the calibration file ``folder``) next to it,
    or, in a ``hil run`` folder (one with a ``state.json`` or a ``calibration/`` folder), into its
    ``calibration/`` subfolder; prints where. A missing, foreign, partial or corrupted file raises
    :class:`~calibration.errors.CalibrationFileError`."""
    from .file import load_calibration
    from .report import write_report

    folder = Path(folder)
    target = folder if folder.is_file() else folder / FILE_NAME
    calibration = load_calibration(target)
    where = target.parent
    if (where / "state.json").is_file() or (where / JOB_REPORT_DIR).is_dir():  # a job run: its report is its own
        where = where / JOB_REPORT_DIR
    report = write_report(calibration, where)
    print(f"calibration {calibration.calibration_id}: {target}")
    print(f"report: {report['markdown']}")
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    """``hil calibrate CONFIG --out DIR [--from SOURCE]``: measure (continuing ``DIR``'s partial file),
    save, remove the partial file, write the report."""
    from drivers import open_bench
    from simulator.system import OpticalSystem

    from .api import MEASURING_STAGES, STAGES, CalibrationConfig, calibrate
    from .errors import CalibrationFileError
    from .file import load_calibration, save_calibration
    from .report import write_report

    path = Path(args.config)
    cfg = config_io.build(CalibrateCommandConfig, config_io.load_yaml(path), "")
    base = path.resolve().parent
    settings = dict(cfg.calibration)
    requested = None
    if args.stages:
        requested = [s.strip() for s in args.stages.split(",") if s.strip()]
        settings["stages"] = requested
    if getattr(args, "device", None):
        settings["device"] = args.device
    out = Path(args.out)
    target, partial = out / FILE_NAME, out / PARTIAL_NAME
    if target.exists():
        raise CalibrationFileError(f"{target} exists: an earlier calibration is never overwritten; choose another --out")
    source = source_file = None
    if getattr(args, "source", None):
        if requested is None:
            raise InputError("--from SOURCE needs --stages: the stages to redo (e.g. --stages fit); the others are "
                             "copied from SOURCE")
        bad = [s for s in requested if s not in STAGES]
        if bad:
            raise ConfigError("--stages", requested, f"names of {list(STAGES)}")
        source_file = _source_file(Path(args.source)).resolve()
        if source_file.resolve() in (target.resolve(), partial.resolve()):
            raise InputError(f"--from {args.source} is the file --out {out} writes: choose another --out")
        source = load_calibration(source_file, partial_ok=True)
        settings["stages"] = [s for s in STAGES if s in requested or getattr(source, s) is not None]
    calibration_config = CalibrationConfig.from_dict(settings)
    optics = config_io.load_yaml(base / cfg.optics)
    if not isinstance(optics, dict):
        raise ConfigError("optics", cfg.optics, "a YAML file holding an optics mapping")
    optics["errors"] = None  # the nominal system: calibration measures the errors
    system = OpticalSystem.from_config(optics, base_dir=(base / cfg.optics).parent)
    recompute = calibration_config.stages if source is None else [s for s in calibration_config.stages if s in requested]
    if any(s in MEASURING_STAGES for s in recompute):
        with open_bench(base / cfg.bench) as bench:
            calibration = calibrate(bench, system, calibration_config, diagnostics_dir=out, progress_file=partial,
                                    source=source, source_path=source_file, recompute=recompute)
    else:  # a refit of SOURCE's measurements: no bench
        calibration = calibrate(None, system, calibration_config, progress_file=partial, source=source,
                                source_path=source_file, recompute=recompute)
    save_calibration(calibration, target, partial_file=partial)
    report = write_report(calibration, out)
    print(f"calibration {calibration.calibration_id}: {target}")
    if source is not None:
        print(f"stages {', '.join(calibration.provenance['measurements_from']['stages'])} from calibration "
              f"{source.calibration_id} ({source_file}), left as it was")
    print(f"report: {report['markdown']}")
    return 0


def _source_file(source: Path) -> Path:
    """The calibration file of ``--from SOURCE``: the file itself, or a folder's ``calibration.h5``, else its
    ``calibration.partial.h5``."""
    if source.is_file():
        return source
    for name in (FILE_NAME, PARTIAL_NAME):
        if (source / name).is_file():
            return source / name
    raise InputError(f"--from {source}: no calibration file there (neither {FILE_NAME} nor {PARTIAL_NAME})")
