"""The hardware-in-the-loop job, ``hil run CONFIG``: train -> export design -> fabricate/open the bench
-> calibrate -> capture -> fine-tune -> evaluate -> report, into one run folder (METHOD.md stage 3).

Each step is a plain function a bench script can call on its own (see ``examples/hil_job.py``):

=================  ===========================================================================
step               writes (inside the run folder)
=================  ===========================================================================
:func:`train_models`     ``student/`` (a ``hil train`` run, or the given trained run is used as is),
                         ``teacher/`` when an NTKD method is asked for and no checkpoint is given
:func:`export`           ``design/`` (``kernels.npy`` + ``optics.yaml``, :func:`hil.export.export_design`)
:func:`bench_config`     ``bench.yaml``: the bench config; on a simulated bench its camera looks
                         through the exported design with the fabrication errors of ``fabrication``
:func:`calibrate_bench`  ``calibration.h5`` (:func:`calibration.calibrate`, never overwritten)
:func:`capture_sets`     ``captures/train.h5`` (the largest captured fraction of the training split;
                         the smaller fractions are its first rows of every class, so nested) and
                         ``captures/test.h5`` (the held-out captured test set)
:func:`finetune_all`     ``finetune/<method>_<fraction>.pt`` + ``finetune.json`` (one entry per method,
                         fraction and seed, written as each finishes)
:func:`evaluate`         ``evaluation.json``: design accuracy (simulation), uncompensated (nominal
                         features, no calibration), calibration layer only, and every fine-tuned backend
:func:`report`           ``report.json``, ``summary.md``, ``psfs.png``, ``accuracy.png``, ``curves.png``
=================  ===========================================================================

:func:`run_job` runs them in order and records each finished step in ``state.json``; a rerun skips
the finished steps (and a step stopped midway resumes: training from its checkpoint, a capture
after its last complete frame, fine-tuning after its last finished method).

The compensation methods (:data:`hil.finetune.COMPENSATIONS`): ``e2e`` (task loss on the real captures
read through the calibration layer), ``ntkd`` (task + NTK distillation from a teacher that sees the raw
images of the same samples), and each of the two with **synthetic captures** added: training images
that were not captured, rendered through the calibrated forward model and read through the same layer
(:func:`hil.finetune.synthetic_features`). Every method gets the same fixed number of optimiser steps,
learning rate and batch size.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulator import config as config_io
from onn_core.errors import ConfigError, HilError, InputError
from onn_core.files import atomic_write

from .finetune import COMPENSATIONS

log = logging.getLogger(__name__)

STEPS = ("train", "export", "calibrate", "capture", "finetune", "evaluate", "report")


class BenchMismatchError(HilError):
    """The design does not fit the bench (display size, frame size, bit depth)."""


@dataclass
class TrainStep:
    """How a model is obtained: trained here from a ``hil train`` config (``config``, with ``set``:
    ``{dotted path: value}`` overrides, as ``hil train --set``), or an existing run folder ``run_dir``
    (or, for the teacher, a ``checkpoint`` file)."""

    config: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    checkpoint: str | None = None

    def __post_init__(self):
        given = [name for name in ("config", "run_dir", "checkpoint") if getattr(self, name)]
        if len(given) != 1:
            raise ConfigError("config | run_dir | checkpoint", given, "exactly one of them")


@dataclass
class CaptureStep:
    """Which samples are captured: stratified ``fractions`` of the training split (each per class; the
    largest is captured, the others are nested in it) and ``test_size`` held-out test images, drawn
    with ``seed``."""

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1])
    test_size: int = 2000
    seed: int = 0


@dataclass
class FinetuneStep:
    """The compensation: ``methods`` (of :data:`hil.finetune.COMPENSATIONS`), each trained for ``steps``
    Adam steps of ``batch_size`` at ``lr`` on every captured fraction, once per seed of ``seeds``;
    ``synthetic``: how many uncaptured training images the synthetic methods render; ``loss``: NTKD
    settings (:class:`hil.config.LossConfig` fields)."""

    methods: list[str] = field(default_factory=lambda: list(COMPENSATIONS))
    steps: int = 400
    lr: float = 3e-3
    batch_size: int = 64
    seeds: list[int] = field(default_factory=lambda: [0])
    synthetic: int = 5000
    loss: dict[str, Any] = field(default_factory=lambda: {"kernel_batch": 64, "student_method": "exact_mlp",
                                                          "teacher_method": "jvp_projection"})

    def __post_init__(self):
        bad = [m for m in self.methods if m not in COMPENSATIONS]
        if bad or not self.methods:
            raise ConfigError("finetune.methods", self.methods, f"a non-empty list of {list(COMPENSATIONS)}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.synthetic < 0 or not self.seeds:
            raise ConfigError("finetune", {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
                                           "synthetic": self.synthetic, "seeds": self.seeds},
                              "steps >= 1, batch_size >= 1, lr > 0, synthetic >= 0, at least one seed")


@dataclass
class JobConfig:
    """A ``hil run`` config (examples/run_sim.yaml). Relative paths are relative to the config file.
    ``clock`` overrides the bench's (``virtual``: a simulated bench runs as fast as it renders)."""

    out_dir: str
    bench: str
    student: TrainStep
    teacher: TrainStep | None = None
    fabrication: str | None = None
    data: dict[str, Any] = field(default_factory=lambda: {"dataset": "fashion_mnist"})
    calibration: dict[str, Any] = field(default_factory=dict)
    capture: CaptureStep = field(default_factory=CaptureStep)
    finetune: FinetuneStep = field(default_factory=FinetuneStep)
    clock: str | None = None
    threads: int | None = None

    def __post_init__(self):
        if any(COMPENSATIONS[m][0] == "ntkd" for m in self.finetune.methods) and self.teacher is None:
            raise ConfigError("teacher", None, "a teacher (config, run_dir or checkpoint) for the NTKD methods "
                              f"{[m for m in self.finetune.methods if 'ntkd' in m]}")
        if not self.capture.fractions or not all(0 < f <= 1 for f in self.capture.fractions):
            raise ConfigError("capture.fractions", self.capture.fractions, "a non-empty list of numbers in (0, 1]")


