# Lanterne store: append-only, power-cut-safe log of encoded readings on flash, drained in
# batches and committed only after the uplink acknowledged. Runs on MicroPython and CPython.
#
#   s = Store("/store", capacity_bytes=cfg["store_bytes"])
#   seq = s.append(encoded)        # durable when it returns; -1 if it could not be kept
#   batch = s.peek(240)            # [(seq, record), ...] ascending, fills the frame budget
#   ... publish, wait for the PUBACK ...
#   s.ack(batch)                   # only now are those records committed as sent
#   s.held                         # readings the flash refused, kept in RAM until it takes writes
#
# Folder layout (docs/store.md has every byte and why it survives a power cut):
#   <base:08x>.seg  segment: 4-byte header, then frames [len][record][crc16]; a frame's seq
#                   is implicit, base + its index, and is covered by the CRC
#   ack             ack log: small framed entries, the last valid one wins; compacted by
#                   writing ack.tmp and renaming it over the log
#
# Drain order: oldest first while the backlog fits one batch. When it does not, readings
# appended from then on are "fresh": each batch gives up to fresh_share % of its budget to
# them (in order), the rest to the backlog (in order), until the backlog is gone. Every
# batch is ascending by seq. Comments, not docstrings: they cost no RAM when compiling.
#
# A flash that refuses writes (full: ENOSPC, or an I/O error): the record is held in RAM (a list,
# at most hold_bytes of records, nothing taken until the flash refuses) and appended, oldest
# first, before the next record once the flash takes writes again; seqs are handed out only
# then, so order is kept. When the hold is full, its oldest record is dropped and counted as an
# overflow drop. Held records are not durable: a power cut loses them (docs/store.md, "A flash
# that refuses writes").
import os
import sys
from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


HOLD_HEAP_FREE = const(8192)  # the hold takes heap only while this much stays free (after a collection)
MAX_RECORD = const(254)  # length bytes 0x00 and 0xFF never frame a record (zeroed/erased flash)
ACK_ROOM = const(160)  # the ack log never grows beyond this (outside the segment budget)
_HEADER = const(4)  # segment header: b"LS", format version, 0
_VERSION = const(1)
_FRAME = const(3)  # framing bytes per record: length byte + CRC-16
_ACK_MAX = const(120)  # compact the ack log beyond this: it stays inline in littlefs metadata
# Ack-log entry payloads, told apart by their length:
_ENTRY_HEAD = const(4)  # head
_ENTRY_SPLIT = const(12)  # head, split, fresh
_ENTRY_FULL = const(20)  # head, split, fresh, dropped, overflow_until

# CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, check 0x29B1), four bits at a time: a
# 16-entry table (a 256-entry one takes 512 bytes of heap), no allocation.
_CRC_NIBBLE = (
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
)


def _crc_byte(crc, b):
    t = _CRC_NIBBLE
    crc = ((crc << 4) & 0xFFFF) ^ t[((crc >> 12) ^ (b >> 4)) & 15]
    return ((crc << 4) & 0xFFFF) ^ t[((crc >> 12) ^ b) & 15]


def crc16(buf, start, end, crc=0xFFFF):
    # CRC of buf[start:end] (no slice made), continuing from crc.
    t = _CRC_NIBBLE
    for i in range(start, end):
        b = buf[i]
        crc = ((crc << 4) & 0xFFFF) ^ t[((crc >> 12) ^ (b >> 4)) & 15]
        crc = ((crc << 4) & 0xFFFF) ^ t[((crc >> 12) ^ b) & 15]
    return crc


def frame_crc(seq, buf, n):
    # CRC of a frame: its implicit seq (32-bit little-endian), its length byte, its record.
    c = _crc_byte(0xFFFF, seq & 0xFF)
    c = _crc_byte(c, (seq >> 8) & 0xFF)
    c = _crc_byte(c, (seq >> 16) & 0xFF)
    c = _crc_byte(c, (seq >> 24) & 0xFF)
    c = _crc_byte(c, n)
    return crc16(buf, 0, n, c)


