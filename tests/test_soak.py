"""The fleet soak's short profile, as `make test` runs it: 20 virtual boards of three board files,
provisioned as a fleet over their serial ports, Mosquitto with the generated password/ACL files and
a TLS listener, the bridge, 90 s of seeded faults, commands and attacks, the security probes, then
the drain and the ledger (printed). Nothing lost, nothing run twice, no one let in.

It takes ~2.5-3 minutes of wall time on a 2-core machine (the ledger prints its timings). The
counting itself is checked apart, on made-up stores and consoles, so that a ledger that would hide a
loss, a double execution or an accepted attack fails here too.
"""

from __future__ import annotations

import json
import random
import threading

import pytest
from conftest import lanterne

from host_tools.reliability import soak_ledger, soak_lorawan, soak_security
from host_tools.reliability.soak_profile import BOARD_KINDS, FAULTS, ProfileError, load_profile, schedule

BOARDS, MINUTES = 20, 1.25


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.solo  # 20 boards, a broker and the bridge: the machine is theirs
@pytest.mark.timeout(600)
def test_short_soak_loses_nothing_runs_nothing_twice_lets_no_one_in(tmp_path, capsys):
    out = tmp_path / "ledger.json"
    r = lanterne("soak", "--boards", BOARDS, "--minutes", MINUTES, "--profile", "short", "--seed", 7,
                 "--out", out, timeout=540)
    with capsys.disabled():
        print("\n" + r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ledger = json.loads(out.read_text())
    assert ledger["ok"] and "RESULT: PASS" in r.stdout
    # the fleet as asked: five board files (two LoRaWAN boards and a battery LoRaWAN bin in deep sleep among
    # them), part of it on TLS, every board online
    assert ledger["boards"] == BOARDS and ledger["minutes"] == MINUTES
    assert ledger["fleet"] == {"wifi-lamp": 8, "ethernet-bollard": 6, "envstation": 3, "lorawan-sensor": 2, "battery-bin": 1}
    assert ledger["boards_tls"] >= 1
    assert ledger["boards_never_online"] == []
    # every reading every board counted in its own store reached the back office's database
    assert ledger["readings_sampled"] >= 17 * 35 + 2 * 7 + 5  # a reading every 2 s (LoRaWAN: 10 s; the bin: ~10 s) for 75 s and more
    assert ledger["readings_delivered"] == ledger["readings_sampled"]
    assert ledger["readings_lost"] == ledger["readings_duplicated_after_dedup"] == 0
    # the commands: each answered, none run twice; every kind of attack sent, none accepted
    assert ledger["commands_sent"] >= 20 and ledger["commands_never_acked"] == 0
    assert ledger["commands_double_executed"] == 0
    assert {"forged", "replay", "cross_device", "malformed"} <= {k.replace("_unsent", "") for k in ledger["attacks_sent"]}
    assert ledger["forged_accepted"] == ledger["replayed_accepted"] == ledger["cross_device_accepted"] == 0
    # the probes ran (no credentials, wrong password, outside the topic tree, raw packets, TLS) and none got in
    assert ledger["probe_rounds"] >= 1 and ledger["probes_run"] >= 24  # (5 of them on the LoRaWAN side's topics)
    assert ledger["unauthorised_accepted"] == 0 and ledger["probes_let_in"] == []
    # the LoRaWAN boards: through the network server and the uplink service, a join refused after a lost
    # session, downlink commands acked (the attacks among those counted above)
    lw = ledger["lorawan"]
    assert lw["boards"] == 3 and lw["uplinks_sent"] >= 10 and lw["join_requests_unanswered"] >= 1 and lw["ledgers_sent"] >= 2
    # the uplink service restarted mid-run on its state file, each device's ledger restored (nothing lost or
    # counted twice across it: the figures above)
    assert lw["uplink_service_restarts"] >= 1
    restarts = [f for f in ledger["fault_log"] if f["kind"] == "uplink_service_restart"]
    assert restarts and all(f["devices_restored"] == 3 for f in restarts)
    assert ledger["commands_lorawan"]["sent"] >= 1 and ledger["commands_lorawan"]["acked"] == ledger["commands_lorawan"]["sent"]
    # a signed release rolled out to two boards mid-run, one of them cut off in the middle of it: every
    # board of the fleet came back after the drain's last power cycle, the two on the new release
    ota = ledger["ota"]
    assert ota["boards_targeted"] == 2 and ota["errors"] == [] and ota["bricked"] == []
    assert ota["targets_on_release"] == 2 and ota["boards_ended_on_release"] == {"0": 15, str(ota["release"]): 2}
    assert len(ota["power_cuts_during_update"]) == 2
    # every fault kind of the profile hit the fleet; no board crashed in a loop or lost a task
    assert set(ledger["faults_injected"]) == set(load_profile("short").faults) | {"power_cut_during_ota"}
    # full_flash for real where this host allows a tmpfs flash (writes refused with ENOSPC), else to the reserve
    from host_tools.emulator.flash_tmpfs import mount_refused

    mode = "to_reserve" if mount_refused() else "enospc"
    assert ledger["full_flash_modes"] == {mode: ledger["faults_injected"]["full_flash"]}
    assert f"full_flash ran as: {mode}" in r.stdout
    assert ledger["crash_loops"] == 0 and ledger["boards_with_task_restarted"] == 0 and ledger["memory_errors"] == 0
    assert len(ledger["heap_peak_bytes"]) == BOARDS - 1  # (the bin logs a status once a day)
    assert ledger["host"]["mem_used_peak_mb"] > 0 and ledger["harness_errors"] == []


# -- the counting, on made-up figures: a ledger that hides anything fails here -----------------------
def test_a_reading_missing_from_the_database_is_lost_even_if_the_board_has_newer_ones():
    stores = {"a": {"next_seq": 5, "dropped": 0, "pending": []}, "b": {"next_seq": 3, "dropped": 0, "pending": []}}
    got = soak_ledger.readings(stores, {"a": [0, 1, 3, 4, 7], "b": [0, 1, 2]}, 8, {})
    assert got["readings_sampled"] == 8 and got["readings_delivered"] == 7 and got["readings_lost"] == 1
    assert got["boards_with_losses"] == {"a": 1}
    assert soak_ledger.verdict({**got, "readings_lost": 1}) == ["readings_lost = 1"]


def test_readings_the_store_dropped_count_as_sampled_and_lost():
    got = soak_ledger.readings({"a": {"next_seq": 4, "dropped": 2, "pending": []}}, {"a": [0, 1, 2, 3]}, 4, {})
    assert got["readings_sampled"] == 6 and got["readings_lost"] == 2 and got["readings_dropped_by_store"] == 2


def test_one_seq_with_two_contents_on_the_wire_is_a_duplicate_after_dedup():
    wire = {"a": {0: {'{"t": 1}'}, 1: {'{"t": 2}', '{"t": 3}'}}}
    got = soak_ledger.readings({"a": {"next_seq": 2, "dropped": 0, "pending": []}}, {"a": [0, 1]}, 2, wire)
    assert got["readings_duplicated_after_dedup"] == 1 and got["readings_lost"] == 0


def test_read_store_counts_what_the_firmware_store_handed_out(tmp_path):
    from host_tools.runtime import firmware_module

    store = firmware_module("store")
    s = store.Store(str(tmp_path / "store"))
    for i in range(5):
        s.append(bytes([2, i]))
    s.ack(s.peek(1024, max_records=3))
    s.close()
    assert soak_ledger.read_store(tmp_path) == {"next_seq": 5, "dropped": 0, "pending": [3, 4]}


class _Stream(soak_security.CommandStream):
    def __init__(self, sent):  # no broker: only the bookkeeping
        self.log = soak_security.CommandLog(sent)


def test_executions_are_read_from_the_board_console_and_matched_to_what_was_sent():
    console = (b"[lanterne] command 100 set_lamp: ok\r\n[lanterne] command redelivered: acked again, not executed\r\n"
               b"[lanterne] command 101 refused: replay (counter 101 <= 101)\r\n[lanterne] command 100 set_lamp: ok\r\n"
               b"[lanterne] command 20000200 request_status: ok\r\n[lanterne] command 7 refused: bad_tag (x)\r\n")
    assert soak_security.executions(console) == [100, 100, 20000200]
    S = soak_security.Sent
    stream = _Stream([S("a", 100, "legit", b"", acked=True), S("a", 20000200, "forged", b""), S("b", 5, "legit", b"")])
    got = stream.outcome({"a": soak_security.executions(console), "b": []})
    assert got["commands_double_executed"] == 1 and got["forged_accepted"] == 1
    assert got["commands_sent"] == 2 and got["commands_executed"] == 1 and got["commands_never_acked"] == 1
    # the same double run, when that frame was also replayed on purpose, is an accepted replay
    stream = _Stream([S("a", 100, "legit", b""), S("a", 100, "replay", b"")])
    assert stream.outcome({"a": [100, 100]})["replayed_accepted"] == 1
    # an execution nobody sent (a cross-device frame run by its victim) is counted against us
    stream = _Stream([S("b", 10000300, "cross_device", b"")])
    assert stream.outcome({"b": [10000300]})["cross_device_accepted"] == 1


def test_the_schedule_is_seeded_and_puts_one_fault_at_a_time_on_a_board():
    p = load_profile("short")
    kinds = ["wifi-lamp"] * 8 + ["lorawan-sensor", "battery-bin"]
    a = schedule(p, kinds, 3, random.Random(5))
    assert [(x.at_s, x.kind, x.board) for x in a] == [(x.at_s, x.kind, x.board) for x in schedule(p, kinds, 3, random.Random(5))]
    assert {x.kind for x in a} == set(p.faults)
    # a fault lands only on a board of a transport it applies to (no link flap on a LoRaWAN board, no
    # uplink loss on a Wi-Fi one)
    for x in a:
        if x.board is not None:
            assert BOARD_KINDS[kinds[x.board]].transport in FAULTS[x.kind].transports, x
    assert {kinds[x.board] for x in a if x.kind.startswith("lorawan_")} <= {"lorawan-sensor", "battery-bin"}
    for board in range(10):
        spans = sorted((x.at_s, x.at_s + x.duration_s) for x in a if x.board == board)
        assert all(b_end <= a_start for (_s, b_end), (a_start, _e) in zip(spans, spans[1:], strict=False))
    fleet = sorted((x.at_s, x.at_s + x.duration_s) for x in a if FAULTS[x.kind].scope == "fleet")
    assert all(e <= s for (_a, e), (s, _b) in zip(fleet, fleet[1:], strict=False))


def test_a_bad_profile_is_refused_with_the_field(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"faults": {"power_cutt": {"per_min": 1, "duration_s": [1, 2]}}}))
    with pytest.raises(ProfileError, match="unknown fault kind 'power_cutt'"):
        load_profile(str(f))
    f.write_text(json.dumps({"tls_share": 2}))
    with pytest.raises(ProfileError, match="tls_share"):
        load_profile(str(f))
    g = tmp_path / "q.json"
    g.write_text(json.dumps({"ota_share": 1.5}))
    with pytest.raises(ProfileError, match="'ota_share' must be between 0 and 1"):
        load_profile(str(g))
    g.write_text(json.dumps({"board_mix": {"lorawan-bin": 1}}))
    with pytest.raises(ProfileError, match="unknown board kind 'lorawan-bin'; known: .*lorawan-sensor, battery-bin"):
        load_profile(str(g))
    r = lanterne("soak", "--boards", 4, "--minutes", 1, "--profile", f)
    assert r.returncode == 1 and "tls_share" in r.stderr and "hint:" in r.stderr


