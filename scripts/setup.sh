#!/usr/bin/env bash
# Installs what encfs-photo needs on Debian/Ubuntu: fuse3 (and, with --test,
# the tools the mounted tests drive), a virtualenv in .venv, and the package.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(fuse3)
[ $want_test = 1 ] && pkgs+=(rsync sqlite3 libimage-exiftool-perl attr tar samba smbclient procps libzbar0)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
  echo "setup: /dev/fuse is missing; load the fuse kernel module (modprobe fuse)" >&2
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=""
[ $want_test = 1 ] && extra="[test]"
# The install is editable (code changes need no reinstall): redo it only when
# pyproject.toml or the extras changed, so running this again is quick.
stamp=".venv/.encfs-photo-installed"
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
fresh=0
if [ "$have" = "$hash [test]" ] || { [ "$have" = "$hash " ] && [ -z "$extra" ]; }; then
  .venv/bin/python -c "import encfs_photo" 2>/dev/null && fresh=1
fi
if [ $fresh = 0 ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extra}"
  echo "$hash ${extra}" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/encfs-photo --version))" >&2
