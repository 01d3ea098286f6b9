"""0014: `mailvault profile test` gives a clear verdict from the server's own error bodies:
OK, a wrong client secret, a missing application permission, a mailbox that does not exist,
and for IMAP a good and a refused login. Exit 0 only when the check passed."""
from mvtest import *

tid = f"adatum-{SUFFIX}"
secret = f"s-{SUFFIX}"
fx, files = graph_fixture(tid, secret, {"eve@adatum.com": {"Inbox": 2, "SentItems": 1}})
tid2 = f"noperm-{SUFFIX}"
graph_fixture(tid2, secret, {"fay@noperm.com": {"Inbox": 1}}, base=fx)
json.dump({"client_id": "app-1", "client_secret": secret, "permissions": ["User.Read.All"]},
          open(os.path.join(fx, tid2, "app.json"), "w"))

with GraphSim(fx) as sim:
    t = f"ptest-{SUFFIX}"
    add_tenant(t)
    add_graph_profile(t, "good", tid, secret, sim.url, ["eve@adatum.com"])
    p = cli("profile", "test", "--tenant", t, "good")
    check(p.stdout.startswith("OK") and "2 folders" in p.stdout, f"a working profile: {p.stdout.strip()}")
    p = cli("profile", "test", "--tenant", t, "good", "--mailbox", "nobody@adatum.com", expect=1)
    check("FAILED mailbox nobody@adatum.com" in p.stdout and "does not exist" in p.stdout,
          f"an unknown mailbox: {p.stdout.strip()}")

    add_graph_profile(t, "badsecret", tid, "not-the-secret", sim.url, ["eve2@adatum.com"])
    p = cli("profile", "test", "--tenant", t, "badsecret", expect=1)
    check("FAILED token" in p.stdout and "client secret is wrong" in p.stdout and "not-the-secret" not in p.stdout,
          f"a wrong secret: {p.stdout.strip()}")

    add_graph_profile(t, "noperm", tid2, secret, sim.url, ["fay@noperm.com"])
    p = cli("profile", "test", "--tenant", t, "noperm", expect=1)
    check("lacks an application permission" in p.stdout and "ErrorAccessDenied" in p.stdout,
          f"a missing Mail.Read permission: {p.stdout.strip()}")

user = f"gus-{SUFFIX}"
seed(user, "pw-gus", 2, folders="INBOX,Sent")
add_profile(t, "imap", [(user, "pw-gus")])
p = cli("profile", "test", "--tenant", t, "imap")
check(p.stdout.startswith("OK") and "logged in" in p.stdout, f"IMAP: {p.stdout.strip()}")
add_profile(t, "imapbad", [(f"hal-{SUFFIX}", "wrong")])
p = cli("profile", "test", "--tenant", t, "imapbad", expect=1)
check("FAILED" in p.stdout and "refused the credentials" in p.stdout, f"IMAP, refused: {p.stdout.strip()}")
print("1 passed, 0 failed")
