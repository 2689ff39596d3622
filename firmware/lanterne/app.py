# Lanterne application: one asyncio loop. Network and MQTT link, retained status, commands,
# watchdog fed only while the loop is healthy. Faults are reported in the status, never raised.
import asyncio
import gc
import json
import time

import machine

from lanterne import __version__, boardinfo, config
from lanterne.net import Network

RESET_CAUSES = {1: "power_on", 2: "hard_reset", 3: "watchdog", 4: "deepsleep", 5: "soft_reset"}


class App:
    def __init__(self):
        self.cfg, self.config_errors = config.load()
        self.board, board_error = boardinfo.load()
        self.faults = {}
        for i, err in enumerate(self.config_errors):
            self.faults["config%d" % i] = err
        if board_error:
            self.faults["board"] = board_error
        self.started = time.ticks_ms()
        self.reset_cause = RESET_CAUSES.get(machine.reset_cause(), "unknown")
        self.net = Network(self.board, self.cfg)
        self.link = None
        self.wdt = None
        self.loop_beat = time.ticks_ms()
        self.status_due = True
        self.backlog = 0

    # -- status ---------------------------------------------------------------
    def status(self, state="online"):
        gc.collect()
        return json.dumps(
            {
                "state": state,
                "device": self.cfg["device"],
                "board": self.board.get("name"),
                "fw": __version__,
                "uptime_s": time.ticks_diff(time.ticks_ms(), self.started) // 1000,
                "reset_cause": self.reset_cause,
                "heap_free": gc.mem_free(),
                "heap_alloc": gc.mem_alloc(),
                "backlog": self.backlog,
                "faults": sorted(self.faults.values()),
                "rssi": self.net.rssi(),
            }
        )

    def log(self, msg):
        print("[lanterne] " + msg)

    # -- tasks ----------------------------------------------------------------
    async def link_task(self):
        from lanterne.transport.mqtt import MqttLink

        if self.cfg["transport"] != "mqtt":
            self.faults["transport"] = "transport %s: not available in this firmware yet" % self.cfg["transport"]
            self.log(self.faults["transport"])
            return
        if not self.net.start():
            self.faults["network"] = self.net.error
            self.log(self.net.error)
            return
        self.link = MqttLink(self.cfg, self.on_message)
        while True:
            if not self.net.up():
                if self.link.connected:
                    self.link.close()
                    self.log("link down")
                await asyncio.sleep_ms(200)
                continue
            if not self.link.connected:
                if not self.link.due():
                    await asyncio.sleep_ms(100)
                    continue
                if self.link.connect(self.status()):
                    self.faults.pop("mqtt", None)
                    self.log("connected to %s:%d as %s" % (self.link.host, self.link.port, self.cfg["device"]))
                    self.status_due = False
                    self.last_status = time.ticks_ms()
                else:
                    self.faults["mqtt"] = self.link.last_error
                    self.log(self.link.last_error)
                continue
            if self.status_due:
                self.status_due = False
                try:
                    self.link.publish(self.link.topics["status"], self.status(), retain=True, qos=1)
                except OSError as e:
                    self.log(str(e))
                    continue
            self.link.poll()
            await asyncio.sleep_ms(50)

    async def status_task(self):
        period = self.cfg["status_period_s"] * 1000
        while True:
            await asyncio.sleep_ms(period)
            self.status_due = True

    async def heartbeat_task(self):
        # The loop is healthy while this task runs on time; only then is the watchdog fed.
        while True:
            self.loop_beat = time.ticks_ms()
            if self.wdt:
                self.wdt.feed()
            await asyncio.sleep_ms(1000)

    def on_message(self, topic, msg):
        self.log("message on %s (%d bytes)" % (topic, len(msg)))

    async def run(self):
        if self.config_errors:
            for err in self.config_errors:
                self.log(err)
        if self.cfg["watchdog_ms"]:
            self.wdt = machine.WDT(timeout=self.cfg["watchdog_ms"])
        self.log("lanterne %s on %s, device %s, reset cause %s" % (__version__, self.board.get("name"), self.cfg["device"], self.reset_cause))
        await asyncio.gather(self.link_task(), self.status_task(), self.heartbeat_task())


def main():
    app = App()
    try:
        asyncio.run(app.run())
    except KeyboardInterrupt:
        # Ctrl-C from a technician: stop, and give the REPL an hour before the watchdog bites
        # (the ESP32's watchdog cannot be stopped once started, only reconfigured).
        if app.wdt:
            machine.WDT(timeout=3600000)
        if app.link:
            app.link.close()
        raise
