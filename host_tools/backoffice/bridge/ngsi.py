"""FIWARE Smart Data Models in NGSI-LD: a device's latest reading and status as standard entities.

`entities(device, reading, state, precision)` returns the NGSI-LD entities (normalized form)
that one device stands for, from what its board measures:

| model | when | attributes (from) |
|---|---|---|
| WasteContainer | the board has a fill-level sensor | fillingLevel (fill / 100), temperature, status (`moved` on tamper, else `ok`) |
| Streetlight | the board drives a lamp | powerState (`off` 0 %, `low` dimmed, `on` 100 %), illuminanceLevel (lamp / 100), status (`defectiveLamp` on a lamp fault, `columnIssue` on tamper, else `ok`) |
| WeatherObserved | environmental sensors (temperature, humidity, pressure, light) | temperature, relativeHumidity (humidity / 100), atmosphericPressure (hPa), illuminance (lx), dateObserved |
| AirQualityObserved | a reading carries particulate matter (`pm1`, `pm2_5`, `pm10`: payload v3) | pm1, pm25, pm10 (µg/m³), temperature, relativeHumidity, `reliability` 0.5 when the `pm_humid` flag says the PM sensor measured above its humidity limit, dateObserved |
| NoiseLevelObserved | a reading carries sound levels (`laeq`, `lamax`: payload v3) | LAeq, LAmax (dB(A)), dateObservedFrom / dateObservedTo (the sampling period before the reading) |

Every entity has `location` (a GeoJSON Point from the registry's lat/lon, rounded to
`precision` decimal places: 5 is about a metre, 3 about a hundred), `name` (the device id),
`refDevice` and, on every measured property, `observedAt` (the reading's sampling time).
The PM and noise rows light up for readings that carry those fields (payload format v3's
extension fields, the decoder's JSON names, case-insensitive; `la90`, `las` and `pm4` too if
a later format adds them). A device without a location in the registry
has no entity: every model requires one.

`key_values(entity)` is the simplified form (`options=keyValues`), which is also what the
Smart Data Models' JSON Schemas describe.
"""

from __future__ import annotations

import datetime as dt

from host_tools.backoffice.bridge.devices import Device

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
# One context for every model, for the Link header of application/json answers.
SDM_CONTEXT = "https://smartdatamodels.org/context.jsonld"
_SDM = "https://raw.githubusercontent.com/smart-data-models/dataModel.{}/master/context.jsonld"
MODELS = {
    "WasteContainer": _SDM.format("WasteManagement"),
    "Streetlight": _SDM.format("Streetlighting"),
    "WeatherObserved": _SDM.format("Weather"),
    "AirQualityObserved": _SDM.format("Environment"),
    "NoiseLevelObserved": _SDM.format("Environment"),
}
ENVIRONMENT_FIELDS = ("temperature", "humidity", "pressure", "illuminance")
PM_FIELDS = {"pm2_5": "pm25", "pm25": "pm25", "pm10": "pm10", "pm1": "pm1", "pm4": "pm4"}
NOISE_FIELDS = {"laeq": "LAeq", "lamax": "LAmax", "la90": "LA90", "las": "LAS", "laeq_d": "LAeq_d"}
PM_HUMIDITY_FLAGS = ("pm_humid",)  # the PM sensor measured above its humidity limit (payload v3 flag)
TAMPER = "tamper"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def entity_id(model: str, device: str) -> str:
    return f"urn:ngsi-ld:{model}:{device}"


def _prop(value, observed: str | None = None, unit: str | None = None) -> dict:
    p = {"type": "Property", "value": value}
    if observed:
        p["observedAt"] = observed
    if unit:
        p["unitCode"] = unit  # UN/CEFACT common codes
    return p


def _date(t: dt.datetime) -> dict:
    return {"type": "Property", "value": {"@type": "DateTime", "@value": iso(t)}}


def _lower(reading: dict) -> dict:
    return {k.lower(): v for k, v in reading.items()}


def models_for(device: Device, reading: dict | None) -> list[str]:
    """The models a device stands for, from its board's parts and what its reading carries."""
    r = {k: v for k, v in _lower(reading or {}).items() if v is not None}
    fields = device.fields or frozenset()
    out = []
    if "fill" in fields or "fill" in r:
        out.append("WasteContainer")
    if "lamp" in device.parts or "lamp" in r:
        out.append("Streetlight")
    if any(f in fields or f in r for f in ENVIRONMENT_FIELDS):
        out.append("WeatherObserved")
    if any(f in r for f in PM_FIELDS):
        out.append("AirQualityObserved")
    if any(f in r for f in NOISE_FIELDS):
        out.append("NoiseLevelObserved")
    return out


