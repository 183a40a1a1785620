"""The multi-device HIL benchmark's tuning grids and statistics (benchmarks/hil.py) against exact oracles."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "hil.py"
spec = importlib.util.spec_from_file_location("bench_hil", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def test_interval_is_the_t_interval_over_devices():
    got = bench.interval([0.80, 0.82, 0.84, None])  # mean 0.82, sd 0.02, n 3; None (a missing device) dropped
    assert got["mean"] == pytest.approx(0.82, rel=1e-12)
    assert got["ci95"] == pytest.approx(4.302652729749464 * 0.02 / math.sqrt(3), rel=1e-9)
    assert got["devices"] == [0.80, 0.82, 0.84]
    assert bench.interval([0.5]) == {"mean": 0.5, "ci95": None, "devices": [0.5]}
    assert bench.interval([]) == {"mean": None, "ci95": None, "devices": []}


def test_best_setting_breaks_ties_towards_the_smaller_rate():
    scores = {"lr0.001_w1": 0.80, "lr0.003_w1": 0.85, "lr0.01_w1": 0.85, "lr0.003_w0.3": 0.84}
    assert bench.best_setting(scores) == (0.003, 1.0)
    assert bench.parse_setting(bench.setting_name(3e-4, 0.1)) == (3e-4, 0.1)


def test_widened_extends_the_grid_beyond_an_edge_until_the_best_is_interior():
    # validation accuracy peaks at lr 1e-4: the grid 1e-3..1e-2 has its best on the lower edge twice
    truth = {1e-2: 0.70, 3e-3: 0.75, 1e-3: 0.78, 1e-3 / 3: 0.80, 1e-3 / 9: 0.81, 1e-3 / 27: 0.79}
    scores: dict = {}
    tried = []

    def run(lr):
        tried.append(lr)
        scores.setdefault("e2e", {})[bench.setting_name(lr, 1.0)] = truth[min(truth, key=lambda k: abs(k - lr))]

    grid = bench.widened([1e-3, 3e-3, 1e-2], run, ["e2e"], scores, 1.0, times=3)
    assert tried[:3] == [1e-3, 3e-3, 1e-2]
    assert tried[3:] == pytest.approx([1e-3 / 3, 1e-3 / 9, 1e-3 / 27], rel=1e-5)  # widened until interior, then stops
    assert bench.best_setting(scores["e2e"])[0] == pytest.approx(1e-3 / 9, rel=1e-3)
    assert len(grid) == 6


def test_a_resumed_widening_starts_from_the_values_already_scored():
    """Earlier widenings (scores at 1e-3/3 and 1e-3/9 on file) count: the best at 1e-3/9 is an edge of the
    whole tried grid, so 1e-3/27 is tried next, and no side goes more than ``times`` factors of 3 out."""
    truth = {1e-2: 0.70, 3e-3: 0.75, 1e-3: 0.78, 1e-3 / 3: 0.80, 1e-3 / 9: 0.81, 1e-3 / 27: 0.79}
    scores = {"e2e": {bench.setting_name(lr, 1.0): truth[lr] for lr in (1e-2, 3e-3, 1e-3, 1e-3 / 3, 1e-3 / 9)}}
    tried = []

    def run(lr):
        tried.append(lr)
        scores["e2e"][bench.setting_name(lr, 1.0)] = truth[min(truth, key=lambda k: abs(k - lr))]

    bench.widened([1e-3, 3e-3, 1e-2], run, ["e2e"], scores, 1.0, times=3)
    assert tried[5:] == pytest.approx([1e-3 / 27], rel=1e-5)  # the earlier five again (cached in the job), then one
    tried.clear()
    assert len(bench.widened([1e-3, 3e-3, 1e-2], run, ["e2e"], {"e2e": dict(scores["e2e"])}, 1.0, times=2)) == 6
    assert len(tried) == 6  # best now interior (1e-3/9 between 1e-3/3 and 1e-3/27): nothing more


def test_widened_stops_after_the_allowed_number_of_widenings():
    scores: dict = {}
    grid = bench.widened([1.0, 3.0], lambda w: scores.setdefault("ntkd", {}).__setitem__(
        bench.setting_name(0.01, w), w), ["ntkd"], scores, 0.01, times=1, weights=True)
    assert grid == [1.0, 3.0, 9.0]  # the best is always the largest weight; one widening allowed


def row(device, design, uncompensated, control, e2e, ntkd):
    cell = lambda v: {"mean": v, "accuracies": [v], "setting": "lr0.003_w1",  # noqa: E731
                      "recovered_fraction": (v - uncompensated) / (control - uncompensated)}
    return {"device": device, "design": design, "design_noisy": design, "perfect_fabrication": design,
            "uncompensated": uncompensated, "calibration_layer": uncompensated, "teacher": 0.9,
            "clipped_pixel_fraction": 0.0, "design_ft": {"0.1": {"mean": control}},
            "by_fraction": {"e2e": {"0.1": cell(e2e)}, "ntkd": {"0.1": cell(ntkd)}}}


def test_aggregate_pairs_methods_with_e2e_per_device_and_checks_the_figures():
    rows = [row(1, 0.85, 0.70, 0.84, 0.80, 0.82), row(2, 0.85, 0.76, 0.84, 0.81, 0.82),
            row(3, 0.85, 0.74, 0.84, 0.80, 0.83)]
    out = bench.aggregate(rows)
    assert out["devices"] == [1, 2, 3]
    assert out["fabrication_loss_points"]["devices"] == pytest.approx([15.0, 9.0, 11.0])
    assert out["checks"]["fabrication_loss_ge_8_points_every_device"] is True
    paired = out["paired_vs_e2e"]["ntkd"]["0.1"]  # differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01
    assert paired["mean"] == pytest.approx(0.02, abs=1e-12)
    assert paired["ci95"] == pytest.approx(4.302652729749464 * 0.01 / math.sqrt(3), rel=1e-6)
    recovered = [(0.82 - 0.70) / 0.14, (0.82 - 0.76) / 0.08, (0.83 - 0.74) / 0.10]
    assert out["by_fraction"]["ntkd"]["0.1"]["recovered_fraction"] == pytest.approx(sum(recovered) / 3)
    assert out["best_method"]["0.1"]["method"] == "ntkd"
    assert out["checks"]["best_recovers_ge_0.9_at_10_percent"] is False  # 0.82 < 0.9 recovered on average
    assert out["clipped_pixel_fraction"] == 0.0
