"""`lanterne bench environment`: the sound-level meter's real-time budget, PM driver allocation, env payload size.

- `noise_us_per_1024_samples`: the meter's per-block work (A-weighting, energy, F time
  weighting, statistics) on the unix port, viper kernel, at the envstation's sample rate,
  median over blocks of pink-ish noise; `noise_py_us_per_1024_samples` the same with the
  pure-Python kernel (what a port without the native emitter would run).
- `noise_alloc_bytes_per_block`: `gc.mem_alloc()` growth per 1024-sample block with the
  collector disabled, over 200 blocks (target 0).
- `noise_cpu_share_esp32_est`: the share of one ESP32 core the meter would take at the
  board's sample rate: host time per second of audio x HOST_TO_ESP32 / 1 s.
  HOST_TO_ESP32 = 60 is the ratio of single-core CoreMark scores, a desktop/server x86-64
  core of this machine's class (~30 000) to the ESP32's Xtensa LX6 at 240 MHz (~500 per
  core): an estimate for integer code compiled to machine code (viper), to be replaced by
  a measurement on the hardware (docs/benchmarks.md). Target <= 30 %.
- `pm_alloc_bytes_per_cycle`: bytes allocated by one PMS5003 measurement cycle (wake,
  30 polls of warm-up and measurement, average, sleep) against an allocation-free UART double.
- `bytes_full_reading_env`: a full environmental reading (weather, supply, PM1/2.5/10,
  LAeq, LAmax, status, seq, age 2 s) over LoRaWAN; `env_readings_per_51_byte_frame`: how
  many such readings (5 minutes apart) one 51-byte frame carries.
"""

from __future__ import annotations

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.runtime import unix_port

HOST_TO_ESP32 = 60.0

_NOISE = r"""
import gc, json, time
from lanterne.sensors import sound_level as sl
rate = {rate}
out = {{}}
for native in (True, False):
    m = sl.SoundLevelMeter(rate, -26.0, native=native)
    buf = m.buffer(1024)
    x = 12345
    for i in range(1024):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        buf[i] = ((x >> 8) - (1 << 22)) << 6  # noise around -30 dBFS, 24-bit in 32-bit words
    blocks = {blocks} if native else max(3, {blocks} // 20)
    t = []
    m.process(buf, 1024)
    for k in range(blocks):
        t0 = time.ticks_us()
        m.process(buf, 1024)
        t.append(time.ticks_diff(time.ticks_us(), t0))
    t.sort()
    out["us_native" if native else "us_py"] = t[len(t) // 2]
    if native:
        # The bare loop first, to show it allocates nothing itself (alloc_empty_loop).
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        k = 0
        while k < 200:
            k += 1
        a1 = gc.mem_alloc()
        k = 0
        while k < 200:
            m.process(buf, 1024)
            k += 1
        a2 = gc.mem_alloc()
        gc.enable()
        out["alloc"] = (a2 - a1) / 200
        out["alloc_empty_loop"] = a1 - a0
    out["viper"] = sl._process_viper is not None
print(json.dumps(out))
"""

_PM = r"""
import gc, json
from lanterne.sensors.pms5003 import PMS5003

def frame(v):
    b = bytearray(32)
    b[0] = 0x42; b[1] = 0x4D; b[3] = 28
    for i in range(6):
        b[4 + 2 * i + 1] = v
    b[17] = v * 3  # a particle count that moves
    s = 0
    for i in range(30):
        s += b[i]
    b[30] = s >> 8; b[31] = s & 0xFF
    return b

class Uart:
    # Answers each read request with the next prebuilt frame; allocates nothing.
    def __init__(self):
        self.frames = [frame(10 + k % 7) for k in range(16)]
        self.k = 0
        self.pending = None
        self.pos = 0
    def write(self, b):
        if b[2] == 0xE2:
            self.pending = self.frames[self.k % 16]
            self.k += 1
            self.pos = 0
        return len(b)
    def readinto(self, buf):
        p = self.pending
        if p is None:
            return None
        n = 0
        while n < len(buf) and self.pos < 32:
            buf[n] = p[self.pos]
            n += 1
            self.pos += 1
        if self.pos >= 32:
            self.pending = None
        return n

pm = PMS5003(Uart(), period_s=300, warmup_s=30, measure_s=10)
t = 0
for k in range(45):  # a first cycle: lazily made objects are made
    pm.tick(t); t += 1000
t = 300000
gc.collect(); gc.disable()
a0 = gc.mem_alloc()
for k in range(45):
    pm.tick(t); t += 1000
a1 = gc.mem_alloc()
gc.enable()
print(json.dumps({"alloc": a1 - a0, "measurements": pm.measurements, "pm25": pm.pm25}))
"""


