# Lanterne setup server: a small asyncio HTTP/1.1 server for the setup page, beside the sampling
# loop, within the board's heap.
#
# - One static page, streamed from the firmware image: from the ROMFS partition it is sent
#   straight out of flash (memoryview of the file, no copy on the heap), from a filesystem
#   through one preallocated buffer, in 1 KB chunks.
# - A JSON API (lanterne/setup_api.py) behind a per-session token.
# - Fixed limits: two connections served at once (each with its preallocated head and body
#   buffers), a 1 KB request head, a 512-byte body, 4 s to send a whole request, one request per
#   connection. Everything else gets a 4xx with a message saying what was wrong; an error in a
#   handler is a 500 for that request, never an exception out of the server.
import asyncio
import json

from lanterne import http_request as http

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


_SLOTS = const(2)
_TIMEOUT_MS = const(4000)
_CHUNK = const(1024)
PAGE = "setup_page.html"
_COMMON = (
    "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
    "X-Frame-Options: DENY\r\nConnection: close\r\n"
)
# The page may load nothing from anywhere: its script and style are inline, it talks to this board only.
_CSP = (
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
    " connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
)


def page_path():
    # Beside this module: /rom/lib/lanterne/ in the ROMFS partition, or /lib/lanterne/.
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    return here + "/" + PAGE


class _Slot:
    def __init__(self):
        self.head = bytearray(http.MAX_HEAD)
        self.body = bytearray(http.MAX_BODY)
        self.busy = False


class Server:
    def __init__(self, api, host, port=80):
        self.api = api  # `await api.handle(request, body) -> (status, dict)`, `api.log(line)`
        self.host = host
        self.port = port
        self.slots = [_Slot() for _ in range(_SLOTS)]
        self.page = page_path()
        self.served = 0  # requests answered 2xx
        self.refused = 0  # requests answered 4xx/5xx
        self._server = None

    async def start(self):
        self._server = await asyncio.start_server(self._connection, self.host, self.port, 4)

    async def stop(self):
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader, writer):
        slot = None
        for s in self.slots:
            if not s.busy:
                slot = s
                break
        try:
            if slot is None:
                self.refused += 1
                await self._json(writer, 503, {"error": "busy: the board serves two requests at a time, try again"})
                return
            slot.busy = True
            try:
                await asyncio.wait_for_ms(self._serve(slot, reader, writer), _TIMEOUT_MS)
            except asyncio.TimeoutError:
                self.refused += 1
                await self._json(writer, 408, {"error": "request not complete within %d s" % (_TIMEOUT_MS // 1000)})
        except Exception as e:  # a client that went away mid-answer, or a bug: never the board's problem
            self.api.log("setup: connection dropped: %r" % (e,))
        finally:
            if slot is not None:
                slot.busy = False
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass

    async def _serve(self, slot, reader, writer):
        complete = False  # the whole request was read
        try:
            head = slot.head
            n = 0
            end = -1
            while end < 0:
                if n >= len(head):
                    raise http.HttpError(431, "request head over %d bytes" % len(head))
                got = await reader.readinto(memoryview(head)[n:])
                if not got:
                    return  # closed before a whole request: nobody to answer
                n += got
                end = http.head_end(head, n)
            req = http.parse(head, end)
            body = slot.body
            have = n - end
            if have > req.length:
                raise http.HttpError(400, "more bytes than the Content-Length said")
            body[:have] = head[end:n]
            while have < req.length:
                got = await reader.readinto(memoryview(body)[have : req.length])
                if not got:
                    raise http.HttpError(400, "body cut short: %d of %d bytes" % (have, req.length))
                have += got
            complete = True
            if req.path == "/" or req.path == "/index.html":
                if req.method != "GET":
                    raise http.HttpError(405, "the page is read with GET")
                await self._page(writer, body)
                return
            if not req.path.startswith("/api/"):
                raise http.HttpError(404, "no such page: %s" % req.path)
            try:
                status, doc = await self.api.handle(req, memoryview(body)[: req.length])
            except http.HttpError:
                raise
            except Exception as e:
                self.api.log("setup: %s failed: %r" % (req.path, e))
                status, doc = 500, {"error": "%s failed on the board: %r" % (req.path, e)}
            await self._json(writer, status, doc)
        except http.HttpError as e:
            await self._json(writer, e.status, {"error": e.message})
            if not complete:
                await self._discard(reader, slot.body)

    async def _discard(self, reader, buf):
        # What the client still sends after a refusal is read and dropped (8 KB, 0.3 s at most)
        # before closing: closed with unread bytes, TCP resets the connection and the client may
        # never see the answer.
        mv = memoryview(buf)
        total = 0
        try:
            while total < 8192:
                got = await asyncio.wait_for_ms(reader.readinto(mv), 300)
                if not got:
                    return
                total += got
        except asyncio.TimeoutError:
            pass

    async def _json(self, writer, status, doc):
        if status < 400:
            self.served += 1
        else:
            self.refused += 1
        body = json.dumps(doc).encode()
        writer.write(
            (
                "%sContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (http.status_line(status), len(body), _COMMON)
            ).encode()
        )
        writer.write(body)
        await writer.drain()

    async def _page(self, writer, buf):
        try:
            f = open(self.page, "rb")
        except OSError:
            raise http.HttpError(500, "the setup page is missing from the firmware image")
        try:
            try:
                data = memoryview(f)  # a file in the ROMFS partition: its bytes in flash, in place
                size = len(data)
            except TypeError:
                data = None
                import os

                size = os.stat(self.page)[6]
            writer.write(
                (
                "%sContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n%s%s\r\n"
                % (http.status_line(200), size, _COMMON, _CSP)
            ).encode()
            )
            if data is not None:
                for i in range(0, size, _CHUNK):
                    writer.write(data[i : i + _CHUNK])
                    await writer.drain()
            else:
                mv = memoryview(buf)
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    writer.write(mv[:k])
                    await writer.drain()
            self.served += 1
        finally:
            f.close()
