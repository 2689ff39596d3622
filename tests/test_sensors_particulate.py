"""PM drivers (PMS5003/PMS7003, SDS011, SPS30) on the unix port, fed frames built here from the datasheets.

The frame builders below follow the datasheets' layouts (cited per builder) and are
written independently of the drivers; the fakes answer commands the way the parts do.
Time is driven by the test (`tick(now_ms)`), so the fan schedule is checked exactly.
"""

from __future__ import annotations

import json

import pytest

# -- frames from the datasheets ------------------------------------------------------------------


def pms_frame(pm_cf1=(0, 0, 0), pm_atm=(0, 0, 0), counts=(0, 0, 0, 0, 0, 0), bad_check=False) -> bytes:
    """Plantower PMS5003 data manual v2.3, Appendix I: 0x42 0x4D, length 28, 13 big-endian words, sum."""
    words = list(pm_cf1) + list(pm_atm) + list(counts) + [0x9700]  # reserved word (version, error code)
    body = bytes([0x42, 0x4D, 0, 28]) + b"".join(w.to_bytes(2, "big") for w in words)
    check = (sum(body) + (1 if bad_check else 0)) & 0xFFFF
    return body + check.to_bytes(2, "big")


def sds_frame(pm25_x10: int, pm10_x10: int, dev_id=0xA160, cmd=0xC0, bad_check=False) -> bytes:
    """Nova SDS011 control protocol V1.3: AA C0 PM25L PM25H PM10L PM10H ID1 ID2 CS AB."""
    data = bytes([pm25_x10 & 0xFF, pm25_x10 >> 8, pm10_x10 & 0xFF, pm10_x10 >> 8, dev_id >> 8, dev_id & 0xFF])
    cs = (sum(data) + (1 if bad_check else 0)) & 0xFF
    return bytes([0xAA, cmd]) + data + bytes([cs, 0xAB])


def sds_command(cmd: int, d1: int = 0, d2: int = 0) -> bytes:
    """SDS011 protocol V1.3: AA B4 CMD DATA1..DATA12 FF FF CS AB, CS = sum of bytes 2..16."""
    body = bytes([cmd, d1, d2]) + bytes(10) + b"\xff\xff"
    return b"\xaa\xb4" + body + bytes([sum(body) & 0xFF, 0xAB])


def sensirion_crc(word: bytes) -> int:
    crc = 0xFF
    for b in word:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def sps_words(*words: int) -> bytes:
    out = b""
    for w in words:
        two = w.to_bytes(2, "big")
        out += two + bytes([sensirion_crc(two)])
    return out


def test_frame_builders_match_the_datasheet_examples():
    # SDS011 protocol V1.3, "query data command" reply example: PM2.5 123.6, PM10 261.8 ug/m3.
    assert sds_frame(1236, 2618, dev_id=0xA160).hex(" ") == "aa c0 d4 04 3a 0a a1 60 1d ab"
    # SPS30 datasheet, CRC example: 0xBEEF -> 0x92.
    assert sensirion_crc(b"\xbe\xef") == 0x92
    assert len(pms_frame()) == 32
    # SDS011 protocol V1.3, "query data command" example.
    assert sds_command(4).hex(" ") == "aa b4 04 00 00 00 00 00 00 00 00 00 00 00 00 ff ff 02 ab"


# -- the drivers on the unix port ------------------------------------------------------------------

_PRELUDE = """
import json
from lanterne.sensors import fault_names

class FakeUart:
    # Answers like the part: `answers` maps a written command (hex) to frames (hex) queued in reply;
    # `stream` frames arrive one per tick when set (active mode).
    def __init__(self, answers, stream=None):
        self.answers = answers
        self.stream = stream or []
        self.rx = bytearray()
        self.written = []
    def write(self, b):
        h = bytes(b).hex()
        self.written.append(h)
        for k in self.answers:
            if h.startswith(k):
                nxt = self.answers[k]
                if nxt:
                    self.rx += bytes.fromhex(nxt.pop(0) if len(nxt) > 1 else nxt[0])
        return len(b)
    def pump(self):  # active mode: the part sends one frame per second by itself
        if self.stream:
            self.rx += bytes.fromhex(self.stream.pop(0))
    def readinto(self, buf):
        n = min(len(buf), len(self.rx))
        for i in range(n):
            buf[i] = self.rx[i]
        self.rx = self.rx[n:]
        return n or None

def run(pm, seconds, step=1000, uart=None):
    out = []
    for t in range(0, seconds * 1000, step):
        if uart is not None:
            uart.pump()
        if pm.tick(t):
            out.append([t // 1000, pm.pm1, pm.pm25, pm.pm10, pm.humid, fault_names(pm.fault)])
    return out
"""


def run_mp(micropython, body: str):
    out = micropython(_PRELUDE + body)
    return json.loads(out.strip().splitlines()[-1])


