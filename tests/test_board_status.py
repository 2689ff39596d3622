"""What a board's status tells the back office, on virtual boards and a real Mosquitto: every fault
its readings carry and every actuator fault, raised and cleared; the periods it runs at, changed by
command; the lamp's real decision from the first status on; a LoRaWAN board that cannot deliver."""

from __future__ import annotations

import datetime
import json
import time

import pytest

from host_tools.backoffice.command_client import CommandClient
from host_tools.backoffice.monitor import COLUMNS, FleetView
from host_tools.backoffice.watcher import Watcher
from host_tools.codec.decoder import decode

pytestmark = pytest.mark.integration

KEY = bytes(range(1, 33))


def statuses(w, topic, since=0.0):
    return [json.loads(m.payload) for m in w.matching(topic) if m.t >= since and b'"online"' in m.payload]


def wait_status(w, topic, predicate, timeout, since=0.0):
    """The first online status after `since` for which `predicate(doc)` holds."""
    found = w.wait_for(topic, lambda m: m.t >= since and b'"online"' in m.payload and predicate(json.loads(m.payload)),
                       timeout=timeout)
    return json.loads(found[0].payload)


def test_faults_reach_the_status_and_the_monitor_and_clear(virtual_boards, mosquitto):
    # A long status period: a fault is news, it does not wait for the next periodic status.
    cfg = {"device": "flt-1", "site": "flt", "broker": mosquitto.url, "sample_period_s": 2, "status_period_s": 3600}
    topic = "lanterne/v1/flt/flt-1/status"
    view = FleetView()
    with Watcher(mosquitto.url, ["lanterne/v1/flt/#"], on_message=lambda m: view.feed(m.topic, m.payload, m.t)) as w:
        # dark street: the lamp is on (photocell), so a broken lamp shows as no current drawn
        (h,) = virtual_boards(1, config=cfg, world_values={"illuminance_lx": 3})
        first = wait_status(w, topic, lambda d: True, timeout=30)
        assert first["faults"] == [] and first["lamp"] == 100

        t = time.time()
        h.world.inject("bme280", "nack")
        doc = wait_status(w, topic, lambda d: d["faults"], timeout=30, since=t)
        assert doc["faults"] == ["bme280: bus (temperature_fault, humidity_fault, pressure_fault)"]
        up = w.wait_for("lanterne/v1/flt/flt-1/up", lambda m: m.t >= t and "temperature_fault" in str(decode(m.payload)),
                        timeout=10)
        assert up  # the readings say the same
        row = dict(zip(COLUMNS, view.rows()[0], strict=True))
        assert row["faults"] == "bme280: bus (temperature_fault, humidity_fault, pressure_fault)"  # the monitor's column

        t = time.time()
        h.world.clear("bme280")
        assert wait_status(w, topic, lambda d: not d["faults"], timeout=30, since=t)["faults"] == []
        assert dict(zip(COLUMNS, view.rows()[0], strict=True))["faults"] == "-"

        t = time.time()
        h.world.set(lamp_failed=True)
        doc = wait_status(w, topic, lambda d: d["faults"], timeout=30, since=t)
        assert doc["faults"] == ["lamp: failed (lamp_fault)"]
        w.wait_for("lanterne/v1/flt/flt-1/up",
                   lambda m: m.t >= t and any(r.get("lamp_fault") for r in decode(m.payload)["readings"]), timeout=10)
        assert dict(zip(COLUMNS, view.rows()[0], strict=True))["faults"] == "lamp: failed (lamp_fault)"

        t = time.time()
        h.world.set(lamp_failed=False)
        assert wait_status(w, topic, lambda d: not d["faults"], timeout=30, since=t)["faults"] == []


