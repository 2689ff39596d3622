# Virtual ESP32: `select` as the board's firmware sees it (the ROM installs this module under
# that name). On the ESP32, select.poll() waits in a loop that runs scheduled callbacks (pin
# interrupts) as soon as they are scheduled (MICROPY_EVENT_POLL_HOOK). The unix port's poll()
# sleeps in one system call instead, so a pin interrupt scheduled meanwhile would wait for the
# poll's timeout. Here the interrupt thread (machine.py) also writes a byte to `wake`, which
# every poll watches: the poll returns, the scheduled handler runs, the poll goes on for the
# time left. Every poll also watches the Ctrl-C channel (_hal.py): a Ctrl-C typed while the
# firmware waits (or passes through its asyncio loop) raises KeyboardInterrupt here, between two
# bytecodes, as the ESP32's poll does.
import select as _select
import time
import _hal

POLLIN = _select.POLLIN
POLLOUT = _select.POLLOUT
POLLERR = _select.POLLERR
POLLHUP = _select.POLLHUP
try:
    POLLPRI = _select.POLLPRI
except AttributeError:
    pass

wake = None  # the receiving end of the interrupt thread's wake-up pair, once an IRQ is set
_drain = bytearray(16)


def select(*args):
    return _select.select(*args)


class poll:
    def __init__(self):
        self._p = _select.poll()
        self._wake = None
        if _hal.intr is not None:  # (open from boot, before any user code: never changes)
            self._p.register(_hal.intr, POLLIN)

    def register(self, obj, mask=POLLIN | POLLOUT):
        self._p.register(obj, mask)

    def unregister(self, obj):
        self._p.unregister(obj)

    def modify(self, obj, mask):
        self._p.modify(obj, mask)

    def poll(self, timeout=-1):
        return self._wait(timeout)

    def ipoll(self, timeout=-1, flags=0):
        if wake is None and _hal.intr is None:
            return self._p.ipoll(timeout, flags)
        return self._wait(timeout)

    def _wait(self, timeout):
        w = wake
        c = _hal.intr
        if w is None and c is None:
            return self._p.poll(timeout)
        if w is not None and self._wake is not w:
            self._p.register(w, POLLIN)
            self._wake = w
        t0 = time.ticks_ms()
        while True:
            ready = self._p.poll(timeout)
            if not ready:
                return ready  # (the asyncio loop's usual case: kept short)
            woken = False
            i = len(ready)
            while i:
                i -= 1
                obj = ready[i][0]
                if obj is c and c is not None:
                    ready.pop(i)
                    if _hal.take_interrupt():
                        raise KeyboardInterrupt  # a Ctrl-C (inside a scheduled callback: not yet)
                elif obj is w and w is not None:
                    woken = True
                    ready.pop(i)
            if woken:
                try:
                    w.readinto(_drain)
                except OSError:
                    pass
                # returning to bytecode here runs the handler the interrupt thread scheduled
            if ready or not woken or timeout == 0:
                return ready
            if timeout > 0:
                left = timeout - time.ticks_diff(time.ticks_ms(), t0)
                if left <= 0:
                    return ready
                timeout = left
