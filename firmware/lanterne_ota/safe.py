# Safe mode: no release runs (the boot selector found none it may mount, or the committed one kept
# crashing with no previous release to go back to). The board keeps only what an operator needs
# to put a good release on it, all from the filesystem and the MicroPython image, nothing from a
# slot: the network, MQTT with the device's own credentials and last will, a retained status that
# says "safe_mode" and why, signed commands (ota_start, reboot, request_status; others are
# refused), and the update transfer. The lamp is not driven here: its driver is in the release;
# the lamp's own hardware default (relay closed, full power) keeps it lit. As ESPHome's safe mode.
#
# A minimal MQTT 3.1.1 client and the command frame check live here because umqtt and
# lanterne.commands are in the slots (docs/commands.md has the frame; tests check both agree).
import json
import struct
import sys
import time

from lanterne_ota import updater as U

OTA_START = 0x0A
REBOOT = 0x07
REQUEST_STATUS = 0x06
OK, BAD_TAG, REPLAY, WRONG_DEVICE, NOT_ALLOWED, MALFORMED, REFUSED = 0, 1, 2, 3, 8, 6, 9


def log(msg):
    print("[safe] " + msg)


def _load(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {}


# -- commands (the frame of docs/commands.md, format 1) ---------------------------------------------
def hmac_sha256(key, data):
    import hashlib

    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(data)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


class Gate:
    """Authenticates a command frame with the device's key and its replay counter (cmdstate.json,
    shared with the application's handler)."""

    def __init__(self, device, key_hex, state_file="cmdstate.json"):
        import hashlib

        st = _load(state_file)
        self.state_file = state_file
        self.device = device.encode()
        self.key = bytes.fromhex(st.get("key") or key_hex or "")
        self.rotated = bool(st.get("key"))
        self.last = int(st.get("counter", 0))
        self.tag = hashlib.sha256(self.device).digest()[:4]

    def _tag(self, label, body):
        return hmac_sha256(self.key, label + self.device + body)[:12]

    def ack(self, counter, opcode, status):
        body = struct.pack(">BIBB", 1, counter & 0xFFFFFFFF, opcode, status)
        return body + self._tag(b"LNTA", body)

    def check(self, frame):
        """(status, counter, opcode, args bytes)."""
        frame = bytes(frame)
        if len(frame) < 22 or len(frame) > 200 or frame[0] != 1:
            return MALFORMED, 0, 0, b""
        counter = struct.unpack(">I", frame[5:9])[0]
        op = frame[9]
        if frame[1:5] != self.tag:
            return WRONG_DEVICE, counter, op, b""
        body, tag = frame[:-12], frame[-12:]
        if not self.key or self._tag(b"LNTC", body) != tag:
            return BAD_TAG, counter, op, b""
        if counter <= self.last:
            return REPLAY, counter, op, b""
        self.last = counter
        U.S.write_atomic(self.state_file, json.dumps({"counter": counter, "key": self.key.hex() if self.rotated else ""}).encode())
        return OK, counter, op, body[10:]


# -- a minimal MQTT 3.1.1 client ----------------------------------------------------------------------
def _str(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(s)) + s


def _packet(kind, body):
    n = len(body)
    head = bytearray((kind,))
    while True:
        b = n & 0x7F
        n >>= 7
        head.append(b | 0x80 if n else b)
        if not n:
            return bytes(head) + body


class Mqtt:
    def __init__(self, cfg, timeout=10):
        self.cfg = cfg
        self.sock = None
        self.pid = 0
        self.timeout = timeout

    def connect(self, will_topic, will):
        import socket

        url = self.cfg.get("broker", "mqtt://127.0.0.1:1883")
        tls = url.startswith("mqtts://")
        rest = url.split("://", 1)[1].rstrip("/")
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
        port = int(port) if port else (8883 if tls else 1883)
        addr = socket.getaddrinfo(host, port)[0][-1]
        s = socket.socket()
        s.settimeout(self.timeout)
        s.connect(addr)
        self.raw = s  # its timeout is the one that counts, TLS or not
        if tls:
            import binascii
            import ssl

            pem = self.cfg.get("ca_cert", "")
            der = binascii.a2b_base64(pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0])
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=der)
            s = ctx.wrap_socket(s, server_hostname=host)
        self.sock = s
        user, pw = self.cfg.get("mqtt_user") or "", self.cfg.get("mqtt_password") or ""
        flags = 0x02 | 0x04 | 0x20 | (0x80 if user else 0) | (0x40 if pw else 0)  # clean, will (retained, QoS 0)
        body = _str("MQTT") + bytes((4, flags)) + struct.pack(">H", 60) + _str(self.cfg.get("device", "lanterne"))
        body += _str(will_topic) + _str(will) + (_str(user) if user else b"") + (_str(pw) if pw else b"")
        self._write(_packet(0x10, body))
        kind, data = self._read()
        if kind & 0xF0 != 0x20 or data[1] != 0:
            raise OSError("broker refused the connection (CONNACK %r)" % (bytes(data),))

    def _write(self, data):
        self.sock.write(data)

    def _readn(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.read(n - len(out))
            if not chunk:
                raise OSError("connection closed")
            out += chunk
        return out

    def _read(self, kind=None):
        if kind is None:
            kind = self._readn(1)[0]
        n, shift = 0, 0
        while True:
            b = self._readn(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return kind, self._readn(n) if n else b""

    def subscribe(self, topic):
        self.pid += 1
        self._write(_packet(0x82, struct.pack(">H", self.pid) + _str(topic) + b"\x01"))

    def publish(self, topic, payload, retain=False):
        payload = payload.encode() if isinstance(payload, str) else payload
        self._write(_packet(0x30 | (1 if retain else 0), _str(topic) + payload))  # QoS 0

    def ping(self):
        self._write(b"\xc0\x00")

    def poll(self, ms):
        """One incoming packet, or None after `ms`: (topic, payload) for a PUBLISH."""
        self.raw.settimeout(ms / 1000)
        try:
            first = self.sock.read(1)
        except OSError as e:
            if e.args and e.args[0] in (11, 110, 116):  # EAGAIN, ETIMEDOUT (unix, lwIP)
                return None
            raise
        finally:
            self.raw.settimeout(self.timeout)
        if not first:
            raise OSError("connection closed")
        kind, data = self._read(first[0])
        if kind & 0xF0 != 0x30:
            return None  # SUBACK, PINGRESP ...
        tl = struct.unpack(">H", data[:2])[0]
        topic = data[2 : 2 + tl].decode()
        at = 2 + tl
        if kind & 0x06:  # QoS 1: the packet id follows the topic, and is acknowledged
            self._write(b"\x40\x02" + data[at : at + 2])
            at += 2
        return topic, data[at:]

    def close(self):
        try:
            self._write(b"\xe0\x00")
            self.sock.close()
        except Exception:
            pass
        self.sock = None


def _network(board, cfg):
    import network

    kind = board.get("network", {}).get("kind", "wlan")
    if kind == "lan":
        from machine import Pin

        s = board["network"]
        nic = network.LAN(mdc=Pin(s.get("mdc", 23)), mdio=Pin(s.get("mdio", 18)),
                          power=Pin(s["power"]) if s.get("power") is not None else None,
                          phy_type=network.PHY_LAN8720, phy_addr=s.get("phy_addr", 0))  # fmt: skip
        nic.active(True)
    elif kind == "wlan":
        nic = network.WLAN(network.STA_IF)
        nic.active(True)
        nic.connect(cfg.get("wifi_ssid") or "lanterne-site", cfg.get("wifi_key") or "")
    else:
        raise OSError("network %s: a LoRaWAN-only board updates over USB" % kind)
    return nic


def main():
    import machine

    st = U.S.Store().load() or {}
    why = st.get("safe") or "no release to run"
    cfg = _load("config.json")
    board = _load("board.json")
    device, site = cfg.get("device", "unprovisioned"), cfg.get("site", "default")
    base = "lanterne/v1/%s/%s/" % (site, device)
    log("safe mode (%s): MQTT and updates only" % why)
    wdt = machine.WDT(timeout=60000)
    gate = Gate(device, cfg.get("command_key", ""))
    status = json.dumps({"state": "safe_mode", "device": device, "board": board.get("name"), "fw": None,
                         "reason": why, "ota": {"slot": None, "release": None, "safe": why}})  # fmt: skip
    backoff = 1000
    nic = None
    upd = None
    while True:
        wdt.feed()
        try:
            if nic is None:
                nic = _network(board, cfg)
            if not nic.isconnected():
                time.sleep_ms(200)
                continue
            m = Mqtt(cfg)
            m.connect(base + "status", '{"state":"offline"}')
            m.subscribe(base + "cmd")
            m.subscribe(base + "ota/data")
            m.publish(base + "status", status, retain=True)
            log("connected to the broker as %s" % device)
            backoff = 1000
            last = time.ticks_ms()

            def send(kind, payload, retain):
                m.publish(base + "ota/" + kind, payload, retain)

            if upd is None:
                upd = U.Updater(send)
                if upd.resume():
                    log("resuming the update under way")
            else:
                upd.send = send
            while True:
                wdt.feed()
                msg = m.poll(100)
                if msg is not None:
                    topic, payload = msg
                    if topic == base + "ota/data":
                        upd.on_data(payload)
                    elif topic == base + "cmd":
                        _command(gate, m, base, payload, upd, status)
                upd.poll()
                if upd.reboot_due:
                    log("release written and verified: rebooting into its trial")
                    m.close()
                    machine.reset()
                if time.ticks_diff(time.ticks_ms(), last) > 30000:
                    m.ping()
                    last = time.ticks_ms()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # the link broke, or the broker is away: try again, slower
            log("link: %r (again in %d s)" % (e, backoff // 1000))
            sys.print_exception(e)
            time.sleep_ms(backoff)
            backoff = min(backoff * 2, 60000)


def _command(gate, m, base, frame, upd, status):
    code, counter, op, args = gate.check(frame)
    if code == OK:
        if op == OTA_START and len(args) == 37:
            ok, line = upd.start(args[5:], struct.unpack(">I", args[:4])[0], bool(args[4] & 1))
            log(line)
            code = OK if ok else REFUSED
        elif op == REBOOT:
            m.publish(base + "ack", gate.ack(counter, op, OK))
            import machine

            machine.reset()
        elif op == REQUEST_STATUS:
            m.publish(base + "status", status, retain=True)
        else:
            code = NOT_ALLOWED  # safe mode only updates and reboots
    m.publish(base + "ack", gate.ack(counter, op, code))
