"""0013: Microsoft 365 "multiple mailboxes centrally": the mailbox list comes from the tenant
directory (GET /users with paging) at each run. By default only licensed users; with
all_users, shared mailboxes too (a user without a mailbox is archived as empty, not failed);
include/exclude patterns on the userPrincipalName apply."""
from mvtest import *

tid = f"litware-{SUFFIX}"
secret = f"s-{SUFFIX}"
boxes = {f"u{i}@litware.com": {"Inbox": 2} for i in range(7)}
boxes["admin@litware.com"] = {"Inbox": 1}
fx, files = graph_fixture(tid, secret, boxes)
shared = os.path.join(fx, tid, "users", "sales@litware.com")
os.makedirs(os.path.join(shared, "mail", "Inbox"))
json.dump({"displayName": "Sales", "mail": "sales@litware.com", "licensed": False, "shared": True},
          open(os.path.join(shared, "user.json"), "w"))
open(os.path.join(shared, "mail", "Inbox", "s1.eml"), "wb").write(b"From: x@y\r\nSubject: shared\r\n\r\nhi\r\n")
nomail = os.path.join(fx, tid, "users", "guest@litware.com")
os.makedirs(nomail)
json.dump({"displayName": "Guest", "licensed": False, "shared": False}, open(os.path.join(nomail, "user.json"), "w"))


def profile(t, name, directory):
    prof = {"name": name, "type": "graph", "directory": directory,
            "graph": {"tenant_id": tid, "client_id": "app-1", "client_secret": secret,
                      "login_base": sim.url, "graph_base": sim.url + "/v1.0"}}
    path = os.path.join(RUN, f"p-{SUFFIX}.json")
    json.dump(prof, open(path, "w"))
    cli("profile", "add", "--tenant", t, "--file", path)
    os.unlink(path)


with GraphSim(fx) as sim:
    with Workers(1):
        t1 = f"lit1-{SUFFIX}"
        add_tenant(t1)
        profile(t1, "dir", {"exclude": ["admin@*"]})
        p = run(t1, "dir")
        check("7 tasks queued" in p.stdout, f"licensed users minus the excluded admin: {p.stdout.strip()}")
        st = {m["mailbox"]: m for m in status(t1)["mailboxes"]}
        check(sorted(st) == sorted(u for u in boxes if not u.startswith("admin")), "exactly those mailboxes")
        check(all(m["state"] == "done" and m["messages"] == 2 for m in st.values()), "each archived")

        t2 = f"lit2-{SUFFIX}"
        add_tenant(t2)
        profile(t2, "all", {"all_users": True, "include": ["*@LITWARE.COM"]})
        p = run(t2, "all")
        st = {m["mailbox"]: m for m in status(t2)["mailboxes"]}
        check("sales@litware.com" in st and st["sales@litware.com"]["messages"] == 1,
              "all_users includes the shared mailbox (patterns are case-insensitive)")
        check("guest@litware.com" in st and st["guest@litware.com"]["state"] == "done"
              and st["guest@litware.com"]["messages"] == 0, "a user without a mailbox is done, empty")
        check(len(st) == len(boxes) + 2, f"every directory user got a task ({len(st)})")
print("1 passed, 0 failed")
