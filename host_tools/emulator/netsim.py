"""The virtual board's network beyond its link: a time server, and a TCP proxy that injects broker faults.

`NtpServer(world)`: an SNTP server (RFC 4330) on a loopback UDP port that answers with the
world's wall clock (`World.now()`). Each virtual board has its own; the board's socket shim
sends every datagram for port 123 to it, and its resolver maps the NTP pool's names to it.
It stays silent while the world's link is down or its "ntp" fault is "silent".

`FaultProxy(host, port, world=...)`: a loopback TCP proxy a test (or `lanterne emulate
--broker-proxy`) puts between boards and their broker. It forwards bytes as they come and
injects the world's "broker" faults (`world.inject("broker", kind)`):

- silent: the broker accepts and never answers: every connection, open or new, goes quiet
  (bytes from either side are dropped; nothing is closed);
- half_open: the connections open at that moment go quiet for good, as through a NAT that
  forgot them; new connections work;
- slow: every chunk is held `net_delay_s` (a world quantity, 2 s by default) before it is
  forwarded, in order, both ways;
- slow_tls: the TLS handshake's records (content types 0x14 and 0x16) are held `net_delay_s`
  each; application data passes at once.

A connection that went quiet stays quiet after the fault is cleared (its stream lost bytes);
the board finds out through its own timeouts and reconnects. Closing a quiet connection from
the board does not reach the broker either, which learns of it only through the keepalive, as
a broker behind a dead link does (and then publishes the board's last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

NTP_DELTA = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01


class NtpServer(asyncio.DatagramProtocol):
    """SNTP server on 127.0.0.1 serving `world.now()`; `await start()` on the loop it runs on."""

    def __init__(self, world):
        self.world = world
        self.port: int | None = None
        self.answered = 0
        self.unanswered = 0
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> NtpServer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 48 or data[0] & 7 != 3:  # only client-mode requests
            return
        if self.world.fault("ntp", "silent") or not self.world.get("link_up"):
            self.unanswered += 1
            return
        now = self.world.now() + NTP_DELTA
        stamp = struct.pack("!II", int(now), int((now - int(now)) * 2**32) & 0xFFFFFFFF)
        version = (data[0] >> 3) & 7 or 4
        reply = bytearray(48)
        reply[0] = (version << 3) | 4  # leap 0, the client's version, mode 4 (server)
        reply[1] = 1  # stratum 1: a primary reference
        reply[2] = data[2]  # poll interval, echoed
        reply[3] = 0xEC  # precision 2^-20 s
        reply[12:16] = b"SIM\0"  # reference identifier: the simulated world
        reply[16:24] = stamp  # reference timestamp
        reply[24:32] = data[40:48]  # originate: the client's transmit timestamp
        reply[32:40] = stamp  # receive
        reply[40:48] = stamp  # transmit
        self.answered += 1
        if self.transport is not None:
            self.transport.sendto(bytes(reply), addr)


class _Connection:
    def __init__(self):
        self.started = time.monotonic()
        self.quiet = False  # dropped from now on, both ways, and never closed towards the broker
        self.tls_done = False
        self.writers: list[asyncio.StreamWriter] = []


class FaultProxy:
    """Loopback TCP proxy to (host, port) injecting the world's "broker" faults; runs its own loop thread."""

    def __init__(self, host: str, port: int, world=None):
        self.upstream = (host, port)
        self.world = None
        self.port: int | None = None
        self.connections = 0
        self.quieted = 0
        self._conns: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lanterne-fault-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        if world is not None:
            self.follow(world)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, scheme: str = "mqtt") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                for w in conn.writers:
                    w.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if self.world is not None:
            self.world.unsubscribe(self._on_world)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def follow(self, world) -> None:
        """Take the faults from `world` (a board's World) from now on."""
        if self.world is not None:
            self.world.unsubscribe(self._on_world)
        self.world = world
        world.subscribe(self._on_world)

    # -- faults -------------------------------------------------------------------------------
    def _fault(self, kind: str) -> bool:
        return self.world is not None and self.world.fault("broker", kind)

    def _on_world(self, what, values) -> None:
        if what == "fault" and values.get("broker") in ("silent", "half_open"):
            self._loop.call_soon_threadsafe(self._quiet_all)

    def _quiet_all(self) -> None:
        for conn in self._conns:
            if not conn.quiet:
                conn.quiet = True
                self.quieted += 1

    def _delay(self, conn: _Connection, chunk: bytes, to_broker: bool) -> float:
        if self._fault("slow"):
            return float(self.world.get("net_delay_s"))
        if self._fault("slow_tls") and not conn.tls_done:
            if to_broker and chunk[:1] == b"\x17":
                conn.tls_done = True  # the board's first application data: the handshake is over
                return 0.0
            if chunk[:1] in (b"\x14", b"\x16"):
                return float(self.world.get("net_delay_s"))
        return 0.0

    # -- connections -------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection()
        self.connections += 1
        self._conns.add(conn)
        conn.writers.append(writer)
        try:
            if self._fault("silent"):
                conn.quiet = True
                self.quieted += 1
                await self._drain_until_closed(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                # the broker refused: the board sees its connection reset
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                return
            conn.writers.append(up_writer)
            for w in (writer, up_writer):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(
                self._pump(conn, reader, up_writer, to_broker=True),
                self._pump(conn, up_reader, writer, to_broker=False),
            )
        finally:
            self._conns.discard(conn)
            for w in conn.writers:
                w.close()

    async def _drain_until_closed(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    async def _pump(self, conn: _Connection, reader, writer, to_broker: bool) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if conn.quiet:
                    continue
                delay = self._delay(conn, chunk, to_broker)
                if delay:
                    await asyncio.sleep(delay)
                if conn.quiet:
                    continue
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        if conn.quiet:
            # through a network that lost the connection, neither side hears the other close:
            # each finds out on its own (the board through its timeouts, the broker through the
            # keepalive); the connection ends when both pumps have
            return
        writer.close()  # one side closed: the other hears it
