# Lanterne LoRaWAN airtime: the EU868 data-rate table, Semtech's time-on-air formula, and the
# budget an uplink must fit (the ETSI duty cycle of the sub-band, a daily airtime cap). Pure:
# runs on MicroPython (the board) and CPython (tests and benchmarks); times are milliseconds on a
# clock the caller keeps (monotonic, never wrapping).
#
# Sources: LoRaWAN Regional Parameters RP002-1.0.3 (EU868 DR0..DR5, N = 51/51/51/115/222/222
# bytes of FRMPayload without FOpts); Semtech AN1200.13 "LoRa Modem Designer's Guide" (symbols
# of a frame: BW 125 kHz, CR 4/5, explicit header, CRC on, low-data-rate optimisation when a
# symbol lasts 16 ms or more, i.e. SF11 and SF12); ETSI EN 300 220 (868.0-868.6 MHz: 1 %).
from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


SF = (12, 11, 10, 9, 8, 7)  # EU868 DR0..DR5, 125 kHz
MAX_PAYLOAD = (51, 51, 51, 115, 222, 222)  # FRMPayload bytes at DR0..DR5, no FOpts
OVERHEAD = const(13)  # PHYPayload bytes around the FRMPayload: MHDR 1, FHDR 7 (no FOpts), FPort 1, MIC 4
PREAMBLE_QUARTERS = const(49)  # 8 + 4.25 symbols, in quarter symbols
DUTY_PERMILLE = const(10)  # 1 % in the sub-band of the three default channels (868.1/868.3/868.5 MHz)
_HOUR_MS = const(3600000)


def max_payload(dr, fopts=0):
    """The largest FRMPayload at EU868 data rate `dr` (0..5) with `fopts` bytes of MAC commands pending."""
    if not 0 <= dr <= 5:
        return 0
    return MAX_PAYLOAD[dr] - fopts


def time_on_air_us(phy_len, sf):
    """Microseconds a LoRa frame of `phy_len` bytes takes at spreading factor `sf` (125 kHz, CR 4/5)."""
    sym_us = (1 << sf) * 8  # 2^SF / 125 kHz
    de = 1 if sf >= 11 else 0
    num = 8 * phy_len - 4 * sf + 28 + 16  # explicit header, CRC
    den = 4 * (sf - 2 * de)
    blocks = (num + den - 1) // den if num > 0 else 0
    symbols = 8 + blocks * 5  # coding rate 4/5
    return (PREAMBLE_QUARTERS * sym_us) // 4 + symbols * sym_us


def uplink_ms(payload_len, dr, fopts=0):
    """Milliseconds on air of an uplink carrying `payload_len` bytes at EU868 `dr` (rounded up)."""
    return (time_on_air_us(OVERHEAD + fopts + payload_len, SF[dr]) + 999) // 1000


class Budget:
    """Whether an uplink may go now: the sub-band's duty cycle (a transmission of T starting at t
    keeps it closed until t + T / duty: T on air, then T x (1/duty - 1) off) and a cap on airtime in any 24 hours (hourly buckets). The modem enforces the
    duty cycle too; this keeps the board from asking for what it would refuse, and the cap is the
    board's alone (The Things Network's fair use: 30 s a day)."""

    def __init__(self, cap_ms_per_day, duty_permille=DUTY_PERMILLE):
        self.cap_ms = cap_ms_per_day
        self.duty = duty_permille
        self.free_at = 0  # when the sub-band reopens
        self.hours = array("i", bytes(96))  # airtime (ms) per hour, hour % 24
        self.stamp = array("i", bytes(96))  # which hour each bucket holds (+ 1: 0 is none)
        self.total_ms = 0  # since boot

    def used_ms(self, now):
        h = now // _HOUR_MS
        n = 0
        for i in range(24):
            if self.stamp[i] > h - 23:
                n += self.hours[i]
        return n

    def wait_ms(self, now, airtime_ms):
        """0 when an uplink of `airtime_ms` may go now; else how long until it may (-1: not
        before the daily cap has room, at least an hour)."""
        if self.used_ms(now) + airtime_ms > self.cap_ms:
            return -1
        return self.free_at - now if self.free_at > now else 0

    def record(self, now, airtime_ms):
        h = now // _HOUR_MS
        i = h % 24
        if self.stamp[i] != h + 1:
            self.stamp[i] = h + 1
            self.hours[i] = 0
        self.hours[i] += airtime_ms
        self.total_ms += airtime_ms
        self.free_at = now + airtime_ms * 1000 // self.duty  # the transmission, then 99 x its length off

    def closed_for(self, now, wait_ms):
        # The modem said the duty cycle forbids every channel for wait_ms (Restricted_Wait_<n>_ms).
        if now + wait_ms > self.free_at:
            self.free_at = now + wait_ms
