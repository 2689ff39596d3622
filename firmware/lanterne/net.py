# Lanterne network bring-up: Wi-Fi station or Ethernet PHY per board.json, never blocking forever.
import time


class Network:
    def __init__(self, board, cfg):
        self.kind = board.get("network", {}).get("kind", "wlan")
        self.spec = board.get("network", {})
        self.cfg = cfg
        self.nic = None
        self.error = None

    def start(self):
        """Create and activate the interface. Returns False (and sets .error) when it cannot."""
        try:
            import network

            if self.kind == "lan":
                from machine import Pin

                s = self.spec
                self.nic = network.LAN(
                    mdc=Pin(s.get("mdc", 23)),
                    mdio=Pin(s.get("mdio", 18)),
                    power=Pin(s["power"]) if s.get("power") is not None else None,
                    phy_type=network.PHY_LAN8720,
                    phy_addr=s.get("phy_addr", 0),
                )
                self.nic.active(True)
            elif self.kind == "wlan":
                self.nic = network.WLAN(network.STA_IF)
                self.nic.active(True)
                if self.cfg["wifi_ssid"]:
                    self.nic.connect(self.cfg["wifi_ssid"], self.cfg["wifi_key"])
                else:
                    self.nic.connect("lanterne-site", "")
            else:
                self.error = "network: kind %s has no IP link" % self.kind
                return False
        except Exception as e:  # a driver failure must not stop the board
            self.error = "network: %s: %r" % (self.kind, e)
            return False
        return True

    def up(self):
        try:
            return bool(self.nic and self.nic.isconnected())
        except Exception:
            return False

    def rssi(self):
        if self.kind != "wlan" or not self.up():
            return None
        try:
            return self.nic.status("rssi")
        except Exception:
            return None

    async def wait_up(self, timeout_ms):
        import asyncio

        t0 = time.ticks_ms()
        while not self.up():
            if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                return False
            await asyncio.sleep_ms(100)
        return True
