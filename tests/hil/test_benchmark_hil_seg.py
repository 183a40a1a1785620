"""benchmarks/hil.py's segmentation entry: a job run's figures with per-seed values and the calibration fit."""

import json

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
