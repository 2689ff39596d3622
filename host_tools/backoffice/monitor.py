"""The fleet as the back office sees it: last status and last decoded reading of every device."""

from __future__ import annotations

import json
import threading
import time

from host_tools.codec.decoder import PayloadError, decode


class FleetView:
    def __init__(self):
        self.devices: dict[str, dict] = {}
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, t: float | None = None) -> None:
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
            elif kind == "up":
                try:
                    frame = decode(payload)
                except PayloadError as exc:
                    d["bad_frames"] += 1
                    d["last_error"] = str(exc)
                    return
                d["readings"] += len(frame["readings"])
                d["reading"] = frame["readings"][-1]

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [json.loads(json.dumps(d)) for _, d in sorted(self.devices.items())]

    def rows(self, now: float | None = None) -> list[list[str]]:
        now = now or time.time()
        out = []
        for d in self.snapshot():
            st = d.get("status", {})
            r = d.get("reading", {})
            parts = []
            for key, unit in (("temperature", "°C"), ("humidity", "%"), ("illuminance", "lx"), ("fill", "%"), ("lamp", "%"), ("voltage", "V")):
                if key in r:
                    parts.append(f"{r[key]:g}{unit}")
            out.append(
                [
                    d["device"],
                    d["site"],
                    st.get("state", "?"),
                    f"{now - d['last_seen']:.0f}s ago",
                    " ".join(parts) or "-",
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


COLUMNS = ["device", "site", "state", "last seen", "last reading", "backlog", "faults", "firmware", "update"]
