"""One conformance suite for every ObjectStore (store/base.py's contract)."""

from __future__ import annotations

import errno
import os

import pytest

from encfs_photo.errors import PreconditionFailedError, StoreError, StoreFullError, StoreNotFoundError
from encfs_photo.store import LocalStore, MemoryStore
from encfs_photo.store.faulty import FaultyStore


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield LocalStore(str(tmp_path / "store"))
    elif request.param == "memory":
        yield MemoryStore()
    else:  # S3Store on moto, in-process; tests/test_store_s3.py has the S3 specifics
        moto = pytest.importorskip("moto")
        from encfs_photo.store.s3 import S3Store

        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
            monkeypatch.setenv(name, value)
        with moto.mock_aws():
            s = S3Store.from_url("s3://conformance/vault")
            s._client().create_bucket(Bucket="conformance")
            yield s


def all_files(root) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted(out)


KEYS = ["config", "keys/0011223344556677", "data/" + "ab" * 16, "data/" + "ac" * 16, "journal/" + "01" * 16]


def test_put_get_roundtrip(store):
    for i, key in enumerate(KEYS):
        store.put(key, bytes([i]) * (i + 1) * 100)
    for i, key in enumerate(KEYS):
        assert store.get(key) == bytes([i]) * (i + 1) * 100


def test_put_empty_and_binary(store):
    store.put("data/" + "00" * 16, b"")
    assert store.get("data/" + "00" * 16) == b""
    blob = bytes(range(256)) * 10
    store.put("data/" + "01" * 16, blob)
    assert store.get("data/" + "01" * 16) == blob


def test_put_overwrites(store):
    store.put("config", b"old")
    store.put("config", b"new, longer")
    assert store.get("config") == b"new, longer"
    store.put("config", b"x")
    assert store.get("config") == b"x"


def test_range_get(store):
    data = bytes(range(256)) * 4
    key = "data/" + "ab" * 16
    store.put(key, data)
    assert store.get(key, 0, 10) == data[:10]
    assert store.get(key, 100, 50) == data[100:150]
    assert store.get(key, 1000) == data[1000:]
    assert store.get(key, 1000, 100) == data[1000:]  # past the end: what exists
    assert store.get(key, 5000, 10) == b""
    assert store.get(key, 0, 0) == b""
    assert store.get(key, 1023, 1) == data[1023:]


def test_stat_and_exists(store):
    key = "data/" + "ab" * 16
    assert not store.exists(key)
    store.put(key, b"x" * 12345)
    assert store.exists(key)
    assert store.stat(key) == 12345
    assert not store.exists("data/" + "ac" * 16)


def test_list_prefix(store):
    for key in KEYS:
        store.put(key, b"v")
    assert sorted(store.list()) == sorted(KEYS)
    assert sorted(store.list("data/")) == sorted(k for k in KEYS if k.startswith("data/"))
    assert sorted(store.list("data/ab")) == ["data/" + "ab" * 16]
    assert list(store.list("keys/")) == ["keys/0011223344556677"]
    assert list(store.list("nothing/")) == []


def test_list_empty_store(store):
    assert list(store.list()) == []
    assert list(store.list("data/")) == []
    assert list(store.list_with_times()) == []


def test_list_with_times_matches_list_and_gives_put_times(store):
    import time

    before = time.time() - 5  # S3's LastModified has one-second resolution
    for key in KEYS:
        store.put(key, b"v")
    after = time.time() + 5
    listed = dict(store.list_with_times())
    assert sorted(listed) == sorted(store.list())
    assert all(before <= t <= after for t in listed.values()), listed
    assert sorted(dict(store.list_with_times("data/"))) == sorted(k for k in KEYS if k.startswith("data/"))
    store.delete(KEYS[2])
    assert KEYS[2] not in dict(store.list_with_times("data/"))


def test_list_with_times_tells_old_from_new(tmp_path):
    local = LocalStore(str(tmp_path / "s"))
    local.put("data/" + "ab" * 16, b"old")
    local.put("data/" + "ac" * 16, b"new")
    os.utime(local._path("data/" + "ab" * 16), (1_000_000, 1_000_000))
    assert dict(local.list_with_times("data/"))["data/" + "ab" * 16] == 1_000_000
    mem = MemoryStore()
    mem.clock = lambda: 1_000_000.0
    mem.put("data/" + "ab" * 16, b"old")
    mem.clock = lambda: 2_000_000.0
    mem.put("data/" + "ac" * 16, b"new")
    assert dict(mem.list_with_times()) == {"data/" + "ab" * 16: 1_000_000.0, "data/" + "ac" * 16: 2_000_000.0}


