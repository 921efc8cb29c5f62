"""A real FUSE mount driven with plain os calls: POSIX behaviour as README "What the mount does" promises.

Every test gets its own vault, mounted in the foreground (conftest.vault_mount);
`remount()` unmounts cleanly and mounts again, so what survives it is what the
store holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import random
import stat
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BLOCK = 64 * KiB
CHUNK = 4 * MiB

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def write_file(path, data: bytes, piece: int = 100_003, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:piece])
            view = view[n:]
    finally:
        os.close(fd)


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pread(path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def errno_of(fn, *args, **kwargs) -> int:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    raise AssertionError(f"{fn.__name__}{args} did not fail")


def renameat2(old, new, flags: int) -> None:
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        pytest.skip("libc has no renameat2")
    r = fn(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


# ------------------------------------------------------------------ file data

SIZES = [0, 1, 4095, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 1, CHUNK - 1, CHUNK, CHUNK + 1,
         2 * CHUNK + BLOCK + 3, 3 * CHUNK + 12345]


def test_sizes_across_block_and_chunk_boundaries(vault_mount):
    vm = vault_mount
    want = {}
    for i, size in enumerate(SIZES):
        name = f"f{i:02d}_{size}"
        want[name] = rnd(size, i)
        piece = 7 if size < 5000 else [100_003, 65536, 1 << 20, 4093 * 3][i % 4]
        write_file(vm.path(name), want[name], piece=piece)
        assert os.stat(vm.path(name)).st_size == size
        assert read_file(vm.path(name)) == want[name]
    # reads straddling boundaries, through pread
    big = "f11_" + str(SIZES[11])
    for off in (BLOCK - 3, CHUNK - 5, 2 * CHUNK - 1, 3 * CHUNK + 12340):
        assert pread(vm.path(big), off, 10) == want[big][off:off + 10]
    vm.remount()
    assert sorted(os.listdir(vm.mnt)) == sorted(want)
    for name, data in want.items():
        assert os.stat(vm.path(name)).st_size == len(data)
        assert read_file(vm.path(name)) == data, name


def test_overwrite_in_place_across_boundaries(vault_mount):
    vm = vault_mount
    p = vm.path("f")
    data = bytearray(rnd(2 * CHUNK + 100, 1))
    write_file(p, bytes(data))
    patches = [(BLOCK - 10, 20), (CHUNK - 7, 14), (CHUNK + BLOCK - 1, 2), (2 * CHUNK + 90, 30), (0, 1)]
    fd = os.open(p, os.O_RDWR)
    try:
        for k, (off, n) in enumerate(patches):
            piece = rnd(n, 100 + k)
            assert os.pwrite(fd, piece, off) == n
            data[off:off + n] = piece
            end = max(len(data), off + n)
            del data[end:]
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data) + 10, 0) == bytes(data)
    finally:
        os.close(fd)
    vm.remount()
    assert read_file(p) == bytes(data)


def test_sparse_file_beyond_2gib(vault_mount):
    vm = vault_mount
    p = vm.path("sparse.bin")
    off = 3 * GiB + 12345
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"HEAD", 0)
        os.pwrite(fd, b"tail", off)
    finally:
        os.close(fd)

    def check():
        st = os.stat(p)
        assert st.st_size == off + 4
        assert st.st_blocks * 512 < 4 * MiB, st.st_blocks  # a hole costs nothing
        assert pread(p, 0, 4) == b"HEAD"
        assert pread(p, 4, MiB) == bytes(MiB)
        for hole in (2 * GiB - 7, 2 * GiB + CHUNK - 3, off - MiB):
            assert pread(p, hole, MiB) == bytes(MiB), hole
        assert pread(p, off - 3, 100) == bytes(3) + b"tail"
        assert pread(p, off + 4, 100) == b""

    check()
    vm.remount()
    check()


def test_truncate_up_and_down(vault_mount):
    vm = vault_mount
    p = vm.path("t")
    data = rnd(CHUNK + 5 * BLOCK + 11, 2)
    write_file(p, data)
    os.truncate(p, CHUNK + 100)
    assert os.stat(p).st_size == CHUNK + 100
    assert read_file(p) == data[:CHUNK + 100]
    os.truncate(p, 70_000)
    assert read_file(p) == data[:70_000]
    os.truncate(p, 2 * CHUNK + 3)  # up: zeros, including where old bytes used to be
    got = read_file(p)
    assert len(got) == 2 * CHUNK + 3
    assert got[:70_000] == data[:70_000] and got[70_000:] == bytes(len(got) - 70_000)
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, BLOCK + 1)
        assert os.fstat(fd).st_size == BLOCK + 1
        os.pwrite(fd, b"Z", BLOCK + 5)  # extends over a gap: the gap reads as zeros
    finally:
        os.close(fd)
    expect = data[:BLOCK + 1] + bytes(4) + b"Z"
    assert read_file(p) == expect
    vm.remount()
    assert read_file(p) == expect
    os.truncate(p, 0)
    assert read_file(p) == b"" and os.stat(p).st_size == 0


def test_o_append(vault_mount):
    vm = vault_mount
    p = vm.path("log.txt")
    write_file(p, b"start\n")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a, b"one\n")
        os.write(b, b"two\n")
        os.write(a, b"three\n")
        os.pwrite(b, b"four\n", 0)  # Linux: pwrite on O_APPEND appends anyway
    finally:
        os.close(a)
        os.close(b)
    want = b"start\none\ntwo\nthree\nfour\n"
    assert read_file(p) == want
    with open(p, "ab") as f:
        f.write(rnd(CHUNK + 10, 3))
    want += rnd(CHUNK + 10, 3)
    assert read_file(p) == want
    vm.remount()
    assert read_file(p) == want


def test_o_trunc(vault_mount):
    vm = vault_mount
    p = vm.path("f")
    write_file(p, rnd(CHUNK + 77, 4))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"short")
    finally:
        os.close(fd)
    assert read_file(p) == b"short"
    with open(p, "w") as f:  # open(..., "w") is O_TRUNC too
        f.write("x")
    vm.remount()
    assert read_file(p) == b"x"


def test_mmap_read_and_write(vault_mount):
    vm = vault_mount
    p = vm.path("mapped.bin")
    data = bytearray(rnd(3 * BLOCK + 100, 5))
    write_file(p, bytes(data))
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        try:
            assert m[:] == bytes(data)  # mmap read
            for off, piece in ((10, b"HELLO"), (BLOCK - 2, b"ACROSS"), (3 * BLOCK + 90, b"END!")):
                m[off:off + len(piece)] = piece
                data[off:off + len(piece)] = piece
            m.flush()
        finally:
            m.close()
    assert read_file(p) == bytes(data)
    vm.remount()
    assert read_file(p) == bytes(data)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[BLOCK - 2:BLOCK + 4] == b"ACROSS"


@pytest.mark.parametrize("how", ["fsync", "fdatasync"])
def test_fsync_is_durable_across_a_crash(vault_mount, how):
    vm = vault_mount
    p = vm.path("durable.bin")
    data = rnd(CHUNK + BLOCK + 9, 6)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        getattr(os, how)(fd)
        vm.kill9()  # the fd is still open: only the fsync made it durable
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    vm.mount()
    assert read_file(p) == data
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_close_is_durable_across_a_crash(vault_mount):
    vm = vault_mount
    write_file(vm.path("closed.bin"), rnd(300_000, 7))
    vm.kill9()
    vm.mount()
    assert read_file(vm.path("closed.bin")) == rnd(300_000, 7)


# ------------------------------------------------------------------ names and renames


def test_rename_files_and_folders(vault_mount):
    vm = vault_mount
    P = vm.path
    os.makedirs(P("a/sub"))
    os.makedirs(P("b"))
    write_file(P("a/f1"), b"one")
    write_file(P("a/sub/f2"), b"two")
    write_file(P("b/target"), b"old target")

    os.rename(P("a/f1"), P("a/f1-renamed"))  # same folder
    os.rename(P("a/f1-renamed"), P("b/target"))  # across folders, over an existing file
    assert read_file(P("b/target")) == b"one"
    assert not os.path.exists(P("a/f1")) and not os.path.exists(P("a/f1-renamed"))

    os.rename(P("a/sub"), P("b/moved"))  # a folder across folders
    assert read_file(P("b/moved/f2")) == b"two"
    os.mkdir(P("empty"))
    os.rename(P("b/moved"), P("empty"))  # a folder over an empty folder
    assert read_file(P("empty/f2")) == b"two"

    os.mkdir(P("full"))
    write_file(P("full/x"), b"x")
    assert errno_of(os.rename, P("empty"), P("full")) == errno.ENOTEMPTY
    assert errno_of(os.rename, P("b/target"), P("full")) == errno.EISDIR
    assert errno_of(os.rename, P("full"), P("b/target")) == errno.ENOTDIR
    assert errno_of(os.rename, P("full"), P("full/inside")) == errno.EINVAL
    assert errno_of(os.rename, P("nope"), P("x")) == errno.ENOENT

    # folder nlink follows moves
    assert os.stat(P("b")).st_nlink == 2
    assert os.stat(P("a")).st_nlink == 2
    tree = sorted((os.path.relpath(d, vm.mnt), sorted(ds), sorted(fs)) for d, ds, fs in os.walk(vm.mnt))
    vm.remount()
    assert sorted((os.path.relpath(d, vm.mnt), sorted(ds), sorted(fs)) for d, ds, fs in os.walk(vm.mnt)) == tree
    assert read_file(P("b/target")) == b"one"
    assert read_file(P("empty/f2")) == b"two"


def test_safe_save_pattern(vault_mount):
    vm = vault_mount
    target = vm.path("catalog.lrcat")
    write_file(target, b"version 1" * 1000)
    reader = open(target, "rb")  # an open reader keeps seeing the old file
    try:
        for v in (2, 3):
            tmp = vm.path(f".catalog.lrcat.tmp{v}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, f"version {v}".encode() * 1000)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            dfd = os.open(vm.mnt, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            assert read_file(target) == f"version {v}".encode() * 1000
        assert reader.read() == b"version 1" * 1000
    finally:
        reader.close()
    assert os.listdir(vm.mnt) == ["catalog.lrcat"]
    vm.remount()
    assert os.listdir(vm.mnt) == ["catalog.lrcat"]
    assert read_file(target) == b"version 3" * 1000


def test_renameat2_flags(vault_mount):
    vm = vault_mount
    P = vm.path
    write_file(P("a"), b"AAA")
    write_file(P("b"), b"BBB")
    os.mkdir(P("d"))
    write_file(P("d/inner"), b"inner")

    with pytest.raises(OSError) as ei:
        renameat2(P("a"), P("b"), RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    assert read_file(P("a")) == b"AAA" and read_file(P("b")) == b"BBB"
    renameat2(P("a"), P("c"), RENAME_NOREPLACE)  # no target: a plain rename
    assert read_file(P("c")) == b"AAA" and not os.path.exists(P("a"))

    renameat2(P("c"), P("b"), RENAME_EXCHANGE)
    assert read_file(P("c")) == b"BBB" and read_file(P("b")) == b"AAA"
    renameat2(P("b"), P("d"), RENAME_EXCHANGE)  # a file and a folder
    assert read_file(P("b/inner")) == b"inner" and read_file(P("d")) == b"AAA"
    with pytest.raises(OSError) as ei:
        renameat2(P("c"), P("missing"), RENAME_EXCHANGE)
    assert ei.value.errno == errno.ENOENT

    before = sorted(os.listdir(vm.mnt))
    for flags in (RENAME_WHITEOUT, RENAME_NOREPLACE | RENAME_EXCHANGE, 1 << 5):
        with pytest.raises(OSError) as ei:
            renameat2(P("c"), P("e"), flags)
        assert ei.value.errno == errno.EINVAL, flags
        with pytest.raises(OSError) as ei:
            renameat2(P("c"), P("d"), flags)
        assert ei.value.errno == errno.EINVAL, flags
    assert sorted(os.listdir(vm.mnt)) == before
    assert read_file(P("c")) == b"BBB" and read_file(P("d")) == b"AAA"
    vm.remount()
    assert read_file(P("c")) == b"BBB" and read_file(P("d")) == b"AAA" and read_file(P("b/inner")) == b"inner"


def test_name_length_limits_and_non_utf8_names(vault_mount):
    vm = vault_mount
    root = os.fsencode(vm.mnt)
    names = [b"\xff\xfe" + b"n" * 253, "é".encode() * 127 + b"x", b"a" * 255, b"\x80weird\x01\x7f name"]
    for i, name in enumerate(names):
        assert len(name) <= 255
        write_file(root + b"/" + name, name + bytes([i]))
    long_dir = b"D" * 255
    os.mkdir(root + b"/" + long_dir)
    os.symlink(b"target-of-long-link", root + b"/" + long_dir + b"/" + b"L" * 255)
    assert sorted(os.listdir(root)) == sorted(names + [long_dir])

    too_long = b"x" * 256
    p = root + b"/" + too_long
    assert errno_of(os.open, p, os.O_WRONLY | os.O_CREAT, 0o644) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, p) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, b"t", p) == errno.ENAMETOOLONG
    assert errno_of(os.link, root + b"/" + names[0], p) == errno.ENAMETOOLONG
    assert errno_of(os.rename, root + b"/" + names[0], p) == errno.ENAMETOOLONG
    assert errno_of(os.stat, p) == errno.ENAMETOOLONG
    vm.remount()
    assert sorted(os.listdir(root)) == sorted(names + [long_dir])
    for i, name in enumerate(names):
        assert read_file(root + b"/" + name) == name + bytes([i])
    assert os.readlink(root + b"/" + long_dir + b"/" + b"L" * 255) == b"target-of-long-link"


def test_folder_with_10000_entries(vault_mount):
    vm = vault_mount
    d = vm.path("big")
    os.mkdir(d)
    names = {f"IMG_{i:05d}.CR3" for i in range(10_000)}
    for n in names:
        os.mknod(os.path.join(d, n), 0o644 | stat.S_IFREG)
    assert len(os.listdir(d)) == 10_000
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        assert sum(1 for e in it if e.is_file()) == 10_000
    vm.remount()
    assert set(os.listdir(d)) == names
    os.unlink(os.path.join(d, "IMG_00042.CR3"))
    assert len(os.listdir(d)) == 9_999


def test_listing_carries_each_entrys_attributes(vault_mount):
    """READDIRPLUS (mount._Fuse.readdir_fuse_3): what a listing tells the kernel is each file's own stat."""
    vm = vault_mount
    d = vm.path("shoot")
    os.mkdir(d)
    want = {}
    for i in range(600):  # several READDIRPLUS replies: offsets resume where the last one stopped
        p = os.path.join(d, f"IMG_{i:04d}" + "x" * (i % 40))
        write_file(p, rnd(i * 37 % 5000, i))
        os.chmod(p, 0o600 | (i % 2) * 0o044)
        os.utime(p, ns=(i * 10**9, (i + 1) * 10**9 + i))
        want[os.path.basename(p)] = (i * 37 % 5000, 0o600 | (i % 2) * 0o044, (i + 1) * 10**9 + i)
    os.symlink("IMG_0001x", os.path.join(d, "link"))
    vm.remount()
    with open("/proc/sys/vm/drop_caches", "w") if os.geteuid() == 0 else open(os.devnull, "w") as f:
        f.write("3\n")
    with os.scandir(d) as it:
        entries = sorted(it, key=lambda e: e.name)
    assert [e.name for e in entries] == sorted([*want, "link"])
    for e in entries:
        s = e.stat(follow_symlinks=False)
        if e.name == "link":
            assert e.is_symlink() and stat.S_ISLNK(s.st_mode) and s.st_size == len("IMG_0001x")
            continue
        size, mode, mtime = want[e.name]
        assert (s.st_size, stat.S_IMODE(s.st_mode), s.st_mtime_ns) == (size, mode, mtime), e.name
        assert stat.S_ISREG(s.st_mode) and s.st_nlink == 1
    out = subprocess.run(["ls", "-l", d], check=True, capture_output=True, text=True).stdout
    assert len(out.splitlines()) == 1 + len(want) + 1  # "total" and one line each


