"""0031: messages without a Message-ID are not exported twice after a crash between an APPEND
and its record.

The destination cannot be searched for such a message, and the record of what it received is
written after the server's OK. So before sending one the worker marks it "being sent"; an
attempt that finds the mark without a record compares bytes at the destination (the messages
of the same size, fetched and hashed) before sending it again.

60 messages without a Message-ID are archived and exported to Dovecot through a proxy that
holds back the tagged OK of one APPEND (MULTIAPPEND batches: Dovecot has stored the batch, the
worker never learns it); the worker is SIGKILLed there and a new one finishes the export: every
message at the destination exactly once, byte for byte. The same with one APPEND per message."""
import hashlib

from mvtest import *

CHUNK = 12
t = f"enomid-{SUFFIX}"
src = f"nomid-{SUFFIX}"
dsts = {"multi": f"nmd1-{SUFFIX}", "single": f"nmd2-{SUFFIX}"}
seed(src, "pw-n", 1, folders="INBOX", seed=91)
for u in dsts.values():
    seed(u, "pw-d", 1, folders="INBOX", seed=92)

# the source: 60 messages without a Message-ID (different bodies, some of equal size)
c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
c.login(src, "pw-n")
for i in range(60):
    body = (f"body {i:03d} " + "x" * (i % 7) + "\r\n") * 20
    msg = f"From: a{i}@example.org\r\nTo: {src}\r\nSubject: no id {i}\r\n\r\n{body}".encode()
    c.append("INBOX", None, None, msg)
c.logout()
add_tenant(t)
add_profile(t, "imap", [(src, "pw-n")])
settings = dict(MAILVAULT_WORKER_CHUNK_MESSAGES=CHUNK, MAILVAULT_WORKER_LEASE_TTL_MS=3000,
                MAILVAULT_EXPORT_APPEND_BATCH=5)


def dest_hashes(user):
    return [hashlib.sha256(raw).hexdigest() for (name, _), raw in imap_messages(user, "pw-d").items()
            if name.startswith("Restored")]


def export_state(name):
    return {m["mailbox"]: m for m in status(t)["mailboxes"]}[f"export:{name}"]


w = Workers(1, **settings)
try:
    run(t, "imap")
    source = [hashlib.sha256(raw).hexdigest() for raw in imap_messages(src, "pw-n").values()]
    ids = [l for raw in imap_messages(src, "pw-n").values() for l in raw.split(b"\r\n\r\n")[0].split(b"\r\n")
           if l.lower().startswith(b"message-id:")]
    check(len(source) == 61 and len(ids) == 1, "60 of the 61 archived messages have no Message-ID")
    for mode, user in dsts.items():
        hold_after = 2 * CHUNK + 3  # in the third chunk
        proxy = HoldingProxy(lambda p, line: b" OK [APPENDUID " in line and p.appended > hold_after)
        name = f"to-{mode}"
        f = os.path.join(RUN, f"{name}-{SUFFIX}.json")
        json.dump({"name": name, "type": "export", "export": {"mailbox": src, "destination": {
            "type": "imap", "host": "127.0.0.1", "port": proxy.port, "tls": "none", "login": user,
            "password": "pw-d", "root": "Restored", "multiappend": mode == "multi"}}}, open(f, "w"))
        cli("export", "--tenant", t, "--file", f)
        wait_for(proxy.held.is_set, f"{name}: an APPEND's OK held back", 240, 0.01)
        w.kill(len(w.procs) - 1)
        stored = len(dest_hashes(user))
        check(stored == proxy.appended and export_state(name)["state"] not in ("done", "failed"),
              f"{name}: killed after Dovecot stored {stored} messages, before the worker knew")
        proxy.armed = False
        w.start()
        wait_for(lambda: export_state(name)["state"] in ("done", "failed"), f"{name} to finish", 240)
        got = dest_hashes(user)
        check(export_state(name)["state"] == "done", f"{name}: finished after the restart")
        check(len(got) == len(set(got)), f"{name}: no message twice ({len(got)} at the destination)")
        check(sorted(got) == sorted(set(source)), f"{name}: every message once, byte for byte")
        proxy.close()
finally:
    codes = w.stop()
print("1 passed, 0 failed")