@dataclass
class Job:
    """A loaded job: its config, the folder its relative paths refer to, its run folder, and optionally
    a bench script's own ``datasets = (train split, test split)`` of ``(image (C, H, W) in [0, 1], label)``
    TensorDatasets used instead of ``config.data``."""

    config: JobConfig
    base_dir: Path
    run_dir: Path
    datasets: tuple | None = None

    def path(self, value: str | None) -> Path | None:
        return None if value is None else (self.base_dir / value).resolve()


def load_job(path, out_dir=None) -> Job:
    """A :class:`Job` from a ``hil run`` YAML file (``out_dir`` overrides the config's)."""
    path = Path(path)
    cfg = config_io.build(JobConfig, config_io.load_yaml(path), "")
    base = path.resolve().parent
    run_dir = Path(out_dir).resolve() if out_dir is not None else (base / cfg.out_dir).resolve()
    return Job(cfg, base, run_dir)


# ------------------------------------------------------------------------------------------ state
def read_state(run_dir: Path) -> dict:
    file = Path(run_dir) / "state.json"
    return json.loads(file.read_text()) if file.is_file() else {"finished": [], "seconds": {}}


def mark_finished(run_dir: Path, step: str, seconds: float) -> None:
    state = read_state(run_dir)
    if step not in state["finished"]:
        state["finished"].append(step)
    state["seconds"][step] = round(seconds, 2)
    write_json(Path(run_dir) / "state.json", state)


def write_json(path: Path, value) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(value, fh, indent=2, default=_plain)


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)


class JobConfigChanged(HilError):
    """A run folder is resumed with another config than the one it was started with."""


