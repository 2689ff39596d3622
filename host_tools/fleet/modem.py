"""Write a LoRaWAN board's identity to its modem during provisioning, over AT, and read it back.

A board whose firmware uses its LoRaWAN modem (config `transport` lorawan or failover: the board
file's `network` is the modem, or its `lorawan` field names one beside an IP link) leaves the
bench with the modem checked: after the files are written, a small script runs on the board
through the same raw-REPL link (`BoardLink.exec`), opens the modem's UART (the board file's bus,
as the firmware's `transport/lorawan.py:open_uart` does) and, for each of the RUI3 settings the
firmware wants (NWM=1 LoRaWAN, NJM=1 OTAA, CLASS=A, BAND=4 EU868, ADR=1, CFM per config) and then
the identity (DEVEUI, APPEUI = the JoinEUI, APPKEY), asks `AT+XXX=?`, writes `AT+XXX=<value>` only
where the modem holds something else, and asks again: each field is "same" (already right),
"written" (written and read back equal), "unread" (the AppKey written, answered OK, but the
modem does not show it back: see below) or "failed" with the modem's own answer.

The AppKey: RUI3's AT manual documents `AT+APPKEY=?` as returning the key, and the modem twin
does. The board compares it there; it never crosses the serial link back, and nothing here
prints it. Should a module answer the query with an error, or mask the value, the key is
written anyway (nothing tells whether it differs) and reported as not read back: the first join
is then the only proof, and the firmware is told to join again (below).

A session held by the modem: the firmware does not join while its module holds a session and
the identity it finds there is the config's (the frame counters go on across reboots). When
provisioning writes a new identity to a modem that holds a session (a module moved to another
device id, a replaced modem), the firmware would find the identity right and keep the old
session. So the script then marks the firmware's LoRaWAN state file (`/lorawan.json`, the
join-backoff file of `transport/lorawan_join.py`) with `"rejoin": 1`: the next connect joins,
whatever `AT+NJS=?` says, and clears the mark once joined. Re-provisioning a board whose modem
already holds its identity writes nothing and marks nothing: no needless join.

No answer, a refusal (`AT_PARAM_ERROR`, `AT_ERROR` ...), or a value read back that is not what
was written: `ProvisionError` naming the device, the field and the modem's answer. The board's
files are written by then (they do not depend on the modem); provisioning again writes only
the modem. `skip_modem` (`lanterne provision --skip-modem`, a modem not fitted yet) leaves the
identity to the firmware's first connect, with a warning in the report.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field

from host_tools.fleet import ProvisionError

CMD_MS = 1500  # an AT command's final status (the firmware's CMD_MS)
BUSY_MS = 12000  # AT_BUSY_ERROR retried this long: a join cycle the stopped app left running (SF12 + 6 s windows)
STATE_FILE = "/lorawan.json"  # firmware/lanterne/transport/lorawan.py STATE_FILE, at the root where main.py runs
JOINEUI_ZERO = "0000000000000000"  # what the firmware writes for an empty lorawan_joineui

# The field names a technician reads (the modem's name, then ours).
LABELS = {"DEVEUI": "DevEUI", "APPEUI": "JoinEUI (AT+APPEUI)", "APPKEY": "AppKey"}
CONFIG_FIELDS = {"DEVEUI": "lorawan_deveui", "APPEUI": "lorawan_joineui", "APPKEY": "lorawan_appkey"}

SETTING, IDENTITY, SECRET = 0, 1, 2

# MicroPython, run on the board in the raw REPL (the application stopped). Blocking, every wait
# bounded; one line per field, printed as it is done: (NAME, outcome, detail); the AppKey's
# detail never holds the key.
_BOARD_CODE = r'''
def _mdm(u, steps, ms, busy_ms, state):
    import time
    rx = bytearray(128)
    cur = []
    lines = []

    def pump():
        while True:
            try:
                n = u.any() and u.readinto(rx)
            except Exception:
                return
            if not n:
                return
            for i in range(n):
                c = rx[i]
                if c == 13 or c == 10:
                    if cur:
                        lines.append(bytes(cur).decode())
                        cur.clear()
                elif 31 < c < 127 and len(cur) < 512:
                    cur.append(c)

    def cmd(text):
        # (final status line or "reset" or "" on timeout, the AT+XXX=<value> line seen before it)
        pump()
        lines.clear()
        u.write(text.encode() + b"\r\n")
        val = None
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < ms:
            pump()
            while lines:
                l = lines.pop(0)
                if "+EVT:" in l or "Restricted_Wait_" in l:
                    continue
                i = l.find("AT_")
                if i >= 0:
                    return (l[i:] if len(l) > i + 3 else "reset"), val
                i = l.find("AT+")
                if i >= 0:
                    if "=" in l and not l.endswith("=?"):
                        val = l[i:]
                    continue
                if l.endswith("OK"):
                    return "OK", val
                if "RAK" in l or "RUI" in l or "Current Work Mode" in l:
                    return "reset", val
            time.sleep_ms(5)
        return "", val

    def ready():
        st = ""
        for _ in range(3):
            st = cmd("AT")[0]
            if st == "OK":
                return ""
        return "no reply to AT within %d ms (3 tries)" % ms if st in ("", "reset") else "AT: " + st

    def run(text):
        t0 = time.ticks_ms()
        resets = 0
        while True:
            st, v = cmd(text)
            if st == "reset" and resets < 2:
                resets += 1
                why = ready()
                if why:
                    return why, None
                continue
            if st == "AT_BUSY_ERROR" and time.ticks_diff(time.ticks_ms(), t0) < busy_ms:
                time.sleep_ms(500)
                continue
            return st or "no answer within %d ms" % ms, v

    def ask(name):
        st, v = run("AT+%s=?" % name)
        head = "AT+%s=" % name
        if st == "OK" and v and v.startswith(head):
            return v[len(head):].strip(), st
        if st == "OK":
            st = "OK without a value" if v is None else "answer %r" % v[:40]
        return None, st

    def hexkey(v):
        return v is not None and len(v) == 32 and not [c for c in v if c not in "0123456789abcdefABCDEF"]

    def say(*rec):
        print(repr(rec))

    why = ready()
    if why:
        return say("AT", "failed", why)
    wrote = 0
    for name, want, kind in steps:
        have, st = ask(name)
        unread = kind == 2 and not hexkey(have)
        if have is None and (kind != 2 or st.startswith("no ")):
            return say(name, "failed", "AT+%s=?: %s" % (name, st))
        if not unread and have.upper() == want.upper():
            say(name, "same", "" if kind == 2 else have)
            continue
        st = run("AT+%s=%s" % (name, want))[0]
        if st != "OK":
            return say(name, "failed", "AT+%s=%s: %s" % (name, "<key>" if kind == 2 else want, st))
        wrote |= kind
        got, st = ask(name)
        if kind == 2 and unread and not hexkey(got) and not st.startswith("no "):
            say(name, "unread", "AT+%s=?: %s" % (name, st if got is None else "a value that is not the key"))
            continue
        if got is None:
            return say(name, "failed", "read back: AT+%s=?: %s" % (name, st))
        if got.upper() != want.upper():
            return say(name, "failed", "read back " + ("another key" if kind == 2 else got))
        say(name, "written", "" if kind == 2 else got)
    njs, st = ask("NJS")
    marked = 0
    if wrote and njs != "0":
        import json, os
        try:
            try:
                with open(state) as f:
                    s = json.loads(f.read())
            except Exception:
                s = {}
            if not isinstance(s, dict):
                s = {}
            s["rejoin"] = 1
            s["join_failures"] = s.get("join_failures", 0)
            with open(state + ".new", "w") as f:
                f.write(json.dumps(s))
            os.rename(state + ".new", state)
            marked = 1
        except Exception as e:
            return say("NJS", "failed", "cannot mark %s for a new join: %r" % (state, e))
    say("NJS", njs if njs is not None else st, marked)
'''

_OPEN = r'''
import machine
try:
    _u = machine.UART({id}, baudrate={baud}, tx={tx}, rx={rx}, timeout=0, rxbuf=1024)
except Exception as _e:
    print(repr(("UART", "failed", "cannot open UART{id}: %r" % (_e,))))
else:
    _mdm(_u, {steps!r}, {ms}, {busy}, {state!r})
'''


def modem_spec(board_data: dict) -> dict | None:
    """The board file's modem: {"modem", "bus", "region", ...} (its `network`, or its `lorawan` beside an IP link)."""
    if board_data.get("lorawan"):
        return board_data["lorawan"]
    net = board_data.get("network") or {}
    return net if net.get("kind") == "lorawan" else None