def test_getxattr_size_query_and_small_buffer(vault_mount):
    """mount._Fuse.getxattr answers without exceptions: a size query, ERANGE, and ENODATA."""
    libc = ctypes.CDLL(None, use_errno=True)
    p = vault_mount.path("f")
    write_file(p, b"x")
    os.setxattr(p, "user.k", b"0123456789")
    bp = os.fsencode(p)
    assert libc.getxattr(bp, b"user.k", None, 0) == 10
    buf = ctypes.create_string_buffer(4)
    assert libc.getxattr(bp, b"user.k", buf, 4) == -1 and ctypes.get_errno() == errno.ERANGE
    buf = ctypes.create_string_buffer(16)
    assert libc.getxattr(bp, b"user.k", buf, 16) == 10 and buf.raw[:10] == b"0123456789"
    assert libc.getxattr(bp, b"security.selinux", buf, 16) == -1 and ctypes.get_errno() == errno.ENODATA
    assert errno_of(os.getxattr, vault_mount.path("missing"), "user.k") == errno.ENOENT


# ------------------------------------------------------------------ links and attributes


def test_symlinks(vault_mount):
    vm = vault_mount
    P = vm.path
    os.mkdir(P("dir"))
    write_file(P("dir/real.txt"), b"real")
    os.symlink("dir/real.txt", P("rel"))
    os.symlink(P("dir/real.txt"), P("abs"))
    os.symlink("no/such/target", P("dangling"))
    os.symlink("dir", P("dirlink"))
    assert os.readlink(P("rel")) == "dir/real.txt"
    st = os.lstat(P("rel"))
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("dir/real.txt")
    assert read_file(P("rel")) == b"real" and read_file(P("abs")) == b"real"
    assert read_file(P("dirlink/real.txt")) == b"real"
    assert not os.path.exists(P("dangling")) and os.path.lexists(P("dangling"))
    assert errno_of(os.readlink, P("dir/real.txt")) == errno.EINVAL
    assert errno_of(os.symlink, "x", P("rel")) == errno.EEXIST
    vm.remount()
    assert os.readlink(P("rel")) == "dir/real.txt"
    assert os.readlink(P("abs")) == P("dir/real.txt")
    assert os.readlink(P("dangling")) == "no/such/target"
    assert read_file(P("dirlink/real.txt")) == b"real"
    os.unlink(P("rel"))
    assert read_file(P("dir/real.txt")) == b"real"


