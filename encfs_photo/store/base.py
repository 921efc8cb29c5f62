"""The store contract, after restic's backend interface: small, typed errors.

Keys are short ASCII strings such as ``data/3f..`` or ``journal/a1..``; a
store maps them to objects however it likes. Contract:

* ``put`` is atomic: a reader sees the old state or the whole new object,
  never a part. It is durable when it returns, unless ``durable=False``; then
  it is durable once ``flush()`` returns (a barrier that lets a local store
  defer fsyncs; the journal calls it before storing a batch that references
  such objects).
* ``put(..., if_none_match=True)`` fails with PreconditionFailedError when the
  key exists (the S3 ``If-None-Match: *`` semantics).
* ``list_with_times`` is ``list`` with each object's last-modified time (a
  local file's mtime, S3's LastModified); where a store cannot tell, it says
  "now" (never older than it is).
* ``get`` raises StoreNotFoundError for a missing key; a range past the end
  returns what exists (the caller authenticates and so notices a short read).
* Failures raise StoreError (StoreFullError for a full disk); no store lets a
  provider-specific exception escape.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoreCapabilities:
    conditional_writes: bool = True
    max_connections: int = 4
    local: bool = True


class ObjectStore(Protocol):
    capabilities: StoreCapabilities

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None: ...

    def flush(self) -> None:
        """Make every earlier put durable."""
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """(key, last-modified time in seconds since the epoch) for every key ``list`` yields.

        The garbage collector's grace period reads it: an object younger than
        the grace may belong to a commit still in flight."""
        ...

    def delete(self, key: str) -> None: ...

    def space(self) -> tuple[int, int] | None:
        """(total bytes, free bytes) where the store can tell, else None."""
        ...

    def describe(self) -> str: ...
