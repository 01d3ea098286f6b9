"""0003: a worker killed with SIGKILL in the middle of a mailbox, then another started.

After the run completes, every message is in the index exactly once and stored exactly once:
the lease expires, the pending range is redone, its segment is rewritten under the same name,
and the Kafka offset of the killed task was never committed, so the task comes back."""
from mvtest import *

t = f"crash-{SUFFIX}"
user = f"frank-{SUFFIX}"
N = 1200
seed(user, "pw-frank", N, folders="INBOX,Sent,Archive", seed=31, mean_kb=8)
add_tenant(t)
add_profile(t, "imap", [(user, "pw-frank")])

settings = dict(MAILVAULT_WORKER_CHUNK_MESSAGES=150, MAILVAULT_WORKER_LEASE_TTL_MS=3000)
w = Workers(1, **settings)
try:
    cli("run", "--tenant", t, "--profile", "imap")
    # kill it once it is well into the mailbox (some ranges committed, more to go)
    wait_for(lambda: status(t)["mailboxes"][0]["messages"] >= 300, "300 messages archived")
    w.kill(0)
    killed_at = status(t)["mailboxes"][0]["messages"]
    check(killed_at < N, f"worker killed mid-mailbox ({killed_at} of {N} recorded)")
    w.start()

    def finished():
        m = status(t)["mailboxes"][0]
        return m if m["state"] in ("done", "failed") else None
    m = wait_for(finished, "the mailbox to finish after the restart", timeout=240)
    check(m["state"] == "done", f"mailbox finished after the restart (state {m['state']}, error {m['error']!r})")
finally:
    codes = w.stop()

recs = index(t)
keys = [(r["folder"], r["uid"]) for r in recs]
check(len(recs) == N, f"index has {len(recs)} records for {N} messages")
check(len(set(keys)) == N, "no message appears twice in the index")
hashes = [r["hash"] for r in recs]
check(len(set(hashes)) == N, "every record names a distinct message")
check(sorted(objects(t)) == sorted(set(hashes)), "each message is stored exactly once")
check(m["total_messages"] >= N, "status counted every message")
v = json.loads(cli("verify", "--tenant", t, "--json").stdout)
check(v["bad"] == 0 and v["objects"] == N, f"verify after the crash: {v}")
tmp = os.path.join(RUN, "store", t, "tmp")
print(f"# temp files left by the killed worker: {len(os.listdir(tmp)) if os.path.isdir(tmp) else 0}")
check(codes[-1] == 0, "the restarted worker exits 0 on SIGTERM")
print("1 passed, 0 failed")
