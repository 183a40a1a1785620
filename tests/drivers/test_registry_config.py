"""Backends by name (built-in, run-time, entry points of an installed distribution) and opening
devices and benches from YAML, with errors that name the YAML path."""

import textwrap

import numpy as np
import pytest
import yaml

from drivers import open_bench
from drivers.clock import VirtualClock
from drivers.errors import DeviceNotFound
from drivers.registry import (
    BUILTIN_BACKENDS, ENTRY_POINT_GROUP, available_backends, import_target, load_backend, register_backend,
    unregister_backend,
)
from drivers.simulated import SimulatedCamera, SimulatedSLM
from onn_core.errors import ConfigError
from tests.drivers.conformance import check_camera

REPO_EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"

DUMMY_MODULE = '''
from dataclasses import dataclass

import numpy as np

from drivers.camera import Camera
from drivers.frames import RawFrame


class ConstantCamera(Camera):
    """A third-party camera whose every pixel reads ``value``."""

    @dataclass
    class Config:
        value: int = 7
        shape: tuple[int, int] = (3, 4)

    def __init__(self, *, value=7, shape=(3, 4), name=None, clock=None):
        self.value = value
        super().__init__(sensor_shape=shape, bit_depth=8, pixel_pitch_m=2e-6, exposure_s=0.01,
                         exposure_limits_s=(1e-4, 1.0), name=name, clock=clock)

    def _snap(self, timeout_s):
        self.clock.sleep(self.exposure_s)
        return RawFrame(np.full(self.sensor_shape, self.value, np.uint8))

    def _set_exposure(self, exposure_s):
        return exposure_s
'''


@pytest.fixture
def dummy_distribution(tmp_path, monkeypatch):
    """An installed distribution (a *.dist-info with entry_points.txt on sys.path) adding backends."""
    (tmp_path / "dummy_onn_backend").mkdir()
    (tmp_path / "dummy_onn_backend" / "__init__.py").write_text(DUMMY_MODULE)
    info = tmp_path / "dummy_onn_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-onn-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""
        [{ENTRY_POINT_GROUP}]
        constant-camera = dummy_onn_backend:ConstantCamera
        broken-camera = dummy_onn_backend.missing:Nothing
        opencv = dummy_onn_backend:ConstantCamera
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield


def test_builtin_names_are_listed_without_importing():
    backends = available_backends()
    for name in ("simulated-camera", "simulated-slm", "opencv", "display", "slmsuite-camera", "slmsuite-slm"):
        assert name in backends and backends[name].source == "builtin"
    assert backends["simulated-camera"].target == BUILTIN_BACKENDS["simulated-camera"]
    assert load_backend("simulated-camera") is SimulatedCamera
    assert load_backend("simulated-slm") is SimulatedSLM


def test_unknown_and_unimportable_backends_raise_device_not_found():
    with pytest.raises(DeviceNotFound, match="no backend named 'warp-drive'.*simulated-camera"):
        load_backend("warp-drive")
    with pytest.raises(DeviceNotFound, match="cannot be imported") as info:
        import_target("drivers.no_such_module:Thing", name="thing")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(DeviceNotFound, match="has no"):
        import_target("drivers.simulated:NoSuchClass")


def test_entry_point_backends_are_discovered_and_opened(dummy_distribution):
    backends = available_backends()
    assert backends["constant-camera"].source == "entry point (dummy-onn-backend)"
    assert backends["opencv"].source == "builtin", "built-in names win over entry points"
    cls = load_backend("constant-camera")
    assert cls.__name__ == "ConstantCamera" and cls.__module__ == "dummy_onn_backend"
    with pytest.raises(DeviceNotFound) as info:
        load_backend("broken-camera")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    check_camera(lambda: cls(clock=VirtualClock()))
    config = {"slm": {"shape": [3, 4]}, "camera": {"backend": "constant-camera", "value": 42}}
    with open_bench(config, clock=VirtualClock()) as bench:
        m = bench.measure(np.zeros((3, 4), np.uint8))
        assert np.all(m.frame.image == 42)
    with pytest.raises(ConfigError, match="camera.value"):
        open_bench({"camera": {"backend": "constant-camera", "value": "x"}}, clock=VirtualClock())


