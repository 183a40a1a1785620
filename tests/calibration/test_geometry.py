"""Geometry calibration (display -> camera registration) on simulated benches with known injected errors.

Oracles: a spot of display pixel (i, j) through PSF p is the fabricated PSF placed with its window's
top-left at tile pixel (i s, j s) of tile p, so its intensity centroid is exactly
``origin_p + s (i, j) + (s - 1) / 2 + centroid(fabricated PSF p)``; for shift-only errors a tile's content
moves by exactly ``shift_px[p]``. The truth (``bench.camera.optics``) is read here only.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from calibration.errors import CalibrationError, CalibrationFileError
from drivers.bench_fits import BenchMismatch
from calibration.geometry import (DIAGNOSTIC_NAME, GUARD_PX, GeometryCalibration, GeometryFrames, capture_geometry,
                                  dot_patterns, fit_geometry, intensity_centroid, measure_geometry, minimum_pitch)
from onn_core.errors import InputError
from simulator.fabrication import ErrorSpec, FabricationErrors
from simulator.system import OpticalSystem
from tests.calibration.benches import example_optics, merged, simulated_bench

SHIFTS = {"seed": 23, "spec": {"shift_std_px": 0.7, "brightness_rel_std": 0.15}}


def nominal_system(overrides: dict | None = None) -> OpticalSystem:
    """What the lab knows: the example design and geometry, no fabrication errors."""
    config = merged(example_optics(), overrides)
    config.pop("errors")
    return OpticalSystem.from_config(config).eval()


def psf_centroids(system: OpticalSystem) -> np.ndarray:
    """(P, 2) intensity centroids (row, col) of the system's fabricated PSFs on their K' window."""
    psfs = system.fabricated_psfs().detach().double().sum(dim=1).numpy()
    return np.stack([intensity_centroid(psf) for psf in psfs])


def true_positions(truth: OpticalSystem, display_points: np.ndarray) -> np.ndarray:
    """(P, M, 2): where the truth images every display point (the exact spot centroids)."""
    s = truth.geometry.sensor_pixels_per_display_pixel
    origins = np.array([[sl.start for sl in truth.layout.tile_slices(p)] for p in range(truth.num_psfs)])
    return origins[:, None] + s * display_points[None] + (s - 1) / 2 + psf_centroids(truth)[:, None]


def projections(result: GeometryCalibration) -> np.ndarray:
    return np.stack([result.project(p, result.display_points) for p in range(result.num_tiles)])


def rms(error: np.ndarray) -> np.ndarray:
    """RMS length of (..., M, 2) errors over M."""
    return np.sqrt((error**2).sum(axis=-1).mean(axis=-1))


# ============================================================================================ recovery
def test_shift_errors_recovered_within_005_px():
    nominal = nominal_system()
    with simulated_bench({"errors": SHIFTS}) as bench:
        result = measure_geometry(bench, nominal)
        truth = bench.camera.optics
    shift = truth.errors.shift_px.numpy()
    assert np.abs(shift).max() > 1.0  # the test means something: shifts well beyond the tolerance
    np.testing.assert_allclose(result.offsets_px, shift, atol=0.05)
    assert result.rms_px.max() < 0.1
    assert rms(projections(result) - true_positions(truth, result.display_points)).max() < 0.1
    assert (result.inliers == len(result.display_points)).all()
    np.testing.assert_allclose(result.tile_origins_px(), result.nominal_origins_px + shift, atol=0.05)


def test_noise_free_shifts_recovered_exactly():
    """Without sensor noise only the ADC's rounding is left: offsets to 0.01 px, spots to 0.005 px."""
    nominal = nominal_system()
    with simulated_bench({"errors": SHIFTS, "sensor": {"noise": False}}) as bench:
        result = measure_geometry(bench, nominal, averages=1)
        truth = bench.camera.optics
    np.testing.assert_allclose(result.offsets_px, truth.errors.shift_px.numpy(), atol=0.01)
    assert result.rms_px.max() < 0.005
    assert rms(projections(result) - true_positions(truth, result.display_points)).max() < 0.005


def test_device_built_to_design_has_zero_offsets():
    nominal = nominal_system()
    with simulated_bench({"errors": None}) as bench:
        result = measure_geometry(bench, nominal)
    np.testing.assert_allclose(result.offsets_px, 0.0, atol=0.03)
    np.testing.assert_allclose(projections(result), true_positions(nominal, result.display_points), atol=0.1)


@pytest.mark.parametrize("seed", [29, pytest.param(37, marks=pytest.mark.slow)])
def test_example_like_errors_every_tile_found(seed):
    """The example's whole error spec (rotation, magnification, blur, aberration, kernel error, crosstalk,
    vignetting, stray light) at other seeds: every tile found, spots where the fabricated PSFs put them,
    and each offset the move of its PSF's centroid."""
    nominal = nominal_system()
    with simulated_bench({"errors": {**example_optics()["errors"], "seed": seed}}) as bench:
        result = measure_geometry(bench, nominal)
        truth = bench.camera.optics
    assert (result.inliers == len(result.display_points)).all()
    assert result.rms_px.max() < 0.1
    assert rms(projections(result) - true_positions(truth, result.display_points)).max() < 0.1
    np.testing.assert_allclose(result.offsets_px, psf_centroids(truth) - psf_centroids(nominal), atol=0.05)