def test_delete(store):
    store.put("data/" + "ab" * 16, b"v")
    store.put("data/" + "ac" * 16, b"w")
    store.delete("data/" + "ab" * 16)
    assert not store.exists("data/" + "ab" * 16)
    assert list(store.list("data/")) == ["data/" + "ac" * 16]
    with pytest.raises(StoreNotFoundError):
        store.get("data/" + "ab" * 16)
    store.delete("data/" + "ab" * 16)  # deleting a missing key is not an error
    assert store.get("data/" + "ac" * 16) == b"w"


def test_if_none_match(store):
    key = "journal/" + "01" * 16
    store.put(key, b"first", if_none_match=True)
    with pytest.raises(PreconditionFailedError) as ei:
        store.put(key, b"second", if_none_match=True)
    assert isinstance(ei.value, StoreError)
    assert store.get(key) == b"first"
    store.put("journal/" + "02" * 16, b"other", if_none_match=True)
    assert store.get("journal/" + "02" * 16) == b"other"


def test_versioned_compare_and_swap(store):
    with pytest.raises(StoreNotFoundError):
        store.get_versioned("lease")
    with pytest.raises(PreconditionFailedError):
        store.put_versioned("lease", b"x", expect="nonesuch")  # If-Match on a missing key
    t1 = store.put_versioned("lease", b"one", expect=None)
    assert store.get_versioned("lease") == (b"one", t1)
    with pytest.raises(PreconditionFailedError):
        store.put_versioned("lease", b"two", expect=None)  # If-None-Match on an existing key
    t2 = store.put_versioned("lease", b"two", expect=t1)
    assert t2 != t1
    with pytest.raises(PreconditionFailedError):
        store.put_versioned("lease", b"three", expect=t1)  # a stale tag: someone renewed since
    assert store.get_versioned("lease") == (b"two", t2)
    assert store.get("lease") == b"two"
    f = FaultyStore(store)
    f.fail_puts = lambda key: True
    with pytest.raises(StoreError):
        f.put_versioned("lease", b"four", expect=t2)
    f.fail_gets = lambda key: True
    with pytest.raises(StoreError):
        f.get_versioned("lease")
    assert store.get_versioned("lease")[1] == t2


def test_local_versioned_put_excludes_concurrent_writers(tmp_path):
    import threading

    stores = [LocalStore(str(tmp_path / "store")) for _ in range(2)]  # two mounts: two store objects
    t0 = stores[0].put_versioned("lease", b"start", expect=None)
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        try:
            stores[i % 2].put_versioned("lease", b"winner %d" % i, expect=t0)
            wins.append(i)
        except PreconditionFailedError:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert stores[1].get("lease") == b"winner %d" % wins[0]
    assert list(stores[0].list()) == ["lease"]  # the lock file is not an object


def test_missing_key(store):
    with pytest.raises(StoreNotFoundError):
        store.get("config")
    with pytest.raises(StoreNotFoundError):
        store.get("data/" + "ff" * 16, 10, 10)
    with pytest.raises(StoreNotFoundError):
        store.stat("keys/0011223344556677")
    assert not store.exists("config")


def test_store_errors_are_typed(store):
    assert issubclass(StoreNotFoundError, StoreError)
    assert StoreFullError().errno == errno.ENOSPC


def test_faulty_store_wraps(store):
    f = FaultyStore(store)
    f.put("config", b"c")
    f.fail_gets = lambda key: key == "config"
    with pytest.raises(StoreError):
        f.get("config")
    f.fail_puts = lambda key: key.startswith("data/")
    with pytest.raises(StoreError):
        f.put("data/" + "ab" * 16, b"x")
    assert not store.exists("data/" + "ab" * 16)
    assert f.puts == ["config"]


# ------------------------------------------------------------------ LocalStore specifics


