"""The FUSE adapter: mfusepy Operations -> fs.FileSystem. The only mfusepy import.

Translation only, as borg's hlfuse.py: paths to inode numbers, our exceptions
to errnos (each error class carries its errno, see errors.py), integrity
failures to EIO with a log line naming the object. No POSIX rule lives here.

mfusepy 3.1.1 drops what libfuse 3 passes in a few callbacks; `_Fuse`
restores it: renameat2 flags (a silent plain rename would destroy the target
of RENAME_NOREPLACE/RENAME_EXCHANGE), UTIME_NOW/UTIME_OMIT, the file
handle of truncate/chmod/chown (needed for files unlinked while open), and
the attributes of directory entries for READDIRPLUS.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from ctypes.util import find_library
from typing import Any

# mfusepy loads libfuse 2 whenever it is installed (common: AppImages need
# it), and through libfuse 2 the renameat2 flags, use_ino, hard_remove and
# UTIME_OMIT below are all lost. On Linux, ask for libfuse 3 unless the user
# chose a library explicitly.
if sys.platform.startswith("linux") and not (os.environ.get("FUSE_LIBRARY_PATH")
                                             or os.environ.get("FUSE_LIBRARY_NAME")) and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy as fuse  # noqa: E402

from .errors import EncfsPhotoError, IntegrityError, NoAttrError
from .fs import UTIME_NOW, FileSystem

log = logging.getLogger(__name__)

_HIDDEN_NAME = re.compile(rb"\.fuse_hidden[0-9a-f]{16}\Z")
_UTIME_NOW_NS = (1 << 30) - 1
_UTIME_OMIT_NS = (1 << 30) - 2


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _errno(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except fuse.FuseOSError:
            raise
        except IntegrityError as exc:
            log.error("integrity failure in %s: %s", fn.__name__, exc)
            raise fuse.FuseOSError(errno.EIO) from None
        except EncfsPhotoError as exc:
            if exc.errno == errno.EIO:
                log.error("%s failed: %s", fn.__name__, exc)
            raise fuse.FuseOSError(exc.errno) from None
        except OSError as exc:
            log.error("%s failed: %s", fn.__name__, exc)
            raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper


class Operations(fuse.Operations):
    use_ns = True
    flag_nullpath_ok = True
    flag_nopath = True

    def __init__(self, fs: FileSystem, on_ready: Callable[[], None] | None = None,
                 mountpoint: str | None = None) -> None:
        self.fs = fs
        self._on_ready = on_ready
        self._mountpoint = mountpoint
        self.closed_cleanly = False  # destroy() committed everything and locked the vault
        # libfuse's high-level API keeps a file unlinked while open reachable
        # by renaming it to .fuse_hidden<16 hex> (we do not set hard_remove:
        # with it, fstat of such a file gets ESTALE from libfuse). We unlink
        # for real instead and keep that name as a private alias, so it is
        # never listed, never blocks rmdir, and vanishes at the last close.
        self._hidden: dict[bytes, int] = {}

    # ---- helpers

    def _ino(self, path: str | None, fh: int | None = None) -> int:
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        bpath = os.fsencode(path)
        hidden = self._hidden.get(bpath)
        return hidden if hidden is not None else self.fs.resolve(bpath)

    def _split(self, path: str) -> tuple[int, bytes]:
        parent, _, name = os.fsencode(path).rpartition(b"/")
        return self.fs.resolve(parent), name

    # ---- lifecycle

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if conn_info is not None and hasattr(conn_info, "max_readahead"):
            # 1 MiB instead of 128 KiB: a FUSE round trip costs more than the bytes it carries.
            conn_info.max_readahead = 1 << 20
        if config_3 is not None:
            config_3.use_ino = 1  # st_ino is ours: hard links show one inode number
            config_3.nullpath_ok = 1
        if self._mountpoint is not None:
            raise_readahead(self._mountpoint)
        self.fs.start()
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        try:
            self.fs.close()
            self.closed_cleanly = True
        except Exception:
            log.exception("final commit at unmount failed; the journal keeps what was committed before")

    # ---- attributes

    @_errno
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if fh is not None:
            return self.fs.fgetattr(fh)
        return self.fs.getattr(self._ino(path))

    @_errno
    def chmod_fh(self, path: str | None, mode: int, fh: int | None) -> int:
        self.fs.chmod(self._target(path, fh), mode)
        return 0

    @_errno
    def chown_fh(self, path: str | None, uid: int, gid: int, fh: int | None) -> int:
        self.fs.chown(self._target(path, fh), uid, gid)
        return 0

    @_errno
    def utimens_fh(self, path: str | None, atime: Any, mtime: Any, fh: int | None) -> int:
        self.fs.utimens(self._target(path, fh), atime, mtime)
        return 0

    @_errno
    def truncate_fh(self, path: str | None, length: int, fh: int | None) -> int:
        if fh is not None:
            self.fs.ftruncate(fh, length)
        else:
            self.fs.truncate(self._ino(path), length)
        return 0

    # Plain variants for libfuse 2 (macFUSE), which has no file handle here.
    def chmod(self, path: str, mode: int) -> int:
        return self.chmod_fh(path, mode, None)

    def chown(self, path: str, uid: int, gid: int) -> int:
        return self.chown_fh(path, uid, gid, None)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        return self.truncate_fh(path, length, fh)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        atime, mtime = times if times is not None else (UTIME_NOW, UTIME_NOW)
        return self.utimens_fh(path, atime, mtime, None)

    def _target(self, path: str | None, fh: int | None) -> int:
        if fh is not None:
            return self.fs.fgetattr(fh)["st_ino"]
        return self._ino(path)

    # ---- namespace

    @_errno
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        out = []
        for name, ino in self.fs.readdir(fh):
            node = self.fs.ns.inodes.get(ino)
            out.append((os.fsdecode(name), {"st_ino": ino, "st_mode": node.mode if node else 0}, 0))
        return out

    @_errno
    def readdir_plus(self, fh: int, start: int, count: int) -> list[tuple[bytes, dict[str, Any] | None]]:
        return self.fs.readdir_plus(fh, start, count)

    @_errno
    def opendir(self, path: str) -> int:
        ino = self._ino(path)
        self.fs.readdir(ino)  # ENOTDIR now rather than at readdir
        return ino

    def releasedir(self, path: str | None, fh: int) -> int:
        return 0

    @_errno
    def readlink(self, path: str) -> str:
        return os.fsdecode(self.fs.readlink(self._ino(path)))

    @_errno
    def mknod(self, path: str, mode: int, dev: int) -> int:
        uid, gid, _ = fuse.fuse_get_context()
        parent, name = self._split(path)
        self.fs.mknod(parent, name, mode, uid, gid, dev)
        return 0

    @_errno
    def mkdir(self, path: str, mode: int) -> int:
        uid, gid, _ = fuse.fuse_get_context()
        parent, name = self._split(path)
        self.fs.mkdir(parent, name, mode, uid, gid)
        return 0

    @_errno
    def symlink(self, target: str, source: str) -> int:
        # mfusepy's naming: `target` is the new link's path, `source` its content.
        uid, gid, _ = fuse.fuse_get_context()
        parent, name = self._split(target)
        self.fs.symlink(parent, name, os.fsencode(source), uid, gid)
        return 0

    @_errno
    def link(self, target: str, source: str) -> int:
        parent, name = self._split(target)
        self.fs.link(self._ino(source), parent, name)
        return 0

    @_errno
    def unlink(self, path: str) -> int:
        if self._hidden.pop(os.fsencode(path), None) is not None:
            return 0  # libfuse drops its alias after the last close; the inode is gone already
        parent, name = self._split(path)
        self.fs.unlink(parent, name)
        return 0

    @_errno
    def rmdir(self, path: str) -> int:
        parent, name = self._split(path)
        self.fs.rmdir(parent, name)
        return 0

    @_errno
    def rename_flags(self, old: str, new: str, flags: int) -> int:
        p1, n1 = self._split(old)
        bnew = os.fsencode(new)
        if flags == 0 and _HIDDEN_NAME.match(bnew.rpartition(b"/")[2]):
            ino = self.fs.lookup(p1, n1)
            if self.fs.is_open(ino):  # libfuse hiding an unlinked open file (see __init__)
                self.fs.unlink(p1, n1)
                self._hidden[bnew] = ino
                return 0
        p2, n2 = self._split(new)
        self.fs.rename(p1, n1, p2, n2, flags)
        return 0

    def rename(self, old: str, new: str) -> int:
        return self.rename_flags(old, new, 0)

    # ---- xattrs

    @_errno
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if name.startswith("system.posix_acl_"):
            raise fuse.FuseOSError(errno.EOPNOTSUPP)  # ACLs would be stored but not enforced: refuse
        self.fs.setxattr(self._ino(path), os.fsencode(name), value, options)
        return 0

    @_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.fs.getxattr(self._ino(path), os.fsencode(name))

    @_errno
    def xattr(self, path: str, name: str) -> bytes | None:
        return self.fs.xattr(self._ino(path), os.fsencode(name))

    @_errno
    def listxattr(self, path: str) -> list[str]:
        return [os.fsdecode(n) for n in self.fs.listxattr(self._ino(path))]

    @_errno
    def removexattr(self, path: str, name: str) -> int:
        self.fs.removexattr(self._ino(path), os.fsencode(name))
        return 0

    # ---- file data

    @_errno
    def create(self, path: str, mode: int, flags: int) -> int:
        uid, gid, _ = fuse.fuse_get_context()
        parent, name = self._split(path)
        _, fh = self.fs.create(parent, name, mode, flags, uid, gid)
        return fh

    @_errno
    def open(self, path: str, flags: int) -> int:
        return self.fs.open(self._ino(path), flags)

    @_errno
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.fs.read(fh, offset, size)

    @_errno
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.fs.write(fh, offset, data)

    @_errno
    def flush(self, path: str | None, fh: int) -> int:
        self.fs.flush(fh)
        return 0

    @_errno
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.fs.fsync(fh, bool(datasync))
        return 0

    @_errno
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.fs.sync()
        return 0

    @_errno
    def release(self, path: str | None, fh: int) -> int:
        self.fs.release(fh)
        return 0

    @_errno
    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()


class _Fuse(fuse.FUSE):
    """Passes on what mfusepy's libfuse-3 wrappers drop (see the module docstring)."""

    def _path(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return fip.contents.fh if fip else None

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        # mfusepy hands the filler only mode and inode, and never FUSE_FILL_DIR_PLUS.
        # With every entry's attributes in the READDIRPLUS reply, the kernel
        # knows them when `ls -l` or a photo browser stats each entry: no
        # LOOKUP round trip per file. Offsets (entry index + 1) are needed for
        # that: libfuse 3.14 links a "plus" entry to its inode only on that
        # path, and then asks again from the last offset it could fit.
        plus = bool(flags & _READDIR_PLUS)
        pos = offset
        while True:
            # A reply buffer holds about 100 entries with attributes; ask for
            # slices, not the whole folder, on each of the kernel's calls.
            entries = self.operations.readdir_plus(fip.contents.fh, pos, _READDIR_SLICE)
            for name, attrs in entries:
                pos += 1
                st = fuse.c_stat()
                if attrs is not None:
                    fuse.set_st_attrs(st, attrs, use_ns=self.use_ns)
                if filler(buf, name, st, pos, _FILL_DIR_PLUS if plus and attrs is not None else 0) != 0:
                    return 0
            if len(entries) < _READDIR_SLICE:
                return 0

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        # `ls -l` asks security.selinux and system.posix_acl_access of every
        # entry, and they are never there: ENODATA straight back, not through
        # two raised exceptions (fs, then mfusepy's wrapper).
        found = self.operations.xattr(self._path(path), self._path(name))
        if found is None:
            return -NoAttrError.errno
        if not value:
            return len(found)  # a size query
        if len(found) > size:
            return -errno.ERANGE
        ctypes.memmove(value, found, len(found))
        return len(found)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename_flags(self._path(old), self._path(new), flags)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate_fh(self._path(path), length, self._fh(fip))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod_fh(self._path(path), mode, self._fh(fip))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        if fuse.c_uid_t(uid + 1).value == 0:
            uid = -1
        if fuse.c_gid_t(gid + 1).value == 0:
            gid = -1
        return self.operations.chown_fh(self._path(path), uid, gid, self._fh(fip))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        def conv(ts: Any) -> int | str | None:
            if ts.tv_nsec == _UTIME_OMIT_NS:
                return None
            if ts.tv_nsec == _UTIME_NOW_NS:
                return UTIME_NOW
            return ts.tv_sec * 1_000_000_000 + ts.tv_nsec

        if buf:
            atime, mtime = conv(buf.contents.actime), conv(buf.contents.modtime)
        else:
            atime = mtime = UTIME_NOW
        return self.operations.utimens_fh(self._path(path), atime, mtime, self._fh(fip))


READ_AHEAD_KB = 1024
_READDIR_PLUS = 1  # enum fuse_readdir_flags: the kernel asked with READDIRPLUS
_FILL_DIR_PLUS = 2  # enum fuse_fill_dir_flags: this entry's stat is complete, for READDIRPLUS
_READDIR_SLICE = 128


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The "major:minor" of the mount at ``mountpoint`` (a resolved path), from mountinfo.

    No stat, no realpath: from inside ``init`` either would ask our own FUSE
    loop, which is busy answering INIT (a deadlock)."""
    want = os.path.abspath(mountpoint)
    found = None
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape_mountinfo(fields[4]) == want:
                    found = fields[2]  # the last one listed is the one on top
    except OSError:
        return None
    return found


def raise_readahead(mountpoint: str, sysfs: str = "/sys/class/bdi", mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Let the kernel read ahead 1 MiB instead of 128 KiB on this mount (root only; best effort).

    A FUSE mount's readahead window starts at the kernel's 128 KiB default and
    ``max_readahead`` can only lower it, so a buffered sequential read reaches
    the daemon as 128 KiB READs: eight round trips per MiB. Measured on a
    2-core VM, dd of a 512 MiB file with a cold cache took 1.00 s at 128 KiB
    and 0.77 s at 1 MiB (docs/PERFORMANCE.md). Only root may write the bdi
    setting; anyone else keeps the default.
    """
    dev = mount_device(mountpoint, mountinfo)
    if dev is None:
        return False
    path = os.path.join(sysfs, dev, "read_ahead_kb")
    try:
        with open(path) as f:
            if int(f.read().strip() or 0) >= READ_AHEAD_KB:
                return True
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except (OSError, ValueError) as exc:
        log.debug("readahead stays at the kernel default: %s", exc)
        return False
    return True


def run(fs: FileSystem, mountpoint: str, *, allow_other: bool = False, read_only: bool = False,
        extra_options: dict[str, Any] | None = None, on_ready: Callable[[], None] | None = None,
        debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (libfuse handles SIGINT/SIGTERM/SIGHUP)."""
    options: dict[str, Any] = {
        "fsname": "encfs-photo",
        "subtype": "encfs-photo",
        "default_permissions": True,  # the kernel enforces mode bits we store
    }
    if allow_other:
        options["allow_other"] = True
    if read_only:
        options["ro"] = True
    # One FUSE thread: fs serialises on one lock anyway, and measured on a
    # 2-core VM the multi-threaded loop wrote 20-40% slower (GIL hand-offs
    # between idle workers). `-o threads` brings the multi-threaded loop back.
    nothreads = True
    extra = dict(extra_options or {})
    if extra.pop("threads", False):
        nothreads = False
    options.update(extra)
    # Resolved here, before the mount: afterwards a lookup of it would reach our own loop.
    ops = Operations(fs, on_ready, os.path.realpath(mountpoint))
    try:
        _Fuse(ops, mountpoint, foreground=True, debug=debug, nothreads=nothreads, **options)
    except RuntimeError as exc:
        # libfuse 3's fuse_main returns 8 when its loop ended on a signal
        # (SIGINT, SIGTERM, SIGHUP) instead of an unmount. By then it has
        # unmounted and called destroy (the final commit): a clean stop.
        if exc.args != (8,) or not ops.closed_cleanly:
            raise
        log.info("stopped by a signal; everything written was committed")
