"""LoRaWAN 1.0.3 frames, crypto and EU868 airtime (host_tools/codec/lorawan*.py), checked against
published figures and against lora-packet, an implementation no one here wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from host_tools.codec import lorawan as L
from host_tools.codec import lorawan_radio as R
from host_tools.runtime.paths import BUILD, REPO

LORA_PACKET = BUILD / "node" / "node_modules" / "lora-packet"
CHECKER = REPO / "tests" / "js" / "check_lorawan.js"


def lora_packet_check(app_key: bytes, frames: list[bytes]) -> list[dict]:
    """lora-packet's reading of `frames` (one device, in air order)."""
    if shutil.which("node") is None or not LORA_PACKET.exists():
        pytest.fail("lora-packet is not installed: run `make deps` (it installs it into build/node)")
    out = subprocess.run(
        ["node", str(CHECKER)],
        input=json.dumps({"app_key": app_key.hex(), "frames": [f.hex() for f in frames]}),
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_published_frame_decrypts_to_its_payload():
    # The example frame of lora-packet's README: DevAddr 49be7df1, FCnt 2, FPort 1, payload "test".
    phy = bytes.fromhex("40F17DBE4900020001954378762B11FF0D")
    frame = L.open_data(phy, bytes.fromhex("44024241ed4ce9a68c6a8bc055233fd3"), bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588"))
    assert (L.dev_addr_hex(frame.dev_addr), frame.fcnt, frame.fport, frame.payload) == ("49be7df1", 2, 1, b"test")
    tampered = phy[:-5] + bytes([phy[-5] ^ 1]) + phy[-4:]
    with pytest.raises(L.FrameError, match="MIC"):
        L.open_data(tampered, bytes.fromhex("44024241ed4ce9a68c6a8bc055233fd3"), bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588"))


@pytest.mark.parametrize(
    "sf, phy_len, ms",
    [
        (12, 51, 2465.792),  # Semtech's calculator: SF12/125 kHz, CR 4/5, 8-symbol preamble, LDRO on
        (7, 51, 102.656),
        (12, 64, 2793.472),  # a full 51-byte FRMPayload at DR0 (13 bytes of LoRaWAN around it)
        (7, 13 + 12, 61.696),  # a 12-byte Lanterne reading at DR5
        (10, 23, 370.688),  # a join request at SF10
    ],
)
def test_time_on_air_follows_semtech_formula(sf, phy_len, ms):
    assert R.time_on_air_s(phy_len, sf) * 1000 == pytest.approx(ms, abs=0.001)


def test_eu868_payload_table_and_duty_cycle():
    assert [R.max_payload(dr) for dr in range(6)] == [51, 51, 51, 115, 222, 222]
    assert R.max_payload(0, fopts_len=3) == 48
    with pytest.raises(ValueError, match="DR0..DR5"):
        R.max_payload(6)
    dc = R.DutyCycle()
    dc.record(868_100_000, 100.0, 1.0)  # 1 % sub-band: 1 s on air closes it until t = 200
    assert dc.blocked_until(868_500_000) == pytest.approx(200.0)
    assert dc.blocked_until(867_100_000) == 0.0  # another sub-band (865-868 MHz) stays open
    assert dc.wait_s(R.EU868_DEFAULT_CHANNELS, 150.0) == pytest.approx(50.0)
    assert dc.wait_s(R.EU868_DEFAULT_CHANNELS + R.EU868_CFLIST_CHANNELS, 150.0) == 0.0
    assert R.sub_band(869_525_000).duty_cycle == 0.10


def test_join_and_session_roundtrip_and_lora_packet_agrees():
    app_key, join_eui, dev_eui = os.urandom(16), bytes.fromhex("70B3D57ED0000001"), bytes.fromhex("0016C001FF000001")
    jr = L.join_request(app_key, join_eui, dev_eui, 0xBEEF)
    assert L.verify_join_request(app_key, jr) and not L.verify_join_request(os.urandom(16), jr)
    assert L.parse_join_request(jr) == L.JoinRequest(join_eui, dev_eui, 0xBEEF)
    accept = L.JoinAccept(app_nonce=0x0A0B0C, net_id=0x000013, dev_addr=0x26011F00, cf_list=bytes(16))
    ja = L.join_accept(app_key, accept)
    assert L.open_join_accept(app_key, ja) == accept
    with pytest.raises(L.FrameError, match="MIC"):
        L.open_join_accept(os.urandom(16), ja)
    nwk, app = L.session_keys(app_key, 0x0A0B0C, 0x13, 0xBEEF)
    up = L.build_data(L.DataFrame(L.CONFIRMED_UP, 0x26011F00, 70000, 102, b"\x01\x02\x03", fopts=b"\x02", adr=True), nwk, app)
    down = L.build_data(L.DataFrame(L.UNCONFIRMED_DOWN, 0x26011F00, 3, 12, b"ledger", ack=True, fpending=True), nwk, app)
    got = L.open_data(up, nwk, app, last_fcnt=69999)
    assert (got.fcnt, got.fport, got.payload, got.fopts, got.confirmed, got.adr) == (70000, 102, b"\x01\x02\x03", b"\x02", True, True)
    with pytest.raises(L.FrameError):
        L.open_data(up, nwk, app, last_fcnt=5)  # FCnt rebuilt as 4464 + 65536 * 0: the MIC fails
    seen = lora_packet_check(app_key, [jr, ja, L.build_data(L.DataFrame(L.UNCONFIRMED_UP, 0x26011F00, 7, 102, b"xyz"), nwk, app), down])
    assert seen[0] == {"mtype": "Join Request", "mic_ok": True, "dev_eui": dev_eui.hex(), "join_eui": join_eui.hex(), "dev_nonce": "beef"}
    assert seen[1]["mic_ok"] and (seen[1]["nwk_s_key"], seen[1]["app_s_key"]) == (nwk.hex(), app.hex())
    assert (seen[2]["mic_ok"], seen[2]["fcnt"], seen[2]["payload"]) == (True, 7, b"xyz".hex())
    assert (seen[3]["mtype"], seen[3]["ack"], seen[3]["payload"], seen[3]["mic_ok"]) == ("Unconfirmed Data Down", True, b"ledger".hex(), True)


def test_full_fcnt_rebuilds_32_bits():
    assert L.full_fcnt(5, None) == 5
    assert L.full_fcnt(0x0001, 0xFFFF) == 0x10001
    assert L.full_fcnt(0x0005, 0x10003) == 0x10005
    assert L.full_fcnt(0x0003, 0x10003) == 0x20003  # not above the last one: the next roll-over
