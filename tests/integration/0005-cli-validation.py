"""0005: the CLI refuses bad input with a message naming the problem and a non-zero exit, and
secrets never reach the stored profile, Redis in clear, or argv."""
import subprocess

from mvtest import *

t = f"cli-{SUFFIX}"
add_tenant(t)
p = cli("tenant", "add", t, expect=1)
check("already exists" in p.stderr, "adding a tenant twice is refused")
p = cli("tenant", "add", "Bad Name", expect=2)
check("not a valid name" in p.stderr, "an invalid tenant name is refused")


def profile_error(doc, expect_text):
    path = os.path.join(RUN, f"bad-{SUFFIX}.json")
    with open(path, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    p = cli("profile", "add", "--tenant", t, "--file", path, expect=1)
    check(expect_text in p.stderr, f"bad profile refused: {p.stderr.strip()}")


base = {"name": "p1", "server": {"host": "127.0.0.1", "port": IMAP_PORT, "tls": "none"},
        "mailboxes": [{"login": "x", "password": "y"}]}
profile_error("{not json", "not valid JSON")
profile_error({**base, "exlude": ["Trash"]}, "exlude: unknown field")
profile_error({**base, "server": {"host": "h", "tls": "maybe"}}, "server.tls")
profile_error({**base, "server": {"host": "h", "port": 70000}}, "server.port")
profile_error({**base, "mailboxes": [{"password": "y"}]}, "mailboxes[0].login: missing")
profile_error({**base, "mailboxes": [{"login": "a"}, {"login": "a", "password": "b"}]}, "listed twice")
profile_error({**base, "mailboxes": [{"login": "new-user"}]}, "password: missing for new mailbox")

secret = f"s3cret-{SUFFIX}"
add_profile(t, "good", [("ivan", secret)])
profile_error({**base, "name": "other", "mailboxes": [{"login": "ivan", "password": "z"}]},
              "already belongs to profile \"good\"")
shown = cli("profile", "show", "--tenant", t, "good").stdout
check(secret not in shown and "ivan" in shown, "profile show has the login but not the password")
rc = ["redis-cli", "-p", STACK["MV_REDIS_PORT"], "--no-raw"]
dump = subprocess.run(rc + ["GET", f"mv:profile:{t}:good"], capture_output=True, text=True).stdout
cred = subprocess.run(rc + ["GET", f"mv:cred:{t}:good:ivan"], capture_output=True, text=True).stdout
check(dump and secret not in dump, "the stored profile JSON holds no password")
check(cred and secret not in cred, "the stored credential is not plaintext")

p = cli("run", "--tenant", f"nosuch-{SUFFIX}", "--profile", "good", expect=1)
check("does not exist" in p.stderr, "run for an unknown tenant is refused")
p = cli("run", "--tenant", t, "--profile", "nosuch", expect=1)
check("not found" in p.stderr, "run for an unknown profile is refused")
p = cli("get", "--tenant", t, "../../etc/passwd", expect=1)
check("invalid" in p.stderr.lower() or "not" in p.stderr, f"get with a bad hash is refused: {p.stderr.strip()}")
p = cli("status", extra_env={"MAILVAULT_WORKER_CONCURRENCY": "lots"}, expect=2)
check("MAILVAULT_WORKER_CONCURRENCY" in p.stderr, f"a bad environment setting is named: {p.stderr.strip()}")
p = cli("frobnicate", expect=2)
check("unknown command" in p.stderr, "an unknown command is refused")
p = cli("--help")
check("profile add" in p.stdout and "verify" in p.stdout, "--help lists the commands")
print("1 passed, 0 failed")
