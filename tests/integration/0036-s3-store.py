"""0036: archives on S3 object storage (the stack's SeaweedFS), plain and encrypted.

Checks, reading the bucket independently with boto3: two tenants archive into one bucket, one
plain (objects named by SHA-256) and one encrypted (names are keyed, objects and index
segments start with the MVE1 envelope, no subject line of its mail appears anywhere in its
stored bytes); get is byte-exact and verify passes for both; a second run writes nothing; a
wrong secret fails the task with SignatureDoesNotMatch and verify exits 1; a flipped byte is
reported by verify and get refuses the object; one tenant's keys do not open another's object;
after rotate-key new objects carry key version 2 and old ones stay readable; turning encryption
on for the plain tenant keeps its old objects readable and encrypts the new ones."""
import hashlib

from mvtest import *

s3 = s3_client()
BUCKET = f"mv-{SUFFIX}"


def keys(prefix):
    return s3_keys(s3, BUCKET, prefix)


def body(key):
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


t1, t2, t3, t4 = (f"{n}-{SUFFIX}" for n in ("plain", "sealed", "wrong", "other"))
u1, u2, u3 = f"s3a-{SUFFIX}", f"s3b-{SUFFIX}", f"s3c-{SUFFIX}"
seed(u1, "pw1", 40, folders="INBOX,Sent", seed=31, duplicates=3, wait=False)
seed(u2, "pw2", 40, folders="INBOX,Archive", seed=32, wait=False)
seed(u3, "pw3", 5, folders="INBOX", seed=33)
for t in (t1, t2, t3, t4):
    add_tenant(t)
add_profile(t1, "imap", [(u1, "pw1")])
add_profile(t2, "imap", [(u2, "pw2")])
add_profile(t3, "imap", [(u3, "pw3")])

out = s3_store_add("s3main", BUCKET, "--create-bucket").stdout
check("store s3main saved" in out, "an S3 store is defined and its bucket created")
shown = cli("store", "show", "s3main").stdout
check(STACK["MV_S3_SECRET_KEY"] not in shown and "not shown" in shown,
      "store show never prints the secret")
check(STACK["MV_S3_SECRET_KEY"] not in redis_cli("HGETALL", "mv:store:s3main"),
      "the secret is not in Redis in clear")
cli("tenant", "set", t1, "--store", "s3main")
cli("tenant", "set", t2, "--store", "s3main", "--encryption", "on")
cli("tenant", "set", t4, "--store", "s3main", "--encryption", "on")
bad_secret = os.path.join(RUN, f"wrong-{SUFFIX}.secret")
with open(bad_secret, "w") as f:
    f.write("not-the-secret\n")
os.chmod(bad_secret, 0o600)
s3_store_add("s3wrong", BUCKET, secret_file=bad_secret)
cli("tenant", "set", t3, "--store", "s3wrong")
r = cli("tenant", "set", t3, "--store", "nosuchstore", expect=1)
check("not defined" in r.stderr, f"pointing a tenant at an unknown store fails: {r.stderr.strip()}")

expected = {u: imap_messages(u, p) for u, p in ((u1, "pw1"), (u2, "pw2"))}
with Workers(2):
    run(t1, "imap")
    run(t2, "imap")
    run(t3, "imap", expect=1)

st3 = status(t3)["mailboxes"][0]
check(st3["state"] in ("failed", "dead") and "SignatureDoesNotMatch" in st3.get("error", ""),
      f"a wrong S3 secret fails the task with a clear error: {st3.get('error')}")
r = cli("verify", "--tenant", t3, expect=1)
check("SignatureDoesNotMatch" in r.stderr, f"verify of that tenant exits 1: {r.stderr.strip()}")

plain_objs = keys(f"{t1}/objects/")
sealed_objs = keys(f"{t2}/objects/")
for tenant, user, objs, sealed in ((t1, u1, plain_objs, False), (t2, u2, sealed_objs, True)):
    recs = index(tenant)
    check(len(recs) == len(expected[user]), f"{tenant}: every message is indexed ({len(recs)})")
    uniq = {r["hash"] for r in recs}
    names = {k.rsplit("/", 1)[1] for k in objs}
    check(len(objs) == len(uniq), f"{tenant}: one object per distinct message ({len(objs)})")
    if sealed:
        check(not (names & uniq), f"{tenant}: object names are keyed, none is a content hash")
    else:
        check(names == uniq, f"{tenant}: object names are the content hashes")
    for rec in recs[::5]:
        got = cli_bytes("get", "--tenant", tenant, rec["hash"])
        if got != expected[user][(rec["folder"], rec["uid"])]:
            fail(f"{tenant}: get {rec['hash']} is not byte-exact")
    check(True, f"{tenant}: get returns the exact bytes from S3")
    v = json.loads(cli("verify", "--tenant", tenant, "--json").stdout)
    check(v["bad"] == 0 and v["objects"] == len(objs) and v["encrypted"] == (len(objs) if sealed else 0),
          f"{tenant}: verify reads every object back: {v}")
    m = status(tenant)["mailboxes"][0]
    check(m["deduplicated"] == len(recs) - len(uniq) and m["bytes_stored"] == v["stored_bytes"],
          f"{tenant}: status counts {m['deduplicated']} duplicates and the bytes really stored "
          f"({m['bytes_stored']}), though uploads run in the background")

