"""LocalStore: objects as files in a folder (the embedded default store).

Layout: ``ROOT/<key>`` with the two first hex digits of data and journal ids
as a sub-folder, so no folder grows past a few thousand files. Writes go to a
temporary file, are fsynced, then renamed (or hard-linked, for
``if_none_match``) into place and the folder is fsynced: atomic and durable.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator

from ..errors import PreconditionFailedError, StoreError, StoreFullError, StoreNotFoundError
from .base import StoreCapabilities, content_tag

_TMP = ".tmp"
_FANNED = ("data", "journal")  # kinds with many objects get a folder per first two hex digits


def _raise(exc: OSError, key: str) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StoreFullError(f"store disk full while writing {key}") from exc
    raise StoreError(f"local store: {key}: {exc.strerror}") from exc


def fsync_dir(d: str) -> None:
    """Make a folder's entries (new, renamed or removed files) durable."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class LocalStore:
    capabilities = StoreCapabilities(conditional_writes=True, max_connections=8, local=True)

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self._made: set[str] = set()
        self._unsynced: set[str] = set()
        self._unsynced_dirs: set[str] = set()
        self._sync_lock = threading.Lock()

    def describe(self) -> str:
        return self.root

    def local_dir(self) -> str:
        """Where the filesystem may keep its close log: beside the objects, so it moves with the folder."""
        return os.path.join(self.root, _TMP)

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"bad object key {key!r}")
        head, _, tail = key.rpartition("/")
        if head in _FANNED and len(tail) > 2:
            return os.path.join(self.root, head, tail[:2], tail)
        return os.path.join(self.root, key)

    def _ensure_dir(self, d: str) -> None:
        if d in self._made:
            return
        missing = []
        p = d
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        for p in reversed(missing):
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                pass
            fsync_dir(os.path.dirname(p))  # each new folder's own entry must survive a crash too
        self._made.add(d)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None:
        path = self._path(key)
        d = os.path.dirname(path)
        tmp = os.path.join(self.root, _TMP, f"{os.getpid()}-{os.urandom(8).hex()}")
        try:
            self._ensure_dir(d)
            self._ensure_dir(os.path.dirname(tmp))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if if_none_match:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailedError(f"{key} exists (another writer?)") from None
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, path)
            if durable:
                self.flush()  # earlier deferred puts first: they may be what this object references
                fsync_dir(d)
            else:
                with self._sync_lock:
                    self._unsynced.add(path)
                    self._unsynced_dirs.add(d)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            _raise(exc, key)

    def flush(self) -> None:
        with self._sync_lock:
            files, self._unsynced = self._unsynced, set()
            dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        try:
            for path in files:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # deleted since: nothing to make durable
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for d in dirs:
                fsync_dir(d)
        except OSError as exc:
            with self._sync_lock:
                self._unsynced |= files
                self._unsynced_dirs |= dirs
            _raise(exc, "flush")

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, content_tag(data)

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        # Compare and swap under a lock every process using this folder shares
        # (two mounts of one folder vault are two processes): flock on a file
        # in .tmp/, which listings skip. No stale-lock problem: the kernel drops
        # a flock when its holder dies.
        lock_path = os.path.join(self.root, _TMP, "versioned.lock")
        try:
            self._ensure_dir(os.path.dirname(lock_path))
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            _raise(exc, key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: threads of one process exclude each other too
            try:
                old: str | None = content_tag(self.get(key))
            except StoreNotFoundError:
                old = None
            if old != expect:
                raise PreconditionFailedError(f"{key} changed (another writer?)")
            self.put(key, data, if_none_match=expect is None)
        finally:
            os.close(fd)  # releases the flock
        return content_tag(data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                if length is None:
                    return f.read()
                return f.read(length)
        except FileNotFoundError:
            raise StoreNotFoundError(f"object {key} is missing from the store") from None
        except OSError as exc:
            _raise(exc, key)
            raise  # unreachable; keeps type checkers quiet

    def stat(self, key: str) -> int:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            raise StoreNotFoundError(f"object {key} is missing from the store") from None
        except OSError as exc:
            _raise(exc, key)
            raise

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _ in self._walk(prefix):
            yield key

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for key, path in self._walk(prefix):
            try:
                yield key, os.stat(path).st_mtime
            except FileNotFoundError:
                continue  # deleted since it was listed

    def _walk(self, prefix: str) -> Iterator[tuple[str, str]]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            if rel == _TMP or rel.startswith(_TMP + os.sep):
                dirnames[:] = []
                continue
            parts = [] if rel == "." else rel.split(os.sep)
            if len(parts) == 2 and parts[0] in _FANNED:  # fan-out folder: not part of the key
                parts = parts[:1]
            for name in filenames:
                key = "/".join(parts + [name])
                if key.startswith(prefix):
                    yield key, os.path.join(dirpath, name)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            _raise(exc, key)

    def space(self) -> tuple[int, int] | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
