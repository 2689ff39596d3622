# Virtual ESP32: `ntptime`. Sets the RTC from the host clock when the link is up, as an NTP
# server on the network would; fails like the real module (OSError) when it is down.
import time
import _hal

host = "pool.ntp.org"
timeout = 1


def time():
    import utime

    if not _hal.link_up():
        utime.sleep(timeout)
        raise OSError(110)  # ETIMEDOUT
    return utime.time()


def settime():
    import machine
    import utime

    t = utime.gmtime(time())
    machine.RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0))