# exports read from S3 too: the sealed tenant's mailbox into a directory, byte-exact
dest = os.path.join(RUN, f"s3-export-{SUFFIX}")
doc = {"name": "out", "type": "export",
       "export": {"mailbox": u2, "destination": {"type": "directory", "path": dest}}}
with Workers(1):
    cli("export", "--tenant", t2, "--file", profile_file("out", doc), "--wait")
files = [os.path.join(d, n) for d, _, ns in os.walk(dest) for n in ns if n.endswith(".eml")]
check(len(files) == len(expected[u2]) and
      sorted(open(f, "rb").read() for f in files) == sorted(expected[u2].values()),
      f"an export of {t2}'s mailbox from S3 writes every message byte-exact ({len(files)} files)")

every = keys(f"{t2}/")
segs = [k for k in every if "/mailboxes/" in k]
check(segs, f"{t2}: index segments are in the bucket too ({len(segs)})")
raw = {k: body(k) for k in every}
check(all(b[:4] == b"MVE1" for b in raw.values()), f"{t2}: every stored object and segment is sealed")
subjects = {r["subject"].encode() for r in index(t2) if len(r["subject"]) >= 8}
leaks = [k for k, b in raw.items() for s in subjects if s in b]
check(subjects and not leaks, f"no subject line of {t2}'s {len(subjects)} subjects appears in its stored bytes")
check(all(hashlib.sha256(b).hexdigest() not in " ".join(every) for b in list(raw.values())[:5]),
      "names do not reveal the stored bytes either")

before = (keys(f"{t1}/"), keys(f"{t2}/"))
with Workers(1):
    run(t1, "imap")
    run(t2, "imap")
check((keys(f"{t1}/"), keys(f"{t2}/")) == before, "a second run writes nothing to the bucket")

# a flipped byte: verify names the object, get refuses it
victim = sorted(sealed_objs)[0]
data = bytearray(raw[victim])
data[len(data) // 2] ^= 0x20
s3.put_object(Bucket=BUCKET, Key=victim, Body=bytes(data))
v = cli("verify", "--tenant", t2, "--json", expect=1)
check(json.loads(v.stdout)["bad"] == 1 and victim.rsplit("/", 1)[1] in v.stderr,
      f"verify reports the flipped object: {v.stderr.strip()[:160]}")
name_to_hash = {}
for rec in index(t2):
    name_to_hash.setdefault(rec["hash"], rec)
bad_hash = None
for h in name_to_hash:
    r = cli("get", "--tenant", t2, h, expect=None)
    if r.returncode != 0:
        bad_hash = h
        check("authentication" in r.stderr, f"get refuses the damaged object: {r.stderr.strip()[:120]}")
        break
check(bad_hash is not None, "exactly the damaged object is refused by get")
s3.put_object(Bucket=BUCKET, Key=victim, Body=raw[victim])

# another tenant's keys do not open this tenant's object (placed where t4 would look)
h = bad_hash
s3.put_object(Bucket=BUCKET, Key=f"{t4}/objects/{h[:2]}/{h[2:4]}/{h}", Body=raw[victim])
r = cli("get", "--tenant", t4, h, expect=1)
check("authentication" in r.stderr, f"{t4}'s keys cannot decrypt {t2}'s object: {r.stderr.strip()[:120]}")

# rotation: new objects use key version 2, old ones stay readable
out = cli("tenant", "rotate-key", t2).stdout
check("key version 2" in out, "rotate-key makes version 2 current")
new2 = imap_append(u2, "pw2", f"after rotation {SUFFIX}")
# encryption on for the tenant that has plain objects
cli("tenant", "set", t1, "--encryption", "on")
new1 = imap_append(u1, "pw1", f"after encryption {SUFFIX}")
with Workers(1):
    run(t1, "imap")
    run(t2, "imap")
added2 = set(keys(f"{t2}/objects/")) - set(sealed_objs)
check(len(added2) == 1 and body(added2.pop())[4:8] == (2).to_bytes(4, "big"),
      "the new object is sealed with key version 2")
check(cli_bytes("get", "--tenant", t2, hashlib.sha256(new2).hexdigest()) == new2,
      "the new message reads back")
old = index(t2)[0]
check(cli_bytes("get", "--tenant", t2, old["hash"]) == expected[u2][(old["folder"], old["uid"])],
      "an object sealed with version 1 still reads back")
v = json.loads(cli("verify", "--tenant", t2, "--json").stdout)
check(v["bad"] == 0 and v["encrypted"] == v["objects"], f"{t2}: verify after rotation: {v}")
added1 = set(keys(f"{t1}/objects/")) - set(plain_objs)
check(len(added1) == 1 and body(next(iter(added1)))[:4] == b"MVE1",
      f"{t1}: after encryption was turned on the new object is sealed")
check(cli_bytes("get", "--tenant", t1, hashlib.sha256(new1).hexdigest()) == new1,
      f"{t1}: the new message reads back")
old = index(t1)[0]
check(cli_bytes("get", "--tenant", t1, old["hash"]) == expected[u1][(old["folder"], old["uid"])],
      f"{t1}: a plain object from before still reads back")
v = json.loads(cli("verify", "--tenant", t1, "--json").stdout)
check(v["bad"] == 0 and v["encrypted"] == 1 and v["objects"] == len(plain_objs) + 1,
      f"{t1}: verify counts old plain and new sealed objects: {v}")
r = cli("store", "rm", "s3main", expect=1)
check("in use" in r.stderr, "a store in use cannot be removed")
print("1 passed, 0 failed")