def test_periods_set_by_command_apply_at_once_and_are_in_the_status(virtual_boards, mosquitto):
    cfg = {"device": "per-1", "site": "per", "broker": mosquitto.url, "sample_period_s": 3600, "status_period_s": 3600,
           "command_key": KEY.hex()}
    topic = "lanterne/v1/per/per-1/status"
    with Watcher(mosquitto.url, ["lanterne/v1/per/#"]) as w:
        virtual_boards(1, config=cfg)
        first = wait_status(w, topic, lambda d: True, timeout=30)
        assert (first["sample_period_s"], first["status_period_s"]) == (3600, 3600)
        client = CommandClient(mosquitto.url)
        try:
            assert client.send("per", "per-1", KEY, 1, "set-period", {"what": "status", "seconds": 10}).ok
            t = time.time()
            # the next statuses come every 10 s, not an hour after the last one
            w.wait_for(topic, lambda m: m.t >= t and b'"online"' in m.payload, count=3, timeout=40)
            docs = statuses(w, topic, since=t)
            assert all(d["status_period_s"] == 10 for d in docs)
            gaps = [b["uptime_s"] - a["uptime_s"] for a, b in zip(docs, docs[1:], strict=False)]
            assert all(9 <= g <= 12 for g in gaps[-2:]), gaps

            ups_before = len(w.matching("lanterne/v1/per/per-1/up"))
            assert client.send("per", "per-1", KEY, 2, "set-period", {"what": "sample", "seconds": 2}).ok
            t = time.time()
            w.wait_for("lanterne/v1/per/per-1/up", count=ups_before + 3, timeout=15)  # not an hour from now
            assert wait_status(w, topic, lambda d: d["sample_period_s"] == 2, timeout=15, since=t)
        finally:
            client.close()


LYON = {"lat": 45.764, "lon": 4.836, "timezone_min": 60}


@pytest.mark.parametrize(("utc_hour", "lamp", "reasons"), [(11, 0, ("day",)), (19, 100, ("schedule",))])
def test_the_first_status_says_what_the_lamp_does(virtual_boards, mosquitto, utc_hour, lamp, reasons):
    # As in the demo: a street light with its site, a clock from NTP, daylight (or night) outside.
    device = f"first-{utc_hour}"
    cfg = {"device": device, "site": "first", "broker": mosquitto.url, **LYON}
    when = datetime.datetime(2026, 11, 26, utc_hour, 0, tzinfo=datetime.timezone.utc).timestamp()
    with Watcher(mosquitto.url, [f"lanterne/v1/first/{device}/status"]) as w:
        (h,) = virtual_boards(1, config=cfg, power_on=False)
        h.world.set_clock(when)
        h.power_on()
        doc = wait_status(w, f"lanterne/v1/first/{device}/status", lambda d: True, timeout=30)
    assert doc["clock"] is True
    assert (doc["lamp"], doc["lamp_reason"]) in [(lamp, r) for r in reasons]
    deadline = time.monotonic() + 5  # and the lamp does it (after its 2 s fade)
    while round((h.world.pwm(25) or {"duty_u16": 0})["duty_u16"] * 100 / 65535) != lamp:
        assert time.monotonic() < deadline, h.world.pwm(25)
        time.sleep(0.1)


def test_a_board_that_cannot_deliver_says_so_with_its_status(virtual_boards):
    # A LoRaWAN board whose modem does not answer: its status (which LoRaWAN never carries: too
    # much airtime) goes to its console, with the fault and its reason; the board keeps sampling.
    cfg = {"device": "bin-lora", "site": "lora", "transport": "lorawan", "lorawan_deveui": "02" * 8,
           "lorawan_appkey": "ab" * 16, "sample_period_s": 1}
    (h,) = virtual_boards(1, board="esp32-rak3172", config=cfg, power_on=False)
    h.world.inject("lorawan", "missing")
    h.power_on()
    # (up to the line's end: the console is read as it is written, and the status's own "}"s would
    # otherwise match a line half printed)
    m = h.wait_for(r"status not sent \(LoRaWAN: the status stays on the board\): (\{.*lorawan: modem not answering.*\})\r?\n",
                   timeout=40)
    doc = json.loads(m.group(1))
    assert doc["device"] == "bin-lora" and doc["backlog"] > 0
    assert "lorawan: modem not answering (no reply to AT within 1500 ms)" in doc["faults"]
