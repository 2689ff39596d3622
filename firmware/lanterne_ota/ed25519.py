# Ed25519 signature verification (RFC 8032, section 5.1), pure Python for MicroPython.
#
# MicroPython exposes no asymmetric crypto and its hashlib has no SHA-512, so both are here:
# SHA-512 as FIPS 180-4 defines it, and the curve arithmetic on Python integers (C big-int
# code does the work: about 6 ms per verify on the unix port, a few hundred ms on an ESP32,
# once per update). Verification only: boards hold public keys, never private ones.
#
# Points are kept in extended twisted-Edwards coordinates (X:Y:Z:T), x = X/Z, y = Y/Z,
# x*y = T/Z (RFC 8032 5.1.4), so no inversion happens until the one final encoding. The
# check is [S]B - [k]A == R, done as one double-scalar multiplication (Shamir's trick) whose
# result is encoded and compared with R's bytes: a non-canonical or off-curve R never matches.
# Runs unchanged on CPython (tests compare it with the `cryptography` package's signatures).
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665/121666
D2 = (2 * D) % P
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752  # 2^((p-1)/4)
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
B = (_BX, _BY, 1, (_BX * _BY) % P)
IDENTITY = (0, 1, 1, 0)

# -- SHA-512 (FIPS 180-4) -------------------------------------------------------------------
# Initial hash value and round constants: the first 64 bits of the fractional parts of the
# square roots (H0) and cube roots (K) of the first 8 and 80 primes, big-endian.
_H0 = (
    b"\x6a\x09\xe6\x67\xf3\xbc\xc9\x08\xbb\x67\xae\x85\x84\xca\xa7\x3b\x3c\x6e\xf3\x72\xfe\x94\xf8\x2b"
    b"\xa5\x4f\xf5\x3a\x5f\x1d\x36\xf1\x51\x0e\x52\x7f\xad\xe6\x82\xd1\x9b\x05\x68\x8c\x2b\x3e\x6c\x1f"
    b"\x1f\x83\xd9\xab\xfb\x41\xbd\x6b\x5b\xe0\xcd\x19\x13\x7e\x21\x79"
)
_K = bytes.fromhex(
    "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc3956c25bf348b53859f111f1b605d019"
    "923f82a4af194f9bab1c5ed5da6d8118d807aa98a303024212835b0145706fbe243185be4ee4b28c550c7dc3d5ffb4e2"
    "72be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235c19bf174cf692694e49b69c19ef14ad2efbe4786384f25e3"
    "0fc19dc68b8cd5b5240ca1cc77ac9c652de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5"
    "983e5152ee66dfaba831c66d2db43210b00327c898fb213fbf597fc7beef0ee4c6e00bf33da88fc2d5a79147930aa725"
    "06ca6351e003826f142929670a0e6e7027b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed53380d139d95b3df"
    "650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353ba2bfe8a14cf10364a81a664bbc423001"
    "c24b8b70d0f89791c76c51a30654be30d192e819d6ef5218d69906245565a910f40e35855771202a106aa07032bbd1b8"
    "19a4c116b8d2d0c81e376c085141ab532748774cdf8eeb9934b0bcb5e19b48a8391c0cb3c5c95a634ed8aa4ae3418acb"
    "5b9cca4f7763e373682e6ff3d6b2b8a3748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
    "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532bca273eceea26619cd186b8c721c0c207"
    "eada7dd6cde0eb1ef57d4f7fee6ed17806f067aa72176fba0a637dc5a2c898a6113f9804bef90dae1b710b35131c471b"
    "28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc431d67c49c100d4c4cc5d4becb3e42b6597f299cfc657e2a"
    "5fcb6fab3ad6faec6c44198c4a475817"
)
_M64 = const(0xFFFFFFFFFFFFFFFF)


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def _compress(h, block, w):
    # One 128-byte block into the state h (list of 8 ints); w: a list of 80 reused between blocks.
    k = _K
    for t in range(16):
        w[t] = struct.unpack_from(">Q", block, t * 8)[0]
    for t in range(16, 80):
        x, y = w[t - 15], w[t - 2]
        s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
        s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & _M64
    a, b, c, d, e, f, g, hh = h
    for t in range(80):
        s1 = _rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)
        ch = (e & f) ^ (~e & g)
        t1 = (hh + s1 + ch + struct.unpack_from(">Q", k, t * 8)[0] + w[t]) & _M64
        s0 = _rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)
        maj = (a & b) ^ (a & c) ^ (b & c)
        t2 = (s0 + maj) & _M64
        hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M64, c, b, a, (t1 + t2) & _M64
    for i, v in enumerate((a, b, c, d, e, f, g, hh)):
        h[i] = (h[i] + v) & _M64


def sha512(data):
    """SHA-512 digest (64 bytes) of `data` (bytes-like)."""
    data = bytes(data)
    n = len(data)
    # Padding: 0x80, zeros, then the length in bits as a 128-bit big-endian number.
    pad = b"\x80" + bytes((111 - n) % 128) + struct.pack(">QQ", 0, n * 8)
    msg = data + pad
    h = list(struct.unpack(">8Q", _H0))
    w = [0] * 80
    for off in range(0, len(msg), 128):
        _compress(h, memoryview(msg)[off : off + 128], w)
    return struct.pack(">8Q", *h)


# -- the curve ----------------------------------------------------------------------------------
def _add(p, q):
    # RFC 8032 5.1.4, "add-2008-hwcd-3": complete for every pair of points on the curve.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p, with_t=True):
    # RFC 8032 5.1.4, "dbl-2008-hwcd". T is an input of additions only: a doubling that
    # another doubling follows skips it.
    x1, y1, z1, _ = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P if with_t else 0)


def _neg(p):
    x, y, z, t = p
    return ((P - x) % P, y, z, (P - t) % P)


def encode_point(p):
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x = x * zi % P
    y = y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode_point(s):
    """32 bytes -> point, or None when they encode no point of the curve (RFC 8032 5.1.3)."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    v3 = v * v * v % P
    x = u * v3 * pow(u * v3 * v3 * v % P, (P - 5) // 8, P) % P
    vx2 = v * x * x % P
    if vx2 != u:
        if vx2 != (P - u) % P:
            return None
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _double_scalar(s, b, k, a):
    # [s]b + [k]a with one shared chain of doublings (Shamir's trick).
    table = (None, b, a, _add(b, a))
    q = IDENTITY
    for i in range(252, -1, -1):  # s and k are below L < 2^253
        j = ((s >> i) & 1) | (((k >> i) & 1) << 1)
        q = _double(q, j)
        if j:
            q = _add(q, table[j])
    return q


def verify(public_key, message, signature):
    """True when `signature` (64 bytes) is `public_key`'s (32 bytes) Ed25519 signature of `message`."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    a = decode_point(bytes(public_key))
    if a is None:
        return False
    r = bytes(signature[:32])
    s = int.from_bytes(bytes(signature[32:]), "little")
    if s >= L:
        return False
    k = int.from_bytes(sha512(r + bytes(public_key) + bytes(message)), "little") % L
    return encode_point(_double_scalar(s, B, k, _neg(a))) == r
