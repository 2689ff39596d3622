"""Overflow: a store at capacity drops its oldest unsent readings, counts them, raises the flag,
and never fills the filesystem: config writes still succeed, on a folder and on littlefs.

The scenarios run on the MicroPython unix port (the firmware target); the littlefs ones on
littlefs itself, over a file-backed flash device (host_tools.reliability.powercut.FLASH_DEVICE).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_store_outage import READING
from test_store_outage import reading as reading_bytes

from host_tools.bench.store import compile_mpy
from host_tools.reliability.powercut import FLASH_DEVICE
from host_tools.runtime import unix_port

BOARD_HEAP = 100 * 1024

SEG_BYTES = r"""
def seg_bytes(path):
    import os
    return sum([os.stat(path + "/" + n)[6] for n in os.listdir(path) if n.endswith(".seg")])
"""


def run(code: str, **kw):
    return unix_port.run_json(READING + SEG_BYTES + code, heapsize=kw.pop("heapsize", BOARD_HEAP), **kw)


def test_full_store_drops_the_oldest_counts_them_and_raises_the_flag(tmp_path):
    path = str(tmp_path / "store")
    got = run(
        f"""
import json
from lanterne.store import Store
s = Store({path!r}, 4 * 600, 600, 0)   # room for about 150 readings of 12 bytes
seqs_ok, first_drop, flag_then, flag_next, biggest = True, None, None, None, 0
for i in range(1000):
    before = s.dropped
    seqs_ok = seqs_ok and s.append(reading(i)) == i
    if first_drop is not None and flag_next is None:
        flag_next = s.overflow
    if first_drop is None and s.dropped > before:
        first_drop, flag_then = i, s.overflow
    if i % 10 == 0:
        biggest = max(biggest, seg_bytes({path!r}))
kept, intact = [], True
while True:
    batch = s.peek(600)
    if not batch:
        break
    kept += [q for q, r in batch]
    intact = intact and all([r == reading(q) for q, r in batch])
    s.ack(batch)
print(json.dumps(dict(seqs_ok=seqs_ok, dropped=s.dropped, kept=kept, intact=intact, flag_then=flag_then,
                      flag_next=flag_next, biggest=biggest, pending=s.pending)))
"""
    )
    assert got["seqs_ok"], "seqs keep counting while the store drops"
    kept = got["kept"]
    assert kept, "the newest readings are kept"
    assert kept == list(range(1000 - len(kept), 1000)), "the oldest were dropped, the newest kept, in order"
    assert got["intact"]
    assert got["dropped"] == 1000 - len(kept), "every lost reading is counted"
    assert len(kept) * 15 <= 4 * 600 and len(kept) >= 2 * 600 // 15, "capacity is used, not exceeded"
    assert got["biggest"] <= 4 * 600, "the segments never exceed the capacity"
    assert got["flag_then"] is True, "the overflow flag is up right after the drop"
    assert got["flag_next"] is False, "and down once the next reading (which carries it) is stored"


def test_overflow_flag_and_drop_count_survive_a_power_cut(tmp_path):
    path = str(tmp_path / "store")
    got = run(
        f"""
import json
from lanterne.store import Store
s = Store({path!r}, 2 * 600, 600, 0)
i = 0
while not s.dropped:
    s.append(reading(i))
    i += 1
before = [s.dropped, s.overflow]
s = Store({path!r}, 2 * 600, 600, 0)   # the power went: no close
after = [s.dropped, s.overflow]
s.append(reading(i))
print(json.dumps(dict(before=before, after=after, next=[s.dropped, s.overflow])))
"""
    )
    assert got["before"][1] is True
    assert got["after"] == got["before"], "drop count and pending flag are persisted"
    assert got["next"] == [got["before"][0], False], "the next stored reading clears the flag"


def test_backlog_draining_while_the_store_overflows_loses_only_dropped_readings(tmp_path):
    path = str(tmp_path / "store")
    got = run(
        f"""
import json
from lanterne.store import Store
s = Store({path!r}, 4 * 600, 600, 0)
seen = bytearray(2000)
intact = True


def take(batch):
    global intact
    for q, r in batch:
        seen[q] = 1
        intact = intact and r == reading(q)


for i in range(2000):
    s.append(reading(i))
    if i % 7 == 0:
        batch = s.peek(60)
        take(batch)
        if i % 3:
            s.ack(batch)
while s.pending:
    batch = s.peek(240)
    take(batch)
    s.ack(batch)
print(json.dumps(dict(seen=sum(seen), intact=intact, dropped=s.dropped)))
"""
    )
    assert got["intact"], "what arrives is intact"
    assert got["seen"] + got["dropped"] >= 2000, "each reading either delivered or counted as dropped"
    assert got["dropped"] > 0


def test_config_writes_succeed_while_the_store_is_at_capacity_on_a_folder(tmp_path):
    """The virtual board's flash: the store in /store, the config beside it."""
    flash = tmp_path / "flash"
    flash.mkdir()
    got = run(
        f"""
import json
from lanterne.store import Store
s = Store({str(flash / "store")!r}, 8192, 4096)
for i in range(3000):
    s.append(reading(i))
f = open({str(flash / "config.json")!r}, "w")
f.write(json.dumps({{"device": "lamp-7", "store_bytes": 8192}}))
f.close()
print(json.dumps(dict(dropped=s.dropped, overflow=s.overflow, errors=s.errors, appended=s.append(reading(3000)))))
"""
    )
    assert got["dropped"] > 0 and got["errors"] == 0
    assert got["appended"] == 3000, "the store keeps taking readings"
    assert json.loads((flash / "config.json").read_text())["device"] == "lamp-7"
    segments = sum(p.stat().st_size for p in (flash / "store").glob("*.seg"))
    assert segments <= 8192


