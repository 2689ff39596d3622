"""The savings report: what the lamps used, what they would have used at full power from dusk to
dawn, and what that saved in kWh, euros and CO2; burning hours against the night's hours.

    from host_tools.backoffice.energy import Options, report
    from host_tools.backoffice.energy_sources import open_source
    rep = report(open_source("uplinks.jsonl").series(), Options(positions={"lamp-1": (45.76, 4.84)}))

The model (docs/energy.md):
- Energy: the boards' counters are cumulative and never go back, so the energy between two readings
  is the difference of their `energy`, whatever was lost in between. A difference that is
  negative (a board whose counters were lost) starts the lamp again from there: it is counted as a
  reset, not as energy. Each interval between readings is shared out among the nights it overlaps
  in proportion to the dark time in each (a lamp burns at night), or to time if it has none.
- Baseline: the same lamp at its rated power from dusk to dawn, over the time its readings cover.
  Dusk and dawn come from the firmware's sun module (`firmware/lanterne/sun.py`, run here on
  CPython) at the lamp's position: civil twilight (-6 deg) by default, where the lamps' own
  profile switches, or sunset/sunrise. Polar night counts as night, polar day has none.
- Burning hours against the night: in each interval, burning time up to the interval's night
  hours is night burning, the rest was lit by day; night hours not burnt were dark by night.
- Nights: the night of D runs from local mean solar noon of D to that of D + 1 at the lamp's
  longitude, so a night is never cut in two.
- Rated power: the registry's `lamp_rated_w`, else the lamp's status (`energy.rated_w`), else the
  metered energy per burning hour between readings at 100 %; else no baseline for that lamp.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from host_tools.backoffice.energy_sources import LampSeries
from host_tools.runtime import firmware_module

# Defaults (docs/energy.md, "Defaults and their sources"):
TARIFF_EUR_KWH = 0.2016  # the regulated tarif bleu's kWh, option base, incl. taxes, from 1 Feb 2025
CO2_G_KWH = 32.0  # French electricity production in 2023 (RTE, Bilan électrique 2023)
TWILIGHTS = {"civil": -6.0, "sunset": -0.833}
DAY = 86400.0
RESOLUTION_S = 40.0  # the burning-hours counter's 0.01 h, and a 2 s tick: below it, no lit-by-day / dark-by-night


@dataclass
class Options:
    since: float | None = None  # Unix seconds; None: from the first reading
    until: float | None = None  # exclusive; None: to the last reading
    nights: tuple[dt.date, dt.date] | None = None  # or whole nights, first and last (each lamp's noon to noon)
    site: str | None = None
    tariff: float = TARIFF_EUR_KWH  # EUR per kWh
    co2: float = CO2_G_KWH  # g CO2 per kWh
    twilight: str = "civil"
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)  # device -> (lat, lon)
    default_position: tuple[float, float] | None = None  # for lamps without one
    rated_w: dict[str, float] = field(default_factory=dict)  # device -> W (the registry's)


class ReportError(ValueError):
    """The report cannot be made as asked (no position for a lamp, an empty period ...)."""


@dataclass
class Totals:
    energy_wh: float = 0.0
    baseline_wh: float = 0.0
    covered_s: float = 0.0
    night_s: float = 0.0  # dusk-to-dawn time covered
    burning_s: float = 0.0
    day_burning_s: float = 0.0  # lit by day
    dark_night_s: float = 0.0  # dark by night

    def add(self, other: Totals) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


class Sky:
    """Dusk-to-dawn intervals at one position, from the firmware's sun module (cached per date)."""

    def __init__(self, lat: float, lon: float, elevation: float):
        self.lat, self.lon, self.elevation = lat, lon, elevation
        self.sun = firmware_module("sun")
        self._events: dict[int, tuple[int, float | None, float | None]] = {}
        self.noon_offset = 43200.0 - lon / 15.0 * 3600.0  # local mean solar noon, s after 00:00 UTC

    def _day(self, day: int):
        if day not in self._events:
            d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
            self._events[day] = self.sun.events(d.year, d.month, d.day, self.lat, self.lon, self.elevation)
        return self._events[day]

    def night_label(self, t: float) -> int:
        """The day number (since 1970-01-01) whose night `t` belongs to (noon to noon, local mean time)."""
        return math.floor((t - self.noon_offset) / DAY)

    def night(self, label: int) -> tuple[float, float]:
        """The dark part of the night of `label`: (dusk, dawn) in Unix seconds; equal when none."""
        noon = label * DAY + self.noon_offset
        state, _dawn, dusk = self._day(label)
        nstate, dawn, _dusk = self._day(label + 1)
        if state == self.sun.POLAR_DAY and nstate == self.sun.POLAR_DAY:
            return noon, noon
        start = label * DAY + dusk if state == self.sun.NORMAL else (noon if state == self.sun.POLAR_NIGHT else noon + DAY / 2)
        end = (label + 1) * DAY + dawn if nstate == self.sun.NORMAL else (
            noon + DAY if nstate == self.sun.POLAR_NIGHT else noon + DAY / 2)
        start, end = max(start, noon), min(end, noon + DAY)
        return (start, end) if end > start else (noon, noon)

    def pieces(self, a: float, b: float):
        """[a, b) cut at the night boundaries: (label, start, end, dusk, dawn) each."""
        t = a
        while t < b:
            label = self.night_label(t)
            end = min(b, (label + 1) * DAY + self.noon_offset)
            yield (label, t, end, *self.night(label))
            t = end


