"""Display response on simulated benches with a known display (truth in ``bench.camera.optics.display``)."""

import json

import h5py
import numpy as np
import pytest

from calibration.display_response import DisplayCalibration, default_levels, measure_display_response, plot
from calibration.errors import CalibrationError, CalibrationFileError
from drivers.errors import ExposureError
from calibration.sensor import measure_sensor
from drivers.config import open_bench
from onn_core.errors import InputError
from onn_core.lut import LUT
from simulator.system import OpticalSystem
from tests.calibration.benches import bench_config, example_optics, merged, simulated_bench

#: The example's fabrication errors (stray light, crosstalk, vignetting, blur) without the Zernike
#: aberrations, which only cost time to build.
NO_ABERRATION = {"errors": {"spec": {"zernike_std_m": [0.0] * 6}}}
SENSOR = {"gain_e_per_dn": 1.7, "read_noise_e": 3.3, "offset_dn": 25.0}
GRAY = np.arange(256) / 255
#: A display that is no gamma curve: black emits 1.5 % of white, and a smoothstep response.
SMOOTHSTEP = (0.015 + 0.985 * (3 * GRAY**2 - 2 * GRAY**3)).tolist()
#: Linear interpolation between 33 measured levels misses a smooth curve by at most ~1e-3 (smoothstep:
#: max |f''| h^2 / 8 = 6 (8/255)^2 / 8 = 7e-4), plus noise ~1e-4.
LUT_TOLERANCE = 2e-3


def _overrides(seed=0, **optics):
    return merged(NO_ABERRATION, {"seed": seed, "sensor": SENSOR, **optics})  # optics may replace the sensor


def _true_relative(bench) -> np.ndarray:
    """The display's relative radiance per level, black emission taken as zero (truth, for assertions)."""
    display = bench.camera.optics.display
    if display.lut is None:
        return GRAY ** display.gamma
    values = display.lut.numpy()
    return (values - values[0]) / (values[-1] - values[0])


def test_recovers_a_non_default_gamma_and_linearises_the_display(tmp_path):
    with simulated_bench(_overrides(3, display={"gamma": 1.8})) as bench:
        original = bench.camera.exposure_s
        cal = measure_display_response(bench)
        assert bench.camera.exposure_s == original  # restored
        truth = _true_relative(bench)
        assert cal.gamma == pytest.approx(1.8, abs=0.005)
        assert abs(cal.gamma - 1.8) < 5 * cal.gamma_err
        assert cal.gamma_chi2_reduced < 3
        np.testing.assert_array_equal(cal.levels, default_levels(8))
        np.testing.assert_allclose(cal.relative_radiance, truth[cal.levels], rtol=0, atol=5 * cal.relative_radiance_err.max())
        np.testing.assert_allclose(cal.lut_values, truth, rtol=0, atol=LUT_TOLERANCE)
        assert abs(cal.white_drift_rel) < 1e-3
        # linearised through the measured LUT, uniform intensities x give camera signal proportional to x
        bench.slm.lut = cal.lut()
        bench.camera.exposure_s = cal.exposure_s

        def signal(gray):
            frame = bench.measure(np.full(bench.slm.shape, gray, dtype=bench.slm.dtype)).frame.image
            return frame[cal.mask].astype(np.float64).sum()

        black, white = signal(0), signal(255)
        for x in (0.1, 0.25, 0.5, 0.75):
            gray = int(bench.slm.lut.to_gray(x))
            assert (signal(gray) - black) / (white - black) == pytest.approx(x, rel=0.02)
    # the LUT file reads back exactly, through the drivers' lut_file and the optics' display.lut_file
    path = tmp_path / "display_lut.txt"
    cal.save_lut(path)
    assert LUT.from_file(path) == cal.lut()
    config = bench_config(_overrides())
    config["slm"]["lut_file"] = str(path)
    with open_bench(config) as bench:
        assert bench.slm.lut == cal.lut()
    system = OpticalSystem.from_config(merged(example_optics(), {"display": {"lut_file": str(path)}, "errors": None}))
    np.testing.assert_array_equal(system.display.lut.numpy(), cal.lut_values)


