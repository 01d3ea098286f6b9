"""0017: message downloads in JSON batches ($batch, 20 per request by default).

Two mailboxes are archived through $batch: every message arrives byte for byte, the batches
carry almost all downloads, and each mailbox stays under Microsoft's limits as the simulator
counts them (a batch counts as its inner requests; never more than 4 at once). Faults inside a
batch are handled like the same request sent alone: inner 429s are waited out and fetched
again, an inner 500 is fetched alone, and a message that answers 404 is skipped as gone."""
import hashlib
import urllib.parse

from mvtest import *

tid = f"batch-{SUFFIX}"
secret = f"s-{SUFFIX}"
boxes = {"fay@batch.com": {"Inbox": 70, "Archive": 25}, "gus@batch.com": {"Inbox": 41}}
fx, files = graph_fixture(tid, secret, boxes)
sha = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
with GraphSim(fx, "--limit-concurrent", "4", "--limit-window-requests", "400",
              "--limit-window-seconds", "30", "--latency-ms", "5") as sim:
    # faults inside batches: two throttled downloads, one failing with 500, one gone for good
    sim.post("/_sim/faults", {"path_regex": r"/users/fay%40batch\.com/messages/.*/\$value", "status": 429,
                              "retry_after": 1, "count": 2})
    sim.post("/_sim/faults", {"path_regex": r"/users/gus%40batch\.com/messages/.*/\$value", "status": 500,
                              "count": 1})
    t = f"bt-{SUFFIX}"
    add_tenant(t)
    add_graph_profile(t, "graph", tid, secret, sim.url, list(boxes))
    with Workers(1, MAILVAULT_GRAPH_WINDOW_REQUESTS=400, MAILVAULT_GRAPH_WINDOW_SECONDS=30):
        run(t, "graph", timeout=240)
    st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
    check(all(m["state"] == "done" for m in st.values()), f"both mailboxes archived: {[m['error'] for m in st.values()]}")
    recs = index(t)
    check({r["hash"] for r in recs} == sha, f"every message archived byte for byte ({len(recs)} records, {len(sha)} files)")
    check(st["fay@batch.com"]["throttled"] >= 2, f"the inner 429s were counted and waited out ({st['fay@batch.com']['throttled']})")
    full = json.loads(urllib.request.urlopen(sim.url + "/_sim/stats", timeout=10).read())
    b = full["batches"].get(tid, {"batches": 0, "requests": 0})
    print(f"# batches={b['batches']} inner_requests={b['requests']} messages={len(files)}")
    check(b["batches"] >= len(files) // 20, f"downloads went in batches ({b['batches']} batches)")
    # pages of 100: 70 = 3x20+10, 25 = 20+5, 41 = 2x20+1 (a lone message goes alone)
    check(b["requests"] == len(files) - 1, f"the batches carried all downloads but one ({b['requests']} inner requests)")
    fired = {f["status"]: f["fired"] for f in full["faults"]}
    check(fired.get(429) == 2 and fired.get(500) == 1, f"the faults fired inside batches: {fired}")
    for upn in boxes:
        s = full["stats"][tid][upn]
        print(f"# {upn}: requests={s['requests']} max_concurrent={s['max_concurrent']} "
              f"peak_window={s['peak_window_requests']} throttled_by_limit={s['throttled_by_limit']}")
        check(s["max_concurrent"] <= 4, f"{upn}: never more than 4 requests at once ({s['max_concurrent']})")
        check(s["throttled_by_limit"] == 0, f"{upn}: the simulator never had to throttle for a limit")

    # a message that answers 404 inside a batch is skipped as gone, the rest still archive
    inbox = os.path.join(fx, tid, "users", "gus@batch.com", "mail", "Inbox")
    for k in range(3):
        with open(os.path.join(inbox, f"late{k}.eml"), "wb") as f:
            f.write(f"From: x@example.org\r\nSubject: late {k}\r\nMessage-ID: <late{k}.{SUFFIX}@x>\r\n\r\nbody {k}\r\n".encode())
    sim.post("/_sim/faults", {"path_regex": r"/users/gus%40batch\.com/messages/.*/\$value", "status": 404,
                              "code": "ErrorItemNotFound", "message": "The specified object was not found in the store.",
                              "count": 1})
    with Workers(1, MAILVAULT_GRAPH_WINDOW_REQUESTS=400, MAILVAULT_GRAPH_WINDOW_SECONDS=30):
        run(t, "graph", timeout=240)
    g = {m["mailbox"]: m for m in status(t)["mailboxes"]}["gus@batch.com"]
    check(g["state"] == "done" and g["messages"] == 2, f"two of three new messages archived, one skipped as gone ({g['messages']})")
print("1 passed, 0 failed")
