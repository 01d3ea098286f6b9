"""0027: a worker killed with SIGKILL in the middle of an export, then another started.

A mailbox archived from Dovecot is exported in chunks of 15 messages, once into a directory
(signed) and twice into another Dovecot user (tree layout with LITERAL+, flat layout with
synchronising literals). Each time the only worker is SIGKILLed at a chosen point past the end
of the second chunk, a new worker is started, and the export must finish by itself: the killed
task's Kafka offset was never committed, its lease expires, and the chunk is redone.

The kill points are chosen by what can be observed, never by timing:
- directory: the worker is stopped (SIGSTOP) when a temporary ".mv-tmp-" file exists, and
  killed only if it is still there while the worker stands still (a half-written file);
- IMAP, LITERAL+ and MULTIAPPEND: the worker talks to Dovecot through a proxy in this test,
  which holds back the tagged OK of one APPEND: Dovecot has stored its messages, the worker
  never learns it (the crash between an APPEND and its record);
- IMAP, synchronising literals, one APPEND per message: the proxy holds back the server's "+"
  continuation of one APPEND: the command is sent, its message never is.

Afterwards every selected message is at the destination exactly once and byte for byte:
directory: the set of (folder, file) is exactly the archive's, each file hashes to its name and
equals `mailvault get`, no temporary file is left, the manifest verifies with openssl;
IMAP: fetched with imaplib, no (folder, Message-ID) and no (folder, SHA-256) appears twice,
and the set of (folder, SHA-256) is exactly the archive's."""
import email.parser
import hashlib
import imaplib
import socket
import subprocess
import threading

from mvtest import *

CHUNK = 15
t = f"ekill-{SUFFIX}"
src, dst1, dst2 = f"kira-{SUFFIX}", f"kdst-{SUFFIX}", f"kflat-{SUFFIX}"
seed(src, "pw-k", 150, folders="INBOX,Sent,Projects", seed=27, mean_kb=40, duplicates=6)
seed(dst1, "pw-d1", 1, folders="INBOX", seed=28)  # destinations with mail of their own
seed(dst2, "pw-d2", 1, folders="INBOX", seed=29)
add_tenant(t)
add_profile(t, "imap", [(src, "pw-k")])
settings = dict(MAILVAULT_WORKER_CHUNK_MESSAGES=CHUNK, MAILVAULT_WORKER_LEASE_TTL_MS=3000)


def profile_file(name, destination):
    f = os.path.join(RUN, f"{name}-{SUFFIX}.json")
    json.dump({"name": name, "type": "export", "export": {"mailbox": src, "destination": destination}},
              open(f, "w"))
    return f


def export_status(name):
    return {m["mailbox"]: m for m in status(t)["mailboxes"]}.get(f"export:{name}")


def kill_mid_export(w, name, kill_point, what):
    """Start the export and SIGKILL the (only, last started) worker as soon as kill_point()
    returns something true (the worker may be stopped at that moment). Returns what kill_point
    returned."""
    cli("export", "--tenant", t, "--file", profile_file(name, destinations[name]))
    at = wait_for(kill_point, f"{name}: {what}", timeout=240, interval=0.01)
    w.kill(len(w.procs) - 1)
    st = export_status(name)
    check(st["state"] not in ("done", "failed"), f"{name}: the export was not finished when killed ({st['state']})")
    return at


def restart_and_finish(w, name):
    """Start a new worker; the export must finish by itself."""
    w.start()

    def finished():
        m = export_status(name)
        return m if m["state"] in ("done", "failed") else None
    m = wait_for(finished, f"{name}: the export to finish after the restart", timeout=300)
    check(m["state"] == "done", f"{name}: finished after the restart (state {m['state']}, error {m['error']!r})")


# ---- helpers reading the destinations independently of mailvault ----

def all_threads_stopped(pid):
    """True once every thread of pid is in group stop: SIGSTOP is delivered asynchronously, so
    a thread may still finish a rename after send_signal returned."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue  # the thread ended
        if state not in ("T", "t"):
            return False
    return True


def dir_entries(root):
    """Every regular file below root, relative path -> full path."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            out[os.path.relpath(os.path.join(d, n), root)] = os.path.join(d, n)
    return out


