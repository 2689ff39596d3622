"""A flash that really fills up: the virtual board's flash folder on a tmpfs of the partition's size
(host_tools/emulator/flash_tmpfs.py), where the kernel refuses a write past it with ENOSPC.

- the tmpfs takes the folder's files in and gives them back, and no mount outlives its process,
  even one that dies by SIGKILL;
- the real firmware on a flash filled to 0 free by a host file keeps running, says so in its
  status (errno named), runs no command whose counter it cannot save, holds the readings it
  samples in RAM and, once the flash is freed, delivers every one of them (a short spell), or
  drops the oldest beyond its 1 KiB hold, counted and flagged (a long one).

Mounting needs root with CAP_SYS_ADMIN: where the host refuses, these tests skip and say why.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.emulator.flash_tmpfs import SOURCE, FlashMountError, TmpfsFlash, mount_refused
from host_tools.runtime import firmware_module
from host_tools.runtime.paths import REPO

REFUSED = mount_refused()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=f"this host does not allow a tmpfs mount: {REFUSED}")

FILL = "host-fill.bin"


def mounted(folder: Path) -> bool:
    return any(line.split()[1] == str(folder) and line.split()[0] == SOURCE for line in Path("/proc/mounts").read_text().splitlines())


def fill_to_zero(folder: Path) -> int:
    """A host file takes every free block of the tmpfs under `folder`; its size."""
    path = folder / FILL
    with open(path, "ab", buffering=0) as f:
        for chunk in (1 << 16, 4096, 1):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    assert os.statvfs(folder).f_bavail == 0
    return path.stat().st_size


def test_the_tmpfs_takes_the_folders_files_in_refuses_writes_past_its_size_and_gives_them_back(tmp_path):
    folder = tmp_path / "flash"
    (folder / "store").mkdir(parents=True)
    (folder / "config.json").write_text('{"device": "t-1"}')
    (folder / "store" / "ack").write_bytes(b"\x04abcd")
    t = TmpfsFlash(folder, 64 * 1024)
    t.mount()
    try:
        assert mounted(folder.resolve())
        st = os.statvfs(folder)
        assert st.f_blocks * st.f_frsize == 64 * 1024, "the partition's size, not the host disk's"
        assert (folder / "config.json").read_text() == '{"device": "t-1"}' and (folder / "store" / "ack").read_bytes() == b"\x04abcd"
        fill_to_zero(folder)
        with pytest.raises(OSError) as e:
            (folder / "more.bin").write_bytes(bytes(4096))
        assert e.value.errno == errno.ENOSPC
        (folder / FILL).unlink()
        (folder / "written-while-mounted").write_text("kept")
    finally:
        t.unmount()
    assert not mounted(folder.resolve())
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "more.bin", "store", "written-while-mounted"]
    assert (folder / "written-while-mounted").read_text() == "kept"


def test_a_folder_larger_than_the_partition_is_refused_and_nothing_stays_mounted(tmp_path):
    folder = tmp_path / "flash"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(128 * 1024))
    with pytest.raises(FlashMountError, match="holds more than its 65536-byte partition"):
        TmpfsFlash(folder, 64 * 1024).mount()
    assert not mounted(folder.resolve())
    assert (folder / "big.bin").stat().st_size == 128 * 1024, "the folder underneath untouched"


def test_a_process_killed_with_its_mount_leaves_no_mount_behind(tmp_path):
    folder = (tmp_path / "flash").resolve()
    folder.mkdir()
    code = (
        "import os, signal, sys; sys.path.insert(0, %r)\n"
        "from host_tools.emulator.flash_tmpfs import TmpfsFlash\n"
        "TmpfsFlash(%r, 65536).mount(); print('mounted', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    ) % (str(REPO), str(folder))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "mounted" in proc.stdout, proc.stderr
    deadline = time.monotonic() + 10
    while mounted(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mounted(folder), "the reaper unmounted it when its process died"


# -- the firmware on a full flash ------------------------------------------------------------------

store_mod = firmware_module("store")
KEY = bytes(range(7, 39))


def nearly_full_segment(tmp_path: Path, room: int = 40) -> tuple[dict[str, bytes], int]:
    """A store as a board that ran a while leaves it: its newest segment (open for appends) has
    under `room` bytes left, every record in it acknowledged. So the board's first readings start
    a new segment, which a full flash refuses at once (a reading appended inside the open segment's
    last page needs no new block of the tmpfs). Returns the store's files and its next seq."""
    path = tmp_path / "prep" / "store"
    path.parent.mkdir()
    s = store_mod.Store(str(path), 262144)
    while s._size + 39 + room <= 4096:  # 36-byte records, framed
        s.append(bytes(36))
    s.ack(s.peek(1 << 20))
    n = s.next_seq
    s.close()
    return {f"store/{p.name}": p.read_bytes() for p in path.iterdir()}, n


