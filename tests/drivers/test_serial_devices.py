"""Serial devices: the line-protocol driver against the emulated firmware over a real pseudo-terminal,
and the transport over pyserial's ``loop://``. Read timeouts are tens of milliseconds; nothing sleeps."""

import math

import numpy as np
import pytest
import serial

from drivers import open_bench
from drivers.clock import VirtualClock

from drivers.errors import DeviceClosed, DeviceDisconnected, DeviceError, DeviceFault, DeviceNotFound, DeviceTimeout, InputError
from drivers.firmware_emulator import LightSourceFirmware, PtyFirmwareEmulator
from drivers.device import OpenContext
from drivers.clock import RealClock
from drivers.registry import load_backend
from drivers.serial_devices import CommandRejected, SerialLightSource, SerialTransport
from onn_core.errors import ConfigError

TIMEOUT_S = 0.03


@pytest.fixture
def emulator():
    with PtyFirmwareEmulator() as emu:
        yield emu


@pytest.fixture
def light(emulator):
    with SerialLightSource(emulator.port, timeout_s=TIMEOUT_S, retries=2, reconnect_timeout_s=0.1) as device:
        yield device


# --- the firmware's protocol (no I/O) ---------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    ("*IDN?", "ONN-HIL,EMULATED-LIGHTSOURCE,0001,1.0"),
    ("SHUTTER?", "CLOSED"),
    ("shutter open", "OK"),
    ("POWER?", "0.000000"),
    ("POWER 0.5", "OK"),
    ("POWER 1.5", "ERR POWER value 1.5 outside [0, 1]"),
    ("POWER nan", "ERR POWER value NAN outside [0, 1]"),
    ("POWER x", "ERR POWER value 'X' is not a number"),
    ("SHUTTER AJAR", "ERR SHUTTER expects OPEN or CLOSE"),
    ("LASER ON", "ERR unknown command 'LASER ON'"),
    ("", "ERR empty command"),
])
def test_firmware_replies(line, reply):
    assert LightSourceFirmware().handle(line) == reply


def test_firmware_state_and_reset():
    fw = LightSourceFirmware()
    for line in ("SHUTTER OPEN", "POWER 0.125"):
        assert fw.handle(line) == "OK"
    assert (fw.handle("SHUTTER?"), fw.handle("POWER?")) == ("OPEN", "0.125000")
    assert fw.handle("*RST") == "OK"
    assert (fw.shutter_open, fw.power) == (False, 0.0)


def test_firmware_faults_shape_the_next_replies_only():
    fw = LightSourceFirmware()
    fw.inject_fault("partial")
    fw.inject_fault("silence")
    assert fw.reply_bytes(b"POWER?") == b"0.00"  # first half of b"0.000000\n", no terminator
    assert fw.reply_bytes(b"POWER 0.5") == b""  # silent, but executed
    assert fw.power == 0.5
    assert fw.reply_bytes(b"POWER?") == b"0.500000\n"
    with pytest.raises(InputError, match="fault kind"):
        fw.inject_fault("smoke")


# --- the driver over a real pseudo-terminal ---------------------------------------------------------

def test_commands_round_trip_over_pty(light, emulator):
    fw = emulator.firmware
    assert light.identify() == "ONN-HIL,EMULATED-LIGHTSOURCE,0001,1.0"
    light.set_power(0.375)
    assert fw.power == 0.375 and light.power() == 0.375
    light.open_shutter()
    assert fw.shutter_open and light.shutter_is_open()
    light.close_shutter()
    assert not fw.shutter_open and not light.shutter_is_open()
    light.reset()
    assert fw.power == 0.0
    assert fw.commands_seen == ["*IDN?", "POWER 0.375000", "POWER?", "SHUTTER OPEN", "SHUTTER?",
                                "SHUTTER CLOSE", "SHUTTER?", "*RST"]
    assert light.stats == {"commands": 8, "retries": 0, "reconnects": 0}


@pytest.mark.parametrize("fault", ["garbage", "partial", "silence"])
def test_one_bad_reply_is_retried(light, emulator, fault):
    light.set_power(0.25)
    emulator.firmware.inject_fault(fault)
    assert light.power() == 0.25
    assert light.stats["retries"] == 1
    assert emulator.firmware.commands_seen[-2:] == ["POWER?", "POWER?"]


