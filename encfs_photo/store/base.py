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
* ``get_versioned``/``put_versioned`` are a compare-and-swap on one small,
  mutable object (the lease): ``get_versioned`` returns the bytes and an opaque
  version tag (S3's ETag); ``put_versioned(key, data, expect=None)`` creates
  the key only if it is missing (``If-None-Match: *``), ``expect=TAG`` replaces
  it only if its tag is still TAG (``If-Match``); either returns the new tag
  or raises PreconditionFailedError. They always reach the real store: a
  cache must never answer them.
* ``list_with_times`` is ``list`` with each object's last-modified time (a
  local file's mtime, S3's LastModified); where a store cannot tell, it says
  "now" (never older than it is).
* ``get`` raises StoreNotFoundError for a missing key; a range past the end
  returns what exists (the caller authenticates and so notices a short read).
* A store may offer ``prefetch(keys)``: a hint that these objects will be
  read soon (the write-back cache fetches them in the background). It is not
  part of the protocol; callers look it up with ``getattr``.
* Failures raise StoreError (StoreFullError for a full disk); no store lets a
  provider-specific exception escape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


def content_tag(data: bytes) -> str:
    """The version tag of stores that have no ETag of their own: a hash of the bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


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

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """(bytes, version tag) of ``key``; StoreNotFoundError if missing."""
        ...

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        """Store ``data`` if ``key`` is missing (``expect=None``) or still has tag ``expect``; the new tag."""
        ...

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
