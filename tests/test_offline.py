"""Offline mounting through the write-back cache (copies of config, key slots and journal), in process,
and holding metadata uploads back while this mount does not hold the vault's lease."""

from __future__ import annotations

import os

import pytest
from test_leak import MARKER, populate, scan
from test_writeback import PW, _compare, _populate, dkey, jkey

from encfs_photo import vault
from encfs_photo.errors import ConflictError, StoreError
from encfs_photo.fs import FileSystem
from encfs_photo.store import MemoryStore
from encfs_photo.store.writeback import WriteBackStore


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


class Switch:
    """A MemoryStore that can be made unreachable: every call then raises StoreError."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.down = False

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            if self.down:
                raise StoreError("cannot reach the store (test)")
            return attr(*a, **kw)

        return call


def test_offline_mount_reads_what_is_cached_and_writes_land_in_the_cache(tmp_path):
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    net = Switch(base)
    wb = WriteBackStore(net, str(tmp_path / "cache"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    _populate(fs)
    fs.close()
    wb.close(wait=True)
    meta = tmp_path / "cache" / "meta"
    assert (meta / "config").exists() and any(n.startswith("keys~") for n in os.listdir(meta))

    net.down = True
    wb = WriteBackStore(net, str(tmp_path / "cache"))
    with pytest.raises(StoreError):
        list(wb.list("journal/"))  # not told it is offline: the store is asked, and fails
    wb.offline = True
    v = vault.open_vault(wb, passphrase=PW)
    fs = FileSystem(v)
    _compare(fs)  # every file, from the copies and the clean cache
    root = fs.resolve(b"/")
    fs.mkdir(root, b"plane", 0o755, 0, 0)
    fs.close()  # the batch is queued locally
    assert wb.status()["pending_objects"] >= 1
    net.down = False
    wb.go_online()
    assert wb.wait_uploaded(timeout=30)
    wb.close()
    fs = FileSystem(vault.open_vault(base, passphrase=PW))  # another device, from the store alone
    try:
        _compare(fs)
        assert fs.resolve(b"/plane")
    finally:
        fs.close()


def test_offline_copies_follow_pruning_and_hold_no_plaintext(tmp_path):
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    wb = WriteBackStore(base, str(tmp_path / "cache"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    populate(fs)
    fs.close()
    wb.close(wait=True)
    assert len(os.listdir(tmp_path / "cache" / "meta")) > 3
    assert scan(str(tmp_path / "cache"), {"marker": MARKER, "passphrase": PW.encode()}) == []
    wb = WriteBackStore(base, str(tmp_path / "cache"))
    keys = sorted(wb.list("journal/"))
    wb.delete(keys[0])  # gc prunes a batch: it leaves the offline listing too
    wb.close(wait=True)
    with open(tmp_path / "cache" / "meta" / "index") as f:
        index = f.read().split()
    assert keys[0] not in index and set(keys[1:]) <= set(index)


def test_no_offline_copy_is_not_found_rather_than_a_network_error(tmp_path):
    net = Switch(MemoryStore())
    net.down = True
    wb = WriteBackStore(net, str(tmp_path / "cache"))
    wb.offline = True
    try:
        assert not wb.exists("journal-floor")
        assert list(wb.list("journal/")) == []
        with pytest.raises(StoreError):
            wb.get(dkey(1))  # data is not copied: the store is asked, and is down
    finally:
        wb.close(wait=False)


def test_held_metadata_waits_while_data_uploads(tmp_path):
    base = MemoryStore()
    wb = WriteBackStore(base, str(tmp_path / "cache"), retry_initial=0.01)
    try:
        wb.hold_metadata("another device holds the lease")
        wb.put(dkey(1), b"d1")
        wb.put(jkey(1), b"batch", if_none_match=True)
        wb.put(dkey(2), b"d2")
        wb.delete(dkey(9))
        assert wb.wait_uploaded(timeout=30) is False  # returns: what is left waits for the lease
        assert dkey(1) in base.objects and dkey(2) in base.objects
        assert jkey(1) not in base.objects
        assert wb.status()["pending_objects"] == 1 and wb.status()["pending_deletes"] == 1
        wb.release_metadata()
        assert wb.wait_uploaded(timeout=30) is True
        assert base.objects[jkey(1)] == b"batch"
    finally:
        wb.close(wait=False)


def test_declared_conflict_refuses_puts_and_survives_a_restart(tmp_path):
    wb = WriteBackStore(MemoryStore(), str(tmp_path / "cache"))
    wb.put(dkey(1), b"x")
    wb.declare_conflict("another device took this vault's lease")
    with pytest.raises(ConflictError):
        wb.put(dkey(2), b"y")
    wb.close(wait=False)
    wb = WriteBackStore(MemoryStore(), str(tmp_path / "cache"))
    try:
        assert "took this vault's lease" in wb.status()["conflict"]
    finally:
        wb.close(wait=False)
