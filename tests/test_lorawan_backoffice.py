"""The LoRaWAN back office end to end, without the firmware half: registry -> export -> `lanterne network-server`
-> a modem twin driven over AT -> `UplinkService` over the ChirpStack and TTS integrations -> a signed ledger
downlink that the twin receives after its next uplink and the firmware's ledger module verifies."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import lanterne
from test_lorawan_twin import AtClient, make_twin

from host_tools.backoffice.lorawan_fleet import uplink_devices
from host_tools.backoffice.uplinks import UplinkService
from host_tools.codec import encode_values
from host_tools.codec.lns_devices import read_devices
from host_tools.fleet.registry import Registry
from host_tools.runtime import firmware_module

pytestmark = pytest.mark.integration
ledger = firmware_module("ledger")


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.sqlite"
    with Registry(path) as reg:
        reg.add_or_update("Bin_North", site="north", board="esp32-rak3172", lorawan=True)
        reg.add_or_update("lamp-2", site="north", board="esp32-devkitc")
    return path


def test_export_formats(fleet, tmp_path):
    out = lanterne("lorawan", "export", "--format", "chirpstack", "--registry", fleet)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    with Registry(fleet) as reg:
        eui, key = reg.secret("Bin_North", "lorawan_deveui"), reg.secret("Bin_North", "lorawan_appkey")
    (entry,) = doc["devices"]  # the Wi-Fi lamp has no LoRaWAN identity
    assert entry["device"]["devEui"] == eui.lower() and entry["deviceKeys"]["nwkKey"] == key.lower()
    out = lanterne("lorawan", "export", "--format", "tts", "--registry", fleet, "--out", tmp_path / "tts.jsonl")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tts.jsonl").stat().st_mode & 0o077 == 0
    line = json.loads((tmp_path / "tts.jsonl").read_text())
    assert line["ids"]["device_id"] == "bin-north" and line["root_keys"]["app_key"]["key"] == key.upper()
    assert line["lorawan_version"] == "MAC_V1_0_3" and line["supports_join"] is True
    assert [i.device for i in read_devices((tmp_path / "tts.jsonl").read_text())] == ["bin-north"]
    bad = lanterne("lorawan", "export", "--format", "tts", "lamp-2", "--registry", fleet)
    assert bad.returncode == 1 and "lamp-2: no LoRaWAN identity" in bad.stderr


@pytest.mark.parametrize("integration", ["chirpstack", "tts"])
def test_readings_reach_the_uplink_service_and_the_ledger_reaches_the_board(fleet, tmp_path, mosquitto, integration):
    export = tmp_path / "devices.json"
    assert lanterne("lorawan", "export", "--format", "chirpstack", "--registry", fleet, "--out", export).returncode == 0
    ns = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "network-server", "--broker", mosquitto.url,
                           "--integration", integration, "--devices", export], stdout=subprocess.PIPE, text=True)
    try:
        assert "network server on" in ns.stdout.readline()
        with Registry(fleet) as reg:
            devices = uplink_devices(reg)
            key_hex = reg.secret("Bin_North", "lorawan_appkey")
        svc = UplinkService(devices, integration=integration, ledger_per_day=10, broker_url=mosquitto.url).start()
        twin, world = make_twin(tmp_path, mosquitto.url, name="Bin_North", lorawan_join_failures=1)
        at = AtClient(twin)
        for c in (f"AT+DEVEUI={devices[0].dev_eui}", "AT+APPEUI=0000000000000000", f"AT+APPKEY={key_hex}", "AT+DR=5"):
            assert at.cmd(c) == ["OK"]
        assert at.cmd("AT+JOIN=1:0:8:2") == ["OK"]  # the module retries once by itself after the injected failure
        assert at.until(("+EVT:JOIN",), timeout=20)[-1] == "+EVT:JOINED"
        frames = encode_values([{"temperature": 20.5 + i, "seq": i} for i in range(3)], budget=51, runtime="cpython", lorawan=True)
        assert at.cmd("AT+SEND=102:" + frames[0]["frame"].hex()) == ["OK"]
        at.until(("+EVT:TX_DONE",))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [e for e in svc.events if e["event"] == "ledger"]:
            time.sleep(0.05)
        readings = [e["reading"] for e in svc.events if e["event"] == "reading"]
        assert [r["seq"] for r in readings] == [0, 1, 2] and readings[0]["temperature"] == 20.5
        (sent,) = [e for e in svc.events if e["event"] == "ledger"]
        assert (sent["next"], sent["span"], sent["missing"]) == (3, 0, [])
        # class A: the ledger waits in the network server's queue until the board's next uplink
        time.sleep(0.5)
        again = encode_values([{"temperature": 21.0, "seq": 2}], budget=51, runtime="cpython", lorawan=True)[0]["frame"]
        assert at.cmd("AT+SEND=102:" + again.hex()) == ["OK"]  # a resend: the service drops the duplicate
        events = at.until(("+EVT:TX_DONE",))
        rx = [e for e in events if e.startswith("+EVT:RX_1:")]
        assert rx, events
        port, data = rx[0].split(":")[-2:]
        assert int(port) == ledger.FPORT_LEDGER
        with Registry(fleet) as reg:
            got = ledger.parse(reg.command_key("Bin_North"), "Bin_North", bytes.fromhex(data))
        assert got.acknowledged(2) and not got.acknowledged(3)
        assert len([e for e in svc.events if e["event"] == "reading"]) == 3
        assert svc.stats()["Bin_North"]["duplicates"] == 1 and svc.stats()["Bin_North"]["dr"] == 5
        svc.stop()
        twin.detach_board()
    finally:
        ns.terminate()
        ns.wait(10)
