"""Incoherent optical convolution: the camera records ``scene * PSF`` for every PSF of the frontend.

Convention (true convolution, not cross-correlation)
----------------------------------------------------
``out[n, m, y, x] = sum_c sum_{i, j} images[n, c, y - i, x - j] * psfs[m, c, i, j]``

i.e. the image of a point source is the PSF itself, not its mirror. ``torch.nn.functional.conv2d``
computes a cross-correlation (``images[y + i] * weight[i]``); the two agree when the kernel is
flipped on both axes, which is what :func:`direct_conv2d` does. Each PSF has one slice per input
channel (e.g. the PSF at red, green and blue for an RGB scene); a monochrome sensor sums the channels.
The convolution is linear, never circular: the FFT path zero-pads to at least ``H + K - 1``.

Output modes, for an ``H``-sample input and a ``K``-sample kernel (each axis):

* ``"full"``: all ``H + K - 1`` samples where the image is non-zero.
* ``"same"``: ``H`` samples, ``full[K // 2 : K // 2 + H]``. The PSF's optical axis is its pixel
  ``K // 2`` (the :class:`simulator.field.Grid` convention, also where ``fftshift`` puts the zero
  frequency): a delta at that pixel returns the image unshifted, for odd and even ``K``. (For even
  ``K`` this differs by one sample from ``scipy.signal.convolve(mode="same")``, which starts at
  ``(K - 1) // 2``.)
* ``"valid"``: ``H - K + 1`` samples, ``full[K - 1 : H]``, where the kernel lies inside the image.

``method="auto"`` takes the path a cost model (:func:`conv_seconds`, :data:`CONV_COST`) predicts to be
faster for the shapes and dtype at hand: deterministic (the same shapes always take the same path, so
results repeat to the bit), fitted to timings of both paths by ``benchmarks/simulator.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from onn_core.errors import InputError
from .layout import TileLayout
from .sampling import fast_fft_size
from .validation import check_tensor

#: Cost model of ``method="auto"``: per dtype and path, ``(seconds per unit of work, seconds per call)``
#: with the work of :func:`conv_work`. Fitted by ``benchmarks/simulator.py`` (``conv_sweep.fitted``, the
#: least time of 5 forward passes per shape over batch 1 and 16, images 28 to 112, 4 to 32 PSFs of 5 to
#: 31 pixels, mode "full", one thread, torch 2.13, 2026-12-05). Over that sweep the path it picks takes
#: 1.08 times the faster path's time on average (worst 2.3), where the earlier fixed rule, direct below
#: K = 23, took 1.70 (worst 10.8). float64 has no fast direct path on CPU (oneDNN is float32 only).
CONV_COST = {
    torch.float32: {"direct": (3.6e-11, 1.3e-4), "fft": (2.9e-10, 8.3e-5)},
    torch.float64: {"direct": (1.0e-10, 6.0e-5), "fft": (3.8e-10, 9.4e-5)},
}

MODES = ("same", "full", "valid")
METHODS = ("auto", "fft", "direct")
OUTPUTS = ("features", "frame")


def split_signed(kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split signed kernels into the two non-negative PSFs that realise them:
    ``k+ = relu(k)``, ``k- = relu(-k)``, so that ``k = k+ - k-``."""
    check_tensor("kernels", kernels)
    return torch.relu(kernels), torch.relu(-kernels)


def psf_pairs(kernels: torch.Tensor) -> torch.Tensor:
    """Signed kernels (m, c, k1, k2) -> the PSF stack (2m, c, k1, k2) ``[k1+, k1-, k2+, k2-, ...]`` that
    realises them (PSF ``2i`` is the positive part of kernel ``i``, PSF ``2i + 1`` its negative part)."""
    positive, negative = split_signed(kernels)
    return torch.stack((positive, negative), dim=1).flatten(0, 1)


