"""`lanterne bench heap`: the running firmware's heap, per firmware layout, side by side.

For each board file that talks MQTT, and each layout of the firmware on the board:
- "romfs": the compiled library in the board's ROMFS partition (imported in place from
  flash: bytecode and constants take no heap), boot.py/main.py/config on the filesystem;
- "filesystem": everything on the filesystem under /lib (the .mpy files are loaded into
  the heap);
it measures, with TLS off, on one real Mosquitto:
- the heap in use at steady state (the largest `gc.mem_alloc()` in the board's status messages);
- the smallest heap the firmware runs in: bisected over the board's heap in 4 KB steps; a heap
  passes when, for the whole window, the board sends its status and a reading every second
  with no MemoryError and no task restarted;
- whether it runs at 64 KB;
- on a Wi-Fi board with a setup button, the heap in setup mode at the board's heap: the setup
  page's server and access point up beside the sampling loop and the link, the page's state
  asked for every second (`heap_setup_mode_bytes_<board>`, `runs_in_setup_mode_<board>`);
- on a mains LoRaWAN board (the modem twin, the emulated network server on the same Mosquitto),
  setup mode at the board's heap, before and after the page's link test ran
  (`heap_setup_mode_bytes_<board>`, `heap_setup_link_test_bytes_<board>`, `runs_in_setup_mode_<board>`),
  and without --quick the smallest heap it runs in with the test, bisected from the LoRaWAN
  floor of normal operation (64 KB) in 4 KB steps (`heap_setup_mode_min_bytes_<board>`); its
  status stays on the board, so the console's is read.
Heaps are ESP32-equivalent bytes: this 64-bit port's bytes, less the ROM's own share, divided
by the layout's measured scale (docs/emulator.md, "Heap"). Run with LANTERNE_MICROPYTHON set to
a 32-bit unix port and LANTERNE_HEAP_SCALE=1.0 to measure 32-bit bytes directly.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.fleet import deploy

LAYOUTS = ("romfs", "filesystem")
LORAWAN_FLOOR = 70 * 1024  # the LoRaWAN board's floor in normal operation (tests/test_lorawan_board.py)


def _lorawan_mains(board: boards.Board) -> bool:
    # a LoRaWAN board that runs the app (a battery board wakes, sends and sleeps: no setup mode there)
    return (board.data["network"]["kind"] == "lorawan" and board.data.get("setup_button") is not None
            and board.data.get("power", {}).get("supply", "mains") != "battery")
TARGET = 64 * 1024  # the project's goal; boards.FIRMWARE_HEAP_BYTES is what the firmware is held to today


def _cfg(url: str, device: str) -> dict:
    return {"device": device, "site": "heap", "broker": url, "sample_period_s": 1, "status_period_s": 5,
            "keepalive_s": 60, "watchdog_ms": 0, "command_key": bytes(range(7, 39)).hex()}


def _setup_api(url, path, body=None, token=None):
    """One call to a board's setup API (docs/field.md): its JSON answer."""
    import urllib.request

    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Session": token or ""})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())

