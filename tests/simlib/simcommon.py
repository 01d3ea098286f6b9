"""simcommon: what the protocol simulators (tests/graphsim, tests/ewssim) share: the HTTP
scaffolding, small helpers, and Microsoft Entra ID's token endpoint for the client-credentials
grant (https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow),
with its error bodies (AADSTS codes).

Standard library only. A simulator subclasses SimHandler (it implements handle(method) and
reads the body with read_body()), and calls serve(args, sim, Handler, name) from its main():
the server binds 127.0.0.1 (or --host), writes the chosen port to --port-file atomically (a
rename, so a harness polling for the file never reads half a number), prints it, and stops
cleanly on SIGTERM/SIGINT."""

import argparse
import base64
import collections
import email.utils
import json
import os
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from urllib.parse import parse_qsl

_DATE_CACHE = [0, ""]
AAD_CT = "application/json; charset=utf-8"


def http_date():
    """RFC 7231 Date header value, formatted once per second."""
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[0] = now
        _DATE_CACHE[1] = email.utils.formatdate(now, usegmt=True)
    return _DATE_CACHE[1]


class LRU:
    """A small thread-safe LRU map: get(key, builder) builds a missing value outside the lock."""

    def __init__(self, maxsize):
        self.lock = threading.Lock()
        self.data = collections.OrderedDict()
        self.maxsize = maxsize

    def get(self, key, builder):
        with self.lock:
            v = self.data.get(key)
            if v is not None:
                self.data.move_to_end(key)
                return v
        v = builder()
        with self.lock:
            self.data[key] = v
            if len(self.data) > self.maxsize:
                self.data.popitem(last=False)
        return v


class SimHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive with TCP_NODELAY; every method goes to handle(method)."""
    protocol_version = "HTTP/1.1"
    sys_version = ""
    sim = None
    sim_name = "sim"

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if self.sim.args.verbose:
            sys.stderr.write("%s: %s\n" % (self.sim_name, fmt % args))

    def do_GET(self):
        self.handle_method("GET")

    def do_POST(self):
        self.handle_method("POST")

    def do_DELETE(self):
        self.handle_method("DELETE")

    def do_PATCH(self):
        self.handle_method("PATCH")

    def do_PUT(self):
        self.handle_method("PUT")

    def handle_method(self, method):
        raise NotImplementedError

    def read_body(self):
        """The request body, by Content-Length or chunked transfer coding."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def reset_connection(self):
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True


    def write_fixed(self, lines, status, body):
        """Head lines plus a body sent with Content-Length (none for 204 and 304), one write."""
        body = body or b""
        if status not in (204, 304):
            lines.append("Content-Length: %d" % len(body))
        else:
            body = b""
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def arg_parser(description):
    """The options every simulator has; it adds its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--token-ttl", type=int, default=3599)
    ap.add_argument("--verbose", action="store_true")
    return ap


def parse_args(ap, argv):
    args = ap.parse_args(argv)
    if not os.path.isdir(args.fixtures):
        ap.error(f"fixtures directory {args.fixtures!r} does not exist")
    return args


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def serve(args, sim, handler_cls, name):
    """Run the simulator until SIGTERM/SIGINT; returns the exit code."""
    handler = type("BoundHandler", (handler_cls,), {"sim": sim, "sim_name": name})
    httpd = Server((args.host, args.port), handler)
    port = httpd.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(port, flush=True)

    def stop(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
    return 0


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def read_head(path, limit=256 * 1024):
    """The header section of a message file (up to the first blank line, at most ~limit)."""
    with open(path, "rb") as fh:
        buf = fh.read(8192)
        while True:
            if buf.find(b"\r\n\r\n") >= 0 or buf.find(b"\n\n") >= 0 or len(buf) >= limit:
                return buf
            more = fh.read(8192)
            if not more:
                return buf
            buf += more


# --------------------------------------------------------------------------- Entra ID tokens

def aad_error(status, error, code, desc, extra_codes=None):
    """Entra ID's error answer: (status, headers, body) for the simulator's response class."""
    ts = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {desc} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}",
        "error_codes": [code] + (extra_codes or []),
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return status, {"Content-Type": AAD_CT, "Cache-Control": "no-store, no-cache"}, json.dumps(body).encode()


def token_answer(token, ttl):
    return 200, {"Content-Type": AAD_CT, "Cache-Control": "no-store, no-cache"}, json.dumps(
        {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token}).encode()


def mint_token(kid, audience, tenant_id, client_id, roles, ttl):
    """An opaque JWT-shaped app token (header and claims readable, signature random)."""
    now = int(time.time())

    def enc(o):
        return base64.urlsafe_b64encode(json.dumps(o, separators=(",", ":")).encode()).rstrip(b"=").decode()
    hdr = {"typ": "JWT", "alg": "RS256", "kid": kid}
    claims = {"aud": audience, "iss": f"https://sts.windows.net/{tenant_id}/", "iat": now, "nbf": now,
              "exp": now + ttl, "appid": client_id, "tid": tenant_id, "roles": list(roles), "idtyp": "app",
              "ver": "1.0", "uti": secrets.token_hex(8)}
    return ".".join([enc(hdr), enc(claims), base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()])


def client_credentials(method, body, tenant_id, tenant_found, find_app, secret_ok, assertion=None,
                       resource=None):
    """Check a token request the way Entra ID does, in its order. find_app(client_id) -> app or
    None; secret_ok(app, secret) -> bool; assertion(app, client_id, form) -> None or an error
    triple (certificate credentials; None = not supported); resource: the one resource whose
    "/.default" scope is accepted (None = any). Returns (error triple, None, None) or
    (None, client_id, app)."""
    if method != "POST":
        return aad_error(405, "invalid_request", 900561,
                         "The endpoint only accepts POST requests. Received a GET request."), None, None
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if not tenant_found:
        return aad_error(400, "invalid_request", 90002,
                         f"Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID "
                         f"and are signing into the correct cloud. Check with your subscription administrator, "
                         f"this may happen if there are no active subscriptions for the tenant."), None, None
    gt = form.get("grant_type")
    if not gt:
        return aad_error(400, "invalid_request", 900144,
                         "The request body must contain the following parameter: 'grant_type'."), None, None
    if gt != "client_credentials":
        return aad_error(400, "unsupported_grant_type", 70003,
                         "The app requested an unsupported grant type ''%s''." % gt), None, None
    cid = form.get("client_id", "")
    if not cid:
        return aad_error(400, "invalid_request", 900144,
                         "The request body must contain the following parameter: 'client_id'."), None, None
    app = find_app(cid)
    if app is None:
        return aad_error(400, "unauthorized_client", 700016,
                         f"Application with identifier '{cid}' was not found in the directory '{tenant_id}'. "
                         f"This can happen if the application has not been installed by the administrator of "
                         f"the tenant or consented to by any user in the tenant. You may have sent your "
                         f"authentication request to the wrong tenant."), None, None
    if form.get("client_assertion") is not None and assertion is not None:
        bad = assertion(app, cid, form)
        if bad:
            return bad, None, None
    else:
        secret = form.get("client_secret")
        if not secret:
            return aad_error(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: 'client_assertion' or "
                             "'client_secret'."), None, None
        if not secret_ok(app, secret):
            return aad_error(401, "invalid_client", 7000215,
                             f"Invalid client secret provided. Ensure the secret being sent in the request is the "
                             f"client secret value, not the client secret ID, for a secret added to app "
                             f"'{cid}'."), None, None
    scope = form.get("scope", "")
    if not scope:
        return aad_error(400, "invalid_request", 900144,
                         "The request body must contain the following parameter: 'scope'."), None, None
    scopes = scope.split()
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        return aad_error(400, "invalid_scope", 1002012,
                         f"The provided value for scope {scope} is not valid. Client credential flows must "
                         f"have a scope value with /.default suffixed to the resource identifier "
                         f"(application ID URI)."), None, None
    if resource is not None and scopes[0] != resource + "/.default":
        return aad_error(400, "invalid_resource", 500011,
                         f"The resource principal named {scopes[0][:-len('/.default')]} was not found in the "
                         f"tenant named {tenant_id}. This can happen if the application has not been installed "
                         f"by the administrator of the tenant or consented to by any user in the tenant. You "
                         f"might have sent your authentication request to the wrong tenant."), None, None
    return None, cid, app
