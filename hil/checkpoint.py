"""Training checkpoints: full state, written atomically, loaded without unpickling code.

A checkpoint is a plain dict of tensors and plain Python values (so it loads with
``torch.load(..., weights_only=True)``): model, optimiser and scheduler state dicts, the random
number generator states of torch, numpy and Python (encoded as tensors), the sampler position, the
resolved config and the metrics history. :func:`save_checkpoint` writes to a temporary file in the
destination folder and renames it over the target (:func:`onn_core.files.atomic_write`), so a kill at
any moment leaves either the previous or the new checkpoint, never a torn one.

Every checkpoint written here records :data:`CONFIG_SCHEMA`, the schema of the model configs it may
store: since schema 2 (the light budget) a field missing from a stored model config takes the
current default, as it does in a hand-written config. A checkpoint without the key was written
before (``hil train`` stored its resolved config, so an optical student lacking ``transmission``
there had none): :func:`load_model` builds it with ``transmission: None``, the function it was
trained with (:func:`model_config_of`).
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from onn_core.errors import ConfigError, HilError, InputError
from onn_core.files import atomic_write

from .models import build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hil-checkpoint"
CHECKPOINT_VERSION = 1
#: The schema of the configs a checkpoint stores (module docstring); absent: before schema 2.
CONFIG_SCHEMA = 2


class CheckpointError(HilError):
    """A checkpoint file is missing, unreadable or not a toolkit checkpoint."""


def capture_rng_state() -> dict:
    """The global RNG states of torch (CPU and CUDA), numpy and Python as tensors and plain values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` (tensors and plain values only) to ``path`` atomically; returns the path."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config_schema": CONFIG_SCHEMA, **state}
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)
    log.debug("wrote checkpoint %s", path)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file if it is missing, corrupt or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


def model_state_from(path_or_state, part: str | None = None) -> dict:
    """The model ``state_dict`` in a checkpoint (a path or a loaded dict); ``part`` selects a submodule
    prefix such as ``"backend"`` (keys returned without the prefix)."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    model_state = state.get("model")
    if not isinstance(model_state, dict):
        raise CheckpointError("checkpoint holds no 'model' state dict")
    if part is None:
        return model_state
    prefix = part + "."
    selected = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    if not selected:
        raise InputError(f"checkpoint model has no parameters under {part!r}")
    return selected


def find_checkpoint(run_dir_or_checkpoint) -> Path:
    """The checkpoint a path names: the file itself, or ``checkpoints/best.pt`` (else ``last.pt``) of a
    ``hil train`` run folder. Raises :class:`CheckpointError` naming the path if there is none."""
    path = Path(run_dir_or_checkpoint)
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise CheckpointError(f"{path} is neither a checkpoint file nor a `hil train` run folder with "
                          "checkpoints/best.pt or checkpoints/last.pt")


def load_model(run_dir_or_checkpoint, device="cpu", *, name: str | None = None) -> torch.nn.Module:
    """The model of a ``hil train`` run folder or checkpoint file (:func:`find_checkpoint`), rebuilt from
    the model config the checkpoint stores, on ``device``, in eval mode with gradients off (a frozen
    student or teacher). ``name``: the model the caller needs (``model.name``, e.g. ``optical_student``);
    another one is refused with a :class:`ConfigError` before anything is built."""
    path = find_checkpoint(run_dir_or_checkpoint)
    state = load_checkpoint(path, map_location=device)
    model_config = model_config_of(state, path)
    if name is not None and model_config.get("name") != name:
        raise ConfigError("model.name", model_config.get("name"), f"{name!r} (the model of {path})")
    model = build_model(model_config)
    model.load_state_dict(model_state_from(state))
    return model.to(device).eval().requires_grad_(False)


def model_config_of(state: dict, path=None) -> dict:
    """The model config a loaded checkpoint stores, as it builds the model it was trained as: in a
    checkpoint older than :data:`CONFIG_SCHEMA` 2 (no ``config_schema``), an optical student without
    ``transmission`` gets ``None`` (no light budget: its kernels were used as stored), not today's
    default. Raises :class:`CheckpointError` when there is none."""
    model_config = (state.get("config") or {}).get("model")
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{path or 'the checkpoint'} stores no model config (config.model): not written by "
                              "`hil train`")
    if ("config_schema" not in state and model_config.get("name") == "optical_student"
            and "transmission" not in model_config):
        model_config = {**model_config, "transmission": None}
    return model_config
