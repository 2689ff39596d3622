"""`lanterne sound-level FILE.wav [--sensitivity-dbfs -26] [--offset-db 0] [--interval S] [--json]`.

Runs the firmware's own sound-level meter (`firmware/lanterne/sensors/sound_level.py`)
on the MicroPython unix port over a WAV recording and prints its figures, A-weighted,
in dB: LAeq, LAFmax, LAFmin, LA10 and LA90 for the whole file and for each interval
(`--interval S`, the board's reporting interval). The file must be mono, 16- or
32-bit integer PCM, 8..96 kHz (a technician's recorder, or what a test makes); the
sensitivity is the microphone's (dBFS for 94 dB SPL at 1 kHz; INMP441: -26).
"""

from __future__ import annotations

import json

from host_tools.cli import CommandError
from host_tools.runtime import unix_port

_SCRIPT = """
import json
from lanterne.sensors.sound_level import SoundLevelMeter
rate, bits, offset, nbytes, per = {rate}, {bits}, {offset}, {nbytes}, {per}
whole = SoundLevelMeter(rate, {sens!r}, {off!r}, bits)
part = SoundLevelMeter(rate, {sens!r}, {off!r}, bits)
block = 1024
buf = whole.buffer(block)
width = bits // 8
out = []
done = 0
start = 0
f = open({path!r}, "rb")
f.seek(offset)
left = nbytes // width
while left > 0:
    n = block if left > block else left
    if per:
        n = min(n, start + per - done)
    got = f.readinto(memoryview(buf)[:n]) // width
    if got <= 0:
        break
    whole.process(buf, got)
    part.process(buf, got)
    done += got
    left -= got
    if per and done - start >= per:
        part.report()
        out.append([start / rate, (done - start) / rate, part.figures()])
        start = done
if per and done > start:
    part.report()
    out.append([start / rate, (done - start) / rate, part.figures()])
whole.report()
print(json.dumps([done / rate, whole.figures(), out]))
"""


def configure(p):
    p.add_argument("file", metavar="FILE.wav", help="mono WAV, 16- or 32-bit integer PCM, 8..96 kHz")
    p.add_argument(
        "--sensitivity-dbfs", type=float, default=-26.0,
        help="microphone sensitivity: dBFS for 94 dB SPL at 1 kHz (default -26, the INMP441's)",
    )
    p.add_argument("--offset-db", type=float, default=0.0, help="per-device calibration offset, dB (default 0)")
    p.add_argument("--interval", type=float, default=0.0, metavar="S", help="also report every S seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def measure(path, sensitivity_dbfs=-26.0, offset_db=0.0, interval=0.0) -> dict:
    """The meter's figures for a WAV file, computed by the firmware module on the unix port."""
    from host_tools.emulator.audio import WavError, read_wav

    try:
        info = read_wav(path)
    except WavError as exc:
        raise CommandError(str(exc)) from None
    if not -80.0 <= sensitivity_dbfs <= 0.0:
        raise CommandError(f"sensitivity {sensitivity_dbfs} dBFS is outside -80..0")
    if not -20.0 <= offset_db <= 20.0:
        raise CommandError(f"offset {offset_db} dB is outside -20..20")
    if interval < 0:
        raise CommandError(f"interval {interval} s must be positive")
    per = int(round(interval * info.sample_rate)) if interval else 0
    if interval and per < info.sample_rate // 250:
        raise CommandError(f"interval {interval} s is shorter than the meter's 4 ms step")
    code = _SCRIPT.format(
        rate=info.sample_rate, bits=info.bits, offset=info.data_offset, nbytes=info.data_bytes,
        per=per, sens=float(sensitivity_dbfs), off=float(offset_db),
        path=str(info.path.resolve()),
    )
    seconds, whole, parts = unix_port.run_json(code, heapsize=1024 * 1024, timeout=600)
    return {
        "file": str(path),
        "sample_rate": info.sample_rate,
        "bits": info.bits,
        "seconds": round(seconds, 6),
        "sensitivity_dbfs": sensitivity_dbfs,
        "offset_db": offset_db,
        **whole,
        "intervals": [{"start_s": round(s, 6), "seconds": round(d, 6), **fig} for s, d, fig in parts],
    }


def _fmt(v):
    return "  -  " if v is None else f"{v:5.1f}"


def run(args) -> int:
    result = measure(args.file, args.sensitivity_dbfs, args.offset_db, args.interval)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['file']}: {result['seconds']:.2f} s at {result['sample_rate']} Hz, {result['bits']}-bit, "
        f"sensitivity {result['sensitivity_dbfs']:g} dBFS, offset {result['offset_db']:g} dB"
    )
    print("               LAeq  LAFmax LAFmin  LA10   LA90   (dB)")
    rows = [("whole file", result)] + [(f"{p['start_s']:9.1f} s", p) for p in result["intervals"]]
    for label, r in rows:
        print(f"  {label:<11} {_fmt(r['laeq'])}  {_fmt(r['lamax'])}  {_fmt(r['lamin'])}  {_fmt(r['la10'])}  {_fmt(r['la90'])}")
    return 0
