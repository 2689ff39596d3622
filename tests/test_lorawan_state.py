"""The LoRaWAN link's state across a deep sleep (firmware/lanterne/transport/lorawan_state.py,
docs/lorawan.md "Across reboots and deep sleep"): the airtime budget and the silence detection
packed into RTC memory's bytes and continued by the next wake's link, on CPython and on the unix
port; and the link itself, against the scripted RUI3 modem of test_lorawan_driver.py, across
simulated wakes (a new LorawanLink each wake, as a battery board makes): the daily cap stays spent
until its hours pass, and link checks unanswered over several wakes end in a join."""

from __future__ import annotations

import json
import sys

from host_tools.runtime import unix_port
from host_tools.runtime.paths import FIRMWARE
from tests.test_lorawan_driver import HEAP, MODEM

HOUR = 3_600_000

# The same checks as plain code, run by CPython and by MicroPython (they print one JSON line).
ROUND_TRIP = r"""
import json
from lanterne.transport import airtime, lorawan_state as S

HOUR = 3600000
out = {}
b = airtime.Budget(30000)
# a day of a board: 2 s at hour 1 (too old by the pack), 3 s at hour 10, 4 s at hour 30, 1.5 s at
# hour 33 just before the pack, the sub-band closed 150 s more by the last uplink
b.record(1 * HOUR + 5, 2000)
b.record(10 * HOUR + 7, 3000)
b.record(30 * HOUR + 9, 4000)
now = 33 * HOUR + 1234567
b.record(now - 1000, 1500)
used = b.used_ms(now)
data = S.pack(b, now, now - 5 * HOUR, 2, True, 1000000)
out["size"] = len(data)
out["used_before"] = used
out["free_in_before"] = b.free_at - now
# woken 600 s of RTC later: 599 s counted (whole seconds: never more time than passed)
b2 = airtime.Budget(30000)
now2, heard2, misses2, rejoin2 = S.restore(b2, data, 1000600)
out["used_after"] = b2.used_ms(now2)
out["free_in_after"] = b2.free_at - now2
out["quiet_after"] = now2 - heard2
out["misses"] = misses2
out["rejoin"] = rejoin2
# 10 ms after the pack (same RTC second): the sub-band still closed as long as before
b3 = airtime.Budget(30000)
now3 = S.restore(b3, data, 1000000)[0]
out["free_in_same_second"] = b3.free_at - now3
# the hour-10 bucket leaves the 24 h window 24 h after hour 10 began: 1 h 10 min later here
b4 = airtime.Budget(30000)
t = S.restore(b4, data, 1000000 + 4200)[0]
out["used_70_min_later"] = b4.used_ms(t)
b5 = airtime.Budget(30000)
t = S.restore(b5, data, 1000000 + 90000)[0]
out["used_25_h_later"] = b5.used_ms(t)
out["wait_25_h_later"] = b5.wait_ms(t, 1000)
# packed again after the restore: the same state (nothing drifts from wake to wake)
again = S.pack(b2, now2, heard2, misses2, rejoin2, 1000600)
b6 = airtime.Budget(30000)
now6 = S.restore(b6, again, 1000600)[0]
out["used_repacked"] = b6.used_ms(now6)
# refused: another version, cut short, nothing
out["refused"] = [S.restore(airtime.Budget(1), x, 0) is None for x in (b"\x02" + data[1:], data[:-1], b"")]
# a wake may skip the modem when not even one byte at DR5 fits the cap: 8.5 s spent
out["spent"] = [S.cap_spent(data, 1000600, cap) for cap in (30000, 8547, 8546)] + [S.cap_spent(data, 1000000 + 90000, 8500), S.cap_spent(b"", 0, 1)]
# cold (a power cut): half the cap counted in the current hour, for 24 hours
c = airtime.Budget(30000)
S.cold(c, 12345)
out["cold_used"] = c.used_ms(12345)
out["cold_used_23h"] = c.used_ms(12345 + 23 * HOUR)
out["cold_used_24h"] = c.used_ms(24 * HOUR)
out["cold_wait"] = c.wait_ms(12345, 1000)
out["cold_wait_over"] = c.wait_ms(12345, 16000)
print(json.dumps(out))
"""


