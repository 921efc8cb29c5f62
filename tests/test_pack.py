"""Small files are packed, and a write-back store folds queued packs and batches: few PUTs, nothing weaker.

* 2000 sidecars, each written and closed (a commit each), through a
  WriteBackStore over a PUT-counting store: far fewer PUTs than files, and a
  second device (empty cache) reads every file back; ``check --read-data``
  is clean.
* The write-back store's claim/cancel: a claimed put does not upload; an
  uploading put cannot be claimed; a crash between a superseding put and the
  cancel leaves only the newest version to upload.
* Tamper cases for packs: swap two segments of one pack, swap two packs
  between files, truncate a pack, replace a pack by another version of it, and
  replay a superseded (cancelled) batch: EIO or a refusal, never wrong bytes.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time

import pytest
from test_tamper import read_all as read_path
from test_writeback import GatedStore

from encfs_photo import vault
from encfs_photo.check import check
from encfs_photo.content import DATA_PREFIX
from encfs_photo.errors import IntegrityError, PreconditionFailedError, VaultError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import JOURNAL_PREFIX, ROOT_INO
from encfs_photo.store import LocalStore, MemoryStore
from encfs_photo.store.cache import key_to_name
from encfs_photo.store.writeback import WriteBackStore

PW = "pack test"
UID, GID = os.getuid(), os.getgid()
KiB = 1024


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


class CountingStore(GatedStore):
    """Counts the PUTs that reach the bucket."""

    def __init__(self, inner: MemoryStore | None = None) -> None:
        super().__init__(inner)
        self.puts = 0

    def put(self, key, data, *, if_none_match=False, durable=True):
        super().put(key, data, if_none_match=if_none_match, durable=durable)
        self.puts += 1


def sidecar(i: int) -> bytes:
    return random.Random(i).randbytes(8 * KiB)


def write_closed(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    ino, fh = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    fs.write(fh, 0, data)
    fs.flush(fh)  # close(): durable when it returns (in the close log)
    fs.release(fh)
    fs.sync()  # and committed, as every close is where there is no close log: what folding is for
    return ino


def new_vault_store() -> CountingStore:
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    return CountingStore(base)


# ------------------------------------------------------------------ PUT counting


def test_2000_sidecars_cost_few_puts_and_read_back_on_a_second_device(tmp_path):
    """A steady import of closed small files: PUTs per file far below one, and the bucket alone holds them all.

    The write-back delay is longer than the import, so folding stops only at
    the caps (PACK_CAP, FOLD_MAX) or the sync: a bound that does not depend
    on the machine's speed. (A mount's 1 s window gives fewer folds per PUT
    when files arrive slower; test_mount_s3 measures that.)"""
    delay = 3600.0
    bucket = new_vault_store()
    before = bucket.puts
    wb = WriteBackStore(bucket, str(tmp_path / "cache"), write_back_delay=delay)
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    d = fs.mkdir(ROOT_INO, b"xmp", 0o755, UID, GID)
    n = 2000
    for i in range(n):
        write_closed(fs, d, b"IMG_%04d.xmp" % i, sidecar(i))
    fs.sync()
    assert wb.wait_uploaded(timeout=120)
    puts = bucket.puts - before
    assert puts <= n // 20, puts  # at most one PUT per 20 files
    print(f"PUTs for {n} sidecars closed one by one: {puts}")
    fs.close()
    wb.close()
    other = WriteBackStore(bucket, str(tmp_path / "cache2"))  # a second device: nothing cached
    try:
        fs2 = FileSystem(vault.open_vault(other, passphrase=PW))
        for i in range(0, n, 37):
            assert read_path(fs2, b"/xmp/IMG_%04d.xmp" % i) == sidecar(i)
        fs2.close()
        report = check(vault.open_vault(other, passphrase=PW), read_data=True)
        assert report.problems == [] and report.files == n and report.bytes_checked == n * 8 * KiB
    finally:
        other.close()


def test_without_folding_every_close_still_commits_durably(tmp_path):
    """A LocalStore cannot supersede: a pack and a batch per close, as before, and the files survive a crash."""
    store = LocalStore(str(tmp_path / "store"))
    vault.create(store, PW, with_recovery=False)
    fs = FileSystem(vault.open_vault(store, passphrase=PW))
    for i in range(20):
        write_closed(fs, ROOT_INO, b"f%d" % i, sidecar(i))
    # no close: as after kill -9
    fs2 = FileSystem(vault.open_vault(LocalStore(str(tmp_path / "store")), passphrase=PW))
    assert all(read_path(fs2, b"/f%d" % i) == sidecar(i) for i in range(20))
    assert len(list(store.list(JOURNAL_PREFIX))) == 20 and len(list(store.list(DATA_PREFIX))) == 20


def test_rewritten_and_deleted_small_files_leave_no_garbage(tmp_path):
    """Folding drops dead segments; a pack whose every file is gone is deleted after the next commit."""
    bucket = new_vault_store()
    wb = WriteBackStore(bucket, str(tmp_path / "cache"), write_back_delay=3600)
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    fs.sync()  # batch 0, a snapshot: never rewritten, so the files below all fold into batch 1
    for i in range(10):
        write_closed(fs, ROOT_INO, b"a%d" % i, sidecar(i))
    fs.unlink(ROOT_INO, b"a4")
    ino = fs.resolve(b"/a3")
    fh = fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, 0, b"rewritten")
    fs.flush(fh)  # this commit's pack rewrite leaves out a4's segment and a3's old one
    fs.release(fh)
    fs.sync()
    assert wb.wait_uploaded(timeout=60)
    packs = {ref.key for n in fs.ns.inodes.values() for ref in n.chunks.values()}
    assert set(bucket.inner.list(DATA_PREFIX)) == packs and len(packs) == 1
    seg_bytes = sum(len(seg.body) for *_, seg in fs._pack)
    assert seg_bytes == 8 * (8 * KiB + 16) + len(b"rewritten") + 16  # a3's old and a4's segments were dropped
    for i in range(10):
        fs.unlink(ROOT_INO, b"a%d" % i) if i != 4 else None
    fs.sync()
    fs.close()
    wb.close()
    assert list(bucket.inner.list(DATA_PREFIX)) == []


# ------------------------------------------------------------------ the write-back store's claim/cancel


def test_claimed_puts_wait_and_cancelled_ones_never_upload(tmp_path):
    inner = GatedStore()
    wb = WriteBackStore(inner, str(tmp_path / "c"), write_back_delay=3600)
    try:
        wb.put("journal/" + "aa" * 16, b"batch", if_none_match=True)
        wb.put("data/" + "11" * 16, b"first", durable=False)  # held too: a batch waits out its delay
        assert wb.claim(["journal/" + "aa" * 16])
        assert not wb.claim(["journal/" + "aa" * 16])  # one claim at a time
        assert not wb.claim(["data/" + "22" * 16])  # nothing queued under that key
        assert wb.claim(["data/" + "11" * 16])
        wb.unclaim(["data/" + "11" * 16])
        with pytest.raises(PreconditionFailedError):
            wb.put("data/" + "11" * 16, b"x", if_none_match=True)  # not claimed: the key exists
        wb.put("journal/" + "aa" * 16, b"batch v2", if_none_match=True)  # allowed: the old one is claimed
        wb.cancel_claimed(["journal/" + "aa" * 16])
        assert inner.order == []  # the delay holds everything back
        assert wb.wait_uploaded(timeout=30)  # ... but not a wait for uploads
        assert not wb.claim(["journal/" + "aa" * 16])  # uploaded: nothing to supersede
        assert inner.objects["journal/" + "aa" * 16] == b"batch v2"
        assert [k for op, k in inner.order if k.startswith("journal/")] == ["journal/" + "aa" * 16]
    finally:
        wb.close(wait=False)


def test_an_uploading_put_cannot_be_claimed(tmp_path):
    inner = GatedStore()
    wb = WriteBackStore(inner, str(tmp_path / "c"), write_back_delay=0)
    try:
        inner.gate.clear()
        key = "journal/" + "bb" * 16
        wb.put(key, b"x", if_none_match=True)
        for _ in range(500):
            if key in inner.started:
                break
            time.sleep(0.01)
        assert key in inner.started
        assert not wb.claim([key])
        inner.gate.set()
        assert wb.wait_uploaded(timeout=30)
    finally:
        wb.close(wait=False)


def test_a_put_someone_waits_for_cannot_be_claimed(tmp_path):
    """A sync's wait must not return while its changes move into a newer version of the batch."""
    inner = GatedStore()
    inner.gate.clear()
    wb = WriteBackStore(inner, str(tmp_path / "c"), write_back_delay=3600)
    try:
        wb.put("data/" + "33" * 16, b"d", durable=False)
        key = "journal/" + "dd" * 16
        wb.put(key, b"x", if_none_match=True)
        waiter = threading.Thread(target=wb.wait_uploaded)
        waiter.start()
        for _ in range(500):
            if wb._force_below > 0:
                break
            time.sleep(0.01)
        assert not wb.claim([key])
        inner.gate.set()
        waiter.join(timeout=30)
        assert inner.objects[key] == b"x"
    finally:
        wb.close(wait=False)


