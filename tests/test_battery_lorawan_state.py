"""A battery LoRaWAN bin's link state across its deep sleeps (docs/battery.md "What survives a sleep",
docs/lorawan.md "Across reboots and deep sleep"), on the virtual board: the real firmware's wakes,
the RAK3172 twin, the emulated network server and the uplink service with its delivery ledger, the
world clock fast-forwarded while the board sleeps (host_tools/reliability/battery_week.py).

- Over its daily airtime cap: a bin whose cap is 1 s sends until the cap is spent, then nothing
  until the day rolls (never more than the cap on air in any 24 hours), its readings waiting in
  the store; none is lost, none arrives twice.
- A session the network lost: the network server forgets the bin's session; after six hours with
  no downlink the bin's uplinks carry link checks, nothing answers them, and the bin joins again,
  over its wakes; the readings the network dropped meanwhile go again; none is lost.

Before the link's state was kept in RTC memory each wake started with a fresh budget and a fresh
silence: the first bin spent several times its cap, and the second never joined again."""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path

import pytest

from host_tools.codec import lorawan as L
from host_tools.codec import lorawan_radio as R
from host_tools.codec.seq import SeqTracker
from host_tools.reliability.battery_week import _Lorawan, _wait_plain, store_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

H = 3600.0
DEVICE, SITE = "state-bin", "state"


class Bin:
    """One virtual battery bin over LoRaWAN and its back office, with what the network heard, on
    the world's clock: uplinks (time, airtime s, dropped by the server or not), downlinks, joins."""

    def __init__(self, stack, tmp: Path, **cfg):
        from host_tools.emulator.supervisor import Emulator
        from host_tools.emulator.world import World
        from host_tools.fleet import deploy

        self.office = office = _Lorawan(stack, DEVICE, SITE)
        self.world = world = World(seed=11, sleep_speedup=100_000.0, distance_mm=1100.0, lorawan_speedup=5.0, lorawan_dr=5)
        office.set_world(world)
        ns = self.ns = office.ns
        self.uplinks: list[tuple[float, float, bool]] = []
        self.downlinks: list[float] = []
        self.joins: list[float] = []
        up, down, join = ns._uplink, ns._send_down, ns._join

        def on_uplink(phy, metas):
            before = sum(ns.dropped.values())
            up(phy, metas)
            sf = max(metas, key=lambda m: m.rssi).sf
            self.uplinks.append((world.now(), R.time_on_air_s(len(phy), sf), sum(ns.dropped.values()) > before))

        def on_down(phy, via, delays):
            if L.mtype_of(phy) != L.JOIN_ACCEPT:
                self.downlinks.append(world.now())
            return down(phy, via, delays)

        def on_join(phy, metas):
            n = ns.counts["joins"]
            join(phy, metas)
            if ns.counts["joins"] > n:
                self.joins.append(world.now())

        ns._uplink, ns._send_down, ns._join = on_uplink, on_down, on_join
        emu = stack.enter_context(Emulator())
        self.flash = tmp / "flash"
        self.flash.mkdir()
        config = dict(office.config, device=DEVICE, site=SITE, status_period_s=86400, bin_empty_mm=1200, bin_full_mm=200,
                      watchdog_ms=0, **cfg)
        deploy.copy_to_flash(office.board, config, self.flash, romfs=True)
        self.t0 = world.now()
        self.h = emu.add_board(office.board, self.flash, world=world, radio=office.radio)

    def hours(self) -> float:
        return (self.world.now() - self.t0) / H

    def wait(self, cond, timeout: float, what: str) -> None:
        try:
            _wait_plain(cond, timeout, what)
        except TimeoutError:
            raise TimeoutError(f"{what}; the board's last output:\n{self.h.console()[-2500:]}") from None

    def until_hour(self, hours: float) -> None:
        self.wait(lambda: self.hours() >= hours, timeout=300, what=f"world hour {hours}")

    def finish(self) -> dict:
        """Stop the bin asleep after one more send wake; what the store handed out against what arrived."""
        sends = self.h.console().count(": send,")
        self.wait(lambda: self.h.console().count(": send,") > sends, timeout=120, what="a last send wake")
        self.wait(lambda: self.h.board.sleep.asleep, timeout=60, what="the board asleep")
        time.sleep(3.0)  # (the network server and the service take their time)
        self.h.power_cut()
        next_seq, pending, dropped = store_state(self.flash)
        tracker, got, dupes = SeqTracker(), set(), 0
        for r in self.office.readings():
            full, new = tracker.accept(r["seq"])
            if new:
                got.add(full)
            else:
                dupes += 1
        in_store = set(range(next_seq - pending, next_seq)) - got
        return {"stored": next_seq, "delivered": len(got), "in_store": len(in_store), "dropped": dropped,
                "missing": sorted(set(range(next_seq)) - got - in_store), "duplicated": dupes}


