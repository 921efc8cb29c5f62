"""The close log (DESIGN.md 20): a close() of small files is durable after one append, and a crash loses none.

A crash is simulated the way the kernel ends a killed process: the close log's
file descriptors (and its lock) are closed, nothing else runs (no commit, no
unmount), and a new FileSystem opens the same folder.

* Closes of small files reach the close log only; after a crash every one of
  them (and every metadata change before them) is back, and is committed at
  open.
* A crash between the commit's batch and the next generation replays nothing
  twice; closes logged after a commit whose new generation could not start
  are replayed onto that commit.
* A torn last record (a crash inside an append) at every byte is ignored; a
  damaged record before the last is refused; a log whose base the vault has
  moved past is kept aside, not applied.
* What is never in the log: big files (their close commits), and plaintext.
"""

from __future__ import annotations

import os
import random
import shutil
import stat as st
import struct

import pytest
from test_writeback import _read as read

from encfs_photo import closelog, vault
from encfs_photo.errors import ConflictError, IntegrityError, StoreError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import JOURNAL_PREFIX, ROOT_INO
from encfs_photo.store import LocalStore, MemoryStore
from encfs_photo.store.faulty import FaultyStore
from encfs_photo.store.writeback import WriteBackStore

PW = "close log test"
UID, GID = os.getuid(), os.getgid()
MARKER = b"CLOSELOG-PLAINTEXT-MARKER"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


class Crash(BaseException):
    pass


class Vault:
    """A vault on a folder store (``kind='local'``) or behind a write-back cache (``'cache'``)."""

    def __init__(self, tmp_path, kind: str) -> None:
        self.kind = kind
        self.root = str(tmp_path / "store")
        self.cache = str(tmp_path / "cache")
        self.bucket = MemoryStore()
        vault.create(LocalStore(self.root) if kind == "local" else self.bucket, PW, with_recovery=False)
        self.wb: WriteBackStore | None = None

    def store(self):
        if self.kind == "local":
            return LocalStore(self.root)
        self.wb = WriteBackStore(self.bucket, self.cache, start=False)
        return self.wb

    def open(self, **kw) -> FileSystem:
        return FileSystem(vault.open_vault(self.store(), passphrase=PW), **kw)

    def crash(self, fs: FileSystem) -> None:
        if fs._log is not None:
            fs._log.close()  # what the kernel does with a dead process's descriptors
        fs._stop.set()
        if self.wb is not None:
            self.wb.close(wait=False)  # its queue stays on disk, as after kill -9

    def comes_back(self, fs: FileSystem, want: dict) -> None:
        """Crash ``fs``, open again: the tree is ``want``; then unmount cleanly."""
        self.crash(fs)
        fs = self.open()
        assert tree(fs) == want
        self.close(fs)

    def close(self, fs: FileSystem) -> None:
        fs.close()
        if self.wb is not None:
            self.wb.close(wait=False)
            self.wb = None

    def log_dir(self) -> str:
        return os.path.join(self.root, ".tmp") if self.kind == "local" else self.cache

    def log_path(self) -> str:
        return os.path.join(self.log_dir(), closelog.FILE)

    def batches(self) -> int:
        store = LocalStore(self.root) if self.kind == "local" else self.bucket
        n = len(list(store.list(JOURNAL_PREFIX)))
        if self.wb is not None:
            n += sum(1 for name in os.listdir(os.path.join(self.cache, "pending")) if "journal" in name)
        return n


@pytest.fixture(params=["local", "cache"])
def v(request, tmp_path):
    return Vault(tmp_path, request.param)