def uses_modem(board_data: dict, config: dict) -> bool:
    """The firmware will drive this board's modem: it has one and its transport is LoRaWAN or failover."""
    return modem_spec(board_data) is not None and config.get("transport", "mqtt") in ("lorawan", "failover")


def steps(config: dict) -> list[tuple[str, str, int]]:
    """What the modem must hold, in the order it is written: settings first (NWM first: a RUI3
    module restarts when its work mode changes), then the identity. The firmware's own list
    (transport/lorawan_join.py), so that its first connect finds nothing to write."""
    out = [("NWM", "1", SETTING), ("NJM", "1", SETTING), ("CLASS", "A", SETTING), ("BAND", "4", SETTING),
           ("ADR", "1", SETTING), ("CFM", "1" if config.get("lorawan_confirmed") else "0", SETTING)]
    out += [("DEVEUI", config["lorawan_deveui"].upper(), IDENTITY),
            ("APPEUI", (config.get("lorawan_joineui") or JOINEUI_ZERO).upper(), IDENTITY),
            ("APPKEY", config["lorawan_appkey"].upper(), SECRET)]
    return out


def board_code(bus: dict, wanted: list[tuple[str, str, int]], cmd_ms: int = CMD_MS, busy_ms: int = BUSY_MS,
               state: str = STATE_FILE) -> str:
    """The script the board runs (it holds the AppKey, as config.json does: it goes to the board only)."""
    return _BOARD_CODE + _OPEN.format(id=int(bus["id"]), baud=int(bus.get("baudrate", 115200)), tx=int(bus["tx"]),
                                      rx=int(bus["rx"]), steps=wanted, ms=int(cmd_ms), busy=int(busy_ms), state=state)


