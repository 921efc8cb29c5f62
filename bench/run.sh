#!/usr/bin/env bash
# One-command entry point: the shared peer harness with encfs-photo as extra rows
# (bench/encfs_photo.toml: local folder store, and S3 over the harness's moto).
#   bash bench/run.sh --quick      # raw, gocryptfs, both encfs-photo rows; 64 MiB, scale 0.1 (~1-2 min)
#   bash bench/run.sh --full       # every peer + both encfs-photo rows; 1 GiB, 3 repetitions (~1 h)
#   bash bench/run.sh --shared     # every peer, 1 GiB, scale 0.5, 2 repetitions (busy 2-core box, ~25 min)
#   bash bench/run.sh [--quick|--full|--shared] [peers.py options...]   # later options win
# Results: bench/results/<stamp>.{md,json} (gitignored).  Extra measurements the
# harness does not make: bench/rss.py, bench/cpu_per_gib.py, bench/mount_100k.py,
# bench/ls_cold.py (see docs/PERFORMANCE.md).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PEERS:-$here/../shared/bench/peers.py}"
[ -f "$peers" ] || { echo "bench: $peers not found (set PEERS=path/to/peers.py)" >&2; exit 1; }
all=raw,gocryptfs,cryfs,rclone-crypt-local,rclone-crypt-s3,s3fs,encfs_photo_local,encfs_photo_s3
preset=(--systems raw,gocryptfs,encfs_photo_local,encfs_photo_s3 --size-mib 64 --scale 0.1 --repeat 1)
case "${1:-}" in
  --quick) shift ;;
  --full) shift; preset=(--systems "$all" --size-mib 1024 --repeat 3 --install) ;;
  --shared) shift; preset=(--systems "$all" --size-mib 1024 --scale 0.5 --repeat 2 --install) ;;
esac
bash "$here/scripts/setup.sh"
export PATH="$here/.venv/bin:$PATH"
mkdir -p "$here/bench/results"
stamp=$(date +%Y%m%d-%H%M%S)
# The tree is shared and edited while a run goes on: measure a snapshot of the
# committed encfs_photo/ (BENCH_REV, default HEAD), put ahead of the editable
# install on PYTHONPATH; BENCH_REV=worktree measures the working tree as is.
rev="${BENCH_REV:-HEAD}"
if [ "$rev" != worktree ]; then
  snap=$(mktemp -d /tmp/encfs-photo-bench-src.XXXXXX)
  trap 'rm -rf "$snap"' EXIT
  git -C "$here" archive "$rev" encfs_photo | tar -x -C "$snap"
  export PYTHONPATH="$snap${PYTHONPATH:+:$PYTHONPATH}"
  what="commit $(git -C "$here" rev-parse "$rev")"
else
  what="working tree at $(git -C "$here" rev-parse HEAD)$(git -C "$here" diff --quiet HEAD -- encfs_photo || echo ' + uncommitted changes in encfs_photo/')"
fi
{ echo "measured: $what"
  echo "uptime at start: $(uptime)"; } | tee "$here/bench/results/$stamp.env"
python3 "$peers" --custom-file "$here/bench/encfs_photo.toml" --workdir "${BENCH_WORKDIR:-/tmp/peers-bench-encfs-photo}" \
  --json "$here/bench/results/$stamp.json" --markdown "$here/bench/results/$stamp.md" "${preset[@]}" "$@"
echo "uptime at end: $(uptime)" | tee -a "$here/bench/results/$stamp.env"
