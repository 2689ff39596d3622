# Lanterne MQTT link (MQTT 3.1.1 over TCP or TLS), driven non-blocking from asyncio: per-device
# credentials, last will, retained status, QoS 1 publishes committed only on their PUBACK,
# keepalive pings that find a dead connection, reconnect with backoff and jitter (link.py).
#
# No network wait holds the loop: the TCP connect, the TLS handshake's network round trips, and
# every CONNACK, SUBACK, PUBACK and PINGRESP are awaited through the loop's poller, each bounded
# by `timeout_ms`; names are looked up off the loop (netio.py). What still runs in one go is CPU
# work: the TLS handshake's certificate check and key exchange happen inside single mbedtls calls
# (MicroPython's ssl has no do_handshake(): with do_handshake_on_connect=False on a non-blocking
# socket, each write or read advances the handshake as far as the data allows).
#
# Packets are built here into one preallocated buffer (umqtt.simple 1.3.4 writes them in 3-5
# small blocking writes and reads its answers inline, which cannot be awaited); tests check them
# byte for byte against umqtt.simple's encoding. A reader task owns the socket's read side once
# the CONNACK is in: it answers PINGRESPs, hands each PUBLISH on our command topic to
# on_downlink (and PUBACKs it), and wakes the one publish in flight when its PUBACK arrives.
import errno
import time

import asyncio
import socket
from micropython import const

from lanterne import netio
from lanterne.transport.link import CONNECTING, OFFLINE, ONLINE, READINGS, STATUS, Link

TOPIC_ROOT = "lanterne/v1"
FRAME_MAX = const(242)  # the codec's frame (the largest EU868 LoRaWAN payload): fine for MQTT
TX_MAX = const(768)  # one packet built here: a status JSON fits whole
RX_MAX = const(512)  # incoming packets: commands are at most 200 bytes (commands.MAX_FRAME)

_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)

_PINGREQ = b"\xc0\x00"
_PENDING = const(-1)  # no answer yet
_LOST = const(-2)  # the link went down while waiting


def topics(site, device):
    base = "%s/%s/%s/" % (TOPIC_ROOT, site, device)
    return {
        "up": base + "up",
        "status": base + "status",
        "cmd": base + "cmd",
        "ack": base + "ack",
    }


def _put_str(buf, i, s):
    # MQTT string: 2-byte big-endian length, then the bytes
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2 : i + 2 + n] = s
    return i + 2 + n


def _put_header(buf, first, remaining):
    # fixed header: type and flags, then the remaining length (1..4 bytes, 7 bits each)
    buf[0] = first
    i = 1
    while True:
        b = remaining & 0x7F
        remaining >>= 7
        buf[i] = b | (0x80 if remaining else 0)
        i += 1
        if not remaining:
            return i


def connect_packet(buf, client_id, keepalive, will_topic=None, will=None, will_qos=0, will_retain=False, user=None, password=None):
    """CONNECT (clean session) into `buf`; returns its length."""
    flags = 0x02
    n = 10 + 2 + len(client_id)
    if will_topic:
        flags |= 0x04 | will_qos << 3 | (0x20 if will_retain else 0)
        n += 2 + len(will_topic) + 2 + len(will)
    if user:
        flags |= 0x80
        n += 2 + len(user)
    if password:
        flags |= 0x40
        n += 2 + len(password)
    i = _put_header(buf, 0x10, n)
    i = _put_str(buf, i, b"MQTT")
    buf[i] = 4  # protocol level: 3.1.1
    buf[i + 1] = flags
    buf[i + 2] = keepalive >> 8
    buf[i + 3] = keepalive & 0xFF
    i = _put_str(buf, i + 4, client_id)
    if will_topic:
        i = _put_str(buf, i, will_topic)
        i = _put_str(buf, i, will)
    if user:
        i = _put_str(buf, i, user)
    if password:
        i = _put_str(buf, i, password)
    return i


def publish_header(buf, topic, payload_len, pid, qos=1, retain=False):
    """PUBLISH fixed and variable header into `buf` (the payload follows); returns its length."""
    n = 2 + len(topic) + payload_len + (2 if qos else 0)
    i = _put_header(buf, 0x30 | qos << 1 | (1 if retain else 0), n)
    i = _put_str(buf, i, topic)
    if qos:
        buf[i] = pid >> 8
        buf[i + 1] = pid & 0xFF
        i += 2
    return i


def subscribe_packet(buf, topic, pid, qos=1):
    i = _put_header(buf, 0x82, 2 + 2 + len(topic) + 1)
    buf[i] = pid >> 8
    buf[i + 1] = pid & 0xFF
    i = _put_str(buf, i + 2, topic)
    buf[i] = qos
    return i + 1


