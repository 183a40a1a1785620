"""Export a trained optical student's optics as a design: what goes to fabrication, and what the
simulated bench loads to "fabricate" it.

:func:`export_design` reads a run folder written by ``hil train`` (its best checkpoint, else its last)
and writes into ``out``:

* ``kernels.npy``: the signed kernels (M, C, K, K), float64, for a meta-optic student; or ``psfs.npy``:
  the non-negative PSFs (2M, C, K, K) ``[k1+, k1-, ...]`` for a design that is not a signed-kernel
  pair (the 4f student);
* ``optics.yaml``: the student's whole optical system (geometry, photometry, display, sensor) with
  ``design: {generator: file, ...}`` pointing at that file and ``errors: null``. A bench's
  ``camera.optics`` loads it as is; giving it ``errors`` (e.g. those of ``examples/optics.yaml``)
  fabricates it on the simulated bench.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from onn_core.errors import ConfigError
from onn_core.files import atomic_write

from .checkpoint import load_checkpoint

HEADER = """\
# The optics of a trained optical student, exported by `hil export-design` from {run}.
# design: the file next to this one ({file}) is what goes to fabrication. errors: null is the design
# itself; to fabricate it on the simulated bench give errors (e.g. the errors section of
# examples/optics.yaml). Point a bench's camera.optics at this file. SI units throughout.
"""


def export_design(run_dir, out) -> Path:
    """Write the design file and ``optics.yaml`` of the student trained in ``run_dir`` into ``out``;
    returns the path of ``optics.yaml``."""
    from .models import build_model

    run_dir, out = Path(run_dir), Path(out)
    for name in ("best.pt", "last.pt"):
        checkpoint = run_dir / "checkpoints" / name
        if checkpoint.is_file():
            break
    else:
        raise ConfigError("RUN_DIR", str(run_dir), "a run folder of `hil train` (with checkpoints/best.pt or last.pt)")
    state = load_checkpoint(checkpoint, map_location="cpu")
    model_config = (state.get("config") or {}).get("model")
    if not isinstance(model_config, dict) or model_config.get("name") != "optical_student":
        raise ConfigError("model.name", (model_config or {}).get("name"), "an optical_student run (only its optics "
                          "can be exported)")
    student = build_model(model_config)
    student.load_state_dict(state["model"])
    system = student.frontend
    kernels = getattr(system.design, "kernels", None)
    if kernels is not None:
        file, values, signed = "kernels.npy", kernels.detach().double().numpy(), True
    else:
        file, values, signed = "psfs.npy", system.design.psfs().detach().double().numpy(), False
    optics = system.to_config()
    optics["design"] = {"generator": "file", "path": file, "signed": signed}
    optics["errors"] = None
    optics["dtype"] = "float32"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / file) as fh:
        np.save(fh, values, allow_pickle=False)
    with atomic_write(out / "optics.yaml", "w") as fh:
        fh.write(HEADER.format(run=run_dir, file=file))
        yaml.safe_dump(optics, fh, sort_keys=False)
    return out / "optics.yaml"


__all__ = ["export_design"]
