"""Teachers, optical frontends and backends, the student wrapper and the config builder."""

import pytest
import torch
from torch import nn

from hil.models import (
    FCBackend, FourFFrontend, IncoherentFrontend, LeNet, OpticalStudent, RandomFabricationErrors, UNet, UpConvDecoder,
    build_model, hold_random_draws,
)
from simulator.conv import IncoherentConv2d, optical_conv2d
from simulator.errors import ConfigError, InputError
from simulator.sensor import SensorModel


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_lenet_shapes_and_size():
    net = LeNet()
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # conv 1*6*25+6, conv 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    assert count(net) == 156 + 2416 + 48120 + 10164 + 850
    assert LeNet(3, 5, 32, width=2)(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_unet_shape_and_skip_path():
    net = UNet(1, 1, base_channels=4, depth=2)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    with pytest.raises(InputError, match="divisible by 4"):
        net(torch.rand(1, 1, 30, 30))


def test_fc_backends_have_two_or_three_layers():
    two, three = FCBackend((8, 28, 28), 10, (32,), pool=2), FCBackend((8, 28, 28), 10, (64, 32), pool=2)
    linears = lambda m: [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert len(linears(two)) == 2 and len(linears(three)) == 3
    assert linears(two)[0].in_features == 8 * 14 * 14
    assert count(two) == 1568 * 32 + 32 + 330  # ~0.05 M, the paper's MNIST backend size
    assert two(torch.rand(2, 8, 28, 28)).shape == (2, 10)


def test_upconv_decoder_shape():
    assert UpConvDecoder(8, 1, (6, 12))(torch.rand(2, 8, 28, 28)).shape == (2, 1, 28, 28)


def test_incoherent_frontend_features_are_signed_kernel_convolutions():
    conv = IncoherentConv2d(1, 3, 5, seed=1, dtype=torch.float64)
    frontend = IncoherentFrontend(conv)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    expected = optical_conv2d(x, conv.weight, mode="same")  # k+ - k- = k, the convolution is linear
    torch.testing.assert_close(frontend(x), expected)
    # with a noiseless sensor the photon scaling cancels
    quiet = IncoherentConv2d.from_kernels(conv.weight.detach(), sensor=SensorModel(noise=False))
    torch.testing.assert_close(IncoherentFrontend(quiet, photons_per_unit=250.0)(x), expected)


def test_sensor_noise_shrinks_with_more_photons():
    kernels = IncoherentConv2d(1, 2, 3, seed=0, dtype=torch.float64).weight.detach()
    x = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    clean = IncoherentFrontend(IncoherentConv2d.from_kernels(kernels))(x)
    spread = []
    for photons in (100.0, 10000.0):
        noisy = IncoherentFrontend(IncoherentConv2d.from_kernels(kernels, sensor=SensorModel()), photons)
        torch.manual_seed(0)
        with torch.no_grad():
            spread.append(float((noisy(x) - clean).std()))
    # shot noise: relative std ~ 1/sqrt(photons), 100x photons -> 10x less
    assert 7 < spread[0] / spread[1] < 14


def test_random_fabrication_errors_train_vs_eval_hold_and_resume():
    transform = RandomFabricationErrors(4, {"brightness_rel_std": 0.2}, seed=5)
    psfs = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    a, b = transform(psfs), transform(psfs)
    assert not torch.allclose(a, b) and transform.draws == 2
    ratio = (a / psfs).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # brightness: one factor per PSF
    transform.eval()
    assert torch.equal(transform(psfs), psfs)
    transform.train()
    model = nn.Sequential(transform)
    with hold_random_draws(model):
        torch.testing.assert_close(transform(psfs), transform(psfs))
    assert transform.draws == 3
    state = model.state_dict()
    fresh = nn.Sequential(RandomFabricationErrors(4, {"brightness_rel_std": 0.2}, seed=5))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh[0](psfs), transform(psfs))  # draw 3 of the same sequence


def test_fourf_frontend_kernels_are_differences_of_4f_psfs_and_train():
    frontend = FourFFrontend(1, 2, 5, seed=0)
    psfs = frontend.psfs()
    assert psfs.shape == (4, 1, 5, 5) and float(psfs.detach().min()) >= 0
    x = torch.rand(2, 1, 10, 10)
    features = frontend(x)
    torch.testing.assert_close(features, optical_conv2d(x, psfs[0::2] - psfs[1::2], mode="same"), rtol=1e-5, atol=1e-7)
    features.square().sum().backward()
    grads = [p.grad for p in frontend.parameters()]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_optical_student_blocks_and_freezing():
    student = build_model({"name": "optical_student"})
    assert isinstance(student, OpticalStudent)
    assert student(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert {n.split(".")[0] for n, _ in student.named_parameters()} == {"frontend", "backend"}
    student.freeze("frontend")
    assert not any(p.requires_grad for p in student.frontend.parameters())
    assert all(p.requires_grad for p in student.backend.parameters())
    student.freeze("frontend", frozen=False)
    assert all(p.requires_grad for p in student.parameters())
    with pytest.raises(InputError, match="part must be"):
        student.freeze("optics")


def test_build_model_variants_and_determinism():
    seg = build_model({"name": "optical_student", "backend": "upconv", "num_kernels": 4, "decoder_widths": [8, 16]})
    assert seg(torch.rand(1, 1, 28, 28)).shape == (1, 1, 28, 28)
    fourf = build_model({"name": "optical_student", "frontend": "fourf", "num_kernels": 2, "kernel_size": 5,
                         "fourf": {"psf_gain": 10.0}})
    assert isinstance(fourf.frontend, FourFFrontend) and fourf(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    robust = build_model({"name": "optical_student", "fabrication": {"shift_std_px": 0.3},
                          "sensor": {"read_noise_e": 2.0}, "photons_per_unit": 1000.0})
    assert isinstance(robust.frontend.conv.psf_transform, RandomFabricationErrors)
    assert robust.frontend.conv.sensor.read_noise_e == 2.0
    a, b = build_model({"name": "optical_student", "seed": 3}), build_model({"name": "optical_student", "seed": 3})
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    assert isinstance(build_model({"name": "lenet"}), LeNet) and isinstance(build_model({"name": "unet"}), UNet)


def test_build_model_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.name"):
        build_model({"name": "resnet"})
    with pytest.raises(ConfigError, match="model.hidden"):
        build_model({"name": "optical_student", "hidden": [1, 2, 3]})
    with pytest.raises(ConfigError, match="model.num_kernels"):
        build_model({"name": "optical_student", "num_kernels": "many"})
    with pytest.raises(ConfigError, match="model.sensor"):
        build_model({"name": "optical_student", "sensor": {"gain": 2}})
    with pytest.raises(ConfigError, match="model.fourf.lens"):
        build_model({"name": "optical_student", "frontend": "fourf", "fourf": {"lens": 1}})


def test_fourf_frontend_flat_filter_images_a_point():
    """A uniform Fourier-plane amplitude filter (transmission 1/2 everywhere, no phase) is an ideal 4f
    imager: its incoherent PSF is a single pixel at the axis holding |H|^2 = 1/4 of the energy."""
    frontend = FourFFrontend(1, 1, 5, filter_mode="amplitude")
    psfs = frontend.psfs().detach().double()
    expected = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    expected[:, 0, 2, 2] = 0.25
    torch.testing.assert_close(psfs, expected, atol=1e-6, rtol=0)