def test_hil_devices_lists_installed_backends(dummy_distribution, capsys):
    from hil.commands.devices import cmd_devices

    assert cmd_devices(None) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "entry point (dummy-onn-backend)" in lines["constant-camera"] and "camera" in lines["constant-camera"]
    assert "unavailable (ModuleNotFoundError" in lines["broken-camera"]


def test_yaml_faults_are_seeded(tmp_path):
    def outcomes(seed):
        config = _direct_config(faults={"seed": seed, "timeout_rate": 0.2, "exception_rate": 0.2})
        config["bench"]["retries"] = 0
        result = []
        with open_bench(config) as bench:
            for v in range(40):
                try:
                    result.append(int(bench.measure(np.full((6, 6), v, np.uint8)).frame.index))
                except Exception as exc:
                    result.append(type(exc).__name__)
        return result

    first = outcomes(5)
    assert first == outcomes(5)
    assert first != outcomes(6)
    assert {"DeviceTimeout", "DeviceFault"} <= set(first)


def test_runtime_registration():
    register_backend("test-sim-camera", SimulatedCamera)
    try:
        assert load_backend("test-sim-camera") is SimulatedCamera
        assert available_backends()["test-sim-camera"].source == "runtime"
        with pytest.raises(ValueError, match="already registered"):
            register_backend("test-sim-camera", "drivers.simulated:SimulatedCamera")
        with pytest.raises(ValueError, match="already registered"):
            register_backend("opencv", SimulatedCamera)
    finally:
        unregister_backend("test-sim-camera")
    assert "test-sim-camera" not in available_backends()


def _direct_config(**camera):
    return {
        "clock": "virtual",
        "slm": {"backend": "simulated-slm", "shape": [6, 6], "latency_s": 0.01, "settle_s": 0.005},
        "camera": {"backend": "simulated-camera", "render": "direct", "exposure_s": 0.01, **camera},
        "bench": {"retries": 2, "timeout_s": 0.5},
    }


def test_open_bench_from_yaml_file(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(_direct_config(trigger_mode="free-run")))
    with open_bench(path) as bench:
        assert isinstance(bench.clock, VirtualClock) and bench.camera.clock is bench.slm.clock
        assert bench.camera.trigger_mode == "free-run" and bench.retries == 2 and bench.timeout_s == 0.5
        assert bench.camera.name == "camera" and bench.slm.name == "slm"
        image = np.arange(36, dtype=np.uint8).reshape(6, 6)
        m = bench.measure(image)
        assert np.array_equal(m.frame.image, image.astype(np.uint16) * 10)
        assert bench.config["camera"]["exposure_s"] == 0.01 and bench.config["clock"] == "virtual"
        yaml.safe_dump(bench.settings())


