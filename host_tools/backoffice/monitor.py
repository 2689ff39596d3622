"""The fleet as the back office sees it: last status and last decoded reading of every device,
and when the next reading and the next status are due.

A device's periods come from its status (`sample_period_s`, `status_period_s`, when its firmware
reports them), else from its config in the fleet registry, else from the firmware's defaults
(the config schema's: a reading every 60 s, a status every 300 s). The next reading is due one
sample period after the last one seen; before any, within one period of the moment the monitor
started (the board's schedule is not known yet). The same for the status: a retained status
was sent at some unknown time before the monitor subscribed, so only a live one dates it.

`capture_line(topic, payload, t)` is one line of `lanterne monitor --capture FILE`: what arrived,
when (the receive time) and on which topic, with its payload in hex, for later reports
(`lanterne energy --input FILE`; host_tools/backoffice/energy_sources.py reads it).
"""

from __future__ import annotations

import json
import math
import threading
import time

from host_tools.codec.decoder import PayloadError, decode
from host_tools.fleet.config import firmware_config

PERIOD_FIELDS = ("sample_period_s", "status_period_s")
# Reading fields shown in the table, their unit and the decimals shown (never more than the
# payload resolves, docs/payload.md); illuminance is logarithmic (~3.7 % steps): three significant digits.
SHOWN = (("temperature", "°C", 1), ("humidity", "%", 1), ("illuminance", "lx", None), ("fill", "%", 0),
         ("lamp", "%", 0), ("voltage", "V", 2), ("pm2_5", " PM2.5", 0), ("pm10", " PM10", 0), ("laeq", " dB(A)", 1),
         ("lamax", " dB(A) max", 1), ("energy", " Wh", 0), ("burning_hours", " h lit", 2))
COLUMNS = ["device", "site", "state", "last seen", "last reading", "next reading", "next status", "backlog", "faults", "firmware",
           "update"]  # fmt: skip


def default_periods() -> dict[str, int]:
    """The firmware's defaults for the periods (its config schema)."""
    schema = firmware_config().SCHEMA
    return {k: schema[k][1] for k in PERIOD_FIELDS}


def format_value(value: float, decimals: int | None) -> str:
    """`value` rounded to what its field resolves: `decimals` places, or 3 significant digits (None)."""
    if decimals is None:
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        places = 2 - math.floor(math.log10(abs(value)))  # negative: round to tens, hundreds ...
        return f"{round(value, places):.{max(places, 0)}f}"
    return f"{value:.{decimals}f}"


def span(seconds: float) -> str:
    """A duration as a person reads it: 45s, 5m, 2h."""
    s = abs(seconds)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h"


