"""0037: WORM on S3: Object Lock retention, legal hold, and deletes the store refuses.

Checks, reading the bucket independently with boto3: a tenant with COMPLIANCE retention
writes every object with a COMPLIANCE retain-until about the policy's period ahead; verify
counts every object as retained; a version delete straight to S3 is refused; `mailvault purge`
reports the refusal, exits 1 and leaves the index and every object in place. A mailbox put on
legal hold gets the S3 hold on all its objects, also on one archived afterwards; purge refuses
while the hold is on; after `hold clear` the holds are off (except on an object another held
mailbox shares) and purge deletes the mailbox's objects (every version) and its index."""
import hashlib
import time

from botocore.exceptions import ClientError

from mvtest import *

s3 = s3_client()
BUCKET = f"mvlock-{SUFFIX}"


def keys(prefix):
    return list(s3_keys(s3, BUCKET, prefix))


def versions(key):
    page = s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    return [v["VersionId"] for v in page.get("Versions", []) if v["Key"] == key]


def hold_of(key):
    try:
        return s3.get_object_legal_hold(Bucket=BUCKET, Key=key)["LegalHold"]["Status"]
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchObjectLockConfiguration", "NoSuchObjectLegalHold", "InvalidRequest"):
            return "OFF"
        raise


comp, gov = f"comp-{SUFFIX}", f"hold-{SUFFIX}"
u1, u2, u3 = f"lk1-{SUFFIX}", f"lk2-{SUFFIX}", f"lk3-{SUFFIX}"
seed(u1, "pw1", 12, folders="INBOX", seed=41, wait=False)
seed(u2, "pw2", 10, folders="INBOX", seed=42, wait=False)
seed(u3, "pw3", 8, folders="INBOX", seed=43)
# u3 shares one message with u2 (same bytes): its object must keep a hold u3 asks for
import shutil
src = os.path.join(RUN, "mail", u2, "cur")
shared_file = sorted(os.listdir(src))[0]
dst = os.path.join(RUN, "mail", u3, "cur", "shared." + shared_file)
shutil.copy(os.path.join(src, shared_file), dst)
os.chown(dst, os.stat(src).st_uid, os.stat(src).st_gid)
shared_hash = hashlib.sha256(open(os.path.join(src, shared_file), "rb").read()).hexdigest()

for t in (comp, gov):
    add_tenant(t)
add_profile(comp, "imap", [(u1, "pw1")])
add_profile(gov, "imap", [(u2, "pw2"), (u3, "pw3")])
s3_store_add("locked", BUCKET, "--create-bucket", "--object-lock")
check(s3.get_object_lock_configuration(Bucket=BUCKET)["ObjectLockConfiguration"]
      ["ObjectLockEnabled"] == "Enabled", "the bucket was created with Object Lock")
cli("tenant", "set", comp, "--store", "locked", "--retention", "COMPLIANCE:2")
cli("tenant", "set", gov, "--store", "locked", "--encryption", "on")
r = cli("tenant", "set", comp, "--retention", "FOREVER:2", expect=2)
check("retention" in r.stderr, f"a bad retention mode is refused: {r.stderr.strip()}")

before = time.time()
with Workers(1):
    run(comp, "imap")
    run(gov, "imap")

objs = keys(f"{comp}/objects/")
check(len(objs) == 12, f"{comp}: 12 objects in the bucket")
for k in objs:
    ret = s3.get_object_retention(Bucket=BUCKET, Key=k)["Retention"]
    until = ret["RetainUntilDate"].timestamp()
    if ret["Mode"] != "COMPLIANCE" or not (before + 2 * 86400 - 120 < until < time.time() + 2 * 86400 + 120):
        fail(f"{k}: retention {ret}")
check(True, f"{comp}: every object carries COMPLIANCE retention for the policy's 2 days")
segs = keys(f"{comp}/mailboxes/")
check(segs and all(s3.get_object_retention(Bucket=BUCKET, Key=k)["Retention"]["Mode"] == "COMPLIANCE"
                   for k in segs), f"{comp}: its index segments are retained too")
