#!/usr/bin/env bash
# One command from a fresh Debian machine to a mounted demo vault on a local
# folder store (nothing leaves this machine). Run it again to remount.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup.sh"
demo="${ENCFS_PHOTO_DEMO_DIR:-$HOME/encfs-photo-demo}"
mkdir -p "$demo/Photos"
chmod 700 "$demo"
if [ ! -f "$demo/passphrase" ]; then
  ( umask 077; head -c 18 /dev/urandom | base64 > "$demo/passphrase" )
fi
bin="$here/.venv/bin/encfs-photo"
if [ ! -f "$demo/vault/config" ]; then
  "$bin" init "$demo/vault" --password-file "$demo/passphrase"
fi
if mountpoint -q "$demo/Photos"; then
  echo "already mounted: $demo/Photos"
else
  "$bin" mount "$demo/vault" "$demo/Photos" --password-file "$demo/passphrase"
fi
cat <<MSG

Demo vault mounted at:   $demo/Photos
Encrypted store folder:  $demo/vault   (only ciphertext)
Demo passphrase file:    $demo/passphrase   (a real vault asks you for one)

Copy photos into $demo/Photos, then lock the vault with:
    $bin unmount $demo/Photos
MSG
