"""The close log: a close() or fsync() of small files made durable by one append and one fdatasync.

Committing on every close costs a pack object, a journal batch and their
fsyncs (DESIGN.md 20). Instead, when every unsaved change is metadata or a
small file's bytes, ``fs`` appends one encrypted record to this log: the
namespace changes since the previous record (a delta batch, FORMAT.md 7.2)
and the small files' bytes. The periodic commit (every two seconds, a sync,
a big file, unmount) then packs and journals them as before and starts a new
log generation whose base is the new journal head.

Opening a vault replays the log onto the journal head it extends: from the
start when the head is the log's base, or after the ``commit`` marker of the
batch that is the head (a crash between storing a batch and starting the new
generation). A head the log knows nothing of means another writer moved the
vault on: the log is kept aside, not applied.

Layout (FORMAT.md 9.1): MAGIC || generation (16) || be32 len || sealed header,
then per record be32 len || sealed record; record ``i`` (header: 0) is
authenticated with ``close_log_aad(vault_id, generation, i)``.

Callers: `fs`. Imports crypto, errors, store.local (fsync_dir).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import time

from . import crypto
from .errors import IntegrityError, StoreError, StoreFullError
from .store.local import fsync_dir

log = logging.getLogger(__name__)

FILE = "close-log"
MAGIC = b"EPCLOG1\n"
LOG_MAX = 16 << 20  # past this the next close commits instead (and the commit starts a new generation)
_GEN = len(MAGIC)
_FIRST = _GEN + crypto.ID_LEN


class Record:
    """A replayed delta record: the batch and the small files' bytes by inode."""

    __slots__ = ("batch", "data")

    def __init__(self, batch: dict, data: dict[int, bytes]) -> None:
        self.batch = batch
        self.data = data


def _error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"close log: disk full while {what}")
    return StoreError(f"close log: {what}: {exc.strerror}")