def test_hard_links(vault_mount):
    vm = vault_mount
    P = vm.path
    os.mkdir(P("d"))
    write_file(P("orig"), b"shared")
    os.link(P("orig"), P("d/second"))
    a, b = os.stat(P("orig")), os.stat(P("d/second"))
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    assert read_file(P("d/second")) == b"shared"
    with open(P("d/second"), "ab") as f:
        f.write(b" bytes")
    assert read_file(P("d/second")) == b"shared bytes"
    assert errno_of(os.link, P("d"), P("dlink")) == errno.EPERM
    assert errno_of(os.link, P("orig"), P("d/second")) == errno.EEXIST
    vm.remount()
    a, b = os.stat(P("orig")), os.stat(P("d/second"))
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert read_file(P("orig")) == b"shared bytes"  # one inode: written through one name, read through the other
    os.unlink(P("orig"))
    assert read_file(P("d/second")) == b"shared bytes"
    vm.remount()  # (the other name's cached st_nlink is stale until attr_timeout: see the xfail below)
    assert os.stat(P("d/second")).st_nlink == 1 and not os.path.exists(P("orig"))


@pytest.mark.xfail(strict=False, reason="libfuse's high-level API gives each hard link its own kernel inode: "
                   "the other name's cached size and nlink are stale for attr_timeout (1 s)")
