# Lanterne MQTT link over umqtt.simple: per-device credentials, last will, retained status,
# QoS 1 publishes, socket timeouts on every call, reconnect with exponential backoff + jitter.
import io
import random
import socket as _socket
import time

import umqtt.simple as _umqtt

TOPIC_ROOT = "lanterne/v1"


def _mem_alloc():
    import gc

    return gc.mem_alloc()


def _ioctl(sock, req, arg):
    if req == 3:
        import select

        p = select.poll()
        p.register(sock, arg)
        r = p.poll(0)
        return (r[0][1] & arg) if r else 0
    if req == 4:
        sock.close()
        return 0
    return 0


def raw_socket(sock):
    # The operating-system socket under our wrappers (the virtual board's socket shim keeps
    # it in `_s`), which asyncio's poller can wait on directly.
    sock = getattr(sock, "s", sock)
    return getattr(sock, "_s", sock)


class _TimedSocket(io.IOBase):
    # umqtt.simple opens its socket itself, never sets a timeout, and its check_msg() ends
    # with setblocking(True), which would drop any timeout: keep one on every blocking call.
    def __init__(self, *args):
        self.s = _socket.socket(*args)
        self.s.settimeout(_Sockets.timeout)
        try:
            # umqtt writes a packet in 3-5 small writes: without TCP_NODELAY, Nagle's
            # algorithm and the peer's delayed ACK add ~40 ms to every command and ack.
            self.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
        except Exception:
            pass
        _Sockets.last = self

    def connect(self, addr):
        self.s.connect(addr)

    def setblocking(self, flag):
        if flag:
            self.s.settimeout(_Sockets.timeout)
        else:
            self.s.setblocking(False)

    def settimeout(self, t):
        self.s.settimeout(t)

    def write(self, buf, n=None):
        return self.s.write(buf) if n is None else self.s.write(buf, n)

    def read(self, n):
        return self.s.read(n)

    def readinto(self, buf, n=None):
        return self.s.readinto(buf) if n is None else self.s.readinto(buf, n)

    def ioctl(self, req, arg):
        # Stream ioctls the TLS layer and select.poll use: 3 = poll, 4 = close.
        return _ioctl(self.s, req, arg)

    def setsockopt(self, *args):
        self.s.setsockopt(*args)

    def close(self):
        self.s.close()


class _Sockets:
    # Stands in for the socket module inside umqtt.simple (on the virtual board, the
    # socket module follows the simulated link).
    timeout = 5
    last = None
    getaddrinfo = staticmethod(_socket.getaddrinfo)
    socket = _TimedSocket


_umqtt.socket = _Sockets


def _readable(sock):
    # Park this task in asyncio's poller until `sock` is readable (the scheduler's own
    # mechanism that asyncio streams use).
    from asyncio import core

    yield core._io_queue.queue_read(sock)


def topics(site, device):
    base = "%s/%s/%s/" % (TOPIC_ROOT, site, device)
    return {
        "up": base + "up",
        "status": base + "status",
        "cmd": base + "cmd",
        "ack": base + "ack",
    }


class MqttLink:
    def __init__(self, cfg, on_message=None, timeout_s=5):
        from lanterne.config import parse_broker

        self.cfg = cfg
        self.host, self.port, self.tls = parse_broker(cfg["broker"])
        self.topics = topics(cfg["site"], cfg["device"])
        self.on_message = on_message
        self.client = None
        self.connected = False
        self.failures = 0
        self.next_try = time.ticks_ms()
        self.last_error = None
        self.connects = 0
        _Sockets.timeout = timeout_s

    def tls_params(self):
        # Server verification on, hostname checked, against the CA provisioned in config.json.
        import binascii
        import ssl

        pem = self.cfg["ca_cert"]
        if not pem:
            raise ValueError("mqtts:// needs ca_cert in config.json")
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        der = binascii.a2b_base64(body.replace("\n", "").replace("\r", ""))
        return {"cadata": der, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": self.host}

    def backoff_ms(self):
        # Exponential backoff with full jitter: 1 s, 2 s, 4 s ... capped at 5 min, so a
        # city's lamps do not all reconnect in the same second after a broker restart.
        cap = min(300000, 1000 << min(self.failures, 9))
        return cap // 2 + random.getrandbits(20) % (cap // 2 + 1)

    def due(self):
        return time.ticks_diff(time.ticks_ms(), self.next_try) >= 0

    def connect(self, online_payload):
        """One connection attempt. Returns True when connected and the online status is out."""
        self.close()
        c = _umqtt.MQTTClient(
            self.cfg["device"],
            self.host,
            self.port,
            user=self.cfg["mqtt_user"] or None,
            password=self.cfg["mqtt_password"] or None,
            keepalive=self.cfg["keepalive_s"],
            ssl=self.tls,
            ssl_params=self.tls_params() if self.tls else {},
        )
        c.set_last_will(self.topics["status"], b'{"state":"offline"}', retain=True, qos=1)
        if self.on_message:
            c.set_callback(self.on_message)
        try:
            if self.tls:
                gc_before = _mem_alloc()
            c.connect()
            self.sock_plain = _Sockets.last
            if self.tls:
                self.tls_heap = _mem_alloc() - gc_before
            self.client = c
            # Subscribe first: once "online" is out, commands sent to the board reach it.
            c.subscribe(self.topics["cmd"], qos=1)
            c.publish(self.topics["status"], online_payload, retain=True, qos=1)
        except Exception as e:  # OSError, MQTTException, assertion on a bad CONNACK
            self.last_error = "mqtt connect to %s:%d: %r" % (self.host, self.port, e)
            self.failures += 1
            self.next_try = time.ticks_add(time.ticks_ms(), self.backoff_ms())
            self.client = c
            self.close()
            return False
        self.connected = True
        self.failures = 0
        self.connects += 1
        self.last_error = None
        self.last_io = time.ticks_ms()
        return True

    def publish(self, topic, payload, retain=False, qos=1):
        """Publish; for QoS 1 returns only after the PUBACK. Raises OSError when the link broke."""
        try:
            self.client.publish(topic, payload, retain, qos)
            self.last_io = time.ticks_ms()
        except Exception as e:
            self._lost(e)
            raise OSError("mqtt publish failed: %r" % e)

    def poll(self):
        """Handle incoming messages and keep the connection alive. False when the link is lost."""
        if not self.connected:
            return False
        try:
            self.client.check_msg()
            if time.ticks_diff(time.ticks_ms(), self.last_io) > self.cfg["keepalive_s"] * 500:
                self.client.ping()
                self.last_io = time.ticks_ms()
        except Exception as e:
            self._lost(e)
            return False
        return True

    async def wait_readable(self, ms):
        """Sleep until the broker sends something or `ms` pass, without polling in a loop."""
        import asyncio

        if not self.connected:
            await asyncio.sleep_ms(ms)
            return
        try:
            # With TLS, decrypted bytes may already wait in the TLS layer: poll() catches
            # those on the next round; the wait is bounded by `ms` anyway.
            await asyncio.wait_for_ms(_readable(raw_socket(self.sock_plain)), ms)
        except asyncio.TimeoutError:
            pass
        except Exception as e:  # a socket the poller refuses: fall back to a short sleep
            await asyncio.sleep_ms(min(ms, 50))

    def _lost(self, e):
        self.last_error = "mqtt link lost: %r" % (e,)
        self.failures += 1
        self.next_try = time.ticks_add(time.ticks_ms(), self.backoff_ms())
        self.close()

    def close(self):
        self.connected = False
        if self.client and self.client.sock:
            try:
                self.client.sock.close()
            except Exception:
                pass
        self.client = None
