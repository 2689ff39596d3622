"""`lanterne demo`: the whole story on this machine, on embedded defaults.

1. an embedded MQTT broker (or `--broker`);
2. one factory-fresh virtual board per board file: MicroPython flashed with esptool
   through the virtual ROM bootloader;
3. each board provisioned with mpremote (compiled .mpy, per-device secrets in a fleet
   registry, config.json), then waiting for its first status;
4. readings flowing, decoded as they arrive;
5. a signed dim command to the street light, its signed ack and the lamp's PWM duty;
6. the monitor table of the fleet.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from host_tools import boards
from host_tools.cli import CommandError

SITES = {"esp32-devkitc": (45.764, 4.836)}  # the street light sits in Lyon: its profile needs a site


def configure(p):
    p.add_argument("--broker", help="use this broker (mqtt://host:port) instead of the embedded one")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to watch after setup, 0 = until Ctrl-C (default 30)")
    p.add_argument("--dir", help="working folder: flash folders, fleet registry (default: a temporary folder)")
    p.add_argument("--sample-period", type=int, default=5, help="sampling period of the boards, seconds")


def _short(payload: bytes) -> str:
    import json

    from host_tools.codec.decoder import PayloadError, decode

    try:
        doc = json.loads(payload)
        if isinstance(doc, dict):
            keys = ("state", "reset_cause", "uptime_s", "backlog", "faults", "lamp", "lamp_reason")
            return " ".join(f"{k}={doc[k]}" for k in keys if k in doc)
    except ValueError:
        pass
    try:
        readings = decode(payload)["readings"]
        r = readings[-1]
        fields = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("status",))
        return f"{len(readings)} reading(s), last: {fields}"
    except PayloadError:
        return payload.hex()


def run(args):
    from host_tools.backoffice.brokers import BrokerError, EmbeddedBroker
    from host_tools.backoffice.command_client import CommandClient, next_counter
    from host_tools.backoffice.monitor import COLUMNS, FleetView
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.control import VirtualControl
    from host_tools.emulator.supervisor import Emulator
    from host_tools.fleet import ProvisionError
    from host_tools.fleet.flash import FlashError, flash
    from host_tools.fleet.provision import provision
    from host_tools.fleet.registry import Registry

    base = Path(args.dir or tempfile.mkdtemp(prefix="lanterne-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    t0 = time.monotonic()

    def say(who, text):
        with lock:
            print(f"{time.monotonic() - t0:7.1f}s {who:18s} {text}", flush=True)

    broker = None
    url = args.broker
    if not url:
        try:
            broker = EmbeddedBroker().start()
        except BrokerError as exc:
            raise CommandError(str(exc)) from None
        url = broker.url
        say("broker", f"embedded MQTT broker on {url}")
    registry = Registry(base / "fleet.sqlite")
    view = FleetView()

    def on_message(m):
        view.feed(m.topic, m.payload, m.t)
        say("mqtt", f"{m.topic}  {_short(m.payload)}")

    watcher = Watcher(url, ["lanterne/#"], on_message=on_message)
    emu = Emulator()
    handles = {}
    try:
        for i, name in enumerate(boards.names()):
            board = boards.load(name)
            device = f"demo-{i + 1:02d}"
            h = emu.add_board(board, base / name / "flash", port_path=base / name / "tty", blank=True)
            handles[name] = (device, h)
            say(name, f"factory-fresh virtual board on {h.port}")
            try:
                rep = flash(h.port, board=board, virtual_control=VirtualControl(h.enter_download, h.hard_reset))
                say(name, f"flashed: {getattr(rep, 'summary', lambda: 'MicroPython written and verified')()}")
                lat, lon = SITES.get(name, (None, None))
                prov = provision(
                    h.port, board, device, site="demo", broker=url, registry=registry, lat=lat, lon=lon,
                    extra={"sample_period_s": args.sample_period, "status_period_s": 30},
                )
                say(name, f"provisioned: {prov.summary(warnings=False)}")
                for warning in prov.warnings:  # the LoRaWAN board: it stores, but cannot deliver yet
                    say(name, f"warning: {warning}")
            except (FlashError, ProvisionError) as exc:
                say(name, f"setup failed: {exc}")
        # a signed command to the street light, and its ack
        lamp = handles.get("esp32-devkitc")
        if lamp:
            device, h = lamp
            time.sleep(2)
            client = CommandClient(url)
            try:
                counter = next_counter(registry.command_counter(device))
                registry.set_command_counter(device, counter)
                res = client.send("demo", device, registry.command_key(device), counter, "dim", {"level": 40})
                duty = h.world.pwm(25)
                say("back office", f"dim {device} to 40 %: ack {res.reason} in {res.rtt_ms:.0f} ms; lamp PWM duty now {duty['duty_u16'] if duty else '?'} / 65535")
            except TimeoutError as exc:
                say("back office", f"command failed: {exc}")
            finally:
                client.close()
        time.sleep(3)
        from rich.console import Console
        from rich.table import Table

        table = Table(title="lanterne monitor (fleet table)")
        for c in COLUMNS:
            table.add_column(c)
        for row in view.rows():
            table.add_row(*row)
        Console(width=160).print(table)
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
        watcher.close()
        registry.close()
        if broker:
            broker.stop()
    print(f"demo over; flash folders and fleet registry kept in {base}")
    return 0
