# ussl compatibility for umqtt.simple 1.3.4, which does `import ussl; ussl.wrap_socket(...)`.
# Current MicroPython has `ssl` (SSLContext) and no `ussl`. This maps the old call onto an
# SSLContext with server verification and hostname check when a CA is given.
import ssl as _ssl

CERT_NONE = _ssl.CERT_NONE
CERT_REQUIRED = _ssl.CERT_REQUIRED


def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE, cadata=None,
                server_hostname=None, do_handshake=True):
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER if server_side else _ssl.PROTOCOL_TLS_CLIENT)
    if cadata:
        ctx.load_verify_locations(cadata=cadata)
    ctx.verify_mode = cert_reqs
    if key is not None or cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake,
                           server_hostname=server_hostname)