def test_hard_link_sees_write_through_other_name_at_once(vault_mount):
    vm = vault_mount
    write_file(vm.path("orig"), b"shared")
    os.link(vm.path("orig"), vm.path("second"))
    assert os.stat(vm.path("orig")).st_size == 6  # the kernel now caches orig's size
    with open(vm.path("second"), "ab") as f:
        f.write(b" bytes")
    assert read_file(vm.path("orig")) == b"shared bytes"
    os.unlink(vm.path("second"))
    assert os.stat(vm.path("orig")).st_nlink == 1


def test_chmod_chown_and_ctime(vault_mount):
    vm = vault_mount
    p = vm.path("f")
    write_file(p, b"x")
    before = os.stat(p)
    os.chmod(p, 0o4750)
    after = os.stat(p)
    assert stat.S_IMODE(after.st_mode) == 0o4750 and stat.S_ISREG(after.st_mode)
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns
    os.mkdir(vm.path("d"), 0o700)
    os.chmod(vm.path("d"), 0o2775)
    assert stat.S_IMODE(os.stat(vm.path("d")).st_mode) == 0o2775
    if os.geteuid() == 0:
        os.chown(p, 1234, 5678)
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert stat.S_IMODE(st.st_mode) & 0o4000 == 0  # chown of an executable drops setuid, as ext4
        os.chown(p, -1, 42)
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 42)
        os.lchown(vm.path("d"), 7, 8)
    vm.remount()
    st = os.stat(p)
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 42)
        assert (os.stat(vm.path("d")).st_uid, os.stat(vm.path("d")).st_gid) == (7, 8)
    assert stat.S_IMODE(os.stat(vm.path("d")).st_mode) == 0o2775


