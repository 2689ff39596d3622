"""The delivery ledger and the compact command ack: the firmware module on both interpreters, and the back
office's uplink service spending its daily downlink budget while a lossy link loses readings."""

from __future__ import annotations

import json
import random

import pytest

from host_tools.backoffice.delivery_ledger import DAY_S, DeliveryLedger
from host_tools.backoffice.uplinks import LoraDevice, UplinkService
from host_tools.codec import encode_values
from host_tools.codec import lns_json as J
from host_tools.runtime import firmware_module
from host_tools.runtime.parity import both

ledger = firmware_module("ledger")
KEY = bytes(range(32))


def test_ledger_and_compact_ack_identical_on_cpython_and_micropython():
    code = """
import json
from lanterne import ledger
key = bytes(range(32))
f = ledger.build(key, "bin-3", 1000, 70000, 40, 45, [(70000, 3), (70010, 5)])
l = ledger.parse(key, "bin-3", f, 999)
out = {"frame": f.hex(), "ack": [l.acknowledged(s) for s in (69999, 70000, 70002, 70003, 70012, 70015, 70039, 70040)],
       "missing": list(l.missing()), "highest": l.highest}
errs = []
for frame, last in ((f, 1000), (f[:-1] + bytes([f[-1] ^ 1]), 0), (f[:5], 0), (b"\\x02" + f[1:], 0)):
    try:
        ledger.parse(key, "bin-3", frame, last)
        errs.append(0)
    except ledger.LedgerError as e:
        errs.append(e.reason)
out["errors"] = errs
a = ledger.build_ack(key, "bin-3", 0x12345678, 1, 0, b"\\x32")
out["ack_frame"] = a.hex()
got = ledger.parse_ack(key, "bin-3", a, {0x12345678: 1, 0x22345678: 1})
out["ack_parsed"] = [got[0], got[1], got[2], got[3].hex()]
out["ack_wrong_opcode"] = ledger.parse_ack(key, "bin-3", a, {0x12345678: 2})
out["ack_other_device"] = ledger.parse_ack(key, "bin-4", a, {0x12345678: 1})
print(json.dumps(out))
"""
    cp, mp = both(code)
    assert cp == mp
    assert len(bytes.fromhex(cp["frame"])) == 14 + 2 * 4 + 12 and cp["highest"] == 70044
    assert cp["ack"] == [True, False, False, True, False, True, True, False]
    assert cp["missing"] == [70000, 70001, 70002, 70010, 70011, 70012, 70013, 70014]
    assert cp["errors"] == [ledger.REPLAY, ledger.BAD_TAG, ledger.MALFORMED, ledger.BAD_VERSION]
    assert len(bytes.fromhex(cp["ack_frame"])) == 8  # vs 20 bytes for the MQTT ack of the same dim command
    assert cp["ack_parsed"] == [0x12345678, 1, 0, "32"]
    assert cp["ack_wrong_opcode"] is None and cp["ack_other_device"] is None


def test_ledger_never_acknowledges_what_it_cannot_list():
    led = DeliveryLedger(base=0)
    for seq in range(0, 100):
        if seq % 10 != 5:  # ten gaps, of which a frame carries six
            led.add(seq)
    nxt, span, seen, ranges = led.summary()
    assert (nxt, len(ranges)) == (5, 6) and span == 65 - 5  # stops before the seventh gap (seq 65)
    assert seen == 95  # the highest received, 99, is next + seen - 1
    frame = ledger.build(KEY, "d", 1, nxt, span, seen, ranges)
    assert len(frame) <= 51  # fits a DR0 downlink
    parsed = ledger.parse(KEY, "d", frame)
    assert not any(parsed.acknowledged(s) for s in range(65, 100) if s % 10 == 5)
    assert all(parsed.acknowledged(s) for s in range(0, 65) if s % 10 != 5)
    assert led.add(7) is False and led.add(5) is True and led.summary()[0] == 15


