"""`lanterne bench ota`: over-the-air updates on virtual boards and a real Mosquitto (docs/ota.md).

Releases are built and signed from copies of the firmware tree; a board runs release 1 and gets:
- a release that changes one module (app.py: the module most often changed): every MQTT packet
  of the update on the wire (the start command and its ack, the requests, the manifest and
  blocks, the progress records), against that module compressed alone (zlib level 9 of its
  .mpy): `wire_bytes_one_module`, `module_compressed_bytes`, `one_module_ratio` (target <= 1.5);
- the same release as a full transfer (the release server without the board's image: literals
  only): `wire_bytes_full`, against the image's size;
- `transfer_s`: from the start command to the release written and checked (the "trial" record),
  the board throttling itself (one request in flight, 100 ms apart); `update_s`: to its commit;
- `heap_peak_bytes`: the largest heap in use the board reported while it applied blocks, in
  ESP32-equivalent bytes (this port's bytes less the ROM's share, over the ROMFS layout's scale),
  beside `heap_steady_bytes` (its first status, before the update) and `board_heap_bytes`;
  `update_at_64k`: the same update on a board with a 64 KB heap;
- `rollback_s`: a release that crashes at start-up, from its trial boot to the board back on the
  previous release and saying why (`rollback_hang_s`: one that hangs an import, bounded by the
  watchdog period of 8 s);
and on the unix port, at the board's heap: `verify_ms` (a manifest's Ed25519 signature, SHA-512
included) and `verify_heap_bytes` (the extra heap verification needs: the smallest heap it runs
in, bisected to 64 bytes, less the same script without the verification; the package compiled to
.mpy as the image freezes it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zlib
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.runtime import unix_port
from host_tools.runtime.paths import FIRMWARE

SITE = "bench"
APP_EDIT = "\n\ndef _release_note():\n    return 'this release changes one module'\n"


def _tree(dest: Path, version: str, app_extra: str = "") -> Path:
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "lanterne" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', f'__version__ = "{version}"'))
    app = dest / "lanterne" / "app.py"
    app.write_text(app.read_text() + app_extra)
    return dest


def _verify_costs(manifest: Path, key_hex: str, heap: int) -> tuple[float, int]:
    # The package compiled to .mpy, as the Lanterne image freezes it: imported from source, the
    # compiler's peak would hide the verification's own working set (the smallest heaps with and
    # without it came out equal).
    from host_tools.emulator import frozen

    path = [frozen.frozen_dir()]
    body = f"""
