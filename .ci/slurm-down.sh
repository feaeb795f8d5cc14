#!/usr/bin/env bash
# Stop the single-node Slurm that slurm-up.sh started and wait for its daemons to exit
# (a new slurmctld cannot bind its port while the old one lingers). munged keeps running.
set -euo pipefail
STATE="${SLURM_STATE:-/var/lib/gpudispatch-slurm}"
TIMEOUT="${SLURM_DOWN_TIMEOUT:-30}"

# Alive and not a zombie (one whose parent does not reap it is dead all the same).
running() {
  kill -0 "$1" 2>/dev/null && ! [[ "$(cat "/proc/$1/stat" 2>/dev/null)" =~ ^[0-9]+\ \(.*\)\ Z ]]
}

pids=()
for f in "$STATE/slurmctld.pid" "$STATE/slurmd.pid"; do
  if [[ -s "$f" ]] && running "$(cat "$f")"; then pids+=("$(cat "$f")"); fi
done
if [[ ${#pids[@]} -eq 0 ]]; then echo "slurm-down: not running"; exit 0; fi

scontrol shutdown >/dev/null 2>&1 || kill -TERM "${pids[@]}" 2>/dev/null || true
deadline=$((SECONDS + TIMEOUT))
for pid in "${pids[@]}"; do
  while running "$pid"; do
    if (( SECONDS >= deadline )); then
      kill -TERM "$pid" 2>/dev/null || true
    fi
    if (( SECONDS >= deadline + 5 )); then
      echo "slurm-down: pid $pid did not exit" >&2; exit 1
    fi
    sleep 0.1
  done
done
echo "slurm-down: stopped (pids ${pids[*]})"
