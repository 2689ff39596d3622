# Lanterne non-blocking IP helpers: waits on a socket through the asyncio loop's own poller, name
# lookups kept off the loop, and the clock (one SNTP query, RFC 4330, over a non-blocking UDP
# socket: the port's `ntptime` blocks the whole board for its timeout and its pool's lookup).
#
# getaddrinfo() cannot be made non-blocking on MicroPython: on the ESP32 it waits inside lwIP
# for the DNS server (up to ~15 s when it never answers). So a name is looked up in a thread of
# its own (the esp32 port releases its GIL around the lookup) while the loop polls for the
# answer, one lookup per name at a time. Cached: once a name has an address, resolve() returns
# it at once and refreshes it in the background; only the first lookup, or one after a
# connection to the cached address failed (distrust()), is waited for, at most `timeout_ms`,
# after which the cached address (if any) is used. Numeric addresses need no lookup. A port
# without threads looks names up inline (bounded only by its resolver).
import time

import asyncio
import socket

NTP_HOST = "pool.ntp.org"
NTP_TIMEOUT_MS = 2000
_NTP_DELTA = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_cache = {}  # "host:port:kind" -> the last address that lookup gave
_pending = {}  # "host:port:kind" -> [answer]: a lookup running in its thread (answer None until done)
_stale = set()  # cached addresses a connection just failed on: look again before trusting them


def _numeric(host):
    for c in host:
        if c not in "0123456789.:":
            return False
    return True


def _lookup(slot, host, port, kind):
    # In the lookup's own thread: only ever stores into slot[0].
    try:
        slot[0] = socket.getaddrinfo(host, port, 0, kind)[0][-1]
    except Exception as e:
        slot[0] = e


async def resolve(host, port, kind=socket.SOCK_STREAM, timeout_ms=5000):
    """The address of host:port, without holding the loop. Raises OSError naming the host when
    the name cannot be looked up within `timeout_ms` and no earlier answer is known."""
    if _numeric(host):
        return socket.getaddrinfo(host, port, 0, kind)[0][-1]
    key = "%s:%d:%d" % (host, port, kind)
    cached = _cache.get(key)
    slot = _pending.get(key)
    if slot is None:
        try:
            import _thread
        except ImportError:
            _cache[key] = socket.getaddrinfo(host, port, 0, kind)[0][-1]
            return _cache[key]
        slot = _pending[key] = [None]
        _thread.start_new_thread(_lookup, (slot, host, port, kind))
    if cached is None or key in _stale:  # wait for this lookup (at most timeout_ms)
        t0 = time.ticks_ms()
        while slot[0] is None and time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            await asyncio.sleep_ms(20)
    answer = slot[0]
    if answer is not None:  # done: its slot goes; a good answer is the new cached address
        del _pending[key]
        if not isinstance(answer, Exception):
            _cache[key] = cached = answer
            _stale.discard(key)
    if cached is not None:
        return cached  # (when the lookup is still running, it refreshes it in the background)
    if answer is None:
        raise OSError("dns: %s: no answer within %d ms" % (host, timeout_ms))
    raise OSError("dns: %s: %r" % (host, answer))


def distrust(host, port, kind=socket.SOCK_STREAM):
    """A connection to the cached address of host failed: look the name up again next time."""
    if not _numeric(host):
        _stale.add("%s:%d:%d" % (host, port, kind))


def wait_read(s):
    """Park this task in the loop's poller until `s` is readable (`await netio.wait_read(s)`; no
    timeout; at most one task may wait to read a given socket)."""
    from asyncio import core

    yield core._io_queue.queue_read(s)


def _wait_write(s):
    from asyncio import core

    yield core._io_queue.queue_write(s)


async def readable(s, timeout_ms):
    """True when `s` became readable within `timeout_ms`."""
    try:
        await asyncio.wait_for_ms(wait_read(s), timeout_ms)
        return True
    except asyncio.TimeoutError:
        return False


async def writable(s, timeout_ms):
    """True when `s` became writable within `timeout_ms` (a TCP connect completes so)."""
    try:
        await asyncio.wait_for_ms(_wait_write(s), timeout_ms)
        return True
    except asyncio.TimeoutError:
        return False


async def ntp_query(host=NTP_HOST, timeout_ms=NTP_TIMEOUT_MS):
    """Unix seconds (UTC) from an NTP server. Raises OSError when none answers in time."""
    addr = await resolve(host, 123, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        buf = bytearray(48)
        buf[0] = 0x23  # leap 0, version 4, mode 3 (client)
        s.sendto(buf, addr)
        if not await readable(s, timeout_ms):
            raise OSError("ntp: %s: no answer within %d ms" % (host, timeout_ms))
        n = s.readinto(buf)
        # a server's answer (mode 4), not a kiss-o'-death (stratum 0), with a transmit time
        if not n or n < 48 or buf[0] & 7 != 4 or buf[1] == 0 or not (buf[40] | buf[41]):
            raise OSError("ntp: %s: unusable answer" % host)
        return (buf[40] << 24 | buf[41] << 16 | buf[42] << 8 | buf[43]) - _NTP_DELTA
    finally:
        s.close()


def set_rtc(unix_seconds):
    import machine

    # time.gmtime() counts from the port's epoch: 1970 on current ports, 2000 on older ones
    epoch = 0 if time.gmtime(0)[0] == 1970 else 946684800
    tm = time.gmtime(unix_seconds - epoch)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
