"""Issue 21's light budget: a trained student's PSFs never carry more light than their sub-aperture's
transmission, its function class is kept, and training warns when its frames clip."""

import logging

import pytest
import torch
from torch.utils.data import TensorDataset

from hil.clipping import clip_watch, clipped_fraction
from hil.models import build_model
from simulator.design import KernelDesign

SENSOR = {"quantum_efficiency": 0.6, "read_noise_e": 2.5, "full_well_e": 10500.0, "gain_e_per_dn": 2.6,
          "offset_dn": 16.0, "bit_depth": 12, "container_bits": 16, "noise": False}


def student(photons_per_s: float, transmission=1.0):
    return build_model({"name": "optical_student", "num_kernels": 3, "kernel_size": 5, "image_size": 10,
                        "hidden": [8], "pool": 1, "num_classes": 3, "seed": 0, "transmission": transmission,
                        "optics": {"photometry": {"photons_per_s": photons_per_s}, "sensor": SENSOR}})


def psf_sums(model) -> torch.Tensor:
    return model.frontend.design.psfs().detach().sum(dim=(1, 2, 3))


def test_trained_psfs_stay_within_the_transmission():
    """Adam steps that grow the kernels: the stored weights leave the budget (by 3x or more), every PSF's
    sum stays <= transmission, and a kernel within budget is used as stored."""
    torch.manual_seed(0)
    model = student(1e5, transmission=0.6)
    images, labels = torch.rand(32, 1, 10, 10), torch.randint(0, 3, (32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(images), labels) - model.frontend.design.weight.abs().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weight = model.frontend.design.weight.detach()
    assert float(weight.clamp(min=0).sum(dim=(1, 2, 3)).max()) > 3 * 0.6  # unconstrained, it would carry this
    assert float(psf_sums(model).max()) <= 0.6 + 1e-6
    small = torch.full((1, 1, 3, 3), 0.05)
    torch.testing.assert_close(KernelDesign(small, transmission=0.6).kernels, small)
    with pytest.raises(Exception, match=r"transmission must be a fraction in \(0, 1\]"):
        KernelDesign(small, transmission=1.5)


def test_the_budget_keeps_the_function_class():
    """A kernel over budget is scaled as a whole: the features are those of the unconstrained kernel
    divided by one positive factor per feature map (which the backend's first layer absorbs)."""
    kernels = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    free, bound = KernelDesign(kernels, transmission=None), KernelDesign(kernels, transmission=0.5)
    ratio = free.kernels / bound.kernels
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio))
    assert bool((ratio[:, 0, 0, 0] >= 1).all())


def test_training_warns_when_the_student_trains_through_clipped_frames(caplog):
    """Bright optics clip the frames of bright images: the step callback warns once, naming the fields;
    dim optics do not warn."""
    data = TensorDataset(torch.ones(8, 1, 10, 10), torch.zeros(8, dtype=torch.long))
    trainer = type("T", (), {"step": 1})()
    bright, dim = student(1e9), student(1e5)
    assert clipped_fraction(bright.frontend, data.tensors[0]) > 0.01 and clipped_fraction(dim.frontend, data.tensors[0]) == 0
    with caplog.at_level(logging.WARNING, logger="hil.clipping"):
        (watch,) = clip_watch(dim, data)
        watch(trainer)
        assert not caplog.records
        (watch,) = clip_watch(bright, data)
        watch(trainer)
        watch(trainer)
    assert len(caplog.records) == 1
    assert "clipped" in caplog.text and "model.optics.photometry.exposure_s" in caplog.text and \
        "model.transmission" in caplog.text
