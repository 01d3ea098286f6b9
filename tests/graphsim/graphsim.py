#!/usr/bin/env python3
"""graphsim: a Microsoft Graph mail API simulator for the mailvault test suite.

Standard library only.  Serves, from a directory of fixtures (see README.md):

  POST /{tenant}/oauth2/v2.0/token                      client-credentials tokens
  GET  /v1.0/users[/{id|upn}]                            directory
  GET  /v1.0/users/{u}/mailFolders[/{id}[/childFolders]] folders
  GET  /v1.0/users/{u}/mailFolders/{id}/messages[/delta] messages, delta query
  GET  /v1.0/users/{u}/[mailFolders/{id}/]messages/{id}[/$value]
  POST /v1.0/$batch                                      JSON batching
  /_sim/...                                              admin API (not Graph)

Run:  python3 graphsim.py --fixtures DIR --port 0 --port-file FILE
"""

import base64
import collections
import email.parser
import email.policy
import email.utils
import hashlib
import json
import math
import os
import re
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, quote, unquote, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "simlib"))
import simcommon  # noqa: E402
from simcommon import LRU, SimHandler, http_date, iso, read_head, serve  # noqa: E402

JSON_CT = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
ERR_CT = "application/json"

# Exchange Online's resources: tokens for them are for IMAP (XOAUTH2), not for Graph
OUTLOOK_RESOURCES = {"https://outlook.office365.com", "https://partner.outlook.cn"}

WELL_KNOWN = {
    # directory name -> (wellKnownName, displayName)
    "Inbox": ("inbox", "Inbox"),
    "SentItems": ("sentitems", "Sent Items"),
    "Drafts": ("drafts", "Drafts"),
    "DeletedItems": ("deleteditems", "Deleted Items"),
    "Archive": ("archive", "Archive"),
    "JunkEmail": ("junkemail", "Junk Email"),
}
WELL_KNOWN_BY_NAME = {v[0]: k for k, v in WELL_KNOWN.items()}

MAIL_PERMS = {"Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic.All", "Mail.ReadBasic"}
MAIL_FULL_PERMS = {"Mail.Read", "Mail.ReadWrite"}
MAIL_WRITE_PERMS = {"Mail.ReadWrite"}
USER_PERMS = {"User.Read.All", "User.ReadBasic.All", "User.ReadWrite.All",
              "Directory.Read.All", "Directory.ReadWrite.All"}

FAKE_SKU = "c7df2760-2c81-4ef7-b578-5b5392b571df"  # an opaque GUID for assignedLicenses
CHUNK = 64 * 1024
USERS_SKIP_PREFIX = "RFNwdAIAAQAAAA"

_json_enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def jdump(obj):
    return _json_enc(obj).encode("utf-8")


def b64u(data):
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64u_nopad(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(s):
    s = s.strip()
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))



def make_id(kind, *parts):
    h = hashlib.sha256(("\x00".join((kind,) + parts)).encode("utf-8")).digest()
    # Graph/Exchange ids are base64 strings beginning with AAMk/AQMk; ours are
    # url-safe base64 of a hash, opaque and stable across restarts.
    return "AAMk" + b64u(h[:30] + (b"\x00" if kind == "folder" else b"\x01") + h[30:32])




class GraphError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# --------------------------------------------------------------------------- fixtures

class Folder:
    __slots__ = ("id", "path", "rel", "name", "display", "wkn", "parent_id", "children",
                 "hidden", "mtime")

    def to_json(self, count, unread, beta=False):
        d = {
            "id": self.id,
            "displayName": self.display,
            "parentFolderId": self.parent_id,
            "childFolderCount": len([c for c in self.children]),
            "unreadItemCount": unread,
            "totalItemCount": count,
            "isHidden": self.hidden,
        }
        if beta:
            d["wellKnownName"] = self.wkn
        return d


class MsgEntry:
    __slots__ = ("id", "name", "path", "mtime_ns", "size", "read")


def strip_maildir_flags(name):
    i = name.find(":2,")
    if i < 0:
        i = name.find("!2,")
    return name if i < 0 else name[:i]


def name_is_read(name):
    for sep in (":2,", "!2,"):
        i = name.find(sep)
        if i >= 0:
            return "S" in name[i + 3:]
    return False


def is_message_file(name):
    if name.startswith("."):
        return False
    return name.endswith(".eml") or ":2," in name or "!2," in name


class Mailbox:
    """Folder tree + message index of one user, re-read from disk when it changes."""

    def __init__(self, sim, tenant, user):
        self.sim = sim
        self.tenant = tenant
        self.user = user
        self.root = os.path.join(user["_dir"], "mail")
        self.lock = threading.RLock()
        self.tree_sig = None
        self.folders = {}       # id -> Folder
        self.by_rel = {}        # rel path -> Folder
        self.root_folder = None
        self.folder_files = {}  # folder id -> (dir mtime_ns, [MsgEntry])
        self.msg_index = {}     # message id -> (folder id, MsgEntry)
        self.msg_index_ok = False

    # ---- folders
    def _walk(self):
        dirs = []
        stack = [""]
        while stack:
            rel = stack.pop()
            p = os.path.join(self.root, rel) if rel else self.root
            try:
                st = os.stat(p)
                entries = list(os.scandir(p))
            except OSError:
                continue
            dirs.append((rel, st.st_mtime_ns))
            for e in entries:
                if e.is_dir(follow_symlinks=True) and not e.name.startswith("."):
                    stack.append(os.path.join(rel, e.name) if rel else e.name)
        dirs.sort()
        return dirs

    def refresh(self):
        with self.lock:
            sig = tuple(self._walk())
            if sig == self.tree_sig:
                return
            self.tree_sig = sig
            uid = self.user["id"]
            folders, by_rel = {}, {}
            root = Folder()
            root.id = make_id("folder", self.tenant, uid, "msgfolderroot")
            root.path, root.rel, root.name = self.root, "", ""
            root.display, root.wkn = "Top of Information Store", "msgfolderroot"
            root.parent_id = make_id("folder", self.tenant, uid, "root")
            root.children, root.hidden, root.mtime = [], False, 0
            folders[root.id] = root
            by_rel[""] = root
            for rel, mt in sig:
                if rel == "":
                    root.mtime = mt
                    continue
                f = Folder()
                f.rel = rel
                f.path = os.path.join(self.root, rel)
                f.name = os.path.basename(rel)
                parent_rel = os.path.dirname(rel)
                top = parent_rel == ""
                if top and f.name in WELL_KNOWN:
                    f.wkn, f.display = WELL_KNOWN[f.name]
                else:
                    f.wkn, f.display = None, f.name
                f.hidden = False
                meta = os.path.join(f.path, "folder.json")
                if os.path.exists(meta):
                    try:
                        with open(meta, "rb") as fh:
                            m = json.loads(fh.read())
                        f.hidden = bool(m.get("isHidden", False))
                        f.display = m.get("displayName", f.display)
                    except (OSError, ValueError):
                        pass
                f.id = make_id("folder", self.tenant, uid, rel)
                f.children = []
                f.mtime = mt
                folders[f.id] = f
                by_rel[rel] = f
            for rel, f in by_rel.items():
                if rel == "":
                    continue
                parent = by_rel.get(os.path.dirname(rel))
                f.parent_id = parent.id
                parent.children.append(f)
            for f in folders.values():
                f.children.sort(key=lambda c: c.display.lower())
            self.folders, self.by_rel, self.root_folder = folders, by_rel, root
            self.folder_files = {k: v for k, v in self.folder_files.items() if k in folders}
            self.msg_index_ok = False

    def folder(self, key):
        """Resolve a folder id or well-known name; raises GraphError."""
        self.refresh()
        f = self.folders.get(key)
        if f is not None:
            return f
        low = key.lower()
        if low == "msgfolderroot":
            return self.root_folder
        if low in WELL_KNOWN_BY_NAME:
            f = self.by_rel.get(WELL_KNOWN_BY_NAME[low])
            if f is not None:
                return f
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        if not key.startswith("AAMk"):
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")

    # ---- messages
    def delete_message(self, folder, m):
        dest = os.path.join(self.user["_dir"], "recoverable")
        os.makedirs(dest, exist_ok=True)
        with self.lock:
            try:
                os.replace(m.path, os.path.join(dest, os.path.basename(m.path)))
            except FileNotFoundError:
                raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            self.folder_files.pop(folder.id, None)
            self.msg_index_ok = False

    def files(self, folder, force_stat=False):
        """List of MsgEntry of one folder, cached by the directory's mtime."""
        try:
            mt = os.stat(folder.path).st_mtime_ns
        except OSError:
            return []
        cached = self.folder_files.get(folder.id)
        if cached is not None and cached[0] == mt and not force_stat:
            return cached[1]
        uid = self.user["id"]
        out = []
        seen = set()
        try:
            it = list(os.scandir(folder.path))
        except OSError:
            it = []
        for e in it:
            if not is_message_file(e.name):
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except OSError:
                continue
            m = MsgEntry()
            base = strip_maildir_flags(e.name)
            mid = make_id("message", self.tenant, uid, base)
            if mid in seen:  # same base name twice in one folder: disambiguate
                mid = make_id("message", self.tenant, uid, folder.rel, e.name)
            seen.add(mid)
            m.id, m.name, m.path = mid, e.name, e.path
            m.mtime_ns, m.size, m.read = st.st_mtime_ns, st.st_size, name_is_read(e.name)
            out.append(m)
        out.sort(key=lambda m: m.name)
        self.folder_files[folder.id] = (mt, out)
        if cached is None or [x.id for x in cached[1]] != [x.id for x in out]:
            self.msg_index_ok = False
        return out

    def counts(self, folder):
        fl = self.files(folder)
        return len(fl), sum(1 for m in fl if not m.read)

    def find_message(self, mid):
        self.refresh()
        with self.lock:
            hit = self.msg_index.get(mid) if self.msg_index_ok else None
            if hit is not None and os.path.exists(hit[1].path):
                return self.folders[hit[0]], hit[1]
            idx = {}
            for f in self.folders.values():
                if f is self.root_folder:
                    continue
                for m in self.files(f):
                    idx.setdefault(m.id, (f.id, m))
            self.msg_index, self.msg_index_ok = idx, True
            hit = idx.get(mid)
            if hit is None:
                if not mid.startswith("AAMk"):
                    raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
                raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            return self.folders[hit[0]], hit[1]

    def message_location(self, mid):
        """Folder id holding message id now, or None (no error)."""
        try:
            f, _ = self.find_message(mid)
            return f.id
        except GraphError:
            return None


