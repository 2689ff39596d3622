"""The fleet as the back office sees it: last status and last decoded reading of every device.

`capture_line(message)` is one line of `lanterne monitor --capture FILE`: what arrived, when
(the receive time) and on which topic, with its payload in hex, for later reports
(`lanterne energy --input FILE`, host_tools/backoffice/energy_sources.py reads it)."""

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
        if len(parts) != 5 or parts[0] != "lanterne" or parts[1] != "v1":
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
                # its sampling time (receive time - age): snapshots of cumulative counters give energy
                d["reading_at"] = round(t - d["reading"].get("age", 0), 3)

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
            for key, unit in (("temperature", "°C"), ("humidity", "%"), ("illuminance", "lx"), ("fill", "%"), ("lamp", "%"),
                              ("voltage", "V"), ("pm2_5", " PM2.5"), ("pm10", " PM10"), ("laeq", " dB(A)"),
                              ("lamax", " dB(A) max")):
                if key in r:
                    parts.append(f"{r[key]:g}{unit}")
            if "energy" in r:
                parts.append(f"{r['energy'] / 1000:g} kWh {r.get('burning_hours', 0):g} h")
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
                ]
            )
        return out


COLUMNS = ["device", "site", "state", "last seen", "last reading", "backlog", "faults", "firmware"]


def capture_line(topic: str, payload: bytes, t: float) -> str:
    """A message as one JSON line: {"t": receive time (Unix s), "topic", "payload": hex}."""
    return json.dumps({"t": round(t, 3), "topic": topic, "payload": bytes(payload).hex()})
