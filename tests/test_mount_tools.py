"""Real Debian tools on the mount (cp, rsync, tar, sqlite3, exiftool) and a random-operation exerciser.

The tools come from scripts/setup.sh --test (coreutils, rsync, tar, sqlite3,
libimage-exiftool-perl); a test whose tool is missing is skipped.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess

import pytest

pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB
CHUNK = 4 * MiB

# A complete 1x1 JPEG (JFIF, arithmetic coding): 125 bytes.
TINY_JPEG = bytes.fromhex(
    "FFD8FFE000104A46494600010101004800480000"
    "FFDB004300030202020202030202020303030304060404040404080606050609080A0A090809090A0C0F0C0A0B0E0B0909"
    "0D110D0E0F101011100A0C12131210130F101010"
    "FFC9000B080001000101011100FFCC000600101005FFDA0008010100003F00D2CF20FFD9"
)


def need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed (scripts/setup.sh --test installs it)")


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_tree(root) -> None:
    """Files of several sizes, nested folders, symlinks, a hard link, xattrs, modes and ns mtimes."""
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "2024/Wedding Smith/RAW"))
    os.makedirs(os.path.join(root, "2024/empty"))
    os.makedirs(os.path.join(root, "Ünïcode ✓"))
    files = {
        "2024/Wedding Smith/RAW/IMG_0001.CR3": rnd(CHUNK + 3 * BLOCK + 17, 1),
        "2024/Wedding Smith/RAW/IMG_0001.xmp": b"<x:xmpmeta rating='5'/>\n",
        "2024/Wedding Smith/cover.jpg": TINY_JPEG,
        "2024/notes.txt": b"call the client\n",
        "Ünïcode ✓/fïle.bin": rnd(BLOCK + 1, 2),
        "empty-file": b"",
        "script.sh": b"#!/bin/sh\necho hi\n",
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "script.sh"), 0o755)
    os.chmod(os.path.join(root, "2024/notes.txt"), 0o600)
    os.chmod(os.path.join(root, "2024/empty"), 0o700)
    os.setxattr(os.path.join(root, "2024/Wedding Smith/RAW/IMG_0001.CR3"), "user.rating", b"5")
    os.setxattr(os.path.join(root, "2024/Wedding Smith/RAW/IMG_0001.CR3"), "user.label", b"\x00red\xff")
    os.setxattr(os.path.join(root, "2024"), "user.folder", b"year")
    os.symlink("Wedding Smith/cover.jpg", os.path.join(root, "2024/cover-link.jpg"))
    os.symlink("../nowhere", os.path.join(root, "2024/dangling"))
    os.symlink("2024", os.path.join(root, "latest"))
    os.link(os.path.join(root, "2024/notes.txt"), os.path.join(root, "notes-hardlink.txt"))
    t = 1_700_000_000_123_456_789
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root), reverse=True)):
        for j, name in enumerate(sorted(dirnames + filenames)):
            os.utime(os.path.join(dirpath, name), ns=(t + 7 * i + j, t + 1000 * i + j), follow_symlinks=False)
    os.utime(root, ns=(t, t))


def snapshot(root, *, mtimes: bool = True, dir_mtimes: bool = True) -> dict:
    """path -> (type, mode, size, content or link target, xattrs, mtime_ns, uid, gid)."""
    root = os.fspath(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body, xattrs = os.readlink(p), {}
            elif stat.S_ISDIR(st.st_mode):
                body, xattrs = None, {k: os.getxattr(p, k) for k in os.listxattr(p)}
            else:
                with open(p, "rb") as f:
                    body = f.read()
                xattrs = {k: os.getxattr(p, k) for k in os.listxattr(p)}
            mt = st.st_mtime_ns if mtimes and (dir_mtimes or not stat.S_ISDIR(st.st_mode)) else None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                        st.st_size if not stat.S_ISDIR(st.st_mode) else None, body, xattrs, mt, st.st_uid,
                        st.st_gid)
    return out


def assert_same_tree(a, b, **kw) -> None:
    sa, sb = snapshot(a, **kw), snapshot(b, **kw)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k] == sb[k], k


# ------------------------------------------------------------------ cp, rsync, tar


def test_cp_a_round_trip(vault_mount, tmp_path):
    need("cp", "diff")
    vm = vault_mount
    src = tmp_path / "src"
    make_tree(src)
    dst = os.path.join(vm.mnt, "tree")
    run("cp", "-a", src, dst)
    assert_same_tree(src, dst)
    run("diff", "-r", "--no-dereference", src, dst)
    vm.remount()
    assert_same_tree(src, dst)
    back = tmp_path / "back"
    run("cp", "-a", dst, back)
    run("diff", "-r", "--no-dereference", src, back)
    assert_same_tree(src, back)


def test_rsync_aHX_preserves_hard_links(vault_mount, tmp_path):
    need("rsync")
    vm = vault_mount
    src = tmp_path / "src"
    make_tree(src)
    os.link(src / "2024/Wedding Smith/RAW/IMG_0001.CR3", src / "2024/IMG_0001-link.CR3")
    dst = os.path.join(vm.mnt, "r")
    # (folder mtimes are not compared: rsync itself leaves them off by its own writes at times, on ext4 too)
    run("rsync", "-aHX", f"{src}/", f"{dst}/")

    def inode_groups(root, nlink=True):
        # (st_nlink through the other name of a fresh link is stale in the kernel's attribute cache
        # for attr_timeout: libfuse's high-level API gives each name its own kernel inode)
        a = os.stat(os.path.join(root, "2024/Wedding Smith/RAW/IMG_0001.CR3"))
        b = os.stat(os.path.join(root, "2024/IMG_0001-link.CR3"))
        c = os.stat(os.path.join(root, "2024/notes.txt"))
        d = os.stat(os.path.join(root, "notes-hardlink.txt"))
        return (a.st_ino == b.st_ino and (not nlink or a.st_nlink == b.st_nlink == 2),
                c.st_ino == d.st_ino and (not nlink or c.st_nlink == d.st_nlink == 2),
                a.st_ino != c.st_ino)

    assert inode_groups(dst, nlink=False) == (True, True, True)
    assert_same_tree(src, dst, dir_mtimes=False)
    # nothing left to transfer, even comparing every byte
    r = run("rsync", "-aHXn", "--checksum", "--itemize-changes", f"{src}/", f"{dst}/")
    assert r.stdout.strip() == "", r.stdout
    vm.remount()
    assert inode_groups(dst) == (True, True, True)
    assert_same_tree(src, dst, dir_mtimes=False)
    # an update: rsync's temp-file-and-rename on the mount
    with open(src / "2024/notes.txt", "ab") as f:
        f.write(b"and send the invoice\n")
    run("rsync", "-aHX", "--delete", f"{src}/", f"{dst}/")
    assert_same_tree(src, dst, dir_mtimes=False)
    assert inode_groups(dst, nlink=False) == (True, True, True)
    back = tmp_path / "back"
    run("rsync", "-aHX", f"{dst}/", f"{back}/")
    assert inode_groups(back) == (True, True, True)
    assert_same_tree(src, back, dir_mtimes=False)


def test_tar_round_trip(vault_mount, tmp_path):
    need("tar")
    vm = vault_mount
    src = tmp_path / "src"
    make_tree(src)
    archive = os.path.join(vm.mnt, "backup.tar")
    x = os.path.join(vm.mnt, "x")
    os.mkdir(x)
    xattr_opts = ["--xattrs", "--xattrs-include=user.*"]
    run("tar", "-c", *xattr_opts, "-f", archive, "-C", src, ".")  # tar writes the archive on the mount
    run("tar", "-x", *xattr_opts, "-p", "-f", archive, "-C", x)  # and extracts onto the mount
    assert_same_tree(src, x)
    vm.remount()
    assert_same_tree(src, x)
    # tar on the mount agrees with tar off it
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-x", *xattr_opts, "-p", "-f", archive, "-C", out)
    assert_same_tree(src, out)
    r1 = run("tar", "-t", "-v", "-f", archive)
    assert "IMG_0001.CR3" in r1.stdout and "latest -> 2024" in r1.stdout


# ------------------------------------------------------------------ sqlite3 and exiftool


def test_sqlite3_cli(vault_mount):
    need("sqlite3")
    vm = vault_mount
    db = os.path.join(vm.mnt, "Lightroom", "catalog.lrcat")
    os.mkdir(os.path.dirname(db))
    sql = ["create table photos (id integer primary key, name text, rating integer, thumb blob);",
           "begin;"]
    sql += [f"insert into photos (name, rating, thumb) values ('IMG_{i:04d}.CR3', {i % 6}, randomblob(5000));"
            for i in range(500)]
    sql += ["commit;", "create index by_rating on photos(rating);",
            "update photos set rating = 5 where id % 7 = 0;", "delete from photos where id % 10 = 0;"]
    run("sqlite3", db, input="\n".join(sql))
    for mode in ("wal", "delete"):
        r = run("sqlite3", db, f"pragma journal_mode={mode};")
        assert r.stdout.strip() == mode
        r = run("sqlite3", db, "select count(*), sum(rating) from photos; pragma integrity_check;")
        count, total = r.stdout.splitlines()[0].split("|")
        assert int(count) == 450
        assert r.stdout.splitlines()[1] == "ok"
        run("sqlite3", db, "insert into photos (name, rating) values ('new', 1); vacuum;")
        run("sqlite3", db, "delete from photos where name = 'new';")
    vm.remount()
    r = run("sqlite3", db, "pragma integrity_check; select count(*) from photos where rating = 5;")
    lines = r.stdout.split()
    assert lines[0] == "ok"
    assert int(lines[1]) == len([i for i in range(1, 501) if i % 10 and (i % 7 == 0 or (i - 1) % 6 == 5)])


def test_exiftool_writes_tags(vault_mount):
    need("exiftool")
    vm = vault_mount
    p = os.path.join(vm.mnt, "DCIM", "photo.jpg")
    os.mkdir(os.path.dirname(p))
    with open(p, "wb") as f:
        f.write(TINY_JPEG)
    # default mode: write a temp file, keep photo.jpg_original, rename
    run("exiftool", "-Artist=Jane Doe", "-Copyright=© 2024 Jane Doe", p)
    assert sorted(os.listdir(os.path.dirname(p))) == ["photo.jpg", "photo.jpg_original"]
    with open(p + "_original", "rb") as f:
        assert f.read() == TINY_JPEG
    # in place: rewrites the same inode
    ino = os.stat(p).st_ino
    run("exiftool", "-overwrite_original_in_place", "-XMP-xmp:Rating=4", "-Keywords=wedding", p)
    assert os.stat(p).st_ino == ino
    vm.remount()
    r = run("exiftool", "-s3", "-Artist", "-Copyright", "-Rating", "-Keywords", "-ImageWidth", p)
    assert r.stdout.splitlines() == ["Jane Doe", "© 2024 Jane Doe", "4", "wedding", "1"]
    r = run("exiftool", "-s3", "-Artist", p + "_original")
    assert r.stdout.strip() == ""


# ------------------------------------------------------------------ random operations


def _boundary_offset(rng: random.Random, limit: int) -> int:
    """An offset near a 64 KiB block or 4 MiB chunk boundary (or anywhere)."""
    kind = rng.random()
    if kind < 0.4:
        base = rng.randrange(0, limit // CHUNK + 1) * CHUNK
    elif kind < 0.8:
        base = rng.randrange(0, limit // BLOCK + 1) * BLOCK
    else:
        return rng.randrange(0, limit)
    return max(0, min(limit, base + rng.randint(-300, 300)))


def test_random_operations_against_a_plain_folder(vault_mount, tmp_path):
    vm = vault_mount
    rng = random.Random(20240611)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    names = ["a.bin", "b.bin", "c.bin"]
    limit = 2 * CHUNK + 5 * BLOCK  # files stay around 8-9 MiB at most
    fds: dict[str, tuple[int, int]] = {}

    def fd_pair(name):
        if name not in fds:
            fds[name] = (os.open(os.path.join(vm.mnt, name), os.O_RDWR | os.O_CREAT, 0o644),
                         os.open(mirror / name, os.O_RDWR | os.O_CREAT, 0o644))
        return fds[name]

    def close(name):
        m, p = fds.pop(name)
        os.close(m)
        os.close(p)

    def compare_whole(name):
        with open(os.path.join(vm.mnt, name), "rb") as f1, open(mirror / name, "rb") as f2:
            assert f1.read() == f2.read(), name

    counts: dict[str, int] = {}
    for step in range(300):
        name = rng.choice(names)
        m, p = fd_pair(name)
        op = rng.choices(["write", "read", "truncate", "reopen", "fsync", "append"], [40, 30, 10, 8, 4, 8])[0]
        counts[op] = counts.get(op, 0) + 1
        if op == "write":
            off = _boundary_offset(rng, limit)
            n = rng.choice([1, rng.randint(1, 300), rng.randint(1, 2 * BLOCK), rng.randint(BLOCK, MiB)])
            data = rng.randbytes(n)
            assert os.pwrite(m, data, off) == n
            os.pwrite(p, data, off)
        elif op == "append":
            data = rng.randbytes(rng.randint(1, BLOCK + 10))
            size = os.fstat(p).st_size
            assert os.pwrite(m, data, size) == len(data)
            os.pwrite(p, data, size)
        elif op == "read":
            off = _boundary_offset(rng, limit)
            n = rng.randint(1, 2 * BLOCK + 7)
            assert os.pread(m, n, off) == os.pread(p, n, off), (step, name, off, n)
        elif op == "truncate":
            size = _boundary_offset(rng, limit)
            os.ftruncate(m, size)
            os.ftruncate(p, size)
        elif op == "reopen":
            close(name)
            compare_whole(name)
        elif op == "fsync":
            os.fsync(m)
        if name in fds:
            assert os.fstat(m).st_size == os.fstat(p).st_size, (step, op, name)
    for name in list(fds):
        close(name)
    assert counts.get("write", 0) > 50 and counts.get("read", 0) > 50
    for name in names:
        compare_whole(name)
    vm.remount()
    for name in names:
        assert os.stat(os.path.join(vm.mnt, name)).st_size == os.stat(mirror / name).st_size
        compare_whole(name)
