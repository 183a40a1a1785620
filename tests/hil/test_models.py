"""Teachers, optical frontends and backends, the student wrapper and the config builder."""

import pytest
import torch
from torch import nn

from hil.models import FCBackend, FourFDesign, LeNet, OpticalStudent, UNet, UpConvDecoder, build_model, hold_random_draws
from simulator.conv import optical_conv2d
from onn_core.errors import ConfigError, InputError
from simulator.system import OpticalSystem


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


def student_frontend(**fields):
    return build_model({"name": "optical_student", "num_kernels": 2, "kernel_size": 3, "image_size": 16,
                        **fields}).frontend


def test_student_frontend_features_are_signed_kernel_convolutions_of_the_displayed_image():
    """Ideal optics, gamma 1: features = (images shown as 8-bit gray) * (k+ - k-), "same" mode."""
    frontend = student_frontend(optics={"display": {"gamma": 1.0}})
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    shown = torch.round(x * 255) / 255
    torch.testing.assert_close(frontend(x), optical_conv2d(shown, frontend.design.kernels, mode="same"))
    # a noiseless sensor with an ADC: the photon scale and the conversion gain cancel up to quantisation
    quiet = student_frontend(optics={"display": {"gamma": 1.0}, "photometry": {"photons_per_s": 1e6},
                                     "sensor": {"bit_depth": 16, "gain_e_per_dn": 0.5, "noise": False}})
    torch.testing.assert_close(quiet(x), optical_conv2d(shown, quiet.design.kernels, mode="same"), atol=2e-4, rtol=0)


def test_sensor_noise_shrinks_with_more_photons():
    x = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    spread = []
    for photons_per_s in (1e4, 1e6):
        frontend = student_frontend(optics={"photometry": {"photons_per_s": photons_per_s},
                                            "sensor": {"quantum_efficiency": 1.0}}).double().train()
        clean = frontend.eval()(x)
        torch.manual_seed(0)
        with torch.no_grad():
            spread.append(float((frontend.train()(x) - clean).std()))
    # shot noise: relative std ~ 1/sqrt(photons), 100x photons -> 10x less
    assert 7 < spread[0] / spread[1] < 14


def test_random_fabrication_draws_train_vs_eval_hold_and_resume():
    frontend = student_frontend(fabrication={"brightness_rel_std": 0.2}, seed=5)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    frontend.train()
    a, b = frontend(x), frontend(x)
    assert not torch.allclose(a, b) and frontend.draws.draws == 2
    frontend.eval()
    clean = frontend(x)
    assert torch.equal(frontend(x), clean) and frontend.draws.draws == 2
    frontend.train()
    with hold_random_draws(frontend):
        torch.testing.assert_close(frontend(x), frontend(x))
    assert frontend.draws.draws == 3
    fresh = student_frontend(fabrication={"brightness_rel_std": 0.2}, seed=5)
    fresh.load_state_dict(frontend.state_dict())
    torch.testing.assert_close(fresh.train()(x), frontend(x))  # draw 3 of the same sequence


