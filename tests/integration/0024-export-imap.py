"""0024: export to an IMAP mailbox on a real Dovecot: byte-exact, dates and flags kept, never
duplicated.

A mailbox archived from Dovecot is exported into another Dovecot user under a root folder with
its folder structure (APPEND with LITERAL+, as Dovecot offers it): every message arrives byte
for byte in the right folder with its INTERNALDATE and \\Seen flag; a second run appends
nothing; a message deleted at the destination by hand is appended again, once. Messages go in
MULTIAPPEND batches (Dovecot offers it). A flat export with synchronising literals and one
APPEND per message (LITERAL+ and MULTIAPPEND not used) puts each distinct message into one
folder once. A wrong destination password fails clearly."""
import hashlib
import imaplib

from mvtest import *

t = f"eimap-{SUFFIX}"
src, dst1, dst2 = f"sara-{SUFFIX}", f"dora-{SUFFIX}", f"flo-{SUFFIX}"
seed(src, "pw-s", 30, folders="INBOX,Sent,Projects", seed=41, duplicates=2)
seed(dst1, "pw-d1", 1, folders="INBOX", seed=42)   # a mailbox that already has mail of its own
seed(dst2, "pw-d2", 1, folders="INBOX", seed=43)
add_tenant(t)
add_profile(t, "imap", [(src, "pw-s")])


def mailbox_view(user, password, root):
    """{(folder under root, sha256): (internaldate text, seen)} and the count of messages."""
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(user, password)
    typ, boxes = c.list()
    out, n = {}, 0
    for b in boxes:
        text = b.decode()
        delim = text.split('"')[1]
        name = text.rsplit(f' "{delim}" ', 1)[1].strip('"')
        if name != root and not name.startswith(root + delim):
            continue
        if "\\Noselect" in text or "\\NonExistent" in text:
            continue
        if c.select(f'"{name}"', readonly=True)[0] != "OK":
            fail(f"cannot select {name}")
        typ, data = c.uid("FETCH", "1:*", "(INTERNALDATE FLAGS BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                meta = item[0].decode()
                idate = meta.split('INTERNALDATE "')[1].split('"')[0]
                out[(name[len(root) + 1:] if name != root else "", hashlib.sha256(item[1]).hexdigest())] = (
                    idate, "\\Seen" in meta)
                n += 1
    c.logout()
    return out, n


def source_view():
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(src, "pw-s")
    out = {}
    names = [b.decode().rsplit(" ", 1)[1].strip('"') for b in c.list()[1] if "Noselect" not in b.decode()]
    for name in names:
        c.select(f'"{name}"', readonly=True)
        typ, data = c.uid("FETCH", "1:*", "(INTERNALDATE FLAGS BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                meta = item[0].decode()
                out[(name, hashlib.sha256(item[1]).hexdigest())] = (meta.split('INTERNALDATE "')[1].split('"')[0],
                                                                   "\\Seen" in meta)
    c.logout()
    return out


def appends(ws, export):
    """(messages written, APPEND commands) of an export, summed over its chunks' log lines."""
    w = a = 0
    for path in ws.logs:
        for line in open(path):
            if "destination=imap" in line and f"export={export} " in line:
                w += int(line.split("written=")[1].split()[0])
                a += int(line.split("appends=")[1].split()[0])
    return w, a


def export_profile(name, user, password, **dest):
    doc = {"name": name, "type": "export",
           "export": {"mailbox": src, "destination": {"type": "imap", "host": "127.0.0.1", "port": IMAP_PORT,
                                                       "tls": "none", "login": user, "password": password, **dest}}}
    return profile_file(name, doc)


with Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=9) as ws:
    run(t, "imap")
    want = source_view()
    check(len(want) > 20, f"the source has {len(want)} (folder, message) pairs")

    f = export_profile("to-dora", dst1, "pw-d1", root="Restored")
    cli("profile", "add", "--tenant", t, "--file", f)
    test = cli("profile", "test", "--tenant", t, "to-dora").stdout
    check(test.startswith("OK") and "LITERAL+" in test and "MULTIAPPEND" in test,
          f"profile test logs in: {test.strip()}")
    run(t, "to-dora")
    got, n = mailbox_view(dst1, "pw-d1", "Restored")
    check(n == len(want), f"one message per (folder, message) ({n} of {len(want)})")
    check(set(got) == set(want), "every message in its folder under Restored, byte for byte")
    check(all(got[k] == want[k] for k in want), "INTERNALDATE and \\Seen kept")
    m = export_state(t, "to-dora")
    check(m["state"] == "done" and m["messages"] == len(want) and m["chunk"] >= 3,
          f"appended in chunks ({m['messages']} messages, {m['chunk'] + 1} chunks)")
    check(m["deduplicated"] == 0,
          "each chunk went on where the previous one stopped: nothing counted as already there")
    w, a = appends(ws, "to-dora")
    check(w == len(want) and a < w, f"in MULTIAPPEND batches: {w} messages in {a} APPEND commands")

    run(t, "to-dora")
    got2, n2 = mailbox_view(dst1, "pw-d1", "Restored")
    m = export_state(t, "to-dora")
    check(n2 == n and m["messages"] == 0 and m["deduplicated"] == len(want),
          f"a second run appends nothing ({m['messages']} appended, {n2} at the destination)")

    # a message removed at the destination by hand comes back, once
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(dst1, "pw-d1")
    typ, boxes = c.list()
    inbox = [b.decode().rsplit(" ", 1)[1].strip('"') for b in boxes if b.decode().rstrip('"').endswith("INBOX")
             and "Restored" in b.decode()][0]
    c.select(f'"{inbox}"')
    c.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
    c.expunge()
    c.logout()
    _, n3 = mailbox_view(dst1, "pw-d1", "Restored")
    check(n3 == n - 1, "one message removed by hand")
    run(t, "to-dora")
    got4, n4 = mailbox_view(dst1, "pw-d1", "Restored")
    check(n4 == n and set(got4) == set(want), f"it was appended again, once ({n4})")

    # flat, synchronising literals
    f = export_profile("to-flo", dst2, "pw-d2", root="Flat", layout="flat", literal_plus=False,
                       multiappend=False)
    cli("export", "--tenant", t, "--file", f, "--wait")
    got5, n5 = mailbox_view(dst2, "pw-d2", "Flat")
    distinct = {h for _, h in want}
    check({h for _, h in got5} == distinct and n5 == len(distinct),
          f"flat: each distinct message once in one folder ({n5} of {len(distinct)})")
    w, a = appends(ws, "to-flo")
    check(w == a == len(distinct), f"without MULTIAPPEND one APPEND per message ({a} for {w})")

    # a wrong password
    f = export_profile("to-nowhere", dst2, "wrong")
    cli("profile", "add", "--tenant", t, "--file", f)
    r = run(t, "to-nowhere", expect=None, timeout=120)
    m = export_state(t, "to-nowhere")
    check(r.returncode == 1 and m["state"] == "failed" and "AUTHENTICATIONFAILED" in m["error"].upper(),
          f"a refused login fails the export clearly: {m['error']!r}")
print("1 passed, 0 failed")
