# Virtual ESP32: the `machine` module. Every hardware access goes to the emulator's HAL
# server, which routes it to the simulated parts wired on this board (see the board file).
import os
import sys
import time
import _hal
import _irqpoll
import _esp32time
import micropython
from micropython import const

# The board's select.poll() wakes for pin interrupts, as the ESP32's does (see _irqpoll.py):
# installed as `select` before anything (asyncio) imports it.
sys.modules["select"] = _irqpoll

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)
# machine.wake_reason() (ESP-IDF's esp_sleep_wakeup_cause_t): 0 after any boot but a deep-sleep wake
PIN_WAKE = const(2)
EXT0_WAKE = const(2)
EXT1_WAKE = const(3)
TIMER_WAKE = const(4)
TOUCHPAD_WAKE = const(5)
ULP_WAKE = const(6)
# sleep modes a pin interrupt may wake (Pin.irq(wake=...))
IDLE = const(1)
SLEEP = const(2)
DEEPSLEEP = const(4)

_RESET_CAUSE = int(os.getenv("LANTERNE_RESET_CAUSE") or "1")
_WAKE_REASON = int(os.getenv("LANTERNE_WAKE_REASON") or "0")
_FREQ = [160000000]
_ENODEV = const(19)
_ETIMEDOUT = const(110)


def reset_cause():
    return _RESET_CAUSE


def reset():
    # Hard reset: the emulator ends this interpreter and boots a new one. Never returns.
    _hal.call("RESET hard")
    while True:
        time.sleep(1)


def soft_reset():
    # As on the ESP32 port: a SystemExit that the REPL turns into a soft reboot.
    raise SystemExit


def wake_reason():
    return _WAKE_REASON


def deepsleep(ms=0):
    # The CPU and its RAM power down: the emulator ends this interpreter at once and boots a new
    # one when the time has passed on the world clock or a wake pin reached its level (ms 0: only
    # a wake pin or a reset). RTC memory and the RTC clock are kept. Never returns.
    if ms < 0:
        raise ValueError("negative sleep time")
    _hal.call("RESET deepsleep %d" % ms)
    while True:
        time.sleep(1)


def lightsleep(ms=0):
    _esp32time.sleep_ms(ms)


def idle():
    _esp32time.sleep_ms(1)


def freq(hz=None):
    if hz is None:
        return _FREQ[0]
    if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _FREQ[0] = hz


def unique_id():
    serial = os.getenv("LANTERNE_SERIAL") or "000000000000"
    return bytes(int(serial[i : i + 2], 16) for i in range(0, 12, 2))


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    us = int(_hal.call("PULSE %d %d %d" % (pin._id, pulse_level, timeout_us)))
    if us > 0:
        time.sleep_us(us)
    return us


# -- pin interrupts ---------------------------------------------------------------------------
# The HAL server pushes one byte (the pin number) per edge on an events connection; a thread
# blocked on it schedules the pin's handler (micropython.schedule, as the esp32 port's GPIO ISR
# does) and writes a byte to the wake-up pair every select.poll watches (_irqpoll.py), so the
# handler runs within a bytecode or two whatever the interpreter was doing: executing, sleeping,
# or waiting in the asyncio loop's poll. A blocking call into C (a long system call) delays it,
# as a long C call delays a scheduled handler on the board.
_UNSET = object()
_irq_handlers = [None] * 40  # pin -> handler (only whole list items change: the thread reads them)
_irq_pins = [None] * 40
_irq_running = [False]


def _irq_thread(events, wake, buf):
    # Beside the interpreter's thread (the unix port's threads run without a GIL): allocates
    # nothing on its normal path and only reads list items the main thread replaces whole.
    while True:
        try:
            n = events.readinto(buf)
        except OSError:
            return
        if not n:
            return
        p = buf[0]
        h = _irq_handlers[p] if p < 40 else None
        if h is not None:
            try:
                micropython.schedule(_run_handler, p)
            except RuntimeError:
                pass  # the schedule queue is full: this edge is lost, as on the board
            try:
                wake.write(buf)
            except OSError:
                pass


def _run_handler(p):
    # A scheduled pin interrupt, on the interpreter's thread: a Ctrl-C waits until it is over.
    h = _irq_handlers[p]
    if h is not None:
        _hal.in_callback[0] += 1
        try:
            h(_irq_pins[p])
        finally:
            _hal.in_callback[0] -= 1


