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
    EXEC 1|0                 user code starts/stops running (Ctrl-C becomes KeyboardInterrupt / a byte)
    BOOTED alloc free        heap after the ROM came up (reported by _board.py)
    RESET hard|deepsleep ms  the firmware asked for a hard reset / to sleep ms (0: until a wake pin)
    RTCMEM hex|-             RTC memory now holds these bytes (kept across deep sleep, sleep.py)
    RTCCLK offset_ms         the RTC was set: its time minus the board's clock, ms
    WAKE ext0 pin level|-    deep-sleep wake sources (esp32.wake_on_ext0 / wake_on_ext1)
    WAKE ext1 pinmask level
    IRQ pin trigger          pin interrupt: 1 rising, 2 falling, 3 both, 4/5 on reaching low/high
                             (once, not repeatedly), 0 off (machine.Pin.irq)
    EVENTS                   this connection becomes the board's interrupt channel: from now on
                             the server writes one byte, the pin number, per edge that fires
    INTR                     this connection becomes the board's Ctrl-C channel: the server writes
                             one byte (3) per Ctrl-C typed while user code runs; the interpreter
                             answers each with one byte when it raises KeyboardInterrupt for it
    AP ssid_hex authmode key_hex | AP -   the Wi-Fi access point is up (as a phone sees it) / off
    PORT                     -> OK port      a free loopback port for a listening socket
    LISTEN ip port hostport  the board listens on ip:port, reachable at 127.0.0.1:hostport
    UNLISTEN hostport        that listening socket is closed

The board side is `host_tools/emulator/rom/_hal.py`. A board opens up to four connections:
its requests, requests made from inside a scheduled callback (an interrupt handler may run in
the middle of a request), the interrupt channel and the Ctrl-C channel. Edges are found when
the world changes (`World.subscribe`), after each of the board's own pin writes, and when an
input that changes with time is due to change: a part that drives such an input says when
(`next_change()`, the bollard's limit switch at the end of its travel); the inputs of a part that
cannot say are checked every 10 ms while an interrupt is set on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
import time
from typing import Protocol

from host_tools.emulator.devices import Nack


class HalClient(Protocol):
    """What the HAL server needs of a board: its parts, world and a few lifecycle hooks."""

    parts: object
    world: object
    #: when set (a deque), the server appends (time, request line) for each request it
    #: answers: what the firmware does, seen from outside (the loop benchmark measures with it)
    requests: object

    def on_booted(self, alloc: int, free: int) -> None: ...
    def on_reset_request(self, kind: str, arg: int) -> None: ...
    def on_watchdog(self, timeout_ms: int | None) -> None: ...


def mirror_link_flag(world, run_dir) -> None:
    """Keep the run folder's flag files in step with the world: `link_down` while the link is
    down, `dns_hang` while the resolver hangs. The shims (`_hal.flag()`) check these files on
    every socket operation instead of asking the server."""
    from pathlib import Path

    for name, on in (("link_down", not world.get("link_up")), ("dns_hang", world.fault("dns", "hang"))):
        flag = Path(run_dir) / name
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)


def follow_link(world, run_dir) -> None:
    """Mirror the flags now and whenever the world's link or the resolver's fault changes."""
    mirror_link_flag(world, run_dir)

    def changed(what, values):
        if "link_up" in values or "dns" in values or what == "clear":
            mirror_link_flag(world, run_dir)

    world.subscribe(changed)


