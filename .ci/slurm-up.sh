#!/usr/bin/env bash
# Install (if needed) and start a single-node Slurm with two fake GPUs for gpudispatch's
# slurm tests. Idempotent: starts only the daemons that are not running, so it also
# brings slurmctld back after a test shut it down. Needs root (CI containers are root).
# Env: SLURM_STATE (default /var/lib/gpudispatch-slurm), SLURM_UP_TIMEOUT (default 30 s).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SLURM_STATE:-/var/lib/gpudispatch-slurm}"
TIMEOUT="${SLURM_UP_TIMEOUT:-30}"
CONF_DIR=/etc/slurm

die() { echo "slurm-up: $*" >&2; exit 1; }
# A daemon killed while a subreaper (a test process running a dispatcher in-process) was
# its parent stays a zombie until reaped: kill -0 answers for it, but it is dead.
alive() {
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null \
    && ! [[ "$(cat "/proc/$(cat "$1")/stat" 2>/dev/null)" =~ ^[0-9]+\ \(.*\)\ Z ]]
}

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

# --- packages ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null || ! command -v slurmd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends \
           slurmctld slurmd slurm-client munge >/dev/null; } \
    || die "apt-get install of slurmctld slurmd slurm-client munge failed"
fi

# --- munge ------------------------------------------------------------------------------
[[ -s /etc/munge/munge.key ]] || { mungekey --create >/dev/null 2>&1 || true; }
[[ -s /etc/munge/munge.key ]] || die "no /etc/munge/munge.key (mungekey failed)"
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged || die "munged did not start"
fi

# --- config -----------------------------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM="$(free -m | awk '/^Mem:/ {print $2}')"
mkdir -p "$STATE/ctld" "$STATE/d" "$CONF_DIR"
for i in 0 1; do
  # Character devices like /dev/null: Slurm rejects regular files as GPU device files.
  [[ -c "$STATE/gpu$i" ]] || { rm -f "$STATE/gpu$i"; mknod "$STATE/gpu$i" c 1 3; }
done
render() {
  sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" -e "s|@STATE@|$STATE|g" "$1"
}
changed=0
for f in slurm.conf gres.conf; do
  new="$(render "$HERE/slurm/$f.in")"
  if [[ ! -f "$CONF_DIR/$f" ]] || [[ "$(cat "$CONF_DIR/$f")" != "$new" ]]; then
    printf '%s\n' "$new" >"$CONF_DIR/$f"
    changed=1
  fi
done

# --- daemons ----------------------------------------------------------------------------
if [[ $changed -eq 1 ]] && { alive "$STATE/slurmctld.pid" || alive "$STATE/slurmd.pid"; }; then
  echo "slurm-up: config changed, restarting slurm"
  "$HERE/slurm-down.sh"
fi
alive "$STATE/slurmctld.pid" || slurmctld || die "slurmctld failed to start; see $STATE/slurmctld.log"
alive "$STATE/slurmd.pid" || slurmd || die "slurmd failed to start; see $STATE/slurmd.log"

deadline=$((SECONDS + TIMEOUT))
state=""
until state="$(sinfo --noheader --node="$HOST" --format=%T 2>/dev/null)" \
      && [[ "$state" =~ ^(idle|mixed|allocated|completing)$ ]]; do
  if [[ "$state" =~ ^(down|drain|drained) ]]; then
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  fi
  if (( SECONDS >= deadline )); then
    echo "--- $STATE/slurmctld.log (tail)" >&2; tail -n 15 "$STATE/slurmctld.log" >&2 || true
    echo "--- $STATE/slurmd.log (tail)" >&2; tail -n 15 "$STATE/slurmd.log" >&2 || true
    die "Slurm not up after ${TIMEOUT}s (node $HOST state: '${state:-no answer}')"
  fi
  sleep 0.2
done

cat <<INFO
slurm-up: Slurm $(sinfo --version | awk '{print $2}') up: node $HOST ($state), $CPUS CPUs, ${MEM} MB, gres gpu:2
  config:   $CONF_DIR/slurm.conf, $CONF_DIR/gres.conf (from $HERE/slurm/)
  state:    $STATE (fake GPUs gpu0 gpu1, jobcomp.txt for sacct -c)
  logs:     $STATE/slurmctld.log, $STATE/slurmd.log
  stop:     bash $HERE/slurm-down.sh
INFO
