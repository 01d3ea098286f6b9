#!/usr/bin/env python3
"""seed.py - fill a Dovecot Maildir++ mailbox of the local stack with generated mail.

Writes message files straight into RUN/mail/<user>/[.<Folder>/]cur (Dovecot picks them up on
the next SELECT) and adds the user to the passwd file when missing. The corpus is
deterministic for a given --seed: text mails of varying length plus attachments (random,
incompressible bytes, like the PDFs and images of real mail), sizes drawn from a log-normal
distribution around --mean-kb.

  seed.py --run DIR --user alice@t1 --password pw --messages 200 --folders INBOX,Sent,Archive
"""
import argparse
import base64
import email.utils
import os
import pwd
import random
import sys
import time

WORDS = ("archive mailbox invoice meeting project budget report schedule quarter review "
         "customer tenant server storage backup contract delivery update security policy "
         "team travel agenda notes draft final approval request question answer thanks "
         "regards please attached document spreadsheet presentation deadline monday friday").split()


def text(rng, n):
    out, line = [], []
    for _ in range(n):
        line.append(rng.choice(WORDS))
        if len(line) > 11:
            out.append(" ".join(line))
            line = []
    out.append(" ".join(line))
    return "\r\n".join(out)


def message(rng, i, user, size):
    sender = f"{rng.choice(['anna', 'ben', 'carla', 'dev', 'erik'])}@example.org"
    date = email.utils.formatdate(1700000000 + i * 3600 + rng.randrange(3600))
    subject = f"{rng.choice(WORDS).title()} {rng.choice(WORDS)} #{i}"
    hdr = (f"From: {sender}\r\nTo: {user}\r\nSubject: {subject}\r\nDate: {date}\r\n"
           f"Message-ID: <{i}.{rng.getrandbits(48):x}@seed.mailvault>\r\nMIME-Version: 1.0\r\n")
    body_words = max(20, min(size, 6000) // 7)
    body = text(rng, body_words)
    if size < 12000 or rng.random() < 0.25:
        msg = hdr + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
        if len(msg) < size:
            msg += text(rng, (size - len(msg)) // 7) + "\r\n"
        return msg.encode()
    boundary = f"b{rng.getrandbits(64):x}"
    att = base64.encodebytes(rng.randbytes(max(0, int((size - len(body) - 600) * 0.74)))).decode()
    att = att.replace("\n", "\r\n")
    name = f"{rng.choice(WORDS)}-{i}.pdf"
    msg = (hdr + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
           f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
           f"--{boundary}\r\nContent-Type: application/pdf; name=\"{name}\"\r\n"
           f"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
           f"{att}--{boundary}--\r\n")
    return msg.encode()


def wait_for_login(run, user, password, timeout=15.0):
    """Dovecot notices a changed passwd-file on its own schedule: return once the new user can
    log in, so callers never race it (a refused login would be a permanent failure)."""
    import imaplib
    env = dict(l.strip().split("=", 1) for l in open(os.path.join(run, "env")) if "=" in l)
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = imaplib.IMAP4("127.0.0.1", int(env["MV_IMAP_PORT"]))
            try:
                c.login(user, password)
                c.logout()
                return
            finally:
                try:
                    c.shutdown()
                except OSError:
                    pass
        except imaplib.IMAP4.error:
            if time.monotonic() > deadline:
                sys.exit(f"seed.py: Dovecot still refuses {user} after {timeout:.0f} s")
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--folders", default="INBOX,Sent,Archive")
    ap.add_argument("--mean-kb", type=float, default=75.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait until Dovecot lets a new user log in (when seeding many "
                         "users, wait only for the last)")
    ap.add_argument("--duplicates", type=int, default=0, help="copy this many messages into a second folder")
    ap.add_argument("--quota", default="", help="a new user's storage quota (Dovecot syntax, e.g. 200K)")
    a = ap.parse_args()

    passwd = os.path.join(a.run, "dovecot", "passwd")
    lines = open(passwd).read().splitlines() if os.path.exists(passwd) else []
    added = not any(l.split(":", 1)[0] == a.user for l in lines)
    if added:
        with open(passwd, "a") as f:
            extra = f"::::::userdb_quota_rule=*:storage={a.quota}" if a.quota else ""
            f.write(f"{a.user}:{{PLAIN}}{a.password}{extra}\n")
        # Dovecot re-reads a passwd-file when its mtime changes; two appends within one second
        # would keep the mtime it already saw, so move it forward explicitly.
        st = os.stat(passwd)
        os.utime(passwd, (st.st_atime, max(time.time(), st.st_mtime + 1.0)))
    vm = pwd.getpwnam("vmail")
    home = os.path.join(a.run, "mail", a.user)
    folders = [f.strip() for f in a.folders.split(",") if f.strip()]
    rng = random.Random(a.seed)
    mu = 0.0
    import math
    sigma = 1.0
    mu = math.log(a.mean_kb * 1024) - sigma * sigma / 2
    total = 0
    written = []
    for i in range(a.messages):
        folder = folders[i % len(folders)]
        d = home if folder.upper() == "INBOX" else os.path.join(home, "." + folder)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        size = int(min(max(rng.lognormvariate(mu, sigma), 800), 20 * 1024 * 1024))
        data = message(rng, i, a.user, size)
        name = f"{1700000000 + i}.M{i}P{os.getpid()}.seed,S={len(data)}:2,S"
        path = os.path.join(d, "cur", name)
        with open(path, "wb") as f:
            f.write(data)
        written.append((data, i))
        total += len(data)
    for k in range(min(a.duplicates, len(written))):
        d = os.path.join(home, ".Duplicates")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        data, i = written[k]
        with open(os.path.join(d, "cur", f"{1800000000 + k}.M{k}P{os.getpid()}.dup,S={len(data)}:2,S"), "wb") as f:
            f.write(data)
    for root, dirs, files in os.walk(home):
        os.chown(root, vm.pw_uid, vm.pw_gid)
        for fn in files:
            os.chown(os.path.join(root, fn), vm.pw_uid, vm.pw_gid)
    if added:
        if not a.no_wait:
            wait_for_login(a.run, a.user, a.password)
    print(f"seeded user={a.user} messages={a.messages} bytes={total} folders={','.join(folders)}"
          f" duplicates={min(a.duplicates, len(written))}")


if __name__ == "__main__":
    sys.exit(main())
