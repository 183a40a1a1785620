"""Estimate benchmark (docs/method.md#accuracy-estimate): the NTK accuracy estimate against trained optical students.

On Fashion-MNIST, random-init optical students with 8, 64 and 512 signed 7x7 kernels (2 FC layers,
hidden 32, pool 2, ideal optics with the default gamma-2.2 8-bit display) are trained as ``hil train``
does (:func:`hil.api.train`, task loss, Adam), and :func:`hil.estimate.estimate` estimates the same
architectures before any training: one kernel-regression estimate per kernel count (the empirical
NTK of a random bank of that many kernels) and the infinite-width estimate. Reported: each row's
absolute error (estimated - trained, points), the estimator's run time and the training time it saves,
and the analytic kernel's relative distance to the empirical NTK of wide random networks (``ntk_check``).

Training runs are written under ``--work-dir`` (one folder per kernel count, resumable: a finished
run is read back, not retrained); their accuracy and wall time are kept in ``trained.json`` there.

Usage::

    python benchmarks/estimate.py                       # -> benchmarks/results/estimate.json
    python benchmarks/estimate.py --quick --out /tmp/estimate_quick.json --work-dir /tmp/estimate_quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hil.api import train  # noqa: E402
from onn_core.files import atomic_write  # noqa: E402

log = logging.getLogger("benchmarks.estimate")

#: The optical student of every row; ``num_kernels`` is set per row.
MODEL = {"name": "optical_student", "image_size": 28, "kernel_size": 7, "hidden": [32], "pool": 2, "num_classes": 10}


def student_config(num_kernels: int, epochs: int, seed: int, train_subset: int | None) -> dict:
    """The ``hil train`` run config of one trained row: examples/train_fmnist_ntkd.yaml's data and
    batch, task loss, random-init kernels; Adam at 3e-3 with a cosine schedule (the NTKD benchmark's
    tuning found 1e-3 the worst of its learning rates for this student)."""
    return {
        "job": "student", "task": "classification", "seed": seed,
        "model": {**MODEL, "num_kernels": num_kernels, "seed": seed},
        "data": {"dataset": "fashion_mnist", "val_size": 5000, "train_subset": train_subset, "batch_size": 128},
        "loss": {"method": "task"},
        "optim": {"name": "adam", "lr": 3e-3, "schedule": "cosine"},
        "train": {"epochs": epochs, "early_stopping_patience": 3, "progress": False, "threads": 2},
    }


def train_students(kernels: list[int], epochs: int, seed: int, train_subset: int | None, work: Path) -> dict:
    """``{kernels: {"accuracy": %, "seconds": s, "epochs": e}}``, training the rows not yet in
    ``work/trained.json`` (an interrupted run resumes from its checkpoint)."""
    record_path = work / "trained.json"
    done = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for m in kernels:
        key = str(m)
        if key in done:
            log.info("%d kernels: trained before, %.2f %%", m, done[key]["accuracy"])
            continue
        start = time.perf_counter()
        result = train(student_config(m, epochs, seed, train_subset), work / f"kernels{m}")
        seconds = time.perf_counter() - start
        done[key] = {"accuracy": 100 * result.test_metrics["accuracy"], "seconds": seconds,
                     "epochs": result.epochs_completed, "best_epoch": result.best_epoch}
        log.info("%d kernels: trained %.2f %% in %.0f s", m, done[key]["accuracy"], seconds)
        work.mkdir(parents=True, exist_ok=True)
        with atomic_write(record_path, "w") as f:
            json.dump(done, f, indent=2)
    return {int(k): v for k, v in done.items()}


def estimate_rows(kernels: list[int], train_size: int, test_size: int | None, extrapolate_to: int, seed: int,
                  work: Path) -> tuple[dict, float]:
    """One :func:`hil.estimate.estimate` run over the kernel counts and infinitely many; returns
    ``({kernels or None: KernelEstimate}, wall seconds)``."""
    from hil.estimate import estimate

    config = {
        "task": "classification", "seed": seed, "model": {**MODEL, "num_kernels": kernels[0], "seed": seed},
        "data": {"dataset": "fashion_mnist", "train_size": train_size, "val_size": 2000, "test_size": test_size,
                 "extrapolate_to": extrapolate_to},
        "sweep": {"kernels": kernels},
    }
    start = time.perf_counter()
    result = estimate(config, work / "estimate", progress=False)
    seconds = time.perf_counter() - start
    return {e.kernels: e for e in [*result.sweep, result.infinite]}, seconds


def ntk_check(widths: list[int], seeds: int = 6) -> list[dict]:
    """The analytic kernel against the empirical NTK (:func:`hil.ntk.empirical_ntk`, exact) of wide
    random networks (:class:`hil.estimate.WideStudent`) on 6 Fashion-MNIST test images through the
    student's display, cropped to their central 12 x 12 pixels so that the widest network's Jacobian
    fits in memory (7 x 7 kernels, pool 6, one hidden layer, 2 outputs). Per width: the mean relative
    Frobenius error of ``seeds`` networks' kernels (finite-width fluctuation, ~ 1/sqrt(width)) and the
    relative error of their average (what is left of it: the bias, plus fluctuation / sqrt(seeds))."""
    from hil.data import build_datasets
    from hil.estimate import ArchitectureKernel, WideStudent
    from hil.models import build_model
    from hil.ntk import empirical_ntk

    frontend = build_model({**MODEL, "num_kernels": 8}).frontend
    images = build_datasets({"dataset": "fashion_mnist"}, "classification")[1].tensors[0][:6]
    radiance = frontend.relative_radiance(frontend.gray_levels(images), frontend.fabricated_psfs())
    radiance = radiance[..., 8:20, 8:20].double()
    kernel = ArchitectureKernel(7, 1, 6)
    points = kernel.features(radiance)
    analytic = kernel(points, points)
    out = []
    for width in widths:
        errors, mean = [], torch.zeros_like(analytic)
        for seed in range(seeds):
            net = WideStudent((1, 12, 12), 7, 6, 1, width, 2, seed=seed)
            empirical = empirical_ntk(net, radiance).detach() / 2
            errors.append(float((empirical - analytic).norm() / analytic.norm()))
            mean += empirical / seeds
        out.append({"width": width, "relative_error": round(statistics.mean(errors), 4),
                    "relative_error_of_mean": round(float((mean - analytic).norm() / analytic.norm()), 4)})
        log.info("NTK check: width %d, relative error %.4f (of the mean of %d: %.4f)", width,
                 out[-1]["relative_error"], seeds, out[-1]["relative_error_of_mean"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="+", type=int, default=[8, 64, 512])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of each student")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=10000, help="training points of the kernel regression")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_estimate")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "estimate.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 training images, 1 epoch, small estimate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    train_subset, test_size = (2000, 1000) if args.quick else (None, None)
    epochs, train_size = (1, 500) if args.quick else (args.epochs, args.train_size)
    trained = train_students(args.kernels, epochs, args.seed, train_subset, args.work_dir)
    student_points = train_subset or 60000 - 5000  # what each student is trained on (val_size 5000 held out)
    estimates, estimate_seconds = estimate_rows(args.kernels, train_size, test_size, student_points, args.seed,
                                                args.work_dir)
    rows = []
    for m in args.kernels:
        e, t = estimates[m], trained[m]
        rows.append({
            "kernels": m, "estimated": round(100 * e.metric, 2),
            "interval": [round(100 * v, 2) for v in e.interval],
            "estimated_extrapolated": round(100 * e.extrapolated, 2),
            "extrapolated_interval": [round(100 * v, 2) for v in e.extrapolated_interval],
            "trained": round(t["accuracy"], 2),
            "error": round(100 * e.metric - t["accuracy"], 2),
            "error_extrapolated": round(100 * e.extrapolated - t["accuracy"], 2),
            "estimate_seconds": round(e.seconds, 1), "training_seconds": round(t["seconds"], 1),
            "training_epochs": t["epochs"],
            "learning_curve": {str(k): round(100 * v, 2) for k, v in e.learning_curve.items()},
        })
    check = ntk_check([16, 64, 256, 1024])
    inf = estimates[None]
    training_seconds = sum(trained[m]["seconds"] for m in args.kernels)
    results = {
        "benchmark": "estimate", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        "settings": {
            "student": student_config(args.kernels[0], epochs, args.seed, train_subset),
            "student_points": student_points,
            "estimate": {"train_size": train_size, "val_size": 2000, "test_size": test_size or "whole test split",
                         "extrapolate_to": student_points, "kernel": "NTK, NTK parameterisation, sigma_w^2 = 2, "
                         "sigma_b^2 = 0.1, frontend trained; random banks = the students' initial kernels"},
            "seeds": [args.seed], "quick": args.quick,
        },
        "rows": rows,
        "ntk_check": check,
        "infinite_width_estimate": round(100 * inf.metric, 2),
        "infinite_width_interval": [round(100 * v, 2) for v in inf.interval],
        "infinite_width_extrapolated": round(100 * inf.extrapolated, 2),
        "infinite_width_seconds": round(inf.seconds, 1),
        "seconds": round(estimate_seconds, 1),
        "training_seconds": round(training_seconds, 1),
        "training_over_estimate": round(training_seconds / estimate_seconds, 2),
        "mean_abs_error_64_up": round(statistics.mean(abs(r["error"]) for r in rows if r["kernels"] >= 64), 2)
        if any(r["kernels"] >= 64 for r in rows) else None,
        "mean_abs_error_extrapolated_64_up": round(statistics.mean(abs(r["error_extrapolated"]) for r in rows
                                                                  if r["kernels"] >= 64), 2)
        if any(r["kernels"] >= 64 for r in rows) else None,
    }
    print(f"{'kernels':>8} {'estimated %':>12} {'extrapolated %':>15} {'trained %':>10} {'error':>7} "
          f"{'error extr.':>11} {'estimate s':>11} {'training s':>11}")
    for r in rows:
        print(f"{r['kernels']:>8} {r['estimated']:12.2f} {r['estimated_extrapolated']:15.2f} {r['trained']:10.2f} "
              f"{r['error']:+7.2f} {r['error_extrapolated']:+11.2f} {r['estimate_seconds']:11.0f} "
              f"{r['training_seconds']:11.0f}")
    print(f"{'inf':>8} {results['infinite_width_estimate']:12.2f} {results['infinite_width_extrapolated']:15.2f}")
    print(f"estimate: {results['seconds']:.0f} s for all rows; training: {results['training_seconds']:.0f} s "
          f"({results['training_over_estimate']:.1f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
