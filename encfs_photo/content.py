"""File bytes <-> encrypted chunk objects.

A file is a sparse map ``chunk index -> ChunkRef``; chunk ``i`` holds the
plaintext bytes ``[i*chunk_size, i*chunk_size + ref.length)``. Bytes of the
file past ``ref.length`` (or in a chunk with no ref) read as zeros, which is
what makes holes and truncate-up free. A chunk object is a run of AEAD blocks
(crypto.seal_chunk), so a read fetches and authenticates only the blocks it
needs, with one ranged get.

Callers: `fs`. Imports crypto, errors and the store contract; nothing above.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cachetools import LRUCache

from . import crypto
from .errors import IntegrityError, StoreError, StoreNotFoundError
from .store.base import ObjectStore

log = logging.getLogger(__name__)

DATA_PREFIX = "data/"


INLINE_PUT = 512 * 1024  # objects up to this size are stored on the caller's thread (packs)
DIGEST_LEN = 16  # SHA-256 truncated: what a chunk reference pins of the sealed bytes


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A sealed chunk: where it is stored, how many plaintext bytes it holds, and a hash of its sealed bytes.

    A chunk of a big file is an object of its own (``seal_id is None``,
    ``offset == 0``). A small file's chunk is a *segment* of a pack object: it
    was sealed under its own random ``seal_id`` (key and AAD) and sits at
    ``offset`` inside object ``object_id``. ``digest`` (None in records written
    before it existed) is the truncated SHA-256 of the sealed blocks, checked
    whenever all of them are fetched: the key commitment of chunk objects.
    """

    object_id: bytes
    length: int
    digest: bytes | None = None
    seal_id: bytes | None = None
    offset: int = 0

    @property
    def key(self) -> str:
        return DATA_PREFIX + self.object_id.hex()

    @property
    def sid(self) -> bytes:
        """The id the blocks were sealed under (chunk key and AAD)."""
        return self.seal_id or self.object_id

    @property
    def packed(self) -> bool:
        return self.seal_id is not None


def digest(sealed: bytes) -> bytes:
    return crypto.sha256(sealed)[:DIGEST_LEN]


def sealed_len(length: int, block_size: int) -> int:
    """Bytes of the sealed blocks of a chunk of ``length`` plaintext bytes (padding excluded)."""
    return length + nblocks(length, block_size) * crypto.TAG_LEN


@dataclass(frozen=True, slots=True)
class Segment:
    """A small file's sealed chunk, kept in memory while its pack may still be rewritten."""

    seal_id: bytes
    length: int
    body: bytes


# ---- offset arithmetic (pure; tested on its own)


