"""2-D FFT helpers used by the simulator instead of calling ``torch.fft.ifft2`` directly.

torch 2.13's CPU ``ifft2`` returns a wrong result (about ``1/N^2`` of the true one) for a 2048 x 2048
complex64 array when more than one thread is used -- exactly the padded size of a 1024 x 1024
propagation. The forward transform is unaffected, so :func:`ifft2` computes the inverse through it:
``ifft2(x) = conj(fft2(conj(x))) / (rows * cols)``, which is exact algebra and costs two conjugations.
``tests/simulator/test_fft.py`` checks both against numpy at the affected size, and checks that the
1-D ``torch.fft.ifft`` (which :mod:`simulator.propagation` uses axis by axis) is sound there.
"""

from __future__ import annotations

import torch


def ifft2(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse 2-D DFT over the last two dims, with the ``1/(rows*cols)`` factor (numpy's convention)."""
    rows, cols = spectrum.shape[-2:]
    return torch.fft.fft2(spectrum.conj()).conj() / (rows * cols)
