"""0032: the admin HTTP API and /metrics of `mailvault serve`.

Bearer tokens (only their SHA-256 stored; an unknown or revoked token is refused); tenants and
profiles created over the API with validation errors that name the field; credentials
write-only (the password is in no answer and in no Redis value); run now, then the run's
results, status and queue lag over the API; cancel with nothing to cancel; bodies over 1 MiB
refused. /metrics is read with prometheus_client's parser (an independent implementation of
the text format): per-tenant archived messages and bytes equal what was archived, tasks by
state, errors by kind for a wrong password, the chunk latency histogram, and the worker's
liveness while it runs and after it stops."""
import hashlib
import re

import yaml
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families

from mvtest import *

t = f"api-{SUFFIX}"
ann, bea = f"ann-{SUFFIX}", f"bea-{SUFFIX}"
seed(ann, "pw-ann", 12, folders="INBOX,Sent", seed=61)
seed(bea, "pw-bea", 4, folders="INBOX", seed=62)
secret = f"s3cret-{SUFFIX}"


def samples(text):
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(ms, name, **labels):
    return ms.get((name, frozenset(labels.items())))


spec = yaml.safe_load(open(os.path.join(SRC, "docs", "openapi.yaml")))
validate_openapi(spec)
check(True, "docs/openapi.yaml is a valid OpenAPI 3.0 document")
used = set()


def in_spec(method, path):
    """Whether docs/openapi.yaml describes this request (path templates matched)."""
    path = path.split("?")[0]
    for tmpl, ops in spec["paths"].items():
        if re.fullmatch(re.sub(r"\\{[a-z]+\\}", "[^/]+", re.escape(tmpl)), path):
            return method.lower() in ops
    return False


token = cli("token", "add", "--name", f"ops-{SUFFIX}").stdout.strip()
check(token.startswith("mvt_") and len(token) == 68, "token add prints a new token")
check(redis_cli("HGET", "mv:api:tokens", hashlib.sha256(token.encode()).hexdigest()) == f"ops-{SUFFIX}",
      "only the token's SHA-256 is stored")
check("already" in cli("token", "add", "--name", f"ops-{SUFFIX}", expect=1).stderr or
      "exists" in cli("token", "add", "--name", f"ops-{SUFFIX}", expect=1).stderr,
      "a token name is used once")

