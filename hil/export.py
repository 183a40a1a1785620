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

from .checkpoint import CheckpointError, load_model

HEADER = """\
# The optics of a trained optical student, exported by `hil export-design` from {run}.
# design: the file next to this one ({file}) is what goes to fabrication. errors: null is the design
# itself; to fabricate it on the simulated bench give errors (e.g. the errors section of
# examples/optics.yaml). Point a bench's camera.optics at this file. SI units throughout.
"""


def export_design(run_dir, out) -> Path:
    """Write the design file and ``optics.yaml`` of the student trained in ``run_dir`` into ``out``;
    returns the path of ``optics.yaml``."""
    run_dir, out = Path(run_dir), Path(out)
    try:
        student = load_model(run_dir, name="optical_student")  # only an optical student's optics export
    except CheckpointError as exc:
        raise ConfigError("RUN_DIR", str(run_dir), f"a run folder of `hil train` ({exc})") from exc
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
