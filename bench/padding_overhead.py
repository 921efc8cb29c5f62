#!/usr/bin/env python3
"""Store overhead (tags + Padmé padding + metadata) on a folder of real-sized photo files.

    python3 bench/padding_overhead.py [--seed 1] [--scale 1.0]

Builds a shoot the way cameras and editors leave it (sizes drawn from the
ranges below), writes it through `fs.FileSystem` into a fresh vault on a
local folder store (no FUSE), unmounts, and prints plaintext bytes, data-object
bytes, journal bytes, and the overhead of each, as one line per class and a
total. Content is random (incompressible); only sizes matter here.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("ENCFS_PHOTO_FAST_KDF", "1")

from encfs_photo import vault  # noqa: E402
from encfs_photo.fs import FileSystem  # noqa: E402
from encfs_photo.meta import ROOT_INO  # noqa: E402
from encfs_photo.store import LocalStore  # noqa: E402

KiB, MiB = 1024, 1 << 20
# (class, count, min bytes, max bytes): a 45-MP camera's RAWs, its JPEGs, sidecars,
# exported TIFFs and previews, and a video clip.
SHOOT = [
    ("CR3 raw", 60, 38 * MiB, 62 * MiB),
    ("JPEG", 60, 8 * MiB, 18 * MiB),
    ("XMP sidecar", 60, 4 * KiB, 14 * KiB),
    ("TIFF export", 6, 120 * MiB, 260 * MiB),
    ("preview JPEG", 120, 180 * KiB, 900 * KiB),
    ("MP4 clip", 2, 300 * MiB, 700 * MiB),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the file counts")
    args = ap.parse_args()
    r = random.Random(args.seed)
    block = os.urandom(8 * MiB)
    with tempfile.TemporaryDirectory(prefix="padding-") as d:
        store = LocalStore(d)
        vault.create(store, "bench", with_recovery=False)
        fs = FileSystem(vault.open_vault(store, passphrase="bench"))
        plain: dict[str, int] = {}
        files: dict[str, int] = {}
        for cls, count, lo, hi in SHOOT:
            for i in range(max(1, round(count * args.scale))):
                size = r.randint(lo, hi)
                name = f"{cls.split()[0]}_{i:04d}".encode()
                _, fh = fs.create(ROOT_INO, name, 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
                off = 0
                while off < size:
                    n = min(len(block), size - off)
                    fs.write(fh, off, block[:n])
                    off += n
                fs.release(fh)
                plain[cls] = plain.get(cls, 0) + size
                files[cls] = files.get(cls, 0) + 1
        fs.close()
        stored_data = sum(os.path.getsize(os.path.join(p, f)) for p, _, fl in os.walk(os.path.join(d, "data"))
                          for f in fl)
        stored_journal = sum(os.path.getsize(os.path.join(p, f)) for p, _, fl in
                             os.walk(os.path.join(d, "journal")) for f in fl)
        objects = sum(len(fl) for _, _, fl in os.walk(os.path.join(d, "data")))
    total = sum(plain.values())
    for cls, _, _, _ in SHOOT:
        print(f"{cls:13s} {files[cls]:4d} files {plain[cls] / MiB:10.1f} MiB")
    print(f"total plaintext {total / MiB:.1f} MiB in {sum(files.values())} files; data objects {objects}, "
          f"{stored_data / MiB:.1f} MiB (+{100 * (stored_data - total) / total:.3f} %); journal "
          f"{stored_journal / KiB:.1f} KiB (+{100 * stored_journal / total:.4f} %); all "
          f"+{100 * (stored_data + stored_journal - total) / total:.3f} %")


if __name__ == "__main__":
    main()