def dir_progress(root):
    return lambda: sum(1 for r in dir_entries(root) if r.endswith(".eml") and
                       not os.path.basename(r).startswith(".mv-tmp"))


def imap_folders(c, root):
    typ, boxes = c.list()
    out = []
    for b in boxes:
        text = b.decode()
        delim = text.split('"')[1]
        name = text.rsplit(f' "{delim}" ', 1)[1].strip('"')
        if (name == root or name.startswith(root + delim)) and "\\Noselect" not in text:
            out.append((name, name[len(root) + 1:] if name != root else ""))
    return out


def imap_progress(user, password, root):
    def count():
        c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
        c.login(user, password)
        n = 0
        for name, _ in imap_folders(c, root):
            typ, data = c.status(f'"{name}"', "(MESSAGES)")
            if typ == "OK":
                n += int(data[0].decode().rsplit("MESSAGES ", 1)[1].rstrip(")"))
        c.logout()
        return n
    return count


def imap_dest(user, password, root):
    """[(folder below root, Message-ID, sha256)] of every message under root, fetched."""
    c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    c.login(user, password)
    out = []
    for name, rel in imap_folders(c, root):
        if c.select(f'"{name}"', readonly=True)[0] != "OK":
            fail(f"cannot select {name}")
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                msgid = email.parser.BytesHeaderParser().parsebytes(item[1]).get("Message-ID")
                out.append((rel, msgid, hashlib.sha256(item[1]).hexdigest()))
    c.logout()
    return out


root_dir = os.path.join(RUN, f"export-kill-{SUFFIX}")
HOLD_AFTER = 2 * CHUNK + CHUNK // 2  # in the middle of the third chunk
# LITERAL+: keep back the tagged OK of an APPEND (the message is stored, the worker never knows)
tree_proxy = HoldingProxy(lambda p, line: b" OK [APPENDUID " in line and p.appended > HOLD_AFTER)
# synchronising literals: keep back the "+" (the APPEND is sent, its message never is)
flat_proxy = HoldingProxy(lambda p, line: line.startswith(b"+") and p.appended >= HOLD_AFTER)
destinations = {
    "to-dir": {"type": "directory", "path": root_dir, "sign": True},
    "to-imap": {"type": "imap", "host": "127.0.0.1", "port": tree_proxy.port, "tls": "none",
                "login": dst1, "password": "pw-d1", "root": "Restored"},
    "to-flat": {"type": "imap", "host": "127.0.0.1", "port": flat_proxy.port, "tls": "none",
                "login": dst2, "password": "pw-d2", "root": "Flat", "layout": "flat",
                "literal_plus": False, "multiappend": False},
}

