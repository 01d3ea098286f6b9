"""0022: export to a directory of .eml files: byte-exact, signed, never duplicated.

A mailbox archived from Dovecot is exported by the workers (in chunks of 7 files) into a
folder tree of "<sha256>.eml" files: every file hashes to its name, the set of files is exactly
the archive's (per folder), and the bytes are what the IMAP server holds. The MANIFEST's
signature verifies with the stock openssl command and the public key is the one the profile
shows. Running the export again writes nothing; files deleted or changed by hand are written
again (only those) and the new manifest verifies. A flat export of one folder holds just that
folder. A destination that cannot be created fails the task with a clear error."""
import hashlib
import subprocess
import time

from mvtest import *

t = f"exp-{SUFFIX}"
user = f"erin-{SUFFIX}"
seed(user, "pw-erin", 40, folders="INBOX,Sent,Projects", seed=21, duplicates=3)
add_tenant(t)
add_profile(t, "imap", [(user, "pw-erin")])
originals = {hashlib.sha256(v).hexdigest() for v in imap_messages(user, "pw-erin").values()}
dest = os.path.join(RUN, f"export-{SUFFIX}")


def export_profile(name, path, **extra):
    doc = {"name": name, "type": "export",
           "export": {"mailbox": user, "destination": {"type": "directory", "path": path, **extra.pop("dest", {})},
                      **extra}}
    return profile_file(name, doc)


def files_under(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith(".eml"):
                p = os.path.join(d, n)
                out[os.path.relpath(p, root)] = p
    return out


def openssl_verify(root):
    return subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(root, "signing-key.pub.pem"),
                           "-signature", os.path.join(root, "MANIFEST.sig"), os.path.join(root, "MANIFEST")],
                          capture_output=True, text=True)


