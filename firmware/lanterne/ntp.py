# Lanterne clock: one SNTP query (RFC 4330) over a non-blocking UDP socket, then the RTC is set.
# The port's `ntptime` module blocks the whole board for its timeout (and for the DNS lookup of
# its pool): this asks the same servers while the asyncio loop keeps running.
import time

import socket

from lanterne import netio

HOST = "pool.ntp.org"
TIMEOUT_MS = 2000
_NTP_DELTA = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


async def query(host=HOST, timeout_ms=TIMEOUT_MS):
    """Unix seconds (UTC) from an NTP server. Raises OSError when none answers in time."""
    addr = await netio.resolve(host, 123, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        buf = bytearray(48)
        buf[0] = 0x23  # leap 0, version 4, mode 3 (client)
        s.sendto(buf, addr)
        if not await netio.readable(s, timeout_ms):
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
