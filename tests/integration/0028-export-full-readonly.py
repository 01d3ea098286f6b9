"""0028: an IMAP export destination that is full, or read-only, fails clearly and loses nothing.

On the stack's Dovecot (quota and acl plugins): a user with a small storage quota receives an
export until Dovecot answers NO [OVERQUOTA]; the task fails at once (no retries against a full
mailbox) with "the destination is full" in `mailvault status`, exit 1 from `run --wait`; every
message that did arrive is whole (byte-exact copies of archived ones). After the quota is
raised the same export completes, appending only what was missing. A root folder the user may
only read (global ACL "lr") fails the export with "the destination is read-only" and nothing
appended."""
import hashlib

from mvtest import *

t = f"efull-{SUFFIX}"
src, full, ro = f"sol-{SUFFIX}", f"fay-{SUFFIX}", f"rob-{SUFFIX}"
seed(src, "pw-s", 16, folders="INBOX,Sent", seed=61, mean_kb=30)
seed(full, "pw-f", 1, folders="INBOX", seed=62, mean_kb=4, quota="150K")
seed(ro, "pw-r", 1, folders="INBOX", seed=63, mean_kb=4)
add_tenant(t)
add_profile(t, "imap", [(src, "pw-s")])
locked = f"Locked-{SUFFIX}"


def hashes(user, password, prefix):
    """sha256 of every message in the user's folders named prefix..."""
    out = []
    for (name, _), raw in imap_messages(user, password).items():
        if name.startswith(prefix):
            out.append(hashlib.sha256(raw).hexdigest())
    return out


def export_profile(name, user, password, **dest):
    doc = {"name": name, "type": "export",
           "export": {"mailbox": src, "destination": {"type": "imap", "host": "127.0.0.1", "port": IMAP_PORT,
                                                       "tls": "none", "login": user, "password": password, **dest}}}
    add_profile_doc(t, name, doc)


def set_quota(user, rule):
    passwd = os.path.join(RUN, "dovecot", "passwd")
    lines = open(passwd).read().splitlines()
    lines = [l.split(":::", 1)[0] + f"::::::userdb_quota_rule=*:storage={rule}" if l.startswith(user + ":") else l
             for l in lines]
    st = os.stat(passwd)
    with open(passwd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.utime(passwd, (st.st_atime, max(time.time(), st.st_mtime + 1.0)))


with Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=50, MAILVAULT_EXPORT_APPEND_BATCH=2):
    run(t, "imap")
    archived = {hashlib.sha256(raw).hexdigest() for raw in imap_messages(src, "pw-s").values()}
    check(len(archived) == 16, f"{len(archived)} distinct messages archived")

    # full
    export_profile("to-full", full, "pw-f", root="Restored", layout="flat")
    r = run(t, "to-full", expect=None, timeout=120)
    m = export_state(t, "to-full")
    check(r.returncode == 1 and m["state"] == "failed" and "the destination is full" in m["error"]
          and "OVERQUOTA" in m["error"] and full in m["error"],
          f"a full destination fails the export with that cause: {m['error'][:140]!r}")
    check(m.get("attempt", 0) <= 1, f"no retries against a full mailbox (attempt {m.get('attempt')})")
    got = hashes(full, "pw-f", "Restored")
    check(0 < len(got) < len(archived) and set(got) <= archived and len(set(got)) == len(got),
          f"what arrived ({len(got)} of {len(archived)}) is whole, once each")

    set_quota(full, "100M")

    def raised():
        c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
        c.login(full, "pw-f")
        typ, data = c.getquotaroot("INBOX")
        c.logout()
        return typ == "OK" and b"STORAGE" in data[1][0] and int(data[1][0].split()[-1].rstrip(b")")) >= 102400
    wait_for(raised, "Dovecot to read the raised quota (GETQUOTAROOT)", 30)
    run(t, "to-full")
    got2 = hashes(full, "pw-f", "Restored")
    m = export_state(t, "to-full")
    check(sorted(got2) == sorted(archived) and m["messages"] == len(archived) - len(got),
          f"after the quota is raised the export completes: {m['messages']} appended, "
          f"{len(got2)} there, none twice")

    # read-only: the root folder exists, the user may list and read it but not insert
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(ro, "pw-r")
    check(c.create(locked)[0] == "OK", f"{locked} created at the destination")
    c.logout()
    with open(os.path.join(RUN, "dovecot", "acl"), "a") as fh:
        fh.write(f"{locked} owner lr\n")

    def refused():
        c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
        c.login(ro, "pw-r")
        typ, data = c.append(locked, None, None, b"Subject: probe\r\n\r\nprobe\r\n")
        c.logout()
        if typ == "OK":
            fail("an APPEND into the read-only folder was accepted before the ACL applied")
        return typ == "NO" and b"NOPERM" in data[0]
    wait_for(refused, "Dovecot to apply the ACL", 30)
    export_profile("to-ro", ro, "pw-r", root=locked, layout="flat")
    r = run(t, "to-ro", expect=None, timeout=120)
    m = export_state(t, "to-ro")
    check(r.returncode == 1 and m["state"] == "failed" and "the destination is read-only" in m["error"]
          and "NOPERM" in m["error"], f"a read-only destination fails with that cause: {m['error'][:140]!r}")
    check(hashes(ro, "pw-r", locked) == [], "nothing was appended to it")
print("1 passed, 0 failed")
