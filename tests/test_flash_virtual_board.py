"""A factory-fresh virtual board: nothing boots until `lanterne flash` writes MicroPython with esptool."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from conftest import lanterne_emulate

from host_tools import boards
from host_tools.fleet import deploy

pytestmark = pytest.mark.integration


def test_blank_board_flash_then_mpremote(tmp_path):
    port = tmp_path / "ttyBLANK"
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "old.txt").write_text("left from a previous life")
    with lanterne_emulate("--board", "esp32-devkitc", "--fs", flash, "--port", port, "--blank",
                          "--log", tmp_path / "console.log") as line:
        assert "virtual esp32-devkitc" in line
        time.sleep(0.5)
        log = (tmp_path / "console.log").read_bytes().decode("latin-1")
        assert log.count("invalid header: 0xffffffff") == 1, log  # the ROM finds nothing to boot, and says it once
        r = subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", str(port), "exec", "print(1)"],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode != 0  # no MicroPython to talk to
        r = subprocess.run(
            [sys.executable, "-m", "host_tools.cli", "flash", "--port", str(port), "--board", "esp32-devkitc"],
            capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ESP32" in r.stdout + r.stderr
        deadline = time.monotonic() + 20
        while "MicroPython v1.29" not in (tmp_path / "console.log").read_bytes().decode("latin-1"):
            assert time.monotonic() < deadline, (tmp_path / "console.log").read_bytes().decode("latin-1")[-2000:]
            time.sleep(0.2)
        # What flash says it wrote is what the board then says it runs, to the last letter of the version.
        flashed = re.search(r"flashed micropython (v\S+) ", r.stdout).group(1)
        banner = re.search(r"MicroPython (v\S+) on ", (tmp_path / "console.log").read_bytes().decode("latin-1")).group(1)
        assert flashed == banner, (flashed, banner)
        r = subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", str(port), "exec", "import os; print(os.listdir('/'))"],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert "old.txt" not in r.stdout  # the erase wiped the filesystem, as on the board

        # The image has a ROMFS partition (the Lanterne build); esptool erased it with the rest.
        r = subprocess.run([sys.executable, "-m", "mpremote", "connect", str(port), "romfs", "query"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "ROMFS0 partition has size 393216 bytes" in r.stdout and "Not a valid ROMFS" in r.stdout
        # The library goes into it with unmodified mpremote, and imports from /rom after a soft reset.
        stage = deploy.stage(boards.load("esp32-devkitc"), None, tmp_path / "stage", romfs=True)
        r = subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", str(port), "romfs", "deploy", str(boards.romfs_path(stage)),
             "+", "soft-reset", "+", "exec", "import lanterne.codec; print(lanterne.codec.__file__)"],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "/rom/lib/lanterne/codec.mpy" in r.stdout
        image = boards.romfs_path(stage).read_bytes()
        with open(tmp_path / "flash.flash.bin", "rb") as chip:  # the partition table's romfs: 0x1a0000
            chip.seek(0x1A0000)
            assert chip.read(len(image)) == image
