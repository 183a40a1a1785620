"""calibrate() end to end, the calibration file, the calibration layer and the `hil calibrate` CLI."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch

from calibration import file as calfile
from calibration.api import STAGES, CalibrationConfig
from calibration.cli import FILE_NAME
from calibration.errors import CalibrationFileError
from calibration.layer import CalibrationLayer, shift_tiles
from hil.cli import main
from onn_core.errors import ConfigError
from simulator.system import OpticalSystem
from tests.calibration.benches import bench_config, calibrate_on_one_thread, example_optics
from tests.calibration.test_hdf5 import corrupt

FAST = {"sensor": {"frames": 4, "read_frames": 4, "num_exposures": 6}, "display": {"levels": 9, "frames": 2},
        "geometry": {"averages": 2, "phases": 2}, "psf": {"averages": 2},
        "fit": {"stages": ["geometry", "photometry"], "zernike_noll": []}}
SPEC = {"shift_std_px": 0.5, "brightness_rel_std": 0.1, "crosstalk": 0.003, "vignetting_tan_edge": 0.1}


def nominal() -> OpticalSystem:
    return OpticalSystem.from_config({**example_optics(), "errors": None})


@pytest.fixture(scope="module")
def calibrated():
    """One calibration of a bench with injected errors (module-scoped: measured once, on one thread)."""
    return calibrate_on_one_thread({"seed": 19, "spec": SPEC}, FAST)


def test_calibrate_runs_every_stage_and_recovers_the_injected_errors(calibrated):
    calibration, truth = calibrated
    assert calibration.stages == list(STAGES)
    fit = calibration.fit.errors
    assert float((fit.shift_px - truth.errors.shift_px).abs().max()) < 0.05
    assert float((fit.brightness / truth.errors.brightness - 1).abs().max()) < 0.01
    noise = calibration.pixel_noise()
    scale = truth.sensor.justify_scale
    assert noise.e_per_dn == pytest.approx(truth.sensor.gain_e_per_dn / scale, rel=0.03)
    assert noise.read_noise_dn * noise.e_per_dn == pytest.approx(truth.sensor.read_noise_e, rel=0.03)
    # geometry's centroid offsets agree with the fitted shifts (the example design PSFs move as a whole)
    np.testing.assert_allclose(calibration.geometry.offsets_px, fit.shift_px.numpy(), atol=0.1)


def test_the_calibrated_forward_model_predicts_the_bench(calibrated):
    calibration, truth = calibrated
    model = calibration.calibrated_system()
    gray = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = model.photon_rate_frame(gray)
        actual = truth.photon_rate_frame(gray)
        design = nominal().photon_rate_frame(gray)
    error = float((predicted - actual).norm() / actual.norm())
    assert error < 0.02 and error < 0.1 * float((design - actual).norm() / actual.norm())


def test_the_layer_aligns_a_fabricated_bench_to_the_design(calibrated):
    """Noise-free frames of the truth through the layer are much closer to the design's features
    than the nominal cut is (shift, brightness and vignetting undone)."""
    calibration, truth = calibrated
    layer = calibration.layer()
    gray = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        frames = truth.frame(gray, 0.01, noise=False)
        design = nominal().eval()(gray.double() / 255)
        aligned = layer(frames, 0.01)
        raw = nominal().features(frames, 0.01)
    error_layer = float((aligned - design).norm() / design.norm())
    error_raw = float((raw - design).norm() / design.norm())
    assert error_layer < 0.5 * error_raw


def test_the_layer_of_an_identity_calibration_is_the_nominal_cut():
    system = OpticalSystem.from_config({**example_optics(), "errors": None,
                                        "sensor": {**example_optics()["sensor"], "noise": False}})
    p = system.num_psfs
    offset = system.sensor.offset_dn * system.sensor.justify_scale
    layer = CalibrationLayer(system, shift_px=torch.zeros(p, 2), brightness=torch.ones(p),
                             vignetting=torch.ones(system.frame_shape), e_per_dn=system.sensor.gain_e_per_dn
                             / system.sensor.justify_scale, dark_dn=lambda t: np.full(system.frame_shape, offset))
    gray = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    frames = system.frame(gray, noise=False)
    torch.testing.assert_close(layer(frames, 0.01), system.features(frames).float(), atol=1e-6, rtol=0)


def test_shift_tiles_moves_content_by_whole_and_sub_pixels():
    tiles = torch.zeros(1, 2, 16, 18, dtype=torch.float64)
    tiles[0, 0, 2, 3] = 1
    y, x = torch.meshgrid(torch.arange(16.0, dtype=torch.float64), torch.arange(18.0, dtype=torch.float64), indexing="ij")

    def blob(cy, cx):  # a smooth (nearly band-limited) Gaussian spot
        return torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 1.6**2))

    tiles[0, 1] = blob(7.0, 8.0)
    out = shift_tiles(tiles, torch.tensor([[1.0, 2.0], [0.5, -0.25]], dtype=torch.float64))
    expected = torch.zeros(16, 18, dtype=torch.float64)
    expected[3, 5] = 1
    torch.testing.assert_close(out[0, 0], expected, atol=1e-12, rtol=0)  # whole pixels: exact
    torch.testing.assert_close(out[0, 1], blob(7.5, 7.75), atol=2e-3, rtol=0)


def test_the_calibration_file_round_trips_and_is_never_overwritten(calibrated, tmp_path):
    calibration, _ = calibrated
    path = calfile.save_calibration(calibration, tmp_path / "cal.h5")
    back = calfile.load_calibration(path)
    assert back.calibration_id == calibration.calibration_id and back.stages == calibration.stages
    torch.testing.assert_close(back.fit.errors.shift_px, calibration.fit.errors.shift_px, rtol=0, atol=0)
    assert back.fit.parameters == calibration.fit.parameters and back.fit.settings == calibration.fit.settings
    assert back.fit.chi2_reduced == calibration.fit.chi2_reduced
    np.testing.assert_array_equal(back.psf.rate, calibration.psf.rate)
    assert back.sensor.pixel_noise == calibration.sensor.pixel_noise
    with h5py.File(path) as f:
        assert f.attrs["schema"] == calfile.SCHEMA and "torch" in f.attrs["versions_json"]
    before = path.read_bytes()
    with pytest.raises(CalibrationFileError, match="never overwritten"):
        calfile.save_calibration(calibration, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cal.h5"]


def test_an_interrupted_save_leaves_nothing(calibrated, tmp_path, monkeypatch):
    calibration, _ = calibrated

    def interrupted(self, group):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(calibration.fit), "to_hdf5", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calfile.save_calibration(calibration, tmp_path / "cal.h5")
    assert list(tmp_path.iterdir()) == []


def test_foreign_truncated_and_other_bench_files_are_refused(calibrated, tmp_path, caplog):
    calibration, _ = calibrated
    good = calfile.save_calibration(calibration, tmp_path / "good.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CalibrationFileError, match="truncated or foreign"):
        calfile.load_calibration(truncated)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["schema"] = "something.else"
    with pytest.raises(CalibrationFileError, match="not a calibration file"):
        calfile.load_calibration(foreign)
    missing = tmp_path / "missing_stage.h5"
    missing.write_bytes(good.read_bytes())
    with h5py.File(missing, "a") as f:
        del f["fit"]
    with pytest.raises(CalibrationFileError, match="'fit' listed but missing"):
        calfile.load_calibration(missing)
    other = {**example_optics(), "geometry": {**example_optics()["geometry"], "gap_px": 6}}
    config = bench_config()
    config["camera"]["optics"] = other
    from drivers.config import open_bench

    with open_bench(config) as bench:
        with pytest.raises(CalibrationFileError, match="this bench has"):
            calfile.load_calibration(good, bench=bench)
    with open_bench(bench_config()) as bench, caplog.at_level(logging.WARNING, logger="calibration.file"):
        bench.camera.black_level = 64.0
        changed = calfile.check_bench(calfile.load_calibration(good), bench)
    assert changed and any("black_level" in c for c in changed) and "other device settings" in caplog.text



def test_every_stored_result_has_a_schema_and_changed_data_bytes_are_reported(calibrated, tmp_path):
    """Every stage group (the fit's included) carries a schema and version; a dataset whose bytes
    changed on disk is refused by its checksum, naming the dataset."""
    calibration, _ = calibrated
    path = calfile.save_calibration(calibration, tmp_path / "cal.h5")
    with h5py.File(path) as f:
        assert all("schema" in f[stage].attrs and "schema_version" in f[stage].attrs for stage in STAGES)
        assert f["fit/parameters"].fletcher32 and f["psf/exposures_s"].fletcher32
    corrupt(path, "psf/exposures_s")
    with pytest.raises(CalibrationFileError, match="dataset /psf/exposures_s is corrupted"):
        calfile.load_calibration(path)

def test_a_bad_calibration_config_names_the_field():
    with pytest.raises(ConfigError, match="calibration.stages"):
        CalibrationConfig.from_dict({"stages": ["sensor", "focus"]})
    with pytest.raises(ConfigError, match="'psf' as well"):
        CalibrationConfig.from_dict({"stages": ["fit"]})
    with pytest.raises(ConfigError, match="calibration.fit.kernel_error_prior"):
        CalibrationConfig.from_dict({"fit": {"kernel_error_prior": "big"}})


def test_cli_writes_the_calibration_and_its_report_refuses_to_overwrite_and_rebuilds_the_report(tmp_path, capsys):
    import yaml

    bench = bench_config({"errors": {"seed": 4, "spec": {"shift_std_px": 0.3}}})
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    (tmp_path / "optics.yaml").write_text(yaml.safe_dump(example_optics()))
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump({"bench": "bench.yaml", "optics": "optics.yaml",
                                                       "calibration": FAST}))
    out = tmp_path / "out"
    assert main(["calibrate", str(tmp_path / "cal.yaml"), "--out", str(out), "--stages", "geometry,psf,fit"]) == 0
    assert str(out / FILE_NAME) in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {FILE_NAME, "report.json", "report.md", "psfs.png", "registration.png"} <= names
    assert calfile.load_calibration(out / FILE_NAME).stages == ["geometry", "psf", "fit"]
    before = (out / FILE_NAME).read_bytes()
    assert main(["calibrate", str(tmp_path / "cal.yaml"), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (out / FILE_NAME).read_bytes() == before
    assert main(["calibrate", str(tmp_path / "cal.yaml"), "--out", str(tmp_path / "o2"), "--stages", "fit"]) == 2
    assert "calibration.stages" in capsys.readouterr().err
    # a run killed after writing calibration.h5 leaves no report: --report-only rebuilds it, opening no bench
    report_json = (out / "report.json").read_text()
    for name in names - {FILE_NAME}:
        (out / name).unlink()
    (tmp_path / "bench.yaml").unlink()
    assert main(["calibrate", "--report-only", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == names and (out / "report.json").read_text() == report_json
    assert main(["calibrate", "--report-only", str(tmp_path)]) == 2
    assert "no such calibration file" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "cal.yaml"), "--report-only", str(out)]) == 2
    assert "takes no CONFIG" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "cal.yaml")]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_calibration_summary_is_json_ready(calibrated):
    import json

    calibration, _ = calibrated
    back = json.loads(json.dumps(calibration.summary()))
    assert back["fit"]["chi2_reduced"] == calibration.fit.chi2_reduced and back["stages"] == list(STAGES)
