"""0011: Microsoft's per-mailbox limits kept cluster-wide.

The simulator enforces a small budget (40 requests per 8 s and 1 concurrent request per
mailbox) and answers 429 when it is exceeded. Two worker processes with the same limits
configured archive two mailboxes that need about twice that budget each: they pace themselves
through the shared Redis limiter, so the simulator never has to throttle them
(throttled_by_limit = 0) and no window ever holds more than 40 requests."""
from mvtest import *

tid = f"fabrikam-{SUFFIX}"
secret = f"s-{SUFFIX}"
boxes = {"ann@fabrikam.com": {"Inbox": 45, "Archive": 15}, "ben@fabrikam.com": {"Inbox": 50}}
fx, files = graph_fixture(tid, secret, boxes)
limits = dict(MAILVAULT_GRAPH_WINDOW_REQUESTS=40, MAILVAULT_GRAPH_WINDOW_SECONDS=8,
              MAILVAULT_GRAPH_MAX_CONCURRENT=1, MAILVAULT_WORKER_CHUNK_MESSAGES=20)
with GraphSim(fx, "--limit-window-requests", "40", "--limit-window-seconds", "8",
              "--limit-concurrent", "1", "--default-delta-page-size", "10") as sim:
    t = f"fab-{SUFFIX}"
    add_tenant(t)
    add_graph_profile(t, "graph", tid, secret, sim.url, list(boxes))
    with Workers(2, **limits):
        run(t, "graph", timeout=240)
    st = {m["mailbox"]: m for m in status(t)["mailboxes"]}
    check(all(m["state"] == "done" for m in st.values()), "both mailboxes archived")
    check(sum(m["messages"] for m in st.values()) == len(files), f"all {len(files)} messages")
    stats = sim.stats()[tid]
    for upn in boxes:
        s = stats[upn]
        print(f"# {upn}: requests={s['requests']} peak_window={s['peak_window_requests']} "
              f"max_concurrent={s['max_concurrent']} throttled_by_limit={s['throttled_by_limit']} "
              f"concurrency={s['throttled_concurrency']} window={s['throttled_window']}")
        check(s["requests"] > 40, f"{upn} needed more than one window's budget ({s['requests']} requests)")
        check(s["throttled_by_limit"] == 0, f"{upn}: the simulator never had to throttle")
        check(s["peak_window_requests"] <= 40, f"{upn}: at most 40 requests in any 8 s window")
        check(s["max_concurrent"] <= 1, f"{upn}: never more than 1 request at once")
print("1 passed, 0 failed")
