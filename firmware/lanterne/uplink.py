# Lanterne uplink step: peek the store, pack one codec frame, hand it to the link, and commit in
# the store exactly the readings that frame carried, only once the link said it took the frame
# (transport/link.py's contract: `await link.send(READINGS, frame)` is True after the MQTT
# PUBACK; False when the link went down on the way; LoRaWAN commits later, lanterne/delivery.py). Pure: the link is the object the app holds,
# so the same code runs on the board, the unix port and CPython, and tests hand it a fake link.
from lanterne import codec
from lanterne.reading import RECORD_LEN, unpack

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FRAME_BUDGET = const(242)  # bytes per uplink frame: the largest EU868 LoRaWAN payload, fine for MQTT
BATCH_MAX = const(24)  # readings per uplink frame at most
_READINGS = const(0)  # transport.link.READINGS (not imported: that module needs MicroPython's asyncio)


class Uplink:
    # encoder: a codec.Encoder; batch: reusable codec readings, as many as the last frame needed
    # (one or two while the link keeps up, up to batch_max through a backlog: 24 readings are
    # 4.6 KB of heap on the 64-bit port that a board sending live readings does without);
    # faults: the app's fault dict ("record" is set when a stored record is unreadable).
    # store: the store (MQTT), or what stands in for it where delivery is learnt later
    # (lanterne/delivery.py: LoRaWAN), which commits a frame's readings in its own `taken`.
    def __init__(self, store, faults, budget=FRAME_BUDGET, batch_max=BATCH_MAX):
        self.store = store
        self.faults = faults
        self.budget = budget
        self.batch_max = batch_max
        self.encoder = codec.Encoder(budget)
        self.batch = [codec.new_reading()]

    def taken(self, carried):
        # commit what a frame carried: the store's ack, or the LoRaWAN ledger's own `taken` (a method,
        # not a bound method kept per instance: the 64 KB heap)
        getattr(self.store, "taken", self.store.ack)(carried)

    def _readings(self, n):
        # At least one reusable reading, at most n: a heap too full for more gives smaller frames.
        b = self.batch
        del b[n:]  # (n >= 1) what the backlog needed and this frame does not goes back to the heap
        try:
            while len(b) < n:
                b.append(codec.new_reading())
        except MemoryError:
            pass
        return len(b)

    def next_frame(self, now, boot, synced, budget=None):
        # (frame view, [(seq, record), ...] the frame holds), or None when nothing is to be
        # sent now. The list names only the readings packed: a frame that cannot hold the
        # whole peeked batch leaves the rest pending for the next frame. budget: the largest
        # frame the link takes now (LoRaWAN: its data rate's), within the encoder's buffer.
        budget = self.budget if budget is None else min(budget, self.budget)
        store = self.store
        batch = store.peek(budget=self.batch_max * RECORD_LEN, max_records=self.batch_max)
        if not batch:
            return None
        n = 0
        if self._readings(len(batch)) < len(batch):
            batch = batch[: len(self.batch)]
        for seq, rec in batch:
            try:
                unpack(rec, self.batch[n], seq, now, boot, synced)
                n += 1
            except ValueError:
                self.faults["record"] = "store: record %d unreadable, skipped" % seq
                break
        if n == 0:
            store.ack(batch[:1])  # an unreadable record is skipped, never retried forever
            return None
        k = self.encoder.encode(self.batch, 0, n, budget)
        if k == 0 and budget < self.budget:
            return None, None  # too large for the link's frame now (a slow data rate): later
        if k == 0:
            self.faults["record"] = "uplink: reading %d does not fit a %d-byte frame, skipped" % (batch[0][0], budget)
            store.ack(batch[:1])  # a reading no frame can hold: skipped, never retried forever
            return None
        return memoryview(self.encoder.buf)[: self.encoder.length], batch[:k]

    async def send(self, link, now, boot, synced):
        # Send one frame; how many readings it committed: 0 when there was nothing to send now,
        # -1 when the link did not take the frame (down on the way, or over its airtime budget):
        # nothing committed, the readings go again.
        budget = link.max_frame(_READINGS)
        if not budget:
            return -1  # the link takes nothing now (LoRaWAN: the airtime budget is closed)
        nxt = self.next_frame(now, boot, synced, budget)
        if nxt is None:
            return 0
        frame, carried = nxt
        if carried is None or not link.fits(_READINGS, len(frame)):
            return -1
        if not await link.send(_READINGS, frame):
            return -1
        self.taken(carried)
        return len(carried)
