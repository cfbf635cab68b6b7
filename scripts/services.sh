#!/usr/bin/env bash
# Shared by scripts/test.sh and bench/compare.sh (source it): make sure PostgreSQL, MariaDB,
# a standalone Redis and a Redis Cluster run, installing them from Debian packages when absent,
# and export their URLs as DATAMIDDLEWARE_TEST_POSTGRES_URL, DATAMIDDLEWARE_TEST_MYSQL_URL,
# DATAMIDDLEWARE_TEST_REDIS_URL and DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES.

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

# redis-cli waits forever on a server that accepts connections but hangs (e.g. stopped): bound it.
rcli() { timeout 3 redis-cli -h 127.0.0.1 "$@"; }
redis_ping() { [ "$(rcli -p "$1" ping 2>/dev/null)" = PONG ]; }
redis_down() { ! redis_ping "$1"; }
need_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server
  fi
}

# A standalone Redis on 127.0.0.1:6379, started daemonized (not through systemd) when down.
ensure_redis() {
  need_redis
  if ! redis_ping 6379; then
    local dir=${TMPDIR:-/tmp}/dmw-redis
    log "starting Redis on 127.0.0.1:6379"
    mkdir -p "$dir"
    redis-server --port 6379 --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
      --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >/dev/null
    wait_for Redis redis_ping 6379
  fi
  export DATAMIDDLEWARE_TEST_REDIS_URL=redis://127.0.0.1:6379/0
}

# Is there a healthy Redis Cluster on the ports $@: every node answers, says cluster_state:ok
# and knows exactly 6 nodes, and the first one sees all these ports as 3 slot-serving masters,
# each with a connected replica?
redis_cluster_healthy() {
  local p info nodes
  for p in "$@"; do
    redis_ping "$p" || return 1
    info=$(rcli -p "$p" cluster info 2>/dev/null | tr -d '\r') || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_known_nodes:6' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
  done
  nodes=$(rcli -p "$1" cluster nodes 2>/dev/null | tr -d '\r') || return 1
  for p in "$@"; do grep -q " 127\.0\.0\.1:$p@" <<<"$nodes" || return 1; done
  # Fields: id addr flags master-id ping-sent pong-recv epoch link-state slots…
  awk '
    $3 ~ /fail|handshake|noaddr/ || $8 != "connected" { bad = 1 }
    $3 ~ /master/ && NF > 8 { masters[$1] = 1; nmasters++ }
    $3 ~ /slave/ { replica_of[$4] = 1; nreplicas++ }
    END {
      if (bad || nmasters != 3 || nreplicas != 3) exit 1
      for (m in masters) if (!(m in replica_of)) exit 1
    }' <<<"$nodes"
}

# Stops whatever redis-server serves port $1: the process that INFO names and any redis-server
# whose title (default "redis-server 127.0.0.1:PORT [cluster]") names that port. Nothing else.
stop_redis_on_port() {
  local port=$1 pid comm args pids=()
  pid=$(rcli -p "$port" info server 2>/dev/null | tr -d '\r' \
    | sed -n 's/^process_id://p') || true
  if [ -n "$pid" ]; then pids+=("$pid"); fi
  while read -r pid comm args; do
    if [ "$comm" = redis-server ] && [[ " $args " == *":$port "* ]]; then pids+=("$pid"); fi
  done < <(ps -eo pid=,comm=,args=)
  for pid in "${pids[@]}"; do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ]; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  wait_for "the end of the redis-server on port $port" redis_down "$port"
}

# A Redis Cluster of 6 redis-server processes, 3 masters and 3 replicas, on 127.0.0.1 ports
# DMW_TEST_REDIS_CLUSTER_BASE_PORT (7000) to +5, with cluster bus ports 10000 higher. Reuses a
# healthy one; otherwise (none, or one half up or broken) kills the redis-servers on those ports
# and creates a fresh, empty cluster in ${TMPDIR:-/tmp}/dmw-redis-cluster.
ensure_redis_cluster() {
  need_redis
  local base=${DMW_TEST_REDIS_CLUSTER_BASE_PORT:-7000}
  local root=${TMPDIR:-/tmp}/dmw-redis-cluster
  local ports=() addrs=() urls=() p
  for p in $(seq "$base" $((base + 5))); do
    ports+=("$p"); addrs+=("127.0.0.1:$p"); urls+=("redis://127.0.0.1:$p")
  done
  if [ "$base" -le 6379 ] && [ $((base + 5)) -ge 6379 ]; then
    log "DMW_TEST_REDIS_CLUSTER_BASE_PORT=$base overlaps the standalone Redis on 6379"; return 1
  fi
  if redis_cluster_healthy "${ports[@]}"; then
    log "reusing the Redis Cluster on 127.0.0.1:${ports[0]}-${ports[5]}"
  else
    log "creating a Redis Cluster on 127.0.0.1:${ports[0]}-${ports[5]} in $root"
    for p in "${ports[@]}"; do stop_redis_on_port "$p"; done
    for p in "${ports[@]}"; do
      rm -rf "${root:?}/$p" && mkdir -p "$root/$p"
      redis-server --port "$p" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
        --cluster-enabled yes --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 2000 \
        --dir "$root/$p" --logfile "$root/$p/redis.log" --pidfile "$root/$p/redis.pid" >/dev/null
    done
    for p in "${ports[@]}"; do wait_for "Redis Cluster node $p" redis_ping "$p"; done
    if ! timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$root/create-${ports[0]}.log" 2>&1; then
      cat "$root/create-${ports[0]}.log" >&2; log "redis-cli --cluster create failed"; return 1
    fi
    wait_for "Redis Cluster (cluster_state:ok, 3 masters + 3 replicas)" \
      redis_cluster_healthy "${ports[@]}"
  fi
  DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES=$(IFS=,; echo "${urls[*]}")
  export DATAMIDDLEWARE_TEST_REDIS_CLUSTER_NODES
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