class Board:
    """The firmware half's ledger behaviour, as docs/lorawan.md specifies it: readings kept until
    acknowledged; the missing ones, and the unacknowledged ones sent no later than the highest seq the
    back office saw, sent again first; frames packed to the 51-byte budget."""

    def __init__(self):
        self.seq = 0
        self.kept: dict[int, dict] = {}
        self.sent_in: dict[int, int] = {}  # seq -> uplink it last went in
        self.resend: list[int] = []
        self.uplinks = 0
        self.last_counter = 0

    def sample(self, t):
        self.kept[self.seq] = {"temperature": round(15 + 5 * random.random(), 1), "seq": self.seq}
        self.seq += 1

    def uplink(self) -> bytes | None:
        unsent = sorted(s for s in self.kept if s not in self.sent_in)
        order = [s for s in self.resend if s in self.kept] + unsent
        if not order:
            return None
        self.uplinks += 1
        first = encode_values([self.kept[s] for s in order[:8]], budget=51, runtime="cpython", lorawan=True)[0]
        for s in order[first["first"] : first["first"] + first["count"]]:
            self.sent_in[s] = self.uplinks
        self.resend = [s for s in self.resend if self.sent_in.get(s) != self.uplinks]
        return first["frame"]

    def downlink(self, fport, data):
        assert fport == ledger.FPORT_LEDGER
        led = ledger.parse(KEY, "bin-1", data, self.last_counter)
        self.last_counter = led.counter
        lost_before = self.sent_in.get(led.highest, 0)
        for s in list(self.kept):
            if led.acknowledged(s):
                del self.kept[s]
        self.resend = sorted(set(led.missing()) | {s for s in self.kept if 0 < self.sent_in.get(s, 0) <= lost_before})
        self.resend = [s for s in self.resend if s in self.kept]


def play_two_days(service, clock, queue, restart_min=None):
    """Two days of a bin: a reading every 5 min, an uplink every 15, 20 % of uplinks reaching no
    gateway, what the service queued delivered in the RX1 of the next uplink heard (class A). The
    service is `service()`, stopped and made again every `restart_min` minutes if given.
    Returns (the last service, the board, uplinks sent, uplinks heard, restarts)."""
    svc, board, fcnt, handled, restarts = service(), Board(), 0, 0, 0
    for minute in range(0, int(2 * DAY_S / 60), 5):
        clock[0] = minute * 60.0
        if restart_min and minute and minute % restart_min == 0:
            svc.stop()
            svc, restarts = service(), restarts + 1
        board.sample(clock[0])
        if minute % 15:
            continue
        data = board.uplink()
        if data is None:
            continue
        fcnt += 1
        if random.random() >= 0.20:
            svc.handle(J.Uplink(dev_eui="0016c001ff000001", device="bin-1", fport=102, fcnt=fcnt, data=data, dr=5))
            handled += 1
            if queue:
                board.downlink(*queue.pop(0))
    return svc, board, fcnt, handled, restarts


@pytest.mark.parametrize("integration", ["chirpstack", "tts"])
def test_a_day_at_20pct_uplink_loss_every_reading_once_within_budget(integration):
    random.seed(7)
    clock = [0.0]
    queue: list[tuple[int, bytes]] = []  # the network server's class-A queue for the device

    def publish(topic, msg):
        if integration == "chirpstack":
            assert topic.endswith("/command/down") and set(msg) == {"devEui", "confirmed", "fPort", "data"}
            queue.append((msg["fPort"], J.unb64(msg["data"], "data")))
        else:
            assert topic.endswith("/down/push")
            queue.extend((d["f_port"], J.unb64(d["frm_payload"], "p")) for d in msg["downlinks"])

    per_day = 6
    svc, board, fcnt, _, _ = play_two_days(
        lambda: UplinkService([LoraDevice("bin-1", "0016c001ff000001", KEY)], integration=integration,
                              ledger_per_day=per_day, clock=lambda: clock[0], publish=publish), clock, queue)
    got = [e["reading"]["seq"] for e in svc.events if e["event"] == "reading"]
    assert len(got) == len(set(got))  # exactly once
    first_day = int(DAY_S / 300)
    assert set(range(first_day)) <= set(got)  # every reading of the first day has arrived by the end of the second
    assert not [s for s in board.kept if s < first_day]  # and the board has freed them
    ledgers = [e["time"] for e in svc.events if e["event"] == "ledger"]
    for t in ledgers:
        assert sum(1 for u in ledgers if t - DAY_S < u <= t) <= per_day
    assert len(ledgers) >= 2 * per_day - 1  # the budget was used, not exceeded
    # the same frame delivered again (a resend whose first copy did arrive) adds nothing
    before = len(svc.events)
    again = encode_values([{"temperature": 20.0, "seq": 5}], budget=51, runtime="cpython", lorawan=True)[0]["frame"]
    svc.handle(J.Uplink(dev_eui="0016c001ff000001", device="bin-1", fport=102, fcnt=fcnt + 1, data=again, dr=5))
    assert not [e for e in svc.events[before:] if e["event"] == "reading"]
    assert svc.devices["0016c001ff000001"].duplicates == 1
    assert json.dumps(svc.stats())


