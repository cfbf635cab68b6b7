#!/usr/bin/env bash
# Benchmark (not a test): user-space memory per idle, authenticated, heartbeating TCP
# connection. Starts a release server, opens N connections from a separate process
# (examples/idle_conns, spread over 127.0.0.2-9), and compares the server's RSS before and
# after. One process may hold ~19,900 sockets here (file limit 20,000), so N defaults to 19000.
#
#   bench/tcp_conns.sh [connections] [hold-seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-19000}
hold=${2:-40}
port=17170
cargo build --release --quiet --bin datamiddleware --example idle_conns
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && DMW_LOG__FILTER=warn DMW_TCP__MAX_CONNECTIONS=19800 DMW_HTTP__MAX_CONNECTIONS=100 \
  exec "$OLDPWD/target/release/datamiddleware" --listen 127.0.0.1:18170 --tcp-listen "127.0.0.1:$port") &
server=$!
for _ in $(seq 100); do curl -fs 127.0.0.1:18170/healthz >/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/{print $2}' "/proc/$server/status"; }
# Warm up (runtime threads, pools, first allocations) with a few connections, then measure.
target/release/examples/idle_conns "127.0.0.1:$port" 200 1 >/dev/null
sleep 1
before=$(rss)
echo "server RSS before: ${before} KiB (ulimit -n: $(ulimit -n))"
fifo="$work/out"; mkfifo "$fifo"
target/release/examples/idle_conns "127.0.0.1:$port" "$count" "$hold" > "$fifo" &
gen=$!
exec 3< "$fifo"
read -r _ ready <&3
sleep 2
after=$(rss)
echo "connections ready: $ready; server RSS after: ${after} KiB"
awk -v b="$before" -v a="$after" -v n="$ready" 'BEGIN{printf "user-space RSS per connection: %.0f bytes\n", (a-b)*1024/n}'
read -r _ alive dropped <&3
wait $gen
echo "after holding ${hold}s (heartbeats every 20 s): alive $alive, dropped $dropped; server RSS $(rss) KiB"