def readings(messages) -> list[dict]:
    from host_tools.codec.decoder import decode

    return [r for m in messages for r in decode(m.payload)["readings"]]


def run_spell(virtual_boards, mosquitto, tmp_path, device: str, spell_s: float, **board) -> dict:
    from host_tools.backoffice.command_client import cmd
    from host_tools.backoffice.watcher import Watcher

    files, first_seq = nearly_full_segment(tmp_path)
    cfg = {"device": device, "site": "full", "broker": mosquitto.url, "sample_period_s": 1, "status_period_s": 5,
           "command_key": KEY.hex()}
    out: dict = {"first_seq": first_seq}
    base = f"lanterne/v1/full/{device}/"
    with Watcher(mosquitto.url, [base + "#"]) as w, _client(mosquitto) as client:
        (h,) = virtual_boards(1, config=cfg, files=files, flash_tmpfs=True, **board)
        assert h.board.tmpfs is not None and mounted(h.flash)
        w.wait_for(base + "up", timeout=60)
        out["filled"] = fill_to_zero(h.flash)
        t0 = time.monotonic()
        faulted = w.wait_for(base + "status", lambda m: b"ENOSPC (errno 28)" in m.payload, timeout=30)
        out["store_fault"] = [f for f in json.loads(faulted[-1].payload)["faults"] if f.startswith("store:")]
        # A command now: its counter cannot be saved, so it is neither run nor answered.
        fill_to_zero(h.flash)  # (room an acknowledged segment gave back is taken too)
        frame = cmd.build(KEY, device, 1000, cmd.REQUEST_STATUS)
        try:
            client.send("full", device, KEY, 1000, cmd.REQUEST_STATUS, frame=frame, timeout=4)
            out["command_during"] = "acked"
        except TimeoutError:
            out["command_during"] = "no ack"
        faulted = w.wait_for(base + "status", lambda m: b"counter not saved" in m.payload, timeout=30)
        out["faults_during"] = json.loads(faulted[-1].payload)["faults"]
        time.sleep(max(0.0, spell_s - (time.monotonic() - t0)))
        held = [int(x) for m in w.matching(base + "status") for x in re.findall(rb"(\d+) held in RAM", m.payload)]
        out["held_max"] = max(held, default=0)
        (h.flash / FILL).unlink()  # the flash is freed
        freed = time.time()
        try:
            ack = client.send("full", device, KEY, 1000, cmd.REQUEST_STATUS, frame=frame, timeout=20)
        except TimeoutError as e:
            raise AssertionError(f"{e}; the board's console:\n{h.console()[-4000:]}") from e
        out["command_after"] = ack.reason
        final = w.wait_for(base + "status", lambda m: json.loads(m.payload).get("backlog") == 0
                           and not json.loads(m.payload)["faults"] and m.t > freed, timeout=60)
        out["status_after"] = json.loads(final[-1].payload)
        out["readings"] = readings(w.matching(base + "up"))
        # the heap each status reported, ESP32-equivalent bytes: (while the flash refused writes, after)
        heap = [(b"held in RAM" in m.payload, h.board.esp32_heap(json.loads(m.payload)["heap_alloc"]))
                for m in w.matching(base + "status") if b"heap_alloc" in m.payload]
        out["heap_spell"] = max((v for spell, v in heap if spell), default=0)
        out["heap_other"] = max((v for spell, v in heap if not spell), default=0)
    console = h.console()
    out["console_ok"] = "Traceback" not in console and "(restarted)" not in console and "MemoryError" not in console
    out["console_tail"] = console[-3000:]
    return out


