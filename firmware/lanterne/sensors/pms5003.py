"""Plantower PMS5003 / PMS7003 particulate sensor over UART (9600 8N1), 32-byte frames.

    pm = PMS5003(machine.UART(2, 9600, tx=17, rx=16, timeout=0), mode="passive")
    pm.tick()   # about once a second; see lanterne.sensors.particulate for the duty cycle

Frames (Plantower PMS5003 data manual v2.3, "Appendix I: transport protocol"; the
PMS7003's is the same): 0x42 0x4D, frame length (2 bytes, big-endian, 2 x 13 + 2 = 28),
13 data words (big-endian): PM1.0 / PM2.5 / PM10 "CF=1" (factory standard particle),
PM1.0 / PM2.5 / PM10 "under atmospheric environment" (ug/m3), then the numbers of
particles > 0.3, 0.5, 1.0, 2.5, 5.0, 10 um in 0.1 L of air, a reserved word, and the
check word: the sum of every byte before it, low 16 bits. The driver reports the
atmospheric-environment values (the ones meant for ambient air).

Commands (same appendix): 0x42 0x4D CMD DATAH DATAL LRCH LRCL, LRC = the sum of the
five bytes before it. CMD 0xE1 changes the mode (data 0: passive, 1: active),
0xE2 asks a passive sensor for one frame, 0xE4 sleeps (data 0) or wakes it (data 1).
Mode and sleep commands are answered with a short frame (length 4: the command and
its data), which the driver skips. In active mode the sensor sends a frame every
~1 s by itself (200..800 ms when the concentration changes fast); in passive mode
(the default here) it answers each 0xE2, which the driver sends once a second while
measuring. Sleep stops the fan and the laser; a woken sensor needs the warm-up.
A frame from another protocol (an SDS011's 0xAA 0xC0 ...) or with another length
counts as a wrong frame.
"""

from time import ticks_diff

from micropython import const

from lanterne.sensors.particulate import ParticulateSensor, UartFrames

_HEAD1 = const(0x42)
_HEAD2 = const(0x4D)
_FRAME = const(32)
_DATA_LEN = const(28)
_ACK_LEN = const(4)
_CMD_MODE = const(0xE1)
_CMD_READ = const(0xE2)
_CMD_SLEEP = const(0xE4)


def command(cmd, data):
    """The 7-byte command frame for `cmd` with 16-bit `data` (for the driver and tests)."""
    b = bytearray(7)
    b[0] = _HEAD1
    b[1] = _HEAD2
    b[2] = cmd
    b[3] = (data >> 8) & 0xFF
    b[4] = data & 0xFF
    s = b[0] + b[1] + b[2] + b[3] + b[4]
    b[5] = s >> 8
    b[6] = s & 0xFF
    return b


class PMS5003(ParticulateSensor):
    def __init__(self, uart, *, mode="passive", **kw):
        super().__init__(**kw)
        if mode not in ("passive", "active"):
            raise ValueError("mode must be 'passive' or 'active'")
        self.mode = mode
        self.io = UartFrames(uart, _FRAME)
        self.counts_03 = 0  # particles > 0.3 um per 0.1 L, last good frame
        self._cmd_read = command(_CMD_READ, 0)
        self._cmd_wake = command(_CMD_SLEEP, 1)
        self._cmd_sleep = command(_CMD_SLEEP, 0)
        self._cmd_mode = command(_CMD_MODE, 0 if mode == "passive" else 1)
        self._want = 0  # bytes expected in the frame being assembled (0: looking for the header)
        self._keep = False
        self._asked = None
        self._feed = self._byte  # one bound method, not one per poll

    def _wake(self):
        u = self.io.uart
        u.write(self._cmd_wake)
        u.write(self._cmd_mode)

    def _sleep(self):
        self.io.uart.write(self._cmd_sleep)

    def _poll(self, now, keep):
        self._keep = keep
        self.io.drain(self._feed)
        if self.mode == "passive":
            if self._asked is None or ticks_diff(now, self._asked) >= 1000:
                self._asked = now
                self.io.uart.write(self._cmd_read)

    def _byte(self, b):
        io = self.io
        f = io.frame
        pos = io.pos
        if pos == 0:
            if b == _HEAD1:
                f[0] = b
                io.pos = 1
            elif b == 0xAA:  # an SDS011 / other-protocol header where ours should be
                self._wrong_frame()
            return
        if pos == 1:
            if b == _HEAD2:
                f[1] = b
                io.pos = 2
            else:
                io.pos = 1 if b == _HEAD1 else 0
            return
        f[pos] = b
        pos += 1
        io.pos = pos
        if pos == 4:
            n = (f[2] << 8) | f[3]
            if n == _DATA_LEN:
                self._want = _FRAME
            elif n == _ACK_LEN:
                self._want = 8  # a command's answer: skipped
            else:
                self._wrong_frame()
                io.pos = 0
            return
        if pos < 4 or pos < self._want:
            return
        io.pos = 0
        want = self._want
        s = 0
        for i in range(want - 2):
            s += f[i]
        if (s & 0xFFFF) != ((f[want - 2] << 8) | f[want - 1]):
            self._bad_frame()
            return
        self._seen = True
        if want != _FRAME or not self._keep:
            return
        pm1 = (f[10] << 8) | f[11]
        pm25 = (f[12] << 8) | f[13]
        pm10 = (f[14] << 8) | f[15]
        self.counts_03 = (f[16] << 8) | f[17]
        # the signature: the mass values and the 0.3/0.5 um counts (counts always move in real air)
        self._add(pm1, pm25, pm10, (pm25 << 16) ^ (pm10 << 8) ^ self.counts_03 ^ ((f[18] << 8) | f[19]) << 3)
