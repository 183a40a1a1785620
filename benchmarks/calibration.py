"""Calibration accuracy and speed on simulated benches with known injected errors.

Measured here (every figure in one run; seeds and magnitudes are not the tests'):

- ``shift_rmse_over_crlb``: over ``--realisations`` noise realisations of one fabricated device
  (shift std 0.5 px, brightness 10 %), the RMSE of the fitted PSF shifts divided by the Cramer-Rao
  bound at the same photon count (the Fisher standard deviation the fit reports, averaged over the
  realisations and PSFs); goal <= 1.5. ``shift_sigma_coverage_1`` is the fraction of shift errors
  within one stated sigma (68 % for honest uncertainties).
- ``fit_seconds_16_psfs``: the full mismatch fit (stages geometry, photometry, optics with blur and
  Noll 4-6, residual) of the 16 PSFs of ``examples/optics.yaml``'s fabricated device, on this machine
  (1 torch thread), with the Jacobian of ``FitSettings``' default; ``fit_seconds_16_psfs_geometry``: the
  geometry stage alone; ``fit_speedup_vs_finite_differences``: the same full fit with the
  finite-difference Jacobian (``jacobian="finite_differences"``, the reference), its time over the
  autodiff one's (``jacobian="autodiff"``), both in this run.
- ``psf_residual_before`` / ``psf_residual_after``: relative L2 of measured PSFs vs the design model /
  vs the calibrated model, for that device (its errors include a 5 % kernel error and stray light).
- ``phase_retrieval_rms_waves``: Noll 4-11 RMS error of phase retrieval with phase diversity on
  noiseless PSFs of an independent numpy FFT oracle; ``phase_retrieval_rms_waves_noisy``: mean over
  seeds at 1e5 photo-electrons per PSF and 2 e- read noise, with its Cramer-Rao RMS beside it.

Prints a table and, last, one line of JSON; writes benchmarks/results/calibration.json.
Usage: python benchmarks/calibration.py [--realisations 50] [--phase-seeds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibration.fit import FitSettings, fit_mismatch  # noqa: E402
from calibration.psf import measure_psfs  # noqa: E402
from onn_core.files import atomic_write  # noqa: E402
from simulator.system import OpticalSystem  # noqa: E402
from tests.calibration import test_phase_retrieval as phase  # noqa: E402
from tests.calibration.benches import example_optics, simulated_bench  # noqa: E402

SHIFT_SPEC = {"shift_std_px": 0.5, "brightness_rel_std": 0.1}


def nominal() -> OpticalSystem:
    return OpticalSystem.from_config({**example_optics(), "errors": None})


def shift_accuracy(realisations: int) -> dict:
    errors, sigmas = [], []
    for seed in range(realisations):
        with simulated_bench({"errors": {"seed": 77, "spec": SHIFT_SPEC}, "seed": 1000 + seed}) as bench:
            measurement = measure_psfs(bench, nominal(), averages=2, progress=False)
            truth = bench.camera.optics.errors.shift_px
        fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",)))
        sigma = {p.name: p.sigma for p in fit.parameters}
        errors.append((fit.errors.shift_px - truth).numpy())
        sigmas.append(np.array([[sigma[f"shift_px[{i}][{a}]"] for a in range(2)] for i in range(truth.shape[0])]))
    errors, sigmas = np.stack(errors), np.stack(sigmas)
    rmse = float(np.sqrt(np.mean(errors**2)))
    crlb = float(np.sqrt(np.mean(sigmas**2)))
    return {"shift_rmse_px": rmse, "shift_crlb_px": crlb, "shift_rmse_over_crlb": rmse / crlb,
            "shift_sigma_coverage_1": float(np.mean(np.abs(errors) < sigmas)), "realisations": realisations}


def example_device_fit() -> dict:
    with simulated_bench(None) as bench:  # examples/optics.yaml's fabricated device, as shipped
        measurement = measure_psfs(bench, nominal(), averages=8, progress=False)
    aberration = example_optics()["errors"]["aberration"]
    from simulator.fabrication import AberrationOptics

    settings = FitSettings(aberration=AberrationOptics(**{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in aberration.items()}))
    seconds = {}
    for method in ("finite_differences", "autodiff"):
        start = time.perf_counter()
        fit = fit_mismatch(measurement, nominal(), settings=dataclasses.replace(settings, jacobian=method))
        seconds[method] = time.perf_counter() - start
    full = seconds[settings.jacobian]
    start = time.perf_counter()
    fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",)))
    geometry = time.perf_counter() - start
    return {"fit_seconds_16_psfs": full, "fit_seconds_16_psfs_geometry": geometry,
            "fit_speedup_vs_finite_differences": seconds["finite_differences"] / seconds["autodiff"],
            "psf_residual_before": fit.psf_residual_before, "psf_residual_after": fit.psf_residual_after,
            "chi2_reduced": fit.chi2_reduced, "unidentifiable": [p.name for p in fit.parameters if not p.identifiable]}


def phase_retrieval(seeds: int) -> dict:
    truth = phase.truth_vector()
    noiseless = phase.rms_error_waves(phase.fit(phase.oracle_psfs(phase.TRUTH) * 1e6), truth)
    expected = phase.oracle_psfs(phase.TRUTH) * 1e5
    noisy, bounds = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        result = phase.fit(rng.poisson(expected) + rng.normal(0, 2.0, expected.shape), read_noise_e=2.0)
        noisy.append(phase.rms_error_waves(result, truth))
        modes = np.isin(result.noll, list(range(4, 12)))
        bounds.append(float(np.sqrt(np.mean((result.uncertainty_m[modes] / result.wavelength_m) ** 2))))
    return {"phase_retrieval_rms_waves": noiseless, "phase_retrieval_rms_waves_noisy": float(np.mean(noisy)),
            "phase_retrieval_crlb_rms_waves": float(np.mean(bounds)), "phase_retrieval_seeds": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--realisations", type=int, default=50)
    parser.add_argument("--phase-seeds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "torch_threads": 1}
    results.update(shift_accuracy(args.realisations))
    results.update(example_device_fit())
    results.update(phase_retrieval(args.phase_seeds))
    for key, value in results.items():
        if isinstance(value, float):
            print(f"{key:34s} {value:.4g}" if math.isfinite(value) else f"{key:34s} {value}")
    with atomic_write(Path(args.out), "w") as fh:
        fh.write(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
