# Lanterne hold: a small RAM ring of records the flash refused (full, I/O error), oldest first,
# kept until the store can append them. Preallocated: a full flash costs no heap. Runs on
# MicroPython and CPython. Used by lanterne/store.py (docs/store.md, "A flash that refuses writes").
#
#   h = Hold(1024)
#   lost = h.put(record, n)   # records pushed out to make room (the oldest first), 0 or more
#   n = h.first(buf)          # copy the oldest into buf, return its length (h.count > 0)
#   h.pop()                   # forget the oldest


class Hold:
    # The ring holds frames [length][record]: a record of n bytes takes n + 1.

    def __init__(self, size):
        self.buf = bytearray(size)
        self.at = 0  # where the oldest frame starts
        self.used = 0  # bytes the frames take
        self.count = 0  # frames held

    def put(self, record, n):
        # Hold record[:n] (n <= 255) after the others; return how many records it cost: the
        # oldest pushed out to make room, or this one when it can never fit (n + 1 > size).
        b = self.buf
        size = len(b)
        if n + 1 > size:
            return 1
        lost = 0
        while self.used + n + 1 > size:
            self.pop()
            lost += 1
        i = (self.at + self.used) % size
        b[i] = n
        for k in range(n):
            i = (i + 1) % size
            b[i] = record[k]
        self.used += n + 1
        self.count += 1
        return lost

    def first(self, out):
        # Copy the oldest record into out (no allocation); its length.
        b = self.buf
        size = len(b)
        i = self.at
        n = b[i]
        for k in range(n):
            i = (i + 1) % size
            out[k] = b[i]
        return n

    def pop(self):
        # Forget the oldest record.
        k = self.buf[self.at] + 1
        self.at = (self.at + k) % len(self.buf)
        self.used -= k
        self.count -= 1
        if not self.count:
            self.at = 0
