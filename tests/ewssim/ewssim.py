#!/usr/bin/env python3
"""ewssim: an Exchange Web Services (EWS) simulator for the mailvault test suite.

Standard library only.  Serves, from a directory of fixtures (see README.md):

  POST /EWS/Exchange.asmx                  SOAP 1.1 EWS operations (FindFolder, GetFolder,
                                           CreateFolder, SyncFolderHierarchy, SyncFolderItems,
                                           FindItem, GetItem, CreateItem, UploadItems, ExportItems,
                                           DeleteItem);
                                           Basic, NTLMv2 ([MS-NLMP], per connection) or Bearer auth
  POST /{tenant}/oauth2/v2.0/token         client-credentials tokens for Microsoft 365 orgs
  /_sim/...                                admin API (not EWS)

Run:  python3 ewssim.py --fixtures DIR --port 0 --port-file FILE
"""

import base64
import collections
import email.parser
import email.policy
import email.utils
import hashlib
import hmac
import json
import os
import re
import struct
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import unquote, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "simlib"))
import simcommon  # noqa: E402
from simcommon import LRU, SimHandler, http_date, iso, read_head, serve  # noqa: E402

# --------------------------------------------------------------------------- namespaces

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XML_NS = "http://www.w3.org/XML/1998/namespace"
for _p, _u in (("s", S), ("m", M), ("t", T), ("e", E), ("xsi", XSI)):
    ET.register_namespace(_p, _u)

XML_CT = "text/xml; charset=utf-8"
XML_DECL = b'<?xml version="1.0" encoding="utf-8"?>'
EWS_SCOPE = "https://outlook.office365.com/.default"
CHUNK_RAW = 3 * 16384          # raw bytes per base64 chunk (64 KiB of base64)

# RequestServerVersion values accepted (ExchangeVersionType in types.xsd).
KNOWN_VERSIONS = ["Exchange2007", "Exchange2007_SP1", "Exchange2009", "Exchange2010", "Exchange2010_SP1",
                  "Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2016",
                  "V2015_10_05", "V2016_01_06", "V2016_04_13", "V2016_07_13", "V2016_10_10",
                  "V2017_01_07", "V2017_04_14", "V2017_07_11", "V2017_10_09", "V2018_01_08"]

SERVER_VERSIONS = {
    # Exchange Server 2019 CU14 and Exchange Online, as their ServerVersionInfo headers read.
    "onprem": {"MajorVersion": "15", "MinorVersion": "2", "MajorBuildNumber": "1544",
               "MinorBuildNumber": "4", "Version": "V2017_07_11"},
    "m365": {"MajorVersion": "15", "MinorVersion": "20", "MajorBuildNumber": "8769",
             "MinorBuildNumber": "25", "Version": "V2018_01_08"},
}

# Top-level directory name -> (DistinguishedFolderId, display name, FolderClass)
MAIL_WELL_KNOWN = {
    "Inbox": ("inbox", "Inbox", "IPF.Note"),
    "SentItems": ("sentitems", "Sent Items", "IPF.Note"),
    "DeletedItems": ("deleteditems", "Deleted Items", "IPF.Note"),
    "Drafts": ("drafts", "Drafts", "IPF.Note"),
    "JunkEmail": ("junkemail", "Junk Email", "IPF.Note"),
    "Outbox": ("outbox", "Outbox", "IPF.Note"),
    "Archive": ("archive", "Archive", "IPF.Note"),
    "Calendar": ("calendar", "Calendar", "IPF.Appointment"),
    "Contacts": ("contacts", "Contacts", "IPF.Contact"),
    "Tasks": ("tasks", "Tasks", "IPF.Task"),
    "Notes": ("notes", "Notes", "IPF.StickyNote"),
}
ARCHIVE_WELL_KNOWN = {
    "Inbox": ("archiveinbox", "Inbox", "IPF.Note"),
    "DeletedItems": ("archivedeleteditems", "Deleted Items", "IPF.Note"),
}
# Distinguished ids the simulator knows, and which store/folder they name.
DFID_ROOTS = {"root": ("mail", "root"), "msgfolderroot": ("mail", "msgroot"),
              "archiveroot": ("archive", "root"), "archivemsgfolderroot": ("archive", "msgroot"),
              "publicfoldersroot": ("public", "msgroot")}
DFID_MAIL = {v[0]: k for k, v in MAIL_WELL_KNOWN.items()}
DFID_ARCHIVE = {v[0]: k for k, v in ARCHIVE_WELL_KNOWN.items()}
# Other values of DistinguishedFolderIdNameType: valid in the schema, but no folder here.
DFID_RECOVERABLE = {"recoverableitemsroot": "mail", "recoverableitemsdeletions": "mail",
                    "archiverecoverableitemsroot": "archive", "archiverecoverableitemsdeletions": "archive"}
DFID_OTHER = {"searchfolders", "voicemail",
              "recoverableitemsversions", "recoverableitemspurges", "archiverecoverableitemsversions",
              "archiverecoverableitemspurges", "syncissues", "conflicts", "localfailures",
              "serverfailures", "recipientcache", "quickcontacts", "conversationhistory",
              "adminauditlogs", "todosearch", "mycontacts", "directory", "imcontactlist",
              "peopleconnect", "favorites", "journal", "conversationsettings"}

ITEM_ELEM = {"IPM.Note": "Message", "IPM.Appointment": "CalendarItem", "IPM.Contact": "Contact",
             "IPM.Task": "Task", "IPM.Post": "PostItem", "IPM.StickyNote": "Item"}
FOLDER_ELEM = {"IPF.Appointment": "CalendarFolder", "IPF.Contact": "ContactsFolder", "IPF.Task": "TasksFolder"}

MSG = {
    "ErrorItemNotFound": "The specified object was not found in the store.",
    "ErrorFolderNotFound": "The specified folder could not be found in the store.",
    "ErrorInvalidIdMalformed": "Id is malformed.",
    "ErrorInvalidSyncStateData": "Synchronization state data is corrupt or otherwise invalid.",
    "ErrorServerBusy": "The server cannot service this request right now. Try again later.",
    "ErrorExceededConnectionCount": "You have exceeded the available concurrent connections for your "
                                    "account.  Try again once your other requests have completed.",
    "ErrorImpersonateUserDenied": "The account does not have permission to impersonate the requested user.",
    "ErrorNonExistentMailbox": "The SMTP address has no mailbox associated with it.",
    "ErrorAccessDenied": "Access is denied. Check credentials and try again.",
    "ErrorInvalidExchangeImpersonationHeaderData": "ExchangeImpersonation SOAP header must be present for "
                                                   "this type of OAuth token.",
    "ErrorInternalServerError": "An internal server error occurred. The operation failed.",
    "ErrorInvalidServerVersion": "The specified server version is invalid.",
    "ErrorUnsupportedMimeConversion": "MIME conversion is not supported for this item type.",
    "ErrorMessageDispositionRequired": "MessageDisposition attribute is required.",
    "ErrorInvalidOperation": "The operation is not valid.",
    "ErrorInvalidRequest": "The request is invalid.",
    "ErrorQuotaExceeded": "The operation failed because the mailbox quota has been exceeded.",
    "ErrorFolderExists": "A folder with the specified name already exists.",
}

# MAPI properties the simulator keeps for created items (ExtendedFieldURI PropertyTag), see
# https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/extendedfielduri
PR_MESSAGE_FLAGS, PR_MESSAGE_DELIVERY_TIME, PR_CLIENT_SUBMIT_TIME = 0x0E07, 0x0E06, 0x0039
EXT_PROPS = {PR_MESSAGE_FLAGS: ("flags", "Integer"), PR_MESSAGE_DELIVERY_TIME: ("delivery", "SystemTime"),
             PR_CLIENT_SUBMIT_TIME: ("submit", "SystemTime")}
MSGFLAG_READ, MSGFLAG_UNMODIFIED, MSGFLAG_UNSENT = 0x1, 0x2, 0x8
PROPS_DIR = ".ewssim-props"     # per folder: <item base>.json, the MAPI properties of created items


def tn(name):
    return "{%s}%s" % (T, name)


def mn(name):
    return "{%s}%s" % (M, name)



def b64(data):
    return base64.b64encode(data).decode("ascii")


def h(*parts, n=32):
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()[:n]




# --------------------------------------------------------------------------- errors

class EwsError(Exception):
    """An error answered inside a ResponseMessage (ResponseClass="Error")."""

    def __init__(self, code, text=None, values=None):
        super().__init__(code)
        self.code = code
        self.text = text or MSG.get(code, code)
        self.values = values or []


class Fault(Exception):
    """A SOAP fault for the whole request (HTTP 500 by default)."""

    def __init__(self, code, text=None, values=None, status=500, extra=None):
        super().__init__(code)
        self.code = code
        self.text = text or MSG.get(code, code)
        self.values = values or []
        self.status = status
        self.extra = extra or []      # list of (tag, text) children of MessageXml


class HttpReply(Exception):
    def __init__(self, resp):
        super().__init__("http")
        self.resp = resp


def schema_error(violation):
    return Fault("ErrorSchemaValidation", "The request failed schema validation: " + violation,
                 extra=[("LineNumber", "1"), ("LinePosition", "1"), ("Violation", violation)])


# --------------------------------------------------------------------------- ids

ID_HEAD = b"\x00\x03\x24"      # so ids start with "AAMk" like Exchange's
K_FOLDER, K_ITEM = 1, 2


def make_id(kind, prefix, key):
    return b64(ID_HEAD + bytes([kind]) + prefix + key)


def parse_id(s):
    """-> (kind, prefix8, key12); raises EwsError(ErrorInvalidIdMalformed)."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except Exception:
        raise EwsError("ErrorInvalidIdMalformed")
    if len(raw) != 24 or raw[:3] != ID_HEAD or raw[3] not in (K_FOLDER, K_ITEM):
        raise EwsError("ErrorInvalidIdMalformed")
    return raw[3], raw[4:12], raw[12:24]


def item_ck(ent):
    return hashlib.sha256(f"{ent.mtime_ns}:{ent.size}:{ent.base}".encode()).digest()[:8]


def item_change_key(ent):
    return b64(b"\x09\x00\x00\x00\x16\x00\x00\x00" + item_ck(ent))


def folder_ck(f):
    return hashlib.sha256(f"{f.display}\x00{f.folder_class}\x00{f.parent.key.hex() if f.parent else ''}"
                          .encode()).digest()[:8]


def folder_change_key(f):
    return b64(b"\x01\x00\x00\x00\x16\x00\x00\x00" + folder_ck(f))


# --------------------------------------------------------------------------- fixtures: stores

class Folder:
    __slots__ = ("key", "id", "rel", "path", "display", "dfid", "folder_class", "parent", "children",
                 "store", "virtual", "hidden")


class Entry:
    __slots__ = ("key", "id", "name", "base", "path", "mtime_ns", "size", "read", "kind", "item_class",
                 "folder")


def strip_flags(name):
    for sep in (":2,", "!2,"):
        i = name.find(sep)
        if i >= 0:
            return name[:i], "S" in name[i + 3:]
    return name, False


def classify(base):
    """file base name -> (kind, ItemClass) or None when the file is not an item."""
    low = base.lower()
    if low.endswith(".eml"):
        return "mail", "IPM.Note"
    if low.endswith(".ics"):
        return "mime", "IPM.Appointment"
    if low.endswith(".vcf"):
        return "mime", "IPM.Contact"
    if low.endswith(".item.json"):
        return "nomime", None
    return None


class Store:
    """One folder tree: a primary mailbox, an archive mailbox, or an organisation's public folders."""

    def __init__(self, sim, org, mailbox, scope, root_dir):
        self.sim = sim
        self.org = org
        self.mailbox = mailbox      # smtp (lower case) or None for public folders
        self.scope = scope          # "mail" | "archive" | "public"
        self.root_dir = root_dir
        self.prefix = h("store", org, mailbox or "", scope, n=8)
        self.lock = threading.RLock()
        self.sig = None
        self.folders = {}           # key -> Folder
        self.by_rel = {}
        self.by_dfid = {}
        self.root = None            # "root" / "archiveroot" (virtual) or public root
        self.msgroot = None
        self.files_cache = {}       # folder key -> (dir mtime_ns, [Entry])
        self.item_index = {}        # item key -> folder key

    def fkey(self, rel):
        return h("folder", self.org, self.mailbox or "", self.scope, rel, n=12)

    def _walk(self):
        out = []
        stack = [""]
        while stack:
            rel = stack.pop()
            p = os.path.join(self.root_dir, rel) if rel else self.root_dir
            try:
                st = os.stat(p)
                ents = list(os.scandir(p))
            except OSError:
                continue
            fj = None
            for e in ents:
                if e.name == "folder.json":
                    try:
                        fj = e.stat().st_mtime_ns
                    except OSError:
                        pass
                elif not e.name.startswith(".") and e.is_dir(follow_symlinks=True):
                    stack.append(os.path.join(rel, e.name) if rel else e.name)
            out.append((rel, st.st_mtime_ns, fj))
        out.sort()
        return tuple(out)

    def refresh(self):
        with self.lock:
            sig = self._walk()
            if sig == self.sig:
                return
            self.sig = sig
            folders, by_rel, by_dfid = {}, {}, {}

            def mk(rel, display, dfid, fclass, parent, virtual=False, path=None):
                f = Folder()
                f.key = self.fkey(rel if not virtual else "\x00" + rel)
                f.id = make_id(K_FOLDER, self.prefix, f.key)
                f.rel, f.display, f.dfid, f.folder_class = rel, display, dfid, fclass
                f.parent, f.children, f.store, f.virtual, f.hidden = parent, [], self, virtual, False
                f.path = path
                if parent is not None:
                    parent.children.append(f)
                folders[f.key] = f
                if dfid:
                    by_dfid[dfid] = f
                return f

            if self.scope == "public":
                root = mk("", "IPM_SUBTREE", "publicfoldersroot", None, None, path=self.root_dir)
                msgroot = root
            else:
                arch = self.scope == "archive"
                root = mk("root", "", "archiveroot" if arch else "root", None, None, virtual=True)
                msgroot = mk("", "Top of Information Store", "archivemsgfolderroot" if arch else "msgfolderroot",
                             "IPF.Note", root, path=self.root_dir)
                pre = "archive" if arch else ""
                rec = mk("recoverable", "Recoverable Items", pre + "recoverableitemsroot", None, root, virtual=True)
                mk(".recoverable", "Deletions", pre + "recoverableitemsdeletions", None, rec,
                   path=os.path.join(self.root_dir, ".recoverable"))
            by_rel[""] = msgroot
            wk = ARCHIVE_WELL_KNOWN if self.scope == "archive" else (MAIL_WELL_KNOWN if self.scope == "mail" else {})
            for rel, _mt, fj in sig:
                if rel == "":
                    continue
                name = os.path.basename(rel)
                prel = os.path.dirname(rel)
                parent = by_rel.get(prel)
                if parent is None:
                    continue
                dfid, display, fclass = None, name, parent.folder_class or "IPF.Note"
                if prel == "" and name in wk:
                    dfid, display, fclass = wk[name]
                    if self.scope == "archive" and dfid not in ("archiveinbox", "archivedeleteditems"):
                        dfid = None
                f = mk(rel, display, dfid, fclass, parent, path=os.path.join(self.root_dir, rel))
                if fj is not None:
                    try:
                        with open(os.path.join(f.path, "folder.json"), "rb") as fh:
                            meta = json.loads(fh.read())
                        f.display = meta.get("display_name", f.display)
                        f.folder_class = meta.get("folder_class", f.folder_class)
                        f.hidden = bool(meta.get("hidden", False))
                    except (OSError, ValueError):
                        pass
                by_rel[rel] = f
            for f in folders.values():
                f.children.sort(key=lambda c: c.display.lower())
            self.folders, self.by_rel, self.by_dfid = folders, by_rel, by_dfid
            self.root, self.msgroot = root, msgroot
            self.files_cache = {k: v for k, v in self.files_cache.items() if k in folders}

    def folder_by_key(self, key):
        self.refresh()
        return self.folders.get(key)

    def files(self, folder):
        if folder.virtual or folder.path is None:
            return []
        try:
            mt = os.stat(folder.path).st_mtime_ns
        except OSError:
            return []
        cached = self.files_cache.get(folder.key)
        if cached is not None and cached[0] == mt:
            return cached[1]
        out = []
        seen = set()
        try:
            ents = list(os.scandir(folder.path))
        except OSError:
            ents = []
        for e in ents:
            if e.name.startswith(".") or e.name == "folder.json":
                continue
            base, read = strip_flags(e.name)
            cl = classify(base)
            if cl is None:
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except OSError:
                continue
            ent = Entry()
            key = h("item", self.org, self.mailbox or "", self.scope, base, n=12)
            if key in seen:
                key = h("item", self.org, self.mailbox or "", self.scope, folder.rel, e.name, n=12)
            seen.add(key)
            ent.key, ent.name, ent.base, ent.path = key, e.name, base, e.path
            ent.id = make_id(K_ITEM, self.prefix, key)
            ent.mtime_ns, ent.size, ent.read = st.st_mtime_ns, st.st_size, read
            ent.kind, ent.item_class = cl
            ent.folder = folder
            if ent.kind == "nomime":
                meta = self.sim.item_meta(ent)
                ent.item_class = meta.get("item_class", "IPM.Task")
            out.append(ent)
        out.sort(key=lambda x: x.name)
        self.files_cache[folder.key] = (mt, out)
        return out

    def find_item(self, key):
        """-> Entry or None, through an index of key -> folder that is rebuilt on a miss."""
        self.refresh()
        fk = self.item_index.get(key)
        if fk is not None and fk in self.folders:
            for ent in self.files(self.folders[fk]):
                if ent.key == key:
                    return ent
        idx = {}
        hit = None
        for f in list(self.folders.values()):
            for ent in self.files(f):
                idx.setdefault(ent.key, f.key)
                if ent.key == key and hit is None:
                    hit = ent
        self.item_index = idx
        return hit

    def walk(self, folder):
        """Depth-first descendants of folder (not folder itself)."""
        out = []
        stack = list(reversed(folder.children))
        while stack:
            f = stack.pop()
            out.append(f)
            stack.extend(reversed(f.children))
        return out


