"""Foundation, end to end: mpremote deploys the firmware to a virtual board, the board talks to a
real Mosquitto, the world changes, the board is killed mid-run and boots again from its flash."""

from __future__ import annotations

import json

import pytest

from host_tools import boards
from host_tools.fleet import deploy

pytestmark = pytest.mark.integration


def test_deploy_with_mpremote_status_on_mosquitto_power_cut_and_reboot(virtual_boards, mosquitto, tmp_path):
    from host_tools.backoffice.watcher import Watcher

    board = boards.load("esp32-devkitc")
    (h,) = virtual_boards(1, firmware=False)
    h.wait_for(">>> ")
    assert not (h.flash / "main.py").exists()
    cfg = {"device": "lamp-0042", "site": "itest", "broker": mosquitto.url, "status_period_s": 5}
    stage = deploy.stage(board, cfg, tmp_path / "stage", romfs=True)
    with Watcher(mosquitto.url, ["lanterne/v1/itest/#"]) as w:
        # unmodified mpremote: romfs deploy stage.romfs + fs cp ... + reset
        out = deploy.mpremote_copy(h.port, stage, reset=True)
        assert "ROMFS image deployed" in out
        assert not (h.flash / "lib" / "lanterne").exists() and (h.flash / "main.py").exists()  # the library runs from ROMFS
        status = w.wait_for("lanterne/v1/itest/lamp-0042/status", timeout=30)[-1]
        doc = json.loads(status.payload)
        with Watcher(mosquitto.url, ["lanterne/v1/itest/+/status"]) as late:
            retained = late.wait_for("lanterne/v1/itest/lamp-0042/status", timeout=10)[0]
            assert retained.retain  # a back office that connects later still sees the board's state
        assert doc["state"] == "online" and doc["device"] == "lamp-0042" and doc["board"] == "esp32-devkitc"
        assert doc["faults"] == []
        assert 20_000 < doc["heap_free"] / h.board.heap_scale() < board.heap_bytes  # ESP32-equivalent bytes

        # Change the world: the link drops, the broker publishes the board's last will once
        # the keepalive lapses or the board reconnects when it returns.
        n_online = len(w.matching("lanterne/v1/itest/lamp-0042/status", lambda m: b'"online"' in m.payload))
        h.world.set(link_up=False)
        h.wait_for(r"\[lanterne\] link down", timeout=15)
        h.world.set(link_up=True)
        w.wait_for(
            "lanterne/v1/itest/lamp-0042/status", lambda m: b'"online"' in m.payload, count=n_online + 1, timeout=30
        )

        # Kill it mid-run (power cut): the flash stays, and it boots again from the same folder.
        boots = h.boots
        h.power_cut()
        h.power_on()
        status = w.wait_for(
            "lanterne/v1/itest/lamp-0042/status",
            lambda m: b'"power_on"' in m.payload,
            timeout=30,
        )[-1]
        assert json.loads(status.payload)["uptime_s"] < 10
        assert h.boots == boots + 1
        assert (h.flash / "config.json").exists()
