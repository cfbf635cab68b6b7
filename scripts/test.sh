#!/usr/bin/env bash
# Runs the whole test suite against SQLite and real PostgreSQL, MySQL/MariaDB and Redis servers
# (a standalone Redis on 6379 and a 6-node Redis Cluster on 7000-7005), then, against the server
# binary: the Go client's tests (installing golang-go when absent), schemathesis against the
# OpenAPI document (scripts/schemathesis.sh), the status page in headless Chromium
# (scripts/admin-page-test.sh) and the shipped nginx and HAProxy configs in front of three
# instances (scripts/lb-test.sh). DATAMIDDLEWARE_SKIP_SYSTEM_TESTS=1 skips those last three.
# Starts a server that is down, installing it from Debian packages when absent (needs root),
# then exports DATAMIDDLEWARE_TEST_POSTGRES_URL / DATAMIDDLEWARE_TEST_MYSQL_URL /
# DATAMIDDLEWARE_TEST_REDIS_URL / DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES for the backend suites.
# Extra arguments go to the test runner (cargo nextest run, or cargo test without nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

ensure_postgres
ensure_mysql
ensure_redis
ensure_redis_cluster
log "PostgreSQL: ${DATAMIDDLEWARE_TEST_POSTGRES_URL}  MySQL: ${DATAMIDDLEWARE_TEST_MYSQL_URL}"
log "Redis: ${DATAMIDDLEWARE_TEST_REDIS_URL}  Redis Cluster: ${DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES}"

ensure_go
status=0
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doc tests: run those first, so the nextest summary closes the output.
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# The Go client's suite (clients/go) runs against the server binary the Rust tests just built.
log "Go client: go test ./... against target/debug/datamiddleware"
cargo build --quiet --bin datamiddleware
(
  cd clients/go
  DATAMIDDLEWARE_BIN="$PWD/../../target/debug/datamiddleware" CI="${CI:-}" \
    GOFLAGS=-mod=mod GOPROXY=off go test -count=1 ./...
) || status=$?

# Whole-system tests of the binary, each installing what it needs when absent.
if [[ "${DATAMIDDLEWARE_SKIP_SYSTEM_TESTS:-}" != 1 ]]; then
  for script in schemathesis.sh admin-page-test.sh lb-test.sh; do
    log "$script against target/debug/datamiddleware"
    DATAMIDDLEWARE_BIN=target/debug/datamiddleware "scripts/$script" || status=$?
  done
fi
exit "$status"
