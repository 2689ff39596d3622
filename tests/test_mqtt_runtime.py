"""The gateway runtime end to end on virtual boards and a real Mosquitto: readings, outages, commands."""

from __future__ import annotations

import json
import os

import pytest

from host_tools.backoffice.brokers import Mosquitto
from host_tools.backoffice.command_client import CommandClient, cmd
from host_tools.backoffice.watcher import Watcher
from host_tools.codec.decoder import decode

pytestmark = pytest.mark.integration

KEY = bytes(range(1, 33))


def config(url, device, **extra):
    cfg = {
        "device": device,
        "site": "rt",
        "broker": url,
        "sample_period_s": 1,
        "status_period_s": 30,
        "keepalive_s": 10,
        "command_key": KEY.hex(),
    }
    cfg.update(extra)
    return cfg


def seqs(messages):
    out = []
    for m in messages:
        for r in decode(m.payload)["readings"]:
            out.append(r["seq"])
    return out


@pytest.fixture
def broker():
    b = Mosquitto().start()
    yield b
    b.close()


def test_readings_flow_and_survive_a_broker_outage(virtual_boards, broker):
    with Watcher(broker.url, ["lanterne/v1/rt/#"]) as w:
        (h,) = virtual_boards(1, config=config(broker.url, "env-1"))
        h.world.set(temperature_c=21.5, humidity_pct=40, pressure_hpa=990)
        first = w.wait_for("lanterne/v1/rt/env-1/up", timeout=30, count=2)
        r = decode(first[-1].payload)["readings"][-1]
        assert abs(r["temperature"] - 21.5) <= 0.11 and abs(r["humidity"] - 40) <= 0.5 and abs(r["pressure"] - 990) <= 0.11
        broker.stop()
        h.wait_for(r"mqtt (publish failed|link lost|connect)", timeout=20)
        import time

        time.sleep(4)  # readings taken during the outage stay in the store
        # Hold the board off the network until the test's new subscriber is in place: a board
        # that reconnected first would drain its backlog to a broker nobody listens to yet.
        h.world.set(link_up=False)
        broker.start()
    with Watcher(broker.url, ["lanterne/v1/rt/#"]) as w2:
        since = h.console_offset()
        h.world.set(link_up=True)
        h.wait_for(r"connected to .* as env-1", since=since, timeout=60)
        # every reading from the first to the newest arrives (the backlog drains interleaved
        # with fresh readings, so wait until no seq is missing), in order once deduplicated
        deadline = time.monotonic() + 30
        while True:
            later = w2.matching("lanterne/v1/rt/env-1/up")
            got = seqs(first) + seqs(later)
            unique = sorted(set(got))
            if len(later) >= 3 and unique == list(range(unique[0], unique[-1] + 1)):
                break
            assert time.monotonic() < deadline, f"gap in {unique}"
            time.sleep(0.2)
    assert got == sorted(got) or len(set(got)) < len(got)  # in order (duplicates only from lost acks)
    assert unique[-1] - unique[0] >= 6  # the outage's readings are among them


def test_dim_command_round_trip_replay_forgery_and_wrong_topic(virtual_boards, broker):
    a, b = virtual_boards(2, config=config(broker.url, "lamp-a"))
    # the second board gets its own identity
    (b.flash / "config.json").write_text(json.dumps(config(broker.url, "lamp-b")))
    b.hard_reset()
    with Watcher(broker.url, ["lanterne/v1/rt/+/status"]) as w:
        w.wait_for("lanterne/v1/rt/lamp-a/status", timeout=30)
        w.wait_for("lanterne/v1/rt/lamp-b/status", timeout=30)
    client = CommandClient(broker.url, timeout=30)  # a loaded CI machine answers slower
    try:
        res = client.send("rt", "lamp-a", KEY, 100, "dim", {"level": 40, "ramp_s": 0})
        assert res.ok, res.reason
        assert res.data == bytes([40])
        duty = a.world.pwm(25)["duty_u16"]
        assert abs(duty - 0.40 * 65535) < 0.02 * 65535  # 0-10 V interface: 40 % -> 4 V
        # the same frame again (a replay by someone who recorded it): refused, lamp unchanged
        frame = cmd.build(KEY, "lamp-a", 100, cmd.SET_LAMP, {"level": 90})
        replay = client.send("rt", "lamp-a", KEY, 100, "dim", frame=frame)
        assert replay.reason == "replay"
        # a forged tag: refused
        forged = cmd.build(KEY, "lamp-a", 101, cmd.SET_LAMP, {"level": 90})
        forged = forged[:-1] + bytes([forged[-1] ^ 0x55])
        res = client.send("rt", "lamp-a", KEY, 101, "dim", frame=forged)
        assert res.reason == "bad_tag"
        assert abs(a.world.pwm(25)["duty_u16"] - duty) < 700
        # a command for lamp-a published on lamp-b's topic does nothing on either
        for_a = cmd.build(KEY, "lamp-a", 102, cmd.SET_LAMP, {"level": 5})
        res = client.send("rt", "lamp-b", KEY, 102, "dim", frame=for_a)
        assert res.reason == "wrong_device"
        assert abs(a.world.pwm(25)["duty_u16"] - duty) < 700
        # the counter survives a reboot: the last accepted counter is refused after a power cut
        a.power_cut()
        a.power_on()
        with Watcher(broker.url, ["lanterne/v1/rt/lamp-a/status"]) as w:
            w.wait_for("lanterne/v1/rt/lamp-a/status", lambda m: b'"power_on"' in m.payload, timeout=30)
        res = client.send("rt", "lamp-a", KEY, 100, "status")
        assert res.reason == "replay"
        res = client.send("rt", "lamp-a", KEY, 103, "status")
        assert res.ok
    finally:
        client.close()