class Org:
    def __init__(self, name, d, conf):
        self.name = name
        self.dir = d
        self.conf = conf
        self.kind = conf.get("kind", "onprem")
        self.tenant_id = conf.get("tenant_id") or name
        self.accounts = {k.lower(): v for k, v in (conf.get("accounts") or {}).items()}
        self.apps = conf.get("apps") or {}
        self.mailboxes = {}     # smtp lower -> dict (mailbox.json + _dir)
        self.aliases = {}       # any address/upn lower -> smtp
        self.stores = {}        # (smtp|None, scope) -> Store


# --------------------------------------------------------------------------- message parsing

_hdr_parser = email.parser.BytesHeaderParser(policy=email.policy.default)


def _addrs(value):
    if not value:
        return []
    out = []
    for name, addr in email.utils.getaddresses([str(value)]):
        if addr or name:
            out.append((name or addr, addr))
    return out


def header_props(ent):
    props = {"subject": "", "from": [], "sender": [], "to": [], "cc": [], "msgid": None,
             "date": ent.mtime_ns / 1e9, "has_att": False}
    if ent.kind != "mail":
        if ent.kind == "mime":
            try:
                head = read_head(ent.path).decode("utf-8", "replace")
            except OSError:
                head = ""
            m = re.search(r"^(?:SUMMARY|FN)[;:][^\r\n]*", head, re.M | re.I)
            if m:
                props["subject"] = m.group(0).split(":", 1)[-1].strip()
        return props
    try:
        hdr = _hdr_parser.parsebytes(read_head(ent.path))
    except Exception:
        return props

    def g(name):
        try:
            v = hdr.get(name)
        except Exception:
            return None
        return None if v is None else str(v)

    ds = g("Date")
    if ds:
        try:
            props["date"] = email.utils.parsedate_to_datetime(ds).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    props["subject"] = g("Subject") or ""
    props["from"] = _addrs(g("From"))
    props["sender"] = _addrs(g("Sender")) or props["from"]
    props["to"] = _addrs(g("To"))
    props["cc"] = _addrs(g("Cc"))
    mid = g("Message-ID")
    props["msgid"] = mid.strip() if mid else None
    props["has_att"] = (g("Content-Type") or "").lower().startswith("multipart/mixed")
    return props


# --------------------------------------------------------------------------- stats

class MbStats:
    FIELDS = ("requests", "in_flight", "max_concurrent", "throttled_by_limit", "injected_faults",
              "error_responses", "anchor_mailbox_sent", "anchor_mailbox_missing", "anchor_mailbox_mismatch",
              "items_created", "items_deleted", "blocked")

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, 0)
        self.ops = collections.Counter()

    def to_json(self):
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["operations"] = dict(self.ops)
        return d


# --------------------------------------------------------------------------- the simulator

class Sim:
    def __init__(self, args):
        self.args = args
        self.fixtures = os.path.abspath(args.fixtures)
        self.lock = threading.Lock()
        self.orgs = {}
        self.orgs_sig = None
        self.org_cache = {}         # name -> (sig, Org)
        self.prefixes = {}          # store prefix -> Store
        self.tokens = {}
        self.stats = {}             # (org, mailbox) -> MbStats
        self.faults = []
        self.fault_seq = 0
        self.ews_override = {}      # (org, mailbox|None) -> bool
        self.mailbox_limits = {}    # (org, mailbox) -> {"quota_bytes": n, "read_only": bool}
        self.sync_epoch = 0
        self.sync_secret = hashlib.sha256(b"ewssim-syncstate-v1" + (args.sync_secret or "").encode()).digest()
        self.props_cache = LRU(100000)
        self.meta_cache = LRU(20000)
        self.log = collections.deque(maxlen=2000)
        self.global_stats = collections.Counter()
        self.callers = {}  # (org, caller name) -> {"in_flight", "max_concurrent", "requests"}

    # ---- fixtures
    def all_orgs(self):
        try:
            sig = os.stat(self.fixtures).st_mtime_ns
        except OSError:
            sig = 0
        names = None
        if sig != self.orgs_sig:
            try:
                names = sorted(n for n in os.listdir(self.fixtures)
                               if os.path.isfile(os.path.join(self.fixtures, n, "org.json")))
            except OSError:
                names = []
            self.orgs_sig = sig
            self._org_names = names
        out = []
        for n in self._org_names:
            o = self.org(n)
            if o is not None:
                out.append(o)
        return out

    def org(self, name):
        d = os.path.join(self.fixtures, name)
        oj = os.path.join(d, "org.json")
        mdir = os.path.join(d, "mailboxes")
        try:
            s1 = os.stat(oj).st_mtime_ns
        except OSError:
            return None
        try:
            s2 = os.stat(mdir).st_mtime_ns
        except OSError:
            s2 = 0
        cached = self.org_cache.get(name)
        if cached and cached[0] == (s1, s2):
            return cached[1]
        with open(oj, "rb") as fh:
            conf = json.loads(fh.read())
        org = Org(name, d, conf)
        old = cached[1] if cached else None
        try:
            mbs = sorted(os.listdir(mdir))
        except OSError:
            mbs = []
        for smtp in mbs:
            md = os.path.join(mdir, smtp)
            if not os.path.isdir(md) or smtp.startswith("."):
                continue
            meta = {}
            mj = os.path.join(md, "mailbox.json")
            if os.path.isfile(mj):
                with open(mj, "rb") as fh:
                    meta = json.loads(fh.read())
            low = smtp.lower()
            meta["_dir"] = md
            meta["smtp"] = low
            org.mailboxes[low] = meta
            org.aliases[low] = low
            for a in meta.get("aliases", []) + ([meta["upn"]] if meta.get("upn") else []):
                org.aliases[a.lower()] = low
        # stores (re-use old Store objects so their caches survive)
        for smtp, meta in org.mailboxes.items():
            for scope in ("mail", "archive"):
                p = os.path.join(meta["_dir"], scope)
                if scope == "archive" and not os.path.isdir(p):
                    continue
                st = old.stores.get((smtp, scope)) if old else None
                if st is None:
                    st = Store(self, name, smtp, scope, p)
                org.stores[(smtp, scope)] = st
        pub = os.path.join(d, "public")
        if os.path.isdir(pub):
            st = old.stores.get((None, "public")) if old else None
            org.stores[(None, "public")] = st or Store(self, name, None, "public", pub)
        with self.lock:
            for st in org.stores.values():
                self.prefixes[st.prefix] = st
        self.org_cache[name] = ((s1, s2), org)
        return org

    def item_meta(self, ent):
        def build():
            try:
                with open(ent.path, "rb") as fh:
                    return json.loads(fh.read())
            except (OSError, ValueError):
                return {}
        return self.meta_cache.get((ent.path, ent.mtime_ns, ent.size), build)

    def props(self, ent):
        if ent.kind == "nomime":
            meta = self.item_meta(ent)
            p = {"subject": meta.get("subject", ""), "from": [], "sender": [], "to": [], "cc": [],
                 "msgid": None, "date": ent.mtime_ns / 1e9, "has_att": False}
            return p
        return self.props_cache.get((ent.path, ent.mtime_ns, ent.size), lambda: header_props(ent))

    # ---- stats
    def mstats(self, org, mailbox):
        k = (org or "_none", mailbox or "_none")
        st = self.stats.get(k)
        if st is None:
            with self.lock:
                st = self.stats.setdefault(k, MbStats())
        return st

    def stats_json(self):
        out = {}
        with self.lock:
            for (org, mb), st in sorted(self.stats.items()):
                out.setdefault(org, {})[mb] = st.to_json()
        return out

    # ---- faults
    def match_fault(self, op, org, mailbox):
        with self.lock:
            for f in self.faults:
                if f["remaining"] == 0:
                    continue
                if f.get("operation") and f["operation"] != op:
                    continue
                if f.get("mailbox") and (mailbox or "") != f["mailbox"].lower():
                    continue
                if f.get("org") and f["org"] != org:
                    continue
                if f["remaining"] > 0:
                    f["remaining"] -= 1
                f["fired"] += 1
                return dict(f)
        return None

    # ---- EWS enabled
    def ews_enabled(self, org, mailbox):
        """EWS is allowed only if both the org and the mailbox allow it (Exchange Online since 2025)."""
        o = self.ews_override.get((org.name, None))
        org_ok = org.conf.get("ews_enabled", True) if o is None else o
        if org_ok is False:
            return False
        if mailbox:
            o = self.ews_override.get((org.name, mailbox))
            meta = org.mailboxes.get(mailbox, {})
            mb_ok = meta.get("ews_enabled", True) if o is None else o
            if mb_ok is False:
                return False
        return True

    # ---- tokens
    def issue_token(self, org, client_id, roles):
        ttl = self.args.token_ttl
        tok = simcommon.mint_token("ewssim", "https://outlook.office365.com", org.tenant_id, client_id,
                                   roles, ttl)
        with self.lock:
            self.tokens[tok] = {"org": org.name, "client_id": client_id, "exp": time.time() + ttl,
                                "roles": set(roles)}
            if len(self.tokens) > 100000:
                t = time.time()
                self.tokens = {k: v for k, v in self.tokens.items() if v["exp"] > t}
        return tok, ttl

    # ---- sync states: self-contained, HMAC-protected, base64 (clients may keep them across restarts)
    def pack_state(self, kind, store, folder_key, entries):
        body = bytearray(b"EWSS\x01" + kind + store.prefix + folder_key + struct.pack(">I", len(entries)))
        for key, ck3, flags in sorted(entries):
            body += key + ck3 + bytes([flags])
        mac = hmac.new(self.sync_secret + struct.pack(">I", self.sync_epoch), bytes(body), "sha256").digest()[:12]
        return b64(bytes(body) + mac)

    def unpack_state(self, kind, store, folder_key, token):
        bad = EwsError("ErrorInvalidSyncStateData")
        try:
            raw = base64.b64decode(token.strip().encode("ascii"), validate=True)
        except Exception:
            raise bad
        if len(raw) < 5 + 1 + 8 + 12 + 4 + 12:
            raise bad
        body, mac = raw[:-12], raw[-12:]
        want = hmac.new(self.sync_secret + struct.pack(">I", self.sync_epoch), body, "sha256").digest()[:12]
        if not hmac.compare_digest(mac, want) or body[:5] != b"EWSS\x01" or body[5:6] != kind:
            raise bad
        if body[6:14] != store.prefix or body[14:26] != folder_key:
            raise bad
        n = struct.unpack(">I", body[26:30])[0]
        if len(body) != 30 + 16 * n:
            raise bad
        out = {}
        for i in range(n):
            rec = body[30 + 16 * i: 46 + 16 * i]
            out[rec[:12]] = (rec[12:15], rec[15])
        return out