def test_crash_between_superseding_put_and_cancel_uploads_only_the_newest(tmp_path):
    inner = GatedStore()
    cache = str(tmp_path / "c")
    wb = WriteBackStore(inner, cache, write_back_delay=3600)
    key = "journal/" + "cc" * 16
    wb.put(key, b"v1", if_none_match=True)
    assert wb.claim([key])
    wb.put(key, b"v2", if_none_match=True)
    wb.close(wait=False)  # as a kill -9 before cancel_claimed: both versions are in pending/
    assert len([n for n in os.listdir(os.path.join(cache, "pending")) if key_to_name(key) in n]) == 2
    wb2 = WriteBackStore(inner, cache)
    try:
        assert wb2.wait_uploaded(timeout=30)
        assert inner.objects[key] == b"v2" and wb2.last_error is None
    finally:
        wb2.close()


# ------------------------------------------------------------------ tampering with packs


@pytest.fixture
def packed(tmp_path):
    """A LocalStore vault whose small files were committed together: one pack of several segments."""
    root = str(tmp_path / "store")
    store = LocalStore(root)
    vault.create(store, PW, with_recovery=False)
    fs = FileSystem(vault.open_vault(store, passphrase=PW))
    files = {}
    for i in range(4):
        ino, fh = fs.create(ROOT_INO, b"s%d" % i, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        files[b"/s%d" % i] = sidecar(100 + i)
        fs.write(fh, 0, files[b"/s%d" % i])
        fs.release(fh)
    fs.sync()  # one commit: s0..s3 in one pack
    for i in range(4, 6):
        files[b"/s%d" % i] = sidecar(100 + i)
        write_closed(fs, ROOT_INO, b"s%d" % i, files[b"/s%d" % i])  # one pack each
    refs = {p: fs.ns.inodes[fs.resolve(p)].chunks[0] for p in files}
    fs.close()
    return root, files, refs


def obj_path(root: str, key: str) -> str:
    head, _, tail = key.rpartition("/")
    return os.path.join(root, head, tail[:2], tail)


def reads(root: str, files: dict[bytes, bytes]) -> dict[bytes, str]:
    """Each file: "ok" (right bytes) or "EIO"; wrong bytes fail the test."""
    fs = FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))
    out = {}
    try:
        for p, want in files.items():
            try:
                got = read_path(fs, p)
            except IntegrityError:
                out[p] = "EIO"
                continue
            assert got == want, p
            out[p] = "ok"
    finally:
        fs.close()
    return out


