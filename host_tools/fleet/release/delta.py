"""Delta encoding: per-block recipes that rebuild a new ROMFS image from the one a board runs.

A ROMFS image packs its files one after another, so a module that changes size shifts every
byte after it: comparing fixed blocks would resend the whole image. Instead each 4 KiB block of
the new image is described by COPY ops (bytes found anywhere in the running image: unchanged
modules, however far they moved) and DATA ops (literal bytes), the whole recipe raw-deflated
when that is smaller. The board applies it with `lanterne_ota.delta` (the same op format) and
checks the block against the manifest's hash.

Matching: first the bytes at the same offset (a MicroPython image rebuilt with a small change
keeps most of its bytes in place: one COPY per block, found without an index); otherwise every
K-byte substring of the old image is indexed by a hash, and for each position of the new block
the longest match among the candidates is taken (greedy, extended forward), kept when it is at
least MIN_MATCH bytes (a COPY op costs ~5 bytes). The index is built only for images up to
INDEX_LIMIT bytes (a library slot); larger blocks that moved go as literals.
"""

from __future__ import annotations

import zlib

from host_tools.fleet.release import ota_module

K = 8
MIN_MATCH = 12
MAX_CANDIDATES = 16
INDEX_LIMIT = 512 * 1024
ALIGNED_LITERAL = 0.25  # the same-offset ops are kept when at most this share is literal


class Index:
    def __init__(self, old: bytes):
        self.old = old
        self.table: dict[bytes, list[int]] = {}
        for i in range(len(old) - K + 1):
            lst = self.table.setdefault(old[i : i + K], [])
            if len(lst) < MAX_CANDIDATES:
                lst.append(i)

    def longest(self, new: bytes, pos: int, end: int) -> tuple[int, int]:
        best_off, best_len = -1, 0
        cands = self.table.get(new[pos : pos + K])
        if not cands:
            return best_off, best_len
        old = self.old
        for off in cands:
            n = K
            while pos + n < end and off + n < len(old) and old[off + n] == new[pos + n]:
                n += 1
            if n > best_len:
                best_off, best_len = off, n
        return best_off, best_len


def block_ops(index: Index | None, new: bytes, start: int, end: int) -> list[tuple]:
    ops: list[tuple] = []
    lit = bytearray()
    pos = start
    while pos < end:
        off, n = index.longest(new, pos, end) if index is not None and end - pos >= K else (-1, 0)
        if n >= MIN_MATCH:
            if lit:
                ops.append(("data", bytes(lit)))
                lit = bytearray()
            ops.append(("copy", off, n))
            pos += n
        else:
            lit.append(new[pos])
            pos += 1
    if lit:
        ops.append(("data", bytes(lit)))
    return ops


def compress(recipe: bytes, plain: bool = False) -> tuple[int, bytes]:
    """(flags, bytes): raw deflate with the board's window when it is smaller, else as is."""
    if plain:
        return 0, recipe
    wbits = ota_module("delta").WBITS
    c = zlib.compressobj(9, zlib.DEFLATED, -wbits, 9)
    packed = c.compress(recipe) + c.flush()
    return (1, packed) if len(packed) < len(recipe) else (0, recipe)


def aligned_ops(old: bytes, new: bytes, start: int, end: int) -> list[tuple] | None:
    """The block as COPYs of the same offsets and literals, or None when too little is in place."""
    if old[start:end] == new[start:end]:
        return [("copy", start, end - start)]
    ops: list[tuple] = []
    lit = bytearray()
    literal = 0
    pos = start
    while pos < end:
        run = pos
        while run < end and run < len(old) and old[run] == new[run]:
            run += 1
        if run - pos >= MIN_MATCH:
            if lit:
                ops.append(("data", bytes(lit)))
                lit = bytearray()
            ops.append(("copy", pos, run - pos))
            pos = run
        else:
            stop = max(run, pos + 1)
            lit += new[pos:stop]
            literal += stop - pos
            pos = stop
    if lit:
        ops.append(("data", bytes(lit)))
    return ops if literal <= ALIGNED_LITERAL * (end - start) else None


def plan(old: bytes | None, new: bytes, block: int = 4096) -> list[list[tuple]]:
    """The ops of every block of `new`; `old` None: literals only (a full transfer)."""
    index = None
    out = []
    for start in range(0, len(new), block):
        end = min(start + block, len(new))
        ops = aligned_ops(old, new, start, end) if old else None
        if ops is None:
            if old and len(old) <= INDEX_LIMIT and index is None:
                index = Index(old)
            ops = block_ops(index, new, start, end)
        out.append(ops)
    return out


def recipes(old: bytes | None, new: bytes, block: int = 4096) -> list[tuple[int, bytes]]:
    """[(flags, recipe)] for every block of `new`, each in one part."""
    encode = ota_module("delta").encode
    return [compress(encode(ops)) for ops in plan(old, new, block)]


def split(ops: list[tuple], length: int, k: int) -> list[tuple[int, int, list[tuple]]]:
    """The ops of a block cut into `k` parts of consecutive output: [(offset, length, ops)]."""
    size = -(-length // k)
    cuts = list(range(0, length, size)) + [length]
    out = []
    part, pos, bounds = [], 0, iter(cuts[1:])
    end = next(bounds)
    for op in ops:
        n = op[2] if op[0] == "copy" else len(op[1])
        done = 0
        while done < n:
            take = min(n - done, end - pos)
            part.append(("copy", op[1] + done, take) if op[0] == "copy" else ("data", op[1][done : done + take]))
            done += take
            pos += take
            if pos == end:
                out.append((end - sum(_len(o) for o in part), sum(_len(o) for o in part), part))
                part = []
                end = next(bounds, length)
    return out


def _len(op: tuple) -> int:
    return op[2] if op[0] == "copy" else len(op[1])


def parts(ops: list[tuple], length: int, budget: int, plain: bool = False) -> list[tuple[int, int, int, bytes]]:
    """[(offset, out_len, flags, recipe)] of a block, in as few parts as keep every recipe within
    `budget` bytes (the board's message size, less the framing); `plain`: never deflated."""
    encode = ota_module("delta").encode
    k = 1
    while True:
        out = [(off, n, *compress(encode(p), plain)) for off, n, p in split(ops, length, k)]
        if all(len(r) <= budget for _o, _n, _f, r in out) or k >= 64:
            return out
        k *= 2