def _env_reading_sizes() -> tuple[int, int]:
    from host_tools.codec import encode_values

    env = {"temperature": 12.3, "humidity": 71.5, "pressure": 1001.2, "voltage": 12.1, "pm1": 4, "pm2_5": 9,
           "pm10": 17, "laeq": 58.3, "lamax": 71.9, "status": [], "seq": 77, "age": 2}
    one = encode_values([env], 242, "micropython", lorawan=True)[0]["frame"]
    batch = [dict(env, seq=77 + i, age=2 + 300 * (19 - i), laeq=58.3 + (i % 5) * 0.7, lamax=71.9 + i % 3,
                  pm2_5=9 + i % 4) for i in range(20)]
    frames = encode_values(batch, 51, "micropython", lorawan=True)
    return len(one), frames[0]["count"]


def run(quick: bool = False) -> BenchResult:
    board = boards.load("esp32-envstation")
    mic = board.sensors("i2s_mic")[0]
    rate = int(mic.get("sample_rate", 48000))
    blocks = 60 if quick else 400
    noise = unix_port.run_json(_NOISE.format(rate=rate, blocks=blocks), heapsize=512 * 1024, timeout=300)
    pm = unix_port.run_json(_PM, heapsize=256 * 1024)
    size, per_frame = _env_reading_sizes()
    us = float(noise["us_native"])
    audio_us = 1024 / rate * 1e6
    share = us * HOST_TO_ESP32 / audio_us
    metrics = {
        "noise_us_per_1024_samples": round(us, 1),
        "noise_py_us_per_1024_samples": float(noise["us_py"]),
        "noise_alloc_bytes_per_block": noise["alloc"],
        "noise_cpu_share_esp32_est": round(share, 4),
        "noise_sample_rate_hz": rate,
        "noise_viper": noise["viper"],
        "host_to_esp32_factor": HOST_TO_ESP32,
        "pm_alloc_bytes_per_cycle": pm["alloc"],
        "bytes_full_reading_env": size,
        "env_readings_per_51_byte_frame": per_frame,
    }
    rows = [
        ["viper kernel, 1024 samples", f"{us:.1f} us", f"{audio_us:.0f} us of audio", f"{share:.1%} of an ESP32 core (est.)"],
        ["pure-Python kernel", f"{noise['us_py']:.0f} us", "", f"{noise['us_py'] * HOST_TO_ESP32 / audio_us:.0%} (est.)"],
        ["allocation per block", f"{noise['alloc']:.1f} B", "", "target 0"],
    ]
    return BenchResult(
        metrics,
        tables=[
            (f"sound-level meter at {rate} Hz (unix port)", ["path", "host time", "real time", "ESP32"], rows),
            ("PM and payload", ["metric", "value"], [
                ["PMS5003 cycle allocation", f"{pm['alloc']} B ({pm['measurements']} measurement)"],
                ["full env reading, LoRaWAN", f"{size} bytes"],
                ["env readings per 51-byte frame", per_frame],
            ]),
        ],
        notes=[f"ESP32 share = host time x {HOST_TO_ESP32:g} (CoreMark ratio, see docs/benchmarks.md) / audio time"],
    )
