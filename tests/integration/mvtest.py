"""mvtest.py - helpers shared by the integration scenarios (NNNN-*.py beside this file).

Each scenario runs against the stack that the ctest fixture "stack-start" brought up
(compose/local/stack.sh): it reads MV_RUN_DIR/env, uses tenants and IMAP users with a unique
suffix so scenarios never see each other's data, and starts its own worker processes, which it
always stops. Waiting is done by polling observable state (Redis status through the CLI) with
a deadline, never by sleeping a fixed time and hoping.
"""
import imaplib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

RUN = os.environ.get("MV_RUN_DIR")
BIN = os.environ.get("MV_BIN_DIR")
SRC = os.environ.get("MV_SOURCE_DIR")
if not RUN or not BIN or not SRC:
    sys.exit("MV_RUN_DIR, MV_BIN_DIR and MV_SOURCE_DIR must be set (run through ctest)")
ENVFILE = os.path.join(RUN, "env")
if not os.path.exists(ENVFILE):
    sys.exit(f"{ENVFILE} missing: the stack-start fixture did not run")
STACK = {}
for line in open(ENVFILE):
    k, _, v = line.strip().partition("=")
    if k:
        STACK[k] = v

CLI = os.path.join(BIN, "producer", "mailvault")
WORKER = os.path.join(BIN, "worker", "mailvault-worker")
SCHEDULER = os.path.join(BIN, "scheduler", "mailvault-scheduler")
SEED = os.path.join(SRC, "compose", "local", "seed.py")
IMAP_PORT = int(STACK["MV_IMAP_PORT"])
IMAPS_PORT = int(STACK["MV_IMAPS_PORT"])
SUFFIX = uuid.uuid4().hex[:8]


def env(**extra):
    e = dict(os.environ)
    e["MAILVAULT_CONFIG"] = STACK["MV_CONFIG"]
    for k, v in extra.items():
        e[k] = str(v)
    return e


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print(f"ok - {msg}", flush=True)