def _run_timer(t):
    cb = t._cb
    if cb:
        _hal.in_callback[0] += 1
        try:
            cb(t)
        finally:
            _hal.in_callback[0] -= 1


_wake_tx = []  # the sending end of the wake-up pair every poll (and sleep) watches, once made


def _wake_pair():
    if _wake_tx:
        return _wake_tx[0]
    import usocket

    # A connected AF_UNIX pair in the run folder: the threads write, every poll watches.
    path = (os.getenv("LANTERNE_RUN_DIR") or "/tmp") + "/irq.sock"
    addr = b"\x01\x00" + path.encode() + b"\x00"  # struct sockaddr_un (AF_UNIX = 1, little-endian)
    try:
        _hal.posix().remove(path)
    except OSError:
        pass
    listener = usocket.socket(1, 1)
    listener.bind(addr)
    listener.listen(1)
    tx = usocket.socket(1, 1)
    tx.connect(addr)
    rx = listener.accept()[0]
    listener.close()
    _hal.posix().remove(path)
    rx.setblocking(False)
    _irqpoll.wake = rx
    _wake_tx.append(tx)
    return tx


def _irq_start():
    if _irq_running[0]:
        return
    import _thread

    tx = _wake_pair()
    events = _hal.open_events()
    _irq_running[0] = True
    _thread.start_new_thread(_irq_thread, (events, tx, bytearray(1)))


class _PinIRQ:
    # What Pin.irq() returns on the esp32 port: call it to run the handler now, trigger() to
    # read or change what fires it.
    def __init__(self, pin):
        self._pin = pin

    def __call__(self):
        h = _irq_handlers[self._pin._id]
        if h is not None:
            micropython.schedule(_run_handler, self._pin._id)

    def trigger(self, t=None):
        old = self._pin._trigger
        if t is not None:
            _hal.call("IRQ %d %d" % (self._pin._id, t))
            self._pin._trigger = t
        return old


def _pin_id(pin):
    if isinstance(pin, Pin):
        return pin._id
    return int(pin)


class Pin:
    IN = const(1)
    OUT = const(3)
    OPEN_DRAIN = const(7)
    PULL_UP = const(2)
    PULL_DOWN = const(1)
    PULL_HOLD = const(4)
    IRQ_RISING = const(1)
    IRQ_FALLING = const(2)
    WAKE_LOW = const(4)
    WAKE_HIGH = const(5)
    DRIVE_0 = const(0)
    DRIVE_1 = const(1)
    DRIVE_2 = const(2)
    DRIVE_3 = const(3)

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if not isinstance(id, int) or not (0 <= id <= 39) or id in (20, 24, 28, 29, 30, 31):
            raise ValueError("invalid pin")
        self._id = id
        self._mode = self.IN
        self._irq = None
        self._trigger = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if mode != -1 and mode is not None:
            if mode in (self.OUT, self.OPEN_DRAIN) and self._id >= 34:
                raise ValueError("pin can only be input")
            self._mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return int(_hal.call("PINR %d" % self._id))
        _hal.call("PINW %d %d" % (self._id, 1 if v else 0))

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=_UNSET, trigger=3, wake=None):
        # As the esp32 port: handler (called with the pin), trigger (IRQ_RISING | IRQ_FALLING),
        # wake; no `hard`: the handler is always scheduled (micropython.schedule) and runs on
        # the interpreter's thread between two bytecodes, as soon as the edge reaches it.
        # wake=DEEPSLEEP with trigger WAKE_LOW/WAKE_HIGH arms the pin as the ext0 wake source.
        if wake is not None and wake & DEEPSLEEP:
            if trigger not in (self.WAKE_LOW, self.WAKE_HIGH):
                raise ValueError("bad trigger for wake")
            import esp32

            esp32.wake_on_ext0(self, 1 if trigger == self.WAKE_HIGH else 0)
            wake = None
        if handler is not _UNSET or trigger != 3 or wake is not None:
            if handler is _UNSET or handler is None:
                handler, trigger = None, 0
            _irq_handlers[self._id] = handler
            _irq_pins[self._id] = self
            if handler is not None:
                _irq_start()
            _hal.call("IRQ %d %d" % (self._id, trigger))
            self._trigger = trigger
        if self._irq is None:
            self._irq = _PinIRQ(self)
        return self._irq

    def __repr__(self):
        return "Pin(%d)" % self._id