@pytest.mark.parametrize("fault, error, cause", [
    ("garbage", DeviceFault, UnicodeDecodeError),
    ("partial", DeviceTimeout, type(None)),
    ("silence", DeviceTimeout, type(None)),
])
def test_persistent_bad_replies_raise_after_all_retries(light, emulator, fault, error, cause):
    emulator.firmware.inject_fault(fault, count=3)
    with pytest.raises(error) as info:
        light.power()
    assert isinstance(info.value.__cause__, cause)
    assert emulator.firmware.commands_seen == ["POWER?"] * 3  # 1 try + 2 retries
    if fault == "partial":
        assert "partial reply b'0.00'" in str(info.value)
    light.set_power(0.5)  # the device stays usable
    assert light.power() == 0.5


def test_rejected_command_is_not_retried(light, emulator):
    with pytest.raises(CommandRejected, match="ERR unknown command 'FOCUS 3'"):
        light.command("FOCUS 3")
    assert emulator.firmware.commands_seen == ["FOCUS 3"]


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "half"])
def test_bad_power_is_refused_before_sending(light, emulator, bad):
    with pytest.raises(InputError, match="fraction"):
        light.set_power(bad)
    assert emulator.firmware.commands_seen == []


def test_unplug_raises_disconnected_and_replug_reconnects(light, emulator):
    light.set_power(0.75)
    emulator.unplug()
    with pytest.raises(DeviceDisconnected) as info:
        light.power()
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, serial.SerialException) for e in chain)  # vendor error kept, not swallowed
    emulator.plug()  # a new pty behind the same path, like a re-enumerated USB adapter
    assert light.power() == 0.75
    assert light.stats["reconnects"] >= 2


def test_a_brief_unplug_is_bridged_by_reconnecting_with_backoff(emulator, monkeypatch):
    """The cable is back after a few failed reopening attempts (as after a 150 ms unplug): the command
    succeeds, the pauses between attempts grow, and they are slept on the device's clock."""
    clock = VirtualClock()
    device = SerialLightSource(emulator.port, timeout_s=TIMEOUT_S, retries=1, reconnect_timeout_s=1.0, clock=clock)
    device.set_power(0.5)
    emulator.unplug()
    opens, real_open = [], device._transport.open

    def open_port():
        opens.append(clock.now())
        if len(opens) == 4:
            emulator.plug()
        real_open()

    monkeypatch.setattr(device._transport, "open", open_port)
    assert device.power() == 0.5
    pauses = np.diff(opens)
    assert len(opens) == 4 and np.all(pauses > 0) and np.all(np.diff(pauses) > 0), opens
    emulator.unplug()  # gone for good: DeviceDisconnected once reconnect_timeout_s has passed
    start = clock.now()
    with pytest.raises(DeviceDisconnected, match="still absent after 1 s"):
        device.power()
    assert clock.now() - start == pytest.approx(1.0)
    device.close()


def test_reconnect_off_reports_the_lost_port(emulator):
    device = SerialLightSource(emulator.port, timeout_s=TIMEOUT_S, retries=0, reconnect=False)
    emulator.unplug()
    with pytest.raises(DeviceDisconnected):
        device.power()
    emulator.plug()
    with pytest.raises(DeviceDisconnected, match="reconnect is off"):
        device.power()
    device.reconnect()  # explicit reconnect still works
    assert device.power() == 0.0
    device.close()


def test_close_closes_shutter_is_idempotent_and_final(emulator):
    device = SerialLightSource(emulator.port, timeout_s=TIMEOUT_S)
    device.open_shutter()
    device.close()
    device.close()
    assert not emulator.firmware.shutter_open
    with pytest.raises(DeviceClosed):
        device.power()


def test_missing_port_is_not_found(tmp_path):
    with pytest.raises(DeviceNotFound) as info:
        SerialLightSource(str(tmp_path / "ttyUSB9"), timeout_s=TIMEOUT_S)
    assert isinstance(info.value.__cause__, serial.SerialException)