def check_same_config(job: Job) -> None:
    """Record the config in ``config.yaml`` of a new run folder; refuse to resume one started with a
    different config (its finished steps would not be what this config asks for)."""
    from .config import config_changes

    current = config_io.to_plain(job.config)
    file = job.run_dir / "config.yaml"
    if not file.is_file():
        config_io.save_yaml(current, file)
        return
    changes = {path: values for path, values in config_changes(config_io.load_yaml(file), current).items()
               if path != "threads"}  # out_dir (where the folder is) and threads change nothing done
    if changes:
        listed = ", ".join(f"{path} = {new!r} (was {old!r})" for path, (old, new) in changes.items())
        raise JobConfigChanged(f"{job.run_dir} was started with another config: {listed}. Resume it with its own "
                               f"config ({file}) or choose another --out-dir")


# ------------------------------------------------------------------------------------------ steps
def train_models(job: Job) -> dict:
    """Train (or locate) the student and, for NTKD, the teacher; returns ``{"student": run dir,
    "teacher": checkpoint or None}``."""
    from .api import train
    from .config import load_run_config

    cfg, out = job.config, {}
    needs_teacher = any(COMPENSATIONS[m][0] != "task" for m in cfg.finetune.methods)
    for role in ("teacher", "student"):
        step: TrainStep | None = getattr(cfg, role)
        if step is None or (role == "teacher" and not needs_teacher):
            out[role] = None
            continue
        if step.run_dir or step.checkpoint:
            out[role] = str(job.path(step.run_dir or step.checkpoint))
            continue
        run_dir = job.run_dir / role
        if not (run_dir / "metrics.json").is_file() or "test" not in json.loads((run_dir / "metrics.json").read_text()):
            log.info("training the %s in simulation into %s", role, run_dir)
            train(load_run_config(job.path(step.config), step.set), run_dir)
        out[role] = str(run_dir)
    if out["student"] is not None and not Path(out["student"]).is_dir():
        raise ConfigError("student.run_dir", out["student"], "a run folder of `hil train`")
    return out


def _checkpoint_of(run_or_file: str) -> Path:
    path = Path(run_or_file)
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise ConfigError("teacher", str(path), "a checkpoint file or a run folder of `hil train` with checkpoints/")


def load_student(run_dir):
    """The trained optical student of a ``hil train`` run (eval mode, frozen)."""
    from .api import build_model
    from .checkpoint import load_checkpoint

    state = load_checkpoint(_checkpoint_of(str(run_dir)), map_location="cpu")
    model = build_model(state["config"]["model"])
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)


def export(job: Job, student_run) -> Path:
    """Export the student's optics into ``design/``; returns its ``optics.yaml``."""
    from .export import export_design

    return export_design(student_run, job.run_dir / "design")


def bench_config(job: Job, design_optics: Path) -> dict:
    """The bench mapping the job opens (also written to ``bench.yaml``): the config's bench; if its
    camera is simulated, looking through the exported design with ``fabrication``'s errors (the
    ``errors`` section of that optics file; none: the design itself)."""
    bench = config_io.load_yaml(job.path(job.config.bench))
    camera = bench.get("camera") or {}
    if camera.get("backend") == "simulated-camera":
        optics = design_config(design_optics)
        if job.config.fabrication is not None:
            fabricated = config_io.load_yaml(job.path(job.config.fabrication))
            if "errors" not in fabricated:
                raise ConfigError("fabrication", job.config.fabrication, "an optics file with an errors section")
            errors = copy.deepcopy(fabricated["errors"])
            if isinstance(errors, dict) and errors.get("aberration") is None and "aberration" in errors:
                errors.pop("aberration")
            optics["errors"] = errors
        camera["optics"] = optics
        bench["camera"] = camera
    elif job.config.fabrication is not None:
        log.warning("fabrication %s ignored: the bench's camera is real (%s)", job.config.fabrication, camera.get("backend"))
    with atomic_write(job.run_dir / "bench.yaml", "w") as fh:
        import yaml

        yaml.safe_dump(bench, fh, sort_keys=False)
    return bench