def _dark(t0: float, t1: float, dusk: float, dawn: float) -> float:
    return max(0.0, min(t1, dawn) - max(t0, dusk))


@dataclass
class LampReport:
    device: str
    site: str
    rated_w: float | None
    rated_source: str
    lat: float
    lon: float
    totals: Totals
    nights: dict[int, Totals]
    readings: int
    resets: int
    longest_gap_s: float
    source: str | None  # the meter: metered, rated, none (from its status)
    fault_from: float | None = None  # the first reading in the window with lamp_fault
    fault_readings: int = 0


def _label(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


def _window(sky: Sky, opts: Options) -> tuple[float, float]:
    if opts.nights is not None:
        first, last = opts.nights
        return _label(first) * DAY + sky.noon_offset, (_label(last) + 1) * DAY + sky.noon_offset
    return (opts.since if opts.since is not None else -math.inf, opts.until if opts.until is not None else math.inf)


def _estimate_rated(series: LampSeries) -> float | None:
    """Metered Wh per burning hour between consecutive readings at 100 %."""
    wh = h = 0.0
    for p, q in zip(series.points, series.points[1:], strict=False):
        if p.lamp == 100 and q.lamp == 100 and None not in (p.energy_wh, q.energy_wh, p.burning_h, q.burning_h):
            de, dh = q.energy_wh - p.energy_wh, q.burning_h - p.burning_h
            if de >= 0 and dh > 0:
                wh, h = wh + de, h + dh
    return wh / h if h >= 0.5 else None  # half an hour at full power at least


def lamp_report(series: LampSeries, opts: Options) -> LampReport:
    pos = opts.positions.get(series.device) or opts.default_position
    if pos is None:
        raise ReportError(f"lamp {series.device} has no position: provision it with --lat/--lon (the registry), "
                          f"or give --lat and --lon")
    energy_status = (series.status or {}).get("energy") or {}
    rated, how = opts.rated_w.get(series.device), "registry"
    if not rated:
        rated, how = energy_status.get("rated_w"), "status"
    if not rated:
        rated, how = _estimate_rated(series), "estimated from readings at 100 %"
    if not rated:
        rated, how = None, "unknown"
    sky = Sky(pos[0], pos[1], TWILIGHTS[opts.twilight])
    lo, hi = _window(sky, opts)
    totals, nights = Totals(), {}
    resets = 0
    gap = 0.0
    pts = series.points
    for p, q in zip(pts, pts[1:], strict=False):
        if q.t <= lo or p.t >= hi or q.t <= p.t:
            continue
        de = None if p.energy_wh is None or q.energy_wh is None else q.energy_wh - p.energy_wh
        dh = None if p.burning_h is None or q.burning_h is None else (q.burning_h - p.burning_h) * 3600.0
        if (de is not None and de < 0) or (dh is not None and dh < 0):
            resets += 1  # the counters restarted (a board replaced, its counters lost): not energy
            continue
        gap = max(gap, q.t - p.t)
        parts = list(sky.pieces(p.t, q.t))
        span = q.t - p.t
        dark = sum(_dark(*x[1:]) for x in parts)
        light = span - dark
        burn = min(dh, span + RESOLUTION_S) if dh is not None else 0.0  # a count may land late
        # Burning time fills the dark first; what is beyond it was lit by day, what it leaves of the dark
        # was dark by night, unless within the counter's resolution (0.01 h) and a tick.
        night_burn = min(burn, dark)
        by_day_s = burn - night_burn if burn - night_burn > RESOLUTION_S else 0.0
        dark_s_total = dark - night_burn if dark - night_burn > RESOLUTION_S else 0.0
        night_burn = burn - by_day_s
        for label, t0, t1, dusk, dawn in parts:
            c0, c1 = max(t0, lo), min(t1, hi)  # the report's window
            if c1 <= c0:
                continue
            dark_s = _dark(c0, c1, dusk, dawn)
            light_s = (c1 - c0) - dark_s
            at_night = dark_s / dark if dark > 0 else (c1 - c0) / span
            by_day = light_s / light if light > 0 else at_night
            piece = Totals(
                energy_wh=(de or 0.0) * at_night,
                baseline_wh=(rated or 0.0) * dark_s / 3600.0,
                covered_s=c1 - c0,
                night_s=dark_s,
                burning_s=night_burn * at_night + by_day_s * by_day,
                day_burning_s=by_day_s * by_day,
                dark_night_s=dark_s_total * at_night,
            )
            nights.setdefault(label, Totals()).add(piece)
            totals.add(piece)
    faulted = [p.t for p in pts if p.fault and lo <= p.t < hi]
    return LampReport(series.device, series.site, rated, how, pos[0], pos[1], totals, nights, len(pts), resets, gap,
                      energy_status.get("source"), faulted[0] if faulted else None, len(faulted))


def _kwh(wh: float) -> float:
    return round(wh / 1000.0, 3)


def _row(t: Totals, opts: Options) -> dict:
    saved = t.baseline_wh - t.energy_wh
    return {
        "energy_kwh": _kwh(t.energy_wh),
        "baseline_kwh": _kwh(t.baseline_wh),
        "savings_kwh": _kwh(saved),
        "savings_pct": round(100.0 * saved / t.baseline_wh, 1) if t.baseline_wh > 0 else None,
        "savings_eur": round(saved / 1000.0 * opts.tariff, 2),
        "savings_co2_kg": round(saved / 1000.0 * opts.co2 / 1000.0, 3),
        "burning_h": round(t.burning_s / 3600.0, 2),
        "night_h": round(t.night_s / 3600.0, 2),
        "lit_by_day_h": round(t.day_burning_s / 3600.0, 2),
        "dark_by_night_h": round(t.dark_night_s / 3600.0, 2),
        "covered_h": round(t.covered_s / 3600.0, 2),
    }


def _date(label: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=label)).isoformat()


