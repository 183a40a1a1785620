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
from hil.run import STEPS, BenchMismatchError, JobConfig, JobConfigChanged, load_job, run_job
from simulator import config as config_io
from onn_core.errors import InputError

SIZE = 12
CORNERS = [(1, 1), (1, 8), (8, 1), (8, 8)]
MODEL = {"name": "optical_student", "num_kernels": 2, "kernel_size": 5, "image_size": SIZE, "hidden": [16], "pool": 1,
         "num_classes": 4, "seed": 1,
         "optics": {"geometry": {"gap_px": 2, "psf_margin_px": 3}, "photometry": {"photons_per_s": 1e6},
                    "sensor": {"quantum_efficiency": 0.6, "dark_current_e_per_s": 5.0, "read_noise_e": 2.5,
                               "full_well_e": 10500.0, "gain_e_per_dn": 2.6, "offset_dn": 16.0, "bit_depth": 12,
                               "container_bits": 16, "noise": True}}}


def blob_dataset(n: int, seed: int, contrast: float = 0.6) -> TensorDataset:
    """A faint 3x3 blob at one of 4 corners (the label) on a noisy background: hard enough that the
    student is not perfect, so a difference of accuracy can show."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = 0.5 * torch.rand((n, 1, SIZE, SIZE), generator=gen)
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


def write_job(tmp_path, student_run, *, errors=None, slm_shape=(SIZE, SIZE), methods=("e2e",), steps=60, **extra):
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
              "capture": {"fractions": [0.2, 0.4], "test_size": 300, "seed": 0},
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
    assert set(report["plots"]) == {"psfs", "accuracy", "curves"}
    assert all((job.run_dir / name).is_file() for name in report["plots"].values())
    assert summary.read_text().startswith("# Hardware-in-the-loop run")
    assert json.loads((job.run_dir / "state.json").read_text())["finished"] == list(STEPS) == \
        ["train", "export", "calibrate", "capture", "finetune", "evaluate", "report"]


SHIFTED = {"num_psfs": 4, "errors": {"shift_px": [[1.6, -1.2], [-1.3, 1.5], [1.4, 1.4], [-1.5, -1.1]],
                                     "brightness": [1.4, 0.7, 0.75, 1.3]}}


def test_fabrication_loss_is_undone_by_the_layer_and_fine_tuning_resumes(tmp_path, student_run, monkeypatch):
    """Shifted, unevenly bright PSFs cost accuracy read nominally; the calibration layer wins it back;
    a job stopped during fine-tuning resumes there, without calibrating or capturing again."""
    import calibration.api
    import hil.run

    job = write_job(tmp_path, student_run, errors=SHIFTED, methods=("e2e", "e2e_synthetic"), steps=40)
    real_finetune = hil.finetune.finetune
    calls = {"calibrate": 0, "finetune": 0}

    def stopping_finetune(*args, **kwargs):
        calls["finetune"] += 1
        if calls["finetune"] == 2:
            raise KeyboardInterrupt
        return real_finetune(*args, **kwargs)

    real_calibrate = calibration.api.calibrate

    def counting_calibrate(*args, **kwargs):
        calls["calibrate"] += 1
        return real_calibrate(*args, **kwargs)

    monkeypatch.setattr(hil.finetune, "finetune", stopping_finetune)
    monkeypatch.setattr(calibration.api, "calibrate", counting_calibrate)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, progress=False)
    state = json.loads((job.run_dir / "state.json").read_text())
    assert state["finished"] == ["train", "export", "calibrate", "capture"]
    done = json.loads((job.run_dir / "finetune.json").read_text())
    assert [(m, list(f)) for m, f in done.items()] == [("e2e", ["0.2"])]  # the one run that finished
    frames_before = (job.run_dir / "captures" / "train.h5").stat().st_mtime_ns
    run_job(job, progress=False)
    assert calls["calibrate"] == 1 and calls["finetune"] == 2 + 3  # the 3 runs left, nothing twice
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


def test_a_design_that_does_not_fit_the_bench_is_refused(tmp_path, student_run):
    from types import SimpleNamespace

    from hil.run import check_fits
    from onn_core.errors import ConfigError

    job = write_job(tmp_path, student_run, slm_shape=(SIZE + 4, SIZE))
    with pytest.raises(ConfigError, match=r"slm.shape.*\(12, 12\)"):  # the simulated bench refuses to open
        run_job(job, progress=False)
    assert not (job.run_dir / "calibration.h5").exists() and not (job.run_dir / "captures").exists()
    system = student_run[1].frontend  # a real bench opens whatever its devices are: checked before use
    rows, cols = system.frame_shape
    check_fits(SimpleNamespace(slm=SimpleNamespace(shape=(SIZE, SIZE)), camera=SimpleNamespace(shape=(rows, cols))), system)
    wrong = SimpleNamespace(slm=SimpleNamespace(shape=(SIZE, SIZE + 1)), camera=SimpleNamespace(shape=(1080, 1440)))
    with pytest.raises(BenchMismatchError, match=rf"SLM shows \(12, 13\).*\(12, 12\).*4 tiles need a \({rows}, {cols}\) frame"):
        check_fits(wrong, system)


def test_captures_of_another_design_and_a_missing_calibration_are_refused(tmp_path, student_run):
    from hil.finetune import captured_features

    job = write_job(tmp_path, student_run, methods=("e2e",), steps=10)
    run_job(job, progress=False)
    with pytest.raises(CaptureFileError, match="captured through design .* not this run's design 0123"):
        captured_features(job.run_dir / "captures" / "test.h5", student_run[1].frontend, design_id="0123456789abcdef")
    changed = write_job(tmp_path, student_run, methods=("e2e",), steps=11)  # another config, same folder
    with pytest.raises(JobConfigChanged, match=r"started with another config: finetune.steps = 11 \(was 10\)"):
        run_job(changed, progress=False)
    (job.run_dir / "calibration.h5").unlink()
    state = json.loads((job.run_dir / "state.json").read_text())
    state["finished"] = state["finished"][:4]  # as if stopped before fine-tuning
    (job.run_dir / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match="no calibration at .*calibration.h5"):
        run_job(job, progress=False)


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
