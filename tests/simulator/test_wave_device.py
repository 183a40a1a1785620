"""The wave-optics device (simulator.wave_device, simulator.wave_masks): seeded, reproduces its design
without errors, each fabrication error acts in its physical direction, light is never created, and
the optics YAML builds it (errors.model: wave)."""

import math

import numpy as np
import pytest
import torch

from onn_core.errors import ConfigError, InputError
from simulator.design import random_signed_kernels, signed_kernels_to_psfs
from simulator.metaoptic import square_aperture
from simulator.system import OpticalSystem
from simulator.wave_device import (WaveDevice, WaveErrors, WaveErrorSpec, correlated_phase_noise, eroded_aperture,
                                   translate, wave_psfs)
from simulator.wave_masks import WaveOptics, design_masks

PITCH = 3.45e-6
#: Shape error (nrmse of the window normalised to sum 1) the retrieval reaches on these designs; the
#: example design's 16 PSFs reach a median of 0.04 (docs/method.md).
SHAPE_TOLERANCE = 0.08


def random_design():
    return signed_kernels_to_psfs(random_signed_kernels(2, 5, 1, 0))  # 4 PSFs (1, 5, 5), float64


def point_design():
    psf = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    psf[0, 0, 2, 2] = 0.5
    return psf


def window(psfs, k):
    n = psfs.shape[-1]
    start = n // 2 - k // 2
    return psfs[..., start:start + k, start:start + k]


def second_moment_px2(psf):
    """Mean squared distance (px^2) from the centroid of a (N, N) intensity."""
    y, x = torch.meshgrid(torch.arange(psf.shape[-2], dtype=torch.float64),
                          torch.arange(psf.shape[-1], dtype=torch.float64), indexing="ij")
    total = psf.sum()
    cy, cx = (psf * y).sum() / total, (psf * x).sum() / total
    return float((psf * ((y - cy) ** 2 + (x - cx) ** 2)).sum() / total)


def centroid_px(psf):
    y, x = torch.meshgrid(torch.arange(psf.shape[-2], dtype=torch.float64),
                          torch.arange(psf.shape[-1], dtype=torch.float64), indexing="ij")
    return np.array([float((psf * y).sum() / psf.sum()), float((psf * x).sum() / psf.sum())])


@pytest.fixture(scope="module")
def masks():
    return design_masks(random_design(), WaveOptics(), PITCH)


@pytest.fixture(scope="module")
def point_masks():
    return design_masks(point_design(), WaveOptics(), PITCH)


def test_zero_errors_reproduce_the_design(masks):
    design = random_design()
    psfs = wave_psfs(masks)
    inside = window(psfs, 5)
    # the window carries exactly the design's light, in a shape within the retrieval's tolerance
    torch.testing.assert_close(inside.sum(dim=(-2, -1)), design.sum(dim=(-2, -1)), rtol=1e-5, atol=0)
    shape = inside / inside.sum(dim=(-2, -1), keepdim=True)
    goal = design / design.sum(dim=(-2, -1), keepdim=True)
    nrmse = (shape - goal).flatten(1).norm(dim=1) / goal.flatten(1).norm(dim=1)
    assert float(nrmse.max()) < SHAPE_TOLERANCE
    torch.testing.assert_close(nrmse, masks.nrmse.flatten(), rtol=1e-3, atol=1e-4)
    # intensities, and no more light than the sub-aperture transmits (some leaves the simulated region)
    assert float(psfs.min()) >= 0
    assert bool((psfs.sum(dim=(-2, -1)) <= masks.transmission * (1 + 1e-6)).all())
    assert bool((masks.transmission <= 1).all())


def test_same_seed_same_device_other_seed_another():
    spec = WaveErrorSpec(shift_std_px=0.2, phase_noise_rms_rad=0.3, zernike_std_m=(0, 0, 0, 20e-9))
    design = random_design()
    first, again = (WaveDevice(design, pixel_pitch_m=PITCH, spec=spec, seed=5) for _ in range(2))
    other = WaveDevice(design, pixel_pitch_m=PITCH, spec=spec, seed=6)
    assert torch.equal(first.sensor_psfs, again.sensor_psfs)
    assert not torch.allclose(first.sensor_psfs, other.sensor_psfs)


