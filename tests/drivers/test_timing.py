"""``hil timing``: the display's latency and settle time measured through the camera, on simulated benches
with configured timing (virtual clock). Stated tolerance: one exposure time (the frames' resolution)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from drivers.config import open_bench
from drivers.simulated import SimulatedCamera
from drivers.timing import TimingError, measure_timing
from hil.cli import main

from .conftest import make_pair


def _config(latency_s, settle_s, exposure_s, gamma=None, readout_s=2e-4):
    return {"clock": "virtual",
            "slm": {"backend": "simulated-slm", "shape": [16, 16], "latency_s": latency_s, "settle_s": settle_s,
                    "gamma": gamma},
            "camera": {"backend": "simulated-camera", "render": "direct", "exposure_s": exposure_s,
                       "readout_s": readout_s}}


@pytest.mark.parametrize("latency_s, settle_s, exposure_s, gamma", [
    (0.010, 0.005, 5e-4, None),
    (0.030, 0.020, 2e-3, 2.2),   # a gamma display: the light's ramp is not the gray levels'
    (0.002, 0.0, 1e-3, None),    # no settling
    (0.0, 0.008, 1e-3, None),    # no latency
])
def test_measured_timing_matches_the_configured_within_one_exposure(latency_s, settle_s, exposure_s, gamma):
    with open_bench(_config(latency_s, settle_s, exposure_s, gamma)) as bench:
        result = measure_timing(bench)
    assert result.latency_s == pytest.approx(latency_s, abs=exposure_s)
    assert result.settle_s == pytest.approx(settle_s, abs=exposure_s)
    lo, hi = result.latency_bounds_s  # the thresholds' bracket: within an exposure of the fit
    assert hi - lo <= exposure_s and lo - exposure_s <= result.latency_s <= hi + exposure_s


class _FreeRunWithoutTimestamps(SimulatedCamera):
    def _snap(self, timeout_s):
        return dataclasses.replace(super()._snap(timeout_s), timestamp_s=None)


def test_a_camera_without_exposure_timestamps_is_refused(clock):
    from drivers.bench import Bench

    slm, camera = make_pair(clock, trigger_mode="free-run")
    camera.__class__ = _FreeRunWithoutTimestamps
    with Bench(slm, camera) as bench, pytest.raises(TimingError, match="no exposure timestamps"):
        measure_timing(bench)


def test_hil_timing_prints_and_writes_the_values(tmp_path, capsys):
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump(_config(0.010, 0.005, 5e-4)))
    out = tmp_path / "timing.yaml"
    assert main(["timing", str(bench), "-o", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert written["slm"]["latency_s"] == pytest.approx(0.010, abs=5e-4)
    assert written["slm"]["settle_s"] == pytest.approx(0.005, abs=5e-4)
    printed = capsys.readouterr().out
    assert "slm.latency_s: 0.01" in printed and "slm.settle_s:" in printed
    # no change to see (the same level before and after): one line, exit 2
    assert main(["timing", str(bench), "-o", str(out), "--low", "200", "--high", "200"]) == 2
    assert "does not see the display change" in capsys.readouterr().err
