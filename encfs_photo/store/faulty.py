"""FaultyStore: wraps a store and fails chosen calls, for failure tests.

``fail_puts``/``fail_gets`` are predicates on the key; a matching call raises
the configured error instead of reaching the inner store.
"""

from __future__ import annotations

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
        self.puts: list[str] = []

    def describe(self) -> str:
        return f"faulty({self.inner.describe()})"

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None:
        if self.fail_puts(key):
            raise self.error(key)
        self.puts.append(key)
        self.inner.put(key, data, if_none_match=if_none_match, durable=durable)

    def flush(self) -> None:
        self.inner.flush()

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        if self.fail_gets(key):
            raise self.error(key)
        return self.inner.get_versioned(key)

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        if self.fail_puts(key):
            raise self.error(key)
        self.puts.append(key)
        return self.inner.put_versioned(key, data, expect=expect)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.fail_gets(key):
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
