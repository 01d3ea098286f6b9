"""0018: Exchange on-premises through EWS (tests/ewssim), end to end through Kafka, the worker,
Redis and the store.

A service account with ApplicationImpersonation archives three mailboxes (one of them with an
in-place archive, kept under "Archive Mailbox/") and the organisation's public folders (kept
under "Public Folders/" of their own archive): every stored object equals its .eml file byte
for byte, calendar items, contacts and tasks are skipped and counted, every request named its
mailbox (X-AnchorMailbox) and no mailbox ever saw more requests at once than allowed. A second
run fetches nothing (SyncState); then a new message, a deleted one and a moved one: only the new
and the moved one are fetched, the removal is counted, nothing archived is deleted. Injected
ErrorServerBusy answers are waited out. Invalidated SyncStates re-read the folders without a
duplicate in the index. The mailbox list can come from a CSV file."""
import hashlib
import shutil

from mvtest import *

org = f"corp-{SUFFIX}"
pw = f"svc-pw-{SUFFIX}"
svc = "svc-archive@corp.example"
boxes = {
    "ann@corp.example": {"mail": {"Inbox": 14, "SentItems": 6, "Inbox/Projects": 5},
                         "archive": {"Inbox": 4, "2019": 3},
                         "extra": {"mail/Calendar/meeting.ics": b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\n"
                                   b"SUMMARY:standup\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
                                   "mail/Contacts/bob.vcf": b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Bob\r\nEND:VCARD\r\n",
                                   "mail/Tasks/t1.item.json": b'{"item_class": "IPM.Task", "subject": "todo"}'}},
    "ben@corp.example": {"mail": {"Inbox": 9, "Archive": 4}},
    "cy@corp.example": {"mail": {"Inbox": 130}},  # more than one SyncFolderItems page
}
fx, files = ews_fixture(org, {"kind": "onprem", "accounts": {svc: {"password": pw, "impersonation": True}}},
                        boxes, public={"Announcements": 5, "Announcements/2026": 3})
sha = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
t = f"onprem-{SUFFIX}"
add_tenant(t)
csv = os.path.join(RUN, f"mailboxes-{SUFFIX}.csv")
with open(csv, "w") as f:
    f.write("DisplayName,PrimarySmtpAddress\r\n" + "".join(f"{m.split('@')[0]},{m}\r\n" for m in boxes))
limits = dict(MAILVAULT_EWS_MAX_CONCURRENT=3, MAILVAULT_EWS_SYNC_PAGE=50, MAILVAULT_EWS_GET_BATCH=7)