def test_recovers_a_custom_lut_with_black_emission_and_uses_the_sensor_calibration(tmp_path):
    defects = {**SENSOR, "dead_pixel_fraction": 0.003, "hot_pixel_fraction": 0.003,
               "hot_pixel_dark_current_e_per_s": 20000.0, "defect_seed": 4}
    with simulated_bench(_overrides(9, display={"lut": SMOOTHSTEP}, sensor=defects)) as bench:
        sensor = measure_sensor(bench, frames=4, read_frames=8, num_exposures=6)
        cal = measure_display_response(bench, sensor=sensor, levels=default_levels(8, 29), frames=3)
        truth = _true_relative(bench)
    assert cal.levels.size == 29 and cal.frames == 3
    np.testing.assert_allclose(cal.lut_values, truth, rtol=0, atol=LUT_TOLERANCE)
    # errors from the sensor's noise model describe the scatter: normalised residuals of order 1
    normalised = (cal.relative_radiance - truth[cal.levels])[1:-1] / cal.relative_radiance_err[1:-1]
    assert np.abs(normalised).max() < 5
    # no pixel above the sensor's linear range, none of its defects
    assert cal.signal_dn[-1] + sensor.offset_dn < sensor.linear_range_dn[1]
    assert sensor.dead_pixels.sum() > 10 and sensor.hot_pixels.sum() > 10
    assert not (cal.mask & sensor.defects).any()
    # a smoothstep is no gamma curve, and the fit says so
    assert cal.gamma_chi2_reduced > 100


def test_hdf5_round_trip_summary_and_plot(tmp_path):
    with simulated_bench(_overrides(5, display={"gamma": 2.4})) as bench:
        cal = measure_display_response(bench, levels=[0, 32, 64, 128, 192, 255], frames=2)
    path = tmp_path / "display.h5"
    with h5py.File(path, "w") as f:
        cal.to_hdf5(f.create_group("display"))
    with h5py.File(path, "r") as f:
        back = DisplayCalibration.from_hdf5(f["display"])
    for name, value in vars(cal).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)
        else:
            assert getattr(back, name) == value, name
    assert back.lut() == cal.lut()
    summary = json.loads(json.dumps(cal.summary()))
    assert summary["gamma"] == cal.gamma and summary["levels"] == 6
    assert summary["gamma"] == pytest.approx(2.4, abs=0.01)
    plot(cal, tmp_path / "display.png")
    assert (tmp_path / "display.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with h5py.File(path, "a") as f:
        f["display"].attrs["schema_version"] = 99
    with h5py.File(path, "r") as f, pytest.raises(CalibrationFileError, match="version 99"):
        DisplayCalibration.from_hdf5(f["display"])


def test_saturating_exposure_and_no_light_are_clear_errors():
    with simulated_bench(_overrides(photometry={"photons_per_s": 1e12})) as bench:
        with pytest.raises(ExposureError, match="saturate"):
            measure_display_response(bench)
        assert bench.camera.exposure_s == 0.01
    with simulated_bench(_overrides(photometry={"photons_per_s": 1.0}), exposure_limits_s=(1e-5, 0.1)) as bench:
        with pytest.raises(ExposureError, match="no light"):
            measure_display_response(bench)


def test_wrong_bench_or_arguments_are_refused():
    config = bench_config(_overrides())
    config["slm"]["modulation"] = "phase"
    with open_bench(config) as bench:
        with pytest.raises(CalibrationError, match="phase SLM"):
            measure_display_response(bench)
    with simulated_bench(_overrides()) as bench:
        for kwargs, name in (({"levels": [0, 128]}, "levels"), ({"levels": [10, 128, 255]}, "include 0 and 255"),
                             ({"levels": [0, 0.5, 255]}, "integer"), ({"frames": 1}, "frames"),
                             ({"lit_fraction": 1.0}, "lit_fraction")):
            with pytest.raises(InputError, match=name):
                measure_display_response(bench, **kwargs)
        small = simulated_bench(merged(_overrides(), {"image_shape": [20, 20]}))
        with small as other:
            sensor = measure_sensor(other, frames=2, read_frames=2, num_exposures=3)
        with pytest.raises(CalibrationError, match="sensor calibration is of a"):
            measure_display_response(bench, sensor=sensor)
