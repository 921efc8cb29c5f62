"""The namespace (inodes, directory entries) and its encrypted journal.

In memory: every inode and directory as plain Python objects, which makes
``stat`` and ``readdir`` dictionary look-ups. In the store: an append-only
chain of encrypted batches ``journal/<name(seq)>``. A batch holds either the
changes since the previous batch (a delta) or the whole namespace (a
snapshot); each carries the SHA-256 of the previous batch's stored bytes, so a
dropped, reordered or replaced batch breaks the chain. Object names are
HMACs of the sequence number: random-looking in the bucket, yet found by
recomputing them. A batch is created with if-none-match, so a second writer
loses visibly instead of overwriting.

Callers: `fs`. Imports crypto, content (ChunkRef), errors, store contract.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat as st
import struct
import time
from collections.abc import Callable, Iterable

from . import crypto
from .content import DATA_PREFIX, ChunkRef
from .errors import ConflictError, IntegrityError, PreconditionFailedError, StoreNotFoundError
from .state import RollbackGuard
from .store.base import ObjectStore

log = logging.getLogger(__name__)

# Data objects younger than this may belong to a commit in flight (gc.DEFAULT_GRACE is this too).
ORPHAN_GRACE = 24 * 3600.0

JOURNAL_PREFIX = "journal/"
FLOOR_KEY = "journal-floor"  # names the lowest batch kept after pruning (FORMAT.md 7.7)
MISS_LIMIT = 100_000  # consecutive seqs without a listed name before a head-finding scan gives up
ROOT_INO = 1
SNAPSHOT_EVERY = 256  # batches between snapshots, so opening replays a bounded tail
FOLD_MAX = 32 * 1024  # a batch this big is not rewritten again: each fold re-encrypts the whole batch
_ZERO_HASH = bytes(32)


def now_ns() -> int:
    return time.time_ns()


def _name_to_str(name: bytes) -> str:
    # JSON holds any byte string this way: invalid UTF-8 becomes lone
    # surrogates, which json escapes as \udcXX and reads back unchanged.
    return name.decode("utf-8", "surrogateescape")


def _str_to_name(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _ref_to_record(idx: int, ref: ChunkRef) -> list:
    rec: list = [idx, ref.object_id.hex(), ref.length]
    if ref.digest is not None:
        rec.append(ref.digest.hex())
        if ref.seal_id is not None:
            rec += [ref.seal_id.hex(), ref.offset]
    return rec


def _ref_from_record(rec: list) -> tuple[int, ChunkRef]:
    """``[index, object, L]`` (older records), ``+ [digest]`` (a chunk object), ``+ [digest, seal id, offset]``
    (a segment of a pack object); FORMAT.md 7.3."""
    if len(rec) not in (3, 4, 6):
        raise ValueError(f"chunk reference of {len(rec)} fields")
    idx, obj, length = int(rec[0]), bytes.fromhex(rec[1]), int(rec[2])
    dig = bytes.fromhex(rec[3]) if len(rec) > 3 else None
    seal = bytes.fromhex(rec[4]) if len(rec) > 4 else None
    offset = int(rec[5]) if len(rec) > 4 else 0
    if len(obj) != 16 or length < 0 or offset < 0 or (dig is not None and len(dig) != 16) or (
            seal is not None and len(seal) != 16):
        raise ValueError("malformed chunk reference")
    return idx, ChunkRef(obj, length, dig, seal, offset)


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "size", "atime", "mtime", "ctime", "rdev",
                 "target", "chunks", "xattrs", "children", "parent")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, t: int | None = None) -> None:
        t = now_ns() if t is None else t
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = 2 if st.S_ISDIR(mode) else 1
        self.size = 0
        self.atime = self.mtime = self.ctime = t
        self.rdev = 0
        self.target: bytes | None = None
        self.chunks: dict[int, ChunkRef] = {}
        self.xattrs: dict[bytes, bytes] = {}
        self.children: dict[bytes, int] | None = {} if st.S_ISDIR(mode) else None
        self.parent = 0

    def is_dir(self) -> bool:
        return self.children is not None

    def to_record(self) -> dict:
        r: dict = {"i": self.ino, "m": self.mode, "u": self.uid, "g": self.gid, "n": self.nlink, "s": self.size,
                   "a": self.atime, "t": self.mtime, "c": self.ctime}
        if self.rdev:
            r["r"] = self.rdev
        if self.target is not None:
            r["l"] = _name_to_str(self.target)
        if self.chunks:
            r["k"] = [_ref_to_record(i, ref) for i, ref in sorted(self.chunks.items())]
        if self.xattrs:
            r["x"] = [[_name_to_str(k), base64.b64encode(v).decode()] for k, v in self.xattrs.items()]
        if self.children is not None:
            r["p"] = self.parent
        return r

    @classmethod
    def from_record(cls, r: dict) -> Inode:
        node = cls(int(r["i"]), int(r["m"]), int(r["u"]), int(r["g"]), 0)
        node.nlink = int(r["n"])
        node.size = int(r["s"])
        node.atime, node.mtime, node.ctime = int(r["a"]), int(r["t"]), int(r["c"])
        node.rdev = int(r.get("r", 0))
        if "l" in r:
            node.target = _str_to_name(r["l"])
        node.chunks = dict(_ref_from_record(k) for k in r.get("k", ()))
        node.xattrs = {_str_to_name(k): base64.b64decode(v) for k, v in r.get("x", ())}
        if node.children is not None:
            node.parent = int(r.get("p", 0))
        return node


class Namespace:
    """Inodes by number, with the changes not yet in the journal, and those not yet in the close log."""

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        self.next_ino = ROOT_INO + 1
        self.dirty: set[int] = set()
        self.gone: set[int] = set()
        self.dents: dict[tuple[int, bytes], int | None] = {}
        # The same three since the last close-log record (fs.py, closelog.py):
        # a record carries only what changed after the one before it.
        self.unlogged: set[int] = set()
        self.unlogged_gone: set[int] = set()
        self.unlogged_dents: dict[tuple[int, bytes], int | None] = {}

    def new_ino(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def add(self, node: Inode) -> None:
        self.inodes[node.ino] = node
        self.gone.discard(node.ino)
        self.dirty.add(node.ino)
        self.unlogged_gone.discard(node.ino)
        self.unlogged.add(node.ino)

    def touch(self, node: Inode) -> None:
        self.dirty.add(node.ino)
        self.unlogged.add(node.ino)

    def drop(self, ino: int) -> None:
        self.inodes.pop(ino, None)
        self.dirty.discard(ino)
        self.gone.add(ino)
        self.unlogged.discard(ino)
        self.unlogged_gone.add(ino)

    def set_entry(self, parent: Inode, name: bytes, ino: int | None) -> None:
        assert parent.children is not None
        if ino is None:
            del parent.children[name]
        else:
            parent.children[name] = ino
        self.dents[(parent.ino, name)] = ino
        self.unlogged_dents[(parent.ino, name)] = ino

    def pending(self) -> bool:
        return bool(self.dirty or self.gone or self.dents)

    def committed(self) -> None:
        """Every change so far is in a stored batch (so in no close-log record still needed either)."""
        self.dirty.clear()
        self.gone.clear()
        self.dents.clear()
        self.logged()

    def unlogged_batch(self) -> dict | None:
        """The changes since the last close-log record, as a delta batch (FORMAT.md 7.2); None if none."""
        if not (self.unlogged or self.unlogged_gone or self.unlogged_dents):
            return None
        return {"kind": "delta", "next_ino": self.next_ino,
                "inodes": [self.inodes[i].to_record() for i in self.unlogged if i in self.inodes],
                "gone": sorted(self.unlogged_gone),
                "dents": [[d, _name_to_str(n), i] for (d, n), i in self.unlogged_dents.items()]}

    def logged(self) -> None:
        self.unlogged.clear()
        self.unlogged_gone.clear()
        self.unlogged_dents.clear()


def apply_batch(ns: Namespace, batch: dict, pending: bool = False) -> None:
    """Apply one decoded batch (journal, or close-log record) to ``ns``.

    ``pending``: the changes are not in the journal yet (a close-log record
    replayed at open): they are marked for the next commit."""
    try:
        if batch["kind"] == "snapshot":
            ns.inodes.clear()
        for r in batch["inodes"]:
            node = Inode.from_record(r)
            old = ns.inodes.get(node.ino)
            if old is not None and old.children is not None and node.children is not None:
                node.children = old.children
            ns.inodes[node.ino] = node
            if pending:
                ns.gone.discard(node.ino)
                ns.dirty.add(node.ino)
        for ino in batch["gone"]:
            ns.inodes.pop(int(ino), None)
            if pending:
                ns.dirty.discard(int(ino))
                ns.gone.add(int(ino))
        for d, name, ino in batch["dents"]:
            parent = ns.inodes.get(int(d))
            if parent is None or parent.children is None:
                continue
            if ino is None:
                parent.children.pop(_str_to_name(name), None)
            else:
                parent.children[_str_to_name(name)] = int(ino)
            if pending:
                ns.dents[(int(d), _str_to_name(name))] = None if ino is None else int(ino)
        ns.next_ino = max(ns.next_ino, int(batch["next_ino"]))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise IntegrityError(f"journal batch {batch.get('seq')}: malformed ({exc})") from None


class _OpenBatch:
    """The newest delta while its queued put may still be superseded: what it covers, to rewrite it whole."""

    __slots__ = ("seq", "prev", "records", "gone", "dents", "size")

    def __init__(self, seq: int, prev: bytes, ns: Namespace, size: int) -> None:
        self.seq = seq
        self.prev = prev  # hash of batch seq - 1: every version of this batch chains to it
        self.records: dict[int, str] = {}  # inode -> its record as JSON: a fold re-encodes only what changed
        self.gone: set[int] = set()
        self.dents: dict[tuple[int, bytes], int | None] = {}
        self.size = size
        self.add(ns)

    def add(self, ns: Namespace) -> None:
        for ino in ns.dirty:
            if ino in ns.inodes:
                self.records[ino] = json.dumps(ns.inodes[ino].to_record(), separators=(",", ":"))
        for ino in ns.gone:
            self.records.pop(ino, None)
        self.gone |= ns.gone
        self.dents.update(ns.dents)

    def payload(self, next_ino: int) -> bytes:
        head = json.dumps({"v": 1, "seq": self.seq, "prev": self.prev.hex(), "kind": "delta", "next_ino": next_ino},
                          separators=(",", ":"))
        dents = json.dumps([[d, _name_to_str(n), i] for (d, n), i in self.dents.items()], separators=(",", ":"))
        return (f'{head[:-1]},"inodes":[{",".join(self.records.values())}],'
                f'"gone":{json.dumps(sorted(self.gone))},"dents":{dents}}}').encode()


class Journal:
    """Reads and appends the batch chain of one vault."""

    def __init__(self, store: ObjectStore, vault_id: bytes, meta_key: bytes, names_key: bytes,
                 guard: RollbackGuard | None = None) -> None:
        self.store = store
        self.guard = guard
        self.vault_id = vault_id
        self._meta_key = meta_key
        self._names_key = names_key
        self.seq = -1  # last batch written or read
        self.seqs: list[int] = []  # every batch of this vault the last load found, lowest first
        self.floor = 0  # what the floor hint names (0: no hint)
        self.prev = _ZERO_HASH
        self.since_snapshot = 0
        # A batch whose put failed: it may have landed all the same (a lost
        # response), so the retry must send these very bytes, never a new
        # encryption of the same sequence number.
        self._unacked: tuple[int, bytes, bool] | None = None
        # On a write-back store a delta still queued (not uploading) can be
        # rewritten to cover later changes too (DESIGN.md "Small files"), so an
        # import of many small files costs one batch PUT per upload window.
        self.foldable = callable(getattr(store, "claim", None))
        self._open: _OpenBatch | None = None
        # Called with (seq, stored bytes) before each batch put: the close log
        # notes which batch covers its records (fs.py), so that a crash right
        # after the put does not replay them twice.
        self.before_store: Callable[[int, bytes], None] | None = None

    def _key(self, seq: int) -> str:
        return JOURNAL_PREFIX + crypto.journal_name(self._names_key, seq)

    # ---- the floor hint (FORMAT.md 7.6): where head-finding starts once old batches are pruned

    def _floor_body(self, seq: int) -> bytes:
        return b"journal-floor " + self.vault_id + struct.pack(">Q", seq)

    def read_floor(self) -> int:
        """The seq the floor hint names, 0 without one; IntegrityError for a hint that does not verify."""
        try:
            raw = self.store.get(FLOOR_KEY)
        except StoreNotFoundError:
            return 0
        try:
            d = json.loads(raw)
            seq, tag = d["seq"], bytes.fromhex(d["mac"])
            if type(seq) is not int or seq < 0:
                raise ValueError("bad seq")
        except (ValueError, KeyError, TypeError):
            seq, tag = -1, b""
        if seq < 0 or not crypto.mac_ok(self._names_key, self._floor_body(seq), tag):
            log.error("integrity: the journal floor hint (%s) does not verify", FLOOR_KEY)
            raise IntegrityError(f"the journal floor hint {FLOOR_KEY} was tampered with; refusing the vault")
        return seq

    def _write_floor(self, seq: int) -> None:
        tag = crypto.mac(self._names_key, self._floor_body(seq))
        body = json.dumps({"mac": tag.hex(), "seq": seq}, sort_keys=True).encode() + b"\n"
        self.store.put(FLOOR_KEY, body)  # replaced in place: a hint, never needed for correctness

    def _find_seqs(self, present: set[str]) -> list[int]:
        """Map listed names to seqs by recomputing names upward from the floor, then below it.

        Below the floor only a prune that stopped midway leaves batches, right
        under it (it deletes the lowest first). Names that never match are not
        ours: leftovers of a lost race are impossible with if-none-match.
        """
        remaining = set(present)
        found: list[int] = []
        for start, step, stop in ((self.floor, 1, None), (self.floor - 1, -1, -1)):
            seq, misses = start, 0
            while remaining and misses < MISS_LIMIT and seq != stop:
                key = self._key(seq)
                if key in remaining:
                    found.append(seq)
                    remaining.discard(key)
                    misses = 0
                else:
                    misses += 1
                seq += step
        return sorted(found)

    def batch_keys(self) -> set[str]:
        """The object keys of every batch the last load found."""
        return {self._key(s) for s in self.seqs}

    def read_batch(self, seq: int) -> dict:
        """Fetch and open batch ``seq`` (authenticated; its chain is not checked here)."""
        return self._decode(seq, self._get(seq))

    def prune(self, keep_from: int, dry_run: bool = False) -> list[int]:
        """Delete every batch below ``keep_from`` (a snapshot), lowest first; returns their seqs.

        The floor hint is raised to ``keep_from`` first, so a reader still
        finds the head however many batches go, and a prune cut short leaves
        the kept batches contiguous with the leftovers right below them.
        """
        if keep_from > self.seq:
            raise ValueError(f"cannot prune up to batch {keep_from}: the head is {self.seq}")
        doomed = [s for s in self.seqs if s < keep_from]
        if dry_run:
            return doomed
        if keep_from > self.floor:
            self._write_floor(keep_from)
            self.floor = keep_from
        for s in doomed:
            self.store.delete(self._key(s))
        self.seqs = [s for s in self.seqs if s >= keep_from]
        return doomed

    # ---- reading

    def _refuse_wiped_journal(self) -> None:
        """A journal with no batch belongs to a vault never written, unless old data says otherwise.

        Every commit stores its chunks before its batch, so data objects with
        no journal are either a first mount's crash before its first commit
        (young) or a journal that was deleted. Mounting the latter as an empty
        vault would let the collector delete every file's data, so an object
        older than the collector's grace period refuses the mount; device
        memory (the guard above) catches it earlier where there is some.
        """
        cutoff = time.time() - ORPHAN_GRACE
        for key, mtime in self.store.list_with_times(DATA_PREFIX):
            if mtime < cutoff:
                problem = (f"the journal holds no batch, but the store holds data objects (such as {key}) "
                           "older than a day: the vault's metadata was deleted")
                if self.guard is not None and self.guard.accept:
                    log.warning("accepting an empty journal as asked: %s", problem)
                    return
                log.error("integrity: %s", problem)
                raise IntegrityError(problem + "; refusing to open it as an empty vault (restore journal/ from a "
                                     "backup; --accept-rollback opens it empty, and gc then deletes that data)")

    def load(self) -> Namespace:
        """Rebuild the namespace from the newest snapshot and the deltas after it."""
        present = set(self.store.list(JOURNAL_PREFIX))
        ns = Namespace()
        self.floor = self.read_floor()
        if not present and self.floor:
            log.error("integrity: the journal was pruned up to batch %d but holds no batch", self.floor)
            raise IntegrityError(f"the journal holds no batch although it was pruned up to batch {self.floor}; "
                                 "the store's metadata was deleted")
        if not present:
            if self.guard is not None:
                self.guard.check(-1, _ZERO_HASH, {})
            self._refuse_wiped_journal()
            # A new vault's root belongs to whoever mounts it first (as mkfs -E root_owner).
            root = Inode(ROOT_INO, st.S_IFDIR | 0o755, os.getuid(), os.getgid())
            root.parent = ROOT_INO
            ns.add(root)
            return ns
        seqs = self._find_seqs(present)
        if not seqs:
            log.error("integrity: the store's journal objects are not this vault's")
            raise IntegrityError("no journal batch of this vault found (objects under journal/ are foreign)")
        head = seqs[-1]
        if head < self.floor:
            # Pruning never goes past the newest snapshot: this journal is older than the hint.
            log.error("integrity: journal head %d is below the floor %d", head, self.floor)
            raise IntegrityError(f"the journal ends at batch {head}, before batch {self.floor} that it was pruned "
                                 "to: the store was rolled back")
        contiguous = set(seqs)
        # No writer ever leaves a hole in the chain, so a hole anywhere (even
        # before the newest snapshot, where the walk below does not look) means
        # a batch was dropped.
        holes = sorted(set(range(seqs[0], head + 1)) - contiguous)
        if holes:
            log.error("integrity: journal batch %d is missing (head is %d)", holes[0], head)
            raise IntegrityError(f"journal batch {holes[0]} is missing; the vault's metadata was tampered with")
        # Walk back from the head to the newest snapshot; every batch between
        # must exist, or a batch was dropped.
        blobs: list[tuple[int, bytes, dict]] = []
        s = head
        while True:
            if s not in contiguous:
                log.error("integrity: journal batch %d is missing (head is %d)", s, head)
                raise IntegrityError(f"journal batch {s} is missing; the vault's metadata was tampered with")
            blob = self._get(s)
            batch = self._decode(s, blob)
            blobs.append((s, blob, batch))
            if batch["kind"] == "snapshot":
                break
            if s == 0:
                raise IntegrityError("journal has no snapshot or first batch")
            s -= 1
        blobs.reverse()
        first_seq, _, first = blobs[0]
        if first_seq == 0 and bytes.fromhex(first["prev"]) != _ZERO_HASH:
            raise IntegrityError("journal batch 0 does not start the chain")
        prev_hash = None
        known: dict[int, bytes] = {}
        for s, blob, batch in blobs:
            if prev_hash is not None and bytes.fromhex(batch["prev"]) != prev_hash:
                log.error("integrity: journal batch %d does not chain to batch %d", s, s - 1)
                raise IntegrityError(f"journal batch {s} does not follow batch {s - 1}; refusing the vault")
            self._apply(ns, batch)
            prev_hash = crypto.sha256(blob)
            known[s] = prev_hash
        if self.guard is not None:
            self.guard.check(head, prev_hash or _ZERO_HASH, known)
            try:
                self.guard.record(head, prev_hash or _ZERO_HASH)  # a device that only reads remembers too
            except OSError as exc:
                log.warning("could not record the journal head on this device: %s", exc)
        self.seq = head
        self.seqs = seqs
        self.prev = prev_hash or _ZERO_HASH
        self.since_snapshot = len(blobs) - 1
        ns.committed()
        if ROOT_INO not in ns.inodes:
            raise IntegrityError("journal has no root directory")
        return ns

    def _get(self, seq: int) -> bytes:
        try:
            return self.store.get(self._key(seq))
        except StoreNotFoundError:
            log.error("integrity: journal batch %d is missing", seq)
            raise IntegrityError(f"journal batch {seq} is missing") from None

    def _decode(self, seq: int, blob: bytes) -> dict:
        payload = crypto.open_blob(crypto.journal_key(self._meta_key, seq), crypto.journal_aad(self.vault_id, seq),
                                   blob, f"journal batch {seq} ({self._key(seq)})")
        try:
            batch = json.loads(payload)
            if batch["v"] != 1 or batch["seq"] != seq or batch["kind"] not in ("snapshot", "delta"):
                raise ValueError("bad header")
            prev = batch["prev"]
            if not isinstance(prev, str) or len(prev) != 64 or set(prev) - set("0123456789abcdef"):
                raise ValueError("bad prev")
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"journal batch {seq}: unreadable ({exc})") from None
        return batch

    @staticmethod
    def _apply(ns: Namespace, batch: dict) -> None:
        apply_batch(ns, batch)

    # ---- writing

    def _store_batch(self, seq: int, blob: bytes) -> None:
        if self.before_store is not None:
            self.before_store(seq, blob)
        self.store.flush()  # every object this batch references is durable before it
        try:
            self.store.put(self._key(seq), blob, if_none_match=True)
        except PreconditionFailedError:
            try:
                ours = self.store.get(self._key(seq)) == blob
            except StoreNotFoundError:
                ours = False
            if not ours:
                raise ConflictError("another writer appended to this vault's journal; this mount is now "
                                    "read-only to avoid clobbering it") from None

    def _advance(self, seq: int, blob: bytes, snapshot: bool, folded: bool = False) -> None:
        self.seq = seq
        self.prev = crypto.sha256(blob)
        if not folded:
            self.since_snapshot = 0 if snapshot else self.since_snapshot + 1
        if self.guard is not None:
            # A batch that may still be rewritten is not remembered by its own
            # hash (a kill -9 between the rewrite and this record would make the
            # next open see "history rewritten"): its predecessor, which every
            # version chains to, is.
            mark = (seq - 1, self._open.prev) if self._open is not None else (seq, self.prev)
            try:
                self.guard.record(*mark)
            except OSError as exc:  # the batch is stored; only rollback detection is weaker
                log.warning("could not record the journal head on this device: %s", exc)

    def fold_key(self) -> str | None:
        """The key of the newest batch if the next commit may rewrite it (the caller claims it first)."""
        o = self._open
        if (o is None or self._unacked is not None or o.size >= FOLD_MAX or o.seq != self.seq
                or self.since_snapshot >= SNAPSHOT_EVERY):
            return None
        return self._key(o.seq)

    def close_fold(self) -> None:
        """The newest batch is final from now on (it is uploading, or the store was synced)."""
        if self._open is not None:
            self._open = None
            if self.guard is not None and self.seq >= 0:
                try:
                    self.guard.record(self.seq, self.prev)
                except OSError as exc:
                    log.warning("could not record the journal head on this device: %s", exc)

    def commit(self, ns: Namespace, snapshot: bool = False, fold: bool = False) -> bool:
        """Append the pending changes (or a full snapshot) as the next batch.

        ``fold``: the caller claimed ``fold_key()`` in the store; the newest
        batch is rewritten (same seq, same ``prev``) to cover these changes too,
        and the caller cancels the claimed version once this returns True.
        """
        if fold:
            return self._fold(ns)
        if self._unacked is not None:
            # Its changes are still pending in ns as well: storing the same
            # upserts again in the next batch is harmless (they are idempotent).
            useq, ublob, usnap = self._unacked
            self._store_batch(useq, ublob)
            self._unacked = None
            self._advance(useq, ublob, usnap)
        if not snapshot and not ns.pending():
            return False
        snapshot = snapshot or self.since_snapshot >= SNAPSHOT_EVERY or self.seq < 0
        seq = self.seq + 1
        if snapshot:
            inodes: Iterable[Inode] = ns.inodes.values()
            gone: list[int] = []
            dents = [[d.ino, _name_to_str(n), i] for d in ns.inodes.values() if d.children
                     for n, i in d.children.items()]
        else:
            inodes = [ns.inodes[i] for i in ns.dirty if i in ns.inodes]
            gone = sorted(ns.gone)
            dents = [[d, _name_to_str(n), i] for (d, n), i in ns.dents.items()]
        batch = {"v": 1, "seq": seq, "prev": self.prev.hex(), "kind": "snapshot" if snapshot else "delta",
                 "next_ino": ns.next_ino, "inodes": [n.to_record() for n in inodes], "gone": gone, "dents": dents}
        payload = json.dumps(batch, separators=(",", ":")).encode()
        blob = crypto.seal_blob(crypto.journal_key(self._meta_key, seq), crypto.journal_aad(self.vault_id, seq),
                                payload)
        try:
            self._store_batch(seq, blob)
        except ConflictError:
            raise
        except Exception:
            self._unacked = (seq, blob, snapshot)
            raise
        self._open = _OpenBatch(seq, self.prev, ns, len(blob)) if self.foldable and not snapshot else None
        self._advance(seq, blob, snapshot)
        ns.committed()
        return True

    def _fold(self, ns: Namespace) -> bool:
        o = self._open
        assert o is not None and o.seq == self.seq, "fold without an open batch"
        if not ns.pending():
            return False
        undo = (dict(o.records), set(o.gone), dict(o.dents))
        o.add(ns)
        blob = crypto.seal_blob(crypto.journal_key(self._meta_key, o.seq),
                                crypto.journal_aad(self.vault_id, o.seq), o.payload(ns.next_ino))
        try:
            # The claimed version stays queued until the caller cancels it; a
            # failure leaves it as the batch and every change still pending in ns.
            self._store_batch(o.seq, blob)
        except BaseException:
            o.records, o.gone, o.dents = undo
            raise
        o.size = len(blob)
        self._advance(o.seq, blob, False, folded=True)
        ns.committed()
        return True
