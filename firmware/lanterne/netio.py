# Lanterne non-blocking IP helpers: waits on a socket through the asyncio loop's own poller, and
# name lookups kept off the loop.
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

_cache = {}  # "host:port:kind" -> the last address that lookup gave
_pending = {}  # "host:port:kind" -> [answer]: a lookup running in its thread (answer None until done)
_stale = set()  # cached addresses a connection just failed on: look again before trusting them


def numeric(host):
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
    if numeric(host):
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
    if cached is not None and key not in _stale:
        _collect(key, slot)
        return cached  # the lookup refreshes it in the background
    t0 = time.ticks_ms()
    while slot[0] is None and time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
        await asyncio.sleep_ms(20)
    if not _collect(key, slot):
        if cached is not None:
            return cached
        if slot[0] is None:
            raise OSError("dns: %s: no answer within %d ms" % (host, timeout_ms))
        raise OSError("dns: %s: %r" % (host, slot[0]))
    return _cache[key]


def _collect(key, slot):
    # A finished lookup's answer into the cache; True when it gave an address.
    answer = slot[0]
    if answer is None:
        return False  # still looking: that thread keeps its slot, no second one is started
    del _pending[key]
    if isinstance(answer, Exception):
        return False
    _cache[key] = answer
    _stale.discard(key)
    return True


def distrust(host, port, kind=socket.SOCK_STREAM):
    """A connection to the cached address of host failed: look the name up again next time."""
    if not numeric(host):
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
