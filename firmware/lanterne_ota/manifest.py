# The signed release manifest (format 1): what a release is, and the Ed25519 signature over it.
# One implementation for both sides: the board parses and checks it, the host builds it with
# the same functions (docs/ota.md has every byte). Runs on MicroPython and CPython.
#
#   0   4  magic "LNTR"            4   1  format (1)           5   1  flags (bit 0: a MicroPython
#                                                                   image for the next OTA app
#                                                                   partition, not a library slot)
#   6   4  release counter u32: monotonic, a board refuses anything not above what it runs
#   10  4  image length            14  2  block size (4096)    16  32 image SHA-256
#   48  1  .mpy version            49  1  .mpy sub-version     50  1  .mpy arch (0: bytecode only)
#   51  3  minimum MicroPython version (major, minor, micro)   54  4  created (Unix seconds)
#   58  1+n  version text (ASCII, <= 32)
#   ..  1+32k  trusted keys to install when the release commits (k = 0: keep the board's)
#   ..  2+32b  SHA-256 of each block of the image (the last one shorter)
#   ..  8  key id: SHA-256(public key)[:8]
#   ..  64 Ed25519 signature of "LNTR-release-v1" + SHA-256(every byte before the key id)
# Integers are big-endian. The digest a start command names is SHA-256 of the whole manifest.
import hashlib
import struct

MAGIC = b"LNTR"
FORMAT = 1
DOMAIN = b"LNTR-release-v1"
_HEAD = ">4sBBIIH32sBBBBBBI"
HEAD_LEN = 58
FIRMWARE = 1  # flags bit 0
TRAILER_LEN = 72
MAX_VERSION = 32
MAX_KEYS = 8

# refusal codes (sent in the progress record with a sentence)
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
DIGEST_MISMATCH = "digest_mismatch"
TOO_BIG = "too_big"
MPY_MISMATCH = "mpy_mismatch"
MICROPYTHON_TOO_OLD = "micropython_too_old"
DOWNGRADE = "downgrade"
SAME_RELEASE = "same_release"


