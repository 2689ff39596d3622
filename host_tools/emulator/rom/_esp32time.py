# Virtual ESP32: `time` as the board's firmware sees it (the ROM installs this module under that
# name): the unix port's, but its sleeps wait as the ESP32's mp_hal_delay_ms does, taking pin
# interrupts and a Ctrl-C while they wait. The unix port's time.sleep() is one system call that
# only a signal would end, and a Ctrl-C no longer comes as a signal (see _hal.py).
from time import *
import time as _time
import _hal
import _irqpoll

# One poll with nothing registered: it watches the wake-up pair and the Ctrl-C channel. Made
# now, with the ROM (its heap is the ROM's, not the firmware's).
_waiter = _irqpoll.poll()


def sleep_ms(ms):
    if ms <= 0:
        _hal.check_interrupt()
        _time.sleep_ms(ms)
        return
    w = _waiter
    t0 = _time.ticks_ms()
    left = ms
    while left > 0:
        w._wait(left)  # raises KeyboardInterrupt on a Ctrl-C
        left = ms - _time.ticks_diff(_time.ticks_ms(), t0)


def sleep_us(us):
    if us >= 1000:
        sleep_ms(us // 1000)
        us %= 1000
    _time.sleep_us(us)


def sleep(s):
    ms = int(s * 1000)
    sleep_ms(ms)
    us = int(s * 1000000) - ms * 1000
    if us > 0:
        _time.sleep_us(us)