@dataclass
class ModemField:
    name: str  # the AT name: DEVEUI, APPEUI, APPKEY, NWM ...
    outcome: str  # same | written | unread | failed
    detail: str  # the value read back (never the AppKey), or the modem's answer

    @property
    def label(self) -> str:
        return LABELS.get(self.name, "AT+" + self.name)

    def text(self) -> str:
        value = f" {self.detail}" if self.name in ("DEVEUI", "APPEUI") and self.detail else ""
        return self.label + value + ": " + {
            "same": "already held (read back)",
            "written": "written and verified",
            "unread": f"written, not read back ({self.detail}): the first join proves it",
        }.get(self.outcome, self.detail)


@dataclass
class ModemReport:
    modem: str  # "rak3172 on uart2"
    fields: list[ModemField] = field(default_factory=list)
    session: str = ""  # AT+NJS=? after writing: "1" the module holds a session, "0" none
    rejoin: bool = False  # the firmware's state file was marked: it joins at its next connect
    seconds: float = 0.0
    skipped: bool = False

    def identity(self) -> list[ModemField]:
        return [f for f in self.fields if f.name in LABELS]

    def summary(self) -> str:
        if self.skipped:
            return f"modem ({self.modem}) not checked: --skip-modem"
        settings = [f for f in self.fields if f.name not in LABELS]
        written = sum(f.outcome == "written" for f in settings)
        line = f"modem ({self.modem}): " + "; ".join(f.text() for f in self.identity())
        line += f"; settings {' '.join(f'{f.name}={f.detail}' for f in settings)} ({written} written)"
        if self.rejoin:
            line += "; it held a session under another identity: the board joins again at its first connect"
        return line

    def to_json(self) -> dict:
        return {"modem": self.modem, "skipped": self.skipped, "session": self.session, "rejoin": self.rejoin,
                "seconds": round(self.seconds, 3),
                "fields": [{"name": f.name, "label": f.label, "outcome": f.outcome, "detail": f.detail} for f in self.fields]}


