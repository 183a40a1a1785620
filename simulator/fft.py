"""2-D inverse FFTs that avoid a torch 2.13 CPU bug; the simulator uses them instead of ``torch.fft.ifft2``.

The bug: on the CPU, with more than one thread, a complex64 2-D transform over a single 2048 x 2048
plane -- shape (2048, 2048), (1, 2048, 2048) or (1, 1, 2048, 2048); the padded size of a 1024 x 1024
propagation -- applies its normalisation factor twice. Every call that carries a factor is hit, and
only those. Measured with torch 2.13.0+cpu and ``torch.set_num_threads(2)`` against numpy in float64
(relative error 2e-7 when right), the result is the true one times

===========================================  ============================
call                                         extra factor
===========================================  ============================
``fft2(x)`` (norm="backward": none)          1 (correct)
``ifft2(x, norm="forward")`` (none)          1 (correct)
``ifft2(x)``, ``ifftn(x, dim=(-2, -1))``     ``1/N`` = 2.4e-7 (N = 2048^2)
``fft2(x, norm="forward")``                  ``1/N``
``fft2`` / ``ifft2`` / ``fftn``, "ortho"     ``1/sqrt(N)`` = 4.9e-4
``fft2(x1024, s=(2048, 2048), norm=...)``    as ``fft2`` with that norm
===========================================  ============================

Not affected: one thread; complex128; a batch of two or more planes ((2, 2048, 2048)); 2048 x 1024,
2048 x 2047, 1024^2 and 4096^2; the 1-D ``fft`` / ``ifft``; ``rfft2`` / ``irfft2``.

So the simulator only calls the two unscaled transforms -- ``torch.fft.fft2`` with its default norm and
:func:`ifft2_unscaled` -- and applies ``1/N`` itself in one multiply. ``tests/simulator/test_fft.py``
checks these functions against numpy at the affected shapes and records which torch calls are wrong.
"""

from __future__ import annotations

import torch


def ifft2_unscaled(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse 2-D DFT over the last two dims without any normalisation factor.

    ``out[m, n] = sum_{k, l} spectrum[k, l] exp(+2 pi i (k m / rows + l n / cols))``, i.e.
    ``rows * cols`` times numpy's ``ifft2``. The caller applies ``1 / (rows * cols)`` where it is cheapest
    (:func:`simulator.propagation.propagate_asm` does it on the cropped output).

    Parameters
    ----------
    spectrum : Tensor (..., rows, cols), complex

    Returns
    -------
    Tensor of the same shape and dtype.
    """
    return torch.fft.ifft2(spectrum, norm="forward")  # the "forward" norm leaves the inverse unscaled


def ifft2(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse 2-D DFT over the last two dims with numpy's ``1 / (rows * cols)`` factor.

    Parameters
    ----------
    spectrum : Tensor (..., rows, cols), complex

    Returns
    -------
    Tensor of the same shape and dtype, equal to ``numpy.fft.ifft2(spectrum)``.
    """
    rows, cols = spectrum.shape[-2:]
    return ifft2_unscaled(spectrum) * (1.0 / (rows * cols))