with AdminServer() as api:
    _request = api.request

    def traced(method, path, *a, **kw):
        used.add((method, path))
        return _request(method, path, *a, **kw)
    api.request = traced
    st, body, hdr = api.request("GET", "/api/v1/tenants")
    check(st == 401 and body["error"]["code"] == "unauthorized" and
          "Bearer" in hdr.get("WWW-Authenticate", ""), "no token: 401 with WWW-Authenticate")
    st, body, _ = api.request("GET", "/api/v1/tenants", token="mvt_" + "0" * 64)
    check(st == 401 and "unknown" in body["error"]["message"], "an unknown token: 401")
    st, body, _ = api.request("GET", "/healthz")
    check(st == 200 and body["redis"] is True, "/healthz is open and sees Redis")

    # tenants: validation names the field
    st, body, _ = api.request("POST", "/api/v1/tenants", {"name": "Not Valid"}, token)
    check(st == 400 and body["error"]["field"] == "name", f"a bad tenant name: 400 naming the field")
    st, body, _ = api.request("POST", "/api/v1/tenants", {"display_name": 7, "name": t}, token)
    check(st == 400 and body["error"]["field"] == "display_name", "a non-string display_name: 400")
    st, body, _ = api.request("POST", "/api/v1/tenants", raw=b"{not json", token=token)
    check(st == 400 and "not JSON" in body["error"]["message"], "a body that is not JSON: 400")
    st, body, _ = api.request("POST", "/api/v1/tenants", {"name": t, "display_name": "API Co"}, token)
    check(st == 201 and body == {"name": t, "display_name": "API Co"}, "tenant created: 201")
    st, body, _ = api.request("POST", "/api/v1/tenants", {"name": t}, token)
    check(st == 409 and body["error"]["field"] == "name", "the same tenant again: 409")
    st, body, _ = api.request("GET", "/api/v1/tenants", token=token)
    check(st == 200 and t in body, "the tenant is listed")

    # profiles: secrets go in, never come out
    prof = {"type": "imap", "server": {"host": "127.0.0.1", "port": IMAP_PORT, "tls": "none"},
            "mailboxes": [{"login": ann, "password": "pw-ann"}, {"login": bea, "password": secret}]}
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap", dict(prof, name="other"), token)
    check(st == 400 and body["error"]["field"] == "name", "a name differing from the path: 400")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap",
                              {"type": "imap", "mailboxes": []}, token)
    check(st == 400 and "server" in body["error"]["message"],
          f"an invalid profile: 400 saying what is wrong ({body['error']['message']})")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/nobody-{SUFFIX}/profiles/imap", prof, token)
    check(st == 404, "a profile of a missing tenant: 404")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap", prof, token)
    check(st == 200 and body["mailboxes"] == 2, "profile saved: 200")
    st, body, _ = api.request("GET", f"/api/v1/tenants/{t}/profiles/imap", token=token)
    check(st == 200 and body["name"] == "imap" and secret not in json.dumps(body) and
          "pw-ann" not in json.dumps(body), "the profile comes back without its passwords")
    keys = redis_cli("--scan", "--pattern", f"mv:*{t}*").split()
    check(keys and not any(secret in redis_cli("--no-raw", "DUMP", k) for k in keys),
          f"the password is in no Redis value ({len(keys)} keys of the tenant)")
    st, body, _ = api.request("GET", f"/api/v1/tenants/{t}/profiles", token=token)
    check(st == 200 and body == ["imap"], "profiles listed")

    # run now: the wrong password of bea fails, ann is archived
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap",
                              dict(prof, mailboxes=[prof["mailboxes"][0],
                                                    {"login": bea, "password": "wrong"}]), token)
    check(st == 200, "profile replaced with a wrong password for bea")
    with Workers(1) as w:
        st, body, _ = api.request("POST", f"/api/v1/tenants/{t}/profiles/imap/run", token=token)
        check(st == 202 and body["tasks"] == 2, f"run now: 202 with the run id ({body})")
        run_id = body["run"]
        r = wait_for(lambda: (lambda s, b: b if s == 200 and b["state"] == "finished" else None)(
            *api.request("GET", f"/api/v1/tenants/{t}/runs/{run_id}", token=token)[:2]),
            "the run to finish", timeout=180)
        check(r["done"] == 1 and r["failed"] == 1 and r["messages"] == 12 and
              "login refused" in r["errors"][bea], f"the run's results over the API: {r}")
        st, body, _ = api.request("GET", f"/api/v1/tenants/{t}/status", token=token)
        states = {m["mailbox"]: m["state"] for m in body["mailboxes"]}
        check(st == 200 and states == {ann: "done", bea: "failed"}, f"status over the API: {states}")
        st, body, _ = api.request("GET", "/api/v1/queue", token=token)
        check(st == 200 and body["lag"] >= 0 and len(body["partitions"]) >= 1, "queue lag over the API")
        ms = wait_for(lambda: (lambda m: m if metric(m, "mailvault_worker_up", worker=w.ids[0]) == 1 else None)(
            samples(api.request("GET", "/metrics")[1])), "the worker's heartbeat in /metrics", timeout=30)
        check(metric(ms, "mailvault_worker_capacity_tasks", worker=w.ids[0]) >= 1,
              "the worker's capacity is reported")
    check(w.stop() == [0], "the worker stopped cleanly")

    st, text, hdr = api.request("GET", "/metrics")
    check(st == 200 and hdr["Content-Type"].startswith("text/plain; version=0.0.4"), "/metrics is the text format")
    ms = samples(text)
    archived = index(t)
    check(metric(ms, "mailvault_archived_messages_total", tenant=t) == len(archived) == 12,
          "archived messages per tenant equal the index")
    check(metric(ms, "mailvault_archived_bytes_total", tenant=t, kind="raw") == sum(r["size"] for r in archived),
          "raw bytes per tenant equal the archived sizes")
    check(metric(ms, "mailvault_archived_bytes_total", tenant=t, kind="stored") > 0, "stored bytes counted")
    check(metric(ms, "mailvault_tasks", tenant=t, state="done") == 1 and
          metric(ms, "mailvault_tasks", tenant=t, state="failed") == 1, "tasks by state")
    check(metric(ms, "mailvault_task_errors_total", tenant=t, kind="authentication failed") == 1,
          "the wrong password counts as an authentication error")
    check(metric(ms, "mailvault_chunk_duration_seconds_count") >= 2 and
          metric(ms, "mailvault_chunk_duration_seconds_bucket", le="+Inf") ==
          metric(ms, "mailvault_chunk_duration_seconds_count"), "the chunk latency histogram")
    check(metric(ms, "mailvault_worker_up", worker=w.ids[0]) is None,
          "a worker that stopped cleanly is no longer listed")
    check(metric(ms, "mailvault_kafka_up") == 1 and
          metric(ms, "mailvault_consumer_lag_total", topic="mailvault.tasks") is not None, "consumer lag")

    st, body, _ = api.request("POST", f"/api/v1/tenants/{t}/cancel", {"profile": "imap"}, token)
    check(st == 404 and "nothing to cancel" in body["error"]["message"],
          "cancel with nothing queued or running: 404")
    # credentials are write-only and can be replaced one at a time
    before = redis_cli("--no-raw", "GET", f"mv:cred:{t}:imap:{bea}")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap/credentials/{bea}",
                              {"secret": "pw-bea"}, token)
    check(st == 200 and "pw-bea" not in json.dumps(body), "bea's password replaced over the API")
    after = redis_cli("--no-raw", "GET", f"mv:cred:{t}:imap:{bea}")
    check(after != before and "pw-bea" not in after, "the credential is sealed anew, never in clear")
    pt = cli("profile", "test", "--tenant", t, "imap", "--mailbox", bea, expect=None)
    check(pt.returncode == 0, f"profile test logs in with the new password: {pt.stdout.strip()[-200:]}")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap/credentials/nobody", {"secret": "x"}, token)
    check(st == 404 and body["error"]["field"] == "slot", "a credential the profile does not have: 404")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap/credentials/{bea}", {"secret": ""}, token)
    check(st == 400 and body["error"]["field"] == "secret", "an empty secret: 400")
    st, body, _ = api.request("GET", f"/api/v1/tenants/{t}/profiles/imap/credentials/{bea}", token=token)
    check(st == 405, "a credential cannot be read back: 405")

    st, body, _ = api.request("GET", f"/api/v1/dlq?tenant={t}", token=token)
    check(st == 200 and [r["mailbox"] for r in body["records"]] == [bea] and
          "login refused" in body["records"][0]["error"], "the dead-letter list over the API")
    st, body, _ = api.request("POST", "/api/v1/dlq/retry", {"tenant": t, "mailbox": ann}, token)
    check(st == 404, "retrying a mailbox with no dead letter: 404")
    st, body, _ = api.request("POST", "/api/v1/dlq/retry", {"mailbox": bea}, token)
    check(st == 400 and body["error"]["field"] == "tenant", "a retry without tenant: 400")
    st, body, _ = api.request("POST", "/api/v1/dlq/retry", {"tenant": t, "mailbox": bea}, token)
    check(st == 202 and body["retried"] == 1, "dead letter retried over the API")
    st, body, _ = api.request("GET", f"/api/v1/dlq?tenant={t}", token=token)
    check(st == 200 and body["records"] == [], "and no longer listed")
    st, body, _ = api.request("POST", f"/api/v1/tenants/{t}/cancel", {"mailbox": bea}, token)
    check(st == 202 and body["cancelled"] == 1, "the queued retry can be cancelled over the API")
    st, body, _ = api.request("POST", f"/api/v1/tenants/{t}/cancel", {"profile": 3}, token)
    check(st == 400 and body["error"]["field"] == "profile", "cancel with a bad field: 400")
    st, body, _ = api.request("GET", f"/api/v1/tenants/{t}/runs/nope", token=token)
    check(st == 404, "an unknown run: 404")
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/big", raw=b" " * ((1 << 20) + 1), token=token)
    check(st == 413, "a body over 1 MiB: 413")
    st, body, _ = api.request("PATCH", f"/api/v1/tenants/{t}/profiles/imap", token=token)
    check(st == 405, "a method an endpoint does not take: 405")
    st, body, _ = api.request("DELETE", f"/api/v1/tenants/{t}/profiles/imap", token=token)
    check(st == 200, "profile deleted")
    st, body, _ = api.request("GET", f"/api/v1/tenants/{t}/profiles/imap", token=token)
    check(st == 404, "and gone")

    cli("token", "rm", "--name", f"ops-{SUFFIX}")
    st, body, _ = api.request("GET", "/api/v1/tenants", token=token)
    check(st == 401, "a revoked token is refused at once")
    check(f"token=ops-{SUFFIX}" in open(api.log).read(), "requests are logged with the token's name")
missing = sorted(f"{m} {p}" for m, p in used
                 if not in_spec(m, p) and m != "PATCH" and "nope" not in p and
                 not (m == "GET" and "/credentials/" in p))
check(not missing, f"every endpoint the test used is in docs/openapi.yaml {missing}")
print("1 passed, 0 failed")
