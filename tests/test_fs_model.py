"""Stateful model test: random namespace and data operations on fs.FileSystem vs a dict model.

Small blocks and chunks (4 KiB / 16 KiB) so random offsets cross block, chunk
and 64 KiB edges all the time; a remount rule closes the FileSystem and opens
the vault again, so every comparison after it checks what came back from the
store (journal replay and snapshot included).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as st
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from encfs_photo import vault
from encfs_photo.errors import EncfsPhotoError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import ROOT_INO
from encfs_photo.store import MemoryStore

PW = "model"
BS, CS = 4096, 16384
UID, GID = 1000, 1000
NAMES = [b"a", b"b", b"c", b"d\xff", b"e" * 255]
EDGES = sorted({k * m + d for m in (BS, CS, 65536) for k in range(0, 6) for d in (-1, 0, 1)} - {-1})

offsets = hs.one_of(hs.sampled_from(EDGES), hs.integers(0, 6 * CS))
lengths = hs.one_of(hs.sampled_from([0, 1, BS - 1, BS, BS + 1, CS, CS + 1, 2 * CS + 3]), hs.integers(0, 3 * BS))
sizes = hs.one_of(hs.sampled_from(EDGES), hs.integers(0, 6 * CS))


class MFile:
    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.data = bytearray()
        self.nlink = 1


class MLink:
    def __init__(self, ino: int, target: bytes) -> None:
        self.ino = ino
        self.target = target


class MDir:
    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.children: dict[bytes, MFile | MLink | MDir] = {}


def errno_of(fn, *args) -> int | None:
    try:
        fn(*args)
    except EncfsPhotoError as exc:
        return exc.errno
    return None


_TEMPLATE: dict[str, bytes] = {}
_MASTER: list[bytes] = []


def fresh_store() -> tuple[MemoryStore, bytes]:
    """A new empty vault (4 KiB blocks, 16 KiB chunks) and its master key.

    Argon2id runs once per session (test_vault.py covers unlocking); every
    example starts from a copy of the same freshly created vault.
    """
    if not _TEMPLATE:
        old = os.environ.get("ENCFS_PHOTO_FAST_KDF")
        os.environ["ENCFS_PHOTO_FAST_KDF"] = "1"
        try:
            s = MemoryStore()
            vault.create(s, PW, block_size=BS, chunk_size=CS, with_recovery=False)
            v = vault.open_vault(s, passphrase=PW)
            assert (v.block_size, v.chunk_size) == (BS, CS)
            _MASTER.append(v._master)
            _TEMPLATE.update(s.objects)
        finally:
            if old is None:
                del os.environ["ENCFS_PHOTO_FAST_KDF"]
            else:
                os.environ["ENCFS_PHOTO_FAST_KDF"] = old
    store = MemoryStore()
    store.objects.update(_TEMPLATE)
    return store, _MASTER[0]


class LoggedMemoryStore(MemoryStore):
    """A memory store with a local folder, so the FileSystem keeps a close log (DESIGN.md 20) there."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def local_dir(self) -> str:
        return self.folder


class FsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        plain, self.master = fresh_store()
        self.tmp = tempfile.mkdtemp(prefix="encfs-model-")
        self.store = LoggedMemoryStore(self.tmp)
        self.store.objects.update(plain.objects)
        self.fs = self.mount()
        self.root = MDir(ROOT_INO)
        self.counter = 0

    def mount(self) -> FileSystem:
        """Mount from what the store holds (config re-read); skips only the Argon2id unlock."""
        config, _ = vault.read_config(self.store)
        return FileSystem(vault.Vault(self.store, config, self.master))

    def teardown(self) -> None:
        try:
            self.fs.close()
        except EncfsPhotoError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- model helpers

    def dirs(self) -> list[MDir]:
        out, todo = [], [self.root]
        while todo:
            d = todo.pop()
            out.append(d)
            todo += [c for c in d.children.values() if isinstance(c, MDir)]
        return out

    def entries(self) -> list[tuple[MDir, bytes, MFile | MLink | MDir]]:
        return [(d, n, c) for d in self.dirs() for n, c in sorted(d.children.items())]

    def files(self) -> list[tuple[MDir, bytes, MFile]]:
        return [(d, n, c) for d, n, c in self.entries() if isinstance(c, MFile)]

    def payload(self, n: int) -> bytes:
        self.counter += 1
        seed = self.counter.to_bytes(4, "big")
        return (seed * (n // 4 + 1))[:n] if n else b""

    @staticmethod
    def contains(d: MDir, other: MDir) -> bool:
        """True if ``other`` is ``d`` or lies anywhere below it."""
        if d is other:
            return True
        return any(isinstance(c, MDir) and FsModel.contains(c, other) for c in d.children.values())

    # ---- rules

    @rule(data=hs.data(), name=hs.sampled_from(NAMES))
    def create(self, data, name):
        d = data.draw(hs.sampled_from(self.dirs()))
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        if name in d.children:
            assert errno_of(self.fs.create, d.ino, name, 0o644, flags, UID, GID) == errno.EEXIST
            return
        ino, fh = self.fs.create(d.ino, name, 0o644, flags, UID, GID)
        self.fs.release(fh)
        d.children[name] = MFile(ino)

    @precondition(lambda self: self.files())
    @rule(data=hs.data(), offset=offsets, length=lengths, flush=hs.booleans())
    def write(self, data, offset, length, flush):
        _, _, f = data.draw(hs.sampled_from(self.files()))
        chunk = self.payload(length)
        fh = self.fs.open(f.ino, os.O_WRONLY)
        assert self.fs.write(fh, offset, chunk) == length
        if flush:
            self.fs.flush(fh)
        self.fs.release(fh)
        if length:
            if offset > len(f.data):
                f.data.extend(bytes(offset - len(f.data)))
            f.data[offset:offset + length] = chunk

    @precondition(lambda self: self.files())
    @rule(data=hs.data(), size=sizes)
    def truncate(self, data, size):
        _, _, f = data.draw(hs.sampled_from(self.files()))
        self.fs.truncate(f.ino, size)
        if size < len(f.data):
            del f.data[size:]
        else:
            f.data.extend(bytes(size - len(f.data)))

    @precondition(lambda self: self.files())
    @rule(data=hs.data(), offset=offsets, length=lengths, cut=sizes, grow=hs.booleans())
    def write_shrink_grow(self, data, offset, length, cut, grow):
        """Write, truncate down and extend again with no sync between (the dirty-buffer paths)."""
        _, _, f = data.draw(hs.sampled_from(self.files()))
        chunk = self.payload(length)
        fh = self.fs.open(f.ino, os.O_RDWR)
        try:
            self.fs.write(fh, offset, chunk)
            if length:
                if offset > len(f.data):
                    f.data.extend(bytes(offset - len(f.data)))
                f.data[offset:offset + length] = chunk
            cut = min(cut, len(f.data))
            self.fs.ftruncate(fh, cut)
            del f.data[cut:]
            if grow:
                self.fs.ftruncate(fh, cut + length + 100)
                f.data.extend(bytes(length + 100))
            else:
                self.fs.write(fh, cut + 50, b"!")
                f.data.extend(bytes(50) + b"!")
            assert self.fs.read(fh, 0, len(f.data) + 1) == bytes(f.data)
        finally:
            self.fs.release(fh)

    @precondition(lambda self: self.files())
    @rule(data=hs.data(), offset=offsets, length=lengths)
    def read_range(self, data, offset, length):
        _, _, f = data.draw(hs.sampled_from(self.files()))
        fh = self.fs.open(f.ino, os.O_RDONLY)
        try:
            assert self.fs.read(fh, offset, length) == bytes(f.data[offset:offset + length])
        finally:
            self.fs.release(fh)

    @rule(data=hs.data(), name=hs.sampled_from(NAMES))
    def mkdir(self, data, name):
        d = data.draw(hs.sampled_from(self.dirs()))
        if name in d.children:
            assert errno_of(self.fs.mkdir, d.ino, name, 0o755, UID, GID) == errno.EEXIST
            return
        d.children[name] = MDir(self.fs.mkdir(d.ino, name, 0o755, UID, GID))

    @rule(data=hs.data(), name=hs.sampled_from(NAMES), link_target=hs.binary(min_size=1, max_size=40))
    def symlink(self, data, name, link_target):
        d = data.draw(hs.sampled_from(self.dirs()))
        if name in d.children:
            assert errno_of(self.fs.symlink, d.ino, name, link_target, UID, GID) == errno.EEXIST
            return
        d.children[name] = MLink(self.fs.symlink(d.ino, name, link_target, UID, GID), link_target)

    @precondition(lambda self: self.files())
    @rule(data=hs.data(), name=hs.sampled_from(NAMES))
    def link(self, data, name):
        _, _, f = data.draw(hs.sampled_from(self.files()))
        d = data.draw(hs.sampled_from(self.dirs()))
        if name in d.children:
            assert errno_of(self.fs.link, f.ino, d.ino, name) == errno.EEXIST
            return
        self.fs.link(f.ino, d.ino, name)
        d.children[name] = f
        f.nlink += 1

    @precondition(lambda self: self.entries())
    @rule(data=hs.data())
    def unlink(self, data):
        d, name, node = data.draw(hs.sampled_from(self.entries()))
        if isinstance(node, MDir):
            assert errno_of(self.fs.unlink, d.ino, name) == errno.EISDIR
            return
        self.fs.unlink(d.ino, name)
        del d.children[name]
        if isinstance(node, MFile):
            node.nlink -= 1

    @precondition(lambda self: self.entries())
    @rule(data=hs.data())
    def rmdir(self, data):
        d, name, node = data.draw(hs.sampled_from(self.entries()))
        if not isinstance(node, MDir):
            assert errno_of(self.fs.rmdir, d.ino, name) == errno.ENOTDIR
        elif node.children:
            assert errno_of(self.fs.rmdir, d.ino, name) == errno.ENOTEMPTY
        else:
            self.fs.rmdir(d.ino, name)
            del d.children[name]

    @precondition(lambda self: self.entries())
    @rule(data=hs.data(), new_name=hs.sampled_from(NAMES), over_existing=hs.booleans())
    def rename(self, data, new_name, over_existing):
        p1, old_name, src = data.draw(hs.sampled_from(self.entries()))
        if over_existing:  # half the time onto an existing entry: replace, EISDIR, ENOTDIR, ENOTEMPTY, loops
            p2, new_name, _ = data.draw(hs.sampled_from(self.entries()))
        else:
            p2 = data.draw(hs.sampled_from(self.dirs()))
        dst = p2.children.get(new_name)
        expected: set[int] = set()
        if isinstance(src, MDir) and self.contains(src, p2):
            expected.add(errno.EINVAL)
        if dst is not None and dst is not src:
            if isinstance(src, MDir) and not isinstance(dst, MDir):
                expected.add(errno.ENOTDIR)
            elif isinstance(src, MDir) and dst.children:  # type: ignore[union-attr]
                expected.add(errno.ENOTEMPTY)
            elif not isinstance(src, MDir) and isinstance(dst, MDir):
                expected.add(errno.EISDIR)
        got = errno_of(self.fs.rename, p1.ino, old_name, p2.ino, new_name)
        if expected:
            assert got in expected, (got, expected)
            return
        assert got is None
        if dst is src:
            return  # same file under two names: POSIX rename does nothing
        if isinstance(dst, MFile):
            dst.nlink -= 1
        del p1.children[old_name]
        p2.children[new_name] = src

    @rule()
    def sync(self):
        self.fs.sync()
        assert self.fs.status()["dirty_bytes"] == 0
        referenced = {r.key for n in self.fs.ns.inodes.values() for r in n.chunks.values()}
        assert set(self.store.list("data/")) == referenced  # no orphans, nothing missing

    @rule()
    def remount(self):
        self.fs.close()
        self.fs = self.mount()

    @rule()
    def crash_after_a_close(self):
        """What a close() does (one close-log record when it can), then a crash: everything comes back."""
        with self.fs._lock:
            self.fs._durable()
        if self.fs._log is not None:
            self.fs._log.close()  # the kernel closes a dead process's descriptors
        self.fs._stop.set()
        self.fs = self.mount()

    @rule()
    def crash_remount(self):
        """Drop the FileSystem without close (after a sync): what was synced must come back."""
        self.fs.sync()
        self.fs = self.mount()

    # ---- the comparison

    @invariant()
    def same_tree(self):
        fs = self.fs
        seen_files: dict[int, MFile] = {}
        for d in self.dirs():
            listing = dict(fs.readdir(d.ino))
            assert listing.pop(b".") == d.ino
            listing.pop(b"..")
            assert set(listing) == set(d.children), (d.ino, sorted(listing), sorted(d.children))
            subdirs = 0
            for name, node in d.children.items():
                ino = fs.lookup(d.ino, name)
                assert ino == listing[name] == node.ino
                a = fs.getattr(ino)
                if isinstance(node, MDir):
                    subdirs += 1
                    assert st.S_ISDIR(a["st_mode"])
                    assert fs.lookup(ino, b"..") == d.ino
                elif isinstance(node, MLink):
                    assert st.S_ISLNK(a["st_mode"])
                    assert fs.readlink(ino) == node.target
                    assert a["st_size"] == len(node.target) and a["st_nlink"] == 1
                else:
                    assert st.S_ISREG(a["st_mode"])
                    assert a["st_nlink"] == node.nlink
                    assert a["st_size"] == len(node.data)
                    if ino not in seen_files:
                        seen_files[ino] = node
                        fh = fs.open(ino, os.O_RDONLY)
                        try:
                            assert fs.read(fh, 0, len(node.data) + 7) == bytes(node.data)
                        finally:
                            fs.release(fh)
                    assert seen_files[ino] is node
            assert fs.getattr(d.ino)["st_nlink"] == 2 + subdirs
        assert fs.status()["dirty_bytes"] >= 0
        # Every inode the fs holds is reachable in the model (nothing leaked).
        reachable = {d.ino for d in self.dirs()} | {c.ino for _, _, c in self.entries()}
        assert set(fs.ns.inodes) == reachable


FsModel.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                                     report_multiple_bugs=False,
                                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


TestFsModel = FsModel.TestCase
