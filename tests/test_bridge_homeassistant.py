"""Home Assistant: what each board is announced as, and how its commands become Lanterne commands.
(The end-to-end test dims a virtual lamp from the command topic; this covers every mapping.)"""

from __future__ import annotations

import json

import pytest
from conftest import lanterne

from host_tools.backoffice.bridge.devices import Device, board_parts
from host_tools.backoffice.bridge.homeassistant import command_for, discovery


def device(name, board):
    parts, fields = board_parts(board)
    return Device(name, "lyon", board, 45.76, 4.83, fields, parts, None, {})


def test_each_board_is_a_device_with_the_entities_it_has():
    lamp = discovery(device("lamp-1", "esp32-devkitc"))
    bin_ = discovery(device("bin-1", "olimex-esp32-poe"))
    kinds = {t.split("/")[1] + ":" + t.split("/")[2].rsplit("_", 1)[-1] for t in lamp}
    assert {"light:lamp", "binary_sensor:fault", "sensor:temperature", "sensor:illuminance", "sensor:voltage"} <= kinds
    assert not any("/cover/" in t or "_fill/" in t for t in lamp)
    assert any("/cover/" in t for t in bin_) and any("_fill/" in t for t in bin_) and not any("/light/" in t for t in bin_)
    for cfg in list(lamp.values()) + list(bin_.values()):
        assert cfg["availability"][0]["topic"].endswith("/status") and cfg["unique_id"].startswith("lanterne_")
        assert cfg["device"]["identifiers"] == [f"lanterne_{cfg['device']['name']}"]
    units = {c["unique_id"]: (c.get("device_class"), c.get("unit_of_measurement")) for c in lamp.values()}
    assert units["lanterne_lamp-1_pressure"] == ("atmospheric_pressure", "hPa")
    assert units["lanterne_lamp-1_humidity"] == ("humidity", "%")
    assert all(json.dumps(c) for c in lamp.values())  # plain JSON, as published


@pytest.mark.parametrize("kind,payload,expected", [
    ("light", {"state": "ON", "brightness": 40}, ("dim", {"level": 40, "ramp_s": 0, "duration_min": 0})),
    ("light", {"state": "ON", "brightness": 40, "transition": 5}, ("dim", {"level": 40, "ramp_s": 5, "duration_min": 0})),
    ("light", {"state": "ON"}, ("dim", {"level": 100, "ramp_s": 0, "duration_min": 0})),
    ("light", {"state": "OFF"}, ("dim", {"level": 0, "ramp_s": 0, "duration_min": 0})),
    ("light", {"state": "ON", "effect": "profile"}, ("resume-profile", {})),
    ("bollard", "OPEN", ("bollard", {"action": "lower"})),  # the way is open: the bollard is down
    ("bollard", "CLOSE", ("bollard", {"action": "raise"})),
])
def test_commands_map_to_lanterne_commands(kind, payload, expected):
    raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    assert command_for(kind, raw) == expected


@pytest.mark.parametrize("kind,raw,why", [
    ("light", b"dim please", "is not JSON"),
    ("light", b'{"brightness": 20}', '"state": "ON" or "OFF"'),
    ("light", b'{"state": "ON", "brightness": 150}', "brightness 150: 0..100"),
    ("light", b'{"state": "ON", "brightness": true}', "brightness True"),
    ("bollard", b"STOP", "OPEN or CLOSE"),
])
def test_bad_commands_are_refused_with_the_reason(kind, raw, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        command_for(kind, raw)


def test_bridge_command_line_errors(tmp_path):
    res = lanterne("bridge", "--registry", tmp_path / "none.sqlite")
    assert res.returncode == 1 and "no fleet registry" in res.stderr
    from bridge_helpers import make_registry

    registry = make_registry(tmp_path / "fleet.sqlite")
    res = lanterne("bridge", "--registry", registry, "--db", "mysql://x@y/z")
    assert res.returncode == 1 and "use a file path, sqlite:///PATH or postgresql://" in res.stderr
    res = lanterne("bridge", "--registry", registry, "--db", tmp_path / "no" / "dir" / "b.sqlite")
    assert res.returncode == 1 and "does not exist" in res.stderr
    res = lanterne("bridge", "--registry", registry, "--db", tmp_path / "b.sqlite", "--broker", "mqtt://127.0.0.1:9",
                   "--http", "off", timeout=60)
    assert res.returncode == 1 and "cannot reach the broker" in res.stderr
    ddl = lanterne("bridge", "--print-schema", "postgresql").stdout
    assert "CREATE TABLE readings" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl and "PRIMARY KEY (device, seq)" in ddl
