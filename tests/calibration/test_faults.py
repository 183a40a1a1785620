"""Calibration on a faulty bench: every frame read goes through the bench's retries, so camera faults
(3 % each of timeouts, I/O errors, stale and dropped frames) and SLM faults (2 % each of timeouts and
I/O errors) neither stop it nor change what it finds."""

from __future__ import annotations

import pytest
import torch

from calibration.api import calibrate
from drivers.config import open_bench
from tests.calibration.benches import bench_config
from tests.calibration.test_calibrate import FAST, SPEC, nominal

#: Per frame (camera) and per show (SLM): 3 % of each camera fault, 2 % of each SLM fault.
CAMERA_FAULTS = {"timeout_rate": 0.03, "exception_rate": 0.03, "stale_rate": 0.03, "drop_rate": 0.03}
SLM_FAULTS = {"timeout_rate": 0.02, "exception_rate": 0.02}


def faulty_bench(seed: int):
    config = bench_config({"errors": {"seed": 19, "spec": SPEC}})
    config["camera"]["faults"] = {"seed": seed, **CAMERA_FAULTS}
    config["slm"]["faults"] = {"seed": seed + 1, **SLM_FAULTS}
    return open_bench(config)


@pytest.fixture(scope="module")
def calibrated_under_faults():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with faulty_bench(seed=11) as bench:
            calibration = calibrate(bench, nominal(), FAST)
            return calibration, bench.camera.optics, dict(bench.camera.faults.counts), dict(bench.slm.faults.counts)
    finally:
        torch.set_num_threads(threads)


def test_every_stage_completes_and_the_faults_happened(calibrated_under_faults):
    calibration, _, camera_faults, slm_faults = calibrated_under_faults
    assert calibration.stages == ["sensor", "display", "geometry", "psf", "fit"]
    for kind in ("timeout", "exception", "stale", "drop"):
        assert camera_faults[kind] > 0, f"no camera {kind} fault was injected: the test would prove nothing"
    assert slm_faults["timeout"] + slm_faults["exception"] > 0


def test_the_results_are_those_of_a_healthy_bench(calibrated_under_faults):
    calibration, truth, _, _ = calibrated_under_faults
    fit = calibration.fit.errors
    assert float((fit.shift_px - truth.errors.shift_px).abs().max()) < 0.05
    assert float((fit.brightness / truth.errors.brightness - 1).abs().max()) < 0.01
    noise = calibration.pixel_noise()
    assert noise.e_per_dn == pytest.approx(truth.sensor.gain_e_per_dn / truth.sensor.justify_scale, rel=0.03)
