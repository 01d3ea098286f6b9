#!/usr/bin/env python3
"""validate.py - checks the deployment files of compose/ as far as this machine allows. There
is no Docker engine, so nothing is built or started here: the files are checked against the
project and against the tools that do exist.

  python3 compose/validate.py [--bin BUILD_DIR]

- docker-compose.yml:
  - it is YAML with the production topology: kafka, redis with AOF, two schedulers, workers,
    admin, prometheus, grafana;
  - the mailvault services point at the Kafka and Redis services;
  - every file it mounts exists.
- Dockerfile:
  - every Debian package it installs exists in this machine's apt sources;
  - the build stage has every -dev package of compose/local/install-deps.sh;
  - the runtime stage provides every shared library that the built programs load (ldd,
    then dpkg -S).
- systemd units: `systemd-analyze verify`, with ExecStart pointed at the built programs.
- Prometheus: `promtool check config` and `promtool check rules`.
- Grafana: the provisioning files are YAML, and the dashboard is JSON whose every query
  names only metrics that docs/api.md documents.
Prints one line per check and exits 1 if any fails."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = os.path.join(ROOT, "compose")
failures = []


def check(ok, what):
    what = " ".join(what.split())
    print(("ok - " if ok else "FAIL: ") + what)
    if not ok:
        failures.append(what)


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def compose_file():
    d = yaml.safe_load(open(os.path.join(C, "docker-compose.yml")))
    s = d.get("services", {})
    need = {"kafka", "redis", "scheduler-a", "scheduler-b", "worker", "admin", "prometheus", "grafana"}
    check(need <= set(s), f"docker-compose.yml has the services {sorted(need)}")
    cmd = " ".join(s.get("redis", {}).get("command", []))
    check("--appendonly yes" in cmd, "redis runs with the append-only file")
    check(s["worker"].get("deploy", {}).get("replicas", 0) >= 2, "workers are replicated")
    for name in ("scheduler-a", "scheduler-b", "worker", "admin"):
        env = s[name].get("environment", {})
        check(env.get("MAILVAULT_KAFKA_BROKERS", "").split(":")[0] == "kafka" and
              env.get("MAILVAULT_REDIS_HOST") == "redis",
              f"{name} talks to the kafka and redis services")
        check(s[name].get("build", {}).get("dockerfile") == "compose/Dockerfile",
              f"{name} is built from compose/Dockerfile")
    ep = {n: s[n].get("entrypoint", []) for n in ("scheduler-a", "scheduler-b", "worker", "admin")}
    check(ep["scheduler-a"][:2] == ["/usr/local/bin/mailvault-scheduler", "serve"] and
          ep["admin"][:2] == ["/usr/local/bin/mailvault", "serve"] and
          ep["worker"][0] == "/usr/local/bin/mailvault-worker", "each service runs its program")
    for name, svc in s.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                check(os.path.exists(os.path.join(C, src)), f"{name} mounts {src}, which exists")
    # the S3 service: SeaweedFS's `weed mini` with flags this version really has (checked
    # against the weed binary the local stack runs, the same release as the image)
    s3 = s.get("s3", {})
    check(s3.get("image", "").startswith("chrislusf/seaweedfs:") and
          "s3_config" in s3.get("secrets", []) and "s3_config" in d.get("secrets", {}),
          "the s3 service runs SeaweedFS with its access keys as a secret")
    weed = os.path.expanduser(os.path.join(os.environ.get("MV_CACHE_DIR", "~/.cache/mailvault"),
                                           "seaweedfs-" + s3.get("image", ":").split(":")[1],
                                           "bin", "weed"))
    if os.path.exists(weed):
        helptext = run(weed, "mini", "-h").stdout + run(weed, "mini", "-h").stderr
        flags = [a.split("=")[0] for a in s3.get("command", [])[1:]]
        missing = [f for f in flags if not re.search(r"^\s+" + re.escape(f) + r"\b", helptext, re.M)]
        check(s3.get("command", [""])[0] == "mini" and not missing,
              f"weed mini accepts every flag of the s3 service {missing}")
    else:
        check(False, f"the weed binary of the s3 service's release is at {weed} (stack.sh installs it)")
    prom = yaml.safe_load(open(os.path.join(C, "prometheus", "prometheus.yml")))
    targets = [t for sc in prom["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]]
    port = s["admin"]["entrypoint"][-1].split(":")[-1]
    check(f"admin:{port}" in targets, f"Prometheus scrapes the admin service (admin:{port})")


def dockerfile(bindir):
    text = open(os.path.join(C, "Dockerfile")).read()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    check(len(stages) == 2, "the Dockerfile has a build and a runtime stage")
    pkgs = []
    for st in stages:
        m = re.search(r"apt-get install[^\n]*?((?:\\\n|[^\n])*)", st)
        words = re.findall(r"[a-z0-9][a-z0-9.+-]+", (m.group(1) if m else "").split("&&")[0])
        pkgs.append([w for w in words if not w.startswith("-") and w not in ("y", "no-install-recommends")])
    build, runtime = pkgs
    for p in build + runtime:
        r = run("apt-cache", "show", "--no-all-versions", p)
        check(r.returncode == 0 and "Package:" in r.stdout, f"Debian package {p} exists")
    deps = open(os.path.join(C, "local", "install-deps.sh")).read()
    devs = set(re.findall(r"\b(lib[a-z0-9.+-]+-dev)\b", deps)) - {"libcmocka-dev", "libclang-rt-14-dev"}
    check(devs <= set(build), f"the build stage installs every library -dev package {sorted(devs - set(build))}")
    progs = [os.path.join(bindir, p) for p in ("producer/mailvault", "worker/mailvault-worker",
                                                "scheduler/mailvault-scheduler")]
    if not all(os.path.exists(p) for p in progs):
        check(False, f"built programs under {bindir} (for the library check)")
        return
    direct, paths = set(), {}
    for p in progs:  # the libraries the programs link themselves (NEEDED), not their deps
        for line in run("objdump", "-p", p).stdout.splitlines():
            m = re.match(r"\s+NEEDED\s+(\S+)", line)
            if m:
                direct.add(m.group(1))
        for line in run("ldd", p).stdout.splitlines():
            m = re.match(r"\s*(\S+) => (/\S+)", line)
            if m:
                paths[m.group(1)] = m.group(2)
    base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}  # in every Debian image
    for soname in sorted(direct):
        path = paths.get(soname, "")
        pkg = "?"
        for cand in (path, path.replace("/lib/", "/usr/lib/", 1), os.path.realpath(path)):
            r = run("dpkg", "-S", cand) if cand else None
            if r is not None and r.returncode == 0:
                pkg = r.stdout.split(":")[0].strip()
                break
        if pkg not in base:
            check(pkg in runtime, f"runtime stage provides {soname} ({pkg})")


def systemd(bindir):
    if not shutil.which("systemd-analyze"):
        check(False, "systemd-analyze is installed")
        return
    with tempfile.TemporaryDirectory() as d:
        for f in sorted(os.listdir(os.path.join(C, "systemd"))):
            text = open(os.path.join(C, "systemd", f)).read()
            for prog, rel in (("mailvault-worker", "worker"), ("mailvault-scheduler", "scheduler"),
                              ("mailvault", "producer")):
                text = re.sub(rf"/usr/local/bin/{prog}\b", os.path.join(bindir, rel, prog), text)
            text = re.sub(r"^(User|Group)=.*$", "", text, flags=re.M)  # no such user here
            name = f.replace("@.service", "@1.service")
            path = os.path.join(d, name)
            open(path, "w").write(text)
            r = run("systemd-analyze", "verify", path)
            errs = [l for l in (r.stderr + r.stdout).splitlines() if name in l or "ExecStart" in l]
            check(r.returncode == 0 and not errs, f"systemd-analyze verify {f} {errs}")


def prometheus():
    if not shutil.which("promtool"):
        check(False, "promtool is installed (Debian package prometheus)")
        return
    with tempfile.TemporaryDirectory() as d:
        cfg = open(os.path.join(C, "prometheus", "prometheus.yml")).read()
        cfg = cfg.replace("/etc/prometheus/alerts.yml", os.path.join(C, "prometheus", "alerts.yml"))
        open(os.path.join(d, "p.yml"), "w").write(cfg)
        r = run("promtool", "check", "config", os.path.join(d, "p.yml"))
        check(r.returncode == 0, f"promtool check config {r.stdout.strip()[-200:]} {r.stderr.strip()[-200:]}")
    r = run("promtool", "check", "rules", os.path.join(C, "prometheus", "alerts.yml"))
    check(r.returncode == 0, f"promtool check rules {r.stdout.strip()[-120:]}")


def documented_metrics():
    doc = open(os.path.join(ROOT, "docs", "api.md")).read()
    names = set(re.findall(r"`(mailvault_[a-z_]+)`", doc))
    return names | {n + s for n in names for s in ("_bucket", "_sum", "_count")}


def grafana():
    for f in ("provisioning/datasources/prometheus.yml", "provisioning/dashboards/mailvault.yml"):
        yaml.safe_load(open(os.path.join(C, "grafana", f)))
        check(True, f"grafana/{f} is YAML")
    dash = json.load(open(os.path.join(C, "grafana", "dashboards", "mailvault.json")))
    known = documented_metrics()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bmailvault_[a-z_]+", e)}
    check(exprs and used <= known, f"the Grafana dashboard's {len(exprs)} queries use documented metrics only "
          f"{sorted(used - known)}")
    ds = yaml.safe_load(open(os.path.join(C, "grafana", "provisioning", "datasources", "prometheus.yml")))
    uids = {d["uid"] for d in ds["datasources"]}
    check(all(p["datasource"]["uid"] in uids for p in dash["panels"]), "every panel uses the provisioned data source")
    return exprs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build"), help="build directory (default build/)")
    ap.add_argument("--print-queries", action="store_true", help="print the Grafana queries as JSON and exit")
    a = ap.parse_args()
    if a.print_queries:
        dash = json.load(open(os.path.join(C, "grafana", "dashboards", "mailvault.json")))
        print(json.dumps([t["expr"] for p in dash["panels"] for t in p["targets"]]))
        return 0
    compose_file()
    dockerfile(a.bin)
    systemd(a.bin)
    prometheus()
    grafana()
    print(f"{len(failures)} failed" if failures else "all deployment checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