def test_an_ota_start_run_by_the_board_is_the_back_offices_own_not_an_attack():
    S = soak_security.Sent
    stream = _Stream([S("a", 100, "legit", b"", acked=True), S("a", 105, "ota", b"", acked=True)])
    got = stream.outcome({"a": [100, 105]})
    assert got["forged_accepted"] == 0 and got["commands_sent"] == 1 and "ota" not in got["attacks_sent"]
    assert _Stream([S("a", 105, "ota", b"")]).outcome({"a": [105, 105]})["commands_double_executed"] == 1
    assert _Stream([S("a", 100, "legit", b"")]).outcome({"a": [105]})["forged_accepted"] == 1  # unexplained: counted


def test_a_devices_update_blocks_read_during_an_ota_wave_are_not_a_leak_but_another_devices_are():
    # A CI soak once reported "LET IN: subscribe_everything": the probe, logged in as a board that
    # an OTA wave was reaching, received that board's own update blocks (its ACL allows them).
    own = "lanterne/v1/north/lamp-1/"
    assert soak_security.read_outside_own_tree("north", "lamp-1", [own + "cmd", own + "ota/data"]) == ""
    leak = soak_security.read_outside_own_tree("north", "lamp-1", [own + "ota/data", "lanterne/v1/north/lamp-2/ota/data",
                                                                    "lanterne/v1/north/lamp-2/up"])
    assert leak == "lanterne/v1/north/lamp-2/ota/data lanterne/v1/north/lamp-2/up"


