"""Simulated I2S MEMS microphone (INMP441 class): the world's sound scene as 24-bit samples in 32-bit slots.

The acoustic input is the world's `sound_scene` (tones, pink noise, bursts in dB SPL:
host_tools.emulator.audio.Scene) or, when `sound_wav` names a file, that recording
(mono 16/32-bit PCM, looped; its samples are taken as what the microphone would
output, so the file's levels are what `lanterne sound-level` reads from it). The
microphone converts 94 dB SPL at 1 kHz to `sensitivity_dbfs` (INMP441: -26 dBFS,
a full-scale sine being 0 dBFS), adds its self-noise (`mic_noise_db`, 33 dB: the
INMP441's 61 dBA SNR), clips at full scale and sends 24-bit samples left-justified
in 32-bit words, as the INMP441 does on an I2S bus in 32-bit mono mode.

Time: the clock starts when the firmware builds its `machine.I2S`; the board's shim
paces readinto() at the sample rate (it returns when the last sample it hands over
would have been sampled), so the firmware sees readinto() block the way the ESP32's does.

Samples are made a block at a time with numpy (a fleet's supervisor serves every board's
audio: `lanterne bench fleet`). Data path: the HAL request carries only the size; the samples go through a file in
the board's run folder (`i2s<id>.raw`), several blocks per request, read with one
readinto per block on the board.

Faults (world.inject("microphone", kind)): "silence" or "missing" -> digital zeros
(no clock, no microphone, a broken data line); "clipping" -> 40 dB of extra gain, so
loud scenes clip at full scale; "stuck" -> the same sample value over and over.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np

from host_tools.emulator.audio import Scene, read_wav
from host_tools.emulator.devices.parts import register

FULL = 2**31


class I2SMicrophone:
    name = "microphone"
    fault_kinds = ("missing", "silence", "clipping")

    def __init__(self, world, i2s_id: int, sensitivity_dbfs: float = -26.0, sample_rate: int = 48000):
        self.world = world
        self.i2s = i2s_id
        self.sensitivity_dbfs = float(sensitivity_dbfs)
        self.rate = int(sample_rate)
        self.bits = 32
        self.rng = random.Random(world.rng.random())
        self._noise = np.random.default_rng(self.rng.randrange(1 << 30))  # the self-noise, a block at a time
        self.t0 = None
        self.produced = 0
        self._scene_text = None
        self._scene = None
        self._wav_path = None
        self._wav = None
        self._wav_pos = 0

    def i2s_init(self, rate: int, bits: int) -> None:
        self.rate, self.bits = int(rate), int(bits)
        self.t0 = time.monotonic()
        self.produced = 0
        self._scene_text = None

    # Pa RMS that reads as a full-scale sine's RMS: 94 dB SPL (1 Pa) reads sensitivity dBFS.
    def _pa_full_scale_peak(self) -> float:
        return math.sqrt(2.0) / (10.0 ** (self.sensitivity_dbfs / 20.0))

    def _source(self, n: int) -> np.ndarray:
        """The next n samples as 32-bit words' values before clipping (floats or ints)."""
        w = self.world
        wav = w.get("sound_wav", "")
        if wav:
            if wav != self._wav_path:
                info = read_wav(wav)
                raw = info.path.read_bytes()[info.data_offset : info.data_offset + info.data_bytes]
                scale = FULL // (1 << (info.bits - 1))
                self._wav = np.frombuffer(raw, dtype="<i2" if info.bits == 16 else "<i4").astype(np.int64) * scale
                self._wav_path, self._wav_pos = wav, 0
            idx = (self._wav_pos + np.arange(n)) % len(self._wav)
            self._wav_pos = (self._wav_pos + n) % len(self._wav)
            return self._wav[idx]  # already in 32-bit words
        text = w.get("sound_scene", "")
        if text != self._scene_text or self._scene is None or self._scene.rate != self.rate:
            self._scene = Scene(text, self.rate, seed=self.rng.randrange(1 << 30))
            self._scene_text = text
        pa = self._scene.pressures(n)
        noise = 20e-6 * 10 ** (w.get("mic_noise_db") / 20.0)
        gain = FULL / self._pa_full_scale_peak()
        if w.fault(self.name, "clipping"):
            gain *= 100.0
        return (pa + self._noise.normal(0.0, noise, n)) * gain

    def i2s_read(self, nbytes: int) -> tuple[bytes, int]:
        """(n samples as 32-bit little-endian words, microseconds until the last one exists)."""
        if self.t0 is None:
            self.i2s_init(self.rate, self.bits)
        width = self.bits // 8
        n = max(0, nbytes // width)
        w = self.world
        if w.fault(self.name, "silence") or w.fault(self.name, "missing"):
            words = np.zeros(n, dtype=np.int32)
        elif w.fault(self.name, "stuck"):
            words = np.full(n, 0x12345600, dtype=np.int32)
        else:
            # full scale clips (then toward zero to an integer, as int() does); 24 significant bits,
            # left-justified (the low byte dropped, as a two's-complement mask does: toward minus infinity)
            v = np.asarray(self._source(n), dtype=np.float64)
            words = np.clip(v, -FULL, FULL - 1, out=v if v.flags.writeable else None).astype(np.int32)
            words &= ~0xFF
        if self.bits == 16:
            out = (words >> 16).astype(np.int16).tobytes()
        else:
            out = words.astype(np.int32, copy=False).tobytes()
        self.produced += n
        due = self.t0 + self.produced / self.rate
        wait_us = int(max(0.0, due - time.monotonic()) * 1e6)
        return out, wait_us


@register("i2s_mic")
def _microphone(world, spec, board):
    bus = board.get("buses", {}).get(spec.get("bus"), {})
    return I2SMicrophone(world, int(bus.get("id", 0)), spec.get("sensitivity_dbfs", -26.0), spec.get("sample_rate", 48000))
