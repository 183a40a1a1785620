"""Sensor calibration on simulated benches with known injected sensors (truth in ``bench.camera.optics``).

Frames are left-justified 12-bit codes in 16 bits, so the truth in frame DN is the sensor's per code
divided by 16 (``justify_scale``). The benches keep the example's fabrication errors (stray light,
crosstalk, vignetting, blur, ...) but no Zernike aberrations, which only cost time to build here.
"""

import json
import logging
import math

import h5py
import numpy as np
import pytest
import torch

from calibration.errors import CalibrationError, CalibrationFileError
from calibration.sensor import SensorCalibration, measure_sensor, plot
from onn_core.errors import InputError
from tests.calibration.benches import bench_config, merged, simulated_bench
from drivers.config import open_bench
from drivers.errors import ExposureError

FAST = dict(frames=4, read_frames=8, num_exposures=6)
NO_ABERRATION = {"errors": {"spec": {"zernike_std_m": [0.0] * 6}}}
#: Acceptance (issue 9): conversion gain and read noise within 3 %.
TOLERANCE = 0.03

ADC_LIMITED = {"gain_e_per_dn": 1.7, "read_noise_e": 3.3, "offset_dn": 25.0}
FULL_WELL_LIMITED = {"gain_e_per_dn": 3.1, "read_noise_e": 5.0, "offset_dn": 40.0, "full_well_e": 9000.0,
                     "quantum_efficiency": 0.8}
DEFECTS = {"prnu_rel_std": 0.012, "hot_pixel_fraction": 0.003, "hot_pixel_dark_current_e_per_s": 20000.0,
           "dead_pixel_fraction": 0.003}


def _bench(sensor=None, seed=0, **overrides):
    """A simulated bench with the sensor settings ``sensor`` and optics ``overrides``."""
    return simulated_bench(merged(NO_ABERRATION, {"seed": seed, "sensor": sensor or {}, **overrides}))


def _truth(bench):
    sensor = bench.camera.optics.sensor
    scale = sensor.justify_scale
    return sensor, scale


@pytest.mark.parametrize("sensor, seed", [(ADC_LIMITED, 5), (FULL_WELL_LIMITED, 13)])
def test_recovers_conversion_gain_read_noise_and_saturation(sensor, seed):
    with _bench(sensor, seed) as bench:
        original = bench.camera.exposure_s
        cal = measure_sensor(bench, **FAST)
        truth, scale = _truth(bench)
        assert bench.camera.exposure_s == original  # restored
    gain = truth.gain_e_per_dn / scale
    assert scale == 16 and cal.adc_step_dn == 16.0
    assert abs(cal.conversion_gain_e_per_dn / gain - 1) < TOLERANCE
    assert abs(cal.read_noise_e / truth.read_noise_e - 1) < TOLERANCE
    # the stated uncertainties are honest: the truth within 5 standard errors
    assert abs(cal.conversion_gain_e_per_dn - gain) < 5 * cal.conversion_gain_err_e_per_dn
    assert abs(cal.read_noise_e - truth.read_noise_e) < 5 * cal.read_noise_err_e
    assert cal.read_noise_dn == pytest.approx(truth.read_noise_e / gain, rel=TOLERANCE)
    # offset: the sensor's (plus ~0.2 DN of stray light in the shortest exposure; its error is ~0.1 DN)
    assert abs(cal.offset_dn - truth.offset_dn * scale) < 1.0
    # the fit's intercept is 0 within its error, and the line fits the binned curve
    assert abs(cal.ptc_intercept_dn2) < 5 * cal.ptc_intercept_err_dn2
    assert cal.ptc_chi2_reduced < 2.0
    # saturation: the hard clip (full well or ADC) in signal DN; EMVA's variance peak lies a little below it
    clip = min(truth.full_well_e / truth.gain_e_per_dn, 2**truth.bit_depth - 1 - truth.offset_dn) * scale
    assert cal.saturation_reached
    assert 0.85 * clip < cal.saturation_signal_dn < clip
    low, high = cal.linear_range_dn - cal.offset_dn
    assert 0.95 * clip < high < clip and 0 <= low < 0.05 * clip
    assert cal.linearity_error < cal.linearity_tolerance
    assert not cal.hot_pixels.any() and not cal.dead_pixels.any()  # no defects injected, none found