def _lora_side(device="lw-1", eui="00112233445566ff", state_path=None, downlinks=None):
    """A LoraSide around a real UplinkService that gets its uplinks by hand (no broker, no boards);
    its downlinks go to `downlinks` (a list) instead of a broker."""
    import time

    from host_tools.backoffice.uplinks import LoraDevice

    side = soak_lorawan.LoraSide.__new__(soak_lorawan.LoraSide)
    side.boards, side.lock = [], threading.Lock()
    side.seqs, side.acks, side._wire, side._trackers = {device: []}, {}, {}, {}
    side.ack_event = threading.Condition(side.lock)
    side.lora_devices = [LoraDevice(device, eui, b"k" * 32)]
    side.url, side.clock, side.state_path = None, time.time, state_path
    side.svc_lock, side.svc_down, side.restarts = threading.RLock(), False, 0
    side.publish = (lambda t, m: downlinks.append((t, m))) if downlinks is not None else (lambda t, m: None)
    side.svc = side._new_service(side.publish)
    return side


def _uplink(side, readings, fcnt, eui="00112233445566ff", device="lw-1"):
    from host_tools.codec import encode_values
    from host_tools.codec import lns_json as J

    (f,) = encode_values(readings, budget=222, runtime="cpython", lorawan=True)
    side.svc.handle(J.Uplink(eui, device, f["fport"], fcnt, f["frame"]))


