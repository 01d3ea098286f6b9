"""0033: fair share between tenants (docs/fairness.md).

1. A tiny tenant is not queued behind a huge one. A tenant with 40 mailboxes is being archived
   by one worker that runs one task at a time. Then a tenant with 1 mailbox asks for a run. The
   tiny mailbox must finish after at most a few of the huge tenant's mailboxes: at most the
   dispatch budget (2 x capacity = 2) already on Kafka, the one running, and one for the
   ordering of Kafka partitions. The count comes from the status timestamps (queued_ms,
   finished_ms), not from a clock read by the test. Before fair dispatch, the tiny task would
   have waited behind the huge backlog.
2. A per-tenant cap: with max_concurrent 1, no two of the tenant's mailboxes run at the same
   time (their [started_ms, finished_ms] intervals do not overlap), although the worker runs 3
   tasks at once. The same holds for a tenant without a cap when source.max_connections_per_host
   is 1: the cluster-wide cap on connections to one server host.
3. Weights: two tenants queue 10 mailboxes each while no worker is alive; with weights 3 and
   1, the first 8 dispatches (mv:fair:log) give the heavier tenant 6 (start-time fair queuing:
   tags v, v+1/3, v+2/3, ... against v, v+1, ...).

Also checked: the per-tenant waiting and in-flight gauges in /metrics, and nothing left in
flight or waiting at the end."""
from mvtest import *

huge, tiny, capped, heavy, light = (f"{n}-{SUFFIX}" for n in ("huge", "tiny", "capped", "heavy", "light"))
for t in (huge, tiny, capped, heavy, light):
    add_tenant(t)


# 40 IMAP users; the other tenants archive some of the same logins (a tenant's mailboxes are
# its own, whoever else reads the same server mailbox)
H = []
for i in range(40):
    u = f"h{i:02d}-{SUFFIX}"
    seed(u, "pw", 1, folders="INBOX", seed=300 + i, mean_kb=4, wait=(i == 39))
    H.append((u, "pw"))
T, C, W = H[39:], H[:4], H[10:20]
add_profile(huge, "imap", H)
add_profile(tiny, "imap", T)
add_profile(capped, "imap", C)
add_profile(heavy, "imap", W)
add_profile(light, "imap", W)


def mailboxes(tenant):
    return {m["mailbox"]: m for m in status(tenant)["mailboxes"]}


# ---- 1. the tiny tenant is not queued behind the huge one
with Workers(1, MAILVAULT_WORKER_CONCURRENCY=1):
    cli("run", "--tenant", huge, "--profile", "imap")
    wait_for(lambda: sum(m["state"] == "done" for m in mailboxes(huge).values()) >= 2,
             "the huge tenant to be under way")
    cli("run", "--tenant", tiny, "--profile", "imap")
    mt = wait_for(lambda: (lambda m: m if m["state"] == "done" else None)(mailboxes(tiny)[T[0][0]]),
                  "the tiny tenant's mailbox", timeout=300)
    wait_for(lambda: all(m["state"] == "done" for m in mailboxes(huge).values()) or None,
             "the huge tenant to finish", timeout=300)
    hs = mailboxes(huge)
    ahead = [u for u, m in hs.items() if mt["queued_ms"] < m["finished_ms"] <= mt["finished_ms"]]
    after = [u for u, m in hs.items() if m["finished_ms"] > mt["finished_ms"]]
    check(len(ahead) <= 4 and len(after) >= 5,
          f"the tiny tenant finished after {len(ahead)} more of the huge tenant's mailboxes "
          f"(at most 4), before the other {len(after)}")

# ---- 2. a per-tenant cap
cli("tenant", "set", capped, "--max-concurrent", "1")
check("not a number" in cli("tenant", "set", capped, "--weight", "0", expect=2).stderr,
      "a weight of 0 is refused")
with Workers(1, MAILVAULT_WORKER_CONCURRENCY=3):
    run(capped, "imap")
spans = sorted((m["started_ms"], m["finished_ms"]) for m in mailboxes(capped).values())
check(len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])),
      f"max_concurrent 1: the 4 mailboxes ran one after the other {spans}")

# ---- 2b. the cluster-wide cap on connections to one server host
hostcap = f"hostcap-{SUFFIX}"
add_tenant(hostcap)
add_profile(hostcap, "imap", H[4:8])
with Workers(1, MAILVAULT_WORKER_CONCURRENCY=3, MAILVAULT_SOURCE_MAX_CONNECTIONS_PER_HOST=1,
             MAILVAULT_LOG_LEVEL="debug") as w:
    run(hostcap, "imap")
# from the worker's log (millisecond timestamps): each mailbox from taking the host's slot
# until it is done
taken, done = {}, {}
for line in open(w.logs[0]):
    if f"tenant={hostcap} " not in line:
        continue
    ts = line.split(" ", 1)[0].split("=", 1)[1]
    mb = line.split("mailbox=", 1)[1].split(" ", 1)[0]
    if 'msg="server host slot taken"' in line:
        taken[mb] = ts
    elif 'msg="mailbox done"' in line:
        done[mb] = ts
spans = sorted((taken[m], done[m]) for m in taken if m in done)
check(len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])),
      f"source.max_connections_per_host 1: the 4 mailboxes of one server were connected one "
      f"after the other {spans}")


# ---- 3. weights
cli("tenant", "set", heavy, "--weight", "3")
marker = redis_cli("LINDEX", "mv:fair:log", "0")
cli("run", "--tenant", heavy, "--profile", "imap")
cli("run", "--tenant", light, "--profile", "imap")
with AdminServer() as api:
    text = api.request("GET", "/metrics")[1]
    check(f'mailvault_fair_waiting_tasks{{tenant="{heavy}"}} 10' in text and
          f'mailvault_fair_inflight_tasks{{tenant="{heavy}"}} 0' in text,
          "/metrics: 10 waiting, none in flight while no worker is alive")
    with Workers(1, MAILVAULT_WORKER_CONCURRENCY=1):
        for t in (heavy, light):
            wait_for(lambda: all(m["state"] == "done" for m in mailboxes(t).values()) or None,
                     f"{t} to finish", timeout=300)
    text = api.request("GET", "/metrics")[1]
    check(f'mailvault_fair_waiting_tasks{{tenant="{heavy}"}} 0' in text and
          f'mailvault_fair_inflight_tasks{{tenant="{light}"}} 0' in text,
          "/metrics: nothing waiting or in flight afterwards")
log = redis_cli("LRANGE", "mv:fair:log", "0", "999").split("\n")
if marker in log:
    log = log[:log.index(marker)]
order = [e.split("/")[0] for e in reversed(log) if e.split("/")[0] in (heavy, light)]
first = order[:8]
check(len(order) == 20 and first.count(heavy) == 6,
      f"weight 3 against 1: the heavy tenant got {first.count(heavy)} of the first 8 dispatches {first}")
check(redis_cli("ZCARD", "mv:fair:inflight") == "0" or
      all(not e.startswith((huge, tiny, capped, heavy, light))
          for e in redis_cli("ZRANGE", "mv:fair:inflight", "0", "-1").split("\n")),
      "no slot of these tenants is left in flight")
print("1 passed, 0 failed")