class FleetView:
    """What the monitor knows of each device. `periods`: each device's config from the registry."""

    def __init__(self, periods: dict[str, dict] | None = None, started: float | None = None):
        self.devices: dict[str, dict] = {}
        self.registry = {d: {k: v for k, v in (c or {}).items() if k in PERIOD_FIELDS} for d, c in (periods or {}).items()}
        self.started = started if started is not None else time.time()
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, t: float | None = None, retain: bool = False) -> None:
        parts = topic.split("/")
        if parts[:2] != ["lanterne", "v1"] or len(parts) not in (5, 6):
            return
        if len(parts) == 6:  # lanterne/v1/{site}/{device}/ota/progress: an update's progress
            if parts[4:] == ["ota", "progress"]:
                try:
                    doc = json.loads(payload)
                except ValueError:
                    return
                with self._lock:
                    d = self.devices.setdefault(parts[3], {"device": parts[3], "site": parts[2], "readings": 0, "bad_frames": 0})
                    d["update"] = doc
                    d.setdefault("last_seen", t or time.time())
            return
        _, _, site, device, kind = parts
        t = t or time.time()
        with self._lock:
            d = self.devices.setdefault(device, {"device": device, "site": site, "readings": 0, "bad_frames": 0})
            d["last_seen"] = t
            if kind == "status":
                try:
                    st = json.loads(payload)
                except ValueError:
                    return
                d["status"] = st
                if not retain:  # a retained status was sent at some time before we subscribed
                    d["status_t"] = t
            elif kind == "up":
                try:
                    frame = decode(payload)
                except PayloadError as exc:
                    d["bad_frames"] += 1
                    d["last_error"] = str(exc)
                    return
                d["readings"] += len(frame["readings"])
                d["reading"] = frame["readings"][-1]
                d["reading_t"] = t
                # its sampling time (receive time - age): snapshots of cumulative counters give energy
                d["reading_at"] = round(t - d["reading"].get("age", 0), 3)

    def periods(self, d: dict) -> tuple[dict[str, int], str]:
        """The device's sample and status periods, and where they come from: status, registry or default."""
        st = d.get("status") or {}
        if all(isinstance(st.get(k), int) for k in PERIOD_FIELDS):
            return {k: st[k] for k in PERIOD_FIELDS}, "status"
        known = self.registry.get(d["device"], {})
        if known:
            return {**default_periods(), **known}, "registry"
        return default_periods(), "default"

    def expected(self, d: dict, now: float) -> dict:
        """When the next reading and status are due: seconds from `now` (negative: late), and whether
        that is a due time (`exact`) or an upper bound (nothing live seen yet)."""
        periods, source = self.periods(d)
        out = {"sample_period_s": periods["sample_period_s"], "status_period_s": periods["status_period_s"], "periods_from": source}
        offline = (d.get("status") or {}).get("state") == "offline"
        for name, t_key, p_key in (("reading", "reading_t", "sample_period_s"), ("status", "status_t", "status_period_s")):
            if offline:
                out[f"next_{name}_in_s"], out[f"next_{name}_exact"] = None, False
                continue
            last = d.get(t_key)
            base = last if last is not None else self.started
            out[f"next_{name}_in_s"] = round(base + periods[p_key] - now, 1)
            out[f"next_{name}_exact"] = last is not None
        return out

    def snapshot(self, now: float | None = None) -> list[dict]:
        now = now or time.time()
        with self._lock:
            devices = [json.loads(json.dumps(d)) for _, d in sorted(self.devices.items())]
        for d in devices:
            d["expected"] = self.expected(d, now)
        return devices

    def rows(self, now: float | None = None) -> list[list[str]]:
        now = now or time.time()
        out = []
        for d in self.snapshot(now):
            st = d.get("status", {})
            r = d.get("reading", {})
            parts = [f"{format_value(r[key], decimals)}{unit}" for key, unit, decimals in SHOWN
                     if isinstance(r.get(key), int | float)]
            e = d["expected"]
            out.append(
                [
                    d["device"],
                    d["site"],
                    st.get("state", "?"),
                    f"{span(now - d['last_seen'])} ago",
                    " ".join(parts) or "-",
                    _due(e["next_reading_in_s"], e["next_reading_exact"], e["sample_period_s"]),
                    _due(e["next_status_in_s"], e["next_status_exact"], e["status_period_s"]),
                    str(st.get("backlog", "-")),
                    "; ".join(st.get("faults", [])) or "-",
                    st.get("fw", "?"),
                    update_text(d.get("update")),
                ]
            )
        return out


def update_text(doc: dict | None) -> str:
    """An update's progress record as the monitor shows it: "transfer 8/16 (0.2.0)", "committed 0.2.0"."""
    if not doc:
        return "-"
    state = doc.get("state", "?")
    rel = doc.get("release") or doc.get("from") or ""
    if state == "transfer" and "total" in doc:
        return f"transfer {doc.get('done', 0)}/{doc['total']} ({rel})"
    if state in ("refused", "rolled_back"):
        return f"{state.replace('_', ' ')} {rel}: {doc.get('reason', '?')}"
    return f"{state} {rel}".strip()


def _due(in_s: float | None, exact: bool, period: int) -> str:
    if in_s is None:
        return "- (offline)"
    every = f"(every {span(period)})"
    if in_s < 0:
        return f"late {span(-in_s)} {every}"
    return f"{'in' if exact else 'within'} {span(in_s)} {every}"


def plain_table(rows: list[list[str]], columns: list[str] = COLUMNS) -> str:
    """The table as plain text for a pipe or a file: every cell whole, columns aligned, no width limit."""
    table = [columns, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def capture_line(topic: str, payload: bytes, t: float) -> str:
    """A message as one JSON line: {"t": receive time (Unix s), "topic", "payload": hex}."""
    return json.dumps({"t": round(t, 3), "topic": topic, "payload": bytes(payload).hex()})
