"""Full sequence numbers back from the 16 bits a frame carries: order and dedupe one device's readings.

The board numbers its readings with a counter that never goes back (it survives
reboots; the store keeps it); a frame carries each seq mod 65536. The host keeps,
per device, the highest full seq it has seen, and gives each reading the full
value with the same low 16 bits that lies nearest to it (docs/payload.md, "Sequence
numbers on the host").

Limits: the answer is right while the true seq lies from 32 768 below to 32 767
above the highest seen — the device's backlog (its oldest unsent reading behind
its newest sent one) stays within 32 768 readings, and fewer than 32 768 readings
in a row go unseen by the host. The first seq of a device is taken as it comes (< 65 536) unless the
tracker is told where the counter stands.
"""

from __future__ import annotations

SEQ_MODULUS = 1 << 16
_HALF = SEQ_MODULUS // 2


def extend_seq(low: int, reference: int | None) -> int:
    """The full seq whose low 16 bits are `low`, within -32 768 .. +32 767 of `reference` (never negative)."""
    if not 0 <= low < SEQ_MODULUS:
        raise ValueError(f"a frame's seq is 0..{SEQ_MODULUS - 1}, got {low}")
    if reference is None:
        return low
    d = (low - reference) % SEQ_MODULUS
    if d >= _HALF:
        d -= SEQ_MODULUS
    full = reference + d
    return full if full >= 0 else full + SEQ_MODULUS


class SeqTracker:
    """One device: the full seq of each reading, and whether the host has seen it before.

    `accept(seq16)` returns (full seq, new); `readings(decoded)` does it for a
    decoded frame. Remembers the seqs of the last 65 536 readings below the highest
    for deduplication (a set; about 4 MB at most).
    """

    def __init__(self, highest: int | None = None):
        self.highest = highest
        self._seen: set[int] = set()

    def accept(self, seq16: int) -> tuple[int, bool]:
        full = extend_seq(seq16, self.highest)
        new = full not in self._seen
        self._seen.add(full)
        if self.highest is None or full > self.highest:
            self.highest = full
            if len(self._seen) > 2 * SEQ_MODULUS:
                floor = full - SEQ_MODULUS
                self._seen = {s for s in self._seen if s >= floor}
        return full, new

    def readings(self, decoded: dict) -> list[dict]:
        """The readings of a decoded frame not seen before, each with its full "seq" (readings
        without a seq are kept as they are)."""
        out = []
        for r in decoded["readings"]:
            if "seq" not in r:
                out.append(r)
                continue
            full, new = self.accept(r["seq"])
            if new:
                out.append(dict(r, seq=full))
        return out
