# The update transfer: fetch the signed manifest, check it, rebuild the new image block by block
# into the inactive slot (header block last), check every block and then the whole image, and
# put the release on trial. Link-agnostic: `send(kind, payload, retain)` publishes on the board's
# ota/<kind> topic, on_data() takes each message of ota/data, poll() runs from the link loop.
#
# Resumable: the job (ota/job.json) and the verified manifest (ota/pending.man) are on the
# filesystem; after a reboot or a lost link the slot's blocks are hashed against the manifest and
# only the missing ones are fetched again. Throttled: one request in flight, a pause after each
# answer, every message applied from poll() (never inside the MQTT client), so readings,
# commands and the lamp keep their turn. Messages (docs/ota.md, "Wire format"):
#   board -> ota/req   "M" digest8                        the manifest, please
#                      "B" digest8 base8 u16 max u8 opts n u16*n   these blocks, in messages of <= max
#                                                         bytes; opts bit 0: not deflated (a heap
#                                                         without room for the decompressor)
#   ota/data -> board  "M" digest8 manifest               the manifest
#                      "B" digest8 u8 last n (u16 index, u8 flags, u16 offset, u16 out_len,
#                          u16 len, recipe)*n             parts of blocks, in order; flags: bit 0
#                                                         deflated, bit 1 the block's last part;
#                                                         last: 1 on the answer's last message
#                      "E" digest8 text                   the server cannot serve this release
#   board -> ota/progress (retained JSON): state, release, blocks done/total, reason on refusal
import gc
import hashlib
import json
import struct
import sys
import time

from lanterne_ota import JOB_FILE, MANIFEST_FILE
from lanterne_ota import manifest as M
from lanterne_ota import state as S

INTERVAL_MS = 100  # pause between two requests
BATCH = 8  # blocks asked for at once, at most: fewer while answers take several messages
MAX_MESSAGE = 2048  # bytes of an ota/data message: small enough for a fragmented 64 KB heap
TIMEOUT_MS = 5000  # an unanswered request is sent again, backing off up to RETRY_MAX_MS
RETRY_MAX_MS = 60000
BAD_BLOCK_LIMIT = 3  # a block whose data fails its hash this often: the update is refused
PROGRESS_EVERY = 4  # blocks between two progress records
STAGING = 256  # bytes: pieces of a block go to flash through this buffer

BUSY = "busy"
TAMPERED = "tampered_block"
IMAGE_HASH = "image_hash"
NOT_ROMFS = "not_romfs"
FAILED_BEFORE = "failed_before"
SERVER = "server"
FLASH = "flash"
NO_KEYS = "no_keys"
ERROR = "error"
NO_OTA_PARTITIONS = "no_ota_partitions"


