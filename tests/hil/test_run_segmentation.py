"""`hil run` on the masking segmentation task (issue 21): the same steps, controls, methods and report as
classification, with mean IoU in place of accuracy (:mod:`hil.job.task`); a tiny job on small
simulated scenes, and the task's metric against :mod:`hil.metrics`."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from hil.capture import DENSE_TARGET, row_label
from hil.checkpoint import save_checkpoint
from hil.data.masking import MaskingOptions, compose_scenes
from hil.finetune import CapturedSet, accuracy, score
from hil.job import run_job
from hil.job.task import TASKS, job_task
from hil.losses import bce_dice_loss
from hil.metrics import confusion_matrix, mean_iou
from hil.models import build_model

from .test_run import MODEL, SHIFTED, SIZE, write_job

SEG_MODEL = {**{k: v for k, v in MODEL.items() if k not in ("hidden", "pool", "num_classes")},
             "backend": "upconv", "decoder_widths": [8, 16], "out_channels": 1}
TEACHER = {"name": "unet", "in_channels": 1, "out_channels": 1, "base_channels": 4, "depth": 1}
OPTIONS = MaskingOptions(background_max=0.5, grating_max=0.05, gradient_max=0.3, noise_std=0.03)


def masking_scenes(n: int, seed: int) -> TensorDataset:
    """Scenes of the masking task at SIZE x SIZE: a bright rectangle ("garment") on the cluttered
    background of :func:`hil.data.masking.compose_scenes`; targets its masks (1, H, W) uint8."""
    rng = np.random.default_rng(seed)
    garments = torch.zeros((n, 1, SIZE, SIZE))
    for i in range(n):
        r, c = rng.integers(1, SIZE // 2, 2)
        h, w = rng.integers(3, SIZE // 2 + 1, 2)
        garments[i, 0, r:r + h, c:c + w] = float(rng.uniform(0.5, 1.0))
    images, masks = compose_scenes(garments, OPTIONS, rng)
    return TensorDataset(images, masks)


def fit(model, inputs, masks, steps: int, lr: float = 1e-2):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = bce_dice_loss(model(inputs), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A segmentation student and a U-Net teacher, trained briefly, saved as checkpoints; returns
    (student run dir, student, datasets, teacher checkpoint)."""
    torch.manual_seed(0)
    train, test = masking_scenes(240, 0), masking_scenes(80, 1)
    student = fit(build_model(SEG_MODEL), train.tensors[0], train.tensors[1], 40)
    teacher = fit(build_model(TEACHER), train.tensors[0], train.tensors[1], 40)
    run = tmp_path_factory.mktemp("seg_student")
    save_checkpoint(run / "checkpoints" / "best.pt", {"model": student.state_dict(), "config": {"model": SEG_MODEL}})
    teacher_file = run / "teacher.pt"
    save_checkpoint(teacher_file, {"model": teacher.state_dict(), "config": {"model": TEACHER}})
    return run, student, (train, test), teacher_file