def entities(device: Device, reading: dict | None, state: dict | None = None, precision: int = 5) -> list[dict]:
    """NGSI-LD entities (normalized, each with its @context) for one device, or [] without a location."""
    if not device.has_location:
        return []
    r = _lower(reading or {})
    flags = set(r.get("flags") or [])
    when = reading.get("sampled_at") if reading else None
    observed = iso(when) if when else None
    base = {
        "location": {"type": "GeoProperty", "value": {
            "type": "Point", "coordinates": [round(device.lon, precision), round(device.lat, precision)]}},
        "name": _prop(device.id),
        "refDevice": None,  # per model below: a list in some schemas, a single id in others
    }
    out = []
    for model in models_for(device, reading):
        e = {"id": entity_id(model, device.id), "type": model}
        e.update(base)
        device_ref = f"urn:ngsi-ld:Device:{device.id}"
        if model in ("WasteContainer", "Streetlight"):
            e["refDevice"] = {"type": "Property", "value": [device_ref]}
        else:
            e["refDevice"] = {"type": "Relationship", "object": device_ref}
        if model == "WasteContainer":
            if r.get("fill") is not None:
                e["fillingLevel"] = _prop(round(r["fill"] / 100, 2), observed, "P1")
            if r.get("temperature") is not None:
                e["temperature"] = _prop(r["temperature"], observed, "CEL")
            if reading:
                e["status"] = _prop("moved" if TAMPER in flags else "ok", observed)
        elif model == "Streetlight":
            lamp = r.get("lamp")
            if lamp is None and state and isinstance(state.get("lamp"), int):
                lamp = state["lamp"]  # the board's status says what the lamp does now
            status = "ok"
            if r.get("lamp_fault"):
                status = "defectiveLamp"
            elif TAMPER in flags:
                status = "columnIssue"
            e["status"] = _prop(status, observed)
            if lamp is not None:
                e["powerState"] = _prop("off" if lamp == 0 else ("on" if lamp >= 100 else "low"), observed)
                e["illuminanceLevel"] = _prop(round(lamp / 100, 2), observed, "P1")
        elif model == "WeatherObserved":
            _environment(e, r, observed, weather=True)
            if when:
                e["dateObserved"] = _date(when)
        elif model == "AirQualityObserved":
            for field, attr in PM_FIELDS.items():
                if r.get(field) is not None:
                    e[attr] = _prop(r[field], observed, "GQ")  # µg/m³
            _environment(e, r, observed, weather=False)
            if flags & set(PM_HUMIDITY_FLAGS):
                e["reliability"] = _prop(0.5, observed)
            if when:
                e["dateObserved"] = _date(when)
        elif model == "NoiseLevelObserved":
            for field, attr in NOISE_FIELDS.items():
                if r.get(field) is not None:
                    e[attr] = _prop(r[field], observed, "2N")  # dB
            if when:
                period = device.config.get("sample_period_s") or 60
                e["dateObservedFrom"] = _date(when - dt.timedelta(seconds=period))
                e["dateObservedTo"] = _date(when)
        e["@context"] = [MODELS[model], CORE_CONTEXT]
        out.append(e)
    return out


def _environment(e: dict, r: dict, observed: str | None, weather: bool) -> None:
    if r.get("temperature") is not None:
        e["temperature"] = _prop(r["temperature"], observed, "CEL")
    if r.get("humidity") is not None:
        e["relativeHumidity"] = _prop(round(r["humidity"] / 100, 3), observed, "P1")
    if weather and r.get("pressure") is not None:
        e["atmosphericPressure"] = _prop(r["pressure"], observed, "A97")  # hPa
    if weather and r.get("illuminance") is not None:
        e["illuminance"] = _prop(r["illuminance"], observed, "LUX")


def key_values(entity: dict) -> dict:
    """The simplified form: each attribute's value (or a relationship's object), DateTimes unwrapped."""
    out = {}
    for k, v in entity.items():
        if k in ("id", "type", "@context") or not isinstance(v, dict):
            out[k] = v
            continue
        value = v.get("object") if v.get("type") == "Relationship" else v.get("value")
        if isinstance(value, dict) and value.get("@type") == "DateTime":
            value = value["@value"]
        out[k] = value
    return out


def without_context(entity: dict) -> dict:
    return {k: v for k, v in entity.items() if k != "@context"}
