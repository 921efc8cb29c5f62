"""WriteBackStore: a local write-back cache in front of a remote store (an ObjectStore wrapper).

Puts land in ``<cache dir>/pending/`` and return at local-disk speed; a
background uploader copies them to the inner store (S3) in the order the
bucket's consistency needs; uploaded objects stay in ``<cache dir>/clean/``
(``cache.CleanCache``) as a read cache, evicted least recently used first
within ``cache_size`` bytes. ``fs``, ``meta`` and ``content`` do not change:
they see the same contract (store/base.py) as for any store.

Contract, as seen from above:

* ``put`` writes the ciphertext to ``pending/<seq>-<op>-<key>`` (a temporary
  name first, then a rename: a crash never leaves half an object under a final
  name). ``seq`` is a 16-digit, monotonically increasing number, so the upload
  order survives a restart; ``op`` is ``P`` (put), ``C`` (put with
  if-none-match) or ``D`` (delete). Keys are random ids and HMACs, written with
  ``/`` as ``~``: no name or byte in the cache folder is plaintext.
  ``durable=True`` fsyncs the file and the folder before returning;
  ``durable=False`` defers both to ``flush()``, the barrier the journal calls
  before a batch. "Durable" here means on the local disk: that is what
  fsync()/close() promise (ARCHITECTURE invariant 4); uploading is
  asynchronous and resumes after a crash.
* ``if_none_match`` is refused at once (PreconditionFailedError) when the key
  exists locally (pending or clean), and is passed to the inner put at upload
  time. If that upload loses (another device stored that journal batch), the
  uploader stops, the conflict is recorded (``last_error``, and a ``conflict``
  file so it survives a restart) and every later put raises ConflictError, which
  turns the filesystem read-only. Nothing local is deleted.
* ``get``: pending, then clean (marking it recently used), then the inner store.
  On a miss, a whole-object read (``offset == 0`` and no ``length``: journal
  batches) and a ranged read that continues the previous read of the same object
  (a sequential read) fetch the whole object, keep it in clean and return the
  range asked for; any other ranged read (a header scan, video scrubbing)
  fetches only its range and is not cached. Objects are at most one chunk
  (4 MiB by default), so a whole fetch is bounded.
* ``prefetch(keys)`` (a hint from a sequential reader) fetches whole objects
  into clean on background threads; a ``get`` of a key being fetched waits
  for that fetch instead of starting another.
* ``stat``/``exists`` look locally first; ``list`` is the union of the inner
  store's listing and the local objects (pending keys included, so the journal
  finds batches not yet uploaded), minus keys deleted locally and not yet
  remotely.
* ``delete`` drops the clean copy at once and queues the remote delete behind
  every put queued before it. A put still queued for that key is cancelled;
  when the object never left this machine, no remote delete is needed.

Upload order (the bucket is consistent at every instant, invariant 5): a put
of a ``data/`` key may go as soon as no earlier entry for the same key is
pending (data objects among themselves go in parallel, and may overtake a
batch: an object nobody references yet is harmless). Any other put (journal
batches, conditional puts) waits until every earlier entry is uploaded. A
delete waits for every earlier put. Failures (StoreError) retry with
exponential backoff, 0.5 s doubling to 60 s, for all uploads at once (the
store is down, not one object); a delete of a missing object is a success.

Bounds: clean objects are evicted to keep pending + clean within
``cache_size``; pending (dirty) objects are never evicted. When pending bytes
would pass ``dirty_size`` (default: ``cache_size``) a put waits for the
uploader (one warning line per episode). A full cache disk first evicts clean
objects, then raises StoreFullError (ENOSPC to the writer).

Restart: the folder is locked (flock) by one process at a time. ``pending/``
is replayed in sequence order; ``clean/`` is re-indexed by modification time.
A ``running`` marker detects an unclean shutdown: clean objects are then
discarded (a power cut may have left their bytes half-written; the bucket has
them), pending ones are kept (what was acknowledged was fsynced).

Threading: one lock and condition around every index; file I/O and network
calls run outside it except renames and unlinks. The uploader threads start in
``__init__`` unless ``start=False`` (a daemon that forks starts them in the
child with ``start()``). Callers: `cli` (mount), `daemon` (start, status,
wait_uploaded, close). Imports errors and the store modules only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

from ..errors import ConflictError, PreconditionFailedError, StoreError, StoreFullError, StoreNotFoundError
from .base import ObjectStore
from .cache import TMP_PREFIX, CleanCache, is_key, key_to_name, name_to_key, read_fd, write_file
from .local import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10 << 30
DEFAULT_UPLOAD_THREADS = 4
RETRY_INITIAL = 0.5
RETRY_MAX = 60.0
RATE_WINDOW = 20.0  # seconds of uploads the reported rate averages over
# Puts wait this long before uploading (unless a wait for uploads forces them), so
# that a commit can still supersede them (claim/cancel_claimed): one PUT per window.
WRITE_BACK_DELAY = float(os.environ.get("ENCFS_PHOTO_WRITE_BACK_DELAY", "1.0"))

# Read-ahead: objects a sequential reader will want next are fetched whole into
# clean/ by these threads, off the FUSE thread; never while free cache room is short.
PREFETCH_THREADS = 4
PREFETCH_QUEUE = 16  # keys waiting; older requests are dropped (the reader moved on)
PREFETCH_MIN_ROOM = 256 << 20

PUT, COND, DELETE = "P", "C", "D"
# What an offline mount needs to open the vault; copies live in <cache dir>/meta/.
_META_PREFIXES = ("config", "keys/", "journal/", "journal-floor")
_LISTED_PREFIXES = ("keys/", "journal/")  # listings remembered for an offline mount
_PENDING_RE = re.compile(r"^(\d{16})-([PCD])-(.+)$")


class CacheBusyError(StoreError):
    """The cache folder is in use by another mount."""


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``1.5T``, ``64KiB``, ``123`` (bytes) -> bytes (binary units). ValueError if malformed."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r} (use e.g. 10G, 500M, 64K or a byte count)")
    scale = 1 << (10 * "_kmgtp".index(m.group(2).lower() or "_"))
    return int(float(m.group(1)) * scale)


def default_cache_dir(identity: str) -> str:
    """``$XDG_CACHE_HOME/encfs-photo/<hash>`` (else ``~/.cache/...``) for a store identity (URL and endpoint)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "encfs-photo", hashlib.sha256(identity.encode()).hexdigest()[:16])


