"""Calibration accuracy and speed on simulated benches with known injected errors.

Measured here (every figure in one run; seeds and magnitudes are not the tests'):

- ``shift_rmse_over_crlb``: over ``--realisations`` noise realisations of one fabricated device
  (shift std 0.5 px, brightness 10 %), the RMSE of the fitted PSF shifts divided by the Cramer-Rao
  bound at the same photon count (the Fisher standard deviation the fit reports, averaged over the
  realisations and PSFs); goal <= 1.5. ``shift_sigma_coverage_1`` is the fraction of shift errors
  within one stated sigma (68 % for honest uncertainties).
- ``fit_seconds_16_psfs``: the full mismatch fit (stages geometry, photometry, optics with blur and
  Noll 4-6, residual) of the 16 PSFs of ``examples/optics.yaml``'s fabricated device, on this machine
  with 2 torch threads (the goal is stated for 2 cores; every other part runs on 1), with the Jacobian of ``FitSettings``' default; ``fit_seconds_16_psfs_geometry``: the
  geometry stage alone; ``fit_speedup_vs_finite_differences``: the same full fit with the
  finite-difference Jacobian (``jacobian="finite_differences"``, the reference), its time over the
  autodiff one's (``jacobian="autodiff"``), both in this run; ``jacobian_seconds`` / ``jacobian_calls`` per
  method, ``jacobian_speedup_vs_finite_differences`` (per call) and ``fit_seconds_outside_jacobians``
  (the autodiff fit's time spent elsewhere, which bounds the full-fit ratio).
- ``psf_residual_before`` / ``psf_residual_after``: relative L2 of measured PSFs vs the design model /
  vs the calibrated model, for that device (its errors include a 5 % kernel error and stray light).
- ``phase_retrieval_rms_waves``: Noll 4-11 RMS error of phase retrieval with phase diversity on
  noiseless PSFs of an independent numpy FFT oracle; ``phase_retrieval_rms_waves_noisy``: mean over
  seeds at 1e5 photo-electrons per PSF and 2 e- read noise, with its Cramer-Rao RMS beside it.
- ``example_device_reduced_chi2``: the last stage's reduced chi-square of the full fit (default
  settings) of ``examples/optics.yaml``'s device, with its held-out residual over the noise
  (``example_device_holdout_residual_over_noise``).
- ``wave_device``: calibration outside its own model, over ``--wave-devices`` wave-optics devices
  (``examples/optics_wave.yaml``'s errors, seeds ``--wave-first-seed`` (21: the pull correction was
  developed on 1-20) onwards, PSFs from wave optics: simulator.wave_device): ``shift_rmse_px`` (the
  stated misregistration, ``MismatchFit.misregistration_px()``: the fitted shift less its sampling pull,
  vs the true one), ``reduced_chi2`` (median over devices of the last stage's;
  ``reduced_chi2_per_device``), ``coverage_1sigma`` / ``coverage_2sigma`` (fraction of the true shifts
  within 1 / 2 stated sigma of the misregistration, all PSFs and devices pooled; the stated sigma
  includes the sampling systematic, ``shift_systematic_median_px``: calibration.sampling; the same for
  the least-squares shifts: ``*_least_squares``), and
  ``holdout_residual_over_noise`` (median over devices; residual RMS over the expected noise RMS on frames
  the fit never saw: the point grid moved by half its spacing and two Fashion-MNIST test images where
  the dataset is installed, else :func:`calibration.psf.default_holdout_images`). The fit configuration
  is stated under ``fit`` (the device's own wavelength, f-number and pixel pitch; blur without Zernike
  terms in the optics stage unless ``--wave-zernike``: the Zernike OTF makes the full fit ~10x slower on
  the 17 px wave window).

  Also the light: ``throughput_rmse`` / ``throughput_mean_error`` / ``throughput_coverage_{1,2}sigma``
  (each tile's light over the design's, crosstalk exchanged, ``throughput[p]`` rows, against
  ``OpticalSystem.throughput()`` of the device) and ``crosstalk_fitted`` / ``crosstalk_true`` /
  ``crosstalk_error_over_sigma`` (the split of that light the kernel error's prior decides).

- ``wave_device_variants``: the same figures on ``--wave-variant-devices`` wave devices (seeds 41..) of
  each of :data:`WAVE_VARIANTS` (twice the misregistration; an f/6 sub-aperture; no misregistration), to
  see whether the coverage holds away from the configuration it was developed on (``--wave-variants``:
  some of them).

- ``unseen_bench``: ``--unseen-devices`` devices (seeds 61..) of :data:`UNSEEN_BENCH`, a bench the
  calibration was not developed on (5 signed 9 x 9 kernels, 2 x 2 sensor pixels per display pixel, a
  14-bit camera, larger cascade errors, a vignetting polynomial the fit does not model), every stage
  with examples/calibrate_sim.yaml's settings, per variant of :data:`UNSEEN_VARIANTS`: shift, rotation,
  magnification and brightness coverage, brightness's mean error, throughput and crosstalk as above,
  reduced chi-square, held-out residual, the sensor stage's gain error.

Prints a table and, last, one line of JSON; writes benchmarks/results/calibration.json. ``--parts``
runs only some of the measurements; the keys of the others are kept from the existing JSON.
Usage: python benchmarks/calibration.py [--realisations 50] [--phase-seeds 5] [--wave-devices 20]
       [--wave-variant-devices 10] [--wave-variants NAMES] [--unseen-devices 4]
       [--parts shift,example,speed,phase,wave,wave_variants,unseen]
"""

