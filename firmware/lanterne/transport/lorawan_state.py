# Lanterne LoRaWAN link state across a deep sleep (docs/lorawan.md, "Across deep sleep"): what the
# airtime budget (the daily cap's hourly buckets, when the sub-band reopens) and the silence
# detection (time since the last downlink, link checks unanswered, a join asked for) need, packed
# in 67 bytes that lanterne/wake.py keeps in RTC memory. Loaded on a battery board's wakes that
# have a frame due (never on a sample-only wake, nor on a mains board). keep()/resume() work on a
# LorawanLink; pack(), restore(), cap_spent() and cold() are pure (CPython runs them too).
#
# The link's clock (LorawanLink.now(): ms since the link was made) starts again at every wake. The
# state is packed relative to the start of the oldest hour the daily cap still counts, with the
# wake's clock (the RTC's seconds, which run on through deep sleep) at that moment; resume() puts
# the new clock where the old one would be now: the old clock at the pack + the seconds the RTC
# counted since, less one (whole seconds: the least time that may have passed, so the duty cycle
# and the cap are never freed early).
#
# Lost (a power cut: RTC memory goes; a first power-on; a damaged or foreign state): the board
# cannot know what it sent before. It starts as if half of the daily cap went out in the hour
# before: a board that reboots and sends at once can at most reach 1.5 times the cap in a day,
# and still sends at once (an installer who puts a new cell in sees its first uplink). The
# sub-band is not closed: the modem lost power too and enforces the duty cycle itself
# (Restricted_Wait, honoured). Silence counts from the cold start.
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


VERSION = const(1)
_FMT = "<BiIIIBB24H"  # version, wake clock (s), clock - base (ms), sub-band free at - base (ms, 0: free),
# ms since the last downlink, link checks unanswered, flags, airtime (ms) of each of the 24 hours from base
SIZE = const(67)
_HOUR_MS = const(3600000)
_QUIET_MAX = const(536870911)  # ms since the last downlink saturate here (6.2 days, far past SILENCE_MS): small ints on the ESP32
_ELAPSED_MAX = const(172800)  # s: past two days nothing of the budget is left, and silence saturates
R_REJOIN = const(1)  # flags: join at the next connect (the silence found the session lost, or the modem had none)


def pack(budget, now, heard, misses, rejoin, wall_s):
    """The state (SIZE bytes) of an airtime.Budget and the silence detection at link time `now` (ms),
    `heard` (link time of the last downlink or join), `misses` (link checks unanswered in a row),
    `rejoin` (a join is asked for), with the wake's clock `wall_s` (s)."""
    base_h = now // _HOUR_MS - 23  # the oldest hour the cap counts (airtime.Budget.used_ms)
    base = base_h * _HOUR_MS
    hours = [0] * 24
    for i in range(24):
        h = budget.stamp[i] - 1  # (stamp 0: an empty bucket)
        if budget.stamp[i] and h >= base_h:
            n = budget.hours[i]
            hours[h - base_h] = n if n < 65535 else 65535  # an hour holds 36 s at 1 %
    free = budget.free_at - base if budget.free_at > now else 0
    quiet = now - heard
    quiet = 0 if quiet < 0 else quiet if quiet < _QUIET_MAX else _QUIET_MAX
    return struct.pack(_FMT, VERSION, wall_s, now - base, free, quiet, misses if misses < 255 else 255,
                       R_REJOIN if rejoin else 0, *hours)


def restore(budget, data, wall_s):
    """Put a packed state into a fresh airtime.Budget; (link time now, heard, misses, rejoin) on the
    restored link clock, or None when `data` is not a state of this version (the caller starts cold)."""
    if len(data) != SIZE or data[0] != VERSION:
        return None
    v = struct.unpack(_FMT, data)
    elapsed = wall_s - v[1] - 1  # the RTC counts whole seconds: the least time that may have passed
    if elapsed < 0:
        elapsed = 0  # (a clock set backwards: as if no time passed)
    elif elapsed > _ELAPSED_MAX:
        elapsed = _ELAPSED_MAX
    budget.free_at = v[3]
    for k in range(24):  # the base hour is hour 0 of the restored clock: bucket k holds hour k
        budget.hours[k] = v[7 + k]
        budget.stamp[k] = k + 1 if v[7 + k] else 0
    return v[2] + elapsed * 1000, v[2] - v[4], v[5], bool(v[6] & R_REJOIN)


def cap_spent(data, wall_s, cap_ms):
    """Whether a kept state says the daily cap (`cap_ms`) leaves no room now for even the smallest
    uplink (one byte at DR5): a battery wake need not wake the modem to learn it. False when unsure."""
    from lanterne.transport import airtime

    b = airtime.Budget(cap_ms)
    got = restore(b, data, wall_s)
    return got is not None and b.wait_ms(got[0], airtime.uplink_ms(1, 5)) < 0


def cold(budget, now):
    # No state: half of the daily cap counted as spent in the hour before (see the header).
    h = now // _HOUR_MS
    budget.stamp[h % 24] = h + 1
    budget.hours[h % 24] = budget.cap_ms // 2


def keep(link, wall_s):
    """The state of a LorawanLink to keep across the sleep."""
    from lanterne.transport.lorawan import F_REJOIN

    return pack(link.budget, link.now(), link._heard, link._misses, link._flags & F_REJOIN, wall_s)


def resume(link, data, wall_s):
    """A fresh LorawanLink continues from a kept state (True), or starts cold (False)."""
    import time

    from lanterne.transport.lorawan import F_KEPT, F_REJOIN, F_SPREAD

    link._flags |= F_KEPT  # connect() leaves the silence alone: a session the module kept is no downlink
    got = restore(link.budget, data, wall_s) if data else None
    if got is None:
        cold(link.budget, link.now())
        link._heard = link.now()
        return False
    link._mono, link._heard, link._misses, rejoin = got
    link._tick = time.ticks_ms()
    # a wake is not a boot: no random spread before a join (the spread is for boards powered up together)
    link._flags &= ~F_SPREAD
    if rejoin:
        link._flags |= F_REJOIN
    return True
