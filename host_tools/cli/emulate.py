"""`lanterne emulate --board BOARD --fs DIR --port PATH`: serve one virtual board on a pty.

The board runs until interrupted. Its serial port is PATH (a symlink to a pty),
so `mpremote connect PATH ...`, `screen PATH` or `lanterne provision --port PATH`
talk to it as to a USB-connected ESP32. A control socket at PATH.ctl lets
`lanterne world --port PATH ...` read and change the simulated world. With
`--broker-proxy HOST:PORT` a fault proxy to that broker runs beside the board (its URL is
printed: provision the board with it), and `lanterne world --port PATH fault broker
silent|half_open|slow|slow_tls` breaks the board's connection as documented in
docs/emulator.md.
"""

from __future__ import annotations

import signal
import threading

from host_tools import boards
from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--board", required=True, help="board name (boards/*.json) or path to a board file")
    p.add_argument("--fs", required=True, metavar="DIR", help="folder holding the board's flash filesystem")
    p.add_argument("--port", required=True, metavar="PATH", help="symlink to create for the board's serial port")
    p.add_argument("--log", metavar="FILE", help="also append everything the board prints to FILE")
    p.add_argument("--seed", type=int, default=None, help="seed for the simulated world's noise")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="initial world value (repeatable)")
    p.add_argument("--broker-proxy", metavar="HOST:PORT",
                   help="run a fault proxy to this broker, driven by the world's 'broker' faults; prints its URL")
    p.add_argument(
        "--radio",
        metavar="URL",
        help="LoRaWAN boards: the MQTT broker (mqtt://host:port) their gateways publish on, in ChirpStack Gateway "
        "Bridge form (run `lanterne network-server` on it); without it no gateway is in range",
    )
    p.add_argument(
        "--blank",
        action="store_true",
        help="a factory-fresh board: erased SPI flash (DIR.flash.bin), needs `lanterne flash` before MicroPython runs",
    )


def run(args):
    from host_tools.emulator.control import ControlServer, parse_assignments
    from host_tools.emulator.supervisor import Emulator
    from host_tools.emulator.world import World

    try:
        board = boards.load(args.board)
    except boards.BoardError as exc:
        raise CommandError(str(exc), hint="see `lanterne boards` for the known boards") from None
    try:
        world = World(seed=args.seed, **parse_assignments(args.set))
    except (KeyError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    proxy = None
    if args.broker_proxy:
        from host_tools.emulator.netsim import FaultProxy

        host, _, port = args.broker_proxy.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--broker-proxy {args.broker_proxy!r}: expected HOST:PORT")
        proxy = FaultProxy(host, int(port), world=world).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        with Emulator() as emu:
            handle = emu.add_board(board, args.fs, port_path=args.port, world=world, log_path=args.log, blank=args.blank,
                                    radio=args.radio)
            ctl = ControlServer(handle, args.port + ".ctl")
            ctl.start()
            print(f"virtual {board.name} on {args.port} -> {handle.board.pty_name}, flash {handle.flash}", flush=True)
            if proxy:
                print(f"broker fault proxy {proxy.url()} -> {args.broker_proxy}: provision the board with "
                      f"--broker {proxy.url()}; faults: lanterne world --port {args.port} fault broker "
                      "silent|half_open|slow|slow_tls", flush=True)
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
            finally:
                ctl.stop()
    finally:
        if proxy:
            proxy.close()
    return 0
