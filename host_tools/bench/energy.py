"""`lanterne bench energy`: what the lamp's energy meter costs a board, and its flash wear.

- Heap: on a virtual esp32-devkitc with the firmware in its ROMFS partition (the factory layout),
  the `gc.mem_alloc()` and qstr-pool growth (`micropython.qstr_info()`) of importing
  `lanterne.energy` and building the meter the way a lamp board does, after what the app loads
  anyway (codec, config, the lamp driver); and the cost of importing `lanterne.config` (every
  board: the four lamp fields of its schema). ESP32-equivalent bytes divide by the layout's
  64/32-bit scale (docs/emulator.md, "Heap"); qstr bytes are this port's.
- CPU and allocation per tick (every 2 s) and per save, on the unix port at the board's heap.
- Flash wear: bytes programmed and blocks erased per save on littlefs (the power-cut harness's
  file-backed NOR flash, host_tools/reliability/energy_powercut.py), and what a save a minute while
  the lamp burns (4 100 h a year, dusk to dawn at 45 degrees N) makes of it.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.fleet import deploy
from host_tools.fleet.boardlink import BoardLink

BURNING_H_PER_YEAR = 4100  # dusk to dawn (civil twilight) over a year at 45 deg N: about 11.2 h a night
CYCLES = 100_000  # NOR flash program/erase cycles per block (ESP32 modules' flash: 100 000)

_HEAP = """
import gc, micropython
from machine import ADC, PWM, Pin
from lanterne import codec
from lanterne.actuators.lamp import Lamp
lamp = Lamp(PWM(Pin(25)), current_adc=ADC(Pin(35)), current_ohms=0.1, current_gain=20.0)
gc.collect()
c0 = gc.mem_alloc()
from lanterne import config
gc.collect()
c1 = gc.mem_alloc()
print("QSTR0")
micropython.qstr_info()
gc.collect()
a0 = gc.mem_alloc()
from lanterne.energy import EnergyMeter
m = EnergyMeter(lamp, lamp_v=48.0, rated_w=40.0, curve=config.parse_curve(config.DEFAULT_CURVE))
lamp.set(100)
for _ in range(3):
    lamp.check()
    m.tick()
m.report()
m.status()
gc.collect()
a1 = gc.mem_alloc()
print("QSTR1")
micropython.qstr_info()
print("ALLOC", a1 - a0, c1 - c0)
"""

_CPU = """
import gc, json, os, time
from lanterne.energy import EnergyMeter
from lanterne.config import parse_curve, DEFAULT_CURVE
class Lamp:
    output = 1000; current_ma = 833; current_adc = 1; fault = 0; fault_ma = 20
    ramping = False; _steady_since = 0; settle_ms = 1500
os.chdir(DIR)
lamp = Lamp()
m = EnergyMeter(lamp, lamp_v=48.0, rated_w=40.0, curve=parse_curve(DEFAULT_CURVE), now_ms=0)
def ticks(n):
    t = 0
    gc.collect()
    a = gc.mem_alloc()
    t0 = time.ticks_us()
    for i in range(n):
        t += 2000
        m._saved_at = t  # ticks only: no save
        m.tick(t)
    return time.ticks_diff(time.ticks_us(), t0) / n, gc.mem_alloc() - a
def saves(n):
    t0 = time.ticks_us()
    for i in range(n):
        m._dirty = True
        m.save()
    return time.ticks_diff(time.ticks_us(), t0) / n
