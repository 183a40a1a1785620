"""The calibrate step of `hil run`: a job stopped during calibration continues from the last finished
calibration stage (its partial file), and the calibration report goes into the run folder's
``calibration/``, apart from the job's own report files."""

import h5py
import pytest

import calibration.api as api
from hil.cli import main
from hil.job import read_state, run_job
from hil.job.report import CALIBRATION_REPORT_DIR, REPORT_FILES
from onn_core.errors import HilError
from tests.hil.test_run import student_run, write_job  # noqa: F401 (the module-scoped fixture)


def test_a_job_stopped_in_calibration_resumes_by_stage_and_writes_its_own_calibration_report(
        tmp_path, student_run, monkeypatch, capsys):  # noqa: F811
    calls = {"measure_sensor": 0, "measure_geometry": 0, "measure_psfs": 0}
    for name in calls:
        real = getattr(api, name)
        monkeypatch.setattr(api, name, lambda *a, _real=real, _name=name, **k: (
            calls.__setitem__(_name, calls[_name] + 1), _real(*a, **k))[1])
    job = write_job(tmp_path, student_run)
    run = job.run_dir
    with monkeypatch.context() as patch:
        def camera_gone(*args, **kwargs):
            raise HilError("camera gone")

        patch.setattr(api, "measure_psfs", camera_gone)
        with pytest.raises(HilError, match="camera gone"):
            run_job(job, progress=False, until="calibrate")
    assert "calibrate" not in read_state(run)["finished"] and not (run / "calibration.h5").exists()
    with h5py.File(run / "calibration.partial.h5", "r") as f:
        assert f.attrs["stages_done"] == '["sensor", "geometry"]'

    run_job(job, progress=False, until="calibrate")
    assert calls == {"measure_sensor": 1, "measure_geometry": 1, "measure_psfs": 1}  # nothing measured twice
    assert (run / "calibration.h5").is_file() and not (run / "calibration.partial.h5").exists()
    report_dir = run / CALIBRATION_REPORT_DIR
    assert {"report.md", "report.json", "psfs.png", "registration.png"} <= {p.name for p in report_dir.iterdir()}
    assert not any((run / name).exists() for name in REPORT_FILES)  # the job's own report: not written yet
    assert set(read_state(run)["outputs"]["calibrate"]) == {"calibration.h5"}

    # the report rebuilt from the run folder goes to the same subfolder, never over the job's files
    (report_dir / "report.md").unlink()
    assert main(["calibrate", "--report-only", str(run)]) == 0
    assert str(report_dir / "report.md") in capsys.readouterr().out
    assert (report_dir / "report.md").is_file() and not (run / "report.md").exists()

    # --from calibrate measures again: the old report moved aside with the calibration
    run_job(job, progress=False, from_step="calibrate", until="calibrate")
    assert calls["measure_sensor"] == 2
    assert len(list((run / "stale").glob(f"*/{CALIBRATION_REPORT_DIR}/report.md"))) == 1
    assert (report_dir / "report.md").is_file()
