"""0007: SIGTERM and concurrency.

A worker given SIGTERM in the middle of a mailbox finishes the folder range it is in, records
it, exits 0 and leaves no pending range behind; another worker completes the mailbox with every
message stored once. One worker with worker.concurrency=3 runs tasks for three mailboxes that
Kafka placed on three different partitions at the same time (their run intervals overlap in
the worker's log)."""
import re
import subprocess
import zlib
from datetime import datetime

from mvtest import *

# --- SIGTERM mid-mailbox ---
t = f"term-{SUFFIX}"
user = f"kim-{SUFFIX}"
N = 900
seed(user, "pw-kim", N, folders="INBOX,Sent,Archive", seed=61, mean_kb=8)
add_tenant(t)
add_profile(t, "imap", [(user, "pw-kim")])
w = Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=100)
cli("run", "--tenant", t, "--profile", "imap")
wait_for(lambda: status(t)["mailboxes"][0]["messages"] >= 200, "200 messages archived")
w.procs[0].send_signal(signal.SIGTERM)
code = w.procs[0].wait(timeout=60)
check(code == 0, "the worker exits 0 on SIGTERM")
m = status(t)["mailboxes"][0]
check(m["messages"] < N, f"it stopped before the end ({m['messages']} of {N})")
check(m["state"] in ("queued", "running"), f"the mailbox is left to be continued (state {m['state']})")
ck = subprocess.run(["redis-cli", "-p", STACK["MV_REDIS_PORT"], "--raw", "HGETALL", f"mv:ckpt:{t}:{user}"],
                    capture_output=True, text=True).stdout.split("\n")
print("# checkpoints after SIGTERM:", [l for l in ck if l])
w.start()
m = wait_for(lambda: (lambda x: x if x["state"] in ("done", "failed") else None)(status(t)["mailboxes"][0]),
             "the mailbox to finish", timeout=240)
w.stop()
recs = index(t)
check(m["state"] == "done" and len(recs) == N and len({(r["folder"], r["uid"]) for r in recs}) == N,
      "another worker completed it: every message indexed exactly once")
check(len(objects(t)) == N, "and stored exactly once")

# --- concurrency: three mailboxes on three distinct partitions, one worker ---
PARTITIONS = 8  # kafka.partitions default; librdkafka's default partitioner is CRC-32 of the key


def partition(key):
    return zlib.crc32(key.encode()) % PARTITIONS


t2 = f"conc-{SUFFIX}"
users, seen = [], set()
i = 0
while len(users) < 3:
    u = f"c{i}-{SUFFIX}"
    p = partition(f"{t2}/{u}")
    if p not in seen:
        seen.add(p)
        users.append(u)
    i += 1
for k, u in enumerate(users):
    seed(u, "pw", 300, folders="INBOX,Sent", seed=70 + k, mean_kb=40)
add_tenant(t2)
add_profile(t2, "imap", [(u, "pw") for u in users])
with Workers(1, MAILVAULT_WORKER_CONCURRENCY=3) as w2:
    run(t2, "imap")
log = open(w2.logs[0]).read()
spans = {}
for line in log.splitlines():
    m = re.search(r'^ts=(\S+) .*msg="(task started|mailbox done)".* tenant=' + re.escape(t2) + r' mailbox=(\S+)', line)
    if m:
        ts = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
        spans.setdefault(m.group(3), {})[m.group(2)] = ts
check(len(spans) == 3 and all(len(v) == 2 for v in spans.values()), "each mailbox has a start and an end in the log")
starts = sorted(v["task started"] for v in spans.values())
ends = sorted(v["mailbox done"] for v in spans.values())
overlap = max(sum(1 for v in spans.values() if v["task started"] <= s < v["mailbox done"]) for s in starts)
check(overlap >= 2, f"tasks ran concurrently in one worker (up to {overlap} at once)")
print("1 passed, 0 failed")
