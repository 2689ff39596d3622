"""Home Assistant MQTT discovery: every asset a device, its sensors, its lamp, its bollard.

For each device in the fleet registry the bridge publishes, retained, on the city's own
broker, `{prefix}/{component}/lanterne_{device}_{key}/config` (prefix `homeassistant`):

- a `sensor` per payload field its board measures, with Home Assistant's device class and
  unit (temperature °C, humidity %, atmospheric_pressure hPa, illuminance lx, voltage V,
  distance mm; fill level %; pm25/pm10 µg/m³ and sound_pressure dB(A) once the payload
  carries them), and the reading's sampling time (`timestamp`);
- `binary_sensor`s: lamp fault (`problem`), tamper (`tamper`);
- the lamp as a `light` (JSON schema, brightness 0-100 %, effect `profile` = back to the
  lamp profile); its command topic is the bridge's, which turns `{"state": "ON",
  "brightness": 40}` into a `set_lamp 40` command signed with the device's key from the
  registry (`OFF` is level 0, `ON` alone 100 %, effect `profile` is `resume_profile`);
- the bollard as a `cover` of class `gate`: open = lowered (the way is open), closed =
  raised; OPEN sends `bollard lower`, CLOSE `bollard raise`.

Every entity's availability is the board's own retained status topic (`state` online /
offline, the broker's last will): what Home Assistant shows is what the board said.
States: `lanterne-bridge/ha/{device}/state` (the newest reading, JSON),
`.../light/state` and `.../bollard/state`, retained, published after each commit.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time

from host_tools.backoffice.bridge.database import Batch
from host_tools.backoffice.bridge.devices import Device
from host_tools.backoffice.bridge.ingest import command_row
from host_tools.backoffice.bridge.ngsi import iso

BASE = "lanterne-bridge/ha"
# field -> (name, device_class, unit, icon)
SENSORS = {
    "temperature": ("Temperature", "temperature", "°C", None),
    "humidity": ("Humidity", "humidity", "%", None),
    "pressure": ("Pressure", "atmospheric_pressure", "hPa", None),
    "illuminance": ("Illuminance", "illuminance", "lx", None),
    "fill": ("Fill level", None, "%", "mdi:delete-variant"),
    "distance": ("Distance to contents", "distance", "mm", None),
    "voltage": ("Supply voltage", "voltage", "V", None),
    "pm1": ("PM1", "pm1", "µg/m³", None),
    "pm2_5": ("PM2.5", "pm25", "µg/m³", None),
    "pm10": ("PM10", "pm10", "µg/m³", None),
    "laeq": ("Sound level LAeq", "sound_pressure", "dB", None),
    "lamax": ("Sound level LAmax", "sound_pressure", "dB", None),
}
BOLLARD_STATES = {0: "open", 1: "closed"}  # relay.DOWN: the way is open; relay.UP: closed


def object_id(device: str, key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"lanterne_{device}_{key}")


def discovery(device: Device, prefix: str = "homeassistant") -> dict[str, dict]:
    """topic -> config payload for every entity of `device`."""
    base = f"{BASE}/{device.id}"
    dev = {"identifiers": [f"lanterne_{device.id}"], "name": device.id, "manufacturer": "Lanterne",
           "model": device.board, "suggested_area": device.site}
    availability = {"topic": f"lanterne/v1/{device.site}/{device.id}/status", "value_template": "{{ value_json.state }}",
                    "payload_available": "online", "payload_not_available": "offline"}
    common = {"device": dev, "availability": [availability], "origin": {"name": "lanterne bridge"}}
    out = {}
    fields = device.fields or frozenset(SENSORS)
    for field, (name, device_class, unit, icon) in SENSORS.items():
        if field not in fields:
            continue
        cfg = dict(common, name=name, unique_id=object_id(device.id, field), state_topic=f"{base}/state",
                   value_template="{{ value_json.%s | default(None) }}" % field, unit_of_measurement=unit,
                   state_class="measurement")
        if device_class:
            cfg["device_class"] = device_class
        if icon:
            cfg["icon"] = icon
        out[f"{prefix}/sensor/{object_id(device.id, field)}/config"] = cfg
    out[f"{prefix}/sensor/{object_id(device.id, 'sampled_at')}/config"] = dict(
        common, name="Last reading", unique_id=object_id(device.id, "sampled_at"), state_topic=f"{base}/state",
        value_template="{{ value_json.sampled_at }}", device_class="timestamp")
    out[f"{prefix}/binary_sensor/{object_id(device.id, 'tamper')}/config"] = dict(
        common, name="Tamper", unique_id=object_id(device.id, "tamper"), state_topic=f"{base}/state",
        value_template="{{ 'ON' if 'tamper' in value_json.flags else 'OFF' }}", device_class="tamper")
    if "lamp" in device.parts:
        out[f"{prefix}/binary_sensor/{object_id(device.id, 'lamp_fault')}/config"] = dict(
            common, name="Lamp fault", unique_id=object_id(device.id, "lamp_fault"), state_topic=f"{base}/state",
            value_template="{{ 'ON' if value_json.lamp_fault else 'OFF' }}", device_class="problem")
        out[f"{prefix}/light/{object_id(device.id, 'lamp')}/config"] = dict(
            common, name="Lamp", unique_id=object_id(device.id, "lamp"), schema="json",
            command_topic=f"{base}/light/set", state_topic=f"{base}/light/state", brightness=True,
            brightness_scale=100, supported_color_modes=["brightness"], effect=True, effect_list=["profile"])
    if "relay" in device.parts:
        out[f"{prefix}/cover/{object_id(device.id, 'bollard')}/config"] = dict(
            common, name="Bollard", unique_id=object_id(device.id, "bollard"), device_class="gate",
            command_topic=f"{base}/bollard/set", state_topic=f"{base}/bollard/state", payload_open="OPEN",
            payload_close="CLOSE", payload_stop=None)
    return out


def light_state(level: int) -> dict:
    return {"state": "ON" if level > 0 else "OFF", "brightness": level}


def command_for(kind: str, payload: bytes) -> tuple[str, dict]:
    """A Home Assistant command -> (Lanterne action, arguments). Raises ValueError saying why not."""
    text = payload.decode("utf-8", "replace").strip()
    if kind == "bollard":
        if text == "OPEN":
            return "bollard", {"action": "lower"}
        if text == "CLOSE":
            return "bollard", {"action": "raise"}
        raise ValueError(f"bollard command {text!r}: OPEN or CLOSE")
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError(f"light command {text[:60]!r} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("state") not in ("ON", "OFF"):
        raise ValueError(f"light command {text[:60]!r}: needs \"state\": \"ON\" or \"OFF\"")
    if doc["state"] == "OFF":
        return "dim", {"level": 0, "ramp_s": 0, "duration_min": 0}
    if doc.get("effect") == "profile":
        return "resume-profile", {}
    level = doc.get("brightness", 100)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level <= 100:
        raise ValueError(f"brightness {level!r}: 0..100")
    ramp = doc.get("transition", 0)
    ramp = int(ramp) if isinstance(ramp, (int, float)) and not isinstance(ramp, bool) and 0 <= ramp <= 3600 else 0
    return "dim", {"level": int(round(level)), "ramp_s": ramp, "duration_min": 0}


class HomeAssistant:
    def __init__(self, bridge, prefix: str = "homeassistant", ack_timeout_s: float = 10.0):
        self.bridge = bridge
        self.prefix = prefix
        self.ack_timeout_s = ack_timeout_s
        self.command_topics = (f"{BASE}/+/light/set", f"{BASE}/+/bollard/set")
        self._announced: set[str] = set()
        self._commands: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run_commands, name="ha-commands", daemon=True)
        self._client = None
        self.sent = self.refused = 0

    def start(self) -> None:
        self.announce()
        self._thread.start()

    def stop(self) -> None:
        self._commands.put(None)
        self._thread.join(self.ack_timeout_s + 2)
        if self._client:
            self._client.close()

    def announce(self) -> None:
        """Publish (retained) the discovery configs of every registry device not yet announced."""
        for dev in self.bridge.directory.all():
            if dev.id in self._announced:
                continue
            for topic, cfg in discovery(dev, self.prefix).items():
                self.bridge.input.publish(topic, json.dumps(cfg), qos=1, retain=True)
            self._announced.add(dev.id)

    # -- states, after each commit (on the bridge's worker) -------------------------------------
    def committed(self, done, devices: list[str]) -> None:
        self.announce()
        pub = self.bridge.input.publish
        for device, r in done.new_readings.items():
            doc = {k: v for k, v in r.items() if k in SENSORS or k in ("lamp", "lamp_fault", "seq")}
            doc["sampled_at"] = iso(r["sampled_at"])
            doc["flags"] = [n for n, bit in _flag_bits() if (r.get("status") or 0) & bit]
            pub(f"{BASE}/{device}/state", json.dumps(doc), retain=True)
            if r.get("lamp") is not None:
                pub(f"{BASE}/{device}/light/state", json.dumps(light_state(r["lamp"])), retain=True)
        for device, st in done.statuses.items():
            if isinstance(st.get("lamp"), int):
                pub(f"{BASE}/{device}/light/state", json.dumps(light_state(st["lamp"])), retain=True)
            if st.get("bollard") in BOLLARD_STATES:
                pub(f"{BASE}/{device}/bollard/state", BOLLARD_STATES[st["bollard"]], retain=True)
        for a in done.acks:
            if a["reason"] != "ok" or not a["data"]:
                continue
            if a["command"] == "set_lamp":
                pub(f"{BASE}/{a['device']}/light/state", json.dumps(light_state(a["data"][0])), retain=True)
            elif a["command"] == "bollard" and a["data"][0] in BOLLARD_STATES:
                pub(f"{BASE}/{a['device']}/bollard/state", BOLLARD_STATES[a["data"][0]], retain=True)

    # -- commands (their own thread: an ack takes a round trip) --------------------------------
    def on_command(self, topic: str, payload: bytes) -> bool:
        """Called by the bridge for messages on the command topics; True if it was one."""
        parts = topic.split("/")
        if len(parts) != 5 or "/".join(parts[:2]) != BASE or parts[4] != "set" or parts[3] not in ("light", "bollard"):
            return False
        self._commands.put((parts[2], parts[3], bytes(payload)))
        return True

    def _run_commands(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            device, kind, payload = item
            try:
                self._execute(device, kind, payload)
            except Exception as exc:  # one bad command never stops the others
                self.refused += 1
                self.bridge.log(f"Home Assistant command for {device} ({kind}): {exc}")

    def _execute(self, device: str, kind: str, payload: bytes) -> None:
        from host_tools.backoffice.actions import ACTIONS
        from host_tools.backoffice.command_client import CommandClient, cmd, next_counter
        from host_tools.fleet.registry import Registry

        dev = self.bridge.directory.get(device)
        if dev is None:
            raise ValueError(f"{device} is not in the fleet registry")
        needs = "lamp" if kind == "light" else "relay"
        if needs not in dev.parts:
            raise ValueError(f"{device} ({dev.board}) has no {'lamp' if kind == 'light' else 'bollard'}")
        action, args = command_for(kind, payload)
        with Registry(self.bridge.directory.path) as reg:
            key = reg.command_key(device)
            counter = next_counter(reg.command_counter(device))
            reg.set_command_counter(device, counter)  # used up even if no ack comes
            if self._client is None:
                user, password = reg.backoffice_credentials() if self.bridge.cfg.username is None else (
                    self.bridge.cfg.username, self.bridge.cfg.password)
                self._client = CommandClient(self.bridge.cfg.broker, username=user, password=password,
                                             tls_ca=self.bridge.cfg.tls_ca)
        frame = cmd.build(key, device, counter, ACTIONS[action].opcode, args)
        # Recorded as Home Assistant's before it leaves, so the copy seen on the broker adds nothing.
        self.bridge.db.write(Batch(commands=[command_row(device, key, frame, time.time(), "home-assistant")]))
        res = self._client.send(dev.site, device, key, counter, action, args, timeout=self.ack_timeout_s, frame=frame)
        self.sent += 1
        if res.ok and action == "resume-profile":  # ask for a status: it says what the profile does now
            counter = next_counter(counter)
            with Registry(self.bridge.directory.path) as reg:
                reg.set_command_counter(device, counter)
            self._client.send(dev.site, device, key, counter, "status", {}, timeout=self.ack_timeout_s)
        if not res.ok:
            self.refused += 1
            self.bridge.log(f"Home Assistant command {action} for {device}: {res.reason}")


def _flag_bits():
    from host_tools.codec.decoder import STATUS_NAMES

    return [(name, 1 << i) for i, name in enumerate(STATUS_NAMES)]