def _put32(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF
    b[o + 2] = (v >> 16) & 0xFF
    b[o + 3] = (v >> 24) & 0xFF


def _get32(b, o):
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


# File access. MicroPython streams take a length (write(buf, n), readinto(buf, n)): no slice
# is allocated. flush() is the durability point: lfs_file_sync on littlefs, fsync(2) on the
# unix port. On CPython: unbuffered files and os.fsync.
if sys.implementation.name == "micropython":
    _open = open

    def _write_n(f, buf, n):
        return f.write(buf, n)

    def _readinto_n(f, buf, n):
        return f.readinto(buf, n)

    def _sync(f):
        f.flush()

    def _names(path):
        return [e[0] for e in os.ilistdir(path)]

    def _heap_free():
        import gc

        gc.collect()
        return gc.mem_free()

else:

    def _open(path, mode):
        return open(path, mode, buffering=0)

    def _write_n(f, buf, n):
        return f.write(memoryview(buf)[:n])

    def _readinto_n(f, buf, n):
        return f.readinto(memoryview(buf)[:n])

    def _sync(f):
        os.fsync(f.fileno())

    _names = os.listdir

    def _heap_free():
        return HOLD_HEAP_FREE  # (CPython: no heap to guard)


def _segment_base(name):
    # Base seq from a segment's file name, -1 for any other file.
    if len(name) != 12 or not name.endswith(".seg"):
        return -1
    try:
        return int(name[:8], 16)
    except ValueError:
        return -1


def _overlap(a, b, c, d):
    # How many integers are in both [a, b) and [c, d).
    lo = a if a > c else c
    hi = b if b < d else d
    return hi - lo if hi > lo else 0


class Store:
    # Append-only log of opaque records (1..254 bytes) in segment files under `path`.
    #   capacity_bytes: segment bytes the store may hold (the ack log adds at most ACK_ROOM).
    #     When a new segment would not fit, the oldest is dropped: its unsent records are
    #     counted in `dropped` and `overflow` is True until the next reading is appended.
    #   segment_bytes: one segment file; on littlefs a multiple of the block size (4096).
    #   reserve_bytes: free space left on the filesystem (statvfs, checked before each new
    #     segment), so config writes succeed even if capacity exceeds what is free.
    #   fresh_share: percent of each batch's budget for fresh readings while a backlog drains.
    #   hold_bytes: RAM for records the flash refused (each counts its length + 1 byte), taken
    #     only while it refuses, and only while HOLD_HEAP_FREE bytes of heap stay free (else the
    #     record is dropped: a board at its heap floor keeps its heap for the rest); 0: none.
    # Counters: bytes_written (every byte through the filesystem API: headers, frames, ack
    # log), record_bytes, appended, syncs, files_created, files_removed, corrupt, errors.
    # Store() raises OSError only when the folder cannot be created or read; after that no
    # method raises OSError: failures are counted in errors, last_error holds the errno.
    hold_bytes = 1024

    def __init__(self, path, capacity_bytes=262144, segment_bytes=4096, reserve_bytes=16384, fresh_share=50, hold_bytes=1024):
        if segment_bytes < _HEADER + _FRAME + MAX_RECORD:
            raise ValueError("segment_bytes too small")
        if capacity_bytes // segment_bytes < 2:
            raise ValueError("capacity_bytes must hold two segments")
        self.path = path.rstrip("/")
        self.capacity_bytes = capacity_bytes
        self.segment_bytes = segment_bytes
        self.reserve_bytes = reserve_bytes
        self.fresh_share = fresh_share
        self._slots = capacity_bytes // segment_bytes
        self._rbuf = bytearray(MAX_RECORD + 2)  # one frame being read
        self._ebuf = bytearray(_ENTRY_FULL + _FRAME)  # one ack-log entry
        self._small = bytearray(2)
        # Records the flash refused, oldest first (bytes), until it takes writes again; each counts
        # its length + 1 (as framed) against hold_bytes. Grown only while the flash refuses. (One
        # attribute: a few more would grow the instance's table, ~700 bytes at a 64 KB heap floor;
        # hold_bytes is the class's unless another is given.)
        self._held = []
        if hold_bytes != Store.hold_bytes:
            self.hold_bytes = hold_bytes
        # Resume points of the drain cursors: seq, segment base, offset; backlog, fresh, read().
        self._hints = [-1, -1, 0, -1, -1, 0, -1, -1, 0]
        self._file = None  # newest segment, open for append
        self._appendable = False  # the newest segment may take more frames
        self._size = 0  # bytes in the newest segment
        self._ack_file = None
        self._ack_size = 0
        self._used = 0  # bytes taken by the last _collect
        self.bytes_written = self.record_bytes = self.appended = self.syncs = 0
        self.files_created = self.files_removed = self.corrupt = self.errors = 0
        self.last_error = None
        self._recover()

    # -- public -------------------------------------------------------------------------------
    @property
    def next_seq(self):
        return self._next

    @property
    def pending(self):
        # Records appended and neither acknowledged nor dropped.
        return (self._split - self._head) + (self._next - self._fresh)

    @property
    def overflow(self):
        # True when readings were lost: the next reading must carry the overflow flag.
        return self._next < self._overflow_until

    @property
    def dropped(self):
        # Records lost to overflow or failed appends, over the store's life (persisted).
        return self._dropped

    def append(self, record, length=-1):
        # Append record (its first `length` bytes); return its seq once durable. Returns -1,
        # never raises OSError, when it cannot be written now (I/O error, filesystem full): the
        # record is held in RAM (`held`) and appended before the next one once the flash takes
        # writes; the errno is in last_error. A record the full hold cannot keep pushes out
        # the oldest held one: that one counts as dropped and overflow is raised.
        n = len(record) if length < 0 else length
        if n < 1 or n > MAX_RECORD:
            raise ValueError("record must be 1..254 bytes")
        lost = self._next < self._overflow_until  # readings were lost since the last append
        held = self._held
        while held:  # the held records first, oldest first, while the flash takes them
            if self._write(held[0], len(held[0])) < 0:
                break
            held.pop(0)
        seq = -1 if held else self._write(record, n)
        if seq < 0:
            self._keep(record, n)
        elif lost:  # the flash takes writes again: the count of what was lost goes on it
            try:
                self._log_state(True)
            except OSError as e:
                self._fault(e)
        return seq

    def _write(self, record, n):
        # One frame appended and synced: its seq, or -1 (the errno in last_error).
        try:
            if self._file is None and self._appendable:
                self._file = _open(self._seg_path(self._base(self._count - 1)), "ab")
            if self._file is None or self._size + n + _FRAME > self.segment_bytes:
                self._roll()
            seq = self._next
            crc = frame_crc(seq, record, n)
            f = self._file
            b = self._small
            b[0] = n
            _write_n(f, b, 1)
            if n == len(record):
                f.write(record)
            else:
                _write_n(f, record, n)
            b[0] = crc & 0xFF
            b[1] = crc >> 8
            _write_n(f, b, 2)
            _sync(f)
        except OSError as e:
            self._fault(e)
            self._seal()
            return -1
        self._size += n + _FRAME
        self._next = seq + 1
        self.bytes_written += n + _FRAME
        self.record_bytes += n
        self.appended += 1
        self.syncs += 1
        return seq

    def peek(self, budget=1024, overhead=0, max_records=0):
        # Next batch to send, [(seq, record), ...] ascending by seq; marks nothing as sent.
        # Takes records while the sum of len(record) + overhead (the transport's framing per
        # record) fits budget, and at most max_records if non-zero. A record larger than the
        # budget comes alone rather than never.
        out = []
        if self._head >= self._next:
            return out
        if self._split == self._head:
            end = self._collect(0, self._head, self._next, budget, overhead, max_records, out, True)
            if end < self._next and out:
                # More than a batch waiting: readings appended from now on are fresh.
                self._split = self._fresh = self._next
            return out
        fresh = []
        limit = max_records
        share = self.fresh_share
        end = self._fresh
        used = 0
        if not limit or limit * share // 100:
            # fresh readings first, within their share of the budget (and of max_records)
            end = self._collect(1, end, self._next, budget * share // 100, overhead, limit * share // 100, fresh, False)
            used = self._used
        if not limit or len(fresh) < limit:
            room = limit - len(fresh) if limit else 0
            bend = self._collect(0, self._head, self._split, budget - used, overhead, room, out, not fresh)
            used += self._used
            if bend >= self._split and end < self._next and (not limit or len(fresh) + len(out) < limit):
                # The whole backlog fits: the rest of the budget goes to fresh readings.
                room = limit - len(fresh) - len(out) if limit else 0
                self._collect(1, end, self._next, budget - used, overhead, room, fresh, not (out or fresh))
        out.extend(fresh)
        return out

    def ack(self, batch):
        # Commit a batch from peek() as delivered; return how many records that committed.
        # One ack-log entry is synced before it returns; segments wholly acknowledged are then
        # deleted. Records already committed are ignored: a repeated ack is harmless.
        #
        # Only the seqs named in the batch are committed, one by one: a cursor moves past a seq
        # only when that very seq is in the batch, never over a gap. The acknowledged set is
        # [0, head) + [split, fresh), so a seq is committed when it extends head, extends
        # fresh, or (while [split, fresh) is empty) opens that range. This holds whatever state
        # the batch was peeked in: the split of an interleaved drain lives in RAM until a fresh
        # record is acknowledged, so after a restart a batch peeked before it (backlog run and
        # fresh run with a gap between) meets a single cursor; its fresh run then opens the
        # range again. A seq that fits none of these (a stale batch peeked before other acks
        # changed the ranges) stays pending and is sent again: never a loss, at worst a
        # duplicate the host drops by seq.
        nxt = self._next
        for item in batch:
            if item[0] >= nxt:
                raise ValueError("ack of a seq never appended")
        head = self._head
        split = self._split
        fresh = self._fresh
        n = 0
        for item in batch:
            s = item[0]
            if s < head or split <= s < fresh:
                continue  # already committed
            if s == head:
                head += 1
                if head >= split:  # backlog through: the fresh range joins it
                    if fresh > head:
                        head = fresh
                    split = fresh = head
            elif s == fresh:
                fresh += 1
            elif split == fresh:
                split = s  # nothing acknowledged past head: s starts the fresh range
                fresh = s + 1
            else:
                continue  # not representable: left pending, sent again
            n += 1
        if n:
            self._head = head
            self._split = split
            self._fresh = fresh
            self._normalize()
            try:
                self._log_state(False)
                self._delete_acked()
            except OSError as e:
                self._fault(e)  # not persisted: those records may be sent again after a reboot
        return n

    def stats(self):
        return {
            "next_seq": self._next,
            "head": self._head,
            "pending": self.pending,
            "held": self.held,
            "segments": self._count,
            "slots": self._slots,
            "dropped": self._dropped,
            "overflow": self.overflow,
            "corrupt": self.corrupt,
            "appended": self.appended,
            "record_bytes": self.record_bytes,
            "bytes_written": self.bytes_written,
            "syncs": self.syncs,
            "files_created": self.files_created,
            "files_removed": self.files_removed,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    def close(self):
        self._seal()
        self._appendable = False
        if self._ack_file is not None:
            self._ack_file.close()
            self._ack_file = None

    # -- records the flash refused ----------------------------------------------------------
    @property
    def held(self):
        # Records the flash refused, waiting in RAM (not durable: a power cut loses them).
        return len(self._held)

    def _keep(self, record, n):
        # Hold a copy of record[:n] behind the others; the oldest held make room when the hold is
        # full (or the heap has none now): those are lost, counted, and the next reading flagged.
        held = self._held
        lost = 0
        if n + 1 > self.hold_bytes:
            lost = 1  # no hold (hold_bytes 0), or one too small for this record
        else:
            used = n + 1
            for r in held:
                used += len(r) + 1
            while used > self.hold_bytes:
                used -= len(held.pop(0)) + 1
                lost += 1
            if _heap_free() < HOLD_HEAP_FREE:
                lost += 1  # a small heap (a board at its floor): the reading is lost, the board runs on
            else:
                try:
                    held.append(bytes(record) if n == len(record) else bytes(record[:n]))
                except MemoryError:
                    lost += 1
        if lost:
            self._dropped += lost
            if self._next + 1 > self._overflow_until:
                self._overflow_until = self._next + 1

    # -- segments -----------------------------------------------------------------------------
    def _seg_path(self, base):
        return "%s/%08x.seg" % (self.path, base)

    def _base(self, k):
        # Base seq of the k-th oldest segment (a ring of bases, oldest first).
        return self._seg[(self._first + k) % self._ring]

    def _end(self, k):
        # One past the last seq of the k-th oldest segment.
        return self._base(k + 1) if k + 1 < self._count else self._next

    def _remove(self, path):
        os.remove(path)
        self.files_removed += 1

    def _pop_oldest(self):
        self._remove(self._seg_path(self._base(0)))
        self._first = (self._first + 1) % self._ring
        self._count -= 1

    def _pop_newest(self):
        self._remove(self._seg_path(self._base(self._count - 1)))
        self._count -= 1

    def _seal(self):
        # No more frames go into the newest segment.
        f = self._file
        self._file = None
        self._appendable = False
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def _roll(self):
        # Start a segment at _next, first dropping the oldest while over capacity or short of
        # free space on the filesystem. Short of space only because something else filled it
        # (dropping every segment would not make the room): nothing is dropped, ENOSPC.
        self._seal()
        if self._count and self._base(self._count - 1) == self._next:
            self._pop_newest()  # no complete frame in it: an append failed there
        while self._count >= self._slots:
            self._drop_oldest(self._next + 2)  # the reading after this one carries the flag
        need = self.segment_bytes + self.reserve_bytes
        free = self._fs_free()
        if free >= 0 and free + self._count * self.segment_bytes < need:
            raise OSError(28)  # ENOSPC: not even an empty store would leave the reserve free
        while self._count and 0 <= free < need:
            self._drop_oldest(self._next + 2)
            free = self._fs_free()
        if 0 <= free < need:
            raise OSError(28)
        f = _open(self._seg_path(self._next), "wb")
        self.files_created += 1
        if self._count == self._ring:
            # The ring of bases grows by 16 (rarely: it starts with room for what was found).
            seg = array("I", bytes(4 * (self._ring + 16)))
            for k in range(self._count):
                seg[k] = self._base(k)
            self._seg = seg
            self._first = 0
            self._ring += 16
        self._seg[(self._first + self._count) % self._ring] = self._next
        self._count += 1
        self._file = f
        self._appendable = True
        b = self._small
        b[0] = 0x4C  # "L"
        b[1] = 0x53  # "S"
        _write_n(f, b, 2)
        b[0] = _VERSION
        b[1] = 0
        _write_n(f, b, 2)
        # Not synced alone: the first frame's sync makes header and frame durable together.
        self._size = _HEADER
        self.bytes_written += _HEADER

    def _fs_free(self):
        # Bytes free on the filesystem (statvfs), -1 when it cannot say.
        try:
            st = os.statvfs(self.path)
        except (OSError, AttributeError):
            return -1
        return st[0] * st[4]

    def _drop_oldest(self, overflow_until):
        # Drop the oldest segment; its unsent records count as dropped. The new head is
        # persisted before the file goes.
        end = self._end(0)
        if end > self._head:
            base = self._base(0)
            lost = _overlap(base, end, self._head, self._split) + _overlap(base, end, self._fresh, self._next)
            self._head = end
            self._normalize()
            if lost:
                self._dropped += lost
                if overflow_until > self._overflow_until:
                    self._overflow_until = overflow_until
            try:
                self._log_state(True)
            except OSError as e:
                # Still delete: a restart clamps head to the oldest segment left, so only the
                # drop count and the flag go unrecorded. Freeing space matters more.
                self._fault(e)
        self._pop_oldest()

    def _delete_acked(self):
        # Delete segments whose records are all acknowledged (the open newest one stays).
        while self._count and self._end(0) <= self._head and (self._count > 1 or not self._appendable):
            if self._count == 1:
                self._seal()
            self._pop_oldest()

    def _fault(self, e):
        self.errors += 1
        self.last_error = e.args[0] if e.args else str(e)

    # -- reading ------------------------------------------------------------------------------
    def _read_frame(self, f, seq):
        # Read the frame at f's position into _rbuf: its record length if whole and its CRC
        # matches, else -1.
        b = self._rbuf
        if _readinto_n(f, b, 1) != 1:
            return -1
        n = b[0]
        if n == 0 or n > MAX_RECORD or _readinto_n(f, b, n + 2) != n + 2:
            return -1
        if frame_crc(seq, b, n) != b[n] | (b[n + 1] << 8):
            return -1
        return n

    def _collect(self, cursor, start, stop, budget, overhead, max_n, out, force):
        # Append records [start, stop) to out while they fit; return the seq it stopped at
        # and leave the bytes taken in _used. A damaged frame (CRC mismatch: flash damage)
        # ends its segment; when it is where the cursor stands, the cursor steps over the
        # rest of that segment and counts it in `corrupt`, so damage never stalls the drain.
        used = got = 0
        seq = start
        hints = self._hints
        h = cursor * 3
        while seq < stop:
            k = 0
            while k < self._count and self._end(k) <= seq:
                k += 1
            if k == self._count:
                break
            base = self._base(k)
            end = self._end(k)
            if end > stop:
                end = stop
            s = base
            off = _HEADER
            if hints[h] == seq and hints[h + 1] == base:
                s = seq
                off = hints[h + 2]
            full = False
            try:
                f = _open(self._seg_path(base), "rb")
            except OSError as e:  # the file is gone: as good as damaged
                self._fault(e)
                f = None
            if f is not None:
                try:
                    f.seek(off)
                    while s < end:
                        n = self._read_frame(f, s)
                        if n < 0:
                            break
                        if s >= seq:
                            cost = n + overhead
                            if (got and (used + cost > budget or got == max_n)) or (not got and not force and cost > budget):
                                full = True
                                break
                            out.append((s, bytes(self._rbuf[:n])))
                            used += cost
                            got += 1
                        off += n + _FRAME
                        s += 1
                finally:
                    f.close()
            hints[h] = s
            hints[h + 1] = base
            hints[h + 2] = off
            if full:
                seq = s
                break
            if s < end:
                if k == self._count - 1:
                    self._seal()  # new frames go to a new segment, past the damage
                if s < seq:
                    s = seq
                if got or cursor > 1 or start != (self._fresh if cursor else self._head):
                    seq = s
                    break
                self.corrupt += end - s
                if cursor:
                    self._fresh = end
                else:
                    self._head = end
                    self._normalize()
            seq = end
        self._used = used
        return seq

    # -- ack log ------------------------------------------------------------------------------
    def _normalize(self):
        # Backlog drained: the acknowledged part of the fresh range joins it, one cursor again.
        if self._head >= self._split:
            h = self._head if self._head > self._fresh else self._fresh
            self._head = self._split = self._fresh = h

    def _entry(self, full):
        # Encode the ack state as a frame in _ebuf: [len][head, (split, fresh, (dropped,
        # overflow_until))][crc16 of the payload]. Return its size.
        e = self._ebuf
        # The split needs persisting only once a fresh record was acknowledged (fresh > split):
        # until then the acknowledged set is just [.., head) and a 7-byte entry says it all.
        n = _ENTRY_FULL if full else (_ENTRY_SPLIT if self._fresh > self._split > self._head else _ENTRY_HEAD)
        e[0] = n
        _put32(e, 1, self._head)
        _put32(e, 5, self._split)
        _put32(e, 9, self._fresh)
        _put32(e, 13, self._dropped)
        _put32(e, 17, self._overflow_until)
        crc = crc16(e, 1, n + 1)
        e[n + 1] = crc & 0xFF
        e[n + 2] = crc >> 8
        return n + _FRAME

    def _log_state(self, full):
        # Persist the ack state: one entry appended to the ack log (a compaction when full).
        n = self._entry(full)
        if self._ack_size + n > _ACK_MAX:
            self._compact()
            return
        f = self._ack_file
        if f is None:
            f = self._ack_file = _open(self.path + "/ack", "ab")
        _write_n(f, self._ebuf, n)
        _sync(f)
        self._ack_size += n
        self.bytes_written += n
        self.syncs += 1

    def _compact(self):
        # The full state alone written to ack.tmp, synced, renamed over the log: rename is
        # atomic on littlefs and POSIX, so after a cut one whole log or the other is there.
        if self._ack_file is not None:
            self._ack_file.close()
            self._ack_file = None
        n = self._entry(True)
        tmp = self.path + "/ack.tmp"
        f = _open(tmp, "wb")
        try:
            _write_n(f, self._ebuf, n)
            _sync(f)
        finally:
            f.close()
        os.rename(tmp, self.path + "/ack")
        self._ack_size = n
        self.bytes_written += n
        self.syncs += 1
        self.files_created += 1

    def _load_ack_log(self):
        # Apply the ack log's valid entries in order; True when it must be rewritten (torn
        # tail, or over size).
        self._head = self._split = self._fresh = 0
        self._dropped = self._overflow_until = 0
        self._ack_size = 0
        try:
            f = _open(self.path + "/ack", "rb")
        except OSError:
            return False
        e = self._rbuf
        off = 0
        try:
            while _readinto_n(f, e, 1) == 1:
                n = e[0]
                if n != _ENTRY_HEAD and n != _ENTRY_SPLIT and n != _ENTRY_FULL:
                    break
                if _readinto_n(f, e, n + 2) != n + 2:
                    break
                if crc16(e, 0, n) != e[n] | (e[n + 1] << 8):
                    break
                self._head = self._split = self._fresh = _get32(e, 0)
                if n > _ENTRY_HEAD:
                    self._split = _get32(e, 4)
                    self._fresh = _get32(e, 8)
                if n > _ENTRY_SPLIT:
                    self._dropped = _get32(e, 12)
                    self._overflow_until = _get32(e, 16)
                off += n + _FRAME
            size = f.seek(0, 2)
        finally:
            f.close()
        self._ack_size = off
        return size != off

    # -- recovery -----------------------------------------------------------------------------
    def _recover(self):
        # Rebuild the state from the folder, at boot or after a power cut.
        try:
            os.mkdir(self.path)
        except OSError:
            pass  # exists
        names = _names(self.path)
        found = 0
        for name in names:
            if _segment_base(name) >= 0:
                found += 1
            elif name == "ack.tmp":
                self._remove(self.path + "/ack.tmp")  # compaction cut short: the old log stands
        self._ring = found + 16
        self._seg = array("I", bytes(4 * self._ring))
        self._first = self._count = 0
        for name in names:
            base = _segment_base(name)
            if base >= 0:  # insertion sort: listing order is not guaranteed
                k = self._count
                while k and self._seg[k - 1] > base:
                    self._seg[k] = self._seg[k - 1]
                    k -= 1
                self._seg[k] = base
                self._count += 1
        names = None
        rewrite = self._load_ack_log()
        nxt = self._fresh if self._fresh > self._head else self._head
        # The newest segment: count its complete frames. A torn tail (a frame whose append
        # never returned) is never read and nothing is written after it: the next append
        # opens a new segment. A segment with no complete frame is removed.
        while self._count:
            base = self._base(self._count - 1)
            k, size, valid = self._scan(base)
            if k == 0 and not (valid == size == _HEADER):
                self._pop_newest()
                if base > nxt:
                    nxt = base
                continue
            if base + k > nxt:
                nxt = base + k
            self._size = size
            self._appendable = valid == size
            break
        self._next = nxt
        # Clamp the cursors to what is on flash, then finish what a cut interrupted. An entry
        # with head <= split <= fresh broken (never written so) keeps only its head: that
        # sends records again rather than taking [split, fresh) for acknowledged.
        if not (self._head <= self._split <= self._fresh <= nxt):
            self._split = self._fresh = self._head
        low = self._base(0) if self._count else nxt
        if self._head < low:
            self._head = low
        if self._fresh < self._head:
            self._fresh = self._head
        if self._split < self._head:
            self._split = self._head
        self._normalize()
        try:
            self._delete_acked()
            while self._count > self._slots:  # capacity lowered by a config change
                self._drop_oldest(self._next + 1)
            if rewrite:
                self._compact()
        except OSError as e:
            self._fault(e)  # finished by the next ack or roll; reading goes on

    def _scan(self, base):
        # (complete frames, file size, offset after the last complete frame) of a segment.
        f = _open(self._seg_path(base), "rb")
        try:
            size = f.seek(0, 2)
            f.seek(0)
            b = self._rbuf
            if _readinto_n(f, b, _HEADER) != _HEADER or b[0] != 0x4C or b[1] != 0x53 or b[2] != _VERSION:
                return 0, size, 0
            k = 0
            off = _HEADER
            while True:
                n = self._read_frame(f, base + k)
                if n < 0:
                    return k, size, off
                k += 1
                off += n + _FRAME
        finally:
            f.close()
