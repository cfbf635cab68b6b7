#!/usr/bin/env bash
# Benchmark (not a test): HTTP GET of a cached document from datamiddleware, side by side with
# nginx serving the same bytes as a static file and a bare hyper server returning them, all
# measured with the same wrk settings in one run, alternating targets (A B C A B C …).
#
#   bench/http_get.sh [rounds] [seconds] [connections]
#
# Installs nginx and wrk from Debian packages when absent. Prints one line per run and a
# summary with the ratios to nginx and to bare hyper (median of the rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-6}
conns=${3:-64}
ours_port=18180 nginx_port=18181 hyper_port=18182

need() { command -v "$1" >/dev/null 2>&1 || { echo "installing $2" >&2; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx

cargo build --release --quiet --bin datamiddleware --example static_hyper
work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# datamiddleware with the default game on a fresh SQLite file.
(cd "$work" && DMW_LOG__FILTER=warn exec "$OLDPWD/target/release/datamiddleware" --listen "127.0.0.1:$ours_port") &
pids+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$ours_port/healthz" >/dev/null && break; sleep 0.1; done
doc='{"value":{"name":"Aria","level":42,"class":"mage","guild":"northwind","gold":18250,"hp":930,"mp":1200,"zone":"ember-coast"}}'
curl -fs -X PUT -H 'content-type: application/json' "127.0.0.1:$ours_port/api/players/42" -d "$doc" >/dev/null
curl -fs "127.0.0.1:$ours_port/api/players/42" -o "$work/doc.json"
cache=$(curl -fsI "127.0.0.1:$ours_port/api/players/42" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
echo "document: $(wc -c < "$work/doc.json") bytes, served from ${cache}" >&2

# nginx: same bytes as a static file, 2 workers (one per core), no access log.
mkdir -p "$work/www"
cp "$work/doc.json" "$work/www/doc.json"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$nginx_port; root $work/www; }
}
CONF
nginx -c "$work/nginx.conf"

target/release/examples/static_hyper "$work/doc.json" "127.0.0.1:$hyper_port" &
pids+=($!)
sleep 0.5

declare -A urls=(
  [datamiddleware]="http://127.0.0.1:$ours_port/api/players/42"
  [nginx]="http://127.0.0.1:$nginx_port/doc.json"
  [hyper]="http://127.0.0.1:$hyper_port/"
)
for name in "${!urls[@]}"; do
  body=$(curl -fs "${urls[$name]}")
  [ "$body" = "$(cat "$work/doc.json")" ] || { echo "$name does not serve the same bytes" >&2; exit 1; }
done

echo "wrk -t2 -c$conns -d${seconds}s, $rounds rounds, targets alternating" >&2
declare -A results
for round in $(seq "$rounds"); do
  for name in datamiddleware nginx hyper; do
    out=$(wrk -t2 -c"$conns" -d"${seconds}s" --latency "${urls[$name]}")
    rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/{print}' <<<"$out")
    printf 'round %d %-15s %10.0f req/s  p99 %s %s\n' "$round" "$name" "$rps" "$p99" "$errors"
    results[$name]+="$rps "
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ours=$(median "${results[datamiddleware]}")
nginx=$(median "${results[nginx]}")
hyper=$(median "${results[hyper]}")
echo
echo "median req/s: datamiddleware $ours, nginx $nginx, bare hyper $hyper"
awk -v o="$ours" -v n="$nginx" -v h="$hyper" 'BEGIN{printf "datamiddleware / nginx = %.2f   datamiddleware / bare hyper = %.2f\n", o/n, o/h}'
