"""`hil run`: the whole job on small simulated benches (virtual clock): the consistency check of issue 10
(identity fabrication: bench capture + calibration layer + the student's own backend give its simulated
accuracy), fabrication loss and its recovery, resume from the last finished step, and bad inputs."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from hil.capture import CaptureFileError
from hil.checkpoint import save_checkpoint
from hil.models import build_model
from hil.job import STEP_NAMES, JobConfig, JobConfigChanged, check_run, load_job, run_job
from onn_core import config as config_io
from onn_core.errors import ConfigError

SIZE = 12
CORNERS = [(1, 1), (1, 8), (8, 1), (8, 8)]
MODEL = {"name": "optical_student", "num_kernels": 2, "kernel_size": 5, "image_size": SIZE, "hidden": [16], "pool": 1,
         "num_classes": 4, "seed": 1,
         "optics": {"geometry": {"gap_px": 2, "psf_margin_px": 3}, "photometry": {"photons_per_s": 1e6},
                    "sensor": {"quantum_efficiency": 0.6, "dark_current_e_per_s": 5.0, "read_noise_e": 2.5,
                               "full_well_e": 10500.0, "gain_e_per_dn": 2.6, "offset_dn": 16.0, "bit_depth": 12,
                               "container_bits": 16, "noise": True}}}


def blob_dataset(n: int, seed: int, contrast: float = 0.6, size: int = SIZE) -> TensorDataset:
    """A faint 3x3 blob at one of 4 corners (the label) on a noisy background: hard enough that the
    student is not perfect, so a difference of accuracy can show."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = 0.5 * torch.rand((n, 1, size, size), generator=gen)
    for i, label in enumerate(labels.tolist()):
        r, c = CORNERS[label]
        images[i, 0, r:r + 3, c:c + 3] += 0.5 * contrast * torch.rand((), generator=gen)
    return TensorDataset(images.clamp(0, 1), labels)


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A trained student saved as a `hil train` run folder; returns (run dir, student, datasets)."""
    torch.manual_seed(0)
    student = build_model(MODEL)
    train, test = blob_dataset(800, 0), blob_dataset(400, 1)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(student(train.tensors[0]), train.tensors[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run = tmp_path_factory.mktemp("student")
    save_checkpoint(run / "checkpoints" / "best.pt", {"model": student.state_dict(), "config": {"model": MODEL}})
    return run, student.eval(), (train, test)


def write_job(tmp_path, student_run, *, errors=None, slm_shape=(SIZE, SIZE), methods=("e2e",), steps=60,
              capture=None, **extra):
    """A job config file in ``tmp_path`` (bench and fabrication files beside it) and the loaded job."""
    run, _, datasets = student_run
    bench = {"clock": "virtual", "slm": {"backend": "simulated-slm", "shape": list(slm_shape), "bit_depth": 8,
                                         "pixel_pitch_m": 3.45e-6, "latency_s": 0.0, "settle_s": 0.0},
             "camera": {"backend": "simulated-camera", "optics": "replaced by the design", "readout_s": 0.0}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    config = {"out_dir": "run", "bench": "bench.yaml", "student": {"run_dir": str(run)},
              "calibration": {"stages": ["sensor", "geometry", "psf", "fit"],
                              "sensor": {"frames": 4, "read_frames": 8, "num_exposures": 6},
                              "psf": {"averages": 4}, "fit": {"stages": ["geometry", "photometry"], "zernike_noll": []}},
              "capture": {"val_size": 100, **(capture or {"fractions": [0.2, 0.4], "test_size": 300, "seed": 0})},
              "finetune": {"methods": list(methods), "steps": steps, "lr": 3e-3, "batch_size": 32, "synthetic": 160,
                           "seeds": [0]}, **extra}
    if errors is not None:
        (tmp_path / "fabricated.yaml").write_text(yaml.safe_dump({"errors": errors}))
        config["fabrication"] = "fabricated.yaml"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    job = load_job(tmp_path / "job.yaml")
    job.datasets = datasets
    return job


def test_identity_fabrication_reproduces_the_simulated_accuracy(tmp_path, student_run):
    """Issue 10's consistency check: a design fabricated without errors, captured on the (noisy) bench and
    read through the calibration layer gives the student's own backend its simulated accuracy within
    1 point; so do the nominal features."""
    job = write_job(tmp_path, student_run, methods=("e2e",), steps=20)
    summary = run_job(job, progress=False)
    evaluation = json.loads((job.run_dir / "evaluation.json").read_text())
    assert evaluation["test_samples"] == 300
    assert 0.7 < evaluation["design"] < 0.99  # neither trivial nor failed: a difference could show
    assert abs(evaluation["calibration_layer"] - evaluation["design"]) <= 0.01, evaluation
    assert abs(evaluation["uncompensated"] - evaluation["design"]) <= 0.01, evaluation
    report = json.loads((job.run_dir / "report.json").read_text())
    assert set(report["plots"]) == {"psfs", "accuracy", "curves"}  # no design curve: a checkpoint, no metrics.json
    capture = report["capture"]
    assert capture["exposure"]["chosen"] == "auto" and capture["test"]["clipped_pixel_fraction"] == 0.0
    assert "test_perfect" not in capture and evaluation["perfect_fabrication"] is None  # no fabrication errors
    assert all((job.run_dir / name).is_file() for name in report["plots"].values())
    assert summary.read_text().startswith("# Hardware-in-the-loop run")
    assert json.loads((job.run_dir / "state.json").read_text())["finished"] == list(STEP_NAMES) == \
        ["train", "export", "locate", "calibrate", "capture", "finetune", "evaluate", "report"]


SHIFTED = {"num_psfs": 4, "errors": {"shift_px": [[1.6, -1.2], [-1.3, 1.5], [1.4, 1.4], [-1.5, -1.1]],
                                     "brightness": [1.4, 0.7, 0.75, 1.3]}}


def test_fabrication_loss_is_undone_by_the_layer_and_fine_tuning_resumes(tmp_path, student_run, monkeypatch):
    """Shifted, unevenly bright PSFs cost accuracy read nominally; the calibration layer wins it back;
    a job stopped during fine-tuning resumes there, without calibrating or capturing again."""
    import hil.job.steps

    job = write_job(tmp_path, student_run, errors=SHIFTED, methods=("e2e", "e2e_synthetic"), steps=40)
    real_finetune = hil.job.steps.finetune
    calls = {"calibrate": 0, "finetune": 0}

    def stopping_finetune(*args, **kwargs):
        calls["finetune"] += 1
        if calls["finetune"] == 2:
            raise KeyboardInterrupt
        return real_finetune(*args, **kwargs)

    real_calibrate = hil.job.steps.calibrate

    def counting_calibrate(*args, **kwargs):
        calls["calibrate"] += 1
        return real_calibrate(*args, **kwargs)

    monkeypatch.setattr(hil.job.steps, "finetune", stopping_finetune)
    monkeypatch.setattr(hil.job.steps, "calibrate", counting_calibrate)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, progress=False)
    state = json.loads((job.run_dir / "state.json").read_text())
    assert state["finished"] == ["train", "export", "locate", "calibrate", "capture"]
    done = json.loads((job.run_dir / "finetune.json").read_text())
    assert [(m, list(f)) for m, f in done.items()] == [("design_ft", ["0.2"])]  # the one run that finished
    frames_before = (job.run_dir / "captures" / "train.h5").stat().st_mtime_ns
    run_job(job, progress=False)
    assert calls["calibrate"] == 1 and calls["finetune"] == 2 + 5  # the 5 runs left, nothing twice
    assert (job.run_dir / "captures" / "train.h5").stat().st_mtime_ns == frames_before
    evaluation = json.loads((job.run_dir / "evaluation.json").read_text())
    assert evaluation["uncompensated"] < evaluation["design"] - 0.15, evaluation
    assert evaluation["calibration_layer"] > evaluation["design"] - 0.03, evaluation
    for method in ("e2e", "e2e_synthetic"):
        for key in ("0.2", "0.4"):
            entry = evaluation["by_fraction"][method][key]
            assert entry["mean"] > evaluation["uncompensated"] + 0.1, (method, key, entry)
            assert entry["seeds"] == [0]
    runs = json.loads((job.run_dir / "finetune.json").read_text())
    counts = np.bincount(student_run[2][0].tensors[1].numpy())  # the split's classes: nested stratified rows
    assert [e["captured"] for e in runs["e2e"]["0.2"] + runs["e2e"]["0.4"]] == [
        sum(round(0.2 * n) for n in counts), sum(round(0.4 * n) for n in counts)]
    assert runs["e2e_synthetic"]["0.2"][0]["synthetic"] == 160 and runs["e2e"]["0.2"][0]["synthetic"] == 0


    # the synthetic pool is rendered again when the capture plan changes under it (more validation images)
    from hil.job.steps import capture_plan, design_identity, load_job_calibration, synthetic_set

    cache = job.run_dir / "synthetic_160.h5"
    before = cache.stat().st_mtime_ns
    train, test = student_run[2]
    _, design_id = design_identity(job.run_dir / "design" / "optics.yaml")
    calibration = load_job_calibration(job, design_id)
    kept = synthetic_set(job, calibration, design_id, train, 160)
    assert cache.stat().st_mtime_ns == before  # the same plan: the file is reused
    job.config.capture.val_size = 300
    val = capture_plan(job, train.tensors[1].numpy(), test.tensors[1].numpy())["val"]
    assert np.intersect1d(kept.source_indices.numpy(), val).size > 0  # the old pool holds new validation images
    rendered = synthetic_set(job, calibration, design_id, train, 160)
    assert cache.stat().st_mtime_ns != before and len(rendered.labels) == 160
    assert np.intersect1d(rendered.source_indices.numpy(), val).size == 0


def test_a_design_that_does_not_fit_the_bench_is_refused(tmp_path, student_run):
    from types import SimpleNamespace

    from drivers.bench_fits import BenchMismatch, check_bench_fits
    from onn_core.errors import ConfigError

    job = write_job(tmp_path, student_run, slm_shape=(SIZE + 4, SIZE))
    with pytest.raises(ConfigError, match=r"slm.shape.*\(12, 12\)"):  # the simulated bench refuses to open
        run_job(job, progress=False)
    assert not (job.run_dir / "calibration.h5").exists() and not (job.run_dir / "captures").exists()
    system = student_run[1].frontend  # a real bench opens whatever its devices are: checked before use
    rows, cols = system.frame_shape
    display = dict(bit_depth=system.display.bit_depth, pixel_pitch_m=system.geometry.display_pixel_pitch_m)
    check_bench_fits(SimpleNamespace(slm=SimpleNamespace(shape=(SIZE, SIZE), **display),
                                     camera=SimpleNamespace(shape=(rows, cols))), system)
    wrong = SimpleNamespace(slm=SimpleNamespace(shape=(SIZE, SIZE + 1), **display), camera=SimpleNamespace(shape=(1080, 1440)))
    with pytest.raises(BenchMismatch, match=rf"SLM shows \(12, 13\).*\(12, 12\).*4 tiles need a \({rows}, {cols}\) frame"):
        check_bench_fits(wrong, system)


def test_a_missing_or_damaged_output_is_made_again_and_foreign_files_are_refused(tmp_path, student_run, monkeypatch):
    """A finished run: captures of another design, a changed config of a step that ran, a calibration of
    another design and a backend of another calibration are refused; a removed evaluation.json redoes
    only evaluate + report; a removed calibration.h5 recalibrates and captures again (the old files
    moved into stale/), so the captures record the new calibration."""
    import h5py

    import hil.job.steps
    from hil.finetune import captured_features
    from hil.job import JobMismatchError, load_job_calibration

    job = write_job(tmp_path, student_run, methods=("e2e",), steps=10)
    run_job(job, progress=False)
    with pytest.raises(CaptureFileError, match="captured through design .* not this run's design 0123"):
        captured_features(job.run_dir / "captures" / "test.h5", student_run[1].frontend, design_id="0123456789abcdef")
    changed = write_job(tmp_path, student_run, methods=("e2e",), steps=11)  # another config, same folder
    with pytest.raises(JobConfigChanged, match=r"started with another config: finetune.steps = 11 \(was 10\); "
                                               r"step finetune already ran"):
        run_job(changed, progress=False)
    with pytest.raises(JobConfigChanged, match=r"finetune.steps = 11 \(was 10\)"):
        check_run(changed)  # what reads a finished run with a job loaded by hand
    check_run(job)
    with pytest.raises(JobMismatchError, match="calibration .* of design .*, not of this run's design 0123"):
        load_job_calibration(job, "0123456789abcdef")

    calls = {"calibrate": 0, "finetune": 0}
    for name in calls:
        real = getattr(hil.job.steps, name)
        monkeypatch.setattr(hil.job.steps, name, lambda *a, _real=real, _name=name, **k: (
            calls.__setitem__(_name, calls[_name] + 1), _real(*a, **k))[1])
    (job.run_dir / "evaluation.json").unlink()
    run_job(job, progress=False)
    assert calls == {"calibrate": 0, "finetune": 0} and (job.run_dir / "evaluation.json").is_file()

    def recorded_calibration(split):
        with h5py.File(job.run_dir / "captures" / f"{split}.h5", "r") as f:
            return f.attrs["calibration_id"]

    old_id = recorded_calibration("test")
    results = json.loads((job.run_dir / "finetune.json").read_text())
    results["e2e"]["0.2"][0]["calibration_id"] = "another"
    (job.run_dir / "finetune.json").write_text(json.dumps(results))
    with pytest.raises(JobMismatchError, match="fine-tuned with calibration_id 'another', not this run's"):
        hil.job.steps.evaluate(job, student_run[1], load_job_calibration(job, json.loads(
            (job.run_dir / "report.json").read_text())["design_id"]), json.loads(
            (job.run_dir / "report.json").read_text())["design_id"])

    (job.run_dir / "calibration.h5").unlink()
    run_job(job, progress=False)  # the damaged finetune.json is moved aside with the later steps' files
    assert calls == {"calibrate": 1, "finetune": 4}  # design_ft and e2e, twice
    new_id = json.loads((job.run_dir / "report.json").read_text())["calibration"]["calibration_id"]
    assert new_id != old_id and recorded_calibration("train") == recorded_calibration("test") == new_id
    stale = list((job.run_dir / "stale").glob("*/captures/test.h5"))
    assert len(stale) == 1 and h5py.File(stale[0], "r").attrs["calibration_id"] == old_id
    assert json.loads((job.run_dir / "state.json").read_text())["finished"] == list(STEP_NAMES)


def test_until_export_stops_there_later_changes_are_accepted_and_a_new_fabrication_seed_is_refused(
        tmp_path, student_run):
    """--until export stops after the export (to fabricate); a test_size changed before the capture ran
    is accepted; after calibration, another fabrication seed in the optics file is refused naming it,
    and --from calibrate calibrates the new device (the old calibration moved aside); a truncated
    calibration.h5 is measured again."""
    from hil.job import read_state

    errors = {"seed": 1, "spec": {"shift_std_px": 0.3, "brightness_rel_std": 0.1}}
    job = write_job(tmp_path, student_run, errors=errors)
    assert run_job(job, progress=False, until="export") is None
    assert read_state(job.run_dir)["finished"] == ["train", "export"]
    assert (job.run_dir / "design" / "optics.yaml").is_file() and not (job.run_dir / "calibration.h5").exists()
    assert set(read_state(job.run_dir)["outputs"]["export"]) == {"design/optics.yaml", "design/kernels.npy"}

    job = write_job(tmp_path, student_run, errors=errors, capture={"fractions": [0.2, 0.4], "test_size": 200})
    run_job(job, progress=False, until="calibrate")  # test_size changes the capture only: not run yet
    assert read_state(job.run_dir)["finished"] == ["train", "export", "locate", "calibrate"]
    assert read_state(job.run_dir)["identity"]["capture"]["test_size"] == 200

    reseeded = write_job(tmp_path, student_run, errors={**errors, "seed": 2},
                         capture={"fractions": [0.2, 0.4], "test_size": 200})
    with pytest.raises(JobConfigChanged, match=r"fabrication_errors.seed = 2 \(was 1\); step calibrate already ran"):
        run_job(reseeded, progress=False)
    first = job.run_dir / "calibration.h5"
    before = first.stat().st_mtime_ns
    run_job(reseeded, progress=False, from_step="calibrate", until="calibrate")
    assert first.stat().st_mtime_ns != before and len(list((job.run_dir / "stale").glob("*/calibration.h5"))) == 1
    assert read_state(job.run_dir)["identity"]["fabrication_errors"]["seed"] == 2
    with open(first, "r+b") as fh:  # truncated: its size differs from the record, so it is measured again
        fh.truncate(1000)
    run_job(reseeded, progress=False, until="calibrate")
    assert len(list((job.run_dir / "stale").glob("*/calibration.h5"))) == 2
    assert read_state(job.run_dir)["outputs"]["calibrate"]["calibration.h5"]["bytes"] == first.stat().st_size > 1000


def test_bad_inputs_are_refused_before_the_first_step(tmp_path, student_run, monkeypatch):
    """A test_size larger than the test split, a missing bench file, an empty data.root, a dataset of
    another image size and too little disk space are each reported before any step, naming the field."""
    import shutil
    from collections import namedtuple
    from pathlib import Path

    import hil.job.steps
    from hil.job import DiskSpaceError, TrainStep, read_state

    EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
    from onn_core.errors import ConfigError

    def refused(job, error, match):
        with pytest.raises(error, match=match):
            run_job(job, progress=False)
        assert read_state(job.run_dir)["finished"] == [] and not (job.run_dir / "design").exists()

    job = write_job(tmp_path, student_run, capture={"fractions": [0.2], "test_size": 10_000})
    refused(job, ConfigError, r"capture.test_size' = 10000: expected a number in \[1, 400\]")
    # a student still to train: refused before its training starts
    job.config.student = TrainStep(config=str(EXAMPLES / "train_fmnist_ntkd.yaml"),
                                   set={"teacher": None, "loss.method": "task"})
    job.datasets = (blob_dataset(100, 0, size=28), blob_dataset(400, 1, size=28))
    monkeypatch.setattr(hil.job.steps, "train", lambda *args, **kwargs: pytest.fail("training started"))
    refused(job, ConfigError, r"capture.test_size' = 10000")
    assert not (job.run_dir / "student").exists()
    (tmp_path / "bench.yaml").unlink()
    refused(job, ConfigError, r"'bench' = 'bench.yaml': expected a bench config file \(no file at")

    job = write_job(tmp_path, student_run)
    (tmp_path / "empty").mkdir()
    job.config.data = {"dataset": "fashion_mnist", "root": "empty"}
    job.datasets = None
    refused(job, ConfigError, r"data.root' = 'empty': expected a folder holding the dataset \(.*empty is empty\)")
    job.datasets = (blob_dataset(40, 0), blob_dataset(40, 1))
    job.datasets[0].tensors = (torch.zeros(40, 1, SIZE + 2, SIZE), job.datasets[0].tensors[1])
    refused(job, ConfigError, r"data.dataset.*design's shape \(12, 12\).*\(14, 12\)")

    job = write_job(tmp_path, student_run)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    refused(job, DiskSpaceError, r"5.0 MB free, but capturing \d+ samples of about \d+ bytes each needs \d+\.\d MB")


def test_job_config_errors_name_the_field(tmp_path):
    from onn_core.errors import ConfigError

    base = {"out_dir": "run", "bench": "bench.yaml", "student": {"run_dir": "x"}}
    with pytest.raises(ConfigError, match="teacher"):
        config_io.build(JobConfig, {**base, "finetune": {"methods": ["ntkd"]}}, "")
    with pytest.raises(ConfigError, match="finetune.methods"):
        config_io.build(JobConfig, {**base, "finetune": {"methods": ["magic"]}}, "")
    with pytest.raises(ConfigError, match="exactly one"):
        config_io.build(JobConfig, {**base, "student": {"run_dir": "x", "config": "y"}}, "")
    with pytest.raises(ConfigError, match="capture.fractions"):
        config_io.build(JobConfig, {**base, "capture": {"fractions": [0.0]}, "finetune": {"methods": ["e2e"]}}, "")
    for field, value in (("headroom", 1.0), ("max_clipped_fraction", -0.1), ("exposure_s", 0.0), ("val_size", -1)):
        with pytest.raises(ConfigError, match=f"capture.{field}"):
            config_io.build(JobConfig, {**base, "capture": {field: value}, "finetune": {"methods": ["e2e"]}}, "")


def test_the_step_options_name_steps_of_the_table_in_order(tmp_path, student_run):
    from hil.commands.run import STEP_CHOICES
    from onn_core.errors import InputError

    assert STEP_CHOICES == STEP_NAMES
    job = write_job(tmp_path, student_run)
    with pytest.raises(InputError, match="--until 'fit': expected one of"):
        run_job(job, until="fit")
    with pytest.raises(InputError, match="--from capture comes after --until export"):
        run_job(job, from_step="capture", until="export")


def test_the_free_space_check_counts_the_frames_and_what_is_already_captured(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    from types import SimpleNamespace

    from hil.job.disk import SPARE_BYTES, DiskSpaceError, bench_frame_bytes, check_free_space

    bench = SimpleNamespace(camera=SimpleNamespace(shape=(10, 20), dtype=np.dtype(np.uint16)),
                            slm=SimpleNamespace(shape=(4, 5), dtype=np.dtype(np.uint8)))
    per_frame = bench_frame_bytes(bench)
    assert per_frame == 10 * 20 * 2 + 4 * 5 + 64
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, SPARE_BYTES + 1000 * per_frame))
    check_free_space(tmp_path / "run", 1000, per_frame)  # a folder not made yet: its parent's file system
    with pytest.raises(DiskSpaceError, match=rf"capturing 1001 samples of about {per_frame} bytes each needs"):
        check_free_space(tmp_path / "run", 1001, per_frame)
    (tmp_path / "run" / "captures").mkdir(parents=True)
    (tmp_path / "run" / "captures" / "train.h5").write_bytes(b"\0" * per_frame)  # one frame already there
    check_free_space(tmp_path / "run", 1001, per_frame)


def test_paths_set_in_the_run_config_are_relative_to_it(tmp_path):
    """Issue 21: ``student.set`` / ``teacher.set`` paths (``model.optics``, ``data.root``, ``teacher.checkpoint``,
    nested mappings too) are relative to the run config that sets them, not to the training config in
    another folder; the training config's own paths stay relative to it."""
    from hil.job.config import training_config
    from hil.job.steps import student_model_config

    (tmp_path / "train").mkdir()
    student = {"task": "classification", "model": {k: v for k, v in MODEL.items() if k != "optics"},
               "data": {"root": "data_of_the_training_config"}}
    (tmp_path / "train" / "student.yaml").write_text(yaml.safe_dump(student))
    (tmp_path / "train" / "teacher.yaml").write_text(yaml.safe_dump({"task": "classification", "job": "teacher",
                                                                      "model": {"name": "lenet"}}))
    (tmp_path / "optics_x.yaml").write_text(yaml.safe_dump({**MODEL["optics"], "seed": 3}))
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump({"slm": {}, "camera": {}}))
    config = {"out_dir": "run", "bench": "bench.yaml",
              "student": {"config": "train/student.yaml", "set": {"model.optics": "optics_x.yaml",
                                                                  "teacher": {"checkpoint": "teacher.pt"}}},
              "teacher": {"config": "train/teacher.yaml", "set": {"data.root": "data"}},
              "finetune": {"methods": ["ntkd"]}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    job = load_job(tmp_path / "job.yaml")
    model = student_model_config(job)
    assert model["optics"]["photometry"] == MODEL["optics"]["photometry"] and "seed" not in model["optics"]
    cfg = training_config(job, "student")
    assert cfg.teacher.checkpoint == str(tmp_path / "teacher.pt")
    assert cfg.data.root == str(tmp_path / "train" / "data_of_the_training_config")
    assert training_config(job, "teacher").data.root == str(tmp_path / "data")
    config["student"]["config"] = "train/missing.yaml"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="'student.config' = 'train/missing.yaml'"):
        training_config(load_job(tmp_path / "job.yaml"), "student")


def test_a_failed_geometry_calibration_saves_its_picture_in_the_run_folder(tmp_path, student_run):
    """A sub-optic that passes no light: the geometry stage fails, its annotated frame is saved into the
    run folder and the job's error names it."""
    from calibration.errors import CalibrationError
    from calibration.geometry import DIAGNOSTIC_NAME

    dark_tile = {"num_psfs": 4, "errors": {"brightness": [1.0, 0.0, 1.0, 1.0]}}
    job = write_job(tmp_path, student_run, errors=dark_tile, calibration={"stages": ["geometry"]})
    with pytest.raises(CalibrationError, match=f"not found.*diagnostic image: {job.run_dir / DIAGNOSTIC_NAME}"):
        run_job(job, until="calibrate", progress=False)
    assert (job.run_dir / DIAGNOSTIC_NAME).is_file() and not (job.run_dir / "calibration.h5").exists()
