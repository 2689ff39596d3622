"""The firmware's sound-level meter against IEC 61672-1 and an independent numpy/scipy computation.

Every level here comes from `lanterne sound-level` (the firmware module on the unix port)
reading WAV files written by the test. The reference levels are computed in the test from
the analog A-weighting transfer function of IEC 61672-1:2013 (Annex E), applied in the
frequency domain with numpy, and the standard's exponential F time weighting (scipy lfilter).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import lanterne
from scipy.signal import lfilter

from host_tools.emulator.audio import write_wav

# IEC 61672-1:2013, Table 3: A-weighting design goals (dB) at the nominal frequencies, and
# the Class 1 acceptance limits (+, -) in dB (None: no lower limit). The goals are the
# standard's, computed at the exact frequencies f = 1000 * 10**(n/10) Hz (its 5.5.4).
IEC_61672_TABLE_3 = [
    # nominal Hz, A (dB), class 1 +, class 1 -
    (10, -70.4, 3.5, None),
    (12.5, -63.4, 3.0, None),
    (16, -56.7, 2.5, 4.5),
    (20, -50.5, 2.5, 2.5),
    (25, -44.7, 2.5, 2.0),
    (31.5, -39.4, 2.0, 2.0),
    (40, -34.6, 1.5, 1.5),
    (50, -30.2, 1.5, 1.5),
    (63, -26.2, 1.5, 1.5),
    (80, -22.5, 1.5, 1.5),
    (100, -19.1, 1.5, 1.5),
    (125, -16.1, 1.5, 1.5),
    (160, -13.4, 1.5, 1.5),
    (200, -10.9, 1.5, 1.5),
    (250, -8.6, 1.4, 1.4),
    (315, -6.6, 1.4, 1.4),
    (400, -4.8, 1.4, 1.4),
    (500, -3.2, 1.4, 1.4),
    (630, -1.9, 1.4, 1.4),
    (800, -0.8, 1.4, 1.4),
    (1000, 0.0, 0.7, 0.7),
    (1250, 0.6, 1.4, 1.4),
    (1600, 1.0, 1.6, 1.6),
    (2000, 1.2, 1.6, 1.6),
    (2500, 1.3, 1.6, 1.6),
    (3150, 1.2, 1.6, 1.6),
    (4000, 1.0, 1.6, 1.6),
    (5000, 0.5, 2.1, 2.1),
    (6300, -0.1, 2.1, 2.6),
    (8000, -1.1, 2.1, 3.1),
    (10000, -2.5, 2.6, 3.6),
    (12500, -4.3, 3.0, 6.0),
    (16000, -6.6, 3.5, 17.0),
    (20000, -9.3, 4.0, None),
]

SENS = -26.0  # INMP441: -26 dBFS for 94 dB SPL at 1 kHz
P0 = 20e-6


def exact_frequency(i: int) -> float:
    return 1000.0 * 10.0 ** ((i - 20) / 10.0)  # row i of the table: 10 Hz is n = -20


def to_wav(tmp_path, name, pressure_pa, fs, bits=32):
    """Microphone samples for a pressure signal: 94 dB SPL (1 Pa RMS) reads SENS dBFS RMS re a full-scale sine."""
    full = 2 ** (bits - 1)
    fs_rms_pa = 1.0 / (10 ** (SENS / 20.0))  # Pa RMS that makes a full-scale sine
    x = np.asarray(pressure_pa) / (fs_rms_pa * math.sqrt(2.0)) * full
    x = np.clip(np.round(x), -full, full - 1).astype(np.int64)
    return write_wav(tmp_path / name, x.tolist(), fs, bits)


def sound_level(wav, *extra):
    proc = lanterne("sound-level", str(wav), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- the independent reference ------------------------------------------------------------


def a_weighting_analog(f):
    """|A(f)| from the analog transfer function of IEC 61672-1:2013, E.3 (0 dB at 1 kHz)."""
    f1, f2, f3, f4 = 20.598997, 107.65265, 737.86223, 12194.217

    def h(f):
        s = 2j * np.pi * np.asarray(f, dtype=float)
        w1, w2, w3, w4 = (2 * np.pi * v for v in (f1, f2, f3, f4))
        return (w4**2 * s**4) / ((s + w1) ** 2 * (s + w2) * (s + w3) * (s + w4) ** 2)

    return h(f) / abs(h(1000.0))


def reference_levels(p, fs, start=0):
    """LAeq, LAFmax, LAFmin, LA10, LA90 of p[start:] (Pa): analog A-weighting, F = 125 ms running from p[0]."""
    n = len(p)
    spec = np.fft.rfft(p)
    pa = np.fft.irfft(spec * a_weighting_analog(np.fft.rfftfreq(n, 1.0 / fs)), n)
    sq = pa**2
    a = math.exp(-1.0 / (fs * 0.125))
    w, _ = lfilter([1 - a], [1, -a], sq, zi=[a * sq[: fs // 250].mean()])
    lf = 10 * np.log10(np.maximum(w, 1e-30) / P0**2)[start:]
    lf4 = lf[fs // 250 - 1 :: fs // 250]  # the meter looks at F every ~4 ms
    return {
        "laeq": 10 * np.log10(sq[start:].mean() / P0**2),
        "lamax": lf.max(),
        "lamin": lf4.min(),
        "la10": np.percentile(lf4, 90),
        "la90": np.percentile(lf4, 10),
    }


def pink(n, fs, db, seed):
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / fs)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / np.sqrt(np.mean(x**2)) * P0 * 10 ** (db / 20)


def tone(n, fs, f, db, start=0):
    t = (np.arange(n) + start) / fs
    return math.sqrt(2) * P0 * 10 ** (db / 20) * np.sin(2 * np.pi * f * t)


# -- A-weighting against the standard's table ----------------------------------------------


@pytest.mark.parametrize("fs", [16000, 48000])
def test_a_weighting_within_class_1_at_every_table_frequency_up_to_0_4_fs(tmp_path, fs):
    level = 114.0  # dB SPL: -6 dBFS, so even the 10 Hz tone (-70 dB) stays far above the meter's floor
    rows = [(i, row) for i, row in enumerate(IEC_61672_TABLE_3) if exact_frequency(i) <= 0.4 * fs]
    seg = int(1.5 * fs)  # each tone 1.5 s; the last of its three 0.5 s intervals is read
    p = np.concatenate([tone(seg, fs, exact_frequency(i), level) for i, _ in rows])
    result = sound_level(to_wav(tmp_path, f"sweep{fs}.wav", p, fs), "--interval", "0.5")
    assert len(result["intervals"]) == 3 * len(rows)
    failures = []
    for k, (_i, (nominal, goal, plus, minus)) in enumerate(rows):
        measured = result["intervals"][3 * k + 2]["laeq"] - level
        dev = measured - goal
        ok = dev <= plus and (minus is None or dev >= -minus)
        if not ok:
            failures.append(f"{nominal} Hz: {measured:+.2f} dB, goal {goal:+.1f} (+{plus}/-{minus})")
        assert abs(dev) < 0.5, f"{nominal} Hz at {fs} Hz: {measured:+.2f} dB vs {goal:+.1f}: beyond the design's own 0.5 dB"
    assert not failures, failures
    assert rows[-1][1][0] == (6300 if fs == 16000 else 16000)


@pytest.mark.parametrize("fs,bits", [(16000, 16), (48000, 32), (44100, 16)])
def test_1_khz_at_94_db_spl_reads_94_0(tmp_path, fs, bits):
    wav = to_wav(tmp_path, "cal.wav", tone(3 * fs, fs, 1000.0, 94.0), fs, bits)
    result = sound_level(wav, "--sensitivity-dbfs", str(SENS))
    assert result["laeq"] == pytest.approx(94.0, abs=0.1)
    assert result["lamax"] == pytest.approx(94.0, abs=0.1)
    assert result["la10"] == pytest.approx(94.0, abs=0.1)
    # the per-device offset and the sensitivity move the reading one for one
    shifted = sound_level(wav, "--sensitivity-dbfs", "-30", "--offset-db", "1.5")
    assert shifted["laeq"] == pytest.approx(94.0 + 4.0 + 1.5, abs=0.1)


# -- levels against the independent computation ---------------------------------------------


def _compare(tmp_path, name, p, fs, tol=0.5):
    """The meter's second half of `p` against the reference's. The first half is a pre-roll of the
    same kind of sound, so neither side starts from rest: a filter switched on into a signal rings
    for a few ms, and the reference (a circular FFT filter) never starts at all."""
    half = len(p) // 2
    result = sound_level(to_wav(tmp_path, name, p, fs), "--sensitivity-dbfs", str(SENS), "--interval", str(half / fs))
    measured = result["intervals"][1]
    ref = reference_levels(p, fs, half)
    for key in ("laeq", "lamax", "lamin", "la10", "la90"):
        assert measured[key] == pytest.approx(ref[key], abs=tol), f"{name} {key}: meter {measured[key]}, reference {ref[key]:.2f}"
    return measured, ref


@pytest.mark.parametrize("fs", [16000, 48000])
def test_pink_noise_levels_agree_with_the_reference(tmp_path, fs):
    _compare(tmp_path, "pink.wav", pink(16 * fs, fs, 65.0, seed=fs), fs)


def test_stepped_levels_agree_with_the_reference(tmp_path):
    fs = 48000
    steps = [50.0, 60.0, 75.0, 55.0, 85.0]
    pre = pink(15 * fs, fs, 50.0, seed=99)
    p = np.concatenate([pre] + [pink(3 * fs, fs, db, seed=k) for k, db in enumerate(steps)])
    measured, ref = _compare(tmp_path, "steps.wav", p, fs)
    assert measured["lamax"] - measured["la90"] == pytest.approx(35.0, abs=1.0)  # the steps are 35 dB apart


def test_a_burst_agrees_with_the_reference(tmp_path):
    fs = 16000
    p = pink(20 * fs, fs, 45.0, seed=7)
    p[14 * fs : 14 * fs + fs // 2] += tone(fs // 2, fs, 2000.0, 88.0)
    measured, ref = _compare(tmp_path, "burst.wav", p, fs)
    assert measured["lamax"] - measured["la90"] > 40.0  # the burst stands out of the background


# -- bit-identical kernels, input checks ----------------------------------------------------------


def test_viper_and_pure_python_kernels_agree_bit_for_bit(micropython):
    out = micropython(
        """
