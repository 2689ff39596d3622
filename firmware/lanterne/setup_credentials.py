# Lanterne setup access point: its name (SSID) and WPA2 passphrase, derived from the device id
# and the per-device `setup_key` provisioning wrote into config.json. Pure: the host runs this
# same file to print the label (`lanterne label`), so the label and the board always agree.
#
# passphrase = 16 characters of HMAC-SHA256(setup_key, "lanterne-setup-v1:pass:" + device),
# 5 bits each from an alphabet without look-alikes (no 0/o, 1/l), in groups of four: 80 bits,
# typed by hand if the QR code cannot be read. The SSID names the device (it is on the label
# and on the asset anyway): "lanterne-" + device, shortened with a tag if over 32 bytes.
from lanterne.commands import hmac_sha256

AP_ADDRESS = "192.168.4.1"  # the ESP32 soft-AP's own address (ESP-IDF's DHCP server subnet)
PAGE_URL = "http://" + AP_ADDRESS + "/"
SSID_PREFIX = "lanterne-"
_ALPHABET = "23456789abcdefghijkmnpqrstuvwxyz"  # 32 symbols: 5 bits each


def _mac(setup_key_hex, what, device):
    if not setup_key_hex:
        raise ValueError("no setup_key provisioned: the setup access point needs one (provision the board again)")
    return hmac_sha256(bytes.fromhex(setup_key_hex), b"lanterne-setup-v1:" + what + b":" + device.encode())


def ssid(device, setup_key_hex):
    name = SSID_PREFIX + device
    if len(name.encode()) <= 32:
        return name
    tag = _mac(setup_key_hex, b"ssid", device)[:2]
    return name[:27] + "-" + "%02x%02x" % (tag[0], tag[1])


def passphrase(device, setup_key_hex):
    d = _mac(setup_key_hex, b"pass", device)
    bits = nbits = i = 0
    s = ""
    while len(s) < 16:
        if nbits < 5:
            bits = ((bits << 8) | d[i]) & 0xFFFF
            i += 1
            nbits += 8
        nbits -= 5
        s += _ALPHABET[(bits >> nbits) & 31]
    return s[0:4] + "-" + s[4:8] + "-" + s[8:12] + "-" + s[12:16]


def _escape(v):
    # The Wi-Fi QR code format (ZXing's WIFI: URI) escapes \ ; , : and " with a backslash.
    out = ""
    for c in v:
        out += ("\\" + c) if c in '\\;,:"' else c
    return out


def wifi_join(device, setup_key_hex):
    """The QR code text that makes a phone join the setup access point."""
    return "WIFI:T:WPA;S:%s;P:%s;;" % (_escape(ssid(device, setup_key_hex)), _escape(passphrase(device, setup_key_hex)))
