"""The HAL server: the other end of the virtual board's `machine`/`network` shims.

One asyncio TCP server on 127.0.0.1 serves any number of virtual boards. Each
interpreter connects once at boot and says `HELLO <token>`; every later line is
a request answered with one line, `OK [value]` or `E <errno>`:

    SCAN bus                 -> OK addr,addr,...
    I2CW bus addr hex        -> OK              (a write transaction)
    I2CR bus addr n          -> OK hex          (a read transaction)
    I2CWR bus addr hex n     -> OK hex          (write, repeated start, read)
    PINW pin level / PINR pin / PULSE pin level timeout_us
    PWM pin freq duty_u16    (duty -1: PWM stopped)
    ADC pin                  -> OK microvolts
    UARTW id hex / UARTR id n
    I2SINIT id rate bits     an I2S receiver was built (the microphone's clock starts)
    I2SR id nbytes           -> OK n wait_us: n bytes of samples are in RUN_DIR/i2s<id>.raw
                             (the shim paces its readinto at the sample rate itself)
    WDT timeout_ms / FEED    watchdog armed / fed
    RSSI / MCUTEMP           radio and chip facts
    CLOCK                    the world's wall clock, Unix seconds (what NTP serves)
    EXEC 1|0                 user code starts/stops running (Ctrl-C becomes SIGINT / a byte)
    BOOTED alloc free        heap after the ROM came up (reported by _board.py)
    RESET hard|deepsleep ms  the firmware asked for a hard reset
    AP ssid_hex authmode key_hex | AP -   the Wi-Fi access point is up (as a phone sees it) / off
    PORT                     -> OK port      a free loopback port for a listening socket
    LISTEN ip port hostport  the board listens on ip:port, reachable at 127.0.0.1:hostport
    UNLISTEN hostport        that listening socket is closed

The board side is `host_tools/emulator/rom/_hal.py`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from typing import Protocol

from host_tools.emulator.devices import Nack


class HalClient(Protocol):
    """What the HAL server needs of a board: its parts, world and a few lifecycle hooks."""

    parts: object
    world: object

    def on_booted(self, alloc: int, free: int) -> None: ...
    def on_reset_request(self, kind: str, arg: int) -> None: ...
    def on_watchdog(self, timeout_ms: int | None) -> None: ...


def mirror_link_flag(world, run_dir) -> None:
    """Keep `run_dir/link_down` in step with the world's link: the shims' `_hal.link_up()`
    checks that file on every socket operation instead of asking the server."""
    from pathlib import Path

    flag = Path(run_dir) / "link_down"
    if world.get("link_up"):
        flag.unlink(missing_ok=True)
    else:
        flag.touch()


def follow_link(world, run_dir) -> None:
    """Mirror the link now and whenever the world's `link_up` changes."""
    mirror_link_flag(world, run_dir)
    world.subscribe(lambda what, values: mirror_link_flag(world, run_dir) if "link_up" in values else None)


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the board binds it next; it retries if taken)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hex(data: bytes) -> str:
    return data.hex()


def _unhex(s: str) -> bytes:
    return b"" if s == "-" else bytes.fromhex(s)


