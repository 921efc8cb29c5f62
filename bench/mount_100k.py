#!/usr/bin/env python3
"""Time to mount a vault (local folder store) holding many files.

    python3 bench/mount_100k.py                       # 100 folders x 1000 files of 2 KiB
    python3 bench/mount_100k.py --folders 10 --per-folder 100

Builds the vault through fs.FileSystem without FUSE (benchlib.fill_vault), then
mounts it `--mounts` times with a cold page cache: seconds from starting
`encfs-photo mount --foreground` until the mount point is in mountinfo, and
until a first `ls -l` of one folder has answered; daemon VmRSS after mounting.
Prints one line (medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--file-kib", type=float, default=2)
    ap.add_argument("--mounts", type=int, default=3)
    ap.add_argument("--base", default="/tmp")
    args = ap.parse_args()
    bl.need_root()
    os.environ["ENCFS_PHOTO_FAST_KDF"] = "1"
    with bl.scratch("encfs-photo-mount100k-", args.base) as work:
        v = bl.Vault(work)
        v.init()
        build_s = bl.fill_vault(v, args.folders, args.per_folder, int(args.file_kib * 1024))
        objects = sum(len(files) for _, _, files in os.walk(v.store))
        store_mib = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(v.store) for f in fs) / bl.MiB
        mounts, firsts, rss = [], [], []
        try:
            for _ in range(args.mounts):
                bl.drop_caches()
                t0 = time.monotonic()
                mounts.append(v.mount())
                subprocess.run(["ls", "-l", os.path.join(v.mnt, "folder0000")], check=True,
                               stdout=subprocess.DEVNULL)
                firsts.append(time.monotonic() - t0)
                rss.append(bl.status_kib(v.pid, "VmRSS") / 1024)
                v.unmount()
        finally:
            v.unmount()
    files = args.folders * args.per_folder
    print(f"files={files} folders={args.folders} store_objects={objects} store_MiB={store_mib:.0f} "
          f"build_s={build_s:.0f} mount_s={statistics.median(mounts):.2f} "
          f"mount_s_all={','.join(f'{m:.2f}' for m in mounts)} "
          f"mount_plus_first_ls_s={statistics.median(firsts):.2f} "
          f"daemon_rss_after_mount_MiB={statistics.median(rss):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