class ManifestError(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def key_id(public_key):
    return hashlib.sha256(bytes(public_key)).digest()[:8]


def signing_message(body):
    return DOMAIN + hashlib.sha256(bytes(body)).digest()


def version_text(v):
    return "%d.%d.%d" % tuple(v)


class Manifest:
    def __init__(self, data):
        data = bytes(data)
        n = len(data)
        if n < HEAD_LEN + 4 + TRAILER_LEN or data[:4] != MAGIC:
            raise ManifestError(MALFORMED, "not a release manifest (%d bytes)" % n)
        h = struct.unpack(_HEAD, data[:HEAD_LEN])
        if h[1] != FORMAT:
            raise ManifestError(MALFORMED, "manifest format %d (this board reads %d)" % (h[1], FORMAT))
        self.raw = data
        self.flags = h[2]
        self.counter = h[3]
        self.length = h[4]
        self.block = h[5]
        self.image_sha = h[6]
        self.mpy = (h[7], h[8], h[9])
        self.micropython = (h[10], h[11], h[12])
        self.created = h[13]
        at = HEAD_LEN
        vlen = data[at]
        try:
            self.version = data[at + 1 : at + 1 + vlen].decode()
        except UnicodeError:  # (found by the fuzzer: the parse runs before the signature is checked)
            raise ManifestError(MALFORMED, "manifest version text is not UTF-8") from None
        at += 1 + vlen
        if vlen > MAX_VERSION or at >= n:
            raise ManifestError(MALFORMED, "manifest version text truncated")
        nkeys = data[at]
        at += 1
        if nkeys > MAX_KEYS:
            raise ManifestError(MALFORMED, "manifest lists %d keys (at most %d)" % (nkeys, MAX_KEYS))
        self.keys = [data[at + 32 * i : at + 32 * (i + 1)] for i in range(nkeys)]
        at += 32 * nkeys
        if at + 2 > n:
            raise ManifestError(MALFORMED, "manifest truncated in its key list")
        nblocks = (data[at] << 8) | data[at + 1]
        at += 2
        self.blocks_at = at
        self.nblocks = nblocks
        at += 32 * nblocks
        if at + TRAILER_LEN != n:
            raise ManifestError(MALFORMED, "manifest of %d bytes, its fields say %d" % (n, at + TRAILER_LEN))
        if self.block == 0 or self.block % 4096 or nblocks != (self.length + self.block - 1) // self.block or self.length == 0:
            raise ManifestError(MALFORMED, "%d block hashes for %d bytes in %d-byte blocks" % (nblocks, self.length, self.block))
        self.body_len = at
        self.key_id = data[at : at + 8]
        self.signature = data[at + 8 :]

    def block_sha(self, i):
        at = self.blocks_at + 32 * i
        return self.raw[at : at + 32]

    def block_len(self, i):
        return min(self.block, self.length - i * self.block)

    def digest(self):
        return hashlib.sha256(self.raw).digest()

    def check_signature(self, trusted):
        """Raise ManifestError unless one of `trusted` (32-byte public keys) signed it."""
        key = None
        for k in trusted:
            if key_id(k) == self.key_id:
                key = k
                break
        if key is None:
            raise ManifestError(UNKNOWN_KEY, "signed by key %s, which this board does not trust" % _hex(self.key_id))
        from lanterne_ota import ed25519

        if not ed25519.verify(key, signing_message(memoryview(self.raw)[: self.body_len]), self.signature):
            raise ManifestError(BAD_SIGNATURE, "the signature by key %s does not verify" % _hex(self.key_id))

    def check_target(self, mpy, micropython, slot_bytes, running_counter, force=False):
        """Raise ManifestError unless this board can run the release: its .mpy format (version,
        sub-version, arch) and MicroPython version, the slot's size, and no downgrade."""
        # As MicroPython's loader (py/persistentcode.c): the version must match; the sub-version
        # and the arch only matter for native code (arch 0: bytecode only, any port). A
        # MicroPython image brings its own loader: no .mpy or version to match.
        if self.flags & FIRMWARE:
            pass
        elif self.mpy[0] != mpy[0] or (self.mpy[2] and (self.mpy[1] != mpy[1] or self.mpy[2] != mpy[2])):
            raise ManifestError(
                MPY_MISMATCH,
                "built for .mpy v%d.%d%s; this board loads v%d.%d" % (self.mpy[0], self.mpy[1], " arch %d" % self.mpy[2] if self.mpy[2] else "", mpy[0], mpy[1]),
            )
        if not self.flags & FIRMWARE and tuple(micropython) < tuple(self.micropython):
            raise ManifestError(
                MICROPYTHON_TOO_OLD,
                "needs MicroPython %s or newer; this board runs %s" % (version_text(self.micropython), version_text(micropython)),
            )
        if self.length > slot_bytes:
            raise ManifestError(TOO_BIG, "image of %d bytes does not fit the %d-byte slot" % (self.length, slot_bytes))
        if self.counter == running_counter and not force:
            raise ManifestError(SAME_RELEASE, "release %d (%s) is the one running" % (self.counter, self.version))
        if self.counter < running_counter and not force:
            raise ManifestError(
                DOWNGRADE, "release %d (%s) is older than the running release %d: a downgrade needs force" % (self.counter, self.version, running_counter)
            )


def _hex(b):
    return "".join("%02x" % x for x in b)


# -- building (host side; runs on the board too, for tests) -------------------------------------
def encode_body(counter, image, version, mpy, micropython, created=0, keys=(), block=4096, image_sha=None, flags=0):
    """Everything the signature covers. `image_sha` overrides the image's own hash (tests)."""
    v = version.encode()
    if len(v) > MAX_VERSION:
        raise ValueError("version text over %d bytes" % MAX_VERSION)
    if len(keys) > MAX_KEYS:
        raise ValueError("at most %d trusted keys" % MAX_KEYS)
    n = (len(image) + block - 1) // block
    out = struct.pack(
        _HEAD, MAGIC, FORMAT, flags, counter, len(image), block, image_sha or hashlib.sha256(image).digest(),
        mpy[0], mpy[1], mpy[2], micropython[0], micropython[1], micropython[2], created,
    )  # fmt: skip
    out += bytes((len(v),)) + v + bytes((len(keys),)) + b"".join(bytes(k) for k in keys)
    out += struct.pack(">H", n)
    for i in range(n):
        out += hashlib.sha256(image[i * block : (i + 1) * block]).digest()
    return out


def assemble(body, public_key, signature):
    return bytes(body) + key_id(public_key) + bytes(signature)