def test_noise_model_matches_the_injected_sensor():
    with _bench(ADC_LIMITED, 21) as bench:
        cal = measure_sensor(bench, **FAST)
        truth, scale = _truth(bench)
    mean = np.linspace(truth.offset_dn * scale, 60000.0, 50)
    gain = truth.gain_e_per_dn / scale
    expected = (mean - truth.offset_dn * scale) / gain + (truth.read_noise_e / gain) ** 2 + scale**2 / 12
    np.testing.assert_allclose(cal.variance_dn2(mean), expected, rtol=TOLERANCE)
    np.testing.assert_allclose(cal.electrons(mean), (mean - truth.offset_dn * scale) * gain, rtol=TOLERANCE, atol=5.0)
    # the dark line reproduces the measured mean dark frames
    for t, dark in zip(cal.exposures_s, cal.dark_mean_dn):
        assert float(np.abs(cal.dark_frame(t) - dark).mean()) < 3 * cal.read_noise_dn / math.sqrt(cal.frames)


def _lit_truth(bench) -> np.ndarray:
    """Expected photon rate of every pixel with the display white (the truth, for the assertion only)."""
    optics = bench.camera.optics
    white = torch.full((1, 1, *optics.image_shape), bench.slm.max_level, dtype=torch.int64)
    with torch.no_grad():
        return optics.photon_rate_frame(white)[0].numpy()


def test_a_given_ladder_below_saturation_still_gives_the_gain(caplog):
    with _bench(FULL_WELL_LIMITED, 17) as bench:
        cal = measure_sensor(bench, frames=4, read_frames=8, exposures_s=[0.0005, 0.001, 0.0015, 0.002, 0.0025])
        truth, scale = _truth(bench)
    np.testing.assert_allclose(cal.exposures_s, [0.0005, 0.001, 0.0015, 0.002, 0.0025])
    assert not cal.saturation_reached and "saturation was not reached" in caplog.text
    assert abs(cal.conversion_gain_e_per_dn / (truth.gain_e_per_dn / scale) - 1) < TOLERANCE
    assert abs(cal.read_noise_e / truth.read_noise_e - 1) < TOLERANCE


def test_hot_and_dead_pixel_map_matches_the_injected_defects():
    with _bench({**ADC_LIMITED, **DEFECTS, "defect_seed": 31}, 8) as bench:
        cal = measure_sensor(bench, **FAST)
        truth, _ = _truth(bench)
        pattern = truth.fixed_pattern(bench.camera.shape)
        rate = _lit_truth(bench)
    hot, dead = pattern.hot.numpy(), pattern.dead.numpy()
    assert hot.sum() > 30 and dead.sum() > 30
    # 20000 e-/s more dark current is ~200 e- in the longest exposure (~10 ms): far above the limit
    assert cal.hot_threshold_dn_per_s < 0.5 * DEFECTS["hot_pixel_dark_current_e_per_s"] / (truth.gain_e_per_dn / 16)
    np.testing.assert_array_equal(cal.hot_pixels, hot)
    assert not (cal.dead_pixels & ~dead).any()  # no false alarm
    lit = rate > 0.2 * rate.max()
    assert (dead & lit).sum() > 10
    assert (cal.dead_pixels & dead & lit).sum() == (dead & lit).sum()  # every dead pixel in light is found
    assert cal.prnu_rel == pytest.approx(DEFECTS["prnu_rel_std"], rel=0.5)
    # defects are left out of the read-noise and gain estimates
    assert abs(cal.read_noise_e / truth.read_noise_e - 1) < TOLERANCE
    assert abs(cal.conversion_gain_e_per_dn / (truth.gain_e_per_dn / 16) - 1) < TOLERANCE


