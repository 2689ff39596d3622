"""JSON of the LoRaWAN network servers a city runs: ChirpStack v4 and The Things Stack v3 MQTT integrations,
and the ChirpStack Gateway Bridge's gateway messages. Built by the emulated network server, read by the
back office, so both sides agree on one definition.

Followed (docs/lorawan.md, "Formats", cites them):
- ChirpStack v4 integration events, `application/{applicationId}/device/{devEui}/event/{up|join|ack|txack}`:
  the `integration.proto` messages (UplinkEvent, JoinEvent, AckEvent, TxAckEvent) in protobuf's
  canonical JSON mapping, which ChirpStack uses: lowerCamelCase names, bytes as base64, enums by name
  (`CLASS_A`, `CR_4_5`, `CRC_OK`), fields at their zero value (0, false, "", empty) left out. Downlinks
  are enqueued on `.../command/down` as `{"devEui", "confirmed", "fPort", "data"}`.
- The Things Stack v3 MQTT server, `v3/{application id}@{tenant id}/devices/{device id}/{up|join|down/...}`:
  ApplicationUp messages in snake_case (`end_device_ids`, `uplink_message.f_port/f_cnt/frm_payload`,
  `rx_metadata`, `settings`), zero values left out the same way; downlinks on `.../down/push` (and
  `down/replace`) as `{"downlinks": [{"f_port", "frm_payload", "priority", "confirmed"}]}`.
- ChirpStack Gateway Bridge (v4, JSON marshaler), `{region}/gateway/{gatewayId}/event/up` (gw.UplinkFrame:
  `phyPayload`, `txInfo`, `rxInfo`), `.../command/down` (gw.DownlinkFrame: `downlinkId`, `items[]` each
  `phyPayload` + `txInfo` with `timing.delay.delay` "1s"), `.../event/ack` (gw.DownlinkTxAck).
"""

from __future__ import annotations

import base64
import datetime as _dt
import uuid
from dataclasses import dataclass, field


class IntegrationError(ValueError):
    """A network-server message that is not what its topic says it is."""


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode()


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text or "", validate=True)
    except (ValueError, TypeError) as exc:
        raise IntegrationError(f"{what}: not base64 ({exc})") from None


def now_iso(t: float | None = None) -> str:
    when = _dt.datetime.fromtimestamp(t, _dt.UTC) if t is not None else _dt.datetime.now(_dt.UTC)
    return when.isoformat().replace("+00:00", "Z")


def _is_zero(v) -> bool:
    if v is None or v is False or v == "":
        return True
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v == 0
    return isinstance(v, dict | list) and not v