from __future__ import annotations

import argparse
import contextlib
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

from benchmarks.threads import torch_threads  # noqa: E402
from calibration import fit_model  # noqa: E402
from calibration.api import calibrate  # noqa: E402
from calibration.fit import FitSettings, fit_mismatch  # noqa: E402
from onn_core import config as config_io  # noqa: E402
from calibration.psf import measure_psfs  # noqa: E402
from onn_core.files import atomic_write  # noqa: E402
from simulator.fabrication import AberrationOptics  # noqa: E402
from simulator.system import OpticalSystem  # noqa: E402
from tests.calibration import test_phase_retrieval as phase  # noqa: E402
from tests.calibration.benches import example_optics, merged, simulated_bench  # noqa: E402

SHIFT_SPEC = {"shift_std_px": 0.5, "brightness_rel_std": 0.1}
#: What --parts can name: shift accuracy, the example device's fit speed, its reduced chi-square,
#: phase retrieval, the wave devices, the wave devices' variants, the benches not developed on.
PARTS = ("shift", "speed", "example", "phase", "wave", "wave_variants", "unseen")
#: Records under wave_device that a rerun of the wave part keeps (figures of other runs, kept by hand).
HAND_KEPT = ("development_devices",)


def nominal() -> OpticalSystem:
    return OpticalSystem.from_config({**example_optics(), "errors": None})


def shift_accuracy(realisations: int) -> dict:
    errors, sigmas = [], []
    for seed in range(realisations):
        with simulated_bench({"errors": {"seed": 77, "spec": SHIFT_SPEC}, "seed": 1000 + seed}) as bench:
            measurement = measure_psfs(bench, nominal(), averages=2, progress=False)
            truth = bench.camera.optics.errors.shift_px
        # the Cramer-Rao bound: the noise's sigma alone (the device is the fit's own bilinear model)
        fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",), sampling_draws=0))
        sigma = {p.name: p.sigma for p in fit.parameters}
        errors.append((fit.errors.shift_px - truth).numpy())
        sigmas.append(np.array([[sigma[f"shift_px[{i}][{a}]"] for a in range(2)] for i in range(truth.shape[0])]))
    errors, sigmas = np.stack(errors), np.stack(sigmas)
    rmse = float(np.sqrt(np.mean(errors**2)))
    crlb = float(np.sqrt(np.mean(sigmas**2)))
    return {"shift_rmse_px": rmse, "shift_crlb_px": crlb, "shift_rmse_over_crlb": rmse / crlb,
            "shift_sigma_coverage_1": float(np.mean(np.abs(errors) < sigmas)), "realisations": realisations}


#: torch threads of the speed part (the goal: a full fit in under 15 s on 2 cores)
SPEED_THREADS = 2


def example_device_fit() -> dict:
    with simulated_bench(None) as bench:  # examples/optics.yaml's fabricated device, as shipped
        measurement = measure_psfs(bench, nominal(), averages=8, progress=False)
    with torch_threads(SPEED_THREADS):
        return _timed_fits(measurement, FitSettings(aberration=example_aberration()))


