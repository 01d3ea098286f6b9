#!/usr/bin/env python3
"""scale.py - the control plane at scale (driven by tests/bench/scale, which starts the stack).

1. Seeds M Dovecot users with a few small messages each.
2. Creates T tenants through the admin API, each with one IMAP profile of M mailboxes and a
   schedule. The tenants share the M server logins, since each tenant archives into its own
   namespace.
3. Starts one scheduler and times how long it takes until all T x M tasks are scheduled and
   enqueued. No worker runs yet, so the count is exact: the tenants' fair queues hold T x M
   tasks.
4. Starts 1 worker, then 2, then 4. Each time it waits a warm-up and counts mailboxes and
   messages archived over a fixed window. The counts come from Redis: the run records' done
   counters and the per-tenant metrics, which the workers move in their checkpoint scripts.
5. Under that load (4 workers), a tiny tenant with one mailbox asks for a run; its time to done
   is printed next to the mean chunk time of the window.
Prints key=value lines."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--run", required=True)
ap.add_argument("--bin", required=True)
ap.add_argument("--tenants", type=int, default=1000)
ap.add_argument("--mailboxes", type=int, default=100)
ap.add_argument("--messages", type=int, default=3)
ap.add_argument("--window", type=int, default=60)
ap.add_argument("--warmup", type=int, default=10)
a = ap.parse_args()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
env_file = dict(l.strip().split("=", 1) for l in open(os.path.join(a.run, "env")) if "=" in l)
ENV = dict(os.environ, MAILVAULT_CONFIG=env_file["MV_CONFIG"])
CLI = os.path.join(a.bin, "producer", "mailvault")
procs = []


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def redis(*args):
    return subprocess.run(["redis-cli", "-p", env_file["MV_REDIS_PORT"], *args], capture_output=True,
                          text=True, check=True).stdout.strip()


SUM_LUA = """
local n = 0
for _, t in ipairs(redis.call('SMEMBERS', 'mv:tenants')) do
  if ARGV[1] == 'queued' then n = n + redis.call('LLEN', 'mv:fair:q:' .. t)
  else n = n + tonumber(redis.call('HGET', 'mv:metrics:' .. t, 'archived_messages') or '0') end
end
return n
"""
DONE_LUA = """
local n = 0
for _, t in ipairs(redis.call('SMEMBERS', 'mv:tenants')) do
  for _, r in ipairs(redis.call('ZRANGE', 'mv:runs:' .. t, 0, -1)) do
    n = n + tonumber(redis.call('HGET', 'mv:run:' .. r, 'done') or '0')
  end
