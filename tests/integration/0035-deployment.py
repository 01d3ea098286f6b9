"""0035: the deployment files (compose/) and the plain-process topology.

- compose/validate.py passes. It checks the compose topology, the Dockerfile's packages
  against apt and against the libraries the built programs load, the systemd units
  (systemd-analyze verify), the Prometheus configuration and alert rules (promtool), and the
  Grafana provisioning and dashboard queries.
- compose/local/topology.sh runs the same topology as plain processes in a run directory of
  its own: Kafka, Redis with AOF, Dovecot, two schedulers (one leads), two workers, the admin
  server and Debian's Prometheus scraping it with compose/prometheus/prometheus.yml.
  - A tenant, a profile and a run are made through the admin API, and the run finishes.
  - Prometheus sees the target up, both workers alive and the tenant's archived messages.
  - Every query of the Grafana dashboard is valid in that Prometheus and returns data.
- topology.sh stop stops every process it started."""
import urllib.parse
import urllib.request

from mvtest import *

v = subprocess.run([sys.executable, os.path.join(SRC, "compose", "validate.py"), "--bin", BIN],
                   capture_output=True, text=True, timeout=300)
print(v.stdout[-3000:])
check(v.returncode == 0, "compose/validate.py: every deployment check passes")

TOPO = os.path.join(RUN, f"topology-{SUFFIX}")
script = os.path.join(SRC, "compose", "local", "topology.sh")
tenv = dict(os.environ, MV_BIN_DIR=BIN)
p = subprocess.run(["bash", script, "start", TOPO, "2"], env=tenv, capture_output=True, text=True, timeout=600)
check(p.returncode == 0, f"topology.sh start: {p.stderr.strip()[-500:]}")
try:
    topo = dict(l.strip().split("=", 1) for l in open(os.path.join(TOPO, "topology.env")) if "=" in l)
    check("MV_PROMETHEUS_URL" in topo, "Prometheus runs beside the admin server")

    class Api(AdminServer):  # the topology's admin server, not one of our own
        def __init__(self, url):
            self.url = url
    api, token = Api(topo["MV_ADMIN_URL"]), topo["MV_API_TOKEN"]
    user = f"topo-{SUFFIX}"
    subprocess.run([sys.executable, SEED, "--run", TOPO, "--user", user, "--password", "pw-topo",
                    "--messages", "20", "--folders", "INBOX,Sent", "--seed", "81", "--mean-kb", "8"],
                   check=True, timeout=120)
    stack = dict(l.strip().split("=", 1) for l in open(os.path.join(TOPO, "env")) if "=" in l)
    t = f"topo-{SUFFIX}"
    st, body, _ = api.request("POST", "/api/v1/tenants", {"name": t}, token)
    check(st == 201, "tenant created through the topology's admin server")
    prof = {"type": "imap", "server": {"host": "127.0.0.1", "port": int(stack["MV_IMAP_PORT"]), "tls": "none"},
            "mailboxes": [{"login": user, "password": "pw-topo"}]}
    st, body, _ = api.request("PUT", f"/api/v1/tenants/{t}/profiles/imap", prof, token)
    check(st == 200, "profile saved")
    st, body, _ = api.request("POST", f"/api/v1/tenants/{t}/profiles/imap/run", token=token)
    check(st == 202, "run started")
    run_id = body["run"]
    r = wait_for(lambda: (lambda b: b if b.get("state") == "finished" else None)(
        api.request("GET", f"/api/v1/tenants/{t}/runs/{run_id}", token=token)[1]), "the run", timeout=180)
    check(r["done"] == 1 and r["messages"] == 20, f"the run finished: {r['done']} done, {r['messages']} messages")

    prom = topo["MV_PROMETHEUS_URL"]

    def query(q):
        url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())

    def value(q):
        res = query(q)["data"]["result"]
        return float(res[0]["value"][1]) if res else None
    wait_for(lambda: value('up{job="mailvault"}') == 1, "Prometheus to scrape the admin server", timeout=60)
    check(True, "Prometheus scrapes the admin server (up == 1)")
    wait_for(lambda: value(f'mailvault_archived_messages_total{{tenant="{t}"}}') == 20,
             "Prometheus to see the archived messages", timeout=60)
    check(value("mailvault_workers_alive") == 2, "Prometheus sees both workers alive")
    qs = json.loads(subprocess.run([sys.executable, os.path.join(SRC, "compose", "validate.py"), "--print-queries"],
                                   capture_output=True, text=True, check=True).stdout)
    bad = []
    for q in qs:
        res = query(q)
        if res.get("status") != "success":
            bad.append(q)
    check(not bad, f"all {len(qs)} Grafana dashboard queries evaluate in Prometheus {bad}")
    instant = [q for q in qs if "rate(" not in q and "increase(" not in q and "histogram_quantile" not in q]
    empty = [q for q in instant if not query(q)["data"]["result"]]
    check(not empty, f"and the instant ones return data {empty}")
    s = subprocess.run([SCHEDULER, "status", "--json"], capture_output=True, text=True,
                       env=dict(os.environ, MAILVAULT_CONFIG=stack["MV_CONFIG"]), timeout=60)
    check(json.loads(s.stdout)["leader"] in ("scheduler-a", "scheduler-b"), "one of the two schedulers leads")
finally:
    stop = subprocess.run(["bash", script, "stop", TOPO], env=tenv, capture_output=True, text=True, timeout=300)
pids = [f for f in os.listdir(os.path.join(TOPO, "pids"))]
check(stop.returncode == 0 and not pids, "topology.sh stop stopped every process")
print("1 passed, 0 failed")