@contextlib.contextmanager
def jacobian_timer():
    """Within the block, seconds and calls of the fit's physical-parameter Jacobians (the part the two
    Jacobian methods do differently; the kernel error's derivatives are forward mode in both)."""
    original = fit_model.FitModel.jacobian
    spent = {"seconds": 0.0, "calls": 0}

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - start
            spent["calls"] += 1

    fit_model.FitModel.jacobian = timed
    try:
        yield spent
    finally:
        fit_model.FitModel.jacobian = original


def _timed_fits(measurement, settings: FitSettings) -> dict:
    """The full fit with each Jacobian and the geometry stage alone, timed (seconds)."""
    seconds, jacobians = {}, {}
    for method in ("finite_differences", "autodiff"):
        start = time.perf_counter()
        with jacobian_timer() as jacobians[method]:
            fit = fit_mismatch(measurement, nominal(), settings=dataclasses.replace(settings, jacobian=method))
        seconds[method] = time.perf_counter() - start
    full = seconds[settings.jacobian]
    start = time.perf_counter()
    fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",)))
    geometry = time.perf_counter() - start
    return {"fit_seconds_16_psfs": full, "fit_seconds_16_psfs_geometry": geometry,
            "fit_speedup_vs_finite_differences": seconds["finite_differences"] / seconds["autodiff"],
            "fit_speed_threads": SPEED_THREADS, "fit_seconds_16_psfs_finite_differences": seconds["finite_differences"],
            "jacobian_seconds": {method: spent["seconds"] for method, spent in jacobians.items()},
            "jacobian_calls": {method: spent["calls"] for method, spent in jacobians.items()},
            "jacobian_speedup_vs_finite_differences": (
                (jacobians["finite_differences"]["seconds"] / jacobians["finite_differences"]["calls"])
                / (jacobians["autodiff"]["seconds"] / jacobians["autodiff"]["calls"])),
            "fit_seconds_outside_jacobians": seconds["autodiff"] - jacobians["autodiff"]["seconds"],
            "psf_residual_before": fit.psf_residual_before, "psf_residual_after": fit.psf_residual_after,
            "chi2_reduced": fit.chi2_reduced, "unidentifiable": [p.name for p in fit.parameters if not p.identifiable]}


def example_device_chi2() -> dict:
    """The full fit (default settings) of examples/optics.yaml's device: its last reduced chi-square and
    held-out residual."""
    with simulated_bench(None) as bench:
        measurement = measure_psfs(bench, nominal(), averages=8, progress=False)
    fit = fit_mismatch(measurement, nominal(), settings=FitSettings(aberration=example_aberration()))
    return {"example_device_reduced_chi2": fit.chi2_reduced[fit.settings.stages[-1]],
            "example_device_holdout_residual_over_noise": fit.holdout_residual_over_noise.get("all"),
            "example_device_kernel_error_parameters": fit.kernel_error_parameters}


def example_aberration():
    aberration = example_optics()["errors"]["aberration"]
    return AberrationOptics(**{k: tuple(v) if isinstance(v, list) else v for k, v in aberration.items()})


def dataset_images(count: int = 2):
    """The first ``count`` Fashion-MNIST test images in [0, 1] where the dataset is installed, else None."""
    path = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    if not path.exists():
        return None
    from hil.data.idx import read_idx

    return read_idx(path)[:count].astype(np.float64) / 255.0


#: The pull correction (calibration.sampling.sampling_pull_px) was developed on wave devices 1-20; the
#: benchmark measures it on devices it was not developed on.
WAVE_FIRST_SEED = 21


#: Wave devices unlike the main ones, each a change of ``examples/optics_wave.yaml``'s ``errors``
#: (module docstring: ``wave_device_variants``): twice the misregistration; a slower sub-aperture
#: (f/6: a speckle grain of 0.93 px instead of 0.62 px); no misregistration (an aligned optic: what
#: the fitted shifts hold besides it).
WAVE_VARIANTS = {"shift_std_0.6_px": {"spec": {"shift_std_px": 0.6}},
                 "f_number_6": {"optics": {"f_number": 6.0}},
                 "aligned": {"spec": {"shift_std_px": 0.0}}}
