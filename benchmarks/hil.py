"""Hardware-in-the-loop benchmark (issue 10): how much of the accuracy that fabrication costs does each
post-fabrication compensation win back, with 1 %, 3 % and 10 % of the training split captured?

The job is ``examples/run_sim.yaml`` (what ``make demo`` runs): the 8-kernel Fashion-MNIST student
trained in simulation, its design fabricated on the simulated bench with the default errors of
``examples/optics_fabricated.yaml``, calibrated, captured (the fractions nest in the 10 % capture) and a
held-out captured test set of 2 000 images. This script reuses that run folder (``--run-dir``, default
``out/demo``; it runs the job there first if it has no report) and adds:

1. a captured **validation** set: ``--val-size`` training images outside every captured fraction and
   outside the images the student was trained on (a backend that stays close to the design's would
   otherwise score well on images it memorised, which biases the tuning towards small learning rates);
2. **equal tuning**: every method (e2e, ntkd, e2e_synthetic, ntkd_synthetic) gets the same
   learning-rate grid (``--lrs``), the same number of Adam steps, batch and (for the synthetic ones) the
   same synthetic set, trained on tuning seed 100 at the middle fraction (``--tune-fraction``, 3 %) and
   scored on the validation captures; the best learning rate per method is kept for every fraction
   (one tuning fraction keeps the budget: a finer per-fraction grid is left to a longer run);
3. the chosen setting on ``--seeds`` (0, 1, 2: batch order and the NTK projections differ; every run
   starts from the student's own backend), scored on the held-out captured test set. Seeds run
   outermost, so an unfinished run has the same seeds for every method and fraction.

``recovered_fraction`` = (mean - uncompensated) / (design - uncompensated). Resumable: every fine-tuning
run is stored in the run folder as it finishes (``tune_lr*.json``, ``bench.json``), and the results JSON
is rewritten after every phase; a run that cannot finish leaves ``complete: false``. ``run_seconds`` and
``capture_frames_per_s`` come from a separate fresh run of the job, timed end to end (``--timing-dir``).

Usage::

    nice -n 19 python benchmarks/hil.py [--run-dir out/demo] [--timing-dir out/demo_timing]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hil import job as steps  # noqa: E402
from hil.capture import capture, stratified_indices  # noqa: E402
from hil.checkpoint import load_model  # noqa: E402
from hil.finetune import captured_features  # noqa: E402
from onn_core import config as config_io  # noqa: E402

log = logging.getLogger("benchmarks.hil")
TUNING_SEED = 100


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "run_sim.yaml")
    parser.add_argument("--run-dir", type=Path, default=REPO / "out" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hil.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--tune-fraction", type=float, default=0.03)
    parser.add_argument("--timing-dir", type=Path, default=REPO / "out" / "demo_timing",
                        help="a fresh run of the job timed end to end (run_seconds, capture_frames_per_s); the job is "
                             "run there first unless it holds timing.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    started = time.perf_counter()

    timing = timed_run(args.config, args.timing_dir)
    job = steps.load_job(args.config, args.run_dir)
    if not (job.run_dir / "report.json").is_file():
        steps.run_job(job, progress=False)
    models = steps.train_models(job)
    design_file = job.run_dir / "design" / "optics.yaml"
    _, design_id = steps.design_identity(design_file)
    calibration = steps.load_job_calibration(job, design_id)
    student = load_model(models["student"])
    train_split, test_split = steps.datasets(job)
    capture_info = json.loads((args.timing_dir / "capture.json").read_text())

    # 1. validation captures, outside every captured fraction
    val_file = job.run_dir / "captures" / "val_unseen.h5"
    plan = steps.capture_plan(job, train_split.tensors[1].numpy(), test_split.tensors[1].numpy())
    seen = np.union1d(plan["train"], student_training_indices(models["student"], train_split))
    val_indices = stratified_indices(train_split.tensors[1].numpy(), args.val_size / len(train_split), 7, exclude=seen)
    with steps.open_job_bench(job, steps.bench_config(job, design_file)) as bench:
        capture(bench, train_split, val_indices, val_file, calibration_id=calibration.calibration_id,
                design_id=design_id, progress=False)
    val = captured_features(val_file, calibration.layer(), design_id=design_id)
    base = job.config.finetune
    result = {"benchmark": "hil", "complete": False,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
              "settings": {"config": str(args.config.relative_to(REPO)), "run_dir": str(job.run_dir),
                           "fabrication": config_io.load_yaml(job.path(job.config.fabrication))["errors"],
                           "finetune": {**config_io.to_plain(base), "seeds": args.seeds},
                           "tuning": {"lrs": args.lrs, "seed": TUNING_SEED, "validation_captures": len(val),
                                      "fraction": args.tune_fraction,
                                      "what": "learning rate per method, chosen at one fraction; steps, batch, "
                                              "synthetic set and NTKD loss fixed and equal for every method"},
                           "test_captures": None},
              "capture_frames_per_s": capture_info["frames_per_s"],
              "capture_clock": job.config.clock or "bench",
              "run_seconds": timing["run_seconds"], "run_timing": timing}
    evaluation = steps.evaluate(job, student, calibration, design_id, name="bench")
    result.update({k: evaluation[k] for k in ("design", "uncompensated", "calibration_layer")})
    result["settings"]["test_captures"] = evaluation["test_samples"]
    write(args.out, result)

    # 2. equal tuning on the validation captures
    reference = {"design": result["design"], "uncompensated": result["uncompensated"]}
    tuning: dict = {}
    for lr in args.lrs:
        settings = dataclasses.replace(base, lr=lr, seeds=[TUNING_SEED])
        runs = steps.finetune_all(job, student, calibration, design_id, models["teacher"], settings=settings,
                                  fractions=[args.tune_fraction], name=f"tune_unseen_lr{lr:g}")
        for method, fractions in steps.score_runs(job, student, val, runs, reference, design_id=design_id,
                                                  calibration_id=calibration.calibration_id).items():
            tuning.setdefault(method, {})[f"{lr:g}"] = fractions[steps.fraction_key(args.tune_fraction)]["mean"]
        result["tuning"] = {"validation_accuracy": tuning, "fraction": args.tune_fraction}
        write(args.out, result)
    chosen = {m: float(max(v, key=v.get)) for m, v in tuning.items()}
    result["settings"]["chosen_lr"] = chosen

    # 3. the chosen settings on every seed (outermost), scored on the held-out captured test set; the runs
    #    of each learning rate are kept apart (final_lr*.json), bench.json gathers each method's chosen ones
    for seed in args.seeds:
        for method in base.methods:
            settings = dataclasses.replace(base, methods=[method], lr=chosen[method], seeds=[seed])
            steps.finetune_all(job, student, calibration, design_id, models["teacher"], settings=settings,
                               name=f"final_lr{chosen[method]:g}")
        gathered = {m: json.loads((job.run_dir / f"final_lr{chosen[m]:g}.json").read_text()).get(m, {})
                    for m in base.methods}
        write(job.run_dir / "bench.json", gathered)
        evaluation = steps.evaluate(job, student, calibration, design_id, name="bench")
        result["by_fraction"] = {m: {k: {f: v[f] for f in ("mean", "std", "seeds", "recovered_fraction", "accuracies")}
                                     for k, v in fr.items()} for m, fr in evaluation["by_fraction"].items()}
        write(args.out, result)
    runs = json.loads((job.run_dir / "bench.json").read_text())
    result["step_seconds"] = {m: float(np.mean([e["mean_step_s"] for es in fr.values() for e in es]))
                              for m, fr in runs.items()}
    result["complete"] = all(len(result["by_fraction"].get(m, {})) == len(job.config.capture.fractions) and
                             all(cell["seeds"] == args.seeds for cell in result["by_fraction"][m].values())
                             for m in base.methods)
    result["benchmark_seconds"] = time.perf_counter() - started
    write(args.out, result)
    print(json.dumps({k: result[k] for k in ("design", "uncompensated", "calibration_layer", "complete")}))
    return 0


def student_training_indices(student_run: str, train_split) -> np.ndarray:
    """Indices of the training split the student of ``student_run`` trained on (its run config's split)."""
    from hil.api import split_train_val
    from hil.checkpoint import load_checkpoint

    config = load_checkpoint(Path(student_run) / "checkpoints" / "last.pt")["config"]
    data = config["data"]
    subset, _ = split_train_val(train_split, data["val_size"], data["train_subset"], config["seed"])
    return np.asarray(subset.indices)


def timed_run(config: Path, folder: Path) -> dict:
    """``make demo``'s job run end to end into a fresh ``folder`` and timed (``timing.json``), once."""
    file = folder / "timing.json"
    if not file.is_file():
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder} is not empty and has no timing.json: give a fresh --timing-dir")
        start = time.perf_counter()
        steps.run_job(steps.load_job(config, folder), progress=False)
        write(file, {"run_seconds": time.perf_counter() - start, "command": "hil.job.run_job (what make demo runs)",
                     "load_average_at_end": list(os.getloadavg())})
    return json.loads(file.read_text())


def write(path: Path, value: dict) -> None:
    from onn_core.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        json.dump(value, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