def test_new_files_owned_by_caller(vault_mount):
    vm = vault_mount
    write_file(vm.path("mine"), b"x")
    st = os.stat(vm.path("mine"))
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_utime_nanoseconds_now_and_omit(vault_mount):
    vm = vault_mount
    p = vm.path("f")
    write_file(p, b"x")
    A, M = 1_234_567_890_123_456_789, 1_500_000_000_987_654_321
    os.utime(p, ns=(A, M))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (A, M)

    # UTIME_OMIT leaves one time alone
    utimensat(p, (0, UTIME_OMIT), (1_600_000_000, 5))
    st = os.stat(p)
    assert st.st_atime_ns == A and st.st_mtime_ns == 1_600_000_000_000_000_005
    t0 = time.time_ns()
    utimensat(p, (0, UTIME_NOW), (0, UTIME_OMIT))
    t1 = time.time_ns()
    st = os.stat(p)
    assert t0 - 10**9 <= st.st_atime_ns <= t1 + 10**9  # set to "now" (by the daemon's clock)
    assert st.st_mtime_ns == 1_600_000_000_000_000_005
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_OMIT))
    assert os.stat(p).st_mtime_ns == 1_600_000_000_000_000_005

    os.utime(p)  # both now
    st = os.stat(p)
    assert st.st_mtime_ns >= t0 - 10**9 and st.st_mtime_ns != 1_600_000_000_000_000_005

    # a folder and a symlink (without following it)
    os.mkdir(vm.path("d"))
    os.utime(vm.path("d"), ns=(A, M))
    os.symlink("f", vm.path("l"))
    os.utime(vm.path("l"), ns=(A + 1, M + 1), follow_symlinks=False)
    vm.remount()
    assert os.stat(vm.path("d")).st_mtime_ns == M
    assert os.lstat(vm.path("l")).st_mtime_ns == M + 1
    assert os.stat(vm.path("d")).st_atime_ns == A