import gc, time
from lanterne_ota import manifest as M
import lanterne_ota.ed25519
raw = open({str(manifest)!r}, "rb").read()
key = bytes.fromhex({key_hex!r})
m = M.Manifest(raw)
gc.collect()
"""
    timed = body + "t = time.ticks_us()\nfor _ in range(5):\n    m.check_signature([key])\nprint((time.ticks_diff(time.ticks_us(), t)) / 5000)\n"
    ms = float(unix_port.run(timed, heapsize=heap, path=path).split()[-1])

    def smallest(code: str) -> int:
        lo, hi = 8 * 1024, 256 * 1024
        while hi - lo > 64:
            mid = (lo + hi) // 2
            try:
                unix_port.run(code, heapsize=mid, path=path)
                hi = mid
            except unix_port.MicroPythonError:
                lo = mid
        return hi

    with_verify = smallest(body + "m.check_signature([key])\n")
    without = smallest(body)
    return ms, max(0, with_verify - without)


def _module_bytes(heap: int) -> int:
    """Heap the verifier module takes once imported from source (a MicroPython image that does not
    freeze the OTA package loads its bytecode into the heap; the Lanterne image runs it from flash)."""
    code = "import gc\ngc.collect()\na = gc.mem_alloc()\nimport lanterne_ota.ed25519\ngc.collect()\nprint(gc.mem_alloc() - a)\n"
    return int(unix_port.run(code, heapsize=heap).split()[-1])


def _packet_bytes(watcher, device: str, since: float, until: float) -> int:
    from host_tools.backoffice.ota_server import publish_bytes

    total = 0
    for m in watcher.matching(f"lanterne/v1/{SITE}/{device}/*"):
        kind = m.topic.split("/", 4)[4]
        if since <= m.t <= until and kind in ("cmd", "ack", "ota/req", "ota/data", "ota/progress"):
            total += publish_bytes(m.topic, len(m.payload), 0 if kind == "ota/req" else 1)
    return total


def run(quick: bool = False) -> BenchResult:
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.backoffice.rollout import Rollout
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.supervisor import Emulator
    from host_tools.fleet import deploy
    from host_tools.fleet.registry import Registry
    from host_tools.fleet.release.build import build_release
    from host_tools.fleet.release.keys import KeyStore
    from host_tools.fleet.release.store import ReleaseStore

    board = boards.load("esp32-devkitc")
    metrics: dict = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lanterne-bench-ota-") as tmpdir:
        tmp = Path(tmpdir)
        keys = KeyStore(tmp / "keys")
        keys.new("bench")
        store = ReleaseStore(tmp / "releases")
        r1 = build_release(store, keys, source=_tree(tmp / "src1", "0.1.0"))
        r2 = build_release(store, keys, source=_tree(tmp / "src2", "0.2.0", APP_EDIT))
        crash = build_release(store, keys, source=_tree(tmp / "src3", "0.3.0", "\nraise RuntimeError('crash at start-up')\n"))
        hang_src = _tree(tmp / "src4", "0.4.0")
        (hang_src / "lanterne" / "assets.py").write_text((hang_src / "lanterne" / "assets.py").read_text() + "\nwhile True:\n    pass\n")
        hang = build_release(store, keys, source=hang_src)
        # The module the one-module release changed, compressed alone: the target's yardstick.
        app_mpy = deploy.MpyCross().compile((tmp / "src2" / "lanterne" / "app.py").read_bytes(), "lanterne/app.py")
        module_z = len(zlib.compress(app_mpy, 9))
        reg = Registry(tmp / "fleet.sqlite")
        with Mosquitto() as mq, Emulator() as emu, Watcher(mq.url, [f"lanterne/v1/{SITE}/#"]) as w:

            def board_on(device: str, heap: int | None = None):
                reg.add_or_update(device, site=SITE, board=board.name, config={"site": SITE, "broker": mq.url})
                cfg = {"device": device, "site": SITE, "broker": mq.url, "command_key": reg.secret(device, "command_key"),
                       "sample_period_s": 5, "status_period_s": 60, "watchdog_ms": 8000}  # fmt: skip
                flash = tmp / device / "flash"
                flash.mkdir(parents=True)
                deploy.copy_to_flash(board, cfg, flash, image=r1.image(), trusted_keys=keys.trusted())
                h = emu.add_board(board, flash, board_heap=heap)
                w.wait_for(f"lanterne/v1/{SITE}/{device}/status", lambda m: b'"online"' in m.payload, timeout=60)
                return h

            def progress(device: str, state: str) -> list:
                return [m for m in w.matching(f"lanterne/v1/{SITE}/{device}/ota/progress") if json.loads(m.payload).get("state") == state]

            def push(device: str, rel, **kw):
                ro = Rollout(mq.url, reg, store, rel, timeout=120, **kw)
                try:
                    t0 = time.time()
                    rep = ro.run([device])
                    return rep.devices[device], t0, time.time()
                finally:
                    ro.close()

            # One module changed: a delta.
            h = board_on("ota-delta")
            before = json.loads(w.matching(f"lanterne/v1/{SITE}/ota-delta/status")[-1].payload)["heap_alloc"]
            metrics["heap_steady_bytes"] = h.board.esp32_heap(before)
            res, t0, t1 = push("ota-delta", r2)
            if res.state != "committed":
                raise RuntimeError(f"the update did not commit: {res}")
            w.wait_for(f"lanterne/v1/{SITE}/ota-delta/status", lambda m: b'"0.2.0"' in m.payload, timeout=30)
            trial = json.loads(progress("ota-delta", "trial")[-1].payload)
            metrics["wire_bytes_one_module"] = _packet_bytes(w, "ota-delta", t0, t1)
            metrics["module_compressed_bytes"] = module_z
            metrics["one_module_ratio"] = round(metrics["wire_bytes_one_module"] / module_z, 2)
            metrics["transfer_s"] = round(progress("ota-delta", "trial")[-1].t - t0, 2)
            metrics["update_s"] = round(progress("ota-delta", "committed")[-1].t - t0, 2)
            metrics["heap_peak_bytes"] = h.board.esp32_heap(trial["heap_peak"])
            metrics["board_heap_bytes"] = board.heap_bytes
            metrics["image_bytes"] = r2.meta["size"]

            # The same release, whole: no image of the board's release on the server's side.
            h2 = board_on("ota-full")
            (store.path / "images").rename(store.path / "images.away")
            try:
                res, t0, t1 = push("ota-full", r2)
            finally:
                (store.path / "images.away").rename(store.path / "images")
            if res.state != "committed":
                raise RuntimeError(f"the full update did not commit: {res}")
            metrics["wire_bytes_full"] = _packet_bytes(w, "ota-full", t0, t1)
            metrics["transfer_full_s"] = round(progress("ota-full", "trial")[-1].t - t0, 2)
            full_trial = json.loads(progress("ota-full", "trial")[-1].payload)
            metrics["heap_peak_full_bytes"] = h2.board.esp32_heap(full_trial["heap_peak"])

            # A release that crashes at start-up, one that hangs an import: back on release 1.
            h3 = board_on("ota-crash")
            res, _t0, _t1 = push("ota-crash", crash)
            if res.state != "rolled_back":
                raise RuntimeError(f"the crashing release was not rolled back: {res}")
            back = progress("ota-crash", "rolled_back")[-1].t
            metrics["rollback_s"] = round(back - progress("ota-crash", "trial")[-1].t, 2)
            if not quick:
                board_on("ota-hang")
                res, _t0, _t1 = push("ota-hang", hang)
                if res.state != "rolled_back":
                    raise RuntimeError(f"the hanging release was not rolled back: {res}")
                metrics["rollback_hang_s"] = round(progress("ota-hang", "rolled_back")[-1].t - progress("ota-hang", "trial")[-1].t, 2)
                # The same one-module update on a board with a 64 KB heap.
                board_on("ota-64k", heap=64 * 1024)
                res, _t0, _t1 = push("ota-64k", r2)
                metrics["update_at_64k"] = res.state == "committed"
                if res.state != "committed":
                    notes.append(f"at 64 KB: {res.state} ({res.reason})")
            del h3
        key_hex = keys.trusted()[0].hex()
        (tmp / "m.bin").write_bytes(r2.manifest())
        metrics["verify_ms"], metrics["verify_heap_bytes"] = _verify_costs(tmp / "m.bin", key_hex, board.heap_bytes)
        metrics["verifier_module_bytes"] = _module_bytes(board.heap_bytes)
        metrics["manifest_bytes"] = len(r2.manifest())
    rows = [
        ["one module changed (delta)", metrics["wire_bytes_one_module"], f"{metrics['one_module_ratio']} x {module_z} B", metrics["transfer_s"]],
        ["whole image (no delta base)", metrics["wire_bytes_full"], f"image {metrics['image_bytes']} B", metrics["transfer_full_s"]],
    ]
    tables = [
        ("OTA transfer (all MQTT packets of the update)", ["update", "wire bytes", "against", "transfer s"], rows),
        ("OTA on the board", ["metric", "value"], [
            ["heap peak while applying blocks (ESP32 bytes)", metrics["heap_peak_bytes"]],
            ["board heap (bytes)", metrics["board_heap_bytes"]],
            ["rollback of a release that crashes at start-up (s)", metrics["rollback_s"]],
            ["Ed25519 verify on the unix port (ms)", metrics["verify_ms"]],
            ["extra heap to verify (unix-port bytes)", metrics["verify_heap_bytes"]],
        ]),
    ]  # fmt: skip
    return BenchResult(metrics, tables, notes)