def littlefs(code: str, image, blocks: int = 64) -> dict:
    # The store compiled to .mpy, as deploy puts it on a board: compiling its source here would
    # take a heap the board never spends (the compiler's parse tree, beside littlefs's buffers).
    setup = FLASH_DEVICE + f"\ndev = mount_flash({str(image)!r}, blocks={blocks}, format=True)\n"
    return run(setup + code, path=[compile_mpy(Path(str(image)).parent / "mpy")])


def test_config_writes_succeed_on_littlefs_even_when_capacity_exceeds_the_filesystem(tmp_path):
    """capacity_bytes set above what the 128 KiB filesystem can hold: the free-space reserve wins."""
    got = littlefs(
        """
import json, os
from lanterne.store import Store
s = Store("/flash/store", 1024 * 1024, 4096)   # 1 MiB configured on a 128 KiB filesystem
for i in range(10000):
    if s.append(reading(i)) < 0:
        raise SystemExit("append failed: %s" % s.last_error)
st = os.statvfs("/flash")
free = st[0] * st[4]
cfg = json.dumps({"device": "bin-12", "site": "north", "pad": "x" * 3000})
f = open("/flash/config.json", "w")
f.write(cfg)
f.close()
back = open("/flash/config.json").read() == cfg
print(json.dumps(dict(dropped=s.dropped, errors=s.errors, free=free, back=back, segments=s.stats()["segments"],
                      appended=s.append(reading(10000)))))
""",
        tmp_path / "flash.img",
        blocks=32,
    )
    assert got["errors"] == 0, "the store never ran the filesystem out of space"
    assert got["dropped"] > 0, "it dropped old readings instead"
    assert got["free"] >= 16384, "the reserve stays free"
    assert got["back"] is True, "a config written at that moment is stored whole"
    assert got["appended"] == 10000


def test_append_on_a_filesystem_filled_by_something_else_holds_the_readings_and_appends_them_later(tmp_path):
    # Another file takes every free block: appends fail with ENOSPC. A refused reading is held in
    # RAM and appended before the next one once the flash takes it (on littlefs a full filesystem
    # still takes some small writes: the failures come and go); nothing is lost but what the store
    # had to drop, counted, and that count is on flash (the hold's own limit: test_store_hold.py).
    got = littlefs(
        """
import json, os
from lanterne.store import Store
s = Store("/flash/store", 64 * 1024, 4096, 4096)
first = [s.append(reading(i)) for i in range(10)]
hog = open("/flash/hog.bin", "wb")
chunk = bytes(4096)
try:
    while True:
        hog.write(chunk)
        hog.flush()
except OSError:
    pass
hog.close()
failed, state = 0, None
for i in range(400):
    if s.append(reading(10 + i)) < 0:
        failed += 1
        if state is None:
            state = [s.held, s.dropped, s.overflow, s.last_error]
os.remove("/flash/hog.bin")
after = s.append(reading(500))
held_after = s.held
s = Store("/flash/store", 64 * 1024, 4096, 4096)
batch = s.peek(100000)
print(json.dumps(dict(first=first, failed=failed, state=state, after=after,
                      held_after=held_after, overflow_after=s.overflow, seqs=[q for q, _ in batch],
                      records=[r.hex() for _, r in batch], dropped=s.dropped, next=s.next_seq)))
""",
        tmp_path / "flash.img",
        blocks=32,
    )
    assert got["first"] == list(range(10))
    assert got["failed"] > 0, "appends fail when the filesystem is full"
    held, dropped, overflow, errno = got["state"]
    assert (held, dropped, errno) == (1, 0, 28), "the first refused reading is held, ENOSPC reported"
    assert got["after"] >= 0 and got["held_after"] == 0, "once there is room the held readings go first"
    assert got["overflow_after"] is False
    seqs = got["seqs"]
    assert seqs == list(range(got["next"] - len(seqs), got["next"])), "the newest readings kept, in order"
    assert got["records"][-1] == reading_bytes(500).hex()
    assert len(seqs) + got["dropped"] == 10 + 400 + 1, "the rest counted as dropped, and that count is on flash"


def test_ack_log_stays_small(tmp_path):
    path = str(tmp_path / "store")
    run(
        f"""
from lanterne.store import Store
s = Store({path!r}, 65536, 4096)
for i in range(3000):
    s.append(reading(i))
    s.ack(s.peek(240))
print(1)
"""
    )
    assert os.path.getsize(tmp_path / "store" / "ack") <= 160
