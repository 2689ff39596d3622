"""`lanterne bench boot`: virtual-board boot time to the first status message, heap free after boot.

Side by side in one run: a bare unix-port interpreter start (the floor any virtual
board pays), the virtual board's ROM ready (shims loaded, flash mounted), and the
firmware's first retained status on a real broker (Mosquitto when installed, else
the embedded amqtt broker), for each board file.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.fleet import deploy
from host_tools.runtime.paths import micropython_binary


def _broker():
    from host_tools.backoffice.brokers import BrokerError, EmbeddedBroker, Mosquitto

    try:
        return Mosquitto().start(), "mosquitto"
    except BrokerError:
        return EmbeddedBroker().start(), "amqtt"


def run(quick: bool = False) -> BenchResult:
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.board import HEAP_SCALE_ROMFS, rom_heap_overhead
    from host_tools.emulator.supervisor import Emulator

    reps = 2 if quick else 5
    bare = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([micropython_binary(), "-c", "pass"], check=True)
        bare.append((time.perf_counter() - t) * 1000)
    broker, broker_name = _broker()
    rows = []
    metrics: dict = {}
    try:
        with Emulator() as emu, Watcher(broker.url, ["lanterne/#"]) as w, tempfile.TemporaryDirectory() as tmp:
            for name in boards.names():
                board = boards.load(name)
                if board.data["network"]["kind"] == "lorawan":
                    continue  # no IP status path on this board yet
                flash = Path(tmp) / name
                device = f"bench-{name}"
                deploy.copy_to_flash(board, {"device": device, "site": "bench", "broker": broker.url}, flash)
                h = emu.add_board(board, flash, power_on=False)
                ready, first, heap = [], [], []
                for _ in range(reps):
                    n = len(w.matching(f"lanterne/v1/bench/{device}/status", lambda m: b'"online"' in m.payload))
                    t = time.perf_counter()
                    h.power_on()
                    h.wait_booted(timeout=30)
                    ready.append((time.perf_counter() - t) * 1000)
                    msgs = w.wait_for(
                        f"lanterne/v1/bench/{device}/status", lambda m: b'"online"' in m.payload, count=n + 1, timeout=30
                    )
                    first.append((time.perf_counter() - t) * 1000)
                    heap.append(json.loads(msgs[-1].payload)["heap_free"])
                    h.power_cut()
                h.close()
                rows.append(
                    [name, f"{statistics.median(bare):.0f}", f"{statistics.median(ready):.0f}",
                     f"{statistics.median(first):.0f}", f"{statistics.median(first) / statistics.median(bare):.1f}x",
                     board.heap_bytes, min(heap)]
                )
                key = name.replace("-", "_")
                metrics[f"first_status_ms_{key}"] = round(statistics.median(first), 1)
                metrics[f"heap_free_after_boot_{key}"] = min(heap)
    finally:
        broker.stop()
    metrics["interpreter_start_ms"] = round(statistics.median(bare), 1)
    metrics["first_status_ms"] = max(v for k, v in metrics.items() if k.startswith("first_status_ms_"))
    metrics["heap_free_after_boot"] = min(v for k, v in metrics.items() if k.startswith("heap_free_after_boot_"))
    metrics["rom_heap_overhead_bytes"] = rom_heap_overhead()
    return BenchResult(
        metrics,
        tables=[
            (
                f"boot to first status message ({broker_name}, median of {reps})",
                ["board", "bare interpreter ms", "ROM ready ms", "first status ms", "vs bare", "heap bytes", "heap free after boot"],
                rows,
            )
        ],
        notes=[
            "heap free is what the firmware reports in its status (gc.mem_free), in this 64-bit port's bytes:"
            f" the virtual board's heap is the board file's heap x the layout's scale ({HEAP_SCALE_ROMFS} with the library"
            " in ROMFS, measured 64/32-bit ratio) plus the ROM's own measured use; divide by that scale for"
            " ESP32-equivalent bytes"
        ],
    )
