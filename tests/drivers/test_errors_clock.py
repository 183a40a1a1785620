"""Error hierarchy, backend-exception translation, clocks."""

import errno

import pytest

from drivers.clock import RealClock, VirtualClock, make_clock
from drivers.errors import (
    DeviceClosed, DeviceDisconnected, DeviceError, DeviceFault, DeviceNotFound, DeviceTimeout, MissingDependency,
    StaleFrame, UnsupportedFeature, backend_errors,
)
from onn_core.errors import HilError, InputError


def test_hierarchy_roots_at_hil_error_and_builtin_kinds():
    for cls in (DeviceTimeout, DeviceDisconnected, DeviceNotFound, DeviceClosed, DeviceFault, StaleFrame,
                UnsupportedFeature, MissingDependency):
        assert issubclass(cls, DeviceError) and issubclass(cls, HilError)
    assert issubclass(DeviceTimeout, TimeoutError)
    assert issubclass(DeviceDisconnected, ConnectionError)
    assert issubclass(UnsupportedFeature, NotImplementedError)
    assert issubclass(MissingDependency, ImportError)
    err = DeviceTimeout("no frame", device="cam0")
    assert err.device == "cam0" and str(err) == "cam0: no frame"
    dep = MissingDependency("slmsuite", "pip install onn-hil[slmsuite]")
    assert "pip install onn-hil[slmsuite]" in str(dep) and dep.package == "slmsuite"


@pytest.mark.parametrize("raised, expected", [
    (TimeoutError("t"), DeviceTimeout),
    (ConnectionResetError("c"), DeviceDisconnected),
    (OSError(errno.ENODEV, "gone"), DeviceDisconnected),
    (OSError("usb transfer"), DeviceFault),
    (FileNotFoundError("/dev/video9"), DeviceNotFound),
    (NotImplementedError("gain"), UnsupportedFeature),
    (RuntimeError("sdk"), DeviceFault),
])
def test_backend_errors_translates_and_chains(raised, expected):
    with pytest.raises(expected) as info:
        with backend_errors("snap", "cam0"):
            raise raised
    assert info.value.__cause__ is raised, "the backend's exception must be chained"
    assert info.value.device == "cam0"
    assert "snap failed" in str(info.value) and type(raised).__name__ in str(info.value)


def test_backend_errors_passes_toolkit_errors_and_interrupts():
    original = InputError("bad")
    with pytest.raises(InputError) as info:
        with backend_errors("x"):
            raise original
    assert info.value is original
    with pytest.raises(KeyboardInterrupt):
        with backend_errors("x"):
            raise KeyboardInterrupt


def test_virtual_clock_moves_only_when_slept_on():
    c = VirtualClock(start_s=5.0)
    assert c.now() == 5.0 and c.now() == 5.0
    c.sleep(0.25)
    c.sleep(-1)  # negative sleeps do nothing
    assert c.now() == 5.25
    c.sleep_until(7.1)
    assert c.now() == 7.1  # exact, not 5.25 + (7.1 - 5.25)
    c.sleep_until(1.0)
    assert c.now() == 7.1
    c.advance(0.9)
    assert c.now() == pytest.approx(8.0)
    with pytest.raises(InputError):
        c.advance(-1)


def test_clock_timelines_and_factory():
    a, b = RealClock(), RealClock()
    assert a.shares_timeline(b)
    v = VirtualClock()
    assert v.shares_timeline(v) and not v.shares_timeline(VirtualClock()) and not a.shares_timeline(v)
    assert isinstance(make_clock("virtual"), VirtualClock) and isinstance(make_clock("real"), RealClock)
    with pytest.raises(ValueError):
        make_clock("fast")
