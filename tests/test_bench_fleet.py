"""`lanterne bench fleet`'s accounting, on made-up /proc samples: every interpreter's CPU in the
window counts once, a board's rebooted or woken interpreters included (the benchmark itself runs
boards for minutes: `lanterne bench fleet`, docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from host_tools.bench.fleet import interpreters_cpu


def test_interpreters_that_ran_started_or_ended_in_the_window_each_count_once():
    kinds = ["wifi-lamp", "wifi-lamp", "battery-bin"]
    # board 0: one interpreter throughout (1.0 -> 1.5 s); board 1: rebooted (its first interpreter
    # had 2.0 s at the start and ended at 2.4 s; the new one has 0.3 s); board 2, a battery bin:
    # asleep at the start, woke once (0.1 s, ended) and is awake again at the end (0.2 s so far)
    a = {"boards": {0: (100, 1.0), 1: (101, 2.0)}, "ended": 7.0}
    b = {"boards": {0: (100, 1.5), 1: (201, 0.3), 2: (202, 0.2)}, "ended": 7.0 + 2.4 + 0.1}
    fleet, by_kind, changed = interpreters_cpu(a, b, kinds)
    assert fleet == pytest.approx(0.5 + 0.4 + 0.3 + 0.1 + 0.2)
    assert by_kind == {"wifi-lamp": [pytest.approx(0.5)]} and changed == 2
