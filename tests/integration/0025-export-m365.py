"""0025: export to a Microsoft 365 mailbox over IMAP with AUTHENTICATE XOAUTH2.

The destination is a Dovecot that accepts only XOAUTH2 and validates each token with its oauth2
passdb through the Graph simulator's introspection URL (tests/graphsim): the token must come
from the simulator's Entra ID token endpoint for https://outlook.office365.com/.default and
carry IMAP.AccessAsApp, and the app must hold FullAccess on the target mailbox (the simulator's
grants, which it writes as a passwd-file that Dovecot consults after the token).

A mailbox archived from the stack's Dovecot is exported to alice (FullAccess granted): every
message arrives byte for byte under the root folder, read back by imaplib with a token of its
own; the token went through introspection; a second run appends nothing. For bob (no grant),
`profile test` and the export name the missing FullAccess and the fix; after the grant is added
the export succeeds. A wrong client secret is reported as the token error it is."""
import hashlib

from mvtest import *

t = f"em365-{SUFFIX}"
src = f"mia-{SUFFIX}"
tid = f"contoso-{SUFFIX}.onmicrosoft.com"
alice, bob = f"alice-{SUFFIX}@contoso.com", f"bob-{SUFFIX}@contoso.com"
secret = "m365-secret"
seed(src, "pw-m", 24, folders="INBOX,Sent,Projects", seed=51, duplicates=1)
add_tenant(t)
add_profile(t, "imap", [(src, "pw-m")])

fx, _ = graph_fixture(tid, secret, {alice: {}, bob: {}})
with open(os.path.join(fx, tid, "app.json"), "w") as fh:
    json.dump({"client_id": "app-1", "client_secret": secret, "permissions": ["Mail.Read"],
               "exchange_permissions": ["IMAP.AccessAsApp"], "full_access": [alice]}, fh)
grants = os.path.join(fx, "grants")


def source_view():
    """{(folder, sha256): count} of the source mailbox."""
    out = {}
    for (name, _), raw in imap_messages(src, "pw-m").items():
        k = (name, hashlib.sha256(raw).hexdigest())
        out[k] = out.get(k, 0) + 1
    return out


def dest_view(dc, token, user, root):
    """{(folder under root, sha256): count} read with XOAUTH2 by imaplib."""
    c = dc.login(token, user)
    out = {}
    for b in c.list()[1]:
        text = b.decode()
        delim = text.split('"')[1]
        name = text.rsplit(f' "{delim}" ', 1)[1].strip('"')
        if name != root and not name.startswith(root + delim) or "\\Noselect" in text:
            continue
        c.select(f'"{name}"', readonly=True)
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                k = (name[len(root) + 1:], hashlib.sha256(item[1]).hexdigest())
                out[k] = out.get(k, 0) + 1
    c.logout()
    return out


def profile(name, mailbox, sim, dc, client_secret=secret):
    doc = {"name": name, "type": "export",
           "export": {"mailbox": src, "destination": {
               "type": "m365", "mailbox": mailbox, "tenant_id": tid, "client_id": "app-1",
               "client_secret": client_secret, "login_base": sim.url,
               "host": "127.0.0.1", "port": dc.port, "tls": "none", "root": "Restored"}}}
    add_profile_doc(t, name, doc)


with GraphSim(fx, "--grants-dir", grants) as sim, OAuthDovecot(sim.url, grants) as dc, \
        Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=10):
    run(t, "imap")
    want = source_view()
    check(sum(want.values()) > 20, f"the source has {sum(want.values())} messages")
    outlook = entra_token(sim.url, tid, "app-1", secret, "https://outlook.office365.com/.default")
    graph_tok = entra_token(sim.url, tid, "app-1", secret, "https://graph.microsoft.com/.default")
    try:
        dc.login(graph_tok, alice)
        fail("a Graph token opened the mailbox over IMAP")
    except imaplib.IMAP4.error:
        check(True, "the Dovecot refuses a token for another resource (Graph)")

    profile("to-alice", alice, sim, dc)
    before = sim.admin_stats()
    test = cli("profile", "test", "--tenant", t, "to-alice").stdout
    check(test.startswith("OK"), f"profile test signs in with XOAUTH2: {test.strip()}")
    run(t, "to-alice")
    got = dest_view(dc, outlook, alice, "Restored")
    check(got == want, f"every message once under Restored, byte for byte ({sum(got.values())})")
    after = sim.admin_stats()
    check(after["introspections"] > before["introspections"],
          f"Dovecot validated the worker's token through the simulator "
          f"({after['introspections'] - before['introspections']} introspections)")
    m = export_state(t, "to-alice")
    check(m["state"] == "done" and m["messages"] == sum(want.values()), f"status counts {m['messages']}")

    run(t, "to-alice")
    m = export_state(t, "to-alice")
    check(m["messages"] == 0 and m["deduplicated"] == sum(want.values()) and
          dest_view(dc, outlook, alice, "Restored") == want, "a second run appends nothing")

    # bob has not granted the app FullAccess
    profile("to-bob", bob, sim, dc)
    r = cli("profile", "test", "--tenant", t, "to-bob", expect=None)
    out = r.stdout + r.stderr
    check(r.returncode != 0 and "FullAccess" in out and "Add-MailboxPermission" in out,
          f"profile test names the missing FullAccess and the fix: {out.strip()[:200]}")
    r = run(t, "to-bob", expect=None, timeout=120)
    m = export_state(t, "to-bob")
    check(r.returncode == 1 and m["state"] == "failed" and "FullAccess" in m["error"] and bob in m["error"],
          f"the export fails with that cause: {m['error'][:160]!r}")
    try:
        dc.login(outlook, bob)
        fail("bob's mailbox opened without a grant")
    except imaplib.IMAP4.error:
        check(True, "the independent client is refused for bob too")

    sim.post("/_sim/full-access", {"tenant": tid, "mailbox": bob})
    run(t, "to-bob")
    check(dest_view(dc, outlook, bob, "Restored") == want, "after the grant, bob's export completes")

    # a wrong client secret is a token error, not a permission one
    profile("bad-secret", alice, sim, dc, client_secret="not-it")
    r = run(t, "bad-secret", expect=None, timeout=120)
    m = export_state(t, "bad-secret")
    check(r.returncode == 1 and "AADSTS7000215" in m["error"] and "FullAccess" not in m["error"],
          f"a wrong secret is reported as such: {m['error'][:160]!r}")
print("1 passed, 0 failed")
