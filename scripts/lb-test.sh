#!/usr/bin/env bash
# Test of the shipped load-balancer configurations, deploy/nginx/datamiddleware.conf and
# deploy/haproxy/haproxy.cfg, used as they are (no copies): three server instances on one
# PostgreSQL database (and Redis for L2 and the bus, unless LB_TEST_REDIS=0), on the loopback
# ports those files name (HTTP 18181-18183, TCP 18191-18193); each balancer in turn on 18180
# (HTTP) and 18190 (TCP). For each balancer:
#   1. the TCP protocol through the stream proxy: `datamiddleware bench` (mixed GETs and PUTs)
#      through 18190 -- no errors, connections spread over at least two instances;
#   2. an HTTP load through 18180 from concurrent keep-alive clients, every request's outcome
#      recorded: GETs and PUTs of documents, and POST _incr on counters (10 %), during which
#      a. instance 1 is killed with SIGKILL: only requests overlapping the kill (in flight, or
#         started within a second after it) may fail, at most one per client;
#      b. instance 1 is started again and must get traffic again;
#      c. instance 2 gets SIGTERM (a drain, http.drain_delay = 2s): no request may fail from
#         a second after the kill to the end, the drain included; the instance exits with 0;
#      d. at the end the counters in the database must show every acknowledged increment and
#         none applied twice (no balancer may replay a POST; only failed ones may or may not
#         have landed), and with Redis the same sum must be read back through the balancer.
# Prints PASS or FAIL with counts; exit status 1 on failure; about a minute. Needs root (or
# sudo) only to install nginx, libnginx-mod-stream, haproxy (and PostgreSQL, Redis) when
# absent.
#
#   scripts/lb-test.sh                      # server binary: target/debug/datamiddleware
#   DATAMIDDLEWARE_BIN=target/release/datamiddleware scripts/lb-test.sh
#   LB_TEST_ONLY=haproxy scripts/lb-test.sh # one balancer (nginx | haproxy)
#   LB_TEST_POST_RATIO=0 …                  # GETs and PUTs only
#   LB_TEST_REDIS=0 …                       # no Redis (L2 and bus off)
#   LB_TEST_KEEP=1 …                        # keep the work directory (logs) also on success
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${DATAMIDDLEWARE_BIN:-target/debug/datamiddleware}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
# The server reads every DMW_* variable as configuration and refuses unknown ones: the
# instances get their whole configuration from the files below, none from the environment.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^DMW_' || true)
if [ ! -x "$bin" ]; then
  echo "lb-test: no server binary at $bin (cargo build --bin datamiddleware, or set DATAMIDDLEWARE_BIN)" >&2
  exit 1
fi
nginx_conf=$root/deploy/nginx/datamiddleware.conf
haproxy_cfg=$root/deploy/haproxy/haproxy.cfg
balancers=${LB_TEST_ONLY:-nginx haproxy}

# Ports: must match the shipped configurations.
http_port() { echo $((18180 + $1)); }   # instance 1..3; 0: the balancer
tcp_port() { echo $((18190 + $1)); }
haproxy_stats=http://127.0.0.1:18189/

workers=12          # concurrent HTTP clients
drain_delay=2s      # http.drain_delay of every instance
shutdown_grace=10s  # http.shutdown_grace

# shellcheck source=scripts/services.sh
source scripts/services.sh   # ensure_postgres, ensure_redis, as_root
log() { printf '[lb-test] %s\n' "$*" >&2; }

