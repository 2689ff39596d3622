"""Release artifacts a MicroPython user expects, checked in their structure (the image cannot be
built here: no ESP-IDF): the board definition of the Lanterne image, its partition tables against
the board files and the ESP32's rules, the manifests for freezing, package.json for mip; and
`mpremote mip install` of package.json, unmodified, on a virtual board."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from host_tools import boards
from host_tools.fleet import deploy
from host_tools.fleet.release.artifacts import BOARD_DIR, PACKAGE_JSON, package_json
from host_tools.runtime.paths import FIRMWARE, MPYLIB, REPO

MiB = 1024 * 1024


def partitions(path):
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, kind, sub, offset, size = (f.strip() for f in line.split(",")[:5])
            rows.append({"name": name, "kind": kind, "sub": sub, "offset": int(offset, 16), "size": int(size, 16)})
    return rows


def check_table(rows, flash=4 * MiB):
    """The ESP32's rules (ESP-IDF's partition table): app partitions on 64 KiB boundaries, data on
    4 KiB, none overlapping, all within the flash and after the partition table (0x9000)."""
    end = 0x9000
    for r in sorted(rows, key=lambda r: r["offset"]):
        align = 0x10000 if r["kind"] == "app" else 0x1000
        assert r["offset"] % align == 0 and r["size"] % 0x1000 == 0, r
        assert r["offset"] >= end, f"{r['name']} overlaps the partition before it"
        end = r["offset"] + r["size"]
    assert end <= flash
    return {r["name"]: r for r in rows}


def test_partition_tables_fit_the_boards_and_the_esp32():
    default = check_table(partitions(REPO / "boards" / "partitions-romfs.csv"))
    ota = check_table(partitions(BOARD_DIR / "partitions-ota-romfs.csv"))
    # The board definition carries the same default table as boards/.
    assert (BOARD_DIR / "partitions-romfs.csv").read_text() == (REPO / "boards" / "partitions-romfs.csv").read_text()
    for table in (default, ota):
        romfs = table["romfs"]
        assert romfs["sub"] == "0x8f" and romfs["size"] == 384 * 1024  # two 192 KiB library slots
        for name in boards.names():
            b = boards.load(name)
            assert b.romfs_bytes == romfs["size"], name
        assert table["vfs"]["sub"] == "fat" and table["nvs"]["size"] >= 0x3000
    # The default table keeps the filesystem where MicroPython's 4 MiB table has it: reflashing
    # MicroPython with it keeps config.json and the store; the app partition gave the room.
    assert default["vfs"]["offset"] == 0x200000 and default["factory"]["size"] >= 0x180000
    # The OTA table: otadata, two equal app slots as MicroPython's OTA variant (-Os fits them).
    assert ota["otadata"]["sub"] == "ota" and ota["otadata"]["size"] == 0x2000
    assert ota["ota_0"]["sub"] == "ota_0" and ota["ota_1"]["sub"] == "ota_1"
    assert ota["ota_0"]["size"] == ota["ota_1"]["size"] == 0x180000
    assert ota["vfs"]["size"] >= 512 * 1024


def test_board_definition_builds_the_lanterne_image():
    files = {p.name for p in BOARD_DIR.iterdir()}
    assert {"board.json", "board.md", "mpconfigboard.cmake", "mpconfigboard.h", "mpconfigvariant_OTA.cmake",
            "sdkconfig.board", "manifest.py", "partitions-romfs.csv", "partitions-ota-romfs.csv"} <= files  # fmt: skip
    h = (BOARD_DIR / "mpconfigboard.h").read_text()
    assert re.search(r"#define MICROPY_VFS_ROM \(1\)", h) and "MICROPY_HW_BOARD_NAME" in h
    cmake = (BOARD_DIR / "mpconfigboard.cmake").read_text()
    assert "include(boards/mpconfigboard_esp32_common.cmake)" in cmake
    assert "${MICROPY_BOARD_DIR}/sdkconfig.board" in cmake and "set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)" in cmake
    assert "partitions-romfs.csv" in cmake and "CONFIG_PARTITION_TABLE_CUSTOM_FILENAME" in cmake
    assert "partitions-ota-romfs.csv" in (BOARD_DIR / "mpconfigvariant_OTA.cmake").read_text()
    sdk = (BOARD_DIR / "sdkconfig.board").read_text()
    assert "CONFIG_COMPILER_OPTIMIZATION_SIZE=y" in sdk and "CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y" in sdk
    meta = json.loads((BOARD_DIR / "board.json").read_text())
    assert meta["mcu"] == "esp32" and "OTA" in meta["variants"]
    doc = (BOARD_DIR / "board.md").read_text()
    for step in ("git clone -b v5.5.1 --recursive", "git clone -b v1.28.0", "make -C micropython/mpy-cross",
                 "BOARD_DIR=$PWD/lanterne/boards/micropython/LANTERNE_ESP32 submodules", "BOARD_VARIANT=OTA",
                 "build-LANTERNE_ESP32/firmware.bin"):  # fmt: skip
        assert step in doc, step


class _Manifest:
    """Runs a manifest.py the way MicroPython's tools/manifestfile.py does (its functions), recording
    what it freezes, with the path variables expanded."""

    def __init__(self, variables):
        self.vars = variables
        self.packages, self.modules, self.requires, self.includes, self.meta = [], [], [], [], {}

    def _path(self, p):
        for k, v in self.vars.items():
            p = p.replace(f"$({k})", str(v))
        return p

    def run(self, path):
        env = {"metadata": lambda **kw: self.meta.update(kw), "require": lambda name, **kw: self.requires.append(name),
               "include": lambda p, **kw: self.includes.append(self._path(p)),
               "package": lambda p, base_path=".", **kw: self.packages.append((self._path(base_path), p)),
               "module": lambda p, base_path=".", **kw: self.modules.append((self._path(base_path), p))}  # fmt: skip
        exec(compile(path.read_text(), str(path), "exec"), env)
        return self


def test_manifests_freeze_what_the_firmware_has(tmp_path):
    board = _Manifest({"BOARD_DIR": BOARD_DIR, "PORT_DIR": tmp_path / "ports" / "esp32", "MPY_DIR": tmp_path}).run(
        BOARD_DIR / "manifest.py")
    assert board.includes == [str(tmp_path / "ports" / "esp32" / "boards" / "manifest.py")]  # the port's defaults
    ((base, pkg),) = board.packages
    assert pkg == "lanterne_ota" and (REPO / "firmware").resolve() == __import__("pathlib").Path(base).resolve()
    lib = _Manifest({}).run(FIRMWARE / "manifest.py")
    assert lib.meta["version"] == deploy.firmware_version()
    assert [p for _b, p in lib.packages] == ["lanterne", "lanterne_ota"] and lib.requires == ["umqtt.simple"]
    for base, mod in lib.modules:
        assert (FIRMWARE / base / mod).exists()


def test_package_json_lists_the_library():
    doc = json.loads(PACKAGE_JSON.read_text())
    assert doc == package_json(deploy.firmware_version()), "regenerate: python -m host_tools.fleet.release.artifacts"
    for _dest, src in doc["urls"]:
        assert (REPO / src).exists()


@pytest.mark.integration
def test_mip_installs_the_library_from_package_json(virtual_boards, tmp_path):
    # A MicroPython board without Lanterne's image (no ROMFS): the library goes to /lib with
    # unmodified mpremote. umqtt.simple comes from a local copy of the package index (the tests
    # run offline): the same layout micropython-lib's index serves.
    data = json.loads((boards.load("esp32-devkitc").path).read_text())
    data["flash"].pop("romfs_bytes")
    data["heap_bytes"] = 200 * 1024
    board_file = tmp_path / "stock.json"
    board_file.write_text(json.dumps(data))
    (h,) = virtual_boards(1, board=str(board_file), firmware=False)
    h.wait_for(">>> ")
    index = tmp_path / "index"
    pkg = index / "package" / "py" / "umqtt.simple"
    pkg.mkdir(parents=True)
    src = (MPYLIB / "umqtt" / "simple.py").read_bytes()
    short = __import__("hashlib").sha256(src).hexdigest()[:8]
    (index / "file" / short[:2]).mkdir(parents=True)
    (index / "file" / short[:2] / short).write_bytes(src)
    (pkg / "latest.json").write_text(json.dumps({"hashes": [["umqtt/simple.py", short]], "version": "1.3.4"}))
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", h.port, "mip", "install", "--no-mpy", "--index",
                        str(index), str(PACKAGE_JSON)], capture_output=True, text=True, timeout=180, cwd=REPO)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert (h.flash / "lib" / "lanterne" / "app.py").read_bytes() == (FIRMWARE / "lanterne" / "app.py").read_bytes()
    assert (h.flash / "lib" / "lanterne_ota" / "ed25519.py").exists() and (h.flash / "lib" / "umqtt" / "simple.py").exists()
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", h.port, "exec",
                        "import lanterne, lanterne.codec, lanterne_ota.manifest, umqtt.simple; print(lanterne.__version__)"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == deploy.firmware_version(), r.stdout + r.stderr
