"""0039: a worker killed (SIGKILL) in the middle of an S3 multipart upload.

Large messages (about 12 MB stored each) go to S3 as multipart uploads of 5 MiB parts. The
worker is killed while one upload is open (seen with boto3's ListMultipartUploads). Checks:
while the upload is unfinished no object of that message is visible; after a restart every
message is stored exactly once (one object per distinct message, one index record per
message, byte-exact reads, verify clean); `mailvault store sweep` aborts the dead upload."""
import base64
import random

from mvtest import *

s3 = s3_client()
BUCKET = f"mvbig-{SUFFIX}"
t, user = f"big-{SUFFIX}", f"big-{SUFFIX}"


def objects():
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{t}/objects/")
    return [o["Key"] for o in page.get("Contents", [])]


def uploads():
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


seed(user, "pw", 2, folders="INBOX", seed=61)
rnd = random.Random(61)
big = []
c = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
c.login(user, "pw")
for i in range(6):
    payload = base64.encodebytes(rnd.randbytes(12 * 1024 * 1024))  # ~16 MB of base64 lines
    msg = (f"From: big@example.org\r\nTo: {user}@example.org\r\nSubject: big {i}\r\n"
           f"Message-ID: <big{i}.{SUFFIX}@example.org>\r\nContent-Transfer-Encoding: base64\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode() + payload.replace(b"\n", b"\r\n")
    c.append("INBOX", None, None, msg)
    big.append(msg)
c.logout()
expected = imap_messages(user, "pw")
check(len(expected) == 8, "the mailbox holds 2 small and 6 large messages")

add_tenant(t)
add_profile(t, "imap", [(user, "pw")])
s3_store_add("bigparts", BUCKET, "--create-bucket", "--part-size", str(5 * 1024 * 1024))
cli("tenant", "set", t, "--store", "bigparts", "--encryption", "on")

cli("run", "--tenant", t, "--profile", "imap")
w = Workers(1)
try:
    up = wait_for(lambda: uploads(), "a multipart upload to open", timeout=120, interval=0.005)
    w.kill(0)
    check(True, f"the worker was killed while uploading {up[0]['Key'].rsplit('/', 1)[1][:16]}...")
    dead_key = up[0]["Key"]
    check(dead_key not in objects(), "the unfinished upload is not visible as an object")
    check(any(u["Key"] == dead_key for u in uploads()), "it is listed only as a multipart upload")
finally:
    w.stop()

with Workers(1):
    wait_for(lambda: all(m["state"] == "done" for m in status(t)["mailboxes"]),
             "the mailbox to finish after the restart", timeout=300)
recs = index(t)
check(len(recs) == 8 and len({(r["folder"], r["uid"]) for r in recs}) == 8,
      "every message is indexed exactly once")
check(len(objects()) == len({r["hash"] for r in recs}) == 8, "one object per message in the bucket")
for r in recs:
    if cli_bytes("get", "--tenant", t, r["hash"]) != expected[(r["folder"], r["uid"])]:
        fail(f"get {r['hash']} is not byte-exact")
check(True, "every message, large ones included, reads back byte-exact")
v = json.loads(cli("verify", "--tenant", t, "--json").stdout)
check(v["bad"] == 0 and v["ok"] == 8 and v["stored_bytes"] > 6 * 11 * 1024 * 1024,
      f"verify reads every object back: {v}")
sizes = [o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{t}/objects/")["Contents"]]
check(sum(1 for s in sizes if s > 5 * 1024 * 1024) == 6, "the six large objects went up in parts")
left = uploads()
out = cli("store", "sweep", "--store", "bigparts", "--older-than", "0").stdout
check("removed" in out and not uploads(), f"store sweep aborts the dead upload ({len(left)} were open)")
print("1 passed, 0 failed")
