"""0010: Microsoft 365 mailboxes through Microsoft Graph (tests/graphsim), end to end through
Kafka, the worker, Redis and the store.

A tenant with two mailboxes and a folder tree (well-known folders, a child folder) is archived
fully; every stored object equals its .eml file byte for byte. A second run archives nothing
(delta). Then a new message, a deleted one and a moved one: only the new and the moved message
are fetched (the moved one deduplicates), removals are counted and nothing archived is
deleted. An access token expiring mid-run is refreshed; injected 429s with Retry-After are
waited out."""
import hashlib
import json
import shutil
import signal
import subprocess
import urllib.request

from mvtest import *

SIM = os.path.join(SRC, "tests", "graphsim", "graphsim.py")
tenant_id = f"contoso-{SUFFIX}"
fx = os.path.join(RUN, f"graph-{SUFFIX}")
users = {"alice": ["Inbox", "SentItems", "Inbox/Projects"], "bob": ["Inbox", "Archive"]}


def eml(i, user, size=1500):
    body = ("line %d of a message for %s\r\n" % (i, user)) * (size // 40)
    return (f"From: sender{i}@example.org\r\nTo: {user}@contoso.com\r\nSubject: graph message {i}\r\n"
            f"Date: Mon, 30 Nov 2026 10:{i % 60:02d}:00 +0000\r\nMessage-ID: <g{i}.{SUFFIX}@example.org>\r\n"
            f"\r\n{body}").encode()


os.makedirs(os.path.join(fx, tenant_id), exist_ok=True)
secret = f"app-secret-{SUFFIX}"
json.dump({"client_id": "app-1", "client_secret": secret, "permissions": ["Mail.Read", "User.Read.All"]},
          open(os.path.join(fx, tenant_id, "app.json"), "w"))
files = {}
n = 0
for u, folders in users.items():
    upn = f"{u}@contoso.com"
    base = os.path.join(fx, tenant_id, "users", upn)
    os.makedirs(base, exist_ok=True)
    json.dump({"displayName": u, "mail": upn, "licensed": True}, open(os.path.join(base, "user.json"), "w"))
    for f in folders:
        d = os.path.join(base, "mail", f)
        os.makedirs(d, exist_ok=True)
        for k in range(12):
            n += 1
            path = os.path.join(d, f"m{n}.eml")
            open(path, "wb").write(eml(n, u, size=500 + 300 * (n % 7)))
            files[path] = u
total = len(files)

portfile = os.path.join(fx, "port")
sim = subprocess.Popen([sys.executable, SIM, "--fixtures", fx, "--port", "0", "--port-file", portfile,
                        "--default-delta-page-size", "5", "--token-ttl", "3599"],
                       stdout=subprocess.DEVNULL, stderr=open(os.path.join(RUN, "log", f"graphsim-{SUFFIX}.log"), "w"))
try:
    port = int(wait_for(lambda: os.path.exists(portfile) and open(portfile).read().strip(), "the simulator's port", 30))
    base_url = f"http://127.0.0.1:{port}"

    def sim_post(path, doc=None):
        req = urllib.request.Request(base_url + path, data=json.dumps(doc or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read() or b"{}")

    def sim_stats():
        return json.loads(urllib.request.urlopen(base_url + "/_sim/stats", timeout=10).read())

    t = f"m365-{SUFFIX}"
    add_tenant(t)
    prof = {"name": "graph", "type": "graph",
            "graph": {"tenant_id": tenant_id, "client_id": "app-1", "client_secret": secret,
                      "login_base": base_url, "graph_base": base_url + "/v1.0"},
            "mailboxes": [{"login": "alice@contoso.com"}, {"login": "bob@contoso.com"}]}
    path = os.path.join(RUN, f"graph-profile-{SUFFIX}.json")
    json.dump(prof, open(path, "w"))
    cli("profile", "add", "--tenant", t, "--file", path)
    os.unlink(path)
    shown = cli("profile", "show", "--tenant", t, "graph").stdout
    check(secret not in shown, "the stored profile has no client secret")

    with Workers(1):
        run(t, "graph")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        check(all(m["state"] == "done" for m in st.values()), "both mailboxes done")
        check(sum(m["messages"] for m in st.values()) == total, f"all {total} messages archived")
        recs = index(t)
        check(len(recs) == total, f"the index lists {len(recs)} records for {total} messages")
        by_hash = {hashlib.sha256(open(p, "rb").read()).hexdigest(): p for p in files}
        check(all(r["hash"] in by_hash for r in recs), "every record's hash is a fixture file's sha256")
        check({r["hash"] for r in recs} == set(by_hash), "every fixture file is archived")
        folders = {(r["mailbox"], r["folder"]) for r in recs}
        check(("alice@contoso.com", "Inbox/Projects") in folders and ("alice@contoso.com", "Sent Items") in folders,
              f"folder paths are kept in the index: {sorted(folders)}")
        sample = recs[::7]
        check(all(cli_bytes("get", "--tenant", t, r["hash"]) == open(by_hash[r["hash"]], "rb").read() for r in sample),
              "mailvault get returns the exact bytes")

        run(t, "graph")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        check(sum(m["messages"] for m in st.values()) == 0, "a second run archives nothing (delta)")

        inbox = os.path.join(fx, tenant_id, "users", "alice@contoso.com", "mail", "Inbox")
        sent = os.path.join(fx, tenant_id, "users", "alice@contoso.com", "mail", "SentItems")
        new_path = os.path.join(inbox, "new.eml")
        open(new_path, "wb").write(eml(999, "alice"))
        victims = sorted(p for p in os.listdir(inbox) if p.endswith(".eml") and p != "new.eml")
        deleted = os.path.join(inbox, victims[0])
        deleted_hash = hashlib.sha256(open(deleted, "rb").read()).hexdigest()
        os.unlink(deleted)
        moved_hash = hashlib.sha256(open(os.path.join(inbox, victims[1]), "rb").read()).hexdigest()
        shutil.move(os.path.join(inbox, victims[1]), os.path.join(sent, victims[1]))
        sim_post("/_sim/expire-tokens")  # the cached token is now refused: one refresh must follow
        sim_post("/_sim/faults", {"path_regex": r"\$value", "status": 429, "retry_after": 1, "count": 2})
        run(t, "graph")
        a = {m["mailbox"]: m for m in status(t)["mailboxes"]}["alice@contoso.com"]
        check(a["state"] == "done", f"the incremental run finished after a token expiry and 429s ({a['error']!r})")
        check(a["messages"] == 2, f"only the new and the moved message were fetched ({a['messages']})")
        check(a["deduplicated"] == 1, "the moved message deduplicated against its stored copy")
        recs2 = index(t, "alice@contoso.com")
        check(any(r["hash"] == deleted_hash for r in recs2), "the message deleted at the source stays archived")
        check(any(r["hash"] == moved_hash and r["folder"] == "Sent Items" for r in recs2),
              "the moved message is indexed in its new folder")
        check(a["removed_at_source"] >= 2, f"removals were counted, not acted on ({a['removed_at_source']})")
        check(a["throttled"] >= 1, f"the injected 429s were waited out ({a['throttled']})")
        stats = sim_stats()
        tokens = stats["stats"][tenant_id]["_token"]["requests"]
        print(f"# token requests over three runs: {tokens}")
        check(tokens == 2, f"tokens come from the cluster-wide cache and a refused token is "
                           f"refreshed once for all tasks: {tokens} token requests in 3 runs "
                           "(expected 2: the first, and one after the forced expiry)")
finally:
    sim.send_signal(signal.SIGTERM)
    sim.wait(timeout=30)
print("1 passed, 0 failed")
