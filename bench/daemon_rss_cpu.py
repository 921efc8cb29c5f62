#!/usr/bin/env python3
"""Daemon peak RSS and CPU seconds per GiB while copying one big file in and reading it back.

    python3 bench/daemon_rss_cpu.py --store local --size-gib 20
    python3 bench/daemon_rss_cpu.py --store s3 --size-gib 4 --cache-size 2G

Writes SIZE of incompressible data into a fresh vault with 1 MiB write(2)s,
fsync, close (for S3 also `encfs-photo sync`: every byte in the bucket), drops
the page cache, reads it back with 1 MiB reads. The daemon is the foreground
`encfs-photo mount` child: peak RSS is VmHWM of /proc/<pid>/status; CPU is
utime+stime of /proc/<pid>/stat (all threads) over each phase. Prints one line.
moto keeps every object in memory, so S3 sizes are bounded by free RAM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def copy_in(path: str, size: int) -> None:
    pattern = os.urandom(64 * bl.MiB)
    view = memoryview(pattern)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // bl.MiB):
            off = (i * 7919 * 4096) % (len(pattern) - bl.MiB)  # no two neighbouring MiB alike
            os.write(fd, view[off:off + bl.MiB])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_back(path: str) -> int:
    buf = bytearray(bl.MiB)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            n += got
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=("local", "s3"), default="local")
    ap.add_argument("--size-gib", type=float, default=20)
    ap.add_argument("--cache-size", help="--cache-size of the S3 mount (default encfs-photo's)")
    ap.add_argument("--base", default="/tmp", help="scratch parent (needs about SIZE free for a local store)")
    args = ap.parse_args()
    bl.need_root()
    size = int(args.size_gib * bl.GiB) // bl.MiB * bl.MiB
    with bl.scratch("encfs-photo-rss-", args.base) as work:
        moto = bl.Moto(work) if args.store == "s3" else None
        v = bl.Vault(work, moto, args.cache_size)
        try:
            v.init()
            v.mount()
            big = os.path.join(v.mnt, "big.bin")
            c0, t0 = bl.cpu_seconds(v.pid), time.monotonic()
            copy_in(big, size)
            if moto:
                v.sync()
            c1, t1 = bl.cpu_seconds(v.pid), time.monotonic()
            hwm_write = bl.status_kib(v.pid, "VmHWM")
            bl.drop_caches()
            c2, t2 = bl.cpu_seconds(v.pid), time.monotonic()
            got = read_back(big)
            c3, t3 = bl.cpu_seconds(v.pid), time.monotonic()
            hwm = bl.status_kib(v.pid, "VmHWM")
            moto_rss = moto.rss_kib() // 1024 if moto else 0
            if got != size:
                print(f"read back {got} bytes of {size}", file=sys.stderr)
                return 1
        finally:
            v.unmount()
            if moto:
                moto.stop()
    gib = size / bl.GiB
    print(f"store={args.store} size_gib={gib:g} cache_size={args.cache_size or 'default'} "
          f"write_MiBps={size / bl.MiB / (t1 - t0):.0f} read_MiBps={size / bl.MiB / (t3 - t2):.0f} "
          f"peak_rss_MiB_after_write={hwm_write // 1024} peak_rss_MiB={hwm // 1024} "
          f"cpu_s_per_GiB_written={(c1 - c0) / gib:.2f} cpu_s_per_GiB_read={(c3 - c2) / gib:.2f}"
          + (f" moto_rss_MiB={moto_rss}" if moto else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
