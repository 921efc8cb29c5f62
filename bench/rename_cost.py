#!/usr/bin/env python3
"""What renaming a folder writes to the store, for folders of different sizes (O(1) check).

    python3 bench/rename_cost.py [--sizes 100,1000,10000]

For each size: a fresh vault over a local folder store, driven through
fs.FileSystem without FUSE; a folder of N 8 KiB files is created and committed;
then the folder is renamed and committed. Counts the store objects created,
removed or rewritten by the rename+commit and their bytes (what an S3 store
would upload: the local store holds the same objects), and the seconds taken.
Prints one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def listing(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--base", default="/tmp")
    args = ap.parse_args()
    os.environ["ENCFS_PHOTO_FAST_KDF"] = "1"
    from encfs_photo import vault as vaultmod
    from encfs_photo.fs import FileSystem
    from encfs_photo.meta import ROOT_INO
    from encfs_photo.store import LocalStore

    cells = []
    for n in (int(x) for x in args.sizes.split(",")):
        with bl.scratch("encfs-photo-rename-", args.base) as work:
            v = bl.Vault(work)
            v.init()
            bl.fill_vault(v, 1, n, 8192)
            fs = FileSystem(vaultmod.open_vault(LocalStore(v.store), passphrase=bl.PASSWORD))
            try:
                before = listing(v.store)
                t0 = time.monotonic()
                fs.rename(ROOT_INO, b"folder0000", ROOT_INO, b"renamed", 0)
                fs.sync()
                secs = time.monotonic() - t0
                after = listing(v.store)
            finally:
                fs.close()
        new = [k for k in after if before.get(k) != after[k]]
        gone = [k for k in before if k not in after]
        cells.append(f"files={n}:objects_written={len(new)},bytes_written={sum(after[k][0] for k in new)},"
                     f"objects_removed={len(gone)},seconds={secs:.4f}")
    print(" ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