def test_mtime_and_ctime_change_on_write(vault_mount):
    vm = vault_mount
    p = vm.path("f")
    write_file(p, b"x")
    os.utime(p, ns=(10**18, 10**18))
    st0 = os.stat(p)
    with open(p, "ab") as f:
        f.write(b"y")
    st1 = os.stat(p)
    assert st1.st_mtime_ns != 10**18
    assert st1.st_ctime_ns > st0.st_ctime_ns
    assert st1.st_size == 2


def test_xattrs(vault_mount):
    vm = vault_mount
    p = vm.path("photo.jpg")
    write_file(p, b"jpeg")
    os.setxattr(p, "user.rating", b"5")
    os.setxattr(p, "user.binary", b"\x00\xff\x00" * 1000)
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.rating") == b"5"
    assert os.getxattr(p, "user.binary") == b"\x00\xff\x00" * 1000
    assert os.getxattr(p, "user.empty") == b""
    assert sorted(os.listxattr(p)) == ["user.binary", "user.empty", "user.rating"]

    assert errno_of(os.setxattr, p, "user.rating", b"4", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p, "user.missing", b"4", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.rating", b"4", os.XATTR_REPLACE)
    os.setxattr(p, "user.new", b"n", os.XATTR_CREATE)
    assert os.getxattr(p, "user.rating") == b"4"
    assert errno_of(os.getxattr, p, "user.missing") == errno.ENODATA
    assert errno_of(os.removexattr, p, "user.missing") == errno.ENODATA
    os.removexattr(p, "user.empty")

    os.mkdir(vm.path("d"))
    os.setxattr(vm.path("d"), "user.folder", b"yes")
    ctime = os.stat(p).st_ctime_ns
    os.setxattr(p, "user.rating", b"3")
    assert os.stat(p).st_ctime_ns > ctime

    vm.remount()
    assert sorted(os.listxattr(p)) == ["user.binary", "user.new", "user.rating"]
    assert os.getxattr(p, "user.rating") == b"3"
    assert os.getxattr(p, "user.binary") == b"\x00\xff\x00" * 1000
    assert os.getxattr(vm.path("d"), "user.folder") == b"yes"


def test_unlinked_while_open(vault_mount):
    vm = vault_mount
    p = vm.path("tmpfile")
    data = rnd(CHUNK + 1000, 8)
    write_file(p, data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not os.path.exists(p)
        assert os.listdir(vm.mnt) == []  # no .fuse_hidden file
        assert os.pread(fd, 100, CHUNK - 50) == data[CHUNK - 50:CHUNK + 50]
        os.pwrite(fd, b"still writable", CHUNK + 1000)
        assert os.pread(fd, 100, CHUNK + 990) == data[CHUNK + 990:] + b"still writable"
        os.fsync(fd)
        os.ftruncate(fd, 10)
        assert os.pread(fd, 100, 0) == data[:10]
        write_file(p, b"a new file under the old name")
        assert os.pread(fd, 100, 0) == data[:10]
        os.pwrite(fd, b"more", 10)
        assert os.pread(fd, 100, 0) == data[:10] + b"more"
    finally:
        os.close(fd)
    assert os.listdir(vm.mnt) == ["tmpfile"]
    assert read_file(p) == b"a new file under the old name"
    vm.remount()
    assert os.listdir(vm.mnt) == ["tmpfile"]
    assert read_file(p) == b"a new file under the old name"


def test_fstat_of_unlinked_open_file(vault_mount):
    p = vault_mount.path("f")
    d = vault_mount.path("d")
    os.mkdir(d)
    write_file(p, b"12345")
    write_file(os.path.join(d, "g"), b"in a folder")
    fd = os.open(p, os.O_RDWR)
    fd2 = os.open(os.path.join(d, "g"), os.O_RDONLY)
    try:
        os.unlink(p)
        os.unlink(os.path.join(d, "g"))
        os.pwrite(fd, b"678", 5)  # invalidates the kernel's cached attributes
        st = os.fstat(fd)
        assert st.st_size == 8 and st.st_nlink == 0
        assert os.pread(fd, 100, 0) == b"12345678"
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2
        assert os.listdir(vault_mount.mnt) == ["d"]  # no .fuse_hidden entries show
        os.rmdir(d)  # the folder of an unlinked open file is empty, as on ext4
        assert os.pread(fd2, 100, 0) == b"in a folder"
    finally:
        os.close(fd)
        os.close(fd2)
    assert os.listdir(vault_mount.mnt) == []
    vault_mount.remount()
    assert os.listdir(vault_mount.mnt) == []


def test_errnos(vault_mount):
    vm = vault_mount
    P = vm.path
    os.mkdir(P("d"))
    write_file(P("d/f"), b"x")
    assert errno_of(os.open, P("missing"), os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.stat, P("missing/deeper")) == errno.ENOENT
    assert errno_of(os.unlink, P("missing")) == errno.ENOENT
    assert errno_of(os.mkdir, P("d")) == errno.EEXIST
    assert errno_of(os.open, P("d/f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    assert errno_of(os.rmdir, P("d")) == errno.ENOTEMPTY
    assert errno_of(os.open, P("d"), os.O_WRONLY) == errno.EISDIR
    assert errno_of(os.unlink, P("d")) == errno.EISDIR
    assert errno_of(os.rmdir, P("d/f")) == errno.ENOTDIR
    assert errno_of(os.open, P("d/f/x"), os.O_RDONLY) == errno.ENOTDIR
    assert errno_of(os.listdir, P("d/f")) == errno.ENOTDIR
    assert errno_of(os.mkdir, P("d/f/sub")) == errno.ENOTDIR
    fd = os.open(P("d/f"), os.O_RDONLY)
    try:
        assert errno_of(os.write, fd, b"no") == errno.EBADF
    finally:
        os.close(fd)
    fd = os.open(P("d/f"), os.O_WRONLY)
    try:
        assert errno_of(os.read, fd, 1) == errno.EBADF
    finally:
        os.close(fd)
    assert errno_of(os.truncate, P("d"), 0) == errno.EISDIR
    os.unlink(P("d/f"))
    os.rmdir(P("d"))
    assert os.listdir(vm.mnt) == []


def test_statvfs(vault_mount):
    vm = vault_mount
    s = os.statvfs(vm.mnt)
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert 0 < s.f_bavail <= s.f_bfree <= s.f_blocks
    assert s.f_namemax == 255
    assert s.f_files > 0 and s.f_ffree > 0
    under = os.statvfs(vm.store)  # a local store: the space of the disk holding it
    total, total_under = s.f_blocks * s.f_frsize, under.f_blocks * under.f_frsize
    assert abs(total - total_under) <= total_under // 100 + 1


def test_read_only_mount(make_vault):
    vm = make_vault()
    vm.mount()
    write_file(vm.path("f"), b"data")
    vm.unmount()
    vm.mount("--read-only")
    assert read_file(vm.path("f")) == b"data"
    assert errno_of(os.open, vm.path("f"), os.O_WRONLY) == errno.EROFS
    assert errno_of(os.mkdir, vm.path("d")) == errno.EROFS
    assert errno_of(os.unlink, vm.path("f")) == errno.EROFS
    vm.unmount()


# ------------------------------------------------------------------ SQLite with a second process

READER = r"""
import json, sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
con = sqlite3.connect(db, timeout=60)
con.execute("pragma busy_timeout=60000")
seen = []
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        count, total = con.execute("select count(*), coalesce(sum(v), 0) from t").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            continue
        raise
    # a reader sees whole transactions only: rows 0..count-1
    if total != count * (count - 1) // 2:
        print(json.dumps({"error": f"torn read: count={count} sum={total}"}))
        sys.exit(1)
    if not seen or seen[-1] != count:
        seen.append(count)
    if count >= n:
        break
    time.sleep(0.005)
ok = con.execute("pragma integrity_check").fetchone()[0]
print(json.dumps({"seen": seen, "integrity": ok}))
"""


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_writer_and_concurrent_reader(vault_mount, journal_mode):
    import sqlite3

    vm = vault_mount
    db = vm.path("catalog.db")
    n = 60
    con = sqlite3.connect(db, timeout=60)
    try:
        con.execute("pragma busy_timeout=60000")
        mode = con.execute(f"pragma journal_mode={journal_mode}").fetchone()[0]
        assert mode == journal_mode
        con.execute("pragma synchronous=full")
        with con:
            con.execute("create table t (id integer primary key, v integer, blob)")
        reader = subprocess.Popen([sys.executable, "-c", READER, db, str(n)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
            for i in range(n):
                with con:
                    con.execute("insert into t values (?, ?, randomblob(3000))", (i, i))
            out, err = reader.communicate(timeout=180)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        assert reader.returncode == 0, out + err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["integrity"] == "ok"
        assert result["seen"] == sorted(result["seen"]) and result["seen"][-1] == n
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    vm.remount()
    con = sqlite3.connect(db)
    try:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert con.execute("select count(*), sum(v) from t").fetchone() == (n, n * (n - 1) // 2)
    finally:
        con.close()


def test_two_mounts_of_one_vault_never_clobber(make_vault, cli):
    a = make_vault("a")
    b = make_vault("b", init=False)
    b.store, b.pwfile = a.store, a.pwfile
    a.mount()
    b.mount()  # the same vault on a second mount point, as from a second device
    with open(a.path("from-a"), "wb") as f:
        f.write(b"A")
    with pytest.raises(OSError) as ei:  # a holds the writer's lease: b is read-only from the start
        with open(b.path("from-b"), "wb") as f:
            f.write(b"B")
    assert ei.value.errno == errno.EROFS
    assert errno_of(os.mkdir, b.path("d")) == errno.EROFS
    assert "another device" in b.stderr  # told at mount (the batch race underneath: test_writeback.py)
    a.unmount()
    b.unmount()
    r = cli.run("check", a.store, "--password-file", a.pwfile, "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    a.mount()
    assert os.listdir(a.mnt) == ["from-a"] and read_file(a.path("from-a")) == b"A"
    a.unmount()


def test_mount_device_reads_mountinfo_with_escaped_names(tmp_path):
    from encfs_photo.mount import mount_device, raise_readahead

    mnt = tmp_path / "Client Photos"
    mnt.mkdir()
    info = tmp_path / "mountinfo"
    esc = str(mnt).replace(" ", "\\040")
    info.write_text(f"22 1 253:0 / / rw - ext4 /dev/vda rw\n"
                    f"40 22 0:41 / {esc} rw,nosuid - fuse.encfs-photo encfs-photo rw\n"
                    f"41 40 0:42 / {esc} rw,nosuid - fuse.encfs-photo encfs-photo rw\n")
    assert mount_device(str(mnt), str(info)) == "0:42"  # the mount on top
    assert mount_device(str(tmp_path), str(info)) is None
    bdi = tmp_path / "bdi" / "0:42"
    bdi.mkdir(parents=True)
    (bdi / "read_ahead_kb").write_text("128\n")
    assert raise_readahead(str(mnt), str(tmp_path / "bdi"), str(info))
    assert (bdi / "read_ahead_kb").read_text() == "1024"
    (bdi / "read_ahead_kb").write_text("4096\n")  # larger already: left alone
    assert raise_readahead(str(mnt), str(tmp_path / "bdi"), str(info))
    assert (bdi / "read_ahead_kb").read_text() == "4096\n"
    assert not raise_readahead(str(tmp_path), str(tmp_path / "bdi"), str(info))


def test_a_root_mount_reads_ahead_1_mib(vault_mount):
    if os.geteuid() != 0:
        pytest.skip("only root may raise a mount's readahead")
    from encfs_photo.mount import mount_device

    dev = mount_device(str(vault_mount.mnt))
    assert dev is not None
    with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
        assert int(f.read()) >= 1024
