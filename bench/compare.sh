#!/usr/bin/env bash
# Side-by-side baselines in one run, with one load generator (`datamiddleware bench`) for every
# target, printing a table of ratios and writing it into docs/performance.md:
#   1. HTTP GET of a cached document vs nginx serving the same bytes as a static file vs a bare
#      hyper server returning them (same client, same connections);
#   2. TCP GET of a cached document vs redis-server GET of a value of the same size, at
#      pipeline depth 1 and 16;
#   3. cold reads through PostgreSQL (documents not in L1) vs `pgbench -S`;
#   4. PUT through PostgreSQL vs a pgbench script updating one row per transaction;
#   5. TCP GET answered by the Redis tier (L2; the collection kept out of L1) vs redis-server
#      GET of the same bytes, and PUT with L2 and the invalidation bus on vs off;
#   6. the cached GETs of 1 and 2 through an instance with auth on (an API key; a JWT) vs the
#      same build with auth off;
#   7. the cached GET of 1 over TLS (HTTPS) vs nginx over TLS with the same certificate (the
#      test certificate of crates/server/tests/fixtures), and TCP GET over TLS vs plain TCP;
#   8. the cached GETs of 1 and 2 with metrics on (the default) vs the same build with
#      `metrics.enabled = false`.
# Installs nginx, redis-server and pgbench (postgresql-contrib) when absent; starts and stops
# everything it needs.
#
#   bench/compare.sh [seconds-per-measurement] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
# shellcheck source=scripts/services.sh
source scripts/services.sh
need() { command -v "$1" >/dev/null 2>&1 || apt_install "$2"; }
need nginx nginx
need redis-server redis-server
need pgbench postgresql-contrib
ensure_postgres
pg_url=$DATAMIDDLEWARE_TEST_POSTGRES_URL

cargo build --release --quiet --bin datamiddleware --example static_hyper
bin=target/release/datamiddleware
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  redis-cli -p 16390 shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 100); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
# run_bench LABEL ARGS… → prints "LABEL rps p99_us", records the throughput.
declare -A rps
declare -A l2_batching
run_bench() {
  local label=$1; shift
  local json="$work/$label.json"
  "$bin" bench run --seconds "$secs" --json "$json" "$@" >/dev/null 2>"$work/bench.err" || { cat "$work/bench.err" >&2; return 1; }
  local line
  line=$(python3 -c "import json,sys; r=json.load(open('$json')); print(int(r['throughput_rps']), r['latency_us']['p99'], sum(r['errors'].values()), round(r['cache_hit_ratio']*100))")
  read -r t p99 errors hits <<<"$line"
  printf '  %-22s %10s req/s  p99 %6s µs  errors %s  L1 hits %s%%\n' "$label" "$t" "$p99" "$errors" "$hits" >&2
  rps[$label]+="$t "
}
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="$(median "${rps[$1]}")" -v b="$(median "${rps[$2]}")" 'BEGIN{printf "%.2f", a/b}'; }

echo "== starting servers" >&2
fixtures=$PWD/crates/server/tests/fixtures
ca=$fixtures/test_tls_ca.pem
(cd "$work" && DMW_LOG__FILTER=warn DMW_HTTP__TLS_LISTEN=127.0.0.1:18487 DMW_TCP__TLS_LISTEN=127.0.0.1:17487 \
  DMW_TLS__CERT_FILE="$fixtures/test_tls_cert_1.pem" DMW_TLS__KEY_FILE="$fixtures/test_tls_key_1.pem" \
  exec "$OLDPWD/$bin" --listen 127.0.0.1:18480 --tcp-listen 127.0.0.1:17480) &
