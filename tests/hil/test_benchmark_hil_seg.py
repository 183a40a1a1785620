"""benchmarks/hil.py's segmentation entry: a job run's figures with per-seed values and the calibration fit."""

import json

import pytest

from benchmarks.hil import segmentation_figures


def _cell(values, seeds=(0, 1)):
    return {"mean": sum(values) / len(values), "std": None, "seeds": list(seeds), "mious": list(values),
            "recovered_fraction": None}


def test_segmentation_figures_keep_each_seed_and_the_fit_summary(tmp_path):
    evaluation = {"metric": "miou", "design": 0.84, "design_noisy": 0.84, "perfect_fabrication": 0.84,
                  "uncompensated": 0.55, "calibration_layer": 0.60, "teacher": {"teacher": 0.87},
                  "left_out": {"ntkd": "teacher"},
                  "design_ft": {"0.03": _cell([0.83, 0.85])},
                  "by_fraction": {"e2e": {"0.01": _cell([0.80, 0.82]), "0.03": _cell([0.81, 0.83])}}}
    fit = {"stages": ["geometry", "photometry", "optics", "residual"],
           "chi2_reduced": {"design": 100.0, "optics": 50.0, "residual": 1.02},
           "holdout_residual_over_noise": {"all": 1.0, "images": 1.01}, "psf_residual_after": 0.05}
    (tmp_path / "report.json").write_text(json.dumps({"evaluation": evaluation, "calibration": {"fit": fit},
                                                      "design": {"converged": False}, "seconds": {"train": 1.0}}))
    figures = segmentation_figures(tmp_path)
    assert figures["calibration_layer"] == 0.60
    assert figures["design_ft"] == {"0.03": 0.84}
    assert figures["per_seed"]["design_ft"] == {"0.03": {"0": 0.83, "1": 0.85}}
    assert figures["per_seed"]["by_fraction"]["e2e"]["0.01"] == {"0": 0.80, "1": 0.82}
    assert figures["calibration_fit"] == {"stages": fit["stages"], "chi2_reduced": 1.02,
                                          "holdout_residual_over_noise": 1.0, "psf_residual_after": 0.05}
    assert figures["left_out"] == {"ntkd": "teacher"}
    assert segmentation_figures(tmp_path / "missing") is None


def test_device_row_keeps_the_mious_of_a_segmentation_evaluation(tmp_path):
    from benchmarks.hil import device_row

    (tmp_path / "capture.json").write_text(json.dumps({"exposure": {"exposure_s": 0.0045},
                                                       "test": {"clipped_pixel_fraction": 0.0}}))
    evaluation = {"metric": "miou", "test_samples": 1000, "design": 0.84, "design_noisy": 0.84,
                  "perfect_fabrication": 0.84, "uncompensated": 0.55, "calibration_layer": 0.60,
                  "design_ft": {"0.03": _cell([0.84, 0.85])},
                  "by_fraction": {"e2e": {"0.03": {**_cell([0.82, 0.84]), "recovered_fraction": 0.9}}}}
    tuning = {"0.03": {"design_ft": {"lr0.001_w1": 0.85, "lr0.003_w1": 0.84},
                       "e2e": {"lr0.001_w1": 0.83, "lr0.003_w1": 0.83}}}
    row = device_row(1, evaluation, tuning, tmp_path)
    assert row["design_ft"]["0.03"] == {"mean": 0.845, "mious": [0.84, 0.85], "setting": "lr0.001_w1"}
    assert row["by_fraction"]["e2e"]["0.03"]["mious"] == [0.82, 0.84]
    assert row["by_fraction"]["e2e"]["0.03"]["setting"] == "lr0.001_w1"  # a tie: the smaller rate
    assert row["calibration_layer"] == 0.60 and row["teacher"] is None


def test_segmentation_across_devices_means_intervals_and_recovered_fractions():
    """Two devices: the mean and 95 % t-interval of each figure (t_0.975,1 = 12.706), the recovered fraction
    per device against its own design_ft and uncompensated; a device without its shape check drops that row."""
    from benchmarks.hil import segmentation_across

    def device(uncompensated, design_ft, e2e, shape):
        return {"design": 0.84, "uncompensated": uncompensated, "calibration_layer": uncompensated + 0.02,
                "design_ft": {"0.03": design_ft}, "by_fraction": {"e2e": {"0.03": e2e}}, "layer_shape_check": shape}

    shape = {"captured": 60.0, "calibrated_model": 60.0, "without_kernel_error": 70.0,
             "without_kernel_error_blur_zernike": 80.0}
    across = segmentation_across({"a": device(0.50, 0.84, 0.80, shape), "b": device(0.60, 0.84, 0.82, shape)})
    assert across["devices"] == 2
    assert across["uncompensated"]["mean"] == 0.55
    assert across["uncompensated"]["ci95"] == pytest.approx(12.706 * 0.05, rel=1e-4)  # std 0.0707 / sqrt(2)
    recovered = across["by_fraction"]["e2e"]["0.03"]["recovered_fraction"]
    assert recovered["devices"] == pytest.approx([0.30 / 0.34, 0.22 / 0.24])
    assert across["layer_shape_check"]["without_kernel_error"]["mean"] == 70.0
    assert "layer_shape_check" not in segmentation_across({"a": device(0.5, 0.84, 0.8, shape),
                                                           "b": device(0.6, 0.84, 0.82, None)})
    assert segmentation_across({}) is None


def test_the_benchmark_writes_each_devices_job_config(tmp_path):
    """A segmentation device other than the first: run_sim_seg.yaml with the device's fabrication file
    (its error seed), the first device's student and teacher, its own folder; a classification device
    captures the benchmark's 2000 validation images. The jobs load (their configs are valid)."""
    import argparse

    from benchmarks.hil import CAPTURE_SET, EXAMPLES, Benchmark
    from onn_core import config as config_io

    args = argparse.Namespace(config=EXAMPLES / "run_sim.yaml", fabrication=EXAMPLES / "optics_fabricated.yaml",
                              root=tmp_path, seg_config=EXAMPLES / "run_sim_seg.yaml", seg_device=3,
                              devices=[1, 2, 3], seeds=[0, 1], redo=None)
    bench = Benchmark(args)
    job = bench.seg_job()
    written = config_io.load_yaml(tmp_path / "configs" / "seg_device_3.yaml")
    assert written["student"] == {"run_dir": str(tmp_path / "seg_device_1" / "student")}
    assert written["teacher"] == {"run_dir": str(tmp_path / "seg_device_1" / "teacher")}
    assert written["out_dir"] == str(tmp_path / "seg_device_3") and job.run_dir == tmp_path / "seg_device_3"
    fabrication = config_io.load_yaml(written["fabrication"])
    assert fabrication["errors"]["seed"] == 3
    assert written["capture"] == config_io.load_yaml(EXAMPLES / "run_sim_seg.yaml")["capture"]  # seg: as it is
    assert CAPTURE_SET == {"val_size": 2000}
    assert bench.job(2).config.capture.val_size == 2000
    first = Benchmark(argparse.Namespace(**{**vars(args), "seg_device": 1})).seg_job()
    assert first.run_dir == tmp_path / "seg_device_1" and not (tmp_path / "configs" / "seg_device_1.yaml").exists()