def write_closed(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    ino, fh = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    fs.write(fh, 0, data)
    fs.flush(fh)
    fs.release(fh)
    return ino


def tree(fs: FileSystem, ino: int = ROOT_INO, path: bytes = b"") -> dict:
    """Everything a user can see: per path its type, mode, size, link count, xattrs, content or target."""
    out = {}
    for name, child in fs.readdir(ino):
        if name in (b".", b".."):
            continue
        a = fs.getattr(child)
        p = path + b"/" + name
        xattrs = {k: fs.getxattr(child, k) for k in fs.listxattr(child)}
        entry = (st.S_IFMT(a["st_mode"]), a["st_mode"] & 0o7777, a["st_size"], a["st_nlink"], a["st_mtime"],
                 sorted(xattrs.items()))
        if st.S_ISDIR(a["st_mode"]):
            out[p] = entry
            out.update(tree(fs, child, p))
        elif st.S_ISLNK(a["st_mode"]):
            out[p] = entry + (fs.readlink(child),)
        else:
            out[p] = entry + (read(fs, p),)
    return out


def sidecar(i: int) -> bytes:
    return random.Random(i).randbytes(8192) + MARKER


# ------------------------------------------------------------------ the close path


def test_a_close_of_small_files_only_appends_to_the_log_and_survives_a_crash(v):
    fs = v.open()
    fs.sync()
    before = v.batches()
    for i in range(50):
        write_closed(fs, ROOT_INO, f"IMG_{i:04d}.xmp".encode(), sidecar(i))
    assert v.batches() == before  # no batch, no pack: 50 appends
    assert os.path.getsize(v.log_path()) > 50 * 8192
    want = tree(fs)
    v.crash(fs)
    fs = v.open()
    assert tree(fs) == want
    assert v.batches() == before + 1  # the replay is committed at once
    assert not os.path.exists(v.log_path())  # and a new generation has nothing in it yet
    v.close(fs)
    fs = v.open()
    assert tree(fs) == want
    v.close(fs)


def test_every_kind_of_change_before_the_last_close_comes_back(v):
    fs = v.open()
    keep = write_closed(fs, ROOT_INO, b"keep", b"committed before")
    fs.mkdir(ROOT_INO, b"shoot", 0o755, UID, GID)
    fs.sync()
    d = fs.resolve(b"/shoot")
    a = write_closed(fs, d, b"a.xmp", b"a" * 5000)
    write_closed(fs, d, b"b.xmp", b"b" * 7000)
    fs.rename(d, b"b.xmp", ROOT_INO, b"moved.xmp")
    fs.unlink(ROOT_INO, b"keep")  # a committed file, deleted
    fs.symlink(d, b"link", b"../moved.xmp", UID, GID)
    fs.link(a, ROOT_INO, b"hard")
    fs.chmod(a, 0o600)
    fs.setxattr(a, b"user.rating", b"5")
    fs.mkdir(d, b"empty", 0o700, UID, GID)
    # An overwrite that shrinks, and a committed file rewritten in place.
    fh = fs.open(a, os.O_WRONLY)
    fs.truncate(a, 10)
    fs.write(fh, 3, b"XY")
    fs.flush(fh)
    fs.release(fh)
    # Unlinked while open: gone for good after a crash.
    victim = write_closed(fs, ROOT_INO, b"victim", b"v" * 100)
    vfh = fs.open(victim, os.O_RDWR)
    fs.unlink(ROOT_INO, b"victim")
    fs.write(vfh, 0, b"still open")
    last = write_closed(fs, d, b"last.xmp", b"the last close")
    assert keep not in fs.ns.inodes
    want = tree(fs)
    v.crash(fs)
    fs = v.open()
    assert tree(fs) == want
    assert victim not in fs.ns.inodes and last in fs.ns.inodes
    v.close(fs)


def test_fsync_is_a_durability_point_too_and_later_changes_are_not(v):
    fs = v.open()
    ino, fh = fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    fs.write(fh, 0, b"fsynced")
    fs.fsync(fh)
    want = tree(fs)
    fs.write(fh, 0, b"NOT YET")  # neither closed nor fsynced
    fs.mkdir(ROOT_INO, b"later", 0o755, UID, GID)
    v.comes_back(fs, want)


def test_a_big_file_commits_at_close_instead(v):
    fs = v.open()
    write_closed(fs, ROOT_INO, b"small", b"s" * 100)
    before = v.batches()
    write_closed(fs, ROOT_INO, b"big", random.Random(1).randbytes(300 * 1024))  # over SMALL_FILE
    assert v.batches() == before + 1  # one commit, holding the small file as well
    assert not os.path.exists(v.log_path())  # everything logged is in that batch
    want = tree(fs)
    v.comes_back(fs, want)


def test_the_log_holds_no_plaintext(v):
    fs = v.open()
    for i in range(5):
        write_closed(fs, ROOT_INO, b"name-" + MARKER, sidecar(i))
        fs.rename(ROOT_INO, b"name-" + MARKER, ROOT_INO, f"n{i}".encode())
    with open(v.log_path(), "rb") as f:
        raw = f.read()
    assert MARKER not in raw and b"name-" not in raw and b"IMG" not in raw
    v.close(fs)


def test_periodic_commits_cut_packs_of_at_most_the_pack_cap(v):
    from encfs_photo.commit import PACK_CAP
    fs = v.open()
    for i in range(100):  # 800 KiB of sidecars, then one commit
        write_closed(fs, ROOT_INO, f"s{i}".encode(), sidecar(i))
    fs.sync()
    packs = {fs.ns.inodes[fs.resolve(f"/s{i}".encode())].chunks[0].key for i in range(100)}
    assert len(packs) >= 4
    store = fs.vault.store
    assert all(store.stat(k) <= PACK_CAP * 1.13 for k in packs)  # Padmé adds at most 12 %
    v.close(fs)


# ------------------------------------------------------------------ crashes around a commit


def test_a_crash_between_the_batch_and_the_new_generation_replays_nothing_twice(v, monkeypatch):
    fs = v.open()
    for i in range(10):
        write_closed(fs, ROOT_INO, f"f{i}".encode(), sidecar(i))
    want = tree(fs)

    def crash(*a):
        raise Crash()

    monkeypatch.setattr(fs._log, "start", crash)
    with pytest.raises(Crash):
        fs.sync()  # the batch is stored (and its marker logged); the old generation stays
    monkeypatch.undo()
    n = v.batches()
    v.crash(fs)
    fs = v.open()
    assert tree(fs) == want
    assert v.batches() == n  # nothing to replay: the head is the batch the marker names
    assert not [n for n in os.listdir(v.log_dir()) if ".conflict-" in n]  # and nothing looked foreign
    v.close(fs)


def test_closes_after_a_commit_whose_generation_did_not_start_are_replayed_onto_it(v, monkeypatch):
    fs = v.open()
    write_closed(fs, ROOT_INO, b"before", b"before the commit")

    def cannot(*a):
        raise StoreError("close log: removing the last generation: Input/output error")

    monkeypatch.setattr(fs._log, "start", cannot)
    fs.sync()  # committed; the log keeps its generation, with the commit marker
    write_closed(fs, ROOT_INO, b"after", b"after the commit")
    fs.rename(ROOT_INO, b"before", ROOT_INO, b"renamed")
    write_closed(fs, ROOT_INO, b"after2", b"and one more")
    want = tree(fs)
    monkeypatch.undo()
    v.comes_back(fs, want)


def test_a_batch_whose_answer_was_lost_keeps_its_first_marker(tmp_path):
    """The batch landed but its put raised; closes logged before the retry are not in that batch."""
    root = str(tmp_path / "store")
    vault.create(LocalStore(root), PW, with_recovery=False)
    faulty = FaultyStore(LocalStore(root))
    fs = FileSystem(vault.open_vault(faulty, passphrase=PW))
    write_closed(fs, ROOT_INO, b"one", b"1" * 100)
    lose = {"armed": True}

    def lose_once(key):
        if key.startswith(JOURNAL_PREFIX) and lose["armed"]:
            lose["armed"] = False
            return True
        return False

    faulty.lose_replies = lose_once
    with pytest.raises(StoreError):
        fs.sync()  # stored, yet the caller was told it failed
    write_closed(fs, ROOT_INO, b"two", b"2" * 100)  # logged after that batch was built
    # The next commit resends the same batch (it lands again, harmlessly), then
    # fails to store the batch holding "two": the first batch is the head.
    faulty.fail_puts = lambda key: key.startswith(JOURNAL_PREFIX) and len(faulty.puts) > puts_before + 1
    puts_before = len(faulty.puts)
    with pytest.raises(StoreError):
        fs.sync()
    want = tree(fs)
    fs._log.close()
    fs2 = FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))
    assert tree(fs2) == want  # "two" is replayed: the resend did not claim to cover it
    fs2.close()