with EwsSim(fx, "--max-concurrency", "3") as sim:
    prof = {"name": "exchange", "type": "ews",
            "ews": {"url": sim.ews_url, "username": svc, "password": pw},
            "archive_mailbox": "include",
            "public_folders": {"mailbox": "ann@corp.example", "archive_as": "public-folders"}}
    path = os.path.join(RUN, f"ews-profile-{SUFFIX}.json")
    json.dump(prof, open(path, "w"))
    out = cli("profile", "add", "--tenant", t, "--file", path, "--mailboxes-csv", csv).stdout
    os.unlink(path)
    check("3 mailboxes" in out, f"the mailbox list came from the CSV file: {out.strip()}")
    shown = cli("profile", "show", "--tenant", t, "exchange").stdout
    check(pw not in shown, "the stored profile has no password")
    test = cli("profile", "test", "--tenant", t, "exchange").stdout
    check(test.startswith("OK") and "15.2" in test, f"profile test reads a mailbox and the server version: {test.strip()}")

    with Workers(1, **limits):
        run(t, "exchange")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        check(set(st) == set(boxes) | {"public-folders"}, f"one task per mailbox and one for public folders: {sorted(st)}")
        check(all(m["state"] == "done" for m in st.values()), f"all done: {[(k, m['error']) for k, m in st.items()]}")
        recs = index(t)
        check({r["hash"] for r in recs} == set(sha.values()), f"every .eml archived byte for byte ({len(recs)} records, {len(sha)} files)")
        check(len(recs) == len(sha), "each message is indexed once")
        ann = {(r["folder"]) for r in index(t, "ann@corp.example")}
        check("Archive Mailbox/Inbox" in ann and "Archive Mailbox/2019" in ann and "Inbox/Projects" in ann,
              f"archive mailbox folders under their own root: {sorted(ann)}")
        pf = {r["folder"] for r in index(t, "public-folders")}
        check(pf == {"Public Folders/Announcements", "Public Folders/Announcements/2026"}, f"public folders: {sorted(pf)}")
        check(st["ann@corp.example"]["skipped"] == 3, f"calendar item, contact and task skipped and counted ({st['ann@corp.example']['skipped']})")
        sample = recs[::11]
        by_hash = {v: k for k, v in sha.items()}
        check(all(cli_bytes("get", "--tenant", t, r["hash"]) == open(by_hash[r["hash"]], "rb").read() for r in sample),
              "mailvault get returns the exact bytes")
        stats = sim.full_stats()["stats"][org]
        for mb in boxes:
            s = stats[mb]
            check(s["anchor_mailbox_missing"] == 0 and s["anchor_mailbox_mismatch"] == 0,
                  f"{mb}: every request named its mailbox in X-AnchorMailbox")
            check(s["max_concurrent"] <= 3 and s["throttled_by_limit"] == 0,
                  f"{mb}: at most 3 requests at once ({s['max_concurrent']}), never over the limit")

        # 2. nothing new: SyncState says so
        run(t, "exchange")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        check(sum(m["messages"] for m in st.values()) == 0, "a second run fetches nothing")

        # 3. a new, a deleted and a moved message; Exchange is busy for a while
        inbox = os.path.join(fx, org, "mailboxes", "ben@corp.example", "mail", "Inbox")
        with open(os.path.join(inbox, "new.eml"), "wb") as f:
            f.write(ews_message(9001, "ben@corp.example"))
        victims = sorted(p for p in os.listdir(inbox) if p.startswith("m"))
        gone = os.path.join(inbox, victims[0])
        gone_hash = sha[gone]
        os.unlink(gone)
        shutil.move(os.path.join(inbox, victims[1]), os.path.join(fx, org, "mailboxes", "ben@corp.example", "mail", "Archive"))
        sim.post("/_sim/faults", [{"kind": "busy", "operation": "GetItem", "back_off_ms": 500, "count": 1},
                                  {"kind": "busy", "shape": "message", "operation": "GetItem", "back_off_ms": 300,
                                   "count": 1}])
        run(t, "exchange")
        b = {m["mailbox"]: m for m in status(t)["mailboxes"]}["ben@corp.example"]
        check(b["state"] == "done" and b["messages"] == 2, f"only the new and the moved message were fetched ({b['messages']}, {b['error']!r})")
        check(b["removed_at_source"] >= 2, f"the removals were counted ({b['removed_at_source']})")
        check(b["throttled"] >= 2, f"ErrorServerBusy (as a fault and in response messages) was waited out ({b['throttled']})")
        check(any(r["hash"] == gone_hash for r in index(t, "ben@corp.example")), "the deleted message stays archived")

        # 4. every SyncState invalid: the folders are read again, nothing is listed twice
        sim.post("/_sim/invalidate-sync-states")
        run(t, "exchange")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        c = st["cy@corp.example"]
        check(c["state"] == "done" and c["messages"] == 130 and c["deduplicated"] == 130,
              f"a re-read folder deduplicates ({c['messages']} read, {c['deduplicated']} deduplicated)")
        recs2 = index(t, "cy@corp.example")
        check(len(recs2) == 130 and len({(r["folder"], r["hash"]) for r in recs2}) == 130,
              f"the index lists each message once after the re-read ({len(recs2)})")
    r = cli("verify", "--tenant", t, "--json").stdout
    check(json.loads(r)["bad"] == 0, f"verify: {r.strip()}")
print("1 passed, 0 failed")
