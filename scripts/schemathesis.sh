#!/usr/bin/env bash
# Property-based tests of the HTTP API against its OpenAPI document (docs/openapi.json) with
# schemathesis (https://schemathesis.readthedocs.io): starts the server binary on free loopback
# ports in a temporary directory, waits for /readyz, and runs every schemathesis phase (examples,
# coverage, fuzzing, stateful) with every check against it. Exits non-zero when schemathesis
# reports a failure (a 5xx, a status, header or body the document does not promise, valid input
# refused, invalid input accepted, a 405 without `Allow`, …) or the server dies or panics.
#
# The server runs with auth on (an admin API key for the run, a second key to revoke, an HS256
# token key), so the 401 answers, `_token` and `_revoke` are exercised too; otherwise with the
# defaults (one game `default`, SQLite under ./data).
#
# Environment:
#   DATAMIDDLEWARE_BIN       the server binary (default: target/debug/datamiddleware, from the
#                            repo root; build it first with `cargo build`)
#   SCHEMATHESIS_SCHEMA      the document to test against: a file (default: docs/openapi.json),
#                            an http(s) URL, or `served` for the started server's /openapi.json
#   SCHEMATHESIS_EXAMPLES    test cases per operation and phase (default: 200, about a minute
#                            on 2 cores)
#   SCHEMATHESIS_SEED        the Hypothesis seed (default: fixed, so that runs are reproducible)
#   SCHEMATHESIS_VENV        the virtualenv (default: ${XDG_CACHE_HOME:-~/.cache}/datamiddleware/
#                            schemathesis-venv; reused when it holds the pinned version)
#   SCHEMATHESIS_REPORT_DIR  when set: the JUnit report, the cassette of every request (VCR) and
#                            the server's log go there
# Extra arguments go to `schemathesis run`, e.g. `--phases fuzzing`, `--max-failures 1`, or
# `--include-operation-id getDocument --phases examples,coverage,fuzzing` (the stateful phase
# needs the operations its links lead to).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '[schemathesis.sh] %s\n' "$*" >&2; }

absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }

DATAMIDDLEWARE_BIN=$(absolute "${DATAMIDDLEWARE_BIN:-target/debug/datamiddleware}")
if [[ ! -x "$DATAMIDDLEWARE_BIN" ]]; then
  log "no server binary at $DATAMIDDLEWARE_BIN (build it with 'cargo build', or set DATAMIDDLEWARE_BIN)"
  exit 2
fi
SCHEMA=${SCHEMATHESIS_SCHEMA:-docs/openapi.json}
case "$SCHEMA" in served | http://* | https://*) ;; *) SCHEMA=$(absolute "$SCHEMA") ;; esac
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-200}
SEED=${SCHEMATHESIS_SEED:-20261201}
REPORT_DIR=
if [[ -n "${SCHEMATHESIS_REPORT_DIR:-}" ]]; then
  REPORT_DIR=$(absolute "$SCHEMATHESIS_REPORT_DIR")
  mkdir -p "$REPORT_DIR"
fi
command -v python3 >/dev/null || { log "python3 is needed"; exit 2; }

# --- schemathesis, pinned, in its own virtualenv ----------------------------------------------
REQUIREMENTS="$ROOT/scripts/schemathesis-requirements.txt"
PINNED=$(sed -n 's/^schemathesis==\([^ ]*\).*/\1/p' "$REQUIREMENTS")
VENV=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/datamiddleware/schemathesis-venv}
if [[ "$("$VENV/bin/schemathesis" --version 2>/dev/null || true)" != *"version $PINNED" ]]; then
  log "installing schemathesis $PINNED into $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 leaves venv (ensurepip) to a package of its own.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "installing python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
      rm -rf "$VENV"
      python3 -m venv "$VENV"
    else
      log "python3 cannot make a virtualenv: install python3-venv"
      exit 2
    fi
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
fi
log "$("$VENV/bin/schemathesis" --version)"

# --- the server, in a temporary directory ------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dmw-schemathesis.XXXXXX")
SERVER_PID=
SCHEMATHESIS_PID=
cleanup() {
  local status=$?
  if [[ -n "$SCHEMATHESIS_PID" ]] && kill -0 "$SCHEMATHESIS_PID" 2>/dev/null; then
    kill -TERM "$SCHEMATHESIS_PID" 2>/dev/null || true
    wait "$SCHEMATHESIS_PID" 2>/dev/null || true
  fi
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ -n "$REPORT_DIR" && -f "$WORK/server.log" ]]; then
    cp "$WORK/server.log" "$REPORT_DIR/server.log"
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
HTTP_PORT=$(free_port)
TCP_PORT=$(free_port)
while [[ "$TCP_PORT" == "$HTTP_PORT" ]]; do TCP_PORT=$(free_port); done
BASE="http://127.0.0.1:$HTTP_PORT"
[[ "$SCHEMA" == served ]] && SCHEMA="$BASE/openapi.json"

