"""``hil run CONFIG``: the hardware-in-the-loop job end to end (:mod:`hil.job`)."""

from __future__ import annotations

import argparse

# the job's steps in order (hil.job.steps.STEP_NAMES; written out so that `hil --help` imports no torch)
STEP_CHOICES = ("train", "export", "locate", "calibrate", "capture", "finetune", "evaluate", "report")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="the whole job: train, export, fabricate/open the bench, locate, calibrate, capture, fine-tune, report",
        description="Train the optical student in simulation (or take a trained run), export its design, open "
                    "the bench (a simulated one fabricates the design with the config's fabrication errors), "
                    "locate the design's grid in its camera frame (when the bench's camera.locate file does not "
                    "exist yet: into the run folder's grid.yaml), calibrate it, capture the training fractions "
                    "and a held-out test set, fine-tune the digital backend with every method, evaluate and write report.json, summary.md and PNG plots into "
                    "one run folder. The config, files, dataset, bench and free disk space are checked before "
                    "the first step. Rerunning the same command resumes after the last finished step; a "
                    "finished step whose files are missing or damaged is run again "
                    "(see examples/run_sim.yaml).")
    parser.add_argument("config", help="job config YAML (examples/run_sim.yaml, examples/run_real.yaml)")
    parser.add_argument("--out-dir", help="run folder (default: the config's out_dir)")
    parser.add_argument("--from", dest="from_step", choices=STEP_CHOICES,
                        help="run this step and every later one again (their files are moved into stale/)")
    parser.add_argument("--until", choices=STEP_CHOICES,
                        help="stop after this step (e.g. export: send design/ to fabrication, resume later)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hil.job import load_job, run_job

    job = load_job(args.config, args.out_dir)
    summary = run_job(job, progress=not args.no_progress, from_step=args.from_step, until=args.until)
    if summary is None:
        print(f"stopped after step {args.until} in {job.run_dir}; continue with: hil run {args.config}"
              + (f" --out-dir {args.out_dir}" if args.out_dir else ""))
        return 0
    print(summary.read_text())
    print(f"report: {job.run_dir / 'report.json'} (summary {summary}, plots in {job.run_dir})")
    return 0
