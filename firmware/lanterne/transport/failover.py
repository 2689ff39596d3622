# Lanterne failover: MQTT over the board's IP link while it is healthy, the board's LoRaWAN modem
# while it is not (a board file with both: its `lorawan` field; config transport "failover").
# docs/lorawan.md, "Failover".
#
# One object is both the app's link (transport/link.py's contract) and the uplink step's outbox
# (lanterne/uplink.py: peek / ack / taken / pending, what the store or LoRaWAN's delivery ledger
# offer): the link a frame goes over decides how what it carried is committed, so the two must
# be chosen together. `max_frame(READINGS)` picks the link for the frame about to be built
# (`cur`: MQTT if it is up, else LoRaWAN); the peek, the send and the commit of that frame all
# go through `cur`.
#
#   MQTT up     the store as on an MQTT board: every kept reading, in the store's order, each
#               committed on its PUBACK. That includes readings sent over LoRaWAN that no ledger
#               acknowledged yet: they go again over MQTT and are freed once (the back office
#               drops the duplicates by seq); a ledger arriving later frees nothing twice (the
#               store ignores what is already committed).
#   MQTT down   (a connect failed, or the connection was lost): LoRaWAN is brought up (joined, or
#               its module's session resumed) and the readings go through LoRaWAN's delivery
#               ledger (lanterne/delivery.py), within its airtime budget: first the readings with
#               an alarm or fault flag sampled since (`alarm(seq)`: the ledger's own alarms-first
#               bookkeeping, as on a LoRaWAN-only board), each frame of them sent ahead of the
#               backlog, then the rest in order, batched by the budget. Each time the board fails
#               over, the ledger's bookkeeping starts afresh from what the store still holds.
#               MQTT is tried again on its own backoff; when it connects, the rest goes over it.
# One sequence space (the store's); commands from either link go to the one command handler
# (one verifier, one replay counter); a command's ack goes over the link that is up when it is
# sent (LoRaWAN: the compact ack). The status goes over MQTT only (LoRaWAN drops it: airtime).
# No update channel: a dual board is updated while MQTT is up through `lanterne provision`
# (ota_start is refused, execute.py).
import asyncio

from lanterne.transport.link import ACK, ONLINE, OFFLINE, READINGS