cd "$WORK"
# The server reads every DMW_* variable as configuration and refuses unknown ones: DATAMIDDLEWARE_BIN is ours.
dmw() { env -u DATAMIDDLEWARE_BIN "$DATAMIDDLEWARE_BIN" "$@"; }
# An admin key for the run, and a second key (`retired`) for `_revoke {"key": "retired"}`.
dmw key new --name schemathesis-admin --role admin --games '*' >admin.key
dmw key new --name retired --role readonly --games '*' >retired.key
ADMIN_KEY=$(sed -n 's/^# \(dmw_[0-9a-f]*\)$/\1/p' admin.key)
[[ -n "$ADMIN_KEY" ]] || { log "could not read the key 'datamiddleware key new' printed"; exit 2; }
TOKEN_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
{
  cat <<EOF
[auth]
enabled = true

[[auth.tokens.keys]]
algorithm = "HS256"
secret = "$TOKEN_SECRET"

[games.default]
store = "sqlite://data/default.db"
# float_counters: every \`by\`, \`min\` and \`max\` the document allows (any JSON number) is valid
# here; the integer-only rules of other collections are the unit tests' (service/ops/tests.rs).
[games.default.collections.players]
float_counters = true
[games.default.collections.items]
float_counters = true
EOF
  echo
  sed -n '/^\[\[auth.keys\]\]/,$p' admin.key
  echo
  sed -n '/^\[\[auth.keys\]\]/,$p' retired.key
} >config.toml
mkdir -p data

# Not through `dmw`: a function run in the background is a subshell, and `$!` must be the server
# (env execs it) for the cleanup to stop it.
env -u DATAMIDDLEWARE_BIN "$DATAMIDDLEWARE_BIN" --config config.toml \
  --listen "127.0.0.1:$HTTP_PORT" --tcp-listen "127.0.0.1:$TCP_PORT" >server.log 2>&1 &
SERVER_PID=$!
ready() {
  python3 - "$BASE/readyz" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}
for _ in $(seq 300); do
  ready && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited:"; cat server.log >&2; exit 2
  fi
  sleep 0.1
done
ready || { log "the server did not get ready within 30 s:"; tail -n 50 server.log >&2; exit 2; }
log "server $DATAMIDDLEWARE_BIN ready on $BASE (TCP 127.0.0.1:$TCP_PORT), in $WORK"

# --- schemathesis ------------------------------------------------------------------------------
export SCHEMATHESIS_ADMIN_KEY="$ADMIN_KEY"
cat >schemathesis.toml <<'EOF'
# Report every failure of an operation, not only its first one.
continue-on-failure = true

[auth.openapi.ApiKey]
api_key = "${SCHEMATHESIS_ADMIN_KEY}"

[output.sanitization]
# The key is made for this run and dies with it; reproducing a failure needs the bodies as sent.
enabled = false

[generation]
# No examples replayed from an earlier run's database: every run with the same seed is the same.
database = "none"

[checks.positive_data_acceptance]
# The defaults, plus 412: a precondition (`If-Match`, `if_version`, `create_only`, a `check` op)
# drawn at random is valid input that usually does not hold, and RFC 9110 answers that with 412.
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]

# Names and ids are drawn from these most of the time, so that requests reach the configured game
# and collections and documents that exist (random names are `404 unknown_game` or
# `unknown_collection`, random ids are missing documents).
[dictionaries.games]
values = ["default"]
[dictionaries.collections]
values = ["players", "items"]
[dictionaries.ids]
values = ["42", "p1", "a.b:c@d-e"]
[dictionaries.key_names]
values = ["retired"]

[parameters]
"path.game" = { dictionary = "games", probability = 0.9 }
"path.collection" = { dictionary = "collections", probability = 0.9 }
"path.id" = { dictionary = "ids", probability = 0.6 }
"body.ids[*]" = { dictionary = "ids", probability = 0.6 }
"body.ops[*].collection" = { dictionary = "collections", probability = 0.95 }
"body.ops[*].id" = { dictionary = "ids", probability = 0.6 }
"body.key" = { dictionary = "key_names", probability = 1.0 }

# An API key name this server's configuration does not hold is `400` by design (README,
# "Revocation"), and the coverage phase draws key names without the dictionary above.
[[operations]]
include-operation-id = "revoke"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "412", "429", "5xx"]

# A CPU profile samples for `seconds`: keep each request short.
[[operations]]
include-operation-id = "getCpuProfile"
parameters = { "query.seconds" = 1 }
EOF

reports=()
if [[ -n "$REPORT_DIR" ]]; then
  reports=(--report junit,vcr --report-dir "$REPORT_DIR")
fi

# `--checks all`: with auth on, every check applies (`ignored_auth` sends requests without the
# key and expects 401; `use_after_free` and `ensure_resource_availability` follow the PUT/DELETE
# links). One worker: with two, schemathesis 4.32.5 hits a KeyError in its own coverage cache.
# In the background and waited for, so that an INT or TERM stops the run (and the server) at once.
"$VENV/bin/schemathesis" --config-file schemathesis.toml run "$SCHEMA" \
  --url "$BASE" \
  --checks all \
  --seed "$SEED" \
  --max-examples "$EXAMPLES" \
  --workers 1 \
  --request-timeout 10 \
  ${reports[@]+"${reports[@]}"} \
  "$@" &
SCHEMATHESIS_PID=$!
status=0
wait "$SCHEMATHESIS_PID" || status=$?
SCHEMATHESIS_PID=

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  log "the server died during the run:"; tail -n 50 server.log >&2
  status=1
fi
if grep -q 'panicked' server.log; then
  log "the server panicked:"; grep -A5 'panicked' server.log >&2
  status=1
fi
if grep -q 'ERROR' server.log; then
  log "errors in the server's log:"; grep 'ERROR' server.log | tail -n 20 >&2
fi
exit "$status"
