"""Stage-1 estimator: the layout calculator against hand counts, the analytic NTK against arc-cosine
oracles and against the empirical NTK of wide random networks (hil.ntk) as their width grows, kernel
ridge regression against a direct solve, the bootstrap against the binomial standard error, and the
``estimate`` API / ``hil estimate`` command end to end on small data."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hil.commands.estimate import register
from hil.estimate import ArchitectureKernel, LayoutSpec, WideStudent, estimate, plan_layout, plot_layout
from hil.estimate.kernel import bank_factor, patch_maps, relu_layers
from hil.estimate.regression import (EvalSet, bootstrap_metrics, evaluate, extrapolate, interval_of, kernel_regression,
                                     regression_targets, ridge_solutions)
from hil.ntk import empirical_ntk
from onn_core.config import build
from onn_core.errors import ConfigError

# ----------------------------------------------------------------------------------------------- layout


def layout(**changes) -> LayoutSpec:
    fields = {"metasurface_hw_m": [2e-3, 4e-3], "kernel_pitch_m": 0.47e-3, "spacing_m": 20e-6,
              "sensor_shape_px": [400, 600]}
    return build(LayoutSpec, {**fields, **changes}, "layout")


def test_layout_counts_kernels_and_places_tiles():
    # floor((2 + 0.02) / 0.49) = 4 rows, floor((4 + 0.02) / 0.49) = 8 columns: 32 sub-optics
    plan = plan_layout(layout(), (38, 38), 4)
    assert plan.grid == (4, 8) and plan.kernels == 16 and plan.sub_optics_used == 32
    assert plan.tiles.frame_shape == (400, 600)
    assert plan.tiles.tile_slices(31) == (slice(3 * 42, 3 * 42 + 38), slice(7 * 42, 7 * 42 + 38))
    assert plan.to_dict()["tiles_frame_px"] == [4 * 38 + 3 * 4, 8 * 38 + 7 * 4]
    unsigned = plan_layout(layout(signed=False), (38, 38), 4)
    assert unsigned.kernels == 32
    odd = plan_layout(layout(metasurface_hw_m=[1.5e-3, 1.5e-3]), (38, 38), 4)  # 3 x 3: one sub-optic unused
    assert odd.grid == (3, 3) and odd.kernels == 4 and odd.sub_optics_used == 8
    fixed = plan_layout(layout(tile_shape_px=[50, 60], gap_px=0), (38, 38), 4)
    assert fixed.tiles.tile_shape == (50, 60) and fixed.tiles.gap_px == 0


@pytest.mark.parametrize("changes, field", [
    ({"kernel_pitch_m": 3e-3}, "layout.kernel_pitch_m"),  # fits no sub-optic
    ({"metasurface_hw_m": [0.5e-3, 0.5e-3]}, "layout.kernel_pitch_m"),  # one sub-optic: no signed pair
    ({"sensor_shape_px": [163, 600]}, "layout.sensor_shape_px"),  # the tile grid needs 164 rows
    ({"sensor_shape_px": [400, 331]}, "layout.sensor_shape_px"),
])
def test_layout_refuses_what_does_not_fit(changes, field):
    with pytest.raises(ConfigError) as info:
        plan_layout(layout(**changes), (38, 38), 4)
    assert info.value.path == field


@pytest.mark.parametrize("changes, field", [
    ({"metasurface_hw_m": [0.0, 1e-3]}, "layout.metasurface_hw_m[0]"),
    ({"kernel_pitch_m": -1e-3}, "layout.kernel_pitch_m"),
    ({"spacing_m": -1e-6}, "layout.spacing_m"),
    ({"sensor_shape_px": [0, 10]}, "layout.sensor_shape_px"),
    ({"gap_px": -1}, "layout.gap_px"),
    ({"sensor_shape_px": [10]}, "layout.sensor_shape_px"),
])
def test_layout_spec_names_bad_fields(changes, field):
    with pytest.raises(ConfigError) as info:
        layout(**changes)
    assert info.value.path == field


def test_layout_plot_is_written(tmp_path):
    plot_layout(plan_layout(layout(), (38, 38), 4), tmp_path / "layout.png")
    assert (tmp_path / "layout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ the kernel


def test_relu_layer_matches_arc_cosine_oracles():
    sigma = torch.tensor([[4.0, 0.0, -4.0, 2.0]], dtype=torch.float64)  # angles 0, pi/2, pi, pi/3 (diag 4)
    diag = torch.tensor([4.0], dtype=torch.float64)
    theta = torch.ones_like(sigma)
    out = relu_layers(sigma, theta, diag, diag, 1, 1.0, 0.0)
    # E[relu(a) relu(b)] = 4 (sin t + (pi - t) cos t) / (2 pi); E[relu'(a) relu'(b)] = (pi - t) / (2 pi)
    expected = [2.0 + 0.5, 4 / (2 * math.pi) + 0.25, 0.0 + 0.0,
                4 * (math.sqrt(3) / 2 + 2 * math.pi / 3 / 2) / (2 * math.pi) + 1 / 3]
    assert out[0].tolist() == pytest.approx(expected, rel=1e-12)
    # Monte Carlo at the generic angle: a, b standard normal with correlation 0.5, times 2
    g = torch.randn(2, 2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = 2 * g[0], 2 * (0.5 * g[0] + math.sqrt(0.75) * g[1])
    mc = float((a.clamp(min=0) * b.clamp(min=0)).mean() + ((a > 0) & (b > 0)).double().mean())
    assert mc == pytest.approx(expected[3], abs=4e-3)


def test_patch_features_are_patch_inner_products():
    r = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k, d = 3, 2 * 9
    patches = F.unfold(r, k, padding=1)  # (N, D, 36): zero-padded "same" patches
    pixel = ArchitectureKernel(k, 1, None).features(r)
    expected = torch.einsum("adp,bdq->apbq", patches, patches).reshape(3 * 36, 3 * 36) / d
    assert torch.allclose(pixel.sigma @ pixel.sigma.T, expected, atol=1e-12)
    pooled_patches = F.avg_pool2d(patches.reshape(3, d, 6, 6), 2).reshape(3, d, 9)
    pooled = ArchitectureKernel(k, 1, 2).features(r)
    expected = torch.einsum("adq,bdq->ab", pooled_patches, pooled_patches) / (d * 9)
    assert torch.allclose(pooled.sigma @ pooled.sigma.T, expected, atol=1e-12)
    assert patch_maps(r, k, 2).shape == (3, d, 3, 3)


def test_kernel_diagonal_equals_block_diagonal():
    r = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bank = torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for kernel in (ArchitectureKernel(3, 2, 2, bias_variance=0.1), ArchitectureKernel(3, 1, None, bank=bank),
                   ArchitectureKernel(3, 1, 4, bank=bank, frontend_trained=False)):
        points = kernel.features(r)  # arccos near 1 turns rounding of 1e-16 into angles of 1e-8
        assert torch.allclose(kernel(points, points).diagonal(), kernel.diagonal(points), rtol=1e-7)


def test_large_random_bank_tends_to_infinitely_many_kernels():
    r = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    infinite = ArchitectureKernel(3, 1, 2, frontend_trained=False)
    reference = infinite(infinite.features(r), infinite.features(r))
    errors = []
    for m in (16, 256, 4096):
        bank = torch.rand(m, 1, 3, 3, generator=torch.Generator().manual_seed(m), dtype=torch.float64) - 0.5
        kernel = ArchitectureKernel(3, 1, 2, bank=bank, frontend_trained=False)
        points = kernel.features(r)
        errors.append(float((kernel(points, points) - reference).norm() / reference.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03
    few = bank_factor(torch.ones(2, 1, 3, 3))  # M <= D: the bank itself, rank M
    assert few.shape == (9, 2) and torch.allclose(few @ few.T, torch.ones(9, 9, dtype=torch.float64))


def _relative_errors(kernel, radiance, widths, seeds, params=None, bank=None):
    """Mean over seeds of |empirical NTK / C - analytic| / |analytic| (Frobenius) for each width."""
    points = kernel.features(radiance)
    analytic = kernel(points, points)
    out = []
    for width in widths:
        errors = []
        for seed in seeds:
            net = WideStudent(tuple(radiance.shape[1:]), kernel.kernel_size, kernel.pool, kernel.depth, width, 2,
                              bank=bank, bias_variance=kernel.bias_variance, seed=seed)
            empirical = empirical_ntk(net, radiance, params=params).detach() / 2
            errors.append(float((empirical - analytic).norm() / analytic.norm()))
        out.append(sum(errors) / len(errors))
    return out


@pytest.mark.parametrize("depth", [1, 2])
def test_analytic_ntk_matches_wide_random_networks(depth):
    """The empirical NTK (exact, hil.ntk) of NTK-parameterised random networks with ``width`` kernels
    and hidden units approaches the infinite-width composition, its error falling ~ 1/sqrt(width)."""
    radiance = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kernel = ArchitectureKernel(3, depth, 6, bias_variance=0.1)
    errors = _relative_errors(kernel, radiance, (16, 256, 1024), range(4))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.06 and errors[0] / errors[2] > 4  # 1/sqrt(width) predicts a factor 8


def test_bank_kernel_is_the_wide_backend_limit():
    """A fixed bank of 4 kernels, frozen: the backend's empirical NTK tends to the bank's kernel."""
    radiance = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bank = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kernel = ArchitectureKernel(3, 1, 2, bank=bank, frontend_trained=False, bias_variance=0.1)
    errors = _relative_errors(kernel, radiance, (16, 256, 2048), range(4), params=lambda name: name != "kernels",
                              bank=bank)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05


# -------------------------------------------------------------------------------------------- regression


def test_ridge_solutions_equal_a_direct_solve():
    a = torch.randn(30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = a @ a.T
    y = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = k.clone()
    solutions = ridge_solutions(k, y, [1e-3, 1.0])
    assert torch.equal(k, before)
    scale = float(k.diagonal().mean())
    for rel, alpha in solutions.items():
        assert torch.allclose(alpha, torch.linalg.solve(k + rel * scale * torch.eye(30, dtype=torch.float64), y))
    targets = regression_targets(torch.tensor([2, 0]), "classification", 3)
    assert torch.allclose(targets, torch.tensor([[-1, -1, 2], [2, -1, -1]], dtype=torch.float64) / 3)


def test_regression_reproduces_its_training_set():
    """Test = train images: with the smallest regulariser the predictions are the training labels
    (accuracy and mIoU exactly 1); the per-image confusions add up to every point."""
    g = torch.Generator().manual_seed(0)
    radiance = torch.rand(40, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(3, (40,), generator=g)
    kernel = ArchitectureKernel(3, 1, 2)
    data = EvalSet(radiance, labels)
    result = kernel_regression(kernel, kernel.features(radiance), labels, data, data, "classification", 3,
                               grid=[1e-9], bootstrap=50)
    assert result.metric == 1.0 and result.interval == (1.0, 1.0) and result.regularization == 1e-9
    masks = (radiance > 0.5).long()
    pixel_kernel = ArchitectureKernel(3, 2, None)
    points = pixel_kernel.features(radiance[:6])
    solution = ridge_solutions(pixel_kernel(points, points), regression_targets(masks[:6], "segmentation", 2), [1e-9])
    confusion = evaluate(pixel_kernel, points, solution[1e-9][None], EvalSet(radiance[:6], masks[:6]), "segmentation",
                         2, chunk_size=100)
    assert confusion.shape == (1, 6, 2, 2) and int(confusion.sum()) == 6 * 64
    assert int(confusion[0, :, 0, 1].sum() + confusion[0, :, 1, 0].sum()) == 0


def test_regulariser_is_chosen_on_validation():
    """Labels that a huge regulariser cannot fit: the validation metric picks a small one."""
    g = torch.Generator().manual_seed(1)
    radiance = torch.rand(60, 1, 8, 8, generator=g)
    labels = (radiance[:, 0, :4].mean((1, 2)) > radiance[:, 0, 4:].mean((1, 2))).long()  # top half brighter
    kernel = ArchitectureKernel(3, 1, 2)
    val, test = EvalSet(radiance[40:50], labels[40:50]), EvalSet(radiance[50:], labels[50:])
    result = kernel_regression(kernel, kernel.features(radiance[:40]), labels[:40], val, test, "classification", 2,
                               grid=[1e-4, 1e4], bootstrap=20)
    assert result.val_scores[1e-4] > result.val_scores[1e4] and result.regularization == 1e-4


def test_bootstrap_interval_matches_binomial_error():
    """n = 4000 samples, 80 % correct: the 95 % interval is +-1.96 sqrt(p (1 - p) / n) = +-1.24 points."""
    n, p = 4000, 0.8
    correct = torch.zeros(n, dtype=torch.bool)
    correct[: int(p * n)] = True
    per_image = torch.zeros(n, 2, 2, dtype=torch.int64)
    per_image[correct, 0, 0] = 1
    per_image[~correct, 0, 1] = 1
    values = bootstrap_metrics(per_image[None].expand(2, -1, -1, -1), "classification", num=2000, seed=0)
    assert values.shape == (2000, 2) and np.array_equal(values[:, 0], values[:, 1])  # one resample, both rows
    low, high = interval_of(values[:, 0], 0.95)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert low < p < high


def test_learning_curve_extrapolation():
    """An exact power law is continued exactly; a flat or rising error keeps the last metric."""
    sizes = [100, 200, 400]
    metrics = [1 - 0.2 * (s / 100) ** -0.5 for s in sizes]
    assert extrapolate(sizes, metrics, 1600) == pytest.approx(1 - 0.2 * 16 ** -0.5, rel=1e-12)
    assert extrapolate(sizes, [0.82, 0.81, 0.8], 1600) == 0.8
    assert extrapolate(sizes, [0.9, 1.0, 1.0], 1600) == 1.0


# --------------------------------------------------------------------------------------- API and CLI


STUDENT = {"name": "optical_student", "num_kernels": 4, "kernel_size": 5, "hidden": [16], "pool": 2}


def small_config(**changes) -> dict:
    cfg = {"task": "classification", "model": dict(STUDENT),
           "data": {"train_size": 200, "val_size": 100, "test_size": 200},
           "ntk": {"bootstrap": 50, "regularization": [1e-3, 1e-1]}}
    cfg.update(changes)
    return cfg


def test_estimate_writes_results_and_plots(tmp_path):
    cfg = small_config(layout={"metasurface_hw_m": [1e-3, 2e-3], "kernel_pitch_m": 0.45e-3, "spacing_m": 50e-6,
                               "sensor_shape_px": [300, 400]},
                       sweep={"metasurface_hw_m": [[0.5e-3, 1e-3], [1e-3, 2e-3]]})
    result = estimate(cfg, tmp_path, progress=False)
    # 2 x 4 sub-optics -> 4 signed kernels; the sweep's 1 x 2 -> 1 kernel
    assert result.layout.grid == (2, 4) and result.estimate.kernels == 4
    assert [e.kernels for e in result.sweep] == [1, 4]
    assert [e.metasurface_hw_m for e in result.sweep] == [(0.5e-3, 1e-3), (1e-3, 2e-3)]
    assert result.infinite.kernels is None
    for e in (result.estimate, result.infinite, *result.sweep):
        assert 0.5 < e.metric < 1 and e.interval[0] <= e.metric <= e.interval[1] and e.regularization in (1e-3, 1e-1)
    saved = json.loads((tmp_path / "estimate.json").read_text())
    assert saved["estimate"]["metric"] == result.estimate.metric and saved["layout"]["kernels"] == 4
    assert saved["config"]["data"]["train_size"] == 200
    for name in ("estimate.png", "layout.png", "config.yaml"):
        assert (tmp_path / name).is_file()


def test_estimate_segmentation_on_an_image_folder(tmp_path):
    """A folder task whose mask is the bright pixels: the per-pixel kernel finds it (mIoU ~ 1); a
    mismatch of training points and their targets would give ~ 0.5."""
    import cv2

    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 6)):
        for sub in ("images", "masks"):
            (tmp_path / "data" / split / sub).mkdir(parents=True)
        for i in range(count):
            image = np.where(rng.random((8, 8)) > 0.5, 200, 40).astype(np.uint8)
            cv2.imwrite(str(tmp_path / "data" / split / "images" / f"{i}.png"), image)
            cv2.imwrite(str(tmp_path / "data" / split / "masks" / f"{i}.png"), (image > 100).astype(np.uint8) * 255)
    cfg = {"task": "segmentation",
           "model": {"name": "optical_student", "image_size": 8, "num_kernels": 2, "kernel_size": 3,
                     "backend": "upconv", "decoder_widths": [4, 4]},
           "data": {"dataset": "image_folder", "root": str(tmp_path / "data"), "train_size": 300, "val_size": 4},
           "ntk": {"bootstrap": 20}}
    result = estimate(cfg, None, progress=False)
    assert result.metric_name == "mIoU" and result.infinite.metric > 0.95 and result.estimate.metric > 0.95


@pytest.mark.parametrize("changes, field", [
    ({"model": {**STUDENT, "backend": "upconv"}}, "model.backend"),
    ({"model": {**STUDENT, "frontend": "fourf"}}, "model.frontend"),
    ({"model": {"name": "lenet"}}, "model.name"),
    ({"model": {**STUDENT, "hiden": [3]}}, "model.hiden"),
    ({"data": {"dataset": "captures", "root": "x.h5"}}, "data.dataset"),
    ({"data": {"train_size": 1}}, "data.train_size"),
    ({"sweep": {"kernels": [2], "metasurface_hw_m": [[1e-3, 1e-3]]}}, "sweep"),
    ({"sweep": {"metasurface_hw_m": [[1e-3, 1e-3]]}}, "sweep.metasurface_hw_m"),
    ({"ntk": {"confidence": 1.5}}, "ntk.confidence"),
    ({"ntk": {"regularization": []}}, "ntk.regularization"),
    ({"layout": {"metasurface_hw_m": [1e-3, 1e-3], "kernel_pitch_m": 2e-3, "sensor_shape_px": [100, 100]}},
     "layout.kernel_pitch_m"),
])
def test_estimate_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError) as info:
        estimate(small_config(**changes), None, progress=False)
    assert info.value.path == field


def test_hil_estimate_command(tmp_path, capsys):
    (tmp_path / "est.yaml").write_text(json.dumps(small_config(out_dir="out")))  # JSON is YAML
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["estimate", str(tmp_path / "est.yaml"), "--set", "data.train_size=150", "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out_dir"] == str(tmp_path / "out") and summary["kernels"] == 4
    assert summary["interval"][0] <= summary["estimate"] <= summary["interval"][1]
    saved = json.loads((tmp_path / "out" / "estimate.json").read_text())
    assert saved["config"]["data"]["train_size"] == 150 and saved["estimate"]["kernels"] == 4


# ------------------------------------------------------------------- benchmarks/estimate.py: matched size


def _bench():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "estimate.py"
    spec = importlib.util.spec_from_file_location("bench_estimate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_seed_interval_is_the_t_interval_over_seeds():
    bench = _bench()
    got = bench.seed_interval([1.0, 3.0, 2.0])  # mean 2, sample sd 1
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, 2)
    assert got["mean"] == pytest.approx(2.0, rel=1e-12)
    assert got["ci95"] == pytest.approx([2 - half, 2 + half], rel=1e-9)
    four = bench.seed_interval([0.0, 2.0, 4.0, 6.0])  # mean 3, sd sqrt(20 / 3)
    half = 3.182446305284263 * math.sqrt(20 / 3) / 2  # t(0.975, 3)
    assert four["ci95"] == pytest.approx([3 - half, 3 + half], rel=1e-9)
    assert bench.seed_interval([0.5]) == {"mean": 0.5, "ci95": None}
    with pytest.raises(ValueError):
        bench.seed_interval([])


def test_matched_summary_pairs_estimate_and_student_by_seed():
    bench = _bench()
    student = {"seconds": 1.0, "epochs": 9, "best_epoch": 4, "stopped_early": True, "last_epochs": []}
    estimates = {"0": {"8": {"estimated": 86.0, "seconds": 2.0}, "64": {"estimated": 85.0, "seconds": 2.0}},
                 "1": {"8": {"estimated": 85.0, "seconds": 2.0}},
                 "2": {"8": {"estimated": 87.0, "seconds": 2.0}, "64": {"estimated": 86.0, "seconds": 2.0}}}
    trained = {"8/0": {**student, "trained": 84.0}, "8/1": {**student, "trained": 84.0},
               "8/2": {**student, "trained": 84.0}, "64/0": {**student, "trained": 80.0},
               "64/1": {**student, "trained": 81.0}}  # 64/1 has no estimate, 64/2 no student: one pair left
    rows, mean_abs = bench.matched_summary([8, 64, 512], estimates, trained)
    assert [r["kernels"] for r in rows] == [8, 64]  # 512: no finished seed
    eight, sixty_four = rows
    assert eight["seeds"] == [0, 1, 2] and [p["error"] for p in eight["per_seed"]] == [2.0, 1.0, 3.0]
    half = round(4.302652729749464 / math.sqrt(3), 10)
    assert eight["error_mean"] == 2.0 and eight["error_ci95"] == [round(2 - half, 2), round(2 + half, 2)]
    assert eight["estimated_mean"] == 86.0 and eight["trained_mean"] == 84.0 and eight["trained_ci95"] == [84.0, 84.0]
    assert sixty_four["seeds"] == [0] and sixty_four["error_mean"] == 5.0 and sixty_four["error_ci95"] is None
    assert sixty_four["per_seed"][0]["best_epoch"] == 4 and sixty_four["per_seed"][0]["stopped_early"] is True
    assert mean_abs == 3.5  # (|2| + |5|) / 2
    assert bench.matched_summary([8], {}, {}) == ([], None)
