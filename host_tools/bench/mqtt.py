"""`lanterne bench mqtt`: the gateway runtime against one real Mosquitto, with many virtual boards.

Side by side in one run:
- command round trip (publish -> lamp PWM changed on the board -> signed ack back) p50/p99
  with 1, 50 and 200 boards online (--quick: 1 and 20);
- a fleet at one reading per 10 s for a while: readings/s into the broker and readings lost
  (gaps in each board's sequence numbers once its backlog drained), for 100 and 500 boards
  (--quick: 50);
- the firmware's heap with TLS off and on (ESP32-equivalent bytes: the 64-bit port's
  figures, less the ROM's share and the ROMFS buffer, divided by the layout's measured
  scale), and whether it runs at a 64 KB heap (library in ROMFS, as provisioned).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.fleet import deploy

KEY = bytes(range(7, 39))


def _cfg(url, device, **kw):
    c = {"device": device, "site": "bench", "broker": url, "sample_period_s": 10, "status_period_s": 3600,
         "keepalive_s": 60, "command_key": KEY.hex(), "watchdog_ms": 0}
    c.update(kw)
    return c


def _start_fleet(emu, board, url, n, tmp, prefix, start=0, **kw):
    handles = []
    for i in range(start, start + n):
        flash = Path(tmp) / f"{prefix}{i}"
        deploy.copy_to_flash(board, _cfg(url, f"{prefix}{i}", **kw), flash)
        handles.append(emu.add_board(board, flash))
    return handles


def _wait_online(w, prefix, n, timeout):
    w.wait_for(f"lanterne/v1/bench/{prefix}*/status", lambda m: b'"online"' in m.payload, count=n, timeout=timeout)


_counter = [int(time.time())]


def _rtt(client, prefix, n, samples):
    rtts = []
    for k in range(samples):
        dev = f"{prefix}{k % n}"
        _counter[0] += 1
        res = client.send("bench", dev, KEY, _counter[0], "dim", {"level": 10 + k % 80}, timeout=10)
        if not res.ok:
            raise RuntimeError(f"{dev}: {res.reason}")
        rtts.append(res.rtt_ms)
    rtts.sort()
    return statistics.median(rtts), rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]


def _loss(messages, prefix, n):
    from host_tools.codec.decoder import decode

    seen: dict[str, set] = {}
    for m in messages:
        dev = m.topic.split("/")[3]
        for r in decode(m.payload)["readings"]:
            seen.setdefault(dev, set()).add(r["seq"])
    lost = 0
    total = 0
    for i in range(n):
        s = seen.get(f"{prefix}{i}", set())
        if not s:
            lost += 1
            continue
        total += len(s)
        lost += (max(s) - min(s) + 1) - len(s)
    return total, lost, len(seen)


def run(quick: bool = False) -> BenchResult:
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.backoffice.command_client import CommandClient
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.supervisor import Emulator

    board = boards.load("esp32-devkitc")
    rtt_counts = [1, 20] if quick else [1, 50, 200]
    fleet_sizes = [50] if quick else [100, 500]
    soak_s = 40 if quick else 90
    metrics: dict = {}
    rtt_rows, fleet_rows, heap_rows = [], [], []
    with Mosquitto(max_queued=1_000_000) as mq, tempfile.TemporaryDirectory() as tmp:
        url = mq.url
        # -- command round trip ------------------------------------------------------
        with Emulator() as emu, Watcher(url, ["lanterne/v1/bench/+/status"]) as w:
            client = CommandClient(url)
            started = 0
            handles = []
            for n in rtt_counts:
                handles += _start_fleet(emu, board, url, n - started, tmp, "r", start=started, sample_period_s=60)
                started = n
                _wait_online(w, "r", n, timeout=60 + n)
                time.sleep(2)
                p50, p99 = _rtt(client, "r", n, 100 if quick else 200)
                rtt_rows.append([n, f"{p50:.1f}", f"{p99:.1f}"])
                metrics[f"cmd_rtt_p50_ms_{n}"] = round(p50, 1)
                metrics[f"cmd_rtt_p99_ms_{n}"] = round(p99, 1)
            metrics["boards"] = rtt_counts[-1]
            metrics["cmd_rtt_p50_ms"] = metrics[f"cmd_rtt_p50_ms_{rtt_counts[-1]}"]
            metrics["cmd_rtt_p99_ms"] = metrics[f"cmd_rtt_p99_ms_{rtt_counts[-1]}"]
            client.close()
        # -- fleet soak: one reading per 10 s per board ---------------------------------
        max_ok = 0
        lost_total = 0
        for n in fleet_sizes:
            prefix = f"f{n}x"
            with Emulator() as emu, Watcher(url, ["lanterne/v1/bench/+/up", "lanterne/v1/bench/+/status"]) as w:
                t0 = time.monotonic()
                _start_fleet(emu, board, url, n, tmp, prefix)
                _wait_online(w, prefix, n, timeout=120 + n)
                boot_s = time.monotonic() - t0
                time.sleep(soak_s)
                ups = w.matching(f"lanterne/v1/bench/{prefix}*/up")
                total, lost, reporting = _loss(ups, prefix, n)
                rate = total / (time.monotonic() - t0)
                fleet_rows.append([n, f"{boot_s:.0f}", soak_s, total, f"{rate:.1f}", lost, reporting])
                metrics[f"readings_per_s_{n}"] = round(rate, 1)
                metrics[f"readings_lost_{n}"] = lost
                lost_total += lost
                if lost == 0 and reporting == n:
                    max_ok = max(max_ok, n)
        metrics["max_boards_no_loss"] = max_ok
        metrics["readings_lost"] = lost_total
        # -- heap, TLS off / on -------------------------------------------------------------
        from host_tools.backoffice import tls

        pki = tls.write_test_pki(Path(tmp) / "pki")
        with Mosquitto(tls={k: pki[k] for k in ("cafile", "certfile", "keyfile")}) as tq:
            for label, u, extra in (
                ("tls off", tq.url, {}),
                ("tls on", f"mqtts://localhost:{tq.tls_port}", {"ca_cert": pki["ca_pem"]}),
            ):
                with Emulator() as emu, Watcher(tq.url, ["lanterne/v1/bench/+/status"]) as w:
                    dev = "heap-tls" if extra else "heap-plain"
                    flash = Path(tmp) / dev
                    deploy.copy_to_flash(board, _cfg(u, dev, sample_period_s=2, status_period_s=5, **extra), flash)
                    hb = emu.add_board(board, flash)
                    msgs = w.wait_for(f"lanterne/v1/bench/{dev}/status", lambda m: b'"online"' in m.payload, count=3, timeout=60)
                    allocs = [json.loads(m.payload)["heap_alloc"] for m in msgs]
                    peak = hb.board.esp32_heap(max(allocs))
                    scale = hb.board.heap_scale()
                    heap_rows.append([label, int(max(allocs)), scale, int(peak)])
                    metrics["heap_scale"] = scale
                    metrics["heap_peak_bytes_tls" if extra else "heap_peak_bytes"] = int(peak)
        # -- does it run at 64 KB (ESP32-equivalent)? -----------------------------------------
        with Emulator() as emu, Watcher(mq.url, ["lanterne/v1/bench/+/up"]) as w:
            flash = Path(tmp) / "h64"
            deploy.copy_to_flash(board, _cfg(mq.url, "h64", sample_period_s=1), flash)
            h = emu.add_board(board, flash, board_heap=64 * 1024)
            try:
                w.wait_for("lanterne/v1/bench/h64/up", count=5, timeout=40)
                ok = "MemoryError" not in h.console()
            except TimeoutError:
                ok = False
            metrics["runs_at_64k_heap"] = ok
            heap_rows.append(["runs at 64 KB heap (TLS off)", f"{h.board.heap_bytes()} (64 KB x scale + ROM)", h.board.heap_scale(),
                              "yes" if ok else "NO: " + h.console()[-300:]])
    return BenchResult(
        metrics,
        tables=[
            ("command round trip (publish -> actuate -> ack)", ["boards online", "p50 ms", "p99 ms"], rtt_rows),
            ("fleet at one reading per 10 s", ["boards", "boot s", "soak s", "readings", "readings/s", "lost", "boards reporting"], fleet_rows),
            ("firmware heap", ["case", "64-bit bytes", "scale used", "ESP32-equivalent bytes"], heap_rows),
        ],
        notes=[f"ESP32-equivalent heap = (64-bit heap - ROM shims - ROMFS buffer) / scale; scale used: {metrics.get('heap_scale')}"
               " (the library in ROMFS, as provisioned; docs/emulator.md); `lanterne bench heap` compares the layouts"
               " and finds the smallest heap"],
    )
