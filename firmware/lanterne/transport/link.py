# Lanterne link: the one interface the application sends and receives through. MQTT over IP
# implements it (transport/mqtt.py), and so does a LoRaWAN AT modem (transport/lorawan.py). The
# app's uplink, ack and status loops are written once against it.
#
# The contract. Every method either returns at once or is a coroutine that lets the asyncio
# loop run while it waits, and every wait has its own bound: no link ever holds the loop.
#
#   await link.connect(hello)   one attempt to come up (MQTT: DNS, TCP, TLS, CONNECT, SUBSCRIBE,
#                               then `hello`, the app's status, goes out; LoRaWAN: the join).
#                               True when up. On failure `last_error` says why and the next
#                               attempt is allowed after a backoff with jitter (`due()`).
#   link.due()                  whether an attempt is allowed now.
#   await link.send(kind, payload)
#                               one frame of a kind (READINGS, STATUS, ACK). True once the far
#                               end has taken responsibility for it (MQTT: the PUBACK): only then
#                               may the app commit what the frame carried. False when the link
#                               went down on the way (nothing to commit; the app retries later).
#                               One frame at a time: the app sends from one task, in order.
#   link.max_frame(kind)        the largest payload of that kind the link takes now (LoRaWAN:
#                               the data rate's; MQTT: the codec frame).
#   link.fits(kind, nbytes)     whether sending that now fits the airtime budget (MQTT: always).
#   await link.maintain()       keep the link alive (MQTT: keepalive pings, a dead connection
#                               found out); returns within about 200 ms.
#   link.close()                drop the link at once (the far end may learn it only later).
#   link.state, link.up, link.last_error, link.connects
#                               what the app and its status report.
#   on_downlink(frame)          given at construction, called on the loop with the bytes of
#                               each downlink meant for this board (a command frame).
#
# Over-the-air updates (lanterne/ota.py). Optional: a link that carries them has an updates()
# method (MQTT does); one without it (LoRaWAN: boards that talk only LoRaWAN are updated over
# USB) has none, and the app refuses an ota_start command on it, saying why (execute.py).
#   link.updates(on_update, nbytes)
#                               opens the update channel: from then on each message the back
#                               office sends on it (MQTT .../ota/data) is given to
#                               on_update(bytes), on the loop, if at most `nbytes` long (MQTT:
#                               subscribed to on each connection before its next frame goes
#                               out, and the receive buffer grown to take such a message).
#                               link.updates(None, 0) closes it and gives the buffer back; it
#                               is also what a sender of OTA frames calls first (no channel).
#   await link.send(OTA_REQ, payload)        an update's request (MQTT .../ota/req, QoS 0:
#                               True once written; the updater asks again if no answer comes)
#   await link.send(OTA_PROGRESS, payload)   an update's progress record (MQTT: retained JSON
#                               on .../ota/progress, QoS 1)
#                               Both go through the app's one sending task like every frame.
# Nothing of it is allocated until an update needs it: a board that is not updating carries no
# more state than one without OTA (the 64 KB heap has no room to spare).
#   link.ack_frame(ack, key)    the frame to send as the ACK of a command, from the ack
#                               commands.py made (MQTT: that frame; LoRaWAN: the compact ack).
#   link.name, link.where       the app's fault key ("mqtt", "lorawan") and what it connects to.
import random
import time

from asyncio import core
from micropython import const

READINGS = const(0)  # a codec frame of readings (MQTT .../up; LoRaWAN FPort 102)
STATUS = const(1)  # the board's status (MQTT: retained JSON on .../status)
ACK = const(2)  # a signed command result (MQTT .../ack)
OTA_REQ = const(3)  # an update's request (MQTT .../ota/req)
OTA_PROGRESS = const(4)  # an update's progress record (MQTT: retained JSON on .../ota/progress)

OFFLINE = const(0)
CONNECTING = const(1)
ONLINE = const(2)

_BACKOFF_CAP_MS = const(300000)


class Flag:
    """asyncio.Event for one waiting task (`await flag.wait()`, `set()`, `clear()`), without
    loading asyncio's event module: the heap is tight at 64 KB."""

    def __init__(self):
        self.state = False
        self.waiting = None

    def set(self):
        self.state = True
        t = self.waiting
        if t is not None:
            self.waiting = None
            core._task_queue.push(t)

    def clear(self):
        self.state = False

    def remove(self, task):
        # asyncio calls this when the waiting task is cancelled (a wait_for that timed out)
        if self.waiting is task:
            self.waiting = None

    def wait(self):
        if not self.state:
            self.waiting = core.cur_task
            core.cur_task.data = self  # so that cancelling the task calls remove()
            yield


class Link:
    on_update = None  # the update channel's receiver while it is open (links with updates())

    def __init__(self, on_downlink):
        self.on_downlink = on_downlink
        self.state = OFFLINE
        self.up = False  # state == ONLINE
        self.last_error = None
        self.failures = 0
        self.connects = 0
        self.next_try = time.ticks_ms()

    def due(self):
        return time.ticks_diff(time.ticks_ms(), self.next_try) >= 0

    def fits(self, kind, nbytes):
        return True

    def ack_frame(self, ack, key):
        return ack

    def _came_up(self):
        self.state = ONLINE
        self.up = True
        self.failures = 0
        self.connects += 1
        self.last_error = None

    def _went_down(self, why):
        # Once per failure. The next attempt waits out an exponential backoff with full jitter:
        # 1 s, 2 s, 4 s ... capped at 5 min, so a city's lamps do not all reconnect in the same
        # second after a broker restart.
        self.last_error = why
        self.failures += 1
        cap = min(_BACKOFF_CAP_MS, 1000 << min(self.failures, 9))
        self.next_try = time.ticks_add(time.ticks_ms(), cap // 2 + random.getrandbits(20) % (cap // 2 + 1))
        self.state = OFFLINE
        self.up = False
