"""The soak's command stream and security probes, and how their outcome is read.

Commands (`CommandStream`): the back office's legitimate commands, signed with each device's key
from the registry, acks awaited, a command without an ack resent once with the same frame (as a
back office retries: the board must ack again without running it twice); and attacks on the
command path: forged (signed with a wrong key), replayed (a frame the board already ran, sent
again later), cross-device (a valid frame for one device published to another's topic),
malformed (random bytes, truncated frames, a wrong version). Whether a board *ran* a command is
read from the board itself: the firmware logs `command N NAME: STATUS` for each command it
executes (lanterne/control.py) and nothing for one it refuses. Each execution is matched to
what was sent: a legitimate (device, counter) run twice is a double execution; any execution
that no legitimate command explains is an accepted attack.

Probes (`probe_broker`, `probe_rogue_broker`): MQTT clients with no credentials, a wrong
password, a device's own credentials publishing and subscribing outside its topic tree; raw
TCP clients sending an oversize packet, a malformed remaining length, a CONNECT with a wrong
protocol name, a PUBLISH before CONNECT; a TLS client trusting another CA; and a TLS board
whose proxy is pointed at an impostor broker (a certificate from another CA): the board must
send it nothing. Every probe returns whether the broker (or the board) let it in.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from host_tools.backoffice.command_client import CommandClient, next_counter
from host_tools.backoffice.command_client import cmd as commands
from host_tools.fleet.broker_files import DEVICE_SUBSCRIBES, device_topics
from host_tools.fleet.config import parse_broker_url

EXECUTED = re.compile(rb"\[lanterne\] command (\d+) ([a-z_]+): ([a-z_]+)\r?$", re.M)
ATTACK_OFFSET = {"forged": 20_000_000, "cross_device": 10_000_000}  # far above any legitimate counter of the run
ACK_TIMEOUT_S = 10.0
RETRY_AFTER_S = 5.0  # a back office's retry interval for a command without an ack


def executions(console: bytes) -> list[int]:
    """The counters of the commands a board executed, from its console (every boot), in order."""
    names = set(commands.NAMES.values())
    return [int(m.group(1)) for m in EXECUTED.finditer(console) if m.group(2).decode() in names]


@dataclass
class Sent:
    device: str
    counter: int | None
    kind: str  # legit, forged, replay, cross_device, malformed
    frame: bytes
    acked: bool = False
    status: str = ""
    retried: int = 0


@dataclass
class CommandLog:
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sent) -> None:
        with self.lock:
            self.sent.append(s)


class CommandStream:
    """Sends legitimate commands and attacks to the fleet's MQTT boards (see the module docstring)."""

    def __init__(self, url: str, user: str, password: str, devices: dict[str, dict], keys: dict[str, bytes],
                 counters: dict[str, int], rng):
        self.client = CommandClient(url, user, password)
        self.devices = devices  # id -> {"site", "lamp": bool}
        self.keys = keys
        self.counters = dict(counters)
        self.rng = rng
        self.log = CommandLog()
        self._executed_frames: list[Sent] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stopped = threading.Event()  # no more retries

    def _next(self, device: str) -> int:
        with self._lock:
            c = self.counters[device] = next_counter(self.counters.get(device, 0))
            return c

    def _publish(self, device: str, frame: bytes) -> None:
        self.client.watcher.publish(f"lanterne/v1/{self.devices[device]['site']}/{device}/cmd", frame, qos=1)

    # -- legitimate ----------------------------------------------------------------------------
    def legit(self) -> None:
        device = self.rng.choice(sorted(self.devices))
        if self.devices[device]["lamp"]:
            opcode, args = commands.SET_LAMP, {"level": self.rng.randrange(0, 101), "ramp_s": 0, "duration_min": 0}
        else:
            opcode, args = commands.REQUEST_STATUS, {}
        counter = self._next(device)
        frame = commands.build(self.keys[device], device, counter, opcode, args)
        s = Sent(device, counter, "legit", frame)
        self.log.add(s)
        t = threading.Thread(target=self._send_and_retry, args=(s, opcode), daemon=True)
        t.start()
        self._threads.append(t)

    def _send_and_retry(self, s: Sent, opcode: int) -> None:
        # As a back office does: the same frame again until the board answers (a board that ran
        # it and lost the ack acks it again without running it; one that ran a newer command
        # since answers "replay"), until the stream stops.
        while True:
            try:
                ack = self.client.send(self.devices[s.device]["site"], s.device, self.keys[s.device], s.counter, opcode,
                                       frame=s.frame, timeout=ACK_TIMEOUT_S)
                s.acked = True
                s.status = ack.reason
                if ack.status in (commands.OK, commands.REFUSED):
                    with self._lock:
                        self._executed_frames.append(s)
                return
            except (TimeoutError, RuntimeError, OSError):  # no ack, or the broker was down
                pass
            if self.stopped.wait(RETRY_AFTER_S):
                return
            s.retried += 1

    # -- attacks -------------------------------------------------------------------------------
    def attack(self) -> None:
        kind = self.rng.choice(("forged", "replay", "cross_device", "malformed"))
        device = self.rng.choice(sorted(self.devices))
        if kind == "forged":
            counter = self._next(device) + ATTACK_OFFSET["forged"]
            frame = commands.build(os.urandom(32), device, counter, commands.REQUEST_STATUS, {})
        elif kind == "replay":
            with self._lock:
                done = list(self._executed_frames)
            if not done:
                return
            old = self.rng.choice(done)
            device, counter, frame = old.device, old.counter, old.frame
        elif kind == "cross_device":
            others = sorted(set(self.devices) - {device})
            if not others:
                return
            victim = self.rng.choice(others)
            counter = self._next(device) + ATTACK_OFFSET["cross_device"]
            frame = commands.build(self.keys[device], device, counter, commands.REQUEST_STATUS, {})
            device = victim  # a valid frame for `device`, on the victim's topic
        else:
            counter = None
            shape = self.rng.choice(("random", "truncated", "version", "empty", "long"))
            if shape == "random":
                frame = os.urandom(self.rng.randrange(1, 120))
            elif shape == "empty":
                frame = b""
            elif shape == "long":
                frame = os.urandom(commands.MAX_FRAME + self.rng.randrange(1, 4000))
            else:
                good = commands.build(self.keys[device], device, self._next(device) + ATTACK_OFFSET["forged"],
                                      commands.REQUEST_STATUS, {})
                frame = good[: self.rng.randrange(1, len(good))] if shape == "truncated" else bytes([9]) + good[1:]
        self.log.add(Sent(device, counter, kind, frame))
        try:
            self._publish(device, frame)
        except (RuntimeError, OSError):
            self.log.sent[-1].kind += "_unsent"  # the broker was down: it reached no board

    def join(self, timeout: float) -> None:
        """Let the legitimate commands still unanswered be retried for up to `timeout` s, then stop."""
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self.stopped.set()
        for t in self._threads:
            t.join(ACK_TIMEOUT_S + 1)

    def close(self) -> None:
        self.client.close()

    def outcome(self, executed: dict[str, list[int]]) -> dict:
        """The ledger's command figures, given each device's executed counters (`executions`)."""
        # (an OTA start command, kind "ota", is the back office's own too: its run is explained, not an attack)
        legit = {(s.device, s.counter) for s in self.log.sent if s.kind in ("legit", "ota")}
        replayed = {(s.device, s.counter) for s in self.log.sent if s.kind == "replay"}
        attack_kind = {(s.device, s.counter): s.kind for s in self.log.sent if s.kind in ("forged", "cross_device")}
        runs: dict[tuple[str, int], int] = {}
        for device, counters in executed.items():
            for c in counters:
                runs[(device, c)] = runs.get((device, c), 0) + 1
        double = replay_ok = 0
        accepted: dict[str, int] = {"forged": 0, "cross_device": 0, "malformed_or_unexplained": 0}
        for key, n in runs.items():
            if key in legit:
                if n > 1:
                    if key in replayed:
                        replay_ok += n - 1
                    else:
                        double += n - 1
            else:
                accepted[attack_kind.get(key, "malformed_or_unexplained")] += n
        sent_by = {}
        for s in self.log.sent:
            sent_by[s.kind] = sent_by.get(s.kind, 0) + 1
        legit_sent = [s for s in self.log.sent if s.kind == "legit"]
        legit = {(s.device, s.counter) for s in legit_sent}
        return {
            "commands_sent": len(legit_sent),
            "commands_acked": sum(s.acked for s in legit_sent),
            "commands_executed": sum(1 for key in legit if runs.get(key)),
            "commands_retried": sum(bool(s.retried) for s in legit_sent),
            "commands_never_acked": sum(not s.acked for s in legit_sent),
            "commands_acked_as_replay": sum(s.status == "replay" for s in legit_sent),
            "commands_double_executed": double,
            "attacks_sent": {k: v for k, v in sorted(sent_by.items()) if k not in ("legit", "ota")},
            "forged_accepted": accepted["forged"] + accepted["malformed_or_unexplained"],
            "replayed_accepted": replay_ok,
            "cross_device_accepted": accepted["cross_device"],
        }