def backlogs(console: str) -> list[tuple[int, int]]:
    return [(int(w), int(b)) for w, b in re.findall(r"\[lanterne\] wake (\d+) \(\w+(?:, alarm)?\): \w+, seq -?\d+, backlog (\d+)", console)]


# Alone (the solo phase of make test): 31 hours of a world clock whose pace follows the board's wakes
# failed twice in runs with three workers of other virtual boards beside it, and passed alone and
# under plain CPU load every time.
@pytest.mark.solo
def test_a_bin_over_its_daily_cap_waits_for_the_day_to_roll_and_loses_nothing():
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        b = Bin(stack, Path(tmp), sample_period_s=1800, send_period_s=1800, lorawan_airtime_s=1)
        b.until_hour(31)
        rep = b.finish()
        console = b.h.console()
    t0 = b.t0
    ups = [((t - t0) / H, air) for t, air, _ in b.uplinks]
    assert ups and ups[0][0] < 0.1, ups  # the cold start sends at once
    # never more than the cap (1 s) on air in any 24 hours
    for t, _ in ups:
        window = sum(air for u, air in ups if t - 24 <= u <= t)
        assert window <= 1.0, (t, window, ups)
    # the first day: the cold start counts half the cap as spent; the board sends until the rest is
    # used, then stops: a long silence, until the hours of the first uplinks leave the 24-hour window
    first = [u for u in ups if u[0] < 20]
    assert 3 <= len(first) and sum(air for _, air in first) <= 0.5, first
    gaps = [(ups[i + 1][0] - ups[i][0], ups[i][0]) for i in range(len(ups) - 1)]
    longest, start = max(gaps)
    assert longest > 15 and start < 9, gaps
    resumed = start + longest
    assert 23 <= resumed <= 26, ups  # the day rolled
    # the wakes in between did not even wake the modem: the kept budget said the cap was spent
    kinds = [k for k in re.findall(r"\[lanterne\] wake \d+ \(\w+(?:, alarm)?\): (\w+),", console)]
    # Whether the modem was left asleep ("held") is not asserted: a wake is held only when the kept
    # budget leaves no room for even a 1-byte uplink (46 ms). When the last frame left room for that
    # but not for a real frame, every wake wakes the modem and the link refuses the frame, and none is
    # held. Which happens depends on the frames' sizes, and so on the wakes' timing: 20 and more
    # alone, 5 under load, 0 in two runs on 2026-12-07. The cap held either way (above). A threshold
    # of the smallest frame the board would send would make it certain.
    print(f"wakes held: {kinds.count('held')} of {len(kinds)}")
    # meanwhile the readings waited in the store: the backlog grew by one every half hour
    bl = backlogs(console)
    assert max(n for _, n in bl) >= 25, bl
    # and nothing is lost or sent twice: every reading arrived once, or is still in the store
    assert rep["missing"] == [] and rep["duplicated"] == 0 and rep["dropped"] == 0, rep
    assert rep["stored"] >= 60 and rep["delivered"] + rep["in_store"] == rep["stored"], rep
    # the backlog went once the day rolled: the first day's uplinks carried a reading or two each
    assert rep["delivered"] >= 2 * len(first) + 25, (rep, first)


def test_a_bin_whose_session_the_network_lost_joins_again_after_the_silence():
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        b = Bin(stack, Path(tmp), sample_period_s=600, send_period_s=1800)
        b.wait(lambda: b.ns.counts["joins"] == 1, timeout=60, what="the first join")
        b.until_hour(3)
        assert b.ns.forget_session(b.office.config["lorawan_deveui"])
        t_forget = b.world.now()
        heard = max(b.downlinks + b.joins)  # the last downlink the board may have heard (a ledger)
        b.wait(lambda: b.ns.counts["joins"] == 2, timeout=300, what="a second join")
        b.until_hour(b.hours() + 2)
        rep = b.finish()
        console = b.h.console()
    t_join = b.joins[1]
    # not before six hours without a downlink (SILENCE_MS), and then within a few send wakes
    # (three link checks unanswered, one each send wake, then the next send wake joins)
    assert t_join - heard >= 6 * H, (t_join - heard) / H
    assert t_join - heard <= 6 * H + 5 * 1800 + 1800, (t_join - heard) / H
    assert "link checks unanswered: joining again" in console
    lost = [t for t, _, dropped in b.uplinks if dropped and t > t_forget]
    assert len(lost) >= 4  # the uplinks the network dropped meanwhile (readings, then the link checks)
    assert b.ns.counts["joins"] == 2  # one join for the loss, none on the wakes around it
    assert rep["missing"] == [] and rep["duplicated"] == 0 and rep["dropped"] == 0, rep
    assert rep["delivered"] + rep["in_store"] == rep["stored"] >= 60, rep
