"""0020: a worker killed with SIGKILL in the middle of an EWS mailbox, then another started.

The killed task's SyncFolderItems batch was marked pending in its cursor; the next attempt asks
with the same SyncState again, overwrites its objects and rewrites the same segment, so every
message ends up stored once and listed once."""
import hashlib

from mvtest import *

org = f"woodgrove-{SUFFIX}"
boxes = {"kim@woodgrove.example": {"mail": {"Inbox": 150, "SentItems": 90, "Inbox/Customers": 60}}}
fx, files = ews_fixture(org, {"kind": "onprem", "accounts": {"svc@woodgrove.example": {"password": "pw", "impersonation": True}}},
                        boxes)
N = len(files)
with EwsSim(fx, "--latency-ms", "5") as sim:
    t = f"wg-{SUFFIX}"
    add_tenant(t)
    p = add_ews_profile(t, "ews", {"url": sim.ews_url, "username": "svc@woodgrove.example", "password": "pw"}, list(boxes))
    check(p.returncode == 0, f"profile saved ({p.stderr.strip()})")
    w = Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=40, MAILVAULT_WORKER_LEASE_TTL_MS=3000,
                MAILVAULT_EWS_SYNC_PAGE=10, MAILVAULT_EWS_GET_BATCH=5)
    try:
        cli("run", "--tenant", t, "--profile", "ews")
        wait_for(lambda: status(t)["mailboxes"][0]["messages"] >= 60, "60 messages archived")
        w.kill(0)
        at = status(t)["mailboxes"][0]["messages"]
        check(at < N, f"killed mid-mailbox ({at} of {N})")
        w.start()
        m = wait_for(lambda: (lambda x: x if x["state"] in ("done", "failed") else None)(
            status(t)["mailboxes"][0]), "the mailbox to finish", timeout=240)
    finally:
        w.stop()
check(m["state"] == "done", f"finished after the restart ({m['error']!r})")
recs = index(t)
check(len(recs) == N, f"{len(recs)} index records for {N} messages")
check(len({(r["folder"], r["hash"]) for r in recs}) == N, "no message listed twice")
want = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
check({r["hash"] for r in recs} == want, "exactly the fixture's messages")
check(sorted(objects(t)) == sorted(want), "each stored exactly once")
v = json.loads(cli("verify", "--tenant", t, "--json").stdout)
check(v["bad"] == 0 and v["objects"] == N, f"verify: {v}")
print("1 passed, 0 failed")
