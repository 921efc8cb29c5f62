"""Crash-test worker: writes files through FileSystem, reports each after fsync.

Run as ``python crash_worker.py STORE SEED [closes]``; prints ``synced NAME
SHA256`` on stdout once fsync (or close) of NAME has returned. The parent kills
it with SIGKILL at a random moment and checks every reported file.

``closes``: sidecar-sized files under their final names, reported as soon as
close() returns (no sync: the close log alone makes them durable), with the
background committer packing them every 50 ms meanwhile.
"""

import hashlib
import os
import random
import sys

os.environ.setdefault("ENCFS_PHOTO_FAST_KDF", "1")

from encfs_photo.fs import FileSystem  # noqa: E402
from encfs_photo.store import LocalStore  # noqa: E402
from encfs_photo.vault import open_vault  # noqa: E402


def main() -> None:
    store, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    fs = FileSystem(open_vault(LocalStore(store), passphrase="pw"), commit_interval=0.05)
    fs.start()  # the background committer runs too: crashes can land inside it
    scratch = fs.resolve(b"/")
    if sys.argv[3:] == ["closes"]:
        closes(fs, scratch, seed, rng)
    n = 0
    while True:
        n += 1
        name = f"s{seed}-{n}".encode()
        size = rng.choice([0, 1, 4095, 65536, 65537, 300_000, 4 * 1024 * 1024 + 3, 9_000_000])
        data = rng.randbytes(size)
        ino, fh = fs.create(scratch, b"tmp-" + name, 0o644, os.O_WRONLY, 0, 0)
        pos = 0
        while pos < size:
            step = rng.choice([4096, 131072, 1 << 20])
            fs.write(fh, pos, data[pos:pos + step])
            pos += step
        if rng.random() < 0.5:
            fs.fsync(fh)
        else:
            fs.flush(fh)  # close() is a durability point too
        fs.release(fh)
        # the editor pattern: temp file, then rename over the final name
        fs.rename(scratch, b"tmp-" + name, scratch, name)
        fs.sync()
        print("synced", name.decode(), hashlib.sha256(data).hexdigest(), flush=True)
        if rng.random() < 0.3:
            # unsynced noise that a crash may or may not keep
            _, fh = fs.create(scratch, b"noise", 0o644, os.O_WRONLY, 0, 0)
            fs.write(fh, 0, rng.randbytes(rng.randint(0, 200_000)))
            fs.release(fh)


def closes(fs: FileSystem, scratch: int, seed: int, rng: random.Random) -> None:
    n = 0
    while True:
        n += 1
        name = f"c{seed}-{n}".encode()
        data = rng.randbytes(rng.choice([0, 100, 8192, 65536, 200_000]))
        ino, fh = fs.create(scratch, name, 0o644, os.O_WRONLY, 0, 0)
        fs.write(fh, 0, data)
        fs.flush(fh)
        print("synced", name.decode(), hashlib.sha256(data).hexdigest(), flush=True)
        fs.release(fh)


if __name__ == "__main__":
    main()
