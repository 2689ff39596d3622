"""A broken config.json never unprovisions a board: it runs on its last known good (identity, broker,
credentials, command key) and says what is wrong; with no config at all it says so on its console
and tries no broker. Virtual boards, a real Mosquitto that admits only the fleet's own devices."""

from __future__ import annotations

import json
import time

import pytest

from host_tools.backoffice.brokers import Mosquitto
from host_tools.backoffice.command_client import CommandClient
from host_tools.backoffice.watcher import Watcher
from host_tools.fleet import broker_files
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration


def test_a_corrupt_config_keeps_identity_and_credentials(virtual_boards, tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    reg.add_or_update("lamp-7", site="lkg", board="esp32-devkitc")
    files = broker_files.write_broker_files(reg, tmp_path / "broker")
    office = reg.backoffice_credentials()
    key = reg.command_key("lamp-7")
    topic = "lanterne/v1/lkg/lamp-7/status"
    with Mosquitto(password_file=files["password_file"], acl_file=files["acl_file"]) as broker:
        cfg = {"device": "lamp-7", "site": "lkg", "broker": broker.url, "mqtt_user": reg.get("lamp-7").mqtt_user,
               "mqtt_password": reg.secret("lamp-7", "mqtt_password"), "command_key": key.hex(), "status_period_s": 60}
        with Watcher(broker.url, [topic], username=office[0], password=office[1]) as w:
            (h,) = virtual_boards(1, config=cfg)
            w.wait_for(topic, lambda m: b'"online"' in m.payload, timeout=30)
            assert json.loads((h.flash / "config.lkg.json").read_text()) == cfg  # kept once it ran on it

            # A write cut short by a power cut: config.json is half a file.
            h.power_cut()
            (h.flash / "config.json").write_text(json.dumps(cfg)[:57])
            t = time.time()
            h.power_on()
            found = w.wait_for(topic, lambda m: m.t >= t and b'"power_on"' in m.payload, timeout=30)
        doc = json.loads(found[0].payload)
        # Online on a broker that admits only lamp-7 with its own password, as lamp-7, saying why.
        assert doc["state"] == "online" and doc["device"] == "lamp-7"
        assert len(doc["faults"]) == 1 and doc["faults"][0].startswith("config.json: not valid JSON (")
        assert doc["faults"][0].endswith("running on config.lkg.json (last known good)")
        assert "config.json: not valid JSON" in h.console()
        # Its command key too: a signed command is accepted.
        client = CommandClient(broker.url, username=office[0], password=office[1])
        try:
            assert client.send("lkg", "lamp-7", key, 1, "status").ok
        finally:
            client.close()


def test_no_config_at_all_says_so_and_tries_no_broker(virtual_boards):
    (h,) = virtual_boards(1, config={"device": "nobody"}, power_on=False)
    (h.flash / "config.json").unlink()
    h.power_on()
    h.wait_for(r"NOT PROVISIONED: no broker in its config, this board stays OFFLINE", timeout=30)
    h.wait_for(r"config.json: missing, and config.lkg.json is missing: not provisioned, no broker to connect to")
    # It keeps sampling into its store, and its status goes to the console.
    m = h.wait_for(r"status not sent \(config: no broker configured: offline, readings kept in the store\): (\{.*\})\r?\n",
                   timeout=30)
    doc = json.loads(m.group(1))
    assert doc["backlog"] >= 1 and doc["device"] == "unprovisioned"
    console = h.console()
    assert "mqtt connect" not in console and "connected to" not in console and "127.0.0.1" not in console
