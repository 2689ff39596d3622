"""EU868 radio facts: time on air, data rates and their payload limits, duty cycle per sub-band.

Time on air is Semtech's formula (SX1276 datasheet 4.1.1.7, AN1200.13 "LoRa Modem Designer's
Guide"): with symbol time Ts = 2^SF / BW,

    T_preamble = (n_preamble + 4.25) Ts
    n_payload  = 8 + max(ceil((8 PL - 4 SF + 28 + 16 CRC - 20 IH) / (4 (SF - 2 DE))) (CR + 4), 0)
    T_packet   = T_preamble + n_payload Ts

LoRaWAN EU868 uses an 8-symbol preamble, explicit header (IH = 0), CRC on for uplinks (off for
downlinks), coding rate 4/5 (CR = 1) and low-data-rate optimisation (DE = 1) when Ts >= 16 ms,
i.e. SF11 and SF12 at 125 kHz. PL is the whole PHYPayload: 13 bytes of MHDR, FHDR (no FOpts),
FPort and MIC around the application payload. Checks (tests/test_lorawan_codec.py): SF12, PL 51
-> 2465.79 ms; SF7, PL 51 -> 102.66 ms (the same as Semtech's LoRa calculator gives).

Data rates and payload sizes: LoRaWAN Regional Parameters RP002-1.0.3, EU863-870: DR0..5 are
SF12..SF7 at 125 kHz; the largest FRMPayload N (no FOpts) is 51 bytes at DR0-2, 115 at DR3, 222 at
DR4-5 (M = N + 8). Duty cycle: ETSI EN 300 220 sub-bands as LoRaMAC-node's EU868 region lists
them; a transmission of T seconds closes its sub-band for T (1/dc - 1) seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BW_HZ = 125_000
PREAMBLE_SYMBOLS = 8
CODING_RATE = 1  # 4/5
LORAWAN_OVERHEAD = 13  # MHDR 1 + DevAddr 4 + FCtrl 1 + FCnt 2 + FPort 1 + MIC 4

#: DR -> spreading factor (EU868, 125 kHz)
EU868_DR_SF = {0: 12, 1: 11, 2: 10, 3: 9, 4: 8, 5: 7}
#: DR -> largest application payload N (bytes, no FOpts); M (MACPayload) = N + 8
EU868_MAX_PAYLOAD = {0: 51, 1: 51, 2: 51, 3: 115, 4: 222, 5: 222}
#: Default channels every EU868 device has (Hz), and the RX2 window (869.525 MHz, DR0).
EU868_DEFAULT_CHANNELS = (868_100_000, 868_300_000, 868_500_000)
EU868_RX2 = (869_525_000, 0)
#: The extra channels a network commonly adds in the join accept's CFList (ChirpStack's default).
EU868_CFLIST_CHANNELS = (867_100_000, 867_300_000, 867_500_000, 867_700_000, 867_900_000)


@dataclass(frozen=True)
class SubBand:
    name: str
    low_hz: int
    high_hz: int
    duty_cycle: float  # fraction of time one device may transmit


#: ETSI EN 300 220 sub-bands (names as in LoRaMAC-node's RegionEU868).
EU868_SUB_BANDS = (
    SubBand("G (868.0-868.6 MHz)", 868_000_000, 868_600_000, 0.01),
    SubBand("G1 (868.7-869.2 MHz)", 868_700_000, 869_200_000, 0.001),
    SubBand("G2 (869.4-869.65 MHz)", 869_400_000, 869_650_000, 0.10),
    SubBand("G3 (869.7-870.0 MHz)", 869_700_000, 870_000_000, 0.01),
    SubBand("G4 (863.0-865.0 MHz)", 863_000_000, 865_000_000, 0.001),
    SubBand("G5 (865.0-868.0 MHz)", 865_000_000, 868_000_000, 0.01),
)


def sub_band(freq_hz: int) -> SubBand:
    for band in EU868_SUB_BANDS:
        if band.low_hz <= freq_hz < band.high_hz or (freq_hz == band.high_hz and band.name.startswith("G (")):
            return band
    raise ValueError(f"{freq_hz / 1e6:.3f} MHz is outside the EU868 sub-bands")


def time_on_air_s(phy_len: int, sf: int, *, bw_hz: int = BW_HZ, crc: bool = True, explicit_header: bool = True,
                  coding_rate: int = CODING_RATE, preamble: int = PREAMBLE_SYMBOLS) -> float:
    """Seconds a LoRa frame of `phy_len` bytes takes on air (Semtech's formula)."""
    if not 6 <= sf <= 12:
        raise ValueError(f"spreading factor {sf} is outside SF6..SF12")
    if phy_len < 0 or phy_len > 255:
        raise ValueError(f"a LoRa payload is 0..255 bytes, not {phy_len}")
    ts = (1 << sf) / bw_hz
    de = 1 if ts >= 0.016 else 0
    ih = 0 if explicit_header else 1
    num = 8 * phy_len - 4 * sf + 28 + (16 if crc else 0) - 20 * ih
    n_payload = 8 + max(math.ceil(num / (4 * (sf - 2 * de))) * (coding_rate + 4), 0)
    return (preamble + 4.25) * ts + n_payload * ts


def uplink_airtime_s(app_payload_len: int, dr: int, fopts_len: int = 0) -> float:
    """Time on air of an uplink carrying `app_payload_len` bytes of FRMPayload at EU868 `dr`."""
    return time_on_air_s(LORAWAN_OVERHEAD + fopts_len + app_payload_len, EU868_DR_SF[dr])


def max_payload(dr: int, fopts_len: int = 0) -> int:
    """The largest FRMPayload at `dr` with `fopts_len` bytes of pending MAC commands."""
    if dr not in EU868_MAX_PAYLOAD:
        raise ValueError(f"EU868 data rate must be DR0..DR5, not DR{dr}")
    return EU868_MAX_PAYLOAD[dr] - fopts_len


class DutyCycle:
    """Per-sub-band transmit budget of one device: when may it send again on a channel?

    `blocked_until(freq)` is the monotonic time its sub-band reopens; `record(freq, start, airtime)`
    books a transmission. Times are whatever clock the caller uses (seconds)."""

    def __init__(self):
        self._until: dict[str, float] = {}

    def blocked_until(self, freq_hz: int) -> float:
        return self._until.get(sub_band(freq_hz).name, 0.0)

    def record(self, freq_hz: int, start: float, airtime: float) -> None:
        band = sub_band(freq_hz)
        self._until[band.name] = start + airtime / band.duty_cycle

    def wait_s(self, channels, now: float) -> float:
        """Seconds until any of `channels` may be used (0: one is free now)."""
        return max(0.0, min(self.blocked_until(f) for f in channels) - now)

    def state(self) -> dict[str, float]:
        return dict(self._until)

    def restore(self, state: dict[str, float]) -> None:
        self._until = {str(k): float(v) for k, v in (state or {}).items()}
