"""Confusion matrix, accuracy and IoU against hand-counted examples."""

import math

import pytest
import torch

from hil.metrics import ConfusionAccumulator, accuracy, confusion_matrix, iou_per_class, mean_iou, predictions
from onn_core.errors import InputError


def test_confusion_matrix_counts_true_rows_predicted_columns():
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(predicted, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert accuracy(cm) == pytest.approx(4 / 6)
    # IoU: class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: 1/(1+1+0) = 1/2; class 2: 2/(2+0+1) = 2/3
    assert iou_per_class(cm).tolist() == pytest.approx([1 / 3, 1 / 2, 2 / 3])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)


def test_absent_class_is_left_out_of_mean_iou():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    iou = iou_per_class(cm)
    assert math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_segmentation_masks_from_logits_and_accumulation_over_batches():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])  # (1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    labels = predictions(logits, "segmentation")
    assert labels.tolist() == [[[1, 0], [1, 0]]]
    acc = ConfusionAccumulator(2)
    acc.update(labels, mask)
    acc.update(labels, mask)
    out = acc.compute()
    assert out["confusion"] == [[2, 2], [2, 2]]
    assert out["accuracy"] == 0.5 and out["miou"] == pytest.approx(1 / 3)
    assert predictions(torch.tensor([[0.1, 0.9, 0.0]]), "classification").tolist() == [1]


def test_bad_labels_and_shapes_are_refused():
    with pytest.raises(InputError, match=r"target labels must lie in \[0, 1\]"):
        confusion_matrix(torch.tensor([0]), torch.tensor([2]), 2)
    with pytest.raises(InputError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)
    with pytest.raises(InputError, match="classification output"):
        predictions(torch.zeros(2, 3, 4), "classification")