v = json.loads(cli("verify", "--tenant", comp, "--json").stdout)
check(v["bad"] == 0 and v["retained"] == v["objects"] == 12, f"verify checks the retention: {v}")

victim = objs[0]
vid = versions(victim)[0]
try:
    s3.delete_object(Bucket=BUCKET, Key=victim, VersionId=vid)
    fail("S3 deleted a COMPLIANCE-retained version")
except ClientError as e:
    check(e.response["Error"]["Code"] == "AccessDenied",
          f"S3 itself refuses to delete a COMPLIANCE-retained version ({e.response['Error']['Code']})")
n_before = len(index(comp))
r = cli("purge", "--tenant", comp, "--mailbox", u1, "--yes", expect=1)
check("refused" in r.stderr and "index is kept" in r.stderr, f"purge reports the refusal: {r.stderr.strip()[:200]}")
check(len(index(comp)) == n_before and sorted(keys(f"{comp}/objects/")) == sorted(objs),
      "after the refused purge the index and every object are still there")
check(json.loads(cli("verify", "--tenant", comp, "--json").stdout)["ok"] == 12,
      "and all of them still verify")
r = cli("purge", "--tenant", comp, "--mailbox", u1, expect=2)
check("--yes" in r.stderr, "purge asks for --yes")

# legal hold on u2 (encrypted tenant, no retention)
out = cli("hold", "set", "--tenant", gov, "--mailbox", u2).stdout
check("legal hold set on 10 objects" in out, f"hold set: {out.strip()}")
check(cli("hold", "list", "--tenant", gov).stdout.split() == [u2], "hold list shows the mailbox")
u2_hashes = {r["hash"] for r in index(gov, u2)}
held = [k for k in keys(f"{gov}/objects/") if hold_of(k) == "ON"]
check(len(held) == 10, f"S3 reports a legal hold on the mailbox's 10 objects ({len(held)})")
v = json.loads(cli("verify", "--tenant", gov, "--json").stdout)
check(v["held"] == 10 and v["bad"] == 0 and v["retained"] == 0, f"verify reports the holds: {v}")
u3_only = {r["hash"] for r in index(gov, u3)} - u2_hashes
check(len(keys(f"{gov}/objects/")) == 10 + len(u3_only), "the other mailbox's own objects are not held")
new = imap_append(u2, "pw2", f"after hold {SUFFIX}")
with Workers(1):
    run(gov, "imap")
held2 = [k for k in keys(f"{gov}/objects/") if hold_of(k) == "ON"]
check(len(held2) == 11, "a message archived while the hold is on gets the hold too")
r = cli("purge", "--tenant", gov, "--mailbox", u2, "--yes", expect=1)
check("legal hold" in r.stderr, f"purge refuses a mailbox on hold: {r.stderr.strip()}")
# u3 on hold too, then clear u2: the shared object stays held
cli("hold", "set", "--tenant", gov, "--mailbox", u3)
out = cli("hold", "clear", "--tenant", gov, "--mailbox", u2).stdout
check("cleared on 10 objects" in out and "1 kept" in out, f"hold clear keeps the shared object: {out.strip()}")
still = [k for k in keys(f"{gov}/objects/") if hold_of(k) == "ON"]
check(len(still) == len(index(gov, u3)), "only u3's objects (the shared one included) are still held")
out = cli("purge", "--tenant", gov, "--mailbox", u2, "--yes").stdout
check("10 objects deleted, 1 kept" in out, f"purge after the hold: {out.strip()}")
check(index(gov, u2) == [], "the purged mailbox has no index left")
left = keys(f"{gov}/objects/")
check(len(left) == len(index(gov, u3)), "its objects are gone from the bucket, the shared one stays")
vers = s3.list_object_versions(Bucket=BUCKET, Prefix=f"{gov}/objects/")
check(len(vers.get("Versions", [])) == len(left) and not vers.get("DeleteMarkers"),
      "every version was deleted, no delete marker hides data")
check(cli_bytes("get", "--tenant", gov, shared_hash) == open(dst, "rb").read(),
      "the object u3 shares still reads back")
print("1 passed, 0 failed")
