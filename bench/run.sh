#!/usr/bin/env bash
# Runs the peer harness with encfs-photo as extra rows; arguments go to peers.py.
# Default: raw disk, gocryptfs and encfs-photo (local store), 1 GiB, 1 repetition.
#   bash bench/run.sh                                   # ~5 min
#   bash bench/run.sh --systems raw,encfs_photo_local --size-mib 256 --scale 0.25
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PEERS:-$here/../shared/bench/peers.py}"
[ -f "$peers" ] || { echo "bench: $peers not found (set PEERS=path/to/peers.py)" >&2; exit 1; }
bash "$here/scripts/setup.sh"
export PATH="$here/.venv/bin:$PATH"
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--systems raw,gocryptfs,encfs_photo_local --size-mib 1024 --repeat 1 --install)
fi
mkdir -p "$here/bench/results"
stamp=$(date +%Y%m%d-%H%M%S)
exec python3 "$peers" --custom-file "$here/bench/encfs_photo.toml" \
  --json "$here/bench/results/$stamp.json" --markdown "$here/bench/results/$stamp.md" "${args[@]}"
