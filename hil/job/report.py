"""The job's report: ``report.json`` (every figure), ``summary.md`` (for a person) and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from calibration.plotting import plot_psfs
from onn_core.files import atomic_write

from .config import Job
from .plots import plot_accuracy, plot_curves
from .state import read_state, write_json

REPORT_FILES = ("report.json", "summary.md", "psfs.png", "accuracy.png", "curves.png")


def report(job: Job, evaluation: dict, calibration, extra: dict) -> Path:
    """Write ``report.json`` (the evaluation, the calibration summary, the plots, the step times and
    ``extra``), ``summary.md`` and the plots (:data:`REPORT_FILES`) into the run folder; returns the
    summary's path."""
    run = job.run_dir
    results = json.loads((run / "finetune.json").read_text()) if (run / "finetune.json").is_file() else {}
    plots = {}
    if calibration.psf is not None and calibration.fit is not None:
        plot_psfs(calibration, run / "psfs.png")
        plots["psfs"] = "psfs.png"
    if plot_accuracy(evaluation, run / "accuracy.png"):
        plots["accuracy"] = "accuracy.png"
    if plot_curves(results, run / "curves.png"):
        plots["curves"] = "curves.png"
    seconds = read_state(run)["seconds"]
    write_json(run / "report.json", {"run_dir": str(run), "evaluation": evaluation, "calibration": calibration.summary(),
                                     "plots": plots, "seconds": seconds, **extra})
    with atomic_write(run / "summary.md", "w") as fh:
        fh.write("\n".join(summary_lines(run.name, evaluation, calibration, seconds, plots)) + "\n")
    return run / "summary.md"


def summary_lines(name: str, evaluation: dict, calibration, seconds: dict, plots: dict) -> list[str]:
    """The lines of ``summary.md``: the accuracy table, the fine-tuning table (mean ± std over seeds and
    the share of the fabrication loss recovered), the PSF residuals and the step times (s)."""
    lines = [f"# Hardware-in-the-loop run: {name}", "",
             f"Held-out captured test set: {evaluation['test_samples']} images.", "",
             "| | accuracy |", "|---|---|",
             f"| design (simulation) | {100 * evaluation['design']:.2f} % |",
             f"| fabricated, uncompensated (nominal features) | {100 * evaluation['uncompensated']:.2f} % |",
             f"| calibration layer only (no retraining) | {100 * evaluation['calibration_layer']:.2f} % |", ""]
    by_fraction = evaluation["by_fraction"]
    if by_fraction:
        keys = sorted({k for fractions in by_fraction.values() for k in fractions}, key=float)
        lines += ["Fine-tuned backend (mean ± std over seeds; recovered = share of the fabrication loss won back):", "",
                  "| method | " + " | ".join(f"{100 * float(k):g} % captured" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for method, fractions in by_fraction.items():
            cells = []
            for k in keys:
                r = fractions.get(k)
                recovered = "" if r is None or r["recovered_fraction"] is None else f" ({100 * r['recovered_fraction']:.0f} %)"
                cells.append("" if r is None else f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}{recovered}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if calibration.fit is not None:
        lines.append(f"PSF residual: {calibration.fit.psf_residual_before:.3f} against the design, "
                     f"{calibration.fit.psf_residual_after:.3f} against the calibrated model.")
    lines += ["", "Step times (s): " + ", ".join(f"{k} {v:g}" for k, v in seconds.items()), "",
              "Plots: " + ", ".join(plots.values()) + "; every figure: report.json."]
    return lines


__all__ = ["REPORT_FILES", "report", "summary_lines"]