import json, random
from lanterne.sensors import sound_level as sl
assert sl._process_viper is not None, "the unix port should have the native emitter"
res = []
for fs, bits in ((16000, 16), (48000, 32), (44100, 32)):
    a = sl.SoundLevelMeter(fs, -26.0, bits=bits, native=True)
    b = sl.SoundLevelMeter(fs, -26.0, bits=bits, native=False)
    buf = a.buffer(700)
    random.seed(fs)
    for blk in range(40):
        shift = random.choice((0, 1, 4, 10, 15)) + (16 if bits == 16 else 0)
        for i in range(700):
            buf[i] = (random.getrandbits(32) - (1 << 31)) >> shift  # full scale down to -90 dBFS
        a.process(buf, 700)
        b.process(buf, 700)
    res.append([list(a.st) == list(b.st), list(a.hist) == list(b.hist), a.report(), b.report()])
print(json.dumps(res))
""",
        heapsize=512 * 1024,
    )
    for same_state, same_hist, la, lb in json.loads(out.strip().splitlines()[-1]):
        assert same_state and same_hist
        assert la == lb


@pytest.mark.parametrize(
    "fmt,message",
    [
        (dict(channels=2), "2 channels; the meter reads mono"),
        (dict(bits=24), "24-bit samples"),
        (dict(tag=3), "floating-point samples"),
        (dict(rate=4000), "sample rate 4000 Hz"),
    ],
)
def test_wav_files_the_meter_cannot_read_are_refused_clearly(tmp_path, fmt, message):
    import struct

    tag, ch, rate, bits = fmt.get("tag", 1), fmt.get("channels", 1), fmt.get("rate", 16000), fmt.get("bits", 16)
    data = bytes(ch * bits // 8 * 100)
    raw = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    raw += b"fmt " + struct.pack("<IHHIIHH", 16, tag, ch, rate, rate * ch * bits // 8, ch * bits // 8, bits)
    raw += b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "bad.wav").write_bytes(raw)
    proc = lanterne("sound-level", str(tmp_path / "bad.wav"))
    assert proc.returncode == 1
    assert message in proc.stderr and "bad.wav" in proc.stderr
    proc = lanterne("sound-level", str(tmp_path / "missing.wav"))
    assert proc.returncode == 1 and "no such file" in proc.stderr


def test_digital_silence_and_clipping_are_faults(micropython):
    out = micropython(
        """
import json, math
from lanterne.sensors.sound_level import SoundLevelMeter
m = SoundLevelMeter(16000, -26.0)
buf = m.buffer(1024)
for k in range(16):
    m.process(buf, 1024)
m.report()
silent = m.fault
for k in range(16):
    for i in range(1024):
        buf[i] = max(-32768, min(32767, int(3 * 32767 * math.sin(2 * math.pi * 500 * (k * 1024 + i) / 16000)))) << 16
    m.process(buf, 1024)
m.report()
print(json.dumps([silent, m.fault]))
"""
    )
    silent, clipped = json.loads(out.strip().splitlines()[-1])
    assert silent & 0x01  # FAULT_MISSING: the samples never moved
    assert clipped & 0x08 and not clipped & 0x01  # FAULT_RANGE: clipping