@pytest.mark.parametrize("patch, where, expected", [
    ({"camera": {"exposure_s": "fast"}}, "camera.exposure_s", "a number"),
    ({"camera": {"exposure": 0.01}}, "camera.exposure", "known fields"),
    ({"camera": {"backend": "warp-drive"}}, "camera.backend", "one of the backends"),
    ({"camera": {"backend": "simulated-slm"}}, "camera.backend", "a camera backend"),
    ({"slm": {"backend": "simulated-camera"}}, "slm.backend", "a slm backend"),
    ({"camera": {"faults": {"timeout_rate": 2}}}, "camera.faults", "timeout_rate must be in [0, 1]"),
    ({"camera": {"trigger_mode": "sometimes"}}, "camera.trigger_mode", "one of"),
    ({"camera": {"exposure_s": 20.0}}, "camera.exposure_s", "exposure_s must be in"),
    ({"camera": {"readout_s": -1.0}}, "camera.readout_s", "readout_s must be >= 0"),
    ({"camera": {"render": "optics"}}, "camera.optics", "a path to an optics YAML"),
    ({"camera": {"frontend": "frontend.yaml"}}, "camera.frontend", "now camera.optics"),
    ({"slm": {"lut_file": "missing.txt"}}, "slm", "cannot read LUT file"),
    ({"clock": "fast"}, "clock", "one of"),
    ({"bench": {"retries": "many"}}, "bench.retries", "an integer"),
    ({"bench": {"retries": -1}}, "bench.retries", "retries must be an integer >= 0"),
    ({"bench": {"max_stale_reads": 0}}, "bench.max_stale_reads", "max_stale_reads must be an integer >= 1"),
    ({"bench": {"timeout_s": -0.5}}, "bench.timeout_s", "timeout_s must be finite and > 0"),
    ({"light": {"url": "loop://"}}, "light.backend", "one of the backends"),
    ({"light": {"backend": "simulated-camera"}}, "light.backend", "a light-source backend"),
])
def test_config_errors_name_the_yaml_path(patch, where, expected):
    config = _direct_config()
    for section, value in patch.items():
        if isinstance(value, dict):
            config[section] = {**config.get(section, {}), **value}
        else:
            config[section] = value
    with pytest.raises(ConfigError) as info:
        open_bench(config)
    assert info.value.path == where
    assert expected in str(info.value)


def test_an_empty_bench_file_is_refused_as_such(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the file is empty") as info:
        open_bench(path)
    assert info.value.path == str(path)


def test_camera_failure_closes_the_slm(monkeypatch):
    closed = []
    monkeypatch.setattr(SimulatedSLM, "_close", lambda self: closed.append(self.name))
    with pytest.raises(ConfigError):
        open_bench(_direct_config(exposure_s=-1.0))
    assert closed == ["slm"]


def test_simulated_camera_needs_a_simulated_slm(dummy_distribution):
    from drivers.device import OpenContext
    from drivers.config import open_device
    with pytest.raises(ConfigError, match="simulated SLM"):
        open_device("camera", {"backend": "simulated-camera", "render": "direct"}, OpenContext(clock=VirtualClock()))


def test_default_bench_sees_the_slm_through_the_optical_system():
    """examples/bench_sim.yaml: the camera frame is exactly the optical system's render of the shown image."""
    from simulator.system import OpticalSystem

    with open_bench(REPO_EXAMPLES / "bench_sim.yaml", clock=VirtualClock()) as bench:
        assert bench.slm.shape == (28, 28) and bench.camera.bit_depth == 12
        assert bench.camera.black_level == 16 * 16  # offset_dn 16 of a 12-bit ADC, left-justified in 16 bits
        image = (np.arange(28 * 28).reshape(28, 28) * 7 % 256).astype(np.uint8)
        m = bench.measure(image)
    reference = OpticalSystem.from_yaml(REPO_EXAMPLES / "optics.yaml").eval()
    reference.render(np.zeros((28, 28), np.uint8), 0.010)  # the camera's probe frame at opening
    expected = reference.render(image, 0.010)
    assert np.array_equal(m.frame.image, expected)
    assert m.frame.image.shape == tuple(reference.frame_shape)


def test_real_bench_example_is_a_valid_config_for_its_backends():
    """examples/bench_real.yaml cannot be opened here (no camera, no monitor), but every section must be
    what its backend accepts."""
    from drivers.config import load_bench_config
    from drivers.registry import load_backend
    from onn_core.config import build

    config, _ = load_bench_config(REPO_EXAMPLES / "bench_real.yaml")
    for kind, section in (("slm", config.slm), ("camera", config.camera)):
        settings = dict(section)
        backend = load_backend(settings.pop("backend"))
        assert backend.kind == kind
        build(backend.Config, settings, kind)