def _check_round_trip(got: dict) -> None:
    assert got["size"] == 67
    assert got["used_before"] == 3000 + 4000 + 1500  # hour 1 is outside the last 24 hours
    assert got["free_in_before"] == 1500 * 100 - 1000
    assert got["used_after"] == got["used_before"]
    assert got["free_in_after"] == got["free_in_before"] - 599_000
    assert got["quiet_after"] == 5 * HOUR + 599_000
    assert got["misses"] == 2 and got["rejoin"] is True
    assert got["free_in_same_second"] == got["free_in_before"]
    assert got["used_70_min_later"] == 4000 + 1500  # hour 10's 3 s have aged out
    assert got["used_25_h_later"] == 0 and got["wait_25_h_later"] == 0
    assert got["used_repacked"] == got["used_before"]
    assert got["refused"] == [True, True, True]
    # room left: 30 s, or exactly the 47 ms of a 1-byte uplink at DR5; 1 ms short; a day later; no state
    assert got["spent"] == [False, False, True, False, False]
    assert got["cold_used"] == 15000 and got["cold_used_23h"] == 15000 and got["cold_used_24h"] == 0
    assert got["cold_wait"] == 0 and got["cold_wait_over"] == -1


def test_pack_and_restore_on_cpython():
    sys.path.insert(0, str(FIRMWARE))
    import io
    from contextlib import redirect_stdout

    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            exec(ROUND_TRIP, {})
    finally:
        sys.path.remove(str(FIRMWARE))
        for name in [m for m in sys.modules if m == "lanterne" or m.startswith("lanterne.")]:
            del sys.modules[name]
    _check_round_trip(json.loads(buf.getvalue().strip().splitlines()[-1]))


def test_pack_and_restore_on_the_unix_port():
    _check_round_trip(unix_port.run_json(ROUND_TRIP))


def _airtime():
    sys.path.insert(0, str(FIRMWARE))
    try:
        import importlib

        return importlib.import_module("lanterne.transport.airtime")
    finally:
        sys.path.remove(str(FIRMWARE))
        for name in [m for m in sys.modules if m == "lanterne" or m.startswith("lanterne.")]:
            del sys.modules[name]


def run_wakes(tmp_path, body: str) -> dict:
    code = MODEM + f"STATE = {str(tmp_path / 'lorawan.json')!r}\n" + WAKES + body
    # 4x the driver tests' heap: 29 wakes on one scripted modem, whose command log only grows (at
    # 256 KB the log's next 4 KB list found no block and the modem stopped answering; a test of the
    # kept state, not of the heap: the board's heap floor is test_lorawan_board's)
    out = unix_port.run(code, heapsize=4 * HEAP, timeout=120)
    lines = out.strip().splitlines()
    assert lines, out
    return json.loads(lines[-1])


# One simulated wake: a fresh link (the heap is gone after a deep sleep) resumes from the bytes the
# last wake kept, at the RTC time `wall`; the modem (its own NVM) is the same across wakes.
WAKES = r"""
from lanterne.transport import lorawan_state as S


def wake_link(m, kept, wall, **cfg):
    link, got = link_for(m, **cfg)
    link.budget.duty = 10   # the real 1 % duty cycle here
    resumed = S.resume(link, kept, wall)
    return link, got, resumed
"""


