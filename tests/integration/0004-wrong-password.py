"""0004: a wrong password gives a clear error in status and a non-zero CLI exit, and the task
lands in the dead-letter topic instead of retrying forever (authentication is permanent)."""
import subprocess

from mvtest import *

t = f"badpw-{SUFFIX}"
good, bad = f"gina-{SUFFIX}", f"hank-{SUFFIX}"
seed(good, "pw-gina", 5, folders="INBOX", seed=41)
seed(bad, "pw-hank", 5, folders="INBOX", seed=42)
add_tenant(t)
add_profile(t, "imap", [(good, "pw-gina"), (bad, "not-the-password")])

with Workers(1):
    p = run(t, "imap", expect=1)
check(bad in p.stderr and "login refused" in p.stderr, f"run --wait names the mailbox and the cause: {p.stderr.strip()[-300:]}")
st = cli("status", "--tenant", t, expect=1)
check("failed" in st.stdout and "login refused" in st.stdout, "status shows the failure and exits 1")
js = {m["mailbox"]: m for m in status(t)["mailboxes"]}
check(js[bad]["state"] == "failed", "the bad mailbox is failed")
check("AUTHENTICATIONFAILED" in js[bad]["error"] or "Authentication failed" in js[bad]["error"],
      f"the server's reason is kept: {js[bad]['error']}")
check("not-the-password" not in st.stdout + json.dumps(js), "the password appears nowhere in status")
check(js[good]["state"] == "done" and js[good]["messages"] == 5, "the other mailbox is unaffected")
runs = json.loads(cli("runs", "--tenant", t, "--json").stdout)
check(len(runs) == 1 and runs[0]["state"] == "finished" and runs[0]["done"] == 1 and
      runs[0]["failed"] == 1 and runs[0]["messages"] == 5, f"the run's results: {runs}")
check("login refused" in runs[0]["errors"].get(bad, "") and good not in runs[0]["errors"],
      "the run keeps the failed mailbox's error")
rt = cli("runs", "--tenant", t, "--run", runs[0]["run"])
check(f"{bad}: " in rt.stdout and "login refused" in rt.stdout, "runs --run lists the error")
check("no run" in cli("runs", "--tenant", t, "--run", "nope", expect=1).stderr,
      "an unknown run is an error")
logs = "".join(open(os.path.join(RUN, "log", f)).read() for f in os.listdir(os.path.join(RUN, "log"))
               if f.startswith(f"worker-{SUFFIX}"))
check("not-the-password" not in logs, "the password appears nowhere in the worker log")
# the dead-letter topic holds the task, keyed tenant/mailbox, with its last error. Values are
# binary msgpack, so kcat frames each record as <key> 0x01 <length> 0x01 <value bytes>.
raw = subprocess.run(["kcat", "-b", STACK["MV_KAFKA_BROKERS"], "-C", "-t", "mailvault.tasks.dlq",
                      "-o", "beginning", "-e", "-q", "-f", "%k\x01%S\x01%s"],
                     capture_output=True, timeout=60).stdout
records, pos = [], 0
while pos < len(raw):
    k_end = raw.index(b"\x01", pos)
    l_end = raw.index(b"\x01", k_end + 1)
    n = int(raw[k_end + 1:l_end])
    records.append((raw[pos:k_end].decode(), raw[l_end + 1:l_end + 1 + n]))
    pos = l_end + 1 + n
mine = [v for k, v in records if k == f"{t}/{bad}"]
check(len(mine) == 1 and b"login refused" in mine[0], "the task is in mailvault.tasks.dlq with its error")
check(not any(k == f"{t}/{good}" for k, _ in records), "the good mailbox is not")

# the dead-letter list shows the failure; after the password is fixed, a retry finishes the
# same run, whose results then count the mailbox done instead of failed
dl = json.loads(cli("dlq", "list", "--tenant", t, "--json").stdout)
recs = [r for r in dl["records"] if r["mailbox"] == bad]
check(len(recs) == 1 and "login refused" in recs[0]["error"] and recs[0]["run"] == runs[0]["run"],
      "dlq list shows the failed mailbox with its error and run")
check(bad in cli("dlq", "list", "--tenant", t).stdout, "and as a table")
add_profile(t, "imap", [(good, "pw-gina"), (bad, "pw-hank")])
with Workers(1):
    out = cli("dlq", "retry", "--tenant", t, "--mailbox", bad).stdout
    check("1 mailbox" in out, f"dlq retry queues it again: {out.strip()}")
    wait_for(lambda: {m["mailbox"]: m for m in status(t)["mailboxes"]}[bad]["state"] == "done",
             "the retried mailbox to finish")
r = json.loads(cli("runs", "--tenant", t, "--json").stdout)
check(len(r) == 1 and r[0]["done"] == 2 and r[0]["failed"] == 0 and r[0]["messages"] == 10 and
      r[0]["errors"] == {}, f"the run's results now count both mailboxes done: {r[0]}")
check(not [x for x in json.loads(cli("dlq", "list", "--tenant", t, "--json").stdout)["records"]
           if x["mailbox"] == bad], "a retried record is no longer listed")
check("no dead-letter record" in cli("dlq", "retry", "--tenant", t, expect=1).stderr,
      "nothing left to retry is an error")
print("1 passed, 0 failed")
