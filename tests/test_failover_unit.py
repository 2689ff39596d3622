"""The failover link's choices, on the unix port (firmware/lanterne/transport/failover.py; its
link contract, transport/link.py, is MicroPython's asyncio only).

tests/test_failover.py drives a whole dual board through a broker outage. These tests hold the
decisions it makes on the real store and the real delivery ledger, with the two links below them
replaced by scripted ones (up or down, what they were sent): which link a frame of readings goes
over, which readings it carries (alarms ahead of the backlog over LoRaWAN, each reading once in
order after them), how what it carried is committed (MQTT: freed on its PUBACK; LoRaWAN: kept until
a ledger frees it, so MQTT sends it again when it returns), and which form a command's ack takes.
"""

from __future__ import annotations

import json

import pytest

from host_tools.runtime import unix_port

SETUP = """
import asyncio, binascii, json
from lanterne.delivery import LedgerDelivery
from lanterne.store import Store
from lanterne.transport.failover import Failover
from lanterne.transport.link import ACK, READINGS, STATUS

class Link:
    # One of the two links as the failover sees it: up or not, what it was sent.
    def __init__(self, name, size):
        self.name, self.size = name, size
        self.up, self.failures, self.last_error, self.connects, self.tls_heap = True, 0, None, 0, 0
        self.host, self.port, self.where, self.at = name, 1, name, None
        self.sent = []
        self.reachable = True  # whether a connect succeeds
    def due(self):
        return True
    async def connect(self, hello=None):
        self.up = self.reachable
        self.connects += self.up
        return self.up
    async def maintain(self):
        pass
    def max_frame(self, kind):
        return self.size
    def fits(self, kind, nbytes):
        return nbytes <= self.size
    def ack_frame(self, ack, key):
        return b"compact:" + ack
    async def send(self, kind, payload):
        self.sent.append([kind, binascii.hexlify(bytes(payload)).decode()])
        return True
    def close(self):
        pass

class Net:
    def up(self):
        return True

def seqs(batch):
    return [item[0] for item in batch]

def readings(fo, budget=1024):
    # What uplink.py does for one frame: choose the link, peek, send, commit what was taken.
    fo.max_frame(READINGS)
    batch = fo.peek(budget=budget, max_records=4)
    if batch:
        asyncio.run(fo.send(READINGS, b"".join(r for _s, r in batch)))
        fo.taken(batch)
    return [fo.cur.name, seqs(batch)]

def run(folder):
    store = Store(folder + "/st", capacity_bytes=16384, segment_bytes=4096)
    faults = {}
    delivery = LedgerDelivery(store, "dual-1", lambda: b"k" * 32, faults, ledger_file=folder + "/ledger")
    mqtt, lora = Link("mqtt", 256), Link("lora", 51)
    lora.up = False
    woken = []
    fo = Failover(mqtt, lora, store, delivery, Net(), faults, lambda: woken.append(1))
    out = {}
    for i in range(6):
        store.append(bytes([i + 1]) * 8)
    out["mqtt_up"] = [readings(fo), readings(fo), store.pending]
    before = len(mqtt.sent)
    # The broker goes away; readings 6..13 are sampled meanwhile, 9 and 12 with a fault flag.
    mqtt.up, mqtt.reachable, mqtt.failures, mqtt.last_error = False, False, 1, "mqtt: connect timed out"
    for i in range(6, 14):
        seq = store.append(bytes([i + 1]) * 8)
        if i in (9, 12):
            fo.alarm(seq)
    out["lora_wanted"] = [fo.due(), fo.up]
    asyncio.run(fo.connect(b"hello"))
    out["failed_over"] = [fo.up, lora.connects, fo.failovers, len(woken), fo.pending]
    out["lora"] = [readings(fo) for _ in range(5)]
    out["lora_kept"] = store.pending  # nothing freed without a ledger
    asyncio.run(fo.send(ACK, (b"ack-7", b"key")))
    asyncio.run(fo.send(STATUS, b"status"))
    out["acks_down"] = [lora.sent[-2], lora.sent[-1][0] == STATUS, len(mqtt.sent) - before]
    # The broker is back: every reading not freed goes over MQTT, in the store's order, once.
    mqtt.reachable = True
    asyncio.run(fo.maintain())
    out["mqtt_back"] = [readings(fo), readings(fo), readings(fo), readings(fo), store.pending, fo.delivery.alarms]
    asyncio.run(fo.send(ACK, (b"ack-8", b"key")))
    out["ack_up"] = mqtt.sent[-1]
    out["faults"] = sorted(faults)
    return out
"""


@pytest.fixture(scope="module")
def got(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failover")
    return unix_port.run_json(SETUP + f"\nprint(json.dumps(run({json.dumps(str(folder))})))\n")


def test_alarms_go_first_over_lorawan_and_every_reading_goes_over_mqtt_once_when_it_returns(got):
    # MQTT up: the store's order, each frame freed on its PUBACK
    assert got["mqtt_up"] == [["mqtt", [0, 1, 2, 3]], ["mqtt", [4, 5]], 0]
    # MQTT failed and LoRaWAN is down: it is wanted, and connecting brings it up (the uplink task woken)
    assert got["lora_wanted"] == [True, False]
    assert got["failed_over"] == [True, 1, 1, 1, 8]
    # Over LoRaWAN: the two alarms first in a frame of their own, then the backlog in order
    # without them (each reading once: an alarm the in-order cursor skips is not sent again)
    lora = got["lora"]
    assert all(link == "lora" for link, _s in lora)
    assert lora[0][1] == [9, 12]
    assert [s for _l, frame in lora[1:] for s in frame] == [6, 7, 8, 10, 11, 13]
    assert got["lora_kept"] == 8  # LoRaWAN frees a reading only when a ledger says it arrived
    # While MQTT is down the status is handed to LoRaWAN too (its link drops it: airtime), and
    # nothing reaches MQTT
    assert got["acks_down"][1:] == [True, 0]


def test_an_ack_takes_the_form_of_the_link_that_is_up(got):
    kind_down, payload_down = got["acks_down"][0]
    assert bytes.fromhex(payload_down) == b"compact:ack-7"  # LoRaWAN's compact ack, over LoRaWAN
    kind_up, payload_up = got["ack_up"]
    assert bytes.fromhex(payload_up) == b"ack-8" and kind_up == kind_down  # MQTT's own, over MQTT


def test_what_lorawan_carried_without_a_ledger_goes_again_over_mqtt_and_is_freed_once(got):
    frames = got["mqtt_back"][:4]
    sent = [s for link, s in frames if link == "mqtt" for s in s]
    assert all(link == "mqtt" for link, _s in frames)
    assert sent == list(range(6, 14))  # in the store's order, alarms included, each once
    assert got["mqtt_back"][4:] == [0, []]  # all freed; no alarm left to jump the queue
    assert "mqtt" not in got["faults"]