def _store_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"cache disk full while writing {what}")
    return StoreError(f"cache: {what}: {exc.strerror or exc}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Entry:
    """One queued operation: a file in pending/ (empty for a delete)."""

    __slots__ = ("seq", "op", "key", "size", "name", "inflight", "barrier", "claimed", "ready_at")

    def __init__(self, seq: int, op: str, key: str, size: int) -> None:
        self.seq = seq
        self.op = op
        self.key = key
        self.size = size
        self.name = f"{seq:016d}-{op}-{key_to_name(key)}"
        self.inflight = False
        self.claimed = False  # claim(): a commit may supersede it, so it must not start uploading
        self.ready_at = 0.0  # monotonic time before which the uploader leaves it (write-back delay)
        # Only plain data puts may go in parallel; anything else waits for all before it.
        self.barrier = op == COND or (op == PUT and not key.startswith("data/"))


class WriteBackStore:
    """An ObjectStore that stages puts and deletes on local disk and uploads them in the background."""

    def __init__(self, inner: ObjectStore, cache_dir: str, cache_size: int = DEFAULT_CACHE_SIZE, *,
                 dirty_size: int | None = None, upload_threads: int = DEFAULT_UPLOAD_THREADS,
                 owner: str | None = None, retry_initial: float = RETRY_INITIAL, retry_max: float = RETRY_MAX,
                 start: bool = True, write_back_delay: float = WRITE_BACK_DELAY) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
        self.cache_size = int(cache_size)
        self.dirty_size = int(dirty_size) if dirty_size else self.cache_size
        self.upload_threads = max(1, min(upload_threads, inner.capabilities.max_connections or upload_threads))
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.write_back_delay = write_back_delay
        self._force_below = 0  # entries with a lower seq upload at once: someone waits for them
        self._claimed: dict[str, _Entry] = {}  # key -> the queued entry claim() reserved
        self._next_ready: float | None = None  # when the earliest delayed entry becomes due
        self._pending_dir = os.path.join(self.cache_dir, "pending")
        self._clean = CleanCache(os.path.join(self.cache_dir, "clean"))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: OrderedDict[int, _Entry] = OrderedDict()  # by seq; only entries not yet uploaded
        self._latest: dict[str, _Entry] = {}  # key -> newest queued entry for it
        self._count: dict[str, int] = {}  # key -> queued entries for it
        self._seq = 0
        self.pending_bytes = 0
        self._unsynced: set[_Entry] = set()
        self._dir_dirty = False
        self._inflight = 0
        self._failures = 0
        self._retry_at = 0.0
        self._conflict: str | None = None
        self._held: str | None = None  # hold_metadata(): why only data objects upload now
        self._held_waits = False
        self.offline = False  # set by a mount that found the store unreachable: list from local copies
        self._meta_dir = os.path.join(self.cache_dir, "meta")
        self._meta_index: set[str] = set()  # metadata keys the store held at the last listing or upload
        self._leave = False  # leave_queued(): waits for uploads return at once
        self._stopping = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._threads_pid = -1
        self._waiting_writers = 0
        self._reads: OrderedDict[str, int] = OrderedDict()  # key -> end of its last ranged read (uncached)
        self._prefetch_queue: deque[str] = deque()
        self._prefetching: dict[str, threading.Event] = {}  # queued or being fetched; set when done
        self._prefetch_threads: list[threading.Thread] = []
        self._prefetch_pid = -1
        self.prefetched = 0
        self.last_error: str | None = None
        self.uploaded_objects = 0
        self.uploaded_bytes = 0
        self.hits = 0
        self.misses = 0
        self._recent: deque[tuple[float, int]] = deque()
        self._lock_fd = -1
        try:
            self._open(owner)
        except OSError as exc:
            self._release_lock()
            raise _store_error(exc, self.cache_dir) from None
        except BaseException:
            self._release_lock()
            raise
        if start:
            self.start()

    # ------------------------------------------------------------ opening

    def _open(self, owner: str | None) -> None:
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        for d in (self._pending_dir, self._clean.root):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.cache_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheBusyError(f"cache folder {self.cache_dir} is in use by another mount "
                                 "(each mount needs its own --cache-dir)") from None
        if owner:
            self.check_owner(owner)
        running = os.path.join(self.cache_dir, "running")
        if os.path.exists(running):
            log.warning("cache: the last mount using %s did not stop cleanly; its clean objects are discarded "
                        "(they are in the store) and its queued uploads resume", self.cache_dir)
            self._clean.wipe()
        else:
            self._clean.scan()
        with open(running, "w") as f:
            f.write(f"{os.getpid()}\n")
        fsync_dir(self.cache_dir)
        try:
            with open(os.path.join(self.cache_dir, "conflict"), errors="replace") as f:
                self._conflict = f.read().strip() or "conflict"
            self.last_error = self._conflict
            log.error("cache: %s", self._conflict)
        except FileNotFoundError:
            pass
        self._scan_pending()
        self._clean.evict(self.cache_size - self.pending_bytes)
        os.makedirs(self._meta_dir, mode=0o700, exist_ok=True)
        try:
            with open(os.path.join(self._meta_dir, "index"), errors="replace") as f:
                # a damaged index only loses the lines that name no object we could hold
                self._meta_index = {key for line in f if is_key(key := line.strip())}
        except FileNotFoundError:
            pass

    def check_owner(self, owner: str) -> None:
        """Claim the folder for one vault (``owner``: a hash of its id); StoreError if another vault's."""
        owner_path = os.path.join(self.cache_dir, "owner")
        try:
            with open(owner_path, errors="replace") as f:
                found = f.read().strip()
        except FileNotFoundError:
            found = None
        if found is None:
            with open(owner_path, "w") as f:
                f.write(owner + "\n")
        elif found != owner:
            raise StoreError(f"cache folder {self.cache_dir} belongs to another vault; choose another --cache-dir")

    def _scan_pending(self) -> None:
        found = []
        for name in os.listdir(self._pending_dir):
            path = os.path.join(self._pending_dir, name)
            if name.startswith(TMP_PREFIX):
                os.unlink(path)  # a put that never returned: nobody was told it was stored
                continue
            m = _PENDING_RE.match(name)
            try:
                if not m:
                    raise StoreError(name)
                key = name_to_key(m.group(3))
                key_to_name(key)
            except StoreError:
                log.warning("cache: ignoring unexpected file %s", path)
                continue
            size = 0 if m.group(2) == DELETE else os.stat(path).st_size
            found.append((int(m.group(1)), m.group(2), key, size))
        found.sort()
        newest_cond = {key: seq for seq, op, key, _ in found if op == COND}
        for seq, op, key, size in found:
            if op == COND and newest_cond[key] != seq:
                # A crash between storing a superseding version and cancelling the
                # claimed one (cancel_claimed): only the newest was ever acknowledged.
                os.unlink(os.path.join(self._pending_dir, f"{seq:016d}-{op}-{key_to_name(key)}"))
                continue
            self._add_locked(_Entry(seq, op, key, size))
        self._seq = found[-1][0] + 1 if found else 0
        if found:
            log.info("cache: %d queued operations (%d bytes) to upload from %s", len(found), self.pending_bytes,
                     self.cache_dir)

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ------------------------------------------------------------ queue bookkeeping (lock held)

    def _add_locked(self, e: _Entry) -> None:
        self._queue[e.seq] = e
        self._latest[e.key] = e
        self._count[e.key] = self._count.get(e.key, 0) + 1
        self.pending_bytes += e.size

    def _remove_locked(self, e: _Entry) -> bool:
        """Take ``e`` out of the queue; True if it was the newest entry for its key."""
        del self._queue[e.seq]
        n = self._count[e.key] - 1
        if n:
            self._count[e.key] = n
        else:
            del self._count[e.key]
        self._unsynced.discard(e)
        self.pending_bytes -= e.size
        if self._latest.get(e.key) is e:
            del self._latest[e.key]
            return True
        return False

    def _path(self, e: _Entry) -> str:
        return os.path.join(self._pending_dir, e.name)

    def check_writable(self) -> None:
        """ConflictError once uploads stopped on another writer's batch (StoreError once closed)."""
        self._check_writable()

    def _check_writable(self) -> None:
        if self._conflict is not None:
            raise ConflictError(f"{self._conflict}; this mount is read-only to avoid clobbering the other writer")
        if self._closed:
            raise StoreError("the cache is closed")

    def _exists_locally(self, key: str) -> bool:
        e = self._latest.get(key)
        if e is not None:
            return e.op != DELETE
        return key in self._clean

    # ------------------------------------------------------------ copies for an offline mount

    def _meta_path(self, key: str) -> str:
        return os.path.join(self._meta_dir, key_to_name(key))

    def _keep_copy(self, key: str, data: bytes) -> None:
        """Keep the store's ``key`` (a metadata object) in meta/."""
        if key.startswith(_META_PREFIXES) and self._link_copy(key, data=data):
            with self._cond:
                self._index_add_locked(key)

    def _keep_copy_locked(self, key: str, path: str) -> None:
        """The same for an uploaded pending file (lock held): a hard link, no copy, no fsync needed."""
        if self._link_copy(key, path=path):
            self._index_add_locked(key)

    def _index_add_locked(self, key: str) -> None:
        if key.startswith(_LISTED_PREFIXES) and key not in self._meta_index:
            self._meta_index.add(key)
            self._save_index_locked()

    def _link_copy(self, key: str, data: bytes | None = None, path: str | None = None) -> bool:
        tmp = os.path.join(self._meta_dir, TMP_PREFIX + os.urandom(8).hex())
        try:
            if path is not None:
                os.link(path, tmp)  # an uploaded pending file: fsynced already, no copy
            else:
                write_file(tmp, data or b"", fsync=True)
            os.replace(tmp, self._meta_path(key))
        except OSError as exc:
            log.debug("cache: no offline copy of %s: %s", key, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        return True

    def _drop_copy(self, key: str) -> None:
        if not key.startswith(_META_PREFIXES):
            return
        try:
            os.unlink(self._meta_path(key))
        except OSError:
            pass
        with self._cond:
            if key in self._meta_index:
                self._meta_index.discard(key)
                self._save_index_locked()

    def _save_index_locked(self) -> None:
        # Small (one line per journal batch and slot), rewritten on change; a
        # lost update only makes an offline mount see an older listing.
        text = "".join(k + "\n" for k in sorted(self._meta_index))
        tmp = os.path.join(self._meta_dir, TMP_PREFIX + os.urandom(8).hex())
        try:
            write_file(tmp, text.encode(), fsync=False)
            os.replace(tmp, os.path.join(self._meta_dir, "index"))
        except OSError as exc:
            log.debug("cache: could not save the offline index: %s", exc)

    def _offline_copy(self, key: str) -> bytes | None:
        if not self.offline or not key.startswith(_META_PREFIXES):
            return None
        try:
            with open(self._meta_path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            # Every metadata object the last mount read or wrote has a copy:
            # one without (the floor hint of a vault never pruned) did not exist.
            raise StoreNotFoundError(f"object {key} is not in the offline copy of the store") from None
        except OSError:
            return None

    def has_offline_copy(self, key: str) -> bool:
        """True when an offline mount could read ``key`` (the vault config, say) from this folder."""
        return os.path.exists(self._meta_path(key))

    def copy_for_offline(self) -> None:
        """Copy the config and key slots from the store (the mount read them before the cache existed)."""
        for key in ["config", *self._listing("keys/", with_times=False)]:
            try:
                self._keep_copy(key, self.inner.get(key))
            except StoreNotFoundError:
                continue

    def go_online(self) -> None:
        """The store answers again (after an offline mount): list and read it as usual."""
        self.offline = False

    # ------------------------------------------------------------ other devices

    def hold_metadata(self, reason: str, *, until_released: bool = False) -> None:
        """Upload only data objects until ``release_metadata()``: no journal batch, config, slot or delete.

        While this mount does not hold the vault's lease, a queued batch could
        take a sequence number another device is about to use; data objects
        nobody references yet are harmless. ``until_released``: the hold is
        expected to end (an offline mount taking its lease back), so waits for
        uploads keep waiting; otherwise they return once only held entries are left."""
        with self._cond:
            self._held = reason
            self._held_waits = until_released
            self._cond.notify_all()

    def release_metadata(self) -> None:
        with self._cond:
            self._held = None
            self._cond.notify_all()

    def declare_conflict(self, msg: str) -> None:
        """Another device owns the vault now: stop uploads and refuse puts (read-only), durably."""
        with self._cond:
            self._record_conflict(msg)

    # ------------------------------------------------------------ the store contract

    def describe(self) -> str:
        return self.inner.describe()

    def local_dir(self) -> str:
        """Where the filesystem may keep its close log: the cache folder, beside the upload queue."""
        return self.cache_dir

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None:
        key_to_name(key)
        size = len(data)
        with self._cond:
            self._check_writable()
            if if_none_match and self._exists_locally(key) and key not in self._claimed:
                raise PreconditionFailedError(f"{key} exists (another writer?)")
            self._reserve_locked(size)
        tmp = os.path.join(self._pending_dir, TMP_PREFIX + os.urandom(8).hex())
        try:
            self._write_tmp(tmp, data, durable)
            with self._cond:
                try:
                    self._check_writable()
                    if if_none_match and self._exists_locally(key) and key not in self._claimed:
                        raise PreconditionFailedError(f"{key} exists (another writer?)")
                    e = _Entry(self._seq, COND if if_none_match else PUT, key, size)
                    claimed = self._claimed.get(key)
                    # A superseding version keeps the window of the one it replaces:
                    # uploads lag writes by one delay, not by a whole import.
                    e.ready_at = claimed.ready_at if claimed else time.monotonic() + self.write_back_delay
                    os.rename(tmp, self._path(e))
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                    raise
                self._seq += 1
                self.pending_bytes -= size  # the reservation becomes the entry's own count
                self._add_locked(e)
                self._dir_dirty = True
                if not durable:
                    self._unsynced.add(e)
                self._cond.notify_all()
        except BaseException:
            with self._cond:
                self.pending_bytes -= size
                self._cond.notify_all()
            raise
        if durable:
            self.flush()  # the folder entry, and every earlier deferred put with it

    # ------------------------------------------------------------ superseding queued puts

    def claim(self, keys: list[str]) -> bool:
        """Reserve the queued puts of ``keys`` so that a commit can supersede them; False if any cannot be.

        A put can be superseded only while it has not started uploading. Claimed
        entries stay queued (and block what a barrier blocks) until
        ``cancel_claimed`` drops them or ``unclaim`` hands them back."""
        with self._cond:
            entries = [self._latest.get(k) for k in keys]
            now = time.monotonic()
            # Not once it is due: folding into a put that waits for uploads ahead
            # of it could go on for ever; and not when someone waits for it (a
            # sync must not return while its changes move to a later entry).
            if any(e is None or e.op == DELETE or e.inflight or e.claimed or self._count[e.key] != 1
                   or e.ready_at <= now or e.seq < self._force_below for e in entries):
                return False
            for e in entries:
                e.claimed = True  # type: ignore[union-attr]
                self._claimed[e.key] = e  # type: ignore[union-attr]
            return True

    def unclaim(self, keys: list[str]) -> None:
        with self._cond:
            for k in keys:
                e = self._claimed.pop(k, None)
                if e is not None:
                    e.claimed = False
            self._cond.notify_all()

    def cancel_claimed(self, keys: list[str]) -> None:
        """Drop claimed puts that never left this machine: what superseded them is queued and durable."""
        with self._cond:
            for k in keys:
                e = self._claimed.pop(k, None)
                if e is None:
                    continue
                self._remove_locked(e)  # a superseding put of the same key stays the newest entry
                try:
                    os.unlink(self._path(e))
                except FileNotFoundError:
                    pass
            self._cond.notify_all()

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_versioned(key)  # a live coordination object: never from the cache

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        return self.inner.put_versioned(key, data, expect=expect)

    def _reserve_locked(self, size: int) -> None:
        """Back-pressure: wait until ``size`` more dirty bytes fit under the dirty cap, then count them."""
        if self.pending_bytes and self.pending_bytes + size > self.dirty_size:
            if self._threads_pid != os.getpid():
                self._start_locked()  # nobody would ever drain the queue
            log.warning("cache: %.0f MiB wait for upload (cap %.0f MiB); writes wait for the uploads",
                        self.pending_bytes / 2**20, self.dirty_size / 2**20)
            self._waiting_writers += 1
            try:
                while self.pending_bytes and self.pending_bytes + size > self.dirty_size:
                    self._check_writable()
                    self._cond.wait(1.0)
            finally:
                self._waiting_writers -= 1
            log.info("cache: uploads drained below the cap; writes continue")
        self.pending_bytes += size
        self._clean.evict(self.cache_size - self.pending_bytes)

    def _write_tmp(self, path: str, data: bytes, fsync: bool) -> None:
        for attempt in (1, 2):
            try:
                write_file(path, data, fsync)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or attempt == 2:
                    err = _store_error(exc, "a cache object")
                    if isinstance(err, StoreFullError):
                        err = StoreFullError(f"cache disk full at {self.cache_dir} "
                                             f"({len(self._queue)} objects wait for upload)")
                    raise err from None
                with self._cond:
                    freed = self._clean.evict(self._clean.bytes - max(len(data), 1) - (16 << 20))
                if not freed:
                    raise StoreFullError(f"cache disk full at {self.cache_dir} "
                                         f"({len(self._queue)} objects wait for upload)") from None
                log.warning("cache: disk full; evicted %d bytes of clean objects", freed)

    def flush(self) -> None:
        """Make every earlier put durable on the local disk (fsync files and the pending folder)."""
        with self._cond:
            entries, self._unsynced = self._unsynced, set()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        try:
            for e in entries:
                try:
                    fd = os.open(self._path(e), os.O_RDONLY)
                except FileNotFoundError:
                    continue  # uploaded (or cancelled) meanwhile
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if entries or dir_dirty:
                fsync_dir(self._pending_dir)
        except OSError as exc:
            with self._cond:
                self._unsynced |= entries
                self._dir_dirty = True
            raise _store_error(exc, "flush") from None

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._get(key, offset, length, waited=False)

    def _get(self, key: str, offset: int, length: int | None, waited: bool) -> bytes:
        with self._cond:
            e = self._latest.get(key)
            if e is not None:
                if e.op == DELETE:
                    raise StoreNotFoundError(f"object {key} is missing from the store")
                try:
                    fd = os.open(self._path(e), os.O_RDONLY)
                except OSError as exc:
                    raise _store_error(exc, key) from None
            else:
                fd = self._clean.open(key)
            fetching = self._prefetching.get(key) if fd is None and not waited else None
            if fetching is None:
                if fd is not None:
                    self.hits += 1
                else:
                    self.misses += 1
                    sequential = offset > 0 and self._reads.get(key) == offset
        if fetching is not None:
            # Read-ahead is fetching it: wait for that rather than fetch it twice.
            fetching.wait(timeout=120)
            return self._get(key, offset, length, waited=True)
        if fd is not None:
            try:
                return read_fd(fd, offset, length)
            except OSError as exc:
                raise _store_error(exc, key) from None
            finally:
                os.close(fd)
        copy = self._offline_copy(key)
        if copy is not None:
            return copy[offset:len(copy) if length is None else offset + length]
        if (offset or length is not None) and not sequential:
            data = self.inner.get(key, offset, length)
            with self._cond:
                self._reads[key] = offset + len(data)
                self._reads.move_to_end(key)
                while len(self._reads) > 1024:
                    self._reads.popitem(last=False)
            return data
        whole = self.inner.get(key)
        self._keep_copy(key, data=whole)
        self._fill(key, whole)
        if offset == 0 and length is None:
            return whole
        return whole[offset:len(whole) if length is None else offset + length]

    def prefetch(self, keys: list[str]) -> None:
        """Fetch these objects whole into the clean cache in the background: a sequential reader wants them next.

        A hint: objects already local, or a cache without room to spare, are
        skipped; the newest requests win when the queue is full."""
        with self._cond:
            if self._closed or self.offline or self.cache_size - self.pending_bytes < PREFETCH_MIN_ROOM:
                return
            added = False
            for key in keys:
                if key in self._latest or key in self._clean or key in self._prefetching:
                    continue
                self._prefetching[key] = threading.Event()
                self._prefetch_queue.append(key)
                added = True
            while len(self._prefetch_queue) > PREFETCH_QUEUE:
                self._prefetching.pop(self._prefetch_queue.popleft()).set()
            if not added:
                return
            if self._prefetch_pid != os.getpid():
                self._prefetch_pid = os.getpid()  # threads do not survive a fork: start ours here
                self._prefetch_threads = [
                    threading.Thread(target=self._prefetcher, name=f"encfs-prefetch-{i}", daemon=True)
                    for i in range(PREFETCH_THREADS)]
                for t in self._prefetch_threads:
                    t.start()
            self._cond.notify_all()

    def _prefetcher(self) -> None:
        while True:
            with self._cond:
                while not self._prefetch_queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = self._prefetch_queue.popleft()
                done = self._prefetching[key]
            try:
                self._fill(key, self.inner.get(key))
                with self._cond:
                    self.prefetched += 1
            except StoreError as exc:
                # Only a hint: the reader fetches it itself and sees the error there.
                log.debug("cache: read-ahead of %s failed: %s", key, exc)
            except Exception:
                log.exception("cache: read-ahead of %s failed", key)
            finally:
                with self._cond:
                    if self._prefetching.get(key) is done:
                        del self._prefetching[key]
                done.set()

    def _fill(self, key: str, data: bytes) -> None:
        """Keep a fetched object in the clean cache (best effort: a full disk only skips it)."""
        if len(data) > self.cache_size - self.pending_bytes:
            return
        tmp = os.path.join(self._clean.root, TMP_PREFIX + os.urandom(8).hex())
        try:
            write_file(tmp, data, fsync=False)
        except OSError as exc:
            log.debug("cache: not caching %s: %s", key, exc)
            return
        with self._cond:
            self._reads.pop(key, None)
            if key in self._latest or self._closed:
                os.unlink(tmp)  # written or deleted locally meanwhile: the local version wins
                return
            try:
                self._clean.adopt(key, tmp, len(data))
            except OSError:
                os.unlink(tmp)
                return
            self._clean.evict(self.cache_size - self.pending_bytes)

    def stat(self, key: str) -> int:
        with self._cond:
            e = self._latest.get(key)
            if e is not None:
                if e.op == DELETE:
                    raise StoreNotFoundError(f"object {key} is missing from the store")
                return e.size
            size = self._clean.size(key)
        copy = self._offline_copy(key) if size is None else None
        if copy is not None:
            return len(copy)
        return size if size is not None else self.inner.stat(key)

    def exists(self, key: str) -> bool:
        with self._cond:
            e = self._latest.get(key)
            if e is not None:
                return e.op != DELETE
            if key in self._clean:
                return True
        try:
            if self._offline_copy(key) is not None:
                return True
        except StoreNotFoundError:
            return False
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(self._listing(prefix, with_times=False)))

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        return iter(sorted(self._listing(prefix, with_times=True).items()))

    def _listing(self, prefix: str, with_times: bool) -> dict[str, float]:
        with self._cond:
            # Deletes queued now may finish while the bucket is listed (outside
            # the lock); the listing may still show such a key, so drop it.
            deleting = {k for k, e in self._latest.items() if e.op == DELETE and k.startswith(prefix)}
        now = time.time()  # what is not in the bucket yet is as young as can be
        if self.offline:  # what the store held when it was last seen
            with self._cond:
                listed: Iterator[tuple[str, float]] = iter([(k, now) for k in self._meta_index
                                                            if k.startswith(prefix)])
        elif with_times:
            listed = self.inner.list_with_times(prefix)
        else:
            listed = ((k, now) for k in self.inner.list(prefix))
        times = {k: t for k, t in listed if k not in deleting}
        if not self.offline and prefix in _LISTED_PREFIXES:
            with self._cond:
                known = {k for k in self._meta_index if k.startswith(prefix)}
                if known != set(times):
                    self._meta_index = (self._meta_index - known) | set(times)
                    self._save_index_locked()
        with self._cond:
            for key in self._clean.keys(prefix):
                times.setdefault(key, now)
            for key, e in self._latest.items():
                if key.startswith(prefix):
                    if e.op == DELETE:
                        times.pop(key, None)
                    else:
                        times[key] = now
        return times

    def delete(self, key: str) -> None:
        key_to_name(key)
        self._drop_copy(key)
        with self._cond:
            in_clean = key in self._clean
            self._clean.discard(key)
            self._reads.pop(key, None)
            e = self._latest.get(key)
            if e is not None and e.op == DELETE:
                return  # already queued
            cancelled = False
            # Cancel a queued put only while no barrier (a journal batch) was
            # queued after it: such a batch may name the object, and without
            # the put it would reach the bucket referencing nothing (a kill
            # before the later batch that drops the object is uploaded would
            # leave exactly that). Otherwise upload, then delete, in order.
            if (e is not None and e.op == PUT and not e.inflight
                    and not any(x.barrier for s, x in self._queue.items() if s > e.seq)):
                self._remove_locked(e)
                try:
                    os.unlink(self._path(e))
                except FileNotFoundError:
                    pass
                cancelled = True
                self._cond.notify_all()
            if cancelled and not in_clean and key not in self._count:
                return  # the object never left this machine
            d = _Entry(self._seq, DELETE, key, 0)
            try:
                os.close(os.open(self._path(d), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                raise _store_error(exc, f"delete of {key}") from None
            self._seq += 1
            self._add_locked(d)
            self._dir_dirty = True
            self._cond.notify_all()

    def space(self) -> tuple[int, int] | None:
        return self.inner.space()

    # ------------------------------------------------------------ the uploader

    def start(self) -> None:
        """Start the uploader threads in this process (again after a fork); idempotent."""
        with self._cond:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closed:
            raise StoreError("the cache is closed")
        if self._threads_pid == os.getpid():
            return
        self._threads_pid = os.getpid()
        self._threads = [threading.Thread(target=self._worker, name=f"encfs-upload-{i}", daemon=True)
                         for i in range(self.upload_threads)]
        for t in self._threads:
            t.start()

    def _pick_locked(self) -> _Entry | None:
        """The first entry that may be uploaded now (see the module docstring for the rules)."""
        earlier_any = False
        earlier_put = False
        seen: set[str] = set()
        now = time.monotonic()
        self._next_ready = None
        force = self._waiting_writers > 0

        def young(e: _Entry) -> bool:
            return e.ready_at > now and e.seq >= self._force_below and not force

        # While a journal batch waits out the write-back delay (or is claimed),
        # young puts wait too: the batch that will name them is not going yet,
        # and a commit may still supersede them (a pack rewritten with more files).
        batch_waits = any(e.claimed or (young(e) and e.key.startswith("journal/")) for e in self._queue.values())
        for e in self._queue.values():
            if e.claimed or (batch_waits and young(e)):
                if not e.claimed and (self._next_ready is None or e.ready_at < self._next_ready):
                    self._next_ready = e.ready_at  # wake up when it is due
            elif not e.inflight and e.key not in seen and (self._held is None or (e.op == PUT and not e.barrier)):
                if e.op == DELETE:
                    if not earlier_put:
                        return e
                elif not e.barrier or not earlier_any:
                    return e
            earlier_any = True
            earlier_put = earlier_put or e.op != DELETE
            seen.add(e.key)
        return None

    def _next_locked(self) -> _Entry | None:
        while not self._stopping:
            if self._conflict is None:
                wait = self._retry_at - time.monotonic()
                if wait <= 0:
                    e = self._pick_locked()
                    if e is not None:
                        e.inflight = True
                        self._inflight += 1
                        return e
                    self._cond.wait(None if self._next_ready is None
                                    else max(0.01, self._next_ready - time.monotonic()))
                else:
                    self._cond.wait(wait)
            else:
                self._cond.wait()
        return None

    def _worker(self) -> None:
        while True:
            with self._cond:
                e = self._next_locked()
            if e is None:
                return
            try:
                self._upload(e)
            except PreconditionFailedError as exc:
                with self._cond:
                    self._lost_race(e, exc)
            except Exception as exc:  # noqa: BLE001 - any failure is retried; the store may come back
                if not isinstance(exc, StoreError):
                    log.exception("cache: unexpected failure uploading %s", e.key)
                with self._cond:
                    self._failed(e, exc)
            else:
                with self._cond:
                    self._uploaded(e)

    def _upload(self, e: _Entry) -> None:
        if e.op == DELETE:
            try:
                self.inner.delete(e.key)
            except StoreNotFoundError:
                pass
            return
        with open(self._path(e), "rb") as f:
            data = f.read()
        if e.op == PUT:
            self.inner.put(e.key, data)
            return
        try:
            self.inner.put(e.key, data, if_none_match=True)
        except PreconditionFailedError:
            # Our own earlier upload whose answer was lost (or a crash before
            # it was recorded) finds identical bytes: that is a success.
            try:
                theirs = self.inner.get(e.key)
            except StoreNotFoundError:
                theirs = None
            if theirs != data:
                raise

    def _uploaded(self, e: _Entry) -> None:
        e.inflight = False
        self._inflight -= 1
        if self._closed:
            return  # a straggler after close: the folder may be someone else's now; redone next time
        newest = self._remove_locked(e)
        path = self._path(e)
        try:
            if e.op != DELETE and newest and e.key.startswith(_META_PREFIXES):
                self._keep_copy_locked(e.key, path)
            if e.op != DELETE and newest and e.size <= self.cache_size:
                self._clean.adopt(e.key, path, e.size)
                self._clean.evict(self.cache_size - self.pending_bytes)
            else:
                os.unlink(path)
        except OSError as exc:
            log.warning("cache: could not move uploaded %s into the clean cache: %s", e.key, exc)
        now = time.monotonic()
        self.uploaded_objects += 1
        self.uploaded_bytes += e.size
        self._recent.append((now, e.size))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        if self._failures:
            log.info("cache: uploads resumed")
            self.last_error = None
        self._failures = 0
        self._retry_at = 0.0
        self._cond.notify_all()

    def _failed(self, e: _Entry, exc: BaseException) -> None:
        e.inflight = False
        self._inflight -= 1
        now = time.monotonic()
        if now >= self._retry_at:  # uploads failing together back off together
            self._failures += 1
            delay = min(self.retry_max, self.retry_initial * 2 ** (self._failures - 1))
            self._retry_at = now + delay
            self.last_error = f"upload of {e.key} failed: {_one_line(exc)}"
            log.warning("cache: %s; retrying in %.1f s", self.last_error, delay)
        self._cond.notify_all()

    def _lost_race(self, e: _Entry, exc: BaseException) -> None:
        e.inflight = False
        self._inflight -= 1
        msg = (f"another device stored {e.key} first: the vault changed elsewhere, so uploads stopped "
               f"(nothing local was deleted; queued in {self._pending_dir})")
        self._record_conflict(msg)

    def _record_conflict(self, msg: str) -> None:
        self._conflict = msg
        self.last_error = msg
        log.error("cache: %s", msg)
        try:
            with open(os.path.join(self.cache_dir, "conflict"), "w") as f:
                f.write(msg + "\n")
        except OSError:
            pass
        self._cond.notify_all()

    # ------------------------------------------------------------ waiting, status, closing

    def wait_uploaded(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is in the inner store.

        True when it is; False on timeout or after ``leave_queued()``. Raises
        ConflictError when uploads stopped on a conflict.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._queue:
                self._start_locked()
            target = self._seq
            if target > self._force_below:
                self._force_below = target  # whoever waits does not wait out the write-back delay
                self._cond.notify_all()
            while True:
                if self._conflict is not None:
                    raise ConflictError(self._conflict)
                first = next(iter(self._queue), None)
                if first is None or first >= target:
                    return True
                if self._leave or self._stopping:
                    return False
                if (self._held is not None and not self._held_waits and not self._inflight
                        and self._pick_locked() is None):
                    return False  # what is left waits for the lease (hold_metadata)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)

    def leave_queued(self) -> None:
        """Make current and later waits (``wait_uploaded``, ``close(wait=True)``) return at once."""
        with self._cond:
            self._leave = True
            self._cond.notify_all()

    def status(self) -> dict[str, Any]:
        with self._cond:
            now = time.monotonic()
            while self._recent and self._recent[0][0] < now - RATE_WINDOW:
                self._recent.popleft()
            window = min(RATE_WINDOW, max(1.0, now - self._recent[0][0])) if self._recent else RATE_WINDOW
            deletes = sum(1 for e in self._queue.values() if e.op == DELETE)
            return {
                "cache_dir": self.cache_dir,
                "cache_size": self.cache_size,
                "dirty_cap": self.dirty_size,
                "pending_objects": len(self._queue) - deletes,
                "pending_deletes": deletes,
                "pending_bytes": self.pending_bytes,
                "clean_objects": len(self._clean),
                "clean_bytes": self._clean.bytes,
                "uploads_in_flight": self._inflight,
                "uploaded_objects": self.uploaded_objects,
                "uploaded_bytes": self.uploaded_bytes,
                "upload_rate": sum(n for _, n in self._recent) / window,
                "retrying": self._failures > 0,
                "writers_waiting": self._waiting_writers,
                "cache_hits": self.hits,
                "cache_misses": self.misses,
                "prefetched_objects": self.prefetched,
                "conflict": self._conflict,
                "last_error": self.last_error,
            }

    def close(self, wait: bool = True) -> None:
        """Stop the uploader (after draining the queue when ``wait``); what is left stays queued on disk."""
        if self._closed:
            return
        try:
            if wait:
                self.wait_uploaded()
        finally:
            with self._cond:
                self._stopping = True
                self._closed = True
                self._cond.notify_all()
                threads = self._threads if self._threads_pid == os.getpid() else []
                for done in self._prefetching.values():
                    done.set()
                self._prefetching.clear()
                self._prefetch_queue.clear()
            deadline = time.monotonic() + 2.0  # an upload still in flight may finish (else it is redone)
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            try:
                self.flush()
            except StoreError as exc:
                log.error("cache: %s", exc)
            if not any(t.is_alive() for t in threads):
                try:
                    os.unlink(os.path.join(self.cache_dir, "running"))
                    fsync_dir(self.cache_dir)
                except OSError:
                    pass
            self._release_lock()
            with self._cond:
                left = len(self._queue)
            if left:
                log.info("cache: %d operations (%d bytes) stay queued in %s for the next mount", left,
                         self.pending_bytes, self.cache_dir)