# -- broker probes -------------------------------------------------------------------------------
def _encode_len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def connect_packet(client_id: bytes, user: bytes | None = None, password: bytes | None = None, proto: bytes = b"MQTT") -> bytes:
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    var = _string(proto) + bytes([4, flags]) + struct.pack(">H", 30)
    payload = _string(client_id) + (_string(user) if user is not None else b"") + (_string(password) if password is not None else b"")
    body = var + payload
    return b"\x10" + _encode_len(len(body)) + body


def _raw(host: str, port: int, data: bytes, read_s: float = 3.0) -> bytes:
    """Send `data` on a fresh TCP connection; what the broker answers before it closes (or read_s)."""
    got = b""
    with socket.create_connection((host, port), timeout=read_s) as s:
        try:
            s.sendall(data)
        except OSError:
            return got
        end = time.monotonic() + read_s
        while time.monotonic() < end:
            try:
                chunk = s.recv(4096)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            got += chunk
    return got


def _connack_accepted(reply: bytes) -> bool:
    return len(reply) >= 4 and reply[0] == 0x20 and reply[3] == 0


def _paho_connect(host, port, user=None, password=None, tls_ca=None, timeout=5.0) -> tuple[bool, paho.Client | None]:
    done = threading.Event()
    result = {}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"soak-probe-{time.time_ns()}")
    if user is not None:
        c.username_pw_set(user, password)
    if tls_ca:
        c.tls_set(ca_certs=tls_ca)

    def on_connect(client, userdata, flags, rc, props):
        result["ok"] = not rc.is_failure
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *a: done.set()
    try:
        c.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError):
        return False, None
    c.loop_start()
    done.wait(timeout)
    if not result.get("ok"):
        c.loop_stop()
        c.disconnect()
        return False, None
    return True, c


