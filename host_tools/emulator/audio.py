"""Audio for the virtual microphone and `lanterne sound-level`: WAV files and synthetic sound scenes.

- `read_wav(path)` checks a WAV file (mono, 16- or 32-bit integer PCM, 8..96 kHz) and
  says where its samples are; anything else is refused with a message naming the file
  and what to do (`WavError`). `write_wav(path, samples, rate, bits)` writes one.
- `Scene` turns a scene description into samples in dB SPL, block by block, as the
  microphone's acoustic input: the I2S microphone model scales it by its sensitivity.

Scene description (the world's `sound_scene`, a string): items separated by `;`, each
`KIND key=value ...`, levels in dB SPL (a tone's level is its RMS level):

    tone f=1000 db=94                 a sine
    pink db=60                        pink noise (-3 dB per octave), its overall level
    white db=50                       white noise
    burst f=2000 db=100 start=2 dur=0.5 [every=10]   a tone that sounds from `start` s for `dur` s
    silence                           nothing (a quiet world)

Items add up. Pink noise is white noise through Paul Kellet's "refined" pink filter
(seven first-order sections, within 0.05 dB of -3 dB/octave from 9 Hz to fs/2 at
44.1 kHz), scaled so its RMS over the whole band is the level asked for.
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

P_REF = 20e-6  # Pa: 0 dB SPL
RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)


class WavError(ValueError):
    """A WAV file the meter cannot read: the message names the file and the problem."""


@dataclass
class WavInfo:
    path: Path
    sample_rate: int
    bits: int
    channels: int
    data_offset: int
    data_bytes: int

    @property
    def samples(self) -> int:
        return self.data_bytes // (self.bits // 8) // self.channels

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def read_wav(path: str | Path) -> WavInfo:
    """Check a WAV file for the sound-level meter; raise WavError saying what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except OSError as exc:
        raise WavError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise WavError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    pos = 12
    fmt = None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16:
                raise WavError(f"{path}: 'fmt ' chunk too short ({size} bytes)")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the real tag leads the sub-format GUID
                tag = struct.unpack_from("<H", data, body + 24)[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise WavError(f"{path}: 'data' chunk before the 'fmt ' chunk")
            tag, channels, rate, bits = fmt
            if tag == 3:
                raise WavError(f"{path}: floating-point samples; the meter reads 16- or 32-bit integer PCM (convert it)")
            if tag != 1:
                raise WavError(f"{path}: compressed or unknown format (tag {tag}); the meter reads integer PCM")
            if channels != 1:
                raise WavError(f"{path}: {channels} channels; the meter reads mono (one microphone): mix down or pick a channel")
            if bits not in (16, 32):
                raise WavError(f"{path}: {bits}-bit samples; the meter reads 16- or 32-bit PCM")
            if not 8000 <= rate <= 96000:
                raise WavError(f"{path}: sample rate {rate} Hz; the meter runs at 8000..96000 Hz")
            size = min(size, len(data) - body)
            if size < bits // 8:
                raise WavError(f"{path}: no samples")
            return WavInfo(path, rate, bits, channels, body, size - size % (bits // 8))
        pos = body + size + (size & 1)
    raise WavError(f"{path}: no 'data' chunk" if fmt else f"{path}: no 'fmt ' chunk")


def write_wav(path: str | Path, samples, sample_rate: int, bits: int = 32) -> Path:
    """Write integer samples (already at the file's width) as a mono PCM WAV."""
    path = Path(path)
    pcm = array("h" if bits == 16 else "i", samples).tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * bits // 8, bits // 8, bits)
    path.write_bytes(header + b"data" + struct.pack("<I", len(pcm)) + pcm)
    return path


def pascal(db_spl: float) -> float:
    """RMS sound pressure (Pa) of a level in dB SPL."""
    return P_REF * 10.0 ** (db_spl / 20.0)


class SceneError(ValueError):
    pass


def parse_scene(text: str) -> list[dict]:
    """The items of a scene description (see the module doc); SceneError names the bad item."""
    items = []
    for raw in (text or "").split(";"):
        raw = raw.strip()
        if not raw:
            continue
        kind, *pairs = raw.split()
        if kind not in ("tone", "pink", "white", "burst", "silence"):
            raise SceneError(f"sound scene item {raw!r}: unknown kind {kind!r} (tone, pink, white, burst, silence)")
        item = {"kind": kind}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in ("f", "db", "start", "dur", "every"):
                raise SceneError(f"sound scene item {raw!r}: expected f=, db=, start=, dur=, every=, got {pair!r}")
            try:
                item[key] = float(value)
            except ValueError:
                raise SceneError(f"sound scene item {raw!r}: {key} is not a number: {value!r}") from None
        need = {"tone": ("f", "db"), "burst": ("f", "db", "start", "dur"), "pink": ("db",), "white": ("db",)}.get(kind, ())
        for key in need:
            if key not in item:
                raise SceneError(f"sound scene item {raw!r}: needs {key}=")
        items.append(item)
    return items


class Scene:
    """Sound pressure (Pa) at the microphone, block by block, from a scene description.

    Computed with numpy a block at a time: the virtual microphone asks for tens of thousands of
    samples a second per board, and a fleet's supervisor serves them all (sample by sample in
    Python this was most of a soak supervisor's CPU per envstation, `lanterne bench fleet`)."""

    def __init__(self, text: str, sample_rate: int, seed: int = 1):
        self.items = parse_scene(text)
        self.rate = sample_rate
        self.t = 0  # samples produced so far
        self.rng = np.random.default_rng(seed)
        self._pink = np.zeros(len(_PINK_SECTIONS))  # each section's last output
        self._pink_last = 0.0  # the previous white sample (Kellet's seventh term, one sample late)
        # Kellet's filter has a gain of about 1/0.11 at mid band; the RMS over the band is
        # measured once here so `pink db=` is the overall level.
        self._pink_rms = self._measure_pink_rms()

    def _pink_block(self, w: np.ndarray) -> np.ndarray:
        """Paul Kellet's refined pink filter over a block of white samples (its state carried on):
        six first-order sections b_k[n] = a_k b_k[n-1] + c_k w[n], plus 0.5362 w[n] and
        0.115926 w[n-1]."""
        out = w * 0.5362
        out[0] += self._pink_last
        out[1:] += w[:-1] * 0.115926
        self._pink_last = float(w[-1]) * 0.115926 if len(w) else self._pink_last
        for k, (a, c) in enumerate(_PINK_SECTIONS):
            y, self._pink[k] = _first_order(a, c * w, self._pink[k])
            out += y
        return out

    def _measure_pink_rms(self) -> float:
        if not any(i["kind"] == "pink" for i in self.items):
            return 1.0
        saved = self._pink.copy(), self._pink_last
        v = self._pink_block(np.random.default_rng(12345).standard_normal(200000))
        self._pink, self._pink_last = saved
        return float(np.sqrt(np.mean(v[20000:] ** 2)))

    def pressures(self, n: int) -> np.ndarray:
        """The next `n` samples of sound pressure, Pa."""
        out = np.zeros(n)
        rate = self.rate
        i = np.arange(self.t, self.t + n, dtype=np.float64)
        for item in self.items:
            kind = item["kind"]
            if kind == "tone" or kind == "burst":
                amp = pascal(item["db"]) * math.sqrt(2.0)
                w = 2.0 * math.pi * item["f"] / rate
                if kind == "tone":
                    out += amp * np.sin(w * i)
                else:
                    start, dur, every = item["start"], item["dur"], item.get("every", 0.0)
                    t = i / rate - start
                    if every > 0:
                        t = np.where(t >= 0, np.mod(t, every), t)
                    on = (t >= 0.0) & (t < dur)
                    out[on] += amp * np.sin(w * i[on])
            elif kind == "white":
                out += self.rng.normal(0.0, pascal(item["db"]), n)
            elif kind == "pink":
                out += self._pink_block(self.rng.standard_normal(n)) * (pascal(item["db"]) / self._pink_rms)
        self.t += n
        return out


# Kellet's refined pink filter: (pole, gain) of its six first-order sections.
_PINK_SECTIONS = ((0.99886, 0.0555179), (0.99332, 0.0750759), (0.96900, 0.1538520), (0.86650, 0.3104856),
                  (0.55000, 0.5329522), (-0.7616, -0.0168980))
_MAX_CHUNK = 8192
_POWERS: dict[float, tuple[np.ndarray, np.ndarray]] = {}


def _first_order(a: float, x: np.ndarray, y0: float) -> tuple[np.ndarray, float]:
    """y[n] = a y[n-1] + x[n] from y[-1] = y0, and y's last value: in closed form chunk by chunk,
    y[n] = a^(n+1) y0 + a^n sum_{k<=n} a^-k x[k], each chunk short enough that a^-k stays far
    inside a double (|a|^-k < 1e150: 577 samples for the 0.55 pole, 8192 at most)."""
    if a not in _POWERS:
        chunk = min(_MAX_CHUNK, int(150 * math.log(10) / -math.log(abs(a))))
        k = np.arange(chunk, dtype=np.float64)
        _POWERS[a] = (a**k, a**-k)
    pw, inv = _POWERS[a]
    chunk = len(pw)
    y = np.empty_like(x)
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        m = len(xs)
        y[s : s + m] = pw[:m] * (a * y0 + np.cumsum(xs * inv[:m]))
        y0 = float(y[s + m - 1])
    return y, y0