def test_lorawan_readings_count_once_after_dedup_and_a_seq_with_two_contents_is_caught():
    side = _lora_side()

    def up(readings, fcnt):
        _uplink(side, readings, fcnt)

    up([{"seq": 0, "temperature": 20.5}, {"seq": 1, "temperature": 20.6}], 1)
    up([{"seq": 1, "temperature": 20.6}, {"seq": 2, "temperature": 20.7}], 2)  # seq 1 again: a resend
    seqs, events = side.delivered()
    assert seqs == {"lw-1": [0, 1, 2]} and events == 3  # what the service handed on after its de-duplication
    wire = side.wire()["lw-1"]
    assert sum(wire[1].values()) == 2 and len(wire[1]) == 1  # two copies, one content: not a conflict
    up([{"seq": 2, "temperature": 30.0}], 3)  # seq 2 with another content (a seq reused): de-dup would hide it
    wire = {"lw-1": {q: set(c) for q, c in side.wire()["lw-1"].items()}}
    got = soak_ledger.readings({"lw-1": {"next_seq": 3, "dropped": 0, "pending": []}}, *side.delivered(), wire)
    assert got["readings_lost"] == 0 and got["readings_duplicated_after_dedup"] == 1


def test_the_uplink_service_restarted_on_its_state_file_hands_nothing_on_twice_and_forgets_nothing(tmp_path):
    # The `uplink_service_restart` fault, without a broker: the service stopped (its state file
    # closed), a command refused while it is down, a new service on the same file.
    downlinks = []
    side = _lora_side(state_path=tmp_path / "uplinks-state.sqlite", downlinks=downlinks)
    r = [{"seq": q, "temperature": 20.0 + q / 10} for q in range(6)]
    _uplink(side, r[0:3], 1)
    _uplink(side, r[4:5], 2)  # seq 3 lost in the air: missing
    before = side.svc.stats()["lw-1"]
    left = side.stop_service()
    with pytest.raises(RuntimeError, match="down"):
        side.send_command("lw-1", bytes(20))
    assert side.start_service(left, connect=False, publish=side.publish) == 1 and side.restarts == 1
    after = side.svc.stats()["lw-1"]
    assert (after["next_seq"], after["missing"], after["readings"], after["uplinks"]) == (before["next_seq"], 1, 4, 2) == (3, 1, 4, 2)
    _uplink(side, r[1:4], 3)  # 1 and 2 resent (their ledger downlink did not arrive), 3 at last
    _uplink(side, r[5:6], 4)
    seqs, events = side.delivered()
    assert seqs == {"lw-1": [0, 1, 2, 4, 3, 5]} and events == 6  # each handed on once, across the restart
    assert side.svc.stats()["lw-1"]["missing"] == 0 and side.svc.stats()["lw-1"]["duplicates"] == 2
    wire = {"lw-1": {q: set(c) for q, c in side.wire()["lw-1"].items()}}
    got = soak_ledger.readings({"lw-1": {"next_seq": 6, "dropped": 0, "pending": []}}, seqs, events, wire)
    assert got["readings_lost"] == got["readings_duplicated_after_dedup"] == 0

    # Without its state file the same restart is caught twice: the injector's check refuses the new
    # service's empty ledger, and the ledger counts what that service hands on again.
    side = _lora_side()
    _uplink(side, r[0:3], 1)
    left = side.stop_service()
    with pytest.raises(RuntimeError, match="did not start from its state file for 00112233445566ff"):
        side.start_service(left, connect=False, publish=side.publish)
    assert side.start_service(None, connect=False, publish=side.publish) == 0
    _uplink(side, r[1:4], 2)
    seqs, events = side.delivered()
    got = soak_ledger.readings({"lw-1": {"next_seq": 4, "dropped": 0, "pending": []}}, seqs, events, {})
    assert seqs == {"lw-1": [0, 1, 2, 1, 2, 3]} and got["readings_duplicated_after_dedup"] == 2