def test_packs_hold_several_files_with_hashes(packed):
    root, files, refs = packed
    assert len({refs[b"/s%d" % i].key for i in range(4)}) == 1
    assert all(r.packed and r.digest is not None for r in refs.values())
    assert [refs[b"/s%d" % i].offset for i in range(4)] == [i * (8 * KiB + 16) for i in range(4)]
    assert set(reads(root, files).values()) == {"ok"}


def test_swapping_two_segments_of_a_pack_is_eio(packed):
    root, files, refs = packed
    p = obj_path(root, refs[b"/s0"].key)
    raw = bytearray(open(p, "rb").read())
    a, b, n = refs[b"/s1"].offset, refs[b"/s2"].offset, 8 * KiB + 16
    raw[a:a + n], raw[b:b + n] = raw[b:b + n], raw[a:a + n]
    with open(p, "wb") as f:
        f.write(raw)
    got = reads(root, files)
    assert got[b"/s1"] == got[b"/s2"] == "EIO"
    assert got[b"/s0"] == got[b"/s3"] == got[b"/s4"] == "ok"


def test_swapping_packs_between_files_is_eio(packed):
    root, files, refs = packed
    p4, p5 = obj_path(root, refs[b"/s4"].key), obj_path(root, refs[b"/s5"].key)
    tmp = p4 + ".x"
    os.rename(p4, tmp)
    os.rename(p5, p4)
    os.rename(tmp, p5)
    got = reads(root, files)
    assert got[b"/s4"] == got[b"/s5"] == "EIO" and got[b"/s0"] == "ok"


