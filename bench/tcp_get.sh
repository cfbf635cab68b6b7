#!/usr/bin/env bash
# Benchmark (not a test): TCP GET of a cached document through the client crate, side by side
# with redis-server GET of a value of the same size measured by redis-benchmark, at pipeline
# depth 1 and 16, 50 connections, alternating targets in one run.
#
#   bench/tcp_get.sh [rounds] [seconds]
#
# Note the engines differ: redis-benchmark is C with a hand-rolled event loop, ours is the
# Rust client crate. A same-engine comparison comes with the load generator (issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
http_port=18280 tcp_port=17280 redis_port=16380
command -v redis-server >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
cargo build --release --quiet --bin datamiddleware --example get_bench -p datamiddleware -p datamiddleware-client
work=$(mktemp -d)
cleanup() { kill "$server" 2>/dev/null || true; redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
(cd "$work" && DMW_LOG__FILTER=warn exec "$OLDPWD/target/release/datamiddleware" --listen "127.0.0.1:$http_port" --tcp-listen "127.0.0.1:$tcp_port") &
server=$!
redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" --logfile "$work/redis.log"
for _ in $(seq 100); do curl -fs "127.0.0.1:$http_port/healthz" >/dev/null && redis-cli -p $redis_port ping >/dev/null 2>&1 && break; sleep 0.1; done
doc='{"value":{"name":"Aria","level":42,"class":"mage","guild":"northwind","gold":18250,"hp":930,"mp":1200,"zone":"ember-coast"}}'
curl -fs -X PUT -H 'content-type: application/json' "127.0.0.1:$http_port/api/players/42" -d "$doc" >/dev/null
size=$(curl -fs "127.0.0.1:$http_port/api/players/42" | wc -c)
echo "document: $size bytes; redis value: $size bytes" >&2
for round in $(seq "$rounds"); do
  for depth in 1 16; do
    ours=$(target/release/examples/get_bench "127.0.0.1:$tcp_port" default players 42 50 "$depth" "$seconds")
    redis=$(redis-benchmark -p $redis_port -t get -c 50 -d "$size" -P "$depth" -n $((depth == 1 ? 400000 : 4000000)) -q | tr '\r' '\n' | grep -E '^GET' | tail -1)
    echo "round $round depth $depth: datamiddleware $ours | redis $redis"
  done
done
