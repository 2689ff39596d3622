"""A battery board (power=battery, docs/battery.md) over MQTT/Wi-Fi: no always-on loop, one wake per
sample from deep sleep, a frame only when the batching policy says so, commands queued at the broker
while it sleeps, RTC state across wakes, and a power cut (RTC memory lost) that loses nothing."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from host_tools.backoffice.watcher import Watcher
from host_tools.codec.decoder import decode
from host_tools.reliability.battery_week import wifi_variant
from host_tools.runtime.paths import FIRMWARE

pytestmark = pytest.mark.integration


def wifi_bin_board(tmp_path):
    """The battery bin with the ESP32's own Wi-Fi as its link instead of the RAK3172, as a board file."""
    path = tmp_path / "esp32-bin-wifi.json"
    path.write_text(json.dumps(wifi_variant().data))
    return str(path)


def wake_lines(h):
    return re.findall(r"\[lanterne\] wake (\d+) \((\w+)(, alarm)?\): (\w+), seq (-?\d+)", h.console())


def test_state_round_trips_and_a_damaged_one_is_refused():
    sys.path.insert(0, str(FIRMWARE))
    try:
        import struct

        from lanterne import wake
    finally:
        sys.path.remove(str(FIRMWARE))
    assert struct.calcsize(wake._FMT) == wake._LEN
    st = wake.State(7, 1_800_000_000, 600, 3600)
    st.flags, st.unsent, st.alarm, st.wakes = wake.F_SYNCED, 5, 1, 99
    st.link = bytes(range(100, 167))  # the link's own state rides along (LoRaWAN: airtime, silence)
    st.extra = bytes(range(40))  # and the delivery state
    data = st.pack()
    back = wake.State.load(data)
    assert vars(back) == vars(st)
    for i in range(len(data)):  # any byte damaged (a cell's brown-out, another program's bytes): refused
        bad = bytearray(data)
        bad[i] ^= 0x10
        assert wake.State.load(bytes(bad)) is None
    assert wake.State.load(b"") is None
    assert wake.State.load(data[:-1]) is None and wake.State.load(data + b"\0") is None  # cut short, or longer
    assert len(data) == 42 + 67 + 40 + 2
    assert data[:3] == b"BL\x02"  # what lanterne/power.py recognises after a deep-sleep wake
    st.link = b""
    assert wake.State.load(st.pack()).extra == st.extra  # no link state: the delivery state still found
    # the cadence: a late wake keeps the grid, missed periods are skipped
    assert wake.next_after(1000, 600, 999) == 1000
    assert wake.next_after(1000, 600, 1000) == 1600
    assert wake.next_after(1000, 600, 2300) == 2800


def test_battery_board_wakes_samples_and_batches_over_mqtt(virtual_boards, mosquitto, tmp_path):
    cfg = {"device": "bin-w1", "site": "bat", "broker": mosquitto.url, "sample_period_s": 600, "send_period_s": 3600,
           "status_period_s": 86400, "bin_empty_mm": 1200, "bin_full_mm": 200}
    with Watcher(mosquitto.url, ["lanterne/v1/bat/bin-w1/#"]) as w:
        (h,) = virtual_boards(1, board=wifi_bin_board(tmp_path), config=cfg, world_values={"sleep_speedup": 2000.0, "distance_mm": 700.0})
        h.wait_for(r"wake 14 ", timeout=60)  # 13 ten-minute periods: two hours and ten minutes
        lines = wake_lines(h)
        assert lines[0][1] == "cold" and lines[0][3] == "send"  # a cold start sends at once
        kinds = [k for _, _, _, k, _ in lines[1:]]
        # then one frame an hour (send_period_s): the wakes between only sample
        assert kinds.count("send") in (2, 3) and kinds.count("sample") >= 10, kinds
        seqs = [int(s) for *_, s in lines]
        assert seqs == list(range(len(seqs)))  # one reading per wake, none twice
        assert h.board.sleep.sleeps >= 13
        ups = w.matching("lanterne/v1/bat/bin-w1/up")
        got = [r["seq"] for m in ups for r in decode(m.payload)["readings"]]
        assert got == sorted(set(got)) and len(got) >= 7  # batched: several readings a frame
        assert max(len(decode(m.payload)["readings"]) for m in ups) >= 5
        fills = {r.get("fill") for m in ups for r in decode(m.payload)["readings"]}
        assert fills <= {49, 50}  # (1200 - 700) / (1200 - 200); sound at 20 degC assumed, the world is at 15
        st = json.loads(w.matching("lanterne/v1/bat/bin-w1/status")[-1].payload)
        assert st["power"] == "battery" and st["reset_cause"] in ("power_on", "deepsleep")
        # no last will between wakes: the board disconnects before it sleeps
        assert all(b"offline" not in m.payload for m in w.matching("lanterne/v1/bat/bin-w1/status"))


def until(fn, timeout):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met within %s s" % timeout)
        time.sleep(0.05)