def test_truncating_a_pack_is_eio_for_the_segments_cut(packed):
    root, files, refs = packed
    p = obj_path(root, refs[b"/s0"].key)
    with open(p, "r+b") as f:
        f.truncate(refs[b"/s2"].offset + 100)
    got = reads(root, files)
    assert got[b"/s0"] == got[b"/s1"] == "ok"
    assert got[b"/s2"] == got[b"/s3"] == "EIO"
    report = check(vault.open_vault(LocalStore(root), passphrase=PW), read_data=True)
    assert any("/s2" in line for line in report.problems) and any("/s3" in line for line in report.problems)


def test_a_segment_under_another_seal_id_is_eio_even_with_valid_blocks(packed):
    """Copy a whole valid segment of one pack over the same offset of another: its tags fail (AAD binds the seal id)."""
    root, files, refs = packed
    src, dst = obj_path(root, refs[b"/s4"].key), obj_path(root, refs[b"/s0"].key)
    seg = open(src, "rb").read()[:8 * KiB + 16]
    with open(dst, "r+b") as f:
        f.write(seg)
    got = reads(root, files)
    assert got[b"/s0"] == "EIO" and got[b"/s4"] == "ok" and got[b"/s1"] == "ok"


def test_replaying_a_superseded_batch_or_pack_is_detected(tmp_path):
    """Capture an earlier version of a folded batch and pack from the cache, then put them in the bucket.

    Replacing the folded batch by its superseded version: the next batch's
    ``prev`` no longer matches (refused), and on its own (the head) the device
    state refuses it. A superseded pack under the new pack's key: EIO.
    """
    bucket = new_vault_store()
    cache = str(tmp_path / "cache")
    wb = WriteBackStore(bucket, cache, write_back_delay=3600)
    fs = FileSystem(vault.open_vault(wb, passphrase=PW), state_dir=str(tmp_path / "state"))
    write_closed(fs, ROOT_INO, b"x0", sidecar(0))
    fs.sync()  # batch 0 (a snapshot) and its pack upload
    assert wb.wait_uploaded(timeout=30)
    first_batch = next(k for k in bucket.inner.objects if k.startswith(JOURNAL_PREFIX))
    write_closed(fs, ROOT_INO, b"x1", sidecar(1))  # batch 1, queued
    write_closed(fs, ROOT_INO, b"x2", sidecar(2))  # batch 1 rewritten, with a pack of x1 and x2 (or x2 alone)
    pending = os.path.join(cache, "pending")
    old = {n.split("-", 2)[2]: open(os.path.join(pending, n), "rb").read() for n in os.listdir(pending)}
    write_closed(fs, ROOT_INO, b"x3", sidecar(3))  # batch 1 rewritten again, the queued pack too
    now = {n.split("-", 2)[2] for n in os.listdir(pending)}
    batch_name = next(n for n in old if n.startswith("journal~"))
    assert batch_name in now
    old_pack = next(n for n in old if n.startswith("data~") and n not in now)  # cancelled: never uploaded
    fs.sync()
    assert wb.wait_uploaded(timeout=30)  # batch 1 is final now
    write_closed(fs, ROOT_INO, b"x4", sidecar(4))  # batch 2, chained to batch 1's last version
    fs.sync()
    assert wb.wait_uploaded(timeout=30)
    wb.close()  # and no unmount, as after kill -9: batch 2 is the head, batch 1 is replayed
    batch_key = batch_name.replace("~", "/")
    new_pack_key = next(n for n in now if n.startswith("data~") and n not in old).replace("~", "/")
    good = dict(bucket.inner.objects)

    def fresh_open(state: str | None = None) -> FileSystem:
        return FileSystem(vault.open_vault(MemoryStoreView(bucket.inner.objects), passphrase=PW), state_dir=state)

    # 1) the superseded batch replayed under its name, with the later snapshot present: the chain breaks
    bucket.inner.objects[batch_key] = old[batch_name]
    with pytest.raises(IntegrityError):
        fresh_open()
    # 2) ... and with the later snapshot gone too (a rolled-back head): the device state refuses it
    later = [k for k in good if k.startswith(JOURNAL_PREFIX) and k not in (batch_key, first_batch)]
    assert len(later) == 1
    del bucket.inner.objects[later[0]]
    with pytest.raises((IntegrityError, VaultError)):
        fresh_open(str(tmp_path / "state"))
    # 3) the superseded pack under the new pack's key: the files in it read EIO, the rest read fine
    bucket.inner.objects.clear()
    bucket.inner.objects.update(good)
    bucket.inner.objects[new_pack_key] = old[old_pack]
    fs3 = fresh_open()
    try:
        assert read_path(fs3, b"/x0") == sidecar(0)
        # the old pack holds the same sealed segments at the same offsets for the
        # files it had (a rewrite copies them): those read right; x3 was not in it
        assert read_path(fs3, b"/x2") == sidecar(2)
        with pytest.raises(IntegrityError):
            read_path(fs3, b"/x3")
    finally:
        fs3.close()


