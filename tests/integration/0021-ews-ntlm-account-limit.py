"""0021: an Exchange service account logging on with NTLM (libcurl's NTLMv2 against the EWS
simulator's), and the per-account concurrency limit kept by the whole cluster.

Six mailboxes are archived by two workers with six runner threads each while
ews.account_max_concurrent is 2: the simulator, which sees every request of the service account
whatever mailbox it names, never has more than 2 of them in flight at once, and every message
arrives byte for byte."""
import hashlib

from mvtest import *

org = f"tailspin-{SUFFIX}"
svc = "svc@tailspin.example"
boxes = {f"u{i}@tailspin.example": {"mail": {"Inbox": 12, "SentItems": 4}} for i in range(6)}
fx, files = ews_fixture(org, {"kind": "onprem", "auth": ["NTLM"],
                              "accounts": {svc: {"password": "ntlm-Pa55", "impersonation": True}}}, boxes)
want = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
with EwsSim(fx, "--latency-ms", "20") as sim:
    t = f"ts-{SUFFIX}"
    add_tenant(t)
    p = add_ews_profile(t, "ews", {"url": sim.ews_url, "auth": "ntlm", "username": svc, "password": "ntlm-Pa55"},
                        list(boxes))
    check(p.returncode == 0, f"profile saved ({p.stderr.strip()})")
    with Workers(2, MAILVAULT_WORKER_CONCURRENCY=6, MAILVAULT_EWS_ACCOUNT_MAX_CONCURRENT=2,
                 MAILVAULT_EWS_GET_BATCH=3):
        run(t, "ews")
    st = status(t)["mailboxes"]
    check(all(m["state"] == "done" for m in st) and len(st) == 6, f"all six mailboxes done: {[m['error'] for m in st]}")
    recs = index(t)
    check({r["hash"] for r in recs} == want and len(recs) == len(want), f"every message byte for byte ({len(recs)})")
    full = sim.full_stats()
    g = full["global"]
    check(g.get("ntlm_ok", 0) >= 1 and g.get("ntlm_failed", 0) == 0, f"NTLM logons succeeded: {g}")
    c = full["callers"][org][svc]
    print(f"# service account: requests={c['requests']} max_concurrent={c['max_concurrent']}")
    check(c["requests"] > 6 and c["max_concurrent"] <= 2,
          f"at most 2 requests of the service account at once across all mailboxes ({c['max_concurrent']})")
    check(all(v["throttled_by_limit"] == 0 for v in full["stats"][org].values()), "the server never had to refuse one")

    # the wrong password is refused by NTLM too
    t2 = f"ts2-{SUFFIX}"
    add_tenant(t2)
    add_ews_profile(t2, "ews", {"url": sim.ews_url, "auth": "ntlm", "username": svc, "password": "wrong"},
                    ["u0@tailspin.example"])
    with Workers(1):
        r = run(t2, "ews", expect=None, timeout=120)
    m = status(t2)["mailboxes"][0]
    check(r.returncode == 1 and m["state"] == "failed" and "401" in m["error"], f"a wrong password fails clearly: {m['error']!r}")
print("1 passed, 0 failed")
