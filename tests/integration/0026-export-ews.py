"""0026: export into an Exchange mailbox through EWS (tests/ewssim): byte-exact, read state and
dates kept, folder tree or flat, never duplicated, clear errors.

A mailbox archived from Dovecot is exported with a service account (ApplicationImpersonation)
into an Exchange mailbox under a root folder with its folder structure: every item, read back
with exchangelib (an independent client) as MimeContent, equals the archived bytes (`mailvault
get`) in the right folder, is not a draft, is read exactly when \\Seen was archived and was
received at its INTERNALDATE. Exchange is busy once (BackOffMilliseconds obeyed). A second run
creates nothing; an item deleted by hand is created again, once. A flat export into a root
where one archived message was already put by hand (same Message-ID) creates every other
distinct message once and that one not again. Exchange Online with an app (OAuth) gets one
folder of the archive. An export cancelled while Exchange is slow goes on with the next run
without a second copy. A full mailbox (ErrorQuotaExceeded) fails the
export with the cause named in `mailvault status` and a non-zero exit of `export --wait`, as do
a mailbox the account may not write into (ErrorAccessDenied) and one that does not exist."""
import datetime
import hashlib

from mvtest import *

from exchangelib import BASIC, IMPERSONATION, Account, Build, Configuration, Credentials, FailFast, Message, Version
from exchangelib.folders import Folder

t = f"eews-{SUFFIX}"
src = f"ria-{SUFFIX}"
seed(src, "pw-r", 30, folders="INBOX,Sent,Projects", seed=61, duplicates=2)
add_tenant(t)
add_profile(t, "imap", [(src, "pw-r")])

org = f"xorg-{SUFFIX}"
svc, svc_pw = "svc-export@corp.example", f"svc-pw-{SUFFIX}"
erin, fred, gil, ian = "erin@corp.example", "fred@corp.example", "gil@corp.example", "ian@corp.example"
fx, _ = ews_fixture(org, {"kind": "onprem", "accounts": {svc: {"password": svc_pw, "impersonation": True}}},
                    {mb: {"mail": {"Inbox": 1}} for mb in (erin, fred, gil, ian)})

o365, tid, cid, app_secret = f"contoso-{SUFFIX}", f"7e1d0c2a-{SUFFIX}", "c0ffee00-0000-4000-8000-0000000000e1", \
    f"app-secret-{SUFFIX}"
hal = "hal@contoso.example"
ews_fixture(o365, {"kind": "m365", "tenant_id": tid, "apps": {cid: {"secret": app_secret, "full_access_as_app": True}}},
            {hal: {"mail": {"Inbox": 1}}}, base=fx)


def account(sim, smtp):
    cfg = Configuration(service_endpoint=sim.ews_url, credentials=Credentials(svc, svc_pw), auth_type=BASIC,
                        version=Version(build=Build(15, 2, 1544, 4), api_version="Exchange2016"),
                        retry_policy=FailFast())
    return Account(smtp, config=cfg, autodiscover=False, access_type=IMPERSONATION)


def view(acc, root):
    """{(folder below root, sha256): (is_read, is_draft, datetime_received)} and the item count."""
    top = acc.root / "Top of Information Store" / root
    out, n = {}, 0
    for f in [top] + list(top.walk()):
        rel = f.absolute[len(top.absolute):].lstrip("/")
        items = list(f.all().only("id", "changekey"))
        for m in acc.fetch(items, only_fields=["mime_content", "is_read", "is_draft", "datetime_received"]):
            out[(rel, hashlib.sha256(m.mime_content).hexdigest())] = (m.is_read, m.is_draft, m.datetime_received)
            n += 1
    return out, n


def export_profile(name, mailbox, **dest):
    doc = {"name": name, "type": "export",
           "export": {"mailbox": src, "destination": {"type": "ews", "url": sim.ews_url, "username": svc,
                                                       "password": svc_pw, "mailbox": mailbox, **dest}}}
    return profile_file(name, doc)