# --- balancer packages ---------------------------------------------------------------------
# apt-get install first; only when that fails (an old or empty package list), update once and
# try again.
pkg_install() {
  log "installing $*"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
    log "apt-get update"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
need=()
if [[ " $balancers " == *" nginx "* ]]; then
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  # The shipped config loads Debian's dynamic stream module from this path.
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
fi
if [[ " $balancers " == *" haproxy "* ]]; then
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
fi
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then pkg_install "${need[@]}"; fi

ensure_postgres
pg_url=$DATAMIDDLEWARE_TEST_POSTGRES_URL
l2=""
if [ "${LB_TEST_REDIS:-1}" != 0 ]; then
  ensure_redis
  l2="l2_url = \"$DATAMIDDLEWARE_TEST_REDIS_URL\""
fi

# --- work directory, processes, cleanup -----------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/lb-test.XXXXXX")
# One game and Redis prefix per run: reruns never see each other's documents.
run_id="$(date +%s)_$$"
game="lbtest_$run_id"
declare -A pid=()      # instance number -> pid
balancer_pid=""
load_pid=""
result=1
summary_printed=""
cleanup() {
  local p
  for p in "$load_pid" "$balancer_pid" "${pid[@]}"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
  done
  for p in "$load_pid" "$balancer_pid" "${pid[@]}"; do
    if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
  done
  if [ "$result" -eq 0 ] && [ -z "${LB_TEST_KEEP:-}" ]; then
    rm -rf "$work"
    # This run's documents and cache entries (each run has its own game and prefix).
    psql "$pg_url" -qAtc "DELETE FROM dmw_documents WHERE game = '$game'" >/dev/null 2>&1 || true
    if [ -n "$l2" ]; then
      rcli -p 6379 --scan --pattern "lb$run_id:*" 2>/dev/null | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true
    fi
  else
    log "logs kept in $work"
  fi
  if [ "$result" -ne 0 ] && [ -z "$summary_printed" ]; then echo "FAIL (aborted; see the messages above)"; fi
}
trap cleanup EXIT

for p in 0 1 2 3; do
  for port in "$(http_port $p)" "$(tcp_port $p)"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "port $port is already in use: stop what listens there"; exit 1
    fi
  done
done

for i in 1 2 3; do
  cat > "$work/s$i.toml" <<CONF
[http]
listen = "127.0.0.1:$(http_port "$i")"
drain_delay = "$drain_delay"
shutdown_grace = "$shutdown_grace"
[tcp]
listen = "127.0.0.1:$(tcp_port "$i")"
[cache]
$l2
l2_prefix = "lb$run_id"
[log]
filter = "warn"
[games.$game]
store = "$pg_url"
[games.$game.collections.players]
CONF
done
"$bin" --config "$work/s1.toml" config print >/dev/null

start_instance() { # start_instance N
  "$bin" --config "$work/s$1.toml" >>"$work/s$1.log" 2>&1 &
  pid[$1]=$!
}
wait_ready() { # wait_ready N: /readyz answers 200 (30 s at most)
  local _
  for _ in $(seq 300); do
    if curl -fs -m 1 -o /dev/null "http://127.0.0.1:$(http_port "$1")/readyz"; then return 0; fi
    if ! kill -0 "${pid[$1]}" 2>/dev/null; then
      log "instance $1 exited at start:"; tail -n 20 "$work/s$1.log" >&2; return 1
    fi
    sleep 0.1
  done
  log "instance $1 not ready after 30 s"; return 1
}
wait_exit() { # wait_exit PID SECONDS: wait for a child; its exit status in $exit_status
  local p=$1 _
  for _ in $(seq $(($2 * 10))); do
    if ! kill -0 "$p" 2>/dev/null; then
      exit_status=0; wait "$p" || exit_status=$?; return 0
    fi
    sleep 0.1
  done
  return 1
}
# Requests to the document API an instance has answered (its /metrics).
api_requests() { # api_requests N
  { curl -fs -m 2 "http://127.0.0.1:$(http_port "$1")/metrics" 2>/dev/null || true; } \
    | awk '/^http_requests_total\{.*endpoint="\/api\/v1\/\{game\}\/\{collection\}\/\{id\}"/ { n += $NF }
           END { printf "%d\n", n }'
}
tcp_accepted() { # tcp_accepted N
  { curl -fs -m 2 "http://127.0.0.1:$(http_port "$1")/metrics" 2>/dev/null || true; } \
    | awk '/^tcp_connections_accepted_total / { n += $NF } END { printf "%d\n", n }'
}

for i in 1 2 3; do start_instance "$i"; done
for i in 1 2 3; do wait_ready "$i"; done
log "3 instances ready (game $game, PostgreSQL${l2:+ and Redis}), binary $bin"

# --- the HTTP load client and the verdict (Python, standard library) -----------------------
cat > "$work/lbload.py" <<'PY'
"""HTTP load through the balancer, every request's outcome recorded; and the verdict.

Requests (each client on its own keep-alive connection, as a web back end would):
  GET  /api/v1/{game}/players/k{0..299}          ok: 200, 404 (not written yet)
  PUT  /api/v1/{game}/players/k{0..299}          ok: 200, 201
  POST /api/v1/{game}/players/{run}-c{0..49}/_incr  (+1 on counters made at the start) ok: 200
POSTs are not idempotent, so no balancer may replay them: at the end the counters' sum in the
database must lie between the increments acknowledged and those plus the ones that failed
(whose outcome a client cannot know). The sum read back through the balancer must equal it
when the instances share Redis (coherent caches); without Redis each instance's L1 may keep
an older counter (up to l1_ttl), so that read is only reported."""
import http.client, json, os, random, sys, threading, time

POST_RATIO = float(os.environ.get("LB_TEST_POST_RATIO", "0.1"))
PUT_RATIO = 0.3
COUNTERS = 50

def request(conn, method, path, value=None):
    body = None if value is None else json.dumps(value).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp, resp.read()

def load(addr, game, run, workers, keys, stop_file, out, status_file):
    host, port = addr.rsplit(":", 1)
    base = "/api/v1/%s/players/" % game
    counter = lambda i: "%s-c%d" % (run, i)
    setup = http.client.HTTPConnection(host, int(port), timeout=15)
    for i in range(COUNTERS):
        resp, _ = request(setup, "PUT", base + counter(i), {"value": {"c": 0}})
        assert resp.status in (200, 201), "creating counter %d: %d" % (i, resp.status)
    stop = threading.Event()
    records = [[] for _ in range(workers)]

    def worker(idx):
        rnd = random.Random("%s-%d" % (run, idx))
        conn = None
        recs = records[idx]
        while not stop.is_set():
            x = rnd.random()
            if x < PUT_RATIO:
                method, key = "PUT", "k%d" % rnd.randrange(keys)
                path, value = base + key, {"value": {"n": rnd.randrange(1 << 30), "by": idx}}
                expect = (200, 201)
            elif x < PUT_RATIO + POST_RATIO:
                method, key = "POST", counter(rnd.randrange(COUNTERS))
                path, value = base + key + "/_incr", {"path": "/c", "by": 1}
                expect = (200,)
            else:
                method, key = "GET", "k%d" % rnd.randrange(keys)
                path, value, expect = base + key, None, (200, 404)
            t0 = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=15)
                resp, data = request(conn, method, path, value)
                if resp.will_close:
                    conn.close()
                    conn = None
                outcome = str(resp.status)
                ok = resp.status in expect
                if ok and resp.status != 404 and json.loads(data).get("id") != key:
                    ok, outcome = False, "wrong document"
            except Exception as e:  # connection reset or closed, timeout: a failed request
                outcome = "%s: %s" % (type(e).__name__, str(e)[:100])
                ok = False
                if conn is not None:
                    conn.close()
                    conn = None
            recs.append((t0, time.time(), method, ok, outcome))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    deadline = time.time() + 110  # never outlive the test
    while not os.path.exists(stop_file) and time.time() < deadline:
        total = sum(len(r) for r in records)
        with open(status_file + ".tmp", "w") as f:
            f.write("%d\n" % total)
        os.replace(status_file + ".tmp", status_file)
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(20)
    counter_sum = 0
    setup.close()  # idle for the whole run: the balancer has closed it (keep-alive timeout)
    setup = http.client.HTTPConnection(host, int(port), timeout=15)
    for i in range(COUNTERS):
        resp, data = request(setup, "GET", base + counter(i))
        assert resp.status == 200, "reading counter %d: %d" % (i, resp.status)
        counter_sum += json.loads(data)["value"]["c"]
    with open(out, "w") as f:
        f.write(json.dumps({"counter_sum": counter_sum}) + "\n")
        for r in records:
            for x in r:
                f.write(json.dumps(x) + "\n")