def test_pms5003_passive_cycle_decodes_frames_and_duty_cycles_the_fan(micropython):
    frames = [pms_frame((11, 21, 31), (10 + k % 3, 20 + k % 5, 30 + k % 7), (900 + k, 300, 40, 4, 1, 0)).hex() for k in range(60)]
    r = run_mp(micropython, f"""
from lanterne.sensors.pms5003 import PMS5003
u = FakeUart({{"424de2": {frames!r}}})
pm = PMS5003(u, period_s=300, warmup_s=30, measure_s=10)
got = run(pm, 700)
print(json.dumps([got, u.written[:2], [w for w in u.written if w.startswith("424de4")], pm.fan_seconds]))
""")
    got, first, sleeps, fan = r
    # Wake (E4 data 1) then passive mode (E1 data 0), with their check words (Appendix I).
    assert first == ["424de400010174", "424de100000170"]
    # One measurement per period: at 40 s (30 s warm-up + 10 s), 340 s, 640 s; then sleep (E4 data 0).
    assert [g[0] for g in got] == [40, 340, 640]
    assert sleeps.count("424de400000173") == 3
    # Averages of the atmospheric values of the frames read while measuring (not the warm-up's).
    for g in got:
        assert 10 <= g[1] <= 12 and 20 <= g[2] <= 24 and 30 <= g[3] <= 36 and g[5] == []
    assert fan <= 3 * 40 + 2  # the fan ran ~40 s of every 300 s


def test_pms5003_active_mode_and_continuous_fan(micropython):
    frames = [pms_frame((5, 6, 7), (5, 6, 7 + k % 2), (500 + k, 1, 1, 1, 1, 1)).hex() for k in range(200)]
    got = run_mp(micropython, f"""
from lanterne.sensors.pms5003 import PMS5003
u = FakeUart({{}}, stream={frames!r})
pm = PMS5003(u, mode="active", period_s=0, warmup_s=30, measure_s=10)
print(json.dumps(run(pm, 75, uart=u)))
""")
    assert [g[0] for g in got] == [40, 50, 60, 70]
    assert all(g[2] == 6 for g in got)


@pytest.mark.parametrize(
    "fault,frames,expect",
    [
        ("checksum", [pms_frame((1, 2, 3), (1, 2, 3), bad_check=True).hex()], ["checksum"]),
        ("wrong frame", [sds_frame(100, 200).hex()], ["frame"]),
        ("no data", [], ["missing"]),
    ],
)
def test_pms5003_faults_reach_the_status_and_the_board_keeps_going(micropython, fault, frames, expect):
    r = run_mp(micropython, f"""
from lanterne.sensors.pms5003 import PMS5003
u = FakeUart({{"424de2": {frames!r}}} if {frames!r} else {{}})
pm = PMS5003(u, period_s=0, warmup_s=2, measure_s=3)
for t in range(0, 20000, 1000):
    pm.tick(t)
print(json.dumps([fault_names(pm.fault), pm.fresh, pm.errors]))
""")
    names, fresh, errors = r
    assert names == expect and not fresh and errors >= 3


def test_pms5003_identical_frames_for_three_measurements_are_a_stuck_part(micropython):
    frame = pms_frame((9, 9, 9), (9, 9, 9), (321, 100, 10, 1, 0, 0)).hex()
    names = run_mp(micropython, f"""
from lanterne.sensors.pms5003 import PMS5003
u = FakeUart({{"424de2": [{frame!r}]}})
pm = PMS5003(u, period_s=0, warmup_s=2, measure_s=3)
seen = []
for t in range(0, 40000, 1000):
    if pm.tick(t):
        seen.append(fault_names(pm.fault))
print(json.dumps(seen))
""")
    assert names[0] == [] and names[1] == [] and names[2] == ["stuck"]


def test_sds011_commands_and_frames(micropython):
    frames = [sds_frame(123 + k % 3, 456 + k % 4).hex() for k in range(50)]
    r = run_mp(micropython, f"""
from lanterne.sensors.sds011 import SDS011
u = FakeUart({{"aab404": {frames!r}}})
pm = SDS011(u, period_s=120, warmup_s=30, measure_s=10)
got = run(pm, 200)
print(json.dumps([got, u.written[:4], [w for w in u.written if w.startswith("aab406")], pm.has_pm1]))
""")
    got, first, sleepwork, has_pm1 = r
    # Protocol V1.3 examples: set work (06 01 01, check 06), query mode (02 01 01, 04),
    # continuous working period (08 01 00, 07), query data (04, 02); sleep is 06 01 00 (05).
    assert first == [
        sds_command(6, 1, 1).hex(),  # set work
        sds_command(2, 1, 1).hex(),  # query reporting mode
        sds_command(8, 1, 0).hex(),  # working period: continuous
        sds_command(4).hex(),  # query data
    ]
    assert sds_command(6, 1, 0).hex() in sleepwork  # sleep
    assert [g[0] for g in got] == [40, 160]
    assert got[0][2] == 12 and got[0][3] == 46  # 12.3-12.5 / 45.6-45.9 ug/m3 rounded to 1 ug/m3
    assert has_pm1 is False


