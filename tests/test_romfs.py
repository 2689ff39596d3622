"""The ROMFS partition: the firmware's library runs in place from flash, so the running firmware
fits a 64 KB heap; mpremote and provisioning write the partition; a write cut short leaves
no half image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from host_tools import boards
from host_tools.fleet import ProvisionError, deploy
from host_tools.fleet.boardlink import BoardLink
from host_tools.fleet.provision import provision
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration

NO_APP = {"main.py": "print('no app')\n"}  # keep the REPL free: the library stays importable


def mpremote(port, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", str(port), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr
    return r


def _import_cost(port, module):
    code = f"import gc; gc.collect(); a = gc.mem_alloc(); import {module} as m; gc.collect(); print(gc.mem_alloc() - a, m.__file__)"
    cost, where = mpremote(port, "exec", code).stdout.split()
    return int(cost), where


def test_library_imports_in_place_from_romfs(virtual_boards):
    rom, fs = virtual_boards(1, files=NO_APP)[0], virtual_boards(1, files=NO_APP, romfs=False)[0]
    for h in (rom, fs):
        h.wait_for(">>> ")
    rom_cost, rom_file = _import_cost(rom.port, "lanterne.store")
    fs_cost, fs_file = _import_cost(fs.port, "lanterne.store")
    assert rom_file == "/rom/lib/lanterne/store.mpy" and fs_file == "/lib/lanterne/store.mpy"
    # Its bytecode and constants stay in flash: only the module's objects take heap.
    assert rom_cost < 0.6 * fs_cost, (rom_cost, fs_cost)
    # On the filesystem only the OTA package, which no release may replace (docs/ota.md).
    assert sorted(p.name for p in (rom.flash / "lib").iterdir()) == ["lanterne_ota"]
    # The technician's view: the partition (two 192 KiB library slots) and its image in slot A.
    q = mpremote(rom.port, "romfs", "query").stdout
    assert "ROMFS0 partition has size 393216 bytes (96 blocks of 4096 bytes each)" in q and "ROMFS image size" in q


def test_too_big_an_image_is_refused_and_the_old_one_kept(virtual_boards, tmp_path):
    (h,) = virtual_boards(1, files=NO_APP)
    h.wait_for(">>> ")
    tree = tmp_path / "big"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "blob.bin").write_bytes(os.urandom(400 * 1024))
    before = boards.romfs_path(h.flash).read_bytes()
    r = mpremote(h.port, "romfs", "--no-mpy", "deploy", str(tree), check=False)
    assert r.returncode != 0 and "too big for the target partition" in r.stdout
    assert boards.romfs_path(h.flash).read_bytes() == before
    assert _import_cost(h.port, "lanterne.codec")[1] == "/rom/lib/lanterne/codec.mpy"


# The target is a 64 KB heap (ESP32 bytes). With OTA, LoRaWAN and lamp energy merged the street
# light needed 66 KB (its boot ran out of room in one piece, its garbage left to pile up until the
# heap was full); collecting every 2 KB from the start of the boot brought it back to 64 KB, its
# floor in 1 KB steps (at 63 KB the uplink task meets a MemoryError: docs/benchmarks.md, "heap").
# `lanterne bench heap` reports the smallest heap against the 64 KB target.
# Those were ESP32 KB by the heap scale of then (1.65). Re-measured on a quiet machine 2026-12-07,
# the scale is 1.52 (docs/emulator.md, "Heap"): the same 105 KB of the 64-bit port are 69 KB of the
# ESP32's. The 64 KB goal is not met; the floor is held at 70 KB (boards.FIRMWARE_HEAP_BYTES).
FLOOR_KB = boards.FIRMWARE_HEAP_BYTES // 1024


# (solo: a heap floor is a measurement, taken on a quiet machine)
@pytest.mark.solo
def test_firmware_runs_at_its_heap_floor(virtual_boards, mosquitto):
    from host_tools.backoffice.watcher import Watcher

    cfg = {"device": "small-heap", "site": "heap", "broker": mosquitto.url, "sample_period_s": 1, "status_period_s": 5}
    with Watcher(mosquitto.url, ["lanterne/v1/heap/small-heap/#"]) as w:
        (h,) = virtual_boards(1, config=cfg, board_heap=FLOOR_KB * 1024)
        statuses = w.wait_for("lanterne/v1/heap/small-heap/status", lambda m: b'"online"' in m.payload, count=3, timeout=90)
        ups = w.matching("lanterne/v1/heap/small-heap/up")
    console = h.console()
    assert "MemoryError" not in console and "(restarted)" not in console, (f"the ROM took {h.board.rom_shortfall()} bytes more than measured", console[-2000:])
    assert len(ups) >= 8  # a reading a second, every one sent
    # The heap really was FLOOR_KB's worth: beyond it only the ROM's share (shims, the image's frozen
    # OTA package) and the buffer standing in for the mapped partition.
    from host_tools.emulator.board import rom_heap_overhead, romfs_heap

    extra = rom_heap_overhead() + romfs_heap(h.board.romfs[2])
    assert h.board.heap_bytes() - extra == int(h.board.heap_scale() * FLOOR_KB * 1024)
    doc = json.loads(statuses[-1].payload)
    assert doc["faults"] == [] and doc["heap_free"] > 0


def test_romfs_write_cut_short_leaves_no_half_image(virtual_boards, mosquitto, tmp_path, monkeypatch):
    (h,) = virtual_boards(1, config={"device": "cut-1", "site": "cut", "broker": mosquitto.url})
    h.wait_for(r"\[lanterne\] connected")
    image = deploy.romfs_image({"lib/hello.py": b"print('new image')\n" * 2000})
    assert len(image) > 3 * 4096
    link = BoardLink(h.port)
    link.probe()
    real_exec, writes = link.exec, []

    def exec_then_cut(code, what=""):
        if "writeblocks" in code:
            writes.append(code)
            if len(writes) == 3:  # the power goes mid-write
                h.power_cut()
                raise ProvisionError("lost the board")
        return real_exec(code, what)

    monkeypatch.setattr(link, "exec", exec_then_cut)
    with pytest.raises(ProvisionError):
        link.write_romfs(image)
    link.close(restart=False)
    since = h.console_offset()
    h.power_on()
    # No mix of the old image and the new: no valid image at all, and the board says what it misses;
    # it stays reachable in safe mode (MQTT and updates only, docs/ota.md), and mpremote still
    # interrupts it for the REPL.
    h.wait_for("ImportError: no module named 'lanterne", since=since, timeout=20)
    h.wait_for(r"\[safe\] safe mode \(slot A failed its hash check\)", since=since, timeout=20)
    assert "Not a valid ROMFS" in mpremote(h.port, "romfs", "query").stdout
    # Provisioning puts it right.
    reg = Registry(tmp_path / "fleet.sqlite")
    rep = provision(h.port, "esp32-devkitc", "cut-1", site="cut", broker=mosquitto.url, registry=reg)
    assert rep.status["device"] == "cut-1"
    assert "/rom/lib/lanterne/app.mpy" in rep.files_sent


def test_board_without_romfs_gets_the_library_on_its_filesystem(virtual_boards, mosquitto, tmp_path):
    # A board flashed with stock MicroPython (no ROMFS partition), with the heap the filesystem
    # layout needs: provisioning falls back to /lib, says so, and verify agrees.
    from host_tools.fleet.verify import verify

    data = json.loads((deploy.boards.load("esp32-devkitc").path).read_text())
    data["flash"].pop("romfs_bytes")
    data["heap_bytes"] = 160 * 1024
    board_file = tmp_path / "esp32-devkitc.json"
    board_file.write_text(json.dumps(data))
    (h,) = virtual_boards(1, board=str(board_file), firmware=False)
    h.wait_for(">>> ")
    assert "ROMFS is not enabled" in mpremote(h.port, "romfs", "query").stdout
    reg = Registry(tmp_path / "fleet.sqlite")
    said = []
    rep = provision(h.port, str(board_file), "plain-1", site="cut", broker=mosquitto.url, registry=reg, log=said.append)
    assert rep.status["device"] == "plain-1"
    assert any("no ROMFS partition: the library goes to /lib" in line for line in said)
    assert "/lib/lanterne/app.mpy" in rep.files_sent and not any(p.startswith("/rom/") for p in reg.get("plain-1").files)
    assert (h.flash / "lib" / "lanterne" / "app.mpy").exists()
    v = verify(h.port, reg)
    assert v.ok, v.lines()



# A command that changes the config loads the config schema for the moment it runs (the app drops
# it after boot): that needs more free heap than the floor leaves (~4-5 KB, 64-bit bytes, in
# the steady state; the schema module alone is ~7 KB). Measured: 68 KB works alone, 66 KB fails;
# 68 KB failed once under three parallel workers, so the test was held at 70 (docs/benchmarks.md,
# "heap"). Those were ESP32 KB by the scale of then (1.65); by the scale measured 2026-12-07 (1.52)
# the same 64-bit heap is 76 KB.
COMMAND_FLOOR_KB = 76


# (solo: a heap floor is a measurement, taken on a quiet machine)
@pytest.mark.solo
def test_config_commands_work_at_the_command_floor(virtual_boards, mosquitto):
    from host_tools.backoffice.command_client import CommandClient
    from host_tools.backoffice.watcher import Watcher

    key = bytes(range(1, 33))
    cfg = {"device": "small-cmd", "site": "heap", "broker": mosquitto.url, "sample_period_s": 1, "status_period_s": 5,
           "command_key": key.hex()}
    with Watcher(mosquitto.url, ["lanterne/v1/heap/small-cmd/status"]) as w:
        (h,) = virtual_boards(1, config=cfg, board_heap=COMMAND_FLOOR_KB * 1024)
        w.wait_for("lanterne/v1/heap/small-cmd/status", lambda m: b'"online"' in m.payload, count=2, timeout=90)
    client = CommandClient(mosquitto.url, timeout=30)
    try:
        res = client.send("heap", "small-cmd", key, 1, "set-period", {"what": "sample", "seconds": 2})
        assert res.ok, (res.reason, h.console()[-2000:])
        res = client.send("heap", "small-cmd", key, 2, "set-config", {"key": "lat", "value": 45.5})
        assert res.ok, (res.reason, h.console()[-2000:])
        res = client.send("heap", "small-cmd", key, 3, "set-config", {"key": "bin_full_mm", "value": 5000})
        assert res.reason == "bad_argument"  # not below bin_empty_mm: the one-field check sees the running config
        res = client.send("heap", "small-cmd", key, 4, "set-config", {"key": "sample_period_s", "value": 0})
        assert res.reason == "bad_argument"
    finally:
        client.close()
    saved = json.loads((h.flash / "config.json").read_text())
    assert saved["sample_period_s"] == 2 and saved["lat"] == 45.5 and "bin_full_mm" not in saved
    assert json.loads((h.flash / "config.lkg.json").read_text()) == saved  # a valid config: the last known good too
    console = h.console()
    assert "MemoryError" not in console and "(restarted)" not in console, (f"the ROM took {h.board.rom_shortfall()} bytes more than measured", console[-2000:])


def test_the_roms_share_of_the_heap_does_not_hang_on_the_frozen_packages_exact_bytes(tmp_path, monkeypatch):
    """Every board's heap is its board file's plus the ROM's share (rom_heap_overhead), measured once
    per version of the frozen OTA package by booting the ROM. A constant more in that package must
    move the share by about its own bytes, not by kilobytes: one more string in the manifest parser
    once moved it by 9 952 bytes (dropped modules that one collection at the end left reachable
    from a stale word), enough to fail the heap floors in a fresh clone."""
    import asyncio
    import shutil

    from host_tools.emulator import board as vb
    from host_tools.emulator import frozen

    def rom_alloc(name):
        return asyncio.run(vb._booted_alloc(tmp_path / name / "flash"))

    base = rom_alloc("base")
    pkg = tmp_path / "firmware"
    shutil.copytree(frozen.FIRMWARE / frozen.PACKAGE, pkg / frozen.PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(frozen, "FIRMWARE", pkg)
    monkeypatch.setattr(frozen, "BUILD", tmp_path / "build")
    manifest = pkg / frozen.PACKAGE / "manifest.py"
    source = manifest.read_text()
    moved = {}
    for n in (1, 9, 33, 100):  # (with the old ROM: +1 character moved the share by 9 856 bytes, +9 by 32)
        manifest.write_text(source + f"\n_V = {'x' * n!r}\n")
        moved[n] = rom_alloc(f"v{n}") - base
    assert all(-256 <= d <= 512 for d in moved.values()), moved