def test_the_service_restarted_every_six_hours_keeps_its_promises(tmp_path):
    # The same two days, the uplink service stopped and started again from its state file every 6 h
    # (an upgrade, a crash): still every reading once, freed on the board, within the ledger budget
    # counted across the restarts. Without the state file the restarted service would count what
    # it had as missing and spend a fresh day's budget.
    random.seed(11)
    clock = [0.0]
    queue: list[tuple[int, bytes]] = []
    publish = lambda topic, msg: queue.append((msg["fPort"], J.unb64(msg["data"], "data")))  # noqa: E731
    state = tmp_path / "uplinks-state.sqlite"
    per_day, events = 6, []

    def service():
        return UplinkService([LoraDevice("bin-1", "0016c001ff000001", KEY)], ledger_per_day=per_day,
                             clock=lambda: clock[0], publish=publish, state=state, on_event=events.append)

    svc, board, fcnt, handled, restarts = play_two_days(service, clock, queue, restart_min=360)
    assert restarts == 7
    got = [e["reading"]["seq"] for e in events if e["event"] == "reading"]
    assert len(got) == len(set(got))  # exactly once, across the restarts
    first_day = int(DAY_S / 300)
    assert set(range(first_day)) <= set(got)
    assert not [s for s in board.kept if s < first_day]
    ledgers = [e["time"] for e in events if e["event"] == "ledger"]
    for t in ledgers:
        assert sum(1 for u in ledgers if t - DAY_S < u <= t) <= per_day
    # the last service's figures count from the first day, not from its own start
    st = svc.stats()["bin-1"]
    assert st["next_seq"] >= first_day and st["uplinks"] == handled and st["readings"] == len(got)
    svc.stop()


def test_a_state_file_of_another_service_or_damaged_is_refused_by_name(tmp_path):
    from host_tools.backoffice.uplink_state import StateError, UplinkState

    path = tmp_path / "state.sqlite"
    svc = UplinkService([LoraDevice("bin-1", "0016c001ff000001", KEY)], publish=lambda *a: None, state=path)
    svc.handle(J.Uplink(dev_eui="0016c001ff000001", device="bin-1", fport=102, fcnt=1, dr=5,
                        data=encode_values([{"temperature": 20.0, "seq": 0}], budget=51, runtime="cpython", lorawan=True)[0]["frame"]))
    svc.stop()
    with pytest.raises(StateError, match=r"device 0016c001ff000001: the state is 'bin-1'.s .*not 'bin-2'.s"):
        UplinkService([LoraDevice("bin-2", "0016c001ff000001", KEY)], publish=lambda *a: None, state=path)
    UplinkState(path).save("0016c001ff000001", {"v": 1, "device": "bin-1", "ledger": {"base": 0}})
    with pytest.raises(StateError, match=r"device 0016c001ff000001 \(bin-1\): damaged state"):
        UplinkService([LoraDevice("bin-1", "0016c001ff000001", KEY)], publish=lambda *a: None, state=path)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match="not an uplink-service state file"):
        UplinkState(path)


