"""The broker's ACLs for over-the-air updates, on a real Mosquitto with the generated files: a
device fetches its own update (publishes its ota/req and ota/progress, receives its ota/data) and
nothing else; only the back office serves blocks."""

from __future__ import annotations

import time

import pytest
from test_provision_acl import Client

from host_tools.backoffice.brokers import Mosquitto
from host_tools.fleet import broker_files
from host_tools.fleet.registry import Registry


@pytest.mark.integration
def test_ota_topics_are_each_devices_own(tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    reg.add_or_update("lamp-a", site="centre", board="esp32-devkitc")
    reg.add_or_update("lamp-b", site="centre", board="esp32-devkitc")
    files = broker_files.write_broker_files(reg, tmp_path / "broker")
    a_t, b_t = broker_files.device_topics("centre", "lamp-a"), broker_files.device_topics("centre", "lamp-b")
    with Mosquitto(password_file=files["password_file"], acl_file=files["acl_file"]) as broker:
        office = Client(broker, *reg.backoffice_credentials(), client_id="office")
        a = Client(broker, "lamp-a", reg.secret("lamp-a", "mqtt_password"))
        b = Client(broker, "lamp-b", reg.secret("lamp-b", "mqtt_password"))
        try:
            assert office.subscribe("lanterne/#") and a.subscribe(a_t["ota/data"]) and b.subscribe(b_t["ota/data"])
            a.subscribe(b_t["ota/data"])  # granted or not, nothing of B's may arrive
            a.publish(a_t["ota/req"], b"M12345678")
            a.publish(a_t["ota/progress"], b'{"state": "manifest"}', retain=True)
            a.publish(b_t["ota/data"], b"B forged blocks for B")  # a device may not serve blocks
            a.publish(a_t["ota/data"], b"B forged blocks for itself")
            a.publish(b_t["ota/progress"], b'{"state": "committed"}', retain=True)
            office.publish(a_t["ota/data"], b"M manifest for A")
            office.publish(b_t["ota/data"], b"M manifest for B")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (a.messages and b.messages):
                time.sleep(0.05)
            time.sleep(0.3)
            assert a.messages == [(a_t["ota/data"], b"M manifest for A")]
            assert b.messages == [(b_t["ota/data"], b"M manifest for B")]
            seen = [t for t, _ in office.messages]
            assert a_t["ota/req"] in seen and a_t["ota/progress"] in seen
            assert b_t["ota/progress"] not in seen and seen.count(a_t["ota/data"]) == 1
        finally:
            for c in (office, a, b):
                c.close()
