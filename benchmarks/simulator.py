"""Speed of the differentiable optical simulator, as ratios against references measured in the same run.

(a) Optical convolution, forward + backward (gradient w.r.t. the kernels), batch 128, 28x28 mono input,
    16 signed kernels (= 32 non-negative PSFs) of size K x K, for a sweep of K: our
    ``IncoherentConv2d`` (paths ``fft``, ``direct`` and ``auto``) against
    ``torch.nn.functional.conv2d`` with the same 16 signed kernels (the electronic layer it replaces).
    Figures: throughput ratio ``conv_speedup_vs_conv2d`` (auto path) per K, and the crossover kernel
    size from which the FFT path beats the direct path (at this one shape).
(a') The choice of the automatic path, forward passes in "full" mode (as the simulated camera renders)
    over a sweep of batch, image size, PSF count, PSF size and dtype (``conv_sweep``): per shape the
    seconds of ``fft_conv2d``, of ``direct_conv2d`` (images padded first) and of the same direct
    convolution with conv2d's own ``padding`` argument (the old path); the cost model of
    ``simulator.conv`` fitted to them (``fitted``: the source of ``simulator.conv.CONV_COST``); and
    ``auto_over_best``: the time of the path ``method="auto"`` takes over the faster path's, median and
    worst over the sweep, for the constants in the code and for the fitted ones (compared with the
    earlier fixed rule, direct below K = 23: ``fixed_rule_over_best``). ``pad_first_over_padding_arg``:
    the explicit padding's time over the old path's (median, best, worst; ``slow_path_shapes``: one
    56 x 56 image through 10 PSFs of 19 x 19 and of 31 x 31).
(b) Angular-spectrum propagation of a 1024 x 1024 complex64 field (padded to 2048 x 2048) with
    ``simulator.propagation.propagate_asm`` against a plain numpy FFT implementation of the same
    band-limited formula written here. Both use a precomputed transfer function (the simulator caches
    it); the uncached figure (transfer function built in every call) is reported too. Also against the
    bare correct torch round trip of the same size, ``fft2(x, s=padded)``, in-place ``* H``,
    ``ifft2(norm="forward")``, crop, ``* 1/N`` (only unscaled transforms: see ``simulator.fft``): figure
    ``asm_over_bare_fft`` = our time / its time, the cost of everything ``propagate_asm`` adds.

Times are medians of repeats after warm-up. Prints a table and, last, one line of JSON; writes
``benchmarks/results/simulator.json``. Usage: ``python benchmarks/simulator.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# This script is named like the package it measures; keep its own folder off the import path so that
# ``import simulator`` finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: benchmarks.threads

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.optimize import nnls  # noqa: E402

from benchmarks.threads import torch_threads  # noqa: E402
from simulator import conv as conv_module  # noqa: E402
from simulator.conv import IncoherentConv2d  # noqa: E402
from simulator.fft import ifft2_unscaled  # noqa: E402
from simulator.field import Field, Grid  # noqa: E402
from simulator.propagation import asm_transfer_function, clear_transfer_function_cache, propagate_asm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "simulator.json"
BATCH, IMAGE, KERNELS = 128, 28, 16
#: Forward-pass sweep of the automatic path's choice: batch, image side, PSF count, PSF side (float64:
#: batch 1 only, as the calibration fit renders).
SWEEP = {"batch": (1, 16), "image": (28, 56, 112), "psfs": (4, 10, 32), "kernel": (5, 9, 13, 19, 31)}
QUICK_SWEEP = {"batch": (1,), "image": (28, 56), "psfs": (4, 10), "kernel": (5, 13, 31)}
#: Shapes of the old padded-conv2d slow path: one 56 x 56 image (a 28 x 28 display at 2 sensor pixels per
#: display pixel) through 10 PSFs of 19 x 19 (reported slow in an earlier run) and of 31 x 31, float32.
SLOW_PATH_SHAPES = tuple({"batch": 1, "image": 56, "psfs": 10, "kernel": k, "dtype": "float32"} for k in (19, 31))
#: Torch threads of the sweep: on a shared 2-core machine a parallel region stalls for whole scheduler
#: slices (tens of ms) whenever another process holds a core; one thread only slows down in proportion.
SWEEP_THREADS = 1
FIXED_CROSSOVER = 23  # the rule method="auto" followed before the cost model: direct below this K
SIZES = (3, 5, 7, 9, 11, 13, 15, 19, 23, 31, 43, 63)
QUICK_SIZES = (3, 7, 15, 31, 63)
ASM_N, ASM_SPACING_M, ASM_WAVELENGTH_M, ASM_DISTANCE_M = 1024, 586e-9, 532e-9, 0.5e-3


def median_seconds(steps: dict, device, *, warmup: int, repeats: int, min_total_s: float) -> dict:
    """Median wall time of each callable in ``steps``: ``warmup`` untimed rounds, then rounds that time
    every step once, interleaved, so that a change of machine load hits all of them alike; at least
    ``repeats`` rounds, more (up to 4x) while a round-trip total is below ``min_total_s``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for step in steps.values():
            step()
    sync()
    times = {name: [] for name in steps}
    while True:
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
        rounds, total = len(times[name]), sum(sum(t) for t in times.values())
        if rounds >= 4 * repeats or (rounds >= repeats and total >= min_total_s):
            return {name: statistics.median(t) for name, t in times.items()}


