# Lanterne setup server: parsing an HTTP/1.x request head, strictly and within fixed limits.
# Pure (runs on CPython and MicroPython alike). Anything outside the small subset the setup
# page needs is refused with the status a browser or a tool understands and a message naming
# what was wrong; nothing here raises anything but HttpError.
try:
    from micropython import const
except ImportError:  # CPython: same source, constants are plain ints

    def const(value):
        return value


MAX_HEAD = const(1024)  # request line + headers, bytes: the page's requests need ~500
MAX_BODY = const(512)  # a JSON body: the largest (position + asset id) is ~120 bytes
MAX_TARGET = const(128)
MAX_HEADERS = const(32)
METHODS = ("GET", "POST")
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    def __init__(self, method, path, length, host, session, content_type):
        self.method = method
        self.path = path
        self.length = length  # Content-Length (0 when none)
        self.host = host
        self.session = session  # the X-Session header: the page's session token
        self.content_type = content_type


def head_end(buf, n):
    """Index just past the blank line ending the head in buf[:n], or -1 (not all there yet)."""
    i = buf.find(b"\r\n\r\n", 0, n)
    return -1 if i < 0 else i + 4


def _ip_literal(host):
    # "a.b.c.d" or "a.b.c.d:port": the board is reached by its address, never by a name. A page
    # that reaches it through a name (DNS rebinding) is another origin and is refused.
    if ":" in host:
        host, port = host.split(":", 1)
        if not port or not port.isdigit() or len(port) > 5:
            return False
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or not p.isdigit() or len(p) > 3 or int(p) > 255:
            return False
    return True


def parse(buf, end):
    """Parse the head in buf[:end] (end from head_end). Returns a Request or raises HttpError."""
    try:
        text = bytes(buf[: end - 4]).decode()
    except UnicodeError:
        raise HttpError(400, "request head is not valid UTF-8")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line (expected: METHOD /path HTTP/1.1)")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505 if version.startswith("HTTP/") else 400, "unsupported protocol %r" % version[:16])
    if not method or not method.isalpha() or not method.isupper():
        raise HttpError(400, "malformed method")
    if method not in METHODS:
        raise HttpError(405, "method %s not allowed (GET and POST only)" % method[:10])
    if len(target) > MAX_TARGET:
        raise HttpError(414, "path longer than %d characters" % MAX_TARGET)
    if not target.startswith("/"):
        raise HttpError(400, "the path must start with /")
    for c in target:
        if c <= " " or c == "\x7f":
            raise HttpError(400, "control character in the path")
    path = target.split("?", 1)[0]
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "more than %d header lines" % MAX_HEADERS)
    length = -1
    host = session = content_type = None
    for line in lines[1:]:
        i = line.find(":")
        if i <= 0 or " " in line[:i] or "\t" in line[:i]:
            raise HttpError(400, "malformed header line %r" % line[:32])
        name = line[:i].lower()
        value = line[i + 1 :].strip()
        if name == "content-length":
            if not value.isdigit() or length >= 0:
                raise HttpError(400, "bad Content-Length %r" % value[:16])
            length = int(value)
        elif name == "transfer-encoding":
            raise HttpError(501, "Transfer-Encoding is not supported: send a Content-Length")
        elif name == "host":
            if host is not None:
                raise HttpError(400, "more than one Host header")
            host = value
        elif name == "x-session":
            session = value
        elif name == "content-type":
            content_type = value.split(";", 1)[0].strip().lower()
    if version == "HTTP/1.1" and host is None:
        raise HttpError(400, "HTTP/1.1 needs a Host header")
    if host is not None and not _ip_literal(host):
        raise HttpError(421, "open the page by the board's address (http://192.168.4.1/), not by a name")
    if length > MAX_BODY:
        raise HttpError(413, "body of %d bytes: the limit is %d" % (length, MAX_BODY))
    if method == "POST" and length < 0:
        raise HttpError(411, "POST needs a Content-Length")
    return Request(method, path, max(length, 0), host, session, content_type)


def status_line(status):
    return "HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Error"))