with Workers(1, MAILVAULT_WORKER_CHUNK_MESSAGES=7):
    run(t, "imap")
    recs = index(t, user)
    want = {(r["folder"], r["hash"]) for r in recs}
    check({h for _, h in want} == originals, "the archive holds what the server holds")

    out = cli("export", "--tenant", t, "--file", export_profile("erin-all", dest, dest={"sign": True}), "--wait").stdout
    check("1 task queued" in out, f"one export task: {out.strip()}")
    files = files_under(dest)
    check(len(files) == len(want), f"one file per message and folder ({len(files)} files, {len(want)} records)")
    got = set()
    for rel, p in files.items():
        h = hashlib.sha256(open(p, "rb").read()).hexdigest()
        if os.path.basename(rel) != h + ".eml":
            fail(f"{rel} does not hash to its name")
        got.add((os.path.dirname(rel), h))
    check(got == want, "every (folder, message) of the archive is a file in that folder, byte for byte")
    check(not [n for d, _, ns in os.walk(dest) for n in ns if n.startswith(".mv-tmp")], "no temporary files left")
    st = {m["mailbox"]: m for m in status(t)["mailboxes"]}[f"export:erin-all"]
    check(st["state"] == "done" and st["messages"] == len(want) and st["chunk"] >= 2,
          f"written in chunks and counted ({st['messages']} files, {st['chunk'] + 1} chunks)")
    check(st["deduplicated"] == 0,
          "each chunk went on where the previous one stopped: nothing counted as already there")

    v = openssl_verify(dest)
    check(v.returncode == 0 and "Verified OK" in v.stdout, f"openssl verifies the manifest: {v.stdout.strip()} {v.stderr.strip()}")
    manifest = [l.split("\t") for l in open(os.path.join(dest, "MANIFEST")).read().splitlines()]
    check(sorted(l[2] for l in manifest) == sorted(files) and
          all(hashlib.sha256(open(files[l[2]], "rb").read()).hexdigest() == l[0] and
              os.path.getsize(files[l[2]]) == int(l[1]) for l in manifest),
          "MANIFEST lists every file with its SHA-256 and size")
    shown = json.loads(cli("profile", "show", "--tenant", t, "erin-all").stdout)
    check(shown["export"]["public_key"] == open(os.path.join(dest, "signing-key.pub.pem")).read(),
          "the public key next to the export is the profile's")

    # again: nothing to write, nothing touched; a crashed run's temporary file is cleaned up
    mtimes = {rel: os.stat(p).st_mtime_ns for rel, p in files.items()}
    stale = os.path.join(os.path.dirname(files[sorted(files)[0]]), ".mv-tmp-" + "0" * 64 + ".eml")
    open(stale, "wb").write(b"half a message")
    run(t, "erin-all")
    check(not os.path.exists(stale), "a temporary file left by a crash is removed")
    st = {m["mailbox"]: m for m in status(t)["mailboxes"]}["export:erin-all"]
    check(st["messages"] == 0 and st["deduplicated"] == len(want), f"a second run writes nothing ({st['messages']})")
    check(all(os.stat(files[rel]).st_mtime_ns == m for rel, m in mtimes.items()), "no file was rewritten")

    # changed by hand: two deleted, one altered; only those are written again
    names = sorted(files)
    os.unlink(files[names[0]])
    os.unlink(files[names[1]])
    with open(files[names[2]], "ab") as f:
        f.write(b"tampered\r\n")
    run(t, "erin-all")
    st = {m["mailbox"]: m for m in status(t)["mailboxes"]}["export:erin-all"]
    check(st["messages"] == 3, f"exactly the three changed files were written again ({st['messages']})")
    check(all(hashlib.sha256(open(files[n], "rb").read()).hexdigest() + ".eml" == os.path.basename(n) for n in names[:3]),
          "they are byte-exact again")
    check(openssl_verify(dest).returncode == 0, "the new manifest verifies")
    with open(os.path.join(dest, "MANIFEST"), "ab") as f:
        f.write(b"0" * 64 + b"\t1\tforged.eml\n")
    check(openssl_verify(dest).returncode != 0, "a changed manifest does not verify")

    # flat, one folder
    flat = dest + "-flat"
    cli("export", "--tenant", t, "--file", export_profile("erin-sent", flat, folder="Sent", dest={"layout": "flat"}), "--wait")
    ff = files_under(flat)
    sent = {h for f, h in want if f == "Sent"}
    check(all(os.path.dirname(r) == "" for r in ff) and {os.path.basename(r)[:-4] for r in ff} == sent,
          f"the flat export holds just Sent's messages ({len(ff)} of {len(sent)})")
    check(not os.path.exists(os.path.join(flat, "MANIFEST")), "unsigned unless asked")

    # a saved search: subject substring and a received-date range, as ls finds them too
    import email.utils
    recs_full = [json.loads(l) for l in cli("ls", "--tenant", t, "--mailbox", user, "--json").stdout.splitlines()]

    def rtime(r):
        if r["internaldate"] > 0:
            return r["internaldate"]
        try:
            return int(email.utils.parsedate_to_datetime(r["date"]).timestamp())
        except (TypeError, ValueError):
            return 0
    word = sorted({w for r in recs_full for w in r["subject"].split() if len(w) > 3})[0][:4].upper()
    days = sorted({time.strftime("%Y-%m-%d", time.gmtime(rtime(r))) for r in recs_full if rtime(r)})
    after = days[0]
    import calendar
    before_ts = calendar.timegm(time.strptime(days[-1], "%Y-%m-%d")) + 86400
    before = time.strftime("%Y-%m-%d", time.gmtime(before_ts))
    lo = calendar.timegm(time.strptime(after, "%Y-%m-%d"))
    match = {(r["folder"], r["hash"]) for r in recs_full
             if word.lower() in r["subject"].lower() and rtime(r) and lo <= rtime(r) < before_ts}
    check(0 < len(match) < len(want), f"the search selects some messages, not all ({len(match)} of {len(want)})")
    found = [json.loads(l) for l in cli("ls", "--tenant", t, "--mailbox", user, "--json", "--subject", word,
                                        "--after", after, "--before", before).stdout.splitlines()]
    check({(r["folder"], r["hash"]) for r in found} == match, f"ls finds exactly the matching messages ({len(found)})")
    sdir = dest + "-search"
    cli("export", "--tenant", t, "--wait", "--file",
        export_profile("erin-search", sdir, search={"subject": word, "after": after, "before": before}))
    got = {(os.path.dirname(r), os.path.basename(r)[:-4]) for r in files_under(sdir)}
    check(got == match, f"the export holds exactly the search's messages ({len(got)})")
    shown = json.loads(cli("profile", "show", "--tenant", t, "erin-search").stdout)
    check(shown["export"]["search"] == {"subject": word, "after": after, "before": before}, "the search is saved with the profile")
    p = cli("ls", "--tenant", t, "--after", "2024-02-30", expect=2)
    check("not a date" in p.stderr, f"a bad date is refused: {p.stderr.strip()}")

    # a destination that cannot exist
    bad = export_profile("erin-bad", "/etc/hostname/export")
    cli("profile", "add", "--tenant", t, "--file", bad)
    tr = cli("profile", "test", "--tenant", t, "erin-bad", expect=1).stdout
    check("not a writable directory" in tr, f"profile test says why: {tr.strip()}")
    r = run(t, "erin-bad", expect=None, timeout=120)
    m = {x["mailbox"]: x for x in status(t)["mailboxes"]}["export:erin-bad"]
    check(r.returncode == 1 and m["state"] == "failed" and "/etc/hostname" in m["error"],
          f"the run fails naming the path: {m['error']!r}")
print("1 passed, 0 failed")