def conv_rows(sizes, device, timing) -> list[dict]:
    """Images/s of forward + backward for conv2d and our layer's three paths, per kernel size."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 1, IMAGE, IMAGE, generator=generator).to(device)
    rows = []
    for k in sizes:
        kernels = (torch.rand(KERNELS, 1, k, k, generator=generator) - 0.5).to(device)
        reference = kernels.clone().requires_grad_()

        def conv2d_step():
            reference.grad = None
            F.conv2d(images, reference, padding=k // 2).sum().backward()

        steps = {"conv2d": conv2d_step}
        for method in ("fft", "direct", "auto"):
            layer = IncoherentConv2d.from_kernels(kernels, method=method)

            def layer_step(layer=layer):
                layer.zero_grad(set_to_none=True)
                layer(images).sum().backward()

            steps[method] = layer_step
        seconds = median_seconds(steps, device, **timing)
        row = {"kernel_size": k, **{f"{name}_img_s": BATCH / t for name, t in seconds.items()}}
        rows.append(row)
        print(
            f"K={k:3d}  conv2d {row['conv2d_img_s']:10.0f} img/s | ours fft {row['fft_img_s']:10.0f}"
            f"  direct {row['direct_img_s']:10.0f}  auto {row['auto_img_s']:10.0f} | auto/conv2d "
            f"{row['auto_img_s'] / row['conv2d_img_s']:6.3f}",
            flush=True,
        )
    return rows


def interleaved_times(steps: dict, *, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall times (s) of ``repeats`` interleaved rounds of every CPU callable in ``steps``, after
    ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def sweep_rows(grid: dict, timing: dict) -> list[dict]:
    """Seconds (median, and least: ``*_least_s``) of the FFT path, the direct path and conv2d's own
    padding (the old direct path) for each shape of ``grid``, forward only, "full" mode, CPU, no
    gradient, on :data:`SWEEP_THREADS` torch threads."""
    with torch_threads(SWEEP_THREADS):
        return _sweep_rows(grid, timing)


def _sweep_rows(grid: dict, timing: dict) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for dtype_name in ("float32", "float64"):
        dtype = getattr(torch, dtype_name)
        for n, h, m, k in itertools.product(*grid.values()):
            if dtype is torch.float64 and n > 1:
                continue
            images = torch.rand(n, 1, h, h, generator=generator, dtype=dtype)
            psfs = torch.rand(m, 1, k, k, generator=generator, dtype=dtype)
            flipped = psfs.flip(-2, -1)
            steps = {"fft": lambda: conv_module.fft_conv2d(images, psfs, mode="full"),
                     "direct": lambda: conv_module.direct_conv2d(images, psfs, mode="full"),
                     "padding_arg": lambda: F.conv2d(images, flipped, padding=k - 1)}
            with torch.no_grad():
                times = interleaved_times(steps, **timing)
            seconds = {name: statistics.median(t) for name, t in times.items()}
            row = {"batch": n, "image": h, "psfs": m, "kernel": k, "dtype": dtype_name,
                   **{f"{name}_s": t for name, t in seconds.items()},
                   **{f"{name}_least_s": min(t) for name, t in times.items()},
                   "auto": conv_module.auto_method(images.shape, psfs.shape, "full", dtype)}
            rows.append(row)
            print(f"{dtype_name} N={n:2d} {h:3d}x{h:<3d} {m:2d} PSFs K={k:2d}: fft {seconds['fft'] * 1e3:8.3f} ms  "
                  f"direct {seconds['direct'] * 1e3:8.3f} ms  padding arg {seconds['padding_arg'] * 1e3:8.3f} ms  "
                  f"auto -> {row['auto']}", flush=True)
    return rows


def fit_costs(rows) -> dict:
    """Per dtype and path, ``[seconds per unit of work, seconds per call]`` minimising the squared
    relative error of ``simulator.conv.conv_work`` x per unit + per call against the least time of each
    row (other processes only ever add time; non-negative least squares)."""
    fitted = {}
    for dtype_name in sorted({r["dtype"] for r in rows}):
        fitted[dtype_name] = {}
        for path in ("direct", "fft"):
            mine = [r for r in rows if r["dtype"] == dtype_name]
            work = np.array([_work(r)[path] for r in mine])
            seconds = np.array([r[f"{path}_least_s"] for r in mine])
            solution, _ = nnls(np.stack([work / seconds, 1 / seconds], axis=1), np.ones(len(mine)))
            fitted[dtype_name][path] = [float(v) for v in solution]
    return fitted


def _work(row) -> dict:
    return conv_module.conv_work((row["batch"], 1, row["image"], row["image"]),
                                 (row["psfs"], 1, row["kernel"], row["kernel"]), "full")


def _over_best(rows, choose) -> dict:
    """Time of the path ``choose(row)`` picks over the faster path's: median and worst over ``rows``."""
    ratios = [r[f"{choose(r)}_s"] / min(r["fft_s"], r["direct_s"]) for r in rows]
    return {"median": float(np.median(ratios)), "max": float(np.max(ratios)), "mean": float(np.mean(ratios))}