# --------------------------------------------------------------------------- message parsing

_hdr_parser = email.parser.BytesHeaderParser(policy=email.policy.default)
_full_parser = email.parser.BytesParser(policy=email.policy.default)


def _addr_list(value):
    if not value:
        return []
    out = []
    for name, addr in email.utils.getaddresses([str(value)]):
        if addr or name:
            out.append({"emailAddress": {"name": name or addr, "address": addr}})
    return out


def build_header_props(m):
    try:
        hdr = _hdr_parser.parsebytes(read_head(m.path))
    except Exception:  # malformed headers still get served
        hdr = {}

    def h(name):
        try:
            v = hdr.get(name)
        except Exception:
            return None
        return None if v is None else str(v)

    mtime = m.mtime_ns / 1e9
    date = None
    ds = h("Date")
    if ds:
        try:
            dt = email.utils.parsedate_to_datetime(ds)
            date = dt.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            date = None
    received = date if date is not None else mtime
    frm = _addr_list(h("From"))
    sender = _addr_list(h("Sender")) or frm
    ctype = (h("Content-Type") or "text/plain").lower()
    msgid = h("Message-ID")
    if msgid:
        msgid = msgid.strip()
    change_key = b64u_nopad(hashlib.sha1(f"{m.mtime_ns}:{m.size}:{m.name}".encode()).digest())[:24]
    return {
        "@odata.etag": 'W/"%s"' % change_key,
        "id": m.id,
        "createdDateTime": iso(received),
        "lastModifiedDateTime": iso(mtime),
        "changeKey": change_key,
        "categories": [],
        "receivedDateTime": iso(received),
        "sentDateTime": iso(received),
        "hasAttachments": ctype.startswith("multipart/mixed"),
        "internetMessageId": msgid,
        "subject": h("Subject") or "",
        "importance": "normal",
        "conversationId": b64u(hashlib.sha256((h("References") or msgid or m.id).split()[0].encode()).digest()[:24])
        if (h("References") or msgid) else None,
        "isDeliveryReceiptRequested": False,
        "isReadReceiptRequested": False,
        "isRead": m.read,
        "isDraft": False,
        "inferenceClassification": "focused",
        "sender": sender[0] if sender else None,
        "from": frm[0] if frm else None,
        "toRecipients": _addr_list(h("To")),
        "ccRecipients": _addr_list(h("Cc")),
        "bccRecipients": _addr_list(h("Bcc")),
        "replyTo": _addr_list(h("Reply-To")),
        "flag": {"flagStatus": "notFlagged"},
    }


def build_body_props(m):
    try:
        with open(m.path, "rb") as fh:
            msg = _full_parser.parse(fh)
        part = msg.get_body(preferencelist=("html", "plain"))
        content = part.get_content() if part is not None else ""
        ctype = "html" if part is not None and part.get_content_subtype() == "html" else "text"
        plain_part = msg.get_body(preferencelist=("plain",))
        plain = plain_part.get_content() if plain_part is not None else re.sub(r"<[^>]+>", " ", content)
    except Exception:
        content, ctype, plain = "", "text", ""
    preview = " ".join(plain.split())[:255]
    return {"body": {"contentType": ctype, "content": content}, "bodyPreview": preview}


# --------------------------------------------------------------------------- simulator state

class KeyStats:
    __slots__ = ("requests", "admitted", "in_flight", "max_concurrent", "peak_window",
                 "thr_conc", "thr_window", "faults", "window", "errors")

    def __init__(self):
        self.requests = self.admitted = self.in_flight = self.max_concurrent = 0
        self.peak_window = self.thr_conc = self.thr_window = self.faults = self.errors = 0
        self.window = collections.deque()

    def to_json(self, now, window_seconds):
        while self.window and self.window[0] <= now - window_seconds:
            self.window.popleft()
        last1 = 0
        for t in reversed(self.window):
            if t > now - 1.0:
                last1 += 1
            else:
                break
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "peak_window_requests": self.peak_window,
            "window_requests": len(self.window),
            "throttled_by_limit": self.thr_conc + self.thr_window,
            "throttled_concurrency": self.thr_conc,
            "throttled_window": self.thr_window,
            "injected_faults": self.faults,
            "error_responses": self.errors,
            "current_rate_rps": last1,
            "window_rate_rps": round(len(self.window) / window_seconds, 3) if window_seconds else 0,
        }


