# Lanterne delivery over a link that cannot tell what arrived: LoRaWAN's unconfirmed uplinks.
# The readings stay in the store until a verified delivery ledger (lanterne/ledger.py, FPort 12,
# docs/lorawan.md) says the back office has them; what it lists as missing, and what went in an
# uplink it evidently never got, is sent again before new readings. Alarms go first: a reading
# with an alarm or fault flag that the app names (`alarm(seq)`: assets.ALARM_FLAGS) goes in a
# frame of its own ahead of the resends and the backlog, and the in-order cursor skips it when it
# gets there. One home for it, used by a LoRaWAN-only board and by a failover board's LoRaWAN side
# (transport/failover.py). Pure: runs on MicroPython and CPython.
#
# It stands in for the store in the uplink step (lanterne/uplink.py): `peek()` picks what to
# send now (alarms first, then resends, then readings never sent), `taken(batch)` is called once
# the link put a frame on air (it commits nothing: it remembers which uplink carried which seqs),
# `ack(batch)` commits at once (a record no frame can carry, skipped), `pending` counts what is
# to be sent now. With confirmed uplinks (lorawan_confirmed) the network's ACK is the delivery:
# `taken` commits as MQTT's PUBACK does.
#
# State in RAM: the alarm readings waiting to go ahead of their turn (at most ALARMS; beyond, or
# while _MAX_EARLY readings sent ahead wait for the in-order cursor to pass them, alarms go in
# order), the readings sent ahead of their turn, the seqs in flight by uplink ([first, end, uplink]
# ranges, at most MAX_INFLIGHT: the oldest is forgotten first, its readings stay in the store and
# go again when a ledger lists them missing), the seqs to send again ([first, end] ranges), the
# next seq never sent. On flash: the last verified ledger (ledger.bin, 50 bytes at most): its
# counter refuses a replay after a reboot, and what it acknowledged beyond `next` is not sent again.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


LEDGER_FILE = "ledger.bin"
MAX_INFLIGHT = const(48)
MAX_RESEND = const(16)
ALARMS = const(16)  # alarm readings remembered to go ahead of the backlog (beyond: in order)
_MAX_EARLY = const(32)  # readings gone ahead of the in-order cursor, remembered until it passes them


# -- the store, read and committed the way this link needs (lanterne/store.py's own cursors: kept
# here, not in store.py, which a 100 KB heap must still compile from source) -----------------------
def store_read(st, start, stop, budget=1024, max_records=0):
    # Kept records with start <= seq < stop (neither acknowledged nor dropped), ascending, within
    # budget and max_records as Store.peek(); marks nothing. Reads with the store's third cursor.
    out = []
    if start < st._head:
        start = st._head
    if stop > st._next:
        stop = st._next
    if st._split < st._fresh and start < st._fresh and stop > st._split:
        # [split, fresh) is acknowledged: read around it
        if start < st._split:
            st._collect(2, start, st._split, budget, 0, max_records, out, True)
            budget -= st._used
            if max_records and len(out) >= max_records:
                return out
        start = st._fresh
    if start < stop and (budget > 0 or not out):
        st._collect(2, start, stop, budget, 0, max_records - len(out) if max_records else 0, out, not out)
    return out


def store_ack_below(st, seq):
    # Commit every record below seq (a ledger's `next`); how many that committed. One ack-log
    # entry, as Store.ack().
    if seq > st._next:
        seq = st._next
    if seq <= st._head:
        return 0
    n = seq - st._head
    if st._split < st._fresh:
        n -= max(0, min(seq, st._fresh) - st._split)
    st._head = seq
    st._normalize()
    try:
        st._log_state(False)
        st._delete_acked()
    except OSError as e:
        st._fault(e)
    return n


def _add(ranges, a, b, cap):
    # Add [a, b) to sorted, disjoint `ranges` ([first, end] lists), merging; at most cap ranges
    # (beyond it the highest range is dropped: those readings go when a later ledger asks again).
    if a >= b:
        return
    i = 0
    while i < len(ranges) and ranges[i][1] < a:
        i += 1
    j = i
    while j < len(ranges) and ranges[j][0] <= b:
        a = min(a, ranges[j][0])
        b = max(b, ranges[j][1])
        j += 1
    ranges[i:j] = [[a, b]]
    if len(ranges) > cap:
        ranges.pop()


def _remove(ranges, s):
    # Take seq s out of `ranges`.
    for i in range(len(ranges)):
        a, b = ranges[i]
        if a <= s < b:
            if b - a == 1:
                ranges.pop(i)
            elif s == a:
                ranges[i][0] = s + 1
            elif s == b - 1:
                ranges[i][1] = s
            else:
                ranges[i][1] = s
                ranges.insert(i + 1, [s + 1, b])
            return


