#!/usr/bin/env python3
"""Where the daemon's time goes in 1 MiB writes and cold 4 KiB reads (py-spy sampling).

    python3 bench/profile_io.py [--store local|s3] [--size-mib 512] [--reads 4000] [--sidecars 500]

Mounts a fresh vault (local folder, or S3 over the harness's moto), then under
`py-spy record --pid <daemon>`: (W) writes SIZE with 1 MiB write(2)s + fsync;
(R) drops the page cache and does READS pread(4 KiB) at random 4 KiB-aligned
offsets (fixed seed); (S) creates SIDECARS files of 8 KiB (open, write, close:
each close is a durability point); (L) remounts with a cold page cache and
runs `ls -l` of that folder; (N, S3 only) wipes the local cache, remounts and
reads the big file back from the bucket with 1 MiB reads. For each phase
prints the client-side latency per call, daemon CPU per call (utime+stime), and
the share of daemon samples (all threads, idle excluded) under each function
of interest (inclusive) and the top functions by own time.
py-spy: `python3 -m venv /tmp/bench-pyspy-venv && /tmp/bench-pyspy-venv/bin/pip install py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

# (label, regex on "function (file:line)" frames), inclusive share of samples
MARKERS = [
    ("FUSE glue: mfusepy/ctypes callbacks", r"\((?:.*/)?mfusepy[^:]*:"),
    ("mount.Operations (path->inode, errno wrapper)", r"\(.*encfs_photo/mount\.py:"),
    ("fs.FileSystem.write", r"^FileSystem\.write \("),
    ("fs.FileSystem.read", r"^FileSystem\.read \("),
    ("fs: commit (flush/fsync/close)", r"^FileSystem\._commit \("),
    ("content: seal/encrypt chunk", r"\(.*encfs_photo/content\.py:"),
    ("crypto.py", r"\(.*encfs_photo/crypto\.py:"),
    ("store (local put/get, write-back cache)", r"\(.*encfs_photo/store/"),
    ("S3 client (botocore, synchronous in the FUSE thread or not)", r"\(.*botocore/"),
    ("lock/queue wait (threading)", r"(?:^|\.)(?:acquire|wait|_wait_for_tstate_lock) \("),
    ("journal/meta", r"\(.*encfs_photo/meta\.py:"),
]


def parse_raw(path: str) -> tuple[int, collections.Counter, collections.Counter, collections.Counter]:
    """py-spy raw lines: 'thread (TID): NAME;frame;...;frame COUNT', frame = 'Class.func (file:line)'.
    C code (os.fsync, AES-GCM in Rust, ctypes) has no frame of its own: it shows as
    the own time of the Python line that called it, hence lines are kept."""
    total = 0
    incl: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            parts = stack.split(";")
            tname = parts[0].split(": ", 1)[-1] if parts[0].startswith("thread (") else "?"
            frames = [fr for fr in parts if fr and not fr.startswith(("thread (", "process "))]
            if not frames:
                continue
            total += n
            threads[re.sub(r"[-_]?\d+\b.*", "", tname) or tname] += n
            for label, rx in MARKERS:
                if any(re.search(rx, fr) for fr in frames):
                    incl[label] += n
            own[re.sub(r"\(.*/", "(", frames[-1])] += n
    return total, incl, own, threads


def report(name: str, raw: str, calls: int, wall: float, cpu: float) -> None:
    total, incl, own, threads = parse_raw(raw)
    print(f"== {name}: {calls} calls in {wall:.2f} s, client {wall / calls * 1e6:.0f} us/call, "
          f"daemon CPU {cpu / calls * 1e6:.0f} us/call ({cpu:.2f} s), {total} py-spy samples "
          f"({total / RATE:.2f} active thread-s)")
    print("   threads: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common()))
    for label, _ in MARKERS:
        if incl[label]:
            print(f"   {100 * incl[label] / total:5.1f}%  {label}")
    print("   top own-time frames:")
    for fr, n in own.most_common(10):
        print(f"   {100 * n / total:5.1f}%  {fr}")


RATE = 200


def profiled(pyspy: str, pid: int, out: str) -> subprocess.Popen:
    p = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
                          "--threads", "--output", out, "--nonblocking"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1.0)  # attach before the phase starts
    return p


def finish(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=("local", "s3"), default="local")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--sidecars", type=int, default=500)
    ap.add_argument("--reads", type=int, default=4000)
    ap.add_argument("--pyspy", default="/tmp/bench-pyspy-venv/bin/py-spy")
    ap.add_argument("--base", default="/tmp")
    ap.add_argument("--out", default=None, help="keep the raw py-spy stacks here (folder)")
    args = ap.parse_args()
    bl.need_root()
    with bl.scratch("encfs-photo-profile-", args.base) as work:
        out = args.out or work
        os.makedirs(out, exist_ok=True)
        moto = bl.Moto(work) if args.store == "s3" else None
        v = bl.Vault(work, moto)
        v.init()
        try:
            v.mount()
            big = os.path.join(v.mnt, "big.bin")
            data = memoryview(os.urandom(64 * bl.MiB))
            spy = profiled(args.pyspy, v.pid, os.path.join(out, "write.txt"))
            c0, t0 = bl.cpu_seconds(v.pid), time.monotonic()
            fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for i in range(args.size_mib):
                off = (i % 63) * bl.MiB
                os.write(fd, data[off:off + bl.MiB])
            os.fsync(fd)
            os.close(fd)
            wall, cpu = time.monotonic() - t0, bl.cpu_seconds(v.pid) - c0
            finish(spy)
            report("1 MiB write(2)s + final fsync", os.path.join(out, "write.txt"), args.size_mib, wall, cpu)

            bl.drop_caches()
            rnd = random.Random(42)
            offs = [rnd.randrange(args.size_mib * 256) * 4096 for _ in range(args.reads)]
            spy = profiled(args.pyspy, v.pid, os.path.join(out, "read.txt"))
            fd = os.open(big, os.O_RDONLY)
            c0, t0 = bl.cpu_seconds(v.pid), time.monotonic()
            for off in offs:
                os.pread(fd, 4096, off)
            wall, cpu = time.monotonic() - t0, bl.cpu_seconds(v.pid) - c0
            os.close(fd)
            finish(spy)
            report("cold 4 KiB pread(2)s", os.path.join(out, "read.txt"), args.reads, wall, cpu)

            side = os.path.join(v.mnt, "sidecars")
            os.mkdir(side)
            small = os.urandom(8192)
            spy = profiled(args.pyspy, v.pid, os.path.join(out, "sidecars.txt"))
            c0, t0 = bl.cpu_seconds(v.pid), time.monotonic()
            for i in range(args.sidecars):
                with open(os.path.join(side, f"IMG_{i:06d}.xmp"), "wb") as f:
                    f.write(small)
            wall, cpu = time.monotonic() - t0, bl.cpu_seconds(v.pid) - c0
            finish(spy)
            report("8 KiB file create+write+close", os.path.join(out, "sidecars.txt"), args.sidecars, wall, cpu)

            # (L) ls -l of the sidecar folder after remount + drop_caches, as the harness's (e)
            v.unmount()
            bl.drop_caches()
            v.mount()
            time.sleep(2)  # let start-up work (upload resume, lease) settle: measure ls alone
            spy = profiled(args.pyspy, v.pid, os.path.join(out, "ls.txt"))
            c0, t0 = bl.cpu_seconds(v.pid), time.monotonic()
            subprocess.run(["ls", "-l", side], check=True, stdout=subprocess.DEVNULL)
            wall, cpu = time.monotonic() - t0, bl.cpu_seconds(v.pid) - c0
            finish(spy)
            report("cold ls -l, per entry", os.path.join(out, "ls.txt"), args.sidecars, wall, cpu)

            if moto:  # (N) sequential 1 MiB reads with the local cache wiped: from the bucket
                v.unmount()
                shutil.rmtree(v.cache)
                bl.drop_caches()
                v.mount()
                spy = profiled(args.pyspy, v.pid, os.path.join(out, "nocache.txt"))
                c0, t0 = bl.cpu_seconds(v.pid), time.monotonic()
                with open(big, "rb", buffering=0) as f:
                    while f.read(bl.MiB):
                        pass
                wall, cpu = time.monotonic() - t0, bl.cpu_seconds(v.pid) - c0
                finish(spy)
                report("1 MiB reads, cache wiped (from the bucket), per MiB", os.path.join(out, "nocache.txt"),
                       args.size_mib, wall, cpu)
        finally:
            v.unmount()
            if moto:
                moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