def report(series: list[LampSeries], opts: Options) -> dict:
    """The report as one JSON-ready dict: period, assumptions, sites, lamps, nights, notes."""
    if opts.twilight not in TWILIGHTS:
        raise ReportError(f"twilight {opts.twilight!r}: choose {' or '.join(TWILIGHTS)}")
    if opts.since is not None and opts.until is not None and opts.until <= opts.since:
        raise ReportError("--until must be after --since")
    if opts.nights is not None and opts.nights[1] < opts.nights[0]:
        raise ReportError("--until must not be before --since")
    chosen = [s for s in series if opts.site is None or s.site == opts.site]
    if not chosen:
        where = f" at site {opts.site}" if opts.site else ""
        raise ReportError(f"no lamp sent energy counters{where} in this input")
    lamps = [lamp_report(s, opts) for s in chosen]
    times = [p.t for s in chosen for p in s.points]
    if opts.nights is not None:
        start = _label(opts.nights[0]) * DAY + 43200.0 - lamps[0].lon / 15.0 * 3600.0
        end = start + (_label(opts.nights[1]) - _label(opts.nights[0]) + 1) * DAY
    else:
        start = opts.since if opts.since is not None else min(times)
        end = opts.until if opts.until is not None else max(times)
    notes = []
    sites: dict[str, Totals] = {}
    site_nights: dict[tuple[str, int], Totals] = {}
    lamp_rows = []
    for lr in lamps:
        sites.setdefault(lr.site, Totals()).add(lr.totals)
        for label, t in lr.nights.items():
            site_nights.setdefault((lr.site, label), Totals()).add(t)
        if lr.rated_w is None:
            notes.append(f"{lr.device}: no rated power (registry lamp_rated_w, its status, or an hour at 100 %): "
                         "no baseline, its savings are not counted")
        if lr.resets:
            notes.append(f"{lr.device}: its counters restarted {lr.resets} time(s) (a board replaced or its "
                         "counters lost): the energy across those gaps is not counted")
        if lr.fault_readings:
            notes.append(f"{lr.device}: lamp_fault in {lr.fault_readings} reading(s) from {_iso(lr.fault_from)} "
                         "(a dead LED module saves energy it should not: see its status)")
        if 0 < lr.totals.covered_s < 0.9 * (end - start):
            notes.append(f"{lr.device}: its readings cover {lr.totals.covered_s / 3600:.1f} h of the period")
        lamp_rows.append({"device": lr.device, "site": lr.site, "rated_w": lr.rated_w and round(lr.rated_w, 1),
                          "rated_source": lr.rated_source, "meter": lr.source, "lat": lr.lat, "lon": lr.lon,
                          **_row(lr.totals, opts), "readings": lr.readings, "resets": lr.resets,
                          "fault_readings": lr.fault_readings,
                          "longest_gap_h": round(lr.longest_gap_s / 3600.0, 2)})
    return {
        "period": {"since": _iso(start), "until": _iso(end), "twilight": opts.twilight},
        "tariff_eur_kwh": opts.tariff,
        "co2_g_kwh": opts.co2,
        "sites": [{"site": s, "lamps": sum(1 for lr in lamps if lr.site == s), **_row(t, opts)}
                  for s, t in sorted(sites.items())],
        "lamps": lamp_rows,
        "nights": [{"site": s, "night": _date(label), "energy_kwh": _kwh(t.energy_wh),
                    "baseline_kwh": _kwh(t.baseline_wh), "burning_h": round(t.burning_s / 3600.0, 2),
                    "night_h": round(t.night_s / 3600.0, 2)}
                   for (s, label), t in sorted(site_nights.items())],
        "notes": notes,
    }


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


CSV_COLUMNS = ["site", "device", "rated_w", "rated_source", "energy_kwh", "baseline_kwh", "savings_kwh", "savings_pct",
               "savings_eur", "savings_co2_kg", "burning_h", "night_h", "lit_by_day_h", "dark_by_night_h", "covered_h"]


def csv_rows(rep: dict) -> list[list]:
    """One row per lamp, then one per site (device '*'), in CSV_COLUMNS order."""
    rows = [[lamp.get(c) for c in CSV_COLUMNS] for lamp in rep["lamps"]]
    rows += [[s["site"], "*", None, None] + [s.get(c) for c in CSV_COLUMNS[4:]] for s in rep["sites"]]
    return rows