pids+=($!)
wait_http 127.0.0.1:18480/healthz
doc='{"value":{"name":"Aria","level":42,"class":"mage","guild":"northwind","gold":18250,"hp":930,"mp":1200,"zone":"ember-coast"}}'
curl -fs -X PUT -H 'content-type: application/json' 127.0.0.1:18480/api/players/k0 -d "$doc" >/dev/null
curl -fs 127.0.0.1:18480/api/players/k0 -o "$work/doc.json"
size=$(wc -c < "$work/doc.json")
mkdir -p "$work/www" && cp "$work/doc.json" "$work/www/doc.json"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; default_type application/json; keepalive_requests 10000000;
       server { listen 127.0.0.1:18481; root $work/www; }
       server { listen 127.0.0.1:18488 ssl; root $work/www;
                ssl_certificate $fixtures/test_tls_cert_1.pem;
                ssl_certificate_key $fixtures/test_tls_key_1.pem; } }
CONF
nginx -c "$work/nginx.conf"
target/release/examples/static_hyper "$work/doc.json" 127.0.0.1:18482 &
pids+=($!)
redis-server --port 16390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" --logfile "$work/redis.log"
wait_http 127.0.0.1:18481/doc.json && wait_http 127.0.0.1:18482/
curl -fs --cacert "$ca" https://127.0.0.1:18488/doc.json >/dev/null && curl -fs --cacert "$ca" https://127.0.0.1:18487/healthz >/dev/null
# The same build with metrics off (the cost of recording them on the hit path).
(cd "$work" && DMW_LOG__FILTER=warn DMW_METRICS__ENABLED=false exec "$OLDPWD/$bin" --listen 127.0.0.1:18489 --tcp-listen 127.0.0.1:17489) &
pids+=($!)
wait_http 127.0.0.1:18489/healthz
curl -fs -X PUT -H 'content-type: application/json' 127.0.0.1:18489/api/players/k0 -d "$doc" >/dev/null
# The same build with auth on: an API key, and an HS256 token key for a server-role JWT.
mkdir -p "$work/auth"
keygen=$("$bin" key new --name bench --role server --games default)
api_key=$(awk '/^# dmw_/{print $2}' <<<"$keygen")
jwt_secret="compare-sh-only-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat > "$work/auth/auth.toml" <<CONF
[auth]
enabled = true
$(grep -v '^#' <<<"$keygen")
[[auth.tokens.keys]]
algorithm = "HS256"
secret = "$jwt_secret"
CONF
(cd "$work/auth" && DMW_LOG__FILTER=warn exec "$OLDPWD/$bin" --config auth.toml --listen 127.0.0.1:18485 --tcp-listen 127.0.0.1:17485) &
pids+=($!)
wait_http 127.0.0.1:18485/healthz
curl -fs -X PUT -H "x-api-key: $api_key" -H 'content-type: application/json' 127.0.0.1:18485/api/players/k0 -d "$doc" >/dev/null
# A server-role token (minted ones are player tokens, which the owner rule would refuse here).
jwt=$(python3 - "$jwt_secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "game": "default", "role": "server", "iss": "datamiddleware",
                       "aud": "datamiddleware", "exp": int(time.time()) + 86400}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
)
# A second instance whose players are kept out of L1 (l1_ttl = 0): every GET is answered by L2.
mkdir -p "$work/l2"
cat > "$work/l2/l2.toml" <<CONF
[cache]
l2_url = "redis://127.0.0.1:16390/0"
l2_prefix = "cmp"
[games.default]
store = "sqlite://$work/l2/default.db"
[games.default.collections.players]
l1_ttl = "0s"
CONF
(cd "$work/l2" && DMW_LOG__FILTER=warn exec "$OLDPWD/$bin" --config l2.toml --listen 127.0.0.1:18483 --tcp-listen 127.0.0.1:17483) &
pids+=($!)
wait_http 127.0.0.1:18483/healthz
# 1,000 documents of about the same size as the others' value, so concurrent requests rarely
# share one Redis read (single flight would flatter the row).
"$bin" bench run --target tcp --addr 127.0.0.1:17483 --keys 1000 --value-size $((size - 100)) --seconds 1 -c 4 >/dev/null