class _client:
    def __init__(self, mosquitto):
        from host_tools.backoffice.command_client import CommandClient

        self.c = CommandClient(mosquitto.url)

    def __enter__(self):
        return self.c

    def __exit__(self, *exc):
        self.c.close()


@pytest.mark.integration
def test_a_board_on_a_full_flash_keeps_running_and_delivers_every_reading_of_a_short_spell(virtual_boards, mosquitto, tmp_path):
    got = run_spell(virtual_boards, mosquitto, tmp_path, "full-1", spell_s=12)
    assert got["console_ok"], got["console_tail"]
    assert got["store_fault"] and "held in RAM, 0 dropped" in got["store_fault"][0], got["store_fault"]
    assert got["command_during"] == "no ack", "a command whose counter cannot be saved is not run"
    assert "commands: counter not saved (ENOSPC (errno 28)): not run" in got["faults_during"], got["faults_during"]
    assert got["held_max"] >= 5, "readings sampled during the spell were held"
    assert got["command_after"] == "ok", "sent again once the flash takes writes, it runs"
    st = got["status_after"]
    assert st["dropped"] == 0 and st["backlog"] == 0
    seqs = sorted({r["seq"] for r in got["readings"]})
    assert seqs == list(range(got["first_seq"], seqs[-1] + 1)), "every reading, none missing"
    assert len(seqs) >= got["held_max"] + 3
    assert not any("buffer_overflow" in r["status"] for r in got["readings"]), "nothing was lost"


@pytest.mark.integration
def test_past_its_ram_hold_a_long_spell_drops_the_oldest_counted_and_flagged(virtual_boards, mosquitto, tmp_path):
    got = run_spell(virtual_boards, mosquitto, tmp_path, "full-2", spell_s=45)
    print(f"\nheap (ESP32-equivalent, board heap): {got['heap_spell']} with the hold full, {got['heap_other']} otherwise")
    assert got["console_ok"], got["console_tail"]
    st = got["status_after"]
    size = 36  # the street light's record (lanterne/reading.py, version 3 with the lamp's counters)
    assert got["held_max"] == 1024 // (size + 1), "the hold is bounded: 1 KiB of [length][record]"
    assert st["dropped"] > 0 and st["backlog"] == 0, "what the hold could not keep is counted (and on flash)"
    seqs = sorted({r["seq"] for r in got["readings"]})
    assert seqs == list(range(got["first_seq"], seqs[-1] + 1)), "a dropped reading takes no seq: no gap"
    flagged = [r["seq"] for r in got["readings"] if "buffer_overflow" in r["status"]]
    assert flagged, "the readings sampled after the first loss carry buffer_overflow"
    assert got["command_after"] == "ok"


def test_the_soaks_full_flash_fills_a_tmpfs_flash_to_zero_for_its_duration(tmp_path):
    from types import SimpleNamespace

    from host_tools.reliability import soak_faults

    folder = tmp_path / "flash"
    folder.mkdir()
    t = TmpfsFlash(folder, 256 * 1024)
    t.mount()
    try:
        board = SimpleNamespace(tmpfs=t)
        b = SimpleNamespace(flash=folder.resolve(), fs_bytes=256 * 1024, handle=SimpleNamespace(board=board))
        ctx = SimpleNamespace(boards=[b], profile=SimpleNamespace(faults={"full_flash": {"per_min": 1}}))
        p = SimpleNamespace(board=0, arg={})
        end = soak_faults.INJECTORS["full_flash"](ctx, p, None)
        assert p.arg["mode"] == "enospc" and os.statvfs(folder).f_bavail == 0, "writes refused for the duration"
        end()
        assert os.statvfs(folder).f_bavail * 4096 >= 250 * 1024, "and the flash freed after"
        board.tmpfs = None  # a board on a host folder: the old fault, filled to the store's reserve
        p = SimpleNamespace(board=0, arg={})
        end = soak_faults.INJECTORS["full_flash"](ctx, p, None)
        assert p.arg["mode"] == "to_reserve" and p.arg["why"] == "the board's flash is a host folder" and p.arg["filled_kib"] > 0
        end()
    finally:
        t.unmount()

