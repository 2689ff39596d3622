# Lanterne MQTT link (MQTT 3.1.1 over TCP or TLS), driven non-blocking from asyncio: per-device
# credentials, last will, retained status, QoS 1 publishes committed only on their PUBACK,
# keepalive pings that find a dead connection, reconnect with backoff and jitter (link.py).
#
# No network wait holds the loop: the TCP connect, the TLS handshake's round trips, and every
# CONNACK, SUBACK, PUBACK and PINGRESP are awaited through the loop's poller, each bounded by
# TIMEOUT_MS; names are looked up off the loop (netio.py). What still runs in one go is CPU
# work: the TLS handshake's certificate check and key exchange happen inside single mbedtls
# calls (MicroPython's ssl has no do_handshake(): with do_handshake_on_connect=False on a
# non-blocking socket, each write or read advances the handshake as far as the data allows).
#
# Packets are built here into one preallocated buffer: umqtt.simple 1.3.4 writes them in 3-5
# small blocking writes and reads its answers inline, which cannot be awaited; tests check these
# packets byte for byte against umqtt.simple's. Once the CONNACK is in, a reader task owns the
# socket's read side: it notes PINGRESPs, hands each PUBLISH on our command topic to on_downlink
# (and each on ota/data to on_update while an update runs), PUBACKs them, and wakes the one
# publish in flight when its PUBACK arrives.
import errno
import time

import asyncio
import socket
from micropython import const

from lanterne import netio
from lanterne.transport.link import CONNECTING, OFFLINE, READINGS, STATUS, Flag, Link

_TOPIC_ROOT = "lanterne/v1"
TIMEOUT_MS = const(5000)  # every network wait: TCP connect, each TLS round trip, each answer
FRAME_MAX = const(242)  # the codec's frame (the largest EU868 LoRaWAN payload): fine for MQTT
TX_MAX = const(192)  # a packet's header, and its payload too when it fits (a short ack does)
RX_MAX = const(384)  # incoming packets: a command is at most 200 bytes (commands.MAX_FRAME) + topic
# link.OTA_REQ and link.OTA_PROGRESS, as constants of this module: imported, each would be one
# more entry in its globals, for every board, updating or not
_OTA_REQ = const(3)
_OTA_PROGRESS = const(4)

_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)
_PINGREQ = b"\xc0\x00"
_PENDING = const(-1)  # no answer yet
_LOST = const(-2)  # the link went down while waiting


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


def connect_packet(client_id, keepalive, will_topic=None, will=None, will_qos=0, will_retain=False, user=None, password=None,
                   clean=True):
    """CONNECT: a bytearray of its own (once per connection; credentials may be long). clean=False:
    the broker keeps the session (subscription, QoS 1 commands queued while the board sleeps)."""
    flags = 0x02 if clean else 0
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
    buf = bytearray(n + 5)
    i = _put_str(buf, _put_header(buf, 0x10, n), b"MQTT")
    buf[i] = 4  # protocol level: 3.1.1
    buf[i + 1] = flags
    buf[i + 2] = keepalive >> 8
    buf[i + 3] = keepalive & 0xFF
    i = _put_str(buf, i + 4, client_id)
    if will_topic:
        i = _put_str(buf, _put_str(buf, i, will_topic), will)
    if user:
        i = _put_str(buf, i, user)
    if password:
        i = _put_str(buf, i, password)
    return memoryview(buf)[:i]


def publish_header(buf, topic, payload_len, pid, qos=1, retain=False):
    """PUBLISH fixed and variable header into `buf` (the payload follows); returns its length."""
    i = _put_header(buf, 0x30 | qos << 1 | (1 if retain else 0), 2 + len(topic) + payload_len + (2 if qos else 0))
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


def parse_broker(url):
    """'mqtts://host:port' -> (host, port, tls) (config.py checked the scheme)."""
    tls = url.startswith("mqtts://")
    rest = url.split("://", 1)[1].rstrip("/")
    if ":" in rest:
        host, port = rest.rsplit(":", 1)
        return host, int(port), tls
    return rest, 8883 if tls else 1883, tls