#: their seeds: neither the development devices' (1-20) nor the main benchmark's (21-40)
VARIANT_FIRST_SEED = 41


def wave_devices(count: int, zernike: bool, first_seed: int = WAVE_FIRST_SEED, variant: dict | None = None) -> dict:
    """Fit ``count`` wave-optics devices, seeds ``first_seed``.. (module docstring: ``wave_device``),
    ``examples/optics_wave.yaml``'s errors changed by ``variant`` (``{section: {key: value}}``)."""
    wave = config_io.load_yaml(ROOT / "examples" / "optics_wave.yaml")
    for section, values in (variant or {}).items():
        wave["errors"][section] = {**wave["errors"][section], **values}
    margin = wave["geometry"]["psf_margin_px"]
    optics = {**example_optics(), "geometry": {**example_optics()["geometry"], "psf_margin_px": margin}}
    system = OpticalSystem.from_config({**optics, "errors": None})
    # the fit is given the device's optics (wavelength, f-number, pixel pitch), as a lab would enter its own
    aberration = AberrationOptics(wavelengths_m=tuple(wave["errors"]["optics"]["wavelengths_m"]),
                                  f_number=wave["errors"]["optics"]["f_number"],
                                  pixel_pitch_m=wave["geometry"]["sensor_pixel_pitch_m"])
    settings = FitSettings(aberration=aberration, zernike_noll=(4, 5, 6) if zernike else ())
    images = dataset_images()
    errors, least_squares, pulls, sigmas, systematics, chi2, holdout, seconds = [], [], [], [], [], [], [], []
    light, crosstalk = {"error": [], "sigma": []}, {"fitted": [], "true": [], "sigma": []}
    seeds = range(first_seed, first_seed + count)
    for seed in seeds:
        with simulated_bench({"errors": {**wave["errors"], "seed": seed}, "geometry": {"psf_margin_px": margin},
                              "seed": 500 + seed}) as bench:
            measurement = measure_psfs(bench, system, averages=8, progress=False, holdout_images=images)
            truth = bench.camera.optics.errors.shift_px.clone()
            true_throughput = bench.camera.optics.throughput().double().numpy()
            crosstalk["true"].append(float(bench.camera.optics.errors.crosstalk))
        start = time.perf_counter()
        fit = fit_mismatch(measurement, system, settings=settings)
        seconds.append(time.perf_counter() - start)
        sigma = {p.name: p.sigma for p in fit.parameters}
        errors.append(fit.misregistration_px() - truth.numpy())
        least_squares.append((fit.errors.shift_px - truth).numpy())
        pulls += [p.sampling_pull for p in fit.parameters if p.kind == "shift_px"]
        sigmas.append(np.array([[sigma[f"shift_px[{i}][{a}]"] for a in range(2)] for i in range(truth.shape[0])]))
        systematics += [p.systematic for p in fit.parameters if p.kind == "shift_px"]
        chi2.append(fit.chi2_reduced[settings.stages[-1]])
        holdout.append(fit.holdout_residual_over_noise["all"])
        light["error"].append(np.array([p.value for p in fit.parameters if p.kind == "throughput"]) - true_throughput)
        light["sigma"].append(np.array([p.sigma for p in fit.parameters if p.kind == "throughput"]))
        crosstalk["fitted"].append(float(fit.errors.crosstalk))
        crosstalk["sigma"].append(sigma["crosstalk"])
        print(f"wave device {seed}: reduced chi2 {chi2[-1]:.3g}, held-out {holdout[-1]:.3g}, "
              f"{seconds[-1]:.0f} s", flush=True)
    errors, least_squares, sigmas = np.stack(errors), np.stack(least_squares), np.stack(sigmas)
    z, z_least_squares = np.abs(errors) / sigmas, np.abs(least_squares) / sigmas
    return {"wave_device": {
        "shift_rmse_px": float(np.sqrt(np.mean(errors**2))), "reduced_chi2": float(np.median(chi2)),
        "coverage_1sigma": float(np.mean(z < 1)), "coverage_2sigma": float(np.mean(z < 2)),
        "holdout_residual_over_noise": float(np.median(holdout)), "devices": count,
        "seeds": [seeds[0], seeds[-1]],
        "shift_estimate": "misregistration_px(): the least-squares shift less its sampling pull",
        "shift_rmse_least_squares_px": float(np.sqrt(np.mean(least_squares**2))),
        "coverage_1sigma_least_squares": float(np.mean(z_least_squares < 1)),
        "coverage_2sigma_least_squares": float(np.mean(z_least_squares < 2)),
        "shift_pull_rms_px": float(np.sqrt(np.mean(np.square(pulls)))),
        "reduced_chi2_per_device": chi2, "holdout_residual_per_device": holdout,
        "shift_sigma_median_px": float(np.median(sigmas)), "shift_systematic_median_px": float(np.median(systematics)),
        **light_figures(light), **crosstalk_figures(crosstalk),
        "fit_seconds_median": float(np.median(seconds)),
        "holdout_images": "fashion-mnist t10k [0, 1]" if images is not None else "calibration.psf.default_holdout_images",
        "fit": {"stages": list(settings.stages), "zernike_noll": list(settings.zernike_noll),
                "kernel_error_window_px": "whole PSF window (7 + 2 x 5 = 17)", "kernel_error_prior":
                settings.kernel_error_prior, "averages": 8, "sampling_draws": settings.sampling_draws,
                "aberration": dataclasses.asdict(aberration),
                "note": "faster configuration than the full fit: no Zernike terms (the kernel error holds them)"
                if not zernike else "full fit"}}}


