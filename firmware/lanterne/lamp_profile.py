"""Lamp schedule for local autonomy: a pure function of time, ambient light and a little state (MicroPython and CPython).

    profile = LampProfile(48.85, 2.35, utc_offset_min=60, dst="eu", steps=((23 * 60, 5 * 60, 50),))
    level = profile.level(now=time_utc_or_None, lux=light_lux_or_None, contact=link_up)   # percent, 0 = off
    profile.reason                                                     # why, for the status message

Decisions, in order:

1. A manual override from the back office (`override(level, until)`) wins while it
   lasts: until `until` (UTC seconds) when the clock is set; without a clock only
   while the back office is reachable (nothing else could end it).
2. Clock set (and a site): the astronomical schedule. On from dusk to dawn (the sun
   crossing `switch_elevation`, civil twilight -6 deg by default, shifted by
   `dusk_offset_min` / `dawn_offset_min`); during the night the dimming `steps`
   ((start, end, level) in local minutes since midnight, windows may wrap midnight;
   the lowest applicable level wins). With a photocell (`lux` given): within
   `photocell_window_min` of dusk or dawn the photocell decides the exact switching
   (a dark evening switches on early, a bright morning off early); in the day a
   dark photocell switches on (storm, eclipse); in the night it never switches off
   (the lamp lights its own photocell).
3. No clock: the photocell decides, at `on_level` ("failsafe-photocell").
4. No clock and no photocell: the lamp stays on at `failsafe_level` ("failsafe-on").

The photocell has hysteresis: dark below `photocell_on_lx`, light again only above
`photocell_off_lx`. Local time is UTC + `utc_offset_min`, plus one hour in summer
with `dst="eu"` (last Sunday of March 01:00 UTC to last Sunday of October 01:00 UTC).

The back office is never needed: given the time (kept by the RTC between syncs) the
schedule runs for days, months, on its own. `contact` only matters for overrides.
Dusk and dawn are computed once per local date (floats: a few ms), then cached.
"""

from lanterne import sun

SCHEDULE = "schedule"
DIMMED = "dimmed"
DAY = "day"
PHOTOCELL = "photocell"
OVERRIDE = "override"
FAILSAFE_PHOTOCELL = "failsafe-photocell"
FAILSAFE_ON = "failsafe-on"


def _last_sunday(year, month):
    """Day count (from 1970-01-01) of the last Sunday of `month`."""
    first_next = sun.days_from_civil(year + (month == 12), month % 12 + 1, 1)
    last = first_next - 1
    # 1970-01-01 was a Thursday: weekday with Monday = 0 is (days + 3) % 7
    return last - (last + 3 - 6) % 7


