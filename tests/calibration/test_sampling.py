"""The shifts' sampling systematic (calibration.sampling) and how the fit states it."""

from __future__ import annotations

import h5py
import numpy as np
import numpy.lib.recfunctions as rfn
import pytest
import torch

from calibration.fit import FitSettings, MismatchFit, fit_mismatch
from calibration.sampling import linearised_shift_error, sampling_pull_px, shift_systematic_px
from onn_core.errors import InputError
from simulator.fabrication import AberrationOptics, affine_resample
from tests.calibration.test_fit import measure, nominal

D = torch.float64


def optics(spot_px: float) -> AberrationOptics:
    """Optics whose lambda F# is ``spot_px`` pixels of 3.45 um at 532 nm."""
    return AberrationOptics(wavelengths_m=(532e-9,), f_number=spot_px * 3.45e-6 / 532e-9, pixel_pitch_m=3.45e-6)


def psfs(count: int = 4, seed: int = 0) -> torch.Tensor:
    """Random non-negative 7 x 7 PSFs in a 15 x 15 window."""
    core = torch.rand(count, 1, 7, 7, generator=torch.Generator().manual_seed(seed), dtype=D)
    return torch.nn.functional.pad(core, (4, 4, 4, 4))


def test_the_linearised_geometry_model_recovers_a_move_it_contains():
    """A target that IS the template moved (by a shift off the fitted one), slightly rotated and
    magnified: one Gauss-Newton step returns the shift's offset (the bilinear model is linear in a
    shift within a pixel cell up to the dy dx cross term, ~1e-6 px here)."""
    template = psfs()
    shift = torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.35, 0.05], [0.2, 0.2]], dtype=D)
    offset = torch.tensor([[2e-3, -1e-3], [-1.5e-3, 5e-4], [1e-3, 1e-3], [0.0, -2e-3]], dtype=D)
    target = affine_resample(template, torch.full((4,), 1e-4, dtype=D), torch.full((4,), 1.0 + 1e-4, dtype=D),
                             shift + offset)
    np.testing.assert_allclose(linearised_shift_error(template, target, shift).numpy(), offset.numpy(), atol=2e-5)


def test_a_whole_pixel_move_is_the_model_and_a_fraction_is_not():
    """Moved by whole pixels, the binned pattern IS the template moved (what the model does): no error;
    over sub-pixel moves an under-sampled PSF (lambda F# = 0.62 px) is placed off by hundredths of a
    pixel."""
    template = psfs()
    whole = torch.tensor([[1.0, -2.0]] * 4, dtype=D)
    moved = affine_resample(template, torch.zeros(4, dtype=D), torch.ones(4, dtype=D), whole)
    assert float(linearised_shift_error(template, moved, whole).abs().max()) < 1e-12
    assert float(shift_systematic_px(psfs(), optics(0.62)).min()) > 0.01


def test_the_systematic_falls_as_the_psf_becomes_well_sampled():
    """Speckle grains of 0.62 px lock the shift towards whole pixels far more than a PSF sampled at
    lambda F# = 5 px, whose structure the pixel values resolve (only the bilinear model's own
    interpolation error is left)."""
    under = shift_systematic_px(psfs(), optics(0.62))
    well = shift_systematic_px(psfs(), optics(5.0))
    assert float(under.median()) > 1.5 * float(well.median())


def test_a_dark_psf_has_no_systematic_and_leaves_the_others_as_they_were():
    """A PSF with no light (a signed kernel without negative values leaves its k- PSF dark) has nothing to
    place: 0, and the lit PSFs' values are those computed without it."""
    lit = psfs(3)
    with_dark = torch.cat([lit[:1], torch.zeros_like(lit[:1]), lit[1:]])
    out = shift_systematic_px(with_dark, optics(0.62), draws=4)
    assert torch.equal(out[1], torch.zeros(2, dtype=D))
    assert torch.equal(out[[0, 2, 3]], shift_systematic_px(lit, optics(0.62), draws=4))


def test_seeded():
    first = shift_systematic_px(psfs(), optics(0.62), draws=4, seed=3)
    assert torch.equal(first, shift_systematic_px(psfs(), optics(0.62), draws=4, seed=3))
    assert not torch.equal(first, shift_systematic_px(psfs(), optics(0.62), draws=4, seed=4))


