"""`lanterne demo`: the whole story on this machine, on embedded defaults.

1. an embedded MQTT broker (or `--broker`);
2. one factory-fresh virtual board per board file: MicroPython flashed with esptool
   through the virtual ROM bootloader;
3. each board provisioned with mpremote (compiled .mpy, per-device secrets in a fleet
   registry, config.json), then waiting for its first status;
4. readings flowing, decoded as they arrive;
5. a signed dim command to the street light, its signed ack and the lamp's PWM duty;
6. the LoRaWAN board (RAK3172 twin, gateways and network server on the same broker): its
   readings through the ChirpStack integration and `lanterne uplinks`' decoder, and a signed
   command queued as a class-A downlink, with its compact ack;
7. the monitor table of the fleet.
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


def _lorawan_back_office(url, registry, say):
    """The network server (ChirpStack integration) and the uplink service for the fleet's LoRaWAN devices."""
    from host_tools.backoffice.lorawan_fleet import identities, uplink_devices
    from host_tools.backoffice.uplinks import UplinkService
    from host_tools.emulator.network_server import Device, NetworkServer

    ns = NetworkServer(url, [Device(i.dev_eui, i.app_key, i.device, i.join_eui) for i in identities(registry)],
                       integrations=("chirpstack",)).start()

    def on_event(e):
        if e["event"] == "reading":
            r = e["reading"]
            fields = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("status",))
            say("lorawan uplinks", f"{e['device']} reading (FCnt {e.get('fcnt', 0)}): {fields}")
        elif e["event"] in ("ack", "ledger", "command_queued"):
            say("lorawan uplinks", f"{e['device']} {e['event']}: " + " ".join(f"{k}={v}" for k, v in e.items() if k not in ("event", "device")))

    svc = UplinkService(uplink_devices(registry), integration="chirpstack", broker_url=url, on_event=on_event).start()
    say("lorawan", f"network server (ChirpStack v4 integration) and uplink service on {url}")
    return ns, svc


def _lorawan_command(svc, registry, devices, say, timeout_s=60.0):
    """A signed set_period (sample every 10 s) to each LoRaWAN board, as a class-A downlink; its compact ack."""
    from host_tools.backoffice.command_client import next_counter
    from host_tools.runtime import firmware_module

    commands = firmware_module("commands")
    for device in devices:
        deadline = time.monotonic() + timeout_s
        while not [e for e in svc.events if e["event"] == "reading" and e["device"] == device] and time.monotonic() < deadline:
            time.sleep(0.2)
        counter = next_counter(registry.command_counter(device))
        registry.set_command_counter(device, counter)
        frame = commands.build(registry.command_key(device), device, counter, commands.SET_PERIOD, {"what": "sample", "seconds": 10})
        t = time.monotonic()
        svc.send_command(device, frame)
        say("back office", f"set_period {device} sample 10 s: queued as a downlink (class A: it goes after the board's next uplink)")
        while time.monotonic() < deadline:
            acks = [e for e in svc.events if e["event"] == "ack" and e["device"] == device and e["counter"] == counter]
            if acks:
                reason = commands.REASONS.get(acks[0]["status"], acks[0]["status"])
                say("back office", f"set_period {device}: ack {reason} after {time.monotonic() - t:.1f} s (compact LoRaWAN ack, verified)")
                break
            time.sleep(0.2)
        else:
            say("back office", f"set_period {device}: no ack within {timeout_s:.0f} s")


def run(args):
    from host_tools.backoffice.brokers import BrokerError, EmbeddedBroker
    from host_tools.backoffice.command_client import CommandClient, next_counter
    from host_tools.backoffice.monitor import COLUMNS, FleetView
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.control import VirtualControl
    from host_tools.emulator.supervisor import Emulator
    from host_tools.emulator.world import World
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
    lora = None  # (network server, uplink service) once a LoRaWAN board is provisioned
    try:
        for i, name in enumerate(boards.names()):
            board = boards.load(name)
            device = f"demo-{i + 1:02d}"
            radio = {}
            if board.data["network"]["kind"] == "lorawan":
                # its modem twin's gateways publish on the broker; the module's clock runs 5x (join
                # windows of 1.2 s), and the network has moved it to DR5 (a gateway nearby)
                radio = {"radio": url, "world": World(lorawan_speedup=5.0, lorawan_dr=5)}
            h = emu.add_board(board, base / name / "flash", port_path=base / name / "tty", blank=True, **radio)
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
                for warning in prov.warnings:
                    say(name, f"warning: {warning}")
                if radio and lora is None:
                    lora = _lorawan_back_office(url, registry, say)
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
        if lora:
            _lorawan_command(lora[1], registry, [d for d, _ in handles.values() if d in lora[1].by_name], say)
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
        if lora:
            lora[1].stop()
            lora[0].stop()
        emu.close()
        watcher.close()
        registry.close()
        if broker:
            broker.stop()
    print(f"demo over; flash folders and fleet registry kept in {base}")
    return 0
