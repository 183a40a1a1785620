"""Fabrication-error model: identity, analytic geometric transforms, blur, aberration, gradients,
persistence and seeding."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from onn_core.errors import ConfigError, InputError
from simulator.fabrication import (
    AberrationOptics,
    ErrorSpec,
    FabricationErrors,
    aberration_transfer,
    aberration_transfer_derivatives,
    apply_frame_errors,
    apply_psf_errors,
    exchanged_light,
    filter_psfs,
)
from simulator.field import Grid
from simulator.layout import TileLayout
from simulator.pupil import circular_pupil
from simulator.zernike import zernike_wavefront

D = torch.float64


def gaussian(k, sigma, centre=(0.0, 0.0)):
    axis = torch.arange(k, dtype=D) - k // 2
    y, x = axis[:, None] - centre[0], axis[None, :] - centre[1]
    return torch.exp(-(y**2 + x**2) / (2 * sigma**2))


def random_psfs(p=3, c=2, k=9, seed=0):
    return torch.rand((p, c, k, k), generator=torch.Generator().manual_seed(seed), dtype=D)


def full_spec():
    return ErrorSpec(brightness_rel_std=0.1, shift_std_px=0.4, rotation_std_rad=0.02, magnification_rel_std=0.02,
                     blur_sigma_max_px=0.6, zernike_std_m=(0.0, 2e-8, 2e-8, 5e-8), kernel_error_rms=0.05,
                     crosstalk=0.01, vignetting_poly=(-0.1, 0.02), vignetting_tan_edge=0.3, background=2.5,
                     background_gradient_std=0.01)


def test_identity_errors_leave_psfs_and_frames_bit_exact():
    psfs = random_psfs()
    errors = FabricationErrors.identity(3)
    assert torch.equal(apply_psf_errors(psfs, errors), psfs)
    layout = TileLayout.for_count(3, (5, 6), gap_px=2)
    frame = torch.rand((2, *layout.frame_shape), dtype=D, generator=torch.Generator().manual_seed(0))
    assert torch.equal(apply_frame_errors(frame, errors, layout), frame)


@pytest.mark.parametrize("method", ["bilinear", "fourier"])
def test_integer_shift_is_a_translation_on_the_interior(method):
    psfs = random_psfs(p=1, c=1, k=11)
    errors = FabricationErrors(1, shift_px=torch.tensor([[2.0, -3.0]]), shift_method=method)
    out = apply_psf_errors(psfs, errors)
    expected = psfs[..., :-2, 3:]
    got = out[..., 2:, :-3]
    if method == "bilinear":
        assert torch.equal(got, expected)
        assert torch.all(out[..., :2, :] == 0) and torch.all(out[..., :, -3:] == 0)
    else:
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_subpixel_fourier_shift_of_band_limited_gaussian_is_analytic():
    shift = (0.37, -0.61)
    psf = gaussian(31, 2.0)[None, None]  # spectrum at Nyquist ~3e-9, tails at the window edge ~1e-12
    errors = FabricationErrors(1, shift_px=torch.tensor([shift], dtype=D), shift_method="fourier")
    out = apply_psf_errors(psf, errors)[0, 0]
    torch.testing.assert_close(out, gaussian(31, 2.0, centre=shift), atol=1e-8, rtol=0)
    # the bilinear sampler moves the centroid exactly, but is only accurate to second order in shape
    bilinear = apply_psf_errors(psf, FabricationErrors(1, shift_px=torch.tensor([shift], dtype=D)))[0, 0]
    axis = torch.arange(31, dtype=D) - 15
    centroid = ((bilinear.sum(1) * axis).sum() / bilinear.sum(), (bilinear.sum(0) * axis).sum() / bilinear.sum())
    torch.testing.assert_close(torch.stack(centroid), torch.tensor(shift, dtype=D), atol=1e-9, rtol=0)
    # linear-interpolation bound: h^2/8 max|f''| per axis, f'' <= 1/sigma^2 for a unit-peak Gaussian
    assert (bilinear - gaussian(31, 2.0, centre=shift)).abs().max() < 2 * (1 / 8) * (1 / 2.0**2)


def test_rotation_by_90_degrees_equals_rot90():
    psfs = random_psfs(p=2, c=1, k=9)
    errors = FabricationErrors(2, rotation_rad=torch.tensor([math.pi / 2, -math.pi / 2], dtype=D))
    out = apply_psf_errors(psfs, errors)
    torch.testing.assert_close(out[0], torch.rot90(psfs[0], 1, dims=(-2, -1)), atol=1e-12, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(psfs[1], -1, dims=(-2, -1)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("m", [0.8, 1.3])
def test_magnification_preserves_energy_and_scales_the_second_moment(m):
    psf = gaussian(41, 3.0)[None, None]
    out = apply_psf_errors(psf, FabricationErrors(1, magnification=torch.tensor([m])))[0, 0]
    assert abs(out.sum() / psf.sum() - 1) < 1e-3
    axis = torch.arange(41, dtype=D) - 20
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    var_in, var_out = (r2 * psf[0, 0]).sum() / psf.sum(), (r2 * out).sum() / out.sum()
    assert abs(var_out / var_in - m**2) < 0.02 * m**2


def test_brightness_scales_energy_exactly():
    psfs = random_psfs()
    alpha = torch.tensor([0.5, 1.25, 2.0], dtype=D)
    out = apply_psf_errors(psfs, FabricationErrors(3, brightness=alpha))
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), alpha * psfs.sum(dim=(1, 2, 3)), rtol=1e-15, atol=0)


def test_blur_of_a_delta_is_the_discrete_gaussian():
    """Oracle: the discrete Gaussian exp(-t) I_n(t) per axis (scipy's exponentially scaled Bessel)."""
    from scipy.special import ive

    k, sigma = 11, 1.3
    delta = torch.zeros((1, 1, k, k), dtype=D)
    delta[..., k // 2, k // 2] = 1
    out = apply_psf_errors(delta, FabricationErrors(1, blur_sigma_px=torch.tensor([sigma], dtype=D)))[0, 0]
    axis = torch.from_numpy(ive(np.arange(k) - k // 2, sigma**2))
    torch.testing.assert_close(out, axis[:, None] * axis[None, :], atol=1e-12, rtol=0)


def test_blur_changes_linearly_with_its_variance_from_zero():
    """d PSF / d(sigma^2) at sigma = 0 is half the discrete Laplacian of the PSF (the discrete Gaussian's
    generator), so a fit can start at no blur."""
    psfs = random_psfs(p=1, c=1, k=7)
    padded = torch.nn.functional.pad(psfs, (1, 1, 1, 1))
    laplacian = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
                 - 4 * psfs)
    variance = 1e-7
    blurred = apply_psf_errors(psfs, FabricationErrors(1, blur_sigma_px=torch.tensor([variance**0.5], dtype=D)))
    torch.testing.assert_close((blurred - psfs) / variance, laplacian / 2, atol=1e-5 * float(psfs.max()), rtol=0)


NYQUIST_OPTICS = AberrationOptics(wavelengths_m=(500e-9,), f_number=4.0, pixel_pitch_m=1e-6)


def test_zernike_with_zero_coefficients_is_identity_even_when_trainable():
    psfs = random_psfs(p=2, c=1, k=7)
    errors = FabricationErrors(2, num_zernike=6, aberration=NYQUIST_OPTICS).make_trainable("zernike_m")
    out = apply_psf_errors(psfs, errors)
    # to rounding: H = OTF_ab / OTF_dl divides two equal but tiny values next to the pupil's cut-off
    torch.testing.assert_close(out, psfs, atol=1e-10 * float(psfs.max()), rtol=0)


def test_defocus_broadens_the_psf_monotonically_and_conserves_energy():
    # pixel = lambda F#: the whole pixel-frequency grid lies inside the pupil's cutoff
    optics = AberrationOptics(wavelengths_m=(500e-9,), f_number=2.0, pixel_pitch_m=1e-6)
    k = 15
    delta = torch.zeros((1, 1, k, k), dtype=D)
    delta[..., k // 2, k // 2] = 1
    axis = torch.arange(k, dtype=D) - k // 2
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    moments = []
    for defocus_waves in (0.0, 0.1, 0.2, 0.3):
        z = torch.zeros((1, 4), dtype=D)
        z[0, 3] = defocus_waves * 500e-9  # Noll j=4: defocus
        out = apply_psf_errors(delta, FabricationErrors(1, zernike_m=z, num_zernike=4, aberration=optics))[0, 0]
        transfer = aberration_transfer(z, optics, 1, k, D)
        # energy: the impulse response's share on the window's lags (its far tail leaves the window)
        assert 0.99 < float(transfer[..., 0, 0].real) <= 1 + 1e-12 and abs(float(transfer[..., 0, 0].imag)) < 1e-12
        assert float(transfer.abs().max()) <= 1 + 1e-9  # the aberrated MTF never beats the clear pupil's
        moments.append(float((r2 * out).sum()))
    assert moments[0] < 1e-12
    assert all(b > a for a, b in zip(moments, moments[1:])), moments


def test_aberration_of_a_diffraction_limited_psf_gives_the_aberrated_psf():
    """The case where the cascade is exact: design PSF = clear-pupil PSF (module docstring)."""
    wavelength, f_number, pitch = 500e-9, 2.5, 0.5e-6  # lambda F# = 2.5 pixels: no aliasing
    n = 512
    grid = Grid.square(n, 2.0 / (n * pitch / (wavelength * f_number)))  # focal sampling = one pixel
    pupil = circular_pupil(grid, 1.0, dtype=D)

    def sampled_psf(coeffs):
        field = pupil * torch.exp(2j * math.pi * zernike_wavefront(coeffs, grid, 1.0) / wavelength)
        intensity = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(field))).abs() ** 2
        window = slice(n // 2 - 15, n // 2 + 16)
        return (intensity / intensity.sum())[window, window]

    z = torch.zeros((1, 6), dtype=D)
    z[0, 3], z[0, 5] = 0.07 * wavelength, 0.04 * wavelength  # defocus and astigmatism
    clear, aberrated = sampled_psf(torch.zeros(6, dtype=D)), sampled_psf(z[0])
    errors = FabricationErrors(1, zernike_m=z, num_zernike=6, aberration=AberrationOptics((wavelength,), f_number, pitch))
    out = apply_psf_errors(clear[None, None], errors)[0, 0]
    assert float((clear - aberrated).abs().max()) > 0.2 * float(aberrated.max())  # the aberration matters
    assert float((out - aberrated).abs().max()) < 0.01 * float(aberrated.max())  # measured 0.4 %


def reference_impulse_response(coeffs, wavelength, f_number, pitch, k, oversampling):
    """The aberration filter's impulse response at lags |d| <= k-1, independently in numpy: the inverse DFT
    of OTF_ab / OTF_dl at the pixel frequencies of an ``oversampling * (2k-1)``-point grid (1 beyond the
    cutoff), each OTF the zero-padded (unwrapped) FFT autocorrelation of the sampled pupil."""
    m = oversampling * (2 * k - 1)
    n_diameter = pitch / (wavelength * f_number) * m  # one pixel-frequency step = one pupil sample
    n = int(math.ceil(n_diameter) + m // 2 + 8)  # holds every lag used without wrapping
    grid = Grid.square(n, 2.0 / n_diameter)
    pupil = circular_pupil(grid, 1.0, dtype=D).numpy()
    w = zernike_wavefront(torch.as_tensor(coeffs, dtype=D), grid, 1.0).numpy()

    def otf(field):
        spectrum = np.fft.fft2(field)
        return np.fft.ifft2(np.abs(spectrum) ** 2)

    ab, dl = otf(pupil * np.exp(2j * np.pi * w / wavelength)), otf(pupil.astype(complex))
    index = np.fft.fftfreq(m, 1.0 / m).astype(int) % n
    ab, dl = ab[np.ix_(index, index)], dl[np.ix_(index, index)]
    passband = np.abs(dl) > 1e-9 * np.abs(dl[0, 0])
    ratio = np.where(passband, ab / np.where(passband, dl, 1.0), 1.0)
    impulse = np.fft.ifft2(ratio).real
    crop = np.fft.fftfreq(2 * k - 1, 1.0 / (2 * k - 1)).astype(int) % m
    return np.fft.fftshift(impulse[np.ix_(crop, crop)])  # lag 0 at [k-1, k-1]


def test_aberration_filter_is_the_linear_convolution_with_the_unwrapped_impulse_response():
    """The example optics' case (pixel pitch > lambda F#): a wide, slowly decaying impulse response that a
    2K-1 DFT grid wraps by up to 8e-4 of its peak."""
    wavelength, f_number, pitch, k = 532e-9, 2.5, 3.45e-6, 11
    coeffs = [0.0, 0.0, 0.0, 3e-8, 1.5e-8, 1.5e-8, 2e-8]  # defocus, astigmatism, coma
    reference = reference_impulse_response(coeffs, wavelength, f_number, pitch, k, oversampling=21)
    psfs = random_psfs(p=1, c=1, k=k, seed=4)
    expected = scipy.signal.convolve2d(psfs[0, 0].numpy(), reference, mode="full")[k - 1:2 * k - 1, k - 1:2 * k - 1]
    for oversampling, bound in ((3, 1.3e-3), (5, 8e-4)):  # measured 9.9e-4, 5.4e-4; on the 2K-1 grid 3.3e-3
        optics = AberrationOptics((wavelength,), f_number, pitch, impulse_oversampling=oversampling)
        errors = FabricationErrors(1, zernike_m=torch.tensor([coeffs], dtype=D), num_zernike=7, aberration=optics)
        out = apply_psf_errors(psfs, errors)[0, 0].numpy()
        assert np.abs(out - expected).max() < bound * expected.max(), oversampling
    assert AberrationOptics().impulse_oversampling == 3
    # Energy: a point at the centre of the window keeps the impulse response's share inside the window
    # (here 1.0009: it has negative lobes beyond), and H(0) = 1 leaves only a far tail beyond 2K-1 lags.
    delta = torch.zeros((1, 1, k, k), dtype=D)
    delta[..., k // 2, k // 2] = 1
    kept = float(apply_psf_errors(delta, errors).sum())
    inside = reference[k // 2:k // 2 + k, k // 2:k // 2 + k].sum()
    assert abs(kept - inside) < 4e-4 and abs(kept - 1) > 5e-4
    assert abs(reference.sum() - 1) < 1e-3


def test_aberration_filter_is_the_reference_impulse_response_at_the_same_oversampling_to_rounding():
    """The OTFs from the pupil's power spectrum, transformed only at the lags used (one-sided, Hermitian),
    equal the full zero-padded FFT autocorrelation of the numpy reference on the same grid (pixel pitch
    above lambda F#, and at half of it: the pupil's cutoff at the band's edge)."""
    coeffs = [0.0, 0.0, 0.0, 3e-8, -1.5e-8, 1.5e-8, 2e-8]
    cases = ((532e-9, 2.5, 3.45e-6, 11, 3), (532e-9, 2.5, 3.45e-6, 11, 5), (500e-9, 2.0, 0.5e-6, 7, 5))
    for wavelength, f_number, pitch, k, oversampling in cases:
        reference = reference_impulse_response(coeffs, wavelength, f_number, pitch, k, oversampling=oversampling)
        optics = AberrationOptics((wavelength,), f_number, pitch, impulse_oversampling=oversampling)
        transfer = aberration_transfer(torch.tensor([coeffs], dtype=D), optics, 1, k, D)[0, 0]
        impulse = torch.fft.fftshift(torch.fft.ifft2(transfer).real).numpy()
        np.testing.assert_allclose(impulse, reference, rtol=0, atol=1e-10 * np.abs(reference).max())


def test_aberration_transfer_derivatives_equal_central_differences():
    """The closed-form derivative of every PSF's transfer by its own Zernike coefficient (one FFT per
    mode) equals the central difference moving that coefficient of all PSFs at once (a PSF's transfer
    depends on its own coefficients only), to 1e-7 relative; the transfer returned beside it is
    :func:`aberration_transfer` exactly. Two channels of different wavelengths, coma included."""
    optics = AberrationOptics((532e-9, 633e-9), 2.5, 3.45e-6)
    z = torch.tensor([[0.0, 0.0, 0.0, 3e-8, 1.5e-8, -1e-8, 2e-8], [0.0, 0.0, 0.0, -2e-8, 0.0, 2.5e-8, -1e-8]], dtype=D)
    modes, k, h = (3, 5, 6), 7, 1e-11
    transfer, derivatives = aberration_transfer_derivatives(z, optics, 2, k, D, modes)
    assert torch.equal(transfer, aberration_transfer(z, optics, 2, k, D))
    assert derivatives.shape == (3, 2, 2, 2 * k - 1, 2 * k - 1)
    for i, mode in enumerate(modes):
        step = torch.zeros_like(z)
        step[:, mode] = h
        difference = (aberration_transfer(z + step, optics, 2, k, D) - aberration_transfer(z - step, optics, 2, k, D)) / (2 * h)
        error = float((derivatives[i] - difference).abs().max() / difference.abs().max())
        assert error < 1e-7, (mode, error)


def test_aberration_filter_convolves_linearly_without_wrapping():
    """``filter_psfs`` with a transfer of a kernel on lags |d| <= K-1 equals the direct linear convolution."""
    k = 7
    kernel = torch.rand((2 * k - 1, 2 * k - 1), generator=torch.Generator().manual_seed(5), dtype=D)
    psfs = random_psfs(p=1, c=1, k=k, seed=6)
    transfer = torch.fft.fft2(torch.fft.ifftshift(kernel))
    out = filter_psfs(psfs, transfer)[0, 0].numpy()
    expected = scipy.signal.convolve2d(psfs[0, 0].numpy(), kernel.numpy(), mode="full")[k - 1:2 * k - 1, k - 1:2 * k - 1]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_aberration_needs_one_wavelength_per_channel():
    errors = FabricationErrors(1, zernike_m=torch.tensor([[0.0, 0.0, 0.0, 1e-8]]), num_zernike=4,
                               aberration=AberrationOptics(wavelengths_m=(450e-9, 532e-9)))
    with pytest.raises(InputError, match="wavelengths_m"):
        apply_psf_errors(random_psfs(p=1, c=3, k=5), errors)


def test_gradcheck_every_psf_error_parameter_and_the_psfs():
    p, c, k = 2, 1, 5
    psfs = (random_psfs(p, c, k) + 0.1).requires_grad_()
    args = dict(
        brightness=torch.tensor([1.1, 0.9], dtype=D),
        shift_px=torch.tensor([[0.3, -0.2], [0.15, 0.4]], dtype=D),
        rotation_rad=torch.tensor([0.1, -0.05], dtype=D),
        magnification=torch.tensor([1.05, 0.97], dtype=D),
        blur_sigma_px=torch.tensor([0.7, 0.4], dtype=D),
        kernel_error=0.05 * random_psfs(p, c, k, seed=3) - 0.025,
    )
    names, leaves = list(args), [v.clone().requires_grad_() for v in args.values()]
    zernike = torch.tensor([[0.0, 1.0, -1.0, 3.0], [0.0, 0.0, 2.0, 1.0]], dtype=D, requires_grad=True)  # x 1e-8 m

    def every_stage(psfs, *values):
        errors = FabricationErrors(p, **dict(zip(names, values)))
        return apply_psf_errors(psfs, errors)

    def aberration_with_blur(psfs, zernike_1e8, blur):
        errors = FabricationErrors(p, zernike_m=zernike_1e8 * 1e-8, num_zernike=4, blur_sigma_px=blur,
                                   aberration=NYQUIST_OPTICS)
        return apply_psf_errors(psfs, errors)

    def fourier(psfs, shift):
        return apply_psf_errors(psfs, FabricationErrors(p, shift_px=shift, shift_method="fourier"))

    assert torch.autograd.gradcheck(every_stage, (psfs, *leaves), eps=1e-6, atol=1e-7, fast_mode=True)
    assert torch.autograd.gradcheck(aberration_with_blur, (psfs, zernike, leaves[names.index("blur_sigma_px")]),
                                    eps=1e-6, atol=1e-7, fast_mode=True)
    assert torch.autograd.gradcheck(fourier, (psfs, leaves[names.index("shift_px")]), eps=1e-6, atol=1e-7,
                                    fast_mode=True)


def test_gradcheck_every_frame_error_parameter():
    layout = TileLayout(2, 2, (3, 4), gap_px=1)
    frame = torch.rand((1, *layout.frame_shape), dtype=D, generator=torch.Generator().manual_seed(1)).requires_grad_()
    values = [torch.tensor(v, dtype=D, requires_grad=True) for v in (0.02, [-0.1, 0.03], 0.3, 1.5, [0.01, -0.02])]
    names = ["crosstalk", "vignetting_poly", "vignetting_tan_edge", "background", "background_gradient"]

    def fn(frame, *vals):
        return apply_frame_errors(frame, FabricationErrors(4, **dict(zip(names, vals))), layout)

    assert torch.autograd.gradcheck(fn, (frame, *values), eps=1e-6, atol=1e-8)


def test_crosstalk_conserves_energy_and_leaks_into_neighbours_only():
    layout = TileLayout(2, 3, (2, 2), gap_px=1)
    tiles = torch.zeros((1, 6, 2, 2), dtype=D)
    tiles[0, 0] = 1.0  # top-left tile lit; neighbours: tile 1 (right) and tile 3 (below)
    out = apply_frame_errors(layout.assemble(tiles), FabricationErrors(6, crosstalk=torch.tensor(0.1)), layout)
    got = layout.extract(out)[0, :, 0, 0]
    torch.testing.assert_close(got, torch.tensor([0.8, 0.1, 0.0, 0.1, 0.0, 0.0], dtype=D))
    torch.testing.assert_close(out.sum(), torch.tensor(4.0, dtype=D))


def test_vignetting_and_background_follow_their_formulas():
    layout = TileLayout(1, 1, (5, 7))
    frame = torch.ones((1, 5, 7), dtype=D)
    errors = FabricationErrors(1, vignetting_tan_edge=torch.tensor(0.5), vignetting_poly=torch.tensor([-0.2, 0.0]),
                               background=torch.tensor(3.0), background_gradient=torch.tensor([0.1, 0.0]))
    out = apply_frame_errors(frame, errors, layout)[0]
    assert out[2, 3] == pytest.approx(1.0 + 3.0)  # centre: no vignetting, no gradient
    corner = (1 - 0.2) / (1 + 0.25) ** 2 + 3.0 + 0.1 * 2  # rho = 1 at the corner, row offset +2
    assert out[4, 6] == pytest.approx(corner)


def test_yaml_round_trip_is_exact(tmp_path):
    errors = FabricationErrors.sample(4, full_spec(), seed=7, kernel_shape=(1, 7, 7), shift_method="fourier",
                                      aberration=AberrationOptics((633e-9,), 3.3, 2.2e-6))
    errors.to_yaml(tmp_path / "errors.yaml")
    back = FabricationErrors.from_yaml(tmp_path / "errors.yaml")
    assert back.shift_method == "fourier" and back.aberration == errors.aberration
    assert set(back.tensors()) == set(errors.tensors())
    for name, tensor in errors.tensors().items():
        assert torch.equal(back.tensors()[name], tensor), name


def test_sampling_is_seeded():
    a = FabricationErrors.sample(5, full_spec(), seed=1, kernel_shape=(1, 7, 7))
    b = FabricationErrors.sample(5, full_spec(), seed=1, kernel_shape=(1, 7, 7))
    c = FabricationErrors.sample(5, full_spec(), seed=2, kernel_shape=(1, 7, 7))
    for name in a.tensors():
        assert torch.equal(a.tensors()[name], b.tensors()[name]), name
    assert not torch.equal(a.shift_px, c.shift_px) and not torch.equal(a.kernel_error, c.kernel_error)
    assert float(a.kernel_error.std()) == pytest.approx(0.05, rel=0.2)


def test_make_trainable_exposes_parameters_for_a_fit():
    errors = FabricationErrors.identity(2).make_trainable("shift_px", "brightness")
    assert {n for n, _ in errors.named_parameters()} == {"shift_px", "brightness"}
    given = FabricationErrors(2, rotation_rad=torch.nn.Parameter(torch.zeros(2, dtype=D)))
    assert [n for n, _ in given.named_parameters()] == ["rotation_rad"]
    psfs = random_psfs(p=2, c=1, k=5)
    weights = torch.rand(psfs.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    with torch.no_grad():
        errors.shift_px.fill_(0.25)  # off the pixel grid, where bilinear resampling is smooth
        errors.brightness.copy_(torch.tensor([0.9, 1.2], dtype=D))

    def loss():
        return (apply_psf_errors(psfs, errors) * weights).sum()

    loss().backward()
    grads = {name: getattr(errors, name).grad.clone() for name in ("shift_px", "brightness")}
    # the gradients the fit would follow are the loss's: central differences agree
    eps = 1e-6
    for name, index in (("shift_px", (0, 1)), ("shift_px", (1, 0)), ("brightness", (1,))):
        tensor = getattr(errors, name)
        with torch.no_grad():
            tensor[index] += eps
            up = float(loss())
            tensor[index] -= 2 * eps
            down = float(loss())
            tensor[index] += eps
        assert float(grads[name][index]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9), (name, index)
    assert float(grads["shift_px"].abs().min()) > 0 and float(grads["brightness"].abs().min()) > 0


def test_bad_input_names_the_field():
    with pytest.raises(ConfigError, match="fabrication.errors.brightness"):
        FabricationErrors.from_dict({"num_psfs": 2, "errors": {"brightness": [1.0, 2.0, 3.0]}})
    with pytest.raises(ConfigError, match="fabrication.errors.bogus"):
        FabricationErrors.from_dict({"num_psfs": 2, "errors": {"bogus": 1.0}})
    with pytest.raises(ConfigError, match="fabrication.num_psfs"):
        FabricationErrors.from_dict({"num_psfs": 0})
    with pytest.raises(ConfigError, match=r"fabrication\.aberration.*f_number"):
        FabricationErrors.from_dict({"num_psfs": 1, "aberration": {"f_number": -2.0}})
    with pytest.raises(ConfigError, match="shift_std_px"):
        ErrorSpec.from_dict({"shift_std_px": -1.0})
    with pytest.raises(InputError, match=r"wavelengths_m\[1\]"):
        AberrationOptics(wavelengths_m=(5e-7, -1.0))
    for bad in (4, 0, 2.0, True):
        with pytest.raises(InputError, match=rf"impulse_oversampling must be an odd int >= 1.*got {bad!r}"):
            AberrationOptics(impulse_oversampling=bad)
    with pytest.raises(ConfigError, match=r"fabrication\.aberration.*impulse_oversampling"):
        FabricationErrors.from_dict({"num_psfs": 1, "aberration": {"impulse_oversampling": 2}})
    with pytest.raises(InputError, match="psfs hold 3"):
        apply_psf_errors(random_psfs(), FabricationErrors.identity(2))
    with pytest.raises(InputError, match="kernel_shape"):
        FabricationErrors.sample(2, ErrorSpec(kernel_error_rms=0.1), seed=0)
    with pytest.raises(InputError, match="rotation_rad"):
        FabricationErrors(2, rotation_rad=torch.zeros(3))


def test_exchanged_light_matches_the_frame_crosstalk():
    """Each tile's light after crosstalk, computed from the PSFs' lights alone, equals the light of the
    tiles of a frame through apply_frame_errors (a 2 x 3 grid with 5 PSFs: corner, edge, empty slot)."""
    layout = TileLayout(2, 3, (3, 3), gap_px=1)
    light = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=D)
    tiles = torch.zeros((1, 6, 3, 3), dtype=D)
    tiles[0, :5, 1, 1] = light
    crosstalk = torch.tensor(0.04, dtype=D)
    frame = apply_frame_errors(layout.assemble(tiles), FabricationErrors(5, crosstalk=crosstalk), layout)
    expected = layout.extract(frame)[0, :5].sum(dim=(-2, -1))
    torch.testing.assert_close(exchanged_light(light, crosstalk, layout), expected)
    # by hand: tile 0 (neighbours 1 and 3) keeps 1 - 2 c and gains c of each
    assert float(exchanged_light(light, crosstalk, layout)[0]) == pytest.approx(1.0 * 0.92 + 0.04 * (2.0 + 3.0))
