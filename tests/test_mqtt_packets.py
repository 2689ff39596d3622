"""The firmware's MQTT packets, byte for byte against umqtt.simple's; its reader against any chunking.

The firmware builds its MQTT 3.1.1 packets itself (transport/mqtt.py) so it can send them from
asyncio without blocking. umqtt.simple (micropython-lib, pinned, written by others) is the
reference for their bytes: the same CONNECT (will, credentials, keepalive), PUBLISH and SUBSCRIBE
must come out of both, recorded by a fake socket. The reader must handle the broker's bytes
however TCP (or TLS) cuts them: packets split anywhere, several in one read, one too large
(dropped as it streams past), only PUBLISHes on the board's own command topic handed on.
All on the unix port.
"""

from __future__ import annotations

import json

import pytest

from host_tools.runtime import unix_port

RECORDER = r"""
import json
import umqtt.simple as U
from lanterne.transport import mqtt as M

class Rec:
    # umqtt.simple's socket: records what it writes, answers its reads from a script
    def __init__(self, answers=b""):
        self.out = bytearray(); self.answers = bytearray(answers)
    def write(self, b, n=None):
        b = b.encode() if isinstance(b, str) else bytes(b)
        b = b if n is None else b[:n]
        self.out += b
        return len(b)
    def read(self, n):
        r = bytes(self.answers[:n]); self.answers = self.answers[n:]
        return r
    def setblocking(self, f):
        pass
    def connect(self, addr):
        pass

class FakeSocketModule:
    def __init__(self, rec): self.rec = rec
    def socket(self, *a): return self.rec
    def getaddrinfo(self, *a): return [(0, 0, 0, "", b"addr")]

def umqtt_connect(client_id, keepalive, will, user, password):
    rec = Rec(b"\x20\x02\x00\x00")
    U.socket = FakeSocketModule(rec)
    c = U.MQTTClient(client_id, "h", 1883, user=user, password=password, keepalive=keepalive)
    if will:
        c.set_last_will(will[0], will[1], retain=will[2], qos=will[3])
    c.connect()
    return bytes(rec.out)

def ours_connect(client_id, keepalive, will, user, password):
    enc = lambda s: s.encode() if isinstance(s, str) else s
    return bytes(M.connect_packet(enc(client_id), keepalive, enc(will[0]) if will else None, enc(will[1]) if will else None,
                                  will[3] if will else 0, will[2] if will else False, enc(user) if user else None,
                                  enc(password) if password else None))

def umqtt_publish(topic, msg, retain, pid):
    rec = Rec(b"\x40\x02" + bytes((pid >> 8, pid & 255)))
    c = U.MQTTClient("x", "h")
    c.sock = rec
    c.pid = pid - 1
    c.publish(topic, msg, retain, 1)
    return bytes(rec.out)

def ours_publish(topic, msg, retain, pid):
    buf = bytearray(300)
    n = M.publish_header(buf, topic.encode(), len(msg), pid, 1, retain)
    return bytes(buf[:n]) + msg

def umqtt_subscribe(topic, pid):
    rec = Rec(b"\x90\x03" + bytes((pid >> 8, pid & 255)) + b"\x01")
    c = U.MQTTClient("x", "h")
    c.set_callback(print)
    c.sock = rec
    c.pid = pid - 1
    c.subscribe(topic, 1)
    return bytes(rec.out)

def ours_subscribe(topic, pid):
    buf = bytearray(300)
    return bytes(buf[: M.subscribe_packet(buf, topic.encode(), pid, 1)])
"""


def _both(call: str) -> tuple[str, str]:
    out = unix_port.run(RECORDER + f"print(json.dumps([umqtt_{call}.hex(), ours_{call}.hex()]))\n", heapsize=1 << 20)
    theirs, ours = json.loads(out.strip().splitlines()[-1])
    return theirs, ours


