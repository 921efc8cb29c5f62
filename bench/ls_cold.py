#!/usr/bin/env python3
"""`ls -l` of one folder of 10,000 files, cold (after remount + drop_caches): encfs-photo vs gocryptfs vs raw.

    python3 bench/ls_cold.py [--files 10000] [--reps 3]

encfs-photo's folder is built through fs.FileSystem without FUSE
(benchlib.fill_vault); gocryptfs's through its own mount (it creates 10,000
files in seconds); raw is a plain folder on the same disk. Each rep: unmount,
drop the page cache, mount, time `ls -l FOLDER > /dev/null` (mount time not
included). Prints one line: median entries/s of each and the ratios.
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


def timed_ls(folder: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["ls", "-l", folder], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


class Gocryptfs:
    def __init__(self, work: str) -> None:
        self.cipher, self.mnt = os.path.join(work, "gcipher"), os.path.join(work, "gmnt")
        self.pw = os.path.join(work, "gpw")
        os.makedirs(self.cipher)
        os.makedirs(self.mnt)
        with open(self.pw, "w") as f:
            f.write(bl.PASSWORD + "\n")
        subprocess.run(["gocryptfs", "-init", "-q", "-scryptn", "10", "-passfile", self.pw, self.cipher], check=True)
        self.proc: subprocess.Popen | None = None

    def mount(self) -> None:
        self.proc = subprocess.Popen(["gocryptfs", "-fg", "-q", "-nosyslog", "-passfile", self.pw, self.cipher,
                                      self.mnt], start_new_session=True)
        while not bl.mounted(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError("gocryptfs mount failed")
            time.sleep(0.005)

    def unmount(self) -> None:
        if self.proc is None:
            return
        if bl.mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        bl.stop_pid(self.proc)
        self.proc = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--file-kib", type=float, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--base", default="/tmp")
    args = ap.parse_args()
    bl.need_root()
    os.environ["ENCFS_PHOTO_FAST_KDF"] = "1"
    size = int(args.file_kib * 1024)
    payload = os.urandom(size)
    res: dict[str, list[float]] = {"encfs_photo": [], "gocryptfs": [], "raw": []}
    with bl.scratch("encfs-photo-lscold-", args.base) as work:
        v = bl.Vault(work)
        v.init()
        bl.fill_vault(v, 1, args.files, size)
        g = Gocryptfs(work)
        raw = os.path.join(work, "raw", "folder0000")
        os.makedirs(raw)
        try:
            g.mount()
            gdir = os.path.join(g.mnt, "folder0000")
            os.mkdir(gdir)
            for i in range(args.files):
                for d in (gdir, raw):
                    with open(os.path.join(d, f"IMG_{i:06d}.CR3.xmp"), "wb") as f:
                        f.write(payload)
            g.unmount()
            for _ in range(args.reps):
                bl.drop_caches()
                v.mount()
                res["encfs_photo"].append(timed_ls(os.path.join(v.mnt, "folder0000")))
                v.unmount()
                bl.drop_caches()
                g.mount()
                res["gocryptfs"].append(timed_ls(gdir))
                g.unmount()
                bl.drop_caches()
                res["raw"].append(timed_ls(raw))
        finally:
            v.unmount()
            g.unmount()
    rate = {k: args.files / statistics.median(s) for k, s in res.items()}
    print(f"files={args.files} reps={args.reps} encfs_photo_entries_per_s={rate['encfs_photo']:.0f} "
          f"gocryptfs_entries_per_s={rate['gocryptfs']:.0f} raw_entries_per_s={rate['raw']:.0f} "
          f"encfs_photo_vs_gocryptfs={rate['encfs_photo'] / rate['gocryptfs']:.2f}x "
          f"encfs_photo_s={','.join(f'{s:.3f}' for s in res['encfs_photo'])} "
          f"gocryptfs_s={','.join(f'{s:.3f}' for s in res['gocryptfs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
