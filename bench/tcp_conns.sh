#!/usr/bin/env bash
# Benchmark (not a test): user-space memory per idle, authenticated, heartbeating TCP
# connection, and how many connections the machine holds. Starts `servers` release server
# processes sharing one TCP port with SO_REUSEPORT, warms them, then `datamiddleware bench
# conns` opens N connections from worker processes (each under the 20,000-file limit, spread
# over 127.0.0.2-9) and reports the servers' RSS growth per connection and any connection
# dropped while held.
#
#   bench/tcp_conns.sh [connections] [hold-seconds] [server-processes]
#   bench/tcp_conns.sh 19000 40 1       # memory per connection in one process
#   bench/tcp_conns.sh 100000 300 6     # 100k connections across 6 processes for 5 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-19000}
hold=${2:-40}
servers=${3:-1}
port=17170
cargo build --release --quiet --bin datamiddleware
bin=target/release/datamiddleware
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for i in $(seq "$servers"); do
  mkdir -p "$work/s$i"
  (cd "$work/s$i" && DMW_LOG__FILTER=warn DMW_TCP__MAX_CONNECTIONS=19800 DMW_HTTP__MAX_CONNECTIONS=100 \
    DMW_TCP__REUSE_PORT=true exec "$OLDPWD/$bin" --listen "127.0.0.1:$((18170 + i))" --tcp-listen "127.0.0.1:$port") &
  pids+=($!)
done
for i in $(seq "$servers"); do
  for _ in $(seq 100); do curl -fs "127.0.0.1:$((18170 + i))/healthz" >/dev/null && break; sleep 0.1; done
done
# Warm up (runtime threads, pools, first allocations) with a few connections per process.
"$bin" bench conns --addr "127.0.0.1:$port" --count $((200 * servers)) --hold 1 >/dev/null
sleep 1
echo "file limit per process: $(ulimit -n); server processes: $servers (SO_REUSEPORT)"
"$bin" bench conns --addr "127.0.0.1:$port" --count "$count" --per-process 19000 --hold "$hold" \
  --server-pid "$(IFS=,; echo "${pids[*]}")"
