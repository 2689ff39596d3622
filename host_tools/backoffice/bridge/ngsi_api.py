"""The bridge's NGSI-LD read API (the query part of ETSI GS CIM 009's context information API).

    GET /ngsi-ld/v1/entities?type=WasteContainer[,Streetlight][&id=...][&attrs=a,b]
                             [&options=keyValues][&limit=20&offset=0][&count=true]
    GET /ngsi-ld/v1/entities/{id}[?attrs=...&options=keyValues]

As the specification has it: a query needs at least `type` or `id` (else 400); `Accept:
application/ld+json` puts each entity's `@context` in the body, `application/json` (the
default) leaves it out and sends the context in a `Link` header; any other Accept is 406.
Errors are ProblemDetails (`type` one of the NGSI-LD error URIs, `title`, `detail`): 400
BadRequestData for a bad or unsupported parameter (q and geo-queries are not implemented
here: the full context broker is the city's, fed by `--ngsi-ld`), 404 ResourceNotFound,
405 for any method but GET. `NGSILD-Results-Count` answers `count=true`.
Also `GET /bridge/v1/stats`: the bridge's counters (readings, duplicates, bad frames by reason).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from host_tools.backoffice.bridge import ngsi

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 20
LINK = f'<{ngsi.SDM_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
KNOWN_PARAMS = {"type", "id", "attrs", "options", "limit", "offset", "count", "format"}
UNSUPPORTED = {"q", "georel", "geometry", "coordinates", "geoproperty", "csf", "idPattern", "scopeQ", "lang", "pick",
               "omit", "expandValues", "datasetId", "local", "join", "joinLevel", "entityMap"}


class ApiError(Exception):
    def __init__(self, status: int, kind: str, title: str, detail: str):
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail


def _bad(detail: str) -> ApiError:
    return ApiError(400, "BadRequestData", "Bad request data", detail)


def _list(q: dict, name: str) -> list[str] | None:
    if name not in q:
        return None
    return [v for value in q[name] for v in value.split(",") if v]


def _int(q: dict, name: str, default: int, low: int, high: int) -> int:
    if name not in q:
        return default
    raw = q[name][-1]
    try:
        v = int(raw)
    except ValueError:
        raise _bad(f"{name}={raw!r} is not an integer") from None
    if not low <= v <= high:
        raise _bad(f"{name}={v} is outside {low}..{high}")
    return v


def _shape(entity: dict, attrs: list[str] | None, key_values: bool, with_context: bool) -> dict:
    e = dict(entity)
    if attrs is not None:
        e = {k: v for k, v in e.items() if k in ("id", "type", "@context") or k in attrs}
    if key_values:
        e = ngsi.key_values(e)
    if not with_context:
        e.pop("@context", None)
    return e


class _Handler(BaseHTTPRequestHandler):
    server_version = "lanterne-bridge"
    bridge = None  # set by ApiServer

    def log_message(self, fmt, *args):  # quiet: a city's logs are not for every GET
        pass

    def _send(self, status: int, body, content_type: str, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, e: ApiError) -> None:
        self._send(e.status, {"type": ERRORS + e.kind, "title": e.title, "detail": e.detail}, "application/json",
                   {"Allow": "GET"} if e.status == 405 else None)

    def _accept(self) -> str:
        accept = self.headers.get("Accept") or "application/json"
        kinds = [a.split(";")[0].strip().lower() for a in accept.split(",")]
        for k in kinds:
            if k == "application/ld+json":
                return k
            if k in ("application/json", "application/*", "*/*"):
                return "application/json"
        raise ApiError(406, "NotAcceptable", "Not acceptable",
                       f"Accept {accept!r}: this API answers application/json or application/ld+json")

    def do_GET(self):  # noqa: N802 - http.server's naming
        try:
            self._get()
        except ApiError as e:
            self._error(e)
        except Exception as exc:  # never let one request take the bridge down
            self._error(ApiError(500, "InternalError", "Internal error", f"{type(exc).__name__}: {exc}"))

    def _not_allowed(self):
        self._error(ApiError(405, "MethodNotAllowed", "Method not allowed",
                             f"{self.command} {self.path}: this API is read-only (GET)"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed  # noqa: N815

    def _get(self):
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        q = parse_qs(url.query, keep_blank_values=True)
        bridge = self.bridge
        if path == "/bridge/v1/stats":
            self._send(200, bridge.stats(), "application/json")
            return
        prefix = "/ngsi-ld/v1/entities"
        if path != prefix and not path.startswith(prefix + "/"):
            raise ApiError(404, "ResourceNotFound", "Not found", f"no resource at {url.path}")
        accept = self._accept()
        for name in q:
            if name in UNSUPPORTED:
                raise _bad(f"parameter {name!r} is not supported by this read API (no queries or geo-queries here)")
            if name not in KNOWN_PARAMS:
                raise _bad(f"unknown parameter {name!r}")
        options = set(_list(q, "options") or [])
        unknown = options - {"keyValues", "normalized", "sysAttrs"}
        if unknown:
            raise _bad(f"options {', '.join(sorted(unknown))} not understood (keyValues, normalized)")
        key_values = "keyValues" in options or (q.get("format") or [""])[-1] in ("simplified", "keyValues")
        attrs = _list(q, "attrs")
        ld = accept == "application/ld+json"
        headers = {} if ld else {"Link": LINK}
        content_type = accept
        if path != prefix:  # one entity
            entity_id = unquote(path[len(prefix) + 1:])
            if not entity_id.startswith("urn:") or ":" not in entity_id[4:]:
                raise _bad(f"entity id {entity_id!r} is not a URI (urn:ngsi-ld:TYPE:ID)")
            parts = entity_id.split(":")
            device = parts[-1] if len(parts) >= 4 else None
            found = [e for e in bridge.entities([device]) if e["id"] == entity_id] if device else []
            if not found:
                raise ApiError(404, "ResourceNotFound", "Entity not found", f"no entity {entity_id}")
            self._send(200, _shape(found[0], attrs, key_values, ld), content_type, headers)
            return
        types, ids = _list(q, "type"), _list(q, "id")
        if not types and not ids:
            raise _bad("a query needs at least type or id (e.g. ?type=WasteContainer)")
        limit = _int(q, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        offset = _int(q, "offset", 0, 0, 10**9)
        count = (q.get("count") or ["false"])[-1]
        if count not in ("true", "false"):
            raise _bad(f"count={count!r}: true or false")
        if limit == 0 and count != "true":
            raise _bad("limit=0 needs count=true")
        devices = None
        if ids:
            devices = sorted({i.split(":")[-1] for i in ids})
        found = [e for e in bridge.entities(devices)
                 if (not types or e["type"] in types) and (not ids or e["id"] in ids)]
        found.sort(key=lambda e: e["id"])
        if count == "true":
            headers["NGSILD-Results-Count"] = str(len(found))
        page = found[offset: offset + limit]
        self._send(200, [_shape(e, attrs, key_values, ld) for e in page], content_type, headers)


class ApiServer:
    def __init__(self, bridge, address: str):
        host, _, port = address.rpartition(":")
        try:
            self.address = (host or "127.0.0.1", int(port))
        except ValueError:
            raise ValueError(f"--http {address!r}: HOST:PORT, e.g. 127.0.0.1:8026") from None
        handler = type("Handler", (_Handler,), {"bridge": bridge})
        self.httpd = ThreadingHTTPServer(self.address, handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ngsi-ld-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