class Signal:
    def __init__(self, pin, *args, invert=False, **kw):
        self._pin = pin if isinstance(pin, Pin) else Pin(pin, *args, **kw)
        self._invert = invert

    def value(self, v=None):
        if v is None:
            return self._pin.value() ^ self._invert
        self._pin.value((1 if v else 0) ^ self._invert)

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class I2C:
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._id = id
        self._freq = freq

    def init(self, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._freq = freq

    def deinit(self):
        pass

    def scan(self):
        r = _hal.call("SCAN %d" % self._id)
        return [int(a) for a in r.split(",")] if r else []

    def start(self):
        pass

    def stop(self):
        pass

    def writeto(self, addr, buf, stop=True):
        _hal.call("I2CW %d %d %s" % (self._id, addr, bytes(buf).hex() or "-"))
        return len(buf)

    def writevto(self, addr, vector, stop=True):
        data = b"".join(bytes(b) for b in vector)
        return self.writeto(addr, data, stop)

    def readfrom(self, addr, nbytes, stop=True):
        return bytes.fromhex(_hal.call("I2CR %d %d %d" % (self._id, addr, nbytes)))

    def readfrom_into(self, addr, buf, stop=True):
        data = self.readfrom(addr, len(buf))
        buf[:] = data

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        mem = memaddr.to_bytes(addrsize // 8, "big")
        return bytes.fromhex(_hal.call("I2CWR %d %d %s %d" % (self._id, addr, mem.hex(), nbytes)))

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        data = self.readfrom_mem(addr, memaddr, len(buf), addrsize=addrsize)
        for i in range(len(buf)):
            buf[i] = data[i]

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        mem = memaddr.to_bytes(addrsize // 8, "big")
        _hal.call("I2CW %d %d %s" % (self._id, addr, (mem + bytes(buf)).hex()))


class SoftI2C(I2C):
    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        # Bit-banged I2C reaches the same parts as hardware bus 0 on the same pins.
        I2C.__init__(self, 0, scl=scl, sda=sda, freq=freq)


class PWM:
    def __init__(self, dest, *, freq=5000, duty=None, duty_u16=None, duty_ns=None, invert=False):
        self._pin = _pin_id(dest)
        self._freq = freq
        self._duty = 0
        self._active = True
        self.init(freq=freq, duty=duty, duty_u16=duty_u16, duty_ns=duty_ns)

    def init(self, *, freq=None, duty=None, duty_u16=None, duty_ns=None, invert=False):
        if freq is not None:
            if not 1 <= freq <= 40000000:
                raise ValueError("frequency must be from 1Hz to 40MHz")
            self._freq = freq
        if duty is not None:
            self._duty = duty * 65535 // 1023
        elif duty_u16 is not None:
            self._duty = duty_u16
        elif duty_ns is not None:
            self._duty = min(65535, duty_ns * self._freq * 65535 // 1000000000)
        self._active = True
        self._send()

    def _send(self):
        _hal.call("PWM %d %d %d" % (self._pin, self._freq, self._duty if self._active else -1))

    def deinit(self):
        self._active = False
        self._send()

    def freq(self, f=None):
        if f is None:
            return self._freq
        self.init(freq=f)

    def duty(self, d=None):
        if d is None:
            return self._duty * 1023 // 65535
        self.init(duty=d)

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        if not 0 <= d <= 65535:
            raise ValueError("duty_u16 must be from 0 to 65535")
        self.init(duty_u16=d)

    def duty_ns(self, ns=None):
        if ns is None:
            return self._duty * 1000000000 // (65535 * self._freq)
        self.init(duty_ns=ns)


class ADC:
    ATTN_0DB = const(0)
    ATTN_2_5DB = const(1)
    ATTN_6DB = const(2)
    ATTN_11DB = const(3)
    WIDTH_9BIT = const(9)
    WIDTH_10BIT = const(10)
    WIDTH_11BIT = const(11)
    WIDTH_12BIT = const(12)

    # Full-scale input per attenuation on the ESP32 (Espressif ADC calibration, typical).
    _FULL_UV = (950000, 1250000, 1750000, 3100000)

    def __init__(self, pin, *, atten=None):
        self._pin = _pin_id(pin)
        if not 32 <= self._pin <= 39:
            raise ValueError("invalid pin for ADC")
        self._atten = self.ATTN_0DB if atten is None else atten
        self._width = 12

    def init(self, *, atten=None):
        if atten is not None:
            self._atten = atten

    def atten(self, a):
        self._atten = a

    def width(self, w):
        self._width = w

    def read_uv(self):
        uv = int(_hal.call("ADC %d" % self._pin))
        full = self._FULL_UV[self._atten]
        return uv if uv < full else full

    def read_u16(self):
        return self.read_uv() * 65535 // self._FULL_UV[self._atten]

    def read(self):
        return self.read_uv() * ((1 << self._width) - 1) // self._FULL_UV[self._atten]


class ADCBlock:
    def __init__(self, id, *, bits=12):
        self._id = id

    def connect(self, pin, *args, **kw):
        return ADC(pin)


class UART:
    INV_TX = const(1)
    INV_RX = const(2)
    RTS = const(1)
    CTS = const(2)

    def __init__(self, id, baudrate=115200, **kw):
        self._id = id
        self._baud = baudrate
        self._timeout = kw.get("timeout", 0)
        self._rx = b""

    def init(self, baudrate=115200, **kw):
        self._baud = baudrate
        self._timeout = kw.get("timeout", self._timeout)

    def deinit(self):
        pass

    def write(self, buf):
        _hal.call("UARTW %d %s" % (self._id, bytes(buf).hex() or "-"))
        return len(buf)

    def _fill(self, n):
        if len(self._rx) < n:
            got = _hal.call("UARTR %d %d" % (self._id, max(n - len(self._rx), 64)))
            if got:
                self._rx += bytes.fromhex(got)

    def any(self):
        self._fill(1)
        return len(self._rx)

    def read(self, n=-1):
        deadline = time.ticks_add(time.ticks_ms(), self._timeout)
        want = n if n >= 0 else 4096
        while True:
            self._fill(want)
            if len(self._rx) >= want or n < 0 or time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                break
            _esp32time.sleep_ms(2)
        if not self._rx:
            return None
        out, self._rx = self._rx[:want], self._rx[want:]
        return out

    def readinto(self, buf, nbytes=-1):
        n = len(buf) if nbytes < 0 else nbytes
        data = self.read(n)
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self):
        deadline = time.ticks_add(time.ticks_ms(), self._timeout)
        while True:
            self._fill(64)
            i = self._rx.find(b"\n")
            if i >= 0:
                out, self._rx = self._rx[: i + 1], self._rx[i + 1 :]
                return out
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                out, self._rx = self._rx, b""
                return out or None
            _esp32time.sleep_ms(2)

    def flush(self):
        pass

    def txdone(self):
        return True


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self._timeout = timeout
        _hal.call("WDT %d" % timeout)

    def feed(self):
        _hal.call("FEED")


# The RTC's clock: its offset from the host's clock (time.time()) and the sleep's, ms. Kept across
# deep sleep and the resets that leave the RTC domain powered (the emulator hands it on), lost
# with the power. Its user memory likewise (RTC.memory(), 2 KB as MICROPY_HW_RTC_USER_MEM_MAX).
_rtc_base = [int(os.getenv("LANTERNE_RTC_OFFSET_MS") or "0")]
# The RTC counts the time the board spent in deep sleep, also what the world fast-forwarded
# (sleep_speedup, host_tools/emulator/sleep.py); time.time() here stays the host's clock.
_CLOCK_AHEAD = float(os.getenv("LANTERNE_CLOCK_AHEAD") or "0")
_rtc_memory = [bytes.fromhex(os.getenv("LANTERNE_RTC_MEMORY") or "")]
_RTC_MEMORY_MAX = const(2048)


def _days_from_civil(y, m, d):
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _civil(secs):
    days, rem = divmod(secs, 86400)
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (m <= 2)
    wd = (days + 3) % 7  # Monday = 0
    return (y, m, d, wd, rem // 3600, rem // 60 % 60, rem % 60, 0)


class RTC:
    # Counts from 2000-01-01 at power-on until set (ntptime.settime(), datetime()), and on
    # through deep sleep and soft resets (the emulator hands its offset to each interpreter).

    def __init__(self, id=0):
        pass

    def init(self, datetime=None):
        if datetime is not None:
            self.datetime(datetime)

    def _now(self):
        return int(time.time() + _CLOCK_AHEAD + _rtc_base[0] / 1000)

    def datetime(self, dt=None):
        if dt is None:
            return _civil(self._now())
        self.set_epoch(_days_from_civil(dt[0], dt[1], dt[2]) * 86400 + dt[4] * 3600 + dt[5] * 60 + dt[6])

    def set_epoch(self, secs):
        _rtc_base[0] = int((int(secs) - time.time() - _CLOCK_AHEAD) * 1000)
        _hal.call("RTCCLK %d" % _rtc_base[0])

    def memory(self, data=None):
        # Bytes kept in RTC slow memory: they survive deep sleep and soft resets, not a power cut.
        if data is None:
            return _rtc_memory[0]
        data = bytes(data)
        if len(data) > _RTC_MEMORY_MAX:
            raise ValueError("buffer too long")
        _hal.call("RTCMEM %s" % (data.hex() or "-"))
        _rtc_memory[0] = data



class Timer:
    ONE_SHOT = const(0)
    PERIODIC = const(1)

    def __init__(self, id=-1, **kw):
        self._id = id
        self._thread = None
        if kw:
            self.init(**kw)

    def init(self, *, mode=1, period=-1, freq=-1, callback=None):
        import _thread
        import micropython

        if freq > 0:
            period = 1000 // freq
        self._period = max(1, period)
        self._mode = mode
        self._cb = callback
        self._gen = getattr(self, "_gen", 0) + 1
        gen = self._gen
        wake = _wake_pair()  # a sleep or poll in progress wakes for the callback, as for a pin's
        buf = bytearray(1)

        def run():
            while self._gen == gen:
                time.sleep_ms(self._period)
                if self._gen != gen:
                    break
                if self._cb:
                    try:
                        micropython.schedule(_run_timer, self)
                    except RuntimeError:
                        pass
                    try:
                        wake.write(buf)
                    except OSError:
                        pass
                if self._mode == self.ONE_SHOT:
                    break

        _thread.start_new_thread(run, ())

    def deinit(self):
        self._gen = getattr(self, "_gen", 0) + 1


class I2S:
    # As the esp32 port's machine.I2S (RX: a microphone): readinto(buf) fills buf and blocks
    # until the samples exist. The samples come in bulk: one HAL request fetches several
    # blocks into a file in the run folder, later readintos take them from there.
    RX = const(0)
    TX = const(1)
    MONO = const(0)
    STEREO = const(1)
    _CHUNK = const(16)  # blocks fetched per HAL request

    def __init__(self, id, *, sck, ws, sd, mode, bits, format, rate, ibuf, mck=None):
        if mode != self.RX:
            raise ValueError("only RX (a microphone) on the virtual board")
        if bits not in (16, 32) or format not in (self.MONO, self.STEREO):
            raise ValueError("invalid bits or format")
        self._id = id
        self._bits = bits
        self._rate = rate
        self._path = _hal._run_dir + "/i2s%d.raw" % id
        self._irq = None
        self._zero = None
        self._file = None
        self._left = 0  # bytes fetched and not read yet
        self._given = 0  # samples handed to the firmware since _t0
        _hal.call("I2SINIT %d %d %d" % (id, rate, bits))
        self._t0 = time.ticks_ms()

    def init(self, **kw):
        pass

    def deinit(self):
        if self._file:
            self._file.close()
            self._file = None

    def irq(self, handler):
        self._irq = handler

    def readinto(self, buf):
        # The buffer's size in bytes (an array's items may be 2 or 4 bytes; MicroPython does
        # not say): what a read from /dev/zero fills, with no allocation.
        if self._zero is None:
            self._zero = _hal.posix().open("/dev/zero", "rb")
        n = self._zero.readinto(buf)
        if self._left < n:
            _hal.call("I2SR %d %d" % (self._id, n * _CHUNK))
            if self._file is None:  # one file object for the board's life: no churn on the heap
                self._file = _hal.posix().open(self._path, "rb")
            self._file.seek(0)
            self._left = n * _CHUNK
        got = self._file.readinto(buf)
        self._left -= got
        # Block as the ESP32 does until the last of these samples has been sampled.
        self._given += got * 8 // self._bits
        while self._given >= self._rate:  # keep the numbers small
            self._given -= self._rate
            self._t0 = time.ticks_add(self._t0, 1000)
        wait = self._given * 1000 // self._rate - time.ticks_diff(time.ticks_ms(), self._t0)
        if wait > 0:
            _esp32time.sleep_ms(wait)
        return got

    def write(self, buf):
        raise OSError(1)

    @staticmethod
    def shift(buf, bits, shift):
        raise NotImplementedError