def check(name, records_file, events_file, workers, db_sum, coherent):
    lines = open(records_file).read().splitlines()
    read_sum = json.loads(lines[0])["counter_sum"]
    counter_sum = db_sum
    recs = [json.loads(line) for line in lines[1:]]
    ev = {}
    for line in open(events_file):
        k, t = line.split()
        ev[k] = float(t)
    kill, term, exited = ev["kill"], ev["term"], ev["exited"]
    problems = []

    # Failures are allowed only for requests overlapping the kill: in flight at that moment,
    # or started within a second after it (the balancer learning that the instance is gone).
    def overlaps_kill(r):
        return r[1] >= kill and r[0] <= kill + 1.0
    print("%s: %d HTTP requests by %d clients in %.1f s; by start time:" % (
        name, len(recs), workers, max(r[1] for r in recs) - min(r[0] for r in recs)))
    for label, a, b in [  # by request start time
        ("before the kill", 0, kill),
        ("kill .. kill+1s", kill, kill + 1.0),
        ("kill+1s .. SIGTERM (restart)", kill + 1.0, term),
        ("SIGTERM .. exit (drain)", term, exited),
        ("after the exit", exited, float("inf")),
    ]:
        ph = [r for r in recs if a <= r[0] < b]
        print("  %-30s %6d requests %4d failed" % (label, len(ph), sum(1 for r in ph if not r[3])))
    outcomes = {}
    for r in recs:
        k = "%s %s" % (r[2], r[4] if r[3] else "failed")
        outcomes[k] = outcomes.get(k, 0) + 1
    print("  outcomes: " + ", ".join("%s x%d" % kv for kv in sorted(outcomes.items())))
    failed = [r for r in recs if not r[3]]
    at_kill = [r for r in failed if overlaps_kill(r)]
    in_flight = [r for r in at_kill if r[0] <= kill]
    other = [r for r in failed if not overlaps_kill(r)]
    during_drain = [r for r in other if r[1] >= term]
    print("  failed around the kill: %d (%d in flight at the kill), allowed <= %d" % (
        len(at_kill), len(in_flight), workers))
    print("  failed elsewhere: %d (during or after the drain: %d), allowed 0" % (
        len(other), len(during_drain)))
    for r in (at_kill + other)[:10]:
        print("    %s started %+.3fs from the kill, %+.3fs from SIGTERM, %.3fs long: %s" % (
            r[2], r[0] - kill, r[0] - term, r[1] - r[0], r[4]))
    incr_ok = sum(1 for r in recs if r[2] == "POST" and r[3])
    incr_failed = sum(1 for r in recs if r[2] == "POST" and not r[3])
    print("  counters: sum %d in the database, increments acknowledged %d, failed %d "
          "(sum must be within %d..%d); read through the balancer: %d" % (
          counter_sum, incr_ok, incr_failed, incr_ok, incr_ok + incr_failed, read_sum))
    if len(at_kill) > workers:
        problems.append("%d failures around the kill (more than %d clients)" % (len(at_kill), workers))
    if other:
        problems.append("%d failures outside the kill window (%d during/after the drain)" % (
            len(other), len(during_drain)))
    if counter_sum < incr_ok:
        problems.append("acknowledged increments lost (sum %d < %d)" % (counter_sum, incr_ok))
    if counter_sum > incr_ok + incr_failed:
        problems.append("increments applied twice (sum %d > %d): a POST was replayed" % (
            counter_sum, incr_ok + incr_failed))
    if not coherent and read_sum != counter_sum:
        print("  note: without Redis the instances' caches are not coherent: stale counters read")
    if coherent and read_sum != counter_sum:
        problems.append("counters read through the balancer sum to %d, the database holds %d" % (
            read_sum, counter_sum))
    if sum(1 for r in recs if kill + 1.0 <= r[0] < term) < 100:
        problems.append("too few requests between the kill and the drain")
    if sum(1 for r in recs if term <= r[0] < exited) < 50:
        problems.append("too few requests during the drain")
    for p in problems:
        print("  PROBLEM: " + p)
    return not problems

