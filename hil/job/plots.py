"""The job's figures (PNG, matplotlib on the Agg backend, written atomically): accuracy against the
captured fraction, the fine-tuning curves and the design's validation curve. The PSF figure is the calibration report's
(:func:`calibration.plotting.plot_psfs`)."""

from __future__ import annotations

from calibration.plotting import pyplot, save_figure


def plot_accuracy(evaluation: dict, path, *, metric_name: str = "accuracy") -> bool:
    """Test accuracy (%) of every fine-tuning method and the ``design_ft`` control against the captured
    fraction (log axis; error bars: std over seeds, none for one seed), with the design,
    perfect-fabrication, calibration-layer and uncompensated accuracies as lines; False (nothing written) when
    ``evaluation`` has no fine-tuned backend. ``metric_name``: what the figures are (``mIoU`` for
    segmentation)."""
    by_fraction = evaluation["by_fraction"]
    if not by_fraction:
        return False
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for method, fractions in {"design_ft (control)": evaluation.get("design_ft") or {}, **by_fraction}.items():
        keys = sorted(fractions, key=float)
        if not keys:
            continue
        ax.errorbar([100 * float(k) for k in keys], [100 * fractions[k]["mean"] for k in keys],
                    yerr=[100 * (fractions[k]["std"] or 0.0) for k in keys], marker="o", capsize=3, label=method,
                    **({"color": "k", "linestyle": ":"} if method.startswith("design_ft") else {}))
    for name, color, style in (("design", "k", "--"), ("perfect_fabrication", "b", "-."), ("calibration_layer", "g", ":"),
                               ("uncompensated", "r", "--")):
        if evaluation.get(name) is not None:
            ax.axhline(100 * evaluation[name], color=color, linestyle=style, label=name)
    ax.set_xscale("log")
    ticks = sorted({100 * float(k) for fractions in by_fraction.values() for k in fractions})
    ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("captured fraction of the training split (%)")
    ax.set_ylabel(f"test {metric_name} on captured frames (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def plot_curves(results: dict, path) -> bool:
    """Training loss against step of the first seed of every method and fraction of ``results``
    (``finetune.json``); False (nothing written) when no run recorded a curve."""
    curves = [(f"{method} {key}", entries[0]["curve"]) for method, fractions in results.items()
              for key, entries in fractions.items() if entries and entries[0]["curve"]]
    if not curves:
        return False
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for label, curve in curves:
        ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path)
    return True


def plot_design_curve(design: dict | None, path, *, metric_name: str = "accuracy") -> bool:
    """The design student's validation accuracy (%) against epoch (:func:`hil.job.controls.design_convergence`);
    False (nothing written) without a curve."""
    if not design or not design["curve"]:
        return False
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    curve = design["curve"]
    key = f"val_{design.get('metric', 'accuracy')}"
    ax.plot([c["epoch"] for c in curve], [100 * c[key] for c in curve], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"design validation {metric_name} (%)")
    ax.set_title(f"design: {'converged' if design['converged'] else 'not converged'} ({design['schedule']} lr)", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


__all__ = ["plot_accuracy", "plot_curves", "plot_design_curve"]