def test_bad_config_by_command_is_refused_and_board_keeps_running(virtual_boards, broker):
    (h,) = virtual_boards(1, config=config(broker.url, "bin-1"))
    with Watcher(broker.url, ["lanterne/v1/rt/+/status"]) as w:
        w.wait_for("lanterne/v1/rt/bin-1/status", timeout=30)
    client = CommandClient(broker.url, timeout=30)  # a loaded CI machine answers slower
    try:
        assert client.send("rt", "bin-1", KEY, 10, "set-config", {"key": "sample_period_s", "value": 0}).reason == "bad_argument"
        assert client.send("rt", "bin-1", KEY, 11, "set-config", {"key": "keepalive_s", "value": 99999}).reason == "bad_argument"
        assert client.send("rt", "bin-1", KEY, 12, "set-config", {"key": "broker", "value": "mqtt://evil:1"}).reason == "not_allowed"
        ok = client.send("rt", "bin-1", KEY, 13, "set-config", {"key": "bin_empty_mm", "value": 1000})
        assert ok.ok
        assert json.loads((h.flash / "config.json").read_text())["bin_empty_mm"] == 1000
        assert client.send("rt", "bin-1", KEY, 14, "status").ok  # still running and answering
    finally:
        client.close()


@pytest.mark.skipif(not os.path.exists("/usr/sbin/mosquitto"), reason="needs mosquitto")
def test_tls_round_trip(virtual_boards, tmp_path):
    from host_tools.backoffice import tls

    pki = tls.write_test_pki(tmp_path / "pki")
    with Mosquitto(tls={k: pki[k] for k in ("cafile", "certfile", "keyfile")}) as mq:
        url = f"mqtts://localhost:{mq.tls_port}"
        (h,) = virtual_boards(1, config=config(url, "tls-1", ca_cert=pki["ca_pem"]))
        with Watcher(url, ["lanterne/v1/rt/#"], tls_ca=pki["cafile"]) as w:
            try:
                w.wait_for("lanterne/v1/rt/tls-1/up", timeout=30)
            except TimeoutError:
                pytest.fail(f"no reading over TLS (heap {h.board.heap_bytes()}); board said:\n" + h.console()[-3000:])
        client = CommandClient(url, tls_ca=pki["cafile"])
        try:
            res = client.send("rt", "tls-1", KEY, 1, "dim", {"level": 25})
            assert res.ok
            assert abs(h.world.pwm(25)["duty_u16"] - 0.25 * 65535) < 0.02 * 65535
        finally:
            client.close()
        # a board given the wrong CA refuses the server and says so
        other = tls.write_test_pki(tmp_path / "other")
        (bad,) = virtual_boards(1, config=config(url, "tls-2", ca_cert=other["ca_pem"]))
        bad.wait_for(r"mqtt connect to localhost:\d+: .*(MBEDTLS|cert|verif|OSError)", timeout=30)


def test_last_will_marks_a_board_offline_within_its_keepalive(virtual_boards, broker):
    import time

    (h,) = virtual_boards(1, config=config(broker.url, "will-1", keepalive_s=10))
    with Watcher(broker.url, ["lanterne/v1/rt/will-1/status"]) as w:
        w.wait_for("lanterne/v1/rt/will-1/status", lambda m: b'"online"' in m.payload, timeout=30)
        t0 = time.monotonic()
        # The board's link drops: no DISCONNECT, no FIN reaches the broker, which notices
        # only through the keepalive (MQTT: 1.5 x keepalive) and publishes the last will.
        h.world.set(link_up=False)
        w.wait_for("lanterne/v1/rt/will-1/status", lambda m: m.payload == b'{"state":"offline"}', timeout=40)
        waited = time.monotonic() - t0
    assert 5 < waited <= 10 * 1.5 + 3, waited
    with Watcher(broker.url, ["lanterne/v1/rt/will-1/status"]) as late:
        retained = late.wait_for("lanterne/v1/rt/will-1/status", timeout=10)[0]
        assert retained.retain and retained.payload == b'{"state":"offline"}'  # a late back office sees it too
    # the link returns: the board reconnects and says it is online again
    h.world.set(link_up=True)
    with Watcher(broker.url, ["lanterne/v1/rt/will-1/status"]) as w:
        w.wait_for("lanterne/v1/rt/will-1/status", lambda m: b'"online"' in m.payload, timeout=40)
