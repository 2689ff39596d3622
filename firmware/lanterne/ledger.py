# Lanterne over LoRaWAN: the delivery ledger downlink and the compact command ack uplink (docs/lorawan.md).
# Pure logic, runs unchanged on MicroPython (the board) and CPython (the back office signs with it).
#
# FPorts: 10 command downlink (docs/commands.md frame), 11 compact ack uplink, 12 ledger downlink;
# 102 readings (docs/payload.md).
#
# Ledger (back office -> board, FPort 12), at most N a day:
#   0      version (1)
#   1..4   counter, uint32 big-endian, strictly increasing per device (same clock as commands)
#   5..8   next: every reading with seq < next has reached the back office
#   9..10  span, uint16: the back office has looked at [next, next + span); inside it, every seq
#          not in a listed range reached it
#   11..12 seen, uint16: the highest seq received is next + seen - 1 (0: none at or above next)
#   13     n missing ranges (0..MAX_RANGES)
#   14..   n x (gap uint16, length uint16): a range starts `gap` after the end of the previous one
#          (the first after `next`), and holds `length` missing seqs: the board sends them again
#   last 12: HMAC-SHA256(command key, "LNTL" + device id + bytes before the tag)[:12]
# Seqs at or above next + span are neither acknowledged nor asked for. The board sends again every
# kept reading the ledger lists as missing, and every one it had sent before (or in the same uplink
# as) the highest seq seen that the ledger does not acknowledge: that uplink was lost.
#
# Compact ack (board -> back office, FPort 11): the MQTT ack frame costs 19+ bytes of airtime;
#   0..1   counter of the command, low 16 bits, big-endian
#   2      status (commands.REASONS)
#   3..    data
#   last 4: HMAC-SHA256(command key, "LNTa" + device id + full counter (4) + opcode + bytes before the tag)[:4]
# The full counter and the opcode are not sent: the back office knows the commands it has in flight.
import struct

from lanterne.commands import _b, _equal, hmac_sha256

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FPORT_COMMAND = const(10)
FPORT_ACK = const(11)
FPORT_LEDGER = const(12)
VERSION = const(1)
TAG_LEN = const(12)
ACK_TAG_LEN = const(4)
HEADER_LEN = const(14)
MAX_RANGES = const(6)  # 14 + 6 * 4 + 12 = 50 bytes: fits the 51-byte downlink at DR0
MAX_SPAN = const(0xFFFF)

# reasons a ledger is refused
BAD_TAG = const(1)
REPLAY = const(2)
MALFORMED = const(6)
BAD_VERSION = const(7)


class LedgerError(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(detail or "ledger refused")
        self.reason = reason


def _tag(key, label, device, body, n):
    return hmac_sha256(key, label + _b(device) + body)[:n]


def build(key, device, counter, next_seq, span, seen=0, ranges=()):
    """A signed ledger frame. `ranges`: (first missing seq, count) in increasing order, inside the span."""
    if len(ranges) > MAX_RANGES:
        raise ValueError("at most %d missing ranges" % MAX_RANGES)
    if not 0 <= span <= MAX_SPAN or not 0 <= seen <= MAX_SPAN:
        raise ValueError("span and seen must be 0..65535")
    body = bytearray(struct.pack(">BIIHHB", VERSION, counter, next_seq, span, seen, len(ranges)))
    end = next_seq
    for start, count in ranges:
        gap = start - end
        if gap < 0 or gap > 0xFFFF or not 0 < count <= 0xFFFF or start + count > next_seq + span:
            raise ValueError("missing range (%d, %d) outside the span or out of order" % (start, count))
        body += struct.pack(">HH", gap, count)
        end = start + count
    return bytes(body) + _tag(key, b"LNTL", device, bytes(body), TAG_LEN)


class Ledger:
    """One verified ledger: `acknowledged(seq)` says whether the board may free a reading, `missing()`
    the seqs it should send again."""

    def __init__(self, counter, next_seq, span, seen, ranges):
        self.counter = counter
        self.next_seq = next_seq
        self.span = span
        self.highest = next_seq + seen - 1  # the highest seq received (next - 1 when none beyond)
        self.ranges = ranges  # [(start, count)]

    def acknowledged(self, seq):
        if seq < self.next_seq:
            return True
        if seq >= self.next_seq + self.span:
            return False
        for start, count in self.ranges:
            if start <= seq < start + count:
                return False
        return True

    def missing(self):
        for start, count in self.ranges:
            for seq in range(start, start + count):
                yield seq


def parse(key, device, frame, last_counter=0):
    """The Ledger in `frame`, or LedgerError (bad tag, replayed counter, malformed, other version)."""
    n = len(frame)
    if n < HEADER_LEN + TAG_LEN:
        raise LedgerError(MALFORMED, "ledger of %d bytes is too short" % n)
    if frame[0] != VERSION:
        raise LedgerError(BAD_VERSION, "ledger version %d" % frame[0])
    body = bytes(frame[: n - TAG_LEN])
    if not _equal(_tag(key, b"LNTL", device, body, TAG_LEN), bytes(frame[n - TAG_LEN :])):
        raise LedgerError(BAD_TAG, "ledger tag does not verify")
    _, counter, next_seq, span, seen, count = struct.unpack(">BIIHHB", body[:HEADER_LEN])
    if counter <= last_counter:
        raise LedgerError(REPLAY, "ledger counter %d not above %d" % (counter, last_counter))
    if count > MAX_RANGES or len(body) != HEADER_LEN + 4 * count:
        raise LedgerError(MALFORMED, "ledger says %d ranges in %d bytes" % (count, len(body)))
    ranges = []
    end = next_seq
    for i in range(count):
        gap, length = struct.unpack(">HH", body[HEADER_LEN + 4 * i : HEADER_LEN + 4 * i + 4])
        start = end + gap
        if length == 0 or start + length > next_seq + span:
            raise LedgerError(MALFORMED, "missing range %d outside the span" % i)
        ranges.append((start, length))
        end = start + length
    return Ledger(counter, next_seq, span, seen, ranges)


def build_ack(key, device, counter, opcode, status, data=b""):
    """The compact ack of command `counter` (FPort 11)."""
    body = struct.pack(">HB", counter & 0xFFFF, status) + bytes(data)
    label = b"LNTa" + struct.pack(">IB", counter, opcode)
    return body + hmac_sha256(key, label[:4] + _b(device) + label[4:] + body)[:ACK_TAG_LEN]


def parse_ack(key, device, frame, in_flight):
    """(counter, opcode, status, data) of a compact ack, matched against `in_flight` {counter: opcode}
    (the commands the back office sent and has no ack for); None when it matches none of them."""
    if len(frame) < 3 + ACK_TAG_LEN:
        return None
    low = (frame[0] << 8) | frame[1]
    for counter in in_flight:
        if counter & 0xFFFF != low:
            continue
        opcode = in_flight[counter]
        good = build_ack(key, device, counter, opcode, frame[2], frame[3 : len(frame) - ACK_TAG_LEN])
        if _equal(good, bytes(frame)):
            return counter, opcode, frame[2], bytes(frame[3 : len(frame) - ACK_TAG_LEN])
    return None