def test_sds011_rejects_bad_checksums_and_plantower_frames(micropython):
    bad = [sds_frame(100, 200, bad_check=True).hex()]
    wrong = [pms_frame((1, 2, 3), (1, 2, 3)).hex()]
    r = run_mp(micropython, f"""
from lanterne.sensors.sds011 import SDS011
res = []
for frames in ({bad!r}, {wrong!r}):
    pm = SDS011(FakeUart({{"aab404": frames}}), period_s=0, warmup_s=1, measure_s=2)
    for t in range(0, 8000, 1000):
        pm.tick(t)
    res.append([fault_names(pm.fault), pm.fresh])
print(json.dumps(res))
""")
    assert r == [[["checksum"], False], [["frame"], False]]


_SPS_FAKE = """
class FakeSps:
    # SPS30 I2C behaviour: pointer writes, CRC'd words; `values` (10 words), status word pair.
    def __init__(self, values, status=0, corrupt=False):
        self.values = values
        self.status = status
        self.corrupt = corrupt
        self.ptr = 0
        self.log = []
        self.asleep = True
        self.running = False
    def writeto(self, addr, buf):
        assert addr == 0x69
        b = bytes(buf)
        self.log.append(b.hex())
        self.ptr = (b[0] << 8) | b[1]
        if self.ptr == 0x1103:
            self.asleep = False
        elif self.ptr == 0x1001:
            self.asleep = True
        elif self.ptr == 0x0010:
            assert b[2:4] == b"\\x05\\x00" and crc8(b, 2) == b[4]
            self.running = True
        elif self.ptr == 0x0104:
            self.running = False
    def readfrom_into(self, addr, buf):
        if self.ptr == 0x0202:
            data = words(1 if self.running else 0)
        elif self.ptr == 0x0300:
            self.values[4] += 1  # number concentrations move in real air
            data = words(*self.values)
        elif self.ptr == 0xD206:
            data = words(self.status >> 16, self.status & 0xFFFF)
        else:
            data = bytes(len(buf))
        data = bytearray(data[: len(buf)])
        if self.corrupt:
            data[2] ^= 1
        buf[:] = data

from lanterne.sensors.sps30 import SPS30, crc8
def words(*ws):
    out = bytearray()
    for w in ws:
        two = bytes(((w >> 8) & 0xFF, w & 0xFF))
        out += two + bytes((crc8(two),))
    return out
"""


def test_sps30_i2c_words_crc_and_fan_status(micropython):
    r = run_mp(micropython, _SPS_FAKE + """
res = []
for status, corrupt in ((0, False), (1 << 4, False), (0, True)):
    dev = FakeSps([8, 12, 14, 15, 60, 70, 72, 73, 74, 420], status, corrupt)
    pm = SPS30(dev, period_s=60, warmup_s=5, measure_s=3)
    got = run(pm, 130)
    res.append([got, dev.log[:3], fault_names(pm.fault), dev.asleep])
print(json.dumps(res))
""")
    (ok, log, faults, asleep), (fan, _, fan_faults, _), (crc, _, crc_faults, _) = r
    # wake-up twice (the first only wakes the interface), then start in the integer format
    assert log[:2] == ["1103", "1103"]
    assert log[2].startswith("00100500")
    assert [g[0] for g in ok] == [8, 68, 128]
    assert ok[0][1:4] == [8, 12, 15] and faults == [] and asleep
    assert fan_faults == ["fan"] and fan[0][1:4] == [8, 12, 15]
    assert crc_faults == ["checksum"] and crc == []


def test_humidity_flag_and_kappa_koehler_correction(micropython):
    frames = [pms_frame((30, 40, 50), (30, 40, 50), (1000 + k, 1, 1, 1, 1, 1)).hex() for k in range(40)]
    r = run_mp(micropython, f"""
from lanterne.sensors.pms5003 import PMS5003
from lanterne.sensors.particulate import growth_milli
res = []
for rh, kappa in ((5000, 0), (9000, 0), (9000, 400), (9950, 400)):
    pm = PMS5003(FakeUart({{"424de2": {frames!r}}}), period_s=0, warmup_s=1, measure_s=2, kappa_milli=kappa)
    pm.set_humidity(rh)
    got = run(pm, 4)
    res.append([got[0][2], got[0][4], growth_milli(kappa, rh)])
print(json.dumps(res))
""")
    (dry, dry_humid, c0), (wet, wet_humid, c1), (corr, corr_humid, c2), (sat, _, c3) = r
    assert dry == 40 and not dry_humid and c0 == 1000
    assert wet == 40 and wet_humid and c1 == 1000  # flagged, not corrected when the option is off
    # C = 1 + (kappa / 1.65) / (1 / a_w - 1) at 90 %RH, kappa 0.4: 1 + 0.2424 * 9 = 3.18
    expected = 1 + (0.4 / 1.65) / (1 / 0.90 - 1)
    assert c2 / 1000 == pytest.approx(expected, abs=0.002)
    assert corr == round(40 / expected) and corr_humid
    assert c3 / 1000 == pytest.approx(1 + (0.4 / 1.65) / (1 / 0.98 - 1), abs=0.002)  # capped at 98 %