# --------------------------------------------------------------------------- request context

class Ctx:
    def __init__(self, sim, headers):
        self.sim = sim
        self.headers = headers
        self.org = None
        self.caller = None          # dict: kind account|app|user, auth basic|ntlm|bearer, name, rights
        self.conn = None            # NtlmConn of the HTTP connection
        self.impersonated = None    # smtp
        self.request_version = None
        self.server_version = None
        self.op = None
        self.target = None          # smtp used for limits/stats
        self.parts = []             # streaming placeholders: list of (kind, entry)


# ---- request-side XML helpers

def child(el, name, ns=T):
    return el.find("{%s}%s" % (ns, name)) if el is not None else None


def text_of(el, name, ns=T, default=None):
    c = child(el, name, ns)
    if c is None or c.text is None:
        return default
    return c.text.strip()


def parse_bool(v, default=False):
    if v is None:
        return default
    v = v.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise schema_error(f"The value '{v}' is invalid according to its datatype 'http://www.w3.org/2001/XMLSchema:boolean'")


class Shape:
    __slots__ = ("base", "mime", "fields", "ext")

    def __init__(self, el, default="IdOnly"):
        self.base = default
        self.mime = False
        self.fields = set()
        self.ext = []               # (PropertyTag text, int tag, PropertyType)
        if el is None:
            return
        b = text_of(el, "BaseShape")
        if b:
            if b not in ("IdOnly", "Default", "AllProperties", "PcxPeopleSearch"):
                raise schema_error(f"The value '{b}' is invalid according to its datatype "
                                   f"'http://schemas.microsoft.com/exchange/services/2006/types:DefaultShapeNamesType'")
            self.base = b
        self.mime = parse_bool(text_of(el, "IncludeMimeContent"), False)
        ap = child(el, "AdditionalProperties")
        if ap is not None:
            for f in ap:
                if f.tag == tn("FieldURI"):
                    self.fields.add(f.get("FieldURI", ""))
                elif f.tag == tn("ExtendedFieldURI") and f.get("PropertyTag"):
                    self.ext.append((f.get("PropertyTag"), prop_tag(f.get("PropertyTag")),
                                     f.get("PropertyType", "")))
        if "item:MimeContent" in self.fields:
            self.mime = True


def prop_tag(v):
    """A PropertyTag attribute: hexadecimal (0x0E07) or a short integer (3591)."""
    try:
        return int(v, 16) if v.lower().startswith("0x") else int(v)
    except (ValueError, AttributeError):
        raise schema_error(f"The 'PropertyTag' attribute is invalid - The value '{v}' is invalid.")


