"""Device registration files for a real LoRaWAN network server, from the fleet's LoRaWAN identities.

- ChirpStack v4: one JSON document `{"devices": [{"device": {...}, "deviceKeys": {...}}]}`; each
  `device` object is the body of the REST API's `POST /api/devices` (api.Device: `devEui`, `name`,
  `applicationId`, `deviceProfileId`, `joinEui`, `description`, `skipFcntCheck`, `isDisabled`) and each
  `deviceKeys` the body of `POST /api/devices/{devEui}/keys` (api.DeviceKeys). For LoRaWAN 1.0.x
  devices ChirpStack takes the AppKey in `nwkKey` (its `appKey` is for 1.1 only), which is what is
  written here.
- The Things Stack v3: JSON lines, one `ttnpb.EndDevice` per line, the "The Things Stack JSON"
  format its Console's import and `ttn-lw-cli end-devices create` read (`ids`, `lorawan_version`
  MAC_V1_0_3, `lorawan_phy_version` PHY_V1_0_3_REV_A, `frequency_plan_id`, `supports_join`,
  `root_keys.app_key.key`).

`read_devices(text)` reads either back (the emulated network server registers devices from them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Identity:
    device: str
    dev_eui: str  # hex, MSB first
    join_eui: str
    app_key: str  # hex


def chirpstack(ids: list[Identity], application_id: str, device_profile_id: str) -> str:
    out = []
    for i in ids:
        out.append({
            "device": {"devEui": i.dev_eui.lower(), "name": i.device, "applicationId": application_id,
                       "deviceProfileId": device_profile_id, "joinEui": i.join_eui.lower(),
                       "description": f"Lanterne board {i.device}", "skipFcntCheck": False, "isDisabled": False},
            "deviceKeys": {"devEui": i.dev_eui.lower(), "nwkKey": i.app_key.lower(), "appKey": "0" * 32},
        })
    return json.dumps({"devices": out}, indent=1) + "\n"


def tts_id(device: str) -> str:
    """A TTS device id: lowercase letters, digits and single dashes, 2..36 characters."""
    s = "".join(c if c.isalnum() else "-" for c in device.lower())
    while "--" in s:
        s = s.replace("--", "-")
    return s.strip("-")[:36] or "device"


def tts(ids: list[Identity], application_id: str, frequency_plan: str = "EU_863_870_TTN") -> str:
    lines = []
    for i in ids:
        lines.append(json.dumps({
            "ids": {"device_id": tts_id(i.device), "dev_eui": i.dev_eui.upper(), "join_eui": i.join_eui.upper(),
                    "application_ids": {"application_id": application_id}},
            "name": i.device,
            "description": f"Lanterne board {i.device}",
            "lorawan_version": "MAC_V1_0_3",
            "lorawan_phy_version": "PHY_V1_0_3_REV_A",
            "frequency_plan_id": frequency_plan,
            "supports_join": True,
            "root_keys": {"app_key": {"key": i.app_key.upper()}},
        }))
    return "\n".join(lines) + "\n"


def read_devices(text: str) -> list[Identity]:
    """Identities from a ChirpStack or TTS export (ValueError naming the line or entry that is wrong)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("{") and '"devices"' in text.split("\n", 2)[0] + text[:40]:
        try:
            doc = json.loads(text)
            return [Identity(d["device"]["name"], d["device"]["devEui"], d["device"].get("joinEui", "0" * 16),
                             d["deviceKeys"]["nwkKey"]) for d in doc["devices"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"ChirpStack device file: {exc!r}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(Identity(d["ids"]["device_id"], d["ids"]["dev_eui"], d["ids"].get("join_eui", "0" * 16),
                                d["root_keys"]["app_key"]["key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"TTS device file, line {n}: {exc!r}") from None
    return out