def sweep_figures(grid: dict, timing: dict) -> dict:
    rows = sweep_rows(grid, timing)
    fitted = fit_costs(rows)

    def fitted_choice(row) -> str:
        (a_d, b_d), (a_f, b_f) = fitted[row["dtype"]]["direct"], fitted[row["dtype"]]["fft"]
        work = _work(row)
        return "direct" if a_d * work["direct"] + b_d <= a_f * work["fft"] + b_f else "fft"

    pad_ratios = [r["direct_s"] / r["padding_arg_s"] for r in rows]
    figures = {
        "pass": "forward, mode 'full', no gradient, CPU",
        "threads": SWEEP_THREADS,
        "grid": {**{key: list(values) for key, values in grid.items()}, "dtype": ["float32", "float64"],
                 "float64": "batch 1 only"},
        "rows": rows,
        "fitted": fitted,
        "cost_in_code": {str(dtype).removeprefix("torch."): {path: list(c) for path, c in costs.items()}
                         for dtype, costs in conv_module.CONV_COST.items()},
        "auto_over_best": _over_best(rows, lambda r: r["auto"]),
        "auto_over_best_fitted": _over_best(rows, fitted_choice),
        "fixed_rule_over_best": _over_best(rows, lambda r: "direct" if r["kernel"] < FIXED_CROSSOVER else "fft"),
        "auto_picks_faster_fraction": float(np.mean([r[f"{r['auto']}_s"] <= min(r["fft_s"], r["direct_s"])
                                                     for r in rows])),
        "pad_first_over_padding_arg": {"median": float(np.median(pad_ratios)), "min": float(np.min(pad_ratios)),
                                       "max": float(np.max(pad_ratios))},
    }
    figures["slow_path_shapes"] = [
        {**shape, "padding_arg_s": r["padding_arg_s"], "pad_first_s": r["direct_s"], "fft_s": r["fft_s"],
         "pad_first_speedup": r["padding_arg_s"] / r["direct_s"]}
        for shape in SLOW_PATH_SHAPES for r in rows if all(r[key] == value for key, value in shape.items())]
    print(f"auto path / faster path over {len(rows)} shapes: median {figures['auto_over_best']['median']:.3f}, "
          f"worst {figures['auto_over_best']['max']:.2f} (fitted now: "
          f"{figures['auto_over_best_fitted']['max']:.2f}; fixed K < {FIXED_CROSSOVER} rule: "
          f"{figures['fixed_rule_over_best']['max']:.2f}); padded first / padding argument: median "
          f"{figures['pad_first_over_padding_arg']['median']:.2f}, best {figures['pad_first_over_padding_arg']['min']:.3f}, "
          f"worst {figures['pad_first_over_padding_arg']['max']:.2f}; fitted {json.dumps(fitted)}", flush=True)
    return figures


