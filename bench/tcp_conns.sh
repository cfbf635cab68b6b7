#!/usr/bin/env bash
# Benchmark (not a test): user-space memory per idle, authenticated, heartbeating TCP
# connection. Starts a release server, warms it, then `datamiddleware bench conns` opens N
# connections from worker processes (each under the 20,000-file limit, spread over
# 127.0.0.2-9) and reports the server's RSS growth per connection and any dropped connection.
#
#   bench/tcp_conns.sh [connections] [hold-seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-19000}
hold=${2:-40}
port=17170
cargo build --release --quiet --bin datamiddleware
bin=target/release/datamiddleware
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && DMW_LOG__FILTER=warn DMW_TCP__MAX_CONNECTIONS=19800 DMW_HTTP__MAX_CONNECTIONS=100 \
  exec "$OLDPWD/$bin" --listen 127.0.0.1:18170 --tcp-listen "127.0.0.1:$port") &
server=$!
for _ in $(seq 100); do curl -fs 127.0.0.1:18170/healthz >/dev/null && break; sleep 0.1; done
# Warm up (runtime threads, pools, first allocations) with a few connections.
"$bin" bench conns --addr "127.0.0.1:$port" --count 200 --hold 1 >/dev/null
sleep 1
echo "file limit per process: $(ulimit -n)"
"$bin" bench conns --addr "127.0.0.1:$port" --count "$count" --per-process 19000 --hold "$hold" --server-pid "$server"
