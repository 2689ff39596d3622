# Lanterne uplink step: peek the store, pack one codec frame, publish it (QoS 1), and commit
# in the store exactly the readings that frame carried, only once the link returned from the
# publish (the PUBACK came). Pure: the link is the object the app holds (link.publish(topic,
# frame, qos=1) returns after the PUBACK or raises OSError), so the same code runs on the
# board, the unix port and CPython, and tests hand it a fake link.
from lanterne import codec
from lanterne.reading import RECORD_LEN, unpack

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FRAME_BUDGET = const(242)  # bytes per uplink frame: the largest EU868 LoRaWAN payload, fine for MQTT
BATCH_MAX = const(24)  # readings per uplink frame at most


class Uplink:
    # encoder: a codec.Encoder; batch: BATCH_MAX reusable codec readings (no allocation per
    # frame); faults: the app's fault dict ("record" is set when a stored record is unreadable).
    def __init__(self, store, faults, budget=FRAME_BUDGET, batch_max=BATCH_MAX):
        self.store = store
        self.faults = faults
        self.budget = budget
        self.batch_max = batch_max
        self.encoder = codec.Encoder(budget)
        self.batch = [codec.new_reading() for _ in range(batch_max)]

    def next_frame(self, now, boot, synced):
        # (frame view, [(seq, record), ...] the frame holds), or None when nothing is to be
        # sent now. The list names only the readings packed: a frame that cannot hold the
        # whole peeked batch leaves the rest pending for the next frame.
        store = self.store
        batch = store.peek(budget=self.batch_max * RECORD_LEN, max_records=self.batch_max)
        if not batch:
            return None
        n = 0
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
        k = self.encoder.encode(self.batch, 0, n, self.budget)
        if k == 0:
            self.faults["record"] = "uplink: reading %d does not fit a %d-byte frame, skipped" % (batch[0][0], self.budget)
            store.ack(batch[:1])  # a reading no frame can hold: skipped, never retried forever
            return None
        return memoryview(self.encoder.buf)[: self.encoder.length], batch[:k]

    def send(self, link, now, boot, synced):
        # Send one frame; return how many readings it committed (0: nothing to send now).
        # Raises OSError when the publish failed or its PUBACK never came: nothing committed.
        nxt = self.next_frame(now, boot, synced)
        if nxt is None:
            return 0
        frame, carried = nxt
        link.publish(link.topics["up"], frame, qos=1)
        self.store.ack(carried)
        return len(carried)