@pytest.mark.parametrize("defocus_waves", [0.25, -0.25])
def test_defocus_broadens_the_psf(point_masks, defocus_waves):
    nominal = wave_psfs(point_masks)[0, 0]
    zernike = torch.tensor([[0, 0, 0, defocus_waves * 532e-9]], dtype=torch.float64)
    defocused = wave_psfs(point_masks, WaveErrors(zernike_m=zernike))[0, 0]
    assert second_moment_px2(defocused) > 1.5 * second_moment_px2(nominal)


def test_sensor_distance_error_broadens_the_psf_at_least_by_its_geometric_blur(point_masks):
    nominal = wave_psfs(point_masks)[0, 0]
    dz = 0.1 * point_masks.distance_m
    moved = wave_psfs(point_masks, WaveErrors(distance_error_m=dz))[0, 0]
    # the focused cone (f-number F) cut dz beyond its focus: a disk of radius dz / (2 F), second moment r^2 / 2
    radius_px = dz / (2 * point_masks.optics.f_number) / PITCH
    assert second_moment_px2(moved) - second_moment_px2(nominal) > radius_px**2 / 2


def test_etch_depth_error_moves_light_from_the_pattern_into_the_background(masks):
    nominal = wave_psfs(masks)
    deep = wave_psfs(masks, WaveErrors(height_scale_error=0.3))
    in_window = window(deep, 5).sum(dim=(-2, -1)) / window(nominal, 5).sum(dim=(-2, -1))
    outside = (deep.sum(dim=(-2, -1)) - window(deep, 5).sum(dim=(-2, -1)))
    outside_nominal = nominal.sum(dim=(-2, -1)) - window(nominal, 5).sum(dim=(-2, -1))
    assert bool((in_window < 0.97).all())
    assert bool((outside > outside_nominal).all())
    # a phase error creates no light (part of the unfocused zero order leaves the simulated region)
    assert bool((deep.sum(dim=(-2, -1)) <= nominal.sum(dim=(-2, -1)) * (1 + 1e-6)).all())


def test_aperture_erosion_passes_less_light_in_proportion_to_the_area(masks):
    grid, side = masks.grid, masks.optics.aperture_px
    clear = square_aperture(grid, side, torch.float64)
    torch.testing.assert_close(eroded_aperture(grid, side, 0.0), clear, atol=1e-12, rtol=0)
    half_cell = eroded_aperture(grid, side, grid.spacing_m[0] / 2)
    assert float(half_cell.max()) == 1.0
    assert sorted(set(half_cell.flatten().round(decimals=12).tolist())) == [0.0, 0.25, 0.5, 1.0]
    nominal = wave_psfs(masks).sum(dim=(-2, -1))
    eroded = wave_psfs(masks, WaveErrors(aperture_erosion_m=grid.spacing_m[0])).sum(dim=(-2, -1))
    expected = ((side - 2) / side) ** 2  # one cell off every edge
    torch.testing.assert_close(eroded / nominal, torch.full_like(nominal, expected), rtol=0.02, atol=0)
    with pytest.raises(InputError, match="aperture_erosion_m"):
        eroded_aperture(grid, side, side * grid.spacing_m[0])