def cli(*args, expect=0, input=None, extra_env=None):
    p = subprocess.run([CLI, *args], capture_output=True, text=True, input=input,
                       env=env(**(extra_env or {})), timeout=600)
    if expect is not None and p.returncode != expect:
        fail(f"mailvault {' '.join(args)} exited {p.returncode} (expected {expect})\n"
             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def cli_bytes(*args):
    p = subprocess.run([CLI, *args], capture_output=True, env=env(), timeout=600)
    if p.returncode != 0:
        fail(f"mailvault {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p.stdout


def seed(user, password, messages, folders="INBOX,Sent,Archive", seed=1, mean_kb=20, duplicates=0,
         quota="", wait=True):
    """Fill a mailbox of the stack's Dovecot (compose/local/seed.py). wait=False: do not wait
    for Dovecot to accept the new user (seed many that way, and the last with wait=True)."""
    subprocess.run([sys.executable, SEED, "--run", RUN, "--user", user, "--password", password,
                    "--messages", str(messages), "--folders", folders, "--seed", str(seed),
                    "--mean-kb", str(mean_kb), "--duplicates", str(duplicates), "--quota", quota]
                   + ([] if wait else ["--no-wait"]), check=True)


def add_tenant(name):
    cli("tenant", "add", name)


def add_profile(tenant, name, mailboxes, tls="none", port=None, include=None, exclude=None,
                verify=True, schedule=None):
    prof = {"name": name, "type": "imap",
            "server": {"host": "127.0.0.1", "port": port or IMAP_PORT, "tls": tls, "verify": verify},
            "mailboxes": [{"login": u, "password": p} for u, p in mailboxes]}
    if schedule:
        prof["schedule"] = schedule
    folders = {}
    if include:
        folders["include"] = include
    if exclude:
        folders["exclude"] = exclude
    if folders:
        prof["folders"] = folders
    path = os.path.join(RUN, f"profile-{tenant}-{name}.json")
    with open(path, "w") as f:
        json.dump(prof, f)
    cli("profile", "add", "--tenant", tenant, "--file", path)
    os.unlink(path)  # it held passwords


_worker_seq = [0]


class Workers:
    """Worker processes of one scenario; stopped (SIGTERM, then SIGKILL) on exit. Each gets
    its own log file, RUN/log/worker-<suffix>-<n>.log, listed in self.logs."""

    def __init__(self, n=2, **extra_env):
        self.procs = []
        self.logs = []
        self.ids = []
        self.extra = extra_env
        for _ in range(n):
            self.start()

    def start(self):
        i = _worker_seq[0]
        _worker_seq[0] += 1
        path = os.path.join(RUN, "log", f"worker-{SUFFIX}-{i}.log")
        log = open(path, "w")
        p = subprocess.Popen([WORKER, "--id", f"w{i}-{SUFFIX}"], stdout=log, stderr=log,
                             env=env(**self.extra))
        self.procs.append(p)
        self.ids.append(f"w{i}-{SUFFIX}")
        self.logs.append(path)
        return p

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=30)

    def stop(self):
        codes = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run(tenant, profile, expect=0, timeout=300):
    p = cli("run", "--tenant", tenant, "--profile", profile, "--wait", "--timeout", str(timeout),
            expect=expect)
    return p


def status(tenant):
    p = cli("status", "--tenant", tenant, "--json", expect=None)
    if p.returncode not in (0, 1):
        fail(f"status exited {p.returncode}: {p.stderr}")
    return json.loads(p.stdout)


def wait_for(pred, what, timeout=120, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    fail(f"timed out after {timeout}s waiting for {what}")


def index(tenant, mailbox=None):
    args = ["ls", "--tenant", tenant, "--json"]
    if mailbox:
        args += ["--mailbox", mailbox]
    out = cli(*args).stdout
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def objects(tenant):
    root = os.path.join(RUN, "store", tenant, "objects")
    found = []
    for d, _, files in os.walk(root):
        found += files
    return found


def segments(tenant, mailbox):
    d = os.path.join(RUN, "store", tenant, "mailboxes", mailbox, "index")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def imap_messages(user, password):
    """{(folder, uid): raw bytes} of every message, read with Python's imaplib."""
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(user, password)
    out = {}
    typ, boxes = c.list()
    for b in boxes:
        text = b.decode()
        if "\\Noselect" in text or "\\NonExistent" in text:
            continue
        name = text.rsplit(' "." ', 1)[1].strip('"')
        if c.select(f'"{name}"', readonly=True)[0] != "OK":
            fail(f"cannot select {name} of {user}")
        typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                meta = item[0].decode()
                uid = int(meta.split("UID ")[1].split()[0])
                out[(name, uid)] = item[1]
    c.logout()
    return out


# ---- Microsoft Graph simulator (tests/graphsim) ----

def graph_fixture(tenant_id, secret, mailboxes, base=None):
    """Write a graphsim fixture tree: mailboxes = {upn: {folder_path: n_messages}}. Returns
    (fixture_dir, {file_path: upn})."""
    fx = base or os.path.join(RUN, f"graph-{tenant_id}")
    os.makedirs(os.path.join(fx, tenant_id), exist_ok=True)
    with open(os.path.join(fx, tenant_id, "app.json"), "w") as f:
        json.dump({"client_id": "app-1", "client_secret": secret,
                   "permissions": ["Mail.Read", "User.Read.All"]}, f)
    files, n = {}, 0
    for upn, folders in mailboxes.items():
        ub = os.path.join(fx, tenant_id, "users", upn)
        os.makedirs(ub, exist_ok=True)
        with open(os.path.join(ub, "user.json"), "w") as f:
            json.dump({"displayName": upn.split("@")[0], "mail": upn, "licensed": True}, f)
        for folder, count in folders.items():
            d = os.path.join(ub, "mail", folder)
            os.makedirs(d, exist_ok=True)
            for _ in range(count):
                n += 1
                body = (f"line of message {n} for {upn}\r\n" * (10 + n % 40))
                data = (f"From: s{n}@example.org\r\nTo: {upn}\r\nSubject: graph {n}\r\n"
                        f"Message-ID: <{n}.{tenant_id}@example.org>\r\n\r\n{body}").encode()
                p = os.path.join(d, f"m{n}.eml")
                with open(p, "wb") as f:
                    f.write(data)
                files[p] = upn
    return fx, files


class Background:
    """A server process of a scenario (self.proc), stopped with SIGTERM on exit."""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class GraphSim(Background):
    """tests/graphsim/graphsim.py on a free port; stopped on exit."""

    def __init__(self, fixtures, *args):
        self.portfile = os.path.join(fixtures, f"port-{uuid.uuid4().hex[:6]}")
        log = open(os.path.join(RUN, "log", f"graphsim-{SUFFIX}.log"), "a")
        self.proc = subprocess.Popen([sys.executable, os.path.join(SRC, "tests", "graphsim", "graphsim.py"),
                                      "--fixtures", fixtures, "--port", "0", "--port-file", self.portfile,
                                      *args], stdout=subprocess.DEVNULL, stderr=log)
        port = wait_for(lambda: os.path.exists(self.portfile) and open(self.portfile).read().strip(),
                        "the Graph simulator's port", 30)
        self.url = f"http://127.0.0.1:{int(port)}"

    def post(self, path, doc=None):
        import urllib.request
        req = urllib.request.Request(self.url + path, data=json.dumps(doc or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read() or b"{}")

    def stats(self):
        return self.admin_stats()["stats"]

    def admin_stats(self):
        import urllib.request
        return json.loads(urllib.request.urlopen(self.url + "/_sim/stats", timeout=10).read())


def add_graph_profile(tenant, name, tenant_id, secret, sim_url, logins, **extra):
    prof = {"name": name, "type": "graph",
            "graph": {"tenant_id": tenant_id, "client_id": "app-1", "client_secret": secret,
                      "login_base": sim_url, "graph_base": sim_url + "/v1.0"},
            "mailboxes": [{"login": u} for u in logins], **extra}
    path = os.path.join(RUN, f"profile-{tenant}-{name}.json")
    with open(path, "w") as f:
        json.dump(prof, f)
    cli("profile", "add", "--tenant", tenant, "--file", path)
    os.unlink(path)


class EwsSim(GraphSim):
    """tests/ewssim/ewssim.py on a free port; stopped on exit."""

    def __init__(self, fixtures, *args):
        self.portfile = os.path.join(fixtures, f"port-{uuid.uuid4().hex[:6]}")
        log = open(os.path.join(RUN, "log", f"ewssim-{SUFFIX}.log"), "a")
        self.proc = subprocess.Popen([sys.executable, os.path.join(SRC, "tests", "ewssim", "ewssim.py"),
                                      "--fixtures", fixtures, "--port", "0", "--port-file", self.portfile,
                                      *args], stdout=subprocess.DEVNULL, stderr=log)
        port = wait_for(lambda: os.path.exists(self.portfile) and open(self.portfile).read().strip(),
                        "the EWS simulator's port", 30)
        self.url = f"http://127.0.0.1:{int(port)}"
        self.ews_url = self.url + "/EWS/Exchange.asmx"

    def full_stats(self):
        import urllib.request
        return json.loads(urllib.request.urlopen(self.url + "/_sim/stats", timeout=10).read())


def ews_message(n, to, subject=None, size=600):
    body = (f"line of EWS message {n} for {to}\r\n" * (size // 36 + 1))
    return (f"From: s{n}@example.org\r\nTo: {to}\r\nSubject: {subject or f'ews {n}'}\r\n"
            f"Message-ID: <ews{n}.{SUFFIX}@example.org>\r\nDate: Mon, 2 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
            f"\r\n{body}").encode()


def ews_fixture(org, org_json, mailboxes, public=None, base=None):
    """An ewssim fixture tree. mailboxes = {smtp: {"mail": {folder: n}, "archive": {folder: n},
    "extra": {relpath: bytes}}}; public = {folder: n}. Returns (fixture_dir, {path: (mailbox, kind)})
    for every .eml written (kind mail|archive|public)."""
    fx = base or os.path.join(RUN, f"ews-{org}-{SUFFIX}")
    os.makedirs(os.path.join(fx, org), exist_ok=True)
    with open(os.path.join(fx, org, "org.json"), "w") as f:
        json.dump(org_json, f)
    files, n = {}, 0
    for smtp, parts in mailboxes.items():
        for kind in ("mail", "archive"):
            for folder, count in (parts.get(kind) or {}).items():
                d = os.path.join(fx, org, "mailboxes", smtp, kind, folder)
                os.makedirs(d, exist_ok=True)
                for _ in range(count):
                    n += 1
                    p = os.path.join(d, f"m{n}.eml")
                    with open(p, "wb") as f:
                        f.write(ews_message(n, smtp, size=300 + 250 * (n % 9)))
                    files[p] = (smtp, kind)
        for rel, data in (parts.get("extra") or {}).items():
            p = os.path.join(fx, org, "mailboxes", smtp, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
            if rel.endswith(".eml"):
                files[p] = (smtp, rel.split("/")[0])
        os.makedirs(os.path.join(fx, org, "mailboxes", smtp, "mail", "Inbox"), exist_ok=True)
    for folder, count in (public or {}).items():
        d = os.path.join(fx, org, "public", folder)
        os.makedirs(d, exist_ok=True)
        for _ in range(count):
            n += 1
            p = os.path.join(d, f"pf{n}.eml")
            with open(p, "wb") as f:
                f.write(ews_message(n, "public@corp.example"))
            files[p] = ("public", "public")
    return fx, files


def add_ews_profile(tenant, name, ews, logins=None, **extra):
    prof = {"name": name, "type": "ews", "ews": ews, **extra}
    if logins:
        prof["mailboxes"] = [{"login": u} for u in logins]
    path = os.path.join(RUN, f"profile-{tenant}-{name}.json")
    with open(path, "w") as f:
        json.dump(prof, f)
    p = cli("profile", "add", "--tenant", tenant, "--file", path, expect=None)
    os.unlink(path)
    return p


class OAuthDovecot(Background):
    """A Dovecot of its own standing in for Exchange Online's IMAP server: it accepts only
    AUTHENTICATE XOAUTH2, validates each token with its oauth2 passdb through the Graph
    simulator's introspection URL (active, scope IMAP.AccessAsApp), then lets the app into a
    mailbox only if the simulator's grants file for that app lists it (FullAccess). Mail lives
    under its own directory; stopped on exit."""

    def __init__(self, sim_url, grants_dir):
        import socket
        self.dir = os.path.join(RUN, f"oauth-dovecot-{SUFFIX}")
        for sub in ("run", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        # the mail must be reachable by vmail: beside the stack's own mail directory, which
        # stack.sh keeps outside a private home (a run under /root)
        self.mail = os.path.realpath(os.path.join(RUN, "mail")) + f"-oauth-{SUFFIX}"
        os.makedirs(self.mail, exist_ok=True)
        subprocess.run(["chown", "vmail:vmail", self.mail], check=True)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        d = self.dir
        with open(os.path.join(d, "oauth2.conf"), "w") as f:
            f.write(f"""introspection_mode = post
introspection_url = {sim_url}/oauth2/introspect
username_attribute = username
# an app token names the app, not the mailbox: the mailbox check is the grants passdb below
username_format = app-token
active_attribute = active
active_value = true
scope = IMAP.AccessAsApp
pass_attrs = mv_app=%{{oauth2:client_id}}
""")
        with open(os.path.join(d, "dovecot.conf"), "w") as f:
            f.write(f"""protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/run/state
instance_name = mv-oauth-{SUFFIX}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = xoauth2
log_path = {d}/log/dovecot.log
mail_location = maildir:{self.mail}/%u
default_login_user = dovenull
default_internal_user = root
default_internal_group = root
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2
  args = {d}/oauth2.conf
  result_success = continue-ok
}}
passdb {{
  driver = passwd-file
  mechanisms = xoauth2
  args = username_format=%Lu {grants_dir}/%{{passdb:mv_app}}
  skip = unauthenticated
  result_failure = return-fail
  result_internalfail = return-fail
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={self.mail}/%u allow_all_users=yes
}}
""")
        self.proc = subprocess.Popen(["dovecot", "-c", os.path.join(d, "dovecot.conf"), "-F"],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(d, "log", "stderr.log"), "a"))

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                if self.proc.poll() is not None:
                    fail(f"dovecot (oauth2) exited: see {d}/log")
                return False
        wait_for(up, "the oauth2 Dovecot's port", 30)

    def login(self, token, user):
        """An imaplib connection authenticated with XOAUTH2 (raises on refusal)."""
        c = imaplib.IMAP4("127.0.0.1", self.port)
        c.authenticate("XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
        return c


def entra_token(sim_url, tenant_id, client_id, secret, scope):
    """A client-credentials token from the simulator's token endpoint (an independent client)."""
    import urllib.parse
    import urllib.request
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                   "client_secret": secret, "scope": scope}).encode()
    url = f"{sim_url}/{tenant_id}/oauth2/v2.0/token"
    return json.loads(urllib.request.urlopen(url, form, timeout=10).read())["access_token"]


SCHEDULER_BIN = os.path.join(BIN, "scheduler", "mailvault-scheduler")


class Schedulers:
    """mailvault-scheduler serve processes, by id; stopped (SIGTERM) on exit. Logs in
    RUN/log/scheduler-<suffix>-<id>.log."""

    def __init__(self, ids, **extra_env):
        self.procs = {}
        self.extra = extra_env
        for i in ids:
            self.start(i)

    def start(self, i):
        log = open(os.path.join(RUN, "log", f"scheduler-{SUFFIX}-{i}.log"), "a")
        self.procs[i] = subprocess.Popen([SCHEDULER_BIN, "serve", "--id", i], stdout=log, stderr=log,
                                         env=env(**self.extra))

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=30)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def scheduler_status():
    p = subprocess.run([SCHEDULER_BIN, "status", "--json"], capture_output=True, text=True, env=env())
    if p.returncode != 0:
        fail(f"mailvault-scheduler status: {p.stderr}")
    return json.loads(p.stdout)


def redis_cli(*args):
    p = subprocess.run(["redis-cli", "-p", STACK["MV_REDIS_PORT"], *args], capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"redis-cli {args}: {p.stderr}")
    return p.stdout.strip()


# ---- a TCP proxy to Dovecot that can hold back one server line (crash windows) ----

def uid_count(uidset):
    """How many UIDs an APPENDUID uid-set names ("7", "10:24", "3,5:6")."""
    n = 0
    for part in uidset.split(b","):
        a, _, b = part.partition(b":")
        n += abs(int(b) - int(a)) + 1 if b else 1
    return n


class HoldingProxy:
    """A TCP proxy to Dovecot for the worker's IMAP connections. Client bytes pass unchanged;
    server lines pass unchanged until, while armed, hold(line) is true: that line is kept back,
    nothing more goes to that client, and self.held is set. self.appended counts the messages
    the server's "OK [APPENDUID" lines say it stored (a MULTIAPPEND's whole uid-set), the held
    one included."""

    def __init__(self, hold):
        self.hold = hold
        self.armed = True
        self.appended = 0
        self.held = threading.Event()
        self.socks = []
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                cs, _ = self.lsock.accept()
            except OSError:
                return
            us = socket.create_connection(("127.0.0.1", IMAP_PORT))
            self.socks += [cs, us]
            threading.Thread(target=self.up, args=(cs, us), daemon=True).start()
            threading.Thread(target=self.down, args=(us, cs), daemon=True).start()

    def up(self, cs, us):  # client -> server, bytes as they come
        try:
            while True:
                b = cs.recv(65536)
                if not b:
                    break
                us.sendall(b)
        except OSError:
            pass
        for x in (us, cs):  # the client is gone: so is its server connection
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self, us, cs):  # server -> client, line by line
        f = us.makefile("rb")
        try:
            for line in f:
                if b" OK [APPENDUID " in line:  # one message, or a MULTIAPPEND's uid-set
                    self.appended += uid_count(line.split(b"[APPENDUID ")[1].split()[1].rstrip(b"]"))
                if self.armed and self.hold(self, line):
                    self.held.set()
                    return
                cs.sendall(line)
        except OSError:
            pass

    def close(self):
        self.lsock.close()
        for x in self.socks:
            try:
                x.close()
            except OSError:
                pass


# ---- the admin server (mailvault serve) ----

class AdminServer(Background):
    """`mailvault serve --listen 127.0.0.1:0` (the kernel picks the port, which the server
    prints on its first line); self.url is its base URL. Stopped with SIGTERM on exit."""

    def __init__(self):
        self.log = os.path.join(RUN, "log", f"serve-{SUFFIX}.log")
        self.proc = subprocess.Popen([CLI, "serve", "--listen", "127.0.0.1:0"], env=env(),
                                     stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            fail(f"mailvault serve did not start: {line!r} (log {self.log})")
        self.url = line.strip().rsplit(" ", 1)[1]

    def request(self, method, path, body=None, token=None, raw=None):
        """(status, parsed JSON or text, headers) of one request."""
        import urllib.request
        import urllib.error
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, text, headers = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            status, text, headers = e.code, e.read().decode(), e.headers
        if headers.get("Content-Type", "").startswith("application/json"):
            return status, json.loads(text), headers
        return status, text, headers


# ---- profiles written as documents (exports) ----

def profile_file(name, doc):
    """Write a profile document to RUN/<name>-<suffix>.json (mode 0600: it may hold a
    password) and return its path, for `mailvault profile add` or `mailvault export`."""
    f = os.path.join(RUN, f"{name}-{SUFFIX}.json")
    with open(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(doc, fh)
    return f


def add_profile_doc(tenant, name, doc):
    """`mailvault profile add` of a document; the file is removed afterwards."""
    f = profile_file(name, doc)
    try:
        cli("profile", "add", "--tenant", tenant, "--file", f)
    finally:
        os.unlink(f)


def export_state(tenant, name):
    """The status of export profile <name> (its task's mailbox is export:<name>)."""
    return {x["mailbox"]: x for x in status(tenant)["mailboxes"]}[f"export:{name}"]


# ---- S3 (the stack's SeaweedFS), read independently with boto3 ----

def s3_client():
    """boto3's S3 client for the stack's SeaweedFS (path-style, the stack's own keys)."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=STACK["MV_S3_ENDPOINT"],
                        region_name=STACK.get("MV_S3_REGION", "us-east-1"),
                        aws_access_key_id=STACK["MV_S3_ACCESS_KEY"],
                        aws_secret_access_key=STACK["MV_S3_SECRET_KEY"],
                        config=Config(s3={"addressing_style": "path"}))


def s3_keys(s3, bucket, prefix):
    """{key: size} of every object under prefix (ListObjectsV2, all pages)."""
    out, kw = {}, {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = s3.list_objects_v2(**kw)
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        if not page.get("IsTruncated"):
            return out
        kw["ContinuationToken"] = page["NextContinuationToken"]


def s3_store_add(name, bucket, *extra, secret_file=None, expect=0):
    """mailvault store add NAME for the stack's SeaweedFS (secret from RUN/s3.secret)."""
    return cli("store", "add", name, "--type", "s3", "--endpoint", STACK["MV_S3_ENDPOINT"],
               "--bucket", bucket, "--access-key", STACK["MV_S3_ACCESS_KEY"],
               "--secret-file", secret_file or os.path.join(RUN, "s3.secret"), *extra,
               expect=expect)


def imap_append(user, password, subject):
    """Append a small new message to the user's INBOX; returns its bytes."""
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(user, password)
    msg = (f"From: x@example.org\r\nTo: {user}@example.org\r\nSubject: {subject}\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nbody of {subject}\r\n").encode()
    c.append("INBOX", None, None, msg)
    c.logout()
    return msg
