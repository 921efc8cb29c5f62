"""POSIX semantics of fs.FileSystem, driven directly (no FUSE) over a LocalStore."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat as st

import pytest

from encfs_photo import fs as fsmod
from encfs_photo import meta, vault
from encfs_photo.errors import EncfsPhotoError, StoreError
from encfs_photo.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, UTIME_NOW, XATTR_CREATE, XATTR_REPLACE, FileSystem
from encfs_photo.meta import ROOT_INO
from encfs_photo.store import LocalStore
from encfs_photo.store.faulty import FaultyStore

PW = "fs test passphrase"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BS, CS = 64 * KiB, 4 * MiB
UID, GID = os.getuid(), os.getgid()


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


class Env:
    """A vault over a LocalStore with path helpers around one FileSystem."""

    def __init__(self, root: str, **fs_kw) -> None:
        self.store = LocalStore(root)
        vault.create(self.store, PW, with_recovery=False)
        self.fs_kw = fs_kw
        self.fs = FileSystem(vault.open_vault(self.store, passphrase=PW), **fs_kw)

    def reopen(self) -> FileSystem:
        """Unmount and mount again: everything must come back from the store."""
        self.fs.close()
        self.fs = FileSystem(vault.open_vault(self.store, passphrase=PW), **self.fs_kw)
        return self.fs

    @staticmethod
    def split(path: bytes) -> tuple[bytes, bytes]:
        head, _, name = path.rpartition(b"/")
        return head or b"/", name

    def ino(self, path: bytes) -> int:
        return self.fs.resolve(path)

    def attr(self, path: bytes) -> dict:
        return self.fs.getattr(self.ino(path))

    def mkdir(self, path: bytes, mode: int = 0o755) -> int:
        head, name = self.split(path)
        return self.fs.mkdir(self.ino(head), name, mode, UID, GID)

    def write_file(self, path: bytes, data: bytes, mode: int = 0o644) -> int:
        head, name = self.split(path)
        ino, fh = self.fs.create(self.ino(head), name, mode, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, UID, GID)
        if data:
            assert self.fs.write(fh, 0, data) == len(data)
        self.fs.flush(fh)
        self.fs.release(fh)
        return ino

    def read_file(self, path: bytes) -> bytes:
        return self.read_ino(self.ino(path))

    def read_ino(self, ino: int) -> bytes:
        fh = self.fs.open(ino, os.O_RDONLY)
        try:
            return self.fs.read(fh, 0, self.fs.getattr(ino)["st_size"] + 10)
        finally:
            self.fs.release(fh)

    def data_keys(self) -> set[str]:
        return set(self.store.list("data/"))

    def referenced_keys(self) -> set[str]:
        return {ref.key for node in self.fs.ns.inodes.values() for ref in node.chunks.values()}


@pytest.fixture
def env(tmp_path):
    e = Env(str(tmp_path / "store"))
    yield e
    try:
        e.fs.close()
    except Exception:  # noqa: BLE001 - the test may have closed it already
        pass


@pytest.fixture
def clock(monkeypatch):
    """A deterministic nanosecond clock: each reading is 1 µs after the previous one."""
    state = {"t": 1_700_000_000_000_000_000}

    def now() -> int:
        state["t"] += 1000
        return state["t"]

    monkeypatch.setattr(meta, "now_ns", now)
    monkeypatch.setattr(fsmod, "now_ns", now)
    return state


def err(fn, *args, **kwargs) -> int:
    with pytest.raises(EncfsPhotoError) as ei:
        fn(*args, **kwargs)
    return ei.value.errno


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------ data across boundaries


def test_write_read_across_block_and_chunk_boundaries(env):
    size = 2 * CS + 12345
    model = bytearray(rand(size, 1))
    ino, fh = env.fs.create(ROOT_INO, b"big", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    cuts = [0, BS - 1, BS + 1, 3 * BS, CS - 1, CS + 1, CS + BS, 2 * CS - 7, 2 * CS + 3, size]
    for a, b in zip(cuts, cuts[1:], strict=False):
        assert env.fs.write(fh, a, bytes(model[a:b])) == b - a
    # Overwrite pieces that straddle a block edge and the chunk edges.
    for off, n, seed in [(BS - 10, 20, 2), (CS - 100, 200, 3), (2 * CS - 1, 2, 4), (5, 3, 5), (size - 4, 4, 6)]:
        piece = rand(n, seed)
        env.fs.write(fh, off, piece)
        model[off:off + n] = piece
    ranges = [(0, 1), (BS - 1, 2), (BS, BS), (BS - 5, 3 * BS), (CS - 1, 2), (CS - BS - 3, 2 * BS + 6),
              (2 * CS - 1, 1), (0, size), (size - 10, 100), (size, 10), (size + 5, 10)]

    def check():
        for off, n in ranges:
            assert env.fs.read(fh, off, n) == bytes(model[off:off + n]), (off, n)

    check()
    assert env.fs.fgetattr(fh)["st_size"] == size
    env.fs.flush(fh)
    check()
    env.fs.release(fh)
    env.reopen()
    ino = env.ino(b"/big")
    fh = env.fs.open(ino, os.O_RDWR)
    check()
    assert env.fs.getattr(ino)["st_size"] == size
    assert len(env.data_keys()) == 3
    env.fs.release(fh)


def test_read_write_small_pieces_at_odd_offsets(env):
    ino, fh = env.fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    model = bytearray()
    r = random.Random(7)
    for i in range(200):
        off = r.randrange(0, 2 * CS + BS)
        n = r.choice([1, 17, 4096, BS, BS + 1, 3 * BS + 5])
        data = r.randbytes(n)
        env.fs.write(fh, off, data)
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off:off + n] = data
        if i % 50 == 49:
            env.fs.fsync(fh)
    assert env.fs.read(fh, 0, len(model) + 1) == bytes(model)
    env.fs.release(fh)
    env.reopen()
    assert env.read_file(b"/f") == bytes(model)
    assert env.data_keys() == env.referenced_keys()


def test_sparse_write_beyond_2GiB_stores_one_chunk(env):
    off = 3 * GiB + 12345
    ino, fh = env.fs.create(ROOT_INO, b"sparse", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    env.fs.write(fh, off, b"tail data")
    env.fs.flush(fh)
    env.fs.release(fh)
    assert env.fs.getattr(ino)["st_size"] == off + 9
    assert len(env.data_keys()) == 1
    env.reopen()
    ino = env.ino(b"/sparse")
    attr = env.fs.getattr(ino)
    assert attr["st_size"] == off + 9
    assert attr["st_blocks"] * 512 < 1 * MiB  # the hole uses no space
    fh = env.fs.open(ino, os.O_RDONLY)
    assert env.fs.read(fh, off - 100, 109) == bytes(100) + b"tail data"
    assert env.fs.read(fh, 0, 1000) == bytes(1000)
    assert env.fs.read(fh, 2 * GiB - 10, 20) == bytes(20)
    assert env.fs.read(fh, off + 9, 100) == b""
    env.fs.release(fh)
    assert len(env.data_keys()) == 1


def test_truncate_up_and_down_then_reopen(env):
    model = bytearray(rand(CS + 300 * KiB, 11))
    ino = env.write_file(b"/t", bytes(model))
    steps = [CS + 100, 3 * CS + 5, 70000, 70000, 200000, 0, BS, 2 * CS]
    for i, size in enumerate(steps):
        env.fs.truncate(ino, size)
        if size < len(model):
            del model[size:]
        else:
            model.extend(bytes(size - len(model)))
        if i == 3:  # write into the truncated tail before syncing
            fh = env.fs.open(ino, os.O_WRONLY)
            env.fs.write(fh, 69990, b"0123456789ABCDEFGHIJ")
            model[69990:70010] = b"0123456789ABCDEFGHIJ"
            env.fs.release(fh)
        if i % 2:
            env.fs.sync()
        assert env.fs.getattr(ino)["st_size"] == len(model)
        assert env.read_ino(ino) == bytes(model), f"step {i}"
    env.fs.sync()
    assert env.data_keys() == env.referenced_keys()
    env.reopen()
    assert env.attr(b"/t")["st_size"] == len(model)
    assert env.read_file(b"/t") == bytes(model)


def test_truncate_down_then_up_reads_zeros_not_old_bytes(env):
    ino = env.write_file(b"/z", b"\xff" * (BS + 1000))
    env.fs.truncate(ino, 10)
    env.fs.sync()
    env.fs.truncate(ino, BS + 1000)
    assert env.read_ino(ino) == b"\xff" * 10 + bytes(BS + 990)
    env.reopen()
    assert env.read_file(b"/z") == b"\xff" * 10 + bytes(BS + 990)


@pytest.mark.parametrize("extend", ["truncate-up", "write-past-end"])
@pytest.mark.parametrize("sync_between", [False, True])
def test_truncate_down_then_extend_without_sync(env, extend, sync_between):
    """Bytes cut off by a truncate never come back, whether the chunk was dirty or stored."""
    ino, fh = env.fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    env.fs.write(fh, 0, b"\xee" * (BS + 500))  # still a dirty buffer
    env.fs.ftruncate(fh, 100)
    if sync_between:
        env.fs.fsync(fh)
    if extend == "truncate-up":
        env.fs.ftruncate(fh, BS + 500)
        expect = b"\xee" * 100 + bytes(BS + 400)
    else:
        env.fs.write(fh, BS + 499, b"!")
        expect = b"\xee" * 100 + bytes(BS + 399) + b"!"
    assert env.fs.read(fh, 0, BS + 600) == expect
    env.fs.release(fh)
    env.reopen()
    assert env.read_file(b"/f") == expect


def test_ftruncate_and_truncate_errors(env):
    ino, fh = env.fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    env.fs.write(fh, 0, b"hello world")
    env.fs.ftruncate(fh, 5)
    assert env.fs.read(fh, 0, 100) == b"hello"
    assert err(env.fs.truncate, ino, -1) == errno.EINVAL
    d = env.mkdir(b"/d")
    assert err(env.fs.truncate, d, 0) == errno.EISDIR
    env.fs.release(fh)


def test_o_append(env):
    ino = env.write_file(b"/log", b"first\n")
    fh = env.fs.open(ino, os.O_WRONLY | os.O_APPEND)
    env.fs.write(fh, 0, b"second\n")
    env.fs.write(fh, 2, b"third\n")
    env.fs.release(fh)
    assert env.read_file(b"/log") == b"first\nsecond\nthird\n"
    big = rand(CS, 3)
    fh = env.fs.open(ino, os.O_RDWR | os.O_APPEND)
    env.fs.write(fh, 0, big)
    env.fs.release(fh)
    env.reopen()
    assert env.read_file(b"/log") == b"first\nsecond\nthird\n" + big


def test_o_trunc(env):
    ino = env.write_file(b"/f", rand(CS + 5, 9))
    keys_before = env.data_keys()
    assert len(keys_before) == 2
    fh = env.fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    assert env.fs.getattr(ino)["st_size"] == 0
    env.fs.write(fh, 0, b"short")
    env.fs.release(fh)
    env.fs.sync()
    assert env.read_file(b"/f") == b"short"
    assert not (env.data_keys() & keys_before)  # the old chunks were collected
    # O_TRUNC on a read-only open does not truncate (as on Linux, O_TRUNC needs write access).
    fh = env.fs.open(ino, os.O_RDONLY | os.O_TRUNC)
    env.fs.release(fh)
    assert env.read_file(b"/f") == b"short"
    # create() of an existing name with O_TRUNC truncates too.
    env.write_file(b"/f", b"")
    env.reopen()
    assert env.read_file(b"/f") == b""


def test_write_on_read_only_handle_is_ebadf(env):
    ino = env.write_file(b"/f", b"abc")
    fh = env.fs.open(ino, os.O_RDONLY)
    assert err(env.fs.write, fh, 0, b"x") == errno.EBADF
    env.fs.release(fh)
    assert err(env.fs.read, fh, 0, 1) == errno.EBADF


def test_overwrites_collect_old_objects(env):
    ino = env.write_file(b"/f", rand(2 * CS, 1))
    for i in range(3):
        fh = env.fs.open(ino, os.O_WRONLY)
        env.fs.write(fh, CS + i, b"x")
        env.fs.release(fh)
    env.fs.sync()
    assert len(env.data_keys()) == 2
    assert env.data_keys() == env.referenced_keys()


# ------------------------------------------------------------------ rename


def test_rename_over_existing_file(env):
    a = env.write_file(b"/a", b"AAAA")
    b = env.write_file(b"/b", rand(BS * 2, 2))
    b_keys = env.data_keys() - {ref.key for ref in env.fs.ns.inodes[a].chunks.values()}
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert err(env.ino, b"/a") == errno.ENOENT
    assert env.ino(b"/b") == a
    assert b not in env.fs.ns.inodes
    env.fs.sync()
    assert not (env.data_keys() & b_keys)
    env.reopen()
    assert env.read_file(b"/b") == b"AAAA"
    assert [n for n, _ in env.fs.readdir(ROOT_INO)] == [b".", b"..", b"b"]


def test_rename_over_existing_empty_dir(env):
    env.mkdir(b"/src")
    env.write_file(b"/src/f", b"in src")
    env.mkdir(b"/dst")
    env.mkdir(b"/p")
    env.mkdir(b"/p/empty")
    assert env.attr(b"/")["st_nlink"] == 5
    env.fs.rename(ROOT_INO, b"src", env.ino(b"/p"), b"empty")
    assert env.attr(b"/")["st_nlink"] == 4
    assert env.attr(b"/p")["st_nlink"] == 3
    assert env.read_file(b"/p/empty/f") == b"in src"
    assert env.fs.lookup(env.ino(b"/p/empty"), b"..") == env.ino(b"/p")
    env.reopen()
    assert env.read_file(b"/p/empty/f") == b"in src"
    assert env.attr(b"/")["st_nlink"] == 4 and env.attr(b"/p")["st_nlink"] == 3
    assert env.fs.lookup(env.ino(b"/p/empty"), b"..") == env.ino(b"/p")


def test_rename_same_name_and_hardlink_alias_is_noop(env):
    ino = env.write_file(b"/f", b"x")
    env.fs.link(ino, ROOT_INO, b"g")
    env.fs.rename(ROOT_INO, b"f", ROOT_INO, b"f")
    env.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g")  # POSIX: both are the same file, nothing happens
    assert env.ino(b"/f") == env.ino(b"/g") == ino
    assert env.fs.getattr(ino)["st_nlink"] == 2


def test_rename_noreplace(env):
    env.write_file(b"/a", b"a")
    env.write_file(b"/b", b"b")
    assert err(env.fs.rename, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE) == errno.EEXIST
    assert env.read_file(b"/a") == b"a" and env.read_file(b"/b") == b"b"
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"c", RENAME_NOREPLACE)
    assert env.read_file(b"/c") == b"a"
    assert err(env.fs.rename, ROOT_INO, b"c", ROOT_INO, b"d", RENAME_NOREPLACE | RENAME_EXCHANGE) == errno.EINVAL
    assert err(env.fs.rename, ROOT_INO, b"c", ROOT_INO, b"d", 64) == errno.EINVAL


def test_rename_exchange_files(env):
    a = env.write_file(b"/a", b"content a")
    b = env.write_file(b"/b", b"content b")
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    assert env.ino(b"/a") == b and env.ino(b"/b") == a
    assert env.read_file(b"/a") == b"content b"
    assert err(env.fs.rename, ROOT_INO, b"a", ROOT_INO, b"zz", RENAME_EXCHANGE) == errno.ENOENT
    env.reopen()
    assert env.read_file(b"/a") == b"content b" and env.read_file(b"/b") == b"content a"


def test_rename_exchange_dirs_in_different_parents(env):
    env.mkdir(b"/p1")
    env.mkdir(b"/p2")
    env.mkdir(b"/p1/d1")
    env.mkdir(b"/p1/d1/sub")
    env.write_file(b"/p1/d1/f1", b"one")
    env.mkdir(b"/p2/d2")
    env.write_file(b"/p2/f", b"file in p2")
    p1, p2 = env.ino(b"/p1"), env.ino(b"/p2")
    d1, d2 = env.ino(b"/p1/d1"), env.ino(b"/p2/d2")
    assert env.fs.getattr(p1)["st_nlink"] == 3 and env.fs.getattr(p2)["st_nlink"] == 3

    env.fs.rename(p1, b"d1", p2, b"d2", RENAME_EXCHANGE)
    assert env.ino(b"/p1/d1") == d2 and env.ino(b"/p2/d2") == d1
    assert env.read_file(b"/p2/d2/f1") == b"one"
    assert env.fs.lookup(d1, b"..") == p2 and env.fs.lookup(d2, b"..") == p1
    assert env.fs.getattr(p1)["st_nlink"] == 3 and env.fs.getattr(p2)["st_nlink"] == 3
    assert env.fs.getattr(d1)["st_nlink"] == 3 and env.fs.getattr(d2)["st_nlink"] == 2

    # A file and a directory between parents: the directory count moves.
    env.fs.rename(p1, b"d1", p2, b"f", RENAME_EXCHANGE)
    assert st.S_ISREG(env.attr(b"/p1/d1")["st_mode"]) and st.S_ISDIR(env.attr(b"/p2/f")["st_mode"])
    assert env.fs.getattr(p1)["st_nlink"] == 2 and env.fs.getattr(p2)["st_nlink"] == 4
    assert env.fs.lookup(d2, b"..") == p2
    assert env.attr(b"/")["st_nlink"] == 4

    env.reopen()
    assert env.read_file(b"/p1/d1") == b"file in p2"
    assert env.read_file(b"/p2/d2/f1") == b"one"
    assert env.fs.getattr(p1)["st_nlink"] == 2 and env.fs.getattr(p2)["st_nlink"] == 4
    assert env.fs.lookup(env.ino(b"/p2/f"), b"..") == p2
    assert env.fs.lookup(env.ino(b"/p2/d2"), b"..") == p2


def test_rename_exchange_with_own_descendant_is_einval(env):
    env.mkdir(b"/a")
    env.mkdir(b"/a/b")
    a = env.ino(b"/a")
    assert err(env.fs.rename, ROOT_INO, b"a", a, b"b", RENAME_EXCHANGE) == errno.EINVAL
    assert err(env.fs.rename, a, b"b", ROOT_INO, b"a", RENAME_EXCHANGE) == errno.EINVAL
    assert env.fs.lookup(a, b"b") == env.ino(b"/a/b")


def test_rename_dir_into_its_own_subdir_is_einval(env):
    env.mkdir(b"/a")
    env.mkdir(b"/a/b")
    env.mkdir(b"/a/b/c")
    a, b, c = env.ino(b"/a"), env.ino(b"/a/b"), env.ino(b"/a/b/c")
    assert err(env.fs.rename, ROOT_INO, b"a", c, b"x") == errno.EINVAL
    assert err(env.fs.rename, ROOT_INO, b"a", a, b"x") == errno.EINVAL
    assert err(env.fs.rename, ROOT_INO, b"a", b, b"c") == errno.EINVAL  # onto an empty descendant
    assert env.fs.lookup(ROOT_INO, b"a") == a and env.fs.lookup(b, b"c") == c
    env.fs.rename(a, b"b", ROOT_INO, b"b2")  # moving a child up is fine
    assert env.fs.lookup(b, b"..") == ROOT_INO
    assert env.fs.getattr(a)["st_nlink"] == 2 and env.attr(b"/")["st_nlink"] == 4


def test_rename_type_errors(env):
    env.mkdir(b"/d")
    env.mkdir(b"/full")
    env.write_file(b"/full/x", b"x")
    env.write_file(b"/f", b"f")
    assert err(env.fs.rename, ROOT_INO, b"f", ROOT_INO, b"d") == errno.EISDIR
    assert err(env.fs.rename, ROOT_INO, b"d", ROOT_INO, b"f") == errno.ENOTDIR
    assert err(env.fs.rename, ROOT_INO, b"d", ROOT_INO, b"full") == errno.ENOTEMPTY
    assert err(env.fs.rename, ROOT_INO, b"missing", ROOT_INO, b"x") == errno.ENOENT
    assert err(env.fs.rename, ROOT_INO, b"f", env.ino(b"/f"), b"x") == errno.ENOTDIR
    assert err(env.fs.rename, ROOT_INO, b"f", ROOT_INO, b"x" * 256) == errno.ENAMETOOLONG
    assert env.read_file(b"/f") == b"f" and env.read_file(b"/full/x") == b"x"


# ------------------------------------------------------------------ errnos


def test_errnos(env):
    env.mkdir(b"/d")
    env.write_file(b"/d/f", b"x")
    f = env.write_file(b"/f", b"y")
    d = env.ino(b"/d")
    assert err(env.fs.rmdir, ROOT_INO, b"d") == errno.ENOTEMPTY
    assert err(env.fs.unlink, ROOT_INO, b"d") == errno.EISDIR
    assert err(env.fs.open, d, os.O_WRONLY) == errno.EISDIR
    assert err(env.fs.open, d, os.O_RDWR) == errno.EISDIR
    assert err(env.fs.rmdir, ROOT_INO, b"f") == errno.ENOTDIR
    assert err(env.fs.lookup, f, b"x") == errno.ENOTDIR
    assert err(env.fs.mkdir, f, b"x", 0o755, UID, GID) == errno.ENOTDIR
    assert err(env.fs.readdir, f) == errno.ENOTDIR
    assert err(env.fs.lookup, ROOT_INO, b"nope") == errno.ENOENT
    assert err(env.fs.unlink, ROOT_INO, b"nope") == errno.ENOENT
    assert err(env.fs.rmdir, ROOT_INO, b"nope") == errno.ENOENT
    assert err(env.fs.getattr, 999999) == errno.ENOENT
    assert err(env.fs.resolve, b"/d/nope/x") == errno.ENOENT
    assert err(env.fs.mkdir, ROOT_INO, b"d", 0o755, UID, GID) == errno.EEXIST
    assert err(env.fs.mkdir, ROOT_INO, b"f", 0o755, UID, GID) == errno.EEXIST
    assert err(env.fs.create, ROOT_INO, b"f", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL, UID, GID) == errno.EEXIST
    assert err(env.fs.link, f, d, b"f") == errno.EEXIST
    assert err(env.fs.symlink, ROOT_INO, b"d", b"target", UID, GID) == errno.EEXIST
    assert err(env.fs.mknod, ROOT_INO, b"f", st.S_IFREG | 0o644, UID, GID) == errno.EEXIST
    assert err(env.fs.link, d, ROOT_INO, b"dlink") == errno.EPERM
    assert err(env.fs.readlink, f) == errno.EINVAL
    assert err(env.fs.rmdir, d, b".") == errno.EINVAL
    assert err(env.fs.mkdir, ROOT_INO, b"a/b", 0o755, UID, GID) == errno.EINVAL
    assert err(env.fs.mkdir, ROOT_INO, b"", 0o755, UID, GID) == errno.EINVAL
    env.fs.unlink(d, b"f")
    env.fs.rmdir(ROOT_INO, b"d")
    assert err(env.fs.lookup, ROOT_INO, b"d") == errno.ENOENT
    assert err(env.fs.getattr, d) == errno.ENOENT
    assert env.attr(b"/")["st_nlink"] == 2


NAME_255 = b"n" * 255
NAME_255_BIN = bytes(range(1, 256)).replace(b"/", b"\xfe")  # every byte value but NUL and '/', not UTF-8
NAME_255_UTF8 = ("é" * 127 + "x").encode()


@pytest.mark.parametrize("name", [NAME_255, NAME_255_BIN, NAME_255_UTF8, b"\xff\xfe\x80 latin-1 \xe9t\xe9"],
                         ids=["ascii", "binary", "utf8", "short-binary"])
def test_long_and_binary_names_work(env, name):
    assert len(NAME_255) == len(NAME_255_BIN) == len(NAME_255_UTF8) == 255
    env.write_file(b"/" + name, b"file " + name)
    env.mkdir(b"/d")
    d = env.ino(b"/d")
    env.fs.mkdir(d, name, 0o755, UID, GID)
    env.fs.symlink(d, name[:-1] + b"L", b"../" + name, UID, GID)
    env.fs.link(env.ino(b"/" + name), d, b"h" + name[1:])
    env.fs.rename(ROOT_INO, name, d, name[:-1] + b"R")
    env.reopen()
    d = env.ino(b"/d")
    names = {n for n, _ in env.fs.readdir(d)}
    assert {name, name[:-1] + b"L", b"h" + name[1:], name[:-1] + b"R"} <= names
    assert env.read_ino(env.fs.lookup(d, name[:-1] + b"R")) == b"file " + name
    assert env.fs.readlink(env.fs.lookup(d, name[:-1] + b"L")) == b"../" + name
    assert env.fs.getattr(env.fs.lookup(d, b"h" + name[1:]))["st_nlink"] == 2


def test_name_of_256_bytes_is_enametoolong(env):
    long = b"x" * 256
    f = env.write_file(b"/f", b"")
    env.mkdir(b"/d")
    assert err(env.fs.create, ROOT_INO, long, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID) == errno.ENAMETOOLONG
    assert err(env.fs.mkdir, ROOT_INO, long, 0o755, UID, GID) == errno.ENAMETOOLONG
    assert err(env.fs.mknod, ROOT_INO, long, st.S_IFREG | 0o644, UID, GID) == errno.ENAMETOOLONG
    assert err(env.fs.symlink, ROOT_INO, long, b"t", UID, GID) == errno.ENAMETOOLONG
    assert err(env.fs.link, f, ROOT_INO, long) == errno.ENAMETOOLONG
    assert err(env.fs.rename, ROOT_INO, b"f", ROOT_INO, long) == errno.ENAMETOOLONG
    assert err(env.fs.lookup, ROOT_INO, long) == errno.ENAMETOOLONG
    assert err(env.fs.symlink, ROOT_INO, b"s", b"t" * 4096, UID, GID) == errno.ENAMETOOLONG
    assert sorted(n for n, _ in env.fs.readdir(ROOT_INO)) == [b".", b"..", b"d", b"f"]


# ------------------------------------------------------------------ links, symlinks, attributes


def test_hard_links(env):
    ino = env.write_file(b"/a", b"shared")
    env.mkdir(b"/d")
    env.fs.link(ino, env.ino(b"/d"), b"b")
    env.fs.link(ino, ROOT_INO, b"c")
    assert env.fs.getattr(ino)["st_nlink"] == 3
    fh = env.fs.open(env.ino(b"/d/b"), os.O_WRONLY | os.O_APPEND)
    env.fs.write(fh, 0, b" bytes")
    env.fs.release(fh)
    assert env.read_file(b"/a") == env.read_file(b"/c") == b"shared bytes"
    env.fs.unlink(ROOT_INO, b"a")
    assert env.fs.getattr(ino)["st_nlink"] == 2
    env.reopen()
    assert env.ino(b"/d/b") == env.ino(b"/c") == ino
    assert env.fs.getattr(ino)["st_nlink"] == 2
    assert env.read_file(b"/c") == b"shared bytes"
    env.fs.unlink(ROOT_INO, b"c")
    env.fs.unlink(env.ino(b"/d"), b"b")
    env.fs.sync()
    assert err(env.fs.getattr, ino) == errno.ENOENT
    assert env.data_keys() == set()


def test_symlinks(env):
    s = env.fs.symlink(ROOT_INO, b"s", b"some/where/../target", UID, GID)
    b = env.fs.symlink(ROOT_INO, b"b", b"\xff\xfebinary target", UID, GID)
    a = env.fs.getattr(s)
    assert st.S_ISLNK(a["st_mode"]) and a["st_size"] == len(b"some/where/../target")
    assert env.fs.readlink(s) == b"some/where/../target"
    env.reopen()
    assert env.fs.readlink(env.ino(b"/s")) == b"some/where/../target"
    assert env.fs.readlink(env.ino(b"/b")) == b"\xff\xfebinary target"
    assert env.ino(b"/b") == b
    env.fs.unlink(ROOT_INO, b"s")
    assert err(env.ino, b"/s") == errno.ENOENT


def test_chmod_chown_utimens_ns_precision(env, clock):
    ino = env.write_file(b"/f", b"data", mode=0o640)
    assert st.S_IMODE(env.fs.getattr(ino)["st_mode"]) == 0o640
    env.fs.chmod(ino, 0o4751)
    assert env.fs.getattr(ino)["st_mode"] == st.S_IFREG | 0o4751
    env.fs.chown(ino, 1234, -1)
    a = env.fs.getattr(ino)
    assert (a["st_uid"], a["st_gid"]) == (1234, GID)
    assert not a["st_mode"] & st.S_ISUID  # chown of an executable drops set-uid
    env.fs.chown(ino, -1, 4321)
    assert env.fs.getattr(ino)["st_gid"] == 4321 and env.fs.getattr(ino)["st_uid"] == 1234
    atime, mtime = 1_234_567_890_123_456_789, 987_654_321_987_654_321
    env.fs.utimens(ino, atime, mtime)
    a = env.fs.getattr(ino)
    assert (a["st_atime"], a["st_mtime"]) == (atime, mtime)
    env.fs.utimens(ino, None, 5)  # None: leave atime alone
    a = env.fs.getattr(ino)
    assert (a["st_atime"], a["st_mtime"]) == (atime, 5)
    env.fs.utimens(ino, 7, None)
    assert (env.fs.getattr(ino)["st_atime"], env.fs.getattr(ino)["st_mtime"]) == (7, 5)
    before = clock["t"]
    env.fs.utimens(ino, UTIME_NOW, None)
    a = env.fs.getattr(ino)
    assert a["st_atime"] > before and a["st_mtime"] == 5 and a["st_ctime"] == a["st_atime"]
    env.fs.utimens(ino, 11, UTIME_NOW)
    a = env.fs.getattr(ino)
    assert a["st_atime"] == 11 and a["st_mtime"] > before
    env.fs.utimens(ino, atime, mtime)
    env.reopen()
    a = env.attr(b"/f")
    assert (a["st_atime"], a["st_mtime"]) == (atime, mtime)
    assert st.S_IMODE(a["st_mode"]) == 0o751 and (a["st_uid"], a["st_gid"]) == (1234, 4321)


def test_ctime_changes_on_chmod_link_rename_and_not_mtime(env, clock):
    ino = env.write_file(b"/f", b"data")
    env.mkdir(b"/d")

    def times():
        a = env.fs.getattr(ino)
        return a["st_ctime"], a["st_mtime"]

    for op in [lambda: env.fs.chmod(ino, 0o600),
               lambda: env.fs.chown(ino, -1, -1),
               lambda: env.fs.link(ino, ROOT_INO, b"g"),
               lambda: env.fs.rename(ROOT_INO, b"f", env.ino(b"/d"), b"f2"),
               lambda: env.fs.setxattr(ino, b"user.k", b"v"),
               lambda: env.fs.unlink(ROOT_INO, b"g")]:
        c0, m0 = times()
        op()
        c1, m1 = times()
        assert c1 > c0 and m1 == m0
    # A write changes both.
    c0, m0 = times()
    fh = env.fs.open(ino, os.O_WRONLY)
    env.fs.write(fh, 0, b"D")
    env.fs.release(fh)
    c1, m1 = times()
    assert c1 > c0 and m1 > m0
    # Directory times: creating and removing entries change mtime and ctime of the parent.
    d = env.ino(b"/d")
    dm = env.fs.getattr(d)["st_mtime"]
    env.write_file(b"/d/new", b"")
    assert env.fs.getattr(d)["st_mtime"] > dm


def test_xattrs(env):
    ino = env.write_file(b"/f", b"x")
    d = env.mkdir(b"/d")
    assert env.fs.listxattr(ino) == []
    assert err(env.fs.getxattr, ino, b"user.none") == errno.ENODATA
    assert err(env.fs.removexattr, ino, b"user.none") == errno.ENODATA
    assert err(env.fs.setxattr, ino, b"user.a", b"1", XATTR_REPLACE) == errno.ENODATA
    env.fs.setxattr(ino, b"user.a", b"1", XATTR_CREATE)
    assert err(env.fs.setxattr, ino, b"user.a", b"2", XATTR_CREATE) == errno.EEXIST
    assert env.fs.getxattr(ino, b"user.a") == b"1"
    env.fs.setxattr(ino, b"user.a", b"3", XATTR_REPLACE)
    env.fs.setxattr(ino, b"user.a", b"4")
    assert env.fs.getxattr(ino, b"user.a") == b"4"
    env.fs.setxattr(ino, b"user.bin", bytes(range(256)))
    env.fs.setxattr(ino, b"user.empty", b"")
    env.fs.setxattr(ino, b"user.\xff\xfe", b"\x00\x01")
    env.fs.setxattr(d, b"user.dir", b"on a dir")
    assert err(env.fs.setxattr, ino, b"user.big", b"x" * 65537) == errno.ERANGE
    assert err(env.fs.setxattr, ino, b"u" * 256, b"x") == errno.ERANGE
    env.fs.setxattr(ino, b"user.gone", b"x")
    env.fs.removexattr(ino, b"user.gone")
    assert err(env.fs.getxattr, ino, b"user.gone") == errno.ENODATA
    env.reopen()
    assert sorted(env.fs.listxattr(ino)) == sorted([b"user.a", b"user.bin", b"user.empty", b"user.\xff\xfe"])
    assert env.fs.getxattr(ino, b"user.bin") == bytes(range(256))
    assert env.fs.getxattr(ino, b"user.empty") == b""
    assert env.fs.getxattr(ino, b"user.\xff\xfe") == b"\x00\x01"
    assert env.fs.getxattr(env.ino(b"/d"), b"user.dir") == b"on a dir"
    assert err(env.fs.getxattr, ino, b"user.gone") == errno.ENODATA


# ------------------------------------------------------------------ unlinked while open


def test_unlinked_while_open_stays_usable_then_is_collected(env):
    keep = env.write_file(b"/keep", b"keep me")
    env.fs.sync()  # its pack is stored now, not with the next commit
    keep_keys = env.data_keys()
    data = rand(CS + 3 * BS, 21)
    ino = env.write_file(b"/victim", data)
    victim_keys = env.data_keys() - keep_keys
    assert len(victim_keys) == 2
    fh = env.fs.open(ino, os.O_RDWR)
    env.fs.unlink(ROOT_INO, b"victim")
    assert err(env.ino, b"/victim") == errno.ENOENT
    assert env.fs.fgetattr(fh)["st_nlink"] == 0
    assert env.fs.read(fh, 0, len(data) + 1) == data
    env.fs.write(fh, CS - 2, b"WXYZ")
    env.fs.fsync(fh)
    expect = data[:CS - 2] + b"WXYZ" + data[CS + 2:]
    assert env.fs.read(fh, 0, len(data) + 1) == expect
    env.fs.sync()
    # Still referenced by an open handle: the file's current objects are in the store.
    live = {ref.key for ref in env.fs.ns.inodes[ino].chunks.values()}
    assert len(live) == 2 and live <= env.data_keys()
    env.fs.release(fh)
    env.fs.sync()
    assert env.data_keys() == keep_keys
    assert err(env.fs.getattr, ino) == errno.ENOENT
    env.reopen()
    assert env.read_file(b"/keep") == b"keep me" and env.ino(b"/keep") == keep
    assert ino not in env.fs.ns.inodes
    assert env.data_keys() == keep_keys


def test_open_unlinked_file_surviving_a_crash_is_purged(env):
    ino = env.write_file(b"/v", rand(BS, 5))
    fh = env.fs.open(ino, os.O_RDONLY)
    env.fs.unlink(ROOT_INO, b"v")
    env.fs.sync()
    assert len(env.data_keys()) == 1
    # Crash: the mount disappears without release or close; the next mount cleans up.
    env.fs = FileSystem(vault.open_vault(env.store, passphrase=PW))
    assert ino not in env.fs.ns.inodes
    env.fs.sync()
    assert env.data_keys() == set()
    del fh


# ------------------------------------------------------------------ memory bound


def test_dirty_bytes_bounded_writing_64MiB(tmp_path):
    cap = 2 * CS  # the smallest cap FileSystem accepts (it keeps room for two chunks)
    e = Env(str(tmp_path / "store"), dirty_cap=cap)
    ino, fh = e.fs.create(ROOT_INO, b"video", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    piece = 128 * KiB
    h = hashlib.sha256()
    peak = 0
    for i in range(64 * MiB // piece):
        data = rand(piece, i) if i % 16 == 0 else bytes([i % 256]) * piece
        h.update(data)
        e.fs.write(fh, i * piece, data)
        peak = max(peak, e.fs.status()["dirty_bytes"])
        assert e.fs.status()["dirty_bytes"] <= cap + CS
    e.fs.release(fh)
    e.fs.sync()
    assert e.fs.status()["dirty_bytes"] == 0
    assert peak > 0
    e.reopen()
    fh = e.fs.open(e.ino(b"/video"), os.O_RDONLY)
    got = hashlib.sha256()
    for off in range(0, 64 * MiB, 1 * MiB):
        got.update(e.fs.read(fh, off, 1 * MiB))
    assert got.digest() == h.digest()
    e.fs.release(fh)
    e.fs.close()


def test_dirty_bytes_bounded_with_scattered_writes(tmp_path):
    cap = 2 * CS
    e = Env(str(tmp_path / "store"), dirty_cap=cap)
    ino, fh = e.fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR | os.O_CREAT, UID, GID)
    piece = 128 * KiB
    order = list(range(16 * MiB // piece))
    random.Random(3).shuffle(order)
    model = bytearray(16 * MiB)
    for i in order:
        data = bytes([i % 251 + 1]) * piece
        e.fs.write(fh, i * piece, data)
        model[i * piece:(i + 1) * piece] = data
        assert e.fs.status()["dirty_bytes"] <= cap + CS
    assert e.fs.read(fh, 0, 16 * MiB) == bytes(model)
    e.fs.release(fh)
    e.fs.sync()
    assert e.fs.status()["dirty_bytes"] == 0
    assert e.data_keys() == e.referenced_keys()
    e.reopen()
    assert e.read_file(b"/f") == bytes(model)
    e.fs.close()


# ------------------------------------------------------------------ read-only, conflicts, store failures


def test_read_only_mount(env):
    ino = env.write_file(b"/f", b"data")
    env.fs.close()
    before = sorted(env.store.list())
    fs = FileSystem(vault.open_vault(env.store, passphrase=PW), read_only=True)
    env.fs = fs
    fh = fs.open(ino, os.O_RDONLY)
    assert fs.read(fh, 0, 10) == b"data"
    fs.release(fh)
    assert err(fs.open, ino, os.O_WRONLY) == errno.EROFS
    assert err(fs.create, ROOT_INO, b"g", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID) == errno.EROFS
    assert err(fs.mkdir, ROOT_INO, b"d", 0o755, UID, GID) == errno.EROFS
    assert err(fs.unlink, ROOT_INO, b"f") == errno.EROFS
    assert err(fs.rename, ROOT_INO, b"f", ROOT_INO, b"g") == errno.EROFS
    assert err(fs.chmod, ino, 0o600) == errno.EROFS
    assert err(fs.setxattr, ino, b"user.x", b"1") == errno.EROFS
    assert err(fs.truncate, ino, 0) == errno.EROFS
    fs.sync()
    fs.close()
    assert sorted(env.store.list()) == before  # a read-only mount writes nothing


def test_second_writer_loses_visibly_and_nothing_is_clobbered(env):
    env.write_file(b"/base", b"base")
    env.fs.sync()
    other = FileSystem(vault.open_vault(env.store, passphrase=PW))  # a second mount of the same vault
    env.write_file(b"/from-first", b"first")
    env.fs.sync()  # committed by the first mount
    ino, fh = other.create(ROOT_INO, b"from-second", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    other.write(fh, 0, b"second")
    with pytest.raises(EncfsPhotoError) as ei:
        other.flush(fh)
    assert "another writer" in str(ei.value)
    assert other.status()["read_only"]
    assert err(other.mkdir, ROOT_INO, b"x", 0o755, UID, GID) == errno.EROFS
    env.reopen()
    assert env.read_file(b"/from-first") == b"first" and env.read_file(b"/base") == b"base"
    assert err(env.ino, b"/from-second") == errno.ENOENT


def test_failed_store_puts_lose_nothing(tmp_path):
    inner = LocalStore(str(tmp_path / "store"))
    vault.create(inner, PW, with_recovery=False)
    store = FaultyStore(inner)
    fs = FileSystem(vault.open_vault(store, passphrase=PW))
    data = rand(CS + BS, 8)
    ino, fh = fs.create(ROOT_INO, b"f", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
    store.fail_puts = lambda key: key.startswith("data/") or key.startswith("journal/")
    fs.write(fh, 0, data)
    with pytest.raises(StoreError) as ei:
        fs.flush(fh)
    assert ei.value.errno == errno.EIO
    store.fail_puts = lambda key: False
    fs.flush(fh)  # the retry stores everything that was acknowledged as written
    fs.release(fh)
    fs.close()
    fs = FileSystem(vault.open_vault(inner, passphrase=PW))
    fh = fs.open(fs.resolve(b"/f"), os.O_RDONLY)
    assert fs.read(fh, 0, len(data) + 1) == data
    fs.release(fh)
    referenced = {r.key for n in fs.ns.inodes.values() for r in n.chunks.values()}
    assert set(inner.list("data/")) == referenced
    fs.close()


# ------------------------------------------------------------------ misc


def test_readdir_and_statfs(env):
    env.mkdir(b"/d")
    env.write_file(b"/d/a", b"")
    env.write_file(b"/d/b", b"")
    d = env.ino(b"/d")
    entries = dict(env.fs.readdir(d))
    assert entries[b"."] == d and entries[b".."] == ROOT_INO
    assert set(entries) == {b".", b"..", b"a", b"b"}
    assert dict(env.fs.readdir(ROOT_INO))[b".."] == ROOT_INO
    s = env.fs.statfs()
    assert s["f_namemax"] == 255 and s["f_bsize"] > 0


def test_setgid_directory_inheritance(env):
    d = env.mkdir(b"/g", 0o2775)
    env.fs.chown(d, -1, 4242)
    sub = env.fs.mkdir(d, b"sub", 0o755, UID, GID)
    f = env.write_file(b"/g/f", b"")
    assert env.fs.getattr(sub)["st_gid"] == 4242 and env.fs.getattr(sub)["st_mode"] & st.S_ISGID
    assert env.fs.getattr(f)["st_gid"] == 4242


def test_reopen_after_many_syncs_replays_journal(env):
    for i in range(30):
        env.write_file(b"/f%d" % i, b"v%d" % i)
        if i % 3 == 0:
            env.fs.unlink(ROOT_INO, b"f%d" % i)
    env.fs.sync()
    # No close: reopen from the delta chain alone (like after a crash).
    fs2 = FileSystem(vault.open_vault(env.store, passphrase=PW))
    names = sorted(n for n, _ in fs2.readdir(ROOT_INO) if n not in (b".", b".."))
    assert names == sorted(b"f%d" % i for i in range(30) if i % 3)
    fh = fs2.open(fs2.resolve(b"/f29"), os.O_RDONLY)
    assert fs2.read(fh, 0, 10) == b"v29"
