"""Nova Fitness SDS011 particulate sensor over UART (9600 8N1), 10-byte frames.

    pm = SDS011(machine.UART(2, 9600, tx=17, rx=16, timeout=0))
    pm.tick()   # about once a second; see lanterne.sensors.particulate for the duty cycle

Frames (Nova Fitness "Laser Dust Sensor Control Protocol V1.3" and the SDS011 datasheet
V1.3, "UART communication protocol"): 0xAA, command 0xC0 (data) or 0xC5 (an answer to a
command), 6 data bytes, check (the sum of the 6 data bytes, low 8 bits), 0xAB. Data:
PM2.5 low, high; PM10 low, high (0.1 ug/m3 units); the device id (2 bytes). No PM1.0.

Commands: 0xAA 0xB4, command id, 12 data bytes, device id 0xFF 0xFF (any), check (the
sum of bytes 2..16, low 8 bits), 0xAB. Used here:
- 2, set reporting mode: data (1 = set, 1 = query mode): the sensor then answers
  query commands instead of streaming;
- 4, query data: answered with a 0xC0 frame;
- 6, set sleep / work: (1 = set, 0 = sleep / 1 = work);
- 8, set working period: (1 = set, 0 = continuous): the sensor's own duty cycle
  (n minutes: 30 s of work, then sleep) is turned off at start-up, so the driver's
  schedule (and its warm-up) is the only one.
The driver queries once a second while measuring; in sleep the fan and laser are off.
A frame from another protocol (a Plantower 0x42 0x4D ...) counts as a wrong frame.
"""

from time import ticks_diff

from micropython import const

from lanterne.sensors.particulate import ParticulateSensor, UartFrames

_HEAD = const(0xAA)
_TAIL = const(0xAB)
_DATA = const(0xC0)
_REPLY = const(0xC5)
_CMD_MODE = const(2)
_CMD_QUERY = const(4)
_CMD_SLEEP = const(6)
_CMD_PERIOD = const(8)


def command(cmd, d1=0, d2=0):
    """The 19-byte command frame (for the driver and tests)."""
    b = bytearray(19)
    b[0] = _HEAD
    b[1] = 0xB4
    b[2] = cmd
    b[3] = d1
    b[4] = d2
    b[15] = 0xFF
    b[16] = 0xFF
    s = 0
    for i in range(2, 17):
        s += b[i]
    b[17] = s & 0xFF
    b[18] = _TAIL
    return b


class SDS011(ParticulateSensor):
    scale10 = True
    has_pm1 = False

    def __init__(self, uart, **kw):
        super().__init__(**kw)
        self.io = UartFrames(uart, 10)
        self._cmd_query = command(_CMD_QUERY)
        self._cmd_wake = command(_CMD_SLEEP, 1, 1)
        self._cmd_sleep = command(_CMD_SLEEP, 1, 0)
        self._cmd_mode = command(_CMD_MODE, 1, 1)
        self._cmd_period = command(_CMD_PERIOD, 1, 0)
        self._keep = False
        self._asked = None
        self._feed = self._byte  # one bound method, not one per poll

    def _wake(self):
        u = self.io.uart
        u.write(self._cmd_wake)
        u.write(self._cmd_mode)
        u.write(self._cmd_period)

    def _sleep(self):
        self.io.uart.write(self._cmd_sleep)

    def _poll(self, now, keep):
        self._keep = keep
        self.io.drain(self._feed)
        if self._asked is None or ticks_diff(now, self._asked) >= 1000:
            self._asked = now
            self.io.uart.write(self._cmd_query)

    def _byte(self, b):
        io = self.io
        f = io.frame
        pos = io.pos
        if pos == 0:
            if b == _HEAD:
                f[0] = b
                io.pos = 1
            elif b == 0x42:  # a Plantower header where ours should be
                self._wrong_frame()
            return
        if pos == 1:
            if b == _DATA or b == _REPLY:
                f[1] = b
                io.pos = 2
            else:
                if b != _HEAD:
                    self._wrong_frame()
                io.pos = 1 if b == _HEAD else 0
            return
        f[pos] = b
        pos += 1
        io.pos = pos
        if pos < 10:
            return
        io.pos = 0
        if f[9] != _TAIL:
            self._wrong_frame()
            return
        s = (f[2] + f[3] + f[4] + f[5] + f[6] + f[7]) & 0xFF
        if s != f[8]:
            self._bad_frame()
            return
        self._seen = True
        if f[1] != _DATA or not self._keep:
            return
        pm25 = f[2] | (f[3] << 8)  # 0.1 ug/m3
        pm10 = f[4] | (f[5] << 8)
        self._add(0, pm25, pm10, (pm25 << 14) ^ pm10)