def created(sim, mb):
    return sim.full_stats()["stats"][org].get(mb, {}).get("items_created", 0)


with EwsSim(fx) as sim, Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=9):
    run(t, "imap")
    recs = index(t, src)
    want = {}
    for r in recs:
        raw = cli_bytes("get", "--tenant", t, r["hash"])
        check(hashlib.sha256(raw).hexdigest() == r["hash"], f"mailvault get {r['hash'][:12]}: the archived bytes")
        idate = datetime.datetime.fromtimestamp(r["internaldate"], datetime.timezone.utc)
        want[(r["folder"], r["hash"])] = ("\\Seen" in r["flags"], False, idate)
    check(len(want) > 20 and len({h for _, h in want}) < len(want),
          f"the archive has {len(want)} (folder, message) pairs, some messages in two folders")

    # 1. tree export under "Restored", in chunks, Exchange busy once
    f = export_profile("to-erin", erin, root="Restored")
    cli("profile", "add", "--tenant", t, "--file", f)
    shown = cli("profile", "show", "--tenant", t, "to-erin").stdout
    check(svc_pw not in shown and '"type": "ews"' in shown and erin in shown,
          "the stored profile names the destination and holds no password")
    test = cli("profile", "test", "--tenant", t, "to-erin").stdout
    check(test.startswith("OK") and erin in test, f"profile test reads the destination mailbox: {test.strip()}")
    sim.post("/_sim/faults", {"kind": "busy", "operation": "CreateItem", "mailbox": erin, "back_off_ms": 300,
                              "count": 1})
    run(t, "to-erin")
    acc = account(sim, erin)
    got, n = view(acc, "Restored")
    check(n == len(want), f"one item per (folder, message) ({n} of {len(want)})")
    check(set(got) == set(want), "every message in its folder under Restored, byte for byte as archived")
    check(all(got[k][:2] == want[k][:2] for k in want), "read exactly when \\Seen was archived, never a draft")
    check(all(got[k][2] == want[k][2] for k in want), "received at the archived INTERNALDATE")
    m = export_state(t, "to-erin")
    check(m["state"] == "done" and m["messages"] == len(want) and m["chunk"] >= 3,
          f"created in chunks ({m['messages']} messages, {m['chunk'] + 1} chunks)")
    check(m.get("throttled", 0) >= 1, f"ErrorServerBusy was waited out ({m.get('throttled')})")
    check(len(list(acc.inbox.all())) == 1, "the mailbox's own mail is untouched")

    # 2. again: nothing new
    before = created(sim, erin)
    run(t, "to-erin")
    m = export_state(t, "to-erin")
    check(m["messages"] == 0 and m["deduplicated"] == len(want) and created(sim, erin) == before,
          f"a second run creates nothing ({m['messages']} created, {m['deduplicated']} found in place)")

    # 3. an item deleted by hand comes back, once
    top = acc.root / "Top of Information Store" / "Restored"
    inbox = top / "INBOX"
    victim = list(inbox.all().only("id", "changekey"))[0]
    res = acc.bulk_delete(ids=[victim], delete_type="HardDelete")
    check(res == [True], f"an item deleted by hand: {res}")
    _, n3 = view(acc, "Restored")
    check(n3 == n - 1, "one item deleted by hand")
    run(t, "to-erin")
    got4, n4 = view(acc, "Restored")
    check(n4 == n and set(got4) == set(want) and created(sim, erin) == before + 1,
          f"it was created again, once ({n4} items)")

    # 4. flat, with one message already put there by hand (same Message-ID)
    facc = account(sim, fred)
    flat = Folder(parent=facc.root / "Top of Information Store", name="Flat")
    flat.save()
    one = sorted(want)[0][1]
    Message(account=facc, folder=flat, mime_content=cli_bytes("get", "--tenant", t, one)).save()
    f = export_profile("to-fred", fred, root="Flat", layout="flat")
    cli("export", "--tenant", t, "--file", f, "--wait")
    got5, n5 = view(facc, "Flat")
    distinct = {h for _, h in want}
    check({h for _, h in got5} == distinct and n5 == len(distinct),
          f"flat: each distinct message once, the one put by hand not again ({n5} of {len(distinct)})")
    check(created(sim, fred) == len(distinct), f"{len(distinct) - 1} created by the export, 1 by hand")

    # 5. cancelled while Exchange is slow, then run again: the rest, every message once
    sim.post("/_sim/faults", {"kind": "slow", "operation": "CreateItem", "mailbox": ian, "delay_ms": 150})
    f = export_profile("to-ian", ian)
    cli("profile", "add", "--tenant", t, "--file", f)
    cli("run", "--tenant", t, "--profile", "to-ian")
    wait_for(lambda: created(sim, ian) >= 3, "the export to be creating items")
    r = cli("cancel", "--tenant", t, "--profile", "to-ian")
    check("1 mailbox" in r.stdout, f"cancel requested: {r.stdout.strip()}")
    m = wait_for(lambda: (lambda x: x if x["state"] == "cancelled" else None)(
        export_state(t, "to-ian")), "the export to be cancelled", timeout=60)
    part = created(sim, ian)
    check(part < len(want), f"stopped part-way ({part} of {len(want)} created)")
    run(t, "to-ian")
    got6, n6 = view(account(sim, ian), "Archive Export")
    check(set(got6) == set(want) and n6 == len(want) and created(sim, ian) == len(want),
          f"the next run created the rest, every message once ({n6} items, {created(sim, ian)} created)")

    # 6. Exchange Online with an app (OAuth client credentials), one folder of the archive; what
    # the simulator stored is compared file by file
    doc = {"name": "to-hal", "type": "export",
           "export": {"mailbox": src, "folder": "Projects",
                      "destination": {"type": "ews", "auth": "oauth", "tenant_id": tid, "client_id": cid,
                                      "client_secret": app_secret, "login_base": sim.url, "url": sim.ews_url,
                                      "mailbox": hal}}}
    f = profile_file("to-hal", doc)
    cli("export", "--tenant", t, "--file", f, "--wait")
    check(app_secret not in cli("profile", "show", "--tenant", t, "to-hal").stdout, "no client secret stored")
    d = os.path.join(fx, o365, "mailboxes", hal, "mail", "Archive Export", "Projects")
    stored = {hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
              for n in os.listdir(d) if ".eml" in n}   # a read message's file ends in ":2,S"
    check(stored == {h for fo, h in want if fo == "Projects"} and len(stored) > 1,
          f"oauth: the Projects folder under Archive Export, byte for byte ({len(stored)} messages)")

    # 7. a full mailbox
    sim.post("/_sim/mailbox-limits", {"org": org, "mailbox": gil, "quota_bytes": 20000})
    f = export_profile("to-gil", gil)
    r = cli("export", "--tenant", t, "--file", f, "--wait", expect=None)
    m = export_state(t, "to-gil")
    check(r.returncode != 0 and m["state"] == "failed" and "is full" in m["error"] and gil in m["error"]
          and "ErrorQuotaExceeded" in m["error"], f"a full mailbox fails the export clearly: {m['error']!r}")

    # 8. a mailbox the account may not write into, and one that does not exist
    sim.post("/_sim/mailbox-limits", {"org": org, "mailbox": gil, "read_only": True})
    r = run(t, "to-gil", expect=None)
    m = export_state(t, "to-gil")
    check(r.returncode != 0 and m["state"] == "failed" and "ErrorAccessDenied" in m["error"] and gil in m["error"]
          and "may not write" in m["error"], f"a refused mailbox fails the export clearly: {m['error']!r}")
    f = export_profile("to-nobody", "nobody@corp.example")
    r = cli("export", "--tenant", t, "--file", f, "--wait", expect=None)
    m = export_state(t, "to-nobody")
    check(r.returncode != 0 and m["state"] == "failed" and "ErrorNonExistentMailbox" in m["error"]
          and "export.destination.mailbox" in m["error"], f"a mailbox that does not exist: {m['error']!r}")
print("1 passed, 0 failed")
