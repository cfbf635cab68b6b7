#!/usr/bin/env bash
# Shared by scripts/test.sh and bench/compare.sh (source it): make sure PostgreSQL and MariaDB
# run, installing them from Debian packages when absent, and export their URLs as
# DATAMIDDLEWARE_TEST_POSTGRES_URL and DATAMIDDLEWARE_TEST_MYSQL_URL.

log() { printf '[test.sh] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # wait_for NAME COMMAND...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not come up"; return 1
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version; version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
  fi
  local url=postgres://postgres@127.0.0.1:5432/test
  if ! psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh install asks for a password on TCP: give the postgres role one and create `test`.
    log "preparing PostgreSQL role and database for tests"
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    as_root su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='test'\" | grep -q 1 || createdb test"
    url=postgres://postgres:postgres@127.0.0.1:5432/test
  fi
  psql "$url" -qtAc 'SELECT 1' >/dev/null
  export DATAMIDDLEWARE_TEST_POSTGRES_URL=$url
}

ensure_mysql() {
  if ! command -v mariadbd >/dev/null 2>&1 && ! [ -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server
  fi
  if ! mariadb-admin ping -h 127.0.0.1 --silent >/dev/null 2>&1; then
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for MariaDB mariadb-admin ping -h 127.0.0.1 --silent
  fi
  local url=mysql://root@127.0.0.1:3306/test
  if ! mariadb -uroot -h127.0.0.1 -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1; then
    # A fresh install lets root in only over the socket: add a password user for TCP. It may
    # create databases and kill connections: tests/store_faults.rs does both.
    log "preparing a MariaDB test user"
    as_root mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test;
      CREATE USER IF NOT EXISTS 'dmw'@'localhost' IDENTIFIED BY 'dmw';
      CREATE USER IF NOT EXISTS 'dmw'@'127.0.0.1' IDENTIFIED BY 'dmw';
      GRANT ALL ON *.* TO 'dmw'@'localhost'; GRANT ALL ON *.* TO 'dmw'@'127.0.0.1';"
    url=mysql://dmw:dmw@127.0.0.1:3306/test
  fi
  export DATAMIDDLEWARE_TEST_MYSQL_URL=$url
}


# Benchmarks of the database path: writes to $1 a datamiddleware config with game $2 on the
# PostgreSQL at $3 and an L1 of 1 MiB, so reads spread over 50,000 documents mostly miss it.
write_cold_read_config() {
  cat > "$1" <<CONF
[cache]
l1_max_bytes = 1048576   # tiny L1: reads of 50,000 keys mostly miss it
[games.$2]
store = "$3"
[games.$2.collections.players]
CONF
}

ensure_go() {
  if ! command -v go >/dev/null 2>&1; then
    apt_install golang-go
  fi
}
