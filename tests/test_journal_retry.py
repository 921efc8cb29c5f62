"""A journal batch whose put failed is retried with the very same bytes.

A lost response (the batch landed, the client saw an error) must not turn
into a false "another writer" conflict, and a real failure must not lose the
changes: both are retried by the next commit.
"""

import os

import pytest

from encfs_photo import vault
from encfs_photo.errors import StoreError
from encfs_photo.fs import FileSystem
from encfs_photo.store import MemoryStore
from encfs_photo.store.faulty import FaultyStore


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


def _put_file(fs, name, data):
    _, fh = fs.create(1, name, 0o644, os.O_WRONLY, 0, 0)
    fs.write(fh, 0, data)
    try:
        fs.flush(fh)
    finally:
        fs.release(fh)


def _read(fs, name):
    fh = fs.open(fs.resolve(b"/" + name), os.O_RDONLY)
    try:
        return fs.read(fh, 0, 1 << 20)
    finally:
        fs.release(fh)


@pytest.mark.parametrize("landed", [True, False], ids=["lost-response", "failed"])
def test_failed_batch_put_is_retried_without_false_conflict(landed):
    inner = MemoryStore()
    vault.create(inner, "pw")
    store = FaultyStore(inner)
    fs = FileSystem(vault.open_vault(store, passphrase="pw"))
    _put_file(fs, b"a", b"first")
    tripped = []

    def fail_once(key):
        if key.startswith("journal/") and not tripped:
            tripped.append(key)
            return True
        return False

    store.fail_puts = fail_once
    if landed:
        # the object is stored, then the response is lost
        plain_put = store.put

        def put(key, data, *, if_none_match=False, durable=True):
            if key.startswith("journal/") and not tripped:
                tripped.append(key)
                inner.put(key, data, if_none_match=if_none_match, durable=durable)
                raise StoreError("connection reset after the upload")
            return plain_put(key, data, if_none_match=if_none_match, durable=durable)

        store.fail_puts = lambda key: False
        store.put = put
    with pytest.raises(StoreError):
        _put_file(fs, b"b", b"second")
    assert tripped
    _put_file(fs, b"c", b"third")  # retries the failed batch first, then its own
    assert not fs.read_only
    fs.close()
    fs2 = FileSystem(vault.open_vault(inner, passphrase="pw"))
    assert [_read(fs2, n) for n in (b"a", b"b", b"c")] == [b"first", b"second", b"third"]
    fs2.close()
