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
  a power cut: de-duplication would keep one and silently drop the other reading).
- `readings_duplicated_on_wire`: copies the back office received and de-duplicated (resends after
  a lost PUBACK, broker redeliveries): expected, and shown.
"""

from __future__ import annotations

import json
import sys

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
    if ledger.get("harness_errors"):
        bad.append(f"harness errors: {len(ledger['harness_errors'])}")
    return bad


def format_ledger(ledger: dict) -> str:
    """The ledger as a person reads it."""
    w = []
    add = w.append
    add(f"soak ledger: {ledger['boards']} boards, {ledger['minutes']} min, profile {ledger['profile']}, seed {ledger['seed']}")
    add(f"  fleet: {', '.join(f'{n} {k}' for k, n in ledger['fleet'].items())}; {ledger['boards_tls']} on TLS")
    add("readings (sampled = the boards' own store counters)")
    for k in ("readings_sampled", "readings_delivered", "readings_lost", "readings_dropped_by_store",
              "readings_duplicated_on_wire", "readings_duplicated_after_dedup", "readings_conflicting_on_wire"):
        add(f"  {k:<36} {ledger[k]:>9}")
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
    add(f"faults injected ({sum(ledger['faults_injected'].values())} of {ledger['faults_planned']} planned; "
        f"{ledger['power_cuts_during_write']} power cuts caught a store write): "
        + ", ".join(f"{k} {v}" for k, v in sorted(ledger["faults_injected"].items())))
    h = ledger["host"]
    add(f"host: {h['cpus']} CPUs, CPU busy mean {h['cpu_busy_mean_pct']} % peak {h['cpu_busy_peak_pct']} %, "
        f"load peak {h['load_peak']}, memory used peak {h['mem_used_peak_mb']} MB of {h['mem_total_mb']} MB")
    add(f"timings: {json.dumps(ledger['timings_s'])}")
    for e in ledger.get("harness_errors", ())[:20]:
        add(f"  harness error: {e}")
    bad = verdict(ledger)
    add("RESULT: " + ("PASS (nothing lost, nothing run twice, no one let in)" if not bad else "FAIL: " + "; ".join(bad)))
    return "\n".join(w)
