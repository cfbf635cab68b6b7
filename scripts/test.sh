#!/usr/bin/env bash
# Runs the whole test suite against SQLite and real PostgreSQL and MySQL/MariaDB servers.
# Starts a server that is down, installing it from Debian packages when absent (needs root),
# then exports DATAMIDDLEWARE_TEST_POSTGRES_URL / DATAMIDDLEWARE_TEST_MYSQL_URL for the backend suites.
# Extra arguments go to the test runner (cargo nextest run, or cargo test without nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

ensure_postgres
ensure_mysql
log "PostgreSQL: ${DATAMIDDLEWARE_TEST_POSTGRES_URL}  MySQL: ${DATAMIDDLEWARE_TEST_MYSQL_URL}"

if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doc tests: run those first, so the nextest summary closes the output.
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
