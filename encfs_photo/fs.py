"""POSIX semantics over the namespace and chunk objects. No FUSE here.

A plain Python API in the manner of borg's vfs.py: inode numbers, names as
bytes, data in and out, errors as `errors` exceptions. `mount.py` translates
FUSE calls into these; tests drive it directly.

Writes land in per-chunk plaintext buffers in memory (bounded by
``dirty_cap``; a full chunk is sealed as soon as it is complete, so a large
file streams through). ``flush`` (every close) and ``fsync`` make everything
so far durable, in the close log when that can hold it; the periodic
committer, ``sync`` and unmount commit: seal the buffers into new chunk
objects and pack objects, then append one journal batch that references
them, objects first, so the store is consistent at every instant. That half
lives in ``commit.py`` (``Committer``, mixed in here).

Threading: one coarse lock around every public method; FUSE calls arrive on
many threads and Python runs one at a time anyway.
"""

from __future__ import annotations

import functools
import logging
import os
import stat as st
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from .closelog import CloseLog
from .commit import SMALL_FILE, Committer, pack_refs
from .content import ChunkIO, ChunkRef, Segment, chunk_span
from .errors import (
    BadFileHandleError,
    ExistsError,
    InvalidError,
    IsDirError,
    LoopError,
    NameTooLongError,
    NoAttrError,
    NotDirError,
    NotEmptyError,
    NotFoundError,
    RangeError,
    ReadOnlyError,
    TooManyLinksError,
)
from .meta import ROOT_INO, Inode, Journal, Namespace, now_ns
from .state import RollbackGuard
from .vault import Vault

log = logging.getLogger(__name__)

NAME_MAX = 255
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536
XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = "now"  # sentinel values for utimens; None means "omit"
DAY_NS = 86400 * 10**9
READ_AHEAD_CHUNKS = 8  # chunks a sequential reader asks the store for ahead of itself (32 MiB at 4 MiB)

F = TypeVar("F", bound=Callable[..., Any])


