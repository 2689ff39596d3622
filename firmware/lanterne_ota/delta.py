# Rebuilding one block of the new image: a recipe of COPY ops (bytes the running slot already
# has, at any offset: a module that did not change is copied even where the modules before it
# changed size) and DATA ops (literal bytes), optionally raw-deflated as a whole. Runs on
# MicroPython and CPython; the host's encoder (host_tools/fleet/release/delta.py) writes them.
#
#   op 0x01 COPY  varint offset in the running image, varint length
#   op 0x02 DATA  varint length, then that many bytes
#   varint: LEB128 (7 bits a byte, low first, high bit set on all but the last)
# A recipe fills its block exactly: a short, long or out-of-range recipe is refused.
COPY = 1
DATA = 2
WBITS = 10  # raw deflate window: 1 KB on the board (docs/ota.md measures the cost against 32 KB)


class RecipeError(ValueError):
    pass


try:
    from io import IOBase as _IOBase
except ImportError:  # an old MicroPython
    _IOBase = object


class Reader(_IOBase):
    """A stream over a buffer without copying it (io.BytesIO copies), for DeflateIO or apply()."""

    def __init__(self, buf):
        self.mv = memoryview(buf)
        self.at = 0

    def readinto(self, b, n=None):
        k = min(len(b) if n is None else n, len(self.mv) - self.at)
        b[:k] = self.mv[self.at : self.at + k]
        self.at += k
        return k

    def read(self, n=-1):
        k = len(self.mv) - self.at if n is None or n < 0 else min(n, len(self.mv) - self.at)
        out = bytes(self.mv[self.at : self.at + k])
        self.at += k
        return out


def _varint(read1):
    n = 0
    shift = 0
    while True:
        b = read1()
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7
        if shift > 28:
            raise RecipeError("varint too long")


def apply(stream, length, base, sink, staging):
    """Rebuild a block of `length` bytes from the recipe in `stream` (readinto) and the running
    image `base` (a buffer), handing it to `sink(position, piece)` piece by piece through the
    small `staging` buffer: no block-sized buffer (a 4 KB contiguous block is not always there in
    a fragmented heap), and flash is never written straight from mapped flash. Returns the
    number of literal bytes the recipe carried."""
    one = bytearray(1)
    stage = memoryview(staging)
    room = len(staging)

    def read1():
        if stream.readinto(one) != 1:
            raise RecipeError("recipe ends early")
        return one[0]

    pos = 0
    literal = 0
    while pos < length:
        op = read1()
        n = 0
        if op == COPY:
            off = _varint(read1)
            n = _varint(read1)
            if n == 0 or pos + n > length or off + n > len(base):
                raise RecipeError("copy of %d bytes from %d does not fit" % (n, off))
            done = 0
            while done < n:
                k = min(room, n - done)
                stage[:k] = base[off + done : off + done + k]
                sink(pos + done, stage[:k])
                done += k
        elif op == DATA:
            n = _varint(read1)
            if n == 0 or pos + n > length:
                raise RecipeError("literal of %d bytes overruns the block" % n)
            done = 0
            while done < n:
                k = stream.readinto(stage[: min(room, n - done)])
                if not k:
                    raise RecipeError("recipe ends inside a literal")
                sink(pos + done, stage[:k])
                done += k
            literal += n
        else:
            raise RecipeError("unknown op 0x%02x" % op)
        pos += n
    if stream.readinto(one):
        raise RecipeError("recipe longer than its block")
    return literal


def put_varint(out, n):
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def encode(ops):
    """[("copy", offset, length) | ("data", bytes)] -> recipe bytes (not compressed)."""
    out = bytearray()
    for op in ops:
        if op[0] == "copy":
            out.append(COPY)
            put_varint(out, op[1])
            put_varint(out, op[2])
        else:
            out.append(DATA)
            put_varint(out, len(op[1]))
            out += op[1]
    return bytes(out)
