"""Resuming a stopped calibration from its partial file, refitting an earlier calibration's
measurements (``hil calibrate --stages fit --from``) and the per-stage progress."""

from __future__ import annotations

import hashlib
import logging

import h5py
import numpy as np
import pytest
import yaml

import calibration.api as api
from calibration import file as calfile
from calibration.api import CalibrationConfig, StageProgress, calibrate, expected_frames
from calibration.cli import FILE_NAME, PARTIAL_NAME
from calibration.errors import CalibrationFileError
from calibration.fit import fit_mismatch
from hil.cli import main
from onn_core.errors import HilError
from simulator.system import OpticalSystem
from tests.calibration.benches import bench_config, example_optics, simulated_bench

FAST = {"sensor": {"frames": 4, "read_frames": 4, "num_exposures": 6}, "display": {"levels": 9, "frames": 2},
        "geometry": {"averages": 2, "phases": 2}, "psf": {"averages": 2},
        "fit": {"stages": ["geometry"], "zernike_noll": []}}
ERRORS = {"errors": {"seed": 23, "spec": {"shift_std_px": 0.4, "brightness_rel_std": 0.05}}}
MEASURE = {"sensor": "measure_sensor", "display": "measure_display_response", "geometry": "measure_geometry",
           "psf": "measure_psfs", "fit": "fit_mismatch"}


def nominal() -> OpticalSystem:
    return OpticalSystem.from_config({**example_optics(), "errors": None})


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored(result) -> dict:
    """Every dataset and attribute a stage result writes (its exact stored form)."""
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        result.to_hdf5(f.create_group("g"))
        out = {}
        f["g"].visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out.update({f"@{k}": v for k, v in f["g"].attrs.items()})
        return out


def assert_same(a, b):
    x, y = stored(a), stored(b)
    assert sorted(x) == sorted(y)
    for key in x:
        if isinstance(x[key], np.ndarray):
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        else:
            assert x[key] == y[key], key


@pytest.fixture
def counted(monkeypatch):
    """Calls of each stage's measuring (or fitting) function inside calibrate()."""
    calls = {stage: 0 for stage in MEASURE}
    for stage, name in MEASURE.items():
        original = getattr(api, name)

        def counting(*args, _stage=stage, _original=original, **kwargs):
            calls[_stage] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(api, name, counting)
    return calls


@pytest.fixture(scope="module")
def straight():
    """A calibration run straight through (no progress file) on the bench the resume tests use."""
    with simulated_bench(ERRORS) as bench:
        return calibrate(bench, nominal(), FAST)


def stop_in_psf(monkeypatch, error):
    def stopped(*args, **kwargs):
        raise error

    monkeypatch.setattr(api, "measure_psfs", stopped)


def test_a_stopped_calibration_resumes_after_its_last_stage_and_matches_a_straight_run(
        straight, tmp_path, monkeypatch, counted, caplog):
    partial = tmp_path / PARTIAL_NAME
    with monkeypatch.context() as patch:
        stop_in_psf(patch, KeyboardInterrupt())
        with simulated_bench(ERRORS) as bench, pytest.raises(KeyboardInterrupt):
            calibrate(bench, nominal(), FAST, progress_file=partial)
    assert counted == {"sensor": 1, "display": 1, "geometry": 1, "psf": 0, "fit": 0}
    with h5py.File(partial, "r") as f:
        assert f.attrs["partial"] and f.attrs["stages_done"] == '["sensor", "display", "geometry"]'
    # never taken for a finished calibration
    with pytest.raises(CalibrationFileError, match=r"partial calibration \(stages done: sensor, display, geometry\).*--from"):
        calfile.load_calibration(partial)
    first = calfile.load_calibration(partial, partial_ok=True)

    with caplog.at_level(logging.INFO, logger="calibration"), simulated_bench(ERRORS) as bench:
        resumed = calibrate(bench, nominal(), FAST, progress_file=partial)
    assert counted == {"sensor": 1, "display": 1, "geometry": 1, "psf": 1, "fit": 1}  # nothing measured twice
    assert resumed.calibration_id == first.calibration_id and resumed.stages == list(api.STAGES)
    for stage in ("sensor", "display", "geometry"):
        assert_same(getattr(resumed, stage), getattr(straight, stage))
    text = caplog.text
    assert "calibration stage 1/5 sensor: kept from" in text and "calibration stage 4/5 psf: started" in text
    assert "calibration stage 5/5 fit: done in" in text

    # the finished file is written, then the partial removed; the partial file's data are the same
    final = tmp_path / FILE_NAME
    calfile.save_calibration(resumed, final, partial_file=partial)
    assert not partial.exists()
    loaded = calfile.load_calibration(final)
    assert loaded.calibration_id == resumed.calibration_id
    assert_same(loaded.psf, resumed.psf)


