"""Test support for the graphical console: a minimal RFB (VNC) client over vmplane's VNC
WebSocket, and a PNG decoder (no imaging library is installed) to look at screenshots."""

import struct
import zlib
from dataclasses import dataclass
from typing import Any

RFB_VERSION = b"RFB 003.008\n"


class RfbStream:
    """Exact reads over a WebSocket whose binary frames cut the RFB stream anywhere."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buf = b""

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            msg = await self.ws.recv()
            assert isinstance(msg, bytes), f"a text frame on the VNC WebSocket: {msg!r}"
            self.buf += msg
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)


@dataclass
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    name: str


async def handshake(s: RfbStream) -> tuple[bytes, list[int], ServerInit]:
    """ProtocolVersion, security (None), ClientInit (shared), ServerInit: returns the server's
    version line, the security types it offered and its ServerInit."""
    version = await s.read(12)
    await s.send(RFB_VERSION)
    (count,) = await s.read(1)
    assert count > 0, "the server refused the connection"
    types = list(await s.read(count))
    assert 1 in types, f"security type None not offered: {types}"
    await s.send(b"\x01")
    (result,) = struct.unpack(">I", await s.read(4))
    assert result == 0, f"security result {result}"
    await s.send(b"\x01")  # ClientInit: shared
    w, h = struct.unpack(">HH", await s.read(4))
    pixel_format = await s.read(16)
    (name_len,) = struct.unpack(">I", await s.read(4))
    name = (await s.read(name_len)).decode("utf-8", "replace")
    return version, types, ServerInit(w, h, pixel_format[0], name)


async def framebuffer(s: RfbStream, init: ServerInit) -> list[bytes]:
    """The whole screen in raw pixels (one bytes object per pixel), from one FramebufferUpdate."""
    bpp = init.bits_per_pixel // 8
    await s.send(struct.pack(">BBHi", 2, 0, 1, 0))  # SetEncodings: Raw only
    await s.send(struct.pack(">BBHHHH", 3, 0, 0, 0, init.width, init.height))  # full update request
    while True:
        (kind,) = await s.read(1)
        if kind == 0:
            break
        assert kind in (2, 3), f"unexpected server message {kind}"  # Bell, ServerCutText
        if kind == 3:
            await s.read(3)
            (n,) = struct.unpack(">I", await s.read(4))
            await s.read(n)
    await s.read(1)
    (rects,) = struct.unpack(">H", await s.read(2))
    pixels: list[bytes] = []
    for _ in range(rects):
        _x, _y, w, h, enc = struct.unpack(">HHHHi", await s.read(12))
        assert enc == 0, f"encoding {enc} (asked for Raw)"
        data = await s.read(w * h * bpp)
        pixels += [data[i : i + bpp] for i in range(0, len(data), bpp)]
    return pixels


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, pixels) of an 8-bit RGB or RGBA PNG, as QEMU's screendump writes them."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), f"PNG depth {depth} colour type {colour}"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line)
        prev = line
    pixels = [bytes(r[i : i + channels]) for r in rows for i in range(0, stride, channels)]
    return width, height, pixels
