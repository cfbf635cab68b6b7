#!/usr/bin/env bash
# Applies the kernel settings of the seed's tuning chapter for many connections, as a file in
# /etc/sysctl.d (so they survive a reboot), then loads it. Needs root; --dry-run prints the file
# and changes nothing. `datamiddleware doctor` says which of these this machine lacks.
#
# Left out on purpose: net.ipv4.tcp_tw_recycle. Linux removed it in 4.12; before that it broke
# clients behind NAT (their timestamps are not monotonic across hosts). tcp_tw_reuse covers the
# outgoing-connection case safely.
#
# File descriptors are a per-process limit, not a sysctl: under systemd set LimitNOFILE= in the
# unit (`datamiddleware doctor` prints the number the configuration needs), else `ulimit -n`.
#
#   scripts/tune-linux.sh [--dry-run]
set -euo pipefail
file=/etc/sysctl.d/90-datamiddleware.conf
settings=$(cat <<'CONF'
# datamiddleware: many connections (scripts/tune-linux.sh)
net.core.somaxconn = 65535
net.ipv4.tcp_max_syn_backlog = 262144
net.ipv4.ip_local_port_range = 1024 65535
net.core.rmem_max = 16777216
net.core.wmem_max = 16777216
net.core.rmem_default = 262144
net.core.wmem_default = 262144
net.ipv4.tcp_tw_reuse = 1
net.ipv4.tcp_fin_timeout = 15
net.ipv4.tcp_keepalive_time = 600
fs.file-max = 2097152
CONF
)
if [ "${1:-}" = "--dry-run" ]; then
  echo "# would write $file:"
  echo "$settings"
  echo "# net.ipv4.tcp_tw_recycle is not set: removed from Linux 4.12, it broke clients behind NAT"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "tune-linux: run as root (or with --dry-run to see the settings)" >&2
  exit 1
fi
echo "$settings" > "$file"
echo "tune-linux: wrote $file; loading it" >&2
sysctl -p "$file"
echo "tune-linux: net.ipv4.tcp_tw_recycle is not set: removed from Linux 4.12, it broke clients behind NAT" >&2
