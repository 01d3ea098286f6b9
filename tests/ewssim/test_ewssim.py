"""Tests for ewssim, checked from outside with the independent EWS client exchangelib and raw SOAP.

Run (inside a venv with tests/ewssim/requirements.txt):
    python3 -m pytest tests/ewssim -q
"""

import base64
import datetime
import hmac
import http.client
import json
import os
import signal
import struct
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest
import spnego

# exchangelib's OAuth2 session (requests-oauthlib) refuses plain-http token URLs unless told otherwise.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

from exchangelib import (  # noqa: E402
    BASIC, DELEGATE, IMPERSONATION, NTLM, OAUTH2, Account, Build, Configuration, Credentials, FailFast,
    EWSDateTime, FaultTolerance, Identity, Message, OAuth2Credentials, Version,
)
from exchangelib.errors import (  # noqa: E402
    ErrorAccessDenied, ErrorQuotaExceeded, ErrorFolderNotFound, ErrorImpersonateUserDenied, ErrorInvalidOperation,
    ErrorInvalidSyncStateData, ErrorNonExistentMailbox, ErrorServerBusy, TransportError,
    UnauthorizedError,
)
from exchangelib.items import CalendarItem, Contact  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SIM = os.path.join(HERE, "ewssim.py")
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS = {"s": SOAP, "m": M, "t": T, "e": E}

ALICE, BOB = "alice@corp.example", "bob@corp.example"
BOB_PW = "bob-pässword"
SVC, SVC_PW = "svc@corp.example", "svc-pass"
NOIMP, NOIMP_PW = "noimp@corp.example", "noimp-pass"
TENANT = "5d7e4a3b-0000-4000-8000-0000000000c1"
APP, APP_SECRET = "11111111-2222-3333-4444-555555555555", "app~secret"
APP_NOPERM = "99999999-2222-3333-4444-555555555555"
DAVE = "dave@cloud.example"


# --------------------------------------------------------------------------- fixtures

def eml(i, subject=None, to=ALICE, body=None):
    subject = subject or f"Message {i}"
    body = body or f"Hello number {i}.\r\n"
    return (f"From: Bob Sender <bob@sender.example>\r\nTo: Alice <{to}>\r\n"
            f"Subject: {subject}\r\nDate: Mon, 1 Jan 2024 10:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <msg{i}@sender.example>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


ICS = (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//ewssim//test//EN\r\nBEGIN:VEVENT\r\nUID:ev1@corp.example\r\n"
       b"DTSTART:20240102T090000Z\r\nDTEND:20240102T093000Z\r\nSUMMARY:Standup\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
VCF = b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Carol Contact\r\nEMAIL:carol@example.org\r\nEND:VCARD\r\n"


def make_fixtures(root):
    corp = os.path.join(root, "corp")
    write_json(os.path.join(corp, "org.json"), {
        "kind": "onprem",
        "accounts": {SVC: {"password": SVC_PW, "impersonation": True},
                     NOIMP: {"password": NOIMP_PW, "impersonation": False}}})
    a = os.path.join(corp, "mailboxes", ALICE)
    for i in range(1, 6):
        write(os.path.join(a, "mail", "Inbox", f"m{i}.eml"), eml(i))
    write(os.path.join(a, "mail", "Inbox", "Projects", "p1.eml"), eml(50, subject="Project"))
    write(os.path.join(a, "mail", "SentItems", "s1.eml"), eml(51, subject="Sent one"))
    for d in ("Drafts", "DeletedItems", "JunkEmail", "Export"):
        os.makedirs(os.path.join(a, "mail", d), exist_ok=True)
    write(os.path.join(a, "mail", "Calendar", "ev1.ics"), ICS)
    write(os.path.join(a, "mail", "Contacts", "c1.vcf"), VCF)
    write_json(os.path.join(a, "mail", "Tasks", "t1.item.json"), {"item_class": "IPM.Task", "subject": "Do it"})
    write(os.path.join(a, "archive", "Inbox", "old1.eml"), eml(40, subject="Archived 1"))
    write(os.path.join(a, "archive", "2019", "old2.eml"), eml(41, subject="Archived 2"))
    big = eml(42, subject="Big", body=("y" * 998 + "\r\n") * 2000)   # ~2 MB, streamed in chunks
    write(os.path.join(a, "mail", "Inbox", "Projects", "big.eml"), big)
    b = os.path.join(corp, "mailboxes", BOB)
    write_json(os.path.join(b, "mailbox.json"), {"password": BOB_PW})
    write(os.path.join(b, "mail", "Inbox", "b1.eml"), eml(60, to=BOB))
    write(os.path.join(b, "mail", "Inbox", "b2.eml"), eml(61, to=BOB))
    write(os.path.join(corp, "public", "Announcements", "pa1.eml"), eml(70, subject="Public 1"))
    write(os.path.join(corp, "public", "Announcements", "pa2.eml"), eml(71, subject="Public 2"))
    write(os.path.join(corp, "public", "Announcements", "Old", "pa3.eml"), eml(72, subject="Public 3"))
    cloud = os.path.join(root, "cloud")
    write_json(os.path.join(cloud, "org.json"), {
        "kind": "m365", "tenant_id": TENANT,
        "apps": {APP: {"secret": APP_SECRET, "full_access_as_app": True},
                 APP_NOPERM: {"secret": APP_SECRET, "full_access_as_app": False}}})
    d = os.path.join(cloud, "mailboxes", DAVE)
    for i in range(1, 4):
        write(os.path.join(d, "mail", "Inbox", f"d{i}.eml"), eml(80 + i, to=DAVE))
    blocked = os.path.join(root, "blocked")
    write_json(os.path.join(blocked, "org.json"), {
        "kind": "onprem", "ews_enabled": False,
        "accounts": {"svc@blocked.example": {"password": "bp", "impersonation": True}}})
    write(os.path.join(blocked, "mailboxes", "erin@blocked.example", "mail", "Inbox", "e1.eml"), eml(90))
    return corp


class Sim:
    def __init__(self, tmp_path, *extra):
        self.tmp = tmp_path
        self.dir = str(tmp_path / "fx")
        self.corp = make_fixtures(self.dir)
        self.alice_mail = os.path.join(self.corp, "mailboxes", ALICE, "mail")
        self.start(*extra)

    def start(self, *extra):
        pf = str(self.tmp / "port")
        if os.path.exists(pf):
            os.unlink(pf)
        self.proc = subprocess.Popen([sys.executable, SIM, "--fixtures", self.dir, "--port", "0",
                                      "--port-file", pf, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while not os.path.exists(pf):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("ewssim did not start: " + self.proc.stderr.read().decode())
            time.sleep(0.02)
        self.port = int(open(pf).read())
        self.base = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.base + "/EWS/Exchange.asmx"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    # ---- raw HTTP
    def request(self, method, path, data=None, headers=None):
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def admin(self, method, path, obj=None):
        data = json.dumps(obj).encode() if obj is not None else None
        st, _, b = self.request(method, "/_sim/" + path, data, {"Content-Type": "application/json"})
        assert st < 300, b
        return json.loads(b) if b else None

    def stats(self):
        return self.admin("GET", "stats")

    def soap(self, body, header="", auth=(SVC, SVC_PW), version="Exchange2016", extra_headers=None,
             bearer=None):
        rsv = f'<t:RequestServerVersion Version="{version}"/>' if version else ""
        env = (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}" xmlns:m="{M}" '
               f'xmlns:t="{T}"><soap:Header>{rsv}{header}</soap:Header><soap:Body>{body}</soap:Body>'
               f'</soap:Envelope>').encode()
        h = {"Content-Type": "text/xml; charset=utf-8"}
        if bearer:
            h["Authorization"] = "Bearer " + bearer
        elif auth:
            h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        h.update(extra_headers or {})
        st, hd, b = self.request("POST", "/EWS/Exchange.asmx", env, h)
        root = ET.fromstring(b) if b else None
        return st, hd, root

    def token(self, client_id=APP, secret=APP_SECRET, scope="https://outlook.office365.com/.default",
              tenant=TENANT):
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                       "client_secret": secret, "scope": scope}).encode()
        st, _, b = self.request("POST", f"/{tenant}/oauth2/v2.0/token", form,
                                {"Content-Type": "application/x-www-form-urlencoded"})
        return st, json.loads(b)

    # ---- exchangelib
    def account(self, smtp=ALICE, user=SVC, pw=SVC_PW, retry=None, auth_type=BASIC, access_type=IMPERSONATION):
        cfg = Configuration(service_endpoint=self.endpoint, credentials=Credentials(user, pw), auth_type=auth_type,
                            version=Version(build=Build(15, 2, 1544, 4), api_version="Exchange2016"),
                            retry_policy=retry or FailFast())
        acc = Account(smtp, config=cfg, autodiscover=False, access_type=access_type)
        # exchangelib caches one Protocol per endpoint+credentials; make this account's policy the active one
        acc.protocol.config.retry_policy = retry or FailFast()
        return acc


def imp(smtp):
    return f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{smtp}</t:PrimarySmtpAddress>" \
           f"</t:ConnectingSID></t:ExchangeImpersonation>"


def fault_parts(root):
    f = root.find("s:Body/s:Fault", NS)
    assert f is not None, ET.tostring(root)
    values = {v.get("Name"): v.text for v in f.findall("detail/t:MessageXml/t:Value", NS)}
    return (f.findtext("faultcode"), f.findtext("faultstring"), f.findtext("detail/e:ResponseCode", namespaces=NS),
            f.findtext("detail/e:Message", namespaces=NS), values)


def messages(root, op):
    return root.findall(f"s:Body/m:{op}Response/m:ResponseMessages/m:{op}ResponseMessage", NS)


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path)
    yield s
    s.stop()


