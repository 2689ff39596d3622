"""A RAK3172 LoRaWAN module running RUI3, behind the virtual board's UART: the modem twin.

It speaks the RUI3 AT dialect (115200 8N1, lines end in CR LF; docs/lorawan.md lists every
command, reply and event it gives) and is a real LoRaWAN 1.0.3 class-A end device: it builds
join requests, opens join accepts with its AppKey, derives its session keys, counts frames,
encrypts FRMPayloads and signs MICs (host_tools/codec/lorawan.py), and hands every PHYPayload to
the gateways in range (host_tools/emulator/lorawan_gateway.py). Time on air follows Semtech's
formula and the EU868 duty cycle closes a sub-band after each transmission: a send that does not
fit is refused with `Restricted_Wait_<ms>_ms` and `AT_BUSY_ERROR`, as RUI3 does.

Its NVM is a JSON file beside the board's flash folder (`<flash>.rak3172.json`): keys, settings
and the session (DevAddr, session keys, both frame counters) survive the ESP32's reboots, power
cuts and the emulator's restarts, as the module's own flash keeps them.

Time: the modem runs on its own clock, `lorawan_speedup` times faster than the host's (world
quantity, default 1), so tests need not wait out 5-second join windows; and it moves ahead with
the world when the board's deep sleep fast-forwards it (`sleep_speedup`, host_tools/emulator/sleep.py). Nothing runs between UART
polls: each read or write first plays the events whose time has come.

World quantities (set with `lanterne world set`, counts are used up one per event):
`lorawan_join_failures` (the next N join requests get no answer), `lorawan_busy_refusals` (the next
N sends refused busy), `lorawan_resets` (the module resets on the next N commands: banner in the
middle of the reply), `lorawan_garbage` (probability of noise bytes before each line it prints),
`lorawan_uplink_loss` / `lorawan_downlink_loss` (probabilities), `lorawan_dr` (>= 0: the network
moves the module to that data rate), `lorawan_rssi_dbm`, `lorawan_snr_db`, `lorawan_gateways`
(gateways in range), `lorawan_tx_done_first` (TX_DONE before the RX event), `lorawan_speedup`.
`lanterne world fault lorawan missing` makes the module absent (no byte ever comes back).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

from host_tools.codec import lorawan as L
from host_tools.codec import lorawan_radio as R
from host_tools.emulator.devices import at_rui3
from host_tools.emulator.devices.parts import register
from host_tools.emulator.lorawan_gateway import GatewayRadio

JOIN_ACCEPT_DELAY = (5.0, 6.0)  # RX1 / RX2 after a join request (LoRaWAN 1.0.3, EU868 defaults)
RECEIVE_DELAY = (1.0, 2.0)  # RX1 / RX2 after a data uplink
RX_WINDOW_S = 0.1  # how long a receive window stays open when nothing comes
BANNER = "RAKwireless RAK3172 (virtual twin)\r\nRUI3 LoRaWAN 1.0.3 Class A, EU868\r\n"
NVM_SUFFIX = ".rak3172.json"

DEFAULT_NVM = {
    "deveui": "0000000000000000", "appeui": "0000000000000000", "appkey": "00000000000000000000000000000000",
    "nwm": 1, "njm": 1, "class": "A", "band": 4, "cfm": 0, "adr": 1, "dr": 0, "linkcheck": 0,
    "session": None, "fcnt_up": 0, "fcnt_down": None, "channels": list(R.EU868_DEFAULT_CHANNELS),
}


class ModemTwin:
    name = "lorawan"

    def __init__(self, world, uart: str, nvm_path: Path | None = None, broker_url: str | None = None):
        self.world = world
        self.uart = uart
        self.rng = random.Random(world.rng.random())
        self._lock = threading.RLock()
        self._real0, self._modem0, self._speed = time.monotonic(), 0.0, 1.0
        self.nvm_path = nvm_path
        self.nvm = dict(DEFAULT_NVM)
        self._load()
        self.radio = GatewayRadio(broker_url, self.clock, int(world.get("lorawan_gateways", 1.0)))
        self.duty = R.DutyCycle()
        self.out = bytearray()
        self.line = bytearray()
        self.echo = False
        self.events: list[tuple[float, int, object]] = []  # (modem time, order, bytes or callable)
        self._order = 0
        self.busy_until = 0.0  # a join or send cycle runs until then
        self.last_rx = (0, b"")  # AT+RECV=?
        self.last_confirm_ok = False  # AT+CFS=?
        self.airtime_total_s = 0.0
        self.log: list[dict] = []  # every frame on air, both ways (tests read it)
        self._ahead = float(getattr(world, "slept_ahead_s", 0.0))
        world.subscribe(self._on_world)

    def _on_world(self, what, values) -> None:
        # The board slept through time the world fast-forwarded (deep sleep at sleep_speedup): the
        # module lived through it too, asleep (its duty-cycle waits and windows ran out meanwhile).
        if what == "advance":
            with self._lock:
                ahead = float(values["slept_ahead_s"])
                self._modem0 += ahead - self._ahead
                self._ahead = ahead

    def attach_board(self, flash: Path, radio: str | None) -> None:
        """Keep the NVM beside the board's flash folder; reach the gateways through the broker `radio`."""
        self.nvm_path = flash.parent / (flash.name + NVM_SUFFIX)
        self.nvm = dict(DEFAULT_NVM)
        self._load()
        self.radio.broker_url = radio

    def detach_board(self) -> None:
        self.radio.close()

    # -- clock ----------------------------------------------------------------------------------------
    def clock(self) -> float:
        speed = max(0.001, float(self.world.get("lorawan_speedup", 1.0)))
        now = time.monotonic()
        if speed != self._speed:
            self._modem0 += (now - self._real0) * self._speed
            self._real0, self._speed = now, speed
        return self._modem0 + (now - self._real0) * self._speed

    # -- NVM ------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.nvm_path and self.nvm_path.exists():
            try:
                self.nvm.update(json.loads(self.nvm_path.read_text()))
            except (OSError, ValueError):
                pass  # a corrupt NVM reads as factory defaults, as the module's CRC check would

    def save(self) -> None:
        if self.nvm_path is None:
            return
        tmp = self.nvm_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.nvm, indent=1, sort_keys=True))
        os.replace(tmp, self.nvm_path)

    # -- world knobs --------------------------------------------------------------------------------
    def _knob(self, key: str, default: float = 0.0) -> float:
        return float(self.world.get(key, default))

    def take_count(self, key: str) -> bool:
        """Use up one of the injected events `key` counts; True when there was one."""
        n = int(self._knob(key))
        if n > 0:
            self.world.set(**{key: n - 1})
            return True
        return False

    def chance(self, key: str) -> bool:
        p = self._knob(key)
        return p > 0 and self.rng.random() < p

    def absent(self) -> bool:
        return self.world.fault(self.name, "missing") or self.world.fault(self.name, "nack")

    # -- UART -----------------------------------------------------------------------------------------
    def uart_write(self, data: bytes) -> None:
        with self._lock:
            self.advance()
            if self.absent():
                return
            for b in data:
                if self.echo:
                    self.out.append(b)
                if b in (0x0D, 0x0A):
                    if self.line:
                        text = bytes(self.line).decode("latin-1")
                        self.line.clear()
                        self.command(text)
                elif len(self.line) < 600:
                    self.line.append(b)

    def uart_read(self, n: int) -> bytes:
        with self._lock:
            self.advance()
            out = bytes(self.out[:n])
            del self.out[:n]
            return out

    def emit(self, *lines: str) -> None:
        for line in lines:
            if self.chance("lorawan_garbage"):
                self.out += bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 12)))
            self.out += line.encode() + b"\r\n"

    def at(self, when: float, what) -> None:
        self._order += 1
        self.events.append((when, self._order, what))
        self.events.sort(key=lambda e: (e[0], e[1]))

    def advance(self) -> None:
        dr = int(self._knob("lorawan_dr", -1.0))
        if dr >= 0:
            self.world.set(lorawan_dr=-1.0)
            if dr in R.EU868_DR_SF:
                self.nvm["dr"] = dr
                self.save()
        while self.events and self.events[0][0] <= self.clock():
            _, _, what = self.events.pop(0)
            if self.absent():
                continue
            if callable(what):
                what()
            else:
                self.emit(what)

    def command(self, text: str) -> None:
        if self.take_count("lorawan_resets"):
            self.reset(mid_reply=True)
            return
        at_rui3.handle(self, text.strip())

    def reset(self, mid_reply: bool = False) -> None:
        """The module restarts: what it was doing is lost, NVM stays; its banner is printed."""
        self.events.clear()
        self.busy_until = 0.0
        self.line.clear()
        if mid_reply:
            self.out += b"AT_"  # the reply it had begun
        self.out += b"\r\n" + BANNER.encode()

    # -- LoRaWAN --------------------------------------------------------------------------------------
    @property
    def joined(self) -> bool:
        return self.nvm.get("session") is not None

    def busy(self) -> bool:
        return self.clock() < self.busy_until

    def channels(self) -> list[int]:
        return [int(c) for c in self.nvm.get("channels") or R.EU868_DEFAULT_CHANNELS]

    def duty_wait_ms(self) -> int:
        return int(self.duty.wait_s(self.channels(), self.clock()) * 1000 + 0.999)

    def _transmit(self, phy: bytes, kind: str) -> tuple[float, bytes, int]:
        """Put `phy` on air now: (end of transmission, context, spreading factor)."""
        now = self.clock()
        free = [c for c in self.channels() if self.duty.blocked_until(c) <= now]
        freq = self.rng.choice(free)
        sf = R.EU868_DR_SF[int(self.nvm["dr"])]
        airtime = R.time_on_air_s(len(phy), sf)
        self.duty.record(freq, now, airtime)
        self.airtime_total_s += airtime
        context = os.urandom(8)
        lost = self.chance("lorawan_uplink_loss") or (kind == "join" and self.take_count("lorawan_join_failures"))
        heard = False
        if not lost:
            heard = self.radio.transmit(phy, freq, sf, self._knob("lorawan_rssi_dbm", -95.0), self._knob("lorawan_snr_db", 7.0), context)
        self.log.append({"dir": "up", "kind": kind, "phy": phy.hex(), "freq": freq, "sf": sf, "airtime_s": airtime,
                         "lost": lost, "heard": heard})
        return now + airtime, context, sf

    def _receive(self, context: bytes, tx_end: float, delays: tuple[float, float]):
        """The downlink heard in RX1 or RX2 for the uplink with `context`: (window 1|2, phy) or None."""
        for arrival, downlink_id, gateway, items in self.radio.take(context):
            used, status = -1, "TOO_LATE"
            for i, (_phy, _freq, _sf, delay, _ctx) in enumerate(items[:2]):
                if arrival <= tx_end + delay:
                    used, status = i, "OK"
                    break
            self.radio.tx_ack(downlink_id, gateway, status, len(items), max(used, 0))
            if used < 0:
                continue
            phy = items[used][0]
            self.log.append({"dir": "down", "phy": phy.hex(), "window": used + 1, "lost": False})
            if self.chance("lorawan_downlink_loss"):
                self.log[-1]["lost"] = True
                continue
            return used + 1, phy
        return None

    def start_join(self, attempts: int, interval_s: float) -> None:
        key, appeui, deveui = (bytes.fromhex(self.nvm[k]) for k in ("appkey", "appeui", "deveui"))

        def attempt(left: int) -> None:
            wait = self.duty.wait_s(self.channels(), self.clock())
            if wait > 0:
                self.at(self.clock() + wait, lambda: attempt(left))
                return
            dev_nonce = self.rng.randrange(0x10000)
            tx_end, ctx, _ = self._transmit(L.join_request(key, appeui, deveui, dev_nonce), "join")
            self.busy_until = tx_end + JOIN_ACCEPT_DELAY[1] + RX_WINDOW_S + (interval_s if left > 1 else 0)

            def windows_closed() -> None:
                got = self._receive(ctx, tx_end, JOIN_ACCEPT_DELAY)
                if got is not None:
                    try:
                        ja = L.open_join_accept(key, got[1])
                    except L.FrameError:
                        ja = None
                    if ja is not None:
                        nwk, app = L.session_keys(key, ja.app_nonce, ja.net_id, dev_nonce)
                        chans = list(R.EU868_DEFAULT_CHANNELS) + _cflist_channels(ja.cf_list)
                        self.nvm.update(session={"devaddr": ja.dev_addr, "nwkskey": nwk.hex(), "appskey": app.hex(),
                                                 "rx1_dr_offset": ja.rx1_dr_offset, "rx2_dr": ja.rx2_dr},
                                        fcnt_up=0, fcnt_down=None, channels=chans)
                        self.save()
                        self.busy_until = 0.0
                        self.emit("+EVT:JOINED")
                        return
                if left > 1:
                    self.at(self.clock() + interval_s, lambda: attempt(left - 1))
                else:
                    self.busy_until = 0.0
                    self.emit("+EVT:JOIN_FAILED_RX_TIMEOUT")

            self.at(tx_end + JOIN_ACCEPT_DELAY[1] + RX_WINDOW_S, windows_closed)

        self.nvm["session"] = None
        self.save()
        attempt(max(1, attempts))

    def start_send(self, port: int, payload: bytes) -> None:
        s = self.nvm["session"]
        nwk, app, addr = bytes.fromhex(s["nwkskey"]), bytes.fromhex(s["appskey"]), int(s["devaddr"])
        confirmed = bool(self.nvm["cfm"])
        fopts = bytes([L.CID_LINK_CHECK]) if self.nvm.get("linkcheck") else b""
        if self.nvm.get("linkcheck") == 1:
            self.nvm["linkcheck"] = 0
        fcnt = int(self.nvm["fcnt_up"])
        frame = L.DataFrame(L.CONFIRMED_UP if confirmed else L.UNCONFIRMED_UP, addr, fcnt, port, payload,
                            fopts=fopts, adr=bool(self.nvm["adr"]), ack=bool(self.nvm.pop("ack_next", False)))
        phy = L.build_data(frame, nwk, app)
        self.nvm["fcnt_up"] = fcnt + 1
        self.save()
        tx_end, ctx, _ = self._transmit(phy, "data")
        done_at = tx_end + RECEIVE_DELAY[1] + RX_WINDOW_S
        self.busy_until = done_at

        def windows_closed() -> None:
            self.busy_until = 0.0
            got = self._receive(ctx, tx_end, RECEIVE_DELAY)
            down = None
            if got is not None:
                try:
                    down = L.open_data(got[1], nwk, app, self.nvm.get("fcnt_down"))
                    if self.nvm.get("fcnt_down") is not None and down.fcnt <= self.nvm["fcnt_down"]:
                        down = None  # a replayed downlink: LoRaMAC drops it
                except L.FrameError:
                    down = None
            lines = []
            if down is not None and down.dev_addr == addr:
                self.nvm["fcnt_down"] = down.fcnt
                if down.mtype == L.CONFIRMED_DOWN:
                    self.nvm["ack_next"] = True  # the next uplink carries the ACK bit
                self.save()
                if down.fport is not None and down.fport > 0:
                    self.last_rx = (down.fport, down.payload)
                    lines.append(f"+EVT:RX_{got[0]}:{self._knob('lorawan_rssi_dbm', -95.0):.0f}:"
                                 f"{self._knob('lorawan_snr_db', 7.0):.0f}:UNICAST:{down.fport}:{down.payload.hex()}")
                if fopts:
                    lines.append(_linkcheck_event(down.fopts, self._knob("lorawan_rssi_dbm", -95.0), self._knob("lorawan_snr_db", 7.0)))
            elif fopts:
                lines.append("+EVT:LINKCHECK:1:0:0:0:0")
            acked = down is not None and down.ack
            if confirmed:
                self.last_confirm_ok = acked
                tx = "+EVT:SEND_CONFIRMED_OK" if acked else "+EVT:SEND_CONFIRMED_FAILED(4)"
            else:
                tx = "+EVT:TX_DONE"
            if self._knob("lorawan_tx_done_first") > 0:
                lines.insert(0, tx)
            else:
                lines.append(tx)
            self.emit(*lines)

        self.at(done_at, windows_closed)


def _cflist_channels(cf_list: bytes) -> list[int]:
    out = []
    for i in range(0, min(15, len(cf_list)), 3):
        f = int.from_bytes(cf_list[i : i + 3], "little") * 100
        if f:
            out.append(f)
    return out


def _linkcheck_event(fopts: bytes, rssi: float, snr: float) -> str:
    i = fopts.find(bytes([L.CID_LINK_CHECK]))
    if i < 0 or i + 2 >= len(fopts):
        return "+EVT:LINKCHECK:1:0:0:0:0"
    return f"+EVT:LINKCHECK:0:{fopts[i + 1]}:{fopts[i + 2]}:{rssi:.0f}:{snr:.0f}"


@register("lorawan_modem")
def _lorawan_modem(world, spec, board):
    if spec.get("modem") not in (None, "rak3172"):
        raise ValueError(f"no twin for LoRaWAN modem {spec.get('modem')!r}; the emulator has rak3172 (RUI3)")
    return ModemTwin(world, uart=spec["bus"])
