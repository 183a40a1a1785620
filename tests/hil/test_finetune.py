"""Backend fine-tuning on captured frames: features read through the calibration layer, fabrication
loss, and its recovery with the task loss and with NTKD (teacher on the raw images)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from drivers.clock import VirtualClock
from drivers.config import open_bench
from hil.capture import capture, display_image
from hil.finetune import PairedObjective, accuracy, captured_features, finetune
from hil.models import build_model

SIZE = 12


def blob_dataset(n: int, seed: int) -> TensorDataset:
    """A bright 3x3 blob at one of 4 positions (the label) on a noisy background."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = 0.2 * torch.rand((n, 1, SIZE, SIZE), generator=gen)
    corners = [(2, 2), (2, 7), (7, 2), (7, 7)]
    for i, label in enumerate(labels.tolist()):
        r, c = corners[label]
        images[i, 0, r:r + 3, c:c + 3] = 0.9
    return TensorDataset(images, labels)


def trained_student():
    student = build_model({"name": "optical_student", "num_kernels": 2, "kernel_size": 5, "image_size": SIZE,
                           "hidden": [16], "pool": 1, "num_classes": 4, "seed": 1,
                           "transmission": None,  # kernels as trained: the 1 DN rounding stays below 1e-4
                           "optics": {"geometry": {"gap_px": 2, "psf_margin_px": 3}, "photometry": {"photons_per_s": 1e6}}})
    data = blob_dataset(400, 0)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(student(data.tensors[0]), data.tensors[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


def fabricated_bench(student, errors):
    optics = student.frontend.to_config()
    optics["errors"] = errors
    return {"clock": "virtual", "slm": {"shape": [SIZE, SIZE], "bit_depth": 8, "pixel_pitch_m": 3.45e-6, "settle_s": 0.0},
            "camera": {"backend": "simulated-camera", "optics": optics}}


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    student = trained_student()
    out = tmp_path_factory.mktemp("captures")
    errors = {"num_psfs": 4, "errors": {"shift_px": [[3.0, 3.0], [-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0]],
                                        "brightness": [1.5, 0.5, 0.5, 1.5]}}
    train, test = blob_dataset(300, 1), blob_dataset(200, 2)
    with open_bench(fabricated_bench(student, errors), clock=VirtualClock()) as bench:
        capture(bench, train, np.arange(300), out / "train.h5", progress=False)
        capture(bench, test, np.arange(200), out / "test.h5", progress=False)
    return student, captured_features(out / "train.h5", student.frontend), captured_features(out / "test.h5", student.frontend), train


def test_captured_features_are_the_systems_features_of_each_frame(tmp_path):
    student = trained_student()
    data = blob_dataset(5, 3)
    with open_bench(fabricated_bench(student, None), clock=VirtualClock()) as bench:
        capture(bench, data, [4, 0, 2], tmp_path / "c.h5", progress=False)
        frame = bench.measure(display_image(data[2][0], bench.slm)).frame
    features = captured_features(tmp_path / "c.h5", student.frontend)
    assert features.features.shape == (3, 2, SIZE, SIZE) and features.source_indices.tolist() == [4, 0, 2]
    torch.testing.assert_close(features.features[2:3], student.frontend.features(frame.image, frame.exposure_s).float())
    with torch.no_grad():  # identity errors, noise-free sensor: the backend sees what it was trained on
        torch.testing.assert_close(student.backend(features.features), student(data.tensors[0][[4, 0, 2]]),
                                   rtol=1e-4, atol=1e-4)


def test_fabrication_costs_accuracy_and_backend_fine_tuning_wins_it_back(captured):
    student, train, test, _ = captured
    with torch.no_grad():
        design = float((student(blob_dataset(200, 2).tensors[0]).argmax(1) == test.labels).float().mean())
    uncompensated = accuracy(student.backend, test)
    backend, result = finetune(student, train, epochs=15, lr=3e-3, batch_size=30, seed=0)
    compensated = accuracy(backend, test)
    assert design > 0.95 and uncompensated < design - 0.2
    assert compensated > uncompensated + 0.15 and compensated > 0.9, (design, uncompensated, compensated)
    assert result.steps == 15 * 10
    for a, b in zip(student.frontend.parameters(), student.frontend.parameters()):
        assert torch.equal(a, b)  # the optics are untouched: only the copy of the backend trained


def test_ntkd_fine_tuning_gives_the_teacher_the_raw_images(captured):
    student, train, test, source = captured
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 4)).eval().requires_grad_(False)
    seen = []
    teacher.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    backend, result = finetune(student, train, method="ntkd", teacher=teacher, source_inputs=source.tensors[0],
                               loss={"kernel_batch": 8, "teacher_method": "exact"}, epochs=1, batch_size=30)
    assert result.steps == 10 and seen and all(shape[1:] == (1, SIZE, SIZE) for shape in seen)
    with pytest.raises(ValueError, match="teacher"):
        finetune(student, train, method="ntkd")


