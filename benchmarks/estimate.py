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

Matched size (``--matched``, issue 21; adds ``matched_size`` and ``mean_abs_error_matched`` to the JSON,
keeping its other keys): the estimate and the trained students on the SAME number of training images
(``--matched-size``, default 10 000), over several seeds (``--seeds``). A seed fixes the estimate's
random kernel bank (the student's own initial kernels) and data subset, and the student's
initialisation, training subset and batch order. Students are trained to convergence: Adam 3e-3 with a
cosine decay to 0 over at most ``--max-epochs`` epochs, early stopping after ``--patience`` epochs
without a better validation accuracy (2 000 held-out images, as the estimate's validation split), the
best validation epoch kept; the curve's last epochs are recorded. Per kernel count: the estimate, the
trained accuracy and their difference, each as a mean and 95 % t interval over the seeds. Each
(seed, kernel count) step is recorded in ``--work-dir``/matched and read back on a rerun.

Usage::

    python benchmarks/estimate.py                       # -> benchmarks/results/estimate.json
    python benchmarks/estimate.py --quick --out /tmp/estimate_quick.json --work-dir /tmp/estimate_quick
    nice -n 15 python benchmarks/estimate.py --matched --seeds 0 1 2 --kernels 8 64   # matched size only
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hil.api import train  # noqa: E402
from onn_core.files import atomic_write  # noqa: E402

log = logging.getLogger("benchmarks.estimate")

#: The optical student of every row; ``num_kernels`` is set per row.
MODEL = {"name": "optical_student", "image_size": 28, "kernel_size": 7, "hidden": [32], "pool": 2, "num_classes": 10}


def student_config(num_kernels: int, epochs: int, seed: int, train_subset: int | None, *, val_size: int = 5000,
                   patience: int = 3, threads: int = 2) -> dict:
    """The ``hil train`` run config of one trained row: examples/train_fmnist_ntkd.yaml's data and
    batch, task loss, random-init kernels; Adam at 3e-3 with a cosine schedule (the NTKD benchmark's
    tuning found 1e-3 the worst of its learning rates for this student)."""
    return {
        "job": "student", "task": "classification", "seed": seed,
        "model": {**MODEL, "num_kernels": num_kernels, "seed": seed},
        "data": {"dataset": "fashion_mnist", "val_size": val_size, "train_subset": train_subset, "batch_size": 128},
        "loss": {"method": "task"},
        "optim": {"name": "adam", "lr": 3e-3, "schedule": "cosine"},
        "train": {"epochs": epochs, "early_stopping_patience": patience, "progress": False, "threads": threads},
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


def estimate_rows(kernels: list[int], train_size: int, test_size: int | None, extrapolate_to: int | None, seed: int,
                  work: Path, threads: int | None = None) -> tuple[dict, float]:
    """One :func:`hil.estimate.estimate` run over the kernel counts and infinitely many; returns
    ``({kernels or None: KernelEstimate}, wall seconds)``."""
    from hil.estimate import estimate

    config = {
        "task": "classification", "seed": seed, "model": {**MODEL, "num_kernels": kernels[0], "seed": seed},
        "data": {"dataset": "fashion_mnist", "train_size": train_size, "val_size": 2000, "test_size": test_size,
                 "extrapolate_to": extrapolate_to},
        "sweep": {"kernels": kernels}, "threads": threads,
    }
    start = time.perf_counter()
    result = estimate(config, work / "estimate", progress=False)
    seconds = time.perf_counter() - start
    return {e.kernels: e for e in [*result.sweep, result.infinite]}, seconds


def seed_interval(values: list[float]) -> dict:
    """``{mean, ci95}`` of per-seed values: the mean and its 95 % t interval
    ``mean +- t(0.975, k - 1) sd / sqrt(k)`` over the k values (``ci95`` None for fewer than 2)."""
    if not values:
        raise ValueError("seed_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": None}
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def _rounded(stat: dict, digits: int = 2) -> dict:
    """:func:`seed_interval`'s figures rounded for the JSON."""
    return {"mean": round(stat["mean"], digits),
            "ci95": None if stat["ci95"] is None else [round(v, digits) for v in stat["ci95"]]}


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=2)


def matched_student_config(num_kernels: int, seed: int, train_size: int, max_epochs: int, patience: int) -> dict:
    """The matched-size student (module docstring): ``train_size`` images, 2 000 validation images,
    cosine decay over ``max_epochs``, early stopping with ``patience``, one thread."""
    return student_config(num_kernels, max_epochs, seed, train_size, val_size=MATCHED_VAL, patience=patience,
                          threads=1)


#: Validation images of the matched-size students and estimates.
MATCHED_VAL = 2000
#: How many of a student's last epochs are recorded.
CURVE_TAIL = 6


def run_matched(kernels: list[int], seeds: list[int], train_size: int, max_epochs: int, patience: int, work: Path,
                on_step=None) -> tuple[dict, dict]:
    """The matched-size runs not yet recorded in ``work`` (``estimates.json``: seed -> kernels ->
    estimate; ``trained.json``: "kernels/seed" -> student), seed by seed: the estimate of every kernel
    count, then each student. ``on_step()`` is called after every recorded step. Returns both records."""
    est_path, trained_path = work / "estimates.json", work / "trained.json"
    estimates, trained = _read(est_path), _read(trained_path)
    for seed in seeds:
        have = estimates.setdefault(str(seed), {})
        missing = [m for m in kernels if str(m) not in have]
        if missing:
            found, seconds = estimate_rows(missing, train_size, None, None, seed, work / f"seed{seed}", threads=1)
            for m in missing:
                e = found[m]
                have[str(m)] = {"estimated": 100 * e.metric, "interval": [100 * v for v in e.interval],
                                "seconds": e.seconds, "train_points": e.train_points}
            have["inf"] = {"estimated": 100 * found[None].metric, "seconds": found[None].seconds}
            _write(est_path, estimates)
            if on_step:
                on_step()
        for m in kernels:
            key = f"{m}/{seed}"
            if key in trained:
                continue
            start = time.perf_counter()
            result = train(matched_student_config(m, seed, train_size, max_epochs, patience),
                           work / f"kernels{m}_seed{seed}")
            trained[key] = {"trained": 100 * result.test_metrics["accuracy"], "seconds": time.perf_counter() - start,
                            "epochs": result.epochs_completed, "best_epoch": result.best_epoch,
                            "stopped_early": result.stopped_early,
                            "last_epochs": [{"epoch": h["epoch"], "train_loss": round(h["train_loss"], 4),
                                             "val_accuracy": round(100 * h["val_accuracy"], 2)}
                                            for h in result.history[-CURVE_TAIL:]]}
            log.info("matched: %d kernels, seed %d: %.2f %% after %d epochs (best %s)", m, seed,
                     trained[key]["trained"], result.epochs_completed, result.best_epoch)
            _write(trained_path, trained)
            if on_step:
                on_step()
    return estimates, trained


def matched_summary(kernels: list[int], estimates: dict, trained: dict) -> tuple[list[dict], float | None]:
    """Per kernel count, over the seeds with both an estimate and a trained student: the per-seed
    figures and the mean and 95 % t interval of the estimate, the trained accuracy and the error
    (estimated - trained, points); and the mean over kernel counts of ``|error_mean|`` (None without
    rows). Kernel counts without a finished seed are left out."""
    rows = []
    for m in kernels:
        per_seed = []
        for seed in sorted(int(s) for s in estimates):
            e, t = estimates[str(seed)].get(str(m)), trained.get(f"{m}/{seed}")
            if e is None or t is None:
                continue
            per_seed.append({"seed": seed, "estimated": round(e["estimated"], 2), "trained": round(t["trained"], 2),
                             "error": round(e["estimated"] - t["trained"], 2),
                             "estimate_seconds": round(e["seconds"], 1), "training_seconds": round(t["seconds"], 1),
                             **{k: t[k] for k in ("epochs", "best_epoch", "stopped_early", "last_epochs")}})
        if not per_seed:
            continue
        row = {"kernels": m, "seeds": [p["seed"] for p in per_seed]}
        exact = {"estimated": [estimates[str(p["seed"])][str(m)]["estimated"] for p in per_seed],
                 "trained": [trained[f"{m}/{p['seed']}"]["trained"] for p in per_seed]}
        exact["error"] = [e - t for e, t in zip(exact["estimated"], exact["trained"])]
        for name, values in exact.items():
            stat = _rounded(seed_interval(values))
            row[f"{name}_mean"], row[f"{name}_ci95"] = stat["mean"], stat["ci95"]
        rows.append({**row, "per_seed": per_seed})
    mean_abs = round(statistics.fmean(abs(r["error_mean"]) for r in rows), 2) if rows else None
    return rows, mean_abs


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
    parser.add_argument("--matched", action="store_true",
                        help="only the matched-size comparison (module docstring), merged into --out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="--matched: seeds")
    parser.add_argument("--matched-size", type=int, default=10000,
                        help="--matched: training images of both the estimate and the students")
    parser.add_argument("--max-epochs", type=int, default=30, help="--matched: the students' epoch cap (cosine length)")
    parser.add_argument("--patience", type=int, default=5, help="--matched: early-stopping patience (epochs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.matched:
        return main_matched(args)
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
    old = _read(args.out)
    _write(args.out, {**results, **{k: old[k] for k in MATCHED_KEYS if k in old}})
    print(json.dumps(results))
    return 0


#: The keys of estimate.json that ``--matched`` writes (kept when the main comparison is rerun).
MATCHED_KEYS = ("matched_size", "mean_abs_error_matched")


def main_matched(args) -> int:
    """``--matched``: run what is not yet recorded, rewriting ``matched_size`` in ``args.out`` (its other
    keys kept) after every step."""
    torch.set_num_threads(1)
    work = args.work_dir / "matched"
    started = datetime.datetime.now().isoformat(timespec="seconds")

    def write(estimates=None, trained=None):
        estimates = _read(work / "estimates.json") if estimates is None else estimates
        trained = _read(work / "trained.json") if trained is None else trained
        rows, mean_abs = matched_summary(args.kernels, estimates, trained)
        complete = all(f"{m}/{s}" in trained and str(m) in estimates.get(str(s), {})
                       for m in args.kernels for s in args.seeds)
        inf = [estimates[str(s)]["inf"]["estimated"] for s in args.seeds if "inf" in estimates.get(str(s), {})]
        block = {
            "train_size": args.matched_size, "seeds": args.seeds, "kernels": args.kernels, "complete": complete,
            "started": started, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1,
                        "note": "shared machine, nice 15, one torch thread"},
            "student": matched_student_config(args.kernels[0], args.seeds[0], args.matched_size, args.max_epochs,
                                              args.patience),
            "convergence": f"Adam 3e-3, cosine decay to 0 over at most {args.max_epochs} epochs; stop after "
                           f"{args.patience} epochs without a better validation accuracy ({MATCHED_VAL} held-out "
                           "images); the best validation epoch is tested; per seed the last epochs are in last_epochs",
            "estimate": {"train_size": args.matched_size, "val_size": MATCHED_VAL, "test_size": "whole test split",
                         "random bank": "the seed's student's initial kernels"},
            "rows": rows,
            "infinite_width": {**_rounded(seed_interval(inf)), "per_seed": [round(v, 2) for v in inf]} if inf else None,
        }
        results = _read(args.out)
        results.update({"matched_size": block, "mean_abs_error_matched": mean_abs})
        _write(args.out, results)

    estimates, trained = run_matched(args.kernels, args.seeds, args.matched_size, args.max_epochs, args.patience,
                                     work, on_step=write)
    write(estimates, trained)
    for r in _read(args.out)["matched_size"]["rows"]:
        print(f"{r['kernels']:>5} kernels: estimated {r['estimated_mean']:.2f} {r['estimated_ci95']}, trained "
              f"{r['trained_mean']:.2f} {r['trained_ci95']}, error {r['error_mean']:+.2f} {r['error_ci95']} "
              f"(seeds {r['seeds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
