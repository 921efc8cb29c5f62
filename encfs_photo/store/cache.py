"""The clean half of the local cache: ciphertext objects that are also in the store.

``CleanCache`` keeps one file per object in a folder (``<cache dir>/clean/``),
named by the object key with ``/`` written as ``~`` (keys are random ids and
HMACs, so no name says anything about the vault's content). It indexes them
in least-recently-used order and evicts from the cold end when asked to fit a
byte limit. Files hold the object's bytes exactly as stored: ciphertext only.

It knows nothing of uploads: the write-back store (``writeback.py``) moves an
object in here by renaming it once it is uploaded, and asks for eviction with
the limit that leaves room for its dirty objects, which are never in here and
so never evicted.

Threading: not thread-safe; the caller (WriteBackStore) holds its lock around
every call. Callers: ``store.writeback``. Imports nothing of the project but
``errors``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterator

from ..errors import StoreError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


def is_key(key: str) -> bool:
    """True for an object key the cache can hold as a file name."""
    return len(key) <= 200 and _KEY_RE.match(key) is not None


def key_to_name(key: str) -> str:
    """A file name for an object key (``data/ab12`` -> ``data~ab12``); StoreError for a key we cannot hold."""
    if not is_key(key):
        raise StoreError(f"bad object key {key!r}")
    return key.replace("/", "~")


def name_to_key(name: str) -> str:
    return name.replace("~", "/")


def write_file(path: str, data: bytes, fsync: bool) -> None:
    """Create ``path`` (mode 600) holding ``data``; OSError as the OS raised it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def read_fd(fd: int, offset: int, length: int | None) -> bytes:
    """Bytes [offset, offset+length) of an open file (to its end when length is None)."""
    if length is None:
        length = max(0, os.fstat(fd).st_size - offset)
    parts = []
    while length > 0:
        piece = os.pread(fd, min(length, 8 << 20), offset)
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
        length -= len(piece)
    return b"".join(parts)


class CleanCache:
    """Objects known to be in the store, as files, in LRU order."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._lru: OrderedDict[str, int] = OrderedDict()  # key -> size; first = least recently used
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: str) -> bool:
        return key in self._lru

    def path(self, key: str) -> str:
        return os.path.join(self.root, key_to_name(key))

    def scan(self) -> None:
        """Rebuild the index from the folder (after a restart): modification time is the LRU order."""
        found = []
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.startswith(TMP_PREFIX):
                    _unlink(entry.path)  # a fill interrupted by a crash
                    continue
                try:
                    key = name_to_key(entry.name)
                    key_to_name(key)
                    st = entry.stat(follow_symlinks=False)
                except (StoreError, OSError):
                    log.warning("cache: ignoring unexpected file %s", entry.path)
                    continue
                found.append((st.st_mtime_ns, key, st.st_size))
        found.sort()
        self._lru.clear()
        self.bytes = 0
        for _, key, size in found:
            self._lru[key] = size
            self.bytes += size

    def wipe(self) -> None:
        """Forget and delete every clean object (after an unclean shutdown their bytes are not trusted)."""
        with os.scandir(self.root) as it:
            for entry in it:
                _unlink(entry.path)
        self._lru.clear()
        self.bytes = 0

    def size(self, key: str) -> int | None:
        return self._lru.get(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return (k for k in self._lru if k.startswith(prefix))

    def open(self, key: str) -> int | None:
        """An open file descriptor on the object (it stays readable if evicted meanwhile), or None; marks it used."""
        if key not in self._lru:
            return None
        try:
            fd = os.open(self.path(key), os.O_RDONLY)
        except FileNotFoundError:
            log.warning("cache: clean object %s vanished from the cache folder", key)
            self.bytes -= self._lru.pop(key)
            return None
        if next(reversed(self._lru)) != key:
            # The LRU order survives a restart through mtimes. A sequential reader
            # opens the same object once per read: only its first read writes one.
            self._lru.move_to_end(key)
            try:
                os.utime(fd)
            except OSError:
                pass
        return fd

    def adopt(self, key: str, src: str, size: int) -> None:
        """Move the file ``src`` (same file system) in as the object ``key``: a rename, not a copy."""
        os.replace(src, self.path(key))
        self.bytes -= self._lru.pop(key, 0)
        self._lru[key] = size
        self.bytes += size

    def discard(self, key: str) -> None:
        size = self._lru.pop(key, None)
        if size is not None:
            self.bytes -= size
            _unlink(self.path(key))

    def evict(self, limit: int) -> int:
        """Delete least recently used objects until the clean bytes are at most ``limit``; returns bytes freed."""
        freed = 0
        while self.bytes > max(0, limit) and self._lru:
            key, size = self._lru.popitem(last=False)
            self.bytes -= size
            freed += size
            _unlink(self.path(key))
        return freed


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
