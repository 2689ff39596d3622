"""The soak's ledger: what the boards sampled (their own stores' counters), what the back office
holds, what was lost, duplicated, double-executed or let in; and how it is printed.

Counted so that it cannot flatter:
- `readings_sampled` comes from each board's flash, read with the firmware's own `Store` on
  CPython after the board is powered off: every seq the store ever handed out (`next_seq`, a
  reading that reached the store), plus the readings the store itself counts as dropped (an
  append that failed, a full store: `dropped`, kept on flash). Nothing the network did enters it.
- `readings_delivered` is what the bridge's database holds for those seqs (below each board's
  `next_seq`), distinct by (device, seq); `readings_lost` = sampled - delivered. Readings the
  store dropped are counted as lost even though no seq shows them (an overflow-dropped reading
  also leaves a seq gap: such a reading is then counted twice, which over-states, never hides).
- `readings_duplicated_after_dedup`: rows in the database beyond one per (device, seq), plus
  (device, seq) pairs that arrived on the wire with two different contents (a seq reused after
  a power cut: de-duplication would keep one and silently drop the other reading); what the uplink
  adds to a reading (its age, the clock_unsynced flag of a reading resent after a reboot) is left
  out of that comparison.
- `readings_duplicated_on_wire`: copies the back office received and de-duplicated (resends after
  a lost PUBACK, broker redeliveries): expected, and shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading

from host_tools.runtime.paths import FIRMWARE

MUST_BE_ZERO = ("readings_lost", "readings_duplicated_after_dedup", "commands_double_executed", "forged_accepted",
                "replayed_accepted", "cross_device_accepted", "unauthorised_accepted", "crash_loops")


def read_store(flash) -> dict:
    """The board's store as its flash holds it (the board must be powered off): next_seq, dropped,
    and the seqs still waiting to be sent, with the firmware's own module."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    from lanterne.store import Store

    s = Store(str(flash / "store"))
    try:
        # The store's acknowledged set is [0, head) + [split, fresh) (lanterne/store.py, ack()):
        # what it still holds to send is [head, split) + [fresh, next).
        pending = list(range(s._head, s._split)) + list(range(s._fresh, s._next))
        return {"next_seq": s.next_seq, "dropped": s.dropped, "pending": pending}
    finally:
        s.close()


def reading_content(r: dict) -> str:
    """What the board measured, without what the uplink adds: the age, and the clock_unsynced flag a
    reading sent again after a reboot gets when its age can no longer be known (lanterne/reading.py,
    unpack); two copies with the same content are the same reading, so not a conflict."""
    kept = {k: v for k, v in r.items() if k not in ("seq", "age", "time", "sampled_at")}
    if isinstance(kept.get("status"), list):
        kept["status"] = [f for f in kept["status"] if f != "clock_unsynced"]
    return json.dumps(kept, sort_keys=True)


def readings(stores: dict[str, dict], db_seqs: dict[str, list[int]], db_rows: int, wire: dict[str, dict[int, set]]) -> dict:
    """Reading figures. `stores`: device -> read_store(); `db_seqs`: device -> seqs in the database
    (one per row); `db_rows`: rows in the readings table; `wire`: device -> seq -> set of contents seen."""
    sampled = delivered = lost = dropped = 0
    per_board_lost: dict[str, int] = {}
    for device, st in stores.items():
        have = {s for s in db_seqs.get(device, ()) if s < st["next_seq"]}
        missing = st["next_seq"] - len(have)
        sampled += st["next_seq"] + st["dropped"]
        delivered += len(have)
        dropped += st["dropped"]
        n = missing + st["dropped"]
        lost += n
        if n:
            per_board_lost[device] = n
    distinct = sum(len(set(v)) for v in db_seqs.values())
    conflicting = sum(1 for seqs in wire.values() for contents in seqs.values() if len(contents) > 1)
    return {
        "readings_sampled": sampled,
        "readings_delivered": delivered,
        "readings_lost": lost,
        "readings_dropped_by_store": dropped,
        "readings_duplicated_after_dedup": (db_rows - distinct) + conflicting,
        "readings_conflicting_on_wire": conflicting,
        "boards_with_losses": per_board_lost,
    }