class Failover:
    name = "mqtt"  # the app's fault key while both links are down; LoRaWAN's faults are "lorawan"

    # mqtt, lora: the two links (their on_downlink: the app's); store: the store; delivery: the
    # LedgerDelivery in front of it (lora.on_ledger = delivery.ledger); net: the IP network
    # (lanterne/net.py); faults: the app's fault dict; wake(): the app's uplink flag's set.
    def __init__(self, mqtt, lora, store, delivery, net, faults, wake):
        self.mqtt = mqtt
        self.lora = lora
        self.store = store
        self.delivery = delivery
        self.net = net
        self.faults = faults
        self.wake = wake
        self.cur = mqtt  # the link the frame being built goes over
        self.hello = None  # the app's status, given with each MQTT connection
        self.failovers = 0  # times the readings went over to LoRaWAN since boot

    # -- the link contract --------------------------------------------------------------------
    @property
    def up(self):
        return self.mqtt.up or self.lora.up

    @property
    def state(self):
        return ONLINE if self.up else OFFLINE

    @property
    def last_error(self):
        return self.mqtt.last_error

    @property
    def connects(self):
        return self.mqtt.connects

    @property
    def tls_heap(self):
        return self.mqtt.tls_heap

    @property
    def where(self):
        m = self.mqtt
        return "%s:%d" % (m.host, m.port) if m.up else self.lora.where

    def _lora_wanted(self):
        # LoRaWAN comes up once MQTT failed (a connect refused or timed out, a connection lost)
        return not self.mqtt.up and (self.mqtt.failures > 0 or not self.net.up())

    def due(self):
        m = self.mqtt
        if m.due() and self.net.up():
            return True
        return not self.lora.up and self._lora_wanted() and self.lora.due()

    async def connect(self, hello):
        self.hello = hello
        m = self.mqtt
        if m.due() and self.net.up() and await m.connect(hello):
            self._mqtt_back()
            return True
        if not self.net.up():
            m.last_error = "mqtt: the IP network is down"
        if not self.lora.up and self._lora_wanted() and self.lora.due():
            await self._lora_connect()
        return self.up

    async def maintain(self):
        m = self.mqtt
        lo = self.lora
        if m.up:
            await m.maintain()
            if lo.up and lo.at is not None:
                lo.at.pump()  # (a downlink still coming after the last LoRaWAN uplink)
            if not m.up:
                self.faults["mqtt"] = m.last_error
                print("[lanterne] %s: readings go over LoRaWAN until it returns" % m.last_error)
            return
        if lo.up:
            await lo.maintain()
            if not lo.up:
                self.faults["lorawan"] = lo.last_error
                print("[lanterne] " + str(lo.last_error))
        else:
            await asyncio.sleep_ms(200)
        if m.due() and self.net.up() and self.hello is not None:
            if await m.connect(self.hello):
                print("[lanterne] mqtt back (%s:%d): the rest goes over MQTT" % (m.host, m.port))
                self._mqtt_back()
                self.wake()
            else:
                self.faults["mqtt"] = m.last_error
        elif not lo.up and self._lora_wanted() and lo.due():
            await self._lora_connect()

    def close(self):
        self.mqtt.close()
        self.lora.close()

    def max_frame(self, kind):
        link = self.mqtt if self.mqtt.up else self.lora
        if kind == READINGS:
            self.cur = link
        return link.max_frame(kind) if link.up else 0

    def fits(self, kind, nbytes):
        return (self.cur if kind == READINGS else self.mqtt if self.mqtt.up else self.lora).fits(kind, nbytes)

    def ack_frame(self, ack, key):
        # the ack as MQTT sends it and the key it is signed with: its form is chosen when it goes
        return (ack, key)

    async def send(self, kind, payload):
        if kind == READINGS:
            link = self.cur
        else:
            link = self.mqtt if self.mqtt.up else self.lora
            if kind == ACK:
                payload = link.ack_frame(payload[0], payload[1]) if link is self.lora else payload[0]
        return await link.send(kind, payload)

    async def _lora_connect(self):
        lo = self.lora
        if await lo.connect():
            self.faults.pop("lorawan", None)
            self.failovers += 1
            self.delivery.restart()  # what MQTT did not commit goes again, from the store's head
            print("[lanterne] mqtt down, connected to %s: alarms first, then the readings" % lo.where)
            self.wake()
        elif lo.last_error:
            self.faults["lorawan"] = lo.last_error
            print("[lanterne] " + lo.last_error)

    def _mqtt_back(self):
        self.faults.pop("mqtt", None)
        self.delivery.restart(alarms=False)  # (in the store's order over MQTT now)

    # -- alarms first ---------------------------------------------------------------------------
    def alarm(self, seq):
        """A reading with an alarm or fault flag was stored as `seq` (from the sampling task): it
        goes first over LoRaWAN (lanterne/delivery.py keeps the bookkeeping); over MQTT, in order."""
        if not self.mqtt.up:
            self.delivery.alarm(seq)

    # -- the outbox contract ----------------------------------------------------------------------
    @property
    def pending(self):
        if self.mqtt.up:
            return self.store.pending
        return self.delivery.pending  # (the alarms are kept readings it counts)

    def peek(self, budget=1024, max_records=0):
        if self.cur is self.mqtt:
            return self.store.peek(budget=budget, max_records=max_records)
        return self.delivery.peek(budget, max_records)  # (the alarms first)

    def ack(self, batch):
        if self.cur is self.mqtt:
            return self.store.ack(batch)
        return self.delivery.ack(batch)

    def taken(self, batch):
        if self.cur is self.mqtt:
            return self.store.ack(batch)  # its PUBACK is in
        return self.delivery.taken(batch)