end
return n
"""


def total(kind):
    return int(redis("EVAL", SUM_LUA, "0", kind))


def mailboxes_done():
    return int(redis("EVAL", DONE_LUA, "0"))


def chunk_hist():
    h = dict(zip(*[iter(redis("HGETALL", "mv:histogram:chunk_ms").split("\n"))] * 2)) if redis(
        "EXISTS", "mv:histogram:chunk_ms") == "1" else {}
    return int(h.get("count", 0)), int(h.get("sum", 0))


def start(cmd, name):
    p = subprocess.Popen(cmd, env=ENV, stdout=open(os.path.join(a.run, "log", name + ".log"), "w"),
                         stderr=subprocess.STDOUT)
    procs.append(p)
    return p


try:
    t0 = time.monotonic()
    users = [f"u{i:04d}" for i in range(a.mailboxes)]
    for i, u in enumerate(users):
        subprocess.run([sys.executable, os.path.join(ROOT, "compose", "local", "seed.py"), "--run", a.run,
                        "--user", u, "--password", "pw", "--messages", str(a.messages), "--folders", "INBOX",
                        "--mean-kb", "4", "--seed", str(i)] + ([] if i == len(users) - 1 else ["--no-wait"]),
                       check=True, capture_output=True)
    log(f"seeded {a.mailboxes} users in {time.monotonic() - t0:.1f} s")

    token = subprocess.run([CLI, "token", "add", "--name", f"bench{os.getpid()}"], env=ENV, capture_output=True,
                           text=True, check=True).stdout.strip()
    srv = subprocess.Popen([CLI, "serve", "--listen", "127.0.0.1:0"], env=ENV, stdout=subprocess.PIPE,
                           stderr=open(os.path.join(a.run, "log", "admin.log"), "w"), text=True)
    procs.append(srv)
    url = srv.stdout.readline().strip().rsplit(" ", 1)[1]

    def api(method, path, body=None):
        req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    t0 = time.monotonic()
    prof = {"type": "imap", "schedule": {"every": "24h"},
            "server": {"host": "127.0.0.1", "port": int(env_file["MV_IMAP_PORT"]), "tls": "none"},
            "mailboxes": [{"login": u, "password": "pw"} for u in users]}
    for i in range(a.tenants):
        t = f"s{i:04d}"
        api("POST", "/api/v1/tenants", {"name": t})
        api("PUT", f"/api/v1/tenants/{t}/profiles/imap", prof)
    setup_s = time.monotonic() - t0
    log(f"{a.tenants} tenants with {a.mailboxes} mailboxes each created through the API in {setup_s:.1f} s")

    # 3. schedule and enqueue everything
    want = a.tenants * a.mailboxes
    t0 = time.monotonic()
    start([os.path.join(a.bin, "scheduler", "mailvault-scheduler"), "serve", "--id", "bench-sched"], "scheduler")
    while total("queued") < want:
        if time.monotonic() - t0 > 1800:
            sys.exit("bench: the scheduler did not enqueue everything in 30 minutes")
        time.sleep(0.05)
    enqueue_s = time.monotonic() - t0
    log(f"{want} tasks scheduled and enqueued in {enqueue_s:.2f} s")

    # 4. throughput with 1, 2 and 4 workers
    results = {}
    nworkers = 0
    for n in (1, 2, 4):
        while nworkers < n:
            start([os.path.join(a.bin, "worker", "mailvault-worker"), "--id", f"bench-w{nworkers}"],
                  f"worker-{nworkers}")
            nworkers += 1
        time.sleep(a.warmup)  # warm-up: the new workers join the group and fill their slots
        m0, d0, h0, s0 = total("archived"), mailboxes_done(), *chunk_hist()
        w0 = time.monotonic()
        time.sleep(a.window)
        m1, d1, h1, s1 = total("archived"), mailboxes_done(), *chunk_hist()
        w = time.monotonic() - w0
        results[n] = ((m1 - m0) / w, (d1 - d0) / w, (s1 - s0) / max(1, h1 - h0) / 1000)
        log(f"{n} worker(s): {results[n][0]:.0f} messages/s, {results[n][1]:.1f} mailboxes/s, "
            f"mean chunk {results[n][2]:.3f} s")
        if d1 >= want:
            log("the backlog ran out: later windows would not be steady")
            break

    # 5. a tiny tenant under load
    api("POST", "/api/v1/tenants", {"name": "tiny"})
    api("PUT", "/api/v1/tenants/tiny/profiles/imap",
        {**{k: v for k, v in prof.items() if k != "schedule"}, "mailboxes": prof["mailboxes"][:1]})
    backlog = total("queued")
    t0 = time.monotonic()
    api("POST", "/api/v1/tenants/tiny/profiles/imap/run")
    while json.loads(subprocess.run([CLI, "status", "--tenant", "tiny", "--json"], env=ENV, capture_output=True,
                                    text=True).stdout)["mailboxes"][0]["state"] != "done":
        time.sleep(0.05)
    tiny_s = time.monotonic() - t0
    log(f"the tiny tenant finished in {tiny_s:.2f} s with {backlog} tasks of others waiting")

    print(f"tenants={a.tenants}")
    print(f"mailboxes={want}")
    print(f"setup_api_s={setup_s:.1f}")
    print(f"enqueue_s={enqueue_s:.2f}")
    for n, (mps, bps, chunk) in results.items():
        print(f"msgs_per_s_{n}w={mps:.0f}")
        print(f"mailboxes_per_s_{n}w={bps:.1f}")
        print(f"chunk_mean_s_{n}w={chunk:.3f}")
    print(f"tiny_tenant_s={tiny_s:.2f}")
    print(f"tiny_tenant_backlog={backlog}")
finally:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