def utc_offset_s(now, base_min, dst):
    """Seconds to add to UTC `now` for local time."""
    offset = base_min * 60
    if dst == "eu":
        year = sun.civil_from_days(now // 86400)[0]
        start = _last_sunday(year, 3) * 86400 + 3600
        end = _last_sunday(year, 10) * 86400 + 3600
        if start <= now < end:
            offset += 3600
    return offset


class LampProfile:
    def __init__(
        self,
        lat=None,
        lon=None,
        *,
        utc_offset_min=0,
        dst="none",
        switch_elevation=sun.CIVIL,
        dusk_offset_min=0,
        dawn_offset_min=0,
        steps=((23 * 60, 5 * 60, 50),),
        on_level=100,
        failsafe_level=100,
        photocell_on_lx=30,
        photocell_off_lx=60,
        photocell_window_min=60,
    ):
        if dst not in ("none", "eu"):
            raise ValueError("dst is 'none' or 'eu'")
        if photocell_off_lx < photocell_on_lx:
            raise ValueError("photocell_off_lx must be >= photocell_on_lx (hysteresis)")
        for start, end, level in steps:
            if not (0 <= start < 1440 and 0 <= end < 1440 and 0 <= level <= 100):
                raise ValueError("a step is (start_min, end_min, level_percent) in local minutes 0..1439")
        self.lat = lat
        self.lon = lon
        self.utc_offset_min = utc_offset_min
        self.dst = dst
        self.switch_elevation = switch_elevation
        self.dusk_offset_min = dusk_offset_min
        self.dawn_offset_min = dawn_offset_min
        self.steps = tuple(steps)
        self.on_level = on_level
        self.failsafe_level = failsafe_level
        self.photocell_on_lx = photocell_on_lx
        self.photocell_off_lx = photocell_off_lx
        self.photocell_window_s = photocell_window_min * 60
        self.reason = FAILSAFE_ON
        self.dark = None  # photocell state (None until a first reading)
        self.night = None  # astronomical night (None without clock or site)
        self._override = None
        self._override_until = None
        self._day = None  # local day number of the cached events
        self._polar = sun.NORMAL
        self._dawn = 0
        self._dusk = 0

    # -- back-office override ---------------------------------------------------
    def override(self, level, until=None):
        """Hold `level` percent until `until` (UTC seconds; None: until cleared). `level=None` clears."""
        self._override = None if level is None else max(0, min(100, int(level)))
        self._override_until = until

    # -- inputs -------------------------------------------------------------------
    def _photocell(self, lux):
        if lux is None:
            return None
        if self.dark is None:
            self.dark = lux < (self.photocell_on_lx + self.photocell_off_lx) / 2
        elif lux < self.photocell_on_lx:
            self.dark = True
        elif lux > self.photocell_off_lx:
            self.dark = False
        return self.dark

    def _events(self, local_day):
        """Dawn and dusk (UTC seconds) around the local date `local_day`, cached per date."""
        if local_day != self._day:
            y, m, d = sun.civil_from_days(local_day)
            state, dawn, dusk = sun.events(y, m, d, self.lat, self.lon, self.switch_elevation)
            base = local_day * 86400
            self._polar = state
            if state == sun.NORMAL:
                self._dawn = base + dawn + self.dawn_offset_min * 60
                self._dusk = base + dusk + self.dusk_offset_min * 60
            self._day = local_day
        return self._polar

    def _step_level(self, local_min):
        level = self.on_level
        for start, end, step in self.steps:
            inside = start <= local_min < end if start <= end else (local_min >= start or local_min < end)
            if inside and step < level:
                level = step
        return level

    # -- the decision -------------------------------------------------------------------
    def level(self, now=None, lux=None, contact=True):
        """Lamp level in percent (0 = off) for UTC seconds `now` (None: clock not set), `lux` (None: no photocell)."""
        dark = self._photocell(lux)
        if self._override is not None:
            if now is not None and self._override_until is not None and now >= self._override_until:
                self._override = None
            elif now is not None or contact:
                self.reason = OVERRIDE
                return self._override
        if now is None or self.lat is None or self.lon is None:
            self.night = None
            if dark is not None:
                self.reason = FAILSAFE_PHOTOCELL
                return self.on_level if dark else 0
            self.reason = FAILSAFE_ON
            return self.failsafe_level
        offset = utc_offset_s(now, self.utc_offset_min, self.dst)
        local = now + offset
        polar = self._events(local // 86400)
        if polar == sun.NORMAL:
            night = now < self._dawn or now >= self._dusk
            near = abs(now - self._dawn) <= self.photocell_window_s or abs(now - self._dusk) <= self.photocell_window_s
        else:
            night = polar == sun.POLAR_NIGHT
            near = False
        self.night = night
        on = night
        self.reason = SCHEDULE if night else DAY
        if dark is not None and (near or not night) and dark != night:
            on = dark
            self.reason = PHOTOCELL
        if not on:
            return 0
        level = self._step_level((local % 86400) // 60)
        if level < self.on_level and self.reason == SCHEDULE:
            self.reason = DIMMED
        return level