def test_hdf5_round_trip_summary_and_plot(tmp_path):
    with _bench(ADC_LIMITED, 2) as bench:
        cal = measure_sensor(bench, **FAST)
    path = tmp_path / "sensor.h5"
    with h5py.File(path, "w") as f:
        cal.to_hdf5(f.create_group("sensor"))
    with h5py.File(path, "r") as f:
        back = SensorCalibration.from_hdf5(f["sensor"])
    for name, value in vars(cal).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)
            assert getattr(back, name).dtype == value.dtype
        else:
            assert getattr(back, name) == value, name
    summary = json.loads(json.dumps(cal.summary()))
    assert summary["conversion_gain_e_per_dn"] == cal.conversion_gain_e_per_dn
    assert summary["conversion_gain_e_per_code"] == pytest.approx(cal.conversion_gain_e_per_dn * 16)
    assert summary["ptc_max_abs_normalised_residual"] < 5
    plot(cal, tmp_path / "ptc.png")
    assert (tmp_path / "ptc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a foreign or truncated group is refused
    with h5py.File(path, "a") as f:
        f["sensor"].attrs["schema"] = "something-else"
        f.create_group("cut")
        cal.to_hdf5(f["cut"])
        del f["cut"]["ptc_fit"]
    with h5py.File(path, "r") as f:
        with pytest.raises(CalibrationFileError, match="schema"):
            SensorCalibration.from_hdf5(f["sensor"])
        with pytest.raises(CalibrationFileError, match="ptc_fit"):
            SensorCalibration.from_hdf5(f["cut"])


def test_saturated_at_the_shortest_exposure_is_a_clear_error_and_restores_the_exposure():
    with _bench(photometry={"photons_per_s": 1e12}) as bench:
        with pytest.raises(ExposureError, match="saturate.*shortest exposure"):
            measure_sensor(bench, **FAST)
        assert bench.camera.exposure_s == 0.01


def test_no_light_is_a_clear_error():
    with simulated_bench(merged(NO_ABERRATION, {"photometry": {"photons_per_s": 1.0}}), exposure_limits_s=(1e-5, 0.1)) as bench:
        with pytest.raises(ExposureError, match="no light"):
            measure_sensor(bench, **FAST)


def test_empty_frames_are_a_clear_error():
    blank = {"sensor": {"offset_dn": 0.0, "read_noise_e": 0.0, "dark_current_e_per_s": 0.0},
             "photometry": {"photons_per_s": 1e-9}, "errors": None}
    with simulated_bench(blank) as bench:
        with pytest.raises(ExposureError, match="all 0"):
            measure_sensor(bench, **FAST)


def test_black_level_clipping_the_noise_is_a_clear_error():
    with _bench({**ADC_LIMITED, "offset_dn": 0.0}) as bench:
        with pytest.raises(CalibrationError, match="black level clips"):
            measure_sensor(bench, **FAST)


def test_wrong_bench_or_arguments_are_refused():
    config = bench_config(merged(NO_ABERRATION, {"sensor": ADC_LIMITED}))
    config["slm"]["modulation"] = "phase"
    with open_bench(config) as bench:
        with pytest.raises(CalibrationError, match="phase SLM"):
            measure_sensor(bench, **FAST)
    with _bench() as bench:
        for kwargs, name in (({"frames": 1}, "frames"), ({"num_exposures": 2}, "num_exposures"),
                             ({"exposures_s": [0.002, 0.001, 0.003]}, "exposures_s"),
                             ({"linearity_tolerance": 0.0}, "linearity_tolerance"),
                             ({"hot_sigma": -1}, "hot_sigma"), ({"dead_response": 1.5}, "dead_response")):
            with pytest.raises(InputError, match=name):
                measure_sensor(bench, **{**FAST, **kwargs})


@pytest.mark.slow
def test_recovery_over_many_seeds(caplog):
    """Recovery errors over 20 seeds per sensor (reported in the log; all within the acceptance)."""
    caplog.set_level(logging.INFO)
    for sensor in (ADC_LIMITED, FULL_WELL_LIMITED):
        gains, reads = [], []
        for seed in range(100, 120):
            with _bench(sensor, seed) as bench:
                cal = measure_sensor(bench, **FAST)
                truth, scale = _truth(bench)
            gains.append(cal.conversion_gain_e_per_dn / (truth.gain_e_per_dn / scale) - 1)
            reads.append(cal.read_noise_e / truth.read_noise_e - 1)
        gains, reads = np.array(gains), np.array(reads)
        logging.getLogger(__name__).info("%s: gain error %+.4f +- %.4f (max |.| %.4f), read noise error %+.4f +- %.4f "
                                         "(max |.| %.4f)", sensor, gains.mean(), gains.std(), np.abs(gains).max(),
                                         reads.mean(), reads.std(), np.abs(reads).max())
        assert np.abs(gains).max() < TOLERANCE and np.abs(reads).max() < TOLERANCE
        assert abs(gains.mean()) < 3 * gains.std() / math.sqrt(gains.size) + 1e-3  # no bias beyond 0.1 %