for round in $(seq "$rounds"); do
  echo "== round $round: HTTP GET of a cached ${size}-byte document, 64 connections" >&2
  run_bench http_ours --target http --addr 127.0.0.1:18480 --keys 1 --no-load -c 64
  run_bench http_nginx --target url --url http://127.0.0.1:18481/doc.json -c 64
  run_bench http_hyper --target url --url http://127.0.0.1:18482/ -c 64
  run_bench http_auth_key --target http --addr 127.0.0.1:18485 --keys 1 --no-load -c 64 --api-key "$api_key"
  run_bench http_auth_jwt --target http --addr 127.0.0.1:18485 --keys 1 --no-load -c 64 --token "$jwt"
  run_bench http_nometrics --target http --addr 127.0.0.1:18489 --keys 1 --no-load -c 64
  run_bench https_ours --target http --addr 127.0.0.1:18487 --tls-ca "$ca" --keys 1 --no-load -c 64
  run_bench https_nginx --target url --url https://127.0.0.1:18488/doc.json --tls-ca "$ca" -c 64
  echo "== round $round: TCP GET vs redis GET, ${size}-byte values, 50 connections" >&2
  for depth in 1 16; do
    run_bench "tcp_ours_d$depth" --target tcp --addr 127.0.0.1:17480 --keys 1 --no-load -c 50 -d $depth
    run_bench "redis_d$depth" --target redis --addr 127.0.0.1:16390 --keys 1 --value-size "$size" -c 50 -d $depth
    run_bench "tcp_auth_d$depth" --target tcp --addr 127.0.0.1:17485 --keys 1 --no-load -c 50 -d $depth --api-key "$api_key"
    run_bench "tcp_nometrics_d$depth" --target tcp --addr 127.0.0.1:17489 --keys 1 --no-load -c 50 -d $depth
    run_bench "tcp_tls_d$depth" --target tcp --addr 127.0.0.1:17487 --tls-ca "$ca" --keys 1 --no-load -c 50 -d $depth
    # How the instance's L2 reads reach Redis: lookups of many requests share one MGET
    # (cache/coalesce.rs), so Redis runs far fewer commands than requests arrive.
    mgets() { redis-cli -p 16390 info commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_mget:/{print $2}'; }
    m0=$(mgets); m0=${m0:-0}
    run_bench "tcp_l2_d$depth" --target tcp --addr 127.0.0.1:17483 --keys 1000 --no-load -c 50 -d $depth
    m1=$(mgets)
    served=$(python3 -c "import json; print(int(json.load(open('$work/tcp_l2_d$depth.json'))['throughput_rps'] * $secs))")
    l2_batching[$depth]="$(( m1 - m0 )) MGETs for about $served reads ($(awk -v r="$served" -v m=$(( m1 - m0 )) 'BEGIN{printf "%.1f", r/(m>0?m:1)}') keys per MGET)"
    printf '  %-22s %s\n' "L2 batching d$depth" "${l2_batching[$depth]}" >&2
  done
done
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== PostgreSQL: cold reads and writes, 16 connections" >&2
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
game="bench$(date +%s)"
write_cold_read_config "$work/pg.toml" "$game" "$pg_url"
(cd "$work" && DMW_LOG__FILTER=warn exec "$OLDPWD/$bin" --config pg.toml --listen 127.0.0.1:18480 --tcp-listen 127.0.0.1:17480) &
pids[0]=$!
wait_http 127.0.0.1:18480/healthz
# The same game through an instance with L2 and the invalidation bus (the PUT row's pair).
sed 's|^\[cache\]$|[cache]\nl2_url = "redis://127.0.0.1:16390/0"\nl2_prefix = "cmppg"|' "$work/pg.toml" > "$work/pg_l2.toml"
(cd "$work" && DMW_LOG__FILTER=warn exec "$OLDPWD/$bin" --config pg_l2.toml --listen 127.0.0.1:18484 --tcp-listen 127.0.0.1:17484) &
pids+=($!)
wait_http 127.0.0.1:18484/healthz
# pgbench's tables first, then a checkpoint, so neither side pays for the other's bulk load.
pgbench -q -i -s 10 "$pg_url" >/dev/null 2>&1
psql "$pg_url" -qc CHECKPOINT
pg_tps() { pgbench "$@" -c 16 -j 2 -M prepared -T "$secs" "$pg_url" 2>/dev/null | awk '/^tps/{print int($3)}'; }
cat > "$work/update.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SQL
"$bin" bench run --target http --addr 127.0.0.1:18480 --game "$game" --keys 50000 --seconds 1 -c 16 >/dev/null 2>&1  # load
# Planner statistics first: without them PostgreSQL answers a key lookup through the owner
# index, a range scan over the collection (issue 12), and the PUT rows measure that collapse
# (0.02x) rather than the write path, which made the L2 on/off pair meaningless (15x apart).
psql "$pg_url" -qc "ANALYZE dmw_documents"
psql "$pg_url" -qc CHECKPOINT
# Every round, like the rows above: one write-heavy measurement can hit a stall of the
# machine's disk (a PUT run once measured 109 req/s against ~2,400 just before and after).
for round in $(seq "$rounds"); do
  echo "== round $round: PostgreSQL" >&2
  run_bench pg_cold_ours --target http --addr 127.0.0.1:18480 --game "$game" --keys 50000 --no-load -c 16
  t=$(pg_tps -S); rps[pg_select]+="$t "; printf '  %-22s %10s tps\n' pgbench_select "$t" >&2
  # The pair alternates its order: the first of two write runs measured consistently faster.
  put=(--target http --game "$game" --keys 50000 --workload mixed --write-ratio 1 --no-load -c 16)
  if (( round % 2 )); then
    run_bench pg_put_ours --addr 127.0.0.1:18480 "${put[@]}"
    run_bench pg_put_l2 --addr 127.0.0.1:18484 "${put[@]}"
  else
    run_bench pg_put_l2 --addr 127.0.0.1:18484 "${put[@]}"
    run_bench pg_put_ours --addr 127.0.0.1:18480 "${put[@]}"
  fi
  t=$(pg_tps -f "$work/update.sql"); rps[pg_update]+="$t "; printf '  %-22s %10s tps\n' pgbench_update "$t" >&2
done

table=$(cat <<TABLE
| comparison (medians of $rounds rounds, ${secs} s each) | ours | baseline | ratio | target |
|---|---|---|---|---|
| HTTP GET cached vs nginx static file | $(median "${rps[http_ours]}") | $(median "${rps[http_nginx]}") | **$(ratio http_ours http_nginx)×** | ≥ 1.0× |
| HTTP GET cached vs bare hyper | $(median "${rps[http_ours]}") | $(median "${rps[http_hyper]}") | **$(ratio http_ours http_hyper)×** | ≥ 0.8× |
| TCP GET cached vs redis GET, depth 1 | $(median "${rps[tcp_ours_d1]}") | $(median "${rps[redis_d1]}") | **$(ratio tcp_ours_d1 redis_d1)×** | ≥ 1.0× |
| TCP GET cached vs redis GET, depth 16 | $(median "${rps[tcp_ours_d16]}") | $(median "${rps[redis_d16]}") | **$(ratio tcp_ours_d16 redis_d16)×** | ≥ 1.0× |
| cold read (PostgreSQL) vs pgbench -S | $(median "${rps[pg_cold_ours]}") | $(median "${rps[pg_select]}") | **$(ratio pg_cold_ours pg_select)×** | ≥ 0.5× |
| PUT (PostgreSQL, after ANALYZE) vs pgbench update | $(median "${rps[pg_put_ours]}") | $(median "${rps[pg_update]}") | **$(ratio pg_put_ours pg_update)×** | — |
| TCP GET from L2 (Redis) vs redis GET, depth 1 | $(median "${rps[tcp_l2_d1]}") | $(median "${rps[redis_d1]}") | **$(ratio tcp_l2_d1 redis_d1)×** | ≥ 0.6× |
| TCP GET from L2 (Redis) vs redis GET, depth 16 | $(median "${rps[tcp_l2_d16]}") | $(median "${rps[redis_d16]}") | **$(ratio tcp_l2_d16 redis_d16)×** | ≥ 0.6× |
| PUT (PostgreSQL) with L2 and bus vs without | $(median "${rps[pg_put_l2]}") | $(median "${rps[pg_put_ours]}") | **$(ratio pg_put_l2 pg_put_ours)×** | ≥ 0.9× |
| HTTP GET cached, auth on (API key) vs auth off | $(median "${rps[http_auth_key]}") | $(median "${rps[http_ours]}") | **$(ratio http_auth_key http_ours)×** | ≥ 0.9× |
| HTTP GET cached, auth on (JWT bearer) vs auth off | $(median "${rps[http_auth_jwt]}") | $(median "${rps[http_ours]}") | **$(ratio http_auth_jwt http_ours)×** | ≥ 0.9× |
| TCP GET cached, auth on vs off, depth 1 | $(median "${rps[tcp_auth_d1]}") | $(median "${rps[tcp_ours_d1]}") | **$(ratio tcp_auth_d1 tcp_ours_d1)×** | within noise |
| TCP GET cached, auth on vs off, depth 16 | $(median "${rps[tcp_auth_d16]}") | $(median "${rps[tcp_ours_d16]}") | **$(ratio tcp_auth_d16 tcp_ours_d16)×** | within noise |
| HTTPS GET cached vs nginx over TLS (same certificate) | $(median "${rps[https_ours]}") | $(median "${rps[https_nginx]}") | **$(ratio https_ours https_nginx)×** | ≥ 1.0× |
| TCP GET cached over TLS vs plain TCP, depth 1 | $(median "${rps[tcp_tls_d1]}") | $(median "${rps[tcp_ours_d1]}") | **$(ratio tcp_tls_d1 tcp_ours_d1)×** | — |
| HTTP GET cached, metrics on vs off | $(median "${rps[http_ours]}") | $(median "${rps[http_nometrics]}") | **$(ratio http_ours http_nometrics)×** | ≥ 0.95× |
| TCP GET cached, metrics on vs off, depth 16 | $(median "${rps[tcp_ours_d16]}") | $(median "${rps[tcp_nometrics_d16]}") | **$(ratio tcp_ours_d16 tcp_nometrics_d16)×** | ≥ 0.95× |
| TCP GET cached over TLS vs plain TCP, depth 16 | $(median "${rps[tcp_tls_d16]}") | $(median "${rps[tcp_ours_d16]}") | **$(ratio tcp_tls_d16 tcp_ours_d16)×** | — |
TABLE
)
echo
echo "$table"
{
  echo "<!-- compare:start (written by bench/compare.sh) -->"
  echo "Run of $(date -u +%Y-%m-%d) on $(nproc) cores, $(free -g | awk '/^Mem/{print $2}') GiB, Linux $(uname -r); command \`bench/compare.sh $secs $rounds\`."
  echo "All targets driven by \`datamiddleware bench run\` (closed loop) except the pgbench rows."
  echo
  echo "$table"
  echo
  echo "L2 rows, Redis commands per request (last round): depth 1: ${l2_batching[1]}; depth 16: ${l2_batching[16]}."
  echo "<!-- compare:end -->"
} > "$work/section.md"
python3 - "$work/section.md" docs/performance.md <<'PY'
import re, sys
section = open(sys.argv[1]).read().strip()
doc = open(sys.argv[2]).read()
pattern = re.compile(r"<!-- compare:start.*?<!-- compare:end -->", re.S)
doc = pattern.sub(lambda _: section, doc) if pattern.search(doc) else doc.rstrip() + "\n\n## Side-by-side baselines (bench/compare.sh)\n\n" + section + "\n"
open(sys.argv[2], "w").write(doc)
PY
echo "written to docs/performance.md" >&2
