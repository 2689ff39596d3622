"""Astronomical clock: sunrise, sunset and civil twilight for a site and a date, pure Python (MicroPython and CPython).

    state, rise, set_ = sun.events(2024, 6, 21, 48.85, 2.35)             # sunrise / sunset
    state, dawn, dusk = sun.events(2024, 6, 21, 48.85, 2.35, sun.CIVIL)   # civil twilight

`rise` and `set_` are seconds after 00:00 UTC of the given date (they can be
negative or beyond 86 400 far from Greenwich: the events are those around the
site's solar noon of that date). `state` is NORMAL, or POLAR_DAY (the sun stays
above that elevation all day: no event) or POLAR_NIGHT (it stays below): then the
times are None. Never raises for a valid latitude and longitude.

The sun's position follows NOAA's solar calculator (the equations of Jean Meeus,
"Astronomical Algorithms", ch. 25 and 28: geometric mean longitude and anomaly,
equation of centre, apparent longitude with nutation, obliquity, equation of
time). An event's hour angle comes from the altitude equation and is refined three
times with the sun's position at the event itself, which keeps high latitudes
within the USNO tables' minute. Sunrise/sunset are for the sun's centre at
-0.833 deg (34' refraction plus 16' semi-diameter, the almanac convention), civil
twilight at -6 deg.

Written for single-precision floats (the ESP32 port): times are carried as an
integer day count plus a fraction of a day, and angles are reduced before they are
combined, so a float32 costs well under a second of time.
"""

import math

SUNRISE = -0.833  # elevation of the sun's centre at sunrise and sunset, degrees
CIVIL = -6.0  # civil twilight (dawn / dusk)
NAUTICAL = -12.0

NORMAL = 0
POLAR_DAY = 1  # the sun stays above the elevation all day
POLAR_NIGHT = -1  # the sun stays below the elevation all day

_RAD = math.pi / 180.0
_DAYS_1970_TO_2000 = 10957


def days_from_civil(year, month, day):
    """Days from 1970-01-01 to a proleptic Gregorian date (negative before)."""
    # shift the year to start in March so February's leap day comes last
    y = year - 1 if month <= 2 else year
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (month + 9) % 12  # March = 0
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days):
    """(year, month, day) of a day count from 1970-01-01."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def _position(day2000, fraction):
    """(declination in degrees, equation of time in minutes) at `fraction` of UT day `day2000` after 2000-01-01."""
    # Julian centuries from J2000.0 (2000-01-01 12:00); day2000 is an int, fraction a small float
    t = ((day2000 - 0.5) + fraction) / 36525.0
    l0 = math.fmod(280.46646 + t * (36000.76983 + t * 0.0003032), 360.0)
    m = math.fmod(357.52911 + t * (35999.05029 - 0.0001537 * t), 360.0)
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    mr = m * _RAD
    c = (
        math.sin(mr) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * mr) * (0.019993 - 0.000101 * t)
        + math.sin(3 * mr) * 0.000289
    )
    omega = (125.04 - 1934.136 * t) * _RAD
    apparent = (l0 + c - 0.00569 - 0.00478 * math.sin(omega)) * _RAD
    obliquity = (
        23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0 + 0.00256 * math.cos(omega)
    ) * _RAD
    declination = math.asin(math.sin(obliquity) * math.sin(apparent))
    y = math.tan(obliquity / 2.0)
    y *= y
    l0r = l0 * _RAD
    eot = (
        y * math.sin(2 * l0r)
        - 2 * e * math.sin(mr)
        + 4 * e * y * math.sin(mr) * math.cos(2 * l0r)
        - 0.5 * y * y * math.sin(4 * l0r)
        - 1.25 * e * e * math.sin(2 * mr)
    )
    return declination / _RAD, 4.0 * eot / _RAD


def _cos_hour_angle(lat, declination, elevation):
    la = lat * _RAD
    d = declination * _RAD
    return (math.sin(elevation * _RAD) - math.sin(la) * math.sin(d)) / (math.cos(la) * math.cos(d))


def events(year, month, day, lat, lon, elevation=SUNRISE):
    """(state, rising, setting): seconds after 00:00 UTC of the date when the sun's centre crosses `elevation`."""
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise ValueError("latitude must be within -90..90 and longitude within -180..180 degrees")
    # at the poles the hour angle is undefined; a hair off the pole gives the same answer
    if lat > 89.99:
        lat = 89.99
    elif lat < -89.99:
        lat = -89.99
    day2000 = days_from_civil(year, month, day) - _DAYS_1970_TO_2000
    # first guess: the sun's position at the site's mean solar noon
    noon_min = 720.0 - 4.0 * lon
    declination, eot = _position(day2000, noon_min / 1440.0)
    cos_h = _cos_hour_angle(lat, declination, elevation)
    if cos_h > 1.0:
        return POLAR_NIGHT, None, None
    if cos_h < -1.0:
        return POLAR_DAY, None, None
    out = [0, 0]
    for i, sign in ((0, -1.0), (1, 1.0)):
        minutes = noon_min - eot + sign * 4.0 * math.acos(cos_h) / _RAD
        for _ in range(3):
            dec, eq = _position(day2000, minutes / 1440.0)
            c = _cos_hour_angle(lat, dec, elevation)
            c = 1.0 if c > 1.0 else -1.0 if c < -1.0 else c
            minutes = noon_min - eq + sign * 4.0 * math.acos(c) / _RAD
        out[i] = int(minutes * 60.0 + 0.5) if minutes >= 0 else -int(-minutes * 60.0 + 0.5)
    return NORMAL, out[0], out[1]


def solar_noon(year, month, day, lon):
    """Seconds after 00:00 UTC of the date when the sun crosses the site's meridian."""
    day2000 = days_from_civil(year, month, day) - _DAYS_1970_TO_2000
    minutes = 720.0 - 4.0 * lon
    for _ in range(2):
        _, eot = _position(day2000, minutes / 1440.0)
        minutes = 720.0 - 4.0 * lon - eot
    return int(minutes * 60.0 + 0.5) if minutes >= 0 else -int(-minutes * 60.0 + 0.5)