ticks(50)
us, alloc1 = ticks(NCOUNT)
_, alloc2 = ticks(2 * NCOUNT)
# per tick: what n more ticks allocate (the measuring itself allocates a constant)
print(json.dumps({"tick_us": us, "tick_alloc": (alloc2 - alloc1) / NCOUNT, "save_us": saves(NCOUNT // 10)}))
"""


def _qstr(text: str, marker: str) -> int:
    part = text.split(marker, 1)[1]
    m = re.search(r"n_total_bytes=(\d+)", part)
    return int(m.group(1)) if m else 0


def _heap(tmp: Path) -> dict:
    from host_tools.emulator.supervisor import Emulator

    board = boards.load("esp32-devkitc")
    flash = tmp / "heap"
    deploy.copy_to_flash(board, {"device": "bench-energy"}, flash)
    (flash / "main.py").write_text("print('no app')\n")  # the REPL stays free; the library is importable
    emu = Emulator()
    try:
        h = emu.add_board(board, flash)
        h.wait_for(">>> ", timeout=30)
        link = BoardLink(h.port)
        try:
            out = link.exec(_HEAP, "measuring the energy meter's heap").decode()
        finally:
            link.close(restart=False)
        scale = h.board.heap_scale()
    finally:
        emu.close()
    alloc, config_alloc = (int(x) for x in re.search(r"ALLOC (\d+) (\d+)", out).groups())
    return {
        "heap_bytes_energy_meter": round(alloc / scale),
        "heap_bytes_energy_meter_host": alloc,
        "qstr_bytes_energy": _qstr(out, "QSTR1") - _qstr(out, "QSTR0"),
        "heap_bytes_config_import": round(config_alloc / scale),
        "heap_scale_romfs": round(scale, 3),
    }


def run(quick: bool = False) -> BenchResult:
    from host_tools.reliability.energy_powercut import run_energy_powercuts
    from host_tools.runtime import unix_port

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        metrics: dict = _heap(tmp)
        cpu = unix_port.run_json(_CPU.replace("DIR", repr(str(tmp))).replace("NCOUNT", "500" if quick else "5000"),
                                 heapsize=100 * 1024)
        t0 = time.monotonic()
        wear = run_energy_powercuts(3 if quick else 40, seed=3, flash_dir=tmp / "lfs")
        wear_s = time.monotonic() - t0
    metrics.update({
        "tick_us": round(cpu["tick_us"], 1),
        "tick_alloc_bytes": round(cpu["tick_alloc"], 2),
        "save_us": round(cpu["save_us"], 1),
        "flash_bytes_per_save": round(wear.programmed_per_save, 1),
        "flash_erases_per_save": round(wear.erases_per_save, 4),
        "powercut_cuts": wear.cuts,
        "powercut_worst_loss_s_at_100w": round(wear.worst_loss_ws / 100, 1),
        "powercut_ok": int(wear.ok),
    })
    saves = BURNING_H_PER_YEAR * 60
    erases = saves * wear.erases_per_save
    fs_blocks = boards.load("esp32-devkitc").data["flash"]["fs_bytes"] // 4096
    metrics["saves_per_year"] = saves
    metrics["erases_per_year"] = round(erases)
    metrics["years_to_wear_2_blocks"] = round(2 * CYCLES / erases, 1) if erases else None
    metrics["years_to_wear_fs_levelled"] = round(fs_blocks * CYCLES / erases) if erases else None
    rows = [
        ["heap: import + meter (ESP32-equivalent)", f"{metrics['heap_bytes_energy_meter']} B",
         f"{metrics['heap_bytes_energy_meter_host']} B on this 64-bit port"],
        ["qstr pool growth", f"{metrics['qstr_bytes_energy']} B", "interned names the module brings"],
        ["import lanterne.config (every board)", f"{metrics['heap_bytes_config_import']} B", ""],
        ["tick (every 2 s)", f"{metrics['tick_us']} us", f"{metrics['tick_alloc_bytes']} B allocated"],
        ["save (48-byte file, two slots)", f"{metrics['save_us']} us", "host folder, unix port"],
        ["flash per save (littlefs)", f"{metrics['flash_bytes_per_save']} B programmed",
         f"{metrics['flash_erases_per_save']} blocks erased"],
        ["a save a minute while burning", f"{saves} saves/year", f"{metrics['erases_per_year']} erases/year"],
        ["to 100 000 cycles", f"{metrics['years_to_wear_2_blocks']} years on 2 blocks",
         f"{metrics['years_to_wear_fs_levelled']} years levelled over {fs_blocks} blocks"],
        ["power cuts on littlefs", f"{wear.cuts} cuts, {'ok' if wear.ok else 'FAILED'}",
         f"worst loss {metrics['powercut_worst_loss_s_at_100w']} s of burning"],
    ]
    return BenchResult(metrics=metrics, tables=[("Lamp energy meter", ["what", "value", "note"], rows)],
                       notes=[f"power-cut harness: {wear_s:.1f} s"])
