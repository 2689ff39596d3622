# Virtual ESP32: `ntptime`. Sets the RTC from the simulated world's wall clock when the link
# is up, as an NTP server on the network would; fails like the real module (OSError) when
# it is down. time() returns seconds since the Unix epoch, like MicroPython >= 1.22 ports.
import _hal

host = "pool.ntp.org"
timeout = 1


def time():
    import utime

    if not _hal.link_up():
        utime.sleep(timeout)
        raise OSError(110)  # ETIMEDOUT
    return int(_hal.call("CLOCK"))


def settime():
    import machine

    machine.RTC().set_epoch(time())
