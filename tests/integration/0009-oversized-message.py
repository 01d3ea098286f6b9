"""0009: a message above imap.max_message_bytes stops its mailbox with an error that names the
folder, the UID and the size (permanent: straight to the dead-letter topic), and nothing of it
is stored; the messages before it in the same range are not recorded as archived either (the
range stays pending and is redone once the limit is raised)."""
from mvtest import *

t = f"big-{SUFFIX}"
user = f"otto-{SUFFIX}"
add_tenant(t)
seed(user, "pw-otto", 3, folders="INBOX", seed=91, mean_kb=2)
c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
c.login(user, "pw-otto")
big = b"From: a@example.org\r\nSubject: huge\r\n\r\n" + b"x" * 300000 + b"\r\n"
c.append("INBOX", None, None, big)
c.logout()
add_profile(t, "imap", [(user, "pw-otto")])

with Workers(1, MAILVAULT_IMAP_MAX_MESSAGE_BYTES=200000):
    p = run(t, "imap", expect=1)
m = status(t)["mailboxes"][0]
check(m["state"] == "failed", "the mailbox failed")
check('folder "INBOX"' in m["error"] and "uid 4" in m["error"] and "300" in m["error"],
      f"the error names folder, UID and size: {m['error']}")
check(m["attempt"] == 0, "no retries: an oversized message is a permanent failure")
import hashlib
check(hashlib.sha256(big).hexdigest() not in objects(t), "nothing of the oversized message was stored")
check(m["messages"] == 0, "the range with it was not recorded as archived")

with Workers(1, MAILVAULT_IMAP_MAX_MESSAGE_BYTES=400000):
    run(t, "imap")
m = status(t)["mailboxes"][0]
check(m["state"] == "done" and m["messages"] == 4, "with the limit raised the same range is archived")
check(hashlib.sha256(big).hexdigest() in objects(t), "including the large message")
print("1 passed, 0 failed")