def test_local_leaves_no_temp_files(tmp_path):
    root = tmp_path / "store"
    s = LocalStore(str(root))
    for i in range(20):
        s.put(f"data/{i:02x}" + "ab" * 15, os.urandom(1000))
    s.put("journal/" + "01" * 16, b"j", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        s.put("journal/" + "01" * 16, b"j2", if_none_match=True)
    s.put("config", b"c")
    s.put("config", b"c2")
    files = all_files(root)
    assert not [f for f in files if f.startswith(".tmp")]
    assert len(files) == 22
    assert sorted(s.list()) == sorted(
        [f"data/{i:02x}" + "ab" * 15 for i in range(20)] + ["journal/" + "01" * 16, "config"])


def test_local_fans_out_and_lists_keys(tmp_path):
    root = tmp_path / "store"
    s = LocalStore(str(root))
    key = "data/" + "3f" * 16
    s.put(key, b"x")
    assert (root / "data" / "3f" / ("3f" * 16)).is_file()
    assert list(s.list("data/")) == [key]


def test_local_rejects_bad_keys(tmp_path):
    s = LocalStore(str(tmp_path / "store"))
    for bad in ["", "/etc/passwd", "../x", "data/../../x"]:
        with pytest.raises(StoreError):
            s.put(bad, b"x")
    assert not (tmp_path / "x").exists()


def test_local_enospc_maps_to_store_full(tmp_path, monkeypatch):
    root = tmp_path / "store"
    s = LocalStore(str(root))
    s.put("data/" + "aa" * 16, b"kept")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreFullError) as ei:
        s.put("data/" + "bb" * 16, b"x" * 1000)
    assert ei.value.errno == errno.ENOSPC
    with pytest.raises(StoreFullError):
        s.put("data/" + "aa" * 16, b"overwrite attempt")
    monkeypatch.undo()
    # Nothing already stored is damaged, nothing half-written is visible, no temp file left.
    assert s.get("data/" + "aa" * 16) == b"kept"
    assert not s.exists("data/" + "bb" * 16)
    assert not [f for f in all_files(root) if f.startswith(".tmp")]


def test_local_edquot_maps_to_store_full(tmp_path, monkeypatch):
    s = LocalStore(str(tmp_path / "store"))

    def quota(fd, data):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "write", quota)
    with pytest.raises(StoreFullError):
        s.put("config", b"x")


def test_local_other_oserror_is_store_error(tmp_path, monkeypatch):
    s = LocalStore(str(tmp_path / "store"))

    def eio(fd, data):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", eio)
    with pytest.raises(StoreError) as ei:
        s.put("config", b"x")
    assert not isinstance(ei.value, StoreFullError)


def test_local_short_writes_are_completed(tmp_path, monkeypatch):
    s = LocalStore(str(tmp_path / "store"))
    real_write = os.write

    def short(fd, data):
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short)
    blob = bytes(range(256)) * 3
    s.put("data/" + "cd" * 16, blob)
    monkeypatch.undo()
    assert s.get("data/" + "cd" * 16) == blob


def test_local_space(tmp_path):
    s = LocalStore(str(tmp_path / "store"))
    s.put("config", b"x")
    total, free = s.space()
    assert total > 0 and 0 <= free <= total


def test_deferred_put_then_flush(store):
    key = "data/" + "de" * 16
    store.put(key, b"deferred", durable=False)
    assert store.get(key) == b"deferred"  # visible at once, durable at the next flush
    store.flush()
    assert store.get(key) == b"deferred"
    store.flush()  # nothing pending: a no-op


def test_local_deferred_put_is_fsynced_by_flush_or_next_durable_put(tmp_path, monkeypatch):
    root = tmp_path / "store"
    s = LocalStore(str(root))
    s.put("config", b"c")  # creates the folders up front
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    a, b, j = "data/" + "aa" * 16, "data/" + "ab" * 16, "journal/" + "01" * 16
    s.put(a, b"A", durable=False)
    s.put(b, b"B", durable=False)
    path_a = str(root / "data" / "aa" / ("aa" * 16))
    path_b = str(root / "data" / "ab" / ("ab" * 16))
    assert path_a not in synced and path_b not in synced
    s.flush()
    assert path_a in synced and path_b in synced
    assert str(root / "data" / "aa") in synced  # the folder entry too
    synced.clear()
    s.put("data/" + "ac" * 16, b"C", durable=False)
    s.put(j, b"batch", if_none_match=True)  # a durable put makes earlier deferred ones durable first
    path_c = str(root / "data" / "ac" / ("ac" * 16))
    path_j = str(root / "journal" / "01" / ("01" * 16))
    assert path_c in synced
    assert str(root / "journal" / "01") in synced
    assert synced.index(path_c) < synced.index(str(root / "journal" / "01"))
    assert path_j not in synced or synced.index(path_c) < synced.index(path_j)
