"""Tensor argument checks of the simulator's public functions; each raises :class:`InputError` naming
the argument, what it got and what was expected. Value checks (:func:`check_positive`) live in
:mod:`onn_core.validation` and are re-exported here."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from onn_core.errors import InputError
from onn_core.validation import check_positive

__all__ = ["check_positive", "check_tensor", "complex_dtype_for", "is_transformed", "real_dtype_for"]


def check_tensor(
    name: str,
    x,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    complex_ok: bool = False,
    real_ok: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a tensor argument: type, number of dims, real/complex floating dtype, finiteness
    (the last not inside ``torch.func`` transforms, see :func:`is_transformed`)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise InputError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise InputError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    is_complex = x.is_complex()
    if is_complex and not complex_ok:
        raise InputError(f"{name} must be a real floating tensor, got {x.dtype}")
    if not is_complex and (not real_ok or not x.is_floating_point()):
        kinds = "complex" if not real_ok else ("real or complex floating" if complex_ok else "real floating")
        raise InputError(f"{name} must be a {kinds} tensor, got {x.dtype}")
    if finite and not is_transformed(x) and not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or inf")
    return x


def is_transformed(x: torch.Tensor) -> bool:
    """True inside ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``), where checks that read
    values cannot run; value checks are skipped there so per-sample Jacobians (the NTK) vectorise."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(wrapped is not None and wrapped(x))


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real floating dtype (float32 -> complex64, float64 -> complex128)."""
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def real_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The real dtype matching a (complex or real) floating dtype."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