def readings(w, topic):
    return [r for m in w.matching(topic) for r in decode(m.payload)["readings"]]


def test_power_cut_while_asleep_loses_nothing_stored(virtual_boards, mosquitto, tmp_path):
    # RTC memory lost mid-run: the board starts cold (a new boot number), sends what the store holds,
    # and every reading ever appended arrives, each once.
    cfg = {"device": "bin-w2", "site": "bat", "broker": mosquitto.url, "sample_period_s": 600, "send_period_s": 7200}
    topic = "lanterne/v1/bat/bin-w2/up"
    with Watcher(mosquitto.url, [topic]) as w:
        (h,) = virtual_boards(1, board=wifi_bin_board(tmp_path), config=cfg, world_values={"sleep_speedup": 2000.0})
        h.wait_for(r"wake 6 .*\r\n.*awake \d+ ms", timeout=60)  # 5 readings waiting for their frame
        time.sleep(0.05)
        h.power_cut()  # asleep or waking: either way RTC memory is gone
        h.power_on()
        h.wait_for(r"wake 1 \(cold\): send", timeout=60, since=0)
        h.wait_for(r"(wake 1 \(cold\)[\s\S]*){2}", timeout=30)  # (the first cold start and this one)
        h.wait_for(r"wake 3 \(deepsleep\)[\s\S]*wake 3 \(deepsleep\)", timeout=60)
        seqs = sorted(r["seq"] for r in readings(w, topic))
    lines = wake_lines(h)
    appended = [int(s) for *_, s in lines if int(s) >= 0]
    sent_before_sleep = {s for s in appended if s <= max(appended)}
    assert len(seqs) == len(set(seqs))  # each once
    # everything appended before the last frame went is in, the cut lost nothing
    last_send = max(int(s) for *_, k, s in lines if k == "send")
    assert set(range(last_send + 1)) <= set(seqs), (seqs, lines)
    assert sent_before_sleep
    assert h.board.sleep.rtc_memory  # the cold start wrote its state again


def test_alarm_switch_wakes_the_board_and_sends_within_seconds(virtual_boards, mosquitto, tmp_path):
    cfg = {"device": "bin-w3", "site": "bat", "broker": mosquitto.url, "sample_period_s": 3600, "send_period_s": 86400}
    topic = "lanterne/v1/bat/bin-w3/up"
    with Watcher(mosquitto.url, [topic]) as w:
        (h,) = virtual_boards(1, board=wifi_bin_board(tmp_path), config=cfg)  # the world in real time
        h.wait_for(r"awake \d+ ms", timeout=60)
        until(lambda: len(readings(w, topic)) >= 1, timeout=20)
        time.sleep(0.5)
        assert h.board.sleep.asleep
        t0 = time.monotonic()
        h.world.set(alarm=True)  # the lid opens (an hour before the next reading)
        until(lambda: any("tamper" in r.get("status", []) for r in readings(w, topic)), timeout=10)
        took = time.monotonic() - t0
        assert took < 5, took
        h.wait_for(r"wake 2 \(deepsleep, alarm\): send", timeout=5)
        time.sleep(0.5)
        h.world.set(alarm=False)  # closed again: the board learns it at once too (ext0 armed on the other level)
        until(lambda: len(readings(w, topic)) >= 3, timeout=10)
        last = readings(w, topic)[-1]
        assert "tamper" not in last.get("status", [])


def test_a_command_sent_while_the_board_sleeps_runs_at_its_next_send_wake(virtual_boards, mosquitto, tmp_path):
    # MQTT on a battery: a persistent session, so the broker queues the command (QoS 1) while the
    # board sleeps; it runs once, at the next send wake, and its ack comes back then.
    from host_tools.backoffice.command_client import CommandClient

    key = "11" * 16
    cfg = {"device": "bin-w4", "site": "bat", "broker": mosquitto.url, "sample_period_s": 600, "send_period_s": 1800,
           "command_key": key}
    (h,) = virtual_boards(1, board=wifi_bin_board(tmp_path), config=cfg, world_values={"sleep_speedup": 1000.0})
    h.wait_for(r"wake 2 ", timeout=60)  # subscribed once (cold start), asleep now
    client = CommandClient(mosquitto.url)
    try:
        res = client.send("bat", "bin-w4", bytes.fromhex(key), 1000, "set-period", {"what": "sample", "seconds": 300},
                          timeout=30)
        assert res.ok, res
        # an older counter (a replay): refused and nacked at the next send wake, never run
        old = client.send("bat", "bin-w4", bytes.fromhex(key), 999, "set-period", {"what": "sample", "seconds": 60},
                          timeout=30)
        assert not old.ok and "replay" in old.reason.lower(), old
    finally:
        client.close()
    h.wait_for(r"next sample in (29\d|300) s", timeout=30)  # the new period applies from that wake on
    assert json.loads((h.flash / "cmdstate.json").read_text())["counter"] == 1000  # on flash: survives anything
    assert not re.search(r"next sample in [1-5]?\d s", h.console())  # the refused 60 s never applied