if __name__ == "__main__":
    if sys.argv[1] == "load":
        addr, game, run, workers, keys, stop_file, out, status_file = sys.argv[2:]
        load(addr, game, run, int(workers), int(keys), stop_file, out, status_file)
    else:
        name, records_file, events_file, workers, db_sum, coherent = sys.argv[2:]
        sys.exit(0 if check(name, records_file, events_file, int(workers), int(db_sum),
                            coherent == "1") else 1)
PY

# --- balancers ------------------------------------------------------------------------------
start_balancer() { # start_balancer nginx|haproxy: started on the shipped file, foreground
  local b=$1 dir=$work/$1 _
  mkdir -p "$dir"
  case $b in
    nginx)
      # -p: a private prefix; -e and -g pid: logs and pid file there (the file sets neither).
      nginx -t -q -p "$dir/" -c "$nginx_conf" -e "$dir/error.log" -g "pid $dir/nginx.pid;"
      nginx -p "$dir/" -c "$nginx_conf" -e "$dir/error.log" -g "pid $dir/nginx.pid; daemon off;" \
        >"$dir/stdout.log" 2>&1 &
      ;;
    haproxy)
      haproxy -c -q -f "$haproxy_cfg"
      haproxy -db -f "$haproxy_cfg" >"$dir/haproxy.log" 2>&1 &
      ;;
  esac
  balancer_pid=$!
  # Ready: both ports accept and an HTTP request goes through; HAProxy: every server UP.
  for _ in $(seq 200); do
    if ! kill -0 "$balancer_pid" 2>/dev/null; then log "$b exited at start"; return 1; fi
    if curl -fs -m 1 -o /dev/null "http://127.0.0.1:$(http_port 0)/readyz" \
       && (exec 3<>"/dev/tcp/127.0.0.1/$(tcp_port 0)") 2>/dev/null; then
      if [ "$b" != haproxy ] || [ "$(haproxy_up)" = 6 ]; then return 0; fi
    fi
    sleep 0.1
  done
  log "$b did not come up"; return 1
}
haproxy_up() { # servers of dmw_http and dmw_tcp that HAProxy sees UP
  { curl -fs -m 1 "$haproxy_stats;csv" 2>/dev/null || true; } \
    | awk -F, '($1 == "dmw_http" || $1 == "dmw_tcp") && $2 ~ /^s[0-9]/ && $18 == "UP" { n++ }
               END { print n + 0 }'
}
stop_balancer() {
  if [ -n "$balancer_pid" ]; then
    kill "$balancer_pid" 2>/dev/null || true
    wait "$balancer_pid" 2>/dev/null || true
    balancer_pid=""
  fi
}
event() { echo "$1 $(date +%s.%N)" >>"$events"; }

