# Lanterne LoRaWAN bring-up (transport/lorawan.py loads it for one connect() and drops it):
# the modem answers, its settings and identity are checked and written only where they differ,
# no join while it holds a session (unless provisioning marked the state file: a new identity),
# else one join; the join backoff and its count kept on flash.
import random
import time

import asyncio
from micropython import const

from lanterne.transport.lorawan import F_CHANGED, F_MARKED, F_REJOIN, F_RESET, F_SPREAD, C_JOINS

JOIN_BASE_MS = const(8000)  # join backoff: 4-8 s, 8-16 s, ... (full jitter over the upper half)
JOIN_CAP_MS = const(3600000)  # ... at most an hour apart
JOIN_SPREAD_MS = const(4000)  # the first join after boot waits a random part of this x 2^(failures kept on flash)


def _load_failures(link):
    try:
        import json

        with open(link.state_file) as f:
            st = json.loads(f.read())
        if st.get("rejoin"):
            # provisioning wrote a new identity to a module that holds a session (fleet/modem.py):
            # join with it, even though the module says it is joined; the mark goes once joined
            link._flags |= F_REJOIN | F_MARKED
        return int(st["join_failures"])
    except Exception:  # none yet, or damaged: start from no failure
        return 0


def _save_failures(link):
    try:
        from lanterne.flashfile import write_atomic

        # (the mark stays until a join went through: a failed or refused join keeps it)
        write_atomic(link.state_file, '{"join_failures": %d%s}' % (link.failures, ', "rejoin": 1' if link._flags & F_MARKED else ""))
    except OSError:
        pass  # the backoff still works; only its memory across a reboot is lost
    link._file_failures = link.failures


def keep_failures(link):
    # Came up (joined, if the file asked for a join): no failure nor mark to remember any more.
    if link._file_failures or link._flags & F_MARKED:
        link._flags &= ~F_MARKED
        _save_failures(link)


def join_backoff(link):
    # A join failed (link.failures counted it): joins back off further than a reconnect (a join
    # request is airtime, and the network's answer slots are shared): 4-8 s, 8-16 s ... up to an
    # hour, jittered; the count kept on flash, so a reboot does not start the backoff over.
    _save_failures(link)
    cap = min(JOIN_CAP_MS, JOIN_BASE_MS << min(link.failures - 1, 12))
    link.next_try = time.ticks_add(time.ticks_ms(), cap // 2 + random.getrandbits(22) % (cap // 2 + 1))


async def _setting(link, name, want):
    # AT+<name>=? then AT+<name>=<want> when it differs; None when done, else why not.
    at = link.at
    v = await at.query(name, link.cmd_ms)
    if v is None:
        return "AT+%s=?: %s" % (name.decode(), at.status or "no answer")
    if v.upper() == want.upper():
        return None
    st = await at.command(b"AT+" + name + b"=" + want.encode(), link.cmd_ms)
    if st != "OK":
        return "AT+%s=%s: %s" % (name.decode(), want if name != b"APPKEY" else "<key>", st or "no answer")
    link._flags |= F_CHANGED
    return None

async def bring_up(link):
    """None when the link is up (joined now, or the module kept its session), "spread" when the
    first join waits its random spread (link.next_try set), else why not."""
    if link._file_failures < 0:
        link.failures = link._file_failures = _load_failures(link)
    if link.at is None:
        return link.last_error or "lorawan: no UART"
    at = link.at
    link._flags &= ~F_RESET
    st = await at.command(b"AT", link.cmd_ms)
    if st != "OK":  # a banner or noise may take the first answer: once more
        st = await at.command(b"AT", link.cmd_ms)
    if st != "OK":
        return "lorawan: modem not answering (%s)" % (st or "no reply to AT within %d ms" % link.cmd_ms)
    c = link.cfg
    for name, want in ((b"NWM", "1"), (b"NJM", "1"), (b"CLASS", "A"), (b"BAND", "4"), (b"ADR", "1"), (b"CFM", "1" if c["lorawan_confirmed"] else "0")):
        why = await _setting(link, name, want)
        if why:
            return "lorawan: " + why
    link._flags &= ~F_CHANGED
    if c["lorawan_deveui"] and c["lorawan_appkey"]:
        for name, want in ((b"DEVEUI", c["lorawan_deveui"]), (b"APPEUI", c["lorawan_joineui"] or "0000000000000000"), (b"APPKEY", c["lorawan_appkey"])):
            why = await _setting(link, name, want)
            if why:
                return "lorawan: " + why
    identity_changed = link._flags & F_CHANGED
    njs = await at.query(b"NJS", link.cmd_ms)
    if njs is None:
        return "lorawan: AT+NJS=?: %s" % (at.status or "no answer")
    if njs == "1" and not identity_changed and not link._flags & F_REJOIN:
        link._flags &= ~F_RESET  # (a restart seen while checking: the module kept its session anyway)
        return None  # the module kept its session: no join, no airtime, the frame counters go on
    if link._flags & F_SPREAD:
        # The first join since boot waits a random part of a spread that doubles with the
        # failures kept on flash: boards powered up together do not join together.
        link._flags &= ~F_SPREAD
        spread = min(JOIN_CAP_MS, JOIN_SPREAD_MS << min(link.failures, 12))
        wait = random.getrandbits(22) % spread
        link.next_try = time.ticks_add(time.ticks_ms(), wait)
        link.last_error = "lorawan: joining in %d ms (random spread after boot)" % wait
        return "spread"
    link._evt = None
    st = await at.command(b"AT+JOIN=1:0:8:1", link.cmd_ms)
    if st == "AT_BUSY_ERROR" and at.wait_ms:
        link.budget.closed_for(link.now(), at.wait_ms)
        return "lorawan: join refused by the duty cycle (Restricted_Wait_%d_ms)" % at.wait_ms
    if st != "OK":
        return "lorawan: join: AT+JOIN: %s" % (st or "no answer")
    t0 = time.ticks_ms()
    while link._evt is None and time.ticks_diff(time.ticks_ms(), t0) < link.join_ms:
        await asyncio.sleep_ms(50)
        at.pump()
    if link._evt is None:
        at.pump()  # a last read: an event that came while this task was held up counts
    evt = link._evt
    link.counts[C_JOINS] += 1
    if evt == "JOINED":
        link._flags &= ~(F_REJOIN | F_RESET)
        link._heard = link.now()  # the join accept is a downlink: silence counts from here
        link._misses = 0
        return None
    if evt is None:
        return "lorawan: join: no JOINED or JOIN_FAILED within %d ms" % link.join_ms
    return "lorawan: join failed (%s)" % evt