def test_changed_stage_settings_redo_that_stage_and_the_later_ones_only(tmp_path, counted):
    partial = tmp_path / PARTIAL_NAME
    with simulated_bench(ERRORS) as bench:
        done = calibrate(bench, nominal(), FAST, progress_file=partial)
    assert counted == dict.fromkeys(MEASURE, 1)
    changed_psf = {**FAST, "psf": {"averages": 3}}
    with simulated_bench(ERRORS) as bench:
        again = calibrate(bench, nominal(), changed_psf, progress_file=partial)
    assert counted == {"sensor": 1, "display": 1, "geometry": 1, "psf": 2, "fit": 2}
    assert again.psf.averages == 3 and again.config["psf"]["averages"] == 3
    assert_same(again.geometry, done.geometry)
    # a device setting that does not matter (the exposure) and the same settings: nothing redone
    with simulated_bench(ERRORS, exposure_s=0.02) as bench:
        same = calibrate(bench, nominal(), changed_psf, progress_file=partial)
    assert counted == {"sensor": 1, "display": 1, "geometry": 1, "psf": 2, "fit": 2}
    assert_same(same.fit, again.fit)
    # fewer stages up front: the first differing stage and everything after it are redone
    with simulated_bench(ERRORS) as bench:
        calibrate(bench, nominal(), {**changed_psf, "stages": ["display", "geometry", "psf"]}, progress_file=partial)
    assert counted == {"sensor": 1, "display": 2, "geometry": 2, "psf": 3, "fit": 2}


def test_a_partial_file_of_another_bench_or_optics_is_refused_and_kept(tmp_path, monkeypatch, counted):
    partial = tmp_path / PARTIAL_NAME
    with monkeypatch.context() as patch:
        stop_in_psf(patch, HilError("camera gone"))
        with simulated_bench(ERRORS) as bench, pytest.raises(HilError, match="camera gone"):
            calibrate(bench, nominal(), FAST, progress_file=partial)
    before = sha256(partial)
    with simulated_bench(ERRORS, exposure_limits_s=(1e-5, 5.0)) as bench:
        with pytest.raises(CalibrationFileError, match=rf"{PARTIAL_NAME}.*another bench.*exposure_limits_s.*not deleted"):
            calibrate(bench, nominal(), FAST, progress_file=partial)
    other = OpticalSystem.from_config({**example_optics(), "errors": None,
                                       "photometry": {**example_optics()["photometry"], "photons_per_s": 2.5e6}})
    with simulated_bench(ERRORS) as bench:
        with pytest.raises(CalibrationFileError, match=rf"{PARTIAL_NAME}.*other nominal optics"):
            calibrate(bench, other, FAST, progress_file=partial)
    assert sha256(partial) == before and counted["sensor"] == 1
    # a finished calibration is never replaced by a progress file, nor taken for one
    final = tmp_path / FILE_NAME
    calfile.save_calibration(calfile.load_calibration(partial, partial_ok=True), final)
    with pytest.raises(CalibrationFileError, match="finished calibration"):
        calfile.save_partial(calfile.load_calibration(partial, partial_ok=True), final)
    with simulated_bench(ERRORS) as bench:
        with pytest.raises(CalibrationFileError, match="is a finished calibration .* not the progress of one"):
            calibrate(bench, nominal(), FAST, progress_file=final)


def _command_files(tmp_path, bench=None):
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench or bench_config(ERRORS)))
    (tmp_path / "optics.yaml").write_text(yaml.safe_dump(example_optics()))
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump({"bench": "bench.yaml", "optics": "optics.yaml",
                                                       "calibration": FAST}))
    return str(tmp_path / "cal.yaml")