class LedgerDelivery:
    # store: lanterne.store.Store; device: the device id; key(): the command key now (a rotation
    # changes it); faults: the app's fault dict (a refused ledger is a fault with its reason).
    def __init__(self, store, device, key, faults, confirmed=False, ledger_file=LEDGER_FILE):
        self.store = store
        self.device = device
        self.key = key
        self.faults = faults
        self.confirmed = confirmed
        self.ledger_file = ledger_file
        self.inflight = []
        self.resend = []
        self.alarms = []  # seqs of alarm readings still to go ahead of their turn, ascending
        self.early = []  # seqs at or above sent_upto that went out ahead of their turn (alarms)
        self.sent_upto = 0  # below it (and at or above the store's head) every seq went out once since boot
        self.uplink = 0  # uplinks taken since boot
        self.last = None  # the last verified ledger
        self.counter = 0
        self.ledgers = 0
        self.refused = 0
        self.resent = 0
        try:
            with open(ledger_file, "rb") as f:
                frame = f.read()
            self.last = self._parse(frame, 0)
            self.counter = self.last.counter
        except Exception:  # none yet, damaged, or signed with a key since rotated: no ledger
            pass

    def _parse(self, frame, last):
        # lanterne.ledger, loaded for the moment it takes (ledgers come a few times a day; the
        # Ledger kept holds on to its class only)
        import sys

        from lanterne import ledger

        try:
            return ledger.parse(self.key(), self.device, frame, last)
        finally:
            sys.modules.pop("lanterne.ledger", None)

    @property
    def pending(self):
        st = self.store
        start = self.sent_upto if self.sent_upto > st._head else st._head
        n = st.next_seq - start
        for a, b in self.resend:
            n += b - a
        return n

    def _acked(self, seq):
        return self.last is not None and self.last.acknowledged(seq)

    def alarm(self, seq):
        """The reading stored as `seq` has an alarm or fault flag (from the app's sampling task):
        it goes in a frame of its own ahead of the backlog."""
        if len(self.alarms) < ALARMS and len(self.early) < _MAX_EARLY:
            self.alarms.append(seq)

    def _alarm_batch(self, budget, max_records):
        # The alarms still to go (kept, not sent since, not acknowledged by the last ledger).
        st = self.store
        out = []
        a = self.alarms
        i = 0
        while i < len(a) and (not max_records or len(out) < max_records) and budget > 0:
            s = a[i]
            got = store_read(st, s, s + 1)
            if not got or self.sent(s) or self._acked(s):
                a.pop(i)  # acknowledged, dropped, or gone in order already
                continue
            out.append(got[0])
            budget -= len(got[0][1])
            i += 1
        return out

    def peek(self, budget=1024, max_records=0):
        if self.alarms:
            out = self._alarm_batch(budget, max_records)
            if out:
                return out  # a frame of alarms only (taken() knows them: they are in self.alarms)
        st = self.store
        head = st._head
        out = []
        i = 0
        while i < len(self.resend) and (not max_records or len(out) < max_records) and budget > 0:
            a, b = self.resend[i]
            if b <= head:
                self.resend.pop(i)
                continue
            got = store_read(st, a, b, budget, max_records - len(out) if max_records else 0)
            if not got:
                self.resend.pop(i)  # nothing kept there any more (acknowledged, dropped by overflow)
                continue
            if got[0][0] > a:
                self.resend[i][0] = got[0][0]
            for item in got:
                if self._acked(item[0]):
                    _remove(self.resend, item[0])
                else:
                    out.append(item)
                    budget -= len(item[1])
            if got[-1][0] + 1 < b:
                return out  # the budget is full
            i += 1
        room = max_records - len(out) if max_records else 0
        n0 = len(out)
        if (max_records and room <= 0) or budget <= 0:
            return out
        start = self.sent_upto if self.sent_upto > head else head
        while start < st.next_seq:
            got = store_read(st, start, st.next_seq, budget, room)
            if not got:
                start = st.next_seq  # nothing kept there (acknowledged, or damaged and stepped over)
                break
            for item in got:
                if self._acked(item[0]):  # (acknowledged by the ledger kept on flash: not again)
                    continue
                if self.early and item[0] in self.early:
                    continue  # gone ahead of its turn already (forgotten once the cursor passes it)
                out.append(item)
            if len(out) > n0:
                return out
            start = got[-1][0] + 1  # all of it acknowledged already: look past it
        self._advance(start)
        return out

    def _advance(self, upto):
        # The in-order cursor moves to `upto`: the early readings it passed are behind it now.
        # (A peek that skips an early reading may end before it, at the frame's budget: the
        # reading stays early until the cursor is past it, or it would go a second time.)
        self.sent_upto = upto
        e = self.early
        i = 0
        while i < len(e):
            if e[i] < upto:
                e.pop(i)
            else:
                i += 1

    def restart(self, alarms=True):
        # Forget what was sent: every kept reading not acknowledged by the last ledger goes again
        # (a failover board, when the readings move between its links: transport/failover.py).
        # alarms: keep the alarms waiting (sampled while MQTT was down, before LoRaWAN came up);
        # False forgets them too (MQTT is back: the store's order).
        self.inflight = []
        self.resend = []
        self.early = []
        self.sent_upto = 0
        if not alarms:
            self.alarms = []

    def sent(self, seq):
        # Whether seq went out since the last restart and no ledger listed it missing since.
        if seq in self.early:
            return True
        if seq < self.sent_upto:
            for a, b in self.resend:
                if a <= seq < b:
                    return False
            return True
        return False

    def _early(self, s):
        # Whether s is an alarm that went (or is skipped) ahead of its turn: out of the alarms.
        a = self.alarms
        if a and s in a:
            a.remove(s)
            return True
        return False

    def ack(self, batch):
        # A record skipped for good (unreadable, too large), or (confirmed uplinks) delivered:
        # committed. An alarm ahead of its turn leaves the in-order cursor where it is (the
        # backlog before it is still to go); one the store cannot commit out of order yet stays
        # kept and goes again in order: at worst a duplicate the back office drops by seq.
        for item in batch:
            s = item[0]
            _remove(self.resend, s)
            if not self._early(s) and s >= self.sent_upto:
                self._advance(s + 1)
        return self.store.ack(batch)

    def taken(self, batch):
        # The link put a frame with these readings on air. Readings from the alarms (a frame of
        # its own, peek()) went ahead of their turn: the next-in-order cursor stays, they are
        # skipped when it passes.
        if self.confirmed:
            return self.ack(batch)
        u = self.uplink
        self.uplink = u + 1
        inflight = self.inflight
        for item in batch:
            s = item[0]
            _remove(self.resend, s)
            if self._early(s):
                if s >= self.sent_upto and s not in self.early:
                    self.early.append(s)
            elif s >= self.sent_upto:
                self._advance(s + 1)
            if inflight and inflight[-1][2] == u and inflight[-1][1] == s:
                inflight[-1][1] = s + 1
            else:
                inflight.append([s, s + 1, u])
                if len(inflight) > MAX_INFLIGHT:
                    inflight.pop(0)
        return len(batch)

    def ledger(self, frame):
        """A downlink on FPort 12: verify it, free what it acknowledges, queue what it misses."""
        try:
            got = self._parse(frame, self.counter)
        except Exception as e:  # LedgerError: bad tag, replay, malformed
            self.refused += 1
            self.faults["ledger"] = "ledger refused: %s" % (e,)
            return False
        self.faults.pop("ledger", None)
        try:
            with open(self.ledger_file, "wb") as f:
                f.write(frame)
        except OSError:
            pass  # its counter is in RAM; after a reboot an older ledger could be applied again (harmless: it frees less)
        self.counter = got.counter
        self.last = got
        self.ledgers += 1
        st = self.store
        store_ack_below(st, got.next_seq)
        # The last uplink that carried a seq the back office has (the highest seq it has, or one
        # it acknowledges: readings sent ahead of their turn make the seqs of successive uplinks
        # go down as well as up): whatever went in it or before it and is not acknowledged was
        # lost on the way.
        cut = -1
        for a, b, u in self.inflight:
            if u > cut and (a <= got.highest < b or got.acknowledged(a) or got.acknowledged(b - 1)):
                cut = u
        keep = []
        for r in self.inflight:
            a, b, u = r
            for s in range(a, b):
                if got.acknowledged(s):
                    continue
                if u <= cut:
                    _add(self.resend, s, s + 1, MAX_RESEND)
                    self.resent += 1
                elif keep and keep[-1][2] == u and keep[-1][1] == s:
                    keep[-1][1] = s + 1
                else:
                    keep.append([s, s + 1, u])
        self.inflight = keep
        head = st._head
        end = st.next_seq
        for first, n in got.ranges:
            a = first if first > head else head
            b = first + n if first + n < end else end
            # what the ledger misses, but for what is on its way again (sent after the ledger was made)
            for k0, k1, _ in sorted(keep):
                if k1 <= a or k0 >= b:
                    continue
                if k0 > a:
                    _add(self.resend, a, k0, MAX_RESEND)
                a = k1
            if a < b:
                _add(self.resend, a, b, MAX_RESEND)
        return True