class PinEvents:
    """The pin interrupts one board has set: which inputs, which edges; pushes each edge that
    fires to the board's interrupt channel. Lives on the HAL server's loop; `poke()` from any thread.

    It wakes when something may have changed an input (the world, a pin write, a new interrupt)
    and when a part's input is due to change with time (`next_change()`: the monotonic time of
    its next change, or None while it changes only with the world); a part without
    `next_change` is polled every PERIOD_S. (It polled every 10 ms for every board with an
    interrupt set: a fleet's supervisor woke 100 times a second for each bollard.)"""

    PERIOD_S = 0.01

    def __init__(self, board, loop: asyncio.AbstractEventLoop):
        self.board = board
        self.loop = loop
        self.triggers: dict[int, int] = {}
        self.levels: dict[int, int] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.fired = 0
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()  # (created on the loop's thread: configure() runs there)
        board.world.subscribe(self._on_world)

    def _on_world(self, what, values) -> None:
        if self.triggers and what in ("set", "fault", "clear"):
            self.poke()

    def poke(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to tell
            self.loop.call_soon_threadsafe(self._poked)

    def _poked(self) -> None:
        self.check()
        self._wake.set()  # an input may now be due to change later (a bollard set moving)

    def configure(self, pin: int, trigger: int) -> None:
        if trigger:
            self.triggers[pin] = trigger
            self.levels[pin] = self.board.parts.pin_read(pin)
            if self._task is None:
                self._task = self.loop.create_task(self._watch())
            self._wake.set()
        else:
            self.triggers.pop(pin, None)

    def attach(self, writer: asyncio.StreamWriter) -> None:
        """A new interpreter opened its interrupt channel: what the last one set is gone."""
        self.triggers.clear()
        self.writer = writer

    def detach(self, writer: asyncio.StreamWriter) -> None:
        if self.writer is writer:
            self.writer = None
            self.close()

    def close(self) -> None:
        self.triggers.clear()
        if self._task is not None:
            self._task.cancel()

    def check(self) -> None:
        for pin, trigger in list(self.triggers.items()):
            level = self.board.parts.pin_read(pin)
            if level == self.levels.get(pin):
                continue
            self.levels[pin] = level
            fires = trigger & (1 if level else 2) if trigger < 4 else (level == trigger - 4)
            if fires and self.writer is not None and not self.writer.is_closing():
                self.writer.write(bytes((pin,)))
                self.fired += 1

    def _next_wait(self) -> float | None:
        """Seconds until an input with an interrupt set may change by itself; None: only with the world."""
        return input_change_wait(self.board.parts, self.triggers, self.PERIOD_S)

    async def _watch(self) -> None:
        try:
            while True:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._next_wait() if self.triggers else None)
                if self.triggers:
                    self.check()
        finally:
            self._task = None


def input_change_wait(parts, pins, period_s: float) -> float | None:
    """Seconds until one of these inputs may change by itself (not through the world, which its
    subscribers hear of): the soonest `next_change()` of the parts driving them, `period_s` when
    a part cannot say (it is polled), None when none changes by itself."""
    drivers = getattr(parts, "pin_in", {})
    soonest = None
    for pin in pins:
        part = drivers.get(pin)
        if part is None:
            continue  # a pin the world sets
        next_change = getattr(part, "next_change", None)
        if next_change is None:
            return period_s
        at = next_change()
        if at is not None:
            wait = max(0.0, at - time.monotonic()) + 0.001
            soonest = wait if soonest is None else min(soonest, wait)
    return soonest


def pin_events(board) -> PinEvents:
    events = getattr(board, "pin_events", None)
    if events is None:
        events = board.pin_events = PinEvents(board, asyncio.get_running_loop())
    return events


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
            events = getattr(board, "pin_events", None)
            if events is not None and events.triggers:
                events.check()  # an output wired back to an input
                events._wake.set()  # ... or one that starts an input changing (a bollard's relay)
            return "OK"
        if op == "IRQ":
            pin_events(board).configure(int(args[0]), int(args[1]))
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
        if op in ("RTCMEM", "RTCCLK", "WAKE"):
            sleep = getattr(board, "sleep", None)  # (a StandaloneHal keeps no RTC domain: nothing outlives its script)
            return "OK" if sleep is None else sleep.request(op, args)
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
                if line == b"EVENTS\n":
                    await self._events(board, reader, writer)
                    break
                if line == b"INTR\n":
                    await self._interrupts(board, reader, writer)
                    break
                writer.write((handle(board, line.decode()) + "\n").encode())
                watched = getattr(board, "requests", None)
                if watched is not None:
                    watched.append((time.monotonic(), line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _events(self, board, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"OK\n")
        # TCP_NODELAY: an edge is one byte, it must not wait for the board's delayed ACK
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        events = pin_events(board)
        events.attach(writer)
        try:
            await reader.read()  # the board never writes here: EOF when its interpreter ends
        finally:
            events.detach(writer)

    async def _interrupts(self, board, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attach = getattr(board, "on_interrupt_channel", None)
        if attach is None:
            writer.write(f"E {errno.ENOSYS}\n".encode())
            return
        writer.write(b"OK\n")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        attach(writer)
        try:
            while True:
                taken = await reader.read(64)
                if not taken:
                    break  # the interpreter ended
                board.on_interrupt_taken(len(taken))
        finally:
            board.on_interrupt_channel(None, writer)


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
        self.requests = None
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
        from host_tools.emulator.netsim import NtpServer

        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(10)
        self.ntp = asyncio.run_coroutine_threadsafe(NtpServer(self.world).start(), self._loop).result(10)
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
            "LANTERNE_NTP_PORT": str(self.ntp.port),
        }

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self.ntp.close)
        events = getattr(self, "pin_events", None)
        if events is not None:
            self._loop.call_soon_threadsafe(events.close)
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        import shutil

        shutil.rmtree(self.run_dir, ignore_errors=True)
