"""FaultyStore: wraps a store and fails chosen calls, for failure tests.

What a flaky network does to an object store, each chosen per call by a
predicate on the key:

* ``fail_puts``/``fail_gets``: the call raises the configured error instead of
  reaching the inner store (an HTTP 5xx, a refused connection).
* ``drop_puts``: the connection drops in the middle of the upload: nothing is
  stored (an S3 PUT is all or nothing) and the caller gets a StoreError.
* ``lose_replies``: the object is stored, then the connection drops before the
  answer arrives: the caller gets a StoreError for a put that happened.
* ``timeout_puts``: the call hangs for ``timeout`` seconds, then fails as a
  client-side timeout does (nothing stored).
* ``latency``: seconds added to every put and get (a slow link).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from ..errors import StoreError
from .base import ObjectStore


class FaultyStore:
    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.fail_puts: Callable[[str], bool] = lambda key: False
        self.fail_gets: Callable[[str], bool] = lambda key: False
        self.error: Callable[[str], Exception] = lambda key: StoreError(f"injected failure on {key}")
        self.drop_puts: Callable[[str], bool] = lambda key: False
        self.lose_replies: Callable[[str], bool] = lambda key: False
        self.timeout_puts: Callable[[str], bool] = lambda key: False
        self.timeout = 0.5
        self.latency = 0.0
        self.puts: list[str] = []
        self.injected = 0  # faults injected so far, of every kind

    def describe(self) -> str:
        return f"faulty({self.inner.describe()})"

    def local_dir(self) -> str | None:
        """The inner store's (a faulty network does not touch the local disk)."""
        inner = getattr(self.inner, "local_dir", None)
        return inner() if inner is not None else None

    def _before_put(self, key: str) -> None:
        if self.latency:
            time.sleep(self.latency)
        if self.fail_puts(key):
            self.injected += 1
            raise self.error(key)
        if self.drop_puts(key):
            self.injected += 1
            raise StoreError(f"connection dropped while uploading {key}")
        if self.timeout_puts(key):
            self.injected += 1
            time.sleep(self.timeout)
            raise StoreError(f"read timeout on {key}")

    def _after_put(self, key: str) -> None:
        if self.lose_replies(key):
            self.injected += 1
            raise StoreError(f"connection dropped before the answer to the upload of {key}")

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None:
        self._before_put(key)
        self.puts.append(key)
        self.inner.put(key, data, if_none_match=if_none_match, durable=durable)
        self._after_put(key)

    def flush(self) -> None:
        self.inner.flush()

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        if self.fail_gets(key):
            raise self.error(key)
        return self.inner.get_versioned(key)

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        self._before_put(key)
        self.puts.append(key)
        tag = self.inner.put_versioned(key, data, expect=expect)
        self._after_put(key)
        return tag

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.latency:
            time.sleep(self.latency)
        if self.fail_gets(key):
            self.injected += 1
            raise self.error(key)
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> int:
        return self.inner.stat(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        return self.inner.list_with_times(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def space(self) -> tuple[int, int] | None:
        return self.inner.space()
