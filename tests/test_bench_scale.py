"""`lanterne bench heap` prints the 64-bit -> ESP32 heap scale its boards ran with, not just its name."""

from __future__ import annotations

import io

import pytest

from host_tools import boards
from host_tools.backoffice.watcher import Watcher
from host_tools.bench import heap
from host_tools.cli.bench import _print_table
from host_tools.emulator.board import HEAP_SCALE_ROMFS

pytestmark = pytest.mark.integration


def test_bench_heap_prints_the_scale_each_layout_ran_with(emulator, mosquitto, tmp_path):
    board = boards.load("esp32-devkitc")
    with Watcher(mosquitto.url, ["lanterne/v1/heap/+/status", "lanterne/v1/heap/+/up"]) as w:
        trial = heap._Trial(emulator, w, mosquitto.url, tmp_path)
        ok, steady, why = trial.run(board, "romfs", None, window_s=5)  # one real trial: the board's own heap
    assert ok, why
    assert trial.scales == {"romfs": HEAP_SCALE_ROMFS}  # what the virtual board's interpreter ran with
    res = heap.result({}, [["esp32-devkitc", "romfs", 100, "yes", steady, 57344, "yes"]], trial.scales, 5)
    out = io.StringIO()
    for title, columns, rows in res.tables:
        _print_table(title, columns, rows, out)
    printed = out.getvalue() + "\n".join(res.notes)
    assert "scale used" in printed and f"{HEAP_SCALE_ROMFS}" in printed.split("scale used", 1)[1]
    assert f"scale 64-bit -> ESP32 used: {HEAP_SCALE_ROMFS} with the library in ROMFS" in printed
    assert res.metrics["heap_scale_romfs"] == HEAP_SCALE_ROMFS  # and in --json