def test_translate_moves_a_compact_field_by_whole_cells_exactly():
    field = torch.zeros(1, 1, 16, 16, dtype=torch.complex128)
    field[..., 6:10, 5:9] = torch.randn(4, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    moved = translate(field, torch.tensor([[2.0, -3.0]], dtype=torch.float64))
    expected = torch.zeros_like(field)
    expected[..., 8:12, 2:6] = field[..., 6:10, 5:9]
    torch.testing.assert_close(moved, expected, atol=1e-12, rtol=0)


def test_misregistration_moves_the_psf_by_the_shift(point_masks):
    nominal = wave_psfs(point_masks)[0, 0]
    whole = wave_psfs(point_masks, WaveErrors(shift_px=torch.tensor([[1.0, -2.0]], dtype=torch.float64)))[0, 0]
    # whole pixels: the same PSF one row down and two columns left (away from the region's edges)
    torch.testing.assert_close(whole[3:-2, 2:-3], nominal[2:-3, 4:-1], atol=1e-3 * float(nominal.max()), rtol=0)
    # a fraction of a pixel: the light moves that way, but the pixels integrate it: the binned centroid of a
    # spot smaller than a pixel stays nearer the closest pixel centre than the shift (pixel locking; a
    # bilinear shift of the binned PSF, the cascade's, moves it by exactly the shift)
    shift = np.array([0.4, -0.7])
    moved = wave_psfs(point_masks, WaveErrors(shift_px=torch.from_numpy(shift[None])))[0, 0]
    step = centroid_px(moved) - centroid_px(nominal)
    whole_pixels = np.round(shift)
    assert np.all(np.sign(step) == np.sign(shift))
    assert np.all(np.abs(step - whole_pixels) < np.abs(shift - whole_pixels) - 0.05)


def test_correlated_phase_noise_has_its_rms_and_scatters_light(masks):
    aperture = masks.aperture
    noise = correlated_phase_noise((4, 1), masks.grid, aperture, 0.6, 3e-6, torch.Generator().manual_seed(0))
    inside = noise[..., aperture > 0]
    torch.testing.assert_close(inside.pow(2).mean(dim=-1).sqrt(), torch.full((4, 1), 0.6, dtype=torch.float64))
    torch.testing.assert_close(inside.mean(dim=-1), torch.zeros(4, 1, dtype=torch.float64), atol=1e-12, rtol=0)
    # correlated: neighbouring cells (1.15 um apart) nearly agree for a 3 um correlation length
    step = (noise[..., 1:, :] - noise[..., :-1, :])[..., aperture[1:] * aperture[:-1] > 0]
    assert float(step.pow(2).mean().sqrt()) < 0.3 * 0.6
    nominal = window(wave_psfs(masks), 5)
    noisy = window(wave_psfs(masks, WaveErrors(phase_error_rad=noise)), 5)
    assert bool((noisy.sum(dim=(-2, -1)) < nominal.sum(dim=(-2, -1))).all())  # light scattered out of the window

    def shape_error(psfs):
        goal = random_design() / random_design().sum(dim=(-2, -1), keepdim=True)
        shape = psfs / psfs.sum(dim=(-2, -1), keepdim=True)
        return (shape - goal).flatten(1).norm(dim=1) / goal.flatten(1).norm(dim=1)

    assert bool((shape_error(noisy) > 2 * shape_error(nominal)).all())  # and the pattern distorted


def test_transmission_scales_light_and_never_exceeds_the_aperture(masks):
    nominal = wave_psfs(masks)
    dimmer = wave_psfs(masks, WaveErrors(transmission_scale=torch.full((4,), 0.9, dtype=torch.float64)))
    torch.testing.assert_close(dimmer, 0.9 * nominal)
    brighter = wave_psfs(masks, WaveErrors(transmission_scale=torch.full((4,), 10.0, dtype=torch.float64)))
    assert bool((brighter.sum(dim=(-2, -1)) <= 1.0).all())


def test_every_error_at_once_conserves_energy():
    spec = WaveErrorSpec(shift_std_px=0.5, transmission_rel_std=0.3, height_scale_error=-0.2, phase_noise_rms_rad=0.5,
                         aperture_erosion_m=0.3e-6, zernike_std_m=(0, 30e-9, 30e-9, 40e-9, 20e-9), distance_error_m=3e-6)
    device = WaveDevice(random_design(), pixel_pitch_m=PITCH, spec=spec, seed=2)
    assert float(device.sensor_psfs.min()) >= 0
    assert bool((device.sensor_psfs.sum(dim=(-2, -1)) <= 1.0).all())


def test_fabricate_crops_the_window_and_refuses_another_design():
    design = random_design()
    device = WaveDevice(design, pixel_pitch_m=PITCH)
    narrow, wide = device.fabricate(design, 0), device.fabricate(design, 20)
    assert narrow.shape == (4, 1, 5, 5) and wide.shape == (4, 1, 45, 45)
    torch.testing.assert_close(wide[..., 20:25, 20:25], narrow)
    torch.testing.assert_close(wide.sum(dim=(-2, -1)), device.sensor_psfs.sum(dim=(-2, -1)))
    with pytest.raises(InputError, match="another design"):
        device.fabricate(design * 2, 0)


# ------------------------------------------------------------------------------------- optics YAML
def optics(errors):
    return {"design": {"generator": "random_signed", "num_kernels": 2, "kernel_size": 5, "seed": 0},
            "image_shape": [8, 8], "geometry": {"psf_margin_px": 5}, "dtype": "float64", "errors": errors}


WAVE = {"model": "wave", "seed": 3, "spec": {"shift_std_px": 0.3, "height_scale_error": 0.05,
                                             "zernike_std_m": [0.0, 0.0, 0.0, 20.0e-9]},
        "frame": {"background": 100.0}}


def test_optical_system_with_a_wave_device_renders_frames_and_round_trips():
    system = OpticalSystem.from_config(optics(WAVE)).eval()
    assert isinstance(system.errors, WaveDevice)
    frame = system.render(np.full((8, 8), 255, np.uint8))
    assert frame.dtype == np.uint16 and frame.shape == system.frame_shape and frame.max() > 0
    psfs = system.fabricated_psfs()
    assert not torch.allclose(psfs, OpticalSystem.from_config(optics(None)).fabricated_psfs())
    again = OpticalSystem.from_config(system.to_config())
    assert isinstance(again.errors, WaveDevice) and torch.equal(again.fabricated_psfs(), psfs)
    assert float(system.errors.background) == 100.0


def test_the_cascade_stays_the_default():
    spec = {"seed": 1, "spec": {"shift_std_px": 0.2}}
    explicit = OpticalSystem.from_config(optics({"model": "cascade", **spec}))
    torch.testing.assert_close(explicit.fabricated_psfs(), OpticalSystem.from_config(optics(spec)).fabricated_psfs())


@pytest.mark.parametrize("change, where", [
    ({"model": "waves"}, "optics.errors.model"),
    ({"spec": {"phase_noise_rms_rad": -0.1}}, "optics.errors.spec.phase_noise_rms_rad"),
    ({"spec": {"height_scale_error": -1.0}}, "optics.errors.spec.height_scale_error"),
    ({"spec": {"zernike_std_m": [0.0, "x"]}}, "optics.errors.spec.zernike_std_m[1]"),
    ({"spec": {"blur": 1.0}}, "optics.errors.spec.blur"),
    ({"optics": {"aperture_px": 2}}, "optics.errors.optics.aperture_px"),
    ({"optics": {"wavelengths_m": [-1.0]}}, "optics.errors.optics.wavelengths_m[0]"),
    ({"frame": {"shift_std_px": 0.1}}, "optics.errors.frame.shift_std_px"),
    ({"aberration": {}}, "optics.errors.aberration"),
])
def test_a_bad_field_is_named_by_its_yaml_path(change, where):
    with pytest.raises(ConfigError) as info:
        OpticalSystem.from_config(optics({**WAVE, **change}))
    assert info.value.path == where


def test_wave_spec_values_are_checked_in_python_too():
    with pytest.raises(ConfigError, match="aperture_erosion_m"):
        WaveErrorSpec(aperture_erosion_m=-1e-6)
    assert math.isclose(WaveErrorSpec(distance_error_m=-1e-6).distance_error_m, -1e-6)
    assert WaveErrorSpec(zernike_std_m=[0.0, 1e-8]).zernike_std_m == (0.0, 1e-8)
    with pytest.raises(ConfigError, match=r"zernike_std_m\[1\]"):
        WaveErrorSpec(zernike_std_m=[0.0, -1e-8])
