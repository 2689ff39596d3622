# Virtual ESP32: `ntptime`, the port's small SNTP client: one query to `host`, blocking up to
# `timeout` seconds. Its datagrams go through the virtual board's socket module, so they reach
# the board's simulated time server (the world's wall clock), fail while the link is down and
# go unanswered while the world's "ntp" fault is "silent", as on a real network.
# time() returns seconds since the Unix epoch, like MicroPython >= 1.22 ports.
import struct

host = "pool.ntp.org"
timeout = 1
_NTP_DELTA = 2208988800  # 1900-01-01 to 1970-01-01


def time():
    import socket

    query = bytearray(48)
    query[0] = 0x1B  # LI 0, version 3, mode 3 (client)
    addr = socket.getaddrinfo(host, 123)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(query, addr)
        msg = s.recv(48)
    finally:
        s.close()
    return struct.unpack("!I", msg[40:44])[0] - _NTP_DELTA


def settime():
    import machine
    import utime

    tm = utime.gmtime(time())
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