@pytest.mark.parametrize("kwargs, message", [
    ({"draws": 0}, "draws must be an int >= 1"),
    ({"psfs": torch.zeros(4, 1, 7, 9, dtype=D)}, "psfs must be \\(P, C, K, K\\)"),
    ({"optics": AberrationOptics(wavelengths_m=(5e-7, 6e-7, 7e-7, 8e-7))}, "4 wavelengths for 1 channels"),
])
def test_bad_input_is_named(kwargs, message):
    args = {"psfs": psfs(), "optics": optics(0.62), **kwargs}
    with pytest.raises(InputError, match=message):
        shift_systematic_px(**args)


def test_the_fit_adds_the_systematic_to_the_shift_sigmas_only(tmp_path):
    """Same fit with and without the systematic: equal values, equal sigmas except the shifts', whose
    sigma^2 is the noise's plus the systematic's (that of the fitted shapes);
    the calibration file keeps it."""
    measurement, _ = measure({"seed": 5, "spec": {"shift_std_px": 0.3, "brightness_rel_std": 0.1}}, averages=2)
    plain = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",), sampling_draws=0))
    fit = fit_mismatch(measurement, nominal(), settings=FitSettings(stages=("geometry",), sampling_draws=8))
    assert all(p.systematic == 0.0 and p.sampling_pull == 0.0 for p in plain.parameters)
    np.testing.assert_array_equal(plain.misregistration_px(), plain.errors.shift_px.numpy())
    for a, b in zip(fit.parameters, plain.parameters):
        assert (a.name, a.value) == (b.name, b.value)
        if a.kind == "shift_px":
            assert a.systematic > 0 and a.sigma == pytest.approx(np.hypot(b.sigma, a.systematic), rel=1e-12)
        else:
            assert a.systematic == 0.0 and a.sigma == b.sigma and a.sampling_pull == 0.0
    system = nominal()
    shaped = torch.nn.functional.pad(system.design.psfs().double(), (system.geometry.psf_margin_px,) * 4)
    expected = shift_systematic_px(shaped, FitSettings().aberration, draws=8)
    stated = np.array([[p.systematic for p in fit.parameters if p.name == f"shift_px[{i}][{a}]"][0]
                       for i in range(system.num_psfs) for a in range(2)])
    np.testing.assert_allclose(stated, expected.reshape(-1).numpy(), rtol=1e-5)  # shapes at identity: to rounding
    # the pull of the fitted shifts, and the misregistration stated without it
    pull = sampling_pull_px(shaped, fit.errors.shift_px, FitSettings().aberration, draws=8).numpy()
    assert np.abs(pull).max() > 1e-3
    np.testing.assert_allclose(np.reshape([p.sampling_pull for p in fit.parameters if p.kind == "shift_px"], pull.shape),
                               pull, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(fit.misregistration_px(), fit.errors.shift_px.numpy()
                                  - np.reshape([p.sampling_pull for p in fit.parameters if p.kind == "shift_px"], (-1, 2)))
    with h5py.File(tmp_path / "fit.h5", "w") as f:
        fit.to_hdf5(f.create_group("fit"))
    with h5py.File(tmp_path / "fit.h5", "r") as f:
        back = MismatchFit.from_hdf5(f["fit"])
    assert [p.systematic for p in back.parameters] == [p.systematic for p in fit.parameters]
    assert [p.sampling_pull for p in back.parameters] == [p.sampling_pull for p in fit.parameters]
    # a file written before the pull (its parameter table without the column) reads with none
    with h5py.File(tmp_path / "fit.h5", "r+") as f:
        table = f["fit/parameters"][()]
        del f["fit/parameters"]
        f["fit"].create_dataset("parameters", data=rfn.drop_fields(table, "sampling_pull"), fletcher32=True)
    with h5py.File(tmp_path / "fit.h5", "r") as f:
        older = MismatchFit.from_hdf5(f["fit"])
    assert [p.sampling_pull for p in older.parameters] == [0.0] * len(fit.parameters)
    assert [p.systematic for p in older.parameters] == [p.systematic for p in fit.parameters]
    np.testing.assert_array_equal(older.misregistration_px(), fit.errors.shift_px.numpy())


def test_bad_sampling_draws_are_named():
    with pytest.raises(InputError, match="sampling_draws must be an int >= 0"):
        FitSettings(sampling_draws=-1)


def test_a_whole_pixel_fitted_shift_has_no_pull():
    """At a whole-pixel shift the binned speckle moves as the model moves it: no pull at 0; elsewhere
    only what the Monte Carlo's periodic window wraps around its edge (the model pads with zeros)."""
    whole = torch.tensor([[1.0, -2.0], [0.0, 0.0], [3.0, 1.0], [-1.0, 0.0]], dtype=D)
    pull = sampling_pull_px(psfs(), whole, optics(0.62), draws=4)
    assert float(pull[1].abs().max()) < 1e-12 and float(pull.abs().max()) < 1e-3
    assert float(sampling_pull_px(psfs(), whole + 0.25, optics(0.62), draws=4).abs().max()) > 1e-2


def _speckle_device(envelope: np.ndarray, spot_px: float, u: int, shift: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """An independent numpy device: band-limited speckle (square pupil, coherent cut-off 1 / (2 spot) per
    axis) under ``envelope`` (P, K, K), sampled ``u`` times per pixel; binned as it is and moved by
    ``shift`` (P, 2) px by a Fourier phase ramp."""
    p, k, _ = envelope.shape
    freq = np.fft.fftfreq(k * u, d=1.0 / u)
    pupil = (np.abs(freq)[:, None] <= 0.5 / spot_px) & (np.abs(freq)[None, :] <= 0.5 / spot_px)
    amplitude = np.sqrt(np.kron(envelope, np.ones((u, u))))
    field = np.fft.ifft2(np.fft.fft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape))) * pupil)
    fine = np.abs(field) ** 2
    ramp = np.exp(-2j * np.pi * (shift[:, 0, None, None] * freq[:, None] + shift[:, 1, None, None] * freq[None, :]))
    moved = np.fft.ifft2(np.fft.fft2(fine) * ramp).real
    binned = lambda x: x.reshape(p, k, u, k, u).sum(axis=(2, 4))
    return binned(fine), binned(moved)


