"""Invariant 7: memory held for a file being written is bounded, whatever its size.

Counts what the filesystem holds (plaintext buffers + ciphertext awaiting a
put) while a file far larger than the bound is written without any commit.
"""

import os

from encfs_photo import vault
from encfs_photo.fs import FileSystem
from encfs_photo.store import LocalStore


def test_held_bytes_stay_bounded_without_commits(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")
    vault.create(LocalStore(str(tmp_path)), "pw")
    cap = 8 << 20
    fs = FileSystem(vault.open_vault(LocalStore(str(tmp_path)), passphrase="pw"), dirty_cap=cap)
    cs = fs.chunk_size
    bound = max(cap, 2 * cs) + 5 * (cs + cs // 64)  # dirty cap + in-flight chunks (4) + one being sealed
    _, fh = fs.create(1, b"video.mov", 0o644, os.O_WRONLY, 0, 0)
    piece = os.urandom(1 << 20)
    peak = 0
    for i in range(160):  # 160 MiB, no fsync, no close, no committer thread
        fs.write(fh, i << 20, piece)
        st = fs.status()
        peak = max(peak, st["dirty_bytes"] + st["pending_put_bytes"])
    assert peak <= bound, (peak, bound)
    fs.flush(fh)
    assert fs.status()["pending_put_bytes"] == 0
    fs.release(fh)
    fs.close()
