"""The one optical system: forward model against direct formulas, frame -> features = training's
forward, photometry and exposure, caching, light kept by the PSF margin, randomness rules, configs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from simulator.conv import fft_conv2d
from simulator.design import KernelDesign, PSFDesign, random_signed_kernels
from simulator.display import DisplayModel
from onn_core.errors import ConfigError, InputError
from simulator.fabrication import ErrorSpec, FabricationErrors
from simulator.layout import TileLayout
from simulator.sensor import SensorModel
from simulator.system import Geometry, OpticalSystem, Photometry

D = torch.float64
REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "optics.yaml"


def gray_batch(n=2, c=1, shape=(12, 10), seed=0):
    return torch.randint(0, 256, (n, c, *shape), generator=torch.Generator().manual_seed(seed))


def psf_design(p=4, c=1, k=5, seed=0):
    return PSFDesign(torch.rand((p, c, k, k), generator=torch.Generator().manual_seed(seed), dtype=D))


def reference_config(**changes):
    cfg = yaml.safe_load(REFERENCE.read_text())
    cfg.update(changes)
    return cfg


def test_frame_is_the_tiled_full_convolution_times_photon_rate_and_exposure():
    design, gray = psf_design(), gray_batch()
    display = DisplayModel(pixel_pitch_m=3.45e-6, gamma=2.0, max_radiance_w_sr_m2=7.0)
    system = OpticalSystem(design, (12, 10), display=display, geometry=Geometry(gap_px=3, psf_margin_px=2),
                           photometry=Photometry(photons_per_s=500.0, exposure_s=0.02))
    padded = torch.nn.functional.pad(design.psfs(), (2, 2, 2, 2))
    tiles = fft_conv2d((gray.to(D) / 255) ** 2.0, padded, mode="full") * 500.0 * 0.05
    assert tiles.shape[-2:] == (12 + 9 - 1, 10 + 9 - 1) == system.layout.tile_shape
    expected = TileLayout.for_count(4, tuple(tiles.shape[-2:]), 3).assemble(tiles)
    torch.testing.assert_close(system.frame(gray, 0.05), expected, atol=1e-12, rtol=1e-12)


def test_ideal_features_are_the_signed_kernel_convolution_and_a_delta_returns_the_image():
    kernels = random_signed_kernels(3, 5, 1, seed=4)
    system = OpticalSystem(KernelDesign(kernels, trainable=False), (9, 11), display=DisplayModel(3.45e-6, gamma=1.0))
    gray = gray_batch(n=2, shape=(9, 11))
    features = system.features(system.frame(gray, 0.003), 0.003)
    torch.testing.assert_close(features, fft_conv2d(gray.to(D) / 255, kernels, mode="same"), atol=1e-12, rtol=1e-12)
    delta = torch.zeros((1, 1, 5, 5), dtype=D)
    delta[0, 0, 2, 2] = 1.0
    point = OpticalSystem(KernelDesign(delta, trainable=False), (9, 11), display=DisplayModel(3.45e-6, gamma=1.0))
    torch.testing.assert_close(point.features(point.frame(gray)), gray.to(D) / 255, atol=1e-12, rtol=0)


@pytest.mark.parametrize("frame_errors", [False, True])
def test_training_forward_equals_features_of_the_bench_frame(frame_errors):
    """forward(images) = features(frame(gray levels shown)), with a quantising, clipping sensor and,
    optionally, frame-level errors (crosstalk, vignetting, stray light): one forward model."""
    cfg = reference_config(dtype="float64")
    cfg["sensor"] = {**cfg["sensor"], "noise": False}
    if not frame_errors:
        for key in ("crosstalk", "vignetting_tan_edge", "background", "background_gradient_std"):
            cfg["errors"]["spec"][key] = 0.0
    system = OpticalSystem.from_config(cfg).eval()
    images = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=D)
    features = system.features(system.frame(system.gray_levels(images)))
    torch.testing.assert_close(system(images), features, atol=1e-10, rtol=1e-10)
    assert features.shape == (3, 8, 28, 28)


def test_signal_dark_current_and_stray_light_all_scale_with_exposure():
    errors = FabricationErrors(4, background=torch.tensor(2000.0, dtype=D))
    sensor = SensorModel(dark_current_e_per_s=300.0, offset_dn=10.0, gain_e_per_dn=2.0, noise=False)
    system = OpticalSystem(psf_design(), (12, 10), sensor=sensor, errors=errors,
                           photometry=Photometry(photons_per_s=1e4))
    gray = gray_batch(n=1)
    short, long = system.frame(gray, 0.005), system.frame(gray, 0.08)
    torch.testing.assert_close(long - 10.0, 16 * (short - 10.0), atol=1e-9, rtol=1e-12)
    dark = system.frame(torch.zeros_like(gray), 0.02)
    torch.testing.assert_close(dark, torch.full_like(dark, 10.0 + (300.0 + 2000.0) * 0.02 / 2.0))
    torch.testing.assert_close(system.features(short, 0.005), system.features(long, 0.08), atol=1e-9, rtol=1e-9)


def test_sensor_saturation_is_where_the_full_well_clips_not_only_the_adc_maximum():
    sensor = SensorModel(full_well_e=10500.0, read_noise_e=2.5, gain_e_per_dn=2.6, offset_dn=16.0, bit_depth=12,
                         container_bits=16)
    level = int((10500.0 - 5 * 2.5) / 2.6 + 16.0) * 16
    assert sensor.saturation_dn == level < sensor.max_dn
    assert SensorModel(bit_depth=8).saturation_dn == 255
    assert SensorModel().saturation_dn is None
    clipped = sensor.forward(torch.full((64, 64), 1e6), generator=torch.Generator().manual_seed(0))
    assert bool((clipped >= sensor.saturation_dn).all())


def test_fabricated_psfs_are_cached_until_a_tensor_changes_and_gradients_still_flow():
    errors = FabricationErrors.sample(4, {"shift_std_px": 0.5, "blur_sigma_max_px": 0.4}, seed=3)
    system = OpticalSystem(psf_design(), (12, 10), errors=errors)
    first = system.fabricated_psfs()
    assert system.fabricated_psfs() is first
    with torch.no_grad():
        errors.shift_px.add_(0.25)
    moved = system.fabricated_psfs()
    assert moved is not first and not torch.equal(moved, first)
    errors.make_trainable("brightness", "shift_px")
    one, two = system.fabricated_psfs(), system.fabricated_psfs()
    assert one is not two and one.requires_grad
    system.frame(gray_batch(n=1)).sum().backward()
    assert float(errors.brightness.grad.abs().sum()) > 0 and float(errors.shift_px.grad.abs().sum()) > 0


def test_window_crop_and_feature_formula_are_public_and_agree_with_features():
    """psf_window_px is K + 2 margin, feature_crop the "same" region of a whole tile, and
    features_from_electrons (whole tiles or that region) is what features() computes."""
    sensor = SensorModel(noise=False, gain_e_per_dn=2.5, offset_dn=10.0, quantum_efficiency=0.6)
    system = OpticalSystem(psf_design(p=4, k=5), (12, 10), geometry=Geometry(psf_margin_px=3), sensor=sensor,
                           photometry=Photometry(photons_per_s=800.0, exposure_s=0.01))
    cached = system.fabricated_psfs()
    assert system.psf_window_px == 11 == cached.shape[-1] and system.fabricated_psfs() is cached
    system.clear_cache()
    fresh = system.fabricated_psfs()
    assert fresh is not cached and torch.equal(fresh, cached)
    rows, cols = system.feature_crop
    assert (rows.start, rows.stop, cols.start, cols.stop) == (5, 17, 5, 15)
    frame = system.frame(gray_batch(), 0.02)
    electrons = sensor.electrons(system.layout.extract(frame, 4))
    expected = (electrons[:, 0::2] - electrons[:, 1::2])[..., 5:17, 5:15] / (0.6 * 800.0 * 0.02)
    torch.testing.assert_close(system.features_from_electrons(electrons, 0.02), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(system.features_from_electrons(electrons[..., rows, cols], 0.02), expected,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(system.features(frame, 0.02), expected, rtol=1e-12, atol=0)
    with pytest.raises(InputError, match="whole tiles"):
        system.features_from_electrons(electrons[..., 1:, :], 0.02)


def test_psf_margin_keeps_the_light_that_fabrication_shifts_move():
    """Shift std 1.2 px: the bare K x K window loses several percent of a PSF's light, the widened
    window none; the frame of a uniform display then holds brightness x design light exactly."""
    spec = ErrorSpec(shift_std_px=1.2, rotation_std_rad=0.02, magnification_rel_std=0.02, brightness_rel_std=0.1)
    errors = FabricationErrors.sample(16, spec, seed=7)
    design = PSFDesign(torch.ones((16, 1, 7, 7), dtype=D))
    bare = OpticalSystem(design, (8, 8), errors=errors, geometry=Geometry(psf_margin_px=0))
    wide = OpticalSystem(design, (8, 8), errors=errors, geometry=Geometry(psf_margin_px=4))
    assert float(bare.lost_light_fraction().max()) > 0.04
    assert float(wide.lost_light_fraction().max()) < 1e-12
    white = torch.full((1, 1, 8, 8), 255)
    total = wide.frame(white, 1.0).sum()
    expected = (errors.brightness * 49).sum() * 64 * wide.photometry.photons_per_s
    torch.testing.assert_close(total, expected, rtol=1e-3, atol=0)  # bilinear rotation/magnification: < 1e-3


def test_random_draws_only_in_training_mode_and_never_when_frozen():
    system = OpticalSystem(KernelDesign(shape=(2, 1, 5, 5)), (12, 10), robustness=ErrorSpec(shift_std_px=0.5),
                           sensor=SensorModel(read_noise_e=3.0), photometry=Photometry(photons_per_s=1e4))
    images = torch.rand((2, 1, 12, 10), generator=torch.Generator().manual_seed(0))
    system.train()
    assert not torch.equal(system(images), system(images)) and system.draws.draws == 2
    system.requires_grad_(False)
    assert torch.equal(system(images), system(images)) and system.draws.draws == 2
    system.requires_grad_(True).eval()
    assert torch.equal(system(images), system(images)) and system.draws.draws == 2


def test_integer_magnification_images_a_display_pixel_onto_a_block_of_sensor_pixels():
    geometry = Geometry(display_pixel_pitch_m=8e-6, sensor_pixel_pitch_m=2e-6, magnification=0.5)
    assert geometry.sensor_pixels_per_display_pixel == 2
    delta = torch.zeros((1, 1, 3, 3), dtype=D)
    delta[0, 0, 1, 1] = 1.0
    system = OpticalSystem(KernelDesign(delta, trainable=False), (4, 5), geometry=geometry,
                           display=DisplayModel(8e-6, gamma=1.0))
    gray = gray_batch(n=1, shape=(4, 5))
    features = system.features(system.frame(gray))
    assert features.shape == (1, 1, 8, 10)
    torch.testing.assert_close(features, torch.repeat_interleave(torch.repeat_interleave(gray.to(D) / 255, 2, -2), 2, -1))


def test_geometry_contradictions_are_refused_naming_the_fields():
    with pytest.raises(ConfigError, match="magnification") as info:
        OpticalSystem.from_config(reference_config(geometry={"display_pixel_pitch_m": 8e-6, "sensor_pixel_pitch_m": 3e-6}))
    assert info.value.path == "optics.geometry" and "sensor_pixel_pitch_m" in str(info.value)
    moved = [("display", "pixel_pitch_m", "geometry.display_pixel_pitch_m"),
             ("display", "max_radiance_w_sr_m2", "photometry.photons_per_s"),
             ("sensor", "pixel_pitch_m", "geometry.sensor_pixel_pitch_m"),
             ("sensor", "exposure_s", "photometry.exposure_s")]
    for section, key, home in moved:
        cfg = reference_config()
        cfg[section] = {**cfg[section], key: 1.0}
        with pytest.raises(ConfigError, match=home.replace(".", r"\.")) as info:
            OpticalSystem.from_config(cfg)
        assert info.value.path == f"optics.{section}.{key}"
    with pytest.raises(InputError, match="contradicts geometry.display_pixel_pitch_m"):
        OpticalSystem(psf_design(), (4, 4), display=DisplayModel(pixel_pitch_m=9e-6))


def test_old_frontend_files_get_a_migration_message():
    old = {"design": {"generator": "random_signed", "num_kernels": 2, "kernel_size": 3}, "image_shape": [4, 4],
           "photons_per_radiance": 2e4}
    with pytest.raises(ConfigError, match="photometry.photons_per_s = photons_per_radiance") as info:
        OpticalSystem.from_config(old)
    assert info.value.path == "optics.photons_per_radiance"


def test_reference_config_renders_deterministic_uint16_frames_and_round_trips():
    a, b = OpticalSystem.from_yaml(REFERENCE), OpticalSystem.from_yaml(REFERENCE)
    gray = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
    first = a.render(gray)
    assert first.dtype == np.uint16 and first.shape == a.frame_shape == (4 * 38 + 3 * 4,) * 2
    assert np.array_equal(first, b.render(gray))
    assert not np.array_equal(a.render(gray), first)  # the noise generator advances
    assert np.all(first % 16 == 0) and first.max() <= 4095 * 16
    back = OpticalSystem.from_config(a.to_config())
    assert torch.equal(back.fabricated_psfs(), a.fabricated_psfs())
    assert np.array_equal(back.render(gray), OpticalSystem.from_yaml(REFERENCE).render(gray))
    longer = OpticalSystem.from_yaml(REFERENCE).render(gray, exposure_s=0.04)
    assert longer.astype(float).mean() > 2 * first.astype(float).mean()


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_design_from_a_file_of_signed_kernels(tmp_path, suffix):
    kernels = random_signed_kernels(2, 3, 1, seed=9)
    file = tmp_path / f"kernels{suffix}"
    if suffix == ".npy":
        np.save(file, kernels.numpy())
    else:
        torch.save(kernels, file)
    system = OpticalSystem.from_config(
        {"design": {"generator": "file", "path": file.name, "signed": True}, "image_shape": [5, 5]}, base_dir=tmp_path)
    psfs = system.design.psfs()
    torch.testing.assert_close(psfs[0::2] - psfs[1::2], kernels.float())


def test_bad_input_names_the_field():
    base = {"design": {"generator": "random_signed", "num_kernels": 2, "kernel_size": 3}, "image_shape": [4, 4]}
    cases = [
        ({**base, "design": {"generator": "magic"}}, "optics.design.generator"),
        ({**base, "design": {"generator": "random_signed", "num_kernels": 0, "kernel_size": 3}}, "optics.design.num_kernels"),
        ({**base, "image_shape": [4]}, "optics.image_shape"),
        ({**base, "bogus": 1}, "optics.bogus"),
        ({**base, "errors": {"spec": {"shift_std_px": -1.0}}}, "optics.errors.spec"),
        ({**base, "errors": {"num_psfs": 3}}, "optics.errors.num_psfs"),
        ({**base, "sensor": {"bit_depth": "twelve"}}, "optics.sensor.bit_depth"),
        ({**base, "photometry": {"photons_per_s": -1.0}}, "optics.photometry"),
        ({**base, "design": {"generator": "file", "path": "missing.npy"}}, "optics.design.path"),
    ]
    for mapping, where in cases:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            OpticalSystem.from_config(mapping)
    system = OpticalSystem.from_config(base)
    with pytest.raises(InputError, match="gray must have shape"):
        system.frame(torch.zeros((1, 1, 5, 5), dtype=torch.int64))
    with pytest.raises(InputError, match=r"gray levels must lie in \[0, 255\]"):
        system.frame(torch.full((1, 1, 4, 4), 256))
    with pytest.raises(InputError, match=r"intensities in \[0, 1\]"):
        system(torch.full((1, 1, 4, 4), 1.5))
    with pytest.raises(InputError, match="unsigned ints"):
        system.render(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(InputError, match="frame must be"):
        system.features(np.zeros((10, 10)))
    with pytest.raises(InputError, match="non-negative"):
        PSFDesign(-psf_design().psfs())


@pytest.mark.gpu
def test_cuda_system_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = reference_config(dtype="float64")
    cfg["sensor"] = {**cfg["sensor"], "noise": False}
    cpu = OpticalSystem.from_config(cfg).eval()
    gpu = OpticalSystem.from_config(cfg).eval().to("cuda")
    gray = gray_batch(n=2, shape=(28, 28))
    torch.testing.assert_close(gpu.frame(gray.cuda()).cpu(), cpu.frame(gray), rtol=1e-9, atol=1e-6)
    images = gray.to(D) / 255
    torch.testing.assert_close(gpu(images.cuda()).cpu(), cpu(images), rtol=1e-9, atol=1e-9)
    frame = gpu.render(np.full((28, 28), 128, dtype=np.uint8))
    assert frame.dtype == np.uint16 and frame.shape == cpu.frame_shape


def test_demo_script_runs_end_to_end(tmp_path):
    """``make demo`` at a toy size: every output is written and the summary is consistent."""
    spec = importlib.util.spec_from_file_location("simulator_demo", REFERENCE.parent / "simulator_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--out", str(tmp_path), "--steps", "3", "--aperture-px", "42"]) == 0
    for name in ("psfs_target_vs_designed.png", "psfs_design_vs_fabricated.png", "camera_frame.png",
                 "summary.json", "optics_resolved.yaml", "camera_frame.npy"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["nrmse_per_psf"]) == 16 and len(summary["nrmse_per_kernel"]) == 8
    frame = np.load(tmp_path / "camera_frame.npy")
    assert frame.dtype == np.uint16 and list(frame.shape) == summary["frame"]["shape"]
    assert OpticalSystem.from_yaml(tmp_path / "optics_resolved.yaml").num_psfs == 16


def test_display_response_from_a_measured_lut_file(tmp_path):
    from onn_core.lut import LUT

    measured = LUT.from_measurement([0, 128, 255], [0.0, 0.3, 1.0], 8)
    measured.save(tmp_path / "lut.txt")
    cfg = {"design": {"generator": "random_signed", "num_kernels": 1, "kernel_size": 1}, "image_shape": [2, 2],
           "display": {"lut_file": "lut.txt"}}
    system = OpticalSystem.from_config(cfg, base_dir=tmp_path)
    gray = torch.tensor([[[[0, 64], [128, 255]]]])
    torch.testing.assert_close(system.relative_radiance(gray, torch.zeros(1, 1, 1, 1, dtype=torch.float32)),
                               torch.tensor([[[[0.0, 0.15], [0.3, 1.0]]]]), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError) as info:
        OpticalSystem.from_config({**cfg, "display": {"lut_file": "missing.txt"}}, base_dir=tmp_path)
    assert info.value.path == "optics.display.lut_file"


def test_throughput_is_each_tiles_light_over_its_designs():
    """Brightness b and crosstalk c only (the PSFs otherwise the design's, inside their windows): tile p
    gets b_p L_p (1 - n_p c) + c sum_q b_q L_q of its design light L_p; a dark design PSF gives NaN."""
    cfg = reference_config(errors={"num_psfs": 16, "errors": {"brightness": [1 + 0.01 * p for p in range(16)],
                                                              "crosstalk": 0.02}})
    system = OpticalSystem.from_config(cfg).double()
    design = system.design.psfs().sum(dim=(1, 2, 3))
    bright = design * torch.tensor([1 + 0.01 * p for p in range(16)], dtype=D)
    rows, cols = divmod(np.arange(16), system.layout.grid_cols)
    neighbours = np.abs(rows[:, None] - rows[None]) + np.abs(cols[:, None] - cols[None]) == 1
    exchange = torch.from_numpy(neighbours.astype(np.float64))
    expected = (bright * (1 - 0.02 * exchange.sum(dim=1)) + 0.02 * exchange @ bright) / design
    torch.testing.assert_close(system.throughput(), expected)
    dark = OpticalSystem.from_config(reference_config(errors=None, design={
        "generator": "inline", "signed": False, "psfs": [[[[0.0] * 3] * 3], [[[1.0] * 3] * 3]]}))
    assert torch.isnan(dark.throughput()[0]) and float(dark.throughput()[1]) == pytest.approx(1.0)