#: A bench the calibration was not developed on, calibrated as a new user would (every stage,
#: examples/calibrate_sim.yaml's settings): 5 signed 9 x 9 kernels (10 PSFs), 2 x 2 sensor pixels per
#: display pixel, a 14-bit camera, larger errors than examples/optics.yaml's (a cascade device: its
#: kernel error acts on the design and is clamped at zero, so it adds light) and a vignetting polynomial
#: the fit does not model; overrides of examples/optics.yaml.
UNSEEN_BENCH = {
    "design": {"generator": "random_signed", "num_kernels": 5, "kernel_size": 9, "channels": 1, "seed": 3},
    "geometry": {"display_pixel_pitch_m": 6.9e-6, "magnification": 1.0, "sensor_pixel_pitch_m": 3.45e-6,
                 "gap_px": 6, "psf_margin_px": 3},
    "photometry": {"photons_per_s": 1.5e6, "exposure_s": 0.01},
    "sensor": {"bit_depth": 14, "full_well_e": 20000.0, "gain_e_per_dn": 1.25, "read_noise_e": 3.0},
}
UNSEEN_ERRORS = {"shift_method": "bilinear",
                 "aberration": {"wavelengths_m": [532e-9], "f_number": 2.5, "pixel_pitch_m": 3.45e-6},
                 "spec": {"brightness_rel_std": 0.12, "shift_std_px": 0.6, "rotation_std_rad": 0.02,
                          "magnification_rel_std": 0.02, "blur_sigma_max_px": 0.7,
                          "zernike_std_m": [0, 0, 0, 40e-9, 20e-9, 20e-9], "kernel_error_rms": 0.08,
                          "crosstalk": 0.008, "vignetting_poly": [-0.05, 0.02], "vignetting_tan_edge": 0.25,
                          "background": 6000.0, "background_gradient_std": 0.1}}
#: Variants of UNSEEN_ERRORS' spec: as found, and without the unmodelled vignetting polynomial.
UNSEEN_VARIANTS = {"as_found": {}, "no_vignetting_poly": {"vignetting_poly": [0.0, 0.0]}}
UNSEEN_FIRST_SEED = 61


