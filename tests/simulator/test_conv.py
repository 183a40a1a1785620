import pytest
import torch
from scipy import signal

from simulator import conv as conv_module
from simulator.conv import (
    IncoherentConv2d,
    auto_method,
    conv_work,
    direct_conv2d,
    fft_conv2d,
    optical_conv2d,
    split_signed,
)
from onn_core.errors import InputError
from simulator.layout import TileLayout
from simulator.sensor import SensorModel

f64 = torch.float64


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


@pytest.mark.parametrize("mode", ["same", "full", "valid"])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (4, 4), (7, 7), (5, 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_fft_equals_direct(mode, kernel, channels):
    images = _rand(2, channels, 11, 9)
    psfs = _rand(4, channels, *kernel, seed=1)
    fft, direct = fft_conv2d(images, psfs, mode=mode), direct_conv2d(images, psfs, mode=mode)
    expected_hw = {"same": (11, 9), "full": (10 + kernel[0], 8 + kernel[1]), "valid": (12 - kernel[0], 10 - kernel[1])}
    assert fft.shape == (2, 4, *expected_hw[mode])
    torch.testing.assert_close(fft, direct, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 3])
def test_full_mode_is_true_convolution_summed_over_channels(channels):
    images, psfs = _rand(1, channels, 8, 10), _rand(2, channels, 4, 3, seed=3)
    out = fft_conv2d(images, psfs, mode="full")
    for m in range(2):
        expected = sum(signal.convolve(images[0, c].numpy(), psfs[m, c].numpy(), mode="full") for c in range(channels))
        torch.testing.assert_close(out[0, m], torch.from_numpy(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", [(5, 5), (4, 6)])
def test_delta_image_returns_psf(kernel):
    images = torch.zeros(1, 1, 12, 12, dtype=f64)
    images[0, 0, 3, 5] = 1.0
    psfs = _rand(3, 1, *kernel)
    out = fft_conv2d(images, psfs, mode="full")
    expected = torch.zeros_like(out)
    expected[0, :, 3 : 3 + kernel[0], 5 : 5 + kernel[1]] = psfs[:, 0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", [(5, 5), (4, 4), (3, 6)])
@pytest.mark.parametrize("conv", [fft_conv2d, direct_conv2d])
def test_same_mode_centre_delta_psf_returns_image_unshifted(kernel, conv):
    psf = torch.zeros(1, 1, *kernel, dtype=f64)
    psf[0, 0, kernel[0] // 2, kernel[1] // 2] = 1.0
    images = _rand(2, 1, 9, 10)
    torch.testing.assert_close(conv(images, psf, mode="same"), images, rtol=0, atol=1e-12)


def test_edge_point_source_does_not_wrap_around():
    kernel = 9
    images = torch.zeros(1, 1, 16, 16, dtype=f64)
    images[0, 0, 0, 15] = 1.0  # top-right corner
    psfs = _rand(1, 1, kernel, kernel) + 0.5
    out = fft_conv2d(images, psfs, mode="same")[0, 0]
    c = kernel // 2
    # the PSF's part that falls inside the frame, at the corner ...
    torch.testing.assert_close(out[: kernel - c, 15 - c :], psfs[0, 0, c:, : c + 1], rtol=0, atol=1e-12)
    # ... and nothing leaks to the opposite edges (a circular convolution would put light there)
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[: kernel - c, 15 - c :] = False
    assert float(out[mask].abs().max()) < 1e-12


def test_full_output_sum_is_product_of_sums():
    images, psfs = _rand(3, 2, 13, 7), _rand(5, 2, 6, 4, seed=2)
    out = fft_conv2d(images, psfs, mode="full")
    expected = torch.einsum("nc,mc->nm", images.sum(dim=(-2, -1)), psfs.sum(dim=(-2, -1)))
    torch.testing.assert_close(out.sum(dim=(-2, -1)), expected, rtol=1e-12, atol=0)


def test_rfft_path_equals_full_complex_fft():
    images, psfs = _rand(2, 3, 10, 12), _rand(4, 3, 5, 7, seed=4)
    shape = (10 + 5 - 1, 12 + 7 - 1)  # exact linear size, no fast-size padding
    spectrum = (torch.fft.fft2(images, s=shape)[:, None] * torch.fft.fft2(psfs, s=shape)[None]).sum(dim=2)
    complex_full = torch.fft.ifft2(spectrum)
    assert float(complex_full.imag.abs().max()) < 1e-12
    torch.testing.assert_close(fft_conv2d(images, psfs, mode="full"), complex_full.real, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["same", "full", "valid"])
def test_gradcheck_fft_conv2d(mode):
    images = _rand(1, 2, 5, 4).requires_grad_()
    psfs = _rand(2, 2, 3, 2, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, k: fft_conv2d(x, k, mode=mode), (images, psfs), fast_mode=True)


@pytest.mark.parametrize("method", ["auto", "fft", "direct"])
def test_optical_conv2d_methods_agree(method):
    images = _rand(2, 1, 20, 20)
    for k in (3, 25):
        psfs = _rand(2, 1, k, k, seed=k)
        torch.testing.assert_close(optical_conv2d(images, psfs, method=method), fft_conv2d(images, psfs), rtol=0, atol=1e-10)



@pytest.mark.parametrize("mode", ["same", "full"])
@pytest.mark.parametrize("kernel", [3, 19, 31])
def test_direct_path_equals_conv2d_with_its_padding_argument(mode, kernel):
    """The direct path ("full": padded first) gives conv2d's own padding result (odd kernels: the same
    pads on both sides), float32 to rounding, in the shape of the slow path (one 56 x 56 image, 10 PSFs)."""
    images = torch.rand(1, 1, 56, 56, generator=torch.Generator().manual_seed(5))
    psfs = torch.rand(10, 1, kernel, kernel, generator=torch.Generator().manual_seed(6))
    padding = kernel - 1 if mode == "full" else kernel // 2
    old = torch.nn.functional.conv2d(images, psfs.flip(-2, -1), padding=padding)
    torch.testing.assert_close(direct_conv2d(images, psfs, mode=mode), old, rtol=1e-5, atol=1e-4)


def test_the_automatic_path_follows_the_cost_model_deterministically(monkeypatch):
    """Small kernels on a batch go direct, large ones through the FFT (with the fitted costs); the
    choice depends on the shapes and dtype only, and the result is the chosen path's, bit for bit."""
    small, large = ((16, 1, 112, 112), (32, 1, 5, 5)), ((1, 1, 112, 112), (32, 1, 31, 31))
    assert auto_method(*small, "full") == "direct" and auto_method(*large, "full") == "fft"
    work = conv_work((2, 3, 10, 12), (4, 3, 5, 3), "valid")
    assert work["direct"] == 2 * 4 * 3 * 6 * 10 * 5 * 3
    images, psfs = _rand(2, 1, 40, 40), _rand(6, 1, 9, 9, seed=2)
    chosen = auto_method(images.shape, psfs.shape, "same", f64)
    other = "fft" if chosen == "direct" else "direct"
    assert torch.equal(optical_conv2d(images, psfs), optical_conv2d(images, psfs, method=chosen))
    # costs that make the other path free: auto follows them
    costs = {f64: {chosen: (1.0, 1.0), other: (0.0, 0.0)}}
    monkeypatch.setattr(conv_module, "CONV_COST", costs)
    assert auto_method(images.shape, psfs.shape, "same", f64) == other
    assert torch.equal(optical_conv2d(images, psfs), optical_conv2d(images, psfs, method=other))

def test_split_signed():
    k = torch.tensor([[-2.0, 0.0, 3.0]], dtype=f64)
    pos, neg = split_signed(k)
    assert pos.tolist() == [[0.0, 0.0, 3.0]] and neg.tolist() == [[2.0, 0.0, 0.0]]


def test_psf_stack_order_and_features_equal_signed_convolution():
    kernels = _rand(3, 2, 5, 5) - 0.5
    layer = IncoherentConv2d.from_kernels(kernels)
    psfs = layer.psfs()
    assert psfs.shape == (6, 2, 5, 5) and bool((psfs >= 0).all())
    for i in range(3):
        torch.testing.assert_close(psfs[2 * i], kernels[i].clamp(min=0))
        torch.testing.assert_close(psfs[2 * i + 1], (-kernels[i]).clamp(min=0))
    images = _rand(4, 2, 12, 12, seed=9)
    torch.testing.assert_close(layer(images), direct_conv2d(images, kernels), rtol=0, atol=1e-12)


def test_frame_output_places_each_psf_image_in_its_tile():
    kernels = _rand(2, 1, 3, 3) - 0.5
    layout = TileLayout(2, 2, (10, 10), gap_px=2, origin_px=(1, 1))
    layer = IncoherentConv2d.from_kernels(kernels, output="frame", layout=layout)
    images = _rand(3, 1, 10, 10, seed=1)
    frame = layer(images)
    assert frame.shape == (3, *layout.frame_shape)
    intensities = direct_conv2d(images, layer.psfs())
    for p in range(4):
        rs, cs = layout.tile_slices(p)
        torch.testing.assert_close(frame[:, rs, cs], intensities[:, p], rtol=0, atol=1e-12)
    # default layout: near-square grid of 2m tiles of the output size
    default = IncoherentConv2d.from_kernels(kernels, output="frame")(images)
    assert default.shape == (3, 20, 20)


def test_psf_transform_is_applied_before_convolution():
    kernels = _rand(2, 1, 3, 3) - 0.5
    layer = IncoherentConv2d.from_kernels(kernels, psf_transform=lambda p: 2.0 * p.flip(0))
    images = _rand(2, 1, 8, 8, seed=3)
    # flipping the stack swaps k+ and k- of mirrored kernels: features = -2 * (kernels reversed)
    torch.testing.assert_close(layer(images), -2.0 * direct_conv2d(images, kernels.flip(0)), rtol=0, atol=1e-12)


def test_sensor_applies_to_intensities_before_subtracting():
    sensor = SensorModel(gain_e_per_dn=3.0, bit_depth=8, noise=False)
    kernels = _rand(2, 1, 3, 3) - 0.5
    layer = IncoherentConv2d.from_kernels(kernels, sensor=sensor)
    images = 40 * _rand(2, 1, 8, 8, seed=3)
    intensities = direct_conv2d(images, layer.psfs())
    expected = sensor(intensities[:, 0::2]) - sensor(intensities[:, 1::2])
    torch.testing.assert_close(layer(images), expected, rtol=0, atol=0)
    binned = IncoherentConv2d.from_kernels(kernels, output="frame", sensor=SensorModel(input_pitch_m=1.0, pixel_pitch_m=2.0))
    assert binned(images, generator=torch.Generator().manual_seed(0)).shape == (2, 8, 8)


def test_gradcheck_layer_wrt_kernels_and_input():
    layer = IncoherentConv2d(2, 2, 3, method="fft", dtype=f64, seed=3)
    kernels = layer.kernels.detach().clone().requires_grad_()
    images = _rand(2, 2, 5, 5).requires_grad_()
    func = lambda x, k: torch.func.functional_call(layer, {"weight": k}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(func, (images, kernels), fast_mode=True)
    sensor = SensorModel(gain_e_per_dn=2.0, offset_dn=1.0, noise=False)  # differentiable stages only
    frame_layer = IncoherentConv2d(1, 2, 3, output="frame", method="fft", sensor=sensor, dtype=f64, seed=4)
    kernels = frame_layer.kernels.detach().clone().requires_grad_()
    func = lambda x, k: torch.func.functional_call(frame_layer, {"weight": k}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(func, (_rand(1, 1, 5, 5).requires_grad_(), kernels), fast_mode=True)


@pytest.mark.parametrize("method", ["fft", "direct"])
def test_per_sample_jacobians_vectorise_with_vmap(method):
    # NTK code takes per-sample Jacobians with vmap(jacrev(...)): the layer must not branch on values there
    layer = IncoherentConv2d(1, 2, 3, method=method, dtype=f64, seed=1)
    params = {"weight": layer.weight.detach()}
    images = _rand(3, 1, 6, 6)

    def single(p, x):
        return torch.func.functional_call(layer, p, (x[None],)).reshape(-1)

    batched = torch.func.vmap(torch.func.jacrev(single), in_dims=(None, 0))(params, images)["weight"]
    looped = torch.stack([torch.func.jacrev(single)(params, x)["weight"] for x in images])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)


def test_defaults_float32_and_seeded_init():
    a, b, c = IncoherentConv2d(3, 4, 7, seed=1), IncoherentConv2d(3, 4, 7, seed=1), IncoherentConv2d(3, 4, 7, seed=2)
    assert a.kernels.dtype == torch.float32 and a.kernels.shape == (4, 3, 7, 7)
    assert torch.equal(a.kernels, b.kernels) and not torch.equal(a.kernels, c.kernels)
    assert float(a.kernels.detach().abs().max()) <= (3 * 49) ** -0.5
    assert a(torch.rand(2, 3, 16, 16)).dtype == torch.float32
    assert IncoherentConv2d.from_kernels(_rand(1, 1, 3, 3)).kernels.dtype == f64


def test_bad_input_is_named():
    images, psfs = _rand(1, 2, 8, 8), _rand(3, 2, 3, 3)
    with pytest.raises(InputError, match="images must have 4 dims"):
        fft_conv2d(images[0], psfs)
    with pytest.raises(InputError, match="channels"):
        fft_conv2d(images, psfs[:, :1])
    with pytest.raises(InputError, match="NaN"):
        fft_conv2d(images * float("nan"), psfs)
    with pytest.raises(InputError, match="floating"):
        direct_conv2d(images.long(), psfs)
    with pytest.raises(InputError, match="dtype"):
        fft_conv2d(images.float(), psfs)
    with pytest.raises(InputError, match="mode"):
        fft_conv2d(images, psfs, mode="circular")
    with pytest.raises(InputError, match="valid"):
        fft_conv2d(images[..., :2, :2], psfs, mode="valid")
    with pytest.raises(InputError, match="method"):
        optical_conv2d(images, psfs, method="winograd")
    with pytest.raises(InputError, match="kernel_size"):
        IncoherentConv2d(1, 2, 0)
    with pytest.raises(InputError, match="out_kernels"):
        IncoherentConv2d(1, 0, 3)
    with pytest.raises(InputError, match="output"):
        IncoherentConv2d(1, 2, 3, output="logits")
    with pytest.raises(InputError, match="capacity"):
        IncoherentConv2d(1, 2, 3, layout=TileLayout(1, 3, (8, 8)))
    layer = IncoherentConv2d(1, 2, 3, output="frame", layout=TileLayout(2, 2, (5, 5)))
    with pytest.raises(InputError, match="tile shape"):
        layer(torch.rand(1, 1, 8, 8))
    with pytest.raises(InputError, match="channels"):
        layer(torch.rand(1, 3, 5, 5))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images, psfs = _rand(2, 3, 28, 28), _rand(8, 3, 15, 15, seed=1)
    cpu = fft_conv2d(images, psfs)
    gpu = fft_conv2d(images.cuda(), psfs.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)
    layer = IncoherentConv2d(3, 4, 7, device="cuda", sensor=SensorModel(read_noise_e=1.0))
    out = layer(images.float().cuda(), generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.shape == (2, 4, 28, 28)