class MqttLink(Link):
    name = "mqtt"  # the app's fault key for this link
    # The update channel's state, set on the instance only once an update opens it (updates()):
    # until then a board carries nothing for it (its instance dict stays the size it was).
    _ota = None  # (ota/req, ota/progress, ota/data) topics
    _ota_sub = False  # ota/data subscribed on this connection

    def __init__(self, cfg, on_downlink):
        Link.__init__(self, on_downlink)
        self.cfg = cfg
        self.host, self.port, self.tls = parse_broker(cfg["broker"])
        base = "%s/%s/%s/" % (_TOPIC_ROOT, cfg["site"], cfg["device"])
        # by frame kind (READINGS, STATUS, ACK), then the command topic
        self._topic = ((base + "up").encode(), (base + "status").encode(), (base + "ack").encode(), (base + "cmd").encode())
        self.tls_heap = None  # heap the TLS session took (bytes), measured at each connect
        self._tx = bytearray(TX_MAX)
        self._rx = memoryview(bytearray(RX_MAX))
        self._have = 0  # bytes waiting in _rx
        self._skip = 0  # bytes of an oversized packet still to drop
        self._sock = None  # what we read and write: the TLS socket over TCP, or TCP itself
        self._ctx = None
        self._reader = None
        self._pid = 0
        self._want = 0  # the answer the request in flight waits for: type << 16 | packet id
        self._got = _PENDING
        self._answer = Flag()
        self._writing = False  # a packet is being written: the reader's PUBACKs and pings wait
        self._acks_due = []  # packet ids of commands received, to PUBACK
        self._puback = bytearray(b"\x40\x02\x00\x00")  # the reader's own buffer
        self._last_tx = 0
        self._ping = 0  # when the PINGREQ in flight went out (0: none)
        self.clean = True  # False on a battery board (lanterne/wake.py): commands wait at the broker while it sleeps

    def max_frame(self, kind):
        return FRAME_MAX if kind == READINGS else 65535

    def updates(self, on_update, nbytes):
        """Open (or with None close) the update channel: messages on ota/data of up to `nbytes`
        go to on_update. Subscribed before the next frame goes out (send()), on each connection."""
        self.on_update = on_update
        if self._ota is None:  # (str constants: each bytes constant is an object on the heap)
            base = self._topic[3][:-3].decode()
            self._ota = ((base + "ota/req").encode(), (base + "ota/progress").encode(), (base + "ota/data").encode())
        n = RX_MAX
        if on_update is not None:
            # a PUBLISH: fixed header (<= 5 bytes), topic (2 + its length), packet id (2), payload
            n = max(RX_MAX, nbytes + len(self._ota[2]) + 9)
        # The receive buffer at n bytes, what it holds kept (left as it is while it holds more:
        # the next connection starts empty and sizes it again, _open)
        if n != len(self._rx) and self._have <= n:
            rx = memoryview(bytearray(n))
            rx[: self._have] = self._rx[: self._have]
            self._rx = rx

    async def connect(self, hello):
        """One attempt: DNS, TCP, TLS, CONNECT/CONNACK, SUBSCRIBE/SUBACK, then `hello()` as the
        retained status. True when all of it went through."""
        self.close()
        self.state = CONNECTING
        step = "dns"
        try:
            addr = await netio.resolve(self.host, self.port)
            step = "tcp"
            before = await self._open(addr)
            step = "connect"
            c = self.cfg
            packet = connect_packet(
                c["device"].encode(),
                c["keepalive_s"],
                self._topic[STATUS],
                b'{"state":"offline"}',
                1,
                True,
                c["mqtt_user"].encode() or None,
                c["mqtt_password"].encode() or None,
                self.clean,
            )
            # with TLS this write drives the handshake, waiting on the server's flights
            rc = await self._request(0, packet, _CONNACK << 16)
            packet = None
            if rc:
                raise OSError("CONNACK refused, code %d" % rc)
            if self.tls:
                import gc

                self.tls_heap = gc.mem_alloc() - before
            self._reader = asyncio.create_task(self._read_loop())
            # Subscribe first: once "online" is out, commands sent to the board reach it.
            step = "subscribe"
            self._pid = self._pid % 65535 + 1
            rc = await self._request(subscribe_packet(self._tx, self._topic[3], self._pid, 1), None, _SUBACK << 16 | self._pid)
            if rc & 0x80:
                raise OSError("SUBACK refused, code %d" % rc)
            step = "status"
            if not await self._publish(STATUS, hello()):
                raise OSError("online status not acknowledged")
        except Exception as e:  # OSError, a TLS error, a protocol error: this attempt failed
            if step in ("tcp", "connect"):
                netio.distrust(self.host, self.port)
            self._drop()
            self._went_down("mqtt connect to %s:%d: %s: %r" % (self.host, self.port, step, e))
            return False
        self._came_up()
        return True

    async def send(self, kind, payload):
        """Publish one frame with QoS 1 (an update's request: QoS 0); True once its PUBACK is in
        (QoS 0: once written)."""
        if not self.up:
            return False
        if self.on_update is not None and not self._ota_sub:
            try:
                self._pid = self._pid % 65535 + 1
                rc = await self._request(subscribe_packet(self._tx, self._ota[2], self._pid, 1), None, _SUBACK << 16 | self._pid)
            except OSError as e:
                self._lost("ota/data subscribe: %r" % (e,))
                return False
            if rc & 0x80:  # the broker's ACL: no update can arrive; the updater's requests time out
                print("[lanterne] mqtt: subscription to ota/data refused (code %d)" % rc)
            self._ota_sub = True
        return await self._publish(kind, payload)

    async def maintain(self):
        await asyncio.sleep_ms(200)
        if not self.up:
            return
        now = time.ticks_ms()
        if self._ping:
            if time.ticks_diff(now, self._ping) > TIMEOUT_MS:
                self._lost("no PINGRESP within %d ms" % TIMEOUT_MS)
        elif time.ticks_diff(now, self._last_tx) > self.cfg["keepalive_s"] * 500 and not self._writing:
            self._ping = now
            try:
                await self._write(_PINGREQ, 2)
            except OSError as e:
                self._lost("ping: %r" % (e,))

    async def disconnect(self):
        """DISCONNECT, then close: the broker drops the last will (a battery board going to sleep is not offline)."""
        if self.up:
            try:
                await self._write(b"\xe0\x00", 2)
            except OSError:
                pass
        self.close()

    def close(self):
        """Drop the connection now (no DISCONNECT: the broker publishes the last will)."""
        self.state = OFFLINE
        self.up = False
        self._drop()

    # -- connection ----------------------------------------------------------------------
    async def _open(self, addr):
        s = self._sock = socket.socket()
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
        if not await netio.writable(s, TIMEOUT_MS):
            raise OSError(errno.ETIMEDOUT)
        self._have = self._skip = self._ping = 0
        if self._ota_sub:
            self._ota_sub = False
        if self.on_update is None and len(self._rx) != RX_MAX:
            self._rx = memoryview(bytearray(RX_MAX))
        self._acks_due.clear()
        self._last_tx = time.ticks_ms()
        if not self.tls:
            return 0
        import gc
        import ssl

        before = gc.mem_alloc()
        if self._ctx is None:
            # Server verification on, hostname checked, against the CA provisioned in config.json.
            import binascii

            pem = self.cfg["ca_cert"]
            if not pem:
                raise ValueError("mqtts:// needs ca_cert in config.json")
            body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=binascii.a2b_base64(body.replace("\n", "").replace("\r", "")))
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._ctx = ctx
        # no handshake yet: the CONNECT write drives it, waiting between its round trips
        self._sock = self._ctx.wrap_socket(s, server_hostname=self.host, do_handshake_on_connect=False)
        return before

    def _lost(self, why):
        # The connection broke: wake whoever waits on it; once it was up, that is a failure of
        # its own (while connecting, connect() reports the attempt).
        was_up = self.up
        self._drop()
        if was_up:
            self._went_down("mqtt link lost: %s" % why)

    def _drop(self):
        if self._got == _PENDING:  # (an answer that came just before the end still counts)
            self._got = _LOST
        self._answer.set()  # a request waiting for its answer returns at once
        r = self._reader
        self._reader = None
        if r is not None:
            try:
                if r is not asyncio.current_task():
                    r.cancel()  # takes it off the poller before the socket closes
            except RuntimeError:
                pass
        s = self._sock
        self._sock = None
        if s is not None:
            try:
                # off the loop's poller first (a closed descriptor left there would make every
                # poll return at once); a task still waiting on it ends through its timeout
                from asyncio import core

                if id(s) in core._io_queue.map:
                    core._io_queue._dequeue(s)
            except Exception:
                pass
            try:
                s.close()
            except OSError:
                pass

    # -- writing ---------------------------------------------------------------------------
    async def _publish(self, kind, payload):
        # One QoS 1 PUBLISH, True once its PUBACK is in (one at a time: the app's uplink task,
        # or connect() before the link is up)
        if isinstance(payload, str):
            # its UTF-8 bytes in place (MicroPython's memoryview takes a str; its len counts bytes):
            # a status is ~700 bytes that encode() would copy into one more block of that size
            payload = memoryview(payload)
        self._pid = pid = self._pid % 65535 + 1
        qos = 0 if kind == _OTA_REQ else 1
        topic = self._ota[kind - _OTA_REQ] if kind >= _OTA_REQ else self._topic[kind]  # (updates() named _ota)
        n = publish_header(self._tx, topic, len(payload), pid, qos, kind == STATUS or kind == _OTA_PROGRESS)
        try:
            if not qos:
                await self._write(self._tx, n, payload)
                return True
            return await self._request(n, payload, _PUBACK << 16 | pid) == 0
        except OSError as e:
            self._lost("%s publish: %r" % (("up", "status", "ack", "ota/req", "ota/progress")[kind], e))
            return False

    async def _request(self, n, payload, want):
        # Write self._tx[:n] (+ payload) and wait for the packet `want`; returns its code.
        self._want = want
        self._got = _PENDING
        self._answer.clear()
        await self._write(self._tx, n, payload)
        if self._reader is None:  # connecting: read the answer here
            t0 = time.ticks_ms()
            while self._got == _PENDING:
                left = TIMEOUT_MS - time.ticks_diff(time.ticks_ms(), t0)
                if left <= 0 or not await netio.readable(self._sock, left):
                    raise OSError(errno.ETIMEDOUT)
                if not self._receive() and self._got == _PENDING:
                    raise OSError("closed by the broker")  # (a refusing CONNACK may come just before)
        elif self._got == _PENDING:
            try:
                await asyncio.wait_for_ms(self._answer.wait(), TIMEOUT_MS)
            except asyncio.TimeoutError:
                raise OSError(errno.ETIMEDOUT)
        if self._got == _LOST:
            raise OSError(errno.ECONNABORTED)
        return self._got

    async def _write(self, buf, n, payload=None):
        # One whole packet; nothing else is written meanwhile (the reader's PUBACKs and the pings
        # wait while _writing: they are the only other writers)
        s = self._sock
        if s is None:
            raise OSError(errno.ENOTCONN)
        self._writing = True
        try:
            if payload is not None and n + len(payload) <= TX_MAX and buf is self._tx:
                buf[n : n + len(payload)] = payload  # one write, one TCP segment
                n += len(payload)
                payload = None
            await self._write_all(s, buf, n)
            if payload is not None:
                await self._write_all(s, payload, len(payload))
            self._last_tx = time.ticks_ms()
        finally:
            self._writing = False

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
            left = TIMEOUT_MS - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                raise OSError(errno.ETIMEDOUT)
            if self._reader is None and self.tls:
                # the TLS handshake wants the server's next flight (or room to send: tried again
                # after 50 ms); nobody else reads this socket yet
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
                    while self._writing:
                        await asyncio.sleep_ms(2)
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
        rx = self._rx
        cap = len(rx)
        while True:
            k = self._sock.readinto(rx[self._have :])
            if k is None:
                return True
            if k == 0:
                return False
            self._have += k
            while self._have:
                if self._skip:  # the rest of a packet too large to keep
                    k = min(self._skip, self._have)
                    self._skip -= k
                else:
                    # fixed header: type byte, then the remaining length, 7 bits a byte
                    rem = 0
                    i = 1
                    while i < self._have and i < 5:
                        rem |= (rx[i] & 0x7F) << (7 * (i - 1))
                        i += 1
                        if not rx[i - 1] & 0x80:
                            break
                    else:
                        if i == 5:
                            raise OSError("mqtt: malformed remaining length")
                        break  # the header is not all in yet
                    k = i + rem
                    if k > cap:
                        if rx[0] & 0xF6 > _PUBLISH:  # a PUBLISH with QoS: ack it, or it comes again forever
                            if self._have < i + 2 or self._have < i + 4 + (rx[i] << 8 | rx[i + 1]) <= cap:
                                break  # its packet id is not in yet
                            p = i + 2 + (rx[i] << 8 | rx[i + 1])
                            if p + 2 <= cap:
                                self._acks_due.append(rx[p] << 8 | rx[p + 1])
                        print("[lanterne] mqtt: dropped a %d-byte packet (type 0x%02x): too large" % (k, rx[0]))
                        self._skip = k
                        continue
                    if self._have < k:
                        break
                    self._handle(rx[0], i, rem)
                # drop the k bytes handled (what follows moves to the front, byte by byte: the
                # two ranges may overlap)
                self._have -= k
                for j in range(self._have):
                    rx[j] = rx[k + j]

    def _handle(self, first, i, rem):
        rx = self._rx
        kind = first & 0xF0
        if kind == _PUBLISH:
            qos = (first >> 1) & 3
            t = i + 2
            p = t + (rx[i] << 8 | rx[i + 1])
            pid = 0
            if qos:
                pid = rx[p] << 8 | rx[p + 1]
            # Only our own command topic is ever a command (some brokers have delivered other
            # topics to a subscriber: never treat those as commands).
            c = self._topic[3]
            for f in (self.on_downlink, self.on_update):
                mine = f is not None and p - t == len(c)
                j = 0
                while mine and j < len(c):
                    mine = rx[t + j] == c[j]
                    j += 1
                if mine:
                    f(bytes(rx[p + (2 if qos else 0) : i + rem]))
                    break
                c = self._ota and self._ota[2]
            else:
                print("[lanterne] ignored a message on %s: not our command topic" % bytes(rx[t:p]))
            if qos == 1:
                self._acks_due.append(pid)
            return
        code = pid = 0
        if kind == _CONNACK:
            code = rx[i + 1]
        elif kind == _SUBACK or kind == _PUBACK:
            pid = rx[i] << 8 | rx[i + 1]
            if kind == _SUBACK:
                code = rx[i + 2]
        elif kind == _PINGRESP:
            self._ping = 0
            return
        else:
            return
        if (kind << 16 | pid) == self._want and self._got == _PENDING:
            self._got = code
            self._answer.set()