summary=()
failed=0
fail() { log "FAIL ($current): $*"; summary+=("FAIL $current: $*"); failed=1; }

tcp_check() { # the TCP protocol through the balancer's stream proxy
  local before=() after=() spread=0 i
  for i in 1 2 3; do before[i]=$(tcp_accepted "$i"); done
  if ! "$bin" bench run --target tcp --addr "127.0.0.1:$(tcp_port 0)" --game "$game" \
      --workload mixed --write-ratio 0.2 --keys 50 -c 3 -d 4 --seconds 2 \
      --json "$work/$current-tcp.json" >"$work/$current-tcp.log" 2>&1; then
    fail "TCP: bench through the stream proxy failed: $(tail -n 3 "$work/$current-tcp.log")"
    return
  fi
  for i in 1 2 3; do
    after[i]=$(tcp_accepted "$i")
    if [ "${after[i]}" -gt "${before[i]}" ]; then spread=$((spread + 1)); fi
  done
  local line
  line=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))
print(r["requests"], r["ok"], sum(r["errors"].values()))' "$work/$current-tcp.json")
  read -r tcp_requests tcp_ok tcp_errors <<<"$line"
  log "TCP through $current: $tcp_requests requests, $tcp_ok ok, $tcp_errors errors; connections reached $spread of 3 instances"
  summary+=("$current TCP stream: $tcp_requests requests, $tcp_errors errors, spread over $spread instances")
  if [ "$tcp_errors" -ne 0 ] || [ "$tcp_ok" -eq 0 ]; then fail "TCP: $tcp_errors errors, $tcp_ok ok"; fi
  if [ "$spread" -lt 2 ]; then fail "TCP: connections reached only $spread instance(s)"; fi
}

