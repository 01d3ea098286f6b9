"""0001: a full archive of two tenants through Kafka, two workers, Redis and the store.

Checks: every selected message is in the index once and its stored object is byte-identical to
what the IMAP server holds (read independently with Python's imaplib); excluded folders are
skipped; identical messages are stored once per tenant; tenants do not share objects; verify
passes; status reports done with the right counts and exits 0."""
import hashlib

from mvtest import *

t1, t2 = f"acme-{SUFFIX}", f"globex-{SUFFIX}"
alice, bob, carol = f"alice-{SUFFIX}", f"bob-{SUFFIX}", f"carol-{SUFFIX}"
seed(alice, "pw-alice", 60, folders="INBOX,Sent,Archive.2024,Trash", seed=11, duplicates=5)
seed(bob, "pw-bob", 25, folders="INBOX,Sent", seed=12)
seed(carol, "pw-carol", 30, folders="INBOX,Projects", seed=13)
# carol also received one of alice's messages: identical bytes, different tenant
import shutil
_src = os.path.join(RUN, "mail", alice, "cur")
_shared = sorted(os.listdir(_src))[0]
shutil.copy(os.path.join(_src, _shared), os.path.join(RUN, "mail", carol, "cur", "shared." + _shared))
os.chown(os.path.join(RUN, "mail", carol, "cur", "shared." + _shared),
         os.stat(_src).st_uid, os.stat(_src).st_gid)
shared_hash = hashlib.sha256(open(os.path.join(_src, _shared), "rb").read()).hexdigest()
add_tenant(t1)
add_tenant(t2)
add_profile(t1, "imap", [(alice, "pw-alice"), (bob, "pw-bob")], exclude=["Trash"])
add_profile(t2, "imap", [(carol, "pw-carol")])

expected = {}
for user, pw in ((alice, "pw-alice"), (bob, "pw-bob"), (carol, "pw-carol")):
    expected[user] = {k: v for k, v in imap_messages(user, pw).items() if k[0] != "Trash"}
check(len(expected[alice]) == 45 + 5, "alice has 45 selected messages plus 5 duplicates on the server")

with Workers(2):
    run(t1, "imap")
    run(t2, "imap")

for tenant, users in ((t1, (alice, bob)), (t2, (carol,))):
    st = status(tenant)
    for m in st["mailboxes"]:
        check(m["state"] == "done", f"{tenant}/{m['mailbox']} is done")
        check(m["messages"] == len(expected[m["mailbox"]]),
              f"{m['mailbox']}: status counts {m['messages']} messages")
    recs = index(tenant)
    for user in users:
        mine = [r for r in recs if r["mailbox"] == user]
        keys = [(r["folder"], r["uid"]) for r in mine]
        check(len(keys) == len(set(keys)), f"{user}: no (folder, uid) twice in the index")
        check(set(keys) == set(expected[user]), f"{user}: index covers exactly the selected messages")
        for r in mine:
            raw = expected[user][(r["folder"], r["uid"])]
            if hashlib.sha256(raw).hexdigest() != r["hash"]:
                fail(f"{user} {r['folder']}/{r['uid']}: index hash differs from server bytes")
            if r["size"] != len(raw):
                fail(f"{user} {r['folder']}/{r['uid']}: size {r['size']} != {len(raw)}")
        check(True, f"{user}: every index hash equals sha256 of the server's bytes")
    # byte-exact get for a sample of each user
    for r in recs[:: max(1, len(recs) // 10)]:
        got = cli_bytes("get", "--tenant", tenant, r["hash"])
        if got != expected[r["mailbox"]][(r["folder"], r["uid"])]:
            fail(f"get {r['hash']} is not byte-exact")
    check(True, f"{tenant}: mailvault get returns the exact bytes")
    uniq = {r["hash"] for r in recs}
    check(sorted(objects(tenant)) == sorted(uniq),
          f"{tenant}: one object per distinct message ({len(uniq)} objects for {len(recs)} index records)")

check(len(index(t1)) > len(objects(t1)), "alice's duplicates were stored once")
check(shared_hash in objects(t1) and shared_hash in objects(t2),
      "a message both tenants received is stored in each tenant's own namespace")
check(all(os.path.exists(os.path.join(RUN, "store", t, "objects", shared_hash[:2], shared_hash[2:4], shared_hash))
          for t in (t1, t2)), "object paths follow <root>/<tenant>/objects/ab/cd/<sha256>")
check("Trash" not in {r["folder"] for r in index(t1)}, "excluded folder Trash was not archived")
# the run's results: both mailboxes done, their messages and bytes summed once
runs = json.loads(cli("runs", "--tenant", t1, "--json").stdout)
check(len(runs) == 1, f"one run of {t1}")
r, st = runs[0], status(t1)
check(r["state"] == "finished" and r["tasks"] == 2 and r["done"] == 2 and r["failed"] == 0,
      f"the run is finished with both mailboxes done: {r}")
check(r["messages"] == sum(m["messages"] for m in st["mailboxes"]) == 75,
      f"the run counts {r['messages']} messages")
check(r["bytes_raw"] == sum(m["bytes_raw"] for m in st["mailboxes"]) > 0, "and their raw bytes")
check(r["ended_ms"] >= r["started_ms"] and r["errors"] == {}, "an end time and no errors")
v = cli("verify", "--tenant", t1, "--json")
res = json.loads(v.stdout)
check(res["bad"] == 0 and res["objects"] == len(objects(t1)), f"verify: {res}")
print("1 passed, 0 failed")
