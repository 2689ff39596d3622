"""Power cuts on a virtual board running the real firmware, then the link returns: nothing lost.

The emulator's power cut SIGKILLs the interpreter at a random instant (while it samples,
appends, drains, acks or boots); the flash folder stays as it was. After every cut the
board boots again from the same flash. At the end the link comes up and the host must
receive every reading the store ever gave a sequence number to (an append that returned),
none corrupted, deduplicated by sequence number, each board reading in order.
The store-level harness (`python -m host_tools.reliability.powercut --cuts 1000`) does 1 000 cuts;
this test does fewer, end to end through MQTT.
"""

from __future__ import annotations

import random
import sys
import time

import pytest

from host_tools.backoffice.watcher import Watcher
from host_tools.codec.decoder import decode
from host_tools.codec.seq import SeqTracker
from host_tools.runtime.paths import FIRMWARE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUTS = 40


def store_next_seq(flash):
    """What the store on the flash folder says its next seq is (the firmware's own module, on CPython)."""
    sys.path.insert(0, str(FIRMWARE))
    try:
        from lanterne.store import Store

        s = Store(str(flash / "store"))
        n, dropped = s.next_seq, s.dropped
        s.close()
        return n, dropped
    finally:
        sys.path.remove(str(FIRMWARE))


def test_random_power_cuts_lose_nothing(virtual_boards, mosquitto):
    rng = random.Random(20261126)
    cfg = {"device": "cut-1", "site": "pc", "broker": mosquitto.url, "sample_period_s": 1, "status_period_s": 3600}
    with Watcher(mosquitto.url, ["lanterne/v1/pc/cut-1/up"]) as w:
        (h,) = virtual_boards(1, config=cfg)
        for _ in range(CUTS):
            # the link flaps too: half the cuts happen while the board cannot reach the broker
            h.world.set(link_up=rng.random() < 0.5)
            time.sleep(rng.uniform(0.2, 1.6))
            h.power_cut()
            h.power_on()
        h.world.set(link_up=True)
        time.sleep(1.5)
        h.power_cut()  # stop appending, then count what the store handed out
        next_seq, dropped = store_next_seq(h.flash)
        assert dropped == 0
        h.power_on()
        deadline = time.monotonic() + 60
        tracker = SeqTracker()
        got: list[int] = []
        while time.monotonic() < deadline:
            msgs = w.matching("lanterne/v1/pc/cut-1/up")
            tracker = SeqTracker()
            got = []
            for m in msgs:
                for r in decode(m.payload)["readings"]:
                    full, new = tracker.accept(r["seq"])
                    if new:
                        got.append(full)
            if set(range(next_seq)) <= set(got):
                break
            time.sleep(0.5)
    missing = sorted(set(range(next_seq)) - set(got))
    assert not missing, f"{len(missing)} stored readings never arrived: {missing[:20]} (of {next_seq}; console:\n{h.console()[-1500:]})"
    assert h.boots >= CUTS + 2
    assert next_seq >= CUTS // 2  # readings were taken all along (fewer on a loaded machine: boots are slower)
