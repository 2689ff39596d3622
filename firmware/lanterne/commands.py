# Lanterne commands: the binary downlink format, its authentication and the replay window.
# Pure logic, runs unchanged on MicroPython (the board) and CPython (the host signs with it).
#
# Frame (docs/commands.md):
#   0      version (1)
#   1..4   device tag: first 4 bytes of SHA-256(device id)  -> "not for me" is told apart
#   5..8   counter, uint32 big-endian, strictly increasing per device
#   9      opcode
#   10..   arguments (per opcode, fixed layout)
#   last TAG_LEN bytes: HMAC-SHA256(key, "LNTC" + device id + frame without tag)[:TAG_LEN]
# Ack (board -> back office), signed the same way with "LNTA":
#   version, counter (4), opcode, status, data..., tag
import hashlib
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


VERSION = const(1)
TAG_LEN = const(12)
HEADER_LEN = const(10)
MAX_FRAME = const(200)

# opcodes
SET_LAMP = const(0x01)  # level u8 0..100, ramp_s u16, duration_min u16 (0: until another command)
RESUME_PROFILE = const(0x02)  # -
SET_PROFILE = const(0x03)  # dusk_offset_min i8, dawn_offset_min i8, n u8, n x (start_min u16, end_min u16, level u8)
BOLLARD = const(0x04)  # action u8: 0 lower, 1 raise
SET_PERIOD = const(0x05)  # what u8 (0 sample, 1 status), seconds u32
REQUEST_STATUS = const(0x06)  # -
REBOOT = const(0x07)  # delay_s u8
SET_CONFIG = const(0x08)  # key_len u8, key, type u8 (0 int i32, 1 str, 2 float as milli i32), value
ROTATE_KEY = const(0x09)  # nonce 16 bytes: new key = HMAC(old key, "LNTK" + nonce)
OTA_START = const(0x0A)  # counter u32, flags u8 (bit 0: force a downgrade), manifest SHA-256 (32)

NAMES = {
    SET_LAMP: "set_lamp",
    RESUME_PROFILE: "resume_profile",
    SET_PROFILE: "set_profile",
    BOLLARD: "bollard",
    SET_PERIOD: "set_period",
    REQUEST_STATUS: "request_status",
    REBOOT: "reboot",
    SET_CONFIG: "set_config",
    ROTATE_KEY: "rotate_key",
    OTA_START: "ota_start",
}

# ack status / nack reason codes
OK = const(0)
BAD_TAG = const(1)
REPLAY = const(2)
WRONG_DEVICE = const(3)
UNKNOWN_COMMAND = const(4)
BAD_ARGUMENT = const(5)
MALFORMED = const(6)
BAD_VERSION = const(7)
NOT_ALLOWED = const(8)
REFUSED = const(9)  # valid, but the actuator refused (interlock, no such actuator)
FAILED = const(10)  # executed and failed

REASONS = {
    OK: "ok",
    BAD_TAG: "bad_tag",
    REPLAY: "replay",
    WRONG_DEVICE: "wrong_device",
    UNKNOWN_COMMAND: "unknown_command",
    BAD_ARGUMENT: "bad_argument",
    MALFORMED: "malformed",
    BAD_VERSION: "bad_version",
    NOT_ALLOWED: "not_allowed",
    REFUSED: "refused",
    FAILED: "failed",
}

# Config keys a command may set, and their range (see config.SCHEMA for the meaning).
CONFIG_ALLOW = ("sample_period_s", "status_period_s", "keepalive_s", "bin_empty_mm", "bin_full_mm", "lat", "lon", "timezone_min",
                "pm_period_s", "pm_kappa_milli", "sound_offset_db", "send_period_s")


