"""0029: a saved search over every archived mailbox of a tenant ("mailbox": "*").

Two mailboxes are archived; an export profile with "mailbox": "*" and a subject search writes,
into a directory, exactly the messages of both mailboxes whose Subject contains the word (as
Python's email parser reads the headers from Dovecot), each under "<mailbox>/<folder>/", byte
for byte. A flat export of the same search holds each distinct message once."""
import email.parser
import email.policy
import hashlib
from collections import Counter

from mvtest import *

t = f"etw-{SUFFIX}"
users = [f"gil-{SUFFIX}", f"hal-{SUFFIX}"]
seed(users[0], "pw-g", 30, folders="INBOX,Sent", seed=71)
seed(users[1], "pw-h", 30, folders="INBOX,Archive", seed=72)
add_tenant(t)
add_profile(t, "imap", [(users[0], "pw-g"), (users[1], "pw-h")])

msgs = {u: imap_messages(u, pw) for u, pw in zip(users, ["pw-g", "pw-h"])}
parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
subjects = Counter(str(parser.parsebytes(raw)["Subject"]).split()[0].lower()
                   for m in msgs.values() for raw in m.values())
word = next(w for w, n in subjects.most_common() if n >= 2)
want = {}
for u, m in msgs.items():
    for (folder, _), raw in m.items():
        if word in str(parser.parsebytes(raw)["Subject"]).lower():
            want.setdefault(f"{u}/{folder}", set()).add(hashlib.sha256(raw).hexdigest())
check(len(want) >= 2 and all(u in "".join(want) for u in users),
      f"the search for {word!r} matches messages in both mailboxes ({sum(map(len, want.values()))})")


def export(name, path, layout):
    doc = {"name": name, "type": "export",
           "export": {"mailbox": "*", "search": {"subject": word.upper()},
                      "destination": {"type": "directory", "path": path, "layout": layout}}}
    cli("export", "--tenant", t, "--file", profile_file(name, doc), "--wait")


def tree(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            data = open(os.path.join(d, n), "rb").read()
            if n != hashlib.sha256(data).hexdigest() + ".eml":
                fail(f"{n} does not hash to its name")
            out.setdefault(os.path.relpath(d, root), set()).add(n[:-4])
    return out


with Workers(1):
    run(t, "imap")
    d1 = os.path.join(RUN, f"tenant-export-{SUFFIX}")
    export("all-tree", d1, "tree")
    got = tree(d1)
    check(got == want,
          f"tree: the matches of both mailboxes under <mailbox>/<folder> ({sorted(got)})")
    d2 = os.path.join(RUN, f"tenant-export-flat-{SUFFIX}")
    export("all-flat", d2, "flat")
    flat = tree(d2)
    check(flat == {".": set().union(*want.values())}, f"flat: each distinct match once ({len(flat.get('.', ()))})")
print("1 passed, 0 failed")
