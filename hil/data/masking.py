"""A segmentation "masking" task built from Fashion-MNIST: find the garment (object vs background).

Why it is not trivial
---------------------
A Fashion-MNIST garment lies on an exactly black background, so ``image > t`` would solve the task.
Here each input hides the garment in a scene a single global threshold cannot separate:

* **background** of similar intensity: a smooth random field (a 4 x 4 uniform grid upsampled bicubically)
  spanning ``[low, low + span]`` with ``low ~ U(0, background_max / 2)``, ``span ~ U(0.2, 1) *
  background_max / 2``, plus a sinusoidal grating (a cloth-like texture) of amplitude
  ``U(0, grating_max)``, random period (3 to 8 px) and orientation;
* the garment **occludes** it: ``x = garment + (1 - a) * background`` with the soft alpha
  ``a = clip(garment / mask_level, 0, 1)`` (premultiplied-alpha compositing: the garment's own
  pixels, dark ones included, hide the background; its faint anti-aliased rim lets some through);
* a random **illumination gradient** multiplies the scene: gain ``1 + s (cos(phi) u + sin(phi) v)``
  with ``u, v`` in [-1/2, 1/2] across the image and ``s ~ U(0, gradient_max)``;
* Gaussian **noise** of standard deviation ``noise_std``; the input is clipped to [0, 1].

The mask is the clean garment's support, ``garment > mask_level`` (its intensity in [0, 1]). With
``background_max = grating_max = gradient_max = noise_std = 0`` the input *is* the clean garment and
the threshold ``mask_level`` recovers the mask exactly (the test's sanity check). With the defaults the
best global threshold (:func:`threshold_baseline`, chosen on the training split, either polarity)
reaches a mean IoU well below 1 (see ``tests/hil/test_data.py``); a network must use shape and texture.

Generation is vectorised and seeded: split ``train`` / ``test`` draws from ``numpy`` generators seeded
by ``(seed, 0)`` / ``(seed, 1)``, so the same seed gives the same scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hil.metrics import confusion_matrix, mean_iou
from onn_core.errors import ConfigError

from .errors import DatasetError


@dataclass(frozen=True)
class MaskingOptions:
    """Scene parameters (intensities in units of full scale 1; see the module docstring)."""

    mask_level: float = 0.1
    background_max: float = 0.8
    grating_max: float = 0.15
    gradient_max: float = 0.6
    noise_std: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.mask_level < 1:
            raise ConfigError("data.options.mask_level", self.mask_level, "a number in (0, 1)")
        for name in ("background_max", "grating_max", "gradient_max", "noise_std"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"data.options.{name}", getattr(self, name), "a number >= 0")


def compose_scenes(garments: torch.Tensor, options: MaskingOptions, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, 1, H, W) float32 in [0, 1] and masks (N, 1, H, W) uint8 from clean garments
    (N, 1, H, W) float in [0, 1], drawing every random quantity from ``rng``."""
    g = garments.float()
    n, _, h, w = g.shape
    o = options
    masks = (g > o.mask_level).to(torch.uint8)
    coarse = _f32(rng.uniform(0, 1, (n, 1, 4, 4)))
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    fmin, fmax = field.amin((2, 3), keepdim=True), field.amax((2, 3), keepdim=True)
    field = (field - fmin) / (fmax - fmin).clamp(min=1e-12)
    low = _f32(rng.uniform(0, o.background_max / 2, (n, 1, 1, 1)))
    span = _f32(rng.uniform(0.2, 1.0, (n, 1, 1, 1))) * o.background_max / 2
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    angle = _f32(rng.uniform(0, np.pi, (n, 1, 1, 1)))
    period = _f32(rng.uniform(3, 8, (n, 1, 1, 1)))
    phase = _f32(rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)))
    amplitude = _f32(rng.uniform(0, o.grating_max, (n, 1, 1, 1)))
    grating = amplitude * 0.5 * (1 + torch.sin(2 * np.pi * (xx * torch.cos(angle) + yy * torch.sin(angle)) / period + phase))
    background = low + span * field + grating
    alpha = (g / o.mask_level).clamp(0, 1)
    scene = g + (1 - alpha) * background
    direction = _f32(rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)))
    strength = _f32(rng.uniform(0, o.gradient_max, (n, 1, 1, 1)))
    u, v = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    scene = scene * (1 + strength * (torch.cos(direction) * u + torch.sin(direction) * v))
    scene = scene + o.noise_std * _f32(rng.standard_normal((n, 1, h, w)))
    return scene.clamp(0, 1), masks


