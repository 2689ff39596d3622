"""A virtual environmental station (BME280 + PMS5003 + INMP441) publishes PM and noise to a real Mosquitto;
both decoders (Python and the network server's JavaScript formatter) read its frames; faults reach
the status and the readings' flags while the board keeps publishing."""

from __future__ import annotations

import json

import pytest
from test_codec_decoders import NODE, node_decode

from host_tools import boards
from host_tools.codec import decode

pytestmark = pytest.mark.integration


def quick_board(tmp_path, pm_type="pms5003"):
    """The envstation's board file with a short PM warm-up, so a test sees measurements in seconds, and
    the microphone at 16 kHz with a 0.5 s buffer, so a loaded CI machine keeps up with its audio
    (the ESP32's real-time budget at 48 kHz is `lanterne bench environment`'s business)."""
    data = json.loads(boards.load("esp32-envstation").path.read_text())
    for part in data["sensors"]:
        if part["type"] == "i2s_mic":
            part.update(sample_rate=16000, ibuf=32768)
        if part["type"] == "pms5003":
            part.update(type=pm_type, warmup_s=2, measure_s=3)
            if pm_type != "pms5003":
                part.pop("mode")
            if pm_type == "sps30":
                part["bus"] = "i2c0"
    path = tmp_path / "envstation-quick.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("pm_type", ["pms5003", "sds011", "sps30"])
def test_envstation_publishes_pm_and_noise_that_both_decoders_read(virtual_boards, mosquitto, tmp_path, pm_type):
    from host_tools.backoffice.watcher import Watcher

    cfg = {"device": f"env-{pm_type}", "site": "itest", "broker": mosquitto.url, "sample_period_s": 4,
           "status_period_s": 5, "pm_period_s": 0}
    scene = "tone f=1000 db=78; pink db=40"
    with Watcher(mosquitto.url, ["lanterne/v1/itest/#"]) as w:
        (h,) = virtual_boards(1, board=quick_board(tmp_path, pm_type), config=cfg,
                              world_values={"pm25_ugm3": 23.0, "pm10_ugm3": 31.0, "pm1_ugm3": 12.0, "sound_scene": scene})
        up = f"lanterne/v1/itest/{cfg['device']}/up"
        # A reading with both; on a loaded machine the virtual board may fall behind its audio for
        # a moment (the reading then carries sound_fault, as a real board's would): wait for a clean one.
        msgs = w.wait_for(up, lambda m: b"\x03" == m.payload[:1] and _has(m.payload, "pm2_5", "laeq")
                          and not _flags(m.payload), timeout=60)
        frame = msgs[-1].payload
        got = [r for r in decode(frame)["readings"] if "pm2_5" in r and "laeq" in r][-1]
        assert abs(got["pm2_5"] - 23) <= 1 and abs(got["pm10"] - 31) <= 1
        assert ("pm1" in got) == (pm_type != "sds011")
        assert got["laeq"] == pytest.approx(78.0, abs=0.6)  # a 1 kHz tone: A(1 kHz) = 0 dB; pink 40 dB adds ~0
        assert got["lamax"] >= got["laeq"] - 0.2
        assert "pm_fault" not in got["status"] and "sound_fault" not in got["status"]
        if NODE:
            answer = node_decode([frame])[0]
            assert answer["errors"] == [] and answer["data"] == decode(frame)
        status = json.loads(w.wait_for(f"lanterne/v1/itest/{cfg['device']}/status",
                                       lambda m: b'"pm2_5": 2' in m.payload, timeout=30)[-1].payload)
        assert status["env"]["pm"]["pm2_5"] == pytest.approx(23, abs=1) and status["env"]["pm"]["state"] in ("warming", "measuring")
        assert status["env"]["noise"]["laeq"] == pytest.approx(78.0, abs=0.6) and status["env"]["noise"]["rate"] == 16000
        assert [f for f in status["faults"] if f != "noise: timeout"] == []  # (see above)

        if pm_type != "pms5003":
            return
        # Faults: the PM sensor's frames fail their checksum, the microphone goes silent.
        h.world.inject("pms5003", "checksum")
        h.world.inject("microphone", "silence")
        st = w.wait_for(f"lanterne/v1/itest/{cfg['device']}/status",
                        lambda m: b"pm: checksum" in m.payload and b"noise: missing" in m.payload, timeout=40)
        assert json.loads(st[-1].payload)["state"] == "online"
        flagged = w.wait_for(up, lambda m: m.payload[:1] == b"\x03" and _flags(m.payload) >= {"pm_fault", "sound_fault"},
                             timeout=30)
        assert flagged
        h.world.clear()
        w.wait_for(up, lambda m: m.payload[:1] == b"\x03" and _has(m.payload, "laeq") and not _flags(m.payload),
                   timeout=40)


def _readings(payload):
    try:
        return decode(payload)["readings"]
    except ValueError:
        return []


def _has(payload, *keys):
    return any(all(k in r for k in keys) for r in _readings(payload))


