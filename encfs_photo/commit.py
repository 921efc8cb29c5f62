"""The write buffers and commits of a FileSystem: what makes changes durable, and in what order.

``Committer`` is the half of ``fs.FileSystem`` that owns unsaved state: the
per-chunk plaintext buffers, sealing them into chunk objects and small files
into packs, the journal commit (objects first, then one batch, then the
deletes it allows), folding into a still-queued batch (DESIGN.md 18), and
the close log that makes a close of small files durable without a commit
(DESIGN.md 20). ``fs.py`` keeps the POSIX operations; both halves run under
the FileSystem's one lock.

Callers: `fs`. Imports meta, content, closelog, errors.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .closelog import LOG_MAX, CloseLog
from .content import ChunkIO, ChunkRef, Segment
from .errors import ConflictError, StoreError
from .meta import Inode, Journal, Namespace, apply_batch
from .vault import Vault

log = logging.getLogger("encfs_photo.fs")

SMALL_FILE = 256 * 1024  # a file no bigger than this is committed as a segment of a pack object
PACK_CAP = 256 * 1024  # a pack is not rewritten to take more segments past this size (each rewrite copies it)


def pack_refs(ns: Namespace) -> dict[str, int]:
    """Pack object key -> how many chunk references name it: a pack is garbage at 0."""
    counts: dict[str, int] = {}
    for node in ns.inodes.values():
        for ref in node.chunks.values():
            if ref.packed:
                counts[ref.key] = counts.get(ref.key, 0) + 1
    return counts


class Committer:
    """Unsaved state and commits; mixed into FileSystem, which sets these attributes in ``__init__``."""

    vault: Vault
    read_only: bool
    chunk_size: int
    ns: Namespace
    last_error: str | None
    _lock: threading.RLock
    _journal: Journal
    _io: ChunkIO
    _log: CloseLog | None
    _dirty: dict[int, dict[int, bytearray]]  # ino -> chunk index -> plaintext not yet sealed
    _dirty_order: OrderedDict[tuple[int, int], None]  # oldest-touched first, for the dirty cap
    _dirty_bytes: int
    _dirty_cap: int
    _garbage: list[ChunkRef]  # committed objects to delete once a batch without them is stored
    _small: int
    _pack: list[tuple[int, int, ChunkRef, Segment]]
    _pack_refs: dict[str, int]
    _must_commit: bool

    def _open_log(self) -> int:
        """Take in what the close log holds beyond the journal head; start its next generation."""
        if self._log is None:
            return 0
        j = self._journal
        j.before_store = self._log.mark
        records = self._log.recover(j.seq, j.prev)
        if not records:
            self._log.start(j.seq, j.prev)
            return 0
        committed = {ref.key: ref for node in self.ns.inodes.values() for ref in node.chunks.values()}
        for rec in records:
            apply_batch(self.ns, rec.batch, pending=True)
            # Each listed inode's unsaved bytes are what this record says, none
            # if it names none; a deleted one has none left.
            for ino in [int(r["i"]) for r in rec.batch["inodes"]] + [int(i) for i in rec.batch["gone"]]:
                self._drop_dirty(ino)
                if ino in rec.data and ino in self.ns.inodes:
                    buf = bytearray(rec.data[ino])
                    self._dirty[ino] = {0: buf}
                    self._dirty_bytes += len(buf)
                    self._dirty_order[(ino, 0)] = None
        # What the head references and the logged closes no longer do (a file
        # rewritten or deleted before the crash): the objects the lost mount
        # would have deleted after its next commit.
        live = {ref.key for node in self.ns.inodes.values() for ref in node.chunks.values()}
        for key, ref in committed.items():
            if key not in live:
                self._garbage.append(ChunkRef(ref.object_id, 0) if ref.packed else ref)
        return len(records)

    def _purge_orphans(self) -> None:
        # Files unlinked while open when the last mount crashed: nobody can open them again.
        for node in [n for n in self.ns.inodes.values() if n.nlink <= 0 and not n.is_dir()]:
            for ref in node.chunks.values():
                self._discard(ref)
            self.ns.drop(node.ino)

    def _commit(self, snapshot: bool = False) -> None:
        small = [node for ino, chunks in self._dirty.items() if chunks.get(0)
                 and (node := self.ns.inodes.get(ino)) is not None and node.size <= self._small]
        claimed = self._claim_fold(snapshot, small)
        folded = False
        try:
            self._pack_small(small, fold_pack=len(claimed) == 2, fold_batch=bool(claimed))
            for ino in list(self._dirty):
                node = self.ns.inodes.get(ino)
                for idx in list(self._dirty.get(ino, ())):
                    self._seal(node, idx)
            self._io.wait_puts()  # a write-back store refuses puts once another writer won (ConflictError)
            folded = self._journal.commit(self.ns, snapshot, fold=bool(claimed))
            self._must_commit = False
            self._restart_log()
        except ConflictError as exc:
            self._conflicted(exc)
            raise
        finally:
            if claimed:
                # Superseded versions go only once what replaces them is durable;
                # otherwise they upload as they were (the store stays consistent).
                store: Any = self.vault.store
                (store.cancel_claimed if folded else store.unclaim)(claimed)
        garbage, self._garbage = self._garbage, []
        for ref in garbage:
            try:
                self._io.delete(ref)
            except StoreError as exc:  # an orphan costs space, not correctness
                log.warning("could not delete unreferenced object %s: %s", ref.key, exc)

    def _conflicted(self, exc: ConflictError) -> None:
        """Another writer won: this mount turns read-only, and says why."""
        self.read_only = True
        self.last_error = str(exc)
        log.error("%s", exc)

    def _restart_log(self) -> None:
        """Everything logged is in the journal now: begin a generation on its head."""
        lg, j = self._log, self._journal
        if lg is None or (lg.size == 0 and lg.base == (j.seq, j.prev)):
            return
        try:
            lg.start(j.seq, j.prev)
        except StoreError as exc:
            # The old generation stays; its commit marker says which of its
            # records the journal holds, so appending to it is still correct.
            log.warning("%s", exc)

    def _durable(self) -> None:
        """Make every change so far durable: one close-log record if it can hold them, else a commit."""
        lg = self._log
        if lg is None or self._must_commit or lg.size >= LOG_MAX:
            self._commit()
            return
        check = getattr(self.vault.store, "check_writable", None)
        if check is not None:
            try:
                check()  # uploads stopped on another writer's batch: nothing logged now could be committed
            except ConflictError as exc:
                self._conflicted(exc)
                raise
        batch = self.ns.unlogged_batch()
        if batch is None:
            return
        data = []
        for ino in self.ns.unlogged:
            chunks = self._dirty.get(ino)
            if chunks is not None:
                node = self.ns.inodes[ino]
                data.append((ino, bytes(chunks[0][:node.size])))
        lg.append(batch, data)
        self.ns.logged()

    def _claim_fold(self, snapshot: bool, small: list[Inode]) -> list[str]:
        """Claim the queued newest batch (and pack) so this commit rewrites them instead of adding objects."""
        key = None if snapshot else self._journal.fold_key()
        if key is None:
            return []
        store: Any = self.vault.store
        if not store.claim([key]):
            return []
        keys = [key]
        if small and self._pack:
            # The pack may have uploaded already (no batch was waiting when it was
            # queued): then only the batch is rewritten, with a new pack beside it.
            size = sum(len(seg.body) for *_, seg in self._pack) + sum(n.size for n in small)
            if size <= PACK_CAP and store.claim([self._pack[0][2].key]):
                keys.append(self._pack[0][2].key)
        return keys

    def _pack_small(self, small: list[Inode], fold_pack: bool, fold_batch: bool) -> None:
        """Seal small files' buffers as segments of new pack objects (with the newest pack's live ones)."""
        if not fold_batch:
            # The batch naming the newest pack is final now, so that pack is too.
            self._pack = []
        if not small:
            return
        rewritten = {node.ino for node in small}
        carry = [(ino, idx, ref, seg) for ino, idx, ref, seg in self._pack if fold_pack and ino not in rewritten
                 and (node := self.ns.inodes.get(ino)) is not None and node.chunks.get(idx) is ref]
        new = []
        for node in small:
            buf = self._dirty[node.ino][0]
            new.append((node.ino, 0, None, self._io.seal_segment(bytes(buf[:node.size]))))
        # Packs of at most PACK_CAP: a commit after a burst of closes (the close
        # log defers them to the periodic commit) would otherwise make one huge
        # object, which gc can delete only when every file in it is gone.
        groups: list[list] = [[]]
        size = 0
        for member in carry + new:
            n = len(member[3].body)
            if groups[-1] and size + n > PACK_CAP:
                groups.append([])
                size = 0
            groups[-1].append(member)
            size += n
        members: list = []
        for i, group in enumerate(groups):
            refs = self._io.write_pack([seg for *_, seg in group])  # may raise: buffers stay dirty
            if i == 0 and fold_pack and self._pack:
                # Cancelled with the batch, never uploaded: no reference and no delete left for it.
                self._pack_refs.pop(self._pack[0][2].key, None)
            self._pack_refs[refs[0].key] = len(refs)
            members = []
            for (ino, idx, _, seg), ref in zip(group, refs, strict=True):
                members.append((ino, idx, ref, seg))
                node = self.ns.inodes[ino]
                chunks = self._dirty.get(ino)
                if chunks is not None and idx in chunks:
                    self._dirty_bytes -= len(chunks.pop(idx))
                    self._dirty_order.pop((ino, idx), None)
                    if not chunks:
                        del self._dirty[ino]
                old = node.chunks.get(idx)
                node.chunks[idx] = ref
                if old is not None and old.sid != ref.sid:
                    self._discard(old)  # for a carried segment, its old pack is cancelled as a whole
                self.ns.touch(node)
        self._pack = members

    def _seal(self, node: Inode | None, idx: int) -> None:
        chunks = self._dirty.get(node.ino) if node is not None else None
        buf = chunks.get(idx) if chunks else None
        if node is None or chunks is None or buf is None:
            return
        counted = len(buf)
        limit = max(0, node.size - idx * self.chunk_size)
        if len(buf) > limit:
            del buf[limit:]
        self._must_commit = True  # its object is not durable until the commit's flush
        ref = self._io.write(bytes(buf)) if buf else None  # may raise: buffer stays dirty
        del chunks[idx]
        if not chunks:
            del self._dirty[node.ino]
        self._dirty_order.pop((node.ino, idx), None)
        self._dirty_bytes -= counted
        old = node.chunks.pop(idx, None)
        if ref is not None:
            node.chunks[idx] = ref
        if old is not None:
            self._discard(old)
        self.ns.touch(node)

    def _discard(self, ref: ChunkRef) -> None:
        # Never committed: gone now. Committed: deleted once a batch without it is stored.
        # A pack segment shares its object with other files: a rewrite of the
        # pack drops it, or gc deletes the pack once no segment is referenced.
        if ref.packed:
            if ref.key not in self._pack_refs:
                return  # not counted (a namespace taken in from elsewhere): only gc may judge it
            left = self._pack_refs[ref.key] - 1
            if left > 0:
                self._pack_refs[ref.key] = left
                return
            self._pack_refs.pop(ref.key, None)
            if self._pack and self._pack[0][2].key == ref.key:
                self._pack = []  # nothing in it to carry into a rewrite
            ref = ChunkRef(ref.object_id, 0)  # the whole object goes, once a batch without it is stored
        if not self._io.abandon(ref):
            self._garbage.append(ref)

    def _dirty_chunk(self, node: Inode, idx: int) -> bytearray:
        chunks = self._dirty.setdefault(node.ino, {})
        buf = chunks.get(idx)
        if idx:
            self._must_commit = True  # past the first chunk: not a small file for the close log
        if buf is None:
            ref = node.chunks.get(idx)
            buf = bytearray(self._io.read(ref, 0, ref.length)) if ref else bytearray()
            chunks[idx] = buf
            self._dirty_bytes += len(buf)
        self._dirty_order[(node.ino, idx)] = None
        self._dirty_order.move_to_end((node.ino, idx))
        return buf

    def _drop_dirty(self, ino: int, keep: Callable[[int], bool] = lambda idx: False) -> None:
        chunks = self._dirty.get(ino)
        if not chunks:
            return
        for idx in [i for i in chunks if not keep(i)]:
            self._dirty_bytes -= len(chunks.pop(idx))
            self._dirty_order.pop((ino, idx), None)
        if not chunks:
            del self._dirty[ino]

    def _enforce_cap(self) -> None:
        while self._dirty_bytes > self._dirty_cap and self._dirty_order:
            ino, idx = next(iter(self._dirty_order))
            self._seal(self.ns.inodes.get(ino), idx)