def test_the_daily_cap_stays_spent_across_wakes_until_its_hours_pass(tmp_path):
    got = run_wakes(tmp_path, r"""
async def main():
    out = {"sent": [], "max_frame": [], "resumed": []}
    m = Modem(joined=True)
    frame = b"\x02" + bytes(40)   # 40 bytes at DR5 (SF7): 92 ms on air
    kept, wall = b"", 1000
    # a wake every 10 minutes, each sending one frame; the cap is 1 s: 10 frames a day
    for i in range(14):
        link, _, resumed = wake_link(m, kept, wall, lorawan_airtime_s=1)
        out["resumed"].append(resumed)
        await link.connect()
        out["max_frame"].append(link.max_frame(READINGS))
        out["sent"].append(bool(out["max_frame"][-1]) and await link.send(READINGS, frame))
        kept = S.keep(link, wall + 2)
        wall += 600
    out["fault"] = link.last_fault
    # a day after the first wakes: their hours have left the window
    link, _, _ = wake_link(m, kept, 1000 + 86400 + 3600)
    await link.connect()
    out["next_day"] = await link.send(READINGS, frame)
    # the same 14 wakes without the kept state: the cap is never reached (what the reviewer found)
    fresh = []
    for i in range(14):
        link, _, _ = wake_link(m, b"", 1000 + 600 * i, lorawan_airtime_s=1)
        link.budget.hours[0] = 0   # (not even the cold start's half)
        await link.connect()
        fresh.append(await link.send(READINGS, frame))
    out["fresh"] = fresh
    print(json.dumps(out))
asyncio.run(main())
""")
    airtime = _airtime()
    air, air1 = airtime.uplink_ms(40, 5), airtime.uplink_ms(1, 5)  # 103 ms; a 1-byte frame 46 ms
    k = 500 // air
    # the first wake is cold: half of the 1 s cap counted spent, so 4 frames of 103 ms, then none
    # in the 14 wakes (2 h 20 min)
    assert got["resumed"] == [False] + [True] * 13
    assert k == 4 and got["sent"] == [True] * k + [False] * (14 - k), got
    # a frame is not even built once not one byte more would fit
    assert got["max_frame"][:k] == [223] * k
    assert set(got["max_frame"][k:]) == {0 if 500 + k * air + air1 > 1000 else 223}
    assert got["fault"] == "lorawan: airtime budget: the daily cap of 1 s is used up"
    assert got["next_day"] is True
    assert got["fresh"] == [True] * 14


def test_silence_over_several_wakes_ends_in_a_join(tmp_path):
    got = run_wakes(tmp_path, r"""
async def main():
    out = {"wakes": []}
    m = Modem(joined=True)   # the module holds a session the network has forgotten: no downlink ever
    frame = b"\x02" + bytes(10)
    link, _, _ = wake_link(m, b"", 1000)
    m.script["join_fail"] = 0
    await link.connect()
    kept = S.keep(link, 1000)
    wall = 1000
    # a send wake every hour: after 6 h without a downlink each uplink carries a LinkCheckReq;
    # three unanswered (the answers come with the uplink) and the link goes down to join again,
    # which the next wake does even though the module says it holds a session
    for i in range(12):
        wall += 3600
        m.log.clear()
        link, _, _ = wake_link(m, kept, wall)
        up = await link.connect()
        sent = await link.send(READINGS, frame)
        for _ in range(3):
            await link.maintain()   # the wake's listening time: the link check's answer
        kept = S.keep(link, wall + 1)
        out["wakes"].append({"h": (wall - 1000) // 3600, "up": up, "sent": sent, "linkcheck": "AT+LINKCHECK=1" in m.log,
                             "join": any(c.startswith("AT+JOIN") for c in m.log), "down": not link.up,
                             "why": link.last_error})
    print(json.dumps(out))
asyncio.run(main())
""")
    wakes = got["wakes"]
    checks = [w["h"] for w in wakes if w["linkcheck"]]
    assert checks[0] == 7 and wakes[5]["linkcheck"] is False, wakes  # 6 h of silence first
    joins = [w["h"] for w in wakes if w["join"]]
    downs = [w for w in wakes if w["down"]]
    assert downs and "link checks unanswered: joining again" in downs[0]["why"], wakes
    # the wake after the link went down joins (the module still says it has a session)
    assert joins == [downs[0]["h"] + 1], wakes
    assert downs[0]["h"] <= 10
    # after the join, silence counts again from the join accept: no link check right away
    after = [w for w in wakes if w["h"] > joins[0]]
    assert after and not any(w["linkcheck"] for w in after), wakes