def chunk_span(offset: int, size: int, chunk_size: int) -> range:
    """Indexes of the chunks that bytes [offset, offset+size) touch."""
    if size <= 0:
        return range(0)
    return range(offset // chunk_size, (offset + size - 1) // chunk_size + 1)


def block_span(start: int, end: int, block_size: int) -> range:
    """Indexes of the blocks that bytes [start, end) of a chunk touch."""
    if end <= start:
        return range(0)
    return range(start // block_size, (end - 1) // block_size + 1)


def nblocks(length: int, block_size: int) -> int:
    return max(1, -(-length // block_size))


def block_offset(index: int, block_size: int) -> int:
    """Byte offset of block ``index`` inside a chunk object."""
    return index * crypto.block_ciphertext_len(block_size)


class ChunkIO:
    """Seals, stores and reads chunk objects; keeps recently decrypted blocks.

    Puts run on a small thread pool so that encrypting the next chunk overlaps
    with storing the previous one; at most ``max_inflight`` puts are pending
    (back-pressure on writers). ``wait_puts`` is the barrier a commit calls
    before it stores metadata referencing these objects. A failed put keeps its
    bytes and is retried by the next ``wait_puts``, so nothing sealed is lost.
    """

    def __init__(self, store: ObjectStore, vault_id: bytes, content_key: bytes, block_size: int,
                 chunk_size: int, block_cache_bytes: int = 32 << 20, max_inflight: int = 4) -> None:
        self.store = store
        self.vault_id = vault_id
        self.block_size = block_size
        self.chunk_size = chunk_size
        self._key = content_key
        self._blocks: LRUCache = LRUCache(maxsize=max(1, block_cache_bytes // block_size))
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encfs-put")
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._inflight: dict[str, tuple[Future | None, bytes]] = {}
        self._failed = 0  # puts that failed and wait, with their bytes, for a retry

    def pending_bytes(self) -> int:
        """Ciphertext held in memory: puts in flight and failed puts awaiting a retry."""
        with self._lock:
            return sum(len(body) for _, body in self._inflight.values())

    def write(self, plaintext: bytes) -> ChunkRef:
        if self._failed:
            # Earlier puts failed (full disk, store down): retry them before
            # taking more, so a writer gets the error instead of memory growing.
            self.wait_puts()
        pad = len(plaintext) < self.chunk_size
        object_id, body = crypto.seal_chunk(self._key, self.vault_id, plaintext, self.block_size, pad)
        ref = ChunkRef(object_id, len(plaintext), digest(body[:sealed_len(len(plaintext), self.block_size)]))
        self._submit(ref.key, body)
        return ref

    def seal_segment(self, plaintext: bytes) -> Segment:
        """Seal a small file's bytes as a pack segment (no padding: the pack is padded as a whole)."""
        seal_id, body = crypto.seal_chunk(self._key, self.vault_id, plaintext, self.block_size, False)
        return Segment(seal_id, len(plaintext), body)

    def write_pack(self, segments: list[Segment]) -> list[ChunkRef]:
        """Store segments (sealed already, so a rewrite copies them) as one new pack object; their refs."""
        if self._failed:
            self.wait_puts()
        pack_id = crypto.random_bytes(16)
        refs = []
        pos = 0
        for seg in segments:
            refs.append(ChunkRef(pack_id, seg.length, digest(seg.body), seg.seal_id, pos))
            pos += len(seg.body)
        body = b"".join(seg.body for seg in segments)
        # Random padding, as for a chunk: the object size says little about the files in it.
        body += crypto.random_bytes(crypto.padme(len(body)) - len(body))
        self._submit(DATA_PREFIX + pack_id.hex(), body)
        return refs

    def _submit(self, key: str, body: bytes) -> None:
        self._slots.acquire()
        if len(body) <= INLINE_PUT:
            # A pack: its commit waits for it at once, so handing it to a put
            # thread only adds two thread switches. A failure leaves it in
            # _inflight without a future, which wait_puts retries.
            with self._lock:
                self._inflight[key] = (None, body)
            try:
                self._put(key, body)
            except Exception as exc:  # noqa: BLE001 - kept with its bytes for wait_puts
                log.debug("put of %s failed, retried at the next commit: %s", key, exc)
            return
        with self._lock:
            self._inflight[key] = (None, body)
            self._inflight[key] = (self._pool.submit(self._put, key, body), body)

    def _put(self, key: str, body: bytes) -> None:
        try:
            # Durable at the next journal commit, which flushes the store first.
            self.store.put(key, body, durable=False)
        except BaseException:
            with self._lock:
                self._failed += 1
            raise
        else:
            # Stored: readers find it in the store now, so the bytes leave
            # memory at once (memory stays bounded by max_inflight chunks).
            with self._lock:
                entry = self._inflight.get(key)
                if entry is not None and entry[1] is body:
                    del self._inflight[key]
        finally:
            self._slots.release()

    def wait_puts(self) -> None:
        """Return when every sealed chunk is stored (retrying failed puts once); raise if one still fails."""
        with self._lock:
            pending = list(self._inflight.items())
            self._failed = 0
        error: Exception | None = None
        for key, (fut, body) in pending:
            try:
                if fut is None:
                    # No put running: this one failed at an earlier wait and was
                    # kept for this retry; it is not stored yet.
                    raise StoreError(f"{key}: earlier put failed")
                fut.result()
            except Exception:  # noqa: BLE001 - retried below; the second failure is raised
                try:
                    self.store.put(key, body, durable=False)
                except Exception as exc:  # noqa: BLE001
                    with self._lock:
                        self._inflight[key] = (None, body)  # kept for the next attempt
                        self._failed += 1
                    error = error or exc
                    continue
            with self._lock:
                if self._inflight.get(key, (None, None))[1] is body:
                    del self._inflight[key]
        if error is not None:
            raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def abandon(self, ref: ChunkRef) -> bool:
        """Drop a chunk that no commit has referenced yet (its put may still be pending or failed).

        True if it was such a chunk (and is now gone); False for a committed
        chunk, which must wait until a batch that drops it is stored.
        """
        with self._lock:
            pending = self._inflight.pop(ref.key, None)
        if pending is None:
            return False
        self._delete(ref, pending[0])
        return True

    def delete(self, ref: ChunkRef) -> None:
        with self._lock:
            pending = self._inflight.pop(ref.key, None)
        self._delete(ref, pending[0] if pending else None)

    def _delete(self, ref: ChunkRef, fut: Future | None) -> None:
        if fut is not None:
            try:
                fut.result()  # a put still running would re-create the object after the delete
            except Exception:  # noqa: BLE001 - it is being deleted anyway
                pass
        self.store.delete(ref.key)
        with self._lock:
            for i in range(nblocks(ref.length, self.block_size)):
                self._blocks.pop((ref.sid, i), None)

    def read(self, ref: ChunkRef, start: int, end: int) -> bytes:
        """Plaintext bytes [start, end) of the chunk; end is clamped to ref.length."""
        end = min(end, ref.length)
        if end <= start:
            return b""
        bs = self.block_size
        span = block_span(start, end, bs)
        blocks: list[bytes | None] = []
        with self._lock:
            for i in span:
                blocks.append(self._blocks.get((ref.sid, i)))
        missing = [i for i, b in zip(span, blocks, strict=True) if b is None]
        if missing:
            fetched = self._fetch(ref, missing[0], missing[-1])
            with self._lock:
                for i in range(missing[0], missing[-1] + 1):
                    self._blocks[(ref.sid, i)] = fetched[i - missing[0]]
            blocks = [b if b is not None else fetched[i - missing[0]] for i, b in zip(span, blocks, strict=True)]
        data = b"".join(blocks)  # type: ignore[arg-type]
        first = span.start * bs
        return data[start - first:end - first]

    def prefetch(self, refs: list[ChunkRef]) -> None:
        """Tell the store that these chunks will be read soon (a store that cannot use the hint has no
        ``prefetch``: a local folder is read ahead by the kernel)."""
        hint = getattr(self.store, "prefetch", None)
        if hint is None:
            return
        with self._lock:
            keys = [r.key for r in refs if (r.sid, 0) not in self._blocks and r.key not in self._inflight]
        if keys:
            hint(keys)

    def verify(self, ref: ChunkRef) -> None:
        """Fetch and authenticate every block of a chunk and check its hash (IntegrityError if not)."""
        self._fetch(ref, 0, nblocks(ref.length, self.block_size) - 1)

    def _fetch(self, ref: ChunkRef, first: int, last: int) -> list[bytes]:
        bs = self.block_size
        total = nblocks(ref.length, bs)
        cbs = crypto.block_ciphertext_len(bs)
        offset = ref.offset + block_offset(first, bs)
        last_len = ref.length - (total - 1) * bs
        want = (last - first) * cbs + (crypto.block_ciphertext_len(last_len) if last == total - 1 else cbs)
        with self._lock:
            pending = self._inflight.get(ref.key)
        try:
            raw = pending[1][offset:offset + want] if pending else self.store.get(ref.key, offset, want)
        except StoreNotFoundError:
            log.error("integrity: chunk object %s is missing from the store", ref.key)
            raise IntegrityError(f"chunk object {ref.key} is missing") from None
        if len(raw) != want:
            log.error("integrity: chunk object %s is truncated (%d of %d bytes)", ref.key, len(raw), want)
            raise IntegrityError(f"chunk object {ref.key} is truncated")
        if ref.digest is not None and first == 0 and last == total - 1 and digest(raw) != ref.digest:
            # All of the sealed bytes are here: check the hash the metadata pins
            # (a range read of a big chunk relies on each block's tag alone).
            log.error("integrity: chunk object %s (at %d) does not match its hash", ref.key, ref.offset)
            raise IntegrityError(f"chunk object {ref.key} does not match the hash in the metadata")
        cipher = crypto.ChunkCipher(self._key, self.vault_id, ref.sid, total)
        out = []
        pos = 0
        for i in range(first, last + 1):
            n = cbs if i < total - 1 else crypto.block_ciphertext_len(last_len)
            try:
                out.append(cipher.open_block(i, raw[pos:pos + n]))
            except IntegrityError:
                log.error("integrity: chunk object %s block %d failed authentication", ref.key, i)
                raise
            pos += n
        return out