http_chaos() { # the HTTP load with a kill -9, a restart and a drain
  local stop=$work/$current.stop status=$work/$current.status records=$work/$current.records
  local _ n back=0 before_term
  events=$work/$current.events
  : >"$events"
  python3 "$work/lbload.py" load "127.0.0.1:$(http_port 0)" "$game" "$current" "$workers" 300 \
    "$stop" "$records" "$status" &
  load_pid=$!
  load_count() { if [ -f "$status" ]; then cut -d' ' -f1 "$status"; else echo 0; fi; }
  for _ in $(seq 100); do [ "$(load_count)" -ge 500 ] && break; sleep 0.1; done
  sleep 1
  log "$current: load running ($(load_count) requests); kill -9 instance 1"
  event kill
  kill -9 "${pid[1]}"
  wait "${pid[1]}" 2>/dev/null || true
  pid[1]=""
  sleep 2
  log "$current: restarting instance 1"
  event restart
  start_instance 1
  wait_ready 1
  event ready
  # It must get traffic again (nginx: after fail_timeout; HAProxy: after `rise` checks).
  for _ in $(seq 200); do
    n=$(api_requests 1)
    if [ "${n:-0}" -gt 0 ]; then back=1; break; fi
    sleep 0.1
  done
  event back
  if [ "$back" -eq 1 ]; then
    log "$current: instance 1 serves again ($n requests so far)"
  else
    fail "instance 1 got no traffic within 20 s of its restart"
  fi
  sleep 1
  before_term=$(api_requests 2)
  log "$current: SIGTERM to instance 2 (it has answered $before_term requests; drain_delay $drain_delay)"
  event term
  kill -TERM "${pid[2]}"
  if wait_exit "${pid[2]}" 25; then
    pid[2]=""
    event exited
    log "$current: instance 2 exited with status $exit_status"
    [ "$exit_status" -eq 0 ] || fail "instance 2 exited with status $exit_status after SIGTERM"
  else
    event exited
    fail "instance 2 still running 25 s after SIGTERM"
  fi
  [ "${before_term:-0}" -gt 0 ] || fail "instance 2 had no traffic before its drain"
  sleep 2
  touch "$stop"
  if ! wait "$load_pid"; then
    load_pid=""
    fail "the HTTP load client failed (see above)"
    return
  fi
  load_pid=""
  # The counters as committed, from the database itself (the source of truth): table
  # dmw_documents (docs/operations.md, Stores), `value` holding the document's JSON.
  local db_sum out
  db_sum=$(psql "$pg_url" -qAtc "SELECT COALESCE(sum((value::json->>'c')::bigint), 0)
    FROM dmw_documents WHERE game = '$game' AND collection = 'players' AND id LIKE '$current-c%'")
  if out=$(python3 "$work/lbload.py" check "$current" "$records" "$events" "$workers" \
      "$db_sum" "$([ -n "$l2" ] && echo 1 || echo 0)"); then
    echo "$out"
    summary+=("$current HTTP: $(head -n 1 <<<"$out" | grep -o '[0-9]* HTTP requests'); $(grep -E '^  (failed|counters)' <<<"$out" | sed 's/^ *//' | paste -sd '|' - | sed 's/|/; /g')")
  else
    echo "$out"
    fail "HTTP: $(grep PROBLEM <<<"$out" | sed 's/^ *PROBLEM: //' | paste -sd ';' -)"
  fi
  # Instance 2 back for the next balancer.
  start_instance 2
  wait_ready 2
}

for current in $balancers; do
  log "=== $current ==="
  start_balancer "$current"
  tcp_check
  http_chaos
  if [ "$current" = haproxy ]; then
    # When HAProxy took the instances out (its log has ISO timestamps): informational, the
    # verdict is the requests' outcomes above.
    python3 - "$work/haproxy/haproxy.log" "$work/haproxy.events" "$drain_delay" <<'PY' >&2 || true
import datetime, sys
ev = {k: float(t) for k, t in (l.split() for l in open(sys.argv[2]))}
def down(server, after):
    for line in open(sys.argv[1]):
        if (" Server %s is DOWN" % server) in line and line[:4].isdigit():
            t = datetime.datetime.fromisoformat(line.split()[0]).timestamp()
            if t >= after:
                return "%.2fs" % (t - after)
    return "never"
print("[lb-test] HAProxy took instance 1 out %s after the kill (dmw_http; dmw_tcp: %s), "
      "instance 2 %s after its SIGTERM (dmw_http; dmw_tcp: %s; drain_delay %s)" % (
      down("dmw_http/s1", ev["kill"]), down("dmw_tcp/s1", ev["kill"]),
      down("dmw_http/s2", ev["term"]), down("dmw_tcp/s2", ev["term"]), sys.argv[3]))
PY
    log "HAProxy log lines (errors, retries, state changes): $(wc -l <"$work/haproxy/haproxy.log")"
  else
    log "nginx error log lines (upstream failures, retried or not): $(wc -l <"$work/nginx/error.log")"
  fi
  stop_balancer
done

summary_printed=1
echo
echo "=== lb-test summary ==="
for line in "${summary[@]}"; do echo "  $line"; done
if [ "$failed" -eq 0 ]; then
  echo "PASS"
  result=0
else
  echo "FAIL"
  exit 1
fi
