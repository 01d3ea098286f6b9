#!/usr/bin/env bash
# compose/demo.sh - the demo on a fresh machine: installs dependencies, builds, starts a local
# single-node Kafka (KRaft), Redis and a Dovecot IMAP server seeded with sample mailboxes for
# two tenants (globex's archive in SeaweedFS S3, encrypted), starts the scheduler and two
# workers, archives everything and prints a summary.
#   MV_DEMO_DIR   run directory (default ./run/demo); MV_DEMO_KEEP=1 leaves the stack running
#   MV_DEMO_MESSAGES  messages per mailbox (default 300)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUN=${MV_DEMO_DIR:-$ROOT/run/demo}
PER=${MV_DEMO_MESSAGES:-300}

bash compose/local/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build >/dev/null
echo "demo: built build/producer/mailvault, build/worker/mailvault-worker, build/scheduler/mailvault-scheduler"

rm -rf "$RUN"
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "${MV_DEMO_KEEP:-0}" = "1" ] || bash compose/local/stack.sh stop "$RUN" >/dev/null
}
trap cleanup EXIT
bash compose/local/stack.sh start "$RUN"
# shellcheck disable=SC1091
source "$RUN/env"
export MAILVAULT_CONFIG=$MV_CONFIG
MV=build/producer/mailvault

echo "demo: seeding mailboxes (tenants acme: alice, bob; globex: carol, dan)"
python3 compose/local/seed.py --run "$RUN" --user alice@acme --password pw-alice --messages "$PER" --folders INBOX,Sent,Projects.2025,Trash --seed 1 --duplicates 10
python3 compose/local/seed.py --run "$RUN" --user bob@acme --password pw-bob --messages "$PER" --folders INBOX,Sent --seed 2
python3 compose/local/seed.py --run "$RUN" --user carol@globex --password pw-carol --messages "$PER" --folders INBOX,Sent,Customers --seed 3
python3 compose/local/seed.py --run "$RUN" --user dan@globex --password pw-dan --messages "$PER" --folders INBOX --seed 4

$MV tenant add acme --display-name "Acme Corp"
$MV tenant add globex --display-name "Globex Inc"
umask 077
cat >"$RUN/acme.json" <<JSON
{"name": "imap", "type": "imap",
 "server": {"host": "127.0.0.1", "port": $MV_IMAPS_PORT, "tls": "implicit"},
 "folders": {"include": ["*"], "exclude": ["Trash"]},
 "mailboxes": [{"login": "alice@acme", "password": "pw-alice"},
               {"login": "bob@acme", "password": "pw-bob"}]}
JSON
cat >"$RUN/globex.json" <<JSON
{"name": "imap", "type": "imap",
 "server": {"host": "127.0.0.1", "port": $MV_IMAP_PORT, "tls": "starttls"},
 "mailboxes": [{"login": "carol@globex", "password": "pw-carol"},
               {"login": "dan@globex", "password": "pw-dan"}]}
JSON
# globex keeps its archive in S3 (the stack's SeaweedFS), encrypted under its own keys
$MV store add s3 --type s3 --endpoint "$MV_S3_ENDPOINT" --bucket mailvault-demo \
    --access-key "$MV_S3_ACCESS_KEY" --secret-file "$RUN/s3.secret" --create-bucket
$MV tenant set globex --store s3 --encryption on
$MV profile add --tenant acme --file "$RUN/acme.json"
$MV profile add --tenant globex --file "$RUN/globex.json"
rm -f "$RUN/acme.json" "$RUN/globex.json"

export MAILVAULT_TLS_CA_FILE=$MV_TLS_CA # the stack's own test CA; verification stays on
build/scheduler/mailvault-scheduler serve >"$RUN/log/scheduler.log" 2>&1 &
PIDS+=($!)
for i in 1 2; do
    build/worker/mailvault-worker --id "worker-$i" >"$RUN/log/worker-$i.log" 2>&1 &
    PIDS+=($!)
done

start=$(date +%s.%N)
$MV run --tenant acme --profile imap
$MV run --tenant globex --profile imap --wait --timeout 600 || true
# the acme run may still be going: wait for it through status
while :; do
    left=$($MV status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(m["state"] not in ("done","failed") for m in d["mailboxes"]))')
    [ "$left" = "0" ] && break
    sleep 0.5
done
end=$(date +%s.%N)

echo
$MV status
echo
$MV status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
ms = d["mailboxes"]
tenants = sorted({m["tenant"] for m in ms})
msgs = sum(m["messages"] for m in ms)
raw = sum(m["bytes_raw"] for m in ms)
stored = sum(m["bytes_stored"] for m in ms)
failed = [m for m in ms if m["state"] != "done"]
elapsed = float(sys.argv[1]) - float(sys.argv[2])
print("=== mailvault demo summary ===")
names = ", ".join(tenants)
print(f"tenants:       {len(tenants)} ({names})")
print(f"mailboxes:     {len(ms)} ({len(ms) - len(failed)} done, {len(failed)} failed)")
print(f"messages:      {msgs}")
print(f"bytes raw:     {raw} ({raw / 1e6:.1f} MB)")
print(f"bytes stored:  {stored} ({stored / 1e6:.1f} MB, {100 * stored / max(raw, 1):.0f}% of raw; duplicates stored once)")
print(f"elapsed:       {elapsed:.1f} s ({msgs / max(elapsed, 1e-9):.0f} messages/s)")
sys.exit(1 if failed else 0)
' "$end" "$start"
$MV verify
echo "archive:       acme: $RUN/store/acme/objects (zstd objects), $RUN/store/acme/mailboxes/*/index (segments)"
echo "               globex: bucket mailvault-demo at $MV_S3_ENDPOINT, keys globex/... (sealed, keyed names)"
echo "try:           MAILVAULT_CONFIG=$MV_CONFIG $MV ls --tenant acme | head"