def test_a_segmentation_job_runs_end_to_end_and_reports_miou(tmp_path, seg_run):
    """The masking task through the whole job: captured masks come back by source index, every
    reference, the design_ft control and the methods (task loss and NTKD from a U-Net teacher, synthetic
    captures, nominal features) are scored by mean IoU, and the summary says mIoU."""
    run, student, datasets, teacher_file = seg_run
    methods = ["e2e", "ntkd", "e2e_synthetic", "e2e_nominal"]
    job = write_job(tmp_path, (run, student, datasets), errors=SHIFTED,
                    capture={"fractions": [0.2, 0.4], "test_size": 40, "val_size": 32, "seed": 0},
                    data={"dataset": "fashion_masking"}, teacher={"checkpoint": str(teacher_file)},
                    finetune={"methods": methods, "steps": 8, "lr": 3e-3, "batch_size": 16, "synthetic": 16,
                              "seeds": [0], "teacher_margin": -1.0,  # the brief teacher need not beat the design
                              "loss": {"kernel_batch": 8, "student_method": "jvp_projection",
                                       "teacher_method": "jvp_projection", "num_projections": 4,
                                       "output_sketch_dim": 4}})
    assert job_task(job).name == "segmentation"
    summary = run_job(job, progress=False)
    evaluation = json.loads((job.run_dir / "evaluation.json").read_text())
    assert evaluation["metric"] == "miou" and evaluation["test_samples"] == 40
    for name in ("design", "design_noisy", "perfect_fabrication", "uncompensated", "calibration_layer"):
        assert 0.0 <= evaluation[name] <= 1.0, (name, evaluation[name])
    rows = evaluation["test_samples"]
    assert evaluation["design"] > 0.5  # the student segments (a constant prediction gives mIoU <= 0.5)
    assert evaluation["teacher"]["usable"] and evaluation["left_out"] == {}
    assert set(evaluation["design_ft"]) == {"0.2", "0.4"}
    assert set(evaluation["by_fraction"]) == set(methods)
    for cell in [*evaluation["design_ft"].values(), *(c for f in evaluation["by_fraction"].values() for c in f.values())]:
        assert len(cell["mious"]) == 1 and 0.0 <= cell["mean"] <= 1.0 and "accuracies" not in cell
    results = json.loads((job.run_dir / "finetune.json").read_text())
    assert results["e2e"]["0.2"][0]["captured"] == 48 and results["e2e"]["0.4"][0]["captured"] == 96  # uniform
    assert results["e2e_synthetic"]["0.2"][0]["synthetic"] == 16
    assert 0.0 <= results["e2e"]["0.4"][0]["best_val_miou"] <= 1.0
    # the capture files hold no masks: DENSE_TARGET labels, the masks read back from the split by index
    from hil.data.captures import CaptureDataset

    captured = CaptureDataset(job.run_dir / "captures" / "test.h5")
    assert captured.count == rows and bool((captured.labels == DENSE_TARGET).all())
    captured.close()
    text = summary.read_text()
    assert "| | mIoU (%) |" in text and "Fine-tuned backend, mIoU %" in text
    assert "accuracy (" not in text and "accuracy %" not in text
    report = json.loads((job.run_dir / "report.json").read_text())
    assert {"accuracy", "curves", "psfs"} <= set(report["plots"])


class Logits(torch.nn.Module):
    """A "backend" whose features are already its logits."""

    def forward(self, x):
        return x


def test_the_task_metric_is_the_mean_iou_of_hil_metrics():
    """Two 2x2 masks and predictions: object IoU 2/4, background IoU 4/6, so mIoU 7/12, equal to
    hil.metrics' mean IoU of the confusion matrix, whatever the batch size."""
    masks = torch.tensor([[[[1, 0], [0, 0]]], [[[1, 1], [0, 0]]]], dtype=torch.uint8)
    predicted = torch.tensor([[[[1, 1], [0, 0]]], [[[1, 0], [0, 0]]]])
    logits = predicted.float() * 2 - 1  # > 0 where the object is predicted
    data = CapturedSet(logits, masks, torch.arange(2))
    expected = mean_iou(confusion_matrix(predicted, masks.long(), 2))
    assert expected == pytest.approx(7 / 12)
    task = TASKS["segmentation"]
    assert task.score(Logits(), data) == pytest.approx(expected)
    assert score(Logits(), data, "segmentation", batch_size=1) == pytest.approx(expected)
    assert task.score_outputs(logits, masks) == pytest.approx(expected)
    assert (task.metric, task.metric_name) == ("miou", "mIoU")
    # classification: the task's metric is hil.finetune.accuracy
    classes = CapturedSet(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, 1, 0]), torch.arange(4))
    assert TASKS["classification"].score(Logits(), classes) == accuracy(Logits(), classes) == 0.75


def test_segmentation_samples_are_uniform_nested_and_masks_are_not_stored():
    """Segmentation samples: seeded, uniform, the smaller fraction the first rows of the larger; a mask
    is stored as DENSE_TARGET, a class label as itself."""
    task = TASKS["segmentation"]
    masks = torch.zeros((200, 1, 4, 4), dtype=torch.uint8)
    picked = task.sample(masks, 0.3, seed=5)
    assert len(picked) == 60 and len(set(picked.tolist())) == 60
    assert np.array_equal(picked, task.sample(masks, 0.3, seed=5))
    val = task.sample(masks, 0.1, seed=6, exclude=picked)
    assert len(val) == 20 and not set(val.tolist()) & set(picked.tolist())
    captured = CapturedSet(torch.zeros((60, 1, 4, 4)), masks[torch.from_numpy(picked)], torch.from_numpy(picked))
    assert task.fraction_rows(captured, 0.1, masks).tolist() == list(range(20))
    assert row_label(masks[0]) == DENSE_TARGET and row_label(torch.tensor(3)) == 3 and row_label(7) == 7