class CommandError(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(detail or REASONS.get(reason, "error"))
        self.reason = reason
        self.detail = detail


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def device_tag(device):
    return hashlib.sha256(_b(device)).digest()[:4]


def hmac_sha256(key, data):
    # RFC 2104 over hashlib.sha256 (MicroPython has no hmac module).
    key = _b(key)
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(data)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def _tag(key, label, device, body):
    return hmac_sha256(key, label + _b(device) + body)[:TAG_LEN]


def _equal(a, b):
    # Constant-time comparison: the time taken does not tell how much of a tag was right.
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def rotated_key(key, nonce):
    return hmac_sha256(key, b"LNTK" + bytes(nonce))


# -- building (host side, also usable on the board for tests) ------------------------------
def encode_args(opcode, args):
    a = args or {}
    if opcode == SET_LAMP:
        return struct.pack(">BHH", a["level"], a.get("ramp_s", 0), a.get("duration_min", 0))
    if opcode in (RESUME_PROFILE, REQUEST_STATUS):
        return b""
    if opcode == SET_PROFILE:
        steps = a.get("steps", [])
        out = struct.pack(">bbB", a.get("dusk_offset_min", 0), a.get("dawn_offset_min", 0), len(steps))
        for s in steps:
            out += struct.pack(">HHB", s[0], s[1], s[2])
        return out
    if opcode == BOLLARD:
        return struct.pack(">B", {"lower": 0, "raise": 1}.get(a.get("action"), a.get("action")))
    if opcode == SET_PERIOD:
        return struct.pack(">BI", {"sample": 0, "status": 1}.get(a.get("what"), a.get("what")), a["seconds"])
    if opcode == REBOOT:
        return struct.pack(">B", a.get("delay_s", 1))
    if opcode == SET_CONFIG:
        key = _b(a["key"])
        v = a["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise CommandError(BAD_ARGUMENT, "config value must be a number or a string")
        if isinstance(v, str):
            val = struct.pack(">BB", 1, len(_b(v))) + _b(v)
        elif isinstance(v, float):
            val = struct.pack(">Bi", 2, int(round(v * 1000)))
        else:
            val = struct.pack(">Bi", 0, v)
        return struct.pack(">B", len(key)) + key + val
    if opcode == ROTATE_KEY:
        nonce = bytes(a["nonce"])
        if len(nonce) != 16:
            raise CommandError(BAD_ARGUMENT, "nonce must be 16 bytes")
        return nonce
    if opcode == OTA_START:
        digest = bytes(a["digest"])
        if len(digest) != 32:
            raise CommandError(BAD_ARGUMENT, "manifest digest must be 32 bytes")
        return struct.pack(">IB", a["counter"], 1 if a.get("force") else 0) + digest
    return bytes(a.get("raw", b""))


def build(key, device, counter, opcode, args=None):
    body = struct.pack(">B4sIB", VERSION, device_tag(device), counter, opcode) + encode_args(opcode, args)
    return body + _tag(key, b"LNTC", device, body)


def build_ack(key, device, counter, opcode, status, data=b""):
    body = struct.pack(">BIBB", VERSION, counter, opcode, status) + bytes(data)
    return body + _tag(key, b"LNTA", device, body)


def parse_ack(key, device, frame):
    """Host side: verify and split an ack. Raises CommandError(BAD_TAG/MALFORMED)."""
    frame = bytes(frame)
    if len(frame) < 7 + TAG_LEN:
        raise CommandError(MALFORMED, "ack of %d bytes is too short" % len(frame))
    body, tag = frame[:-TAG_LEN], frame[-TAG_LEN:]
    if not _equal(_tag(key, b"LNTA", device, body), tag):
        raise CommandError(BAD_TAG, "ack tag does not verify: not from %s" % device)
    version, counter, opcode, status = struct.unpack(">BIBB", body[:7])
    if version != VERSION:
        raise CommandError(BAD_VERSION, "ack version %d" % version)
    return {"counter": counter, "opcode": opcode, "command": NAMES.get(opcode, "unknown"), "status": status,
            "reason": REASONS.get(status, "unknown"), "data": body[7:]}


# -- checking (board side) -------------------------------------------------------------------
def decode_args(opcode, a):
    """Arguments as a dict, range-checked. Raises CommandError(BAD_ARGUMENT/MALFORMED/UNKNOWN_COMMAND)."""
    n = len(a)
    try:
        if opcode == SET_LAMP:
            if n != 5:
                raise CommandError(MALFORMED, "set_lamp takes 5 argument bytes, got %d" % n)
            level, ramp, duration = struct.unpack(">BHH", a)
            if level > 100:
                raise CommandError(BAD_ARGUMENT, "level %d is over 100 %%" % level)
            if ramp > 3600:
                raise CommandError(BAD_ARGUMENT, "ramp %d s is over 3600 s" % ramp)
            return {"level": level, "ramp_s": ramp, "duration_min": duration}
        if opcode in (RESUME_PROFILE, REQUEST_STATUS):
            if n:
                raise CommandError(MALFORMED, "%s takes no arguments" % NAMES[opcode])
            return {}
        if opcode == SET_PROFILE:
            if n < 3:
                raise CommandError(MALFORMED, "set_profile needs 3 header bytes")
            dusk, dawn, count = struct.unpack(">bbB", a[:3])
            if n != 3 + 5 * count:
                raise CommandError(MALFORMED, "set_profile with %d steps needs %d bytes, got %d" % (count, 3 + 5 * count, n))
            if count > 8:
                raise CommandError(BAD_ARGUMENT, "at most 8 dimming steps")
            steps = []
            for i in range(count):
                start, end, level = struct.unpack(">HHB", a[3 + 5 * i : 8 + 5 * i])
                if start >= 1440 or end >= 1440 or level > 100:
                    raise CommandError(BAD_ARGUMENT, "step %d out of range" % i)
                steps.append((start, end, level))
            return {"dusk_offset_min": dusk, "dawn_offset_min": dawn, "steps": steps}
        if opcode == BOLLARD:
            if n != 1:
                raise CommandError(MALFORMED, "bollard takes 1 argument byte")
            if a[0] > 1:
                raise CommandError(BAD_ARGUMENT, "bollard action %d (0 lower, 1 raise)" % a[0])
            return {"action": "raise" if a[0] else "lower"}
        if opcode == SET_PERIOD:
            if n != 5:
                raise CommandError(MALFORMED, "set_period takes 5 argument bytes")
            what, seconds = struct.unpack(">BI", a)
            if what > 1:
                raise CommandError(BAD_ARGUMENT, "period kind %d (0 sample, 1 status)" % what)
            if not 1 <= seconds <= 86400:
                raise CommandError(BAD_ARGUMENT, "period %d s outside 1..86400" % seconds)
            return {"what": "status" if what else "sample", "seconds": seconds}
        if opcode == REBOOT:
            if n != 1:
                raise CommandError(MALFORMED, "reboot takes 1 argument byte")
            return {"delay_s": a[0]}
        if opcode == SET_CONFIG:
            if n < 2 or n < 2 + a[0]:
                raise CommandError(MALFORMED, "set_config key truncated")
            klen = a[0]
            key = bytes(a[1 : 1 + klen]).decode()
            rest = a[1 + klen :]
            if not rest:
                raise CommandError(MALFORMED, "set_config value missing")
            kind = rest[0]
            if kind in (0, 2):
                if len(rest) != 5:
                    raise CommandError(MALFORMED, "set_config number needs 4 bytes")
                value = struct.unpack(">i", rest[1:5])[0]
                if kind == 2:
                    value = value / 1000
            elif kind == 1:
                if len(rest) < 2 or len(rest) != 2 + rest[1]:
                    raise CommandError(MALFORMED, "set_config string truncated")
                value = bytes(rest[2:]).decode()
            else:
                raise CommandError(MALFORMED, "set_config value type %d" % kind)
            return {"key": key, "value": value}
        if opcode == ROTATE_KEY:
            if n != 16:
                raise CommandError(MALFORMED, "rotate_key takes a 16-byte nonce")
            return {"nonce": bytes(a)}
        if opcode == OTA_START:
            if n != 37:
                raise CommandError(MALFORMED, "ota_start takes 37 argument bytes, got %d" % n)
            counter, flags = struct.unpack(">IB", a[:5])
            if flags > 1:
                raise CommandError(BAD_ARGUMENT, "ota_start flags 0x%02x (bit 0: force)" % flags)
            return {"counter": counter, "force": bool(flags & 1), "digest": bytes(a[5:])}
    except (ValueError, UnicodeError):
        raise CommandError(MALFORMED, "arguments do not decode")
    raise CommandError(UNKNOWN_COMMAND, "opcode 0x%02x" % opcode)


class Verifier:
    """The board's gate: device, tag, version, counter window, arguments; remembers the last ack.

    `last_counter` must be persisted by the caller after every accepted command (see
    `state()` / `restore()`), so a replay is refused across reboots too.
    """

    def __init__(self, device, key, last_counter=0):
        self.device = device
        self.key = _b(key)
        self.dev_tag = device_tag(device)
        self.last_counter = last_counter
        self.last_digest = b""
        self.last_ack = None

    def check(self, frame):
        """Return (opcode, counter, args) for a command to execute, or raise CommandError.

        A redelivery of the last executed command raises CommandError(OK) with
        `.ack` set: do not execute again, send the same ack again.
        """
        frame = bytes(frame)
        n = len(frame)
        if n < HEADER_LEN + TAG_LEN:
            raise CommandError(MALFORMED, "frame of %d bytes is shorter than %d" % (n, HEADER_LEN + TAG_LEN))
        if n > MAX_FRAME:
            raise CommandError(MALFORMED, "frame of %d bytes is over %d" % (n, MAX_FRAME))
        if frame[0] != VERSION:
            raise CommandError(BAD_VERSION, "version %d (this firmware speaks %d)" % (frame[0], VERSION))
        if frame[1:5] != self.dev_tag:
            raise CommandError(WRONG_DEVICE, "command is for another device")
        body, tag = frame[:-TAG_LEN], frame[-TAG_LEN:]
        if not _equal(_tag(self.key, b"LNTC", self.device, body), tag):
            raise CommandError(BAD_TAG, "tag does not verify")
        counter = struct.unpack(">I", body[5:9])[0]
        opcode = body[9]
        if counter == self.last_counter and self.last_ack is not None and hashlib.sha256(frame).digest() == self.last_digest:
            e = CommandError(OK, "redelivered command %d: acked again, not executed" % counter)
            e.ack = self.last_ack
            raise e
        if counter <= self.last_counter:
            raise CommandError(REPLAY, "counter %d is not above %d" % (counter, self.last_counter))
        args = decode_args(opcode, body[HEADER_LEN:])
        if opcode == SET_CONFIG and args["key"] not in CONFIG_ALLOW:
            raise CommandError(NOT_ALLOWED, "config key %r may not be set by command" % args["key"])
        return opcode, counter, args

    def accept(self, frame, counter, ack):
        """Record an executed (or refused after authentication) command: its counter is used up."""
        self.last_counter = counter
        self.last_digest = hashlib.sha256(bytes(frame)).digest()
        self.last_ack = ack

    def ack(self, counter, opcode, status, data=b""):
        return build_ack(self.key, self.device, counter, opcode, status, data)

    def rotate(self, nonce):
        self.key = rotated_key(self.key, nonce)