class SimOAuth2Credentials(OAuth2Credentials):
    """exchangelib's OAuth2Credentials with the token URL pointed at the simulator (exchangelib hard-codes
    login.microsoftonline.com in the token_url property)."""

    def __init__(self, *args, token_base, **kwargs):
        super().__init__(*args, **kwargs)
        self._token_base = token_base

    @property
    def token_url(self):
        return f"{self._token_base}/{self.tenant_id}/oauth2/v2.0/token"


def oauth_account(sim, smtp=DAVE, client_id=APP):
    creds = SimOAuth2Credentials(client_id=client_id, client_secret=APP_SECRET, tenant_id=TENANT,
                                 identity=Identity(primary_smtp_address=smtp), token_base=sim.base)
    cfg = Configuration(service_endpoint=sim.endpoint, credentials=creds, auth_type=OAUTH2,
                        version=Version(build=Build(15, 20, 8769, 25), api_version="Exchange2016"),
                        retry_policy=FailFast())
    return Account(smtp, config=cfg, autodiscover=False, access_type=IMPERSONATION)


# --------------------------------------------------------------------------- exchangelib: basic + impersonation

def test_basic_impersonation_tree_items_and_mime(sim):
    alice = sim.account(ALICE)
    names = sorted(f.name for f in alice.root.walk())
    assert names == sorted(["Top of Information Store", "Calendar", "Contacts", "Deleted Items", "Drafts",
                            "Export", "Inbox", "Projects", "Junk Email", "Sent Items", "Tasks",
                            "Recoverable Items", "Deletions"])
    assert alice.inbox.total_count == 5
    assert alice.inbox.unread_count == 5
    assert alice.inbox.child_folder_count == 1
    subjects = [m.subject for m in alice.inbox.all()]
    assert subjects == [f"Message {i}" for i in range(5, 0, -1)]   # newest first
    items = list(alice.inbox.all().only("id", "changekey"))
    fetched = list(alice.fetch(items, only_fields=["mime_content", "subject"]))
    for m in fetched:
        n = int(m.subject.split()[-1])
        with open(os.path.join(sim.alice_mail, "Inbox", f"m{n}.eml"), "rb") as fh:
            assert m.mime_content == fh.read()
    # a ~2 MB message comes back byte-identical (streamed as chunked base64 by the simulator)
    proj = alice.inbox / "Projects"
    big = [m for m in proj.all() if m.subject == "Big"][0]
    with open(os.path.join(sim.alice_mail, "Inbox", "Projects", "big.eml"), "rb") as fh:
        assert list(alice.fetch([big], only_fields=["mime_content"]))[0].mime_content == fh.read()
    # a second mailbox through the same service account
    bob = sim.account(BOB)
    assert sorted(m.subject for m in bob.inbox.all()) == ["Message 60", "Message 61"]
    st = sim.stats()["stats"]["corp"]
    assert st[ALICE]["operations"]["GetItem"] >= 2
    assert st[BOB]["requests"] >= 2
    # exchangelib sends X-AnchorMailbox with impersonation; every request was counted as anchored
    assert st[ALICE]["anchor_mailbox_sent"] == st[ALICE]["requests"]
    assert st[ALICE]["anchor_mailbox_missing"] == 0 and st[ALICE]["anchor_mailbox_mismatch"] == 0


def test_ids_are_stable_and_opaque(sim, tmp_path):
    alice = sim.account(ALICE)
    ids = sorted(m.id for m in alice.inbox.all().only("id"))
    assert all(i.startswith("AAMk") and base64.b64decode(i) for i in ids)
    sim.stop()
    sim.start()
    assert sorted(m.id for m in sim.account(ALICE).inbox.all().only("id")) == ids


