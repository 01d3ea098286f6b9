#!/usr/bin/env bash
# install-deps.sh - every Debian package that building, the demo and the tests need
# (--tests: also what only the tests use).
# Idempotent; quick when everything is present. Kafka itself comes from Maven Central
# (compose/local/stack.sh fetches and caches it).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config git
      librdkafka-dev libhiredis-dev libcurl4-openssl-dev libssl-dev libmsgpack-dev libzstd-dev
      libjansson-dev libxml2-dev libcmocka-dev libmicrohttpd-dev tzdata
      redis-server dovecot-imapd dovecot-core isync kcat
      openjdk-17-jre-headless maven python3 python3-venv python3-pip openssl
      clang clang-format libclang-rt-14-dev valgrind procps bc)
# the tests also drive the web dashboard in a headless browser, and check the deployment
# files with systemd-analyze and Prometheus' promtool and a real Prometheus (--tests)
if [ "${1:-}" = "--tests" ]; then PKGS+=(chromium prometheus systemd binutils curl); fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    # Debian's service scripts would start system-wide redis/dovecot; the stack runs its own.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
