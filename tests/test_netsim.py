"""The virtual board's network beyond its link, and its pin interrupts.

- The simulated time server answers an SNTP client no one here wrote (ntplib) with the world's
  clock, and stays silent under the "ntp" fault; the firmware's own non-blocking query and the
  board's `ntptime` read it through the socket shim.
- The fault proxy forwards, and injects each "broker" fault as documented (a plain TCP echo
  server stands in for the broker).
- A hanging resolver holds `socket.getaddrinfo`, not the firmware's loop (netio.py).
- `machine.Pin.irq` behaves as on the esp32 port (triggers, handler called with the pin, the
  IRQ object) and its handler runs within milliseconds even while the interpreter waits in
  the asyncio loop's poll.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import ntplib
import pytest

from host_tools import boards
from host_tools.emulator import ROM
from host_tools.emulator.hal import StandaloneHal
from host_tools.emulator.netsim import FaultProxy, NtpServer
from host_tools.emulator.world import World
from host_tools.runtime import unix_port


def run(hal, code, **kw):
    out = unix_port.run(code, path=[ROM], env=hal.env(), heapsize=1 << 20, **kw)
    return json.loads(out.strip().splitlines()[-1])


# -- time server ----------------------------------------------------------------------------
def test_time_server_answers_an_independent_sntp_client_with_the_worlds_clock():
    world = World()
    world.set_clock(2_000_000_000.25)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(NtpServer(world).start(), loop).result(5)
        reply = ntplib.NTPClient().request("127.0.0.1", port=server.port, version=3, timeout=2)
        assert abs(reply.tx_time - world.now()) < 0.5
        assert reply.stratum == 1 and reply.mode == 4 and reply.version == 3
        world.inject("ntp", "silent")
        with pytest.raises(ntplib.NTPException):
            ntplib.NTPClient().request("127.0.0.1", port=server.port, timeout=1)
        world.clear("ntp")
        world.set(link_up=False)
        with pytest.raises(ntplib.NTPException):
            ntplib.NTPClient().request("127.0.0.1", port=server.port, timeout=1)
        assert server.answered == 1 and server.unanswered == 2
        loop.call_soon_threadsafe(server.close)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_firmware_and_ntptime_read_the_worlds_clock_through_the_board_network():
    world = World()
    world.set_clock(1_900_000_000)
    code = (
        "import asyncio, json, ntptime, time\n"
        "from lanterne import netio\n"
        "ours = asyncio.run(netio.ntp_query())\n"
        "theirs = ntptime.time()\n"
        "netio.set_rtc(ours)\n"
        "import machine\n"
        "print(json.dumps([ours, theirs, list(machine.RTC().datetime())]))\n"
    )
    with StandaloneHal(boards.load("esp32-devkitc").data, world) as hal:
        ours, theirs, dt = run(hal, code)
        assert abs(ours - 1_900_000_000) <= 2 and abs(theirs - 1_900_000_000) <= 2
        assert dt[:3] == [2030, 3, 17]  # 1 900 000 000 s: 2030-03-17
        world.inject("ntp", "silent")
        silent = (
            "import asyncio, json\nfrom lanterne import netio\n"
            "try:\n    asyncio.run(netio.ntp_query(timeout_ms=300)); r = 'answered'\n"
            "except OSError as e:\n    r = str(e)\n"
            "print(json.dumps(r))\n"
        )
        assert "no answer within 300 ms" in run(hal, silent)


# -- fault proxy ------------------------------------------------------------------------------
class Echo:
    """A TCP echo server on loopback (the broker's stand-in)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)


def _client(proxy):
    c = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def _echoes(c, data, timeout):
    c.settimeout(timeout)
    c.sendall(data)
    try:
        return c.recv(4096) == data
    except TimeoutError:
        return False


def test_fault_proxy_injects_each_broker_fault():
    echo = Echo()
    world = World(net_delay_s=0.5)
    with FaultProxy("127.0.0.1", echo.port, world=world) as proxy:
        a = _client(proxy)
        assert _echoes(a, b"hello", 2)
        # half_open: the connection open now goes quiet for good; a new one works
        world.inject("broker", "half_open")
        time.sleep(0.1)
        assert not _echoes(a, b"lost?", 0.5)
        b = _client(proxy)
        assert _echoes(b, b"fresh", 2)
        world.clear("broker")
        assert not _echoes(a, b"still?", 0.3)  # quiet for good, and not closed either
        # silent: every connection, open or new, accepted and never answered
        world.inject("broker", "silent")
        time.sleep(0.1)
        assert not _echoes(b, b"x", 0.5)
        c = _client(proxy)
        assert not _echoes(c, b"y", 0.5)
        world.clear("broker")
        # slow: each chunk held net_delay_s, both ways
        world.inject("broker", "slow")
        d = _client(proxy)
        t0 = time.monotonic()
        assert _echoes(d, b"slow", 3)
        assert time.monotonic() - t0 >= 0.9  # 0.5 s there, 0.5 s back
        world.clear("broker")
        # slow_tls: handshake records (0x16, 0x14) held, application data (0x17) not
        world.inject("broker", "slow_tls")
        e = _client(proxy)
        t0 = time.monotonic()
        assert _echoes(e, b"\x16\x03\x01hello", 3)
        assert time.monotonic() - t0 >= 0.9
        f = _client(proxy)
        t0 = time.monotonic()
        assert _echoes(f, b"\x17\x03\x03data", 3)
        assert time.monotonic() - t0 < 0.4
        assert proxy.connections == 6 and proxy.quieted >= 3


def test_fault_proxy_resets_the_board_when_the_broker_refuses():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there
    with FaultProxy("127.0.0.1", port) as proxy, pytest.raises(ConnectionResetError):
        c = _client(proxy)  # accepted by the proxy, then reset once the broker refused it
        c.settimeout(2)
        c.sendall(b"x")
        c.recv(10)


# -- DNS that hangs ---------------------------------------------------------------------------
def test_a_hanging_resolver_holds_the_lookup_not_the_loop():
    world = World()
    code = (
        "import asyncio, json, time\n"
        "from lanterne import netio\n"
        "late = [0]\n"
        "async def ticker():\n"
        "    t = time.ticks_ms()\n"
        "    while True:\n"
        "        await asyncio.sleep_ms(20)\n"
        "        late[0] = max(late[0], time.ticks_diff(time.ticks_ms(), t) - 20)\n"
        "        t = time.ticks_ms()\n"
        "async def main():\n"
        "    asyncio.create_task(ticker())\n"
        "    t0 = time.ticks_ms()\n"
        "    try:\n"
        "        await netio.resolve('localhost', 1883, timeout_ms=600); r = 'resolved'\n"
        "    except OSError as e:\n"
        "        r = str(e)\n"
        "    took = time.ticks_diff(time.ticks_ms(), t0)\n"
        "    open('go', 'w').close()\n"
        "    while True:\n"  # the fault clears: the lookup still running answers, the next resolve has it
        "        await asyncio.sleep_ms(100)\n"
        "        try:\n"
        "            addr = await netio.resolve('localhost', 1883, timeout_ms=3000); break\n"
        "        except OSError:\n"
        "            pass\n"
        "    return [r, took, late[0], len(addr)]\n"
        "print(json.dumps(asyncio.run(main())))\n"
    )
    with StandaloneHal(boards.load("esp32-devkitc").data, world) as hal:
        world.inject("dns", "hang")
        import pathlib
        import tempfile

        with tempfile.TemporaryDirectory() as cwd:
            def clear_when_asked():
                while not (pathlib.Path(cwd) / "go").exists():
                    time.sleep(0.05)
                world.clear("dns")

            threading.Thread(target=clear_when_asked, daemon=True).start()
            r, took, late, addr_len = run(hal, code, cwd=cwd, timeout=60)
    assert r == "dns: localhost: no answer within 600 ms"
    assert 550 <= took < 1500
    assert late < 100  # the loop kept its 20 ms tick while the lookup hung
    assert addr_len == 16  # a sockaddr_in once the resolver answers


# -- pin interrupts ---------------------------------------------------------------------------
IRQ = r"""
import machine, time, asyncio, json
pres = machine.Pin(39, machine.Pin.IN)
seen = []
def handler(p):
    seen.append([p is pres, p.value(), time.ticks_ms()])
irq = pres.irq(handler=handler, trigger=TRIGGER)
print(json.dumps({"ready": [irq.trigger(), pres.irq() is irq]}))
t0 = time.ticks_ms()
async def main():
    await asyncio.sleep_ms(2500)   # the interpreter waits in the loop's poll the whole time
asyncio.run(main())
try:
    pres.irq(handler, hard=True)
    hard = "accepted"
except TypeError:
    hard = "TypeError"
pres.irq(None)
print(json.dumps([[s[0], s[1], time.ticks_diff(s[2], t0)] for s in seen] + [hard]))
"""


@pytest.mark.parametrize("trigger, value, edges", [("machine.Pin.IRQ_RISING", 1, [1]), ("machine.Pin.IRQ_FALLING", 2, [0]),
                                                   ("machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING", 3, [1, 0])])
def test_pin_irq_fires_on_its_edges_while_the_loop_waits(trigger, value, edges):
    world = World()
    with StandaloneHal(boards.load("olimex-esp32-poe").data, world) as hal:

        def toggle():
            time.sleep(0.8)  # the interpreter started and armed the interrupt
            world.set(presence=True)
            time.sleep(0.6)
            world.set(presence=False)

        threading.Thread(target=toggle, daemon=True).start()
        out = unix_port.run(IRQ.replace("TRIGGER", trigger), path=[ROM], env=hal.env(), heapsize=1 << 20)
        lines = [json.loads(x) for x in out.strip().splitlines()]
    assert lines[0]["ready"] == [value, True]  # irq.trigger(); irq() with no arguments: the same IRQ object
    *calls, hard = lines[-1]
    assert hard == "TypeError"  # the esp32 port's Pin.irq takes no `hard`
    assert [c[1] for c in calls] == edges  # one call per edge, reading the level it went to
    assert all(c[0] for c in calls)  # called with the pin itself
    if len(calls) == 2:
        assert 400 <= calls[1][2] - calls[0][2] <= 900  # 0.6 s apart, as the edges were


def test_pin_irq_handler_runs_within_milliseconds_of_the_edge():
    world = World()
    board = boards.load("olimex-esp32-poe").data
    code = (
        "import machine, asyncio, json\n"
        "relay = machine.Pin(32, machine.Pin.OUT, value=0)\n"
        "pres = machine.Pin(39, machine.Pin.IN)\n"
        "pres.irq(handler=lambda p: relay.value(1), trigger=machine.Pin.IRQ_RISING)\n"
        "print(json.dumps('armed'))\n"
        "async def main():\n"
        "    await asyncio.sleep_ms(3000)\n"
        "asyncio.run(main())\n"
        "print(json.dumps('done'))\n"
    )
    with StandaloneHal(board, world) as hal:
        reacted = []
        world.subscribe(lambda what, v: reacted.append(time.monotonic()) if what == "pin" and v.get(32) == 1 else None)
        edges = []

        def presence():
            time.sleep(1.0)
            edges.append(time.monotonic())
            world.set(presence=True)

        threading.Thread(target=presence, daemon=True).start()
        assert run(hal, code) == "done"
    assert edges and reacted
    assert (reacted[-1] - edges[0]) * 1000 < 100  # the poll waited 3 s: only the interrupt explains this


def test_an_input_that_changes_with_time_fires_its_interrupt_when_it_changes_and_the_watch_sleeps_meanwhile(monkeypatch):
    # The bollard's up limit switch (position input 33) goes high `travel_ms` (3 s) after the relay
    # (32) drives it up: nothing in the world changes then, the part says when (`next_change`). The
    # HAL's interrupt watch must fire that edge on time, and not wake every 10 ms meanwhile.
    from host_tools.emulator import hal as hal_mod

    checks = []
    check = hal_mod.PinEvents.check
    monkeypatch.setattr(hal_mod.PinEvents, "check", lambda self: (checks.append(time.monotonic()), check(self))[1])
    code = (
        "import machine, time, asyncio, json\n"
        "relay = machine.Pin(32, machine.Pin.OUT, value=0)\n"
        "up = machine.Pin(33, machine.Pin.IN)\n"
        "seen = []\n"
        "up.irq(handler=lambda p: seen.append([p.value(), time.ticks_ms()]), trigger=machine.Pin.IRQ_RISING)\n"
        "async def main():\n"
        "    await asyncio.sleep_ms(1500)\n"  # the bollard down, standing still: nothing to watch
        "    global t0\n"
        "    t0 = time.ticks_ms()\n"
        "    relay.value(1)\n"
        "    await asyncio.sleep_ms(4000)\n"
        "asyncio.run(main())\n"
        "print(json.dumps([[v, time.ticks_diff(t, t0)] for v, t in seen]))\n"
    )
    with StandaloneHal(boards.load("olimex-esp32-poe").data, World()) as hal:
        out = unix_port.run(code, path=[ROM], env=hal.env(), heapsize=1 << 20, timeout=60)
    (edge,) = json.loads(out.strip().splitlines()[-1])
    assert edge[0] == 1 and 2950 <= edge[1] <= 3400  # the switch closed at the end of the 3 s travel
    # ~6.5 s with an interrupt set: a 10 ms poll would have checked ~650 times; the watch checks on
    # the pin writes, the interrupt's arming and the travel's end
    assert len(checks) < 20, len(checks)