def test_pixel_centre_convention_with_two_sensor_pixels_per_display_pixel():
    """s = 2: display pixel (i, j) covers sensor pixels 2i, 2i + 1, whose centre is 2i + 0.5; the
    nominal homography is exactly that scale plus the tile origin and the PSF centroid."""
    optics = {"geometry": {"magnification": 2.0}}
    nominal = nominal_system(optics)
    with simulated_bench({**optics, "errors": SHIFTS, "sensor": {"noise": False}}) as bench:
        result = measure_geometry(bench, nominal, averages=1, phases=2)
        truth = bench.camera.optics
    centroid = psf_centroids(nominal)
    for p in range(nominal.num_psfs):
        origin = [sl.start for sl in nominal.layout.tile_slices(p)]
        expected = np.array([[2, 0, origin[0] + 0.5 + centroid[p, 0]], [0, 2, origin[1] + 0.5 + centroid[p, 1]],
                             [0, 0, 1]])
        np.testing.assert_allclose(result.nominal_homographies[p], expected, atol=1e-4)  # float32 optics
    np.testing.assert_allclose(result.offsets_px, truth.errors.shift_px.numpy(), atol=0.01)
    assert rms(projections(result) - true_positions(truth, result.display_points)).max() < 0.01


# ============================================================================================ failures
def test_missing_tile_is_named_and_a_diagnostic_saved(tmp_path):
    errors = FabricationErrors.sample(16, ErrorSpec(shift_std_px=0.4), seed=41).to_dict()
    errors["errors"]["brightness"][5] = 0.0  # sub-optic 5 passes no light
    nominal = nominal_system()
    with simulated_bench({"errors": errors}) as bench, \
            pytest.raises(CalibrationError, match=r"tiles \[5\] not found") as info:
        measure_geometry(bench, nominal, diagnostics_dir=tmp_path)
    assert info.value.diagnostic == tmp_path / DIAGNOSTIC_NAME
    assert sorted(p.name for p in tmp_path.iterdir()) == [DIAGNOSTIC_NAME]  # nothing else, no temporaries
    import cv2
    image = cv2.imread(str(info.value.diagnostic))
    assert image is not None and image.shape[0] >= nominal.frame_shape[0]


def test_saturated_spots_ask_for_a_shorter_exposure(tmp_path):
    with simulated_bench({"errors": SHIFTS}, exposure_s=0.5) as bench, \
            pytest.raises(CalibrationError, match="saturated.*lower the exposure") as info:
        measure_geometry(bench, nominal_system(), averages=1, diagnostics_dir=tmp_path)
    assert info.value.diagnostic.is_file()


def test_too_dark_frame_asks_for_more_light():
    with simulated_bench({"errors": SHIFTS}, exposure_s=2e-5) as bench, \
            pytest.raises(CalibrationError, match="too dark.*raise the exposure") as info:
        measure_geometry(bench, nominal_system(), averages=1)
    assert info.value.diagnostic is None  # no diagnostics_dir: nothing saved


def test_light_without_the_pattern_is_not_found(tmp_path):
    """Ambient light on the sensor and no dots where the layout predicts them (e.g. the display out of
    the camera's view): bright enough, but the pattern is not there."""
    nominal = nominal_system()
    with simulated_bench({"errors": SHIFTS}) as bench:
        frames = capture_geometry(bench, nominal, averages=1)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:frames.dark.shape[0], :frames.dark.shape[1]]
    ambient = 3000.0 * (1 + np.sin(rows / 7.0) * np.cos(cols / 5.0))[None] + rng.normal(0, 20, frames.frames.shape)
    stray = GeometryFrames(frames.patterns, frames.dark + ambient, frames.dark, np.zeros_like(frames.saturated),
                           frames.exposure_s, frames.averages, frames.saturation_dn)
    with pytest.raises(CalibrationError, match="pattern not found") as info:
        fit_geometry(stray, nominal, diagnostics_dir=tmp_path)
    assert info.value.diagnostic.is_file()


def test_coarse_search_finds_tiles_moved_far_and_refuses_to_guess_beyond():
    """Every tile's content moved 6 px right is found (offsets (0, 6)); moved 7 px, the edge of the
    default +-7 px search at pitch 15, it is refused rather than fitted. (The frame ends where the tile
    grid does, so the last column's spots partly leave it and are not compared.)"""
    nominal = nominal_system()
    with simulated_bench({"errors": None}) as bench:
        frames = capture_geometry(bench, nominal, averages=1)

    def moved(cols):
        return GeometryFrames(frames.patterns, frames.dark + np.roll(frames.signal, cols, axis=-1), frames.dark,
                              frames.saturated, frames.exposure_s, frames.averages, frames.saturation_dn)

    result = fit_geometry(moved(6), nominal)
    inside = [p for p in range(16) if p % nominal.layout.grid_cols < nominal.layout.grid_cols - 1]
    np.testing.assert_allclose(result.offsets_px[inside], np.tile([0.0, 6.0], (len(inside), 1)), atol=0.02)
    with pytest.raises(CalibrationError, match=r"edge of the search window \(\+-7 px\)"):
        fit_geometry(moved(7), nominal)


