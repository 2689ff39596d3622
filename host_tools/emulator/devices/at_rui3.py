"""The RUI3 AT command set of the modem twin (host_tools/emulator/devices/lorawan_modem.py): parse one line, answer.

Forms (RUI3 AT Command Manual): `AT+XXX=?` reads a value (answered `AT+XXX=<value>` then `OK`),
`AT+XXX=<value>` sets one, `AT+XXX` runs a command, `AT+XXX?` describes it. Status lines: `OK`,
`AT_ERROR`, `AT_PARAM_ERROR`, `AT_BUSY_ERROR` (after `Restricted_Wait_<ms>_ms` when the duty cycle
is what blocks), `AT_NO_NETWORK_JOINED`, `AT_COMMAND_NOT_FOUND`. EUIs and keys are hex, MSB first.
"""

from __future__ import annotations

import re

from host_tools.codec import lorawan_radio as R

_HEX = re.compile(r"^[0-9A-Fa-f]*$")
VERSION = "RUI_4.1.1_RAK3172-E (Lanterne twin)"

# name -> (NVM key, length in hex digits) for the identity setters
_IDS = {"DEVEUI": ("deveui", 16), "APPEUI": ("appeui", 16), "JOINEUI": ("appeui", 16), "APPKEY": ("appkey", 32)}
# name -> (NVM key, allowed values) for the small settings
_SETTINGS = {
    "NWM": ("nwm", {0, 1, 2}),
    "NJM": ("njm", {0, 1}),
    "BAND": ("band", set(range(0, 13))),
    "CFM": ("cfm", {0, 1}),
    "ADR": ("adr", {0, 1}),
    "DR": ("dr", set(R.EU868_DR_SF)),
    "LINKCHECK": ("linkcheck", {0, 1, 2}),
}
_HELP = {
    "SEND": "AT+SEND=<port>:<payload>: send data (hex) on a port (1..223)",
    "JOIN": "AT+JOIN=<join>:<auto>:<interval s>:<attempts>: join the network",
}


def handle(twin, line: str) -> None:
    if not line:
        return
    up = line.upper()
    if up == "AT":
        return twin.emit("OK")
    if up == "ATE":
        twin.echo = not twin.echo
        return twin.emit("OK")
    if up == "ATZ":
        return twin.reset()
    if not up.startswith("AT+"):
        return twin.emit("AT_ERROR")
    body = line[3:]
    name, sep, arg = body.partition("=")
    name = name.upper()
    if not sep and name.endswith("?"):
        name = name[:-1]
        return twin.emit(f"AT+{name}: {_HELP.get(name, name)}", "OK") if _known(name) else twin.emit("AT_COMMAND_NOT_FOUND")
    query = sep and arg == "?"
    try:
        fn = _COMMANDS.get(name)
        if fn is None:
            return twin.emit("AT_COMMAND_NOT_FOUND")
        fn(twin, name, arg if sep else None, query)
    except _ParamError:
        twin.emit("AT_PARAM_ERROR")


class _ParamError(ValueError):
    pass


def _known(name: str) -> bool:
    return name in _COMMANDS


def _value(twin, name, value) -> None:
    twin.emit(f"AT+{name}={value}", "OK")


def _ident(twin, name, arg, query) -> None:
    key, digits = _IDS[name]
    if query:
        return _value(twin, name, twin.nvm[key].upper())
    if arg is None or len(arg) != digits or not _HEX.match(arg):
        raise _ParamError(name)
    if twin.busy():
        return twin.emit("AT_BUSY_ERROR")
    twin.nvm[key] = arg.upper()
    twin.save()
    twin.emit("OK")


def _setting(twin, name, arg, query) -> None:
    key, allowed = _SETTINGS[name]
    if query:
        return _value(twin, name, twin.nvm[key])
    try:
        value = int(arg)
    except (TypeError, ValueError):
        raise _ParamError(name) from None
    if value not in allowed:
        raise _ParamError(name)
    if name == "BAND" and value != 4:
        return twin.emit("AT_ERROR")  # this twin is an EU868 (band 4) module
    twin.nvm[key] = value
    twin.save()
    twin.emit("OK")


def _class(twin, name, arg, query) -> None:
    if query:
        return _value(twin, name, twin.nvm["class"])
    if arg is None or arg.upper() not in ("A", "B", "C"):
        raise _ParamError(name)
    if arg.upper() != "A":
        return twin.emit("AT_ERROR")  # class A only
    twin.emit("OK")


def _njs(twin, name, arg, query) -> None:
    if not query:
        raise _ParamError(name)
    _value(twin, name, 1 if twin.joined else 0)


def _join(twin, name, arg, query) -> None:
    if query:
        return _value(twin, name, "0:0:8:0")
    parts = (arg or "1").split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise _ParamError(name) from None
    join = nums[0]
    interval = nums[2] if len(nums) > 2 else 8
    attempts = nums[3] if len(nums) > 3 else 0
    if join not in (0, 1) or len(nums) > 4 or not 7 <= interval <= 255 or not 0 <= attempts <= 255:
        raise _ParamError(name)
    if join == 0:
        return twin.emit("OK")
    if twin.busy():
        return twin.emit("AT_BUSY_ERROR")
    if twin.nvm["njm"] != 1 or twin.nvm["nwm"] != 1:
        return twin.emit("AT_ERROR")
    wait = twin.duty_wait_ms()
    if wait > 0:
        return twin.emit(f"Restricted_Wait_{wait}_ms", "AT_BUSY_ERROR")
    twin.emit("OK")
    twin.start_join(attempts, float(interval))


def _send(twin, name, arg, query) -> None:
    if arg is None or query:
        raise _ParamError(name)
    port, sep, data = arg.partition(":")
    try:
        port = int(port)
    except ValueError:
        raise _ParamError(name) from None
    if not sep or not 1 <= port <= 223 or len(data) % 2 or not _HEX.match(data):
        raise _ParamError(name)
    payload = bytes.fromhex(data)
    if not twin.joined:
        return twin.emit("AT_NO_NETWORK_JOINED")
    fopts = 1 if twin.nvm.get("linkcheck") else 0
    if len(payload) > R.max_payload(int(twin.nvm["dr"]), fopts):
        raise _ParamError(name)
    if twin.busy() or twin.take_count("lorawan_busy_refusals"):
        return twin.emit("AT_BUSY_ERROR")
    wait = twin.duty_wait_ms()
    if wait > 0:
        return twin.emit(f"Restricted_Wait_{wait}_ms", "AT_BUSY_ERROR")
    twin.emit("OK")
    twin.start_send(port, payload)


def _recv(twin, name, arg, query) -> None:
    if not query:
        raise _ParamError(name)
    port, data = twin.last_rx
    _value(twin, name, f"{port}:{data.hex()}")


def _cfs(twin, name, arg, query) -> None:
    if not query:
        raise _ParamError(name)
    _value(twin, name, 1 if twin.last_confirm_ok else 0)


def _ver(twin, name, arg, query) -> None:
    _value(twin, name, VERSION)


def _devaddr(twin, name, arg, query) -> None:
    if not query:
        return twin.emit("AT_ERROR")  # OTAA: the network assigns it
    s = twin.nvm.get("session")
    _value(twin, name, f"{int(s['devaddr']):08X}" if s else "00000000")


_COMMANDS = dict(
    {k: _ident for k in _IDS},
    **{k: _setting for k in _SETTINGS},
    CLASS=_class,
    NJS=_njs,
    JOIN=_join,
    SEND=_send,
    RECV=_recv,
    CFS=_cfs,
    VER=_ver,
    DEVADDR=_devaddr,
)
