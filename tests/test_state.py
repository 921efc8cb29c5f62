"""Rollback memory: a store rolled back to an older valid state is refused."""

import json
import os
import shutil
import time

import pytest

from encfs_photo import vault
from encfs_photo.errors import IntegrityError, VaultError
from encfs_photo.fs import FileSystem
from encfs_photo.state import RollbackError
from encfs_photo.store import LocalStore


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


def _write(store_dir, state_dir, name, data, **kw):
    fs = FileSystem(vault.open_vault(LocalStore(store_dir), passphrase="pw"), state_dir=state_dir, **kw)
    _, fh = fs.create(1, name, 0o644, os.O_WRONLY, 0, 0)
    fs.write(fh, 0, data)
    fs.release(fh)
    fs.close()


def _open(store_dir, state_dir, **kw):
    return FileSystem(vault.open_vault(LocalStore(store_dir), passphrase="pw"), state_dir=state_dir, **kw)


@pytest.fixture
def dirs(tmp_path):
    store, state = tmp_path / "store", tmp_path / "state"
    store.mkdir()
    vault.create(LocalStore(str(store)), "pw")
    return str(store), str(state)


@pytest.mark.parametrize("attack", ["whole-store", "newest-batch-deleted", "journal-wiped"])
def test_rollback_refused_then_accepted_on_request(dirs, tmp_path, attack):
    store, state = dirs
    _write(store, state, b"a", b"first")
    old = tmp_path / "old"
    shutil.copytree(store, old)
    _write(store, state, b"b", b"second")
    journal = os.path.join(store, "journal")
    if attack == "whole-store":
        shutil.rmtree(store)
        shutil.copytree(old, store)
    elif attack == "newest-batch-deleted":
        newest = max((os.path.join(d, f) for d, _, fs in os.walk(journal) for f in fs), key=os.path.getmtime)
        os.unlink(newest)
    else:
        shutil.rmtree(journal)
    with pytest.raises(RollbackError) as exc:
        _open(store, state)
    assert "refusing" in str(exc.value) and "--accept-rollback" in str(exc.value)
    fs = _open(store, state, accept_rollback=True)
    fs.close()


def test_a_fresh_device_has_no_memory_and_opens(dirs, tmp_path):
    store, state = dirs
    _write(store, state, b"a", b"first")
    _open(store, str(tmp_path / "other-device")).close()


def test_newer_store_is_fine_and_state_is_authenticated(dirs):
    store, state = dirs
    _write(store, state, b"a", b"1")
    _write(store, state + "-elsewhere", b"b", b"2")  # another device moved the vault on
    _open(store, state).close()
    (path,) = [os.path.join(state, f) for f in os.listdir(state)]
    d = json.load(open(path))
    d["seq"] -= 1  # a local attacker lowers the remembered head to hide a later rollback
    json.dump(d, open(path, "w"))
    with pytest.raises(VaultError, match="tampered"):
        _open(store, state)


def _age_data(store_dir, seconds):
    then = time.time() - seconds
    for d, _, names in os.walk(os.path.join(store_dir, "data")):
        for n in names:
            os.utime(os.path.join(d, n), (then, then))


def test_a_wiped_journal_is_refused_by_a_device_without_memory(dirs, tmp_path):
    store, state = dirs
    _write(store, state, b"IMG_0001.CR3", os.urandom(300_000))
    _write(store, state, b"IMG_0001.xmp", b"rating 5")
    shutil.rmtree(os.path.join(store, "journal"))  # a careless cleanup, or a bucket writer
    _age_data(store, 2 * 86400)
    fresh = str(tmp_path / "new-laptop")
    with pytest.raises(IntegrityError, match="metadata was deleted") as exc:
        _open(store, fresh)
    assert "--accept-rollback" in str(exc.value)
    before = sorted(os.listdir(os.path.join(store, "data")))
    assert before  # refused before anything could collect the data
    fs = _open(store, fresh, accept_rollback=True)  # asked for: opens empty
    assert [n for n, _ in fs.readdir(1) if n not in (b".", b"..")] == []
    fs.close()


def test_young_data_without_a_journal_is_a_first_mount_that_crashed(dirs, tmp_path):
    store, state = dirs
    _write(store, state, b"a", os.urandom(300_000))
    shutil.rmtree(os.path.join(store, "journal"))  # as if killed before the first batch
    _age_data(store, 3600)  # an hour ago: younger than the collector's grace
    _open(store, str(tmp_path / "other")).close()