def locked(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: FileSystem, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLongError(f"name of {len(name)} bytes (limit {NAME_MAX})")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidError("invalid file name")


class Handle:
    __slots__ = ("node", "flags", "writable", "read_end", "ahead_of")

    def __init__(self, node: Inode, flags: int) -> None:
        self.node = node
        self.flags = flags
        self.writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self.read_end = -1  # where the last read through this handle ended: the next sequential offset
        self.ahead_of = -1  # the chunk the last read-ahead hint was given from (one hint per chunk reached)


class FileSystem(Committer):
    def __init__(self, vault: Vault, *, read_only: bool = False, dirty_cap: int = 64 << 20,
                 block_cache: int = 32 << 20, commit_interval: float = 2.0, state_dir: str | None = None,
                 accept_rollback: bool = False, close_log: bool = True) -> None:
        self.vault = vault
        self.read_only = read_only
        self.chunk_size = vault.chunk_size
        self._lock = threading.RLock()
        guard = RollbackGuard(state_dir, vault.vault_id, vault.local_key, accept_rollback) if state_dir else None
        self._journal = Journal(vault.store, vault.vault_id, vault.meta_key, vault.names_key, guard)
        self.ns: Namespace = self._journal.load()
        self._io = ChunkIO(vault.store, vault.vault_id, vault.content_key, vault.block_size, vault.chunk_size,
                           block_cache)
        self._dirty: dict[int, dict[int, bytearray]] = {}
        self._dirty_order: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._dirty_bytes = 0
        self._dirty_cap = max(dirty_cap, 2 * vault.chunk_size)
        self._garbage: list[ChunkRef] = []
        self._small = min(SMALL_FILE, vault.chunk_size)
        # The newest pack object, while the batch naming it may still be rewritten
        # (Journal.fold_key): its segments, kept so a rewrite copies them unchanged.
        self._pack: list[tuple[int, int, ChunkRef, Segment]] = []
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._open: dict[int, int] = {}
        self._commit_interval = commit_interval
        self._stop = threading.Event()
        self._committer: threading.Thread | None = None
        self.last_error: str | None = None
        # A chunk sealed, or a big file's buffer, since the last commit: the
        # next durability point must commit (the close log holds small files only).
        self._must_commit = False
        self._log: CloseLog | None = None
        local_dir = getattr(vault.store, "local_dir", None)
        folder = local_dir() if close_log and not read_only and local_dir is not None else None
        if folder:
            self._log = CloseLog.open(folder, vault.vault_id, vault.meta_key)
        try:
            replayed = self._open_log()
        except BaseException:
            if self._log is not None:
                self._log.close()
            raise
        self._pack_refs = pack_refs(self.ns)
        self._purge_orphans()
        if replayed:
            log.info("close log: replayed %d closes not yet committed", replayed)
            try:
                self._commit()
            except BaseException:
                self._log.close()  # type: ignore[union-attr]
                raise

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the periodic committer (metadata-only changes become durable within the interval)."""
        if self._committer is None and not self.read_only:
            self._committer = threading.Thread(target=self._commit_loop, name="encfs-commit", daemon=True)
            self._committer.start()

    def _commit_loop(self) -> None:
        while not self._stop.wait(self._commit_interval):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep committing; the error is reported to the next fsync
                self.last_error = str(exc)
                log.error("background commit failed: %s", exc)

    def close(self) -> None:
        """Commit everything with a snapshot, stop the committer and drop the keys."""
        self._stop.set()
        if self._committer is not None:
            self._committer.join()
            self._committer = None
        with self._lock:
            committed = False
            try:
                if not self.read_only:
                    self._commit(snapshot=self._journal.since_snapshot > 0 or self.ns.pending())
                    committed = True
            finally:
                if self._log is not None:
                    self._log.close(remove=committed)
                    self._log = None
                # Even when the last commit failed (it is logged by the caller
                # and what was committed before stays), the keys go.
                self._io.close()
                self.vault.lock()
                self._io = None  # type: ignore[assignment]
                self._journal = None  # type: ignore[assignment]
                self.ns = Namespace()
                self._dirty.clear()

    # ------------------------------------------------------------ committing

    @locked
    def sync(self) -> None:
        """Make every change so far durable in the store."""
        if not self.read_only:
            self._commit()

    # ------------------------------------------------------------ helpers

    def _node(self, ino: int) -> Inode:
        node = self.ns.inodes.get(ino)
        if node is None:
            raise NotFoundError(f"inode {ino}")
        return node

    def _dir(self, ino: int) -> Inode:
        node = self._node(ino)
        if node.children is None:
            raise NotDirError()
        return node

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError()

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise BadFileHandleError() from None

    def _changed(self, node: Inode, t: int | None = None, mtime: bool = True) -> None:
        t = now_ns() if t is None else t
        node.ctime = t
        if mtime:
            node.mtime = t
        self.ns.touch(node)

    # ------------------------------------------------------------ lookups

    @locked
    def lookup(self, parent: int, name: bytes) -> int:
        if len(name) > NAME_MAX:
            raise NameTooLongError()
        d = self._dir(parent)
        if name == b".":
            return d.ino
        if name == b"..":
            return d.parent or ROOT_INO
        try:
            return d.children[name]  # type: ignore[index]
        except KeyError:
            raise NotFoundError() from None

    @locked
    def resolve(self, path: bytes) -> int:
        """Inode of an absolute path inside the vault (no symlink following)."""
        ino = ROOT_INO
        for part in path.split(b"/"):
            if part:
                ino = self.lookup(ino, part)
        return ino

    @locked
    def is_open(self, ino: int) -> bool:
        return bool(self._open.get(ino))

    @locked
    def getattr(self, ino: int) -> dict[str, int]:
        return self._attrs(self._node(ino))

    def fgetattr(self, fh: int) -> dict[str, int]:
        with self._lock:
            return self._attrs(self._handle(fh).node)

    def _attrs(self, node: Inode) -> dict[str, int]:
        if node.children is not None:
            size, blocks = 4096, 8
        else:
            size = node.size
            used = sum(ref.length for ref in node.chunks.values())
            used += sum(len(b) for b in self._dirty.get(node.ino, {}).values())
            if node.target is not None:
                used = len(node.target)
            blocks = -(-min(used, max(size, 1)) // 4096) * 8
        return {
            "st_ino": node.ino, "st_mode": node.mode, "st_nlink": node.nlink, "st_uid": node.uid,
            "st_gid": node.gid, "st_size": size, "st_blocks": blocks, "st_blksize": 65536,
            "st_atime": node.atime, "st_mtime": node.mtime, "st_ctime": node.ctime, "st_rdev": node.rdev,
        }

    @locked
    def readdir(self, ino: int) -> list[tuple[bytes, int]]:
        d = self._dir(ino)
        return [(b".", d.ino), (b"..", d.parent or ROOT_INO)] + list(d.children.items())  # type: ignore[union-attr]

    @locked
    def readdir_plus(self, ino: int, start: int = 0, count: int | None = None
                     ) -> list[tuple[bytes, dict[str, int] | None]]:
        """Entries ``start`` to ``start + count`` of ``readdir``, each with its attributes (None for an
        inode not found). A listing is asked for in slices: the attributes of a 10,000-entry folder
        must not be built again for every reply buffer the kernel fills."""
        out = []
        for name, child in self.readdir(ino)[start:None if count is None else start + count]:
            node = self.ns.inodes.get(child)
            out.append((name, self._attrs(node) if node is not None else None))
        return out

    @locked
    def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if node.target is None:
            raise InvalidError("not a symlink")
        return node.target

    # ------------------------------------------------------------ creating

    def _new_node(self, parent: Inode, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        self._writable()
        check_name(name)
        if name in parent.children:  # type: ignore[operator]
            raise ExistsError()
        if parent.mode & st.S_ISGID:
            gid = parent.gid  # BSD group semantics of setgid folders, as ext4 does
            if st.S_ISDIR(mode):
                mode |= st.S_ISGID
        node = Inode(self.ns.new_ino(), mode, uid, gid)
        self.ns.add(node)
        self.ns.set_entry(parent, name, node.ino)
        self._changed(parent, node.ctime)
        return node

    @locked
    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> int:
        if st.S_IFMT(mode) == 0:
            mode |= st.S_IFREG
        if st.S_ISDIR(mode) or st.S_ISLNK(mode):
            raise InvalidError("use mkdir/symlink")
        node = self._new_node(self._dir(parent), name, mode, uid, gid)
        node.rdev = rdev
        return node.ino

    @locked
    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> int:
        p = self._dir(parent)
        node = self._new_node(p, name, st.S_IFDIR | (mode & 0o7777), uid, gid)
        node.parent = p.ino
        p.nlink += 1
        return node.ino

    @locked
    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> int:
        if len(target) >= PATH_MAX:
            raise NameTooLongError("symlink target too long")
        node = self._new_node(self._dir(parent), name, st.S_IFLNK | 0o777, uid, gid)
        node.target = target
        node.size = len(target)
        return node.ino

    @locked
    def link(self, ino: int, parent: int, name: bytes) -> None:
        self._writable()
        node = self._node(ino)
        if node.is_dir():
            raise TooManyLinksError()
        p = self._dir(parent)
        check_name(name)
        if name in p.children:  # type: ignore[operator]
            raise ExistsError()
        self.ns.set_entry(p, name, node.ino)
        node.nlink += 1
        self._changed(node, mtime=False)
        self._changed(p, node.ctime)

    @locked
    def create(self, parent: int, name: bytes, mode: int, flags: int, uid: int, gid: int) -> tuple[int, int]:
        p = self._dir(parent)
        existing = p.children.get(name) if len(name) <= NAME_MAX else None  # type: ignore[union-attr]
        if existing is not None:
            if flags & os.O_EXCL:
                raise ExistsError()
            return existing, self.open(existing, flags)
        node = self._new_node(p, name, st.S_IFREG | (mode & 0o7777), uid, gid)
        return node.ino, self._open_node(node, flags)

    # ------------------------------------------------------------ removing

    def _unlink_node(self, node: Inode) -> None:
        node.nlink -= 1
        self._changed(node, mtime=False)
        if node.nlink <= 0 and not self._open.get(node.ino):
            self._destroy(node)

    def _destroy(self, node: Inode) -> None:
        self._drop_dirty(node.ino)
        for ref in node.chunks.values():
            self._discard(ref)
        node.chunks = {}
        self.ns.drop(node.ino)

    @locked
    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        p = self._dir(parent)
        node = self._node(self.lookup(parent, name))
        if node.is_dir():
            raise IsDirError()
        self.ns.set_entry(p, name, None)
        self._changed(p)
        self._unlink_node(node)

    @locked
    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        if name == b".":
            raise InvalidError()
        if name == b"..":
            raise NotEmptyError()
        p = self._dir(parent)
        node = self._node(self.lookup(parent, name))
        if not node.is_dir():
            raise NotDirError()
        if node.children:
            raise NotEmptyError()
        self.ns.set_entry(p, name, None)
        p.nlink -= 1
        self._changed(p)
        self.ns.drop(node.ino)

    def _is_ancestor(self, anc: Inode, node: Inode) -> bool:
        ino = node.ino
        while True:
            if ino == anc.ino:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.ns.inodes[ino].parent or ROOT_INO

    @locked
    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise InvalidError("unsupported rename flags")
        check_name(new_name)
        p1, p2 = self._dir(old_parent), self._dir(new_parent)
        src = self._node(self.lookup(old_parent, old_name))
        dst_ino = p2.children.get(new_name)  # type: ignore[union-attr]
        dst = self.ns.inodes.get(dst_ino) if dst_ino is not None else None
        t = now_ns()
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise NotFoundError()
            if src.is_dir() and p1 is not p2 and self._is_ancestor(src, p2):
                raise LoopError()
            if dst.is_dir() and p1 is not p2 and self._is_ancestor(dst, p1):
                raise LoopError()
            self.ns.set_entry(p1, old_name, dst.ino)
            self.ns.set_entry(p2, new_name, src.ino)
            for node, newp, oldp in ((src, p2, p1), (dst, p1, p2)):
                if node.is_dir() and newp is not oldp:
                    node.parent = newp.ino
                    newp.nlink += 1
                    oldp.nlink -= 1
                self._changed(node, t, mtime=False)
            self._changed(p1, t)
            self._changed(p2, t)
            return
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise ExistsError()
            if dst is src:
                return  # both names are links to one inode: POSIX says do nothing
            if src.is_dir():
                if not dst.is_dir():
                    raise NotDirError()
                if dst.children:
                    raise NotEmptyError()
            elif dst.is_dir():
                raise IsDirError()
        if src.is_dir() and self._is_ancestor(src, p2):
            raise LoopError()
        if dst is not None:
            if dst.is_dir():
                p2.nlink -= 1
                self.ns.drop(dst.ino)
            else:
                self._unlink_node(dst)
        self.ns.set_entry(p1, old_name, None)
        self.ns.set_entry(p2, new_name, src.ino)
        if src.is_dir() and p1 is not p2:
            src.parent = p2.ino
            p1.nlink -= 1
            p2.nlink += 1
        self._changed(src, t, mtime=False)
        self._changed(p1, t)
        if p2 is not p1:
            self._changed(p2, t)

    # ------------------------------------------------------------ attributes

    @locked
    def chmod(self, ino: int, mode: int) -> None:
        self._writable()
        node = self._node(ino)
        node.mode = st.S_IFMT(node.mode) | (mode & 0o7777)
        self._changed(node, mtime=False)

    @locked
    def chown(self, ino: int, uid: int, gid: int) -> None:
        self._writable()
        node = self._node(ino)
        if uid != -1:
            node.uid = uid
        if gid != -1:
            node.gid = gid
        if not node.is_dir() and node.mode & 0o111:
            node.mode &= ~st.S_ISUID
            if node.mode & st.S_IXGRP:
                node.mode &= ~st.S_ISGID
        self._changed(node, mtime=False)

    @locked
    def utimens(self, ino: int, atime: int | str | None, mtime: int | str | None) -> None:
        self._writable()
        node = self._node(ino)
        t = now_ns()
        if atime is not None:
            node.atime = t if atime == UTIME_NOW else int(atime)
        if mtime is not None:
            node.mtime = t if mtime == UTIME_NOW else int(mtime)
        node.ctime = t
        self.ns.touch(node)

    @locked
    def truncate(self, ino: int, size: int) -> None:
        self._truncate(self._node(ino), size)

    def ftruncate(self, fh: int, size: int) -> None:
        with self._lock:
            self._truncate(self._handle(fh).node, size)

    def _truncate(self, node: Inode, size: int) -> None:
        self._writable()
        if node.is_dir():
            raise IsDirError()
        if size < 0:
            raise InvalidError()
        cs = self.chunk_size
        if size < node.size:
            keep_upto = -(-size // cs)  # chunks with index >= this lie wholly past the end
            for idx in [i for i in node.chunks if i >= keep_upto]:
                self._discard(node.chunks.pop(idx))
            self._drop_dirty(node.ino, keep=lambda i: i < keep_upto)
            if size % cs:
                idx = size // cs
                ref = node.chunks.get(idx)
                buf = self._dirty.get(node.ino, {}).get(idx)
                if buf is not None or (ref is not None and ref.length > size - idx * cs):
                    buf = self._dirty_chunk(node, idx)
                    excess = len(buf) - (size - idx * cs)
                    if excess > 0:
                        del buf[size - idx * cs:]
                        self._dirty_bytes -= excess
        node.size = size
        if size > self._small and node.ino in self._dirty:
            self._must_commit = True
        self._changed(node)

    # ------------------------------------------------------------ xattrs

    @locked
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._writable()
        node = self._node(ino)
        if not name or len(name) > NAME_MAX:
            raise RangeError() if name else InvalidError()
        if len(value) > XATTR_SIZE_MAX:
            raise RangeError("xattr value too large")
        if flags & XATTR_CREATE and name in node.xattrs:
            raise ExistsError()
        if flags & XATTR_REPLACE and name not in node.xattrs:
            raise NoAttrError()
        node.xattrs[name] = bytes(value)
        self._changed(node, mtime=False)

    @locked
    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.xattr(ino, name)
        if value is None:
            raise NoAttrError()
        return value

    @locked
    def xattr(self, ino: int, name: bytes) -> bytes | None:
        """``getxattr`` that answers "none" with None: `ls -l` asks two missing names of every entry."""
        return self._node(ino).xattrs.get(name)

    @locked
    def listxattr(self, ino: int) -> list[bytes]:
        return list(self._node(ino).xattrs)

    @locked
    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        node = self._node(ino)
        if node.xattrs.pop(name, None) is None:
            raise NoAttrError()
        self._changed(node, mtime=False)

    # ------------------------------------------------------------ file data

    @locked
    def open(self, ino: int, flags: int) -> int:
        node = self._node(ino)
        if node.is_dir() and (flags & os.O_ACCMODE) != os.O_RDONLY:
            raise IsDirError()
        return self._open_node(node, flags)

    def _open_node(self, node: Inode, flags: int) -> int:
        h = Handle(node, flags)
        if h.writable:
            self._writable()
            if flags & os.O_TRUNC and node.size:
                self._truncate(node, 0)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        self._open[node.ino] = self._open.get(node.ino, 0) + 1
        return fh

    @locked
    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        node = h.node
        end = min(offset + size, node.size)
        if offset < 0:
            raise InvalidError()
        if offset >= end:
            return b""
        cs = self.chunk_size
        dirty = self._dirty.get(node.ino, {})
        if offset > 0 and offset == h.read_end and (end - 1) // cs != h.ahead_of:
            h.ahead_of = (end - 1) // cs
            self._read_ahead(node, dirty, h.ahead_of)
        h.read_end = end
        parts = []
        for idx in chunk_span(offset, end - offset, cs):
            base = idx * cs
            lo, hi = max(offset, base) - base, min(end, base + cs) - base
            buf = dirty.get(idx)
            if buf is not None:
                piece = bytes(buf[lo:hi])
            else:
                ref = node.chunks.get(idx)
                piece = self._io.read(ref, lo, hi) if ref else b""
            if len(piece) < hi - lo:
                piece += bytes(hi - lo - len(piece))
            parts.append(piece)
        if not self.read_only and (node.atime <= node.mtime or node.atime + DAY_NS < now_ns()):
            node.atime = now_ns()  # relatime: cheap, and what mail readers and backup tools expect
            self.ns.touch(node)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_ahead(self, node: Inode, dirty: dict[int, bytearray], idx: int) -> None:
        # A second read that continues the first is a sequential reader (a copy,
        # an import, video playback): ask for the next chunks now, so a store
        # behind a network fetches them while this one is being read. A header
        # scan (one read) or random reads never get here.
        refs = [ref for i in range(idx + 1, idx + 1 + READ_AHEAD_CHUNKS)
                if i not in dirty and (ref := node.chunks.get(i)) is not None]
        if refs:
            self._io.prefetch(refs)

    @locked
    def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise BadFileHandleError()
        self._writable()
        node = h.node
        if h.flags & os.O_APPEND:
            offset = node.size
        if offset < 0:
            raise InvalidError()
        if not data:
            return 0  # POSIX: a zero-length write changes nothing, not even the size
        cs = self.chunk_size
        end = offset + len(data)
        view = memoryview(data)
        for idx in chunk_span(offset, len(data), cs):
            base = idx * cs
            lo, hi = max(offset, base) - base, min(end, base + cs) - base
            buf = self._dirty_chunk(node, idx)
            before = len(buf)
            if before < lo:
                buf.extend(bytes(lo - before))
            buf[lo:hi] = view[base + lo - offset:base + hi - offset]
            self._dirty_bytes += len(buf) - before
            if end > node.size:
                node.size = max(node.size, base + hi)
            if hi == cs and len(buf) == cs:
                self._seal(node, idx)  # a completed chunk leaves memory at once: big files stream
        if end > node.size:
            node.size = end
        if node.size > self._small:
            self._must_commit = True
        if node.mode & (st.S_ISUID | st.S_ISGID):
            node.mode &= ~(st.S_ISUID | st.S_ISGID)
        self._changed(node)
        self._enforce_cap()
        return len(data)

    @locked
    def flush(self, fh: int) -> None:
        """Called on every close(): what was written is durable when it returns."""
        h = self._handle(fh)
        if h.writable and not self.read_only:
            self._durable()

    @locked
    def fsync(self, fh: int, datasync: bool = False) -> None:
        self._handle(fh)
        if not self.read_only:
            self._durable()

    @locked
    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        ino = h.node.ino
        left = self._open.get(ino, 1) - 1
        if left:
            self._open[ino] = left
        else:
            self._open.pop(ino, None)
            if h.node.nlink <= 0 and ino in self.ns.inodes:
                self._destroy(h.node)

    # ------------------------------------------------------------ whole fs

    @locked
    def statfs(self) -> dict[str, int]:
        bsize = 4096
        space = self.vault.store.space()
        total, free = space if space else (1 << 50, 1 << 50)
        return {
            "f_bsize": bsize, "f_frsize": bsize, "f_blocks": total // bsize, "f_bfree": free // bsize,
            "f_bavail": free // bsize, "f_files": len(self.ns.inodes) + (1 << 30), "f_ffree": 1 << 30,
            "f_favail": 1 << 30, "f_namemax": NAME_MAX,
        }

    @locked
    def gc_roots(self) -> tuple[set[str], int]:
        """Commit, then (every object key the namespace references, the journal head): what gc must keep."""
        if not self.read_only:
            self._commit()
        keys = {ref.key for node in self.ns.inodes.values() for ref in node.chunks.values()}
        return keys, self._journal.seq

    def follow(self) -> bool:
        """A read-only mount: take in the batches another device appended since; True if there were any.

        One existence check of the next batch; only when it exists is the
        journal loaded again (outside the lock), then swapped in. Open handles
        keep their inodes (chunks are immutable), new lookups see the new tree."""
        cur = self._journal
        if not self.read_only or cur is None or not self.vault.store.exists(cur._key(cur.seq + 1)):
            return False
        fresh = Journal(self.vault.store, self.vault.vault_id, self.vault.meta_key, self.vault.names_key, cur.guard)
        ns = fresh.load()
        with self._lock:
            if self._journal is not cur:  # closed (unmounted) meanwhile
                return False
            self._journal, self.ns = fresh, ns
            self._pack_refs = pack_refs(ns)
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "files": len(self.ns.inodes),
                "dirty_bytes": self._dirty_bytes,
                "pending_put_bytes": self._io.pending_bytes() if self._io else 0,
                "journal_seq": self._journal.seq,
                "read_only": self.read_only,
                "last_error": self.last_error,
            }