def test_the_uplink_service_restart_is_scheduled_only_for_a_fleet_with_lorawan_boards():
    p = load_profile("short")
    assert "uplink_service_restart" in {x.kind for x in schedule(p, ["wifi-lamp"] * 4 + ["battery-bin"], 3, random.Random(1))}
    mqtt_only = schedule(p, ["wifi-lamp"] * 4 + ["envstation"], 3, random.Random(1))
    assert "uplink_service_restart" not in {x.kind for x in mqtt_only}
    assert {"broker_restart", "broker_kill", "backoffice_restart"} <= {x.kind for x in mqtt_only}


def test_a_lorawan_status_logged_on_the_console_gives_the_boards_heap():
    console = ('[lanterne] status not sent (LoRaWAN: the status stays on the board): {"heap_alloc": 601600, "x": 1}\r\n'
               '[lanterne] status not sent (LoRaWAN: the status stays on the board): {"heap_alloc": 603168}\r\n'
               '[lanterne] status not sent (LoRaWAN: the status stays on the board): {"heap_al')  # (cut: skipped)
    assert soak_lorawan.logged_heap(console) == 603168


def test_the_lorawan_services_take_their_broker_login_from_the_url():
    from host_tools.emulator.lorawan_gateway import _broker_address, broker_login

    url = "mqtt://soak-lns:p%40ss%3Aword@127.0.0.1:18830"
    assert broker_login(url) == ("soak-lns", "p@ss:word") and _broker_address(url) == ("127.0.0.1", 18830)
    assert broker_login("mqtt://127.0.0.1:1883") is None