class MqttLink(Link):
    def __init__(self, cfg, on_downlink, timeout_ms=5000):
        from lanterne.config import parse_broker

        Link.__init__(self, on_downlink)
        self.cfg = cfg
        self.host, self.port, self.tls = parse_broker(cfg["broker"])
        self.topics = topics(cfg["site"], cfg["device"])
        t = self.topics
        self._topic = (t["up"].encode(), t["status"].encode(), t["ack"].encode())  # by frame kind
        self._cmd = t["cmd"].encode()
        self.timeout_ms = timeout_ms
        self.keepalive_ms = cfg["keepalive_s"] * 1000
        self.tls_heap = None  # heap the TLS session took (bytes), measured at each connect
        self._tls_before = 0
        self._tx = bytearray(TX_MAX)
        self._rx = bytearray(RX_MAX)
        self._rxv = memoryview(self._rx)
        self._have = 0  # bytes waiting in _rx
        self._skip = 0  # bytes of an oversized packet still to drop
        self._sock = None  # what we read and write (the TLS socket over TCP, or TCP itself)
        self._tcp = None
        self._ctx = None
        self._reader = None
        self._pid = 0
        self._want = 0  # the answer the request in flight waits for: type << 16 | packet id
        self._got = _PENDING
        self._answer = asyncio.Event()
        self._flight = asyncio.Lock()  # one request (QoS 1 publish ...) in flight: frames commit in order
        self._wlock = asyncio.Lock()  # one packet written at a time
        self._acks_due = []  # packet ids of commands received, to PUBACK
        self._puback = bytearray(b"\x40\x02\x00\x00")  # the reader's own buffer: PUBACK
        self._hlen = 0
        self._last_tx = self._last_rx = self._ping_sent = 0
        self._pinging = False

    # -- link contract --------------------------------------------------------------------
    def max_frame(self, kind):
        return FRAME_MAX if kind == READINGS else 65535

    async def connect(self, hello):
        """One attempt: DNS, TCP, TLS, CONNECT/CONNACK, SUBSCRIBE/SUBACK, then `hello()` as the
        retained status. Returns True when all of it went through."""
        self.close()
        self.state = CONNECTING
        step = "dns"
        try:
            addr = await netio.resolve(self.host, self.port)
            step = "tcp"
            await self._open(addr)
            step = "connect"
            async with self._flight:
                n = self._connect_packet()
                # with TLS this write drives the handshake: it waits on the server's flights
                rc = await self._request(n, None, _CONNACK << 16)
                if rc:
                    raise OSError("CONNACK refused, code %d" % rc)
                if self.tls:
                    import gc

                    self.tls_heap = gc.mem_alloc() - self._tls_before
                self._reader = asyncio.create_task(self._read_loop())
                # Subscribe first: once "online" is out, commands sent to the board reach it.
                step = "subscribe"
                n = subscribe_packet(self._tx, self._cmd, self._next_pid(), 1)
                rc = await self._request(n, None, _SUBACK << 16 | self._pid)
                if rc & 0x80:
                    raise OSError("SUBACK refused, code %d" % rc)
                step = "status"
                if not await self._publish(STATUS, hello()):
                    raise OSError("online status not acknowledged")
        except Exception as e:  # OSError, a TLS error, a protocol error: this attempt failed
            why = "mqtt connect to %s:%d: %s: %r" % (self.host, self.port, step, e)
            if step in ("tcp", "connect"):
                netio.distrust(self.host, self.port)
            self._drop()
            self._went_down(why)
            return False
        self._came_up()
        return True

    async def send(self, kind, payload):
        """Publish one frame with QoS 1; True once its PUBACK is in."""
        if self.state != ONLINE:
            return False
        async with self._flight:
            return await self._publish(kind, payload)

    async def maintain(self):
        await asyncio.sleep_ms(200)
        if self.state != ONLINE:
            return
        now = time.ticks_ms()
        if self._pinging:
            if time.ticks_diff(now, self._ping_sent) > self.timeout_ms:
                self._lost("no PINGRESP within %d ms" % self.timeout_ms)
        elif time.ticks_diff(now, self._last_tx) > self.keepalive_ms // 2:
            self._pinging = True
            self._ping_sent = now
            try:
                await self._write(_PINGREQ, 2)
            except OSError as e:
                self._lost("ping: %r" % (e,))

    def close(self):
        """Drop the connection now (no DISCONNECT: the broker publishes the last will)."""
        if self.state == ONLINE:
            self.state = OFFLINE
            self.online.clear()
        self._drop()

    # -- connection ----------------------------------------------------------------------
    async def _open(self, addr):
        s = socket.socket()
        self._tcp = self._sock = s
        s.setblocking(False)
        try:
            # a command's ack is one small packet: without TCP_NODELAY, Nagle's algorithm and
            # the peer's delayed ACK would add ~40 ms to it
            s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
        except OSError:
            pass
        try:
            s.connect(addr)
        except OSError as e:
            if e.errno != errno.EINPROGRESS:
                raise
        if not await netio.writable(s, self.timeout_ms):
            raise OSError(errno.ETIMEDOUT)
        if self.tls:
            import gc
            import ssl

            self._tls_before = gc.mem_alloc()
            if self._ctx is None:
                self._ctx = self._tls_context(ssl)
            # no handshake yet: the CONNECT write drives it, waiting between its round trips
            self._sock = self._ctx.wrap_socket(s, server_hostname=self.host, do_handshake_on_connect=False)
        self._have = self._skip = 0
        self._acks_due.clear()
        self._pinging = False
        self._last_rx = self._last_tx = time.ticks_ms()

    def _tls_context(self, ssl):
        # Server verification on, hostname checked, against the CA provisioned in config.json.
        import binascii

        pem = self.cfg["ca_cert"]
        if not pem:
            raise ValueError("mqtts:// needs ca_cert in config.json")
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=binascii.a2b_base64(body.replace("\n", "").replace("\r", "")))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _connect_packet(self):
        c = self.cfg
        return connect_packet(
            self._tx,
            c["device"].encode(),
            c["keepalive_s"],
            self._topic[STATUS],
            b'{"state":"offline"}',
            1,
            True,
            c["mqtt_user"].encode() or None,
            c["mqtt_password"].encode() or None,
        )

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def _lost(self, why):
        # The connection broke: wake whoever waits on it; once it was up, that is a failure
        # of its own (while connecting, connect() reports the attempt).
        was_up = self.state == ONLINE
        self._drop()
        if was_up:
            self._went_down("mqtt link lost: %s" % why)

    def _drop(self):
        # wake a request waiting for its answer: it returns False at once
        self._got = _LOST
        self._answer.set()
        r = self._reader
        self._reader = None
        if r is not None:
            try:
                if r is not asyncio.current_task():
                    r.cancel()  # takes it off the poller before the socket closes
            except RuntimeError:
                pass
        s = self._sock
        self._sock = self._tcp = None
        if s is not None:
            _forget(s)
            try:
                s.close()
            except OSError:
                pass

    # -- writing ---------------------------------------------------------------------------
    async def _publish(self, kind, payload):
        # (flight lock held) one QoS 1 PUBLISH, True once its PUBACK is in
        if isinstance(payload, str):
            payload = payload.encode()
        pid = self._next_pid()
        n = publish_header(self._tx, self._topic[kind], len(payload), pid, 1, kind == STATUS)
        try:
            rc = await self._request(n, payload, _PUBACK << 16 | pid)
        except OSError as e:
            self._lost("%s publish: %r" % (("up", "status", "ack")[kind], e))
            return False
        return rc == 0

    async def _request(self, n, payload, want):
        # Write self._tx[:n] (+ payload) and wait for the packet `want`; returns its code.
        self._want = want
        self._got = _PENDING
        self._answer.clear()
        await self._write(self._tx, n, payload)
        if self._reader is None:  # connecting: read the answer here
            t0 = time.ticks_ms()
            while self._got == _PENDING:
                left = self.timeout_ms - time.ticks_diff(time.ticks_ms(), t0)
                if left <= 0 or not await netio.readable(self._sock, left):
                    raise OSError(errno.ETIMEDOUT)
                self._receive()
        elif self._got == _PENDING:
            try:
                await asyncio.wait_for_ms(self._answer.wait(), self.timeout_ms)
            except asyncio.TimeoutError:
                raise OSError(errno.ETIMEDOUT)
        if self._got == _LOST:
            raise OSError(errno.ECONNABORTED)
        return self._got

    async def _write(self, buf, n, payload=None):
        async with self._wlock:
            s = self._sock
            if s is None:
                raise OSError(errno.ENOTCONN)
            if payload is not None:
                k = len(payload)
                if n + k <= TX_MAX and buf is self._tx:
                    buf[n : n + k] = payload  # one write, one TCP segment
                    n += k
                    payload = None
            await self._write_all(s, buf, n)
            if payload is not None:
                await self._write_all(s, payload, len(payload))
            self._last_tx = time.ticks_ms()

    async def _write_all(self, s, buf, n):
        mv = memoryview(buf)
        off = 0
        t0 = time.ticks_ms()
        stalls = 0
        while off < n:
            k = s.write(mv[off:n])
            if k:
                off += k
                stalls = 0
                continue
            left = self.timeout_ms - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                raise OSError(errno.ETIMEDOUT)
            if self._reader is None and self.tls:
                # the TLS handshake wants the server's next flight (or room to send: checked
                # again after 50 ms); nobody else reads this socket yet
                await netio.readable(s, min(left, 50))
            elif stalls:
                await asyncio.sleep_ms(20)  # writable, yet TLS took nothing: let it breathe
            else:
                await netio.writable(s, min(left, 1000))
            stalls += 1

    # -- reading ---------------------------------------------------------------------------
    async def _read_loop(self):
        s = self._sock
        try:
            while self._sock is s:
                await netio.wait_read(s)
                if self._sock is not s:
                    return
                if not self._receive():
                    self._lost("closed by the broker")
                    return
                while self._acks_due:
                    pid = self._acks_due.pop(0)
                    self._puback[2] = pid >> 8
                    self._puback[3] = pid & 0xFF
                    await self._write(self._puback, 4)
        except OSError as e:
            if self._sock is s:
                self._lost("read: %r" % (e,))

    def _receive(self):
        # Read everything the socket has (a TLS record may hold several packets: nothing may be
        # left in the TLS layer) and handle each complete packet. False when the peer closed.
        s = self._sock
        rx = self._rx
        while True:
            k = s.readinto(self._rxv[self._have :])
            if k is None:
                return True
            if k == 0:
                return False
            self._last_rx = time.ticks_ms()
            self._have += k
            while self._have:
                if self._skip:  # the rest of a packet too large to keep
                    d = min(self._skip, self._have)
                    self._skip -= d
                    self._shift(d)
                    continue
                rem = self._remaining()
                if rem < 0:
                    break  # the fixed header is not all in yet
                size = self._hlen + rem
                if size > RX_MAX:
                    print("[lanterne] mqtt: dropped a %d-byte packet (type 0x%02x): too large" % (size, rx[0]))
                    self._skip = size
                    continue
                if self._have < size:
                    break
                self._handle(rx[0], self._hlen, rem)
                self._shift(size)

    def _remaining(self):
        # The remaining length of the packet at _rx[0] (its fixed header is _hlen bytes), or -1
        # while the header is not all in.
        rx = self._rx
        rem = 0
        i = 1
        while i < self._have:
            b = rx[i]
            rem |= (b & 0x7F) << (7 * (i - 1))
            i += 1
            if not b & 0x80:
                self._hlen = i
                return rem
            if i > 4:
                raise OSError("mqtt: malformed remaining length")
        return -1

    def _shift(self, n):
        rest = self._have - n
        if rest:
            self._rx[:rest] = self._rxv[n : self._have]
        self._have = rest

    def _handle(self, first, i, rem):
        rx = self._rx
        kind = first & 0xF0
        if kind == _PUBLISH:
            qos = (first >> 1) & 3
            tl = rx[i] << 8 | rx[i + 1]
            t = i + 2
            p = t + tl
            pid = 0
            if qos:
                pid = rx[p] << 8 | rx[p + 1]
                p += 2
            # Only our own command topic is ever a command (some brokers have delivered other
            # topics to a subscriber: never treat those as commands).
            if self._is_cmd(t, tl):
                self.on_downlink(bytes(self._rxv[p : i + rem]))
            else:
                print("[lanterne] ignored a message on %s: not our command topic" % bytes(self._rxv[t:p]))
            if qos == 1:
                self._acks_due.append(pid)
            return
        code = 0
        if kind == _CONNACK:
            code = rx[i + 1]
            pid = 0
        elif kind == _SUBACK:
            pid = rx[i] << 8 | rx[i + 1]
            code = rx[i + 2]
        elif kind == _PUBACK:
            pid = rx[i] << 8 | rx[i + 1]
        elif kind == _PINGRESP:
            self._pinging = False
            return
        else:
            return
        if (kind << 16 | pid) == self._want and self._got == _PENDING:
            self._got = code
            self._answer.set()

    def _is_cmd(self, t, tl):
        c = self._cmd
        if tl != len(c):
            return False
        rx = self._rx
        for j in range(tl):
            if rx[t + j] != c[j]:
                return False
        return True


def _forget(s):
    # Take a socket off the loop's poller before it closes (a closed descriptor left there would
    # make every poll return at once); a task still waiting on it finds out through its timeout.
    try:
        from asyncio import core

        q = core._io_queue
        if id(s) in q.map:
            q._dequeue(s)
    except Exception:
        pass
