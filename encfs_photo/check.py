"""Verify a vault without changing it: structure, and optionally every byte.

Opening the journal already verifies the batch chain. Then every chunk
reference must name an object of the size its length implies; with
``read_data`` every block is fetched and authenticated. Damaged files are
reported by their plaintext path (the user unlocked the vault, so they may see
names). Callers: `cli`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import crypto
from .content import ChunkIO, ChunkRef, nblocks, sealed_len
from .errors import IntegrityError, StoreError, StoreNotFoundError
from .gc import kept_range
from .meta import ROOT_INO, Journal, Namespace
from .state import RollbackGuard
from .vault import Vault


@dataclass
class Report:
    files: int = 0
    chunks: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    unreferenced: int = 0  # chunk objects no kept batch references: what `gc` deletes once past the grace
    old_batches: int = 0  # journal batches below the kept snapshots: what `gc` prunes


def expected_size(ref: ChunkRef, block_size: int, chunk_size: int) -> int:
    """The object size a chunk reference implies; for a pack segment, the least size of its pack."""
    if ref.packed:
        return ref.offset + sealed_len(ref.length, block_size)
    n = nblocks(ref.length, block_size)
    body = ref.length + n * crypto.TAG_LEN
    return crypto.padme(body) if ref.length < chunk_size else body


def _walk(ns: Namespace) -> Iterator[tuple[bytes, int]]:
    stack = [(b"", ROOT_INO)]
    seen = set()
    while stack:
        path, ino = stack.pop()
        node = ns.inodes[ino]
        for name, child in sorted(node.children.items()):  # type: ignore[union-attr]
            cnode = ns.inodes.get(child)
            cpath = path + b"/" + name
            if cnode is None:
                yield cpath, -1
            elif cnode.is_dir():
                stack.append((cpath, child))
            elif child not in seen:
                seen.add(child)
                yield cpath, child


def check(vault: Vault, read_data: bool = False, progress: Callable[[int], None] | None = None,
          guard: RollbackGuard | None = None) -> Report:
    """``guard``: this device's memory of the newest head, so a rolled-back store fails the check too."""
    report = Report()
    journal = Journal(vault.store, vault.vault_id, vault.meta_key, vault.names_key, guard)
    ns = journal.load()
    io = ChunkIO(vault.store, vault.vault_id, vault.content_key, vault.block_size, vault.chunk_size, 0)
    referenced = set()
    for path, ino in _walk(ns):
        name = path.decode("utf-8", "replace")
        if ino < 0:
            report.problems.append(f"{name}: directory entry points to a missing inode")
            continue
        node = ns.inodes[ino]
        report.files += 1
        for idx, ref in sorted(node.chunks.items()):
            report.chunks += 1
            referenced.add(ref.key)
            try:
                size = vault.store.stat(ref.key)
                want = expected_size(ref, vault.block_size, vault.chunk_size)
                if size != want if not ref.packed else size < want:
                    report.problems.append(f"{name}: chunk {idx} object {ref.key} has {size} bytes, expected {want}")
                    continue
                # A pack may hold dead segments past the live ones, so its exact size is not known
                # from the references; but a writer always pads it to a Padmé size.
                if ref.packed and crypto.padme(size) != size:
                    report.problems.append(f"{name}: chunk {idx} pack {ref.key} has {size} bytes, "
                                           "not a size a writer pads to (cut or extended)")
                    continue
                if read_data:
                    io.verify(ref)  # every block, and the hash of all of them
                    report.bytes_checked += ref.length
                    if progress:
                        progress(ref.length)
            except StoreNotFoundError:
                report.problems.append(f"{name}: chunk {idx} object {ref.key} is missing")
            except IntegrityError as exc:
                report.problems.append(f"{name}: chunk {idx}: {exc}")
            except StoreError as exc:
                report.problems.append(f"{name}: chunk {idx}: store error: {exc}")
    keep_from, kept_refs = kept_range(journal)
    report.old_batches = sum(1 for s in journal.seqs if s < keep_from)
    report.unreferenced = sum(1 for k in vault.store.list("data/") if k not in referenced and k not in kept_refs)
    return report
