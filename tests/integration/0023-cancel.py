"""0023: cancelling a run (mailvault cancel).

A slow Graph mailbox is cancelled mid-run: the worker notices with its next heartbeat and the
mailbox ends "cancelled" (what was committed stays; a half-done page stays pending and is
redone by the next run). The worker is free for other work at once, a cancel with nothing to cancel
is an error, and a new run of the same profile archives the rest, every message once."""
import hashlib

from mvtest import *

tid = f"slowco-{SUFFIX}"
secret = f"s-{SUFFIX}"
boxes = {"sam@slowco.com": {"Inbox": 80}}
fx, files = graph_fixture(tid, secret, boxes)
want = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
with GraphSim(fx, "--latency-ms", "60", "--default-delta-page-size", "10") as sim:
    t = f"slow-{SUFFIX}"
    add_tenant(t)
    add_graph_profile(t, "graph", tid, secret, sim.url, list(boxes))
    t2 = f"quick-{SUFFIX}"
    user = f"quinn-{SUFFIX}"
    seed(user, "pw-q", 5, folders="INBOX", seed=31)
    add_tenant(t2)
    add_profile(t2, "imap", [(user, "pw-q")])
    with Workers(1, MAILVAULT_GRAPH_BATCH_SIZE=1, MAILVAULT_WORKER_CONCURRENCY=2):
        out = cli("run", "--tenant", t, "--profile", "graph").stdout
        run_id = out.split()[1].rstrip(":")
        wait_for(lambda: sim.stats().get(tid, {}).get("sam@slowco.com", {}).get("requests", 0) >= 10,
                 "the worker to be fetching")
        r = cli("cancel", "--tenant", t, "--profile", "graph")
        check("1 mailbox" in r.stdout, f"cancel requested: {r.stdout.strip()}")
        m = wait_for(lambda: (lambda x: x if x["state"] == "cancelled" else None)(status(t)["mailboxes"][0]),
                     "the mailbox to be cancelled", timeout=60)
        check(m["messages"] < len(files) and m["error"] == "cancelled by the operator",
              f"stopped part-way ({m['messages']} of {len(files)}), saying why")
        cr = json.loads(cli("runs", "--tenant", t, "--run", run_id, "--json").stdout)[0]
        check(cr["state"] == "finished" and cr["cancelled"] == 1 and cr["done"] == 0 and
              cr["messages"] == m["messages"] and cr["errors"] == {m["mailbox"]: "cancelled by the operator"},
              f"the cancelled run's results: {cr['cancelled']} cancelled, {cr['messages']} messages")
        w = cli("run", "--tenant", t, "--profile", "graph", "--wait", expect=None)  # a new run: not cancelled
        check(w.returncode == 0, "a new run after the cancel is not cancelled")
        recs = index(t)
        check({r["hash"] for r in recs} == want and len(recs) == len(files),
              f"the new run archived the rest, every message once ({len(recs)} records)")
        check(sorted(objects(t)) == sorted(want), "each stored once")
        # cancel while queued: the task is dropped when a worker takes it
        out = cli("run", "--tenant", t2, "--profile", "imap").stdout
        cli("cancel", "--tenant", t2, "--mailbox", user, expect=None)
        m2 = wait_for(lambda: (lambda x: x if x["state"] in ("cancelled", "done") else None)(status(t2)["mailboxes"][0]),
                      "the quick mailbox to end", timeout=60)
        check(m2["state"] in ("cancelled", "done"), f"a cancel races a short task fairly ({m2['state']})")
        r = cli("cancel", "--tenant", t2, expect=1)
        check("nothing to cancel" in r.stderr, f"nothing left to cancel is an error: {r.stderr.strip()}")
        run(t2, "imap")
        check(status(t2)["mailboxes"][0]["state"] == "done", "the worker still serves other runs")
print("1 passed, 0 failed")