def omit_zero(value):
    """Drop fields at their zero value, recursively, as protobuf JSON (and TTS's marshaler) do."""
    if isinstance(value, dict):
        out = {k: omit_zero(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not _is_zero(v)}
    if isinstance(value, list):
        return [omit_zero(v) for v in value]
    return value


def new_id() -> str:
    return str(uuid.uuid4())


# -- radio metadata --------------------------------------------------------------------------------
@dataclass
class RadioMeta:
    """What a gateway says about one reception or transmission."""

    gateway_id: str
    frequency: int
    sf: int
    rssi: int = 0
    snr: float = 0.0
    uplink_id: int = 0
    time: float = 0.0
    context: bytes = b""

    def lora(self, camel: bool = True) -> dict:
        if camel:
            return {"bandwidth": 125000, "spreadingFactor": self.sf, "codeRate": "CR_4_5"}
        return {"bandwidth": 125000, "spreading_factor": self.sf, "coding_rate": "4/5"}


# -- ChirpStack Gateway Bridge -----------------------------------------------------------------------
def gateway_topic(region: str, gateway_id: str, kind: str) -> str:
    return f"{region}/gateway/{gateway_id}/{kind}"


def gateway_uplink(phy: bytes, meta: RadioMeta) -> dict:
    return omit_zero({
        "phyPayload": b64(phy),
        "txInfo": {"frequency": meta.frequency, "modulation": {"lora": meta.lora()}},
        "rxInfo": {
            "gatewayId": meta.gateway_id,
            "uplinkId": meta.uplink_id,
            "gwTime": now_iso(meta.time or None),
            "rssi": meta.rssi,
            "snr": meta.snr,
            "channel": 0,
            "context": b64(meta.context),
            "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
            "crcStatus": "CRC_OK",
        },
    })


def parse_gateway_uplink(msg: dict) -> tuple[bytes, RadioMeta]:
    try:
        rx, tx = msg.get("rxInfo", {}), msg.get("txInfo", {})
        lora = tx.get("modulation", {}).get("lora", {})
        meta = RadioMeta(
            gateway_id=str(rx.get("gatewayId", "")),
            frequency=int(tx.get("frequency", 0)),
            sf=int(lora.get("spreadingFactor", 0)),
            rssi=int(rx.get("rssi", 0)),
            snr=float(rx.get("snr", 0.0)),
            uplink_id=int(rx.get("uplinkId", 0)),
            context=unb64(rx.get("context", ""), "rxInfo.context"),
        )
        return unb64(msg["phyPayload"], "phyPayload"), meta
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise IntegrationError(f"gateway uplink: {exc!r}") from None


def gateway_downlink(downlink_id: int, gateway_id: str, items: list[tuple[bytes, int, int, float, bytes]]) -> dict:
    """items: (phy, frequency, sf, delay_s after the uplink, uplink context), tried in order (RX1, RX2)."""
    return omit_zero({
        "downlinkId": downlink_id,
        "gatewayId": gateway_id,
        "items": [
            {
                "phyPayload": b64(phy),
                "txInfo": {
                    "frequency": freq,
                    "power": 14,
                    "modulation": {"lora": dict(RadioMeta(gateway_id, freq, sf).lora(), polarizationInversion=True)},
                    "timing": {"delay": {"delay": f"{delay:g}s"}},
                    "context": b64(ctx),
                },
            }
            for phy, freq, sf, delay, ctx in items
        ],
    })


def parse_gateway_downlink(msg: dict) -> tuple[int, list[tuple[bytes, int, int, float, bytes]]]:
    try:
        items = []
        for it in msg.get("items", []):
            tx = it["txInfo"]
            delay = str(tx.get("timing", {}).get("delay", {}).get("delay", "1s")).rstrip("s")
            items.append((
                unb64(it["phyPayload"], "phyPayload"),
                int(tx.get("frequency", 0)),
                int(tx.get("modulation", {}).get("lora", {}).get("spreadingFactor", 0)),
                float(delay or 0),
                unb64(tx.get("context", ""), "txInfo.context"),
            ))
        return int(msg.get("downlinkId", 0)), items
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise IntegrationError(f"gateway downlink: {exc!r}") from None


def gateway_txack(downlink_id: int, gateway_id: str, status: str, n_items: int = 1, used: int = 0) -> dict:
    statuses = ["IGNORED"] * n_items
    if 0 <= used < n_items:
        statuses[used] = status
    return omit_zero({"downlinkId": downlink_id, "gatewayId": gateway_id, "items": [{"status": s} for s in statuses]})


# -- the uplink as an application sees it -------------------------------------------------------------
@dataclass
class Uplink:
    """One deduplicated uplink, whichever integration brought it."""

    dev_eui: str  # lowercase hex, MSB first
    device: str  # ChirpStack deviceName / TTS device_id
    fport: int
    fcnt: int
    data: bytes
    dev_addr: str = ""
    dr: int = 0
    rssi: int | None = None
    snr: float | None = None
    confirmed: bool = False
    time: str = ""
    gateways: int = 0
    airtime_s: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Application:
    """Where a network server files a device: ChirpStack application/tenant ids, TTS application@tenant."""

    application_id: str = "00000000-0000-4000-8000-00000000a001"
    application_name: str = "lanterne"
    tenant_id: str = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
    tenant_name: str = "city"
    device_profile_id: str = "00000000-0000-4000-8000-0000000d0001"
    device_profile_name: str = "lanterne-eu868-classA"
    tts_application: str = "lanterne"
    tts_tenant: str = "ttn"


# -- ChirpStack v4 integration ------------------------------------------------------------------------
def chirpstack_topic(app: Application, dev_eui: str, kind: str) -> str:
    """kind: event/up, event/join, event/ack, event/txack, command/down."""
    return f"application/{app.application_id}/device/{dev_eui.lower()}/{kind}"


def chirpstack_device_info(app: Application, dev_eui: str, device: str) -> dict:
    return {
        "tenantId": app.tenant_id,
        "tenantName": app.tenant_name,
        "applicationId": app.application_id,
        "applicationName": app.application_name,
        "deviceProfileId": app.device_profile_id,
        "deviceProfileName": app.device_profile_name,
        "deviceName": device,
        "devEui": dev_eui.lower(),
        "deviceClassEnabled": "CLASS_A",
        "tags": {},
    }


def chirpstack_up(app: Application, up: Uplink, receptions: list[RadioMeta], adr: bool, obj: dict | None = None) -> dict:
    first = receptions[0]
    return omit_zero({
        "deduplicationId": new_id(),
        "time": up.time or now_iso(),
        "deviceInfo": chirpstack_device_info(app, up.dev_eui, up.device),
        "devAddr": up.dev_addr,
        "adr": adr,
        "dr": up.dr,
        "fCnt": up.fcnt,
        "fPort": up.fport,
        "confirmed": up.confirmed,
        "data": b64(up.data),
        "object": obj or {},
        "rxInfo": [
            {
                "gatewayId": r.gateway_id,
                "uplinkId": r.uplink_id,
                "rssi": r.rssi,
                "snr": r.snr,
                "context": b64(r.context),
                "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
                "crcStatus": "CRC_OK",
            }
            for r in receptions
        ],
        "txInfo": {"frequency": first.frequency, "modulation": {"lora": first.lora()}},
    })


def chirpstack_event(app: Application, dev_eui: str, device: str, **fields) -> dict:
    """event/join (devAddr), event/ack (queueItemId, acknowledged, fCntDown), event/txack (downlinkId,
    queueItemId, fCntDown, gatewayId, txInfo)."""
    return omit_zero(dict({"deduplicationId": new_id(), "time": now_iso(), "deviceInfo": chirpstack_device_info(app, dev_eui, device)}, **fields))


def parse_chirpstack_up(msg: dict) -> Uplink:
    try:
        info = msg["deviceInfo"]
        rx = msg.get("rxInfo") or [{}]
        best = max(rx, key=lambda r: r.get("rssi", -999))
        return Uplink(
            dev_eui=str(info["devEui"]).lower(),
            device=str(info.get("deviceName", "")),
            fport=int(msg.get("fPort", 0)),
            fcnt=int(msg.get("fCnt", 0)),
            data=unb64(msg.get("data", ""), "data"),
            dev_addr=str(msg.get("devAddr", "")),
            dr=int(msg.get("dr", 0)),
            rssi=int(best["rssi"]) if "rssi" in best else None,
            snr=float(best.get("snr", 0.0)) if rx != [{}] else None,
            confirmed=bool(msg.get("confirmed", False)),
            time=str(msg.get("time", "")),
            gateways=len(msg.get("rxInfo") or []),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrationError(f"ChirpStack uplink event: missing or bad field {exc}") from None


def chirpstack_down(dev_eui: str, fport: int, data: bytes, confirmed: bool = False) -> dict:
    return {"devEui": dev_eui.lower(), "confirmed": bool(confirmed), "fPort": int(fport), "data": b64(data)}


def parse_chirpstack_down(msg: dict) -> tuple[str, int, bytes, bool]:
    try:
        return str(msg["devEui"]).lower(), int(msg["fPort"]), unb64(msg.get("data", ""), "data"), bool(msg.get("confirmed", False))
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrationError(f"ChirpStack downlink command: missing or bad field {exc}") from None


# -- The Things Stack v3 integration ------------------------------------------------------------------
def tts_topic(app: Application, device: str, suffix: str) -> str:
    """suffix: up, join, down/push, down/replace, down/queued, down/sent, down/ack, down/nack, down/failed."""
    from host_tools.codec.lns_devices import tts_id

    return f"v3/{app.tts_application}@{app.tts_tenant}/devices/{tts_id(device)}/{suffix}"


def tts_ids(app: Application, device: str, dev_eui: str, join_eui: str, dev_addr: str = "") -> dict:
    from host_tools.codec.lns_devices import tts_id

    return {
        "device_id": tts_id(device),
        "application_ids": {"application_id": app.tts_application},
        "dev_eui": dev_eui.upper(),
        "join_eui": join_eui.upper(),
        "dev_addr": dev_addr.upper(),
    }


def tts_up(app: Application, up: Uplink, join_eui: str, receptions: list[RadioMeta], session_key_id: bytes,
           obj: dict | None = None) -> dict:
    first = receptions[0]
    return omit_zero({
        "end_device_ids": tts_ids(app, up.device, up.dev_eui, join_eui, up.dev_addr),
        "correlation_ids": [f"as:up:{new_id()}"],
        "received_at": up.time or now_iso(),
        "uplink_message": {
            "session_key_id": b64(session_key_id),
            "f_port": up.fport,
            "f_cnt": up.fcnt,
            "frm_payload": b64(up.data),
            "decoded_payload": obj or {},
            "rx_metadata": [
                {
                    "gateway_ids": {"gateway_id": f"eui-{r.gateway_id}", "eui": r.gateway_id.upper()},
                    "rssi": r.rssi,
                    "channel_rssi": r.rssi,
                    "snr": r.snr,
                    "uplink_token": b64(r.context),
                    "received_at": up.time or now_iso(),
                }
                for r in receptions
            ],
            "settings": {"data_rate": {"lora": first.lora(camel=False)}, "frequency": str(first.frequency)},
            "received_at": up.time or now_iso(),
            "confirmed": up.confirmed,
            "consumed_airtime": f"{up.airtime_s:.6f}s" if up.airtime_s else "",
        },
    })


def tts_event(app: Application, device: str, dev_eui: str, join_eui: str, dev_addr: str, key: str, body: dict) -> dict:
    """join ("join_accept"), down/queued|sent|ack|nack|failed ("downlink_queued", "downlink_sent", ...)."""
    return omit_zero({
        "end_device_ids": tts_ids(app, device, dev_eui, join_eui, dev_addr),
        "correlation_ids": [f"as:{key}:{new_id()}"],
        "received_at": now_iso(),
        key: body,
    })


def parse_tts_up(msg: dict) -> Uplink:
    try:
        ids, um = msg["end_device_ids"], msg["uplink_message"]
        rx = um.get("rx_metadata") or [{}]
        best = max(rx, key=lambda r: r.get("rssi", -999))
        lora = um.get("settings", {}).get("data_rate", {}).get("lora", {})
        sf = int(lora.get("spreading_factor", 0))
        return Uplink(
            dev_eui=str(ids.get("dev_eui", "")).lower(),
            device=str(ids["device_id"]),
            fport=int(um.get("f_port", 0)),
            fcnt=int(um.get("f_cnt", 0)),
            data=unb64(um.get("frm_payload", ""), "frm_payload"),
            dev_addr=str(ids.get("dev_addr", "")).lower(),
            dr=12 - sf if 7 <= sf <= 12 else 0,
            rssi=int(best["rssi"]) if "rssi" in best else None,
            snr=float(best.get("snr", 0.0)) if rx != [{}] else None,
            confirmed=bool(um.get("confirmed", False)),
            time=str(um.get("received_at", msg.get("received_at", ""))),
            gateways=len(um.get("rx_metadata") or []),
            airtime_s=float(str(um["consumed_airtime"]).rstrip("s")) if um.get("consumed_airtime") else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrationError(f"The Things Stack uplink message: missing or bad field {exc}") from None


def tts_down(fport: int, data: bytes, priority: str = "NORMAL", confirmed: bool = False) -> dict:
    item = {"f_port": int(fport), "frm_payload": b64(data), "priority": priority}
    if confirmed:
        item["confirmed"] = True
    return {"downlinks": [item]}


def parse_tts_down(msg: dict) -> list[tuple[int, bytes, bool]]:
    try:
        return [(int(d["f_port"]), unb64(d.get("frm_payload", ""), "frm_payload"), bool(d.get("confirmed", False)))
                for d in msg["downlinks"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrationError(f"The Things Stack downlink push: missing or bad field {exc}") from None