def test_subtracting_the_pull_brings_fitted_shifts_of_speckle_closer_to_the_truth():
    """Under-sampled speckle (lambda F# = 0.62 px) of an independent numpy generator, moved by known
    sub-pixel shifts and placed by the geometry model fitted to convergence: the fitted shifts are pulled
    towards whole pixels (their error anti-correlates with the true sub-pixel fraction); less the pull
    (from the envelope alone, not the device's speckle), the RMS error falls by over a fifth."""
    rng = np.random.default_rng(11)
    envelope = psfs(count=24, seed=2)[:, 0].numpy()
    truth = rng.uniform(-0.5, 0.5, size=(24, 2))
    template, moved = _speckle_device(envelope, 0.62, 4, truth, rng)
    template, moved = (torch.tensor(x, dtype=D)[:, None] for x in (template, moved))
    fitted = torch.zeros(24, 2, dtype=D)
    for _ in range(30):  # Gauss-Newton to convergence
        fitted = fitted + linearised_shift_error(template, moved, fitted)
    before = fitted.numpy() - truth
    assert np.corrcoef(before.ravel(), truth.ravel())[0, 1] < -0.2
    pull = sampling_pull_px(torch.tensor(envelope, dtype=D)[:, None], fitted, optics(0.62), draws=16)
    after = (fitted - pull).numpy() - truth
    assert np.sqrt(np.mean(after**2)) < 0.8 * np.sqrt(np.mean(before**2))


def test_a_bad_fitted_shift_is_named():
    with pytest.raises(InputError, match=r"fitted_shift_px must be \(P, 2\) = \(4, 2\), got \(4, 3\)"):
        sampling_pull_px(psfs(), torch.zeros(4, 3, dtype=D), optics(0.62))


def test_the_pull_of_colour_psfs_has_one_value_per_psf_and_axis():
    """Three channels (one wavelength each): the pull is (P, 2), none at zero shift, some at a
    quarter pixel; a shift of half a pixel less the pull still lies within the pixel's cell."""
    rgb = AberrationOptics(wavelengths_m=(635e-9, 532e-9, 450e-9), f_number=4.0, pixel_pitch_m=3.45e-6)
    colour = torch.nn.functional.pad(torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=D),
                                     (4, 4, 4, 4))
    assert float(sampling_pull_px(colour, torch.zeros(4, 2, dtype=D), rgb, draws=4).abs().max()) < 1e-12
    quarter = sampling_pull_px(colour, torch.full((4, 2), 0.25, dtype=D), rgb, draws=4)
    assert quarter.shape == (4, 2) and float(quarter.abs().max()) > 1e-2
    half = 0.5 - sampling_pull_px(colour, torch.full((4, 2), 0.5, dtype=D), rgb, draws=4)
    assert float(half.min()) > 0.0 and float(half.max()) < 1.0
