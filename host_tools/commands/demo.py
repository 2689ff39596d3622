"""`lanterne demo`: the whole system on embedded defaults, on this machine.

Starts an embedded MQTT broker (or uses `--broker`), one virtual board per board
file running the real firmware (deployed into fresh flash folders), and prints
what they say: every MQTT message under lanterne/ and each board's log lines.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

from host_tools import boards, deploy
from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--broker", help="use this broker (mqtt://host:port) instead of the embedded one")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run, 0 = until Ctrl-C (default 60)")
    p.add_argument("--dir", help="folder for the boards' flash (default: a temporary folder)")
    p.add_argument("--status-period", type=int, default=10, help="status period of the boards, seconds")


def _short(payload: bytes) -> str:
    try:
        doc = json.loads(payload)
        if isinstance(doc, dict):
            keys = ("state", "reset_cause", "uptime_s", "heap_free", "backlog", "faults")
            return " ".join(f"{k}={doc[k]}" for k in keys if k in doc)
    except ValueError:
        pass
    return payload.hex() if any(b < 32 for b in payload) else payload.decode("utf-8", "replace")


def run(args):
    from host_tools.broker import BrokerError, EmbeddedBroker
    from host_tools.emulator.board import Emulator
    from host_tools.mqttwatch import Watcher

    broker = None
    url = args.broker
    if not url:
        try:
            broker = EmbeddedBroker().start()
        except BrokerError as exc:
            raise CommandError(str(exc)) from None
        url = broker.url
        print(f"embedded broker on {url}")
    base = Path(args.dir or tempfile.mkdtemp(prefix="lanterne-demo-"))
    lock = threading.Lock()
    t0 = time.monotonic()

    def say(who, text):
        with lock:
            print(f"{time.monotonic() - t0:7.1f}s {who:18s} {text}", flush=True)

    watcher = Watcher(url, ["lanterne/#"], on_message=lambda m: say("mqtt", f"{m.topic}  {_short(m.payload)}"))
    emu = Emulator()
    handles = []
    try:
        for i, name in enumerate(boards.names()):
            board = boards.load(name)
            flash = base / name / "flash"
            deploy.clean_flash(flash)
            transport = "lorawan" if board.data["network"]["kind"] == "lorawan" else "mqtt"
            cfg = {
                "device": f"demo-{i + 1:02d}",
                "site": "demo",
                "broker": url,
                "transport": transport,
                "status_period_s": args.status_period,
            }
            deploy.copy_to_flash(board, cfg, flash)
            h = emu.add_board(board, flash, port_path=base / name / "tty")
            handles.append((name, h))
            say(name, f"virtual board on {h.port} (flash {flash})")
        offsets = {name: 0 for name, _ in handles}
        deadline = t0 + args.duration if args.duration > 0 else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            for name, h in handles:
                text = h.console()
                lines = text[offsets[name]:].split("\n")
                if len(lines) > 1:
                    offsets[name] += len("\n".join(lines[:-1])) + 1
                    for line in lines[:-1]:
                        if line.strip().startswith("[lanterne]") or "Error" in line:
                            say(name, line.strip())
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
        watcher.close()
        if broker:
            broker.stop()
    print(f"demo over; flash folders kept in {base}")
    return 0
