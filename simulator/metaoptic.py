"""Meta-optic PSF design: a phase mask whose incoherent PSF, binned to kernel pixels, matches a kernel.

Recipe (the group's design code, docs/method.md#meta-optic-psf-design): a normally incident plane
wave passes a sub-optic's phase mask (square aperture of ``aperture_px`` meta-atoms at
``spacing_m``), propagates ``distance_m`` to the sensor by the band-limited angular spectrum
(:func:`simulator.propagation.propagate_asm`); the intensity's central ``k * magnification_px`` square is binned into ``k x k``
kernel pixels (each kernel pixel = ``magnification_px`` simulation pixels per side), normalised to
sum 1 and compared with the target kernel normalised to sum 1. Adam (lr 5e-3, ~500 steps in the
paper) minimises the mean squared difference, summed over wavelengths.

Centring: the square aperture is the block of ``aperture_px`` cells starting at ``n//2 - aperture_px//2``
and :func:`binned_psf`'s window the block of ``k * magnification_px`` pixels starting at ``n//2 -
window//2``: an odd block is centred on the axis pixel ``n//2`` (the :class:`~simulator.field.Grid`,
lens and Zernike convention), an even one half a cell towards -y/-x of it, since no cell is its centre.
The sub-optic's axis is the aperture's centre (:func:`aperture_center_m`): the lens start and the
Zernike wavefront are centred there, so a clear aperture with a lens start focuses on it, which is the
centre of a window of the aperture's parity.

Error figure: ``nrmse = ||psf - target||_2 / ||target||_2`` per wavelength, both normalised to sum 1
over the ``k x k`` window. ``window_efficiency`` = power in the kernel window / power leaving the
aperture (light scattered elsewhere, or beyond the simulation window, is lost).

Measured (float32, CPU): a 3x3 blob, 32 px aperture, 586 nm grid, 120 um, 6 px per kernel pixel,
lr 5e-3, random start: nrmse < 1e-3 after 150 steps (tests), but only ~40 % of the light in the
window; a lens start (``init="lens"``) keeps ~87 % in the window but reaches only nrmse ~0.2 in 300
steps at this lr (the loss only sees the normalised shape, not the efficiency). 16 random 7x7 PSFs,
48 px aperture, 150 um, 500 steps (``examples/simulator_demo.py``): median nrmse 0.063, max 0.093,
window efficiency ~4 %.

The paper's size (1600 px aperture on a 586 nm grid, 2.4 mm, 20 px per kernel pixel) is supported but
slow on CPU; tests use 32-64 px apertures. :func:`aberrated_design_psf` re-images a design with an
extra Zernike wavefront in its pupil (the exact counterpart of the fabrication cascade model).

Meta-atom model
---------------
:class:`MetaAtomModel` maps a pillar radius to a transmitted phase with a **model, not measured
data**: a cylindrical pillar of index ``n_pillar`` and height ``height_m`` in a square cell of side
``period_m`` is replaced by a homogeneous layer whose permittivity is the area-weighted mean
(zeroth-order effective-medium theory), ``n_eff(r)^2 = f n_pillar^2 + (1 - f) n_surround^2`` with fill
factor ``f = pi r^2 / period^2``; the phase relative to an empty cell is
``phi(r, lambda) = 2 pi (n_eff(r) - n_surround) height / lambda``. It is smooth, monotone increasing
in ``r`` and differentiable; it ignores waveguide resonances, coupling between neighbouring atoms and
amplitude variation (transmission 1), which a measured or FDTD library would capture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from onn_core.errors import InputError
from .field import Field, Grid
from .propagation import propagate_asm
from .sampling import as_wavelengths
from .validation import check_positive, check_tensor
from .zernike import wavefront_to_phase, zernike_wavefront

PARAMETRISATIONS = ("phase", "radius")


@dataclass(frozen=True)
class MetaAtomModel:
    """Pillar radius (m) -> transmitted phase (rad), effective-medium model (module docstring).

    Defaults describe a TiO2-like pillar (n = 2.4, dispersion ignored) 700 nm tall on a 350 nm cell,
    radii 50..160 nm: a phase range of 0.98 / 1.17 / 1.38 waves at 635 / 532 / 450 nm. For
    ``parametrisation="radius"`` the period must equal the design grid's spacing.
    """

    n_pillar: float = 2.4
    n_surround: float = 1.0
    height_m: float = 700e-9
    period_m: float = 350e-9
    min_radius_m: float = 50e-9
    max_radius_m: float = 160e-9

    def __post_init__(self):
        for name in ("n_pillar", "n_surround", "height_m", "period_m", "min_radius_m", "max_radius_m"):
            check_positive(name, getattr(self, name))
        if self.n_pillar <= self.n_surround:
            raise InputError(f"n_pillar ({self.n_pillar}) must exceed n_surround ({self.n_surround})")
        if not self.min_radius_m < self.max_radius_m <= self.period_m / 2:
            raise InputError(f"radii must satisfy min_radius_m < max_radius_m <= period_m / 2, got "
                             f"{self.min_radius_m}, {self.max_radius_m}, period {self.period_m}")

    def phase(self, radius_m: torch.Tensor, wavelengths_m) -> torch.Tensor:
        """Phase (rad) of pillars of ``radius_m`` (any shape, metres) at each wavelength: shape
        ``(L, *radius_m.shape)``."""
        check_tensor("radius_m", radius_m)
        wavelengths = torch.tensor(as_wavelengths(wavelengths_m), dtype=radius_m.dtype, device=radius_m.device)
        fill = math.pi * radius_m**2 / self.period_m**2
        n_eff = torch.sqrt(fill * self.n_pillar**2 + (1 - fill) * self.n_surround**2)
        optical_path = (n_eff - self.n_surround) * self.height_m
        return 2 * math.pi * optical_path / wavelengths.view(-1, *([1] * radius_m.ndim))

    def phase_range(self, wavelength_m: float) -> float:
        """Phase span (rad) between the smallest and the largest pillar at one wavelength."""
        radii = torch.tensor([self.min_radius_m, self.max_radius_m], dtype=torch.float64)
        phases = self.phase(radii, wavelength_m)[0]
        return float(phases[1] - phases[0])


def square_aperture(grid: Grid, aperture_px: int, dtype=torch.float32) -> torch.Tensor:
    """1 on the ``aperture_px`` x ``aperture_px`` cells starting at ``n // 2 - aperture_px // 2`` on each
    axis, 0 elsewhere (rows, cols); its centre is :func:`aperture_center_m` (module docstring)."""
    rows, cols = grid.shape
    top, left = rows // 2 - aperture_px // 2, cols // 2 - aperture_px // 2
    aperture = torch.zeros(grid.shape, dtype=dtype)
    aperture[top:top + aperture_px, left:left + aperture_px] = 1
    return aperture


def aperture_center_m(grid: Grid, aperture_px: int) -> tuple[float, float]:
    """Centre (y, x) in metres of :func:`square_aperture`: the axis pixel ``n // 2`` (``grid.center_m``)
    for an odd ``aperture_px``, half a cell towards -y and -x (between pixels ``n//2 - 1`` and ``n//2``)
    for an even one. The sub-optic's optical axis: lens and Zernike phases are centred here."""
    offset = 0.0 if aperture_px % 2 else 0.5
    return (grid.center_m[0] - offset * grid.spacing_m[0], grid.center_m[1] - offset * grid.spacing_m[1])


def aperture_wavefront_m(grid: Grid, aperture_px: int, zernike_m: torch.Tensor) -> torch.Tensor:
    """Wavefront ``sum_j c_j Z_j`` (metres) over a :func:`square_aperture`, (..., rows, cols) for
    ``zernike_m`` (..., J) (Noll, metres RMS over the unit disk).

    The Zernike disk is the aperture's circumscribed circle: radius = half the diagonal,
    ``aperture_px * spacing / sqrt(2)``, centred on :func:`aperture_center_m`, so the corners sit at
    ``rho = 1`` and every cell of the aperture carries phase. Over the square the modes are not
    orthonormal: the square covers ``2 / pi = 64 %`` of the disk, and a mode's spread over the square
    is not 1 (e.g. ``Z4`` has a mean of -0.58 and a standard deviation of 0.73 there).
    """
    check_tensor("zernike_m", zernike_m, min_ndim=1)
    if grid.spacing_m[0] != grid.spacing_m[1]:
        raise InputError(f"a square aperture needs a grid with square cells, got spacing_m={grid.spacing_m}")
    radius = aperture_px * grid.spacing_m[0] / math.sqrt(2.0)
    return zernike_wavefront(zernike_m, grid, radius, center_m=aperture_center_m(grid, aperture_px))


class PhaseMask(nn.Module):
    """A trainable sub-optic: square aperture of ``aperture_px`` cells centred on ``grid``.

    Parameters
    ----------
    grid : Grid
        Simulation grid (cell spacing = meta-atom period), at least ``aperture_px`` per side.
    wavelengths_m : sequence of float
        Wavelengths (m) the mask is evaluated at.
    aperture_px : int
        Side of the square aperture, in cells.
    batch : int
        Number of independent masks (designed in one batched optimisation).
    parametrisation : "phase" | "radius"
        ``"phase"``: a free phase ``phi_0`` (rad) at the first wavelength; other wavelengths get
        ``phi_0 lambda_0 / lambda`` (a thin, non-dispersive plate). ``"radius"``: pillar radii
        ``r = r_min + (r_max - r_min) sigmoid(u)`` with ``u`` trainable, phase from ``atom_model``.
    atom_model : MetaAtomModel or None
        For ``"radius"`` (default model when None).
    init_focal_length_m : float or None
        Start from a lens focusing at this distance on the aperture's axis (:func:`aperture_center_m`;
        phase wrapped to [0, 2 pi), for ``"radius"`` projected on the atoms' range); None: uniformly
        random phase from ``seed``.
    seed : int
        Seeds the random start.
    """

    def __init__(self, grid: Grid, wavelengths_m, aperture_px: int, *, batch: int = 1,
                 parametrisation: str = "phase", atom_model: MetaAtomModel | None = None,
                 init_focal_length_m: float | None = None, seed: int = 0, dtype=torch.float32):
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise InputError(f"parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
        if isinstance(aperture_px, bool) or not isinstance(aperture_px, int) or not 1 <= aperture_px <= min(grid.shape):
            raise InputError(f"aperture_px must be an int in 1..{min(grid.shape)} (the grid), got {aperture_px!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be an int >= 1, got {batch!r}")
        self.grid, self.wavelengths_m = grid, as_wavelengths(wavelengths_m)
        self.aperture_px, self.parametrisation = aperture_px, parametrisation
        self.atom_model = atom_model or MetaAtomModel()
        cell_m = self.atom_model.period_m
        if parametrisation == "radius" and not all(math.isclose(d, cell_m, rel_tol=1e-9) for d in grid.spacing_m):
            raise InputError(f"parametrisation='radius' needs one meta-atom per grid cell: atom_model.period_m "
                             f"({cell_m}) must equal the grid spacing {grid.spacing_m}")
        self.register_buffer("aperture", square_aperture(grid, aperture_px, dtype))
        if init_focal_length_m is None:
            generator = torch.Generator().manual_seed(seed)
            start = 2 * math.pi * torch.rand((batch, *grid.shape), generator=generator, dtype=torch.float64)
        else:
            y, x = grid.mesh(torch.float64)
            cy, cx = aperture_center_m(grid, aperture_px)
            f = check_positive("init_focal_length_m", init_focal_length_m)
            k0 = 2 * math.pi / self.wavelengths_m[0]
            r2 = (x - cx) ** 2 + (y - cy) ** 2
            start = torch.remainder(-k0 * (torch.sqrt(r2 + f**2) - f), 2 * math.pi).expand(batch, *grid.shape)
        if parametrisation == "phase":
            self.phase0 = nn.Parameter(start.to(dtype).clone())
        else:
            self.logits = nn.Parameter(self._phase_to_logits(start).to(dtype))

    def _phase_to_logits(self, phase: torch.Tensor) -> torch.Tensor:
        """Invert the atom model at the first wavelength (clamped to the reachable range)."""
        model = self.atom_model
        radii = torch.linspace(model.min_radius_m, model.max_radius_m, 1025, dtype=torch.float64)
        table = model.phase(radii, self.wavelengths_m[0])[0]
        wrapped = table[0] + torch.remainder(phase - table[0], 2 * math.pi)
        index = torch.searchsorted(table, wrapped.clamp(max=float(table[-1])).contiguous()).clamp(1, len(radii) - 1)
        fraction = ((radii[index] - model.min_radius_m) / (model.max_radius_m - model.min_radius_m)).clamp(1e-4, 1 - 1e-4)
        return torch.logit(fraction)

    def radii_m(self) -> torch.Tensor:
        """Pillar radii (batch, rows, cols) in metres (``"radius"`` parametrisation only)."""
        if self.parametrisation != "radius":
            raise InputError("radii_m() needs parametrisation='radius'")
        model = self.atom_model
        return model.min_radius_m + (model.max_radius_m - model.min_radius_m) * torch.sigmoid(self.logits)

    def phase(self) -> torch.Tensor:
        """Transmitted phase (batch, L, rows, cols) in radians."""
        if self.parametrisation == "radius":
            return self.atom_model.phase(self.radii_m(), self.wavelengths_m).movedim(0, 1)
        scale = torch.tensor([self.wavelengths_m[0] / w for w in self.wavelengths_m], dtype=self.phase0.dtype,
                             device=self.phase0.device)
        return self.phase0[:, None] * scale[:, None, None]

    def forward(self) -> Field:
        """The field just behind the mask for a unit plane wave: data (batch, L, rows, cols)."""
        data = self.aperture * torch.exp(1j * self.phase())
        return Field(data, self.grid, self.wavelengths_m)


@dataclass
class DesignResult:
    """Outcome of :func:`design_psf` (B targets, L wavelengths, k x k kernels).

    phase: (B, L, n, n) transmitted phase (rad); radii_m: (B, n, n) or None; psf: (B, L, k, k)
    binned PSF normalised to sum 1; target: (B, k, k) normalised to sum 1; nrmse: (B, L);
    window_efficiency: (B, L); loss_history: one float per step; grid: the simulation grid.
    """

    phase: torch.Tensor
    psf: torch.Tensor
    target: torch.Tensor
    nrmse: torch.Tensor
    window_efficiency: torch.Tensor
    loss_history: list[float]
    grid: Grid
    radii_m: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)


def binned_psf(field_at_sensor: Field, kernel_size: int, magnification_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin the central ``k * m`` square of the intensity into ``k x k`` pixels.

    Returns the binned PSF normalised to sum 1 (..., L, k, k) and the window's power
    ``sum |E|^2 dy dx`` (..., L) (W when ``|E|^2`` is in W/m^2).
    """
    intensity = field_at_sensor.intensity
    window = kernel_size * magnification_px
    rows, cols = intensity.shape[-2:]
    top, left = rows // 2 - window // 2, cols // 2 - window // 2
    crop = intensity[..., top:top + window, left:left + window]
    binned = crop.reshape(*crop.shape[:-2], kernel_size, magnification_px, kernel_size, magnification_px).sum(dim=(-3, -1))
    in_window = binned.sum(dim=(-2, -1))
    return binned / in_window[..., None, None], in_window * field_at_sensor.grid.pixel_area_m2


def design_psf(target_kernel: torch.Tensor, wavelengths_m, *, aperture_px: int, spacing_m: float,
               distance_m: float, magnification_px: int = 20, steps: int = 500, lr: float = 5e-3, seed: int = 0,
               parametrisation: str = "phase", atom_model: MetaAtomModel | None = None,
               init: str = "random", dtype=torch.float32, device=None, progress=None) -> DesignResult:
    """Optimise a phase mask so that its binned PSF matches ``target_kernel``.

    Parameters
    ----------
    target_kernel : (k, k) or (B, k, k) tensor, non-negative
        Target kernel(s); B targets are designed at once (independent masks, summed losses: with
        Adam this equals B separate runs).
    wavelengths_m : float or sequence
        Design wavelengths (m); the loss is summed over them.
    aperture_px, spacing_m : int, float
        Aperture side in cells and the cell (grid) spacing in metres. The grid is
        ``max(aperture_px, k * magnification_px)`` cells per side.
    distance_m : float
        Metasurface-to-sensor distance (m).
    magnification_px : int
        Simulation pixels per kernel pixel (per side).
    steps, lr, seed : Adam steps, learning rate, random seed (random init and the run).
    parametrisation, atom_model : see :class:`PhaseMask`.
    init : "lens" | "random"
        Start from a lens focusing at ``distance_m`` (the light starts in the central kernel pixel) or
        from a random phase.
    progress : callable or None
        Called as ``progress(step, loss)`` after each step (e.g. a tqdm update).

    Returns
    -------
    DesignResult
    """
    target = check_tensor("target_kernel", target_kernel, ndim=(2, 3)).detach()
    if target.shape[-1] != target.shape[-2]:
        raise InputError(f"target_kernel must be square (k, k), got shape {tuple(target.shape)}")
    if float(target.min()) < 0 or bool((target.sum(dim=(-2, -1)) <= 0).any()):
        raise InputError("target_kernel must be non-negative with a positive sum (split signed kernels first)")
    for name, value in (("aperture_px", aperture_px), ("magnification_px", magnification_px), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    if init not in ("lens", "random"):
        raise InputError(f"init must be 'lens' or 'random', got {init!r}")
    check_positive("spacing_m", spacing_m)
    check_positive("distance_m", distance_m)
    check_positive("lr", lr)
    batched = target if target.ndim == 3 else target[None]
    k = batched.shape[-1]
    n = max(aperture_px, k * magnification_px)
    grid = Grid.square(n, spacing_m)
    device = torch.device(device) if device is not None else target.device
    goal = (batched / batched.sum(dim=(-2, -1), keepdim=True)).to(dtype=dtype, device=device)
    mask = PhaseMask(grid, wavelengths_m, aperture_px, batch=batched.shape[0], parametrisation=parametrisation,
                     atom_model=atom_model, init_focal_length_m=distance_m if init == "lens" else None, seed=seed,
                     dtype=dtype).to(device)
    optimiser = torch.optim.Adam(mask.parameters(), lr=lr)
    history = []

    def evaluate():
        return binned_psf(propagate_asm(mask(), distance_m), k, magnification_px)

    for step in range(steps):
        optimiser.zero_grad()
        psf, _ = evaluate()
        loss = (psf - goal[:, None]).square().mean(dim=(-2, -1)).sum()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress(step, history[-1])
    with torch.no_grad():
        psf, window_power = evaluate()
        efficiency = window_power / mask().power()
        nrmse = (psf - goal[:, None]).flatten(-2).norm(dim=-1) / goal[:, None].flatten(-2).norm(dim=-1)
        phase = mask.phase()
        radii = mask.radii_m() if parametrisation == "radius" else None
    squeeze = (lambda t: t[0]) if target.ndim == 2 else (lambda t: t)
    return DesignResult(
        phase=squeeze(phase), psf=squeeze(psf), target=squeeze(goal), nrmse=squeeze(nrmse),
        window_efficiency=squeeze(efficiency), loss_history=history, grid=grid,
        radii_m=None if radii is None else squeeze(radii),
        settings=dict(wavelengths_m=list(as_wavelengths(wavelengths_m)), aperture_px=aperture_px, spacing_m=spacing_m,
                      distance_m=distance_m, magnification_px=magnification_px, steps=steps, lr=lr, seed=seed,
                      parametrisation=parametrisation, init=init),
    )


def aberrated_design_psf(result: DesignResult, zernike_m: torch.Tensor) -> torch.Tensor:
    """The binned PSF of the designed mask(s) with an extra wavefront ``sum_j c_j Z_j`` (Noll, metres
    RMS) over the aperture: the physical counterpart of the cascade model in :mod:`simulator.fabrication`.
    The Zernike disk circumscribes the square aperture (radius = half its diagonal, see
    :func:`aperture_wavefront_m`), so the corners carry phase too. ``zernike_m`` is (J,) or (B, J) for B
    designs; returns the PSF normalised to sum 1, shaped like ``result.psf``."""
    settings = result.settings
    phase = result.phase if result.phase.ndim == 4 else result.phase[None]
    coeffs = check_tensor("zernike_m", zernike_m, ndim=(1, 2))
    coeffs = coeffs.expand(phase.shape[0], -1) if coeffs.ndim == 1 else coeffs
    if coeffs.shape[0] != phase.shape[0]:
        raise InputError(f"zernike_m has {coeffs.shape[0]} rows but the result holds {phase.shape[0]} designs")
    grid, aperture_px = result.grid, settings["aperture_px"]
    wavefront = aperture_wavefront_m(grid, aperture_px, coeffs.to(torch.float64))
    extra = wavefront_to_phase(wavefront, settings["wavelengths_m"]).to(phase.dtype)
    aperture = square_aperture(grid, aperture_px, phase.dtype).to(phase.device)
    field = Field(aperture * torch.exp(1j * (phase + extra.to(phase.device))), grid,
                  settings["wavelengths_m"])
    psf, _ = binned_psf(propagate_asm(field, settings["distance_m"]), result.psf.shape[-1], settings["magnification_px"])
    return psf if result.phase.ndim == 4 else psf[0]
