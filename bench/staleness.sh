#!/usr/bin/env bash
# Benchmark (not a test): the consistency bound of several instances, measured from outside.
# Starts three release server processes on one PostgreSQL and one Redis (L2 and the bus),
# writes on the first and reads the same keys back to back on the other two, and prints, per
# write and reader, how long after the acknowledgement the older version was still served
# (p50 / p99 / max): once at rest, once under a mixed TCP load (10 % writes) spread over the
# three instances at half of what they reach together in a closed loop.
#
#   bench/staleness.sh [writes] [redis-url]      e.g. bench/staleness.sh 2000
#   bench/staleness.sh 2000 redis://127.0.0.1:7000   # through a Redis Cluster (seed node)
set -euo pipefail
cd "$(dirname "$0")/.."
writes=${1:-2000}
redis=${2:-}
# shellcheck source=scripts/services.sh
source scripts/services.sh
ensure_postgres
ensure_redis
pg_url=$DATAMIDDLEWARE_TEST_POSTGRES_URL
cargo build --release --quiet --bin datamiddleware
bin=target/release/datamiddleware
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
prefix="stale$$"
if [ -z "$redis" ]; then
  l2="l2_url = \"$DATAMIDDLEWARE_TEST_REDIS_URL\""
elif [[ "$redis" == *7000* ]] || [[ "$redis" == *","* ]]; then
  ensure_redis_cluster
  nodes=$(echo "$DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES" | sed 's/[^,]*/"&"/g')
  l2="l2_cluster_nodes = [$nodes]"
else
  l2="l2_url = \"$redis\""
fi
tcp=()
for i in 1 2 3; do
  cat > "$work/s$i.toml" <<CONF
[http]
listen = "127.0.0.1:$((18290 + i))"
[tcp]
listen = "127.0.0.1:$((17290 + i))"
[cache]
$l2
l2_prefix = "$prefix"
[log]
filter = "warn"
[games.default]
store = "$pg_url"
CONF
  "$bin" --config "$work/s$i.toml" &
  pids+=($!)
  tcp+=("127.0.0.1:$((17290 + i))")
done
for i in 1 2 3; do
  for _ in $(seq 100); do curl -fs "127.0.0.1:$((18290 + i))/healthz" >/dev/null && break; sleep 0.1; done
done
echo "3 instances on PostgreSQL and Redis ($l2); writer ${tcp[0]}, readers ${tcp[1]} ${tcp[2]}"
staleness() { "$bin" bench staleness --writer "${tcp[0]}" --readers "${tcp[1]},${tcp[2]}" --writes "$writes" "$@"; }
staleness --label "at rest" --json "$work/rest.json"

# Peak: the three instances in a closed loop at once, 5 s.
load=(--target tcp --workload mixed --keys 10000 --zipf 0.99 --write-ratio 0.1)
for i in 0 1 2; do
  "$bin" bench run "${load[@]}" --addr "${tcp[$i]}" -c 16 -d 4 --seconds 5 --json "$work/peak$i.json" >/dev/null &
  peak_pids[$i]=$!
done
wait "${peak_pids[@]}"
peak=$(python3 -c "import json,sys; print(sum(json.load(open(f))['throughput_rps'] for f in sys.argv[1:]))" "$work"/peak?.json)
rate=$(python3 -c "print(round($peak / 2 / 3))")
echo "closed-loop peak of the three together: ${peak%.*} req/s; background load: 3 x $rate req/s"
for i in 0 1 2; do
  "$bin" bench run "${load[@]}" --no-load --addr "${tcp[$i]}" -c 16 -d 4 --rate "$rate" --seconds 600 >/dev/null 2>&1 &
  load_pids[$i]=$!
  pids+=($!)
done
sleep 2
staleness --label "under a load at 50 % of peak" --json "$work/load.json"
for p in "${load_pids[@]}"; do kill "$p" 2>/dev/null || true; done
