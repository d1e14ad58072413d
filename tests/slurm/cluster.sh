#!/usr/bin/env bash
# Start or stop a one-node SLURM (munged, slurmctld, slurmd) on this machine, as root, without systemd.
#   tests/slurm/cluster.sh start DIR   -> writes DIR/slurm.conf; export SLURM_CONF=DIR/slurm.conf to use it
#   tests/slurm/cluster.sh stop DIR    -> stops the daemons by their pid files
# Needs Debian's slurm-wlm and munge.
set -euo pipefail
action=$1
dir=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)

stop_pid() {  # stop_pid FILE: TERM, then KILL after 10 s
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$file"
}

if [ "$action" = stop ]; then
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munged.pid"
  # slurmd's config cache link, if it is ours
  if [ "$(readlink /run/slurm/conf 2>/dev/null)" = "$dir/spool/conf-cache" ]; then rm -f /run/slurm/conf; fi
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "cluster.sh: must run as root" >&2; exit 2; }
for tool in munged slurmctld slurmd sbatch squeue; do
  command -v "$tool" >/dev/null || { echo "cluster.sh: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 2; }
done
mkdir -p "$dir/state" "$dir/spool"

# munge: a key owned by munge, munged run as that user with its own socket
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
  # the pid file lives in munge's own folder: $dir may be private to root (pytest's tmp folders are 0700)
  runuser -u munge -- munged --pid-file=/run/munge/soupflow-munged.pid
  cp /run/munge/soupflow-munged.pid "$dir/munged.pid"
fi

host=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
sed -e "s|@HOST@|$host|g" -e "s|@DIR@|$dir|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY@|$memory|g" \
    -e "s|@CTLD_PORT@|${SOUPFLOW_SLURMCTLD_PORT:-6817}|g" -e "s|@SLURMD_PORT@|${SOUPFLOW_SLURMD_PORT:-6818}|g" \
    "$here/slurm.conf.in" > "$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -c -f "$SLURM_CONF"
slurmd --conf-server "$host:${SOUPFLOW_SLURMCTLD_PORT:-6817}"
for _ in $(seq 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed"; then
    echo "cluster.sh: SLURM up on $host ($cpus CPUs, $memory MB), SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "cluster.sh: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
