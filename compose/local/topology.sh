#!/usr/bin/env bash
# topology.sh - compose/docker-compose.yml's topology as plain processes on this machine:
# the stack (Kafka KRaft, Redis with AOF, Dovecot as a mail source), two schedulers, N
# workers, the admin server (API, /metrics, dashboard) and, when Debian's prometheus is
# installed, Prometheus scraping the admin server with compose/prometheus/prometheus.yml.
# Grafana has no Debian package; its provisioning is checked by compose/validate.py.
#   topology.sh start DIR [WORKERS]   (default 2 workers; builds must be in build/)
#   topology.sh stop DIR
# Processes are registered in DIR/pids, so `stack.sh stop DIR` stops them as well.
# DIR/topology.env names the admin URL, the Prometheus URL and an API token.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${MV_BIN_DIR:-$ROOT/build}
die() { echo "topology: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL SECONDS
    for ((i = 0; i < $2 * 10; i++)); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

start() {
    local run=$1 n=${2:-2}
    [ -x "$BIN/producer/mailvault" ] || die "build first (cmake -S . -B build && ninja -C build)"
    bash "$ROOT/compose/local/stack.sh" start "$run" >&2
    # shellcheck disable=SC1091
    source "$run/env"
    export MAILVAULT_CONFIG=$MV_CONFIG MAILVAULT_TLS_CA_FILE=$MV_TLS_CA
    for id in scheduler-a scheduler-b; do
        "$BIN/scheduler/mailvault-scheduler" serve --id "$id" >"$run/log/$id.log" 2>&1 &
        echo $! >"$run/pids/$id.pid"
    done
    for ((i = 1; i <= n; i++)); do
        "$BIN/worker/mailvault-worker" --id "worker-$i" >"$run/log/worker-$i.log" 2>&1 &
        echo $! >"$run/pids/worker-$i.pid"
    done
    local aport
    aport=$(free_port)
    "$BIN/producer/mailvault" serve --listen "127.0.0.1:$aport" >"$run/log/admin.log" 2>&1 &
    echo $! >"$run/pids/admin.pid"
    wait_http "http://127.0.0.1:$aport/healthz" 30 || die "the admin server did not start ($run/log/admin.log)"
    local token
    token=$("$BIN/producer/mailvault" token add --name "topology-$(date +%s%N)")
    {
        echo "MV_ADMIN_URL=http://127.0.0.1:$aport"
        echo "MV_API_TOKEN=$token"
    } >"$run/topology.env"
    if command -v prometheus >/dev/null; then
        local pport
        pport=$(free_port)
        mkdir -p "$run/prometheus"
        # the compose file's scrape configuration with the admin server's local address
        sed -e "s#admin:8080#127.0.0.1:$aport#" -e "s#/etc/prometheus/alerts.yml#$ROOT/compose/prometheus/alerts.yml#" \
            -e 's/scrape_interval: 15s/scrape_interval: 1s/' \
            "$ROOT/compose/prometheus/prometheus.yml" >"$run/prometheus/prometheus.yml"
        prometheus --config.file="$run/prometheus/prometheus.yml" --storage.tsdb.path="$run/prometheus/data" \
            --web.listen-address="127.0.0.1:$pport" >"$run/log/prometheus.log" 2>&1 &
        echo $! >"$run/pids/prometheus.pid"
        wait_http "http://127.0.0.1:$pport/-/ready" 60 || die "Prometheus did not start ($run/log/prometheus.log)"
        echo "MV_PROMETHEUS_URL=http://127.0.0.1:$pport" >>"$run/topology.env"
    fi
    echo "topology: up under $run: 2 schedulers, $n workers, admin http://127.0.0.1:$aport" >&2
}

case "${1:-}" in
start) [ $# -ge 2 ] || die "usage: topology.sh start DIR [WORKERS]"; start "$2" "${3:-2}" ;;
stop) [ $# -eq 2 ] || die "usage: topology.sh stop DIR"; bash "$ROOT/compose/local/stack.sh" stop "$2" ;;
*) die "usage: topology.sh start DIR [WORKERS] | stop DIR" ;;
esac
