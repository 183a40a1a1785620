"""onn_core.config: YAML -> typed dataclasses, errors that name the YAML path; atomic writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from onn_core.config import build, load_yaml, save_yaml, to_plain
from onn_core.errors import ConfigError
from onn_core.files import atomic_write


@dataclass
class Camera:
    exposure_s: float
    roi: tuple[int, int, int, int] = (0, 0, 64, 64)
    trigger: Literal["software", "free-run"] = "software"

    def __post_init__(self):
        if self.exposure_s <= 0:
            raise ValueError(f"exposure_s must be > 0, got {self.exposure_s}")


@dataclass
class Bench:
    camera: Camera
    name: str = "bench"
    seed: Optional[int] = None
    tags: list[str] = field(default_factory=list)
    gains: dict[str, float] = field(default_factory=dict)


def test_nested_build_and_round_trip(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("camera:\n  exposure_s: 10e-3\n  roi: [1, 2, 3, 4]\nseed: 7\ngains: {a: 2}\n")
    bench = build(Bench, load_yaml(path))
    assert bench.camera.exposure_s == 0.01 and bench.camera.roi == (1, 2, 3, 4)
    assert bench.seed == 7 and bench.gains == {"a": 2.0} and bench.camera.trigger == "software"
    save_yaml(bench, tmp_path / "resolved.yaml")
    assert build(Bench, load_yaml(tmp_path / "resolved.yaml")) == bench
    assert to_plain(bench)["camera"]["roi"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "text, where, expected",
    [
        ("camera: {exposure_s: fast}", "camera.exposure_s", "a number"),
        ("camera: {exposure_s: 1, roi: [1, 2]}", "camera.roi", "4 items"),
        ("camera: {exposure_s: 1, trigger: hardware}", "camera.trigger", "software"),
        ("camera: {exposure_s: 1}\nseed: 1.5", "seed", "an integer"),
        ("camera: {exposure_s: 1}\ntags: [a, 3]", "tags[1]", "a string"),
        ("camera: {exposure_s: 1, gain: 2}", "camera.gain", "known fields"),
        ("name: x", "camera", "required"),
        ("camera: {exposure_s: -1}", "camera", "exposure_s must be > 0"),
    ],
)
def test_errors_name_the_yaml_path(tmp_path, text, where, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        build(Bench, load_yaml(path))
    assert info.value.path == where
    assert expected in str(info.value)


def test_load_yaml_rejects_missing_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="readable YAML"):
        load_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="valid YAML") as info:
        load_yaml(tmp_path / "broken.yaml")
    assert "broken.yaml\", line" in str(info.value) and "<unicode string>" not in str(info.value)
    (tmp_path / "evil.yaml").write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_yaml(tmp_path / "evil.yaml")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "calibration.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.bin"]
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    with atomic_write(tmp_path / "atomic.txt", "w") as fh:
        fh.write("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
