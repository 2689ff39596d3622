"""The fleet's LoRaWAN identities, read from the registry: what the network server and the uplink service need."""

from __future__ import annotations

from host_tools.backoffice.uplinks import LoraDevice
from host_tools.codec.lns_devices import Identity
from host_tools.fleet.registry import Registry

#: JoinEUI used when a device has none of its own in the registry (the value ChirpStack and TTS
#: accept for devices whose join server is the network server itself).
DEFAULT_JOIN_EUI = "0000000000000000"


def identities(registry: Registry, devices: list[str] | None = None) -> list[Identity]:
    """LoRaWAN identities of `devices` (all LoRaWAN devices when None). KeyError names a device
    that is not in the registry or has no LoRaWAN identity."""
    wanted = devices or [d.id for d in registry.devices() if "lorawan_deveui" in registry.secret_names(d.id)]
    out = []
    for name in wanted:
        if registry.get(name) is None:
            raise KeyError(f"{name}: not in the registry")
        have = registry.secret_names(name)
        if "lorawan_deveui" not in have or "lorawan_appkey" not in have:
            raise KeyError(f"{name}: no LoRaWAN identity (is its board a LoRaWAN board?)")
        join = registry.secret(name, "lorawan_joineui") if "lorawan_joineui" in have else DEFAULT_JOIN_EUI
        out.append(Identity(name, registry.secret(name, "lorawan_deveui"), join, registry.secret(name, "lorawan_appkey")))
    return out


def uplink_devices(registry: Registry, devices: list[str] | None = None) -> list[LoraDevice]:
    """The uplink service's devices, each with its sample period (its registry config, else the firmware's default)."""
    from host_tools.backoffice.monitor import default_periods

    default = default_periods()["sample_period_s"]
    out = []
    for i in identities(registry, devices):
        period = (registry.get(i.device).config or {}).get("sample_period_s", default)
        out.append(LoraDevice(i.device, i.dev_eui.lower(), registry.command_key(i.device), i.join_eui,
                              sample_period_s=period if isinstance(period, int) and period > 0 else None))
    return out