def _f32(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values).float()


class MaskingDataset(Dataset):
    """The masking task over clean garments (N, 1, H, W) in [0, 1]: items ``(input, mask)``, input
    float32 (1, H, W), mask uint8 (1, H, W) in {0, 1}. Scenes are generated once, at construction
    (``tensors`` = (inputs, masks)); ``stream`` (0 train, 1 test) separates the splits' random draws."""

    def __init__(self, garments: torch.Tensor, options: MaskingOptions = MaskingOptions(), stream: int = 0):
        if garments.ndim != 4 or garments.shape[1] != 1:
            raise DatasetError(f"garments must be (N, 1, H, W), got {tuple(garments.shape)}")
        self.options = options
        rng = np.random.default_rng([int(options.seed), int(stream)])
        chunks = [compose_scenes(garments[i : i + 4096], options, rng) for i in range(0, len(garments), 4096)]
        self.tensors = (torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]))

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int):
        return self.tensors[0][index], self.tensors[1][index]


@dataclass(frozen=True)
class ThresholdBaseline:
    """Best single global threshold: predict object where ``input > threshold`` (``polarity=+1``) or
    ``input <= threshold`` (``-1``); mean IoU (object and background classes) on each split."""

    threshold: float
    polarity: int
    train_miou: float
    eval_miou: float


def _miou_at(inputs: torch.Tensor, masks: torch.Tensor, threshold: float, polarity: int) -> float:
    predicted = (inputs > threshold) if polarity > 0 else (inputs <= threshold)
    return mean_iou(confusion_matrix(predicted.long(), masks.long(), 2))


def threshold_baseline(train: MaskingDataset, evaluation: MaskingDataset | None = None, num_thresholds: int = 256) -> ThresholdBaseline:
    """Choose the threshold (``num_thresholds`` levels evenly in [0, 1], both polarities) with the best
    mean IoU on ``train`` (computed exactly from per-level pixel histograms), then report it on
    ``evaluation`` (default: ``train``)."""
    x, m = train.tensors[0].flatten(), train.tensors[1].flatten().bool()
    levels = torch.linspace(0, 1, num_thresholds, dtype=torch.float32)  # the inputs' precision: exact ties
    # bin b holds values in (levels[b-1], levels[b]]; "x > levels[k]" = bins k+1 .. end
    bins = torch.bucketize(x.float(), levels)
    fg = torch.bincount(bins[m], minlength=num_thresholds + 1).double()
    bg = torch.bincount(bins[~m], minlength=num_thresholds + 1).double()
    fg_above = fg.sum() - torch.cumsum(fg, 0)[:num_thresholds]
    bg_above = bg.sum() - torch.cumsum(bg, 0)[:num_thresholds]
    best = (-1.0, 0.0, 1)
    for polarity in (1, -1):
        tp = fg_above if polarity > 0 else fg.sum() - fg_above  # predicted object and true object
        fp = bg_above if polarity > 0 else bg.sum() - bg_above
        fn, tn = fg.sum() - tp, bg.sum() - fp
        iou_fg = tp / (tp + fp + fn).clamp(min=1)
        iou_bg = tn / (tn + fn + fp).clamp(min=1)
        miou = (iou_fg + iou_bg) / 2
        k = int(torch.argmax(miou))
        if float(miou[k]) > best[0]:
            best = (float(miou[k]), float(levels[k]), polarity)
    _, threshold, polarity = best
    train_miou = _miou_at(train.tensors[0], train.tensors[1], threshold, polarity)
    evaluation = train if evaluation is None else evaluation
    eval_miou = _miou_at(evaluation.tensors[0], evaluation.tensors[1], threshold, polarity)
    return ThresholdBaseline(threshold, polarity, train_miou, eval_miou)
