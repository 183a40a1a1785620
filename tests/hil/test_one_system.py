"""A student trained in simulation sees on the simulated bench what it saw in training: its optics'
description builds the bench's camera, and the camera frames, turned into features by the same
system, give the student's backend the same outputs (exactly without noise) and the same accuracy."""

from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.clock import VirtualClock
from drivers.config import open_bench
from hil.models import build_model

FASHION = Path("/usr/share/datasets/fashion-mnist")
SENSOR = {"quantum_efficiency": 0.6, "dark_current_e_per_s": 5.0, "read_noise_e": 2.5, "full_well_e": 10500.0,
          "gain_e_per_dn": 2.6, "offset_dn": 16.0, "bit_depth": 12, "container_bits": 16}


def student_model(noise: bool, seed: int = 0):
    optics = {"geometry": {"gap_px": 3, "psf_margin_px": 1}, "photometry": {"photons_per_s": 1.5e6},
              "sensor": {**SENSOR, "noise": noise}}
    return build_model({"name": "optical_student", "optics": optics, "seed": seed})


def bench_for(student, noise: bool | None = None) -> dict:
    """The identity-error simulated bench of a student's optics: its own description (with the sensor
    noise switched as ``noise`` says, None: as trained), nothing else."""
    system = student.frontend
    optics = system.to_config()
    if noise is not None:
        optics["sensor"]["noise"] = noise
    return {"clock": "virtual",
            "slm": {"backend": "simulated-slm", "shape": list(system.image_shape), "bit_depth": 8,
                    "pixel_pitch_m": system.geometry.display_pixel_pitch_m, "latency_s": 0.001, "settle_s": 0.0},
            "camera": {"backend": "simulated-camera", "optics": optics, "readout_s": 0.0}}


def bench_logits(student, images: torch.Tensor, noise: bool | None = None) -> torch.Tensor:
    """Show each image (as 8-bit gray levels), capture, turn the frame into features, run the backend."""
    features = []
    with open_bench(bench_for(student, noise), clock=VirtualClock()) as bench:
        camera = bench.camera
        for image in images:
            gray = torch.round(image[0] * 255).to(torch.uint8).numpy()
            frame = bench.measure(gray).frame
            features.append(camera.optics.features(frame.image, frame.exposure_s))
    with torch.no_grad():
        return student.backend(torch.cat(features).float())


def test_bench_frames_give_the_backend_exactly_the_simulated_features():
    student = student_model(noise=False).eval()
    images = torch.rand((6, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        simulated = student(images)
    torch.testing.assert_close(bench_logits(student, images), simulated, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
def test_a_trained_student_keeps_its_simulated_accuracy_on_the_noisy_bench():
    """Trained on expected values (fast), evaluated in simulation (expected values) and on the bench
    with shot, dark and read noise and 12-bit quantisation: within 1 point on 400 test images."""
    from hil.data import build_datasets

    train, test, _ = build_datasets({"dataset": "fashion_mnist"}, "classification")
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = (t[:3000] for t in train.tensors)
    x_test, y_test = (t[:400] for t in test.tensors)
    torch.manual_seed(0)
    student = student_model(noise=False)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    student.train()
    for _ in range(2):
        for batch in torch.randperm(len(x_train), generator=generator).split(100):
            loss = torch.nn.functional.cross_entropy(student(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    student.eval()
    with torch.no_grad():
        simulated = float((student(x_test).argmax(1) == y_test).float().mean())
    on_bench = float((bench_logits(student, x_test, noise=True).argmax(1) == y_test).float().mean())
    assert simulated > 0.7  # it learned something, so the comparison means something
    assert abs(on_bench - simulated) <= 0.01, (simulated, on_bench)
    assert np.isfinite(on_bench)


@pytest.mark.parametrize("frontend", ["incoherent_conv", "fourf"])
def test_an_exported_design_fabricated_without_errors_is_the_student_on_the_bench(tmp_path, frontend):
    from hil.checkpoint import save_checkpoint
    from hil.export import export_design
    from simulator.system import OpticalSystem

    config = {"name": "optical_student", "frontend": frontend, "num_kernels": 3, "kernel_size": 5, "image_size": 12,
              "optics": {"sensor": {**SENSOR, "noise": False}, "photometry": {"photons_per_s": 1e6}}}
    student = build_model(config).eval()
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", {"model": student.state_dict(), "config": {"model": config}})
    optics_file = export_design(tmp_path / "run", tmp_path / "design")
    design_file = "kernels.npy" if frontend == "incoherent_conv" else "psfs.npy"
    assert (tmp_path / "design" / design_file).is_file()
    exported = OpticalSystem.from_yaml(optics_file)
    torch.testing.assert_close(exported.design.psfs().float(), student.frontend.design.psfs().detach())
    images = torch.rand((3, 1, 12, 12), generator=torch.Generator().manual_seed(0))
    bench = {"clock": "virtual", "slm": {"shape": [12, 12], "bit_depth": 8, "pixel_pitch_m": 3.45e-6, "settle_s": 0.0},
             "camera": {"backend": "simulated-camera", "optics": str(optics_file)}}
    with open_bench(bench, clock=VirtualClock()) as b:
        features = torch.cat([b.camera.optics.features(b.measure(torch.round(im[0] * 255).to(torch.uint8).numpy())
                                                       .frame.image) for im in images])
    with torch.no_grad():
        torch.testing.assert_close(student.backend(features.float()), student(images), rtol=1e-4, atol=1e-4)


def test_export_refuses_a_run_without_an_optical_student(tmp_path):
    from hil.checkpoint import save_checkpoint
    from hil.export import export_design
    from onn_core.errors import ConfigError

    with pytest.raises(ConfigError, match="RUN_DIR"):
        export_design(tmp_path, tmp_path / "out")
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", {"model": {}, "config": {"model": {"name": "lenet"}}})
    with pytest.raises(ConfigError, match="optical_student"):
        export_design(tmp_path, tmp_path / "out")
