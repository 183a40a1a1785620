"""The verdicts a lab reads first: graded from constructed results (ok / check / failed), and the
report opening with them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from calibration.api import Calibration
from calibration.report import markdown, verdict_lines
from calibration.verdict import grade, holdout_verdict, psf_verdicts, stage_verdicts, tile_residual_over_noise
from simulator.system import OpticalSystem
from tests.calibration.benches import example_optics


def fit_summary(chi2: float, stages=("geometry", "photometry", "optics", "residual"), **extra) -> dict:
    return {"chi2_reduced": {"design": 900.0, stages[-1]: chi2}, "stages": list(stages), "sigma_scale": 1.0,
            "unidentifiable": [], **extra}


@pytest.mark.parametrize("value, status", [(0.05, "ok"), (0.2, "check"), (0.5, "failed"), (float("nan"), "failed")])
def test_a_figure_is_graded_by_its_limits(value, status):
    assert grade(value, 0.1, 0.3) == status


def test_a_larger_is_better_figure_is_graded_the_other_way():
    assert [grade(v, 50, 5, larger_is_better=True) for v in (80, 20, 2)] == ["ok", "check", "failed"]


def test_each_stage_gets_a_verdict_with_its_figure_threshold_and_advice():
    summary = {"sensor": {"ptc_chi2_reduced": 1.1}, "geometry": {"rms_px_max": 0.2}, "psf": {"snr_min": 3.0},
               "fit": fit_summary(12.0, sigma_scale=3.46)}
    graded = {v.subject: v for v in stage_verdicts(summary, zernike_noll=(4, 5, 6))}
    assert set(graded) == {"sensor", "geometry", "psf", "fit"}
    assert graded["sensor"].status == "ok" and graded["sensor"].advice == ""
    assert graded["geometry"].status == "check" and "focus" in graded["geometry"].advice
    assert graded["geometry"].threshold == "ok <= 0.1 px, check <= 0.3 px" and graded["geometry"].unit == "px"
    assert graded["psf"].threshold == "ok >= 50, check >= 5"
    assert graded["psf"].status == "failed" and graded["psf"].value == 3.0
    fit = graded["fit"]
    assert fit.status == "failed" and fit.value == 12.0 and "Zernike 7-11" in fit.advice and "x3.5" in fit.advice


def test_the_fit_advice_names_the_stage_to_add_and_unidentifiable_terms_are_checked():
    geometry_only = stage_verdicts({"fit": fit_summary(3.0, stages=("geometry",), unidentifiable=["zernike_m[0][noll 11]"])})
    assert [v.status for v in geometry_only] == ["check", "check"]
    assert "add the optics stage" in geometry_only[0].advice and "1 parameters" in geometry_only[1].advice
    assert stage_verdicts({"fit": fit_summary(1.2)})[0].status == "ok"


def test_the_held_out_residual_is_graded_after_the_fits_chi_square():
    held_out = {"point_grid": 1.1, "images": 2.4, "all": 2.0}
    graded = stage_verdicts({"fit": fit_summary(1.2, holdout_residual_over_noise=held_out)})
    assert [(v.figure, v.status) for v in graded] == [("chi2_reduced", "ok"), ("held-out residual over noise", "check")]
    assert graded[1].value == 2.0 and graded[1].threshold == "ok <= 1.5x noise, check <= 3x noise"
    assert graded[1].unit == "x noise"
    assert len(stage_verdicts({"fit": fit_summary(1.2, holdout_residual_over_noise={})})) == 1  # not measured


@pytest.mark.parametrize("pooled, status", [(1.0, "ok"), (1.5, "ok"), (1.51, "check"), (3.0, "check"), (3.01, "failed")])
def test_the_held_out_residual_is_ok_to_1_5_check_to_3_and_failed_beyond(pooled, status):
    verdict = holdout_verdict({"point_grid": pooled, "images": pooled, "all": pooled})
    assert verdict.status == status and verdict.value == pooled
    assert (verdict.advice == "") == (status == "ok")


def test_the_held_out_advice_names_each_part_and_what_the_failing_one_points_to():
    images = holdout_verdict({"point_grid": 1.1, "images": 4.0, "all": 3.2})
    assert images.status == "failed"
    assert images.advice.startswith("held out: point grid 1.1x, images 4x. ")
    assert "display response" in images.advice and "field-dependent" not in images.advice
    grid = holdout_verdict({"point_grid": 2.6, "images": 1.2, "all": 1.9})
    assert grid.status == "check" and "field-dependent aberration" in grid.advice and "kernel_error_window_px" in grid.advice
    worst = holdout_verdict({"point_grid": 1.2, "images": 3.5})  # no pooled figure: the worst part is graded
    assert (worst.value, worst.status) == (3.5, "failed")
    assert holdout_verdict({}) is None


def test_only_psfs_far_above_the_median_misfit_are_flagged_worst_first():
    ratio = np.array([1.1, 1.0, 1.2, 4.4, 1.05, 2.0, 1.1])  # median 1.1
    flagged = psf_verdicts(ratio, zernike_noll=(4, 5, 6), residual_stage=True)
    assert [(v.subject, v.status) for v in flagged] == [("PSF 3", "failed"), ("PSF 5", "check")]
    assert flagged[0].advice.startswith("PSF 3 residual 4.4x the noise: dust or a missing aberration term; "
                                        "refit with Zernike 7-11")
    assert psf_verdicts(np.full(16, 5.0)) == []  # a uniform misfit is the stage's verdict, not a PSF's


def test_the_report_opens_with_the_verdicts():
    geometry = SimpleNamespace(summary=lambda: {"rms_px_max": 0.5, "tiles": 16})
    calibration = Calibration(optics={}, bench_settings={}, config={}, created_utc="2026-12-05T22:00:00Z",
                              calibration_id="c1", geometry=geometry)
    text = markdown(calibration, {}, stage_verdicts(calibration.summary()))
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings[:3] == ["# Calibration c1", "## Verdict", "## Geometry"]
    assert ("| geometry | **failed** | worst tile's reprojection RMS (rms_px_max) = 0.5 px | ok <= 0.1 px, "
            "check <= 0.3 px | spots sit off") in text
    assert "Overall: **failed** (1 failed)." in text
    assert "Where the model fails" not in "\n".join(verdict_lines([]))


def test_each_psfs_residual_over_the_noise_is_the_root_of_its_tiles_chi_square_per_pixel():
    system = OpticalSystem.from_config({**example_optics(), "errors": None})
    shape = system.frame_shape
    mask = np.zeros(shape, dtype=bool)
    for p in range(system.num_psfs):
        rows, cols = system.layout.tile_slices(p)
        mask[rows.start:rows.start + 5, cols.start:cols.start + 5] = True
    variance = np.full(shape, 4.0)
    model = np.full(shape, 100.0)
    rate = model + 2.0  # 1 sigma everywhere ...
    rows, cols = system.layout.tile_slices(3)
    rate[rows, cols] = model[rows, cols] + 6.0  # ... 3 sigma on PSF 3
    rate[~mask] = 1e6  # pixels outside the fitted windows do not count
    calibration = SimpleNamespace(psf=SimpleNamespace(rate=rate, variance=variance, mask=mask),
                                  fit=SimpleNamespace(model_rate=model), nominal_system=lambda: system)
    expected = np.ones(system.num_psfs)
    expected[3] = 3.0
    np.testing.assert_allclose(tile_residual_over_noise(calibration), expected)