w = Workers(1, **settings)
try:
    run(t, "imap")
    recs = index(t, src)
    source = {hashlib.sha256(v).hexdigest() for v in imap_messages(src, "pw-k").values()}
    check({r["hash"] for r in recs} == source, "the archive holds what the server holds")
    pairs = {(r["folder"], r["hash"]) for r in recs}
    distinct = {h for _, h in pairs}
    check(len(pairs) > len(distinct) > 6 * CHUNK,
          f"{len(pairs)} (folder, message) pairs, {len(distinct)} distinct messages")
    archived = {h: hashlib.sha256(cli_bytes("get", "--tenant", t, h)).hexdigest() for h in distinct}
    check(all(archived[h] == h for h in distinct), "mailvault get returns every message under its hash")

    # ---- directory ----
    def tmp_files():
        return [r for r in dir_entries(root_dir) if os.path.basename(r).startswith(".mv-tmp-")]

    def dir_kill_point(proc=w.procs[-1], progress=dir_progress(root_dir)):
        n = progress()
        if n >= len(pairs):
            fail("to-dir: the export ended before the worker was caught writing a file")
        if n <= HOLD_AFTER:
            return 0
        proc.send_signal(signal.SIGSTOP)  # once it stands still: is a file half-written?
        wait_for(lambda: all_threads_stopped(proc.pid), "to-dir: the worker to stop", timeout=30,
                 interval=0.001)
        if tmp_files():
            return n
        proc.send_signal(signal.SIGCONT)
        return 0
    at = kill_mid_export(w, "to-dir", dir_kill_point, "the worker stopped while it writes a file")
    left = tmp_files()
    check(left and at < len(pairs),
          f"to-dir: killed with a half-written file ({left}), {at} of {len(pairs)} files written")
    restart_and_finish(w, "to-dir")
    entries = dir_entries(root_dir)
    emls = {rel: p for rel, p in entries.items() if rel.endswith(".eml")}
    others = sorted(set(entries) - set(emls) - {"MANIFEST", "MANIFEST.sig", "signing-key.pub.pem"})
    check(not others, f"nothing but messages and the signature files: {others[:5]}")
    check(not [r for r in emls if os.path.basename(r).startswith(".")], "no temporary or hidden .eml files")
    got, torn, differ = [], [], []
    for rel, p in emls.items():
        h = hashlib.sha256(open(p, "rb").read()).hexdigest()
        name = os.path.basename(rel)[:-4]
        if name != h:
            torn.append(rel)
        elif archived.get(name) != h:
            differ.append(rel)
        got.append((os.path.dirname(rel), h))
    check(not torn, f"every file is whole: its content hashes to its name {torn[:3]}")
    check(not differ, f"every file is a message mailvault get returns, byte for byte {differ[:3]}")
    check(len(got) == len(pairs) and set(got) == pairs,
          f"every (folder, message) exactly once ({len(got)} files, {len(pairs)} pairs)")
    v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(root_dir, "signing-key.pub.pem"),
                        "-signature", os.path.join(root_dir, "MANIFEST.sig"), os.path.join(root_dir, "MANIFEST")],
                       capture_output=True, text=True)
    check(v.returncode == 0 and "Verified OK" in v.stdout, f"the manifest verifies: {v.stdout.strip()} {v.stderr.strip()}")
    manifest = sorted(l.split("\t")[2] for l in open(os.path.join(root_dir, "MANIFEST")).read().splitlines())
    check(manifest == sorted(emls), f"the manifest lists every file once ({len(manifest)} lines)")

    # ---- IMAP, tree layout, LITERAL+ ----
    kill_mid_export(w, "to-imap", tree_proxy.held.is_set, "an APPEND's OK held back")
    stored = imap_progress(dst1, "pw-d1", "Restored")()
    check(stored == tree_proxy.appended < len(pairs),
          f"to-imap: killed after Dovecot stored message {stored} of {len(pairs)}, before the worker knew")
    tree_proxy.armed = False
    restart_and_finish(w, "to-imap")
    got = imap_dest(dst1, "pw-d1", "Restored")
    by_id = {}
    for folder, msgid, h in got:
        by_id.setdefault((folder, msgid), []).append(h)
    twice = {k: v for k, v in by_id.items() if len(v) > 1}
    check(all(msgid for _, msgid, _ in got), "every message at the destination has a Message-ID")
    check(not twice, f"no Message-ID twice in a folder: {list(twice)[:3]}")
    check(len({(f, h) for f, _, h in got}) == len(got), "no message (by SHA-256) twice in a folder")
    check(len(got) == len(pairs) and {(f, h) for f, _, h in got} == pairs,
          f"every (folder, message) exactly once, byte for byte ({len(got)} of {len(pairs)})")

    # ---- IMAP, flat layout, synchronising literals ----
    kill_mid_export(w, "to-flat", flat_proxy.held.is_set, "an APPEND's continuation held back")
    stored = imap_progress(dst2, "pw-d2", "Flat")()
    check(stored == flat_proxy.appended < len(distinct),
          f"to-flat: killed in the middle of an APPEND ({stored} of {len(distinct)} stored)")
    flat_proxy.armed = False
    restart_and_finish(w, "to-flat")
    got = imap_dest(dst2, "pw-d2", "Flat")
    ids = [msgid for _, msgid, _ in got]
    check(all(ids) and len(set(ids)) == len(ids), f"flat: no Message-ID twice ({len(ids)} messages)")
    hashes = [h for _, _, h in got]
    check(len(set(hashes)) == len(hashes), "flat: no message (by SHA-256) twice")
    check(set(hashes) == distinct, f"flat: every distinct message, byte for byte ({len(hashes)} of {len(distinct)})")
finally:
    codes = w.stop()
    tree_proxy.close()
    flat_proxy.close()
check(codes[-1] == 0, "the last worker exits 0 on SIGTERM")
print("1 passed, 0 failed")
