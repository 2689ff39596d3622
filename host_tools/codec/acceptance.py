"""How often random bytes pass the decoder: the false-acceptance rates of docs/payload.md, measured.

A random LoRaWAN payload on FPort 102 passes when its bit stream parses as valid
readings that end 4 to 11 bits before the end of the payload (the *structure*),
and those k check bits equal the top k bits of the CRC. Given the structure, the
k check bits are uniform and independent of everything the CRC is computed over,
so the rate is exactly E[2**-k if the structure is valid else 0]. Averaging that
over random payloads estimates the rate with a small fraction of the trials that
counting passes would need (tests check both ways agree).

An MQTT frame is the version byte followed by the LoRaWAN payload, under the same
check, so a random n-byte MQTT frame passes with probability 1/256 times the rate
of (n - 1)-byte LoRaWAN payloads.

    python -m host_tools.codec.acceptance [TRIALS]   # the table of docs/payload.md
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass

from host_tools.codec.decoder import FPORT, PayloadError, _decode

# The lengths docs/payload.md lists (LoRaWAN payload bytes).
TABLE_LENGTHS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 20, 24, 32, 51)


@dataclass
class Estimate:
    length: int
    trials: int
    rate: float  # probability that a random payload of `length` bytes decodes
    stderr: float  # standard error of `rate`
    structure: float  # fraction of payloads whose structure is valid (before the check)

    def upper(self, sigmas: float = 4.0) -> float:
        return self.rate + sigmas * self.stderr


def check_bits_if_valid(payload: bytes, fport: int = FPORT) -> int | None:
    """The number of check bits when the payload's structure is valid, else None."""
    try:
        return _decode(payload, fport, False)[1]
    except PayloadError:
        return None


def false_acceptance(length: int, trials: int, seed: int = 0) -> Estimate:
    """Estimate the probability that `length` random bytes on FPort 102 decode without error."""
    rng = random.Random(seed)
    total = total_sq = 0.0
    valid = 0
    for _ in range(trials):
        k = check_bits_if_valid(rng.randbytes(length))
        if k is not None:
            p = 2.0**-k
            total += p
            total_sq += p * p
            valid += 1
    mean = total / trials
    variance = max(total_sq / trials - mean * mean, 0.0)
    return Estimate(length, trials, mean, math.sqrt(variance / trials), valid / trials)


def _one_in(rate: float) -> str:
    return "never seen" if rate == 0 else f"1 in {1 / rate:,.0f}".replace(",", " ")


def main(argv: list[str]) -> int:
    trials = int(argv[0]) if argv else 200_000
    print("| LoRaWAN payload (bytes) | passes (FPort 102) | ± (1 s.e.) | structure valid | MQTT frame one byte longer, random first byte |")
    print("|---|---|---|---|---|")
    for n in TABLE_LENGTHS:
        e = false_acceptance(n, trials, seed=n)
        print(
            f"| {n} | {e.rate:.2e} ({_one_in(e.rate)}) | {e.stderr / e.rate if e.rate else 0:.0%} "
            f"| {e.structure:.2%} | {e.rate / 256:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
