# Virtual ESP32: the `network` module. WLAN (station/AP) and LAN (Ethernet PHY) whose link
# follows the simulated world; sockets themselves are real host sockets (see socket.py).
import time
import _hal
from micropython import const

STA_IF = const(0)
AP_IF = const(1)
STAT_IDLE = const(1000)
STAT_CONNECTING = const(1001)
STAT_GOT_IP = const(1010)
STAT_NO_AP_FOUND = const(201)
STAT_WRONG_PASSWORD = const(202)
STAT_BEACON_TIMEOUT = const(200)
STAT_ASSOC_FAIL = const(203)
STAT_HANDSHAKE_TIMEOUT = const(204)
PHY_LAN8720 = const(0)
PHY_IP101 = const(1)
PHY_RTL8201 = const(2)
PHY_DP83848 = const(3)
PHY_KSZ8041 = const(4)
PHY_KSZ8081 = const(5)
ETH_INITIALIZED = const(0)
ETH_STARTED = const(1)
ETH_STOPPED = const(2)
ETH_CONNECTED = const(3)
ETH_DISCONNECTED = const(4)
ETH_GOT_IP = const(5)
AUTH_OPEN = const(0)
AUTH_WEP = const(1)
AUTH_WPA_PSK = const(2)
AUTH_WPA2_PSK = const(3)
AUTH_WPA_WPA2_PSK = const(4)
AP_ADDRESS = "192.168.4.1"  # the ESP32's soft-AP address (ESP-IDF's default DHCP server subnet)
STA_ADDRESS = "10.0.0.2"

_hostname = ["esp32"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name


def country(code=None):
    return "EU" if code is None else None


def _ifconfig(up):
    return (STA_ADDRESS, "255.255.255.0", "10.0.0.1", "10.0.0.1") if up else ("0.0.0.0",) * 4


_up = {}  # address -> interface object holding it: what socket.bind() may use


def has_address(ip):
    """The board has `ip` on an interface that is up (socket.bind refuses others, as lwIP does)."""
    nic = _up.get(ip)
    return nic is not None and nic._holds(ip)


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF
    PM_NONE = const(0)
    PM_PERFORMANCE = const(1)
    PM_POWERSAVE = const(2)

    SEC_OPEN = AUTH_OPEN
    SEC_WEP = AUTH_WEP
    SEC_WPA = AUTH_WPA_PSK
    SEC_WPA2 = AUTH_WPA2_PSK
    SEC_WPA_WPA2 = AUTH_WPA_WPA2_PSK

    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        self._active = False
        self._want = False
        self._ssid = None
        self._config = {"ssid": "", "mac": b"\x24\x0a\xc4\x00\x00\x01", "txpower": 20, "pm": 1}
        if interface_id == AP_IF:
            # The ESP32 port's soft-AP defaults: an open network named after the MAC, channel 1.
            self._config.update(ssid="ESP_000002", key="", authmode=AUTH_OPEN, channel=1, max_clients=4, hidden=False)
            self._config["mac"] = b"\x24\x0a\xc4\x00\x00\x02"
        _up[AP_ADDRESS if interface_id == AP_IF else STA_ADDRESS] = self

    def _holds(self, ip):
        return self._active if self._if == AP_IF else self.isconnected()

    def _announce(self):
        # What a phone scanning nearby sees: the beacon (SSID, security) and, for the test's
        # station, the passphrase the AP accepts.
        c = self._config
        if self._active:
            _hal.call("AP %s %d %s" % (c["ssid"].encode().hex(), c["authmode"], c["key"].encode().hex() or "-"))
        else:
            _hal.call("AP -")

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._want = False
        if self._if == AP_IF:
            self._announce()

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        self._ssid = ssid
        self._config["ssid"] = ssid or ""
        self._want = True

    def disconnect(self):
        self._want = False

    def isconnected(self):
        if self._if == AP_IF:
            return False  # the ESP32's AP: True once a station joined; none joins the virtual AP's radio
        return self._active and self._want and _hal.link_up()

    def status(self, param=None):
        if param == "stations":
            return []
        if param == "rssi":
            return int(_hal.call("RSSI")) if self.isconnected() else 0
        if param is not None:
            raise ValueError("unknown status param")
        if not self._active or not self._want:
            return STAT_IDLE
        return STAT_GOT_IP if _hal.link_up() else STAT_NO_AP_FOUND

    def scan(self):
        if not _hal.link_up():
            return []
        return [(b"lanterne-site", b"\x24\x0a\xc4\x00\x00\x02", 6, int(_hal.call("RSSI")), 3, False)]

    def ifconfig(self, config=None):
        if config is not None:
            return None
        if self._if == AP_IF:
            return (AP_ADDRESS, "255.255.255.0", AP_ADDRESS, "0.0.0.0") if self._active else ("0.0.0.0",) * 4
        return _ifconfig(self.isconnected())

    def ipconfig(self, *args, **kw):
        if args and args[0] == "addr4":
            a = self.ifconfig()
            return (a[0], a[1])
        return None

    _ALIASES = {"essid": "ssid", "password": "key", "security": "authmode"}

    def config(self, *args, **kw):
        if args:
            name = self._ALIASES.get(args[0], args[0])
            if name == "key":
                raise ValueError("unknown config param")  # the ESP32 port never reads a password back
            return self._config.get(name)
        new = dict(self._config)
        for k, v in kw.items():
            new[self._ALIASES.get(k, k)] = v
        if self._if == AP_IF:
            # ESP-IDF refuses a WPA/WPA2 soft-AP whose passphrase is not 8..63 characters.
            if new["authmode"] != AUTH_OPEN and not 8 <= len(new["key"]) <= 63:
                raise OSError("Wifi Invalid Password")
            if not 1 <= len(new["ssid"]) <= 32:
                raise ValueError("SSID must be 1..32 bytes")
        self._config = new
        if self._if == AP_IF and self._active:
            self._announce()


class LAN:
    def __init__(self, id=0, *, mdc=None, mdio=None, power=None, phy_type=PHY_LAN8720, phy_addr=0, **kw):
        self._active = False
        self._t0 = time.ticks_ms()
        _up[STA_ADDRESS] = self

    def _holds(self, ip):
        return self.isconnected()

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        self._t0 = time.ticks_ms()

    def isconnected(self):
        # The PHY negotiates the link and DHCP completes about 1 s after activation.
        return self._active and time.ticks_diff(time.ticks_ms(), self._t0) > 800 and _hal.link_up()

    def status(self):
        if not self._active:
            return ETH_STOPPED
        return ETH_GOT_IP if self.isconnected() else ETH_DISCONNECTED

    def ifconfig(self, config=None):
        return _ifconfig(self.isconnected()) if config is None else None

    def ipconfig(self, *args, **kw):
        return None

    def config(self, *args, **kw):
        if args and args[0] == "mac":
            return b"\x24\x0a\xc4\x00\x00\x03"
        return None
