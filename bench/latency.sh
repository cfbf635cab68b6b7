#!/usr/bin/env bash
# Benchmark (not a test): latency under load, open loop. For a target (http or tcp, cache hits),
# measures the closed-loop peak, then runs an open loop at 50 % of it (latency from planned send
# times, p50/p99/p99.9), then a stepped ramp 20 % → 40 % → 60 % → 80 % of the peak, reporting
# errors per step. Writes JSON reports and SVG plots into the output directory.
#
#   bench/latency.sh [http|tcp] [seconds] [out-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-http}
secs=${2:-10}
out=${3:-target/bench-latency}
mkdir -p "$out"
cargo build --release --quiet --bin datamiddleware
bin=$PWD/target/release/datamiddleware
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && DMW_LOG__FILTER=warn exec "$bin" --listen 127.0.0.1:18680 --tcp-listen 127.0.0.1:17680) &
server=$!
for _ in $(seq 100); do curl -fs 127.0.0.1:18680/healthz >/dev/null && break; sleep 0.1; done
addr=127.0.0.1:18680; depth=1
if [ "$target" = tcp ]; then addr=127.0.0.1:17680; depth=16; fi
common=(--target "$target" --addr "$addr" --keys 1000 -c 64)
"$bin" bench run "${common[@]}" -d "$depth" --seconds "$secs" --json "$out/peak.json" >/dev/null 2>&1
peak=$(python3 -c "import json; print(int(json.load(open('$out/peak.json'))['throughput_rps']))")
half=$((peak / 2))
echo "closed-loop peak ($target, 64 connections, depth $depth): $peak req/s; open loop at $half req/s"
"$bin" bench run "${common[@]}" -d 64 --no-load --rate "$half" --seconds "$secs" \
  --json "$out/half.json" --svg "$out/half.svg" 2>/dev/null | sed 's/^/  /'
ramp=$(python3 -c "print(','.join(str(int($peak * f)) for f in (0.2, 0.4, 0.6, 0.8)))")
echo "ramp: $ramp req/s, $secs s each"
"$bin" bench run "${common[@]}" -d 64 --no-load --ramp "$ramp" --step-seconds "$secs" \
  --json "$out/ramp.json" --svg "$out/ramp.svg" 2>/dev/null | sed 's/^/  /'
python3 - "$out/ramp.json" "$secs" <<'PY'
import json, sys
report = json.load(open(sys.argv[1])); step = int(sys.argv[2])
seconds = report["per_second"]
for i in range(0, len(seconds), step):
    chunk = seconds[i:i + step]
    print(f"  step {i // step + 1}: {sum(s['rps'] for s in chunk) // max(1, len(chunk))} req/s, "
          f"errors {sum(s['errors'] for s in chunk)}, worst p99 {max(s['p99_us'] for s in chunk)} µs")
PY