def test_bench_contradicting_the_optics_is_refused_before_showing_anything(tmp_path):
    with simulated_bench({"errors": SHIFTS}) as bench:
        shown = bench.slm.frame_id
        with pytest.raises(BenchMismatch, match="gap_px"):
            measure_geometry(bench, nominal_system({"geometry": {"gap_px": 6}}), diagnostics_dir=tmp_path)
        with pytest.raises(BenchMismatch, match="image_shape"):
            measure_geometry(bench, nominal_system({"image_shape": [27, 28]}), diagnostics_dir=tmp_path)
        assert bench.slm.frame_id == shown  # nothing was displayed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"averages": 0}, "averages"), ({"pitch": 14}, "pitch must be >= 15"), ({"phases": 16}, "phases"),
    ({"level": 256}, "level"), ({"dark": np.zeros((3, 3))}, "dark"), ({"search_px": 8}, "search_px"),
    ({"min_snr": 0}, "min_snr"), ({"ransac_threshold_px": float("nan")}, "ransac_threshold_px"),
])
def test_bad_arguments_are_refused_before_showing_anything(kwargs, match):
    with simulated_bench({"errors": None}) as bench:
        with pytest.raises(InputError, match=match):
            measure_geometry(bench, nominal_system(), **{"averages": 1, **kwargs})
        assert bench.slm.frame_id == -1


# ============================================================================================ pieces
def test_dot_patterns_cover_the_display_without_overlapping_windows():
    nominal = nominal_system()
    pitch = minimum_pitch(nominal)
    assert pitch == 11 + 2 * GUARD_PX  # K' = 7 + 2 x 2 margin, s = 1
    patterns = dot_patterns(nominal.image_shape, pitch, 3)
    assert len(patterns.dots) == 9
    points = patterns.points
    assert len(np.unique(points, axis=0)) == len(points)  # every dot shown once
    for dots in patterns.dots:  # within a pattern, windows of side pitch * s do not overlap
        gaps = np.abs(dots[:, None] - dots[None]).max(axis=-1) + np.eye(len(dots), dtype=int) * pitch
        assert gaps.min() >= pitch
    assert points.min() == 0 and points.max() >= nominal.image_shape[0] - pitch // 3 - 1


def test_intensity_centroid_is_the_weighted_mean():
    patch = np.zeros((5, 7))
    patch[1, 2], patch[3, 6] = 1.0, 3.0
    np.testing.assert_allclose(intensity_centroid(patch), [(1 + 9) / 4, (2 + 18) / 4])
    assert np.isnan(intensity_centroid(np.zeros((3, 3)))).all()


@pytest.fixture(scope="module")
def calibrated():
    with simulated_bench({"errors": SHIFTS}) as bench:
        return measure_geometry(bench, nominal_system(), averages=2)


def test_hdf5_round_trip(tmp_path, calibrated):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        calibrated.to_hdf5(f.create_group("geometry"))
    with h5py.File(tmp_path / "g.h5", "r") as f:
        loaded = GeometryCalibration.from_hdf5(f["geometry"])
    for name in ("homographies", "offsets_px", "rms_px", "inliers", "sensor_points", "inlier_mask", "image"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(calibrated, name))
    assert loaded.tile_shape == calibrated.tile_shape and loaded.exposure_s == calibrated.exposure_s
    assert loaded.summary() == calibrated.summary()
    np.testing.assert_allclose(loaded.residuals_px(), calibrated.residuals_px())


def test_hdf5_refuses_foreign_incomplete_and_occupied_groups(tmp_path, calibrated):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        with pytest.raises(CalibrationFileError, match="schema None, expected .onn_hil.calibration.geometry."):
            GeometryCalibration.from_hdf5(f.create_group("empty"))
        calibrated.to_hdf5(f.create_group("cut"))
        del f["cut"]["homographies"]
        with pytest.raises(CalibrationFileError, match="homographies"):
            GeometryCalibration.from_hdf5(f["cut"])
        occupied = f.create_group("occupied")
        occupied.attrs["note"] = "keep me"
        with pytest.raises(CalibrationFileError, match="must be empty"):
            calibrated.to_hdf5(occupied)
        assert list(occupied) == [] and dict(occupied.attrs) == {"note": "keep me"}


def test_summary_is_plain(calibrated):
    summary = calibrated.summary()
    assert summary["tiles"] == 16 and summary["rms_px_max"] < 0.1
    assert len(summary["offsets_px"]) == 16 and all(isinstance(v, float) for v in summary["offsets_px"][0])

