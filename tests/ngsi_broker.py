"""An emulated NGSI-LD context broker: the batch upsert endpoint, as ETSI GS CIM 009 specifies it.

No real context broker runs here (Orion-LD needs MongoDB, Stellio Kafka and PostgreSQL,
Scorpio a JVM stack), so this one implements exactly what the bridge uses, per the
specification's "Batch Entity Upsert" (POST /ngsi-ld/v1/entityOperations/upsert):
- the body is a non-empty JSON array of entities, each with an `id` (a URI) and a `type`;
- `Content-Type: application/ld+json`: every entity carries its `@context`;
  `application/json`: no `@context` in the body (it comes in a Link header); anything else
  is 415;
- upsert: an entity that does not exist is created, one that exists is replaced (default)
  or has its attributes updated (`options=update`);
- answers: 201 with the array of created ids when some were created and none failed, 204
  when all existed and were updated, 207 with a BatchOperationResult (`success`, `errors`
  of `{entityId, error: ProblemDetails}`) when some failed, 400 BadRequestData for a body
  that is not an array of objects;
- `GET /ngsi-ld/v1/entities/{id}` returns what it holds.
Faults for the tests: `fail(n, status)` answers the next n requests with `status`;
`refuse_connections()` closes the listening socket (a broker that is down).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"


def _problem(kind: str, detail: str) -> dict:
    return {"type": ERRORS + kind, "title": kind, "detail": detail}


class ContextBroker:
    def __init__(self):
        self.entities: dict[str, dict] = {}
        self.requests: list[dict] = []  # every upsert request: headers and body
        self._fail: list[int] = []
        self._lock = threading.Lock()
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, status, body=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with broker._lock:
                    status = broker._fail.pop(0) if broker._fail else None
                if status:
                    return self._reply(status, _problem("InternalError", "injected fault"))
                if url.path != "/ngsi-ld/v1/entityOperations/upsert":
                    return self._reply(404, _problem("ResourceNotFound", url.path))
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype not in ("application/json", "application/ld+json"):
                    return self._reply(415, _problem("InvalidRequest", f"Content-Type {ctype!r}"))
                try:
                    entities = json.loads(body)
                except ValueError:
                    return self._reply(400, _problem("InvalidRequest", "body is not JSON"))
                if not isinstance(entities, list) or not entities or not all(isinstance(e, dict) for e in entities):
                    return self._reply(400, _problem("BadRequestData", "body must be a non-empty array of entities"))
                options = parse_qs(url.query).get("options", [""])[-1].split(",")
                with broker._lock:
                    broker.requests.append({"content_type": ctype, "link": self.headers.get("Link"),
                                            "entities": entities})
                    created, updated, errors = [], [], []
                    for e in entities:
                        eid, etype = e.get("id"), e.get("type")
                        if not isinstance(eid, str) or ":" not in eid or not isinstance(etype, str):
                            errors.append({"entityId": eid, "error": _problem("BadRequestData", "id (URI) and type needed")})
                            continue
                        if (ctype == "application/ld+json") != ("@context" in e):
                            errors.append({"entityId": eid, "error": _problem(
                                "BadRequestData", "@context must be in the body exactly with application/ld+json")})
                            continue
                        if eid in broker.entities:
                            if "update" in options:
                                broker.entities[eid].update(e)
                            else:
                                broker.entities[eid] = dict(e)
                            updated.append(eid)
                        else:
                            broker.entities[eid] = dict(e)
                            created.append(eid)
                if errors:
                    return self._reply(207, {"success": created + updated, "errors": errors})
                if created:
                    return self._reply(201, created)
                return self._reply(204)

            def do_GET(self):  # noqa: N802
                prefix = "/ngsi-ld/v1/entities/"
                path = urlsplit(self.path).path
                with broker._lock:
                    e = broker.entities.get(path[len(prefix):]) if path.startswith(prefix) else None
                if e is None:
                    return self._reply(404, _problem("ResourceNotFound", path))
                return self._reply(200, e)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fail(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail += [status] * n

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