def crossover(rows) -> int | None:
    """Smallest measured K from which the FFT path is faster than the direct path at every larger K."""
    found = None
    for row in reversed(rows):
        if row["fft_img_s"] <= row["direct_img_s"]:
            break
        found = row["kernel_size"]
    return found


def numpy_transfer_function(n_pad, spacing_m, wavelength_m, distance_m) -> np.ndarray:
    """Band-limited angular-spectrum transfer function, written independently in numpy (complex64)."""
    f = np.fft.fftfreq(n_pad, d=spacing_m)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    arg = 1.0 / wavelength_m**2 - f2
    limit = 1.0 / (wavelength_m * math.sqrt((2 * distance_m / (n_pad * spacing_m)) ** 2 + 1))
    keep = (arg > 0) & (np.abs(f)[:, None] <= limit) & (np.abs(f)[None, :] <= limit)
    return (keep * np.exp(2j * np.pi * distance_m * np.sqrt(np.maximum(arg, 0)))).astype(np.complex64)


def numpy_propagate(field: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    n, n_pad = field.shape[0], transfer.shape[0]
    return np.fft.ifft2(np.fft.fft2(field, s=(n_pad, n_pad)) * transfer)[:n, :n]


def asm_figures(device, timing) -> dict:
    generator = np.random.default_rng(0)
    amplitude = generator.random((ASM_N, ASM_N)) * np.exp(2j * np.pi * generator.random((ASM_N, ASM_N)))
    amplitude = amplitude.astype(np.complex64)
    grid = Grid.square(ASM_N, ASM_SPACING_M)
    field = Field(torch.from_numpy(amplitude)[None].to(device), grid, ASM_WAVELENGTH_M)
    n_pad = 2 * ASM_N  # fast_fft_size(2048) = 2048, the simulator's default padding
    transfer = numpy_transfer_function(n_pad, ASM_SPACING_M, ASM_WAVELENGTH_M, ASM_DISTANCE_M)

    torch_transfer = asm_transfer_function(grid, ASM_WAVELENGTH_M, ASM_DISTANCE_M, (n_pad, n_pad), device=device)

    def bare_fft_step():
        spectrum = torch.fft.fft2(field.data, s=(n_pad, n_pad))
        spectrum.mul_(torch_transfer)
        return ifft2_unscaled(spectrum)[..., :ASM_N, :ASM_N] * (1.0 / n_pad**2)

    torch_out = propagate_asm(field, ASM_DISTANCE_M).data[0].cpu().numpy()
    numpy_out = numpy_propagate(amplitude, transfer)
    max_abs_difference = float(np.abs(torch_out - numpy_out).max())
    bare_difference = float(np.abs(bare_fft_step()[0].cpu().numpy() - numpy_out).max())

    def torch_uncached_step():
        clear_transfer_function_cache()
        propagate_asm(field, ASM_DISTANCE_M)

    seconds = median_seconds(
        {
            "torch": lambda: propagate_asm(field, ASM_DISTANCE_M),
            "numpy": lambda: numpy_propagate(amplitude, transfer),
            "bare_fft": bare_fft_step,
            "torch_uncached": torch_uncached_step,
            "numpy_uncached": lambda: numpy_propagate(
                amplitude, numpy_transfer_function(n_pad, ASM_SPACING_M, ASM_WAVELENGTH_M, ASM_DISTANCE_M)
            ),
        },
        device,
        **timing,
    )
    t_torch, t_numpy = seconds["torch"], seconds["numpy"]
    t_torch_cold, t_numpy_cold = seconds["torch_uncached"], seconds["numpy_uncached"]
    t_bare = seconds["bare_fft"]
    figures = {
        "field_shape": [ASM_N, ASM_N],
        "padded_shape": [n_pad, n_pad],
        "dtype": "complex64",
        "spacing_m": ASM_SPACING_M,
        "wavelength_m": ASM_WAVELENGTH_M,
        "distance_m": ASM_DISTANCE_M,
        "torch_s": t_torch,
        "numpy_s": t_numpy,
        "torch_uncached_s": t_torch_cold,
        "numpy_uncached_s": t_numpy_cold,
        "bare_fft_s": t_bare,
        "bare_fft": "fft2(x, s=padded); mul_(H); ifft2(norm='forward'); crop; * 1/N (torch, same H, cached)",
        "asm_over_bare_fft": t_torch / t_bare,
        "asm_speedup_vs_numpy": t_numpy / t_torch,
        "asm_speedup_vs_numpy_uncached": t_numpy_cold / t_torch_cold,
        "max_abs_difference_vs_numpy": max_abs_difference,
        "max_abs_field": float(np.abs(numpy_out).max()),
        "agrees_with_numpy": max_abs_difference <= 1e-4 * float(np.abs(numpy_out).max()),
        "bare_fft_agrees_with_numpy": bare_difference <= 1e-4 * float(np.abs(numpy_out).max()),
    }
    print(
        f"ASM {ASM_N}x{ASM_N} (pad {n_pad}): torch {t_torch * 1e3:8.1f} ms, numpy {t_numpy * 1e3:8.1f} ms, "
        f"speedup {figures['asm_speedup_vs_numpy']:.2f}; uncached torch {t_torch_cold * 1e3:8.1f} ms, "
        f"numpy {t_numpy_cold * 1e3:8.1f} ms, speedup {figures['asm_speedup_vs_numpy_uncached']:.2f}; "
        f"max |difference| {max_abs_difference:.2e} (max |field| {figures['max_abs_field']:.2f}); "
        f"bare torch round trip {t_bare * 1e3:8.1f} ms, ours / bare {figures['asm_over_bare_fft']:.2f}",
        flush=True,
    )
    return figures


def machine(device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_1_5_15min"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer kernel sizes and repeats (a smoke run)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        timing = {"warmup": 1, "repeats": 3, "min_total_s": 0.5}
    else:
        timing = {"warmup": 2, "repeats": 7, "min_total_s": 2.0}
    sizes = QUICK_SIZES if args.quick else SIZES
    print(f"optical conv, forward+backward: batch {BATCH}, {IMAGE}x{IMAGE} mono, {KERNELS} signed kernels "
          f"({2 * KERNELS} PSFs), float32, {device}, {torch.get_num_threads()} torch threads", flush=True)
    rows = conv_rows(sizes, device, timing)
    measured_crossover = crossover(rows)
    results = {
        "benchmark": "simulator",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "settings": {"quick": args.quick, **timing, "statistic": "median", "dtype": "float32"},
        "note": args.note,
        "conv": {
            "batch": BATCH,
            "image_hw": [IMAGE, IMAGE],
            "signed_kernels": KERNELS,
            "psfs": 2 * KERNELS,
            "pass": "forward + backward (grad w.r.t. kernels)",
            "reference": "torch.nn.functional.conv2d with the 16 signed kernels, padding K//2",
            "rows": rows,
            "conv_speedup_vs_conv2d": {str(r["kernel_size"]): r["auto_img_s"] / r["conv2d_img_s"] for r in rows},
            "fft_speedup_vs_conv2d": {str(r["kernel_size"]): r["fft_img_s"] / r["conv2d_img_s"] for r in rows},
            "crossover_kernel_size": measured_crossover,
            "auto_method": {str(r["kernel_size"]): conv_module.auto_method(
                (BATCH, 1, IMAGE, IMAGE), (KERNELS, 1, r["kernel_size"], r["kernel_size"]), "same") for r in rows},
        },
    }
    sweep_timing = {"warmup": 1, "repeats": 3 if args.quick else 5}
    results["conv_sweep"] = sweep_figures(QUICK_SWEEP if args.quick else SWEEP, sweep_timing)
    asm = asm_figures(device, timing)
    results.update({
        # the headline figures, also found in "conv" and "asm"
        "conv_speedup_vs_conv2d": results["conv"]["conv_speedup_vs_conv2d"],
        "crossover_kernel_size": measured_crossover,
        "asm_speedup_vs_numpy": asm["asm_speedup_vs_numpy"],
        "asm_speedup_vs_numpy_uncached": asm["asm_speedup_vs_numpy_uncached"],
        "asm_over_bare_fft": asm["asm_over_bare_fft"],
        "asm": asm,
    })
    print(f"crossover (fft faster than direct from K =) {measured_crossover} at batch {BATCH}, {IMAGE}x{IMAGE}, "
          f"{KERNELS} kernels")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
