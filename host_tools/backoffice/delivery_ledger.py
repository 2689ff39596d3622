"""The back office's side of the LoRaWAN delivery ledger: what it has of each board, and when it may say so.

`DeliveryLedger` keeps, per device, the full seqs of the readings received and turns them into
what the ledger downlink carries (firmware/lanterne/ledger.py, docs/lorawan.md): `next` (every
seq below it received), a `span` looked at, and up to MAX_RANGES missing ranges inside it. When
more gaps exist than fit, the span stops before the first gap left out, so the board never frees
a reading the back office does not have.

`LedgerBudget` decides when a ledger goes out: at most `per_day` in any 24 hours, no closer than
24 h / per_day apart (so a burst of uplinks cannot spend the day's budget at once), and only when
it says something the last one did not. Pure logic with the clock passed in: a test or the
benchmark plays a whole day in milliseconds.
"""

from __future__ import annotations

import collections

from host_tools.runtime import firmware_module

DAY_S = 86400.0


class DeliveryLedger:
    """The readings one device has delivered, by full seq."""

    def __init__(self, base: int | None = None):
        self.base = base  # the first seq this back office expects (first seen, if not told)
        self._have: set[int] = set()
        self.next_seq = base if base is not None else 0
        self.highest: int | None = None

    def add(self, seq: int) -> bool:
        """Record reading `seq`; False when it had arrived before (a duplicate)."""
        if self.base is None:
            self.base = self.next_seq = seq
        if seq < self.next_seq or seq in self._have:
            return False
        self._have.add(seq)
        self.highest = seq if self.highest is None else max(self.highest, seq)
        while self.next_seq in self._have:  # keep the set small: everything below next is implied
            self._have.discard(self.next_seq)
            self.next_seq += 1
        return True

    def gaps(self) -> list[tuple[int, int]]:
        """Missing (start, count) ranges between next and the highest seq received."""
        if self.highest is None or self.highest < self.next_seq:
            return []
        out, start = [], None
        for seq in range(self.next_seq, self.highest + 1):
            if seq not in self._have:
                if start is None:
                    start = seq
            elif start is not None:
                out.append((start, seq - start))
                start = None
        return out

    def summary(self) -> tuple[int, int, int, list[tuple[int, int]]]:
        """(next, span, seen, missing ranges) as a ledger frame carries them."""
        ledger = firmware_module("ledger")
        if self.highest is None or self.highest < self.next_seq:
            return self.next_seq, 0, 0, []
        gaps = self.gaps()
        span = self.highest + 1 - self.next_seq
        if len(gaps) > ledger.MAX_RANGES:
            span = gaps[ledger.MAX_RANGES][0] - self.next_seq
            gaps = gaps[: ledger.MAX_RANGES]
        if span > ledger.MAX_SPAN:
            span = ledger.MAX_SPAN
            gaps = [(s, min(c, self.next_seq + span - s)) for s, c in gaps if s < self.next_seq + span]
        seen = min(ledger.MAX_SPAN, self.highest + 1 - self.next_seq)
        return self.next_seq, span, seen, gaps


class LedgerBudget:
    """At most `per_day` ledger downlinks in any 24 hours, evenly spread."""

    def __init__(self, per_day: int):
        if per_day < 1:
            raise ValueError(f"ledger downlinks per day must be at least 1, not {per_day}")
        self.per_day = per_day
        self.sent: collections.deque[float] = collections.deque()
        self.last_summary = None

    def due(self, now: float, summary) -> bool:
        while self.sent and self.sent[0] <= now - DAY_S:
            self.sent.popleft()
        if summary == self.last_summary:
            return False
        if len(self.sent) >= self.per_day:
            return False
        return not self.sent or now - self.sent[-1] >= DAY_S / self.per_day

    def spend(self, now: float, summary) -> None:
        self.sent.append(now)
        self.last_summary = summary

    def used_today(self, now: float) -> int:
        return sum(1 for t in self.sent if t > now - DAY_S)