def verdict(ledger: dict) -> list[str]:
    """What makes the run fail: every must-be-zero figure that is not, and boards not reporting."""
    bad = [f"{k} = {ledger[k]}" for k in MUST_BE_ZERO if ledger.get(k)]
    if ledger.get("boards_never_online"):
        bad.append(f"boards never online: {', '.join(ledger['boards_never_online'])}")
    ota = ledger.get("ota") or {}
    if ota.get("bricked"):
        bad.append(f"boards not back after the update wave: {', '.join(ota['bricked'])}")
    if ota.get("errors"):
        bad.append(f"ota rollout errors: {len(ota['errors'])}")
    if ledger.get("harness_errors"):
        bad.append(f"harness errors: {len(ledger['harness_errors'])}")
    return bad


def format_ledger(ledger: dict) -> str:
    """The ledger as a person reads it."""
    w = []
    add = w.append
    add(f"soak ledger: {ledger['boards']} boards, {ledger['minutes']} min, profile {ledger['profile']}, seed {ledger['seed']}")
    add(f"  fleet: {', '.join(f'{n} {k}' for k, n in ledger['fleet'].items())}; {ledger['boards_tls']} on TLS; "
        f"bridge subscriptions: {'shared, group ' + ledger['bridge_group'] if ledger.get('bridge_group') else 'plain'}")
    add("readings (sampled = the boards' own store counters)")
    for k in ("readings_sampled", "readings_delivered", "readings_lost", "readings_dropped_by_store",
              "readings_duplicated_on_wire", "readings_resent_with_other_metadata", "readings_duplicated_after_dedup",
              "readings_conflicting_on_wire"):
        add(f"  {k:<36} {ledger.get(k, 0):>9}")
    add("commands")
    for k in ("commands_sent", "commands_acked", "commands_executed", "commands_retried", "commands_acked_as_replay",
              "commands_never_acked", "commands_double_executed"):
        add(f"  {k:<36} {ledger[k]:>9}")
    add(f"  attacks sent: {json.dumps(ledger['attacks_sent'])}")
    for k in ("forged_accepted", "replayed_accepted", "cross_device_accepted"):
        add(f"  {k:<36} {ledger[k]:>9}")
    add("security probes")
    add(f"  rounds {ledger['probe_rounds']}, probes run {ledger['probes_run']}, unauthorised_accepted {ledger['unauthorised_accepted']}")
    for name in ledger["probes_let_in"]:
        add(f"  LET IN: {name}")
    add("boards")
    for k in ("crash_loops", "boards_with_task_restarted", "memory_errors", "unexpected_resets"):
        add(f"  {k:<36} {ledger[k]:>9}")
    peak = ledger["heap_peak_bytes"]
    if peak:
        add("  heap peak (ESP32-equivalent bytes, by board kind): "
            + ", ".join(f"{k} {v}" for k, v in sorted(ledger["heap_peak_by_kind"].items())))
    add(f"faults injected ({sum(ledger['faults_injected'].values())}: {ledger['faults_planned']} planned, "
        f"{ledger['faults_injected'].get('power_cut_during_ota', 0)} on updating boards; "
        f"{ledger['power_cuts_during_write']} power cuts caught a store write): "
        + ", ".join(f"{k} {v}" for k, v in sorted(ledger["faults_injected"].items())))
    if ledger.get("full_flash_modes"):
        why = ledger.get("full_flash_tmpfs")
        add("  full_flash ran as: " + ", ".join(f"{k} {v}" for k, v in sorted(ledger["full_flash_modes"].items()))
            + (f" (no tmpfs flash: {why})" if why else "")
            + " [enospc: writes refused on a tmpfs flash filled to 0 free; to_reserve: filled to the store's reserve]")
    lw = ledger.get("lorawan")
    if lw:
        add(f"lorawan ({lw['boards']} boards, network server and uplink service on the broker): uplinks {lw['uplinks_sent']}, "
            f"lost in the air {lw['uplinks_lost_in_the_air']}, join requests unanswered {lw['join_requests_unanswered']}, "
            f"joins {lw['network_server_joins']}, ledger downlinks {lw['ledgers_sent']}, "
            f"duplicates dropped by the uplink service {lw['duplicates_dropped_by_uplink_service']}, "
            f"uplink service restarts (on its state file) {lw.get('uplink_service_restarts', 0)}; "
            f"commands {json.dumps(ledger.get('commands_lorawan', {}))}")
    ota = ledger.get("ota")
    if ota:
        add(f"ota: release {ota['release']} ({ota['version']}) rolled out to {ota['boards_targeted']} boards mid-run, "
            f"{ota['start_commands_sent']} start commands, committed on {ota['committed']}, "
            f"{len(ota['power_cuts_during_update'])} power cuts during an update; boards by release at the end "
            f"{json.dumps(ota['boards_ended_on_release'])}; bricked {len(ota['bricked'])}")
    h = ledger["host"]
    add(f"host: {h['cpus']} CPUs, CPU busy mean {h['cpu_busy_mean_pct']} % peak {h['cpu_busy_peak_pct']} %, "
        f"load peak {h['load_peak']}, memory used peak {h['mem_used_peak_mb']} MB of {h['mem_total_mb']} MB")
    add(f"timings: {json.dumps(ledger['timings_s'])}")
    for e in ledger.get("harness_errors", ())[:20]:
        add(f"  harness error: {e}")
    bad = verdict(ledger)
    add("RESULT: " + ("PASS (nothing lost, nothing run twice, no one let in)" if not bad else "FAIL: " + "; ".join(bad)))
    return "\n".join(w)


