"""0038: moving an encrypted tenant's archive from the filesystem store to S3.

Checks: `store migrate --limit` stops part-way and leaves the tenant on its old store; a
migration killed with SIGKILL mid-way is resumed by running the command again ("resuming
after"); at the end the bucket (read with boto3) holds exactly the keys of the filesystem
tree, byte for byte, the tenant points at S3, verify passes there, ls and get still work, and
the next archive run writes its new message to S3 only. Moving on to a second bucket carries
the legal hold of a held mailbox; moving held mail to the filesystem store is refused."""
from mvtest import *

s3 = s3_client()
BUCKET = f"mvmig-{SUFFIX}"


def bucket_keys(prefix):
    return s3_keys(s3, BUCKET, prefix)


def fs_keys(tenant):
    root = os.path.join(RUN, "store")
    out = {}
    for sub in ("objects", "mailboxes"):
        for d, _, files in os.walk(os.path.join(root, tenant, sub)):
            for f in files:
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


t = f"mig-{SUFFIX}"
u1, u2 = f"mg1-{SUFFIX}", f"mg2-{SUFFIX}"
seed(u1, "pw1", 120, folders="INBOX,Sent", seed=51, wait=False)
seed(u2, "pw2", 100, folders="INBOX", seed=52)
add_tenant(t)
add_profile(t, "imap", [(u1, "pw1"), (u2, "pw2")])
cli("tenant", "set", t, "--encryption", "on")
with Workers(2):
    run(t, "imap")
src = fs_keys(t)
check(len(src) > 200, f"{t} has {len(src)} objects and segments on the filesystem store")
s3_store_add("target", BUCKET, "--create-bucket", "--object-lock")

out = cli("store", "migrate", "--tenant", t, "--to", "target", "--limit", "20").stdout
check("stopped after 20" in out, f"--limit stops part-way: {out.strip()}")
check(len(bucket_keys(f"{t}/")) == 20, "20 keys are in the bucket")
check(redis_cli("HGET", f"mv:tenant:{t}", "store") == "", "the tenant still uses its old store")

# a crash mid-way: SIGKILL once progress shows
p = subprocess.Popen([CLI, "store", "migrate", "--tenant", t, "--to", "target"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
seen = 0
for line in p.stdout:
    if line.startswith("progress:"):
        seen += 1
        if seen == 3:
            p.send_signal(signal.SIGKILL)
            break
p.wait()
check(p.returncode == -signal.SIGKILL, "the migration was killed mid-way")
partial = len(bucket_keys(f"{t}/"))
check(20 < partial < len(src), f"part of the archive was copied before the kill ({partial} of {len(src)})")
check(redis_cli("HGET", f"mv:tenant:{t}", "store") == "", "the tenant still uses its old store")

r = cli("store", "migrate", "--tenant", t, "--to", "target")
check("resuming after" in r.stdout and "moved from default to target" in r.stdout,
      f"running it again resumes and finishes: {r.stdout.strip().splitlines()[-1]}")
check(redis_cli("HGET", f"mv:tenant:{t}", "store") == "target", "the tenant now uses the S3 store")
dst = bucket_keys(f"{t}/")
check(dst == src, f"the bucket holds exactly the filesystem's {len(src)} keys with the same sizes")
root = os.path.join(RUN, "store")
for k in list(src)[::7]:
    if s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() != open(os.path.join(root, k), "rb").read():
        fail(f"{k} differs")
check(True, "copies are byte-identical (sealed objects stay sealed)")
v = json.loads(cli("verify", "--tenant", t, "--json").stdout)
objs = sum(1 for k in src if "/objects/" in k)
check(v["bad"] == 0 and v["ok"] == objs and v["encrypted"] == objs, f"verify on S3: {v}")
recs = index(t)
check(len(recs) == 220, "ls reads the index from S3")
expected = imap_messages(u1, "pw1")
for r in [x for x in recs if x["mailbox"] == u1][::10]:
    if cli_bytes("get", "--tenant", t, r["hash"]) != expected[(r["folder"], r["uid"])]:
        fail("get after migration is not byte-exact")
check(True, "get after migration is byte-exact")
check(redis_cli("EXISTS", f"mv:migrate:{t}") == "0", "the resume mark is gone")

imap_append(u2, "pw2", f"after the move {SUFFIX}")
with Workers(1):
    run(t, "imap")
check(fs_keys(t) == src, "the next run writes nothing to the old store")
after = bucket_keys(f"{t}/objects/")
check(len(after) == objs + 1, "and its new message to S3")
r = cli("store", "migrate", "--tenant", t, "--to", "target", expect=1)
check("already on store target" in r.stderr, "migrating to the current store is refused")

# legal holds move with the archive (S3 to S3); the filesystem store has none to take them
cli("hold", "set", "--tenant", t, "--mailbox", u1)
r = cli("store", "migrate", "--tenant", t, "--to", "default", expect=1)
check("legal hold" in r.stderr, f"moving held mail to the filesystem store is refused: {r.stderr.strip()}")
BUCKET2 = f"mvmig2-{SUFFIX}"
s3_store_add("target2", BUCKET2, "--create-bucket", "--object-lock")
out = cli("store", "migrate", "--tenant", t, "--to", "target2").stdout
n1 = len({r["hash"] for r in index(t, u1)})
check(f"legal holds of 1 mailboxes set again on {n1} objects" in out, f"holds are set again: {out.strip().splitlines()[-2]}")
v = json.loads(cli("verify", "--tenant", t, "--json").stdout)
check(v["bad"] == 0 and v["held"] == n1 and v["ok"] == objs + 1, f"verify on the second bucket: {v}")
print("1 passed, 0 failed")