def test_non_mail_items_expose_item_class(sim):
    alice = sim.account(ALICE)
    ev = list(alice.calendar.all())
    assert len(ev) == 1 and isinstance(ev[0], CalendarItem) and ev[0].item_class == "IPM.Appointment"
    assert list(alice.fetch(ev, only_fields=["mime_content"]))[0].mime_content == ICS
    cs = list(alice.contacts.all())
    assert len(cs) == 1 and isinstance(cs[0], Contact) and cs[0].item_class == "IPM.Contact"
    assert list(alice.fetch(cs, only_fields=["mime_content"]))[0].mime_content == VCF
    # an item without MIME conversion: ItemClass is visible, MimeContent is refused for that item only
    task_id = alice.tasks.all().only("id")[0].id
    st, _, root = sim.soap(
        '<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true'
        '</t:IncludeMimeContent></m:ItemShape><m:ItemIds>'
        f'<t:ItemId Id="{task_id}"/><t:ItemId Id="{ev[0].id}"/></m:ItemIds></m:GetItem>', imp(ALICE))
    assert st == 200
    rms = messages(root, "GetItem")
    assert rms[0].get("ResponseClass") == "Error"
    assert rms[0].findtext("m:ResponseCode", namespaces=NS) == "ErrorUnsupportedMimeConversion"
    assert rms[1].get("ResponseClass") == "Success"
    mc = rms[1].find("m:Items/t:CalendarItem/t:MimeContent", NS)
    assert mc.get("CharacterSet") == "UTF-8" and base64.b64decode(mc.text) == ICS
    st, _, root = sim.soap(
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape>'
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="tasks"/></m:ParentFolderIds></m:FindItem>', imp(ALICE))
    item = root.find(".//m:RootFolder/t:Items/t:Task", NS)
    assert item.findtext("t:ItemClass", namespaces=NS) == "IPM.Task"
    assert item.findtext("t:Subject", namespaces=NS) == "Do it"


# --------------------------------------------------------------------------- OAuth2

def test_oauth2_client_credentials_with_exchangelib(sim):
    dave = oauth_account(sim)
    assert sorted(m.subject for m in dave.inbox.all()) == ["Message 81", "Message 82", "Message 83"]
    it = dave.inbox.all().only("id", "changekey")[0]
    got = list(dave.fetch([it], only_fields=["mime_content", "subject"]))[0]
    n = int(got.subject.split()[-1]) - 80
    with open(os.path.join(sim.dir, "cloud", "mailboxes", DAVE, "mail", "Inbox", f"d{n}.eml"), "rb") as fh:
        assert got.mime_content == fh.read()
    s = sim.stats()
    assert s["global"]["token_requests"] >= 1
    assert s["stats"]["cloud"][DAVE]["requests"] >= 2


def test_oauth2_ews_answers_m365_server_version_and_needs_impersonation(sim):
    st, tok = sim.token()
    assert st == 200 and tok["token_type"] == "Bearer" and tok["expires_in"] == tok["ext_expires_in"]
    body = ('<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds>'
            '<t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>')
    st, _, root = sim.soap(body, bearer=tok["access_token"])
    assert st == 500
    assert fault_parts(root)[2] == "ErrorInvalidExchangeImpersonationHeaderData"
    st, _, root = sim.soap(body, imp(DAVE), bearer=tok["access_token"])
    assert st == 200
    svi = root.find("s:Header/t:ServerVersionInfo", NS)
    assert (svi.get("MajorVersion"), svi.get("MinorVersion"), svi.get("Version")) == ("15", "20", "V2018_01_08")
    assert root.findtext(".//t:Folder/t:DisplayName", namespaces=NS) == "Inbox"
    # an explicit Mailbox in the DistinguishedFolderId also works for an app token
    st, _, root = sim.soap(body.replace('Id="inbox"/>', f'Id="inbox"><t:Mailbox><t:EmailAddress>{DAVE}'
                                        '</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>'),
                           bearer=tok["access_token"])
    assert st == 200 and root.findtext(".//t:Folder/t:TotalCount", namespaces=NS) == "3"
    # a token without full_access_as_app is refused with 401
    st2, tok2 = sim.token(client_id=APP_NOPERM)
    assert st2 == 200
    st, hd, _ = sim.soap(body, imp(DAVE), bearer=tok2["access_token"])
    assert st == 401 and "2000008" in hd["x-ms-diagnostics"]
    # expired tokens
    sim.admin("POST", "expire-tokens")
    st, hd, _ = sim.soap(body, imp(DAVE), bearer=tok["access_token"])
    assert st == 401 and any(v.startswith("Bearer") for v in hd.get_all("WWW-Authenticate"))


def test_token_endpoint_errors(sim):
    st, j = sim.token(secret="wrong")
    assert st == 401 and j["error"] == "invalid_client" and j["error_codes"] == [7000215]
    assert j["error_description"].startswith("AADSTS7000215: ")
    st, j = sim.token(scope="https://outlook.office365.com/EWS.AccessAsUser.All")
    assert st == 400 and j["error"] == "invalid_scope" and j["error_codes"] == [1002012]
    st, j = sim.token(scope="https://graph.microsoft.com/.default")
    assert st == 400 and j["error_codes"] == [500011]
    st, j = sim.token(tenant="00000000-0000-0000-0000-000000000000")
    assert st == 400 and j["error_codes"] == [90002]
    st, j = sim.token(client_id="unknown-app")
    assert st == 400 and j["error"] == "unauthorized_client" and j["error_codes"] == [700016]


# --------------------------------------------------------------------------- sync

def test_sync_folder_items_paging_resume_and_changes(sim):
    alice = sim.account(ALICE)
    inbox = alice.inbox
    first = list(inbox.sync_items(max_changes_returned=2, only_fields=["id", "changekey", "subject"]))
    assert [c for c, _ in first] == ["create"] * 5
    assert sorted(i.subject for _, i in first) == [f"Message {i}" for i in range(1, 6)]
    state1 = inbox.item_sync_state
    s = sim.stats()["stats"]["corp"][ALICE]["operations"]
    assert s["SyncFolderItems"] == 3                    # 2 + 2 + 1 changes
    # nothing changed: an empty round
    assert list(inbox.sync_items(sync_state=state1, max_changes_returned=2)) == []
    # change the folder on disk: new, deleted, rewritten, marked read (Maildir flag rename)
    d = os.path.join(sim.alice_mail, "Inbox")
    with open(os.path.join(d, "m6.eml"), "wb") as fh:
        fh.write(eml(6))
    os.unlink(os.path.join(d, "m1.eml"))
    with open(os.path.join(d, "m2.eml"), "ab") as fh:
        fh.write(b"an edit\r\n")
    os.rename(os.path.join(d, "m3.eml"), os.path.join(d, "m3.eml:2,S"))
    # the state is self-contained: it survives a simulator restart
    sim.stop()
    sim.start()
    alice = sim.account(ALICE)
    changes = list(alice.inbox.sync_items(sync_state=state1, max_changes_returned=512,
                                          only_fields=["id", "changekey", "subject"]))
    kinds = sorted(c for c, _ in changes)
    assert kinds == ["create", "delete", "read_flag_change", "update"]
    by = {c: v for c, v in changes}
    assert by["create"].subject == "Message 6"
    assert by["read_flag_change"][1] is True
    assert by["update"].subject == "Message 2"


def test_invalid_sync_state(sim):
    alice = sim.account(ALICE)
    with pytest.raises(ErrorInvalidSyncStateData):
        list(alice.inbox.sync_items(sync_state="bm90IGEgc3luYyBzdGF0ZQ=="))
    list(alice.inbox.sync_items(max_changes_returned=100))
    good = alice.inbox.item_sync_state
    # a state of another folder is rejected too
    with pytest.raises(ErrorInvalidSyncStateData):
        list(alice.sent.sync_items(sync_state=good))
    body = ('<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId>'
            '<t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId><m:SyncState>{}</m:SyncState>'
            '<m:MaxChangesReturned>10</m:MaxChangesReturned></m:SyncFolderItems>')
    st, _, root = sim.soap(body.format(good), imp(ALICE))
    assert messages(root, "SyncFolderItems")[0].get("ResponseClass") == "Success"
    sim.admin("POST", "invalidate-sync-states")
    st, _, root = sim.soap(body.format(good), imp(ALICE))
    assert st == 200
    rm = messages(root, "SyncFolderItems")[0]
    assert rm.get("ResponseClass") == "Error"
    assert [c.tag.split("}")[1] for c in rm] == ["MessageText", "ResponseCode", "DescriptiveLinkKey", "SyncState",
                                                 "IncludesLastItemInRange"]
    assert rm.findtext("m:SyncState", namespaces=NS) == ""
    assert rm.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidSyncStateData"
    # MaxChangesReturned is bounded by the schema (1..512)
    st, _, root = sim.soap(body.replace("<m:SyncState>{}</m:SyncState>", "").replace(">10<", ">513<"),
                           imp(ALICE))
    assert st == 500 and fault_parts(root)[2] == "ErrorSchemaValidation"


def test_sync_folder_hierarchy(sim):
    alice = sim.account(ALICE)
    root = alice.root
    first = list(root.sync_hierarchy())
    assert [c for c, _ in first].count("create") == 13
    state = root.folder_sync_state
    os.makedirs(os.path.join(sim.alice_mail, "Inbox", "NewFolder"))
    os.rmdir(os.path.join(sim.alice_mail, "Export"))
    ch = list(root.sync_hierarchy(sync_state=state))
    kinds = sorted(c for c, _ in ch)
    assert "create" in kinds and "delete" in kinds
    assert [f.name for c, f in ch if c == "create"] == ["NewFolder"]


def test_raw_sync_response_shape(sim):
    st, _, root = sim.soap(
        '<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:SyncFolderId>'
        '<t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId><m:MaxChangesReturned>3</m:MaxChangesReturned>'
        '</m:SyncFolderItems>', imp(ALICE))
    rm = messages(root, "SyncFolderItems")[0]
    assert [c.tag.split("}")[1] for c in rm] == ["ResponseCode", "SyncState", "IncludesLastItemInRange", "Changes"]
    assert rm.findtext("m:IncludesLastItemInRange", namespaces=NS) == "false"
    creates = rm.findall("m:Changes/t:Create/t:Message/t:ItemId", NS)
    assert len(creates) == 3 and all(c.get("ChangeKey") for c in creates)
    base64.b64decode(rm.findtext("m:SyncState", namespaces=NS), validate=True)


# --------------------------------------------------------------------------- archive and public folders

def test_archive_mailbox(sim):
    alice = sim.account(ALICE)
    names = sorted(f.name for f in alice.archive_msg_folder_root.walk())
    assert names == ["2019", "Inbox"]
    assert "Top of Information Store" in [f.name for f in alice.archive_root.children]
    arch_inbox = alice.archive_inbox
    items = list(arch_inbox.all())
    assert [i.subject for i in items] == ["Archived 1"]
    with open(os.path.join(sim.corp, "mailboxes", ALICE, "archive", "Inbox", "old1.eml"), "rb") as fh:
        assert list(alice.fetch(items, only_fields=["mime_content"]))[0].mime_content == fh.read()
    # archive folders sync like any mailbox folder
    assert [c for c, _ in arch_inbox.sync_items()] == ["create"]
    # bob has no archive
    with pytest.raises(ErrorFolderNotFound):
        sim.account(BOB).archive_msg_folder_root.refresh()


def test_public_folders_use_find_item_not_sync(sim):
    alice = sim.account(ALICE)
    pfr = alice.public_folders_root
    top = [f.name for f in pfr.children]
    assert top == ["Announcements"]
    ann = pfr / "Announcements"
    assert sorted(i.subject for i in ann.all()) == ["Public 1", "Public 2"]
    assert [f.name for f in ann.children] == ["Old"]
    with open(os.path.join(sim.corp, "public", "Announcements", "pa1.eml"), "rb") as fh:
        want = fh.read()
    got = [i for i in alice.fetch(list(ann.all()), only_fields=["mime_content", "subject"])
           if i.subject == "Public 1"][0]
    assert got.mime_content == want
    with pytest.raises(ErrorInvalidOperation):
        list(ann.sync_items())
    with pytest.raises(ErrorInvalidOperation):
        list(pfr.sync_hierarchy())
    st, _, root = sim.soap('<m:FindFolder Traversal="Deep"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape>'
                           '</m:FolderShape><m:ParentFolderIds><t:DistinguishedFolderId Id="publicfoldersroot"/>'
                           '</m:ParentFolderIds></m:FindFolder>', imp(ALICE))
    rm = messages(root, "FindFolder")[0]
    assert rm.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidOperation"


# --------------------------------------------------------------------------- errors

def test_impersonation_denied(sim):
    acc = sim.account(BOB, user=NOIMP, pw=NOIMP_PW)
    with pytest.raises(ErrorImpersonateUserDenied):
        acc.inbox.refresh()
    st, _, root = sim.soap('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                           '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
                           imp(BOB), auth=(NOIMP, NOIMP_PW))
    assert st == 500
    code, text, rc, msg, _ = fault_parts(root)
    assert code == "a:ErrorImpersonateUserDenied" and rc == "ErrorImpersonateUserDenied"
    assert text == msg == "The account does not have permission to impersonate the requested user."
    assert root.find("s:Header", NS) is None


def test_nonexistent_mailbox(sim):
    with pytest.raises(ErrorNonExistentMailbox):
        sim.account("ghost@corp.example").inbox.refresh()
    st, hd, root = sim.soap('<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>AllProperties'
                            '</t:BaseShape></m:FolderShape><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/>'
                            '</m:ParentFolderIds></m:FindFolder>',
                            "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>ghost@corp.example"
                            "</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
    assert st == 500 and hd["Content-Type"] == "text/xml; charset=utf-8"
    code, text, rc, _, values = fault_parts(root)
    assert (code, rc) == ("a:ErrorNonExistentMailbox", "ErrorNonExistentMailbox")
    assert text == "The SMTP address has no mailbox associated with it."
    assert values == {"SmtpAddress": "ghost@corp.example"}
    # the ResponseMessage variant: an explicit, unknown Mailbox in a DistinguishedFolderId
    st, _, root = sim.soap('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                           '<m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>'
                           'nobody@corp.example</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>'
                           '</m:FolderIds></m:GetFolder>', imp(ALICE))
    assert st == 200
    assert messages(root, "GetFolder")[0].findtext("m:ResponseCode", namespaces=NS) == "ErrorNonExistentMailbox"


def test_impersonation_by_principal_name_and_denied_without_header_access(sim):
    st, _, root = sim.soap('<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
                           '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
                           "<t:ExchangeImpersonation><t:ConnectingSID><t:PrincipalName>bob@corp.example"
                           "</t:PrincipalName></t:ConnectingSID></t:ExchangeImpersonation>")
    assert st == 200 and root.findtext(".//t:Folder/t:TotalCount", namespaces=NS) == "2"
    # without impersonation, a service account has no rights on another mailbox
    st, _, root = sim.soap('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                           '<m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>'
                           f'{BOB}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:FolderIds>'
                           '</m:GetFolder>')
    assert messages(root, "GetFolder")[0].findtext("m:ResponseCode", namespaces=NS) == "ErrorAccessDenied"


def test_unauthenticated_and_bad_version(sim):
    st, hd, _ = sim.soap("<m:GetFolder/>", auth=None)
    assert st == 401
    www = hd.get_all("WWW-Authenticate")
    assert "NTLM" in www and any(w.startswith("Basic") for w in www) and any(w.startswith("Bearer") for w in www)
    st, _, _ = sim.soap("<m:GetFolder/>", auth=(SVC, "wrong"))
    assert st == 401
    with pytest.raises(UnauthorizedError):
        sim.account(ALICE, pw="wrong").inbox.refresh()
    st, _, root = sim.soap('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                           '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
                           imp(ALICE), version="Exchange2099")
    assert st == 500 and fault_parts(root)[2] == "ErrorInvalidServerVersion"


def test_ews_blocked(sim):
    # org-level EWSEnabled=$false in the fixtures: Exchange Online answers a bare 403
    st, hd, root = sim.soap('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                            '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
                            imp("erin@blocked.example"), auth=("svc@blocked.example", "bp"))
    assert st == 403 and root is None
    acc = sim.account("erin@blocked.example", user="svc@blocked.example", pw="bp")
    with pytest.raises(TransportError) as ei:
        acc.inbox.refresh()
    assert "403" in str(ei.value)
    # the admin toggle, per mailbox and per org
    alice = sim.account(ALICE)
    assert alice.inbox.total_count == 5
    sim.admin("POST", "ews-enabled", {"org": "corp", "mailbox": ALICE, "enabled": False})
    with pytest.raises(TransportError):
        sim.account(ALICE).inbox.refresh()
    assert sim.account(BOB).inbox.total_count == 2
    sim.admin("POST", "ews-enabled", {"org": "corp", "mailbox": ALICE, "enabled": None})
    sim.admin("POST", "ews-enabled", {"org": "corp", "enabled": False})
    with pytest.raises(TransportError):
        sim.account(BOB).inbox.refresh()
    sim.admin("POST", "ews-enabled", {"org": "corp", "enabled": True})
    assert sim.account(ALICE).inbox.total_count == 5
    s = sim.stats()["stats"]
    assert s["blocked"]["erin@blocked.example"]["blocked"] >= 2
    assert s["corp"][ALICE]["blocked"] >= 1 and s["corp"][BOB]["blocked"] >= 1


# --------------------------------------------------------------------------- throttling and faults

BUSY_GETFOLDER = ('<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>'
                  '<t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>')


def test_server_busy_fault_shape_and_exchangelib_backoff(sim):
    sim.admin("POST", "faults", {"kind": "busy", "operation": "GetFolder", "mailbox": ALICE, "count": 1,
                                 "back_off_ms": 1234})
    st, _, root = sim.soap(BUSY_GETFOLDER, imp(ALICE))
    assert st == 500
    code, text, rc, msg, values = fault_parts(root)
    assert (code, rc) == ("a:ErrorServerBusy", "ErrorServerBusy")
    assert text == msg == "The server cannot service this request right now. Try again later."
    assert values == {"BackOffMilliseconds": "1234"}
    fc = root.find("s:Body/s:Fault/faultcode", NS)
    assert fc is not None
    # the fault fired once: the same request now works
    st, _, root = sim.soap(BUSY_GETFOLDER, imp(ALICE))
    assert st == 200
    # exchangelib (fail fast) surfaces ErrorServerBusy with the back-off in seconds
    sim.admin("POST", "faults", {"kind": "busy", "operation": "GetFolder", "mailbox": ALICE, "count": 1,
                                 "back_off_ms": 1500})
    with pytest.raises(ErrorServerBusy) as ei:
        sim.account(ALICE).inbox.refresh()
    assert ei.value.back_off == 1.5
    # ...and with FaultTolerance it backs off for BackOffMilliseconds and retries
    sim.admin("POST", "faults", {"kind": "busy", "operation": "FindItem", "mailbox": ALICE, "count": 2,
                                 "back_off_ms": 50})
    acc = sim.account(ALICE, retry=FaultTolerance(max_wait=30))
    assert len(list(acc.inbox.all())) == 5
    faults = sim.admin("GET", "faults")
    assert [f["fired"] for f in faults] == [1, 1, 2]
    assert sim.stats()["stats"]["corp"][ALICE]["injected_faults"] == 4


def test_server_busy_in_response_message(sim):
    sim.admin("POST", "faults", {"kind": "busy", "shape": "message", "operation": "GetItem", "count": 1,
                                 "back_off_ms": 777})
    alice = sim.account(ALICE)
    ids = [m.id for m in alice.inbox.all().only("id")][:2]
    st, _, root = sim.soap('<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds>'
                           + "".join(f'<t:ItemId Id="{i}"/>' for i in ids) + '</m:ItemIds></m:GetItem>', imp(ALICE))
    assert st == 200
    rms = messages(root, "GetItem")
    assert len(rms) == 2
    for rm in rms:
        assert rm.get("ResponseClass") == "Error"
        assert [c.tag.split("}")[1] for c in rm] == ["MessageText", "ResponseCode", "DescriptiveLinkKey",
                                                     "MessageXml"]
        assert rm.findtext("m:ResponseCode", namespaces=NS) == "ErrorServerBusy"
        v = rm.find("m:MessageXml/t:Value", NS)
        assert (v.get("Name"), v.text) == ("BackOffMilliseconds", "777")
    assert root.find("s:Header/t:ServerVersionInfo", NS) is not None


def test_concurrency_limit(tmp_path):
    sim = Sim(tmp_path, "--max-concurrency", "2")
    try:
        sim.admin("POST", "faults", {"kind": "slow", "delay_ms": 1500, "operation": "GetFolder",
                                     "mailbox": ALICE, "count": 2})
        results = []

        def call():
            results.append(sim.soap(BUSY_GETFOLDER, imp(ALICE))[0])
        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while sim.stats()["stats"].get("corp", {}).get(ALICE, {}).get("in_flight") != 2:
            assert time.time() < deadline, "the two slow requests never got in flight"
        st, _, root = sim.soap(BUSY_GETFOLDER, imp(ALICE))
        # another mailbox has its own budget
        st_bob, _, _ = sim.soap(BUSY_GETFOLDER, imp(BOB))
        for t in threads:
            t.join()
        assert results == [200, 200] and st_bob == 200
        assert st == 500
        code, _, rc, _, values = fault_parts(root)
        assert rc == "ErrorExceededConnectionCount"
        assert values["Policy"] == "MaxConcurrency" and values["MaxConcurrencyLimit"] == "2"
        s = sim.stats()["stats"]["corp"][ALICE]
        assert s["throttled_by_limit"] == 1 and s["max_concurrent"] == 2 and s["in_flight"] == 0
    finally:
        sim.stop()


def test_concurrency_limit_as_server_busy_and_exchangelib_retries(tmp_path):
    sim = Sim(tmp_path, "--max-concurrency", "1", "--concurrency-error", "ErrorServerBusy",
              "--concurrency-backoff-ms", "100")
    try:
        sim.admin("POST", "faults", {"kind": "slow", "delay_ms": 800, "operation": "FindFolder",
                                     "mailbox": ALICE, "count": 1})
        t = threading.Thread(target=lambda: sim.soap(
            '<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
            '<m:ParentFolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderIds></m:FindFolder>',
            imp(ALICE)))
        t.start()
        deadline = time.time() + 10
        while sim.stats()["stats"].get("corp", {}).get(ALICE, {}).get("in_flight") != 1:
            assert time.time() < deadline
        st, _, root = sim.soap(BUSY_GETFOLDER, imp(ALICE))
        assert st == 500 and fault_parts(root)[4] == {"BackOffMilliseconds": "100"}
        # exchangelib with a retry policy backs off and gets through once the slot is free
        acc = sim.account(ALICE, retry=FaultTolerance(max_wait=30))
        assert acc.inbox.total_count == 5
        t.join()
        assert sim.stats()["stats"]["corp"][ALICE]["throttled_by_limit"] >= 1
    finally:
        sim.stop()


def test_injected_http_faults(sim):
    sim.admin("POST", "faults", [{"kind": "status", "status": 503, "operation": "GetFolder", "count": 1,
                                  "retry_after": 2},
                                 {"kind": "soap_fault", "operation": "GetFolder", "count": 1},
                                 {"kind": "reset", "operation": "GetFolder", "count": 1}])
    st, hd, _ = sim.soap(BUSY_GETFOLDER, imp(ALICE))
    assert st == 503 and hd["Retry-After"] == "2"
    st, _, root = sim.soap(BUSY_GETFOLDER, imp(ALICE))
    assert st == 500 and fault_parts(root)[2] == "ErrorInternalServerError"
    with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
        sim.soap(BUSY_GETFOLDER, imp(ALICE))
    st, _, _ = sim.soap(BUSY_GETFOLDER, imp(ALICE))
    assert st == 200
    sim.admin("DELETE", "faults")
    assert sim.admin("GET", "faults") == []


# --------------------------------------------------------------------------- paging

def test_find_folder_deep_paging(sim):
    def page(off):
        st, _, root = sim.soap(
            '<m:FindFolder Traversal="Deep"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
            f'<m:IndexedPageFolderView MaxEntriesReturned="4" Offset="{off}" BasePoint="Beginning"/>'
            '<m:ParentFolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderIds></m:FindFolder>',
            imp(ALICE))
        return root.find(".//m:RootFolder", NS)
    seen, off = [], 0
    while True:
        rf = page(off)
        assert rf.get("TotalItemsInView") == "10"
        seen += [f.findtext("t:DisplayName", namespaces=NS) for f in rf.find("t:Folders", NS)]
        off = int(rf.get("IndexedPagingOffset"))
        if rf.get("IncludesLastItemInRange") == "true":
            break
    assert len(seen) == 10 and len(set(seen)) == 10 and off == 10
    assert "Projects" in seen


def test_find_item_paging_with_exchangelib(sim):
    alice = sim.account(ALICE)
    qs = alice.inbox.all().only("subject")
    qs.page_size = 2
    assert len(list(qs)) == 5
    assert sim.stats()["stats"]["corp"][ALICE]["operations"]["FindItem"] == 3
    st, _, root = sim.soap(
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
        '<m:IndexedPageItemView MaxEntriesReturned="2" Offset="4" BasePoint="Beginning"/>'
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderIds></m:FindItem>', imp(ALICE))
    rf = root.find(".//m:RootFolder", NS)
    assert (rf.get("IndexedPagingOffset"), rf.get("TotalItemsInView"), rf.get("IncludesLastItemInRange")) == \
        ("5", "5", "true")
    assert len(rf.findall("t:Items/t:Message", NS)) == 1


# --------------------------------------------------------------------------- write operations

def test_create_item_and_upload_are_byte_identical(sim):
    alice = sim.account(ALICE)
    export = alice.root / "Top of Information Store" / "Export"
    raw = eml(500, subject="Exported \u00e9t\u00e9".encode("utf-8").decode("latin-1"),
              body="line one\r\n\r\n.leading dot\r\n")
    m = Message(account=alice, folder=export, mime_content=raw)
    m.save()
    assert m.id and m.id.startswith("AAMk")
    back = list(alice.fetch([m], only_fields=["mime_content"]))[0]
    assert back.mime_content == raw
    files = [n for n in os.listdir(os.path.join(sim.alice_mail, "Export")) if n.endswith(".eml")]
    assert len(files) == 1
    with open(os.path.join(sim.alice_mail, "Export", files[0]), "rb") as fh:
        assert fh.read() == raw
    # UploadItems(CreateNew) with the data of ExportItems
    src = list(alice.inbox.all().only("id", "changekey", "subject"))
    data = alice.export(src[:2])
    assert base64.b64decode(data[0]).startswith(b"From: ")
    res = alice.upload([(export, d) for d in data])
    assert len(res) == 2 and all(r[0].startswith("AAMk") for r in res)
    got = {i.subject: i.mime_content for i in alice.fetch(res,
                                                          only_fields=["mime_content", "subject"])}
    for s in src[:2]:
        n = int(s.subject.split()[-1])
        with open(os.path.join(sim.alice_mail, "Inbox", f"m{n}.eml"), "rb") as fh:
            assert got[s.subject] == fh.read()
    # the created items also come through SyncFolderItems
    assert len([c for c, _ in export.sync_items()]) == 3
    assert sim.stats()["stats"]["corp"][ALICE]["items_created"] == 3
    # raw CreateItem answer
    st, _, root = sim.soap(
        '<m:CreateItem MessageDisposition="SaveOnly"><m:SavedItemFolderId><t:DistinguishedFolderId Id="drafts"/>'
        f'</m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{base64.b64encode(raw).decode()}'
        '</t:MimeContent></t:Message></m:Items></m:CreateItem>', imp(ALICE))
    rm = messages(root, "CreateItem")[0]
    assert rm.get("ResponseClass") == "Success"
    assert rm.find("m:Items/t:Message/t:ItemId", NS).get("ChangeKey")
    st, _, root = sim.soap(
        '<m:CreateItem><m:Items><t:Message><t:MimeContent>QQ==</t:MimeContent></t:Message></m:Items></m:CreateItem>',
        imp(ALICE))
    assert messages(root, "CreateItem")[0].findtext("m:ResponseCode", namespaces=NS) == \
        "ErrorMessageDispositionRequired"


def test_export_destination_folder_mime_and_message_id(sim):
    """What an export into Exchange does, checked with exchangelib: create a folder (CreateFolder),
    find it by name (FindFolder with a DisplayName restriction), upload MIME with PR_MESSAGE_FLAGS and
    the delivery time (CreateItem + ExtendedProperty), find it by Message-ID (FindItem with an
    InternetMessageId restriction), read it back byte for byte; quota and read-only limits."""
    from exchangelib.extended_properties import ExtendedProperty
    from exchangelib.folders import Folder

    class MessageFlags(ExtendedProperty):
        property_tag = 0x0E07
        property_type = "Integer"

    class DeliveryTime(ExtendedProperty):
        property_tag = 0x0E06
        property_type = "SystemTime"

    Message.register("mv_flags", MessageFlags)
    Message.register("mv_delivery", DeliveryTime)
    try:
        alice = sim.account(ALICE)
        top = alice.root / "Top of Information Store"
        dest = Folder(parent=top, name="Archive Export")
        dest.save()
        assert dest.id
        # FindFolder with a restriction on the display name (compared without regard to case)
        st, _, root = sim.soap(
            '<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape>'
            '<t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/></t:AdditionalProperties>'
            '</m:FolderShape><m:Restriction><t:IsEqualTo><t:FieldURI FieldURI="folder:DisplayName"/>'
            '<t:FieldURIOrConstant><t:Constant Value="ARCHIVE export"/></t:FieldURIOrConstant></t:IsEqualTo>'
            '</m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderIds>'
            '</m:FindFolder>', imp(ALICE))
        folders = root.findall(".//t:Folders/t:Folder", NS)
        assert [f.findtext("t:DisplayName", namespaces=NS) for f in folders] == ["Archive Export"]
        assert folders[0].find("t:FolderId", NS).get("Id") == dest.id
        # a second folder of that name is refused
        st, _, root = sim.soap(
            '<m:CreateFolder><m:ParentFolderId><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderId>'
            '<m:Folders><t:Folder><t:DisplayName>Archive Export</t:DisplayName></t:Folder></m:Folders>'
            '</m:CreateFolder>', imp(ALICE))
        assert messages(root, "CreateFolder")[0].findtext("m:ResponseCode", namespaces=NS) == "ErrorFolderExists"
        # MIME with the MAPI properties an export sets
        raw = eml(700, subject="Exported")
        when = datetime.datetime(2024, 3, 5, 7, 9, 11, tzinfo=datetime.timezone.utc)
        m = Message(account=alice, folder=dest, mime_content=raw, mv_flags=1,
                    mv_delivery=EWSDateTime.from_datetime(when))
        m.save()
        back = list(alice.fetch([m], only_fields=["mime_content", "is_read", "is_draft", "datetime_received",
                                                  "mv_flags"]))[0]
        assert back.mime_content == raw
        assert back.is_read and not back.is_draft and back.mv_flags == 1
        assert back.datetime_received == when
        # FindItem with a restriction on the Message-ID
        msgid = "<msg700@sender.example>"
        assert [i.id for i in dest.filter(message_id=msgid).only("id")] == [m.id]
        assert list(dest.filter(message_id="<nothing@corp.example>")) == []
        # without PR_MESSAGE_FLAGS Exchange shows a message made from MIME as an unsent draft
        d = Message(account=alice, folder=dest, mime_content=eml(701))
        d.save()
        assert list(alice.fetch([d], only_fields=["is_draft"]))[0].is_draft
        # per-mailbox limits: quota, read-only
        sim.admin("POST", "mailbox-limits", {"org": "corp", "mailbox": ALICE, "quota_bytes": 10})
        with pytest.raises(ErrorQuotaExceeded):
            Message(account=alice, folder=dest, mime_content=eml(702)).save()
        sim.admin("POST", "mailbox-limits", {"org": "corp", "mailbox": ALICE, "read_only": True})
        with pytest.raises(ErrorAccessDenied):
            Folder(parent=top, name="Another").save()
        sim.admin("POST", "mailbox-limits", {"org": "corp", "mailbox": ALICE})
        Folder(parent=top, name="Another").save()
    finally:
        Message.deregister("mv_flags")
        Message.deregister("mv_delivery")


def test_delete_item(sim):
    alice = sim.account(ALICE)
    items = {i.subject: i for i in alice.inbox.all().only("id", "changekey", "subject")}
    ids = {k: v.id for k, v in items.items()}
    items["Message 1"].delete()                       # HardDelete
    items["Message 2"].move_to_trash()                # MoveToDeletedItems
    items["Message 3"].soft_delete()                  # SoftDelete
    left = sorted(os.listdir(os.path.join(sim.alice_mail, "Inbox")))
    assert [n for n in left if n.endswith(".eml")] == ["m4.eml", "m5.eml"]
    assert [i.subject for i in alice.trash.all()] == ["Message 2"]
    alice.inbox.refresh()
    assert alice.inbox.total_count == 2
    assert [i.subject for i in alice.recoverable_items_deletions.all()] == ["Message 3"]
    st, _, root = sim.soap(f'<m:DeleteItem DeleteType="HardDelete"><m:ItemIds><t:ItemId Id="{ids["Message 1"]}"/>'
                           '</m:ItemIds></m:DeleteItem>', imp(ALICE))
    assert messages(root, "DeleteItem")[0].findtext("m:ResponseCode", namespaces=NS) == "ErrorItemNotFound"
    st, _, root = sim.soap(f'<m:DeleteItem DeleteType="Shred"><m:ItemIds><t:ItemId Id="{ids["Message 4"]}"/>'
                           '</m:ItemIds></m:DeleteItem>', imp(ALICE))
    assert st == 500 and fault_parts(root)[2] == "ErrorSchemaValidation"
    assert sim.stats()["stats"]["corp"][ALICE]["items_deleted"] == 3


# --------------------------------------------------------------------------- wire details

def test_response_envelope_and_element_order(sim):
    alice = sim.account(ALICE)
    iid = alice.inbox.all().only("id")[0].id
    st, hd, root = sim.soap('<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape>'
                            '<t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape><m:ItemIds>'
                            f'<t:ItemId Id="{iid}"/><t:ItemId Id="AAMkAAAA"/></m:ItemIds></m:GetItem>', imp(ALICE))
    assert st == 200 and hd["Content-Type"] == "text/xml; charset=utf-8"
    svi = root.find("s:Header/t:ServerVersionInfo", NS)
    assert (svi.get("MajorVersion"), svi.get("MinorVersion"), svi.get("Version")) == ("15", "2", "V2017_07_11")
    ok, bad = messages(root, "GetItem")
    msg = ok.find("m:Items/t:Message", NS)
    order = [c.tag.split("}")[1] for c in msg]
    assert order[:4] == ["MimeContent", "ItemId", "ParentFolderId", "ItemClass"]
    assert order.index("Subject") < order.index("DateTimeReceived") < order.index("Size")
    assert order.index("Sender") < order.index("ToRecipients") < order.index("From") < order.index("IsRead")
    assert bad.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidIdMalformed"
    assert bad.findtext("m:MessageText", namespaces=NS) == "Id is malformed."
    # no RequestServerVersion is accepted too
    st, _, root = sim.soap(BUSY_GETFOLDER, imp(ALICE), version=None)
    assert st == 200


def test_anchor_mailbox_counts(sim):
    sim.soap(BUSY_GETFOLDER, imp(BOB))
    sim.soap(BUSY_GETFOLDER, imp(BOB), extra_headers={"X-AnchorMailbox": BOB})
    sim.soap(BUSY_GETFOLDER, imp(BOB), extra_headers={"X-AnchorMailbox": ALICE})
    s = sim.stats()["stats"]["corp"][BOB]
    assert (s["anchor_mailbox_sent"], s["anchor_mailbox_missing"], s["anchor_mailbox_mismatch"]) == (2, 1, 1)
    log = sim.admin("GET", "log")
    assert [e["anchor"] for e in log if e["mailbox"] == BOB] == [None, BOB, ALICE]


def test_sigterm_exits_cleanly(sim):
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(5) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=1).close()


# --------------------------------------------------------------------------- NTLM ([MS-NLMP], NTLMv2)

NTLM_UNICODE, NTLM_OEM, NTLM_REQUEST_TARGET, NTLM_NTLM = 0x1, 0x2, 0x4, 0x200
NTLM_ALWAYS_SIGN, NTLM_TARGET_TYPE_DOMAIN, NTLM_ESS, NTLM_TARGET_INFO = 0x8000, 0x10000, 0x80000, 0x800000
FILETIME_EPOCH = 11644473600
XML_CT = "text/xml; charset=utf-8"
INBOX_OF_ALICE = (f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}" xmlns:m="{M}" '
                  f'xmlns:t="{T}"><soap:Header><t:RequestServerVersion Version="Exchange2016"/>'
                  f'{imp(ALICE)}</soap:Header><soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default'
                  f'</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/>'
                  f'</m:FolderIds></m:GetFolder></soap:Body></soap:Envelope>').encode()


class KeepAlive:
    """One HTTP/1.1 connection: NTLM authenticates connections, so every step must use the same one."""

    def __init__(self, sim):
        self.c = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
        self.sock = None

    def post(self, authz=None, body=INBOX_OF_ALICE):
        h = {"Content-Type": XML_CT}
        if authz:
            h["Authorization"] = authz
        self.c.request("POST", "/EWS/Exchange.asmx", body=body, headers=h)
        r = self.c.getresponse()
        data = r.read()
        assert not r.will_close, "the simulator closed the connection"
        if self.sock is None:
            self.sock = self.c.sock
        assert self.c.sock is self.sock, "http.client had to open a new connection"
        return r, data

    def close(self):
        self.c.close()


def b64s(data):
    return base64.b64encode(data).decode()


def ntlm_token(r):
    """The NTLM message of a 401's single `WWW-Authenticate: NTLM <base64>` header."""
    www = r.headers.get_all("WWW-Authenticate")
    assert len(www) == 1 and www[0].startswith("NTLM "), www
    return base64.b64decode(www[0][5:])


def parse_challenge(msg):
    """CHALLENGE_MESSAGE ([MS-NLMP] 2.2.1.2) -> dict; AV_PAIRs (2.2.2.1) as an ordered list."""
    assert msg[:8] == b"NTLMSSP\0"
    mtype, tlen, _, toff, flags = struct.unpack_from("<IHHII", msg, 8)
    ilen, _, ioff = struct.unpack_from("<HHI", msg, 40)
    assert toff + tlen <= len(msg) and ioff + ilen <= len(msg)
    info, pairs, pos = msg[ioff:ioff + ilen], [], 0
    while True:
        av_id, n = struct.unpack_from("<HH", info, pos)
        pairs.append((av_id, info[pos + 4:pos + 4 + n]))
        pos += 4 + n
        if av_id == 0:
            break
    assert pos == len(info), "bytes after MsvAvEOL"
    return {"type": mtype, "flags": flags, "server_challenge": msg[24:32], "target": msg[toff:toff + tlen],
            "info": info, "pairs": pairs}


def ntlm_client(user=SVC, pw=SVC_PW):
    return spnego.client(user, pw, hostname="127.0.0.1", service="HTTP", protocol="ntlm")


def hand_negotiate():
    """A minimal NEGOTIATE_MESSAGE (2.2.1.1) as libcurl sends it: 32 bytes, no Version."""
    flags = NTLM_UNICODE | NTLM_REQUEST_TARGET | NTLM_NTLM | NTLM_ALWAYS_SIGN | NTLM_ESS
    return b"NTLMSSP\0" + struct.pack("<II", 1, flags) + struct.pack("<HHIHHI", 0, 0, 32, 0, 0, 32)


def hand_authenticate(ch, user, domain, password, *, hash_domain=None, when=None, lm=b"\0" * 24, nt=None):
    """An AUTHENTICATE_MESSAGE (2.2.1.3) with an NTLMv2 response (3.3.2) built here, independently of the
    simulator: NT hash from pyspnego's own MD4, HMAC-MD5 from the standard library, no MIC."""
    from spnego._ntlm_raw.crypto import ntowfv1
    if nt is None:
        key = hmac.new(ntowfv1(password), (user.upper() + (domain if hash_domain is None else hash_domain))
                       .encode("utf-16-le"), "md5").digest()
        ts = int(((time.time() if when is None else when) + FILETIME_EPOCH) * 10000000)
        blob = b"\x01\x01" + b"\0" * 6 + struct.pack("<Q", ts) + os.urandom(8) + b"\0" * 4 + ch["info"] + b"\0" * 4
        nt = hmac.new(key, ch["server_challenge"] + blob, "md5").digest() + blob
    flags = NTLM_UNICODE | NTLM_NTLM | NTLM_ALWAYS_SIGN | NTLM_ESS | NTLM_TARGET_INFO
    fields = [lm, nt, domain.encode("utf-16-le"), user.encode("utf-16-le"), "TESTHOST".encode("utf-16-le"), b""]
    head, pos, payload = bytearray(b"NTLMSSP\0" + struct.pack("<I", 3)), 64, b""
    for f in fields:
        head += struct.pack("<HHI", len(f), len(f), pos)
        pos += len(f)
        payload += f
    return bytes(head + struct.pack("<I", flags) + payload)


def test_ntlm_crypto_known_answers():
    """The simulator's MD4 against RFC 1320's test suite, and NTOWFv2 / NTProofStr / SessionBaseKey against
    the worked NTLMv2 example of [MS-NLMP] 4.2.4 (user "User", domain "Domain", password "Password")."""
    sys.path.insert(0, HERE)
    try:
        import ewssim
    finally:
        sys.path.remove(HERE)
    for msg, digest in [(b"", "31d6cfe0d16ae931b73c59d7e0c089c0"), (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
                        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
                        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
                        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
                        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536")]:
        assert ewssim.md4(msg).hex() == digest
    assert ewssim.nt_hash("Password").hex() == "a4f49c406510bdcab6824ee7c30fd852"
    key = ewssim.ntowfv2("Password", "User", "Domain")
    assert key.hex() == "0c868a403bfd7a93a3001ef22ef02e3f"
    info = (struct.pack("<HH", 2, 12) + "Domain".encode("utf-16-le") + struct.pack("<HH", 1, 12) +
            "Server".encode("utf-16-le") + b"\0" * 4)
    temp = b"\x01\x01" + b"\0" * 6 + b"\0" * 8 + b"\xaa" * 8 + b"\0" * 4 + info + b"\0" * 4
    proof = ewssim.hmac_md5(key, bytes.fromhex("0123456789abcdef") + temp)
    assert proof.hex() == "68cd0ab851e51c96aabc927bebef6a1c"
    assert ewssim.hmac_md5(key, proof).hex() == "8de40ccadbc14a82f15cb0ad0de95ca3"
    assert ewssim.rc4(b"Key", b"Plaintext").hex() == "bbf316e8d940af0ad3"


def test_ntlm_with_exchangelib(sim):
    # a service account with impersonation, over requests_ntlm/pyspnego (NTLMv2 with a MIC)
    alice = sim.account(ALICE, auth_type=NTLM)
    assert alice.inbox.total_count == 5
    fetched = list(alice.fetch(list(alice.inbox.all().only("id", "changekey")),
                               only_fields=["mime_content", "subject"]))
    assert len(fetched) == 5
    for m in fetched:
        with open(os.path.join(sim.alice_mail, "Inbox", f"m{int(m.subject.split()[-1])}.eml"), "rb") as fh:
            assert m.mime_content == fh.read()
    # a mailbox logging on with its own (non-ASCII) password: UTF-16LE in the NT hash
    bob = sim.account(BOB, user=BOB, pw=BOB_PW, auth_type=NTLM, access_type=DELEGATE)
    assert sorted(m.subject for m in bob.inbox.all()) == ["Message 60", "Message 61"]
    g = sim.stats()["global"]
    assert g["ntlm_attempts"] >= 2 and g["ntlm_ok"] == g["ntlm_attempts"] and "ntlm_failed" not in g
    # requests after the handshake ride on the authenticated connection without an Authorization header
    assert g["ntlm_connection_reuse"] >= 1
    log = sim.admin("GET", "log")
    assert {e["auth"] for e in log} == {"ntlm"}
    assert {e["caller"] for e in log} == {SVC, BOB}


def test_ntlm_wrong_password_with_exchangelib(sim):
    with pytest.raises(UnauthorizedError):
        sim.account(ALICE, pw="wrong", auth_type=NTLM).inbox.refresh()
    g = sim.stats()["global"]
    assert g["ntlm_reject_bad_response"] >= 1 and g["ntlm_failed"] >= 1 and "ntlm_ok" not in g


def test_ntlm_raw_handshake_challenge_fields_and_connection_identity(sim):
    c = KeepAlive(sim)
    r, _ = c.post()
    assert r.status == 401 and "NTLM" in r.headers.get_all("WWW-Authenticate")
    cli = ntlm_client()
    t1 = cli.step()
    assert t1[:8] == b"NTLMSSP\0" and struct.unpack_from("<I", t1, 8)[0] == 1
    cflags = struct.unpack_from("<I", t1, 12)[0]
    # NEGOTIATE -> 401 with the CHALLENGE_MESSAGE, a body with Content-Length, the connection kept open
    r, body = c.post("NTLM " + b64s(t1))
    assert r.status == 401 and body and int(r.headers["Content-Length"]) == len(body)
    t2 = ntlm_token(r)
    ch = parse_challenge(t2)
    assert ch["type"] == 2 and len(ch["server_challenge"]) == 8 and ch["server_challenge"] != b"\0" * 8
    flags = ch["flags"]
    assert flags & (NTLM_UNICODE | NTLM_NTLM | NTLM_REQUEST_TARGET | NTLM_ESS | NTLM_TARGET_INFO) == \
        NTLM_UNICODE | NTLM_NTLM | NTLM_REQUEST_TARGET | NTLM_ESS | NTLM_TARGET_INFO
    assert flags & NTLM_OEM == 0                         # Unicode chosen when the client offers both
    assert flags & ~(cflags | NTLM_TARGET_INFO | NTLM_TARGET_TYPE_DOMAIN) == 0   # nothing the client did not ask
    assert ch["target"] == "EWSSIM".encode("utf-16-le") and flags & NTLM_TARGET_TYPE_DOMAIN
    ids = [i for i, _ in ch["pairs"]]
    values = dict(ch["pairs"])
    assert ids[-1] == 0 and values[0] == b"" and {1, 2, 3, 4, 7} <= set(ids)
    assert values[2].decode("utf-16-le") == "EWSSIM" and values[1].decode("utf-16-le") == "EXCH01"
    assert values[4].decode("utf-16-le") == "ewssim.local"
    assert values[3].decode("utf-16-le") == "exch01.ewssim.local"
    assert abs(struct.unpack("<Q", values[7])[0] / 1e7 - FILETIME_EPOCH - time.time()) < 300
    # AUTHENTICATE -> the request itself is answered
    t3 = cli.step(t2)
    assert struct.unpack_from("<I", t3, 8)[0] == 3
    r, body = c.post("NTLM " + b64s(t3))
    assert r.status == 200
    assert messages(ET.fromstring(body), "GetFolder")[0].get("ResponseClass") == "Success"
    # the connection is authenticated: later requests on it need no header
    for _ in range(2):
        r, body = c.post()
        assert r.status == 200 and messages(ET.fromstring(body), "GetFolder")[0].findtext(
            "m:Folders/t:Folder/t:TotalCount", namespaces=NS) == "5"
    # a challenge is good once: a replayed AUTHENTICATE_MESSAGE fails and unauthenticates the connection
    r, _ = c.post("NTLM " + b64s(t3))
    assert r.status == 401
    r, _ = c.post()
    assert r.status == 401
    c.close()
    # a new connection starts unauthenticated
    c2 = KeepAlive(sim)
    r, _ = c2.post()
    assert r.status == 401
    c2.close()
    g = sim.stats()["global"]
    assert (g["ntlm_attempts"], g["ntlm_ok"], g["ntlm_connection_reuse"], g["ntlm_reject_no_challenge"]) == \
        (1, 1, 2, 1)


def test_ntlm_mic_is_checked_and_challenges_are_fresh(sim):
    c = KeepAlive(sim)
    cli = ntlm_client()
    r, _ = c.post("NTLM " + b64s(cli.step()))
    t2 = ntlm_token(r)
    t3 = bytearray(cli.step(t2))
    # pyspnego sets MsvAvFlags bit 0x2 (the challenge has MsvAvTimestamp) and puts the MIC at offset 72
    t3[72] ^= 0x01
    r, _ = c.post("NTLM " + b64s(bytes(t3)))
    assert r.status == 401
    # a new handshake on the same connection gets a new server challenge and succeeds
    cli = ntlm_client()
    r, _ = c.post("NTLM " + b64s(cli.step()))
    t2b = ntlm_token(r)
    assert parse_challenge(t2b)["server_challenge"] != parse_challenge(t2)["server_challenge"]
    r, _ = c.post("NTLM " + b64s(cli.step(t2b)))
    assert r.status == 200
    c.close()
    g = sim.stats()["global"]
    assert g["ntlm_reject_bad_mic"] == 1 and g["ntlm_ok"] == 1


def test_ntlm_rejects_ntlmv1(sim, monkeypatch):
    # pyspnego with LmCompatibilityLevel 1 sends LM + NTLMv1 (24-byte) responses: right password, refused
    monkeypatch.setenv("LM_COMPAT_LEVEL", "1")
    c = KeepAlive(sim)
    cli = ntlm_client()
    r, _ = c.post("NTLM " + b64s(cli.step()))
    t3 = cli.step(ntlm_token(r))
    assert struct.unpack_from("<H", t3, 20)[0] == 24            # NtChallengeResponseLen: NTLMv1
    r, _ = c.post("NTLM " + b64s(t3))
    assert r.status == 401
    c.close()
    g = sim.stats()["global"]
    assert g["ntlm_reject_ntlmv1"] == 1 and "ntlm_ok" not in g


def test_ntlm_hand_built_exchange(sim):
    def attempt(**kw):
        c = KeepAlive(sim)
        r, _ = c.post("NTLM " + b64s(hand_negotiate()))
        assert r.status == 401
        ch = parse_challenge(ntlm_token(r))
        args = dict(user=SVC, domain="CORP", password=SVC_PW)
        args.update(kw)
        r, body = c.post("NTLM " + b64s(hand_authenticate(ch, **args)))
        c.close()
        return r.status
    assert attempt() == 200                                       # NTLMv2 with the domain the client sent
    assert attempt(user=SVC.upper()) == 200                       # user names match case-insensitively
    assert attempt(hash_domain="") == 200                         # "clients which incorrectly use NIL for UserDom"
    assert attempt(password="wrong") == 401
    assert attempt(hash_domain="OTHER") == 401
    assert attempt(when=time.time() - 7200) == 401                # older than MSV1_0_MAX_NTLM3_LIFE (30 min)
    assert attempt(nt=b"") == 401                                 # LM only
    assert attempt(user="", domain="", nt=b"", lm=b"\0") == 401   # anonymous
    assert attempt(user="nobody@corp.example") == 401
    g = sim.stats()["global"]
    assert g["ntlm_ok"] == 3
    assert (g["ntlm_reject_bad_response"], g["ntlm_reject_stale"], g["ntlm_reject_ntlmv1"],
            g["ntlm_reject_anonymous"]) == (3, 1, 1, 1)
    assert g["ntlm_failed"] == 6