def unseen_benches(count: int) -> dict:
    """Calibrate ``count`` devices (seeds UNSEEN_FIRST_SEED..) of each of UNSEEN_VARIANTS on
    UNSEEN_BENCH with every stage; per variant the shift figures (misregistration and least squares),
    rotation and magnification coverage, brightness's mean error and coverage, crosstalk and throughput
    against the truth, the reduced chi-square, held-out residual and the sensor stage's gain error."""
    config = config_io.load_yaml(ROOT / "examples" / "calibrate_sim.yaml")["calibration"]
    nominal_optics = {**merged(example_optics(), UNSEEN_BENCH), "errors": None}
    out = {}
    for name, spec in UNSEEN_VARIANTS.items():
        rows = {key: [] for key in ("shift", "shift_ls", "shift_z", "shift_ls_z", "rotation_z", "magnification_z",
                                    "brightness", "brightness_z", "chi2", "holdout", "gain", "seconds")}
        light, crosstalk = {"error": [], "sigma": []}, {"fitted": [], "true": [], "sigma": []}
        for seed in range(UNSEEN_FIRST_SEED, UNSEEN_FIRST_SEED + count):
            errors = {**UNSEEN_ERRORS, "seed": seed, "spec": {**UNSEEN_ERRORS["spec"], **spec}}
            start = time.perf_counter()
            with simulated_bench({**UNSEEN_BENCH, "errors": errors}) as bench:
                result = calibrate(bench, OpticalSystem.from_config(nominal_optics), config, progress=False)
                truth = bench.camera.optics
                true_throughput = truth.throughput().double().numpy()
            rows["seconds"].append(time.perf_counter() - start)
            fit, true = result.fit, truth.errors
            sigma = {p.name: p.sigma for p in fit.parameters}
            p = true.shift_px.shape[0]
            shift_sigma = np.array([[sigma[f"shift_px[{i}][{a}]"] for a in range(2)] for i in range(p)])
            misregistration = fit.misregistration_px() - true.shift_px.double().numpy()
            least_squares = (fit.errors.shift_px - true.shift_px).double().numpy()
            rows["shift"].append(misregistration)
            rows["shift_ls"].append(least_squares)
            rows["shift_z"].append(np.abs(misregistration) / shift_sigma)
            rows["shift_ls_z"].append(np.abs(least_squares) / shift_sigma)
            for kind in ("rotation_rad", "magnification", "brightness"):
                error = (getattr(fit.errors, kind) - getattr(true, kind)).double().numpy()
                z = np.abs(error) / np.array([sigma[f"{kind}[{i}]"] for i in range(p)])
                rows[kind.split("_")[0] + "_z"].append(z)
                if kind == "brightness":
                    rows["brightness"].append(error)
            light["error"].append(np.array([q.value for q in fit.parameters if q.kind == "throughput"]) - true_throughput)
            light["sigma"].append(np.array([q.sigma for q in fit.parameters if q.kind == "throughput"]))
            crosstalk["fitted"].append(float(fit.errors.crosstalk))
            crosstalk["true"].append(float(true.crosstalk))
            crosstalk["sigma"].append(sigma["crosstalk"])
            rows["chi2"].append(fit.chi2_reduced[fit.settings.stages[-1]])
            rows["holdout"].append(fit.holdout_residual_over_noise["all"])
            rows["gain"].append(result.sensor.summary()["conversion_gain_e_per_code"] / UNSEEN_BENCH["sensor"]["gain_e_per_dn"] - 1)
            print(f"unseen bench {name} {seed}: reduced chi2 {rows['chi2'][-1]:.3g}, {rows['seconds'][-1]:.0f} s", flush=True)
        pooled = {key: np.concatenate([np.ravel(v) for v in values]) for key, values in rows.items()
                  if key.endswith("_z") or key in ("shift", "shift_ls", "brightness")}
        out[name] = {
            "devices": count, "seeds": [UNSEEN_FIRST_SEED, UNSEEN_FIRST_SEED + count - 1], "spec_changes": spec,
            "shift_rmse_px": float(np.sqrt(np.mean(pooled["shift"] ** 2))),
            "shift_rmse_least_squares_px": float(np.sqrt(np.mean(pooled["shift_ls"] ** 2))),
            **{f"{kind}_coverage_{k}sigma": float(np.mean(pooled[f"{kind}_z"] < k))
               for kind in ("shift", "shift_ls", "rotation", "magnification", "brightness") for k in (1, 2)},
            "brightness_mean_error": float(np.mean(pooled["brightness"])),
            **light_figures(light), **crosstalk_figures(crosstalk),
            "reduced_chi2": float(np.median(rows["chi2"])), "holdout_residual_over_noise": float(np.median(rows["holdout"])),
            "gain_rel_error": rows["gain"], "calibrate_seconds_median": float(np.median(rows["seconds"]))}
    return {"unseen_bench": {"bench": UNSEEN_BENCH, "errors": UNSEEN_ERRORS, "variants": out,
                             "note": "every stage as examples/calibrate_sim.yaml (a new user's settings)"}}