def _flags(payload):
    rs = _readings(payload)
    return set(rs[-1].get("status", [])) if rs else set()


def test_monitor_shows_pm_and_noise_of_a_v3_reading():
    from host_tools.backoffice.monitor import FleetView
    from host_tools.codec import encode_values

    frame = encode_values({"temperature": 12.3, "pm2_5": 9, "pm10": 17, "laeq": 58.3, "lamax": 71.9, "seq": 1},
                          51, "cpython")[0]["frame"]
    view = FleetView()
    view.feed("lanterne/v1/itest/env-1/up", frame, 1000.0)
    row = view.rows(1001.0)[0]
    assert "9 PM2.5" in " ".join(row) and "58.3 dB(A)" in " ".join(row) and "71.9 dB(A) max" in " ".join(row)


def test_microphone_twin_scene_wav_and_faults(tmp_path):
    import math
    from array import array

    from host_tools.emulator.audio import write_wav
    from host_tools.emulator.control import parse_assignments
    from host_tools.emulator.devices.microphone import I2SMicrophone
    from host_tools.emulator.world import World

    def dbfs(raw):  # RMS of 32-bit words relative to a full-scale sine's
        a = array("i")
        a.frombytes(raw)
        return 20 * math.log10(math.sqrt(sum(float(v) ** 2 for v in a) / len(a)) / (2**31 / math.sqrt(2)))

    world = World(seed=3, **parse_assignments(["sound_scene=tone f=1000 db=94", "mic_noise_db=0"]))
    mic = I2SMicrophone(world, 0, -26.0, 16000)
    mic.i2s_init(16000, 32)
    raw, _ = mic.i2s_read(4 * 16000)
    assert dbfs(raw) == pytest.approx(-26.0, abs=0.05)  # 94 dB SPL at 1 kHz reads the sensitivity
    world.inject("microphone", "clipping")
    raw, _ = mic.i2s_read(4 * 1600)
    assert max(array("i", raw)) >= 2**31 - 256  # clipped at full scale
    world.clear()
    world.inject("microphone", "silence")
    assert set(mic.i2s_read(4 * 160)[0]) == {0}
    world.clear()
    wav = write_wav(tmp_path / "t.wav", [int(1000 * math.sin(i / 3)) for i in range(800)], 16000, 16)
    world.set(sound_wav=str(wav))
    raw, _ = mic.i2s_read(4 * 800)
    assert array("i", raw)[5] >> 16 == int(1000 * math.sin(5 / 3))  # the file's samples, as the microphone's words
    with pytest.raises(ValueError, match="unknown kind"):
        world.set(sound_scene="drums db=90")


def test_the_scenes_pink_filter_a_block_at_a_time_is_kellets_sample_by_sample():
    # The microphone's scene is computed with numpy a block at a time (the supervisor serves every
    # board's audio); the filter must be Paul Kellet's recurrence exactly, across block boundaries.
    import numpy as np

    from host_tools.emulator.audio import Scene

    w = np.random.default_rng(5).standard_normal(3000)
    b, ref = [0.0] * 7, []
    for x in w:
        b[0] = 0.99886 * b[0] + x * 0.0555179
        b[1] = 0.99332 * b[1] + x * 0.0750759
        b[2] = 0.96900 * b[2] + x * 0.1538520
        b[3] = 0.86650 * b[3] + x * 0.3104856
        b[4] = 0.55000 * b[4] + x * 0.5329522
        b[5] = -0.7616 * b[5] - x * 0.0168980
        ref.append(b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + x * 0.5362)
        b[6] = x * 0.115926
    scene = Scene("pink db=60", 16000)
    got = np.concatenate([scene._pink_block(w[a:z].copy()) for a, z in ((0, 1), (1, 700), (700, 701), (701, 3000))])
    assert np.max(np.abs(got - np.array(ref))) < 1e-12


def test_the_microphones_words_clip_and_drop_the_low_byte_as_the_inmp441s():
    from array import array

    import numpy as np

    from host_tools.emulator.devices.microphone import FULL, I2SMicrophone
    from host_tools.emulator.world import World

    values = [0.0, 5.7, -5.7, 255.9, -0.4, -256.5, FULL - 200.0, FULL + 5.0, -FULL - 5.0, 3e12, -3e12, 123456789.9]

    def expected(v):  # one sample as the INMP441 puts it in its 32-bit slot
        v = int(v)
        v = FULL - 256 if v >= FULL else (-FULL if v < -FULL else v)
        return v & ~0xFF

    mic = I2SMicrophone(World(seed=1), 0, -26.0, 16000)
    mic.i2s_init(16000, 32)
    mic._source = lambda n: np.array(values[:n])
    raw, _ = mic.i2s_read(4 * len(values))
    assert list(array("i", raw)) == [expected(v) for v in values]
    mic.i2s_init(16000, 16)
    raw, _ = mic.i2s_read(2 * len(values))
    assert list(array("h", raw)) == [expected(v) >> 16 for v in values]
