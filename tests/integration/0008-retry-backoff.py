"""0008: transient failures retry with backoff and then succeed.

The profile first points at a port where nothing listens (connection refused: transient). The
task goes to the delayed set with attempt 1, 2, ... and status "retrying" with the error. The
operator fixes the profile; the next retry (which reloads the profile) archives the mailbox."""
import socket

from mvtest import *

t = f"retry-{SUFFIX}"
user = f"lena-{SUFFIX}"
seed(user, "pw-lena", 10, folders="INBOX", seed=81)
add_tenant(t)
s = socket.socket()
s.bind(("127.0.0.1", 0))
dead_port = s.getsockname()[1]
s.close()  # nothing listens there now
add_profile(t, "imap", [(user, "pw-lena")], port=dead_port)

with Workers(1, MAILVAULT_WORKER_RETRY_BASE_MS=1000, MAILVAULT_WORKER_MAX_ATTEMPTS=10):
    cli("run", "--tenant", t, "--profile", "imap")
    m = wait_for(lambda: (lambda x: x if x["state"] == "retrying" and x["attempt"] >= 2 else None)(
        status(t)["mailboxes"][0]), "two failed attempts", timeout=60)
    check(str(dead_port) in m["error"] or "refused" in m["error"].lower(),
          f"status shows the connection error: {m['error']}")
    add_profile(t, "imap", [(user, "pw-lena")])  # the right port now
    m = wait_for(lambda: (lambda x: x if x["state"] in ("done", "failed") else None)(
        status(t)["mailboxes"][0]), "the retry to succeed", timeout=120)
check(m["state"] == "done" and m["messages"] == 10, f"a later retry archived the mailbox (attempt {m['attempt']})")
check(m["attempt"] >= 2, "it took more than one attempt")
check(m["error"] == "", "the error is cleared once done")
print("1 passed, 0 failed")