def design_config(design_optics: Path) -> dict:
    """The exported design's optics mapping with its design file's path made absolute (so that the
    systems built from it, and the calibration that records it, work from any folder)."""
    optics = config_io.load_yaml(design_optics)
    optics["design"]["path"] = str((Path(design_optics).parent / optics["design"]["path"]).resolve())
    return optics


def open_job_bench(job: Job, bench: dict):
    """Open the job's bench (relative paths in its config resolve against the config's bench file)."""
    from drivers.config import open_bench

    from drivers.clock import make_clock

    source = job.path(job.config.bench)
    clock = make_clock(job.config.clock) if job.config.clock is not None else None
    return open_bench(_with_base(bench, source.parent), clock=clock)


def _with_base(bench: dict, base: Path) -> dict:
    """``bench`` with relative file paths (``lut_file``, a camera ``source`` file) made absolute."""
    out = copy.deepcopy(bench)
    for device in ("slm", "camera", "light"):
        section = out.get(device) or {}
        for key in ("lut_file", "optics"):
            if isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
                section[key] = str((base / section[key]).resolve())
    return out


def check_fits(bench, system) -> None:
    """Refuse a design that does not fit the bench: the SLM must show the design's image, the camera
    frame must hold the design's tile layout."""
    slm, camera = tuple(bench.slm.shape), tuple(bench.camera.shape)
    problems = []
    if slm[:2] != tuple(system.image_shape):
        problems.append(f"the SLM shows {slm} pixels but the design's images are {tuple(system.image_shape)}")
    if camera != tuple(system.frame_shape):
        problems.append(f"the camera's frame is {camera} pixels but the design's {system.num_psfs} tiles "
                        f"need a {tuple(system.frame_shape)} frame")
    if problems:
        raise BenchMismatchError("the design does not fit the bench: " + "; ".join(problems))


def calibrate_bench(job: Job, bench, system):
    """Calibrate ``bench`` against the nominal design ``system`` into ``calibration.h5`` (kept if it
    exists: loaded and checked against the bench instead); returns the :class:`calibration.api.Calibration`."""
    from calibration.api import calibrate
    from calibration.file import load_calibration, save_calibration

    path = job.run_dir / "calibration.h5"
    if path.is_file():
        return load_calibration(path, bench=bench)
    calibration = calibrate(bench, system, job.config.calibration)
    save_calibration(calibration, path)
    return calibration


def load_job_calibration(job: Job):
    from calibration.file import load_calibration

    path = job.run_dir / "calibration.h5"
    if not path.is_file():
        raise InputError(f"no calibration at {path}: run the calibrate step first (hil run resumes there)")
    return load_calibration(path)


def datasets(job: Job):
    """``(train split, test split)`` of the job's dataset (TensorDatasets of images in [0, 1], labels)."""
    from .data import build_datasets

    if job.datasets is not None:
        return job.datasets
    train, test, _ = build_datasets(job.config.data, "classification")
    if test is None:
        raise ConfigError("data.dataset", job.config.data.get("dataset"), "a dataset with a test split")
    return train, test


def capture_plan(job: Job, train_labels, test_labels) -> dict:
    """The seeded, stratified samples the job captures: ``{"train": indices, "test": indices}``."""
    from .capture import stratified_indices

    c = job.config.capture
    if not 0 < c.test_size <= len(test_labels):
        raise ConfigError("capture.test_size", c.test_size, f"a number in [1, {len(test_labels)}]")
    return {"train": stratified_indices(train_labels, max(c.fractions), c.seed),
            "test": stratified_indices(test_labels, c.test_size / len(test_labels), c.seed + 1)}


def capture_sets(job: Job, bench, design_id: str, calibration_id: str, progress: bool = True) -> dict:
    """Capture the planned training and test samples (resumable); returns the two summaries."""
    from .capture import capture

    train, test = datasets(job)
    plan = capture_plan(job, train.tensors[1].numpy(), test.tensors[1].numpy())
    out = {}
    for split, dataset in (("train", train), ("test", test)):
        summary = capture(bench, dataset, plan[split], job.run_dir / "captures" / f"{split}.h5",
                          calibration_id=calibration_id, design_id=design_id,
                          config={"split": split, **config_io.to_plain(job.config.capture)}, progress=progress)
        out[split] = {"frames": summary.count, "saturated_frames": summary.saturated_frames,
                      "dark_frames": summary.dark_frames}
    return out


