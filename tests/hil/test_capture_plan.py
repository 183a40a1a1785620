"""The job's capture plan: validation images the student never trained on (hil.job.steps.capture_plan)."""

from pathlib import Path

import numpy as np
import torch

from hil.api import split_train_val, train_val_indices
from hil.job import load_job
from hil.job.steps import capture_plan, datasets, student_training_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_train_val_indices_are_split_train_vals_subsets():
    data = torch.utils.data.TensorDataset(torch.arange(50))
    train, val = split_train_val(data, 10, 25, seed=3)
    assert (list(train.indices), list(val.indices)) == train_val_indices(50, 10, 25, 3)
    assert len(train.indices) == 25 and not set(train.indices) & set(val.indices)


def test_validation_captures_avoid_the_images_the_student_trained_on(tmp_path):
    job = load_job(EXAMPLES / "run_sim.yaml", tmp_path / "run")  # student: 20 000 training images of 55 000
    train_split, test_split = datasets(job)
    seen = student_training_rows(job, len(train_split))
    assert len(seen) == 20000
    plan = capture_plan(job, train_split.tensors[1].numpy(), test_split.tensors[1].numpy())
    assert len(plan["val"]) == job.config.capture.val_size
    assert not np.intersect1d(plan["val"], seen).size
    assert not np.intersect1d(plan["val"], plan["train"]).size
