"""benchmarks/bringup.py on one placement: the grid is found, automatic exposure reaches its target, the
geometry calibration on the located frames brings the tile corners within 0.1 camera px of where the
fabricated device images them (the coarse map alone is farther), and `hil timing`'s measurement on the
simulated display reads a configured latency and settle time. Slow (~1 min alone): ``-m slow``."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import benchmarks.bringup as bringup  # noqa: E402
from calibration.locate import nominal_system  # noqa: E402
from simulator.system import OpticalSystem  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def systems():
    return (OpticalSystem.from_yaml(ROOT / "examples" / "optics.yaml").eval(),
            nominal_system(ROOT / "examples" / "optics.yaml"))


def test_one_placement_is_located_and_calibrated_to_a_tenth_of_a_pixel(systems):
    fabricated, nominal = systems
    row = bringup.one(fabricated, nominal, 1, True, bringup.truth_geometry(fabricated, nominal), True)
    assert row["found"] and row["spots"] > 100
    assert 0.6 < row["auto_exposure_peak_fraction"] < 0.8  # the peak's target 0.7 +- 10 %, a fresh frame's noise
    assert row["corner_rms_px"] < 0.1 < row["corner_rms_without_geometry_px"]
    assert row["corner_rms_px"] < row["corner_rms_coarse_px"]


def test_the_timing_measurement_reads_the_configured_values(systems, monkeypatch):
    monkeypatch.setattr(bringup, "TIMING_VALUES", ((0.010, 0.005),))
    timing = bringup.timing_errors(*systems, 0, control=False)
    (value,) = timing["values"]
    # a linear ramp fitted to the light of a gray-level ramp through gamma 2.2 reads ~10 % of settle_s late
    assert abs(value["latency_error_s"]) < 0.15 * 0.005 and abs(value["settle_error_s"]) < 0.1 * 0.005
    assert timing["max_abs"] == max(abs(value["latency_error_s"]), abs(value["settle_error_s"]))