class Sim:
    def __init__(self, args):
        self.args = args
        self.fixtures = os.path.abspath(args.fixtures)
        self.lock = threading.Lock()
        self.tokens = {}        # token -> dict(tenant, client_id, aud, exp, roles)
        self.full_access = {}   # (tenant, client_id) -> mailboxes the app has FullAccess on
        self.introspections = 0
        self.mailboxes = {}     # (tenant, user id) -> Mailbox
        self.tenant_cache = {}  # tenant -> (sig, data)
        self.stats = {}         # (tenant, key) -> KeyStats
        self.faults = []
        self.deleted = collections.Counter()  # (tenant, upn) -> messages deleted
        self.batches = collections.Counter()  # tenant -> $batch requests
        self.batch_inner = collections.Counter()  # tenant -> requests inside them
        self.fault_seq = 0
        self.snapshots = collections.OrderedDict()  # delta token key -> state
        self.rounds = collections.OrderedDict()     # skiptoken key -> round
        self.delta_gen = 0
        self.msg_cache = LRU(50000)
        self.body_cache = LRU(5000)
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="batch")

    # ---- fixtures
    def tenant(self, tid):
        tdir = os.path.join(self.fixtures, tid)
        if not tid or "/" in tid or tid.startswith(".") or not os.path.isfile(os.path.join(tdir, "app.json")):
            return None
        udir = os.path.join(tdir, "users")
        try:
            sig = (os.stat(os.path.join(tdir, "app.json")).st_mtime_ns, os.stat(udir).st_mtime_ns)
        except OSError:
            sig = (os.stat(os.path.join(tdir, "app.json")).st_mtime_ns, 0)
        cached = self.tenant_cache.get(tid)
        if cached and cached[0] == sig:
            return cached[1]
        with open(os.path.join(tdir, "app.json"), "rb") as fh:
            app = json.loads(fh.read())
        users = []
        try:
            names = sorted(os.listdir(udir))
        except OSError:
            names = []
        for upn in names:
            p = os.path.join(udir, upn, "user.json")
            if not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                u = json.loads(fh.read())
            u.setdefault("id", str(uuid.UUID(bytes=hashlib.md5((tid + upn).encode()).digest())))
            u["userPrincipalName"] = u.get("userPrincipalName", upn)
            u.setdefault("displayName", upn.split("@")[0])
            u.setdefault("mail", upn)
            u.setdefault("licensed", True)
            u.setdefault("shared", False)
            u["_dir"] = os.path.join(udir, upn)
            users.append(u)
        data = {"app": app, "users": users,
                "by_key": {**{u["id"].lower(): u for u in users},
                           **{u["userPrincipalName"].lower(): u for u in users}}}
        self.tenant_cache[tid] = (sig, data)
        return data

    def mailbox(self, tenant, user):
        key = (tenant, user["id"])
        with self.lock:
            mb = self.mailboxes.get(key)
            if mb is None or mb.root != os.path.join(user["_dir"], "mail"):
                mb = Mailbox(self, tenant, user)
                self.mailboxes[key] = mb
            mb.user = user
        return mb

    def msg_props(self, m):
        return self.msg_cache.get((m.path, m.mtime_ns, m.size), lambda: build_header_props(m))

    def body_props(self, m):
        return self.body_cache.get((m.path, m.mtime_ns, m.size), lambda: build_body_props(m))

    # ---- stats / throttling
    def kstats(self, tenant, key):
        k = (tenant or "_none", key or "_none")
        s = self.stats.get(k)
        if s is None:
            with self.lock:
                s = self.stats.setdefault(k, KeyStats())
        return s

    def admit(self, st, limited):
        """Count a request; apply per-mailbox limits. Returns None or a GraphError (429)."""
        a = self.args
        now = time.monotonic()
        with self.lock:
            st.requests += 1
            if limited:
                if st.in_flight >= a.limit_concurrent:
                    st.thr_conc += 1
                    return GraphError(429, "ApplicationThrottled",
                                      "Application is over its MailboxConcurrency limit.",
                                      {"Retry-After": str(a.concurrency_retry_after)})
                w = st.window
                cutoff = now - a.limit_window_seconds
                while w and w[0] <= cutoff:
                    w.popleft()
                if len(w) >= a.limit_window_requests:
                    st.thr_window += 1
                    ra = max(1, math.ceil(w[0] + a.limit_window_seconds - now))
                    return GraphError(429, "ApplicationThrottled",
                                      "Application is over its MailboxRequests limit.",
                                      {"Retry-After": str(ra)})
            st.window.append(now)
            if len(st.window) > st.peak_window:
                st.peak_window = len(st.window)
            st.admitted += 1
            st.in_flight += 1
            if st.in_flight > st.max_concurrent:
                st.max_concurrent = st.in_flight
        return None

    def release(self, st):
        with self.lock:
            st.in_flight -= 1

    def stats_json(self):
        now = time.monotonic()
        out = {}
        with self.lock:
            for (tenant, key), st in sorted(self.stats.items()):
                out.setdefault(tenant, {})[key] = st.to_json(now, self.args.limit_window_seconds)
        return out

    # ---- faults
    def match_fault(self, method, path, inner=False):
        with self.lock:
            for f in self.faults:
                if f["remaining"] == 0:
                    continue
                if inner and f["kind"] == "reset":
                    continue  # a batch's inner request has no connection of its own to reset
                if f.get("method") and f["method"].upper() != method:
                    continue
                if not f["_re"].search(path):
                    continue
                if f["remaining"] > 0:
                    f["remaining"] -= 1
                f["fired"] += 1
                return f
        return None

    # ---- tokens
    def issue_token(self, tenant, client_id, roles, aud="https://graph.microsoft.com"):
        ttl = self.args.token_ttl
        tok = simcommon.mint_token("graphsim", aud, tenant, client_id, roles, ttl)
        with self.lock:
            self.tokens[tok] = {"tenant": tenant, "client_id": client_id, "aud": aud,
                                "exp": time.time() + ttl, "roles": set(roles)}
            if len(self.tokens) > 100000:
                now_f = time.time()
                self.tokens = {k: v for k, v in self.tokens.items() if v["exp"] > now_f}
        return tok, ttl

    # ---- FullAccess grants (Exchange Online mailbox permissions of the app's service principal)
    def load_grants(self, tid, tdata):
        cid = tdata["app"].get("client_id", "")
        with self.lock:
            if (tid, cid) not in self.full_access:
                self.full_access[(tid, cid)] = {m.lower() for m in tdata["app"].get("full_access", [])}

    def write_grants(self, tid, cid):
        """The grants as a Dovecot passwd-file, DIR/<client_id>: one line per mailbox the app
        may open (any password: the token was checked by the oauth2 passdb before)."""
        if not self.args.grants_dir:
            return
        with self.lock:
            lines = "".join(f"{m}::::::nopassword\n" for m in sorted(self.full_access.get((tid, cid), ())))
        os.makedirs(self.args.grants_dir, exist_ok=True)
        path = os.path.join(self.args.grants_dir, cid)
        with open(path + ".tmp", "w") as fh:
            fh.write(lines)
        os.replace(path + ".tmp", path)

    def write_all_grants(self):
        for tid in sorted(os.listdir(self.fixtures)):
            tdata = self.tenant(tid)
            if tdata is not None:
                self.load_grants(tid, tdata)
                self.write_grants(tid, tdata["app"].get("client_id", ""))

    # ---- delta state
    def put_state(self, store, value):
        key = secrets.token_urlsafe(18)
        with self.lock:
            store[key] = value
            while len(store) > self.args.max_delta_states:
                store.popitem(last=False)
        return key

    def get_state(self, store, key):
        with self.lock:
            v = store.get(key)
            if v is not None:
                store.move_to_end(key)
            return v


# --------------------------------------------------------------------------- request context

class Ctx:
    __slots__ = ("sim", "method", "path", "query", "headers", "body", "base", "request_id",
                 "client_request_id", "tenant", "tdata", "auth", "beta", "extra_headers")

    def __init__(self, sim, method, path, query, headers, body, base):
        self.sim = sim
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # dict with lower-case keys
        self.body = body
        self.base = base
        self.request_id = str(uuid.uuid4())
        self.client_request_id = headers.get("client-request-id") or self.request_id
        self.tenant = None
        self.tdata = None
        self.auth = None
        self.beta = False
        self.extra_headers = {}


class Resp:
    """status, headers, and either bytes body or a file path to stream."""
    __slots__ = ("status", "headers", "body", "file", "reset")

    def __init__(self, status=200, headers=None, body=b"", file=None, reset=False):
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.file = file
        self.reset = reset


def error_resp(ctx, err):
    body = {"error": {"code": err.code, "message": err.message,
                      "innerError": {"date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                                     "request-id": ctx.request_id,
                                     "client-request-id": ctx.client_request_id}}}
    h = {"Content-Type": ERR_CT}
    h.update(err.headers)
    return Resp(err.status, h, jdump(body))


def json_resp(obj, status=200, headers=None):
    h = {"Content-Type": JSON_CT}
    if headers:
        h.update(headers)
    return Resp(status, h, jdump(obj))


def aad_error(status, error, code, desc, extra_codes=None):
    return Resp(*simcommon.aad_error(status, error, code, desc, extra_codes))