@pytest.mark.parametrize(
    "args",
    [
        "('lamp-0042', 60, None, None, None)",
        "('lamp-0042', 60, ('lanterne/v1/lyon/lamp-0042/status', b'{\"state\":\"offline\"}', True, 1), None, None)",
        "('bin-7', 3600, ('lanterne/v1/s/bin-7/status', b'{\"state\":\"offline\"}', True, 1), 'bin-7', 's3cret-pass')",
        "('d' * 64, 10, ('t' * 200, b'w' * 300, False, 0), 'u' * 40, 'p' * 40)",  # a two-byte remaining length
    ],
)
def test_connect_is_byte_for_byte_umqtt_simples(args):
    theirs, ours = _both(f"connect{args}")
    assert ours == theirs


@pytest.mark.parametrize(
    "args",
    [
        "('lanterne/v1/s/d/up', b'\\x02' + bytes(range(40)), False, 1)",
        "('lanterne/v1/s/d/status', b'{\"state\":\"online\"}' * 30, True, 513)",  # > 127: two length bytes
        "('lanterne/v1/s/d/ack', bytes(20000), False, 65535)",  # > 16383: three length bytes
    ],
)
def test_publish_is_byte_for_byte_umqtt_simples(args):
    theirs, ours = _both(f"publish{args}")
    assert ours == theirs


def test_subscribe_is_byte_for_byte_umqtt_simples():
    theirs, ours = _both("subscribe('lanterne/v1/lyon/lamp-0042/cmd', 7)")
    assert ours == theirs


READER = r"""
import json
from lanterne.transport import mqtt as M

class Chunks:
    # a non-blocking socket that delivers `data` in the given chunk sizes, then "would block"
    def __init__(self, data, sizes):
        self.data = data; self.sizes = sizes; self.at = 0; self.k = 0
    def readinto(self, buf):
        if self.at >= len(self.data):
            return None
        n = min(self.sizes[self.k % len(self.sizes)], len(buf), len(self.data) - self.at)
        self.k += 1
        buf[:n] = self.data[self.at:self.at + n]
        self.at += n
        return n

cfg = {"broker": "mqtt://127.0.0.1:1883", "site": "s", "device": "d", "keepalive_s": 60}
got = []
link = M.MqttLink(cfg, lambda frame: got.append(frame.hex()))

def publish(topic, payload, qos, pid=0):
    buf = bytearray(1000)
    n = M.publish_header(buf, topic, len(payload), pid, qos, False)
    return bytes(buf[:n]) + payload

stream = (
    b"\x20\x02\x00\x00"                                   # CONNACK
    + publish(b"lanterne/v1/s/d/cmd", b"\x01" * 40, 1, 5)  # a command, QoS 1
    + b"\xd0\x00"                                         # PINGRESP
    + publish(b"lanterne/v1/s/other/cmd", b"\x02" * 10, 1, 6)  # another board's topic: ignored
    + publish(b"lanterne/v1/s/d/cmd", b"\x03" * 600, 1, 7)     # too large: dropped
    + publish(b"lanterne/v1/s/d/cmd", b"\x04" * 200, 1, 8)     # the largest command
    + b"\x90\x03\x00\x09\x01"                             # SUBACK pid 9
)
results = []
for sizes in SIZES:
    got.clear()
    link._have = link._skip = 0
    link._acks_due.clear()
    link._want = 0x90 << 16 | 9
    link._got = -1
    link._sock = Chunks(stream, sizes)
    while link._sock.at < len(stream):
        assert link._receive()
    results.append([got[:], link._acks_due[:], link._got, link._have])
print(json.dumps(results))
"""


def test_reader_handles_the_stream_however_it_is_cut():
    sizes = [[1], [2], [3], [7], [64], [4096], [1, 300, 2], [5, 1, 1, 200]]
    out = unix_port.run(READER.replace("SIZES", repr(sizes)))
    results = json.loads(out.strip().splitlines()[-1])
    expected = [["01" * 40, "04" * 200], [5, 6, 7, 8], 1, 0]
    for cut, r in zip(sizes, results, strict=True):
        assert r == expected, f"chunks of {cut}: {r}"
