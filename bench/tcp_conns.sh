#!/usr/bin/env bash
# Benchmark (not a test): memory per idle, authenticated, heartbeating TCP connection (the
# servers' user space and the kernel's sockets), and how many connections the machine holds.
# Starts `servers` release server processes sharing one TCP port with SO_REUSEPORT, warms
# them, then `datamiddleware bench conns` opens N connections from worker processes (each
# under the per-process file limit, spread over as many 127.x source addresses as the count
# needs) and reports the servers' RSS growth per connection, the kernel's socket slabs and
# buffers per connection, the time to open, every connection that failed to open by kind, and
# every connection dropped while held, by kind.
#
#   bench/tcp_conns.sh [connections] [hold-seconds] [server-processes]
#   bench/tcp_conns.sh 19000 40 1       # memory per connection in one process
#   bench/tcp_conns.sh 100000 300 6     # 100k connections across 6 processes for 5 minutes
#   bench/tcp_conns.sh 250000 300 16    # 250k: 16 servers, 14 workers, 23 source addresses
#   bench/tcp_conns.sh 500000 300 28    # 500k: 28 servers, 27 workers, 45 source addresses
#
# It changes no kernel setting. It prints the ones that bound the run and refuses up front
# what they cannot hold (too few server processes for the file limit, fs.file-max), and it
# prints the kernel's TCP counters that explain failures (accept-queue overflows, SYN
# cookies, timeouts) as they changed during the run.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-19000}
hold=${2:-40}
servers=${3:-1}
port=17170
files=$(ulimit -n)
per_server=$((files - 200)) # room for the server's own files (listeners, epoll, pools)
per_worker=$((files - 1000))

sysctl_value() { tr -s '\t ' ' ' <"/proc/sys/${1//.//}" 2>/dev/null || echo "n/a"; }
echo "kernel settings (read, not changed):"
for k in net.ipv4.ip_local_port_range net.core.somaxconn net.ipv4.tcp_max_syn_backlog \
  net.ipv4.tcp_syncookies net.ipv4.tcp_abort_on_overflow net.ipv4.tcp_tw_reuse \
  net.ipv4.tcp_fin_timeout net.ipv4.tcp_max_tw_buckets net.ipv4.tcp_mem fs.file-max \
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_count; do
  echo "  $k = $(sysctl_value "$k")"
done
echo "  file limit per process (ulimit -n): $files"
# The server listens with a backlog of 4096 (crates/server/src/ingress/tcp/mod.rs), which
# the kernel caps at net.core.somaxconn.
somaxconn=$(sysctl_value net.core.somaxconn)
echo "  accept queue per server process: $((somaxconn < 4096 ? somaxconn : 4096))"

# SO_REUSEPORT spreads connections by a hash: allow 5 % over the even share.
if ((count * 105 / 100 > servers * per_server)); then
  echo "$count connections need at least $(((count * 105 / 100 + per_server - 1) / per_server))" \
    "server processes of $per_server connections (file limit $files); got $servers" >&2
  exit 2
fi
file_max=$(sysctl_value fs.file-max)
if [[ $file_max =~ ^[0-9]+$ ]] && ((2 * count + 10000 > file_max)); then
  echo "fs.file-max $file_max is below two files per connection (client and server end)" >&2
  exit 2
fi
conntrack_max=$(sysctl_value net.netfilter.nf_conntrack_max)
conntrack_count=$(sysctl_value net.netfilter.nf_conntrack_count)
if [[ $conntrack_max =~ ^[0-9]+$ && $conntrack_count =~ ^[1-9] ]] && ((count > conntrack_max)); then
  echo "warning: connection tracking is active and nf_conntrack_max $conntrack_max < $count" >&2
fi

cargo build --release --quiet --bin datamiddleware
bin=target/release/datamiddleware
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for i in $(seq "$servers"); do
  mkdir -p "$work/s$i"
  (cd "$work/s$i" && DMW_LOG__FILTER=warn DMW_TCP__MAX_CONNECTIONS=$per_server DMW_HTTP__MAX_CONNECTIONS=100 \
    DMW_TCP__REUSE_PORT=true exec "$OLDPWD/$bin" --listen "127.0.0.1:$((18170 + i))" --tcp-listen "127.0.0.1:$port") &
  pids+=($!)
done
for i in $(seq "$servers"); do
  for _ in $(seq 100); do curl -fs "127.0.0.1:$((18170 + i))/healthz" >/dev/null && break; sleep 0.1; done
done
# Warm up (runtime threads, pools, first allocations) with a few connections per process,
# from an address the run does not use: their TIME_WAIT must not hold the run's ports.
warmup_source=127.0.1.1
"$bin" bench conns --addr "127.0.0.1:$port" --count $((200 * servers)) --hold 1 \
  --sources "$warmup_source" >/dev/null
# A previous run's client ports stay in TIME_WAIT for 60 s; on the run's source addresses
# they count against the half of the port range each address may use (see conns.rs).
for _ in $(seq 14); do
  waiting=$(ss -tanH state time-wait "( dport = :$port )" | grep -vc "$warmup_source:" || true)
  ((waiting < 1000)) && break
  echo "waiting for $waiting TIME_WAIT sockets of an earlier run to expire" >&2
  sleep 5
done
sleep 1

# TcpExt counters that name a failure to open: accept queue full (ListenOverflows,
# ListenDrops), SYN queue full (TCPReqQFullDrop, TCPReqQFullDoCookies), SYN cookies, and
# retransmission timeouts. They are machine-wide: other programs' listeners count too.
tcpext() {
  awk '/^TcpExt:/ { if (!seen++) { split($0, names); next } split($0, v);
    for (i = 2; i <= NF; i++) print names[i], v[i] }' /proc/net/netstat |
    grep -E '^(ListenOverflows|ListenDrops|TCPReqQFullDrop|TCPReqQFullDoCookies|SyncookiesSent|SyncookiesRecv|SyncookiesFailed|TCPTimeouts|TCPAbortOnTimeout|TCPAbortOnMemory|TCPBacklogDrop) ' | sort
}
tcpext >"$work/tcpext.before"
echo "server processes: $servers (SO_REUSEPORT, $per_server connections each at most)"
status=0
"$bin" bench conns --addr "127.0.0.1:$port" --count "$count" --per-process "$per_worker" --hold "$hold" \
  --server-pid "$(IFS=,; echo "${pids[*]}")" || status=$?
tcpext >"$work/tcpext.after"
echo "kernel TCP counters during the run (machine-wide; changed ones):"
join "$work/tcpext.before" "$work/tcpext.after" | awk '$3 != $2 { printf "  %s +%d\n", $1, $3 - $2 }'
alive=0
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
echo "server processes still running: $alive of $servers"
exit "$status"