class CloseLog:
    """One vault's close log in ``folder`` (a write-back cache folder, or a folder store's ``.tmp``)."""

    def __init__(self, folder: str, vault_id: bytes, meta_key: bytes, lock_fd: int) -> None:
        self.folder = folder
        self.path = os.path.join(folder, FILE)
        self.vault_id = vault_id
        self._key = crypto.close_log_key(meta_key)
        self._lock_fd = lock_fd
        self._fd = -1
        self.generation = b""
        self.base: tuple[int, bytes] | None = None
        self.count = 0  # records after the header in this generation (header = index 0)
        self.size = 0  # bytes of the file that hold whole records
        self._marked: set[bytes] = set()  # batch hashes with a commit marker in this generation

    @classmethod
    def open(cls, folder: str, vault_id: bytes, meta_key: bytes) -> CloseLog | None:
        """Lock the log of ``folder``; None if another live mount holds it (it then commits per close)."""
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            # The folder itself is the lock (flock works on a directory): no
            # lock file is left behind, and a dead holder's lock goes with it.
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            log.warning("close log: cannot use %s (%s); every close commits instead", folder, exc.strerror)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning("close log: %s is in use by another mount; every close commits instead", folder)
            return None
        return cls(folder, vault_id, meta_key, fd)

    # ------------------------------------------------------------ reading (at open)

    def recover(self, seq: int, head: bytes) -> list[Record]:
        """The records that extend the journal head (``seq``, ``head``), oldest first.

        A log that extends another head is renamed aside (and logged); a
        damaged record before the last one raises IntegrityError. A torn last
        record (a crash inside its append, never acknowledged) is ignored."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _error(exc, "reading") from None
        what = f"close log {self.path}"
        if len(raw) < _FIRST + 4 or raw[:_GEN] != MAGIC:
            if len(raw) < _FIRST + 4 and MAGIC.startswith(raw[:_GEN]):
                return []  # a generation that never finished being written: it was never used
            raise IntegrityError(f"{what}: not a close log; move it aside to mount without it")
        gen = raw[_GEN:_FIRST]
        items, good = self._parse(raw, gen, what)
        if not items:
            return []  # torn header: the rename that would publish it never happened, or it held nothing
        header = items[0]
        base = (header.get("seq"), header.get("prev"))
        start = 0 if base == (seq, head.hex()) else None
        for i, item in enumerate(items):
            if item.get("k") == "commit" and item.get("seq") == seq and item.get("hash") == head.hex():
                start = i  # the head is a batch this log committed: only what came after it is new
        records = [it for i, it in enumerate(items) if i > (start or 0) and it.get("k") == "delta"]
        if start is None:
            if records:
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                aside = f"{self.path}.conflict-{stamp}-{crypto.random_bytes(3).hex()}"
                os.replace(self.path, aside)
                log.error("close log: %d closes logged after journal batch %s are not applied: the vault "
                          "has moved on to batch %d without them (another device or cache wrote to it); "
                          "kept aside in %s", len(records), base[0], seq, aside)
            return []
        if records:
            # Replaying commits at once; that commit's marker goes into this
            # generation, after its records, so a crash right after it is safe.
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
                os.ftruncate(fd, good)  # a torn last record goes
            except OSError as exc:
                raise _error(exc, "reopening") from None
            self._fd = fd
            self.generation = gen
            self.base = (base[0], bytes.fromhex(base[1]))
            self.count = len(items) - 1
            self.size = good
            self._marked = {bytes.fromhex(it["hash"]) for it in items if it.get("k") == "commit"}
        return [Record(it, it.pop("_data")) for it in records]

    def _parse(self, raw: bytes, gen: bytes, what: str) -> tuple[list[dict], int]:
        items: list[dict] = []
        pos = _FIRST
        index = 0
        while pos + 4 <= len(raw):
            (n,) = struct.unpack(">I", raw[pos:pos + 4])
            end = pos + 4 + n
            if end > len(raw):
                break  # torn: the append never completed
            try:
                payload = crypto.open_record(self._key, crypto.close_log_aad(self.vault_id, gen, index),
                                             raw[pos + 4:end], f"{what} record {index}")
            except IntegrityError:
                if end == len(raw):
                    log.warning("close log: ignoring a torn last record in %s", self.path)
                    break  # the last append, cut short by a crash: its close never returned
                log.error("integrity: %s: record %d does not authenticate", what, index)
                raise IntegrityError(f"{what}: record {index} is damaged; move the file aside to mount "
                                     "without the closes it holds") from None
            items.append(self._decode(payload, index, what))
            pos = end
            index += 1
        return items, pos

    @staticmethod
    def _decode(payload: bytes, index: int, what: str) -> dict:
        try:
            (jn,) = struct.unpack(">I", payload[:4])
            item = json.loads(payload[4:4 + jn])
            if not isinstance(item, dict):
                raise ValueError("not an object")
            if index == 0:
                prev = item.get("prev")
                if not (isinstance(item.get("seq"), int) and isinstance(prev, str) and len(prev) == 64):
                    raise ValueError("bad header")
                bytes.fromhex(prev)
                return item
            if item.get("k") == "commit":
                if not (isinstance(item.get("seq"), int) and isinstance(item.get("hash"), str)
                        and len(item["hash"]) == 64):
                    raise ValueError("bad commit marker")
                bytes.fromhex(item["hash"])
            elif item.get("k") != "delta":
                raise ValueError("unknown kind")
            data: dict[int, bytes] = {}
            pos = 4 + jn
            for ino, length in item.get("data", ()):
                if not (isinstance(ino, int) and isinstance(length, int) and 0 <= length <= len(payload) - pos):
                    raise ValueError("bad data entry")
                data[ino] = payload[pos:pos + length]
                pos += length
            if pos != len(payload):
                raise ValueError("trailing bytes")
            item["_data"] = data
            return item
        except (ValueError, TypeError, struct.error) as exc:
            raise IntegrityError(f"{what}: record {index} is malformed ({exc})") from None

    # ------------------------------------------------------------ writing

    def start(self, seq: int, head: bytes) -> None:
        """Begin a new generation extending journal head (``seq``, ``head``); its file is made at the first append.

        The old generation's file goes, durably: left behind, its records would
        look like closes made on a head the vault has since moved past."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(exc, "removing the last generation") from None
        else:
            try:
                fsync_dir(self.folder)
            except OSError as exc:
                raise _error(exc, "removing the last generation") from None
        self.generation = b""
        self.base = (seq, head)
        self.count = 0
        self.size = 0
        self._marked = set()

    def _create(self) -> None:
        assert self.base is not None, "start() first"
        gen = crypto.random_bytes(crypto.ID_LEN)
        seq, head = self.base
        header = MAGIC + gen + self._frame(gen, 0, {"seq": seq, "prev": head.hex()}, b"")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            raise _error(exc, "creating") from None
        try:
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
            fsync_dir(self.folder)  # the new name must survive too
        except OSError as exc:
            os.close(fd)
            raise _error(exc, "creating") from None
        self._fd = fd
        self.generation = gen
        self.size = len(header)

    def _frame(self, gen: bytes, index: int, item: dict, data: bytes) -> bytes:
        js = json.dumps(item, separators=(",", ":")).encode()
        sealed = crypto.seal_record(self._key, crypto.close_log_aad(self.vault_id, gen, index),
                                    struct.pack(">I", len(js)) + js + data)
        return struct.pack(">I", len(sealed)) + sealed

    def _append(self, item: dict, data: bytes) -> None:
        if self._fd < 0:
            self._create()
        frame = self._frame(self.generation, self.count + 1, item, data)
        try:
            written = os.write(self._fd, frame)
            if written != len(frame):
                raise OSError(errno.ENOSPC, "short write")
            os.fdatasync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self.size)  # no half record may stand before the next one
            except OSError:
                pass
            raise _error(exc, "appending") from None
        self.count += 1
        self.size += len(frame)

    def append(self, batch: dict, data: list[tuple[int, bytes]]) -> None:
        """Durably log one delta batch (Namespace.unlogged_batch) and small files' bytes."""
        item = dict(batch, k="delta", data=[[ino, len(b)] for ino, b in data])
        self._append(item, b"".join(b for _, b in data))

    def mark(self, seq: int, blob: bytes) -> None:
        """Note, before it is stored, that batch ``seq`` with these bytes covers every record so far.

        A retry of the same bytes (a put whose answer was lost) keeps its first
        marker: records logged since are not in it."""
        h = crypto.sha256(blob)
        if h in self._marked:
            return
        self._append({"k": "commit", "seq": seq, "hash": h.hex()}, b"")
        self._marked.add(h)

    def close(self, remove: bool = False) -> None:
        """Stop using the log; ``remove`` (everything is committed): delete it too. Drops the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove:
            try:
                os.unlink(self.path)
                fsync_dir(self.folder)
            except OSError:
                pass  # a stale generation whose base is the head replays nothing
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
