"""The device config (config.json) as the host builds it: validated with the firmware's own schema.

`firmware_config()` loads firmware/lanterne/config.py on CPython, so the host and the
board check the same rules; `check_config` raises a `ProvisionError` naming the first bad
field (a secret's value is never echoed); `coerce` turns a CSV cell or flag into the
schema's type; `parse_broker_url` reads the `broker` field's mqtt:// or mqtts:// URL.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse

from host_tools.fleet import ProvisionError
from host_tools.fleet.registry import SECRET_FIELDS
from host_tools.runtime import firmware_module
from host_tools.runtime.paths import FIRMWARE

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
# The provisioning flags and the config fields they set.
FLAG_FIELDS = ("site", "lat", "lon", "bin_empty_mm", "bin_full_mm", "broker")



def firmware_config():
    """firmware/lanterne/config.py, the board's own module (its schema: lanterne/config_fields.py)."""
    return firmware_module("config")


def board_transport(board) -> str:
    """The transport a board's firmware uses unless its config says otherwise: LoRaWAN on a LoRaWAN modem, MQTT
    with LoRaWAN failover on a board with both an IP link and a modem (its `lorawan` field), else MQTT."""
    if board.data["network"]["kind"] == "lorawan":
        return "lorawan"
    return "failover" if board.data.get("lorawan") else "mqtt"


def delivering_transports() -> tuple[str, ...]:
    """The transports the firmware can send readings and receive commands over: its transport package's modules.

    The one place that knows which transports deliver: a board configured for another one samples
    and stores its readings but sends nothing (the firmware reports `transport ...: not available in
    this firmware yet`). When a transport lands in firmware/lanterne/transport/, the warnings built
    on `transport_gap` go away by themselves.
    """
    return tuple(sorted(p.stem for p in (FIRMWARE / "lanterne" / "transport").glob("*.py") if p.stem != "__init__"))


def transport_gap(transport: str) -> str | None:
    """Why a board on `transport` cannot deliver yet (one sentence), or None when it can."""
    if transport in delivering_transports():
        return None
    name = {"lorawan": "LoRaWAN", "failover": "MQTT with LoRaWAN failover"}.get(transport, transport)
    return (f"the {name} transport is not in the firmware yet: the board samples and stores its readings"
            " but cannot send them or receive commands")


def coerce(field_name: str, text: str):
    """A CSV cell or --set value converted to the schema's type for `field_name`."""
    schema = firmware_config().SCHEMA
    if field_name not in schema:
        raise ProvisionError(
            f"field '{field_name}': unknown config field", hint="known fields: " + ", ".join(sorted(schema)), field=field_name
        )
    kind = schema[field_name][0]
    text = text.strip()
    try:
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise ProvisionError(
            f"field '{field_name}': not a {'whole number' if kind is int else 'number'}: {text!r}", field=field_name
        ) from None
    return text


def check_config(config: dict, secret_names=()) -> None:
    """Validate with the firmware's schema; raise naming the first bad field (values of secrets hidden)."""
    _cfg, errors = firmware_config().validate(config, "config")
    if not errors:
        return
    first = errors[0]
    m = re.search(r"field '([^']+)'", first)
    name = m.group(1) if m else None
    why = first.split(": ", 1)[1] if ": " in first else first
    if name in secret_names or name in SECRET_FIELDS:
        why = re.sub(r", got .*", "", why)
    elif name in config and "got" not in why:
        why += f" (got {config[name]!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ProvisionError(f"config rejected: {why}{more}", hint="fix the value and run again; nothing was written to the board", field=name)


def config_bytes(config: dict) -> bytes:
    return (json.dumps(config, indent=1, sort_keys=True) + "\n").encode()


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """mqtt://host:port or mqtts://host:port -> (host, port, tls); ValueError otherwise."""
    u = urllib.parse.urlparse(url)
    if u.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = u.scheme == "mqtts"
    return u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883), tls
