"""The ``locate`` step of ``hil run`` on a small lab-like simulated bench (a camera frame larger than the
design's, the design's image placed off-centre, rotated and magnified on it): the grid is located into
the run folder and the job's bench uses it; a bench without ``camera.locate``, or whose file exists, is
left alone; a grid not found is reported naming the annotated picture in the run folder."""

import json

import numpy as np
import pytest
import torch
import yaml

from calibration.locate import GridLocation, LocateError
from hil.checkpoint import save_checkpoint
from hil.job import load_job, read_state, run_job
from hil.models import build_model
from tests.hil.test_run import MODEL, blob_dataset, write_job

PLACEMENT = {"sensor_shape": [120, 160], "center_px": [60.3, 81.7], "rotation_rad": 0.05, "magnification": 1.7,
             "mirror": False, "radial_k1": 0.0}
CALIBRATION = {"stages": ["sensor", "geometry"], "sensor": {"frames": 2, "read_frames": 4, "num_exposures": 4}}


@pytest.fixture(scope="module")
def untrained_student(tmp_path_factory):
    """An (untrained) optical student saved as a run folder: the design the bench shows; (run, model, data)."""
    torch.manual_seed(0)
    student = build_model(MODEL)
    run = tmp_path_factory.mktemp("student")
    save_checkpoint(run / "checkpoints" / "best.pt", {"model": student.state_dict(), "config": {"model": MODEL}})
    return run, student.eval(), (blob_dataset(400, 0), blob_dataset(200, 1))


def lab_job(tmp_path, student, **camera):
    """write_job's job with its bench's camera made lab-like (``camera`` fields added)."""
    write_job(tmp_path, student, calibration=CALIBRATION, capture={"fractions": [0.2], "test_size": 100})
    bench = yaml.safe_load((tmp_path / "bench.yaml").read_text())
    bench["camera"].update({"exposure_s": 0.01, **camera})
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    job = load_job(tmp_path / "job.yaml")
    job.datasets = student[2]
    return job


def test_the_grid_is_located_into_the_run_folder_and_the_bench_uses_it(tmp_path, untrained_student):
    job = lab_job(tmp_path, untrained_student, placement=PLACEMENT, locate="grid_named.yaml")
    run_job(job, until="calibrate", progress=False)
    run = job.run_dir
    record = json.loads((run / "locate.json").read_text())
    assert record["grid"] == str(run / "grid.yaml") and (run / "grid.png").is_file()
    assert record["frame_shape"] == PLACEMENT["sensor_shape"] and not record["mirror"]
    assert record["magnification"] == pytest.approx(PLACEMENT["magnification"], rel=0.01)
    assert not (tmp_path / "grid_named.yaml").exists()  # the bench's file is not written: the run's is used
    assert yaml.safe_load((run / "bench.yaml").read_text())["camera"]["locate"] == str(run / "grid.yaml")
    state = read_state(run)
    assert state["finished"] == ["train", "export", "locate", "calibrate"]
    assert {"grid.yaml", "grid.png", "locate.json"} <= set(state["outputs"]["locate"])
    from calibration.file import load_calibration

    calibration = load_calibration(run / "calibration.h5")  # measured on the design's frame, resampled
    assert calibration.bench_settings["camera"]["located"]
    assert calibration.sensor.dark_frame(0.01).shape == untrained_student[1].frontend.frame_shape


def test_a_bench_without_a_location_to_make_is_left_alone(tmp_path, untrained_student):
    (tmp_path / "plain").mkdir()
    job = lab_job(tmp_path / "plain", untrained_student)
    run_job(job, until="locate", progress=False)
    assert "skipped" in json.loads((job.run_dir / "locate.json").read_text())
    assert not (job.run_dir / "grid.yaml").exists() and read_state(job.run_dir)["finished"][-1] == "locate"
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "grid.yaml").write_text("schema: anything\n")  # a location the user made: used as is
    job = lab_job(tmp_path / "given", untrained_student, placement=PLACEMENT, locate="grid.yaml")
    run_job(job, until="locate", progress=False)
    record = json.loads((job.run_dir / "locate.json").read_text())
    assert "exists: used as is" in record["skipped"] and record["grid"] == str(tmp_path / "given" / "grid.yaml")


def test_a_location_made_for_another_design_is_made_again_in_the_run_folder(tmp_path, untrained_student, caplog):
    stale = GridLocation.from_affine(np.array([[1.7, 0.0, 10.0], [0.0, 1.7, 12.0]]), (120, 160), (50, 50), spots=4,
                                     residual_rms_px=0.1)  # an older design's frame: 50 x 50
    stale.save(tmp_path / "grid.yaml")
    job = lab_job(tmp_path, untrained_student, placement=PLACEMENT, locate="grid.yaml")
    run_job(job, until="locate", progress=False)
    record = json.loads((job.run_dir / "locate.json").read_text())
    assert record["grid"] == str(job.run_dir / "grid.yaml")
    assert "was located for a design frame of (50, 50)" in record["bench_file"]
    assert "was located for a design frame of (50, 50)" in caplog.text
    assert GridLocation.load(tmp_path / "grid.yaml").design_shape == (50, 50)  # the bench's file is left as it was


def test_a_grid_not_found_names_the_picture_in_the_run_folder(tmp_path, untrained_student):
    job = lab_job(tmp_path, untrained_student, placement={**PLACEMENT, "center_px": [-500.0, -500.0]},
                  locate="grid.yaml")
    with pytest.raises(LocateError, match=f"annotated frame: {job.run_dir / 'grid.png'}"):
        run_job(job, until="calibrate", progress=False)
    assert (job.run_dir / "grid.png").is_file() and "locate" not in read_state(job.run_dir)["finished"]
