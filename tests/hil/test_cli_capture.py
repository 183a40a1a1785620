"""``hil capture`` and ``hil export-design`` from the command line."""

from pathlib import Path

import pytest
import yaml

from hil.cli import main
from hil.data.captures import CaptureDataset

FASHION = Path("/usr/share/datasets/fashion-mnist")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write_config(tmp_path, **changes):
    bench = yaml.safe_load((EXAMPLES / "bench_sim.yaml").read_text())
    bench["clock"] = "virtual"
    bench["camera"]["optics"] = str(EXAMPLES / "optics.yaml")
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    config = {"bench": "bench.yaml", "split": "test", "select": {"fraction": 0.002, "seed": 3}, "out": "c.h5", **changes}
    (tmp_path / "capture.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "capture.yaml"


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
def test_capture_command_captures_a_stratified_subset_and_resumes(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["capture", str(config), "--no-progress"]) == 0
    captures = CaptureDataset(tmp_path / "c.h5")
    assert len(captures) == 20 and sorted(captures.labels.bincount().tolist()) == [2] * 10
    assert "20 frames" in capsys.readouterr().out
    from hil.capture import design_id_of
    from simulator.system import OpticalSystem

    assert captures.attrs["design_id"] == design_id_of(OpticalSystem.from_yaml(EXAMPLES / "optics.yaml"))
    captures.close()  # HDF5 does not let one process write a file it holds open for reading
    assert main(["capture", str(config), "--no-progress"]) == 0  # nothing left to capture
    assert "(0 captured now" in capsys.readouterr().out


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
def test_capture_command_refuses_to_capture_without_knowing_the_design(tmp_path, capsys):
    config = write_config(tmp_path)
    bench = yaml.safe_load((tmp_path / "bench.yaml").read_text())
    bench["camera"].update(render="direct", optics=None)  # an ideal relay: no optics to take the design from
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    assert main(["capture", str(config), "--no-progress"]) == 2
    assert "config field 'design'" in capsys.readouterr().err and not (tmp_path / "c.h5").exists()
    config = write_config(tmp_path, design=str(EXAMPLES / "optics.yaml"))
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    assert main(["capture", str(config), "--no-progress", "--compression", "lzf"]) == 0
    from hil.capture import design_id_of
    from simulator.system import OpticalSystem

    captures = CaptureDataset(tmp_path / "c.h5")
    assert captures.attrs["design_id"] == design_id_of(OpticalSystem.from_yaml(EXAMPLES / "optics.yaml"))


def test_capture_command_errors_exit_2_with_the_field(tmp_path, capsys):
    assert main(["capture", str(write_config(tmp_path, split="validation")), "--no-progress"]) == 2
    assert "'split'" in capsys.readouterr().err
    assert main(["capture", str(write_config(tmp_path, select={"fraction": 2.0})), "--no-progress"]) == 2
    assert "select.fraction" in capsys.readouterr().err
    assert main(["export-design", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "hil train" in capsys.readouterr().err


def test_the_hil_command_offers_every_step(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for command in ("devices", "snap", "show", "train", "capture", "export-design", "estimate"):
        assert command in listed, command