def _check_conv_args(images, psfs, mode: str) -> None:
    check_tensor("images", images, ndim=4)
    check_tensor("psfs", psfs, ndim=4)
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if images.shape[1] != psfs.shape[1]:
        raise InputError(
            f"images have {images.shape[1]} channels (dim 1) but psfs have {psfs.shape[1]} slices per PSF (dim 1)"
        )
    if images.dtype != psfs.dtype or images.device != psfs.device:
        raise InputError(
            f"images ({images.dtype}, {images.device}) and psfs ({psfs.dtype}, {psfs.device}) "
            "must share dtype and device"
        )
    if mode == "valid" and (images.shape[-2] < psfs.shape[-2] or images.shape[-1] < psfs.shape[-1]):
        raise InputError(
            f"mode 'valid' needs images at least as large as the psfs, got images {tuple(images.shape[-2:])} "
            f"and psfs {tuple(psfs.shape[-2:])}"
        )


def _crop(size: int, kernel: int, mode: str) -> slice:
    """Which samples of the full convolution (length ``size + kernel - 1``) a mode keeps."""
    if mode == "full":
        return slice(0, size + kernel - 1)
    if mode == "same":
        return slice(kernel // 2, kernel // 2 + size)
    return slice(kernel - 1, size)


def fft_conv2d(images: torch.Tensor, psfs: torch.Tensor, *, mode: str = "same") -> torch.Tensor:
    """Linear 2-D convolution of every image with every PSF by real FFTs, summed over channels.

    Parameters
    ----------
    images : (N, C, H, W) real tensor
        Scene intensities (any unit; the output carries unit(images) * unit(psfs)).
    psfs : (M, C, K1, K2) real tensor, same dtype and device
        PSFs (or any kernels), one slice per input channel.
    mode : "same" | "full" | "valid"
        See the module docstring.

    Returns
    -------
    (N, M, H', W') tensor with ``out[n, m] = sum_c images[n, c] * psfs[m, c]`` (true convolution).

    Both operands are zero-padded to ``fast_fft_size(H + K - 1)`` per axis (no wrap-around); all PSFs
    are transformed in one batched ``rfft2``.
    """
    _check_conv_args(images, psfs, mode)
    (h, w), (k1, k2) = images.shape[-2:], psfs.shape[-2:]
    shape = (fast_fft_size(h + k1 - 1), fast_fft_size(w + k2 - 1))
    images_f = torch.fft.rfft2(images, s=shape)
    psfs_f = torch.fft.rfft2(psfs, s=shape)
    if images.shape[1] == 1:
        product = images_f[:, None, 0] * psfs_f[None, :, 0]
    else:
        product = torch.einsum("nchw,mchw->nmhw", images_f, psfs_f)
    full = torch.fft.irfft2(product, s=shape)
    return full[..., _crop(h, k1, mode), _crop(w, k2, mode)]


def direct_conv2d(images: torch.Tensor, psfs: torch.Tensor, *, mode: str = "same") -> torch.Tensor:
    """Same result as :func:`fft_conv2d`, computed by ``torch.nn.functional.conv2d`` with the PSFs
    flipped on both axes (conv2d is a cross-correlation) on the images zero-padded as each mode needs.

    Padding beyond half the kernel (mode "full") or different on two sides (even kernels) is explicit,
    ``F.pad`` then an unpadded conv2d: with its own ``padding`` argument that large, conv2d takes a
    much slower path for some shapes on CPU (torch 2.13, one thread: one 56 x 56 image through 10 PSFs
    of 31 x 31 in mode "full", 212 ms against 2.2 ms padded first; ``conv_sweep`` of
    ``benchmarks/simulator.py``). Padding up to half the kernel (mode "same", odd kernels) stays
    conv2d's own, which was never slower there and up to several times faster at batch 16."""
    _check_conv_args(images, psfs, mode)
    k1, k2 = psfs.shape[-2:]
    if mode == "full":
        pads = (k1 - 1, k1 - 1, k2 - 1, k2 - 1)
    elif mode == "same":  # full[K//2 + y] needs (K-1)//2 samples before and K//2 after
        pads = ((k1 - 1) // 2, k1 // 2, (k2 - 1) // 2, k2 // 2)
    else:
        pads = (0, 0, 0, 0)
    weight = psfs.flip(-2, -1)
    if pads[0] == pads[1] <= k1 // 2 and pads[2] == pads[3] <= k2 // 2:
        return F.conv2d(images, weight, padding=(pads[0], pads[2]))
    return F.conv2d(F.pad(images, (pads[2], pads[3], pads[0], pads[1])), weight)


def conv_work(images_shape, psfs_shape, mode: str = "same") -> dict[str, float]:
    """Units of work of each path for images ``(N, C, H, W)`` and PSFs ``(M, C, K1, K2)``: ``direct``,
    the multiply-adds ``N M C H' W' K1 K2`` (``H' x W'`` the mode's output); ``fft``, the transforms
    ``(N C + M C + N M) F log2 F`` plus the products ``N M C F`` on the ``F``-sample padded grid."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    n, c, h, w = (int(v) for v in images_shape)
    m, _, k1, k2 = (int(v) for v in psfs_shape)
    out = [len(range(size + k - 1)[_crop(size, k, mode)]) for size, k in ((h, k1), (w, k2))]
    grid = fast_fft_size(h + k1 - 1) * fast_fft_size(w + k2 - 1)
    return {"direct": float(n * m * c * out[0] * out[1] * k1 * k2),
            "fft": float((n * c + m * c + n * m) * grid * math.log2(grid) + n * m * c * grid)}


def conv_seconds(images_shape, psfs_shape, mode: str = "same", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Predicted seconds of each path (:data:`CONV_COST` applied to :func:`conv_work`); dtypes other than
    float64 use the float32 costs."""
    cost = CONV_COST[dtype if dtype in CONV_COST else torch.float32]
    work = conv_work(images_shape, psfs_shape, mode)
    return {path: per_unit * work[path] + per_call for path, (per_unit, per_call) in cost.items()}


def auto_method(images_shape, psfs_shape, mode: str = "same", dtype: torch.dtype = torch.float32) -> str:
    """The path ``method="auto"`` takes: ``"direct"`` or ``"fft"``, whichever :func:`conv_seconds` predicts
    faster (ties: direct)."""
    seconds = conv_seconds(images_shape, psfs_shape, mode, dtype)
    return "direct" if seconds["direct"] <= seconds["fft"] else "fft"


def optical_conv2d(
    images: torch.Tensor, psfs: torch.Tensor, *, mode: str = "same", method: str = "auto"
) -> torch.Tensor:
    """:func:`fft_conv2d` or :func:`direct_conv2d`; ``method="auto"`` takes the one predicted faster for
    these shapes and dtype (:func:`auto_method`)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        shapes_known = mode in MODES and all(isinstance(t, torch.Tensor) and t.ndim == 4 for t in (images, psfs))
        # unknown shapes: the direct path's checks name what is wrong
        method = auto_method(images.shape, psfs.shape, mode, psfs.dtype) if shapes_known else "direct"
    return (fft_conv2d if method == "fft" else direct_conv2d)(images, psfs, mode=mode)


def _kernel_shape(kernel_size) -> tuple[int, int]:
    pair = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
    if len(pair) != 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in pair):
        raise InputError(f"kernel_size must be a positive int or a pair of them, got {kernel_size!r}")
    return tuple(pair)


class IncoherentConv2d(nn.Module):
    """An optical frontend: ``m`` trainable signed kernels, each realised as two non-negative PSFs.

    Parameters
    ----------
    in_channels : int
        Channels of the scene (1 mono, 3 RGB); each PSF has one slice per channel.
    out_kernels : int
        Number ``m`` of signed kernels (``2 m`` PSFs / sub-optics).
    kernel_size : int or (int, int)
        PSF size in samples.
    output : "features" | "frame"
        ``"features"``: ``(N, m, H', W')`` = image through ``k+`` minus image through ``k-`` (without a
        sensor computed as one convolution with the PSF differences, equal by linearity).
        ``"frame"``: ``(N, rows, cols)`` camera frame with PSF ``p``'s image in tile ``p`` of ``layout``.
    layout : TileLayout or None
        Tile layout for ``"frame"``; ``None`` builds ``TileLayout.for_count(2 m, (H', W'))`` per call.
    mode, method : see :func:`optical_conv2d`.
    psf_transform : callable or None
        Maps the PSF stack ``(2m, c, k1, k2)`` to the PSF stack actually used (e.g. fabrication errors).
        An ``nn.Module`` is registered as a sub-module.
    sensor : simulator.sensor.SensorModel or None
        Applied to the frame, or in ``"features"`` mode to both intensity images before subtracting
        (the camera sees intensities).
    seed : int
        Seeds the initial kernels: uniform in ``+-1/sqrt(c k1 k2)`` (the ``nn.Conv2d`` default bound).
    dtype, device : torch dtype (float32 default) and device of the kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_kernels: int,
        kernel_size,
        *,
        output: str = "features",
        layout: TileLayout | None = None,
        mode: str = "same",
        method: str = "auto",
        psf_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sensor=None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_kernels", out_kernels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        if output not in OUTPUTS:
            raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        if layout is not None and not isinstance(layout, TileLayout):
            raise InputError(f"layout must be a TileLayout or None, got {type(layout).__name__}")
        if layout is not None and layout.capacity < 2 * out_kernels:
            raise InputError(f"layout has capacity {layout.capacity} < {2 * out_kernels} PSFs (2 per kernel)")
        if psf_transform is not None and not callable(psf_transform):
            raise InputError(f"psf_transform must be callable or None, got {type(psf_transform).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        k1, k2 = _kernel_shape(kernel_size)
        bound = (in_channels * k1 * k2) ** -0.5
        generator = torch.Generator().manual_seed(seed)
        unit = torch.rand((out_kernels, in_channels, k1, k2), generator=generator, dtype=torch.float64)
        init = (2 * unit - 1) * bound
        self.weight = nn.Parameter(init.to(dtype=dtype, device=device))
        self.output, self.layout, self.mode, self.method = output, layout, mode, method
        self.psf_transform, self.sensor = psf_transform, sensor

    @classmethod
    def from_kernels(cls, kernels: torch.Tensor, **kwargs) -> "IncoherentConv2d":
        """A layer holding a copy of ``kernels`` (m, c, k1, k2), in their dtype and device; ``kwargs`` as
        for the constructor (except the shape arguments, dtype and device)."""
        check_tensor("kernels", kernels, ndim=4)
        m, c, k1, k2 = kernels.shape
        if kernels.dtype not in (torch.float32, torch.float64):
            raise InputError(f"kernels must be float32 or float64, got {kernels.dtype}")
        layer = cls(c, m, (k1, k2), dtype=kernels.dtype, device=kernels.device, **kwargs)
        with torch.no_grad():
            layer.weight.copy_(kernels)
        return layer

    @property
    def kernels(self) -> torch.Tensor:
        """The trainable signed kernels, shape (m, c, k1, k2)."""
        return self.weight

    def psfs(self) -> torch.Tensor:
        """Non-negative PSF stack (2m, c, k1, k2) ordered ``[k1+, k1-, k2+, k2-, ...]`` (PSF ``2i`` is the
        positive part of kernel ``i``, PSF ``2i + 1`` its negative part), after ``psf_transform``."""
        stack = psf_pairs(self.weight)
        return stack if self.psf_transform is None else self.psf_transform(stack)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image ``images`` (N, c, H, W) through every PSF; see the class docstring for the output.
        ``generator`` seeds the sensor noise."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != self.weight.shape[1]:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a tensor (N, {self.weight.shape[1]} channels, H, W), got {got}")
        psfs = self.psfs()
        if self.output == "features" and self.sensor is None:
            # linearity: image(k+) - image(k-) = image(k+ - k-), one convolution instead of two
            return optical_conv2d(images, psfs[0::2] - psfs[1::2], mode=self.mode, method=self.method)
        intensities = optical_conv2d(images, psfs, mode=self.mode, method=self.method)
        if self.output == "features":
            intensities = self.sensor(intensities, generator=generator)
            return intensities[:, 0::2] - intensities[:, 1::2]
        layout = self.layout
        if layout is None:
            layout = TileLayout.for_count(intensities.shape[1], tuple(intensities.shape[-2:]))
        frame = layout.assemble(intensities)
        return frame if self.sensor is None else self.sensor(frame, generator=generator)

    def extra_repr(self) -> str:
        m, c, k1, k2 = self.weight.shape
        return f"in_channels={c}, out_kernels={m}, kernel_size=({k1}, {k2}), output={self.output!r}, mode={self.mode!r}"
