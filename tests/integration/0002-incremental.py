"""0002: incremental archiving.

A second run stores nothing new; a message delivered between runs (IMAP APPEND) is the only
thing the next run archives; a changed UIDVALIDITY makes the folder re-scan without storing a
message twice (the objects deduplicate by content)."""
import subprocess

from mvtest import *

t = f"inc-{SUFFIX}"
user = f"dave-{SUFFIX}"
seed(user, "pw-dave", 40, folders="INBOX,Sent", seed=21)
add_tenant(t)
add_profile(t, "imap", [(user, "pw-dave")])

with Workers(1):
    run(t, "imap")
    first = status(t)["mailboxes"][0]
    check(first["messages"] == 40, "first run archives all 40 messages")
    objs1, segs1 = sorted(objects(t)), segments(t, user)

    run(t, "imap")
    second = status(t)["mailboxes"][0]
    check(second["state"] == "done" and second["messages"] == 0, "second run archives nothing")
    check(sorted(objects(t)) == objs1, "second run stores no object")
    check(segments(t, user) == segs1, "second run writes no index segment")

    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(user, "pw-dave")
    newmsg = (b"From: eve@example.org\r\nTo: " + user.encode() + b"\r\nSubject: arrived later\r\n"
              b"Message-ID: <late-" + SUFFIX.encode() + b"@test>\r\n\r\nhello again\r\n")
    c.append("INBOX", None, None, newmsg)
    c.logout()
    run(t, "imap")
    third = status(t)["mailboxes"][0]
    check(third["messages"] == 1, "third run archives exactly the new message")
    recs = index(t)
    late = [r for r in recs if r["subject"] == "arrived later"]
    check(len(late) == 1 and cli_bytes("get", "--tenant", t, late[0]["hash"]) == newmsg,
          "the new message is indexed once and stored byte-exact")
    check(third["total_messages"] == 41, "total_messages counts 41")

    # UIDVALIDITY change: Dovecot renumbers the folder; everything is re-read, nothing re-stored.
    # RFC 3501 2.3.1.1: a new UIDVALIDITY must be greater than the old one.
    objs_before = sorted(objects(t))
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(user, "pw-dave")
    old_uv = int(c.status("Sent", "(UIDVALIDITY)")[1][0].split(b"UIDVALIDITY ")[1].rstrip(b")"))
    c.logout()
    new_uv = old_uv + 1000
    conf = os.path.join(RUN, "dovecot", "dovecot.conf")
    subprocess.run(["doveadm", "-c", conf, "mailbox", "update", "-u", user, "--uid-validity",
                    str(new_uv), "Sent"], check=True)
    run(t, "imap")
    fourth = status(t)["mailboxes"][0]
    check(fourth["messages"] == 20, "after a UIDVALIDITY change the folder's 20 messages are re-read")
    check(sorted(objects(t)) == objs_before, "re-reading them stores no new object")
    check(fourth["deduplicated"] == 20, "all 20 re-read messages were deduplicated")
    recs = index(t)
    check(len(recs) == 41, f"the archive lists each message once after the change ({len(recs)} records)")
    check(len(segments(t, user)) > len(segs1) + 1, "the old generation's segments are kept")
    sent = [r for r in recs if r["folder"] == "Sent"]
    check(len(sent) == 20 and all(r["uidvalidity"] == new_uv for r in sent),
          "Sent is listed under its new UIDVALIDITY")
print("1 passed, 0 failed")
