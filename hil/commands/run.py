"""``hil run CONFIG``: the hardware-in-the-loop job end to end (:mod:`hil.run`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="the whole job: train, export, fabricate/open the bench, calibrate, capture, fine-tune, report",
        description="Train the optical student in simulation (or take a trained run), export its design, open "
                    "the bench (a simulated one fabricates the design with the config's fabrication errors), "
                    "calibrate it, capture the training fractions and a held-out test set, fine-tune the digital "
                    "backend with every method, evaluate and write report.json, summary.md and PNG plots into "
                    "one run folder. Rerunning the same command resumes after the last finished step "
                    "(see examples/run_sim.yaml).")
    parser.add_argument("config", help="job config YAML (examples/run_sim.yaml, examples/run_real.yaml)")
    parser.add_argument("--out-dir", help="run folder (default: the config's out_dir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hil.run import load_job, run_job

    job = load_job(args.config, args.out_dir)
    summary = run_job(job, progress=not args.no_progress)
    print(summary.read_text())
    print(f"report: {job.run_dir / 'report.json'} (summary {summary}, plots in {job.run_dir})")
    return 0