# ------------------------------------------------------------------ a damaged or foreign log


def _log_with_closes(v, n: int = 3) -> dict:
    fs = v.open()
    fs.sync()
    if v.wb is not None:
        v.wb.start()
        assert v.wb.wait_uploaded(timeout=30)  # the bucket has the head the log extends
    for i in range(n):
        write_closed(fs, ROOT_INO, f"f{i}".encode(), f"file {i}".encode() * 50)
    want = tree(fs)
    v.crash(fs)
    return want


def copy_of(v: Vault, dst) -> Vault:
    """The vault as it is on disk now (store or bucket, cache folder), in ``dst``."""
    w = Vault.__new__(Vault)
    w.kind, w.wb = v.kind, None
    w.root, w.cache = str(dst / "store"), str(dst / "cache")
    w.bucket = MemoryStore()
    if v.kind == "local":
        shutil.copytree(v.root, w.root)
    else:
        w.bucket.objects = dict(v.bucket.objects)
        w.bucket.mtimes = dict(v.bucket.mtimes)
        shutil.copytree(v.cache, w.cache)
    return w


def record_ends(raw: bytes) -> list[int]:
    ends, pos = [], closelog._FIRST
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        pos += 4 + n
        ends.append(pos)
    return ends


def test_a_torn_last_record_is_ignored_at_every_byte(v, tmp_path):
    want = _log_with_closes(v, 3)
    with open(v.log_path(), "rb") as f:
        raw = f.read()
    ends = record_ends(raw)
    assert len(ends) == 4 and ends[-1] == len(raw)  # header and three closes
    two = {k: e for k, e in want.items() if k != b"/f2"}
    for cut in [*range(ends[-2], len(raw), 13), len(raw) - 1]:
        w = copy_of(v, tmp_path / f"cut{cut}")
        with open(w.log_path(), "r+b") as f:
            f.truncate(cut)
        fs = w.open()
        assert tree(fs) == two, cut  # the torn close never returned: it is the only one missing
        w.close(fs)
    w = copy_of(v, tmp_path / "whole")
    fs = w.open()
    assert tree(fs) == want
    w.close(fs)


