#!/usr/bin/env bash
# Headless-Chromium test of the /admin status page (crates/server/src/ops/admin.html).
#
#   scripts/admin-page-test.sh [--from-file]
#
# Starts the server ($DATAMIDDLEWARE_BIN, default target/debug/datamiddleware: build it first) in a temporary
# directory, drives HTTP and TCP load at it with the built-in `bench run`, starts a second
# server with auth on (a fresh admin key and a readonly key), and runs scripts/admin-page-test.mjs:
# the page must chart the load, show memory, refresh every second, throw no JS error, and ask
# for an admin key when /metrics answers 401/403.
#
#   --from-file        serve the working tree's admin.html at /admin through a local proxy in
#                      front of the server, instead of the copy compiled into the binary
#                      (for a binary built before the page changed)
#   DATAMIDDLEWARE_BIN=…          the server binary
#   TEST_SECONDS=5     how long the page is watched under load
#   SCREENSHOT=FILE    also save a screenshot of the page
#
# Installs what it lacks: Debian's chromium (apt-get, as root) and playwright-core
# (npm, into scripts/node_modules). Exits non-zero when a check fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
DATAMIDDLEWARE_BIN=${DATAMIDDLEWARE_BIN:-$root/target/debug/datamiddleware}
case $DATAMIDDLEWARE_BIN in /*) ;; *) DATAMIDDLEWARE_BIN=$root/$DATAMIDDLEWARE_BIN ;; esac
# The server reads every DMW_* environment variable as a configuration override and refuses
# unknown ones: this script's own variable is not exported to it.
export -n DATAMIDDLEWARE_BIN
TEST_SECONDS=${TEST_SECONDS:-5}
page_file=$root/crates/server/src/ops/admin.html
from_file=
for arg in "$@"; do
  case $arg in
    --from-file) from_file=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '==> %s\n' "$*"; }
die() { printf 'admin-page-test: %s\n' "$*" >&2; exit 1; }

[ -x "$DATAMIDDLEWARE_BIN" ] || die "no server binary at $DATAMIDDLEWARE_BIN (cargo build, or set DATAMIDDLEWARE_BIN)"
command -v node >/dev/null || die "node is needed (Node.js 20 or later)"
command -v curl >/dev/null || die "curl is needed"

# --- installs -----------------------------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
    || die "could not install chromium with apt-get (run as root)"
fi
if [ ! -f "$here/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core into scripts/node_modules"
  (cd "$here" && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; }) \
    || die "npm could not install playwright-core"
fi

# --- servers and load ----------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/dmw-admin-test.XXXXXX")
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && [ -d "$work" ]; then
    for f in "$work"/*.log; do
      [ -s "$f" ] && { echo "--- last lines of $(basename "$f")"; tail -n 15 "$f"; }
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
wait_ready() {  # url pid: /readyz answers 200 within 15 s
  for _ in $(seq 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/readyz" || true)" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || die "the server for $1 exited (see its log below)"
    sleep 0.1
  done
  die "the server at $1 did not get ready (see its log below)"
}

http_port=$(free_port); tcp_port=$(free_port); auth_port=$(free_port)
base=http://127.0.0.1:$http_port
auth_base=http://127.0.0.1:$auth_port

mkdir -p "$work/plain" "$work/auth"
log "starting $DATAMIDDLEWARE_BIN on $base (TCP on $tcp_port) in $work"
(cd "$work/plain" && exec "$DATAMIDDLEWARE_BIN" --listen "127.0.0.1:$http_port" --tcp-listen "127.0.0.1:$tcp_port") \
  >"$work/server.log" 2>&1 &
pids+=($!); server_pid=$!

# Auth on: an admin key and a readonly key, made for this run only.
"$DATAMIDDLEWARE_BIN" key new --name admin-page-test --role admin >"$work/admin-key.txt"
"$DATAMIDDLEWARE_BIN" key new --name admin-page-test-ro --role readonly >"$work/ro-key.txt"
key_of() { sed -n 's/^# \(dmw_[0-9a-fA-F]*\)$/\1/p' "$1"; }
ADMIN_KEY=$(key_of "$work/admin-key.txt"); READONLY_KEY=$(key_of "$work/ro-key.txt")
[ -n "$ADMIN_KEY" ] && [ -n "$READONLY_KEY" ] || die "could not read the keys from \`key new\`"
{
  printf '[tcp]\nenabled = false\n\n[auth]\nenabled = true\n\n'
  grep -v '^#' "$work/admin-key.txt"; echo
  grep -v '^#' "$work/ro-key.txt"
} >"$work/auth/auth.toml"
log "starting a server with auth on at $auth_base"
(cd "$work/auth" && exec "$DATAMIDDLEWARE_BIN" --config auth.toml --listen "127.0.0.1:$auth_port") >"$work/auth-server.log" 2>&1 &
pids+=($!); auth_pid=$!

wait_ready "$base" "$server_pid"
wait_ready "$auth_base" "$auth_pid"

if [ -z "$from_file" ] && ! curl -s "$base/admin" | cmp -s - "$page_file"; then
  echo "warning: the server's /admin differs from $page_file: rebuild the binary, or use --from-file" >&2
fi

# Load for longer than the test runs (killed on exit): mixed GETs and PUTs, keys written first
# so the GETs hit.
seconds=$((TEST_SECONDS + 60))
log "load: 200 req/s over HTTP and 200 req/s over TCP (mixed, 10 % PUTs)"
(cd "$work/plain" && exec "$DATAMIDDLEWARE_BIN" bench run --target http --addr "127.0.0.1:$http_port" --workload mixed \
  --keys 200 -c 4 --rate 200 --seconds "$seconds") >"$work/bench-http.log" 2>&1 &
pids+=($!)
(cd "$work/plain" && exec "$DATAMIDDLEWARE_BIN" bench run --target tcp --addr "127.0.0.1:$tcp_port" --workload mixed \
  --keys 200 -c 4 --rate 200 --seconds "$seconds") >"$work/bench-tcp.log" 2>&1 &
pids+=($!)

# --- the browser test ---------------------------------------------------------------------
args=("$base" --auth-url "$auth_base" --expect-tcp --seconds "$TEST_SECONDS")
[ -n "$from_file" ] && args+=(--admin-file "$page_file")
[ -n "${SCREENSHOT:-}" ] && args+=(--screenshot "$SCREENSHOT")
log "node scripts/admin-page-test.mjs ${args[*]}"
ADMIN_KEY=$ADMIN_KEY READONLY_KEY=$READONLY_KEY timeout 120 node "$here/admin-page-test.mjs" "${args[@]}"