def fraction_rows(labels: torch.Tensor, fraction: float, class_counts: dict[int, int]) -> torch.Tensor:
    """Rows of a capture (in capture order) forming a stratified ``fraction`` of a split whose classes
    have ``class_counts`` samples: the first ``round(fraction n_c)`` captured rows of every class."""
    rows = []
    for label, n in sorted(class_counts.items()):
        mine = torch.nonzero(labels == label).flatten()
        take = max(1, round(fraction * n))
        if take > len(mine):
            raise InputError(f"the capture holds {len(mine)} samples of class {label}, fewer than the {take} of "
                             f"fraction {fraction}: capture the largest fraction first")
        rows.append(mine[:take])
    return torch.sort(torch.cat(rows)).values


def fraction_key(fraction: float) -> str:
    return f"{fraction:g}"


def finetune_all(job: Job, student, calibration, design_id: str, teacher_path=None, *,
                 settings: FinetuneStep | None = None, fractions=None, name: str = "finetune",
                 progress: bool = False) -> dict:
    """Fine-tune a copy of the student's backend with every method on every captured fraction and seed
    (module docstring; ``settings`` and ``fractions`` default to the job's). Results are appended to
    ``<name>.json`` (backends in ``<name>/``) as each run ends; a rerun skips those already there.
    Returns ``{method: {fraction: [entry per seed]}}``."""
    from .api import load_teacher
    from .finetune import captured_features, finetune

    cfg = settings or job.config.finetune
    results_file = job.run_dir / f"{name}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    train_split, _ = datasets(job)
    real = captured_features(job.run_dir / "captures" / "train.h5", calibration.layer(), design_id=design_id)
    counts = {int(c): int(n) for c, n in zip(*np.unique(train_split.tensors[1].numpy(), return_counts=True))}
    teacher = load_teacher(_checkpoint_of(teacher_path)) if teacher_path else None
    synthetic = None
    (job.run_dir / name).mkdir(parents=True, exist_ok=True)
    for fraction in sorted(fractions or job.config.capture.fractions):
        rows = fraction_rows(real.labels, fraction, counts)
        key = fraction_key(fraction)
        for method in cfg.methods:
            loss_method, with_synthetic = COMPENSATIONS[method]
            for seed in cfg.seeds:
                if any(entry["seed"] == seed for entry in results.get(method, {}).get(key, [])):
                    continue
                data = real.subset(rows)
                if with_synthetic and cfg.synthetic:
                    if synthetic is None:
                        synthetic = synthetic_set(job, calibration, train_split, real.source_indices, cfg.synthetic)
                    data = type(real).concat(data, synthetic)
                if loss_method != "task" and teacher is None:
                    raise ConfigError("teacher", None, f"a teacher for method {method!r}")
                start = time.perf_counter()
                log.info("fine-tuning %s on %d captured (+%d synthetic) samples, fraction %s, seed %d", method,
                         len(rows), len(data) - len(rows), key, seed)
                backend, result = finetune(student, data, method=loss_method, teacher=teacher,
                                           source_inputs=train_split.tensors[0], loss=cfg.loss, lr=cfg.lr,
                                           batch_size=cfg.batch_size, max_steps=cfg.steps, seed=seed,
                                           progress=progress)
                file = f"{name}/{method}_{key}_seed{seed}.pt"
                with atomic_write(job.run_dir / file) as fh:
                    torch.save(backend.state_dict(), fh)
                entry = {"seed": seed, "backend": file, "captured": len(rows), "synthetic": len(data) - len(rows),
                         "steps": result.steps, "lr": cfg.lr, "seconds": round(time.perf_counter() - start, 2),
                         "mean_step_s": result.mean_step_s,
                         "curve": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history]}
                results.setdefault(method, {}).setdefault(key, []).append(entry)
                write_json(results_file, results)
    return results