class _Trial:
    def __init__(self, emu, watcher, url: str, tmp: Path):
        self.emu, self.w, self.url, self.tmp = emu, watcher, url, tmp
        self.n = 0
        self.scales: dict[str, float] = {}  # layout -> the 64-bit -> ESP32 scale its boards ran with

    def run(self, board: boards.Board, layout: str, heap: int | None, window_s: float) -> tuple[bool, int | None, str]:
        """Boot the firmware at `heap` (None: the board file's); (passed, steady alloc, why not)."""
        self.n += 1
        dev = f"{board.name[:12]}-{layout[:3]}-{self.n}"
        flash = self.tmp / dev
        deploy.copy_to_flash(board, _cfg(self.url, dev), flash, romfs=layout == "romfs")
        h = self.emu.add_board(board, flash, board_heap=heap)
        try:
            statuses = self.w.wait_for(f"lanterne/v1/heap/{dev}/status", lambda m: b'"online"' in m.payload,
                                       count=max(2, int(window_s // 5)), timeout=window_s + 20)
            ups = self.w.matching(f"lanterne/v1/heap/{dev}/up")
            console = h.console()
            allocs = [json.loads(m.payload)["heap_alloc"] for m in statuses]
            steady = h.board.esp32_heap(max(allocs))
            if "MemoryError" in console or "(restarted)" in console:
                return False, steady, "MemoryError" if "MemoryError" in console else "a task failed"
            if len(ups) < window_s * 0.5:
                return False, steady, f"{len(ups)} readings in {window_s:g} s"
            return True, steady, ""
        except TimeoutError:
            return False, None, "no status"
        finally:
            if h.boots:  # the scale is fixed as the interpreter starts: what this trial ran with
                self.scales[layout] = h.board.heap_scale()
            self.emu.remove(h)

    def setup_mode(self, board: boards.Board, window_s: float) -> tuple[bool, int | None, str]:
        """Setup mode at the board's heap (library in ROMFS): the page's server up beside the sampling
        loop and the link, a phone asking for the page's state every second; (passed, steady alloc,
        why not)."""
        import time

        self.n += 1
        dev = f"{board.name[:12]}-set-{self.n}"
        flash = self.tmp / dev
        cfg = dict(_cfg(self.url, dev), setup_key="5e" * 16, setup_window_min=10)
        deploy.copy_to_flash(board, cfg, flash, romfs=True)
        h = self.emu.add_board(board, flash)
        try:
            h.wait_for(r"setup mode \(provisioned\)", timeout=40)
            url = h.http_url(timeout=5)

            call = functools.partial(_setup_api, url)
            token = call("api/session", {})["token"]
            since = len(self.w.matching(f"lanterne/v1/heap/{dev}/status"))
            end = time.monotonic() + window_s
            while time.monotonic() < end:
                call("api/state", token=token)
                time.sleep(1.0)
            statuses = [m for m in self.w.matching(f"lanterne/v1/heap/{dev}/status")[since:] if b'"online"' in m.payload]
            console = h.console()
            if not statuses:
                return False, None, "no status"
            steady = h.board.esp32_heap(max(json.loads(m.payload)["heap_alloc"] for m in statuses))
            if "MemoryError" in console or "(restarted)" in console:
                return False, steady, "MemoryError" if "MemoryError" in console else "a task failed"
            return True, steady, ""
        except (TimeoutError, OSError) as e:
            return False, None, f"page not served: {e}"
        finally:
            self.emu.remove(h)

    def setup_mode_lorawan(self, board: boards.Board, heap: int | None, window_s: float) -> tuple[bool, int | None, int | None, str]:
        """A LoRaWAN board in setup mode (library in ROMFS) at `heap` (None: the board file's), with the
        modem twin and the emulated network server: the page's link test (join + test uplink) run,
        then the page's state asked for every second. Its status stays on the board: the heap is read
        from the console's status lines. (passed, steady alloc before the test, steady alloc with
        the test's code loaded and run, why not)."""
        import os
        import re
        import time

        from host_tools.codec import lns_json as J
        from host_tools.emulator.network_server import Device, NetworkServer

        self.n += 1
        dev = f"{board.name[:12]}-set-{self.n}"
        flash = self.tmp / dev
        eui, app_key = os.urandom(8).hex().upper(), os.urandom(16).hex().upper()
        cfg = {"device": dev, "site": "heap", "transport": "lorawan", "lorawan_deveui": eui, "lorawan_appkey": app_key,
               "sample_period_s": 5, "status_period_s": 5, "watchdog_ms": 0, "command_key": bytes(range(7, 39)).hex(),
               "setup_key": "5e" * 16, "setup_window_min": 10}
        deploy.copy_to_flash(board, cfg, flash, romfs=True)

        def allocs(h, since=0):
            return [json.loads(m)["heap_alloc"] for m in re.findall(r"status not sent \([^)]*\): (\{.*\})", h.console()[since:])]

        with NetworkServer(self.url, [Device(dev_eui=eui, app_key=app_key, name=dev)], integrations=("chirpstack",),
                           app=J.Application()):
            from host_tools.emulator.world import World

            h = self.emu.add_board(board, flash, board_heap=heap, radio=self.url,
                                   world=World(seed=self.n, lorawan_speedup=5.0, lorawan_dr=5))
            try:
                h.wait_for(r"setup mode \(provisioned\)", timeout=60)
                url = h.http_url(timeout=5)

                call = functools.partial(_setup_api, url)
                token = call("api/session", {})["token"]
                end = time.monotonic() + window_s / 2
                while time.monotonic() < end:
                    call("api/state", token=token)
                    time.sleep(1.0)
                before = allocs(h)
                mark = len(h.console())
                r = call("api/link", {}, token)
                deadline = time.monotonic() + 60
                while r["running"] and time.monotonic() < deadline:
                    time.sleep(1.0)
                    r = call("api/link", token=token)
                end = time.monotonic() + window_s / 2
                while time.monotonic() < end:
                    call("api/state", token=token)
                    time.sleep(1.0)
                after = allocs(h, mark)
                console = h.console()
                steady = h.board.esp32_heap(max(before)) if before else None
                tested = h.board.esp32_heap(max(after)) if after else None
                if "MemoryError" in console or "(restarted)" in console:
                    return False, steady, tested, "MemoryError" if "MemoryError" in console else "a task failed"
                if not r.get("ok") or not r.get("confirmed"):
                    return False, steady, tested, f"link test: {r.get('reason')}: {r.get('error')}"
                if not before or not after:
                    return False, steady, tested, "no status on the console"
                return True, steady, tested, ""
            except (TimeoutError, OSError) as e:
                return False, None, None, f"page not served: {e}"
            finally:
                self.emu.remove(h)

    def smallest(self, board: boards.Board, layout: str, lo: int, hi: int, window_s: float) -> int | None:
        """Smallest heap (4 KB steps) in [lo, hi] the firmware passes at, or None."""
        step = 4096
        lo, hi = lo // step, hi // step
        if not self.run(board, layout, hi * step, window_s)[0]:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if self.run(board, layout, mid * step, window_s)[0]:
                hi = mid
            else:
                lo = mid + 1
        return hi * step


def run(quick: bool = False) -> BenchResult:
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.supervisor import Emulator

    names = ["esp32-devkitc"] if quick else [b for b in boards.names() if boards.load(b).data["network"]["kind"] != "lorawan"]
    window = 15.0 if quick else 30.0
    metrics: dict = {}
    rows = []
    with Mosquitto() as mq, tempfile.TemporaryDirectory() as tmp, Emulator() as emu, \
            Watcher(mq.url, ["lanterne/v1/heap/+/status", "lanterne/v1/heap/+/up"]) as w:
        trial = _Trial(emu, w, mq.url, Path(tmp))
        for name in names:
            board = boards.load(name)
            for layout in LAYOUTS:
                ok_board, steady, why = trial.run(board, layout, None, window)
                at_64k, _, why_64k = trial.run(board, layout, TARGET, window)
                smallest = trial.smallest(board, layout, 32 * 1024, 160 * 1024, window)
                key = f"{name}_{layout}"
                metrics[f"heap_steady_bytes_{key}"] = steady
                metrics[f"heap_min_bytes_{key}"] = smallest
                metrics[f"runs_at_64k_heap_{key}"] = at_64k
                rows.append([name, layout, board.heap_bytes // 1024, "yes" if ok_board else f"NO ({why})",
                             steady if steady is not None else "-", smallest if smallest is not None else "> 160 KB",
                             "yes" if at_64k else f"NO ({why_64k})"])
            if board.data.get("setup_button") is not None and board.data["network"].get("kind", "wlan") != "lan":
                ok_setup, steady_setup, why_setup = trial.setup_mode(board, window)
                metrics[f"heap_setup_mode_bytes_{name}"] = steady_setup
                metrics[f"runs_in_setup_mode_{name}"] = ok_setup
                rows.append([f"{name} in setup mode (page served)", "romfs", board.heap_bytes // 1024,
                             "yes" if ok_setup else f"NO ({why_setup})", steady_setup if steady_setup is not None else "-",
                             "-", "-"])
        # LoRaWAN: setup mode with the link test at the board's heap, and (full run) the smallest heap
        # it runs in, against the LoRaWAN floor of normal operation
        for name in [b for b in boards.names() if _lorawan_mains(boards.load(b))][: 1 if quick else None]:
            board = boards.load(name)
            ok, steady, tested, why = trial.setup_mode_lorawan(board, None, window)
            metrics[f"heap_setup_mode_bytes_{name}"] = steady
            metrics[f"heap_setup_link_test_bytes_{name}"] = tested
            metrics[f"runs_in_setup_mode_{name}"] = ok
            smallest = None
            if not quick and ok:
                lo, hi = LORAWAN_FLOOR // 4096, board.heap_bytes // 4096
                while lo < hi:
                    mid = (lo + hi) // 2
                    if trial.setup_mode_lorawan(board, mid * 4096, window)[0]:
                        hi = mid
                    else:
                        lo = mid + 1
                smallest = hi * 4096
                metrics[f"heap_setup_mode_min_bytes_{name}"] = smallest
            rows.append([f"{name} in setup mode (page served, link test run)", "romfs", board.heap_bytes // 1024,
                         "yes" if ok else f"NO ({why})",
                         f"{steady if steady is not None else '-'} / {tested if tested is not None else '-'} after the test",
                         smallest if smallest is not None else "-", "-"])
        first = names[0]
        metrics["heap_min_bytes"] = metrics[f"heap_min_bytes_{first}_romfs"]
        metrics["runs_at_64k_heap"] = all(v for k, v in metrics.items() if k.startswith("runs_at_64k_heap_") and k.endswith("_romfs"))
    return result(metrics, rows, trial.scales, window)


def result(metrics: dict, rows: list[list], scales: dict[str, float], window: float) -> BenchResult:
    """The tables and notes `lanterne bench heap` prints, with the scale each layout's boards ran with."""
    for layout, scale in scales.items():
        metrics[f"heap_scale_{layout}"] = scale
    used = ", ".join(f"{scales[layout]} with the library {'in ROMFS' if layout == 'romfs' else 'on the filesystem'}"
                     for layout in LAYOUTS if layout in scales)
    return BenchResult(
        metrics,
        tables=[("firmware heap, TLS off (ESP32-equivalent bytes = 64-bit bytes less the ROM's share, / scale)",
                 ["board", "layout", "scale used", "board heap KB", "runs at board heap", "steady-state heap",
                  "smallest heap it runs in", "runs at 64 KB"],
                 [row[:2] + [scales.get(row[1], "?")] + row[2:] for row in rows])],
        notes=[f"scale 64-bit -> ESP32 used: {used} (measured minimum-heap ratios, docs/emulator.md); a heap passes when"
               f" the board sends its status and a reading a second for {window:g} s with no MemoryError and no task restarted"],
    )
