"""0030: scheduled profiles with two schedulers: one leads, the other takes over when it dies;
every slot fires once, none is skipped; a mailbox still busy is not enqueued twice.

A profile runs "every 6s". Two schedulers serve with a 2 s leader lease. With no worker
running, the first slot enqueues the mailbox and the next slot finds it still queued: that run
enqueues nothing and counts it busy. A worker then archives it. The leader is SIGKILLed; the
other scheduler becomes leader and goes on firing. A slot left "pending" (a leader that died
between taking a slot and enqueueing its run) is completed by the next leader with the same
run id, once. In the end the schedule's runs have distinct slots exactly 6 s apart, one run
per slot."""
from mvtest import *

t = f"sched-{SUFFIX}"
user = f"sam-{SUFFIX}"
EVERY = 6000
seed(user, "pw-sam", 3, folders="INBOX", seed=81)
add_tenant(t)
add_profile(t, "nightly", [(user, "pw-sam")], schedule={"every": "6s"})


def sched_runs():
    runs = json.loads(cli("runs", "--tenant", t, "--json").stdout)
    return [r for r in runs if r["trigger"] == "schedule"]


def leader():
    return scheduler_status()["leader"]


def mailbox_state():
    return {m["mailbox"]: m for m in status(t)["mailboxes"]}[user]


env_s = dict(MAILVAULT_SCHEDULER_LEASE_MS=2000, MAILVAULT_SCHEDULER_TICK_MS=100)
with Schedulers(["s-one", "s-two"], **env_s) as ss:
    first = wait_for(leader, "a scheduler to become leader", 30)
    check(first in ("s-one", "s-two"), f"{first} leads")
    runs = wait_for(lambda: len(sched_runs()) >= 2 and sched_runs(), "two scheduled runs", 60)
    check(runs[0]["tasks"] == 1 and runs[0]["busy"] == 0, "the first slot enqueued the mailbox")
    check(runs[1]["tasks"] == 0 and runs[1]["busy"] == 1 and mailbox_state()["state"] == "queued",
          "the next slot found it still queued and did not enqueue it again")

    with Workers(1):
        wait_for(lambda: mailbox_state()["state"] == "done", "the worker to archive the mailbox", 120)
        n_before = len(sched_runs())
        wait_for(lambda: any(r["tasks"] == 1 for r in sched_runs()[n_before:]),
                 "a later slot to enqueue it again once done", 60)
        check(True, "a slot after the mailbox was done enqueued it again")

        other = "s-two" if first == "s-one" else "s-one"
        ss.kill(first)
        t0 = time.monotonic()
        wait_for(lambda: leader() == other, f"{other} to take over", 30)
        print(f"takeover after {time.monotonic() - t0:.1f} s (lease 2 s)", flush=True)
        n_kill = len(sched_runs())
        wait_for(lambda: len(sched_runs()) >= n_kill + 2, "two slots fired by the new leader", 60)
        check(True, f"{other} leads and fires the schedule")

    # a leader that died between taking a slot and enqueueing its run: the next one finishes it
    ss.stop()
    st = scheduler_status()
    mine = [x for x in st["schedules"] if x["tenant"] == t][0]
    last = mine["last_slot_ms"]
    pending = last + EVERY
    redis_cli("HSET", f"mv:sched:{t}", "nightly", f"{pending} pending")
    ss.start("s-three")
    wait_for(lambda: any(r["slot_ms"] == pending for r in sched_runs()), "the pending slot's run", 60)
    wait_for(lambda: [x for x in scheduler_status()["schedules"] if x["tenant"] == t][0]["state"] == "done"
             and [x for x in scheduler_status()["schedules"] if x["tenant"] == t][0]["last_slot_ms"] >= pending,
             "the pending slot to be recorded done", 30)
    check(True, "a pending slot is completed by the next leader")

runs = sched_runs()
slots = [r["slot_ms"] for r in runs]
check(len(set(r["run"] for r in runs)) == len(runs) == len(set(slots)),
      f"one run per slot ({len(runs)} runs)")
check(slots == sorted(slots) and all(b - a == EVERY for a, b in zip(slots, slots[1:])),
      f"slots exactly {EVERY} ms apart: none skipped, none twice across the failover")
print("1 passed, 0 failed")
