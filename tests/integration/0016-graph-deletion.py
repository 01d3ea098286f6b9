"""0016: the deletion rule of a Graph profile ("deletion": {"older_than_days": N}).

Messages received more than 30 days ago are deleted at the source after they are archived;
newer ones stay. The rule never deletes what is not in the archive: one old message whose
download keeps failing (it looks gone: 404) is skipped by the archive and must survive the
sweep. Without the Mail.ReadWrite permission the run fails with an error naming it, after the
messages are archived; once the permission is granted, the next run's sweep deletes them (the
same path that finishes deletions a crash interrupted). Every deleted message is in the store
byte for byte, and a later run archives nothing and deletes nothing more."""
import hashlib
import re
import time
import urllib.parse
import urllib.request

from mvtest import *

tid = f"deltest-{SUFFIX}"
secret = f"s-{SUFFIX}"
upn = "dora@deltest.com"
fx, files = graph_fixture(tid, secret, {upn: {"Inbox": 12, "Archive": 6}})
now = time.time()
old, young = [], []
for i, p in enumerate(sorted(files)):
    age_days = 400 if i % 2 == 0 else 3  # receivedDateTime comes from the file's mtime here
    os.utime(p, (now - age_days * 86400, now - age_days * 86400))
    (old if age_days > 30 else young).append(p)
sha = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
recoverable = os.path.join(fx, tid, "users", upn, "recoverable")
app_json = os.path.join(fx, tid, "app.json")


def set_permissions(perms):
    doc = json.load(open(app_json))
    doc["permissions"] = perms
    tmp = app_json + ".tmp"
    json.dump(doc, open(tmp, "w"))
    os.replace(tmp, app_json)


def message_id_of(sim, path):
    """The Graph id of a fixture file, asked of the simulator like any client would."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "app-1",
                                   "client_secret": secret,
                                   "scope": "https://graph.microsoft.com/.default"}).encode()
    tok = json.loads(urllib.request.urlopen(f"{sim.url}/{tid}/oauth2/v2.0/token", data=form, timeout=10).read())
    folder = os.path.basename(os.path.dirname(path))
    url = f"{sim.url}/v1.0/users/{upn}/mailFolders/{folder.lower()}/messages?$select=id,subject&$top=100"
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + tok["access_token"]})
    vals = json.loads(urllib.request.urlopen(req, timeout=10).read())["value"]
    subject = [l for l in open(path, newline="").read().split("\r\n") if l.startswith("Subject: ")][0][9:]
    return [v["id"] for v in vals if v["subject"] == subject][0]


unfetchable = old[0]
set_permissions(["Mail.Read", "User.Read.All"])
with GraphSim(fx, "--default-delta-page-size", "5") as sim:
    bad_id = message_id_of(sim, unfetchable)
    id_re = "(?:%s|%s)" % (re.escape(bad_id), re.escape(urllib.parse.quote(bad_id, safe="")))
    sim.post("/_sim/faults", {"path_regex": id_re + r"/\$value",
                              "status": 404, "code": "ErrorItemNotFound",
                              "message": "The specified object was not found in the store."})
    t = f"del-{SUFFIX}"
    add_tenant(t)
    add_graph_profile(t, "graph", tid, secret, sim.url, [upn], deletion={"older_than_days": 30})
    shown = json.loads(cli("profile", "show", "--tenant", t, "graph").stdout)
    check(shown.get("deletion") == {"older_than_days": 30}, f"the profile keeps its deletion rule: {shown.get('deletion')}")
    with Workers(1):
        # 1. only Mail.Read: archived, then the sweep is refused with a clear error
        p = run(t, "graph", expect=None)
        st = status(t)["mailboxes"][0]
        check(p.returncode != 0 and st["state"] == "failed", f"the run failed ({st['state']}, exit {p.returncode})")
        check("Mail.ReadWrite" in st["error"], f"the error names the missing permission: {st['error']!r}")
        recs = index(t, upn)
        check({r["hash"] for r in recs} == {sha[p] for p in files if p != unfetchable},
              f"every fetchable message was archived before the sweep ({len(recs)} records)")
        check(all(os.path.exists(p) for p in files), "nothing was deleted without the permission")

        # 2. with Mail.ReadWrite: the sweep deletes what is archived and old, nothing else
        set_permissions(["Mail.ReadWrite", "User.Read.All"])
        sim.post("/_sim/expire-tokens")  # the old token lacks the new role
        run(t, "graph")
        st = status(t)["mailboxes"][0]
        gone = sorted(p for p in files if not os.path.exists(p))
        want_gone = sorted(p for p in old if p != unfetchable)
        check(gone == want_gone, f"exactly the archived old messages were deleted ({len(gone)} of {len(want_gone)})")
        check(os.path.exists(unfetchable), "the old message that never reached the archive is still at the source")
        check(all(os.path.exists(p) for p in young), "messages newer than 30 days stay")
        check(st["deleted_at_source"] == len(want_gone), f"status counts the deletions ({st['deleted_at_source']})")
        moved = set(os.listdir(recoverable))
        check(moved == {os.path.basename(p) for p in want_gone}, "the source kept them in Recoverable Items")
        stats = json.loads(urllib.request.urlopen(sim.url + "/_sim/stats", timeout=10).read())
        check([d["messages"] for d in stats["deleted"] if d["mailbox"] == upn] == [len(want_gone)],
              f"the simulator saw {len(want_gone)} DELETEs: {stats['deleted']}")
        for p in want_gone:
            check_bytes = cli_bytes("get", "--tenant", t, sha[p])
            if check_bytes != open(os.path.join(recoverable, os.path.basename(p)), "rb").read():
                fail(f"the archived copy of {p} differs from what was deleted")
        print(f"ok - all {len(want_gone)} deleted messages are in the store byte for byte")

        # 3. again: nothing new to archive, nothing more to delete
        run(t, "graph")
        st = status(t)["mailboxes"][0]
        check(st["messages"] == 0 and st["deleted_at_source"] == 0,
              f"a third run archives and deletes nothing ({st['messages']}, {st['deleted_at_source']})")
        check(os.path.exists(unfetchable) and all(os.path.exists(p) for p in young), "the survivors survive")
print("1 passed, 0 failed")