def test_settings_snapshot(light, emulator):
    light.power()
    snap = light.settings()
    assert snap["url"] == emulator.port and snap["timeout_s"] == TIMEOUT_S and snap["retries"] == 2
    assert snap["stats"] == {"commands": 1, "retries": 0, "reconnects": 0}
    assert snap["kind"] == "light-source" and snap["backend"] == "SerialLightSource"


def test_opened_from_bench_config_through_the_registry(emulator):
    cls = load_backend("serial-light")
    assert cls is SerialLightSource
    context = OpenContext(clock=RealClock())
    with cls.from_config({"url": emulator.port, "timeout_s": TIMEOUT_S, "retries": 0}, context, "light") as device:
        assert device.name == "light" and device.retries == 0
        assert device.identify().startswith("ONN-HIL,")
    with pytest.raises(ConfigError, match="light.retries"):
        cls.from_config({"url": emulator.port, "retries": "many"}, context, "light")


def test_light_section_of_a_bench_config(emulator):
    """The ``light:`` section the SerialLightSource docstring shows: opened with the bench, in its
    settings, and closed (shutter first) with it."""
    config = {"clock": "virtual",
              "slm": {"backend": "simulated-slm", "shape": [4, 4]},
              "camera": {"backend": "simulated-camera", "render": "direct"},
              "light": {"backend": "serial-light", "url": emulator.port, "timeout_s": TIMEOUT_S}}
    with open_bench(config) as bench:
        assert isinstance(bench.light, SerialLightSource) and bench.light.name == "light"
        bench.light.open_shutter()
        assert emulator.firmware.shutter_open
        assert bench.settings()["light"]["url"] == emulator.port
    assert bench.light.closed and not emulator.firmware.shutter_open
    with pytest.raises(ConfigError, match="light.retries"):
        open_bench({**config, "light": {**config["light"], "retries": -1}})


# --- the transport over loop:// (what is written is read back) -------------------------------------

@pytest.fixture
def loop():
    transport = SerialTransport("loop://", timeout_s=TIMEOUT_S, max_line_bytes=32, name="loop")
    transport.open()
    yield transport
    transport.close()


def test_loop_line_round_trip(loop):
    loop.write_line("POWER 0.5")
    assert loop.read_line() == "POWER 0.5"
    loop._port.write(b"VALUE 1\r\n")  # CRLF devices are read too
    assert loop.read_line() == "VALUE 1"


def test_loop_partial_line_and_silence_time_out(loop):
    loop._port.write(b"0.12")
    with pytest.raises(DeviceTimeout, match=r"partial reply b'0.12'"):
        loop.read_line()
    with pytest.raises(DeviceTimeout, match="no reply"):
        loop.read_line()


@pytest.mark.parametrize("raw, match", [
    (b"\xff\xfe\n", "not ASCII"),
    (b"OK\x07\n", "control characters"),
    (b"9" * 40 + b"\n", "longer than 32 bytes"),
])
def test_loop_garbage_is_a_fault(loop, raw, match):
    loop._port.write(raw)
    with pytest.raises(DeviceFault, match=match):
        loop.read_line()


def test_loop_stale_input_is_discarded(loop):
    loop._port.write(b"stale\n")
    loop.discard_input()
    loop.write_line("fresh")
    assert loop.read_line() == "fresh"


def test_terminator_inside_command_is_refused(loop):
    with pytest.raises(InputError, match="terminator"):
        loop.write_line("POWER 1\nSHUTTER OPEN")


def test_device_on_loop_gets_its_echo_and_rejects_it():
    # loop:// answers every command with the command itself: never a valid value or 'OK'.
    with SerialLightSource("loop://", timeout_s=TIMEOUT_S, retries=1) as device:
        with pytest.raises(DeviceFault, match="unexpected reply 'POWER\\?'"):
            device.power()
        assert device.stats["retries"] == 1
        with pytest.raises(DeviceFault, match="unexpected reply 'SHUTTER OPEN'"):
            device.open_shutter()


def test_all_errors_are_device_errors():
    for cls in (CommandRejected, DeviceFault, DeviceTimeout, DeviceDisconnected, DeviceNotFound):
        assert issubclass(cls, DeviceError)