def parse(output: str) -> list[tuple]:
    """The board script's records, in order (lines that are not a record are ignored)."""
    out = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("(") and line.endswith(")"):
            try:
                rec = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                continue
            if isinstance(rec, tuple) and len(rec) == 3:
                out.append(rec)
    return out


def _failure(device: str, where: str, bus: dict, rec: tuple) -> ProvisionError:
    name, _, answer = rec
    wiring = (f"the modem's power and wiring (ESP32 TX GPIO{bus.get('tx')} -> modem RX, ESP32 RX GPIO{bus.get('rx')}"
              f" <- modem TX, {bus.get('baudrate', 115200)} 8N1)")
    again = "provision again (the files are in place: only the modem is written)"
    skip = "or pass --skip-modem to leave the identity to the firmware's first connect"
    tail = "; the board's files are written, its modem is not"
    if name in ("AT", "UART"):
        return ProvisionError(f"{device}: the LoRaWAN modem ({where}) does not answer: {answer}{tail}",
                              hint=f"check {wiring}, then {again}; {skip}", field="lorawan")
    label = LABELS.get(name, "setting AT+" + name)
    refused = "AT_" in answer and "read back" not in answer
    return ProvisionError(
        f"{device}: the LoRaWAN modem ({where}) {'refused' if refused else 'did not take'} the {label}: {answer}{tail}",
        hint=(f"check that the module runs RUI3 firmware (AT+VER=? answers RUI_...) and {wiring}, then {again}; {skip}"
              if name in LABELS else f"check {wiring}, then {again}; {skip}"),
        field=CONFIG_FIELDS.get(name, "lorawan"),
    )


def write_modem(link, device: str, board_data: dict, config: dict, say=lambda msg: None,
                cmd_ms: int = CMD_MS, busy_ms: int = BUSY_MS) -> ModemReport:
    """Write and verify the modem's settings and identity through `link` (a BoardLink in the raw
    REPL, files already written). Raises `ProvisionError` naming the device, the field and the
    modem's answer."""
    spec = modem_spec(board_data)
    bus = board_data["buses"][spec["bus"]]
    rep = ModemReport(f"{spec.get('modem', 'rak3172')} on {spec['bus']}")
    say(f"writing the LoRaWAN identity to the modem ({rep.modem}) over AT")
    t0 = time.monotonic()
    code = board_code(bus, steps(config), cmd_ms, busy_ms)
    # bounded on the board (3 x AT, then per field two queries and a write, busy retried up to busy_ms)
    out = link.exec(code, "talking to the LoRaWAN modem", timeout=busy_ms / 1000 + 30)
    records = parse(out.decode("utf-8", "replace") if isinstance(out, bytes) else out)
    rep.seconds = time.monotonic() - t0
    for rec in records:
        name, outcome, detail = rec
        if outcome == "failed":
            raise _failure(device, rep.modem, bus, rec)
        if name == "NJS":
            rep.session, rep.rejoin = str(outcome), bool(detail)
            continue
        rep.fields.append(ModemField(name, outcome, str(detail)))
    if not records or records[-1][0] != "NJS":
        raise _failure(device, rep.modem, bus, ("AT", "failed", "the board's script stopped early"
                                                + (f" ({records[-1][0]} was last)" if records else "")))
    for f in rep.identity():
        say(f"modem {f.text()}")
    return rep
