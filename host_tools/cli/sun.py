"""`lanterne sun --lat LAT --lon LON --date YYYY-MM-DD [--json]`: the site's sun times, computed by the firmware.

The times come from `firmware/lanterne/sun.py` run on the MicroPython unix port,
so an installer checking a site's lamp profile sees exactly what the board will
compute. Times are UTC, ISO 8601. Near the poles an event may not happen that day:
the answer then says so (polar day / polar night, or no civil night) instead of
giving a time.
"""

from __future__ import annotations

import datetime as dt
import json

from host_tools.cli import CommandError
from host_tools.runtime import unix_port

_SCRIPT = """
import json
from lanterne import sun
print(json.dumps([sun.events({y}, {m}, {d}, {lat!r}, {lon!r}), sun.events({y}, {m}, {d}, {lat!r}, {lon!r}, sun.CIVIL)]))
"""

SUN_STATE = {0: "rises_and_sets", 1: "polar_day", -1: "polar_night"}
CIVIL_STATE = {0: "normal", 1: "light_all_night", -1: "dark_all_day"}
NOTES = {
    ("sun", 1): "polar day: the sun stays above the horizon all day (no sunrise, no sunset)",
    ("sun", -1): "polar night: the sun stays below the horizon all day (no sunrise, no sunset)",
    ("civil", 1): "no civil night: the sun stays above -6 deg all day (no civil dawn, no civil dusk)",
    ("civil", -1): "no civil twilight: the sun stays below -6 deg all day (no civil dawn, no civil dusk)",
}


def configure(p):
    p.add_argument("--lat", required=True, type=float, help="latitude in degrees, north positive (-90..90)")
    p.add_argument("--lon", required=True, type=float, help="longitude in degrees, east positive (-180..180)")
    p.add_argument("--date", required=True, help="the date, YYYY-MM-DD (events around that day's solar noon)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def compute(lat: float, lon: float, date: dt.date) -> dict:
    """Sun times for a site and date, as the firmware computes them (on the unix port)."""
    if not -90.0 <= lat <= 90.0:
        raise CommandError(f"latitude {lat} is outside -90..90 degrees")
    if not -180.0 <= lon <= 180.0:
        raise CommandError(f"longitude {lon} is outside -180..180 degrees")
    code = _SCRIPT.format(y=date.year, m=date.month, d=date.day, lat=float(lat), lon=float(lon))
    (sun_state, rise, set_), (civil_state, dawn, dusk) = unix_port.run_json(code)
    midnight = dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc)

    def iso(seconds):
        if seconds is None:
            return None
        return (midnight + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    notes = [NOTES[k] for k in (("sun", sun_state), ("civil", civil_state)) if k in NOTES]
    return {
        "date": date.isoformat(),
        "lat": lat,
        "lon": lon,
        "sunrise": iso(rise),
        "sunset": iso(set_),
        "civil_dawn": iso(dawn),
        "civil_dusk": iso(dusk),
        "sun": SUN_STATE[sun_state],
        "civil_twilight": CIVIL_STATE[civil_state],
        "notes": notes,
    }


def run(args) -> int:
    try:
        date = dt.date.fromisoformat(args.date)
    except ValueError:
        raise CommandError(f"date {args.date!r} is not YYYY-MM-DD", hint="e.g. --date 2024-06-21") from None
    result = compute(args.lat, args.lon, date)
    if args.json:
        print(json.dumps(result))
        return 0
    ns = "N" if args.lat >= 0 else "S"
    ew = "E" if args.lon >= 0 else "W"
    print(f"site {abs(args.lat):.4f} {ns}, {abs(args.lon):.4f} {ew} on {result['date']} (times in UTC)")
    why = {
        "sunrise": result["sun"].replace("_", " "),
        "civil_dawn": result["civil_twilight"].replace("_", " "),
    }
    why["sunset"], why["civil_dusk"] = why["sunrise"], why["civil_dawn"]
    for key in ("civil_dawn", "sunrise", "sunset", "civil_dusk"):
        print(f"  {key:<11} {result[key] or f'none ({why[key]})'}")
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0
