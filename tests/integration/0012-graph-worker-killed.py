"""0012: a worker killed with SIGKILL in the middle of a Graph mailbox, then another started.

The killed task's delta page was marked pending in its cursor; the next attempt reads the same
link again, overwrites its objects and rewrites the same segment, so every message ends up
stored once and listed once."""
import hashlib

from mvtest import *

tid = f"northwind-{SUFFIX}"
secret = f"s-{SUFFIX}"
boxes = {"nina@northwind.com": {"Inbox": 150, "SentItems": 90, "Inbox/Customers": 60}}
fx, files = graph_fixture(tid, secret, boxes)
N = len(files)
with GraphSim(fx, "--default-delta-page-size", "10", "--latency-ms", "5") as sim:
    t = f"nw-{SUFFIX}"
    add_tenant(t)
    add_graph_profile(t, "graph", tid, secret, sim.url, list(boxes))
    w = Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=40, MAILVAULT_WORKER_LEASE_TTL_MS=3000)
    try:
        cli("run", "--tenant", t, "--profile", "graph")
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
ids = [(r["folder"], r.get("hash")) for r in recs]
check(len(recs) == N, f"{len(recs)} index records for {N} messages")
check(len(set(ids)) == N, "no message listed twice")
want = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
check({r["hash"] for r in recs} == want, "exactly the fixture's messages")
check(sorted(objects(t)) == sorted(want), "each stored exactly once")
v = json.loads(cli("verify", "--tenant", t, "--json").stdout)
check(v["bad"] == 0 and v["objects"] == N, f"verify: {v}")
print("1 passed, 0 failed")