def item_mapi(ent):
    """The MAPI properties of an item: as CreateItem stored them, else derived from the file."""
    p = os.path.join(os.path.dirname(ent.path), PROPS_DIR, ent.base + ".json")
    try:
        with open(p, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return {}


# ---- response-side XML helpers

def sub(parent, name, text=None, ns=T, **attrs):
    e = ET.SubElement(parent, "{%s}%s" % (ns, name), {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        e.text = text
    return e


def envelope(ctx, body_child):
    env = ET.Element("{%s}Envelope" % S)
    hdr = ET.SubElement(env, "{%s}Header" % S)
    ET.SubElement(hdr, tn("ServerVersionInfo"), ctx.server_version)
    body = ET.SubElement(env, "{%s}Body" % S)
    body.append(body_child)
    return env


def response_message(op, code="NoError", text=None, values=None, cls=None):
    el = ET.Element(mn(op + "ResponseMessage"))
    if code == "NoError":
        el.set("ResponseClass", cls or "Success")
        sub(el, "ResponseCode", "NoError", M)
        return el
    el.set("ResponseClass", cls or "Error")
    sub(el, "MessageText", text or MSG.get(code, code), M)
    sub(el, "ResponseCode", code, M)
    sub(el, "DescriptiveLinkKey", "0", M)
    if values:
        mx = sub(el, "MessageXml", None, M)
        for k, v in values:
            sub(mx, "Value", str(v), Name=k)
    return el


def fault_envelope(code, text, values=(), extra=()):
    env = ET.Element("{%s}Envelope" % S)
    body = ET.SubElement(env, "{%s}Body" % S)
    fault = ET.SubElement(body, "{%s}Fault" % S)
    fc = ET.SubElement(fault, "faultcode", {"xmlns:a": T})
    fc.text = "a:" + code
    fs = ET.SubElement(fault, "faultstring", {"{%s}lang" % XML_NS: "en-US"})
    fs.text = text
    detail = ET.SubElement(fault, "detail")
    ET.SubElement(detail, "{%s}ResponseCode" % E).text = code
    ET.SubElement(detail, "{%s}Message" % E).text = text
    if values or extra:
        mx = ET.SubElement(detail, tn("MessageXml"))
        for tag, txt in extra:
            ET.SubElement(mx, tn(tag)).text = txt
        for k, v in values:
            ET.SubElement(mx, tn("Value"), {"Name": k}).text = str(v)
    return env


def serialize(root):
    return XML_DECL + ET.tostring(root, encoding="utf-8", xml_declaration=False)


class Resp:
    __slots__ = ("status", "headers", "body", "parts", "reset", "after")

    def __init__(self, status=200, headers=None, body=b"", parts=None, reset=False):
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.parts = parts          # list of bytes | ("b64file", path)
        self.reset = reset
        self.after = None


def xml_resp(root, status=200, headers=None):
    hd = {"Content-Type": XML_CT}
    if headers:
        hd.update(headers)
    return Resp(status, hd, serialize(root))


def fault_resp(f):
    return xml_resp(fault_envelope(f.code, f.text, f.values, f.extra), f.status)


_PH = re.compile(rb"@@EWSSIM-MIME-(\d+)@@")


def soap_resp(ctx, body_child):
    data = serialize(envelope(ctx, body_child))
    if not ctx.parts:
        return Resp(200, {"Content-Type": XML_CT}, data)
    parts = []
    pos = 0
    for m in _PH.finditer(data):
        parts.append(data[pos:m.start()])
        parts.append(("b64file", ctx.parts[int(m.group(1))]))
        pos = m.end()
    parts.append(data[pos:])
    return Resp(200, {"Content-Type": XML_CT}, parts=parts)


# --------------------------------------------------------------------------- authentication

def www_authenticate(sim):
    kinds = set()
    for o in sim.all_orgs():
        kinds.update(auth_schemes(o))
    hdrs = []
    if "Negotiate" in kinds:
        hdrs.append("Negotiate")
    if "NTLM" in kinds:
        hdrs.append("NTLM")
    if "Basic" in kinds:
        hdrs.append('Basic realm="ewssim"')
    if "Bearer" in kinds:
        hdrs.append('Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
                    'trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
                    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
                    'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"')
    return hdrs


def auth_schemes(org):
    if org.conf.get("auth"):
        return org.conf["auth"]
    return ["Bearer"] if org.kind == "m365" else ["Basic", "NTLM"]


def unauthorized(sim, diag=None):
    hd = {"_www": www_authenticate(sim)}
    if diag:
        hd["x-ms-diagnostics"] = diag
    return Resp(401, hd, b"")


def principals(sim, scheme, user):
    """(org, kind, key, password) for a user name, in the order they are tried: a service account in
    `accounts`, then a mailbox (by address, alias or UPN) with a `password`, org by org, among the orgs
    that allow the scheme. `DOMAIN\\user` is matched on `user`."""
    ulow = user.lower()
    if "\\" in ulow:
        ulow = ulow.split("\\", 1)[1]
    for org in sim.all_orgs():
        if scheme not in auth_schemes(org):
            continue
        acc = org.accounts.get(ulow)
        if acc is not None and isinstance(acc.get("password"), str):
            yield org, "account", ulow, acc["password"]
        smtp = org.aliases.get(ulow)
        if smtp and org.mailboxes[smtp].get("password") not in (None, ""):
            yield org, "user", smtp, org.mailboxes[smtp]["password"]


def make_caller(org, kind, key, auth):
    """The caller dict of a principal found by principals(), or None when it is gone from the fixtures."""
    if kind == "account":
        acc = org.accounts.get(key)
        if acc is None:
            return None
        return {"kind": "account", "auth": auth, "name": key, "impersonation": bool(acc.get("impersonation")),
                "scope": [a.lower() for a in acc.get("impersonation_scope", [])] or None,
                "full_access": acc.get("full_access", []),
                "mailbox": org.aliases.get(acc.get("mailbox", key).lower())}
    if key not in org.mailboxes:
        return None
    return {"kind": "user", "auth": auth, "name": key, "impersonation": False, "scope": None,
            "full_access": [], "mailbox": key}


def authenticate(sim, ctx):
    """Sets ctx.org / ctx.caller, or raises HttpReply(401)."""
    auth = ctx.headers.get("authorization", "")
    scheme, _, cred = auth.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            user, _, pw = base64.b64decode(cred.strip()).decode("utf-8").partition(":")
        except Exception:
            raise HttpReply(unauthorized(sim))
        for org, kind, key, password in principals(sim, "Basic", user):
            if password == pw:
                ctx.org = org
                ctx.caller = make_caller(org, kind, key, "basic")
                return
        sim.global_stats["auth_failures"] += 1
        raise HttpReply(unauthorized(sim))
    if scheme == "bearer":
        tok = cred.strip()
        info = sim.tokens.get(tok)
        if info is None:
            sim.global_stats["auth_failures"] += 1
            raise HttpReply(unauthorized(sim, '2000001;reason="The token is malformed or has an invalid '
                                              'signature.";error_category="invalid_token"'))
        if info["exp"] <= time.time():
            sim.global_stats["auth_failures"] += 1
            raise HttpReply(unauthorized(sim, '2000003;reason="The token has expired.";'
                                              'error_category="invalid_token"'))
        org = sim.org(info["org"])
        if org is None:
            raise HttpReply(unauthorized(sim))
        if "full_access_as_app" not in info["roles"]:
            raise HttpReply(unauthorized(sim, '2000008;reason="The token contains no permissions, or '
                                              'permissions can not be understood.";error_category="invalid_grant"'))
        ctx.org = org
        ctx.caller = {"kind": "app", "auth": "bearer", "name": info["client_id"], "impersonation": True,
                      "scope": None, "full_access": ["*"], "mailbox": None}
        return
    if scheme == "ntlm":
        ntlm_auth(sim, ctx, cred)
        return
    if scheme == "negotiate":
        # SPNEGO (RFC 4178) tokens are not implemented
        sim.global_stats["negotiate_attempts"] += 1
        raise HttpReply(unauthorized(sim))
    conn = ctx.conn
    if not auth and conn is not None and conn.identity is not None:
        # NTLM authenticated this connection earlier: IIS keeps that identity for the connection's
        # later requests, which carry no Authorization header
        org = sim.org(conn.identity[0])
        caller = make_caller(org, conn.identity[1], conn.identity[2], "ntlm") if org is not None else None
        if caller is not None and "NTLM" in auth_schemes(org):
            sim.global_stats["ntlm_connection_reuse"] += 1
            ctx.org, ctx.caller = org, caller
            return
        conn.identity = None
    raise HttpReply(unauthorized(sim))


# --------------------------------------------------------------------------- NTLM ([MS-NLMP])
#
# The server side of NTLM over HTTP (connection-oriented, [MS-NLMP] 1.3.1.1 and 3.2.5.1), NTLMv2
# only. Message layouts: NEGOTIATE_MESSAGE 2.2.1.1, CHALLENGE_MESSAGE 2.2.1.2, AUTHENTICATE_MESSAGE
# 2.2.1.3, AV_PAIR 2.2.2.1, NEGOTIATE flags 2.2.2.5, NTLMv2_CLIENT_CHALLENGE 2.2.2.7, NTLMv2_RESPONSE
# 2.2.2.8, VERSION 2.2.2.10. Server behaviour: 3.2.5.1.1 (NEGOTIATE -> CHALLENGE) and 3.2.5.1.2
# (AUTHENTICATE: NTOWFv2 and the NTLMv2 response of 3.3.2, KXKEY 3.4.5.1, MIC).

NTLMSSP_SIG = b"NTLMSSP\0"
NTLM_UNICODE = 0x00000001
NTLM_OEM = 0x00000002
NTLM_REQUEST_TARGET = 0x00000004
NTLM_SIGN = 0x00000010
NTLM_SEAL = 0x00000020
NTLM_LM_KEY = 0x00000080
NTLM_NTLM = 0x00000200
NTLM_ANONYMOUS = 0x00000800
NTLM_ALWAYS_SIGN = 0x00008000
NTLM_TARGET_TYPE_DOMAIN = 0x00010000
NTLM_EXTENDED_SESSIONSECURITY = 0x00080000
NTLM_TARGET_INFO = 0x00800000
NTLM_VERSION = 0x02000000
NTLM_128 = 0x20000000
NTLM_KEY_EXCH = 0x40000000
NTLM_56 = 0x80000000
# Flags the server returns when the client asks for them (3.2.5.1.1: the CHALLENGE_MESSAGE carries
# the negotiated features); TARGET_INFO and NTLM are always set, UNICODE/OEM chosen below.
NTLM_MIRRORED = (NTLM_SIGN | NTLM_SEAL | NTLM_ALWAYS_SIGN | NTLM_EXTENDED_SESSIONSECURITY | NTLM_VERSION |
                 NTLM_128 | NTLM_KEY_EXCH | NTLM_56)
AV_EOL, AV_NB_COMPUTER, AV_NB_DOMAIN, AV_DNS_COMPUTER, AV_DNS_DOMAIN, AV_DNS_TREE, AV_FLAGS, AV_TIMESTAMP = range(8)
AV_FLAG_MIC = 0x00000002
# Windows Server 2019 (10.0.17763), NTLMSSP_REVISION_W2K3 (0x0F): the VERSION structure (2.2.2.10).
NTLM_SERVER_VERSION = struct.pack("<BBHBBBB", 10, 0, 17763, 0, 0, 0, 0x0F)
# MSV1_0_MAX_NTLM3_LIFE: Windows refuses an NTLMv2 response whose timestamp is further off than this.
NTLM_MAX_LIFE = 1800
FILETIME_EPOCH = 11644473600   # seconds from 1601-01-01 to 1970-01-01


def _rol(x, n):
    x &= 0xffffffff
    return ((x << n) | (x >> (32 - n))) & 0xffffffff


def md4(data):
    """MD4 (RFC 1320), in Python: OpenSSL 3 no longer offers it through hashlib by default."""
    msg = bytearray(data)
    bits = len(data) * 8
    msg.append(0x80)
    msg.extend(b"\0" * ((56 - len(msg) % 64) % 64))
    msg += struct.pack("<Q", bits & 0xffffffffffffffff)
    h = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476]
    r2 = (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
    r3 = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
    for off in range(0, len(msg), 64):
        x = struct.unpack_from("<16I", msg, off)
        a, b, c, d = h
        # each step updates the first register; rotating (a,b,c,d) -> (d,a',b,c) gives the
        # RFC's [abcd] [dabc] [cdab] [bcda] order, and four steps restore it
        for i in range(16):
            a, b, c, d = d, _rol(a + ((b & c) | (~b & d)) + x[i], (3, 7, 11, 19)[i % 4]), b, c
        for i in range(16):
            a, b, c, d = d, _rol(a + ((b & c) | (b & d) | (c & d)) + x[r2[i]] + 0x5A827999,
                                 (3, 5, 9, 13)[i % 4]), b, c
        for i in range(16):
            a, b, c, d = d, _rol(a + (b ^ c ^ d) + x[r3[i]] + 0x6ED9EBA1, (3, 9, 11, 15)[i % 4]), b, c
        h = [(v + w) & 0xffffffff for v, w in zip(h, (a, b, c, d))]
    return struct.pack("<4I", *h)


def rc4(key, data):
    """RC4 (RC4K of [MS-NLMP] 6), for the key exchange."""
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xff
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for ch in data:
        i = (i + 1) & 0xff
        j = (j + s[i]) & 0xff
        s[i], s[j] = s[j], s[i]
        out.append(ch ^ s[(s[i] + s[j]) & 0xff])
    return bytes(out)


def hmac_md5(key, data):
    return hmac.new(key, data, "md5").digest()


def nt_hash(password):
    """NTOWFv1: MD4(UNICODE(Passwd))."""
    return md4(password.encode("utf-16-le", "surrogatepass"))


def ntowfv2(password, user, domain):
    """NTOWFv2 (3.3.2): HMAC_MD5(MD4(UNICODE(Passwd)), UNICODE(ConcatenationOf(Uppercase(User), UserDom)))."""
    return hmac_md5(nt_hash(password), (user.upper() + domain).encode("utf-16-le", "surrogatepass"))


def filetime(ts):
    return int((ts + FILETIME_EPOCH) * 10000000)


def av_pairs_pack(pairs):
    out = bytearray()
    for av_id, value in pairs:
        out += struct.pack("<HH", av_id, len(value)) + value
    return bytes(out + struct.pack("<HH", AV_EOL, 0))


def av_pairs_parse(data):
    """AV_PAIR list (2.2.2.1) -> {AvId: value}; raises ValueError when it runs off the end."""
    out = {}
    pos = 0
    while True:
        if pos + 4 > len(data):
            raise ValueError("AV_PAIR list without MsvAvEOL")
        av_id, n = struct.unpack_from("<HH", data, pos)
        if av_id == AV_EOL:
            return out
        if pos + 4 + n > len(data):
            raise ValueError("AV_PAIR runs past the end")
        out.setdefault(av_id, data[pos + 4: pos + 4 + n])
        pos += 4 + n


def _field(msg, off):
    """A (Len, MaxLen, BufferOffset) payload field of an NTLM message."""
    n, _, at = struct.unpack_from("<HHI", msg, off)
    if n and at + n > len(msg):
        raise ValueError("payload field out of range")
    return msg[at: at + n]


class NtlmConn:
    """NTLM state of one HTTP connection (NTLM authenticates the connection, not the request)."""
    __slots__ = ("negotiate", "challenge", "server_challenge", "identity")

    def __init__(self):
        self.negotiate = self.challenge = self.server_challenge = None
        self.identity = None        # (org name, principal kind, principal key) after a good AUTHENTICATE


def ntlm_names(sim):
    a = sim.args
    nb_domain = (a.ntlm_domain or "EWSSIM").upper()
    dns_domain = (a.ntlm_dns_domain or nb_domain.lower() + ".local").lower()
    nb_computer = (a.ntlm_computer or "EXCH01").upper()
    return nb_domain, nb_computer, dns_domain, nb_computer.lower() + "." + dns_domain


def ntlm_challenge(sim, conn, negotiate):
    """NEGOTIATE_MESSAGE -> CHALLENGE_MESSAGE (3.2.5.1.1), remembered on the connection."""
    if len(negotiate) < 16 or negotiate[:8] != NTLMSSP_SIG or struct.unpack_from("<I", negotiate, 8)[0] != 1:
        raise ValueError("not an NTLM NEGOTIATE_MESSAGE")
    cflags = struct.unpack_from("<I", negotiate, 12)[0]
    flags = NTLM_NTLM | NTLM_TARGET_INFO | (cflags & NTLM_MIRRORED)
    if cflags & NTLM_UNICODE:
        flags |= NTLM_UNICODE
    elif cflags & NTLM_OEM:
        flags |= NTLM_OEM
    else:
        raise ValueError("NEGOTIATE_MESSAGE asks for neither Unicode nor OEM strings")
    if flags & NTLM_EXTENDED_SESSIONSECURITY == 0 and cflags & NTLM_LM_KEY:
        flags |= NTLM_LM_KEY    # only without extended session security (2.2.2.5, flag G)
    nb_domain, nb_computer, dns_domain, dns_computer = ntlm_names(sim)
    target = b""
    if cflags & NTLM_REQUEST_TARGET:
        flags |= NTLM_REQUEST_TARGET | NTLM_TARGET_TYPE_DOMAIN
        target = nb_domain.encode("utf-16-le") if flags & NTLM_UNICODE else nb_domain.encode("ascii")

    def u(s):
        return s.encode("utf-16-le")     # AV_PAIR strings are always Unicode
    info = av_pairs_pack([(AV_NB_DOMAIN, u(nb_domain)), (AV_NB_COMPUTER, u(nb_computer)),
                          (AV_DNS_DOMAIN, u(dns_domain)), (AV_DNS_COMPUTER, u(dns_computer)),
                          (AV_DNS_TREE, u(dns_domain)),
                          (AV_TIMESTAMP, struct.pack("<Q", filetime(time.time())))])
    server_challenge = os.urandom(8)
    head = 56
    msg = (NTLMSSP_SIG + struct.pack("<I", 2) + struct.pack("<HHI", len(target), len(target), head) +
           struct.pack("<I", flags) + server_challenge + b"\0" * 8 +
           struct.pack("<HHI", len(info), len(info), head + len(target)) +
           (NTLM_SERVER_VERSION if flags & NTLM_VERSION else b"\0" * 8) + target + info)
    conn.negotiate, conn.challenge, conn.server_challenge = bytes(negotiate), msg, server_challenge
    conn.identity = None
    return msg


class NtlmReject(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def ntlm_verify(sim, conn, auth):
    """AUTHENTICATE_MESSAGE -> (org, kind, key) of the principal, or raises NtlmReject (3.2.5.1.2)."""
    negotiate, challenge, server_challenge = conn.negotiate, conn.challenge, conn.server_challenge
    conn.negotiate = conn.challenge = conn.server_challenge = None    # a challenge is used once
    if challenge is None:
        raise NtlmReject("no_challenge")
    try:
        if len(auth) < 64 or auth[:8] != NTLMSSP_SIG or struct.unpack_from("<I", auth, 8)[0] != 3:
            raise ValueError("not an AUTHENTICATE_MESSAGE")
        lm, nt = _field(auth, 12), _field(auth, 20)
        b_domain, b_user = _field(auth, 28), _field(auth, 36)
        enc_key = _field(auth, 52)
        flags = struct.unpack_from("<I", auth, 60)[0]
        enc = "utf-16-le" if flags & NTLM_UNICODE else "latin-1"
        domain, user = b_domain.decode(enc), b_user.decode(enc)
    except (ValueError, struct.error, UnicodeDecodeError):
        raise NtlmReject("malformed")
    if not user and not nt and lm in (b"", b"\0"):
        raise NtlmReject("anonymous")                  # the ANONYMOUS user has no mailbox
    if len(nt) <= 24:
        raise NtlmReject("ntlmv1")                     # NTLMv1 (24 bytes) or LM only: refused
    proof, blob = nt[:16], nt[16:]
    if len(blob) < 28 + 4 or blob[0] != 1 or blob[1] != 1:
        raise NtlmReject("malformed")
    try:
        blob_av = av_pairs_parse(blob[28:])
    except ValueError:
        raise NtlmReject("malformed")
    found = None
    for org, kind, key, password in principals(sim, "NTLM", user):
        nth = nt_hash(password)
        # "NTLM servers SHOULD support NTLM clients which incorrectly use NIL for the UserDom"
        for dom in ((domain, "") if domain else ("",)):
            rk = hmac_md5(nth, (user.upper() + dom).encode("utf-16-le", "surrogatepass"))
            if hmac.compare_digest(hmac_md5(rk, server_challenge + blob), proof):
                found = (org, kind, key, rk)
                break
        if found:
            break
    if found is None:
        raise NtlmReject("bad_response")
    org, kind, key, rk = found
    ts = struct.unpack_from("<Q", blob, 8)[0] / 10000000.0 - FILETIME_EPOCH
    if abs(time.time() - ts) > NTLM_MAX_LIFE:
        raise NtlmReject("stale")
    flags_av = blob_av.get(AV_FLAGS)
    if flags_av and len(flags_av) == 4 and struct.unpack("<I", flags_av)[0] & AV_FLAG_MIC:
        # KXKEY for NTLMv2 is the SessionBaseKey (3.4.5.1); the exported key comes through RC4 with
        # KEY_EXCH when signing or sealing was negotiated (3.2.5.1.2)
        kek = hmac_md5(rk, proof)
        if flags & NTLM_KEY_EXCH and flags & (NTLM_SIGN | NTLM_SEAL):
            if len(enc_key) != 16:
                raise NtlmReject("malformed")
            exported = rc4(kek, enc_key)
        else:
            exported = kek
        if len(auth) < 88:
            raise NtlmReject("malformed")
        mic = auth[72:88]
        zeroed = auth[:72] + b"\0" * 16 + auth[88:]
        if not hmac.compare_digest(hmac_md5(exported, negotiate + challenge + zeroed), mic):
            raise NtlmReject("bad_mic")
    return org, kind, key


def ntlm_auth(sim, ctx, cred):
    """Authorization: NTLM <base64>: answers a NEGOTIATE_MESSAGE with 401 + CHALLENGE_MESSAGE, checks an
    AUTHENTICATE_MESSAGE and remembers the identity on the connection."""
    conn = ctx.conn
    try:
        raw = base64.b64decode(cred.strip(), validate=True)
    except (ValueError, TypeError):
        raw = b""
    mtype = struct.unpack_from("<I", raw, 8)[0] if len(raw) >= 12 and raw[:8] == NTLMSSP_SIG else 0
    if conn is None or mtype not in (1, 3):
        sim.global_stats["ntlm_failed"] += 1
        sim.global_stats["ntlm_reject_malformed"] += 1
        sim.global_stats["auth_failures"] += 1
        raise HttpReply(unauthorized(sim))
    if not any("NTLM" in auth_schemes(o) for o in sim.all_orgs()):
        # no org enables NTLM (IIS with the provider off): no challenge
        sim.global_stats["ntlm_failed"] += 1
        sim.global_stats["ntlm_reject_disabled"] += 1
        raise HttpReply(unauthorized(sim))
    if mtype == 1:
        sim.global_stats["ntlm_attempts"] += 1
        try:
            msg = ntlm_challenge(sim, conn, raw)
        except (ValueError, struct.error):
            sim.global_stats["ntlm_failed"] += 1
            sim.global_stats["ntlm_reject_malformed"] += 1
            sim.global_stats["auth_failures"] += 1
            raise HttpReply(unauthorized(sim))
        # IIS answers with a small HTML page; the connection stays open for the AUTHENTICATE_MESSAGE
        raise HttpReply(Resp(401, {"_www": ["NTLM " + base64.b64encode(msg).decode("ascii")],
                                   "Content-Type": "text/html"}, NTLM_401_BODY))
    try:
        org, kind, key = ntlm_verify(sim, conn, raw)
    except NtlmReject as r:
        conn.identity = None
        sim.global_stats["ntlm_failed"] += 1
        sim.global_stats["ntlm_reject_" + r.reason] += 1
        sim.global_stats["auth_failures"] += 1
        if sim.args.verbose:
            sys.stderr.write(f"ewssim: NTLM AUTHENTICATE rejected: {r.reason}\n")
        raise HttpReply(unauthorized(sim))
    sim.global_stats["ntlm_ok"] += 1
    conn.identity = (org.name, kind, key)
    ctx.org = org
    ctx.caller = make_caller(org, kind, key, "ntlm")


NTLM_401_BODY = (b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
                 b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n<html xmlns="http://www.w3.org/1999/'
                 b'xhtml">\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>\r\n'
                 b'<title>401 - Unauthorized: Access is denied due to invalid credentials.</title>\r\n</head>\r\n'
                 b'<body>\r\n<div id="header"><h1>Server Error</h1></div>\r\n<div id="content">\r\n'
                 b'<h2>401 - Unauthorized: Access is denied due to invalid credentials.</h2>\r\n'
                 b'<h3>You do not have permission to view this directory or page using the credentials that '
                 b'you supplied.</h3>\r\n</div>\r\n</body>\r\n</html>\r\n')


def can_access(ctx, smtp):
    c = ctx.caller
    if smtp == c["mailbox"] or smtp == ctx.impersonated:
        return True
    fa = c.get("full_access") or []
    return "*" in fa or smtp in [x.lower() for x in fa]


# --------------------------------------------------------------------------- token endpoint

def handle_token(sim, tenant, method, headers, body):
    org = None
    for o in sim.all_orgs():
        if o.kind == "m365" and (o.tenant_id == tenant or o.name == tenant):
            org = o
            break
    sim.global_stats["token_requests"] += 1
    bad, cid, app = simcommon.client_credentials(
        method, body, org.tenant_id if org else tenant, org is not None,
        lambda c: org.apps.get(c), lambda a, secret: secret == a.get("secret"),
        resource=EWS_SCOPE[:-len("/.default")])
    if bad:
        return Resp(*bad)
    roles = ["full_access_as_app"] if app.get("full_access_as_app") else []
    tok, ttl = sim.issue_token(org, cid, roles)
    return Resp(*simcommon.token_answer(tok, ttl))


# --------------------------------------------------------------------------- folder resolution

def store_of(ctx, smtp, scope):
    org = ctx.org
    if scope == "public":
        st = org.stores.get((None, "public"))
        if st is None:
            raise EwsError("ErrorFolderNotFound")
        return st
    if smtp not in org.mailboxes:
        raise EwsError("ErrorNonExistentMailbox", values=[("SmtpAddress", smtp)])
    st = org.stores.get((smtp, scope))
    if st is None:
        raise EwsError("ErrorFolderNotFound")
    return st


def default_mailbox(ctx):
    if ctx.impersonated:
        return ctx.impersonated
    c = ctx.caller
    if c["kind"] == "app":
        raise Fault("ErrorInvalidExchangeImpersonationHeaderData")
    if c["mailbox"] is None:
        raise EwsError("ErrorNonExistentMailbox", values=[("SmtpAddress", c["name"])])
    return c["mailbox"]


def resolve_folder(ctx, el):
    """A t:FolderId / t:DistinguishedFolderId / t:ParentFolderId element -> Folder."""
    if el.tag in (tn("FolderId"), tn("ParentFolderId")):
        fid = el.get("Id")
        if not fid:
            raise schema_error("The required attribute 'Id' is missing.")
        kind, prefix, key = parse_id(fid)
        if kind != K_FOLDER:
            raise EwsError("ErrorInvalidIdMalformed")
        st = ctx.sim.prefixes.get(prefix)
        if st is None or st.org != ctx.org.name:
            raise EwsError("ErrorFolderNotFound")
        if st.mailbox and not can_access(ctx, st.mailbox):
            raise EwsError("ErrorAccessDenied")
        f = st.folder_by_key(key)
        if f is None:
            raise EwsError("ErrorFolderNotFound")
        return f
    if el.tag == tn("DistinguishedFolderId"):
        name = el.get("Id", "")
        mb = child(el, "Mailbox")
        smtp = None
        if mb is not None:
            addr = text_of(mb, "EmailAddress")
            if addr:
                smtp = ctx.org.aliases.get(addr.lower(), addr.lower())
                if smtp not in ctx.org.mailboxes:
                    raise EwsError("ErrorNonExistentMailbox", values=[("SmtpAddress", addr)])
                if not can_access(ctx, smtp):
                    raise EwsError("ErrorAccessDenied")
        if name in DFID_ROOTS:
            scope, which = DFID_ROOTS[name]
        elif name in DFID_MAIL:
            scope, which = "mail", name
        elif name in DFID_ARCHIVE:
            scope, which = "archive", name
        elif name in DFID_RECOVERABLE:
            scope, which = DFID_RECOVERABLE[name], name
        elif name in DFID_OTHER:
            raise EwsError("ErrorFolderNotFound")
        else:
            raise schema_error(f"The 'Id' attribute is invalid - The value '{name}' is invalid according to its "
                               f"datatype 'http://schemas.microsoft.com/exchange/services/2006/types:"
                               f"DistinguishedFolderIdNameType' - The Enumeration constraint failed.")
        if scope != "public" and smtp is None:
            smtp = default_mailbox(ctx)
        st = store_of(ctx, smtp, scope)
        st.refresh()
        if which == "root":
            return st.root
        if which == "msgroot":
            return st.msgroot
        f = st.by_dfid.get(which)
        if f is None:
            raise EwsError("ErrorFolderNotFound")
        return f
    raise schema_error(f"The element '{el.tag}' is unexpected.")


def resolve_item(ctx, el):
    iid = el.get("Id")
    if not iid:
        raise schema_error("The required attribute 'Id' is missing.")
    kind, prefix, key = parse_id(iid)
    if kind != K_ITEM:
        raise EwsError("ErrorInvalidIdMalformed")
    st = ctx.sim.prefixes.get(prefix)
    if st is None or st.org != ctx.org.name:
        raise EwsError("ErrorItemNotFound")
    if st.mailbox and not can_access(ctx, st.mailbox):
        raise EwsError("ErrorAccessDenied")
    ent = st.find_item(key)
    if ent is None:
        raise EwsError("ErrorItemNotFound")
    return ent


def folder_ids_in(container):
    if container is None:
        return []
    return [c for c in container if c.tag in (tn("FolderId"), tn("DistinguishedFolderId"))]


# --------------------------------------------------------------------------- rendering

def folder_elem(ctx, f, shape):
    cls = f.folder_class
    tag = FOLDER_ELEM.get(cls, "Folder") if cls else "Folder"
    el = ET.Element(tn(tag))
    sub(el, "FolderId", Id=f.id, ChangeKey=folder_change_key(f))
    base = shape.base
    flds = shape.fields
    allp = base == "AllProperties"
    dflt = base in ("Default", "AllProperties")
    entries = f.store.files(f) if (dflt or flds & {"folder:TotalCount", "folder:UnreadCount"}) else []
    if (allp or "folder:ParentFolderId" in flds) and f.parent is not None:
        sub(el, "ParentFolderId", Id=f.parent.id, ChangeKey=folder_change_key(f.parent))
    if (allp or "folder:FolderClass" in flds) and cls:
        sub(el, "FolderClass", cls)
    if dflt or "folder:DisplayName" in flds:
        sub(el, "DisplayName", f.display)
    if dflt or "folder:TotalCount" in flds:
        sub(el, "TotalCount", str(len(entries)))
    if dflt or "folder:ChildFolderCount" in flds:
        sub(el, "ChildFolderCount", str(len(f.children)))
    if "folder:DistinguishedFolderId" in flds and f.dfid:
        sub(el, "DistinguishedFolderId", f.dfid)
    if tag == "Folder" and (dflt or "folder:UnreadCount" in flds):
        sub(el, "UnreadCount", str(sum(1 for x in entries if x.kind == "mail" and not x.read)))
    return el


def mailbox_el(parent, name, addrs):
    wrap = sub(parent, name)
    for n, a in addrs:
        mb = sub(wrap, "Mailbox")
        sub(mb, "Name", n)
        sub(mb, "EmailAddress", a)
        sub(mb, "RoutingType", "SMTP")
        sub(mb, "MailboxType", "OneOff")
    return wrap


DEFAULT_ITEM = {"item:ItemId", "item:ParentFolderId", "item:ItemClass", "item:Subject", "item:DateTimeReceived",
                "item:Size", "item:Importance", "item:IsDraft", "item:DateTimeSent", "item:DateTimeCreated",
                "item:DisplayCc", "item:DisplayTo", "item:HasAttachments", "message:Sender", "message:From",
                "message:IsRead"}
ALL_ITEM = DEFAULT_ITEM | {"item:LastModifiedTime", "item:IsAssociated", "message:ToRecipients",
                           "message:CcRecipients", "message:InternetMessageId"}


def item_elem(ctx, ent, shape, allow_mime=True):
    sim = ctx.sim
    tag = ITEM_ELEM.get(ent.item_class, "Item")
    el = ET.Element(tn(tag))
    want = set(shape.fields)
    if shape.base == "Default":
        want |= DEFAULT_ITEM
    elif shape.base == "AllProperties":
        want |= ALL_ITEM
    if shape.mime and allow_mime:
        if ent.kind == "nomime":
            raise EwsError("ErrorUnsupportedMimeConversion")
        ctx.parts.append(ent.path)
        sub(el, "MimeContent", "@@EWSSIM-MIME-%d@@" % (len(ctx.parts) - 1), CharacterSet="UTF-8")
    sub(el, "ItemId", Id=ent.id, ChangeKey=item_change_key(ent))
    need_props = bool(want - {"item:ItemId", "item:ParentFolderId", "item:ItemClass", "item:Size",
                              "message:IsRead", "item:IsDraft", "item:IsAssociated", "item:LastModifiedTime"})
    p = sim.props(ent) if need_props else None
    if "item:ParentFolderId" in want:
        sub(el, "ParentFolderId", Id=ent.folder.id, ChangeKey=folder_change_key(ent.folder))
    if "item:ItemClass" in want:
        sub(el, "ItemClass", ent.item_class)
    if "item:Subject" in want:
        sub(el, "Subject", p["subject"])
    mapi = item_mapi(ent) if (want & {"item:DateTimeReceived", "item:IsDraft"} or shape.ext) else {}
    if "item:DateTimeReceived" in want:
        sub(el, "DateTimeReceived", mapi.get("delivery") or iso(p["date"]))
    if "item:Size" in want:
        sub(el, "Size", str(ent.size))
    if "item:Importance" in want:
        sub(el, "Importance", "Normal")
    if "item:IsDraft" in want:
        draft = ent.folder.dfid == "drafts" or bool(mapi.get("flags", 0) & MSGFLAG_UNSENT)
        sub(el, "IsDraft", "true" if draft else "false")
    if "item:DateTimeSent" in want:
        sub(el, "DateTimeSent", iso(p["date"]))
    if "item:DateTimeCreated" in want:
        sub(el, "DateTimeCreated", iso(p["date"]))
    if "item:DisplayCc" in want:
        sub(el, "DisplayCc", "; ".join(n for n, _ in p["cc"]))
    if "item:DisplayTo" in want:
        sub(el, "DisplayTo", "; ".join(n for n, _ in p["to"]))
    if "item:HasAttachments" in want:
        sub(el, "HasAttachments", "true" if p["has_att"] else "false")
    if "item:LastModifiedTime" in want:
        sub(el, "LastModifiedTime", iso(ent.mtime_ns / 1e9))
    if "item:IsAssociated" in want:
        sub(el, "IsAssociated", "false")
    for text, tagno, ptype in shape.ext:
        name = EXT_PROPS.get(tagno, (None,))[0]
        if name == "flags":
            val = str(mapi.get("flags", MSGFLAG_READ if ent.read else 0))
        elif name:
            val = mapi.get(name) or iso((p or sim.props(ent))["date"])
        else:
            continue        # a property the simulator does not keep: absent, as Exchange omits unset ones
        xp = sub(el, "ExtendedProperty")
        sub(xp, "ExtendedFieldURI", PropertyTag=text, PropertyType=ptype or EXT_PROPS[tagno][1])
        sub(xp, "Value", val)
    if tag == "Message":
        if "message:Sender" in want and p["sender"]:
            s = sub(el, "Sender")
            mb = sub(s, "Mailbox")
            sub(mb, "Name", p["sender"][0][0])
            sub(mb, "EmailAddress", p["sender"][0][1])
            sub(mb, "RoutingType", "SMTP")
            sub(mb, "MailboxType", "OneOff")
        if "message:ToRecipients" in want and p["to"]:
            mailbox_el(el, "ToRecipients", p["to"])
        if "message:CcRecipients" in want and p["cc"]:
            mailbox_el(el, "CcRecipients", p["cc"])
        if "message:From" in want and p["from"]:
            s = sub(el, "From")
            mb = sub(s, "Mailbox")
            sub(mb, "Name", p["from"][0][0])
            sub(mb, "EmailAddress", p["from"][0][1])
            sub(mb, "RoutingType", "SMTP")
            sub(mb, "MailboxType", "OneOff")
        if "message:InternetMessageId" in want and p["msgid"]:
            sub(el, "InternetMessageId", p["msgid"])
        if "message:IsRead" in want:
            sub(el, "IsRead", "true" if ent.read else "false")
    return el


# --------------------------------------------------------------------------- operations

def op_response(op):
    resp = ET.Element(mn(op + "Response"))
    msgs = sub(resp, "ResponseMessages", None, M)
    return resp, msgs


SYNC_TAIL = {"SyncFolderItems": "IncludesLastItemInRange", "SyncFolderHierarchy": "IncludesLastFolderInRange"}


def per_item(op, msgs, fn):
    try:
        rm = fn()
    except EwsError as e:
        rm = response_message(op, e.code, e.text, e.values)
        if op in SYNC_TAIL:
            # Exchange always serializes these two elements of a sync response message, empty on errors
            sub(rm, "SyncState", None, M)
            sub(rm, SYNC_TAIL[op], "true", M)
    msgs.append(rm)
    return rm


def paging(view, total):
    """IndexedPage*View -> (start, end, next_offset, includes_last)."""
    if view is None:
        return 0, total, total, True
    try:
        mx = int(view.get("MaxEntriesReturned", "0") or 0)
        off = int(view.get("Offset", "0") or 0)
    except ValueError:
        raise schema_error("The 'MaxEntriesReturned' or 'Offset' attribute is invalid.")
    base = view.get("BasePoint", "Beginning")
    if base not in ("Beginning", "End"):
        raise schema_error(f"The 'BasePoint' attribute is invalid - The value '{base}' is invalid.")
    if mx <= 0:
        mx = total or 1
    if base == "Beginning":
        start = min(off, total)
        end = min(total, start + mx)
        return start, end, end, end >= total
    end = max(0, total - off)
    start = max(0, end - mx)
    return start, end, off + (end - start), start == 0


def op_get_folder(ctx, req):
    shape = Shape(child(req, "FolderShape", M))
    resp, msgs = op_response("GetFolder")
    for fe in folder_ids_in(child(req, "FolderIds", M)):
        def one(fe=fe):
            f = resolve_folder(ctx, fe)
            rm = response_message("GetFolder")
            sub(rm, "Folders", None, M).append(folder_elem(ctx, f, shape))
            return rm
        per_item("GetFolder", msgs, one)
    return resp


def restriction_of(req, allowed):
    """m:Restriction -> (FieldURI, constant) or None. Only one t:IsEqualTo of a FieldURI and a
    t:Constant is implemented, on the fields in allowed (what mailvault's export asks); see
    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/restriction
    and .../isequalto."""
    r = child(req, "Restriction", M)
    if r is None:
        return None
    eq = child(r, "IsEqualTo")
    fu = child(eq, "FieldURI") if eq is not None else None
    const = child(child(eq, "FieldURIOrConstant"), "Constant") if eq is not None and \
        child(eq, "FieldURIOrConstant") is not None else None
    if len(r) != 1 or fu is None or const is None or fu.get("FieldURI") not in allowed:
        raise Fault("ErrorInvalidRequest", "The request is invalid: ewssim implements only a Restriction of "
                                           "one IsEqualTo on " + ", ".join(sorted(allowed)) + ".")
    return fu.get("FieldURI"), const.get("Value", "")


def op_find_folder(ctx, req):
    trav = req.get("Traversal", "Shallow")
    if trav not in ("Shallow", "Deep", "SoftDeleted"):
        raise schema_error(f"The 'Traversal' attribute is invalid - The value '{trav}' is invalid.")
    shape = Shape(child(req, "FolderShape", M))
    view = child(req, "IndexedPageFolderView", M)
    restr = restriction_of(req, {"folder:DisplayName"})
    resp, msgs = op_response("FindFolder")
    for fe in folder_ids_in(child(req, "ParentFolderIds", M)):
        def one(fe=fe):
            f = resolve_folder(ctx, fe)
            if trav == "Deep" and f.store.scope == "public":
                raise EwsError("ErrorInvalidOperation", "Deep traversal queries cannot be performed on "
                                                        "public folders.")
            if trav == "SoftDeleted":
                lst = []
            elif trav == "Deep":
                lst = f.store.walk(f)
            else:
                lst = list(f.children)
            if restr is not None:   # Exchange compares display names without regard to case
                lst = [c for c in lst if c.display.lower() == restr[1].lower()]
            start, end, nxt, last = paging(view, len(lst))
            rm = response_message("FindFolder")
            rf = sub(rm, "RootFolder", None, M, IndexedPagingOffset=str(nxt), TotalItemsInView=str(len(lst)),
                     IncludesLastItemInRange="true" if last else "false")
            fs = sub(rf, "Folders")
            for c in lst[start:end]:
                fs.append(folder_elem(ctx, c, shape))
            return rm
        per_item("FindFolder", msgs, one)
    return resp


def sorted_items(ctx, f):
    ents = list(f.store.files(f))
    ents.sort(key=lambda e: (-ctx.sim.props(e)["date"], e.name))
    return ents


def op_find_item(ctx, req):
    trav = req.get("Traversal", "Shallow")
    if trav not in ("Shallow", "SoftDeleted", "Associated"):
        raise schema_error(f"The 'Traversal' attribute is invalid - The value '{trav}' is invalid.")
    shape = Shape(child(req, "ItemShape", M))
    view = child(req, "IndexedPageItemView", M)
    restr = restriction_of(req, {"message:InternetMessageId"})
    resp, msgs = op_response("FindItem")
    for fe in folder_ids_in(child(req, "ParentFolderIds", M)):
        def one(fe=fe):
            f = resolve_folder(ctx, fe)
            lst = sorted_items(ctx, f) if trav == "Shallow" else []
            if restr is not None:
                lst = [e for e in lst if ctx.sim.props(e)["msgid"] == restr[1]]
            start, end, nxt, last = paging(view, len(lst))
            rm = response_message("FindItem")
            rf = sub(rm, "RootFolder", None, M, IndexedPagingOffset=str(nxt), TotalItemsInView=str(len(lst)),
                     IncludesLastItemInRange="true" if last else "false")
            items = sub(rf, "Items")
            for ent in lst[start:end]:
                items.append(item_elem(ctx, ent, shape, allow_mime=False))
            return rm
        per_item("FindItem", msgs, one)
    return resp


def item_ids_in(container):
    if container is None:
        return []
    return [c for c in container if c.tag in (tn("ItemId"), tn("OccurrenceItemId"), tn("RecurringMasterItemId"))]


def op_get_item(ctx, req):
    shape = Shape(child(req, "ItemShape", M))
    resp, msgs = op_response("GetItem")
    for ie in item_ids_in(child(req, "ItemIds", M)):
        def one(ie=ie):
            ent = resolve_item(ctx, ie)
            mark = len(ctx.parts)
            try:
                el = item_elem(ctx, ent, shape)
            except EwsError:
                del ctx.parts[mark:]
                raise
            rm = response_message("GetItem")
            sub(rm, "Items", None, M).append(el)
            return rm
        per_item("GetItem", msgs, one)
    return resp


def op_export_items(ctx, req):
    resp, msgs = op_response("ExportItems")
    for ie in item_ids_in(child(req, "ItemIds", M)):
        def one(ie=ie):
            ent = resolve_item(ctx, ie)
            if ent.kind == "nomime":
                raise EwsError("ErrorUnsupportedMimeConversion")
            rm = response_message("ExportItems")
            sub(rm, "ItemId", None, M, Id=ent.id, ChangeKey=item_change_key(ent))
            ctx.parts.append(ent.path)
            sub(rm, "Data", "@@EWSSIM-MIME-%d@@" % (len(ctx.parts) - 1), M)
            return rm
        per_item("ExportItems", msgs, one)
    return resp


def check_sync_supported(f, op):
    if f.store.scope == "public":
        raise EwsError("ErrorInvalidOperation",
                       f"{op} is not supported for public folders. Use FindItem and GetItem instead."
                       if op == "SyncFolderItems" else f"{op} is not supported for public folders.")


def op_sync_folder_items(ctx, req):
    shape = Shape(child(req, "ItemShape", M))
    sfid = child(req, "SyncFolderId", M)
    if sfid is None or not folder_ids_in(sfid):
        raise schema_error("The element 'SyncFolderItems' has incomplete content. List of possible elements "
                           "expected: 'SyncFolderId'.")
    mcr = text_of(req, "MaxChangesReturned", M)
    try:
        maxc = int(mcr)
    except (TypeError, ValueError):
        raise schema_error("The element 'SyncFolderItems' has invalid child element or is missing "
                           "'MaxChangesReturned'.")
    if not 1 <= maxc <= 512:
        raise schema_error(f"The 'MaxChangesReturned' element is invalid - The value '{maxc}' is invalid "
                           f"according to its datatype 'http://schemas.microsoft.com/exchange/services/2006/types:"
                           f"MaxSyncChangesReturnedType' - The MaxInclusive constraint failed.")
    state_txt = text_of(req, "SyncState", M)
    ignore = set()
    ig = child(req, "Ignore", M)
    if ig is not None:
        for ie in item_ids_in(ig):
            try:
                ignore.add(parse_id(ie.get("Id", ""))[2])
            except EwsError:
                pass
    resp, msgs = op_response("SyncFolderItems")

    def one():
        f = resolve_folder(ctx, folder_ids_in(sfid)[0])
        check_sync_supported(f, "SyncFolderItems")
        st = f.store
        known = ctx.sim.unpack_state(b"I", st, f.key, state_txt) if state_txt else {}
        current = st.files(f)
        cur_by_key = {}
        for ent in current:
            cur_by_key[ent.key] = ent
        changes = []    # (order, kind, key, ent)
        for k in sorted(known):
            if k not in cur_by_key and k not in ignore:
                changes.append(("Delete", k, None))
        creates = []
        for ent in sorted(current, key=lambda e: (e.mtime_ns, e.name)):
            if ent.key in ignore:
                continue
            ck3 = item_ck(ent)[:3]
            flags = 1 if ent.read else 0
            old = known.get(ent.key)
            if old is None:
                creates.append(("Create", ent.key, ent))
            elif old[0] != ck3:
                changes.append(("Update", ent.key, ent))
            elif old[1] != flags:
                changes.append(("ReadFlagChange", ent.key, ent))
        changes.extend(creates)
        page = changes[:maxc]
        new_known = dict(known)
        rm = response_message("SyncFolderItems")
        ch_el = ET.Element(mn("Changes"))
        for kind, k, ent in page:
            if kind == "Delete":
                new_known.pop(k, None)
                c = sub(ch_el, "Delete")
                sub(c, "ItemId", Id=make_id(K_ITEM, st.prefix, k))
                continue
            new_known[k] = (item_ck(ent)[:3], 1 if ent.read else 0)
            c = sub(ch_el, kind)
            if kind == "ReadFlagChange":
                sub(c, "ItemId", Id=ent.id, ChangeKey=item_change_key(ent))
                sub(c, "IsRead", "true" if ent.read else "false")
            else:
                c.append(item_elem(ctx, ent, shape, allow_mime=False))
        state = ctx.sim.pack_state(b"I", st, f.key, [(k, v[0], v[1]) for k, v in new_known.items()])
        sub(rm, "SyncState", state, M)
        sub(rm, "IncludesLastItemInRange", "true" if len(changes) <= maxc else "false", M)
        rm.append(ch_el)
        return rm
    per_item("SyncFolderItems", msgs, one)
    return resp


def op_sync_folder_hierarchy(ctx, req):
    shape = Shape(child(req, "FolderShape", M))
    sfid = child(req, "SyncFolderId", M)
    state_txt = text_of(req, "SyncState", M)
    resp, msgs = op_response("SyncFolderHierarchy")

    def one():
        if sfid is not None and folder_ids_in(sfid):
            f = resolve_folder(ctx, folder_ids_in(sfid)[0])
        else:
            st = store_of(ctx, default_mailbox(ctx), "mail")
            st.refresh()
            f = st.root
        check_sync_supported(f, "SyncFolderHierarchy")
        st = f.store
        known = ctx.sim.unpack_state(b"H", st, f.key, state_txt) if state_txt else {}
        cur = st.walk(f)
        cur_keys = {c.key for c in cur}
        rm = response_message("SyncFolderHierarchy")
        ch = ET.Element(mn("Changes"))
        new_known = {}
        for c in cur:
            ck3 = folder_ck(c)[:3]
            old = known.get(c.key)
            new_known[c.key] = (ck3, 0)
            if old is None:
                sub(ch, "Create").append(folder_elem(ctx, c, shape))
            elif old[0] != ck3:
                sub(ch, "Update").append(folder_elem(ctx, c, shape))
        for k in sorted(known):
            if k not in cur_keys:
                d = sub(ch, "Delete")
                sub(d, "FolderId", Id=make_id(K_FOLDER, st.prefix, k))
        state = ctx.sim.pack_state(b"H", st, f.key, [(k, v[0], v[1]) for k, v in new_known.items()])
        sub(rm, "SyncState", state, M)
        sub(rm, "IncludesLastFolderInRange", "true", M)
        rm.append(ch)
        return rm
    per_item("SyncFolderHierarchy", msgs, one)
    return resp


def write_item_file(folder, data, read=False, name=None):
    if folder.virtual or folder.path is None:
        raise EwsError("ErrorInvalidOperation", "Items cannot be created in this folder.")
    base = name or ("ews-%s.eml" % uuid.uuid4().hex)
    fname = base + (":2,S" if read else "")
    tmp = os.path.join(folder.path, ".tmp-" + uuid.uuid4().hex)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, os.path.join(folder.path, fname))
    st = folder.store
    ent = None
    for e in st.files(folder):
        if e.base == base:
            ent = e
    if ent is None:
        raise EwsError("ErrorInternalServerError")
    return ent


def check_writable(ctx, store, adding=0):
    """The per-mailbox limits of /_sim/mailbox-limits (or mailbox.json): read_only -> ErrorAccessDenied,
    quota_bytes (all files of the mailbox, plus what is being added) -> ErrorQuotaExceeded."""
    if store.mailbox is None:
        return
    lim = dict(ctx.org.mailboxes.get(store.mailbox, {}).get("limits") or {})
    lim.update(ctx.sim.mailbox_limits.get((ctx.org.name, store.mailbox)) or {})
    if lim.get("read_only"):
        raise EwsError("ErrorAccessDenied")
    quota = lim.get("quota_bytes")
    if quota is not None:
        used = 0
        for d, _dirs, files in os.walk(store.root_dir):
            for n in files:
                try:
                    used += os.stat(os.path.join(d, n)).st_size
                except OSError:
                    pass
        if used + adding > int(quota):
            raise EwsError("ErrorQuotaExceeded")


def safe_dir_name(parent, display):
    """A directory for a new folder: its display name when that is a plain file name, else a
    hash (the display name then lives in folder.json)."""
    if (display and len(display.encode()) <= 200 and "/" not in display and "\x00" not in display
            and not display.startswith(".") and display != "folder.json"):
        return display, False
    return "f-" + h("dir", parent.rel, display, n=8).hex(), True


def op_create_folder(ctx, req):
    """CreateFolder: one directory per new folder, as in
    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/createfolder-operation"""
    pe = child(req, "ParentFolderId", M)
    ids = folder_ids_in(pe)
    folders = child(req, "Folders", M)
    if not ids or folders is None:
        raise schema_error("The element 'CreateFolder' has incomplete content. List of possible elements "
                           "expected: 'ParentFolderId', 'Folders'.")
    resp, msgs = op_response("CreateFolder")
    for fe in list(folders):
        def one(fe=fe):
            parent = resolve_folder(ctx, ids[0])
            if parent.virtual or parent.path is None or parent.store.scope == "public":
                raise EwsError("ErrorInvalidOperation", "Folders cannot be created here.")
            check_writable(ctx, parent.store)
            display = text_of(fe, "DisplayName")
            if not display:
                raise EwsError("ErrorInvalidRequest", "A folder needs a DisplayName.")
            if any(c.display.lower() == display.lower() for c in parent.children):
                raise EwsError("ErrorFolderExists")
            name, meta = safe_dir_name(parent, display)
            path = os.path.join(parent.path, name)
            os.makedirs(path, exist_ok=False)
            fclass = text_of(fe, "FolderClass") or "IPF.Note"
            if meta or fclass != (parent.folder_class or "IPF.Note"):
                write_json_file(os.path.join(path, "folder.json"), {"display_name": display, "folder_class": fclass})
            st = parent.store
            st.refresh()
            f = st.by_rel.get(os.path.join(parent.rel, name) if parent.rel else name)
            if f is None:
                raise EwsError("ErrorInternalServerError")
            rm = response_message("CreateFolder")
            out = sub(rm, "Folders", None, M)
            el = sub(out, FOLDER_ELEM.get(fclass, "Folder"))
            sub(el, "FolderId", Id=f.id, ChangeKey=folder_change_key(f))
            return rm
        per_item("CreateFolder", msgs, one)
    return resp


def write_json_file(path, obj):
    tmp = path + ".tmp-" + uuid.uuid4().hex
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def ext_props_of(it):
    """t:ExtendedProperty elements of a new item -> {"flags": int, "delivery": iso, "submit": iso}."""
    out = {}
    for xp in it.findall(tn("ExtendedProperty")):
        fu = child(xp, "ExtendedFieldURI")
        val = text_of(xp, "Value")
        if fu is None or val is None or not fu.get("PropertyTag"):
            raise schema_error("The element 'ExtendedProperty' has incomplete content.")
        tag = prop_tag(fu.get("PropertyTag"))
        if tag not in EXT_PROPS:
            continue
        name, ptype = EXT_PROPS[tag]
        if fu.get("PropertyType") != ptype:
            raise EwsError("ErrorInvalidPropertyRequest", f"Property type {fu.get('PropertyType')} does not "
                                                          f"match property 0x{tag:04X}.")
        if ptype == "Integer":
            try:
                out[name] = int(val)
            except ValueError:
                raise schema_error(f"The value '{val}' is not a valid Integer.")
        else:
            if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", val):
                raise schema_error(f"The value '{val}' is not a valid SystemTime.")
            out[name] = val
    return out


def count_created(ctx, folder, n=1):
    mb = folder.store.mailbox or "_public"
    st = ctx.sim.mstats(ctx.org.name, mb)
    with ctx.sim.lock:
        st.items_created += n


def op_create_item(ctx, req):
    disp = req.get("MessageDisposition")
    sfe = folder_ids_in(child(req, "SavedItemFolderId", M))
    items = child(req, "Items", M)
    resp, msgs = op_response("CreateItem")
    if items is None:
        raise schema_error("The element 'CreateItem' has incomplete content. List of possible elements "
                           "expected: 'Items'.")
    for it in list(items):
        def one(it=it):
            if it.tag == tn("Message") and not disp:
                raise EwsError("ErrorMessageDispositionRequired")
            if disp and disp != "SaveOnly":
                raise EwsError("ErrorInvalidOperation", "ewssim does not send mail: only "
                                                        "MessageDisposition=\"SaveOnly\" is supported.")
            if sfe:
                folder = resolve_folder(ctx, sfe[0])
            else:
                st = store_of(ctx, default_mailbox(ctx), "mail")
                st.refresh()
                folder = st.by_dfid.get("drafts") if it.tag == tn("Message") else st.msgroot
                if folder is None:
                    raise EwsError("ErrorFolderNotFound")
            mc = child(it, "MimeContent")
            if mc is not None and (mc.text or "").strip():
                try:
                    data = base64.b64decode(mc.text.strip().encode("ascii"), validate=False)
                except Exception:
                    raise EwsError("ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME "
                                                                          "content.")
            else:
                data = synth_mime(it)
            mapi = ext_props_of(it)
            check_writable(ctx, folder.store, len(data))
            read = parse_bool(text_of(it, "IsRead"), False)
            if it.tag == tn("Message") and mc is not None:
                # Exchange gives a message created from MIME without PR_MESSAGE_FLAGS the flags
                # MSGFLAG_UNSENT | MSGFLAG_UNMODIFIED: an unsent draft
                mapi.setdefault("flags", MSGFLAG_UNSENT | MSGFLAG_UNMODIFIED | (MSGFLAG_READ if read else 0))
                read = bool(mapi["flags"] & MSGFLAG_READ)
            ext = {"CalendarItem": ".ics", "Contact": ".vcf"}.get(it.tag.split("}")[1], ".eml")
            base = "ews-%s%s" % (uuid.uuid4().hex, ext)
            if mapi:
                os.makedirs(os.path.join(folder.path, PROPS_DIR), exist_ok=True)
                write_json_file(os.path.join(folder.path, PROPS_DIR, base + ".json"), mapi)
            ent = write_item_file(folder, data, read=read, name=base)
            count_created(ctx, folder)
            rm = response_message("CreateItem")
            out = sub(rm, "Items", None, M)
            el = sub(out, it.tag.split("}")[1] if it.tag.startswith("{%s}" % T) else "Message")
            sub(el, "ItemId", Id=ent.id, ChangeKey=item_change_key(ent))
            return rm
        per_item("CreateItem", msgs, one)
    return resp


def synth_mime(it):
    subj = text_of(it, "Subject", default="")
    body = text_of(it, "Body", default="")
    to = []
    tr = child(it, "ToRecipients")
    if tr is not None:
        for mb in tr:
            to.append(text_of(mb, "EmailAddress", default=""))
    lines = ["Subject: " + subj, "Date: " + email.utils.formatdate(usegmt=True),
             "Message-ID: <%s@ewssim>" % uuid.uuid4().hex, "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=utf-8"]
    if to:
        lines.insert(0, "To: " + ", ".join(to))
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def op_upload_items(ctx, req):
    items = child(req, "Items", M)
    resp, msgs = op_response("UploadItems")
    for it in (list(items) if items is not None else []):
        def one(it=it):
            action = it.get("CreateAction")
            if action not in ("CreateNew", "Update", "UpdateOrCreate"):
                raise schema_error(f"The 'CreateAction' attribute is invalid - The value '{action}' is invalid.")
            pf = child(it, "ParentFolderId")
            if pf is None:
                raise schema_error("The element 'Item' has incomplete content. List of possible elements "
                                   "expected: 'ParentFolderId'.")
            folder = resolve_folder(ctx, pf)
            data_txt = text_of(it, "Data")
            if not data_txt:
                raise schema_error("The element 'Item' has incomplete content. List of possible elements "
                                   "expected: 'Data'.")
            try:
                data = base64.b64decode(data_txt.encode("ascii"), validate=False)
            except Exception:
                raise EwsError("ErrorInvalidRequest", "The Data element is not valid base64.")
            iid = child(it, "ItemId")
            existing = None
            if action in ("Update", "UpdateOrCreate") and iid is not None:
                try:
                    existing = resolve_item(ctx, iid)
                except EwsError:
                    if action == "Update":
                        raise
            elif action == "Update":
                raise EwsError("ErrorItemNotFound")
            if existing is not None:
                tmp = existing.path + ".tmp-" + uuid.uuid4().hex
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, existing.path)
                ent = existing.folder.store.find_item(existing.key)
            else:
                ent = write_item_file(folder, data)
                count_created(ctx, folder)
            rm = response_message("UploadItems")
            sub(rm, "ItemId", None, M, Id=ent.id, ChangeKey=item_change_key(ent))
            return rm
        per_item("UploadItems", msgs, one)
    return resp


def op_delete_item(ctx, req):
    dt = req.get("DeleteType")
    if dt not in ("HardDelete", "SoftDelete", "MoveToDeletedItems"):
        raise schema_error(f"The 'DeleteType' attribute is invalid - The value '{dt}' is invalid according to "
                           f"its datatype 'http://schemas.microsoft.com/exchange/services/2006/types:"
                           f"DisposalType' - The Enumeration constraint failed.")
    resp, msgs = op_response("DeleteItem")
    for ie in item_ids_in(child(req, "ItemIds", M)):
        def one(ie=ie):
            ent = resolve_item(ctx, ie)
            st = ent.folder.store
            if dt == "MoveToDeletedItems" and st.scope != "public":
                st.refresh()
                di = st.by_dfid.get("archivedeleteditems" if st.scope == "archive" else "deleteditems")
                if di is None:
                    raise EwsError("ErrorFolderNotFound")
                if di.key != ent.folder.key:
                    os.replace(ent.path, os.path.join(di.path, ent.name))
                else:
                    os.unlink(ent.path)
            elif dt == "SoftDelete" or dt == "MoveToDeletedItems":
                rec = os.path.join(st.root_dir, ".recoverable")
                os.makedirs(rec, exist_ok=True)
                os.replace(ent.path, os.path.join(rec, ent.name))
            else:
                os.unlink(ent.path)
            s = ctx.sim.mstats(ctx.org.name, st.mailbox or "_public")
            with ctx.sim.lock:
                s.items_deleted += 1
            return response_message("DeleteItem")
        per_item("DeleteItem", msgs, one)
    return resp


OPS = {
    "GetFolder": op_get_folder,
    "FindFolder": op_find_folder,
    "CreateFolder": op_create_folder,
    "SyncFolderHierarchy": op_sync_folder_hierarchy,
    "SyncFolderItems": op_sync_folder_items,
    "FindItem": op_find_item,
    "GetItem": op_get_item,
    "ExportItems": op_export_items,
    "CreateItem": op_create_item,
    "UploadItems": op_upload_items,
    "DeleteItem": op_delete_item,
}


# --------------------------------------------------------------------------- EWS request pipeline

def first_mailbox_in(body_op):
    for dfid in body_op.iter(tn("DistinguishedFolderId")):
        addr = text_of(child(dfid, "Mailbox"), "EmailAddress")
        if addr:
            return addr.lower()
    return None


def impersonation_target(hdr):
    imp = child(hdr, "ExchangeImpersonation") if hdr is not None else None
    if imp is None:
        return None
    sid = child(imp, "ConnectingSID")
    if sid is None:
        raise schema_error("The element 'ExchangeImpersonation' has incomplete content. List of possible "
                           "elements expected: 'ConnectingSID'.")
    for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName", "SID"):
        v = text_of(sid, name)
        if v:
            return name, v
    raise schema_error("The element 'ConnectingSID' has incomplete content.")


def busy_values(ms):
    return [("BackOffMilliseconds", str(int(ms)))]


def handle_ews(sim, headers, body, conn=None):
    ctx = Ctx(sim, headers)
    ctx.conn = conn
    authenticate(sim, ctx)
    org = ctx.org
    ctx.server_version = dict(SERVER_VERSIONS["m365" if org.kind == "m365" else "onprem"])
    ctx.server_version.update(org.conf.get("server_version") or {})
    # parse the envelope
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise Fault("ErrorSchemaValidation", "The request failed schema validation: " + str(e),
                    extra=[("LineNumber", str(e.position[0])), ("LinePosition", str(e.position[1])),
                           ("Violation", str(e))])
    if root.tag != "{%s}Envelope" % S:
        raise Fault("ErrorInvalidRequest", "The request is invalid: not a SOAP 1.1 envelope.")
    hdr = root.find("{%s}Header" % S)
    bod = root.find("{%s}Body" % S)
    if bod is None or len(bod) == 0:
        raise schema_error("The element 'Envelope' has incomplete content: 'Body' is expected.")
    req = bod[0]
    if not req.tag.startswith("{%s}" % M):
        raise schema_error(f"The element '{req.tag}' in the SOAP Body is not an EWS request.")
    op = req.tag[len(M) + 2:]
    ctx.op = op
    rsv = child(hdr, "RequestServerVersion") if hdr is not None else None
    if rsv is not None:
        v = rsv.get("Version", "")
        if v not in KNOWN_VERSIONS:
            raise Fault("ErrorInvalidServerVersion")
        ctx.request_version = v
    imp = impersonation_target(hdr)
    smtp = None
    if imp is not None:
        kind, value = imp
        low = value.lower()
        if kind == "SID":
            smtp = next((s for s, m in org.mailboxes.items() if (m.get("sid") or "").lower() == low), None)
        else:
            smtp = org.aliases.get(low)
        if smtp is None:
            raise Fault("ErrorNonExistentMailbox", values=[("SmtpAddress", value)])
        c = ctx.caller
        if smtp != c["mailbox"]:
            if not c["impersonation"] or (c["scope"] is not None and smtp not in c["scope"]):
                raise Fault("ErrorImpersonateUserDenied")
        ctx.impersonated = smtp
    ctx.target = smtp or first_mailbox_in(req) or ctx.caller.get("mailbox")
    if ctx.target:
        ctx.target = org.aliases.get(ctx.target, ctx.target)
    st = sim.mstats(org.name, ctx.target or ("_app:" + ctx.caller["name"]))
    anchor = headers.get("x-anchormailbox")
    with sim.lock:
        st.requests += 1
        st.ops[op] += 1
        if anchor:
            st.anchor_mailbox_sent += 1
            if ctx.target and anchor.strip().lower() != ctx.target and \
                    org.aliases.get(anchor.strip().lower()) != ctx.target:
                st.anchor_mailbox_mismatch += 1
        else:
            st.anchor_mailbox_missing += 1
    sim.log.append({"t": round(time.time(), 3), "org": org.name, "op": op, "mailbox": ctx.target,
                    "caller": ctx.caller["name"], "auth": ctx.caller["auth"], "anchor": anchor,
                    "impersonation": ctx.impersonated, "version": ctx.request_version})
    # EWS turned off for the org or mailbox: Exchange Online answers a bare 403.
    if not sim.ews_enabled(org, ctx.target):
        with sim.lock:
            st.blocked += 1
        raise HttpReply(Resp(403, {"Content-Length": "0"}, b""))
    # injected faults
    f = sim.match_fault(op, org.name, ctx.target) if sim.faults else None
    if f is not None:
        with sim.lock:
            st.injected_faults += 1
        k = f["kind"]
        if k == "reset":
            raise HttpReply(Resp(reset=True))
        if k == "status":
            status = f["status"]
            hd = {"Content-Type": "text/html"}
            if f.get("retry_after") is not None:
                hd["Retry-After"] = str(f["retry_after"])
            reason = SimHandler.responses.get(status, ("Error",))[0]
            raise HttpReply(Resp(status, hd, ("<html><head><title>%d %s</title></head><body><h1>%s</h1></body>"
                                              "</html>" % (status, reason, reason)).encode()))
        if k == "busy" and f.get("shape", "fault") == "fault":
            raise Fault("ErrorServerBusy", values=busy_values(f.get("back_off_ms", 30000)))
        if k == "soap_fault":
            raise Fault(f.get("code") or "ErrorInternalServerError", f.get("message"))
        if k in ("busy", "error"):
            # answered inside the operation's ResponseMessages (HTTP 200)
            code = "ErrorServerBusy" if k == "busy" else (f.get("code") or "ErrorInternalServerError")
            vals = busy_values(f.get("back_off_ms", 30000)) if k == "busy" else []
            resp, msgs = op_response(op)
            n = max(1, count_request_items(req))
            for _ in range(n):
                msgs.append(response_message(op, code, f.get("message"), vals))
            raise HttpReply(soap_resp(ctx, resp))
    # per-mailbox concurrency (EWSMaxConcurrency)
    limit = int(org.conf.get("max_concurrency", sim.args.max_concurrency))
    cst = None
    with sim.lock:
        # what one caller (service account, app) has in flight across all mailboxes: observed
        # only, so tests can check a client's per-account limit
        cname = (ctx.caller or {}).get("name") or "_anonymous"
        cst = sim.callers.setdefault((org.name, cname), {"in_flight": 0, "max_concurrent": 0, "requests": 0})
        cst["requests"] += 1
        cst["in_flight"] += 1
        cst["max_concurrent"] = max(cst["max_concurrent"], cst["in_flight"])
        if limit > 0 and st.in_flight >= limit:
            st.throttled_by_limit += 1
            throttled = True
        else:
            throttled = False
            st.in_flight += 1
            if st.in_flight > st.max_concurrent:
                st.max_concurrent = st.in_flight
    if throttled:
        with sim.lock:
            cst["in_flight"] -= 1
        if sim.args.concurrency_error == "ErrorServerBusy":
            raise Fault("ErrorServerBusy", values=busy_values(sim.args.concurrency_backoff_ms))
        raise Fault("ErrorExceededConnectionCount", values=[
            ("Policy", "MaxConcurrency"), ("MaxConcurrencyLimit", str(limit)),
            ("ErrorMessage", f"This operation exceeds the throttling budget for policy part 'MaxConcurrency', "
                             f"policy value '{limit}',  Budget type: 'Ews'.  Suggested backoff time 0 ms.")])
    released = [False]

    def release():
        if not released[0]:
            released[0] = True
            with sim.lock:
                st.in_flight -= 1
                cst["in_flight"] -= 1
    try:
        if sim.args.latency_ms:
            time.sleep(sim.args.latency_ms / 1000.0)
        if f is not None and f["kind"] == "slow":
            time.sleep(f.get("delay_ms", 0) / 1000.0)   # a slow server holds the concurrency slot
        fn = OPS.get(op)
        if fn is None:
            raise Fault("ErrorInvalidRequest", f"The request is invalid: the operation '{op}' is not "
                                               f"implemented by ewssim.")
        body_el = fn(ctx, req)
        errs = sum(1 for rm in body_el.iter() if rm.get("ResponseClass") == "Error")
        if errs:
            with sim.lock:
                st.error_responses += errs
        resp = soap_resp(ctx, body_el)
    except BaseException:
        release()
        raise
    resp.after = release    # released once the response is fully written
    return resp


def count_request_items(req):
    for name in ("ItemIds", "FolderIds", "ParentFolderIds", "Items"):
        c = child(req, name, M)
        if c is not None:
            return len(list(c))
    return 1


# --------------------------------------------------------------------------- admin API

def handle_admin(sim, method, path, body):
    def js(obj, status=200):
        return Resp(status, {"Content-Type": "application/json"}, json.dumps(obj).encode())
    if path == "/_sim/stats" and method == "GET":
        return js({"stats": sim.stats_json(), "global": dict(sim.global_stats),
                   "faults": [dict(f) for f in sim.faults],
                   "limits": {"max_concurrency": sim.args.max_concurrency,
                              "concurrency_error": sim.args.concurrency_error},
                   "ews_overrides": [{"org": k[0], "mailbox": k[1], "enabled": v}
                                     for k, v in sim.ews_override.items()],
                   "mailbox_limits": [{"org": k[0], "mailbox": k[1], **v} for k, v in sim.mailbox_limits.items()],
                   "callers": {o: {n: dict(v) for (o2, n), v in sorted(sim.callers.items()) if o2 == o}
                               for o in sorted({k[0] for k in sim.callers})},
                   "tokens": len(sim.tokens), "sync_epoch": sim.sync_epoch})
    if path == "/_sim/log" and method == "GET":
        return js(list(sim.log))
    if path == "/_sim/reset-stats" and method == "POST":
        with sim.lock:
            for st in sim.stats.values():
                inflight = st.in_flight
                st.__init__()
                st.in_flight = inflight
            sim.global_stats.clear()
            for c in sim.callers.values():
                c["max_concurrent"], c["requests"] = c["in_flight"], 0
            sim.log.clear()
        return Resp(204)
    if path == "/_sim/expire-tokens" and method == "POST":
        with sim.lock:
            for v in sim.tokens.values():
                v["exp"] = 0
        return Resp(204)
    if path == "/_sim/invalidate-sync-states" and method == "POST":
        with sim.lock:
            sim.sync_epoch += 1
        return Resp(204)
    if path == "/_sim/ews-enabled" and method == "POST":
        try:
            spec = json.loads(body or b"{}")
            key = (spec["org"], spec.get("mailbox").lower() if spec.get("mailbox") else None)
            en = spec.get("enabled")
        except (ValueError, KeyError, AttributeError) as e:
            return js({"error": f"bad request: {e}"}, 400)
        with sim.lock:
            if en is None:
                sim.ews_override.pop(key, None)
            else:
                sim.ews_override[key] = bool(en)
        return Resp(204)
    if path == "/_sim/mailbox-limits" and method == "POST":
        try:
            spec = json.loads(body or b"{}")
            key = (spec["org"], spec["mailbox"].lower())
            lim = {k: spec[k] for k in ("quota_bytes", "read_only") if spec.get(k) is not None}
        except (ValueError, KeyError, AttributeError) as e:
            return js({"error": f"bad request: {e}"}, 400)
        with sim.lock:
            if lim:
                sim.mailbox_limits[key] = lim
            else:
                sim.mailbox_limits.pop(key, None)
        return Resp(204)
    if path == "/_sim/faults":
        if method == "GET":
            return js([dict(f) for f in sim.faults])
        if method == "DELETE":
            with sim.lock:
                sim.faults = []
            return Resp(204)
        if method == "POST":
            try:
                spec = json.loads(body or b"{}")
                specs = spec if isinstance(spec, list) else [spec]
                added = []
                for s in specs:
                    kind = s.get("kind", "busy")
                    if kind not in ("busy", "status", "soap_fault", "error", "reset", "slow"):
                        raise ValueError("kind must be busy, status, soap_fault, error, reset or slow")
                    if kind == "status" and int(s.get("status", 0)) < 400:
                        raise ValueError("status fault needs status >= 400")
                    if kind == "busy" and s.get("shape", "fault") not in ("fault", "message"):
                        raise ValueError("busy shape must be fault or message")
                    f = {"kind": kind, "operation": s.get("operation"), "mailbox": s.get("mailbox"),
                         "org": s.get("org"), "status": int(s.get("status", 0)) or None,
                         "retry_after": s.get("retry_after"), "delay_ms": int(s.get("delay_ms", 0)),
                         "back_off_ms": int(s.get("back_off_ms", 30000)), "shape": s.get("shape", "fault"),
                         "code": s.get("code"), "message": s.get("message"),
                         "remaining": int(s.get("count", -1)), "fired": 0}
                    with sim.lock:
                        sim.fault_seq += 1
                        f["id"] = sim.fault_seq
                        sim.faults.append(f)
                    added.append(dict(f))
            except (ValueError, TypeError) as e:
                return js({"error": str(e)}, 400)
            return js(added if isinstance(spec, list) else added[0], 201)
    return js({"error": "unknown admin endpoint"}, 404)


# --------------------------------------------------------------------------- HTTP layer

class Handler(SimHandler):
    server_version = "Microsoft-IIS/10.0"

    def setup(self):
        super().setup()
        # BaseHTTPRequestHandler serves every request of one connection with this one instance
        # (handle() loops over handle_one_request), so NTLM's per-connection state lives here
        self.ntlm = NtlmConn()

    def handle_method(self, method):
        self._handle(method)

    def _handle(self, method):
        sim = self.sim
        body = self.read_body()
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        resp = None
        try:
            if path.startswith("/_sim/"):
                resp = handle_admin(sim, method, path, body)
            elif path.lower() == "/ews/exchange.asmx":
                if method != "POST":
                    resp = Resp(405, {"Allow": "POST", "Content-Type": "text/plain"}, b"Method Not Allowed")
                else:
                    sim.global_stats["ews_requests"] += 1
                    try:
                        resp = handle_ews(sim, headers, body, self.ntlm)
                    except Fault as f:
                        resp = fault_resp(f)
                    except HttpReply as r:
                        resp = r.resp
            else:
                m = re.match(r"^/([^/]+)/oauth2/v2\.0/token/?$", path)
                if m:
                    resp = handle_token(sim, unquote(m.group(1)), method, headers, body)
                else:
                    resp = Resp(404, {"Content-Type": "text/plain"}, b"Not Found")
        except Exception as e:  # a bug answers 500 with a SOAP fault instead of killing the connection
            import traceback
            traceback.print_exc()
            resp = fault_resp(Fault("ErrorInternalServerError", f"ewssim bug: {e!r}"))
        try:
            if resp.reset:
                self.reset_connection()
                return
            self._send(resp)
        finally:
            if resp.after is not None:
                resp.after()

    def _send(self, resp):
        status = resp.status
        reason = self.responses.get(status, ("Unknown",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", "Date: " + http_date(), "Server: Microsoft-IIS/10.0",
                 "request-id: " + str(uuid.uuid4()), "X-AspNet-Version: 4.0.30319", "X-Powered-By: ASP.NET"]
        for k, v in resp.headers.items():
            if k == "_www":
                for w in v:
                    lines.append("WWW-Authenticate: " + w)
            elif k != "Content-Length":
                lines.append(f"{k}: {v}")
        if self.close_connection:
            lines.append("Connection: close")
        out = self.wfile
        if resp.parts is not None:
            lines.append("Transfer-Encoding: chunked")
            out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            for p in resp.parts:
                if isinstance(p, bytes):
                    if p:
                        out.write(b"%x\r\n%s\r\n" % (len(p), p))
                    continue
                try:
                    fh = open(p[1], "rb")
                except OSError:
                    continue  # the file vanished after the listing: the element is left empty
                with fh:
                    while True:
                        data = fh.read(CHUNK_RAW)
                        if not data:
                            break
                        enc = base64.b64encode(data)
                        out.write(b"%x\r\n%s\r\n" % (len(enc), enc))
            out.write(b"0\r\n\r\n")
            return
        self.write_fixed(lines, status, resp.body)


def main(argv=None):
    ap = simcommon.arg_parser("Exchange Web Services (EWS) simulator")
    ap.add_argument("--max-concurrency", type=int, default=27,
                    help="concurrent EWS requests per mailbox (EWSMaxConcurrency); 0 = unlimited")
    ap.add_argument("--concurrency-error", default="ErrorExceededConnectionCount",
                    choices=["ErrorExceededConnectionCount", "ErrorServerBusy"])
    ap.add_argument("--concurrency-backoff-ms", type=int, default=1000)
    ap.add_argument("--sync-secret", default="", help="key material for SyncState HMACs")
    ap.add_argument("--ntlm-domain", default="EWSSIM", help="NTLM: NetBIOS domain name (TargetName)")
    ap.add_argument("--ntlm-dns-domain", default=None, help="NTLM: DNS domain name (default <domain>.local)")
    ap.add_argument("--ntlm-computer", default="EXCH01", help="NTLM: NetBIOS computer name")
    args = simcommon.parse_args(ap, argv)
    return serve(args, Sim(args), Handler, "ewssim")


if __name__ == "__main__":
    sys.exit(main())
