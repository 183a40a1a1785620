"""The ground floor imports nothing heavy, and the real drivers stand on it without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = {"simulator", "drivers", "calibration", "hil", "benchmarks", "examples"}


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_real_drivers_import_without_torch():
    modules = _imported_after(
        "import drivers.opencv_camera, drivers.display_slm, drivers.serial_devices, drivers.bench, drivers.config"
    )
    assert "torch" not in modules
    assert not any(m == "simulator" or m.startswith("simulator.") for m in modules)


def test_ground_floor_imports_neither_torch_nor_the_project():
    modules = _imported_after("import onn_core, onn_core.config, onn_core.files, onn_core.lut, onn_core.validation")
    assert "torch" not in modules
    assert not {m.split(".")[0] for m in modules} & PROJECT_PACKAGES


@pytest.mark.parametrize("path", sorted((ROOT / "onn_core").glob("*.py")), ids=lambda p: p.name)
def test_ground_floor_source_names_no_project_package(path):
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert not roots & (PROJECT_PACKAGES | {"torch"}), f"{path.name} imports {sorted(roots & PROJECT_PACKAGES)}"


def test_old_import_paths_still_work_for_one_release():
    from onn_core.config import build
    from onn_core.errors import HilError
    from simulator.config import build as old_build
    from simulator.errors import HilError as OldHilError

    assert old_build is build and OldHilError is HilError


def test_tensor_fields_still_build_once_torch_is_imported():
    import dataclasses

    import torch

    from onn_core.config import build, to_plain

    @dataclasses.dataclass
    class WithTensor:
        weights: torch.Tensor

    built = build(WithTensor, {"weights": [[1, 2], [3, 4]]})
    assert built.weights.dtype == torch.float64 and built.weights.shape == (2, 2)
    assert to_plain(built) == {"weights": [[1.0, 2.0], [3.0, 4.0]]}
