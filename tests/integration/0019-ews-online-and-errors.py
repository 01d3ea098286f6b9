"""0019: Exchange Online through EWS with an OAuth app (client credentials for
https://outlook.office365.com/.default, impersonation), and the errors an operator must be told
about plainly.

A Microsoft 365 tenant's archive mailboxes ("archive_mailbox": "only") and its public folders
are archived with an app token; the token comes from the cluster cache, and a token refused mid-run (401) is
refreshed once. Then, each with a clear error, exit 1 and the task in the dead-letter topic:
a service account without ApplicationImpersonation (ErrorImpersonateUserDenied), a mailbox
that does not exist (ErrorNonExistentMailbox), a wrong password (HTTP 401), and EWS turned off
for the organisation (HTTP 403: "EWS blocked", with what to do about it)."""
import hashlib

from mvtest import *

m365 = f"contoso-{SUFFIX}"
tid = f"5d7e4a3b-{SUFFIX}"
secret = f"app-secret-{SUFFIX}"
cid = "c0ffee00-0000-4000-8000-000000000001"
boxes = {"dee@contoso.com": {"mail": {"Inbox": 3}, "archive": {"Inbox": 6, "2020/Q1": 4}},
         "eve@contoso.com": {"mail": {"Inbox": 2}, "archive": {"Inbox": 5}}}
fx, files = ews_fixture(m365, {"kind": "m365", "tenant_id": tid,
                               "apps": {cid: {"secret": secret, "full_access_as_app": True}}}, boxes,
                        public={"Team": 3, "Team/Minutes": 2})
onprem = f"fabrikam-{SUFFIX}"
ews_fixture(onprem, {"kind": "onprem", "accounts": {"weak@fabrikam.example": {"password": "pw-weak", "impersonation": False},
                                                     "svc@fabrikam.example": {"password": "pw-svc", "impersonation": True}}},
            {"fay@fabrikam.example": {"mail": {"Inbox": 2}}}, base=fx)
off = f"closed-{SUFFIX}"
ews_fixture(off, {"kind": "onprem", "ews_enabled": False,
                  "accounts": {"svc@closed.example": {"password": "pw-c", "impersonation": True}}},
            {"gil@closed.example": {"mail": {"Inbox": 2}}}, base=fx)
archived = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p, (mb, kind) in files.items() if kind == "archive"}
public = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p, (mb, kind) in files.items() if kind == "public"}

with EwsSim(fx) as sim:
    t = f"exo-{SUFFIX}"
    add_tenant(t)
    p = add_ews_profile(t, "online", {"auth": "oauth", "tenant_id": tid, "client_id": cid, "client_secret": secret,
                                      "login_base": sim.url, "url": sim.ews_url},
                        list(boxes), archive_mailbox="only",
                        public_folders={"mailbox": "dee@contoso.com", "target_folder": "Org/Public"})
    check(p.returncode == 0, f"oauth profile saved: {p.stderr.strip()}")
    with Workers(1):
        run(t, "online")
        st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
        check(all(m["state"] == "done" for m in st.values()), f"archives and public folders done: {[m['error'] for m in st.values()]}")
        recs = [r for mb in boxes for r in index(t, mb)]
        check({r["hash"] for r in recs} == archived and len(recs) == len(archived),
              f"exactly the archive mailboxes' messages, byte for byte ({len(recs)} of {len(archived)})")
        check(all(r["folder"].startswith("Archive Mailbox/") for r in recs), "all under Archive Mailbox/")
        pf = index(t, "public-folders")
        check({r["hash"] for r in pf} == public and {r["folder"] for r in pf} == {"Org/Public/Team", "Org/Public/Team/Minutes"},
              f"the public folders under their target folder: {sorted({r['folder'] for r in pf})}")
        tokens = sim.full_stats()["global"]["token_requests"]
        check(tokens == 1, f"one token for all three tasks (the cluster cache): {tokens}")
        sim.post("/_sim/expire-tokens")
        with open(os.path.join(fx, m365, "mailboxes", "dee@contoso.com", "archive", "Inbox", "late.eml"), "wb") as f:
            f.write(ews_message(7001, "dee@contoso.com"))
        run(t, "online")
        d = {m["mailbox"]: m for m in status(t)["mailboxes"]}["dee@contoso.com"]
        check(d["state"] == "done" and d["messages"] == 1, f"after a refused token the run goes on ({d['error']!r})")
        tokens = sim.full_stats()["global"]["token_requests"]
        check(tokens == 2, f"the refused token was refreshed once for everyone: {tokens} token requests")

    def failing(tenant, name, ews, logins, needle):
        add_tenant(tenant)
        p = add_ews_profile(tenant, name, ews, logins)
        check(p.returncode == 0, f"{name}: profile saved ({p.stderr.strip()})")
        with Workers(1):
            r = run(tenant, name, expect=None, timeout=120)
        m = status(tenant)["mailboxes"][0]
        check(r.returncode == 1 and m["state"] == "failed", f"{name}: the run failed ({m['state']}, exit {r.returncode})")
        check(needle in m["error"], f"{name}: the error says {needle!r}: {m['error']!r}")
        return m

    failing(f"noimp-{SUFFIX}", "noimp", {"url": sim.ews_url, "username": "weak@fabrikam.example", "password": "pw-weak"},
            ["fay@fabrikam.example"], "ErrorImpersonateUserDenied")
    failing(f"nobox-{SUFFIX}", "nobox", {"url": sim.ews_url, "username": "svc@fabrikam.example", "password": "pw-svc"},
            ["nobody@fabrikam.example"], "ErrorNonExistentMailbox")
    failing(f"badpw-{SUFFIX}", "badpw", {"url": sim.ews_url, "username": "svc@fabrikam.example", "password": "wrong"},
            ["fay@fabrikam.example"], "401")
    m = failing(f"closed-{SUFFIX}", "closed", {"url": sim.ews_url, "username": "svc@closed.example", "password": "pw-c"},
                ["gil@closed.example"], "EWS blocked")
    check(m["attempt"] <= 1, f"EWS blocked is not retried ({m['attempt']} attempts)")
    test = cli("profile", "test", "--tenant", f"closed-{SUFFIX}", "closed", expect=1).stdout
    check("EwsEnabled" in test, f"profile test says how to turn EWS back on: {test.strip()}")
print("1 passed, 0 failed")
