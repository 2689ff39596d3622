"""Store benchmark: appends/s, bytes written per record, write amplification, recovery after a cut.

Everything runs the firmware store (firmware/lanterne/store.py) on the MicroPython unix port
at the board's 100 KB heap, 12-byte records (a compact encoded reading), default segments of
4 KiB. Two filesystems side by side: the virtual board's flash folder (bytes counted at the
filesystem API: headers, frames, ack log), and littlefs on a file-backed NOR-flash device
(host_tools.reliability.powercut.FLASH_DEVICE), where the bytes littlefs programs and the blocks it
erases are counted too: the wear the board's flash really sees.

recovery_ms_full: a filler process keeps a store at capacity and is SIGKILLed mid-append; a
new process then times `Store(...)` (listing, ack log, newest-segment scan). On the ESP32
expect it slower than on this host: it reads the newest segment (4 KiB) and the ack log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools.bench import BenchResult
from host_tools.fleet import deploy
from host_tools.reliability.powercut import FLASH_DEVICE
from host_tools.runtime import unix_port
from host_tools.runtime.paths import FIRMWARE, micropython_binary

BOARD_HEAP = 100 * 1024
RECORD = 12
SEGMENT = 4096

WORKLOAD = r"""
import gc, json, time
from lanterne.store import Store

N, BUDGET, LIVE, CAPACITY = %(n)d, %(budget)d, %(live)d, %(capacity)d
s = Store(%(path)r, CAPACITY, %(segment)d)
rec = bytearray(%(record)d)
rec[0] = 1
s.append(rec)
s.ack(s.peek(BUDGET))
base_written, base_records = s.bytes_written, s.record_bytes
dev0 = dev_counts() if DEV else (0, 0)
i = 0
gc.collect()
t0 = time.ticks_us()
if LIVE:
    for i in range(N):
        rec[0] = i & 0xFF
        s.append(rec)
        s.ack(s.peek(BUDGET))
else:
    for i in range(N):
        rec[0] = i & 0xFF
        s.append(rec)
t1 = time.ticks_us()
fill_written = s.bytes_written - base_written
fill_dev = dev_counts() if DEV else (0, 0)
batches = 0
while not LIVE:
    batch = s.peek(BUDGET)
    if not batch:
        break
    s.ack(batch)
    batches += 1
t2 = time.ticks_us()
dev1 = dev_counts() if DEV else (0, 0)
records = s.record_bytes - base_records
print(json.dumps(dict(
    append_us=time.ticks_diff(t1, t0) / N,
    drain_us=time.ticks_diff(t2, t1) / N,
    fill_bytes_per_record=fill_written / N,
    bytes_per_record=(s.bytes_written - base_written) / N,
    write_amplification=(s.bytes_written - base_written) / records,
    programmed_per_record=(dev1[0] - dev0[0]) / N,
    erases_per_record=(dev1[1] - dev0[1]) / N,
    fill_programmed_per_record=(fill_dev[0] - dev0[0]) / N,
    batches=batches, dropped=s.dropped, pending=s.pending, syncs=s.syncs)))
"""

FOLDER_SETUP = "DEV = None\n\ndef dev_counts():\n    return (0, 0)\n"
LITTLEFS_SETUP = (
    FLASH_DEVICE
    + r"""
DEV = mount_flash(%(image)r, blocks=%(blocks)d, format=True)


def dev_counts():
    return (DEV.programmed, DEV.erases)