def test_the_monitor_shows_what_it_can_tell_of_a_lorawan_boards_backlog(tmp_path):
    # LoRaWAN carries no status, so the board's own backlog count never reaches the host. What the back
    # office can tell: the seqs its ledger lists as not arrived, the newest reading received and how long
    # ago it was sampled (its age), and from the registry's sample period how many the board has sampled
    # since. The monitor shows these, labelled as an estimate; they survive the service's restarts.
    from host_tools.backoffice.lorawan_fleet import uplink_devices
    from host_tools.cli.monitor import LORAWAN_COLUMNS, _lorawan_rows
    from host_tools.fleet.registry import Registry

    with Registry(tmp_path / "fleet.sqlite") as reg:
        reg.add_or_update("bin-1", site="north", board="esp32-rak3172", config={"sample_period_s": 300}, lorawan=True)
        reg.add_or_update("bin-2", site="north", board="esp32-rak3172", lorawan=True)
        devices = {d.device: d for d in uplink_devices(reg)}
    assert devices["bin-1"].sample_period_s == 300 and devices["bin-2"].sample_period_s == 60  # the firmware's default
    dev = devices["bin-1"]
    clock = [1000.0]
    state = tmp_path / "state.sqlite"
    svc = UplinkService([dev], clock=lambda: clock[0], publish=lambda *a: None, state=state)

    def up(fcnt, readings):
        frame = encode_values(readings, budget=51, runtime="cpython", lorawan=True)[0]["frame"]
        svc.handle(J.Uplink(dev_eui=dev.dev_eui, device="bin-1", fport=102, fcnt=fcnt, data=frame, dr=5))

    st = svc.stats()["bin-1"]
    assert (st["missing"], st["newest_seq"], st["backlog_est"]) == (0, None, None)
    assert _lorawan_rows(svc)[0][-2:] == ["-", "0 missing (no reading yet)"]
    # seqs 0..2 arrive, 3 and 4 do not (a lost frame), then 5 and 6: the newest (6) sampled 40 s before it was sent
    up(1, [{"temperature": 20.0, "seq": s, "age": 900 - 300 * s} for s in range(3)])
    clock[0] = 2500.0
    up(2, [{"temperature": 21.0, "seq": 5, "age": 340}, {"temperature": 21.5, "seq": 6, "age": 40}])
    st = svc.stats()["bin-1"]
    assert (st["missing"], st["newest_seq"], st["newest_age_s"], st["sampled_since_est"], st["backlog_est"]) == (2, 6, 40, 0, 2)
    # 20 minutes with no uplink (the duty cycle, a dead gateway): four more readings sampled on the board
    clock[0] += 1200
    st = svc.stats()["bin-1"]
    assert (st["newest_age_s"], st["sampled_since_est"], st["backlog_est"]) == (1240, 4, 6)
    row = dict(zip(LORAWAN_COLUMNS, _lorawan_rows(svc)[0], strict=True))
    assert row["missing"] == "2"
    assert row["newest reading"] == "seq 6, sampled 21m ago"
    assert row["backlog (est.)"] == "~6 (2 missing + ~4 sampled since, every 5m)"
    # 1 499.97 s is shown as 1 500.0: five periods, as a reader of the figures counts them (it said four)
    clock[0] += 259.97
    st = svc.stats()["bin-1"]
    assert (st["newest_age_s"], st["sampled_since_est"]) == (1500.0, 5)
    clock[0] -= 259.97
    # the missing ones come up (resent after a ledger): nothing missing, the estimate counts from the newest
    up(3, [{"temperature": 20.5, "seq": 3, "age": 2300}, {"temperature": 20.6, "seq": 4, "age": 2000}])
    st = svc.stats()["bin-1"]
    assert (st["missing"], st["newest_seq"], st["backlog_est"]) == (0, 6, 4)
    svc.stop()
    # a restarted service still knows the newest reading and when it was sampled
    again = UplinkService([dev], clock=lambda: clock[0], publish=lambda *a: None, state=state)
    assert {k: again.stats()["bin-1"][k] for k in ("missing", "newest_seq", "newest_age_s", "backlog_est")} == \
        {"missing": 0, "newest_seq": 6, "newest_age_s": 1240, "backlog_est": 4}
    again.stop()


def test_the_state_holds_what_a_ledger_acknowledges_before_the_ledger_leaves(tmp_path):
    # A ledger frees on the board what it acknowledges. A service that crashed just after sending one
    # must restart knowing those readings, or it would list them as missing for good (the board never
    # sends them again). So at the instant each ledger is published, a service started from the state
    # file already holds the ledger that frame carries.
    state = tmp_path / "state.sqlite"
    dev = LoraDevice("bin-1", "0016c001ff000001", KEY)
    checked = []

    def publish(topic, msg):
        if msg["fPort"] != ledger.FPORT_LEDGER:
            return
        restarted = UplinkService([dev], publish=lambda *a: None, state=state, clock=lambda: clock[0])
        checked.append((restarted.devices[dev.dev_eui].ledger.summary(), svc.devices[dev.dev_eui].ledger.summary()))
        restarted.stop()

    clock = [0.0]
    svc = UplinkService([dev], publish=publish, state=state, ledger_per_day=24, clock=lambda: clock[0])
    for fcnt in range(1, 6):
        clock[0] += 3600  # seq 2 lost in the air: the ledgers list it missing until it comes up
        seqs = [2 * fcnt - 2, 2 * fcnt - 1] if fcnt != 2 else [3]
        frame = encode_values([{"temperature": 20.0 + s, "seq": s} for s in seqs], budget=51, runtime="cpython", lorawan=True)[0]["frame"]
        svc.handle(J.Uplink(dev_eui=dev.dev_eui, device="bin-1", fport=102, fcnt=fcnt, dr=5, data=frame))
    svc.stop()
    assert len(checked) >= 3
    for on_file, sent in checked:
        assert on_file == sent