def score_runs(job: Job, student, data, results: dict, reference: dict | None = None) -> dict:
    """Accuracy of every fine-tuned backend of ``results`` (:func:`finetune_all`) on ``data`` (a
    :class:`~hil.finetune.CapturedSet`): ``{method: {fraction: {mean, std, seeds, accuracies,
    recovered_fraction}}}``; ``recovered_fraction`` = (mean - uncompensated) / (design - uncompensated)
    of ``reference`` (``{design, uncompensated}``), when given and design > uncompensated."""
    from .finetune import accuracy

    out: dict = {}
    lost = None if reference is None else reference["design"] - reference["uncompensated"]
    for method, fractions in results.items():
        for key, entries in fractions.items():
            values = []
            for entry in entries:
                backend = copy.deepcopy(student.backend)
                backend.load_state_dict(torch.load(job.run_dir / entry["backend"], weights_only=True))
                values.append(accuracy(backend, data))
            values = np.array(values)
            mean = float(values.mean())
            out.setdefault(method, {})[key] = {
                "mean": mean, "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "seeds": [e["seed"] for e in entries], "accuracies": values.tolist(),
                "recovered_fraction": (mean - reference["uncompensated"]) / lost if lost and lost > 0 else None}
    return out


def _capture_exposure(path: Path) -> float:
    import h5py

    with h5py.File(path, "r", swmr=True) as f:
        exposures = np.unique(np.asarray(f["exposure_s"][: int(f["count"][()])]))
    if len(exposures) != 1:
        log.warning("%s holds %d exposures; synthetic captures use the first, %g s", path, len(exposures), exposures[0])
    return float(exposures[0])


def synthetic_set(job: Job, calibration, train_split, captured_indices: torch.Tensor, count: int):
    """Synthetic captures of ``count`` training images never captured (a seeded choice), at the
    exposure of the real captures; kept in ``synthetic_<count>.pt`` (for this calibration) and reused."""
    from .finetune import CapturedSet, synthetic_features

    cache = job.run_dir / f"synthetic_{count}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["calibration_id"] == calibration.calibration_id:
            return CapturedSet(saved["features"], saved["labels"], saved["source_indices"])
    exposure_s = _capture_exposure(job.run_dir / "captures" / "train.h5")
    pool = np.setdiff1d(np.arange(len(train_split)), captured_indices.numpy())
    rng = np.random.default_rng(job.config.capture.seed + 1000)
    chosen = torch.from_numpy(np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)))
    log.info("rendering %d synthetic captures through the calibrated forward model", len(chosen))
    images, labels = train_split.tensors[0][chosen], train_split.tensors[1][chosen]
    data = synthetic_features(calibration, images, labels, chosen, exposure_s=exposure_s, seed=job.config.capture.seed)
    with atomic_write(cache) as fh:
        torch.save({"calibration_id": calibration.calibration_id, "features": data.features, "labels": data.labels,
                    "source_indices": data.source_indices}, fh)
    return data


def evaluate(job: Job, student, calibration, design_id: str, name: str = "finetune") -> dict:
    """Accuracies on the held-out captured test set (``evaluation.json``): ``design`` (the student in
    simulation on the same test images), ``uncompensated`` (the student's backend on the nominal
    features of the captured frames: no calibration, no retraining), ``calibration_layer`` (its
    backend on the calibration layer's features, no retraining) and every fine-tuned backend of
    ``<name>.json``: ``by_fraction[method][fraction]`` (:func:`score_runs`). Written to
    ``evaluation.json`` (``evaluation_<name>.json`` for another ``name``)."""
    from .finetune import accuracy, captured_features

    test_file = job.run_dir / "captures" / "test.h5"
    nominal = captured_features(test_file, student.frontend, design_id=design_id)
    calibrated = captured_features(test_file, calibration.layer(), design_id=design_id)
    _, test_split = datasets(job)
    with torch.no_grad():
        images = test_split.tensors[0][calibrated.source_indices]
        logits = torch.cat([student(images[i:i + 1000]) for i in range(0, len(images), 1000)])
    out = {"test_samples": len(calibrated), "design": float((logits.argmax(1) == calibrated.labels).float().mean()),
           "uncompensated": accuracy(student.backend, nominal), "calibration_layer": accuracy(student.backend, calibrated)}
    results_file = job.run_dir / f"{name}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    out["by_fraction"] = score_runs(job, student, calibrated, results, out)
    write_json(job.run_dir / ("evaluation.json" if name == "finetune" else f"evaluation_{name}.json"), out)
    return out


