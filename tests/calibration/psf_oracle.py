"""An independent PSF computation for the phase-retrieval tests (numpy only; imports nothing of the
toolkit): pupil * exp(i 2 pi W / lambda) -> zero-padded FFT -> |.|^2 -> pixels.

Conventions, written out here on their own:

* Pupil sample ``(i, j)`` of an ``(n, n)`` array sits at ``y = (i - n // 2) dx``, ``x = (j - n // 2) dx``
  from the optical axis; ``theta`` is measured from +x (columns) towards +y (rows).
* Noll Zernike modes 1..11 from their explicit formulas (unit RMS over the unit disk).
* The field at a distance ``z`` behind an ideal lens of focal length ``f`` is, paraxially (Fresnel),
  the Fourier transform at scale ``lambda z`` of the pupil field times ``exp(-i pi r^2 / lambda (1/f -
  1/z))``: observing ``dz = z - f`` beyond the focus adds the wavefront ``-(r^2 / 2) (1/f - 1/z)``.
* Focal-plane sample ``k`` of the FFT (after fftshift) sits at ``u = (k - N // 2) lambda z / (N dx)``.
* A camera pixel ``(r, c)`` of a ``(rows, cols)`` window is centred at ``((r - rows // 2) p, (c - cols //
  2) p)`` and records the mean of ``s x s`` point samples of the intensity at its sub-pixel centres
  (``s`` odd), times the pixel area, divided by the total power through the pupil.
"""

from __future__ import annotations

import numpy as np

SQ = np.sqrt


def zernike(j: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Noll mode ``j`` (1..11), unit RMS over the unit disk, not masked."""
    c, s = np.cos, np.sin
    modes = {
        1: lambda: np.ones_like(rho),
        2: lambda: 2 * rho * c(theta),
        3: lambda: 2 * rho * s(theta),
        4: lambda: SQ(3) * (2 * rho**2 - 1),
        5: lambda: SQ(6) * rho**2 * s(2 * theta),
        6: lambda: SQ(6) * rho**2 * c(2 * theta),
        7: lambda: SQ(8) * (3 * rho**3 - 2 * rho) * s(theta),
        8: lambda: SQ(8) * (3 * rho**3 - 2 * rho) * c(theta),
        9: lambda: SQ(8) * rho**3 * s(3 * theta),
        10: lambda: SQ(8) * rho**3 * c(3 * theta),
        11: lambda: SQ(5) * (6 * rho**4 - 6 * rho**2 + 1),
    }
    return modes[j]()


def pupil_coordinates(n: int, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) in metres of an (n, n) pupil array."""
    axis = (np.arange(n) - n // 2) * dx
    return np.meshgrid(axis, axis, indexing="ij")


def disk(n: int, dx: float, radius: float, supersample: int = 15) -> np.ndarray:
    """A disk's transmission, each sample weighted by the fraction of its cell inside (supersampled)."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    y, x = pupil_coordinates(n, dx)
    inside = np.zeros((n, n))
    for oy in offsets:
        for ox in offsets:
            inside += (y + oy * dx) ** 2 + (x + ox * dx) ** 2 <= radius**2
    return inside / supersample**2


def wavefront(coeffs_m: dict, n: int, dx: float, radius: float) -> np.ndarray:
    """``sum_j c_j Z_j`` (metres) on the pupil array, Zernike radius ``radius``, centred on the axis."""
    y, x = pupil_coordinates(n, dx)
    rho, theta = np.hypot(x, y) / radius, np.arctan2(y, x)
    return sum(c * zernike(j, rho, theta) for j, c in coeffs_m.items())


def psf(pupil: np.ndarray, dx: float, wavefront_m: np.ndarray, *, wavelength: float, focal_length: float,
        pixel_pitch: float, window: int, defocus: float = 0.0, oversample: int = 3,
        design_phase: np.ndarray | None = None) -> np.ndarray:
    """The (window, window) pixel PSF (fraction of the pupil's power per pixel) at ``defocus`` metres
    beyond the focus. The FFT size ``N = lambda z s / (p dx)`` must come out a whole number (choose
    ``defocus`` accordingly)."""
    n = pupil.shape[0]
    z = focal_length + defocus
    size = wavelength * z * oversample / (pixel_pitch * dx)
    big = int(round(size))
    assert abs(size - big) < 1e-6 and big >= 2 * n, f"FFT size {size} must be a whole number >= 2n"
    y, x = pupil_coordinates(n, dx)
    w = wavefront_m - 0.5 * (x**2 + y**2) * (1 / focal_length - 1 / z)
    phase = 2 * np.pi * w / wavelength + (0 if design_phase is None else design_phase)
    padded = np.zeros((big, big), dtype=complex)
    index = (np.arange(n) - n // 2) % big  # pupil sample at the axis -> index 0
    padded[np.ix_(index, index)] = pupil * np.exp(1j * phase)
    intensity = np.fft.fftshift(np.abs(np.fft.fft2(padded)) ** 2)
    total = intensity.sum()
    s = oversample
    rows = (np.arange(window) - window // 2)[:, None] * s + (np.arange(s) - s // 2)[None, :] + big // 2
    samples = intensity[np.ix_(rows.ravel(), rows.ravel())]
    return samples.reshape(window, s, window, s).sum(axis=(1, 3)) / total