def handle(board: HalClient, line: str) -> str:
    """Answer one request line for `board`."""
    parts = line.split()
    if not parts:
        return f"E {errno.EINVAL}"
    op, args = parts[0], parts[1:]
    p = board.parts
    try:
        if op == "I2CWR":
            bus, addr = int(args[0]), int(args[1])
            p.i2c_write(bus, addr, _unhex(args[2]))
            return "OK " + _hex(p.i2c_read(bus, addr, int(args[3])))
        if op == "I2CW":
            p.i2c_write(int(args[0]), int(args[1]), _unhex(args[2]))
            return "OK"
        if op == "I2CR":
            return "OK " + _hex(p.i2c_read(int(args[0]), int(args[1]), int(args[2])))
        if op == "SCAN":
            return "OK " + ",".join(str(a) for a in p.i2c_scan(int(args[0])))
        if op == "PINW":
            p.pin_write(int(args[0]), int(args[1]))
            return "OK"
        if op == "PINR":
            return f"OK {p.pin_read(int(args[0]))}"
        if op == "PULSE":
            return f"OK {p.time_pulse_us(int(args[0]), int(args[1]), int(args[2]))}"
        if op == "PWM":
            duty = int(args[2])
            p.pwm(int(args[0]), int(args[1]), None if duty < 0 else duty)
            return "OK"
        if op == "ADC":
            return f"OK {p.adc_read_uv(int(args[0]))}"
        if op == "UARTW":
            p.uart_write(int(args[0]), _unhex(args[1]))
            return "OK"
        if op == "UARTR":
            return "OK " + _hex(p.uart_read(int(args[0]), int(args[1])))
        if op == "I2SINIT":
            p.i2s_init(int(args[0]), int(args[1]), int(args[2]))
            return "OK"
        if op == "I2SR":
            data, wait_us = p.i2s_read(int(args[0]), int(args[1]))
            run_dir = getattr(board, "run_dir", None)
            if not run_dir:
                return f"E {errno.ENODEV}"
            with open(os.path.join(str(run_dir), f"i2s{int(args[0])}.raw"), "r+b" if os.path.exists(
                    os.path.join(str(run_dir), f"i2s{int(args[0])}.raw")) else "wb") as f:
                f.write(data)  # in place: the board keeps the file open
            return f"OK {len(data)} {wait_us}"
        if op == "WDT":
            board.on_watchdog(int(args[0]))
            return "OK"
        if op == "FEED":
            board.on_watchdog(None)
            return "OK"
        if op == "CLOCK":
            return f"OK {int(board.world.now())}"
        if op == "RSSI":
            return f"OK {int(board.world.get('rssi_dbm', -67))}"
        if op == "MCUTEMP":
            return f"OK {int(board.world.get('temperature_c') + 25)}"
        if op == "EXEC":
            board.executing = args[0] == "1"
            return "OK"
        if op == "BOOTED":
            board.on_booted(int(args[0]), int(args[1]))
            return "OK"
        if op == "AP":
            ap = None
            if args[0] != "-":
                ap = {"ssid": _unhex(args[0]).decode(), "authmode": int(args[1]), "key": _unhex(args[2]).decode()}
            board.world.set_access_point(ap)
            return "OK"
        if op == "PORT":
            return f"OK {free_port()}"
        if op in ("LISTEN", "UNLISTEN"):
            hook = getattr(board, "on_listen", None)
            if hook:
                hook(args[0], int(args[1]), int(args[2])) if op == "LISTEN" else hook(None, 0, int(args[0]))
            return "OK"
        if op == "RESET":
            board.on_reset_request(args[0], int(args[1]) if len(args) > 1 else 0)
            return "OK"
        return f"E {errno.ENOSYS}"
    except Nack:
        return f"E {errno.ENODEV}"
    except OSError as exc:
        return f"E {exc.errno or errno.EIO}"
    except (IndexError, ValueError):
        return f"E {errno.EINVAL}"


class HalServer:
    """Serves the HAL protocol for registered boards, on an asyncio loop."""

    def __init__(self):
        self.boards: dict[str, HalClient] = {}
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None

    def register(self, token: str, board: HalClient) -> None:
        self.boards[token] = board

    def unregister(self, token: str) -> None:
        self.boards.pop(token, None)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        board = None
        try:
            hello = (await reader.readline()).decode().split()
            if len(hello) == 2 and hello[0] == "HELLO":
                board = self.boards.get(hello[1])
            if board is None:
                writer.write(f"E {errno.EACCES}\n".encode())
                return
            writer.write(b"OK\n")
            on_connect = getattr(board, "on_hal_connected", None)
            if on_connect:
                on_connect()
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write((handle(board, line.decode()) + "\n").encode())
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class StandaloneHal:
    """A HAL server for one set of simulated parts, on its own thread: for driver tests.

        with StandaloneHal(board_data, world) as hal:
            unix_port.run(code, path=[ROM], env=hal.env())
    """

    def __init__(self, board_data: dict, world, token: str = "standalone"):
        from host_tools.emulator.devices.parts import Parts

        self.parts = Parts(board_data, world)
        self.world = world
        self.token = token
        self.booted = None
        self.reset_requests: list[tuple[str, int]] = []
        self.watchdog: list = []
        self._loop = asyncio.new_event_loop()
        self._server = HalServer()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def on_booted(self, alloc, free):
        self.booted = (alloc, free)

    def on_reset_request(self, kind, arg):
        self.reset_requests.append((kind, arg))

    def on_watchdog(self, timeout_ms):
        self.watchdog.append(timeout_ms)

    def __enter__(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(10)
        self._server.register(self.token, self)
        self.run_dir = os.path.join("/tmp", f"lanterne-hal-{os.getpid()}-{id(self)}")
        os.makedirs(self.run_dir, exist_ok=True)
        follow_link(self.world, self.run_dir)
        return self

    def env(self) -> dict[str, str]:
        """Environment for a unix-port script that imports the shims and `_hal.connect()`s."""
        return {
            "LANTERNE_HAL_PORT": str(self._server.port),
            "LANTERNE_BOARD_TOKEN": self.token,
            "LANTERNE_RUN_DIR": self.run_dir,
        }

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        import shutil

        shutil.rmtree(self.run_dir, ignore_errors=True)
