"""What an optical frontend is designed to do: its PSFs, as a small module with a ``psfs()`` method.

A *design* is an ``nn.Module`` whose ``psfs()`` returns the non-negative design PSFs ``(P, C, K, K)``,
in sensor pixels, ordered in signed pairs ``[k1+, k1-, k2+, k2-, ...]`` (PSF ``2i`` realises the
positive part of signed kernel ``i``, PSF ``2i + 1`` its negative part; the backend reads their
difference). :class:`simulator.system.OpticalSystem` takes any design:

* :class:`PSFDesign`: fixed PSFs (a fabricated meta-optic's design file, measured PSFs).
* :class:`KernelDesign`: signed kernels, trainable (the optical student in training); its PSFs are
  ``relu(k)`` and ``relu(-k)``.

:func:`design_from_config` builds one from the ``design`` mapping of an optics YAML section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .conv import psf_pairs
from onn_core.errors import ConfigError, InputError
from onn_core.files import resolve_relative
from .validation import check_tensor

DESIGN_GENERATORS = ("random_signed", "file", "inline")


class PSFDesign(nn.Module):
    """Fixed non-negative design PSFs ``(P, C, K, K)`` (a buffer: moves with the module, never trained)."""

    def __init__(self, psfs: torch.Tensor):
        super().__init__()
        check_tensor("psfs", psfs, ndim=4)
        if psfs.dtype not in (torch.float32, torch.float64):
            raise InputError(f"psfs must be float32 or float64, got {psfs.dtype}")
        if psfs.shape[-1] != psfs.shape[-2]:
            raise InputError(f"psfs must be square (P, C, K, K), got shape {tuple(psfs.shape)}")
        if float(psfs.min()) < 0:
            raise InputError("psfs must be non-negative (intensities); give signed kernels to KernelDesign")
        self.register_buffer("design_psfs", psfs.detach().clone())

    def psfs(self) -> torch.Tensor:
        return self.design_psfs


class KernelDesign(nn.Module):
    """Signed kernels ``(M, C, K, K)`` realised as ``2M`` PSFs ``[k1+, k1-, ...]``.

    ``kernels`` None draws them uniformly in ``+-1/sqrt(C K K)`` (the ``nn.Conv2d`` default bound)
    from a generator seeded with ``seed``; ``trainable`` makes them an ``nn.Parameter``.

    ``transmission`` (the light budget): a passive sub-optic puts at most the light its aperture passes
    into its tile, so each PSF's total weight (its sum over channels and pixels; 1 = all the light that
    reaches the sub-aperture) is at most ``transmission``. The kernels used (:attr:`kernels`) are the
    stored weights divided, per signed kernel, by ``max(1, max(sum k+, sum k-) / transmission)``: a
    kernel within budget is unchanged, one beyond it is scaled down as a whole, its shape kept. That
    scale is one positive factor per feature map, which the backend's first (linear) layer absorbs,
    so the student's function class is unchanged. None: no budget.
    """

    def __init__(self, kernels: torch.Tensor | None = None, *, shape: tuple[int, int, int, int] | None = None,
                 trainable: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32,
                 transmission: float | None = None):
        super().__init__()
        if transmission is not None and (isinstance(transmission, bool) or not isinstance(transmission, (int, float))
                                         or not 0 < transmission <= 1):
            raise InputError(f"transmission must be a fraction in (0, 1] (or None: no light budget), got {transmission!r}")
        self.transmission = None if transmission is None else float(transmission)
        if kernels is None:
            if shape is None or len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                        for v in shape):
                raise InputError(f"shape must be four positive ints (M, C, K, K) when kernels is None, got {shape!r}")
            m, c, k1, k2 = shape
            unit = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            kernels = ((2 * unit - 1) * (c * k1 * k2) ** -0.5).to(dtype)
        check_tensor("kernels", kernels, ndim=4)
        if kernels.dtype not in (torch.float32, torch.float64):
            raise InputError(f"kernels must be float32 or float64, got {kernels.dtype}")
        if kernels.shape[-1] != kernels.shape[-2]:
            raise InputError(f"kernels must be square (M, C, K, K), got shape {tuple(kernels.shape)}")
        value = kernels.detach().clone()
        if trainable:
            self.weight = nn.Parameter(value)
        else:
            self.register_buffer("weight", value)

    @property
    def kernels(self) -> torch.Tensor:
        """The signed kernels (M, C, K, K), within the light budget (class docstring); differentiable."""
        if self.transmission is None:
            return self.weight
        dims = tuple(range(1, self.weight.ndim))
        largest = torch.maximum(self.weight.clamp(min=0).sum(dims), (-self.weight).clamp(min=0).sum(dims))
        scale = (largest / self.transmission).clamp(min=1.0)
        return self.weight / scale.reshape(-1, *([1] * len(dims)))

    def psfs(self) -> torch.Tensor:
        return psf_pairs(self.kernels)

    def extra_repr(self) -> str:
        return f"transmission={self.transmission}"


def random_signed_kernels(num_kernels: int, kernel_size: int, channels: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian kernels (M, C, K, K), float64, each normalised to unit L1 norm (so the light of
    its two PSFs adds up to 1)."""
    kernels = torch.randn((num_kernels, channels, kernel_size, kernel_size),
                          generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return kernels / kernels.abs().sum(dim=(1, 2, 3), keepdim=True)


def signed_kernels_to_psfs(kernels: torch.Tensor) -> torch.Tensor:
    """Signed kernels (M, C, K, K) -> non-negative PSFs (2M, C, K, K) ordered ``[k1+, k1-, ...]``."""
    return psf_pairs(kernels.detach())


def load_kernel_file(file_path: Path) -> torch.Tensor:
    """A float64 tensor from ``.npy`` (no pickles) or ``.pt`` (``weights_only=True``)."""
    if file_path.suffix == ".npy":
        return torch.from_numpy(np.load(file_path, allow_pickle=False)).double()
    if file_path.suffix == ".pt":
        loaded = torch.load(file_path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, torch.Tensor):
            raise InputError(f"{file_path} must hold one tensor, got {type(loaded).__name__}")
        return loaded.double()
    raise InputError(f"design file must end in .npy or .pt, got {file_path}")


def design_from_config(design, *, base_dir=None, path: str = "design", dtype=torch.float64) -> PSFDesign:
    """A fixed :class:`PSFDesign` (float ``dtype``) from a ``design`` mapping:

    * ``{generator: random_signed, num_kernels, kernel_size, channels (1), seed (0)}``
    * ``{generator: file, path: kernels.npy|.pt, signed: true|false}`` (``signed`` default true)
    * ``{generator: inline, psfs: nested list, signed: false}`` (or ``kernels`` with ``signed: true``)

    Signed kernels are split into ``[k1+, k1-, ...]`` PSFs. ``base_dir`` resolves a relative file path.
    """
    if not isinstance(design, dict):
        raise ConfigError(path, design, f"a mapping with generator one of {list(DESIGN_GENERATORS)}")
    generator = design.get("generator")
    allowed = {"random_signed": {"generator", "num_kernels", "kernel_size", "channels", "seed"},
               "file": {"generator", "path", "signed"},
               "inline": {"generator", "psfs", "kernels", "signed"}}
    if generator not in allowed:
        raise ConfigError(f"{path}.generator", generator, f"one of {list(DESIGN_GENERATORS)}")
    for key in design:
        if key not in allowed[generator]:
            raise ConfigError(f"{path}.{key}", design[key], f"one of the fields of generator {generator!r}: "
                                                          f"{sorted(allowed[generator])}")
    if generator == "random_signed":
        ints = {}
        for key, minimum, default in (("num_kernels", 1, None), ("kernel_size", 1, None), ("channels", 1, 1),
                                      ("seed", None, 0)):
            value = design.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
                raise ConfigError(f"{path}.{key}", value, "an int" + (f" >= {minimum}" if minimum is not None else ""))
            ints[key] = value
        return PSFDesign(signed_kernels_to_psfs(random_signed_kernels(**ints)).to(dtype))
    signed = design.get("signed", generator == "file")
    if not isinstance(signed, bool):
        raise ConfigError(f"{path}.signed", signed, "true or false")
    if generator == "file":
        file_name = design.get("path")
        if not isinstance(file_name, str):
            raise ConfigError(f"{path}.path", file_name, "a path to a .npy or .pt file")
        file_path = resolve_relative(file_name, base_dir)
        try:
            values = load_kernel_file(file_path)
        except (OSError, InputError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{path}.path", file_name, f"a readable .npy/.pt tensor file ({exc})") from exc
    else:
        key = "kernels" if signed else "psfs"
        try:
            values = torch.tensor(design.get(key), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{path}.{key}", design.get(key), "a nested list of numbers (P, C, K, K)") from exc
    if values.ndim != 4 or values.shape[-1] != values.shape[-2] or not bool(torch.isfinite(values).all()):
        raise ConfigError(path, f"tensor of shape {tuple(values.shape)}", "finite values of shape (P, C, K, K)")
    if signed:
        return PSFDesign(signed_kernels_to_psfs(values).to(dtype))
    if float(values.min()) < 0:
        raise ConfigError(path, "negative PSF values", "non-negative PSFs (or signed: true for signed kernels)")
    return PSFDesign(values.to(dtype))


__all__ = ["DESIGN_GENERATORS", "KernelDesign", "PSFDesign", "design_from_config", "load_kernel_file",
           "random_signed_kernels", "signed_kernels_to_psfs"]