"""
)

FILLER = r"""
import sys
from lanterne.store import Store
s = Store(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
rec = bytearray(%(record)d)
i = 0
while True:
    rec[0] = i & 0xFF
    s.append(rec)
    i += 1
    if s.dropped and i %% 64 == 0:
        sys.stdout.write("full\n")
"""

RECOVER = r"""
import gc, json, time
t0 = time.ticks_us()
from lanterne.store import Store
gc.collect()
before = gc.mem_alloc()
t1 = time.ticks_us()
s = Store(%(path)r, %(capacity)d, %(segment)d)
t2 = time.ticks_us()
gc.collect()
store_ram = gc.mem_alloc() - before
batch = s.peek(240)
t3 = time.ticks_us()
print(json.dumps(dict(import_ms=time.ticks_diff(t1, t0) / 1000, recovery_ms=time.ticks_diff(t2, t1) / 1000,
                      first_peek_ms=time.ticks_diff(t3, t2) / 1000, store_ram=store_ram, pending=s.pending,
                      segments=s.stats()["segments"], first=batch[0][0] if batch else -1)))
"""

MEMORY = r"""
import gc, json, micropython
gc.collect()
a = gc.mem_alloc()
from lanterne.store import Store
peak = micropython.mem_peak()
gc.collect()
resident = gc.mem_alloc() - a
s = Store(%(path)r, 262144, 4096)
rec = bytearray(12)
s.append(rec)
i = 0
gc.collect()
gc.disable()
b = gc.mem_alloc()
for i in range(500):
    s.append(rec)
per_append = (gc.mem_alloc() - b) / 500
gc.enable()
print(json.dumps(dict(peak=peak, resident=resident, per_append=per_append)))
"""


def compile_mpy(dest: str | os.PathLike) -> Path:
    """The store and its package compiled to .mpy in dest/lanterne, the way deploy puts them on a board."""
    out = Path(dest) / "lanterne"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("__init__", "store"):
        source = (FIRMWARE / "lanterne" / f"{name}.py").read_bytes()
        (out / f"{name}.mpy").write_bytes(deploy.mpy_compile(source, f"lanterne/{name}.py"))
    return Path(dest)


def workload(tmp: Path, *, n: int, budget: int, live: bool, fs: str, record: int = RECORD) -> dict:
    params = {
        "n": n,
        "budget": budget,
        "live": int(live),
        "capacity": 262144,
        "segment": SEGMENT,
        "record": record,
    }
    if fs == "littlefs":
        image = tmp / f"flash-{random.getrandbits(32):08x}.img"
        # 512 KiB of flash: the store at its default 256 KiB capacity, plus room to wear-level
        setup = LITTLEFS_SETUP % {"image": str(image), "blocks": 128}
        params["path"] = "/flash/store"
    else:
        setup = FOLDER_SETUP
        params["path"] = str(tmp / f"store-{random.getrandbits(32):08x}")
    return unix_port.run_json(setup + WORKLOAD % params, heapsize=BOARD_HEAP, timeout=600)


def recovery(tmp: Path, capacity: int, cuts: int) -> list[dict]:
    """Keep a store at capacity in a filler process, SIGKILL it, time the recovery; `cuts` times."""
    path = tmp / "full"
    env = dict(os.environ, MICROPYPATH=unix_port.micropython_path())
    script = tmp / "filler.py"
    script.write_text(FILLER % {"record": RECORD})
    rng = random.Random(5)
    out = []
    for _ in range(cuts):
        proc = subprocess.Popen(
            [
                micropython_binary(),
                "-X",
                f"heapsize={BOARD_HEAP}",
                str(script),
                str(path),
                str(capacity),
                str(SEGMENT),
            ],
            stdout=subprocess.PIPE,
            env=env,
        )
        proc.stdout.readline()  # "full": the store is at capacity and dropping
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        code = RECOVER % {"path": str(path), "capacity": capacity, "segment": SEGMENT}
        out.append(unix_port.run_json(code, heapsize=BOARD_HEAP))
    return out


def run(quick: bool = False) -> BenchResult:
    n = 1000 if quick else 5000
    capacity = 65536 if quick else 262144
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        mpy = compile_mpy(tmp / "mpy")
        mem = unix_port.run_json(MEMORY % {"path": str(tmp / "mem")}, heapsize=BOARD_HEAP)
        mem_mpy = unix_port.run_json(MEMORY % {"path": str(tmp / "mem-mpy")}, heapsize=64 * 1024, path=[mpy])
        patterns = [
            ("fill, then drain in 240 B batches", dict(budget=240, live=False)),
            ("fill, then drain in 1 KiB batches", dict(budget=1024, live=False)),
            ("live: each reading sent and acked alone", dict(budget=240, live=True)),
            ("28 B records (reading.py), 240 B batches", dict(budget=240, live=False, record=28)),
        ]
        rows = []
        results = {}
        for name, kw in patterns:
            folder = workload(tmp, n=n, fs="folder", **kw)
            lfs = workload(tmp, n=n // 2, fs="littlefs", **kw)
            results[name] = (folder, lfs)
            rows.append(
                [
                    name,
                    round(folder["bytes_per_record"], 2),
                    round(folder["write_amplification"], 3),
                    round(lfs["write_amplification"], 3),
                    round(lfs["programmed_per_record"]),
                    round(lfs["erases_per_record"], 3),
                    round(1e6 / folder["append_us"]),
                ]
            )
        # appends/s on the folder pays an fsync per append: noisy on a shared disk, so the
        # median of three fills
        fills = [results["fill, then drain in 240 B batches"][0]]
        fills += [workload(tmp, n=n, fs="folder", budget=240, live=False) for _ in range(2)]
        append_us = sorted(f["append_us"] for f in fills)[1]
        rec = recovery(tmp, capacity, cuts=2 if quick else 5)
    fill, lfs_fill = results["fill, then drain in 240 B batches"]
    live, _ = results["live: each reading sent and acked alone"]
    rec_ms = sorted(r["recovery_ms"] for r in rec)
    median = rec_ms[len(rec_ms) // 2]
    metrics = {
        "appends_per_s": round(1e6 / append_us),
        "appends_per_s_littlefs": round(1e6 / lfs_fill["append_us"]),
        "bytes_per_record": round(fill["fill_bytes_per_record"], 2),
        "write_amplification": round(fill["write_amplification"], 3),
        "write_amplification_live": round(live["write_amplification"], 3),
        "write_amplification_28b": round(
            results["28 B records (reading.py), 240 B batches"][0]["write_amplification"], 3
        ),
        "flash_bytes_per_record_littlefs": round(lfs_fill["programmed_per_record"]),
        "erases_per_record_littlefs": round(lfs_fill["erases_per_record"], 3),
        "recovery_ms_full": round(median, 2),
        "recovery_ms_full_max": round(rec_ms[-1], 2),
        "first_peek_ms_after_recovery": round(sorted(r["first_peek_ms"] for r in rec)[len(rec) // 2], 2),
        "store_ram_bytes": rec[-1]["store_ram"],
        "alloc_per_append_bytes": mem["per_append"],
        "import_peak_heap_source": mem["peak"],
        "import_resident_source": mem["resident"],
        "import_resident_mpy": mem_mpy["resident"],
        "record_bytes": RECORD,
        "segment_bytes": SEGMENT,
    }
    tables = [
        (
            f"bytes written per record ({RECORD} B unless said), {n} records (littlefs: {n // 2}, 4 KiB blocks)",
            [
                "pattern",
                "API bytes/record",
                "write amp. (folder)",
                "write amp. (littlefs API)",
                "littlefs flash bytes/record",
                "littlefs erases/record",
                "appends/s (folder)",
            ],
            rows,
        ),
        (
            f"recovery after a power cut with a full store ({capacity // 1024} KiB, SIGKILL mid-append)",
            ["cut", "segments", "pending", "import ms", "recovery ms", "first peek ms"],
            [
                [
                    i + 1,
                    r["segments"],
                    r["pending"],
                    round(r["import_ms"], 1),
                    round(r["recovery_ms"], 2),
                    round(r["first_peek_ms"], 2),
                ]
                for i, r in enumerate(rec)
            ],
        ),
    ]
    notes = [
        f"framing: {RECORD}-byte record -> {RECORD + 3}-byte frame (length + CRC-16, seq implicit): "
        f"{(RECORD + 3) / RECORD:.2f} before headers and acks",
        "appends/s on the flash folder include an fsync per append (f.flush() on the unix port)",
        "littlefs copies the partly written last block on every synced append: ~1 erase per append is "
        "littlefs's own cost; see docs/store.md for the lifetime arithmetic",
        f"import from source peaks at {mem['peak']} B of heap on the 64-bit unix port; as .mpy the module "
        f"costs {mem_mpy['resident']} B",
    ]
    return BenchResult(metrics=metrics, tables=tables, notes=notes)


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv)
    print(json.dumps(res.metrics, indent=1))
