"""The composed fabricated frontend: equality with the direct pipeline, determinism, configs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simulator.conv import fft_conv2d
from simulator.display import DisplayModel
from simulator.errors import ConfigError, InputError
from simulator.fabrication import FabricationErrors
from simulator.frontend import FabricatedFrontend, random_signed_kernels
from simulator.layout import TileLayout
from simulator.sensor import SensorModel

D = torch.float64
REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "frontend.yaml"


def gray_batch(n=2, c=1, shape=(12, 10), seed=0):
    return torch.randint(0, 256, (n, c, *shape), generator=torch.Generator().manual_seed(seed))


def design(p=4, c=1, k=5, seed=0):
    return torch.rand((p, c, k, k), generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("mode", ["full", "same"])
def test_identity_errors_and_ideal_sensor_equal_direct_convolution_and_assembly(mode):
    psfs, gray = design(), gray_batch()
    display = DisplayModel(pixel_pitch_m=1e-5, gamma=2.0)
    frontend = FabricatedFrontend(psfs, (12, 10), display=display, mode=mode, gap_px=3, photons_per_radiance=50.0)
    expected_features = fft_conv2d(display.forward(gray, D), psfs, mode=mode) * 50.0
    layout = TileLayout.for_count(4, tuple(expected_features.shape[-2:]), 3)
    torch.testing.assert_close(frontend(gray), layout.assemble(expected_features), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(frontend.ideal_features(gray), expected_features, atol=1e-12, rtol=1e-12)
    tile = (16, 14) if mode == "full" else (12, 10)
    assert frontend.layout.tile_shape == tile


def test_frame_errors_are_applied_after_scaling_to_photons():
    psfs, gray = design(), gray_batch(n=1)
    errors = FabricationErrors(4, background=torch.tensor(7.0, dtype=D))
    plain = FabricatedFrontend(psfs, (12, 10), photons_per_radiance=3.0)
    with_bg = FabricatedFrontend(psfs, (12, 10), photons_per_radiance=3.0, errors=errors)
    torch.testing.assert_close(with_bg(gray), plain(gray) + 7.0, atol=1e-12, rtol=0)


def test_signed_kernels_become_interleaved_psfs():
    kernels = random_signed_kernels(3, 5, 1, seed=4)
    frontend = FabricatedFrontend.from_kernels(kernels, (8, 8))
    assert frontend.num_psfs == 6
    torch.testing.assert_close(frontend.design_psfs[0::2] - frontend.design_psfs[1::2], kernels, atol=0, rtol=0)
    assert float(frontend.design_psfs.min()) >= 0


def test_reference_config_renders_deterministic_uint16_frames():
    a, b = FabricatedFrontend.from_yaml(REFERENCE), FabricatedFrontend.from_yaml(REFERENCE)
    gray = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
    first_a, first_b = a.render(gray), b.render(gray)
    assert first_a.dtype == np.uint16 and first_a.shape == a.layout.frame_shape
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(a.render(gray), first_a)  # the noise generator advances
    assert np.all(first_a % 16 == 0) and first_a.max() <= 4095 * 16  # 12-bit codes, left-justified in 16 bits
    assert a.num_psfs == 16 and a.errors.zernike_m.shape == (16, 6)
    assert not torch.equal(a.fabricated_psfs(), a.design_psfs.to(a.fabricated_psfs().dtype))


def test_render_with_a_different_seed_differs_and_forward_generator_is_deterministic():
    cfg = FabricatedFrontend.from_yaml(REFERENCE).to_config()
    other = FabricatedFrontend.from_config({**cfg, "seed": 5})
    gray = np.full((28, 28), 200, dtype=np.uint8)
    assert not np.array_equal(FabricatedFrontend.from_config(cfg).render(gray), other.render(gray))
    frontend, x = other, torch.from_numpy(gray.astype(np.int64))[None, None]
    one = frontend(x, generator=torch.Generator().manual_seed(3))
    two = frontend(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, two)


def test_to_config_round_trip_rebuilds_the_same_frontend():
    frontend = FabricatedFrontend.from_yaml(REFERENCE)
    back = FabricatedFrontend.from_config(frontend.to_config())
    assert torch.equal(back.fabricated_psfs(), frontend.fabricated_psfs())
    gray = (np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)
    assert np.array_equal(back.render(gray), frontend.render(gray))
    inline = FabricatedFrontend(design(), (6, 6), errors=FabricationErrors.sample(4, {"shift_std_px": 0.5}, seed=2))
    rebuilt = FabricatedFrontend.from_config(inline.to_config())
    assert torch.equal(rebuilt.design_psfs, inline.design_psfs)
    assert torch.equal(rebuilt.fabricated_psfs(), inline.fabricated_psfs())


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_design_from_a_file_of_signed_kernels(tmp_path, suffix):
    kernels = random_signed_kernels(2, 3, 1, seed=9)
    file = tmp_path / f"kernels{suffix}"
    if suffix == ".npy":
        np.save(file, kernels.numpy())
    else:
        torch.save(kernels, file)
    frontend = FabricatedFrontend.from_config(
        {"design": {"generator": "file", "path": file.name, "signed": True}, "image_shape": [5, 5]}, base_dir=tmp_path)
    torch.testing.assert_close(frontend.design_psfs[0::2] - frontend.design_psfs[1::2], kernels.float())


def test_gradients_reach_the_fabrication_errors_and_the_gray_levels():
    errors = FabricationErrors.identity(4).make_trainable("shift_px", "brightness", "background")
    frontend = FabricatedFrontend(design(), (12, 10), errors=errors, sensor=SensorModel(noise=False))
    gray = gray_batch(n=1).to(D).requires_grad_()
    frontend(gray).square().sum().backward()
    for name in ("shift_px", "brightness", "background"):
        assert getattr(errors, name).grad is not None and bool(getattr(errors, name).grad.abs().sum() > 0), name
    assert gray.grad is not None and bool(gray.grad.abs().sum() > 0)


def test_bad_input_names_the_field():
    base = {"design": {"generator": "random_signed", "num_kernels": 2, "kernel_size": 3}, "image_shape": [4, 4]}
    cases = [
        ({**base, "design": {"generator": "magic"}}, "frontend.design.generator"),
        ({**base, "design": {"generator": "random_signed", "num_kernels": 0, "kernel_size": 3}}, "frontend.design.num_kernels"),
        ({**base, "image_shape": [4]}, "frontend.image_shape"),
        ({**base, "mode": "valid"}, "frontend.mode"),
        ({**base, "bogus": 1}, "frontend.bogus"),
        ({**base, "errors": {"spec": {"shift_std_px": -1.0}}}, "frontend.errors.spec"),
        ({**base, "errors": {"num_psfs": 3}}, "frontend.errors.num_psfs"),
        ({**base, "sensor": {"bit_depth": "twelve"}}, "frontend.sensor.bit_depth"),
        ({**base, "design": {"generator": "file", "path": "missing.npy"}}, "frontend.design.path"),
    ]
    for mapping, where in cases:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            FabricatedFrontend.from_config(mapping)
    frontend = FabricatedFrontend.from_config(base)
    with pytest.raises(InputError, match="gray must have shape"):
        frontend(torch.zeros((1, 1, 5, 5), dtype=torch.int64))
    with pytest.raises(InputError, match="unsigned ints"):
        frontend.render(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(InputError, match="non-negative"):
        FabricatedFrontend(-design(), (4, 4))


@pytest.mark.gpu
def test_cuda_frontend_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = FabricatedFrontend.from_config({**FabricatedFrontend.from_yaml(REFERENCE).to_config(), "dtype": "float64",
                                          "sensor": {"noise": False}})
    gpu = FabricatedFrontend.from_config(cpu.to_config()).to("cuda")
    gray = gray_batch(n=2, shape=(28, 28))
    torch.testing.assert_close(gpu(gray.cuda()).cpu(), cpu(gray), rtol=1e-9, atol=1e-6)
    frame = gpu.render(np.full((28, 28), 128, dtype=np.uint8))
    assert frame.dtype == np.uint16 and frame.shape == cpu.layout.frame_shape


def test_demo_script_runs_end_to_end(tmp_path):
    """``make demo`` at a toy size: every output is written and the summary is consistent."""
    spec = importlib.util.spec_from_file_location("simulator_demo", REFERENCE.parent / "simulator_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--out", str(tmp_path), "--steps", "3", "--aperture-px", "42"]) == 0
    for name in ("psfs_target_vs_designed.png", "psfs_design_vs_fabricated.png", "camera_frame.png",
                 "summary.json", "frontend_resolved.yaml", "camera_frame.npy"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["nrmse_per_psf"]) == 16 and len(summary["nrmse_per_kernel"]) == 8
    frame = np.load(tmp_path / "camera_frame.npy")
    assert frame.dtype == np.uint16 and list(frame.shape) == summary["frame"]["shape"]
    rebuilt = FabricatedFrontend.from_yaml(tmp_path / "frontend_resolved.yaml")
    assert rebuilt.num_psfs == 16