def light_figures(light: dict) -> dict:
    """Throughput (the tiles' light over the design's, crosstalk exchanged: ``OpticalSystem.throughput``)
    against the truth: RMSE, mean error and the coverage of its stated sigma, tiles of every device pooled."""
    error, sigma = np.concatenate(light["error"]), np.concatenate(light["sigma"])
    z = np.abs(error) / sigma
    return {"throughput_rmse": float(np.sqrt(np.mean(error**2))), "throughput_mean_error": float(np.mean(error)),
            "throughput_sigma_median": float(np.median(sigma)),
            "throughput_coverage_1sigma": float(np.mean(z < 1)), "throughput_coverage_2sigma": float(np.mean(z < 2))}


def crosstalk_figures(crosstalk: dict) -> dict:
    """The fitted crosstalk against the truth, per device, and its error in stated sigmas."""
    z = (np.array(crosstalk["fitted"]) - np.array(crosstalk["true"])) / np.array(crosstalk["sigma"])
    return {"crosstalk_fitted": crosstalk["fitted"], "crosstalk_true": crosstalk["true"],
            "crosstalk_error_over_sigma": z.tolist(), "crosstalk_coverage_2sigma": float(np.mean(np.abs(z) < 2))}


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
    parser.add_argument("--wave-devices", type=int, default=20)
    parser.add_argument("--wave-zernike", action="store_true", help="fit wave devices with Zernike 4-6 (slow)")
    parser.add_argument("--wave-variant-devices", type=int, default=10, help="devices per entry of WAVE_VARIANTS")
    parser.add_argument("--wave-variants", default=",".join(WAVE_VARIANTS),
                        help=f"comma-separated subset of {tuple(WAVE_VARIANTS)} (the others' results are kept)")
    parser.add_argument("--wave-first-seed", type=int, default=WAVE_FIRST_SEED,
                        help="error seed of the first wave device (the pull correction was developed on 1-20)")
    parser.add_argument("--unseen-devices", type=int, default=4, help="devices per entry of UNSEEN_VARIANTS")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration.json"))
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts must be a subset of {PARTS}")
    variant_names = [n for n in args.wave_variants.split(",") if n]
    if set(variant_names) - set(WAVE_VARIANTS):
        parser.error(f"--wave-variants must be a subset of {tuple(WAVE_VARIANTS)}")
    torch.set_num_threads(1)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and set(parts) != set(PARTS) else {}
    earlier_date = results.get("date")
    results.update({"machine": platform.node(), "processor": platform.processor() or platform.machine(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "torch_threads": 1})
    if set(parts) != set(PARTS):
        results["parts_measured_on_date"] = parts
    if "shift" in parts:
        results.update(shift_accuracy(args.realisations))
    if "speed" in parts:
        results.update(example_device_fit())
    if "example" in parts:
        results.update(example_device_chi2())
    if "phase" in parts:
        results.update(phase_retrieval(args.phase_seeds))
    if "wave" in parts:
        earlier = results.get("wave_device")
        results.update(wave_devices(args.wave_devices, args.wave_zernike, args.wave_first_seed))
        if earlier:  # the earlier figures stay on record beneath the new ones
            keep = ("coverage_1sigma", "coverage_2sigma", "shift_rmse_px", "shift_sigma_median_px", "seeds")
            results["wave_device"]["previous"] = earlier.get("previous", []) + [
                {**{k: earlier[k] for k in keep if k in earlier}, "date": earlier_date}]
            for key in HAND_KEPT:
                if key in earlier:
                    results["wave_device"][key] = earlier[key]
    if "wave_variants" in parts:
        variants = results.setdefault("wave_device_variants", {})
        for name in variant_names:
            variants[name] = {**wave_devices(args.wave_variant_devices, False, VARIANT_FIRST_SEED,
                                             WAVE_VARIANTS[name])["wave_device"], "variant": WAVE_VARIANTS[name]}
    if "unseen" in parts:
        results.update(unseen_benches(args.unseen_devices))
    for key, value in results.items():
        if isinstance(value, float):
            print(f"{key:34s} {value:.4g}" if math.isfinite(value) else f"{key:34s} {value}")
    with atomic_write(Path(args.out), "w") as fh:
        fh.write(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
