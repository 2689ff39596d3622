"""`lanterne monitor` as a person reads it: when the next reading and status are due, whole ids and
rounded values in a pipe, on a real virtual board."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time

import pytest
from conftest import LANTERNE

from host_tools.backoffice.monitor import SHOWN, FleetView, default_periods, format_value, plain_table
from host_tools.fleet.registry import Registry
from host_tools.runtime import firmware_module

T0 = 1_000_000.0


def status(**extra) -> bytes:
    return json.dumps({"state": "online", "device": "lamp-1", "fw": "0.1.0", "backlog": 0, "faults": [], **extra}).encode()


def test_the_periods_come_from_the_status_else_the_registry_else_the_firmwares_defaults():
    assert default_periods() == {"sample_period_s": 60, "status_period_s": 300}  # the config schema's
    view = FleetView({"lamp-2": {"sample_period_s": 30, "lat": 45.0}}, started=T0)
    view.feed("lanterne/v1/s/lamp-1/status", status(sample_period_s=10, status_period_s=20), T0 + 1)
    view.feed("lanterne/v1/s/lamp-2/status", status(), T0 + 1)
    view.feed("lanterne/v1/s/lamp-3/status", status(), T0 + 1, retain=True)
    got = {d["device"]: d["expected"] for d in view.snapshot(now=T0 + 5)}
    assert got["lamp-1"] == {"sample_period_s": 10, "status_period_s": 20, "periods_from": "status",
                             "next_reading_in_s": 5.0, "next_reading_exact": False,  # no reading yet: within 10 s of the start
                             "next_status_in_s": 16.0, "next_status_exact": True}  # a live status at T0+1
    assert got["lamp-2"]["periods_from"] == "registry" and (got["lamp-2"]["sample_period_s"], got["lamp-2"]["status_period_s"]) == (30, 300)
    assert got["lamp-3"]["periods_from"] == "default" and got["lamp-3"]["next_status_exact"] is False  # retained: sent who knows when
    rows = {r[0]: r for r in view.rows(now=T0 + 5)}
    assert rows["lamp-1"][5:7] == ["within 5s (every 10s)", "in 16s (every 20s)"]
    assert rows["lamp-3"][5:7] == ["within 55s (every 60s)", "within 5m (every 5m)"]
    assert view.rows(now=T0 + 30)[0][6] == "late 9s (every 20s)"
    view.feed("lanterne/v1/s/lamp-1/status", status(state="offline"), T0 + 31)
    assert view.rows(now=T0 + 32)[0][5:7] == ["- (offline)", "- (offline)"]


def test_values_are_rounded_to_what_their_field_resolves():
    assert format_value(12345.678, None) == "12300" and format_value(123.4567, None) == "123"
    assert format_value(0.0512345, None) == "0.0512" and format_value(21.456, 1) == "21.5"
    # No decimal shown that the payload does not carry (its resolution per field, docs/payload.md).
    numeric = firmware_module("codec_values")._NUMERIC
    for name, _unit, decimals in SHOWN:
        if decimals is not None:
            assert 10 ** decimals <= max(10 ** math.ceil(math.log10(numeric[name][1])), 1), name


def test_a_plain_table_keeps_every_cell_whole():
    long_id = "streetlight-avenue-jean-jaures-0042-north-side-of-the-bridge"
    text = plain_table([[long_id, "x"]], ["device", "site"])
    assert long_id in text and len(text.splitlines()[1]) > 60


@pytest.mark.integration
def test_monitor_in_a_pipe_says_when_the_next_reading_and_status_come(virtual_boards, mosquitto, tmp_path):
    device = "streetlight-avenue-jean-jaures-0042-north-side"  # a row wider than 80 columns
    quick = "lamp-quick"  # its sampling period is in the registry (as `lanterne provision --set` leaves it)
    reg = Registry(tmp_path / "fleet.sqlite")
    reg.add_or_update(quick, site="lyon", board="esp32-devkitc", config={"sample_period_s": 2})
    reg.close()
    proc = subprocess.Popen([*LANTERNE, "monitor", "--broker", mosquitto.url, "--duration", "8"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # subscribed before the boards boot: their first status and readings are seen live
    virtual_boards(1, config={"device": device, "site": "lyon", "broker": mosquitto.url})
    virtual_boards(1, config={"device": quick, "site": "lyon", "broker": mosquitto.url, "sample_period_s": 2},
                   world_values={"illuminance_lx": 123.4567})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    header, *rows = [line for line in out.splitlines() if not line.startswith("#")]
    assert header.split() == ["device", "site", "state", "last", "seen", "last", "reading", "next", "reading", "next", "status",
                              "backlog", "faults", "firmware", "update"]
    (row,) = [r for r in rows if r.startswith(device + " ")]  # the whole id, though the line is wider than 80
    assert len(row) > 80 and "lyon" in row and "online" in row
    # No period set on this board: the firmware's defaults, a reading a minute, a status every 5 minutes.
    assert re.search(r" in \d+s \(every 60s\) +in \d+m \(every 5m\) ", row), row
    (row,) = [r for r in rows if r.startswith(quick + " ")]
    assert re.search(r" (in \d+s|late \d+s) \(every 2s\) ", row), row
    lux = re.search(r" (\S+)lx ", row)
    assert lux, out
    assert len(lux.group(1).replace(".", "").lstrip("0")) <= 3, row  # three significant digits, not 123.456789...
    assert "\x1b[" not in out  # no terminal codes in a file
