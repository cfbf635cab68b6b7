#!/usr/bin/env bash
# Two builds of the server side by side in one run, with one load generator, so a change's cost
# is a ratio measured under the same noise, not two numbers from different days. The order
# alternates (A B, then B A, …): whichever runs first in a pair measured consistently faster on
# the PostgreSQL rows here (a warmer database), which an A B A B order books as a difference.
#   HTTP GET of a cached document (64 connections), TCP GET at depth 1 and 16 (50 connections),
#   and through PostgreSQL: cold reads (95 % L1 misses) and PUTs (16 connections).
# The load generator is B's `datamiddleware bench`, for both.
#
#   bench/ab.sh A_BINARY B_BINARY [seconds-per-measurement] [rounds]
#
# Build an older commit's binary in a worktree, e.g.:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release --bin datamiddleware)
set -euo pipefail
cd "$(dirname "$0")/.."
a_bin=$(realpath "$1")
b_bin=$(realpath "$2")
secs=${3:-6}
rounds=${4:-4}
# shellcheck source=scripts/services.sh
source scripts/services.sh
ensure_postgres
pg_url=$DATAMIDDLEWARE_TEST_POSTGRES_URL

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 100); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
declare -A rps
run_bench() { # LABEL ARGS… → records the throughput
  local label=$1; shift
  local json="$work/$label.json"
  "$b_bin" bench run --seconds "$secs" --json "$json" "$@" >/dev/null 2>"$work/bench.err" || { cat "$work/bench.err" >&2; return 1; }
  local t errors
  read -r t errors < <(python3 -c "import json; r=json.load(open('$json')); print(int(r['throughput_rps']), sum(r['errors'].values()))")
  printf '  %-16s %10s req/s  errors %s\n' "$label" "$t" "$errors" >&2
  rps[$label]+="$t "
}
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="$(median "${rps[$1]}")" -v b="$(median "${rps[$2]}")" 'BEGIN{printf "%.2f", b/a}'; }
start() { # NAME BINARY HTTP TCP ARGS… → the pid
  local name=$1 bin=$2 http=$3 tcp=$4; shift 4
  mkdir -p "$work/$name"
  (cd "$work/$name" && DMW_LOG__FILTER=warn exec "$bin" "$@" --listen "127.0.0.1:$http" --tcp-listen "127.0.0.1:$tcp") &
  pids+=($!)
  wait_http "127.0.0.1:$http/healthz"
}

doc='{"value":{"name":"Aria","level":42,"class":"mage","guild":"northwind","gold":18250,"hp":930,"mp":1200,"zone":"ember-coast"}}'
order() { if [ $(($1 % 2)) -eq 1 ]; then echo "a b"; else echo "b a"; fi; }
start a "$a_bin" 18580 17580
start b "$b_bin" 18590 17590
for port in 18580 18590; do
  curl -fs -X PUT -H 'content-type: application/json' "127.0.0.1:$port/api/players/k0" -d "$doc" >/dev/null
done
for round in $(seq "$rounds"); do
  echo "== round $round: cache hits" >&2
  for side in $(order "$round"); do
    port=$([ "$side" = a ] && echo 8580 || echo 8590)
    run_bench "http_$side" --target http --addr "127.0.0.1:1$port" --keys 1 --no-load -c 64
  done
  for depth in 1 16; do
    for side in $(order "$round"); do
      port=$([ "$side" = a ] && echo 7580 || echo 7590)
      run_bench "tcp_d${depth}_$side" --target tcp --addr "127.0.0.1:1$port" --keys 1 --no-load -c 50 -d "$depth"
    done
  done
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()
sleep 0.5

echo "== PostgreSQL: cold reads and PUTs" >&2
game="ab$(date +%s)"
write_cold_read_config "$work/pg.toml" "$game" "$pg_url"
start a "$a_bin" 18580 17580 --config "$work/pg.toml"
start b "$b_bin" 18590 17590 --config "$work/pg.toml"
"$b_bin" bench run --target http --addr 127.0.0.1:18590 --game "$game" --keys 50000 --seconds 1 -c 16 >/dev/null 2>&1 # load
psql "$pg_url" -qc CHECKPOINT
for round in $(seq "$rounds"); do
  echo "== round $round: PostgreSQL" >&2
  for side in $(order "$round"); do
    port=$([ "$side" = a ] && echo 18580 || echo 18590)
    run_bench "cold_$side" --target http --addr "127.0.0.1:$port" --game "$game" --keys 50000 --no-load -c 16
  done
  for side in $(order "$round"); do
    port=$([ "$side" = a ] && echo 18580 || echo 18590)
    run_bench "put_$side" --target http --addr "127.0.0.1:$port" --game "$game" --keys 50000 --workload mixed --write-ratio 1 --no-load -c 16
  done
done

echo
echo "| measurement (medians of $rounds rounds, ${secs} s each) | A | B | B / A |"
echo "|---|---|---|---|"
for row in "HTTP GET cached:http" "TCP GET cached, depth 1:tcp_d1" "TCP GET cached, depth 16:tcp_d16" "cold read (PostgreSQL):cold" "PUT (PostgreSQL):put"; do
  name=${row%%:*} key=${row##*:}
  echo "| $name | $(median "${rps[${key}_a]}") | $(median "${rps[${key}_b]}") | **$(ratio "${key}_a" "${key}_b")×** |"
done
