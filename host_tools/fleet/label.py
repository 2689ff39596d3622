"""The label for a board's enclosure: how an installer reaches its setup page with a phone.

`setup_credentials(registry, device)` computes the setup access point's name and passphrase
from the device's `setup_key` in the registry, with the firmware's own module
(firmware/lanterne/setup_credentials.py run on CPython), so the label and the board agree by
construction. `render(label, path)` draws it, 90 x 50 mm at 300 dpi, as PNG or PDF (by the
file's suffix): two QR codes, the standard Wi-Fi join text (`WIFI:T:WPA;S:...;P:...;;`, which
phone cameras offer to join) and the page's address, with the same in print for typing.
Ethernet boards have no access point: their label carries the passphrase the page asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from host_tools import boards
from host_tools.fleet import ProvisionError
from host_tools.fleet.registry import Registry
from host_tools.runtime import firmware_module

DPI = 300
SIZE_MM = (90, 50)


@dataclass(frozen=True)
class SetupLabel:
    device: str
    asset_id: str
    board: str
    wifi: bool  # an access point (Wi-Fi and LoRaWAN boards) or the Ethernet link
    ssid: str
    passphrase: str
    wifi_join: str  # the QR code text that joins the access point
    url: str  # the setup page


def setup_credentials(reg: Registry, device: str) -> SetupLabel:
    rec = reg.get(device)
    if rec is None:
        raise ProvisionError(f"no device {device!r} in the registry {reg.path}", hint="check the id (lanterne verify lists it)")
    try:
        key = reg.secret(device, "setup_key")
    except KeyError:
        raise ProvisionError(
            f"{device} has no setup key yet (provisioned before setup mode existed)",
            hint=f"provision it again: lanterne provision --port PORT --device {device}",
        ) from None
    cred = firmware_module("setup_credentials")
    try:
        wifi = boards.load(rec.board).data["network"]["kind"] != "lan"
    except boards.BoardError:
        wifi = True
    return SetupLabel(
        device=device,
        asset_id=str(rec.config.get("asset_id") or ""),
        board=rec.board,
        wifi=wifi,
        ssid=cred.ssid(device, key) if wifi else "",
        passphrase=cred.passphrase(device, key),
        wifi_join=cred.wifi_join(device, key) if wifi else "",
        url=cred.PAGE_URL if wifi else "http://<the board's address>/",
    )


def _px(mm: float) -> int:
    return round(mm / 25.4 * DPI)


def _qr(text: str, size: int):
    import segno
    from PIL import Image

    code = segno.make(text, error="m", micro=False)
    matrix = list(code.matrix_iter(scale=1, border=4))
    n = len(matrix)
    img = Image.new("1", (n, n), 1)
    px = img.load()
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                px[x, y] = 0
    scale = max(1, size // n)
    return img.resize((n * scale, n * scale), Image.NEAREST)


def render(label: SetupLabel, path: str | Path) -> Path:
    """Draw the label into `path` (.png or .pdf)."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise ProvisionError(f"{path.name}: the label is written as .png or .pdf", hint="name the file label.png or label.pdf")
    w, h = _px(SIZE_MM[0]), _px(SIZE_MM[1])
    img = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(img)
    big, mid, small = (ImageFont.load_default(size=s) for s in (40, 30, 22))
    m = _px(3)
    title = f"Lanterne {label.device}" + (f" · {label.asset_id}" if label.asset_id else "")
    d.text((m, m), title, font=big, fill=0)
    top = m + 60
    qr_size = min(h - top - m - 30, 300)
    x = m
    if label.wifi:
        for text, caption in ((label.wifi_join, "1  join the Wi-Fi"), (label.url, "2  open the page")):
            q = _qr(text, qr_size)
            img.paste(q.convert("L"), (x, top))
            d.text((x + 20, top + q.height), caption, font=small, fill=0)
            x += q.width
    tx = x + m // 2
    lines = [("Setup mode:", small), ("hold the button 1 s", small), ("within 5 s of power-up", small), ("", small)]
    if label.wifi:
        lines += [("Wi-Fi", small), (label.ssid, mid), ("Password", small), (label.passphrase, mid), ("Page", small), (label.url, mid)]
    else:
        lines += [("Ethernet: open the board's", small), ("address; password", small), (label.passphrase, mid)]
    y = top
    for text, font in lines:
        d.text((tx, y), text, font=font, fill=0)
        y += font.size + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".pdf":
        img.save(path, "PDF", resolution=DPI)
    else:
        img.save(path, "PNG", dpi=(DPI, DPI))
    return path
