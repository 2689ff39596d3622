"""Power cuts at random instants during append and drain: no appended reading is ever lost.

The firmware store runs in a MicroPython unix-port process that is SIGKILLed at seeded
random instants and restarted on the same flash (host_tools.reliability.powercut). The documented
1 000-cut run is `python -m host_tools.reliability.powercut --cuts 1000`.
"""

from __future__ import annotations

import pytest

from host_tools.reliability.powercut import run_powercuts


@pytest.mark.slow
def test_200_power_cuts_on_the_virtual_board_flash_folder(tmp_path):
    report = run_powercuts(200, seed=20240611, flash_dir=tmp_path)
    assert report.ok, report.summary()
    assert report.appended > 1000, "the cuts landed on a store that was working"
    where = report.cut_while
    assert where.get("appending", 0) >= 20, "cuts landed during appends"
    assert where.get("acking", 0) + where.get("draining", 0) >= 10, "and while draining and acknowledging"
    assert where.get("booting", 0) >= 20, "and during boot and recovery"
    assert report.tears >= 20, "torn tails were left behind and recovered from"
    assert report.duplicates > 0, "lost acks were exercised"


@pytest.mark.slow
def test_100_power_cuts_on_littlefs(tmp_path):
    """On littlefs only what was synced survives a cut: this is where a missing sync would show."""
    report = run_powercuts(100, seed=7, flash_dir=tmp_path, fs="littlefs")
    assert report.ok, report.summary()
    assert report.appended > 500