def test_hil_calibrate_resumes_its_partial_file_and_refits_from_an_earlier_run_without_a_bench(
        tmp_path, monkeypatch, capsys, counted):
    config = _command_files(tmp_path)
    old = tmp_path / "old"
    stages = ["--stages", "geometry,psf,fit"]
    with monkeypatch.context() as patch:
        stop_in_psf(patch, HilError("camera gone"))
        assert main(["calibrate", config, "--out", str(old), *stages]) == 2
    assert "camera gone" in capsys.readouterr().err
    assert (old / PARTIAL_NAME).is_file() and not (old / FILE_NAME).exists()
    assert main(["calibrate", config, "--out", str(old), *stages]) == 0
    assert counted["geometry"] == 1 and counted["psf"] == 1
    assert (old / FILE_NAME).is_file() and not (old / PARTIAL_NAME).exists()
    capsys.readouterr()
    before = sha256(old / FILE_NAME)
    source = calfile.load_calibration(old / FILE_NAME)

    # --stages fit --from: no bench is opened (opening one fails), the old file is left byte for byte
    import drivers

    def no_bench(*args, **kwargs):
        raise AssertionError("the bench was opened")

    monkeypatch.setattr(drivers, "open_bench", no_bench)
    (tmp_path / "bench.yaml").unlink()
    refit_settings = {**FAST, "fit": {"stages": ["geometry", "photometry"], "zernike_noll": []}}
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump({"bench": "bench.yaml", "optics": "optics.yaml",
                                                       "calibration": refit_settings}))
    new = tmp_path / "new"
    assert main(["calibrate", config, "--out", str(new), "--stages", "fit", "--from", str(old)]) == 0
    out = capsys.readouterr().out
    assert f"from calibration {source.calibration_id}" in out and "report.md" in out
    assert sha256(old / FILE_NAME) == before
    refit = calfile.load_calibration(new / FILE_NAME)
    assert refit.calibration_id != source.calibration_id and refit.stages == ["geometry", "psf", "fit"]
    assert refit.provenance["measurements_from"]["calibration_id"] == source.calibration_id
    assert refit.provenance["measurements_from"]["stages"] == ["geometry", "psf"]
    assert refit.config["fit"]["stages"] == ["geometry", "photometry"]
    assert_same(refit.psf, source.psf)
    fresh = fit_mismatch(source.psf, nominal(), noise=source.pixel_noise(),
                         settings=CalibrationConfig.from_dict(refit_settings).fit)
    np.testing.assert_array_equal(refit.fit.errors.shift_px, fresh.errors.shift_px)
    np.testing.assert_array_equal(refit.fit.errors.brightness, fresh.errors.brightness)
    assert (new / "report.md").is_file() and not (new / PARTIAL_NAME).exists()

    # refused: --from without --stages, --from into its own folder, a measuring stage with no bench file
    assert main(["calibrate", config, "--out", str(tmp_path / "n2"), "--from", str(old)]) == 2
    assert "--from SOURCE needs --stages" in capsys.readouterr().err
    assert main(["calibrate", config, "--out", str(tmp_path / "n3"), "--stages", "fit",
                 "--from", str(tmp_path / "nowhere")]) == 2
    assert "no calibration file there" in capsys.readouterr().err
    assert sha256(old / FILE_NAME) == before


def test_stage_progress_logs_the_stage_its_index_and_the_time_left(caplog):
    now = [0.0]
    progress = StageProgress(["sensor", "fit"], enabled=False, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="calibration.api"):
        with progress.stage(0, "sensor", 100) as on_frame:
            for _ in range(40):
                now[0] += 0.25
                on_frame()
        with progress.stage(1, "fit", None):
            now[0] += 3
    text = caplog.text
    assert "calibration stage 1/2 sensor: started" in text
    assert "calibration stage 1/2 sensor: 20 of about 100 frames, 5.0 s, about 20 s left" in text  # 4 frames/s
    assert "calibration stage 1/2 sensor: done in 10 s, 40 frames" in text
    assert "calibration stage 2/2 fit: done in 3.0 s (13 s into the calibration)" in text
    config = CalibrationConfig.from_dict(FAST)
    assert all(expected_frames(s, config, nominal()) > 0 for s in api.MEASURING_STAGES)
    assert expected_frames("fit", config, nominal()) is None
