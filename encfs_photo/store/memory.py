"""MemoryStore: a dict, for tests. Same contract as every other store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from ..errors import PreconditionFailedError, StoreNotFoundError
from .base import StoreCapabilities, content_tag


class MemoryStore:
    capabilities = StoreCapabilities(conditional_writes=True, max_connections=8, local=True)

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.clock: Callable[[], float] = time.time  # tests move it to age objects
        self.mtimes: dict[str, float] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "memory"

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None:
        with self._lock:
            if if_none_match and key in self.objects:
                raise PreconditionFailedError(f"{key} exists (another writer?)")
            self.objects[key] = bytes(data)
            self.mtimes[key] = self.clock()

    def flush(self) -> None:
        pass

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, content_tag(data)

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        with self._lock:
            old = self.objects.get(key)
            if (old is None) != (expect is None) or (old is not None and content_tag(old) != expect):
                raise PreconditionFailedError(f"{key} changed (another writer?)")
            self.objects[key] = bytes(data)
            self.mtimes[key] = self.clock()
        return content_tag(data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.objects[key]
        except KeyError:
            raise StoreNotFoundError(f"object {key} is missing from the store") from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def stat(self, key: str) -> int:
        try:
            return len(self.objects[key])
        except KeyError:
            raise StoreNotFoundError(f"object {key} is missing from the store") from None

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = [k for k in self.objects if k.startswith(prefix)]
        yield from keys

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        now = self.clock()
        with self._lock:
            # An object a test planted in ``objects`` directly has no time: "now".
            items = [(k, self.mtimes.get(k, now)) for k in self.objects if k.startswith(prefix)]
        yield from items

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)
            self.mtimes.pop(key, None)

    def space(self) -> tuple[int, int] | None:
        return None
