"""0006: IMAP over implicit TLS and STARTTLS with certificate verification on.

With the test CA configured (tls.ca_file) both modes archive; without it the server's
certificate is refused and status names the verification failure."""
from mvtest import *

ca = STACK["MV_TLS_CA"]
t = f"tls-{SUFFIX}"
u1, u2 = f"ida-{SUFFIX}", f"jon-{SUFFIX}"
seed(u1, "pw-ida", 12, folders="INBOX,Sent", seed=51)
seed(u2, "pw-jon", 8, folders="INBOX", seed=52)
add_tenant(t)
add_profile(t, "implicit", [(u1, "pw-ida")], tls="implicit", port=IMAPS_PORT)
add_profile(t, "starttls", [(u2, "pw-jon")], tls="starttls", port=IMAP_PORT)

with Workers(1, MAILVAULT_TLS_CA_FILE=ca):
    run(t, "implicit")
    run(t, "starttls")
js = {m["mailbox"]: m for m in status(t)["mailboxes"]}
check(js[u1]["state"] == "done" and js[u1]["messages"] == 12, "implicit TLS archives with a verified certificate")
check(js[u2]["state"] == "done" and js[u2]["messages"] == 8, "STARTTLS archives with a verified certificate")

t2 = f"tlsbad-{SUFFIX}"
add_tenant(t2)
add_profile(t2, "implicit", [(u1, "pw-ida")], tls="implicit", port=IMAPS_PORT)
with Workers(1, MAILVAULT_WORKER_MAX_ATTEMPTS=2, MAILVAULT_WORKER_RETRY_BASE_MS=100):
    p = run(t2, "implicit", expect=1)
m = status(t2)["mailboxes"][0]
check(m["state"] == "failed" and "certificate" in m["error"].lower(),
      f"an unknown CA is refused: {m['error']}")
check(m["attempt"] == 1, "after one retry (max_attempts=2) it went to the dead-letter topic")
print("1 passed, 0 failed")