def test_paired_objective_maps_rows_to_source_images():
    calls = []
    objective = PairedObjective(lambda m, x, y, teacher_x, indices: calls.append((teacher_x, indices)),
                                torch.arange(10.0)[:, None] * 10, torch.tensor([7, 3, 5]))
    objective(None, torch.zeros(2, 1), torch.zeros(2), indices=torch.tensor([2, 0]))
    assert calls[0][1].tolist() == [5, 7] and calls[0][0].flatten().tolist() == [50.0, 70.0]


def test_synthetic_captures_are_what_the_bench_records_read_through_the_same_layer(tmp_path):
    """With the calibrated model equal to the bench's optics (noise off), a synthetic capture of an image
    is the real capture of it read through the same calibration layer, to the camera's DN rounding."""
    from types import SimpleNamespace

    from calibration.layer import CalibrationLayer
    from hil.finetune import synthetic_features

    student = build_model({"name": "optical_student", "num_kernels": 2, "kernel_size": 5, "image_size": SIZE,
                           "hidden": [16], "pool": 1, "num_classes": 4, "seed": 1,
                           "transmission": None,  # kernels as trained: the 1 DN rounding stays below 1e-4
                           "optics": {"geometry": {"gap_px": 2, "psf_margin_px": 3}, "photometry": {"photons_per_s": 1e6},
                                      "sensor": {"noise": False, "offset_dn": 16.0, "gain_e_per_dn": 2.0}}})
    errors = {"num_psfs": 4, "errors": {"shift_px": [[0.6, -0.4], [-0.3, 0.7], [1.2, 0.0], [0.0, -1.1]],
                                        "brightness": [1.2, 0.8, 0.9, 1.1]}}
    data = blob_dataset(6, 4)
    with open_bench(fabricated_bench(student, errors), clock=VirtualClock()) as bench:
        capture(bench, data, np.arange(6), tmp_path / "c.h5", progress=False)
        truth = bench.camera.optics
    sensor = truth.sensor
    zeros = torch.zeros((1, 1, SIZE, SIZE), dtype=torch.int64)
    layer = CalibrationLayer.from_errors(student.frontend, truth.errors, e_per_dn=sensor.gain_e_per_dn / sensor.justify_scale,
                                         dark_dn=lambda t: truth.frame(zeros, t, noise=False)[0].numpy())
    calibration = SimpleNamespace(calibrated_system=lambda: truth, layer=lambda: layer)
    real = captured_features(tmp_path / "c.h5", layer)
    exposure = float(truth.photometry.exposure_s)
    synthetic = synthetic_features(calibration, data.tensors[0], data.tensors[1], torch.arange(6), exposure_s=exposure)
    assert synthetic.features.shape == real.features.shape == (6, 2, SIZE, SIZE)
    assert torch.equal(synthetic.labels, real.labels) and synthetic.source_indices.tolist() == list(range(6))
    scale = float(real.features.abs().max())
    torch.testing.assert_close(synthetic.features, real.features, atol=1e-3 * scale, rtol=0)  # 0.5 DN rounding
    nominal = captured_features(tmp_path / "c.h5", student.frontend)  # the uncompensated reading is far off
    assert float((nominal.features - real.features).abs().max()) > 0.2 * scale
