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
import random
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

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
    """Sound pressure (Pa) at the microphone, sample by sample, from a scene description."""

    def __init__(self, text: str, sample_rate: int, seed: int = 1):
        self.items = parse_scene(text)
        self.rate = sample_rate
        self.t = 0  # samples produced so far
        self.rng = random.Random(seed)
        self._pink = [0.0] * 7
        # Kellet's filter has a gain of about 1/0.11 at mid band; the RMS over the band is
        # measured once here so `pink db=` is the overall level.
        self._pink_rms = self._measure_pink_rms()

    def _pink_step(self, w: float) -> float:
        b = self._pink
        b[0] = 0.99886 * b[0] + w * 0.0555179
        b[1] = 0.99332 * b[1] + w * 0.0750759
        b[2] = 0.96900 * b[2] + w * 0.1538520
        b[3] = 0.86650 * b[3] + w * 0.3104856
        b[4] = 0.55000 * b[4] + w * 0.5329522
        b[5] = -0.7616 * b[5] - w * 0.0168980
        out = b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + w * 0.5362
        b[6] = w * 0.115926
        return out

    def _measure_pink_rms(self) -> float:
        if not any(i["kind"] == "pink" for i in self.items):
            return 1.0
        rng = random.Random(12345)
        saved = list(self._pink)
        acc = 0.0
        n = 200000
        for k in range(n):
            v = self._pink_step(rng.gauss(0.0, 1.0))
            if k >= 20000:
                acc += v * v
        self._pink = saved
        return math.sqrt(acc / (n - 20000))

    def pressures(self, n: int) -> list[float]:
        """The next `n` samples of sound pressure, Pa."""
        out = [0.0] * n
        rate = self.rate
        t0 = self.t
        for item in self.items:
            kind = item["kind"]
            if kind == "tone" or kind == "burst":
                amp = pascal(item["db"]) * math.sqrt(2.0)
                w = 2.0 * math.pi * item["f"] / rate
                if kind == "tone":
                    for i in range(n):
                        out[i] += amp * math.sin(w * (t0 + i))
                else:
                    start, dur, every = item["start"], item["dur"], item.get("every", 0.0)
                    for i in range(n):
                        t = (t0 + i) / rate - start
                        if every > 0 and t >= 0:
                            t %= every
                        if 0.0 <= t < dur:
                            out[i] += amp * math.sin(w * (t0 + i))
            elif kind == "white":
                sd = pascal(item["db"])
                g = self.rng.gauss
                for i in range(n):
                    out[i] += g(0.0, sd)
            elif kind == "pink":
                scale = pascal(item["db"]) / self._pink_rms
                g = self.rng.gauss
                step = self._pink_step
                for i in range(n):
                    out[i] += step(g(0.0, 1.0)) * scale
        self.t += n
        return out