def test_a_damaged_record_before_the_last_is_refused(v):
    _log_with_closes(v, 3)
    path = v.log_path()
    with open(path, "r+b") as f:
        f.seek(closelog._FIRST + 40)
        b = f.read(1)
        f.seek(closelog._FIRST + 40)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(IntegrityError, match="move the file aside"):
        v.open()
    if v.wb is not None:
        v.wb.close(wait=False)


def test_a_log_whose_base_the_vault_moved_past_is_kept_aside(v, caplog):
    want_logged = _log_with_closes(v, 2)
    # Another mount (another device, another cache) writes to the vault meanwhile.
    if v.kind == "local":
        other = FileSystem(vault.open_vault(LocalStore(v.root), passphrase=PW), close_log=False)
    else:
        other = FileSystem(vault.open_vault(v.bucket, passphrase=PW))
    write_closed(other, ROOT_INO, b"elsewhere", b"from the other mount")
    other.close()
    fs = v.open()
    names = set(tree(fs))
    assert b"/elsewhere" in names and not names & (set(want_logged) - {b"/elsewhere"})
    aside = [n for n in os.listdir(v.log_dir()) if n.startswith(closelog.FILE + ".conflict-")]
    assert len(aside) == 1
    assert "kept aside" in caplog.text
    v.close(fs)


def test_a_second_writer_on_the_folder_commits_per_close(tmp_path):
    root = str(tmp_path / "store")
    vault.create(LocalStore(root), PW, with_recovery=False)
    fs = FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))
    other = FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))
    assert fs._log is not None and other._log is None  # the folder is locked by the first
    fs.close()
    with pytest.raises(ConflictError):
        other.close()  # and the journal's if-none-match stops the second writer, as ever


def test_objects_of_files_deleted_before_the_crash_are_deleted_at_replay(v):
    """The lost mount would have deleted them after its next commit; the replay's commit does."""
    fs = v.open()
    write_closed(fs, ROOT_INO, b"old", b"o" * 3000)
    write_closed(fs, ROOT_INO, b"big", random.Random(2).randbytes(300 * 1024))  # commits both
    store = fs.vault.store
    gone = {fs.ns.inodes[fs.resolve(p)].chunks[0].key for p in (b"/old", b"/big")}
    assert all(store.exists(k) for k in gone)
    fs.unlink(ROOT_INO, b"old")
    fs.unlink(ROOT_INO, b"big")
    write_closed(fs, ROOT_INO, b"new", b"n" * 10)  # logged, with the two unlinks
    want = tree(fs)
    v.crash(fs)
    fs = v.open()
    assert tree(fs) == want
    assert not any(fs.vault.store.exists(k) for k in gone)
    v.close(fs)


def test_a_file_written_then_deleted_before_the_crash_leaves_no_unsaved_bytes(v):
    """Its bytes are in an earlier record, its deletion in a later one: the replay holds neither."""
    fs = v.open()
    write_closed(fs, ROOT_INO, b"gone", b"g" * 100)
    fs.unlink(ROOT_INO, b"gone")
    write_closed(fs, ROOT_INO, b"kept", b"k" * 10)
    want = tree(fs)
    v.crash(fs)
    fs = v.open()
    assert tree(fs) == want
    assert fs.status()["dirty_bytes"] == 0  # nothing left that no commit would ever take
    v.close(fs)