def report(job: Job, evaluation: dict, calibration, extra: dict) -> Path:
    """``report.json`` (every figure), ``summary.md`` and the PNG plots; returns the summary's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = job.run_dir
    plots = {}
    if calibration.psf is not None and calibration.fit is not None:
        panels = [("measured", calibration.psf.rate), ("calibrated model", calibration.fit.model_rate),
                  ("design", calibration.fit.design_rate)]
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
        vmax = float(np.percentile(np.asarray(calibration.psf.rate), 99.9))
        for ax, (title, image) in zip(axes, panels):
            ax.imshow(np.asarray(image), cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"PSFs: {title} (DN/s)")
            ax.axis("off")
        fig.suptitle(f"PSF residual vs design {calibration.fit.psf_residual_before:.3f}, "
                     f"vs calibrated model {calibration.fit.psf_residual_after:.3f}")
        fig.tight_layout()
        fig.savefig(run / "psfs.png", dpi=110)
        plt.close(fig)
        plots["psfs"] = "psfs.png"
    by_fraction = evaluation["by_fraction"]
    if by_fraction:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for method, fractions in by_fraction.items():
            keys = sorted(fractions, key=float)
            ax.errorbar([100 * float(k) for k in keys], [100 * fractions[k]["mean"] for k in keys],
                        yerr=[100 * fractions[k]["std"] for k in keys], marker="o", capsize=3, label=method)
        for name, style in (("design", "k--"), ("calibration_layer", "g:"), ("uncompensated", "r--")):
            ax.axhline(100 * evaluation[name], color=style[0], linestyle=style[1:], label=name)
        ax.set_xscale("log")
        ticks = sorted({100 * float(k) for fr in by_fraction.values() for k in fr})
        ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("captured fraction of the training split (%)")
        ax.set_ylabel("test accuracy on captured frames (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run / "accuracy.png", dpi=110)
        plt.close(fig)
        plots["accuracy"] = "accuracy.png"
    results = json.loads((run / "finetune.json").read_text()) if (run / "finetune.json").is_file() else {}
    curves = [(f"{m} {k}", e["curve"]) for m, fr in results.items() for k, es in fr.items() for e in es[:1] if e["curve"]]
    if curves:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for label, curve in curves:
            ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve], marker=".", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(run / "curves.png", dpi=110)
        plt.close(fig)
        plots["curves"] = "curves.png"
    state = read_state(run)
    full = {"run_dir": str(run), "evaluation": evaluation, "calibration": calibration.summary(), "plots": plots,
            "seconds": state["seconds"], **extra}
    write_json(run / "report.json", full)
    lines = [f"# Hardware-in-the-loop run: {run.name}", "",
             f"Held-out captured test set: {evaluation['test_samples']} images.", "",
             "| | accuracy |", "|---|---|",
             f"| design (simulation) | {100 * evaluation['design']:.2f} % |",
             f"| fabricated, uncompensated (nominal features) | {100 * evaluation['uncompensated']:.2f} % |",
             f"| calibration layer only (no retraining) | {100 * evaluation['calibration_layer']:.2f} % |", ""]
    if by_fraction:
        keys = sorted({k for fr in by_fraction.values() for k in fr}, key=float)
        lines += ["Fine-tuned backend (mean ± std over seeds; recovered = share of the fabrication loss won back):", "",
                  "| method | " + " | ".join(f"{100 * float(k):g} % captured" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for method, fractions in by_fraction.items():
            cells = []
            for k in keys:
                r = fractions.get(k)
                rec = "" if r is None or r["recovered_fraction"] is None else f" ({100 * r['recovered_fraction']:.0f} %)"
                cells.append("" if r is None else f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}{rec}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if calibration.fit is not None:
        lines.append(f"PSF residual: {calibration.fit.psf_residual_before:.3f} against the design, "
                     f"{calibration.fit.psf_residual_after:.3f} against the calibrated model.")
    lines += ["", "Step times (s): " + ", ".join(f"{k} {v:g}" for k, v in state["seconds"].items()), "",
              "Plots: " + ", ".join(plots.values()) + "; every figure: report.json."]
    with atomic_write(run / "summary.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return run / "summary.md"


# ------------------------------------------------------------------------------------------ the job
def run_job(job: Job, *, progress: bool = True) -> Path:
    """Run every step not yet finished (``state.json``); returns the path of ``summary.md``."""
    from simulator.system import OpticalSystem

    from .capture import design_fingerprint

    cfg = job.config
    job.run_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        check_same_config(job)

        def step(name, fn):
            if name in read_state(job.run_dir)["finished"]:
                log.info("step %s: finished earlier, skipped", name)
                return None
            log.info("step %s", name)
            start = time.perf_counter()
            value = fn()
            mark_finished(job.run_dir, name, time.perf_counter() - start)
            return value

        start = time.perf_counter()
        models = train_models(job)  # resumable; when finished it only locates the runs
        if "train" not in read_state(job.run_dir)["finished"]:
            mark_finished(job.run_dir, "train", time.perf_counter() - start)
        design_optics = job.run_dir / "design" / "optics.yaml"
        step("export", lambda: export(job, models["student"]))
        system = OpticalSystem.from_config(design_config(design_optics))
        design_id = design_fingerprint(system.design.psfs().detach())
        bench = bench_config(job, design_optics)
        calibration = None
        if not {"calibrate", "capture"} <= set(read_state(job.run_dir)["finished"]):
            with open_job_bench(job, bench) as opened:
                check_fits(opened, system)
                calibration = step("calibrate", lambda: calibrate_bench(job, opened, system))
                if calibration is None:
                    calibration = load_job_calibration(job)
                start = time.perf_counter()
                captured = step("capture", lambda: capture_sets(job, opened, design_id, calibration.calibration_id,
                                                                progress=progress))
                if captured is not None:
                    frames = captured["train"]["frames"] + captured["test"]["frames"]
                    write_json(job.run_dir / "capture.json", {**captured, "seconds": time.perf_counter() - start,
                                                               "frames_per_s": frames / (time.perf_counter() - start)})
        calibration = calibration or load_job_calibration(job)
        student = load_student(models["student"])
        step("finetune", lambda: finetune_all(job, student, calibration, design_id, models["teacher"], progress=False))
        evaluation = step("evaluate", lambda: evaluate(job, student, calibration, design_id))
        if evaluation is None:
            evaluation = json.loads((job.run_dir / "evaluation.json").read_text())
        extra = {"design_id": design_id, "models": models,
                 "capture": json.loads((job.run_dir / "capture.json").read_text())
                 if (job.run_dir / "capture.json").is_file() else None}
        step("report", lambda: report(job, evaluation, calibration, extra))
        return job.run_dir / "summary.md"
    finally:
        torch.set_num_threads(threads)


__all__ = ["BenchMismatchError", "CaptureStep", "FinetuneStep", "Job", "JobConfig", "JobConfigChanged", "STEPS",
           "TrainStep", "bench_config", "calibrate_bench", "capture_plan", "capture_sets", "check_fits",
           "check_same_config", "design_config", "evaluate", "export", "finetune_all", "fraction_rows", "load_job",
           "load_student", "open_job_bench", "report", "run_job", "score_runs", "synthetic_set", "train_models"]