def read_outside_own_tree(site: str, device: str, topics: list[str]) -> str:
    """The topics a device's subscription to `lanterne/#` received that its ACL does not let it read
    (space-separated, "" when none). It may read its commands, and its update blocks while an OTA
    wave reaches it: an update rolled out mid-soak is not a leak."""
    own = device_topics(site, device)
    readable = {own[name] for name in DEVICE_SUBSCRIBES}
    return " ".join(sorted({t for t in topics if t not in readable}))


def probe_broker(url: str, tls_port: int | None, devices: list[tuple[str, str, str]], office, wrong_ca: str | None,
                 rng) -> dict[str, bool | str]:
    """The broker-side probes; {probe: let in} (a non-empty string: let in, with the evidence).
    `devices`: (site, id, password) of two or more devices; `office`: the back office's Watcher on `lanterne/#` (it sees what the broker let through)."""
    host, port, _ = parse_broker_url(url)
    out: dict[str, bool] = {}
    (site_a, dev_a, pw_a), (site_b, dev_b, _pw_b) = rng.sample(devices, 2)
    ok, c = _paho_connect(host, port)
    out["anonymous_connect"] = ok
    if c:
        c.disconnect()
    ok, c = _paho_connect(host, port, dev_a, "not-" + pw_a)
    out["wrong_password"] = ok
    if c:
        c.disconnect()
    ok, c = _paho_connect(host, port, "lanterne-nobody", "x" * 32)
    out["unknown_user"] = ok
    if c:
        c.disconnect()
    # A device's own credentials, outside its own topic tree.
    ok, c = _paho_connect(host, port, dev_a, pw_a)
    if not ok:
        out["device_login_refused_unexpectedly"] = True  # the probe could not run: reported, not passed
        return out
    marker = f"soak-probe-{time.time_ns()}".encode()
    got: list[tuple[str, bytes]] = []
    c.on_message = lambda client, userdata, m: got.append((m.topic, bytes(m.payload)))
    c.subscribe([(f"lanterne/v1/{site_b}/{dev_b}/cmd", 1), ("lanterne/#", 1)])
    targets = {
        "publish_other_device_up": f"lanterne/v1/{site_b}/{dev_b}/up",
        "publish_other_device_status": f"lanterne/v1/{site_b}/{dev_b}/status",
        "publish_own_cmd": f"lanterne/v1/{site_a}/{dev_a}/cmd",
        "publish_other_device_cmd": f"lanterne/v1/{site_b}/{dev_b}/cmd",
        "publish_other_site": f"lanterne/v1/elsewhere/{dev_a}/up",
        "publish_bridge_topic": "lanterne-bridge/soak-probe",
    }
    for name, topic in targets.items():
        c.publish(topic, marker + name.encode(), qos=1)
    time.sleep(1.0)
    office.publish(f"lanterne/v1/{site_b}/{dev_b}/cmd", marker + b"read", qos=1)  # may the device read it?
    time.sleep(1.5)
    seen = {bytes(m.payload) for m in office.messages[-5000:]}
    for name in targets:
        out[name] = marker + name.encode() in seen
    out["subscribe_other_device_cmd"] = any(p == marker + b"read" for _t, p in got)
    out["subscribe_everything"] = read_outside_own_tree(site_a, dev_a, [t for t, _p in got])
    c.loop_stop()
    c.disconnect()
    # Raw packets: none may get a successful CONNACK, and the broker must go on serving.
    out["oversize_packet"] = _connack_accepted(_raw(host, port, b"\x10" + _encode_len(268_435_455) + os.urandom(65536)))
    out["malformed_remaining_length"] = _connack_accepted(_raw(host, port, b"\x10\xff\xff\xff\xff\xff" + b"\x00" * 32))
    out["wrong_protocol_name"] = _connack_accepted(_raw(host, port, connect_packet(b"probe", proto=b"MQTX")))
    out["publish_before_connect"] = bool(_raw(host, port, b"\x30\x0a\x00\x03abc" + b"hello"))
    out["connect_oversize_password"] = _connack_accepted(
        _raw(host, port, connect_packet(b"probe", dev_a.encode(), os.urandom(60000))))
    if tls_port and wrong_ca:
        ok, c = _paho_connect("localhost", tls_port, dev_a, pw_a, tls_ca=wrong_ca)
        out["tls_client_trusting_another_ca"] = ok  # would mean the broker's chain is not the city's CA
        if c:
            c.disconnect()
    ok, c = _paho_connect(host, port, dev_a, pw_a)  # after all that: still serving
    out["broker_down_after_probes"] = not ok
    if c:
        c.disconnect()
    return out


def probe_rogue_broker(board, rogue, rogue_watcher, upstream: tuple[str, int], wait_s: float = 12.0) -> dict[str, bool]:
    """A TLS board whose route to the broker is hijacked (its proxy sends it to `rogue`, a broker
    with a certificate from another CA, anonymous): the board must not finish the handshake, so
    the impostor receives nothing. The route is restored afterwards. {probe: let in}."""
    before = len(rogue_watcher.messages)
    proxy = board.proxy
    proxy.upstream = ("127.0.0.1", rogue.tls_port)
    try:
        board.world.set(link_up=False)  # the board's connection drops, the next one meets the impostor
        time.sleep(0.5)
        board.world.set(link_up=True)
        time.sleep(wait_s)
    finally:
        proxy.upstream = upstream
        board.world.set(link_up=False)
        time.sleep(0.3)
        board.world.set(link_up=True)
    leaked = [m for m in rogue_watcher.messages[before:] if m.topic.startswith("lanterne/")]
    return {"board_talked_to_impostor_broker": bool(leaked)}