def test_fourf_design_kernels_are_differences_of_4f_psfs_and_train():
    frontend = student_frontend(frontend="fourf", kernel_size=5, optics={"display": {"gamma": 1.0}})
    psfs = frontend.design.psfs()
    assert psfs.shape == (4, 1, 5, 5) and float(psfs.detach().min()) >= 0
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    features = frontend(x)
    shown = torch.round(x * 255) / 255
    torch.testing.assert_close(features, optical_conv2d(shown, psfs[0::2] - psfs[1::2], mode="same"), rtol=1e-5, atol=1e-7)
    features.square().sum().backward()
    grads = [p.grad for p in frontend.parameters()]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_optical_student_blocks_and_freezing():
    student = build_model({"name": "optical_student"})
    assert isinstance(student, OpticalStudent)
    assert student(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert {n.split(".")[0] for n, _ in student.named_parameters()} == {"frontend", "backend"}
    student.freeze("frontend")
    assert not any(p.requires_grad for p in student.frontend.parameters()) and student.frontend.frozen
    assert all(p.requires_grad for p in student.backend.parameters())
    student.freeze("frontend", frozen=False)
    assert all(p.requires_grad for p in student.parameters())
    with pytest.raises(InputError, match="part must be"):
        student.freeze("optics")


def test_build_model_variants_and_determinism():
    seg = build_model({"name": "optical_student", "backend": "upconv", "num_kernels": 4, "decoder_widths": [8, 16]})
    assert seg(torch.rand(1, 1, 28, 28)).shape == (1, 1, 28, 28)
    fourf = build_model({"name": "optical_student", "frontend": "fourf", "num_kernels": 2, "kernel_size": 5})
    assert isinstance(fourf.frontend.design, FourFDesign) and fourf(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    robust = build_model({"name": "optical_student", "fabrication": {"shift_std_px": 0.3},
                          "optics": {"sensor": {"read_noise_e": 2.0}, "photometry": {"photons_per_s": 1e5}}})
    assert isinstance(robust.frontend, OpticalSystem) and robust.frontend.draws is not None
    assert robust.frontend.sensor.read_noise_e == 2.0 and robust.frontend.photometry.photons_per_unit() == 1000.0
    magnified = build_model({"name": "optical_student", "image_size": 14, "optics": {"geometry": {
        "display_pixel_pitch_m": 6.9e-6, "sensor_pixel_pitch_m": 3.45e-6}}})
    assert magnified(torch.rand(1, 1, 14, 14)).shape == (1, 10)
    assert magnified.backend.layers[2].in_features == 8 * 14 * 14  # 28 x 28 features, pooled by 2
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
    with pytest.raises(ConfigError, match=r"model\.optics\.sensor"):
        build_model({"name": "optical_student", "sensor": {"gain": 2}})
    with pytest.raises(ConfigError, match=r"model\.optics\.photometry"):
        build_model({"name": "optical_student", "photons_per_unit": 1000.0})
    with pytest.raises(ConfigError, match=r"model\.optics\.photometry"):
        build_model({"name": "optical_student", "frontend": "fourf", "fourf": {"psf_gain": 100.0}})
    with pytest.raises(ConfigError, match=r"model\.optics\.image_shape"):
        build_model({"name": "optical_student", "optics": {"image_shape": [32, 32]}})
    with pytest.raises(ConfigError, match=r"model\.optics\.design"):
        build_model({"name": "optical_student", "optics": {"design": {"generator": "random_signed"}}})
    with pytest.raises(ConfigError, match="model.fourf.lens"):
        build_model({"name": "optical_student", "frontend": "fourf", "fourf": {"lens": 1}})


def test_fourf_frontend_flat_filter_images_a_point():
    """A uniform Fourier-plane amplitude filter (transmission 1/2 everywhere, no phase) is an ideal 4f
    imager: its incoherent PSF is a single pixel at the axis holding |H|^2 = 1/4 of the energy."""
    psfs = FourFDesign(1, 1, 5, filter_mode="amplitude").psfs().detach().double()
    expected = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    expected[:, 0, 2, 2] = 0.25
    torch.testing.assert_close(psfs, expected, atol=1e-6, rtol=0)


def test_a_noisy_students_ntk_vectorises_and_is_that_of_its_expected_forward():
    from hil.ntk import ntk_exact

    noisy = {"sensor": {"read_noise_e": 1.0, "bit_depth": 12, "full_well_e": 1e4}, "photometry": {"photons_per_s": 1e5}}
    student = build_model({"name": "optical_student", "num_kernels": 2, "kernel_size": 3, "image_size": 12,
                           "hidden": [5], "optics": noisy}).double().train()
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vectorised = ntk_exact(student, x, per_sample="vmap")
    torch.testing.assert_close(vectorised, ntk_exact(student, x, per_sample="loop"))
    torch.testing.assert_close(vectorised, ntk_exact(student.eval(), x, per_sample="vmap"))


def test_a_student_reads_the_benchs_optics_file_and_the_run_config_inlines_it(tmp_path):
    from pathlib import Path

    import yaml

    from hil.config import parse_run_config

    examples = Path(__file__).resolve().parents[2] / "examples"
    bench_optics = OpticalSystem.from_yaml(examples / "optics.yaml")
    student = build_model({"name": "optical_student", "optics": str(examples / "optics.yaml")})
    for name in ("geometry", "photometry", "sensor"):
        assert getattr(student.frontend, name) == getattr(bench_optics, name), name
    assert student.frontend.frame_shape == bench_optics.frame_shape
    assert bool((student.frontend.errors.shift_px == 0).all())  # the device's errors are not the student's
    (tmp_path / "optics.yaml").write_text((examples / "optics.yaml").read_text())
    cfg = parse_run_config({"task": "classification", "model": {"name": "optical_student", "optics": "optics.yaml"}},
                           base_dir=tmp_path)
    assert isinstance(cfg.model["optics"], dict) and "design" not in cfg.model["optics"]
    assert cfg.model["optics"]["photometry"] == yaml.safe_load((examples / "optics.yaml").read_text())["photometry"]