class MemoryStoreView(MemoryStore):
    """A MemoryStore over an existing dict (a second device reading the bucket directly)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__()
        self.objects = objects


def test_old_records_without_hashes_still_read(tmp_path):
    """Records written before the hash existed (``[index, object, L]``) are read; only the tags protect them."""
    from encfs_photo.meta import Inode
    node = Inode.from_record({"i": 5, "m": 0o100644, "u": 0, "g": 0, "n": 1, "s": 3, "a": 0, "t": 0, "c": 0,
                              "k": [[0, "ab" * 16, 3]]})
    assert node.chunks[0].digest is None and not node.chunks[0].packed
    assert Inode.from_record(node.to_record()).chunks == node.chunks
    with pytest.raises(ValueError):
        Inode.from_record({**node.to_record(), "k": [[0, "ab" * 16, 3, "cd" * 16, "ef" * 16]]})
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_pack_lives_while_any_file_in_it_does_across_remounts(packed):
    """Reference counts are rebuilt at open: deleting some files of a pack keeps it; the last one frees it."""
    root, files, refs = packed
    pack = refs[b"/s0"].key
    fs = FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))
    for i in range(3):
        fs.unlink(ROOT_INO, b"s%d" % i)
    fs.sync()
    assert LocalStore(root).exists(pack)
    assert read_path(fs, b"/s3") == files[b"/s3"]
    fs.unlink(ROOT_INO, b"s3")
    fs.sync()
    fs.close()
    assert not LocalStore(root).exists(pack)
    assert reads(root, {p: d for p, d in files.items() if p in (b"/s4", b"/s5")}) == {b"/s4": "ok", b"/s5": "ok"}