# --------------------------------------------------------------------------- token endpoint

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_pubkeys = {}


def _b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _cert_files(app, tenant_dir):
    """PEM certificate of the app (app.json "certificate": a file name in the tenant directory)
    -> (thumbprint x5t, path of its public key PEM), cached."""
    name = app.get("certificate")
    if not name:
        return None
    path = os.path.join(tenant_dir, name)
    if path in _pubkeys:
        return _pubkeys[path]
    pem = open(path, "rb").read()
    body = b"".join(l for l in pem.splitlines() if l and not l.startswith(b"-----"))
    der = base64.b64decode(body)
    x5t = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
    pub = path + ".pub.pem"
    import subprocess
    subprocess.run(["openssl", "x509", "-in", path, "-pubkey", "-noout", "-out", pub], check=True)
    _pubkeys[path] = (x5t, pub)
    return _pubkeys[path]


def check_client_assertion(sim, ctx, app, tenant_id, cid, form):
    """RFC 7523 client assertion, as Entra ID checks it: jwt-bearer type, RS256 signature by the
    registered certificate (found by x5t), aud = this token endpoint, iss = sub = client id, and
    the time window. The signature is verified with the openssl command (no crypto in the
    standard library)."""
    import subprocess
    import tempfile
    if form.get("client_assertion_type") != JWT_BEARER:
        return aad_error(400, "invalid_request", 50027, "Invalid JWT token. The client_assertion_type "
                         "must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.")
    parts = form["client_assertion"].split(".")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        sig = _b64url_decode(parts[2])
    except Exception:
        return aad_error(400, "invalid_request", 50027, "Invalid JWT token. Token format not valid.")
    cert = _cert_files(app, os.path.join(sim.fixtures, tenant_id))
    if not cert or header.get("alg") != "RS256" or header.get("x5t") != cert[0]:
        return aad_error(401, "invalid_client", 700027,
                         "Client assertion contains an invalid signature. [Reason - The key was not found., "
                         f"Thumbprint of key used by client: '{header.get('x5t', '')}']")
    with tempfile.NamedTemporaryFile() as data, tempfile.NamedTemporaryFile() as sigf:
        data.write((parts[0] + "." + parts[1]).encode())
        data.flush()
        sigf.write(sig)
        sigf.flush()
        ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", cert[1], "-signature", sigf.name,
                             data.name], capture_output=True).returncode == 0
    if not ok:
        return aad_error(401, "invalid_client", 700027,
                         "Client assertion contains an invalid signature. [Reason - The provided signature "
                         "value did not match the expected signature value.]")
    host = ctx.headers.get("host", "")
    aud_ok = claims.get("aud", "").endswith(f"/{tenant_id}/oauth2/v2.0/token") and host in claims.get("aud", "")
    if not aud_ok or claims.get("iss") != cid or claims.get("sub") != cid:
        return aad_error(401, "invalid_client", 700021,
                         "Client assertion application identifier doesn't match 'client_id' parameter or "
                         "the audience is not this token endpoint.")
    now = time.time()
    if not (claims.get("nbf", now) <= now + 300 and claims.get("exp", 0) > now - 300):
        return aad_error(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
    return None


def handle_token(sim, ctx, tenant_id):
    tdata = sim.tenant(tenant_id)
    st = sim.kstats(tenant_id if tdata else "_unknown", "_token")
    with sim.lock:
        st.requests += 1
    ct = ctx.headers.get("content-type", "")
    app_of = (lambda cid: tdata["app"] if cid == tdata["app"].get("client_id") else None)
    bad, cid, app = simcommon.client_credentials(
        ctx.method, ctx.body if "json" not in ct else b"", tenant_id, tdata is not None, app_of,
        lambda a, secret: secret == a.get("client_secret"),
        assertion=lambda a, c, form: check_client_assertion(sim, ctx, a, tenant_id, c, form))
    if bad:
        return bad if isinstance(bad, Resp) else Resp(*bad)
    form = dict(parse_qsl(ctx.body.decode("utf-8", "replace"), keep_blank_values=True))
    aud = form.get("scope", "").split()[0][:-len("/.default")]
    if aud in OUTLOOK_RESOURCES:  # Exchange Online's own permissions (IMAP.AccessAsApp, ...)
        roles = list(app.get("exchange_permissions", []))
    else:
        roles = list(app.get("permissions", []))
    tok, ttl = sim.issue_token(tenant_id, cid, roles, aud)
    return Resp(*simcommon.token_answer(tok, ttl))


def handle_introspect(sim, ctx):
    """Token introspection (RFC 7662) for the Dovecot that stands in for Exchange Online's IMAP
    server: POST token=... -> {"active": true, ...} for a live token issued for Exchange Online
    (aud https://outlook.office365.com), else {"active": false}. "scope" carries the token's
    roles (IMAP.AccessAsApp), "username" the app as <client_id>@<tenant>; the FullAccess check
    on the mailbox is the grants file (--grants-dir), since introspection does not see it."""
    if ctx.method != "POST":
        return Resp(405, {"Content-Type": "application/json", "Allow": "POST"},
                    jdump({"error": "invalid_request"}))
    form = dict(parse_qsl(ctx.body.decode("utf-8", "replace"), keep_blank_values=True))
    info = sim.tokens.get(form.get("token", ""))
    with sim.lock:
        sim.introspections += 1
    if info is None or info["exp"] <= time.time() or info.get("aud") not in OUTLOOK_RESOURCES:
        return Resp(200, {"Content-Type": "application/json"}, jdump({"active": False}))
    return Resp(200, {"Content-Type": "application/json"}, jdump({
        "active": True, "token_type": "Bearer", "client_id": info["client_id"],
        "username": f"{info['client_id']}@{info['tenant']}", "scope": " ".join(sorted(info["roles"])),
        "aud": info["aud"], "tid": info["tenant"], "exp": int(info["exp"])}))


# --------------------------------------------------------------------------- graph routing

_KEY_SEG = re.compile(r"^([^()]+)\('([^']*)'\)$")


def split_path(path):
    segs = []
    for raw in path.split("/"):
        if not raw:
            continue
        s = unquote(raw)
        m = _KEY_SEG.match(s)
        if m:
            segs.append(m.group(1))
            segs.append(m.group(2))
        else:
            segs.append(s)
    return segs


def authenticate(sim, ctx):
    h = ctx.headers.get("authorization", "")
    if not h:
        raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.",
                         {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'})
    parts = h.split(None, 1)
    tok = parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else ""
    info = sim.tokens.get(tok)
    www = {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'}
    if info is None:
        if tok.count(".") != 2:
            raise GraphError(401, "InvalidAuthenticationToken",
                             "IDX14100: JWT is not well formed, there are no dots (.).", www)
        raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.", www)
    if info.get("aud") in OUTLOOK_RESOURCES:
        raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.", www)
    if info["exp"] <= time.time():
        raise GraphError(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.", www)
    ctx.auth = info
    ctx.tenant = info["tenant"]
    ctx.tdata = sim.tenant(info["tenant"])
    if ctx.tdata is None:
        raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.", www)


def q_select(ctx):
    s = ctx.query.get("$select")
    if not s:
        return None
    return [x.strip() for x in s.split(",") if x.strip()]


def q_top(ctx, default, maximum):
    t = ctx.query.get("$top")
    if t is None:
        return default
    try:
        n = int(t)
    except ValueError:
        raise GraphError(400, "BadRequest", f"Invalid value '{t}' for $top query option found.")
    if n < 1 or n > maximum:
        raise GraphError(400, "Request_UnsupportedQuery" if maximum == 999 else "ErrorInvalidParameter",
                         f"Invalid page size specified: '{n}'. Must be between 1 and {maximum} inclusive.")
    return n


def project(d, select, always=("id",)):
    if not select:
        return d
    out = {}
    if "@odata.etag" in d:
        out["@odata.etag"] = d["@odata.etag"]
    low = {k.lower(): k for k in d}
    for k in always:
        if k in d:
            out[k] = d[k]
    for s in select:
        k = low.get(s.lower())
        if k is not None:
            out[k] = d[k]
    return out


def encode_skip(obj):
    return b64u_nopad(jdump(obj))


def decode_skip(tok):
    try:
        return json.loads(b64u_decode(tok))
    except Exception:
        raise GraphError(400, "BadRequest", "Invalid $skiptoken.")


def user_json(u, select):
    d = {
        "businessPhones": [],
        "displayName": u.get("displayName"),
        "givenName": u.get("givenName"),
        "jobTitle": u.get("jobTitle"),
        "mail": u.get("mail"),
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": None,
        "surname": u.get("surname"),
        "userPrincipalName": u["userPrincipalName"],
        "id": u["id"],
    }
    if not select:
        return d
    extra = {
        "assignedLicenses": ([{"disabledPlans": [], "skuId": u.get("skuId", FAKE_SKU)}]
                             if u.get("licensed") and not u.get("shared") else []),
        "accountEnabled": u.get("accountEnabled", True),
        "userType": "Member",
        "mailNickname": u["userPrincipalName"].split("@")[0],
    }
    return project({**d, **extra}, select, always=())


def ctx_url(ctx, rest):
    ver = "beta" if ctx.beta else "v1.0"
    return f"{ctx.base}/{ver}/$metadata#{rest}"


def resolve_user(sim, ctx, key):
    u = ctx.tdata["by_key"].get(key.lower())
    return u


def require(ctx, perms, code, message):
    if not (ctx.auth["roles"] & perms):
        raise GraphError(403, code, message)


def handle_users_list(sim, ctx):
    require(ctx, USER_PERMS, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    select = q_select(ctx)
    top = q_top(ctx, 100, 999)
    off = 0
    if "$skiptoken" in ctx.query:
        tokn = ctx.query["$skiptoken"]
        if not tokn.startswith(USERS_SKIP_PREFIX):
            raise GraphError(400, "Request_BadRequest", "Invalid $skiptoken.")
        st = decode_skip(tokn[len(USERS_SKIP_PREFIX):])
        off, top = int(st.get("o", 0)), int(st.get("t", top))
    if "$filter" in ctx.query:
        ctx.extra_headers["X-GraphSim-Ignored"] = "$filter"
    users = ctx.tdata["users"]
    page = users[off:off + top]
    out = {"@odata.context": ctx_url(ctx, "users" + (f"({','.join(select)})" if select else "")),
           "value": [user_json(u, select) for u in page]}
    if off + top < len(users):
        q = {"$skiptoken": USERS_SKIP_PREFIX + encode_skip({"o": off + top, "t": top})}
        qs = ""
        if select:
            qs += "$select=" + quote(",".join(select), safe=",") + "&"
        qs += "$top=%d&$skiptoken=%s" % (top, q["$skiptoken"])
        out["@odata.nextLink"] = f"{ctx.base}/{'beta' if ctx.beta else 'v1.0'}/users?{qs}"
    return json_resp(out)


def folder_list(sim, ctx, mb, parent, uid_for_ctx, what):
    include_hidden = ctx.query.get("includeHiddenFolders", "").lower() == "true"
    select = q_select(ctx)
    top = q_top(ctx, 10, 1000)
    skip = 0
    if "$skip" in ctx.query:
        try:
            skip = max(0, int(ctx.query["$skip"]))
        except ValueError:
            raise GraphError(400, "BadRequest", "Invalid value for $skip query option.")
    kids = [c for c in parent.children if include_hidden or not c.hidden]
    page = kids[skip:skip + top]
    vals = []
    for f in page:
        n, unread = mb.counts(f)
        vals.append(project(f.to_json(n, unread, ctx.beta), select))
    rest = f"users('{uid_for_ctx}')/mailFolders" + (f"('{parent.id}')/childFolders" if what == "child" else "")
    out = {"@odata.context": ctx_url(ctx, rest), "value": vals}
    if skip + top < len(kids):
        params = []
        if include_hidden:
            params.append("includeHiddenFolders=true")
        if select:
            params.append("%24select=" + quote(",".join(select), safe=","))
        params.append("%%24top=%d" % top)
        params.append("%%24skip=%d" % (skip + top))
        ver = "beta" if ctx.beta else "v1.0"
        base = f"{ctx.base}/{ver}/users/{uid_for_ctx}/mailFolders"
        if what == "child":
            base += f"/{parent.id}/childFolders"
        out["@odata.nextLink"] = base + "?" + "&".join(params)
    return json_resp(out)


def message_json(sim, ctx, folder, m, select, delta=False):
    d = sim.msg_props(m)
    need_body = (not select) or any(s.lower() in ("body", "bodypreview") for s in select)
    d = dict(d)
    d["parentFolderId"] = folder.id
    d["isDraft"] = folder.wkn == "drafts"
    if need_body:
        d.update(sim.body_props(m))
    if not select:
        d["webLink"] = "https://outlook.office365.com/owa/?ItemID=%s&exvsurl=1&viewmodel=ReadMessageItem" % quote(m.id, safe="")
    out = project(d, select)
    if delta:
        out = {"@odata.type": "#microsoft.graph.message", **out}
    return out


def handle_delta(sim, ctx, mb, folder, uid):
    q = ctx.query
    pref = ctx.headers.get("prefer", "")
    page_size = sim.args.default_delta_page_size
    applied = []
    m = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", pref)
    if m:
        page_size = max(1, min(int(m.group(1)), 1000))
        applied.append(f"odata.maxpagesize={page_size}")
    if re.search(r'IdType\s*=\s*"?ImmutableId"?', pref, re.I):
        applied.append('IdType="ImmutableId"')
    headers = {"Preference-Applied": ", ".join(applied)} if applied else {}
    ver = "beta" if ctx.beta else "v1.0"
    link_base = f"{ctx.base}/{ver}/users/{uid}/mailFolders('{folder.id}')/messages/delta"

    def gone():
        with sim.lock:
            g = sim.delta_gen
        return GraphError(410, "SyncStateNotFound",
                          f"The sync state generation is not found; generation=0;[highest={g}].")

    if "$skiptoken" in q:
        try:
            rk, off = b64u_decode(q["$skiptoken"]).decode().rsplit(":", 1)
            off = int(off)
        except Exception:
            raise gone()
        rnd = sim.get_state(sim.rounds, rk)
        if rnd is None or rnd["folder"] != (ctx.tenant, mb.user["id"], folder.id):
            raise gone()
    else:
        base_state = None
        if "$deltatoken" in q:
            try:
                sk = b64u_decode(q["$deltatoken"]).decode()
            except Exception:
                raise gone()
            snap = sim.get_state(sim.snapshots, sk)
            if snap is None or snap["folder"] != (ctx.tenant, mb.user["id"], folder.id):
                raise gone()
            base_state = snap["state"]
            select, change_type = snap["select"], snap["changeType"]
        else:
            select = q_select(ctx)
            change_type = q.get("changeType")
            if change_type and change_type not in ("created", "updated", "deleted"):
                raise GraphError(400, "ErrorInvalidParameter", "Invalid changeType value.")
        files = mb.files(folder, force_stat=True)
        cur = {f.id: (f.name, f.mtime_ns, f.size) for f in files}
        items = []
        if base_state is None:
            items = [("u", i) for i in cur]
        else:
            for i, v in cur.items():
                old = base_state.get(i)
                if old is None:
                    if change_type in (None, "created"):
                        items.append(("u", i))
                elif old != v and change_type in (None, "updated"):
                    items.append(("u", i))
            if change_type in (None, "deleted"):
                for i in base_state:
                    if i not in cur:
                        loc = mb.message_location(i)
                        items.append(("r", i, "changed" if loc is not None else "deleted"))
        with sim.lock:
            sim.delta_gen += 1
            gen = sim.delta_gen
        rnd = {"folder": (ctx.tenant, mb.user["id"], folder.id), "items": items, "state": cur,
               "select": select, "changeType": change_type, "snap_key": None, "gen": gen}
        rk = sim.put_state(sim.rounds, rnd)
        off = 0
    items = rnd["items"]
    by_id = None
    vals = []
    pos = off
    while pos < len(items) and len(vals) < page_size:
        it = items[pos]
        pos += 1
        if it[0] == "r":
            vals.append({"@odata.type": "#microsoft.graph.message", "id": it[1],
                         "@removed": {"reason": it[2]}})
            continue
        if by_id is None:
            by_id = {f.id: f for f in mb.files(folder)}
        fm = by_id.get(it[1])
        if fm is None:
            by_id = {f.id: f for f in mb.files(folder, force_stat=True)}
            fm = by_id.get(it[1])
        if fm is None:  # vanished during the round: reported by the next round
            continue
        try:
            vals.append(message_json(sim, ctx, folder, fm, rnd["select"], delta=True))
        except OSError:
            continue
    out = {"@odata.context": ctx_url(ctx, "Collection(message)"), "value": vals}
    if pos < len(items):
        out["@odata.nextLink"] = link_base + "?%24skiptoken=" + b64u_nopad(f"{rk}:{pos}".encode())
    else:
        with sim.lock:
            sk = rnd["snap_key"]
        if sk is None:
            sk = sim.put_state(sim.snapshots, {"folder": rnd["folder"], "state": rnd["state"],
                                               "select": rnd["select"], "changeType": rnd["changeType"]})
            rnd["snap_key"] = sk
        out["@odata.deltaLink"] = link_base + "?%24deltatoken=" + b64u_nopad(sk.encode())
    return json_resp(out, headers=headers)


def handle_messages_list(sim, ctx, mb, folder, uid):
    select = q_select(ctx)
    top = q_top(ctx, 10, 1000)
    try:
        skip = max(0, int(ctx.query.get("$skip", "0")))
    except ValueError:
        raise GraphError(400, "BadRequest", "Invalid value for $skip query option.")
    files = mb.files(folder)
    flt = ctx.query.get("$filter")
    if flt is not None:
        # the one filter form mailvault uses: receivedDateTime lt|le|gt|ge <ISO 8601 UTC>
        fm = re.fullmatch(r"\s*receivedDateTime\s+(lt|le|gt|ge)\s+(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\s*", flt)
        if not fm:
            raise GraphError(400, "ErrorInvalidUrlQueryFilter",
                             "The query filter contains one or more invalid nodes.")
        op, lim = fm.group(1), fm.group(2)[:19] + "Z"
        cmp = {"lt": lambda a: a < lim, "le": lambda a: a <= lim,
               "gt": lambda a: a > lim, "ge": lambda a: a >= lim}[op]
        # both sides are UTC ISO strings of the same shape, so text order is time order
        files = [m for m in files if cmp(sim.msg_props(m)["receivedDateTime"][:19] + "Z")]
    # newest first, as Outlook lists by default
    ordered = sorted(files, key=lambda m: (sim.msg_props(m)["receivedDateTime"], m.name), reverse=True)
    page = ordered[skip:skip + top]
    vals = [message_json(sim, ctx, folder, m, select) for m in page]
    out = {"@odata.context": ctx_url(ctx, f"users('{uid}')/mailFolders('{folder.id}')/messages"),
           "value": vals}
    if skip + top < len(ordered):
        ver = "beta" if ctx.beta else "v1.0"
        params = []
        if flt is not None:
            params.append("%24filter=" + quote(flt, safe=""))
        if select:
            params.append("%24select=" + quote(",".join(select), safe=","))
        params += ["%%24top=%d" % top, "%%24skip=%d" % (skip + top)]
        out["@odata.nextLink"] = f"{ctx.base}/{ver}/users/{uid}/mailFolders('{folder.id}')/messages?" + "&".join(params)
    return json_resp(out)


def route_graph(sim, ctx, segs):
    """segs: path segments after the version. Returns Resp. Raises GraphError."""
    if not segs:
        raise GraphError(400, "BadRequest", "Invalid request.")
    if segs[0] == "$batch":
        raise GraphError(400, "BadRequest", "Nested batch requests are not supported.")
    if segs[0] == "me":
        raise GraphError(400, "BadRequest",
                         "/me request is only valid with delegated authentication flow.")
    if segs[0] != "users":
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segs[0]}'.")
    is_msg_delete = (ctx.method == "DELETE" and len(segs) >= 4 and
                     (segs[-2] == "messages" and segs[-1] not in ("delta", "delta()")))
    if ctx.method != "GET" and not is_msg_delete:
        raise GraphError(405, "Request_BadRequest" if len(segs) <= 2 else "ErrorInvalidRequest",
                         f"The OData request is not supported (method {ctx.method}).")
    if len(segs) == 1:
        return handle_users_list(sim, ctx)
    ukey = segs[1]
    user = resolve_user(sim, ctx, ukey)
    if len(segs) == 2:
        require(ctx, USER_PERMS, "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.")
        if user is None:
            raise GraphError(404, "Request_ResourceNotFound",
                             f"Resource '{ukey}' does not exist or one of its queried reference-property "
                             f"objects are not present.")
        out = {"@odata.context": ctx_url(ctx, "users/$entity"), **user_json(user, q_select(ctx))}
        return json_resp(out)
    # mail endpoints
    require(ctx, MAIL_PERMS, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    if user is None:
        raise GraphError(404, "ErrorInvalidUser", f"The requested user '{ukey}' is invalid.")
    if not user.get("licensed") and not user.get("shared"):
        raise GraphError(404, "MailboxNotEnabledForRESTAPI",
                         "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")
    mb = sim.mailbox(ctx.tenant, user)
    uid = user["id"]
    rest = segs[2:]
    if rest[0] == "messages":
        if len(rest) == 1:
            raise GraphError(400, "ErrorInvalidRequest",
                             "graphsim: list messages through /mailFolders/{id}/messages.")
        if len(rest) >= 2 and rest[1] in ("delta", "delta()", "microsoft.graph.delta()", "microsoft.graph.delta"):
            raise GraphError(400, "ErrorInvalidRequest",
                             "graphsim: delta is implemented per folder: /mailFolders/{id}/messages/delta.")
        return message_item(sim, ctx, mb, None, rest[1:], uid)
    if rest[0] != "mailFolders":
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[0]}'.")
    if len(rest) == 1:
        mb.refresh()
        return folder_list(sim, ctx, mb, mb.root_folder, uid, "top")
    folder = mb.folder(rest[1])
    i = 2
    while i < len(rest) and rest[i] == "childFolders":
        if i + 1 == len(rest):
            return folder_list(sim, ctx, mb, folder, uid, "child")
        child = mb.folder(rest[i + 1])
        if child.parent_id != folder.id:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        folder = child
        i += 2
    rest = rest[i:]
    if not rest:
        n, unread = mb.counts(folder)
        out = {"@odata.context": ctx_url(ctx, f"users('{uid}')/mailFolders/$entity"),
               **project(folder.to_json(n, unread, ctx.beta), q_select(ctx))}
        return json_resp(out)
    if rest[0] != "messages":
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[0]}'.")
    if len(rest) == 1:
        return handle_messages_list(sim, ctx, mb, folder, uid)
    if rest[1] in ("delta", "delta()", "microsoft.graph.delta()", "microsoft.graph.delta") and len(rest) == 2:
        return handle_delta(sim, ctx, mb, folder, uid)
    return message_item(sim, ctx, mb, folder, rest[1:], uid)


def message_item(sim, ctx, mb, folder, rest, uid):
    mid = rest[0]
    f, m = mb.find_message(mid)
    if folder is not None and f.id != folder.id:
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    if ctx.method == "DELETE":
        # https://learn.microsoft.com/en-us/graph/api/message-delete : Mail.ReadWrite, 204 No
        # Content; the item goes to Recoverable Items (kept here under <user>/recoverable/).
        require(ctx, MAIL_WRITE_PERMS, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if len(rest) != 1:
            raise GraphError(405, "ErrorInvalidRequest",
                             f"The OData request is not supported (method {ctx.method}).")
        mb.delete_message(f, m)
        with sim.lock:
            sim.deleted[(ctx.tenant, mb.user["userPrincipalName"])] += 1
        return Resp(204)
    if len(rest) == 1:
        out = {"@odata.context": ctx_url(ctx, f"users('{uid}')/messages/$entity"),
               **message_json(sim, ctx, f, m, q_select(ctx))}
        return json_resp(out)
    if len(rest) == 2 and rest[1] == "$value":
        require(ctx, MAIL_FULL_PERMS, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if not os.path.exists(m.path):
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return Resp(200, {"Content-Type": "text/plain"}, file=m.path)
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[1]}'.")


def mailbox_key_of(sim, segs, tdata):
    """Stats/limit key for a Graph path: (key, limited)."""
    if len(segs) >= 2 and segs[0] == "users":
        u = tdata["by_key"].get(segs[1].lower()) if tdata else None
        key = u["userPrincipalName"] if u else segs[1]
        return key, len(segs) >= 3
    return "_directory", False


def parse_graph_path(path):
    """-> (beta, segs) or None for non-Graph paths."""
    if path.startswith("/v1.0/") or path == "/v1.0":
        return False, split_path(path[5:])
    if path.startswith("/beta/") or path == "/beta":
        return True, split_path(path[5:])
    return None


def graph_request(sim, ctx, beta, segs, is_inner=False):
    """Full pipeline for one Graph request (top-level or inside $batch)."""
    ctx.beta = beta
    try:
        authenticate(sim, ctx)
    except GraphError as e:
        st = sim.kstats("_unauthenticated", "_auth")
        with sim.lock:
            st.requests += 1
            st.errors += 1
        return error_resp(ctx, e)
    if segs == ["$batch"] and not is_inner:
        return handle_batch(sim, ctx, beta)
    key, limited = mailbox_key_of(sim, segs, ctx.tdata)
    stats_key = f"{ctx.auth['client_id']}|{key}" if sim.args.stats_by_app else key
    st = sim.kstats(ctx.tenant, stats_key)
    err = sim.admit(st, limited)
    if err is not None:
        with sim.lock:
            st.errors += 1
        return error_resp(ctx, err)
    try:
        if sim.args.latency_ms:
            time.sleep(sim.args.latency_ms / 1000.0)
        try:
            r = route_graph(sim, ctx, segs)
        except GraphError as e:
            with sim.lock:
                st.errors += 1
            return error_resp(ctx, e)
        if ctx.extra_headers:
            r.headers.update(ctx.extra_headers)
        pref = ctx.headers.get("prefer", "")
        if "immutableid" in pref.lower() and "Preference-Applied" not in r.headers:
            r.headers["Preference-Applied"] = 'IdType="ImmutableId"'
        return r
    finally:
        sim.release(st)


def handle_batch(sim, ctx, beta):
    if ctx.method != "POST":
        return error_resp(ctx, GraphError(405, "BadRequest", "Method not allowed for $batch."))
    try:
        payload = json.loads(ctx.body or b"{}")
        reqs = payload["requests"]
        if not isinstance(reqs, list):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return error_resp(ctx, GraphError(400, "BadRequest", "Invalid batch payload format."))
    if len(reqs) > sim.args.batch_max:
        return error_resp(ctx, GraphError(
            400, "BadRequest",
            f"Number of requests in the batch exceeds the maximum of {sim.args.batch_max}."))
    ids = set()
    for r in reqs:
        if not isinstance(r, dict) or "id" not in r or "method" not in r or "url" not in r:
            return error_resp(ctx, GraphError(400, "BadRequest", "Invalid batch payload format."))
        if str(r["id"]) in ids:
            return error_resp(ctx, GraphError(400, "BadRequest", "Batch request contains duplicate ids."))
        ids.add(str(r["id"]))
    ver = "beta" if beta else "v1.0"

    def run_one(r):
        url = r["url"]
        if url.startswith("http://") or url.startswith("https://"):
            sp = urlsplit(url)
            path, qs = sp.path, sp.query
        else:
            if not url.startswith("/"):
                url = "/" + url
            path, _, qs = url.partition("?")
            if not (path.startswith("/v1.0/") or path.startswith("/beta/")):
                path = f"/{ver}" + path
        hdrs = {k.lower(): str(v) for k, v in (r.get("headers") or {}).items()}
        hdrs["authorization"] = ctx.headers.get("authorization", "")
        hdrs.setdefault("client-request-id", ctx.client_request_id)
        body = r.get("body")
        body_b = jdump(body) if body is not None and not isinstance(body, str) else (body or "").encode()
        ictx = Ctx(sim, str(r["method"]).upper(), path, dict(parse_qsl(qs, keep_blank_values=True)),
                   hdrs, body_b, ctx.base)
        parsed = parse_graph_path(path)
        f = sim.match_fault(ictx.method, path + ("?" + qs if qs else ""), inner=True) if sim.faults else None
        if f is not None and parsed is not None:
            # faults apply to a request inside a batch as to the same request sent alone
            st = sim.kstats(ctx.tenant, mailbox_key_of(sim, parsed[1], ctx.tdata)[0])
            with sim.lock:
                st.faults += 1
                if f["kind"] == "status":
                    st.requests += 1
            if f["kind"] == "slow":
                time.sleep(f["delay_ms"] / 1000.0)
        if parsed is None:
            resp = error_resp(ictx, GraphError(400, "BadRequest", "Invalid request URL in batch."))
        elif f is not None and f["kind"] == "status":
            resp = fault_resp(sim, ictx, f)
        else:
            resp = graph_request(sim, ictx, parsed[0], parsed[1], is_inner=True)
        item = {"id": str(r["id"]), "status": resp.status,
                "headers": {k: v for k, v in resp.headers.items()}}
        if resp.file is not None:
            with open(resp.file, "rb") as fh:
                item["body"] = base64.b64encode(fh.read()).decode("ascii")
        elif resp.body:
            try:
                item["body"] = json.loads(resp.body)
            except ValueError:
                item["body"] = base64.b64encode(resp.body).decode("ascii")
        return item

    with sim.lock:
        sim.batches[ctx.tenant] += 1
        sim.batch_inner[ctx.tenant] += len(reqs)
    sequential = any(r.get("dependsOn") for r in reqs)
    results = []
    if sequential:
        failed = set()
        for r in reqs:
            deps = [str(d) for d in (r.get("dependsOn") or [])]
            if any(d in failed for d in deps):
                results.append({"id": str(r["id"]), "status": 424,
                                "headers": {"Content-Type": ERR_CT},
                                "body": json.loads(error_resp(ctx, GraphError(
                                    424, "FailedDependency",
                                    "The dependent request failed.")).body)})
                failed.add(str(r["id"]))
                continue
            item = run_one(r)
            if item["status"] >= 400:
                failed.add(item["id"])
            results.append(item)
    else:
        # Graph hands up to 4 requests of a batch to the mailbox at a time.
        for i in range(0, len(reqs), 4):
            results.extend(sim.pool.map(run_one, reqs[i:i + 4]))
    return json_resp({"responses": results}, headers={"Content-Type": "application/json"})


# --------------------------------------------------------------------------- admin API

def handle_admin(sim, ctx):
    p = ctx.path
    m = ctx.method
    if p == "/_sim/stats" and m == "GET":
        return Resp(200, {"Content-Type": "application/json"}, jdump({
            "stats": sim.stats_json(),
            "faults": [{k: v for k, v in f.items() if k != "_re"} for f in sim.faults],
            "limits": {"concurrent": sim.args.limit_concurrent,
                       "window_requests": sim.args.limit_window_requests,
                       "window_seconds": sim.args.limit_window_seconds},
            "deleted": [{"tenant": k[0], "mailbox": k[1], "messages": v} for k, v in sorted(sim.deleted.items())],
            "batches": {t: {"batches": n, "requests": sim.batch_inner[t]} for t, n in sim.batches.items()},
            "delta_states": len(sim.snapshots), "delta_rounds": len(sim.rounds),
            "tokens": len(sim.tokens), "introspections": sim.introspections}))
    if p == "/_sim/reset-stats" and m == "POST":
        with sim.lock:
            for st in sim.stats.values():
                inflight = st.in_flight
                st.__init__()
                st.in_flight = inflight
        return Resp(204)
    if p == "/_sim/full-access" and m in ("POST", "DELETE"):
        # grant (POST) or remove (DELETE) the app's FullAccess on a mailbox:
        # {"tenant": "...", "mailbox": "..."}
        try:
            spec = json.loads(ctx.body or b"{}")
            tdata = sim.tenant(spec["tenant"])
            if tdata is None:
                raise ValueError("unknown tenant")
            cid = tdata["app"]["client_id"]
            sim.load_grants(spec["tenant"], tdata)
            with sim.lock:
                g = sim.full_access[(spec["tenant"], cid)]
                if m == "POST":
                    g.add(spec["mailbox"].lower())
                else:
                    g.discard(spec["mailbox"].lower())
            sim.write_grants(spec["tenant"], cid)
        except (ValueError, KeyError, TypeError) as e:
            return Resp(400, {"Content-Type": "application/json"}, jdump({"error": str(e)}))
        return Resp(204)
    if p == "/_sim/expire-tokens" and m == "POST":
        with sim.lock:
            for v in sim.tokens.values():
                v["exp"] = 0
        return Resp(204)
    if p == "/_sim/drop-delta-state" and m == "POST":
        with sim.lock:
            sim.snapshots.clear()
            sim.rounds.clear()
        return Resp(204)
    if p == "/_sim/faults":
        if m == "GET":
            return Resp(200, {"Content-Type": "application/json"},
                        jdump([{k: v for k, v in f.items() if k != "_re"} for f in sim.faults]))
        if m == "DELETE":
            with sim.lock:
                sim.faults = []
            return Resp(204)
        if m == "POST":
            try:
                spec = json.loads(ctx.body or b"{}")
                specs = spec if isinstance(spec, list) else [spec]
                added = []
                for s in specs:
                    kind = s.get("kind", "status")
                    if kind not in ("status", "reset", "slow"):
                        raise ValueError("kind must be status, reset or slow")
                    if kind == "status" and int(s.get("status", 0)) < 400:
                        raise ValueError("status fault needs status >= 400")
                    f = {"path_regex": s.get("path_regex", ""), "kind": kind,
                         "status": int(s.get("status", 0)) if kind == "status" else None,
                         "retry_after": s.get("retry_after"),
                         "delay_ms": int(s.get("delay_ms", 0)),
                         "code": s.get("code"), "message": s.get("message"),
                         "method": s.get("method"),
                         "remaining": int(s.get("count", -1)), "fired": 0}
                    f["_re"] = re.compile(f["path_regex"])
                    with sim.lock:
                        sim.fault_seq += 1
                        f["id"] = sim.fault_seq
                        sim.faults.append(f)
                    added.append({k: v for k, v in f.items() if k != "_re"})
            except (ValueError, re.error, TypeError) as e:
                return Resp(400, {"Content-Type": "application/json"}, jdump({"error": str(e)}))
            return Resp(201, {"Content-Type": "application/json"},
                        jdump(added if isinstance(spec, list) else added[0]))
    return Resp(404, {"Content-Type": "application/json"}, jdump({"error": "unknown admin endpoint"}))


FAULT_DEFAULTS = {
    429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    500: ("InternalServerError", "An internal server error occurred. The operation failed."),
    502: ("BadGateway", "The server received an invalid response from an upstream server."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The gateway did not receive a timely response."),
}


def fault_resp(sim, ctx, f):
    status = f["status"]
    code, msg = FAULT_DEFAULTS.get(status, ("UnknownError", "Injected failure."))
    hdrs = {}
    ra = f.get("retry_after")
    if ra is None and status in (429, 503):
        ra = 1
    if ra is not None:
        hdrs["Retry-After"] = str(ra)
    return error_resp(ctx, GraphError(status, f.get("code") or code, f.get("message") or msg, hdrs))


# --------------------------------------------------------------------------- HTTP layer

class Handler(SimHandler):
    server_version = "graphsim/1.0"

    def handle_method(self, method):
        self._handle(method)

    def _handle(self, method):
        sim = self.sim
        body = self.read_body()
        sp = urlsplit(self.path)
        path = sp.path
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        headers = {k.lower(): v for k, v in self.headers.items()}
        ctx = Ctx(sim, method, path, dict(parse_qsl(sp.query, keep_blank_values=True)),
                  headers, body, "http://" + host)
        try:
            if path.startswith("/_sim/"):
                resp = handle_admin(sim, ctx)
            else:
                resp = self._graph_or_token(ctx, method, path, sp)
        except Exception as e:  # never kill the connection on a bug: answer 500
            import traceback
            traceback.print_exc()
            resp = error_resp(ctx, GraphError(500, "InternalServerError", f"graphsim bug: {e!r}"))
        if resp.reset:
            self.reset_connection()
            return
        self._send(ctx, resp)

    def _graph_or_token(self, ctx, method, path, sp):
        sim = self.sim
        full = path + ("?" + sp.query if sp.query else "")
        f = sim.match_fault(method, full) if sim.faults else None
        tdata = None
        if f is not None:
            gp = parse_graph_path(path)
            key = "_other"
            tenant = "_unauthenticated"
            info = sim.tokens.get(ctx.headers.get("authorization", "")[7:].strip())
            if info:
                tenant = info["tenant"]
                tdata = sim.tenant(tenant)
            if gp is not None:
                key = mailbox_key_of(sim, gp[1], tdata)[0]
            elif "/oauth2/" in path:
                tenant, key = path.split("/")[1], "_token"
            st = sim.kstats(tenant, key)
            with sim.lock:
                st.faults += 1
                if f["kind"] != "slow":
                    st.requests += 1
            if f["kind"] == "reset":
                return Resp(reset=True)
            if f["kind"] == "status":
                return fault_resp(sim, ctx, f)
            time.sleep(f["delay_ms"] / 1000.0)
        if path == "/oauth2/introspect":
            return handle_introspect(sim, ctx)
        m = re.match(r"^/([^/]+)/oauth2/v2\.0/token/?$", path)
        if m:
            return handle_token(sim, ctx, unquote(m.group(1)))
        gp = parse_graph_path(path)
        if gp is None:
            return error_resp(ctx, GraphError(400, "BadRequest", "Invalid version."))
        return graph_request(sim, ctx, gp[0], gp[1])

    def _send(self, ctx, resp):
        status = resp.status
        reason = self.responses.get(status, ("Unknown",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", "Date: " + http_date(),
                 "request-id: " + ctx.request_id, "client-request-id: " + ctx.client_request_id]
        for k, v in resp.headers.items():
            lines.append(f"{k}: {v}")
        if self.close_connection:
            lines.append("Connection: close")
        out = self.wfile
        if resp.file is not None:
            try:
                fh = open(resp.file, "rb")
            except OSError:
                return self._send(ctx, error_resp(ctx, GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store.")))
            with fh:
                lines.append("Transfer-Encoding: chunked")
                out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                while True:
                    data = fh.read(CHUNK)
                    if not data:
                        break
                    out.write(b"%x\r\n%s\r\n" % (len(data), data))
                out.write(b"0\r\n\r\n")
            return
        self.write_fixed(lines, status, resp.body)


def main(argv=None):
    ap = simcommon.arg_parser("Microsoft Graph mail API simulator")
    ap.add_argument("--limit-concurrent", type=int, default=4)
    ap.add_argument("--limit-window-requests", type=int, default=10000)
    ap.add_argument("--limit-window-seconds", type=float, default=600)
    ap.add_argument("--concurrency-retry-after", type=int, default=1)
    ap.add_argument("--batch-max", type=int, default=20)
    ap.add_argument("--default-delta-page-size", type=int, default=10)
    ap.add_argument("--max-delta-states", type=int, default=20000)
    ap.add_argument("--stats-by-app", action="store_true",
                    help="key stats/limits by client_id|mailbox instead of mailbox")
    ap.add_argument("--grants-dir", default="",
                    help="write each app's FullAccess grants here as Dovecot passwd-files")
    args = simcommon.parse_args(ap, argv)
    sim = Sim(args)
    sim.write_all_grants()
    return serve(args, sim, Handler, "graphsim")


if __name__ == "__main__":
    sys.exit(main())
