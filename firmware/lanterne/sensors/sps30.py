"""Sensirion SPS30 particulate sensor over I2C (address 0x69), 16-bit words each with a CRC-8.

    pm = SPS30(machine.I2C(0, scl=Pin(22), sda=Pin(21), freq=100000))
    pm.tick()   # about once a second; see lanterne.sensors.particulate for the duty cycle

From the Sensirion SPS30 datasheet (v1.0, D1, 2020), section 6 "I2C interface":
- a command is a 16-bit pointer written MSB first; arguments and answers are 16-bit
  words, each followed by its CRC-8 (polynomial 0x31, init 0xFF, no reflection, no
  final XOR; CRC(0xBEEF) = 0x92, the datasheet's example);
- 0x0010 start measurement, argument (0x05, 0x00): output format "big-endian unsigned
  16-bit integers" (firmware 2.0 and later); 0x0104 stop measurement;
- 0x0202 read data-ready flag: one word, 1 when a new measurement is ready (every 1 s);
- 0x0300 read measured values: in the integer format 10 words, mass concentrations
  PM1.0, PM2.5, PM4.0, PM10 (ug/m3), number concentrations PM0.5 .. PM10 (#/cm3) and the
  typical particle size (nm);
- 0x1001 sleep (from idle mode only: stop first), 0x1103 wake-up: the first write only
  wakes the interface and may be NACKed, so it is sent twice;
- 0xD206 read device status register: two words; bit 4 "fan failure: fan is
  mechanically blocked or broken", bit 5 laser failure, bit 21 fan speed out of range.
The SPS30's own fan cleaning (every 168 h of fan time by default) runs on its own.
"""

from micropython import const

from lanterne.sensors.particulate import ParticulateSensor

_ADDRESS = const(0x69)
_CMD_START = const(0x0010)
_CMD_STOP = const(0x0104)
_CMD_READY = const(0x0202)
_CMD_READ = const(0x0300)
_CMD_SLEEP = const(0x1001)
_CMD_WAKE = const(0x1103)
_CMD_STATUS = const(0xD206)
_STATUS_FAN = const(1 << 4)
_STATUS_LASER = const(1 << 5)
_STATUS_SPEED = const(1 << 21)


def crc8(buf, start=0, n=2):
    """Sensirion CRC-8 of buf[start:start + n]."""
    crc = 0xFF
    for i in range(start, start + n):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SPS30(ParticulateSensor):
    def __init__(self, i2c, address=_ADDRESS, **kw):
        super().__init__(**kw)
        self.i2c = i2c
        self.address = address
        self.status = 0  # the last device status register
        self._cmd = bytearray(2)
        self._start = bytearray((_CMD_START >> 8, _CMD_START & 0xFF, 0x05, 0x00, 0))
        self._start[4] = crc8(self._start, 2)
        self._rd = bytearray(30)
        self._rd3 = bytearray(3)
        self._rd6 = bytearray(6)
        self._keep = False

    def _write(self, cmd):
        c = self._cmd
        c[0] = cmd >> 8
        c[1] = cmd & 0xFF
        self.i2c.writeto(self.address, c)

    def _read(self, cmd, buf):
        """Write the pointer, read words; False on a CRC error (counted)."""
        self._write(cmd)
        self.i2c.readfrom_into(self.address, buf)
        for i in range(0, len(buf), 3):
            if crc8(buf, i) != buf[i + 2]:
                self._bad_frame()
                return False
        self._seen = True
        return True

    def _wake(self):
        try:
            self._write(_CMD_WAKE)  # wakes the interface; may NACK
        except OSError:
            pass
        self._write(_CMD_WAKE)
        self.i2c.writeto(self.address, self._start)

    def _sleep(self):
        self._write(_CMD_STOP)
        self._write(_CMD_SLEEP)

    def _poll(self, now, keep):
        if not self._read(_CMD_READY, self._rd3):
            return
        if self._rd3[1] & 1 == 0:
            return
        if not self._read(_CMD_READ, self._rd):
            return
        b = self._rd
        pm1 = (b[0] << 8) | b[1]
        pm25 = (b[3] << 8) | b[4]
        pm10 = (b[9] << 8) | b[10]
        n05 = (b[12] << 8) | b[13]
        if self._read(_CMD_STATUS, self._rd6):
            s = self._rd6
            self.status = (s[1] << 16) | (s[3] << 8) | s[4]  # bits 24..31 are reserved
            self._fan_failed = bool(self.status & (_STATUS_FAN | _STATUS_SPEED))
        if keep:
            self._add(pm1, pm25, pm10, (pm25 << 14) ^ (pm10 << 4) ^ n05)