class HostLoad:
    """Host CPU and memory, sampled every few seconds from /proc (the whole machine: the boards,
    the broker, the bridge and whatever else it runs)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.busy: list[float] = []
        self.mem_used: list[int] = []
        self.load: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-host", daemon=True)

    @staticmethod
    def _cpu() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)

    @staticmethod
    def _mem() -> tuple[int, int]:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0])
        return info["MemTotal"] - info.get("MemAvailable", info["MemFree"]), info["MemTotal"]

    def _run(self) -> None:
        last = self._cpu()
        while not self._stop.wait(self.every_s):
            now = self._cpu()
            if now[1] > last[1]:
                self.busy.append(100.0 * (now[0] - last[0]) / (now[1] - last[1]))
            last = now
            self.mem_used.append(self._mem()[0])
            self.load.append(os.getloadavg()[0])

    def start(self) -> HostLoad:
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(10)
        total = self._mem()[1]
        return {
            "cpus": os.cpu_count(),
            "cpu_busy_mean_pct": round(sum(self.busy) / len(self.busy), 1) if self.busy else None,
            "cpu_busy_peak_pct": round(max(self.busy), 1) if self.busy else None,
            "load_peak": round(max(self.load), 2) if self.load else None,
            "mem_used_peak_mb": max(self.mem_used) // 1024 if self.mem_used else None,
            "mem_total_mb": total // 1024,
        }


def build(campaign, stores, office, stream, never, plan, host) -> dict:
    """The ledger of a finished `soak.Campaign` (see the module docstring for how each figure is counted)."""
    from host_tools.codec.decoder import decode

    db_seqs, db_rows = campaign._db_seqs()
    wire: dict[str, dict[int, set]] = {}
    raw: dict[tuple[str, int], set] = {}
    resent_unsynced: set = set()  # copies whose only difference is the uplink's metadata
    wire_copies = 0
    heap: dict[str, int] = {}
    for m in office.matching("lanterne/v1/*/*/up"):
        device = m.topic.split("/")[3]
        try:
            frame = decode(m.payload)
        except Exception:
            continue
        for r in frame["readings"]:
            content = reading_content(r)
            seqs = wire.setdefault(device, {})
            if r["seq"] in seqs:
                wire_copies += 1
                if json.dumps({k: v for k, v in r.items() if k not in ("seq", "age")}, sort_keys=True) not in raw.get((device, r["seq"]), ()):
                    resent_unsynced.add((device, r["seq"]))
            raw.setdefault((device, r["seq"]), set()).add(json.dumps({k: v for k, v in r.items() if k not in ("seq", "age")}, sort_keys=True))
            seqs.setdefault(r["seq"], set()).add(content)
    if campaign.lora is not None:  # the LoRaWAN boards' readings as the uplink service received them, before its dedup
        for device, seqs in campaign.lora.wire().items():
            for seq, copies in seqs.items():
                wire.setdefault(device, {})[seq] = set(copies)
                wire_copies += sum(copies.values()) - 1
    by_device = {b.device: b for b in campaign.boards}
    for m in office.matching("lanterne/v1/*/*/status"):
        with contextlib.suppress(ValueError):
            doc = json.loads(m.payload)
            d = doc.get("device")
            if d in by_device and isinstance(doc.get("heap_alloc"), int):
                heap[d] = max(heap.get(d, 0), doc["heap_alloc"])
    ledger: dict = {
        "boards": campaign.n, "minutes": campaign.minutes, "profile": campaign.profile.name, "seed": campaign.seed,
        "fleet": {k: sum(1 for b in campaign.boards if b.kind == k) for k in sorted({b.kind for b in campaign.boards})},
        "boards_tls": sum(b.tls for b in campaign.boards),
        "bridge_group": campaign.profile.bridge_group,
    }
    ledger.update(readings(stores, db_seqs, db_rows, wire))
    ledger["readings_duplicated_on_wire"] = wire_copies
    ledger["readings_resent_with_other_metadata"] = len(resent_unsynced - {
        (d, q) for d, seqs in wire.items() for q, c in seqs.items() if len(c) > 1})
    ledger["conflicts"] = [{"device": d, "seq": q, "contents": sorted(c)} for d, seqs in wire.items()
                           for q, c in seqs.items() if len(c) > 1][:20]
    ledger["readings_duplicates_dropped_by_bridge"] = campaign.bridge_duplicates
    ledger["readings_still_on_boards"] = sum(
        len(set(st["pending"]) - set(db_seqs.get(d, ()))) for d, st in stores.items())
    # Each lost reading, with where it was last seen: on the wire (the broker had it, the database
    # does not), still in the board's store when it was stopped, or nowhere after the board.
    lost = []
    for d, st in stores.items():
        have = set(db_seqs.get(d, ()))
        for seq in range(st["next_seq"]):
            if seq not in have and len(lost) < 200:
                lost.append({"device": d, "seq": seq, "on_wire": seq in wire.get(d, {}),
                             "in_store_at_stop": seq in st["pending"]})
    ledger["lost_readings"] = lost
    ledger["fault_log"] = [{"at_s": p.at_s, "kind": p.kind, "device": None if p.board is None else campaign.boards[p.board].device,
                            "duration_s": p.duration_s, **p.arg} for p in plan]
    ledger.update(stream.outcome({b.device: b.executed for b in campaign.boards}))
    let_in = sorted({name if v is True else f"{name} ({v})" for r in campaign.probe_results for name, v in r.items() if v})
    ledger["probe_rounds"] = len(campaign.probe_results)
    ledger["probes_run"] = sum(len(r) for r in campaign.probe_results)
    ledger["probes_let_in"] = let_in
    ledger["unauthorised_accepted"] = sum(sum(bool(v) for v in r.values()) for r in campaign.probe_results)
    unexpected = {b.device: sum(k in ("wdt", "panic") for k in b.handle.board.reset_log) for b in campaign.boards}
    ledger["unexpected_resets"] = sum(unexpected.values())
    ledger["crash_loops"] = sum(1 for n in unexpected.values() if n >= 3)
    ledger["boards_with_task_restarted"] = sum(1 for b in campaign.boards if b.task_restarted)
    ledger["memory_errors"] = sum(b.memory_errors for b in campaign.boards)
    ledger["console_bytes_unread"] = sum(b.console_lost for b in campaign.boards)
    ledger["boards_never_online"] = never
    for b in campaign.boards:  # LoRaWAN boards log their statuses (airtime): read from their consoles
        if b.heap_peak:
            heap[b.device] = max(heap.get(b.device, 0), b.heap_peak)
    ledger["heap_peak_bytes"] = {d: by_device[d].handle.board.esp32_heap(v) for d, v in sorted(heap.items())}
    peak_kind: dict[str, int] = {}
    for d, v in ledger["heap_peak_bytes"].items():
        k = by_device[d].kind
        peak_kind[k] = max(peak_kind.get(k, 0), int(v))
    ledger["heap_peak_by_kind"] = peak_kind
    ledger["heap_scale"] = sorted({b.handle.board.heap_scale() for b in campaign.boards})
    ledger["faults_injected"] = dict(sorted(campaign.injected.items()))
    if campaign.lora is not None:
        ledger["lorawan"] = campaign.lora.figures()
    ledger["faults_planned"] = len(plan)
    # full_flash: "enospc" (the board's tmpfs flash filled to 0 free: writes refused) or "to_reserve"
    # (filled to the store's reserve: the host refused the mount, `full_flash_tmpfs` says why)
    modes: dict[str, int] = {}
    for p in plan:
        if p.kind == "full_flash" and "mode" in p.arg:
            modes[p.arg["mode"]] = modes.get(p.arg["mode"], 0) + 1
    ledger["full_flash_modes"] = modes
    ledger["full_flash_tmpfs"] = next((p.arg["why"] for p in plan if p.kind == "full_flash" and "why" in p.arg), None)
    ledger["power_cuts_during_write"] = sum(1 for p in plan if p.arg.get("during_write"))
    ledger["host"] = host
    ledger["timings_s"] = dict(campaign.timings)
    ledger["harness_errors"] = campaign.errors
    ledger["ok"] = not verdict(ledger)
    return ledger
