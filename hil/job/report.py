"""The job's report: ``report.json`` (every figure), ``summary.md`` (for a person) and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from calibration.plotting import plot_psfs
from onn_core.files import atomic_write

from .config import Job
from .controls import design_convergence
from .plots import plot_accuracy, plot_curves, plot_design_curve
from .state import read_state, write_json
from .task import job_task

REPORT_FILES = ("report.json", "summary.md", "psfs.png", "accuracy.png", "curves.png", "design.png")
#: The subfolder of the run folder that holds the calibration report (``report.md``, ``report.json``, PNGs of
#: :func:`calibration.report.write_report`, written by the calibrate step), apart from the files above.
CALIBRATION_REPORT_DIR = "calibration"


def report(job: Job, evaluation: dict, calibration, extra: dict) -> Path:
    """Write ``report.json`` (the evaluation, the calibration summary, the plots, the step times, the
    design's convergence (``design``: :func:`hil.job.controls.design_convergence` of the student run)
    and ``extra``: ``capture`` as the capture step recorded it, ...), ``summary.md`` and the plots
    (:data:`REPORT_FILES`) into the run folder; returns the summary's path."""
    run = job.run_dir
    results = json.loads((run / "finetune.json").read_text()) if (run / "finetune.json").is_file() else {}
    student = (extra.get("models") or {}).get("student")
    task = job_task(job)
    design = design_convergence(student, task.metric, task.metric_name) if student else None
    plots = {}
    if calibration.psf is not None and calibration.fit is not None:
        plot_psfs(calibration, run / "psfs.png")
        plots["psfs"] = "psfs.png"
    if plot_accuracy(evaluation, run / "accuracy.png", metric_name=task.metric_name):
        plots["accuracy"] = "accuracy.png"
    if plot_curves(results, run / "curves.png"):
        plots["curves"] = "curves.png"
    if plot_design_curve(design, run / "design.png", metric_name=task.metric_name):
        plots["design"] = "design.png"
    seconds = read_state(run)["seconds"]
    write_json(run / "report.json", {"run_dir": str(run), "evaluation": evaluation, "calibration": calibration.summary(),
                                     "design": design, "plots": plots, "seconds": seconds, **extra})
    lines = summary_lines(run.name, evaluation, calibration, seconds, plots, design=design,
                          capture=extra.get("capture"), metric_name=task.metric_name)
    if (run / CALIBRATION_REPORT_DIR / "report.md").is_file():
        lines += ["", f"Calibration report (a verdict per stage): {CALIBRATION_REPORT_DIR}/report.md."]
    with atomic_write(run / "summary.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return run / "summary.md"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _cell(result: dict) -> str:
    """``mean`` (``± std`` over seeds when there are several) and the recovered share."""
    spread = "" if result.get("std") is None else f" ± {100 * result['std']:.2f}"
    recovered = "" if result.get("recovered_fraction") is None else f" ({100 * result['recovered_fraction']:.0f} %)"
    return f"{100 * result['mean']:.2f}{spread}{recovered}"


def summary_lines(name: str, evaluation: dict, calibration, seconds: dict, plots: dict, *, design: dict | None = None,
                  capture: dict | None = None, metric_name: str = "accuracy") -> list[str]:
    """The lines of ``summary.md``: first the figures a user needs (design, ``design_ft`` control,
    uncompensated, best method at the largest captured fraction), then the references (noisy design,
    perfect fabrication, calibration layer, teacher), the design's convergence, the capture exposure
    and clipping, the fine-tuning table (mean, ± std only over several seeds, and the share of the
    fabrication loss recovered against ``design_ft``), the PSF residuals and the step times (s). Every
    figure is the task's metric, ``metric_name`` (``mIoU`` for segmentation: :mod:`hil.job.task`)."""
    by_fraction, control = evaluation["by_fraction"], evaluation.get("design_ft") or {}
    keys = sorted({k for fractions in (*by_fraction.values(), control) for k in fractions}, key=float)
    seeds = sorted({len(r["seeds"]) for fractions in (*by_fraction.values(), control) for r in fractions.values()})
    lines = [f"# Hardware-in-the-loop run: {name}", "",
             f"Held-out captured test set: {evaluation['test_samples']} images; "
             f"{' / '.join(map(str, seeds)) or 'no'} fine-tuning seed(s)"
             + (" (one seed: no spread shown)" if seeds == [1] else "") + ".", "",
             f"| | {metric_name} (%) |", "|---|---|",
             f"| design (simulation, noise free) | {_cell({'mean': evaluation['design']})} |"]
    if keys:
        top = keys[-1]
        label = f"{100 * float(top):g} % captured"
        if top in control:
            lines.append(f"| design_ft control (the same fine-tuning on simulated nominal features), {label} | "
                         f"{_cell(control[top])} |")
        lines.append(f"| fabricated, uncompensated (nominal features) | {_cell({'mean': evaluation['uncompensated']})} |")
        best = max(((m, f[top]) for m, f in by_fraction.items() if top in f), key=lambda mr: mr[1]["mean"], default=None)
        if best is not None:
            lines.append(f"| best method: {best[0]}, {label} (recovered share) | {_cell(best[1])} |")
    else:
        lines.append(f"| fabricated, uncompensated (nominal features) | {_cell({'mean': evaluation['uncompensated']})} |")
    lines += ["", "- References: " + "; ".join([
        f"design with sensor noise (simulated nominal features) {_pct(evaluation.get('design_noisy'))}",
        f"perfect fabrication (error-free optics, this bench) {_pct(evaluation.get('perfect_fabrication'))}",
        f"calibration layer only (no retraining) {_pct(evaluation['calibration_layer'])}"]) + "."]
    teacher = evaluation.get("teacher")
    if teacher is not None:
        lines.append(f"- Teacher: {_pct(teacher['teacher'])} against the design's {_pct(teacher['design'])} on the same "
                     f"test images (required: {100 * teacher['margin']:g} points above)"
                     + ("." if teacher["usable"] else f": too weak, so {', '.join(evaluation['left_out'])} "
                        "are left out."))
    if design is not None:
        key = f"val_{design.get('metric', 'accuracy')}"
        last = design["curve"][-1][key] if design["curve"] else None
        lines.append(f"- Design: {'converged' if design['converged'] else 'NOT converged'} by the criterion "
                     f"({design['criterion']}); {len(design['curve'])} epochs, {design['schedule']} lr, last validation "
                     f"{metric_name} {_pct(last)}"
                     + ("." if design["converged"] else ": a smaller recipe than convergence; design_ft keeps the "
                        "recovered share honest."))
    if capture is not None and "exposure" in capture:
        sets = {k: v for k, v in capture.items() if isinstance(v, dict) and "clipped_pixel_fraction" in v}
        lines.append(f"- Capture exposure {capture['exposure']['exposure_s']:.4g} s ({capture['exposure']['chosen']}); "
                     "clipped pixels / frames with any: " + ", ".join(
                         f"{k} {100 * v['clipped_pixel_fraction']:.3f} % / {100 * v['clipped_frame_fraction']:.1f} %"
                         for k, v in sets.items()) + ".")
    if keys:
        lines += ["", f"Fine-tuned backend, {metric_name} % (" + ("mean ± std over seeds; " if seeds != [1] else "")
                  + "in brackets: the share of the fabrication loss won back, (method - uncompensated) / "
                  "(design_ft - uncompensated)):", "",
                  "| method | " + " | ".join(f"{100 * float(k):g} % captured" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for method, fractions in {"design_ft (control)": control, **by_fraction}.items():
            lines.append(f"| {method} | " + " | ".join(_cell(fractions[k]) if k in fractions else "" for k in keys) + " |")
    lines.append("")
    if calibration.fit is not None:
        lines.append(f"PSF residual: {calibration.fit.psf_residual_before:.3f} against the design, "
                     f"{calibration.fit.psf_residual_after:.3f} against the calibrated model.")
    lines += ["", "Step times (s): " + ", ".join(f"{k} {v:g}" for k, v in seconds.items()), "",
              "Plots: " + ", ".join(plots.values()) + "; every figure: report.json."]
    return lines


__all__ = ["CALIBRATION_REPORT_DIR", "REPORT_FILES", "report", "summary_lines"]
