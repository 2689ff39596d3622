"""LoRaWAN 1.0.3 frames and their cryptography, host side: what the modem twin sends and the network server checks.

Pure functions over bytes, AES-128 and AES-CMAC from `cryptography`; nothing here does
I/O. Section numbers are those of the LoRaWAN 1.0.3 specification (LoRa Alliance, 2018):

- join request (6.2.4): MHDR | JoinEUI | DevEUI | DevNonce | MIC, the MIC an AES-CMAC with
  the AppKey; multi-byte fields travel little-endian, EUIs are written MSB first in text;
- join accept (6.2.5): MHDR | AppNonce | NetID | DevAddr | DLSettings | RxDelay | [CFList] |
  MIC, encrypted by the network server with AES *decrypt* under the AppKey so the device
  only needs AES encrypt;
- session keys (6.2.5): NwkSKey / AppSKey = aes128_encrypt(AppKey, 0x01 / 0x02 | AppNonce |
  NetID | DevNonce | pad16);
- data frames (4.3): MHDR | DevAddr | FCtrl | FCnt | FOpts | FPort | FRMPayload | MIC;
  FRMPayload encrypted (4.3.3) with the keystream A_i = 0x01 | 0^4 | Dir | DevAddr | FCnt32 |
  0x00 | i under AppSKey (NwkSKey on FPort 0); MIC (4.4) the first 4 bytes of
  AES-CMAC(NwkSKey, B0 | msg), B0 = 0x49 | 0^4 | Dir | DevAddr | FCnt32 | 0x00 | len(msg).

Errors are `FrameError` with what was wrong: a short frame, an unknown MType, a bad MIC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# MType (MHDR bits 7..5), 4.2.1
JOIN_REQUEST = 0
JOIN_ACCEPT = 1
UNCONFIRMED_UP = 2
UNCONFIRMED_DOWN = 3
CONFIRMED_UP = 4
CONFIRMED_DOWN = 5
MTYPE_NAMES = {
    JOIN_REQUEST: "JoinRequest",
    JOIN_ACCEPT: "JoinAccept",
    UNCONFIRMED_UP: "UnconfirmedDataUp",
    UNCONFIRMED_DOWN: "UnconfirmedDataDown",
    CONFIRMED_UP: "ConfirmedDataUp",
    CONFIRMED_DOWN: "ConfirmedDataDown",
}
UPLINK = 0
DOWNLINK = 1
LORAWAN_R1 = 0  # Major

# FCtrl bits (4.3.1)
FCTRL_ADR = 0x80
FCTRL_ADRACKREQ = 0x40  # uplink
FCTRL_ACK = 0x20
FCTRL_FPENDING = 0x10  # downlink
FCTRL_CLASSB = 0x10  # uplink

# MAC commands used here (5): LinkCheckReq / LinkCheckAns share CID 0x02.
CID_LINK_CHECK = 0x02


class FrameError(ValueError):
    """A PHYPayload that cannot be parsed or does not authenticate."""


def _aes_ecb(key: bytes, block: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(bytes(key)), modes.ECB())
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(bytes(block)) + op.finalize()


def aes_cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(bytes(key)))
    c.update(bytes(data))
    return c.finalize()


def eui_bytes(text: str) -> bytes:
    """An EUI-64 written MSB first ("70B3D57ED0000001") as 8 bytes, MSB first."""
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 8:
        raise FrameError(f"an EUI-64 is 8 bytes (16 hex digits), got {text!r}")
    return raw


def key_bytes(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != 16:
        raise FrameError(f"an AES-128 key is 16 bytes (32 hex digits), got {len(raw)} bytes")
    return raw


def mhdr(mtype: int) -> int:
    return (mtype << 5) | LORAWAN_R1


def mtype_of(phy: bytes) -> int:
    if not phy:
        raise FrameError("empty PHYPayload")
    if phy[0] & 0x03 != LORAWAN_R1:
        raise FrameError(f"MHDR 0x{phy[0]:02x}: Major {phy[0] & 3} is not LoRaWAN R1")
    return phy[0] >> 5


# -- join -----------------------------------------------------------------------------------------
def join_request(app_key: bytes, join_eui: bytes, dev_eui: bytes, dev_nonce: int) -> bytes:
    body = bytes([mhdr(JOIN_REQUEST)]) + join_eui[::-1] + dev_eui[::-1] + struct.pack("<H", dev_nonce)
    return body + aes_cmac(app_key, body)[:4]


@dataclass(frozen=True)
class JoinRequest:
    join_eui: bytes  # MSB first
    dev_eui: bytes  # MSB first
    dev_nonce: int


def parse_join_request(phy: bytes) -> JoinRequest:
    if mtype_of(phy) != JOIN_REQUEST or len(phy) != 23:
        raise FrameError(f"not a join request ({len(phy)} bytes, MType {phy[0] >> 5})")
    return JoinRequest(bytes(phy[1:9][::-1]), bytes(phy[9:17][::-1]), struct.unpack("<H", phy[17:19])[0])


def verify_join_request(app_key: bytes, phy: bytes) -> bool:
    return aes_cmac(app_key, phy[:19])[:4] == bytes(phy[19:23])


@dataclass(frozen=True)
class JoinAccept:
    app_nonce: int  # 24 bits (JoinNonce)
    net_id: int  # 24 bits
    dev_addr: int  # 32 bits
    rx1_dr_offset: int = 0
    rx2_dr: int = 0
    rx_delay: int = 1  # seconds; 0 means 1
    cf_list: bytes = b""  # 16 bytes or empty


def _join_accept_clear(app_key: bytes, ja: JoinAccept) -> bytes:
    dl = ((ja.rx1_dr_offset & 7) << 4) | (ja.rx2_dr & 0x0F)
    body = (
        bytes([mhdr(JOIN_ACCEPT)])
        + ja.app_nonce.to_bytes(3, "little")
        + ja.net_id.to_bytes(3, "little")
        + struct.pack("<I", ja.dev_addr)
        + bytes([dl, ja.rx_delay & 0x0F])
        + bytes(ja.cf_list)
    )
    return body + aes_cmac(app_key, body)[:4]


def join_accept(app_key: bytes, ja: JoinAccept) -> bytes:
    """The encrypted join accept PHYPayload the network server sends."""
    if ja.cf_list and len(ja.cf_list) != 16:
        raise FrameError("a CFList is 16 bytes")
    clear = _join_accept_clear(app_key, ja)
    enc = b"".join(_aes_ecb(app_key, clear[i : i + 16], decrypt=True) for i in range(1, len(clear), 16))
    return clear[:1] + enc


def open_join_accept(app_key: bytes, phy: bytes) -> JoinAccept:
    """Decrypt and check a join accept as the device does (FrameError on a bad MIC)."""
    if mtype_of(phy) != JOIN_ACCEPT or len(phy) not in (17, 33):
        raise FrameError(f"not a join accept ({len(phy)} bytes)")
    clear = phy[:1] + b"".join(_aes_ecb(app_key, phy[i : i + 16]) for i in range(1, len(phy), 16))
    if aes_cmac(app_key, clear[:-4])[:4] != clear[-4:]:
        raise FrameError("join accept MIC does not verify under this AppKey")
    return JoinAccept(
        app_nonce=int.from_bytes(clear[1:4], "little"),
        net_id=int.from_bytes(clear[4:7], "little"),
        dev_addr=struct.unpack("<I", clear[7:11])[0],
        rx1_dr_offset=(clear[11] >> 4) & 7,
        rx2_dr=clear[11] & 0x0F,
        rx_delay=clear[12] & 0x0F,
        cf_list=bytes(clear[13:-4]),
    )


def session_keys(app_key: bytes, app_nonce: int, net_id: int, dev_nonce: int) -> tuple[bytes, bytes]:
    """(NwkSKey, AppSKey) of a LoRaWAN 1.0.x session (6.2.5)."""
    tail = app_nonce.to_bytes(3, "little") + net_id.to_bytes(3, "little") + struct.pack("<H", dev_nonce)
    pad = bytes(16 - 1 - len(tail))
    return _aes_ecb(app_key, b"\x01" + tail + pad), _aes_ecb(app_key, b"\x02" + tail + pad)


# -- data frames ------------------------------------------------------------------------------------
def cipher_payload(key: bytes, direction: int, dev_addr: int, fcnt: int, payload: bytes) -> bytes:
    """FRMPayload encryption (4.3.3): the same call encrypts and decrypts."""
    out = bytearray()
    for i in range((len(payload) + 15) // 16):
        a = bytes([0x01, 0, 0, 0, 0, direction]) + struct.pack("<II", dev_addr, fcnt & 0xFFFFFFFF) + bytes([0, i + 1])
        s = _aes_ecb(key, a)
        chunk = payload[16 * i : 16 * i + 16]
        out += bytes(c ^ k for c, k in zip(chunk, s[: len(chunk)], strict=True))
    return bytes(out)


def data_mic(nwk_s_key: bytes, direction: int, dev_addr: int, fcnt: int, msg: bytes) -> bytes:
    b0 = bytes([0x49, 0, 0, 0, 0, direction]) + struct.pack("<II", dev_addr, fcnt & 0xFFFFFFFF) + bytes([0, len(msg)])
    return aes_cmac(nwk_s_key, b0 + msg)[:4]


@dataclass
class DataFrame:
    mtype: int
    dev_addr: int
    fcnt: int  # 32-bit counter (only its low 16 bits travel)
    fport: int | None = None
    payload: bytes = b""  # FRMPayload in clear
    fopts: bytes = b""  # MAC commands in FOpts (clear in 1.0.x)
    adr: bool = False
    ack: bool = False
    adr_ack_req: bool = False  # uplink only
    fpending: bool = False  # downlink only
    mic_ok: bool | None = None
    extra: dict = field(default_factory=dict)

    @property
    def uplink(self) -> bool:
        return self.mtype in (UNCONFIRMED_UP, CONFIRMED_UP)

    @property
    def confirmed(self) -> bool:
        return self.mtype in (CONFIRMED_UP, CONFIRMED_DOWN)


def build_data(frame: DataFrame, nwk_s_key: bytes, app_s_key: bytes) -> bytes:
    """A data PHYPayload: FRMPayload encrypted, MIC appended."""
    if len(frame.fopts) > 15:
        raise FrameError("FOpts holds at most 15 bytes")
    direction = UPLINK if frame.uplink else DOWNLINK
    fctrl = len(frame.fopts)
    fctrl |= FCTRL_ADR if frame.adr else 0
    fctrl |= FCTRL_ACK if frame.ack else 0
    if direction == UPLINK:
        fctrl |= FCTRL_ADRACKREQ if frame.adr_ack_req else 0
    else:
        fctrl |= FCTRL_FPENDING if frame.fpending else 0
    msg = bytes([mhdr(frame.mtype)]) + struct.pack("<IBH", frame.dev_addr, fctrl, frame.fcnt & 0xFFFF) + frame.fopts
    if frame.fport is not None:
        if frame.fport == 0 and frame.fopts:
            raise FrameError("FPort 0 carries MAC commands in FRMPayload: FOpts must be empty")
        key = nwk_s_key if frame.fport == 0 else app_s_key
        msg += bytes([frame.fport]) + cipher_payload(key, direction, frame.dev_addr, frame.fcnt, frame.payload)
    elif frame.payload:
        raise FrameError("a payload needs an FPort")
    return msg + data_mic(nwk_s_key, direction, frame.dev_addr, frame.fcnt, msg)


def peek_data(phy: bytes) -> DataFrame:
    """The clear header of a data frame (DevAddr, FCnt16, FCtrl, FOpts, FPort), payload still encrypted."""
    mtype = mtype_of(phy)
    if mtype not in (UNCONFIRMED_UP, UNCONFIRMED_DOWN, CONFIRMED_UP, CONFIRMED_DOWN):
        raise FrameError(f"MType {MTYPE_NAMES.get(mtype, mtype)} is not a data frame")
    if len(phy) < 12:
        raise FrameError(f"a data frame is at least 12 bytes, got {len(phy)}")
    dev_addr, fctrl, fcnt16 = struct.unpack("<IBH", phy[1:8])
    n = fctrl & 0x0F
    end = len(phy) - 4
    if 8 + n > end:
        raise FrameError(f"FOptsLen {n} runs past the frame")
    fopts = bytes(phy[8 : 8 + n])
    fport = phy[8 + n] if 8 + n < end else None
    payload = bytes(phy[9 + n : end]) if fport is not None else b""
    up = mtype in (UNCONFIRMED_UP, CONFIRMED_UP)
    return DataFrame(
        mtype=mtype,
        dev_addr=dev_addr,
        fcnt=fcnt16,
        fport=fport,
        payload=payload,
        fopts=fopts,
        adr=bool(fctrl & FCTRL_ADR),
        ack=bool(fctrl & FCTRL_ACK),
        adr_ack_req=bool(up and fctrl & FCTRL_ADRACKREQ),
        fpending=bool(not up and fctrl & FCTRL_FPENDING),
    )


def full_fcnt(fcnt16: int, last: int | None) -> int:
    """The 32-bit counter whose low 16 bits are `fcnt16`, the nearest at or above `last` + 1 (4.3.1.5)."""
    if last is None:
        return fcnt16
    candidate = (last & ~0xFFFF) | fcnt16
    if candidate <= last:
        candidate += 0x10000
    return candidate


def open_data(phy: bytes, nwk_s_key: bytes, app_s_key: bytes, last_fcnt: int | None = None) -> DataFrame:
    """Parse a data frame, check its MIC with the 32-bit counter rebuilt from `last_fcnt`, decrypt it.

    Raises FrameError when the MIC does not verify. Whether the counter is new is the caller's rule
    (a replay has a counter at or below the last one; the MIC alone cannot tell)."""
    frame = peek_data(phy)
    direction = UPLINK if frame.uplink else DOWNLINK
    # A retransmission repeats the last counter: try the counter as last + k first, then last itself.
    candidates = [full_fcnt(frame.fcnt, last_fcnt)]
    if last_fcnt is not None and (last_fcnt & 0xFFFF) == frame.fcnt:
        candidates.insert(0, last_fcnt)
    for fcnt in candidates:
        if data_mic(nwk_s_key, direction, frame.dev_addr, fcnt, phy[:-4]) == bytes(phy[-4:]):
            frame.fcnt = fcnt
            frame.mic_ok = True
            if frame.fport is not None:
                key = nwk_s_key if frame.fport == 0 else app_s_key
                frame.payload = cipher_payload(key, direction, frame.dev_addr, fcnt, frame.payload)
            return frame
    raise FrameError(f"MIC does not verify for DevAddr {frame.dev_addr:08x} FCnt {frame.fcnt}")


def dev_addr_hex(dev_addr: int) -> str:
    return f"{dev_addr:08x}"