class Refused(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _board_mpy():
    v = getattr(sys.implementation, "_mpy", 0)
    return (v & 0xFF, (v >> 8) & 3, v >> 10)


def _board_micropython():
    return tuple(sys.implementation.version[:3])


class Updater:
    def __init__(self, send, rom=None, store=None):
        self.send = send
        self.rom = rom or S.Rom()
        self.store = store or S.Store()
        self.job = None
        self.m = None
        self.need = []
        self.inbox = []
        self.staging = bytearray(STAGING)  # allocated once, small: fits a fragmented heap
        self.bad = {}
        self.cur = None  # [block, its hash so far, bytes written] while its parts come in
        self.plain = False  # ask for recipes without deflate (no room for its 1 KB window)
        self.batch = 2  # blocks per request: doubled while an answer fits one message, halved
        self.parts = 0  # while it takes more than two (each waits in the inbox: heap)
        self.waiting = False
        self.sent_at = 0
        self.next_at = 0
        self.retry_ms = TIMEOUT_MS
        self.reboot_due = False
        self.done = 0
        self.received = 0
        self.literal = 0
        self.heap_peak = 0
        self.target = None
        self.base = None
        self.last = None  # the last progress record

    # -- starting and resuming --------------------------------------------------------------
    def start(self, digest, counter, force=False):
        """A start command for the release whose manifest hashes to `digest`. Returns (ok, line)."""
        st = self.store.load()
        if st is not None and st.get("trial"):
            return False, self._refuse_line(BUSY, "a release is on trial: it must commit first")
        if self.job and self.job["digest"] == S.hexs(digest):
            return True, "update to release %d already under way" % counter
        if st is not None and st.get("failed") == counter and not force:
            return False, self._refuse_line(FAILED_BEFORE, "release %d failed its trial on this board: force to try again" % counter)
        self.job = {"digest": S.hexs(digest), "counter": counter, "force": bool(force), "phase": "manifest"}
        self._save_job()
        self._reset_transfer()
        self._progress("manifest")
        return True, "update to release %d started" % counter

    def resume(self):
        """After a reboot: pick up the job on the filesystem. True when there is one to run."""
        try:
            with open(JOB_FILE) as f:
                self.job = json.loads(f.read())
        except (OSError, ValueError):
            self.job = None
            return False
        st = self.store.load() or {}
        t, ft = st.get("trial"), st.get("fw_trial")
        on_trial = (t and (st["slots"][t["slot"]] or {}).get("n") == self.job.get("counter")) or (ft and ft.get("n") == self.job.get("counter"))
        if on_trial:  # a power cut between putting the release on trial and dropping the job
            S.remove(JOB_FILE)
            self.job = None
            return False
        if self.job.get("phase") == "transfer":
            try:
                with open(MANIFEST_FILE, "rb") as f:
                    raw = f.read()
                self._accept_manifest(raw, resumed=True)
            except (OSError, M.ManifestError, Refused) as e:
                self._fail(getattr(e, "code", M.MALFORMED), getattr(e, "reason", repr(e)))
                return False
        else:
            self.job["phase"] = "manifest"
        self._reset_transfer()
        return self.job is not None

    def _reset_transfer(self):
        self.waiting = False
        self.next_at = time.ticks_ms()
        self.retry_ms = TIMEOUT_MS

    def _save_job(self):
        S.ensure_dir("ota")
        S.write_atomic(JOB_FILE, json.dumps(self.job).encode())

    @property
    def active(self):
        return self.job is not None

    # -- the link side ----------------------------------------------------------------------
    def on_data(self, payload):
        # Called from inside the MQTT client: keep the message, apply it from poll().
        if self.job is not None and len(self.inbox) < 8:
            self.inbox.append(payload)

    def poll(self):
        if self.job is None:
            return
        while self.inbox:
            msg = self.inbox.pop(0)
            try:
                self._handle(msg)
            except Refused as e:
                self._fail(e.code, e.reason)
                return
            except M.ManifestError as e:
                self._fail(e.code, e.reason)
                return
            except Exception as e:  # MemoryError, a flash error: the update stops, the board goes on
                self._fail(ERROR, "update stopped: %r" % (e,))
                return
            if self.job is None:
                return
        now = time.ticks_ms()
        if self.waiting:
            if time.ticks_diff(now, self.sent_at) < self.retry_ms:
                return
            self.retry_ms = min(RETRY_MAX_MS, self.retry_ms * 2)  # nobody answers: ask again, slower
        elif time.ticks_diff(now, self.next_at) < 0:
            return
        self._request()

    def _request(self):
        d8 = bytes.fromhex(self.job["digest"])[:8]
        if self.job["phase"] == "manifest":
            msg = b"M" + d8
        else:
            ask = self.need[: self.batch]
            msg = b"B" + d8 + bytes.fromhex(self.base_sha)[:8] + struct.pack(">HBB", MAX_MESSAGE, 1 if self.plain else 0, len(ask))
            msg += b"".join(struct.pack(">H", i) for i in ask)
        self.parts = 0  # an answer cut short by a timeout is asked for again, whole
        try:
            self.send("req", msg, False)
        except OSError:
            self.next_at = time.ticks_add(time.ticks_ms(), INTERVAL_MS * 10)  # link down: ask later
            return
        self.waiting = True
        self.sent_at = time.ticks_ms()

    def _handle(self, msg):
        if len(msg) < 9 or S.hexs(msg[1:9]) != self.job["digest"][:16]:
            return  # another job's message (a late answer): ignored
        kind = msg[0]
        if kind == 0x45:  # "E"
            raise Refused(SERVER, "the release server refused: %s" % bytes(msg[9:]).decode())
        if kind == 0x4D and self.job["phase"] == "manifest":  # "M"
            self._accept_manifest(msg[9:])
        elif kind == 0x42 and self.job["phase"] == "transfer":  # "B"
            self.parts += 1
            if not self._blocks(memoryview(msg), 9):
                return  # more of this answer is on its way
            if self.parts > 2:
                self.batch = max(1, self.batch // 2)
            elif self.parts == 1:
                self.batch = min(BATCH, self.batch * 2)
            self.parts = 0
        else:
            return
        self.waiting = False
        self.retry_ms = TIMEOUT_MS
        self.next_at = time.ticks_add(time.ticks_ms(), INTERVAL_MS)

    # -- the manifest -----------------------------------------------------------------------
    def _accept_manifest(self, raw, resumed=False):
        raw = bytes(raw)
        if S.hexs(hashlib.sha256(raw).digest()) != self.job["digest"]:
            raise M.ManifestError(M.DIGEST_MISMATCH, "the manifest received is not the one the start command named")
        m = M.Manifest(raw)
        keys = S.load_keys()
        if not keys:
            raise Refused(NO_KEYS, "no trusted release keys on this board (ota/keys.json)")
        # The verification allocates about a megabyte of short-lived big integers: with the app's
        # collection every 2 KB allocated (app.GC_EVERY) it would run hundreds of collections (a
        # second here, holding the loop). Collections on demand only, while it runs: a full heap
        # still collects before it fails.
        every = gc.threshold()
        gc.threshold(-1)
        try:
            m.check_signature(keys)
        finally:
            gc.threshold(every)
        st = self.store.load() or S.fresh()
        if m.counter != self.job["counter"]:
            raise M.ManifestError(M.DIGEST_MISMATCH, "the manifest is release %d, the command said %d" % (m.counter, self.job["counter"]))
        if st.get("trial") or st.get("fw_trial"):
            raise Refused(BUSY, "an update is on trial: it must commit first")
        if m.flags & M.FIRMWARE:  # a MicroPython image, for the next OTA app partition
            from lanterne_ota import firmware

            try:
                app = firmware.AppTarget()
            except (OSError, AttributeError, ImportError) as e:
                raise Refused(NO_OTA_PARTITIONS, "this board's partition table has no OTA app partitions (%r)" % (e,))
            cur = st.get("fw")
            m.check_target(_board_mpy(), _board_micropython(), app.slot_bytes, cur["n"] if cur else 0, self.job["force"])
            self.rom = app
            self.target = 1
            self.base_sha = S.hexs(app.running_sha())
            self.base = app.base()
        else:
            running = S.running_slot(st)
            cur = st["slots"][running]
            m.check_target(_board_mpy(), _board_micropython(), self.rom.slot_bytes, cur["n"] if cur else 0, self.job["force"])
            self.target = 1 - running
            self.base_sha = cur["sha"] if cur else "00" * 8
            self.base = self.rom.view(running, 0, cur["len"]) if cur else b""
            # The target slot stops being a rollback target before its first byte changes.
            if st["slots"][self.target] is not None:
                st["slots"][self.target] = None
                self.store.save(st)
        self.m = m
        if not resumed:
            S.write_atomic(MANIFEST_FILE, raw)
        self._scan()
        self.job["phase"] = "transfer"
        self.job["version"] = m.version
        self._save_job()
        gc.collect()
        self._progress("transfer")
        if not self.need:
            self._finish()

    def _scan(self):
        # Which blocks of the target slot already hold what the manifest says (a resumed job, or
        # the same release written there before): only the others are fetched. The header block
        # goes last, so a slot never shows a valid header over partial contents.
        m = self.m
        need = [i for i in range(m.nblocks) if self.rom.range_sha(self.target, i * m.block, m.block_len(i)) != m.block_sha(i)]
        if need:
            if 0 not in need:
                need.append(0)
            self._erase(0)
            need.remove(0)
            need.append(0)
        self.need = need
        self.done = m.nblocks - len(need)

    # -- blocks -----------------------------------------------------------------------------
    def _blocks(self, mv, at):
        """Apply a message's parts; True when it was the answer's last message."""
        from lanterne_ota import delta

        last = mv[at]
        n = mv[at + 1]
        at += 2
        for _ in range(n):
            i, flags, offset, out_len, ln = struct.unpack(">HBHHH", mv[at : at + 9])
            at += 9
            recipe = mv[at : at + ln]
            at += ln
            if i in self.need and len(recipe) == ln:
                self._part(i, flags, offset, out_len, recipe, delta)
        self._note_heap()
        if not self.need:
            self._finish()
        elif self.done % PROGRESS_EVERY == 0:
            self._progress("transfer")
        return last

    def _part(self, i, flags, offset, out_len, recipe, delta):
        # A block comes in one part or several, in order, each rebuilt straight into the erased
        # block and hashed on the way: the slot is not trusted until the whole image is checked,
        # so a block that turns out wrong is simply fetched again.
        m = self.m
        n = m.block_len(i)
        rom, t = self.rom, self.target
        if offset == 0:
            self._erase(i)
            self.cur = [i, hashlib.sha256(), 0]
        elif self.cur is None or self.cur[0] != i or self.cur[2] != offset:
            return  # a part out of order (a lost message): the block is asked for again
        h = self.cur[1]

        def sink(pos, piece):
            try:
                rom.write(t, 0, piece, i * m.block + offset + pos)
            except OSError as e:
                raise Refused(FLASH, "writing block %d failed: %r" % (i, e))
            h.update(piece)

        stream = delta.Reader(recipe)
        if flags & 1:
            import deflate

            stream = deflate.DeflateIO(stream, deflate.RAW, delta.WBITS)
        self.received += len(recipe)
        try:
            if offset + out_len > n:
                raise ValueError
            try:
                self.literal += delta.apply(stream, out_len, self.base, sink, self.staging)
            except MemoryError:
                if not flags & 1:
                    raise
                # The decompressor's window did not fit this heap: from now on, plain recipes.
                self.plain = True
                self.cur = None
                return
            self.cur[2] = offset + out_len
            if not flags & 2:
                return  # more parts of this block to come
            ok = self.cur[2] == n and h.digest() == m.block_sha(i)
        except (ValueError, EOFError, OSError):  # a recipe that does not decode (deflate: OSError)
            ok = False
        self.cur = None
        if not ok:
            self.bad[i] = self.bad.get(i, 0) + 1
            if self.bad[i] >= BAD_BLOCK_LIMIT:
                raise Refused(TAMPERED, "block %d failed its hash check %d times: its data was altered" % (i, self.bad[i]))
            return
        if rom.range_sha(t, i * m.block, n) != m.block_sha(i):
            raise Refused(FLASH, "block %d reads back wrong from flash" % i)
        self.need.remove(i)
        self.done += 1

    def _erase(self, i):
        # A manifest block is one flash sector (a library image) or several (a MicroPython image:
        # 32 KiB blocks keep its manifest small).
        k = self.m.block // self.rom.block
        try:
            for j in range(i * k, i * k + k):
                if j * self.rom.block < self.rom.slot_bytes:
                    self.rom.erase(self.target, j)
        except OSError as e:
            raise Refused(FLASH, "erasing block %d failed: %r" % (i, e))

    def _note_heap(self):
        # The heap in use while a message and its blocks are still referenced: the update's peak.
        gc.collect()
        a = gc.mem_alloc()
        if a > self.heap_peak:
            self.heap_peak = a

    # -- the end ----------------------------------------------------------------------------
    def _finish(self):
        m = self.m
        t = self.target
        fw = m.flags & M.FIRMWARE
        if self.rom.image_len(t) != m.length:
            self._erase(0)
            raise Refused(NOT_ROMFS, "the image written is not a %d-byte %s image" % (m.length, "MicroPython" if fw else "ROMFS"))
        if self.rom.sha(t, m.length) != m.image_sha:
            self._erase(0)  # every block matched its hash, the whole does not: never mountable
            raise Refused(IMAGE_HASH, "the image's SHA-256 is not the manifest's")
        st = self.store.load() or S.fresh()
        if fw:
            from lanterne_ota import firmware

            self.rom.activate()  # the bootloader boots it next, on trial
            st["fw_trial"] = {"label": self.rom.label(), "n": m.counter, "ver": m.version, "from": firmware.running_label()}
        else:
            st["slots"][t] = {"n": m.counter, "len": m.length, "sha": S.hexs(m.image_sha), "ver": m.version}
            st["trial"] = {"slot": t, "boots": 0}
        st["event"] = None
        self.store.save(st)
        S.remove(JOB_FILE)  # the manifest stays until the commit (boot.finish_commit): its keys
        self.job = None
        self._progress("trial", release=m.version, n=m.counter)
        self.reboot_due = True

    def _fail(self, code, reason):
        S.remove(JOB_FILE)
        S.remove(MANIFEST_FILE)
        ver = self.job.get("version") if self.job else None
        n = self.job.get("counter") if self.job else None
        self.job = None
        self.m = None
        self.inbox = []
        self._progress("refused", code=code, reason=reason, release=ver, n=n)

    def _refuse_line(self, code, reason):
        self._progress("refused", code=code, reason=reason)
        return reason

    def _progress(self, phase, **extra):
        doc = {"state": phase}
        if self.m is not None:
            doc.update({"release": self.m.version, "n": self.m.counter, "done": self.done, "total": self.m.nblocks,
                        "bytes": self.received, "literal": self.literal, "heap_peak": self.heap_peak})  # fmt: skip
        elif self.job:
            doc["n"] = self.job["counter"]
        doc.update(extra)
        self.last = doc
        try:
            self.send("progress", json.dumps(doc), True)
        except OSError:
            pass  # the link is down: the next record will say where things are
