"""WriteBackStore: the local write-back cache in front of a remote store, in process, over MemoryStore.

Semantics (read-your-writes, list, delete, if-none-match), upload order
(metadata after the objects before it), crash-resume after a real kill -9 of a
process holding the cache, LRU eviction within the cap with dirty objects never
evicted, back-pressure, offline operation with recovery, conflicts, a whole
FileSystem round trip (remounting with an empty cache reads everything from the
inner store) and the leak scan of the cache folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from test_leak import MARKER, populate, scan
from test_store import (  # noqa: F401 - the shared conformance suite, run here over the wrapper
    test_deferred_put_then_flush,
    test_delete,
    test_faulty_store_wraps,
    test_if_none_match,
    test_list_empty_store,
    test_list_prefix,
    test_list_with_times_matches_list_and_gives_put_times,
    test_missing_key,
    test_put_empty_and_binary,
    test_put_get_roundtrip,
    test_put_overwrites,
    test_range_get,
    test_stat_and_exists,
)

from encfs_photo import vault
from encfs_photo.errors import ConflictError, PreconditionFailedError, ReadOnlyError, StoreError, StoreNotFoundError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import ROOT_INO
from encfs_photo.store import MemoryStore
from encfs_photo.store.base import StoreCapabilities
from encfs_photo.store.cache import key_to_name
from encfs_photo.store.faulty import FaultyStore
from encfs_photo.store.writeback import WriteBackStore, default_cache_dir, parse_size

PW = "writeback test passphrase"
UID, GID = os.getuid(), os.getgid()
KiB = 1024
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


class GatedStore:
    """A MemoryStore whose puts and deletes wait for ``gate``, and which records the order they land in."""

    capabilities = StoreCapabilities(conditional_writes=True, max_connections=8, local=False)

    def __init__(self, inner: MemoryStore | None = None, data_delay: float = 0.0) -> None:
        self.inner = inner or MemoryStore()
        self.gate = threading.Event()
        self.gate.set()
        self.data_delay = data_delay
        self.order: list[tuple[str, str]] = []
        self.started: list[str] = []
        self._lock = threading.Lock()

    @property
    def objects(self) -> dict[str, bytes]:
        return self.inner.objects

    def describe(self) -> str:
        return "gated"

    def put(self, key, data, *, if_none_match=False, durable=True):
        with self._lock:
            self.started.append(key)
        self.gate.wait()
        if key.startswith("data/") and self.data_delay:
            time.sleep(self.data_delay)
        self.inner.put(key, data, if_none_match=if_none_match)
        with self._lock:
            self.order.append(("put", key))

    def delete(self, key):
        self.gate.wait()
        self.inner.delete(key)
        with self._lock:
            self.order.append(("delete", key))

    def flush(self):
        pass

    def get(self, key, offset=0, length=None):
        return self.inner.get(key, offset, length)

    def stat(self, key):
        return self.inner.stat(key)

    def exists(self, key):
        return self.inner.exists(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def list_with_times(self, prefix=""):
        return self.inner.list_with_times(prefix)

    def space(self):
        return None


def dkey(i: int) -> str:
    return f"data/{i:032x}"


def jkey(i: int) -> str:
    return f"journal/{i:032x}"


def files_in(d) -> list[str]:
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture
def wbs(tmp_path):
    """Factory of WriteBackStores, all closed (without waiting) at teardown."""
    made: list[WriteBackStore] = []

    def make(inner, name="cache", **kw) -> WriteBackStore:
        kw.setdefault("retry_initial", 0.01)
        kw.setdefault("retry_max", 0.2)
        wb = WriteBackStore(inner, str(tmp_path / name), **kw)
        made.append(wb)
        return wb

    yield make
    for wb in made:
        gate = getattr(wb.inner, "gate", None)
        if gate is not None:
            gate.set()
        wb.leave_queued()
        wb.close(wait=False)


@pytest.fixture(params=["uploading", "cache-only"])
def store(request, tmp_path):
    """For the conformance suite: the wrapper with its uploader running, and with none (all answers local)."""
    wb = WriteBackStore(MemoryStore(), str(tmp_path / "conformance"), start=request.param == "uploading")
    yield wb
    wb.leave_queued()
    wb.close(wait=False)


def test_conformance_suite_reaches_the_inner_store(tmp_path):
    inner = MemoryStore()
    wb = WriteBackStore(inner, str(tmp_path / "c"))
    test_put_get_roundtrip(wb)
    test_delete(wb)
    wb.close(wait=True)
    assert inner.objects["config"] == bytes([0]) * 100
    assert "data/" + "ab" * 16 not in inner.objects and inner.objects["data/" + "ac" * 16] == b"w"


# ------------------------------------------------------------------ helpers


def test_parse_size():
    assert parse_size("10G") == 10 << 30
    assert parse_size("500M") == 500 << 20
    assert parse_size("64KiB") == 64 << 10
    assert parse_size("1.5g") == 3 << 29
    assert parse_size("123") == 123
    assert parse_size("2TB") == 2 << 40
    for bad in ("", "G", "10X", "-1G", "ten"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = default_cache_dir("s3://b/p http://127.0.0.1:9000")
    assert a.startswith(str(tmp_path / "encfs-photo") + os.sep)
    assert a == default_cache_dir("s3://b/p http://127.0.0.1:9000")
    assert a != default_cache_dir("s3://b/p http://127.0.0.1:9001")
    assert "127" not in os.path.basename(a)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir("x").startswith(os.path.expanduser("~/.cache/encfs-photo/"))


# ------------------------------------------------------------------ semantics


def test_put_get_list_delete_semantics(wbs, tmp_path):
    inner = GatedStore()
    wb = wbs(inner, start=False)  # no uploader yet: every answer comes from the cache
    body = os.urandom(300_000)
    wb.put(dkey(1), body, durable=False)
    wb.put(dkey(2), b"two")
    wb.put(jkey(0), b"batch", if_none_match=True)
    assert wb.get(dkey(1)) == body
    assert wb.get(dkey(1), 1000, 500) == body[1000:1500]
    assert wb.get(dkey(1), len(body) - 10, 100) == body[-10:]
    assert wb.get(dkey(1), len(body) + 5, 10) == b""
    assert wb.stat(dkey(1)) == len(body) and wb.exists(dkey(2)) and not wb.exists(dkey(3))
    assert list(wb.list("journal/")) == [jkey(0)]
    assert list(wb.list()) == sorted([dkey(1), dkey(2), jkey(0)])
    with pytest.raises(PreconditionFailedError):
        wb.put(jkey(0), b"other", if_none_match=True)
    with pytest.raises(StoreNotFoundError):
        wb.get(dkey(3))
    with pytest.raises(StoreError):
        wb.put("../escape", b"x")
    wb.flush()
    assert inner.objects == {}
    st = wb.status()
    assert st["pending_objects"] == 3 and st["pending_bytes"] == len(body) + 3 + 5

    # An object no batch was queued after never leaves this machine: no remote delete.
    wb.put(dkey(3), b"three", durable=False)
    wb.delete(dkey(3))
    # One that a queued batch may name is uploaded before that batch and deleted after it:
    # cancelling its put would let the batch reach the bucket naming a missing object.
    wb.delete(dkey(2))
    assert not wb.exists(dkey(2)) and dkey(2) not in list(wb.list())
    assert not wb.exists(dkey(3))
    inner.gate.set()
    assert wb.wait_uploaded(timeout=30)
    assert set(inner.objects) == {dkey(1), jkey(0)}
    assert ("put", dkey(3)) not in inner.order and ("delete", dkey(3)) not in inner.order
    order = inner.order
    assert order.index(("put", dkey(2))) < order.index(("put", jkey(0))) < order.index(("delete", dkey(2)))
    assert files_in(tmp_path / "cache" / "pending") == []
    assert sorted(files_in(tmp_path / "cache" / "clean")) == sorted(key_to_name(k) for k in (dkey(1), jkey(0)))

    # Clean hits need no inner store.
    inner.objects.pop(dkey(1))
    assert wb.get(dkey(1), 10, 10) == body[10:20]
    inner.objects[dkey(1)] = body
    # An uploaded object is deleted remotely, after the puts before it.
    wb.delete(dkey(1))
    with pytest.raises(StoreNotFoundError):
        wb.get(dkey(1))
    assert not wb.exists(dkey(1)) and dkey(1) not in list(wb.list())
    assert wb.wait_uploaded(timeout=30)
    assert dkey(1) not in inner.objects and ("delete", dkey(1)) in inner.order
    # A local if-none-match refusal for a clean object too.
    with pytest.raises(PreconditionFailedError):
        wb.put(jkey(0), b"again", if_none_match=True)
    # A delete of something never stored succeeds (the inner store says "not found").
    wb.delete(dkey(77))
    assert wb.wait_uploaded(timeout=30)


def test_misses_read_through_and_fill_the_clean_cache(wbs, tmp_path):
    inner = MemoryStore()
    big = os.urandom(4 * MiB)
    inner.put(dkey(1), big)
    inner.put(jkey(1), b"journal batch")
    counting = FaultyStore(inner)
    gets: list[tuple] = []
    real_get = counting.get

    def get(key, offset=0, length=None):
        gets.append((key, offset, length))
        return real_get(key, offset, length)

    counting.get = get  # type: ignore[method-assign]
    wb = wbs(counting)
    assert wb.get(jkey(1)) == b"journal batch"  # whole-object read: cached
    assert wb.get(jkey(1)) == b"journal batch"
    assert gets == [(jkey(1), 0, None)]
    # A lone ranged read (a header, a scrub) fetches just its range, uncached.
    assert wb.get(dkey(1), 100, 64) == big[100:164]
    assert gets[-1] == (dkey(1), 100, 64)
    # A read that continues it (sequential) fetches the whole object and keeps it.
    assert wb.get(dkey(1), 164, 1000) == big[164:1164]
    assert gets[-1] == (dkey(1), 0, None)
    n = len(gets)
    assert wb.get(dkey(1), 3 * MiB, 10) == big[3 * MiB:3 * MiB + 10]
    assert wb.stat(dkey(1)) == len(big)
    assert len(gets) == n
    assert wb.status()["clean_bytes"] == len(big) + len(b"journal batch")
    assert files_in(tmp_path / "cache" / "pending") == []


# ------------------------------------------------------------------ order


def test_metadata_is_uploaded_after_every_object_queued_before_it(wbs):
    inner = GatedStore(data_delay=0.02)
    wb = wbs(inner)
    expected_before: dict[str, set[str]] = {}
    queued: list[str] = []
    n = 0
    for batch in range(4):
        for _ in range(6):
            wb.put(dkey(n), os.urandom(1000 + n), durable=False)
            queued.append(dkey(n))
            n += 1
        wb.flush()
        wb.put(jkey(batch), b"batch %d" % batch, if_none_match=True)
        expected_before[jkey(batch)] = set(queued)
        queued.append(jkey(batch))
        if batch:
            wb.delete(dkey(n - 7))  # garbage of the batch that dropped it: after that batch
            expected_before["del " + dkey(n - 7)] = set(queued) - {dkey(n - 7)}
    assert wb.wait_uploaded(timeout=60)
    landed = [(op, k) for op, k in inner.order]
    pos = {("del " + k if op == "delete" else k): i for i, (op, k) in enumerate(landed)}
    for key, before in expected_before.items():
        if key not in pos:  # a delete whose put was still queued: cancelled, nothing to delete remotely
            assert key.startswith("del ") and key[4:] not in inner.objects
            continue
        late = [b for b in before if b in pos and pos[b] > pos[key]]
        assert not late, f"{key} landed before {late}"
    # data puts did overlap (more than one in flight at once)
    assert wb.status()["uploaded_objects"] == len(landed)
    journal_pos = [pos[jkey(b)] for b in range(4)]
    assert journal_pos == sorted(journal_pos)


def test_data_puts_run_in_parallel(wbs):
    inner = GatedStore(data_delay=0.2)
    wb = wbs(inner, upload_threads=4)
    t0 = time.monotonic()
    for i in range(8):
        wb.put(dkey(i), b"x" * 100, durable=False)
    assert wb.wait_uploaded(timeout=60)
    assert time.monotonic() - t0 < 8 * 0.2 * 0.75  # 8 sequential puts would take 1.6 s


# ------------------------------------------------------------------ crash and resume

CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, threading
    from encfs_photo.store.base import StoreCapabilities
    from encfs_photo.store.writeback import WriteBackStore

    class Stuck:  # the network hangs: no upload ever completes
        capabilities = StoreCapabilities(conditional_writes=True, max_connections=8, local=False)
        def describe(self): return "stuck"
        def put(self, *a, **k): threading.Event().wait()
        def delete(self, *a, **k): threading.Event().wait()
        def list(self, prefix=""): return iter(())

        def list_with_times(self, prefix=""): return iter(())

    wb = WriteBackStore(Stuck(), sys.argv[1])
    for batch in range(3):
        for i in range(5):
            n = batch * 5 + i
            wb.put("data/%032x" % n, bytes([n]) * (1000 + n), durable=False)
        wb.put("journal/%032x" % batch, b"batch %d" % batch, if_none_match=True)  # durable: flushes the data
        if batch:
            wb.delete("data/%032x" % (batch * 5 - 1))
    wb.put("data/%032x" % 99, b"never flushed", durable=False)  # may or may not survive
    print("ready", flush=True)
    threading.Event().wait()
""")


def test_kill_9_then_resume_uploads_everything_in_order(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(cache)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()  # SIGKILL: no close, no flush
        proc.wait(timeout=30)
    pending = files_in(cache / "pending")
    # 3 batches, 15 data objects, 1 unflushed, 2 delete markers: each deleted object has a batch queued
    # after it that may name it, so its put is kept (uploaded before that batch) and deleted after
    assert len(pending) == 3 + 15 + 1 + 2
    assert os.path.exists(cache / "running")

    inner = GatedStore(data_delay=0.01)
    inner.inner.put(f"journal/{0:032x}", b"batch 0")  # uploaded before the kill, not recorded as done
    wb = WriteBackStore(inner, str(cache), retry_initial=0.01)
    try:
        assert wb.wait_uploaded(timeout=60)
        assert wb.status()["conflict"] is None  # our own identical batch is not a conflict
    finally:
        wb.close()
    objs = inner.objects
    for batch in range(3):
        assert objs[f"journal/{batch:032x}"] == b"batch %d" % batch
    for n in range(15):
        key = f"data/{n:032x}"
        if n in (4, 9):
            assert key not in objs  # deleted after the batch that dropped it
        else:
            assert objs[key] == bytes([n]) * (1000 + n)
    pos = {k: i for i, (op, k) in enumerate(inner.order) if op == "put"}
    for batch in range(3):
        j = pos.get(f"journal/{batch:032x}", -1)
        for n in range(batch * 5 + 5):
            key = f"data/{n:032x}"
            if key in pos:
                assert pos[key] < j or batch == 0, (key, batch)
    assert files_in(cache / "pending") == []
    assert not os.path.exists(cache / "running")


def test_a_cache_folder_serves_one_mount_at_a_time(wbs, tmp_path):
    wb = wbs(MemoryStore())
    with pytest.raises(StoreError, match="in use by another mount"):
        WriteBackStore(MemoryStore(), wb.cache_dir)
    wb.close()
    again = wbs(MemoryStore())
    again.close()


def test_a_cache_folder_belongs_to_one_vault(wbs):
    wb = wbs(MemoryStore(), owner="vault-a")
    wb.close()
    with pytest.raises(StoreError, match="belongs to another vault"):
        WriteBackStore(MemoryStore(), wb.cache_dir, owner="vault-b")
    WriteBackStore(MemoryStore(), wb.cache_dir, owner="vault-a").close()


# ------------------------------------------------------------------ bounds


def test_lru_eviction_within_the_cap(wbs, tmp_path):
    inner = GatedStore()
    size = 100 * KiB
    wb = wbs(inner, cache_size=10 * size)
    for i in range(10):
        wb.put(dkey(i), bytes([i]) * size, durable=False)
    assert wb.wait_uploaded(timeout=30)
    assert wb.status()["clean_objects"] == 10
    # Uploads run in parallel, so they enter the clean cache in completion order;
    # touch them to set the recency this test relies on: 1 oldest ... 9, then 0 newest.
    for i in [*range(1, 10), 0]:
        wb.get(dkey(i))
    for i in range(10, 15):
        wb.put(dkey(i), bytes([i]) * size, durable=False)
    assert wb.wait_uploaded(timeout=30)
    st = wb.status()
    assert st["clean_bytes"] <= 10 * size and st["clean_objects"] == 10
    kept = {k.replace("~", "/") for k in files_in(tmp_path / "cache" / "clean")}
    assert dkey(0) in kept
    assert not {dkey(i) for i in range(1, 6)} & kept  # the five least recently used went
    assert {dkey(i) for i in range(6, 15)} <= kept
    # The usage on disk is what the index says.
    assert sum(os.path.getsize(tmp_path / "cache" / "clean" / n) for n in files_in(tmp_path / "cache" / "clean")) \
        == st["clean_bytes"]
    # An evicted object is read from the inner store again.
    assert wb.get(dkey(1)) == bytes([1]) * size


def test_dirty_objects_are_never_evicted(wbs, tmp_path):
    inner = GatedStore()
    size = 100 * KiB
    wb = wbs(inner, cache_size=6 * size)
    for i in range(4):
        wb.put(dkey(i), bytes([i]) * size, durable=False)
    assert wb.wait_uploaded(timeout=30)
    assert wb.status()["clean_objects"] == 4
    inner.gate.clear()  # offline: the next puts stay dirty
    for i in range(4, 10):
        wb.put(dkey(i), bytes([i]) * size, durable=False)
    st = wb.status()
    assert st["pending_bytes"] == 6 * size and st["clean_bytes"] == 0  # clean made room, dirty stayed
    assert len(files_in(tmp_path / "cache" / "pending")) == 6
    for i in range(10):
        assert wb.get(dkey(i)) in (bytes([i]) * size,) if i >= 4 else True
    inner.gate.set()
    assert wb.wait_uploaded(timeout=30)
    assert wb.status()["clean_bytes"] <= 6 * size


def test_back_pressure_blocks_writers_until_uploads_drain(wbs, caplog):
    inner = GatedStore()
    inner.gate.clear()
    size = 100 * KiB
    wb = wbs(inner, cache_size=10 * size, dirty_size=3 * size)
    for i in range(3):
        wb.put(dkey(i), b"x" * size, durable=False)
    done = threading.Event()

    def writer():
        wb.put(dkey(3), b"y" * size, durable=False)
        done.set()

    t = threading.Thread(target=writer)
    with caplog.at_level("WARNING"):
        t.start()
        assert not done.wait(0.5)
        assert wb.status()["writers_waiting"] == 1
    assert any("writes wait for the uploads" in r.message for r in caplog.records)
    inner.gate.set()
    assert done.wait(30)
    t.join()
    assert wb.wait_uploaded(timeout=30)
    assert set(inner.objects) == {dkey(i) for i in range(4)}


def test_full_cache_disk_evicts_clean_then_raises_enospc(wbs, monkeypatch):
    import errno

    from encfs_photo.errors import StoreFullError
    from encfs_photo.store import writeback

    wb = wbs(MemoryStore())
    wb.put(dkey(1), b"a" * 1000)
    assert wb.wait_uploaded(timeout=30)
    real = writeback.write_file
    calls = []

    def full_once(path, data, fsync):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, fsync)

    monkeypatch.setattr(writeback, "write_file", full_once)
    wb.put(dkey(2), b"b" * 1000)  # clean evicted, then the retry fits
    assert not os.path.exists(os.path.join(wb.cache_dir, "clean", key_to_name(dkey(1))))
    assert wb.get(dkey(2)) == b"b" * 1000

    def always_full(path, data, fsync):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writeback, "write_file", always_full)
    with pytest.raises(StoreFullError, match="cache disk full"):
        wb.put(dkey(3), b"c" * 1000)
    assert wb.wait_uploaded(timeout=30)
    assert wb.status()["pending_bytes"] == 0  # the failed put reserved nothing for good
    assert [n for n in files_in(os.path.join(wb.cache_dir, "pending"))] == []


# ------------------------------------------------------------------ offline


def test_offline_writes_and_cached_reads_work_then_uploads_resume(wbs):
    base = MemoryStore()
    inner = FaultyStore(base)
    inner.capabilities = StoreCapabilities(conditional_writes=True, max_connections=8, local=False)
    wb = wbs(inner, retry_initial=0.02, retry_max=0.1)
    wb.put(dkey(0), b"before", durable=False)
    assert wb.wait_uploaded(timeout=30)
    inner.fail_puts = lambda key: True
    inner.fail_gets = lambda key: True
    for i in range(1, 6):
        wb.put(dkey(i), b"offline %d" % i, durable=False)
    wb.put(jkey(0), b"batch", if_none_match=True)
    assert wb.get(dkey(0)) == b"before"  # clean
    assert wb.get(dkey(3)) == b"offline 3"  # pending
    with pytest.raises(StoreError):
        wb.get(dkey(50))  # not cached: needs the store
    assert not wb.wait_uploaded(timeout=0.5)
    st = wb.status()
    assert st["retrying"] and "injected failure" in st["last_error"] and st["pending_objects"] == 6
    inner.fail_puts = lambda key: False
    inner.fail_gets = lambda key: False
    assert wb.wait_uploaded(timeout=30)
    assert base.objects[jkey(0)] == b"batch" and all(dkey(i) in base.objects for i in range(6))
    assert wb.status()["last_error"] is None and not wb.status()["retrying"]


def test_backoff_doubles_to_its_cap(wbs):
    inner = FaultyStore(MemoryStore())
    attempts: list[float] = []
    inner.fail_puts = lambda key: attempts.append(time.monotonic()) or True
    wb = wbs(inner, retry_initial=0.05, retry_max=0.2)
    wb.put(dkey(0), b"x", durable=False)
    time.sleep(1.2)
    inner.fail_puts = lambda key: False
    assert wb.wait_uploaded(timeout=30)
    # attempts at about 0, 0.05, 0.15, 0.35, then every 0.2 s (the cap)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert 5 <= len(attempts) <= 10, gaps
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.19
    assert max(gaps) < 0.2 + 0.15


def test_unclean_shutdown_discards_clean_objects_but_keeps_pending(wbs, tmp_path):
    inner = GatedStore()
    wb = wbs(inner)
    wb.put(dkey(0), b"uploaded")
    assert wb.wait_uploaded(timeout=30)
    inner.gate.clear()
    wb.put(dkey(1), b"queued")
    wb.leave_queued()
    wb.close(wait=False)
    assert wb.status()["clean_objects"] == 1
    (tmp_path / "cache" / "running").write_text("1\n")  # as a kill -9 leaves it
    again = wbs(inner)
    st = again.status()
    assert st["clean_objects"] == 0 and files_in(tmp_path / "cache" / "clean") == []
    assert st["pending_objects"] == 1
    inner.gate.set()
    assert again.wait_uploaded(timeout=30) and inner.objects[dkey(1)] == b"queued"
    assert again.get(dkey(0)) == b"uploaded"


# ------------------------------------------------------------------ conflicts


def test_lost_conditional_upload_is_a_conflict_and_nothing_local_is_deleted(wbs, tmp_path):
    inner = GatedStore()
    inner.inner.put(jkey(5), b"theirs")
    wb = wbs(inner)
    wb.put(dkey(1), b"data", durable=False)
    wb.put(jkey(5), b"ours", if_none_match=True)  # accepted locally: the key is not known here
    with pytest.raises(ConflictError):
        wb.wait_uploaded(timeout=30)
    st = wb.status()
    assert "another device" in st["conflict"] and st["last_error"] == st["conflict"]
    with pytest.raises(ConflictError):
        wb.put(dkey(2), b"more", durable=False)
    with pytest.raises(ConflictError):
        wb.put(jkey(6), b"next", if_none_match=True)
    assert inner.objects[jkey(5)] == b"theirs"
    assert any(n.endswith(key_to_name(jkey(5))) for n in files_in(tmp_path / "cache" / "pending"))
    assert wb.get(jkey(5)) == b"ours"  # this device's view is kept
    wb.close(wait=False)
    again = wbs(inner)  # the conflict survives a restart
    with pytest.raises(ConflictError):
        again.put(dkey(3), b"x")


def test_filesystem_turns_read_only_when_another_device_won(tmp_path):
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    inner = GatedStore(base)
    inner.gate.clear()
    wb = WriteBackStore(inner, str(tmp_path / "a-cache"), retry_initial=0.01)
    try:
        fs_a = FileSystem(vault.open_vault(wb, passphrase=PW))  # sees an empty journal
        fs_b = FileSystem(vault.open_vault(base, passphrase=PW))  # the other device, straight to the bucket
        ino, fh = fs_b.create(ROOT_INO, b"from-b", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        fs_b.write(fh, 0, b"b")
        fs_b.release(fh)
        fs_b.sync()
        fs_b.close()
        ino, fh = fs_a.create(ROOT_INO, b"from-a", 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        fs_a.write(fh, 0, b"a" * 5000)
        fs_a.flush(fh)
        fs_a.sync()  # lands in the cache: the bucket is not consulted
        inner.gate.set()
        with pytest.raises(ConflictError):
            wb.wait_uploaded(timeout=30)
        fs_a.write(fh, 0, b"more")
        with pytest.raises(ConflictError):
            fs_a.flush(fh)
        assert fs_a.read_only and "another" in fs_a.status()["last_error"]
        with pytest.raises(ReadOnlyError):
            fs_a.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
        fs_a.release(fh)
        fs_a.close()
    finally:
        wb.close(wait=False)
    # The bucket still holds B's tree, untouched.
    fs = FileSystem(vault.open_vault(base, passphrase=PW))
    try:
        assert [n for n, _ in fs.readdir(ROOT_INO) if n not in (b".", b"..")] == [b"from-b"]
    finally:
        fs.close()


# ------------------------------------------------------------------ a filesystem over the cache


def _write(fs: FileSystem, parent: int, name: bytes, data: bytes) -> None:
    ino, fh = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, UID, GID)
    for off in range(0, len(data), MiB):
        fs.write(fh, off, data[off:off + MiB])
    fs.flush(fh)
    fs.release(fh)


def _read(fs: FileSystem, path: bytes) -> bytes:
    ino = fs.resolve(path)
    fh = fs.open(ino, os.O_RDONLY)
    try:
        return fs.read(fh, 0, fs.getattr(ino)["st_size"] + 1)
    finally:
        fs.release(fh)


FILES = {
    b"/IMG_0001.CR3": os.urandom(9 * MiB + 4321),
    b"/IMG_0001.xmp": b"<x:xmpmeta>rating 5</x:xmpmeta>",
    b"/empty": b"",
    b"/2024/IMG_0002.jpg": os.urandom(300_000),
}


def _populate(fs: FileSystem) -> None:
    fs.mkdir(ROOT_INO, b"2024", 0o755, UID, GID)
    for path, data in FILES.items():
        head, _, name = path.rpartition(b"/")
        _write(fs, fs.resolve(head or b"/"), name, data)


def _compare(fs: FileSystem) -> None:
    for path, data in FILES.items():
        assert _read(fs, path) == data, path


def test_filesystem_round_trip_and_remount_with_an_empty_cache(tmp_path):
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    inner = GatedStore(base)
    wb = WriteBackStore(inner, str(tmp_path / "cache1"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    _populate(fs)
    _compare(fs)
    fs.close()
    wb.close(wait=True)
    assert files_in(tmp_path / "cache1" / "pending") == []

    # Same cache: reads are clean hits.
    wb = WriteBackStore(inner, str(tmp_path / "cache1"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    _compare(fs)
    assert wb.status()["cache_hits"] > 0
    fs.close()
    wb.close()

    # An empty cache (another machine): everything comes from the inner store.
    wb = WriteBackStore(inner, str(tmp_path / "cache2"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    try:
        _compare(fs)
        assert sorted(n for n, _ in fs.readdir(fs.resolve(b"/2024")) if n not in (b".", b"..")) == [
            b"IMG_0002.jpg"]
        assert wb.status()["cache_misses"] > 0
    finally:
        fs.close()
        wb.close()


def test_remount_resumes_uploads_left_queued(tmp_path):
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    inner = GatedStore(base)
    inner.gate.clear()  # offline for the whole first mount
    wb = WriteBackStore(inner, str(tmp_path / "cache"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    _populate(fs)
    fs.close()
    wb.leave_queued()
    wb.close(wait=True)  # returns at once: unmount --no-wait
    assert not [k for k in base.objects if k.startswith(("data/", "journal/"))]
    assert files_in(tmp_path / "cache" / "pending")

    # The next mount reads its own queued state even before anything is uploaded ...
    wb = WriteBackStore(inner, str(tmp_path / "cache"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    _compare(fs)
    fs.close()
    inner.gate.set()
    wb.close(wait=True)  # ... and uploads it
    fs = FileSystem(vault.open_vault(base, passphrase=PW))
    try:
        _compare(fs)
    finally:
        fs.close()


def test_cache_folder_holds_no_plaintext(tmp_path):
    """The leak test over the cache folder: a drained cache (clean objects) and an undrained one (pending)."""
    for name, drained in (("drained", True), ("queued", False)):
        base = MemoryStore()
        vault.create(base, PW, with_recovery=False)
        inner = GatedStore(base)
        if not drained:
            inner.gate.clear()
        cache = tmp_path / name
        wb = WriteBackStore(inner, str(cache))
        fs = FileSystem(vault.open_vault(wb, passphrase=PW))
        populate(fs)
        fs.sync()
        fs.close()
        if not drained:
            wb.leave_queued()
        wb.close(wait=True)
        where = "clean" if drained else "pending"
        assert len(files_in(cache / where)) >= 3, where  # small files are packed: few objects
        assert scan(str(cache), {"marker": MARKER}) == []
        assert scan(str(cache), {"passphrase": PW.encode()}) == []


# ------------------------------------------------------------------ kill -9 at random points of a workload

WORKLOAD = textwrap.dedent("""
    import hashlib, os, random, sys, time
    os.environ.setdefault("ENCFS_PHOTO_FAST_KDF", "1")
    from encfs_photo.fs import FileSystem
    from encfs_photo.store import LocalStore
    from encfs_photo.store.writeback import WriteBackStore
    from encfs_photo.vault import open_vault

    bucket, cache, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)

    class Laggy(LocalStore):  # a slow link to the bucket: uploads lag behind the writes
        def put(self, key, data, **kw):
            time.sleep(rng.uniform(0, 0.03))
            super().put(key, data, **kw)

    wb = WriteBackStore(Laggy(bucket), cache, 48 << 20, retry_initial=0.05)
    fs = FileSystem(open_vault(wb, passphrase="pw"), commit_interval=0.05)
    fs.start()  # the periodic committer too: kills land inside it
    n = 0
    while True:
        n += 1
        name = f"s{seed}-{n}".encode()
        data = rng.randbytes(rng.choice([0, 1, 4095, 65537, 300_000, 4 * 1024 * 1024 + 3, 6_000_000]))
        ino, fh = fs.create(1, b"tmp-" + name, 0o644, os.O_WRONLY, 0, 0)
        for pos in range(0, len(data), 1 << 20):
            fs.write(fh, pos, data[pos:pos + (1 << 20)])
        fs.fsync(fh) if rng.random() < 0.5 else fs.flush(fh)
        fs.release(fh)
        fs.rename(1, b"tmp-" + name, 1, name)  # the editor pattern
        if n > 2 and rng.random() < 0.3:
            fs.unlink(1, f"s{seed}-{n - 2}".encode())  # garbage: deleted after the batch that drops it
            print("deleted", f"s{seed}-{n - 2}", flush=True)
        fs.sync()
        print("synced", name.decode(), hashlib.sha256(data).hexdigest(), flush=True)
""")
KILLS = 20


def _digest_of(fs: FileSystem, name: str) -> str:
    import hashlib

    ino = fs.resolve(b"/" + name.encode())
    fh = fs.open(ino, os.O_RDONLY)
    try:
        size = fs.getattr(ino)["st_size"]
        return hashlib.sha256(fs.read(fh, 0, size) if size else b"").hexdigest()
    finally:
        fs.release(fh)


@pytest.mark.slow
def test_kill_9_at_random_points_bucket_always_consistent_nothing_synced_lost(tmp_path):
    """Invariants 4 and 5 through the cache: after each kill the bucket alone is a consistent vault,
    and the cache (resumed by the next round) still has every file whose fsync/close returned."""
    import random

    from encfs_photo.check import check
    from encfs_photo.store import LocalStore

    bucket, cache = str(tmp_path / "bucket"), str(tmp_path / "cache")
    os.makedirs(bucket)
    vault.create(LocalStore(bucket), "pw", with_recovery=False)
    rng = random.Random(4321)
    synced: dict[str, str] = {}
    for round_ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, bucket, cache, str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
            assert first.startswith(("synced", "deleted")), proc.stderr.read()
            lines = [first]
            time.sleep(rng.uniform(0.0, 0.8))  # where the kill lands
        finally:
            proc.kill()
            out, _ = proc.communicate()
        for line in lines + out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "synced":
                synced[parts[1]] = parts[2]
            elif len(parts) == 2 and parts[0] == "deleted":
                synced.pop(parts[1], None)
        # The bucket as the kill left it (uploads half done) is a consistent vault.
        report = check(vault.open_vault(LocalStore(bucket), passphrase="pw"), read_data=True)
        assert report.problems == [], (round_, report.problems)
        # Through the cache, nothing acknowledged is lost (uploads not resumed here: the next round does).
        wb = WriteBackStore(LocalStore(bucket), cache, start=False)
        fs = FileSystem(vault.open_vault(wb, passphrase="pw"), read_only=True)
        try:
            for name, digest in synced.items():
                assert _digest_of(fs, name) == digest, (round_, name)
        finally:
            fs.close()
            wb.close(wait=False)
    assert len(synced) >= KILLS // 2
    wb = WriteBackStore(LocalStore(bucket), cache)
    wb.close(wait=True)  # drain what the last kill left queued
    assert files_in(tmp_path / "cache" / "pending") == []
    fs = FileSystem(vault.open_vault(LocalStore(bucket), passphrase="pw"), read_only=True)
    try:
        for name, digest in synced.items():
            assert _digest_of(fs, name) == digest, name
    finally:
        fs.close()
    assert check(vault.open_vault(LocalStore(bucket), passphrase="pw"), read_data=True).problems == []


# ------------------------------------------------------------------ read-ahead


class CountingStore(GatedStore):
    """A GatedStore that records every get, and whose whole-object gets of data keys wait for ``get_gate``."""

    def __init__(self, inner: MemoryStore | None = None) -> None:
        super().__init__(inner)
        self.gets: list[tuple[str, int, int | None]] = []
        self.get_gate = threading.Event()
        self.get_gate.set()

    def get(self, key, offset=0, length=None):
        with self._lock:
            self.gets.append((key, offset, length))
        if key.startswith("data/") and length is None:
            self.get_gate.wait(timeout=30)
        return self.inner.get(key, offset, length)


def test_prefetch_fills_the_clean_cache_off_the_caller_and_a_reader_waits_for_it(wbs):
    inner = CountingStore()
    objs = {dkey(i): os.urandom(MiB + i) for i in range(3)}
    for k, v in objs.items():
        inner.inner.put(k, v)
    wb = wbs(inner)
    inner.get_gate.clear()  # the read-ahead threads block inside their GETs
    wb.prefetch(list(objs))
    wb.prefetch(list(objs))  # asked twice: fetched once
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(wb.get(dkey(1), 10, 100)))
    reader.start()
    time.sleep(0.2)
    assert reader.is_alive()  # waits for the GET in flight instead of a second one
    inner.get_gate.set()
    reader.join(timeout=30)
    assert got == [objs[dkey(1)][10:110]]
    deadline = time.monotonic() + 30
    while wb.status()["prefetched_objects"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert wb.status()["prefetched_objects"] == 3
    assert sorted(g for g in inner.gets if g[0].startswith("data/")) == sorted((k, 0, None) for k in objs)
    for k, v in objs.items():  # all in clean now: no more GETs
        assert wb.get(k, 5, 7) == v[5:12]
    assert len(inner.gets) == 3
    st = wb.status()
    assert st["clean_objects"] == 3 and st["cache_hits"] >= 3


def test_prefetch_is_only_a_hint(wbs):
    inner = CountingStore()
    inner.inner.put(dkey(1), b"x" * 1000)
    wb = wbs(inner, cache_size=64 * MiB)  # no room to spare: nothing read ahead
    wb.prefetch([dkey(1)])
    time.sleep(0.1)
    assert inner.gets == []
    wb2 = wbs(inner, name="cache2")
    wb2.put(dkey(2), b"local")
    wb2.prefetch([dkey(2), dkey(3)])  # one local already, one missing from the store
    deadline = time.monotonic() + 10
    while wb2._prefetching and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [g[0] for g in inner.gets] == [dkey(3)]
    assert wb2.status()["prefetched_objects"] == 0
    with pytest.raises(StoreNotFoundError):
        wb2.get(dkey(3))  # the reader sees the error itself
    assert wb2.get(dkey(2)) == b"local"


def test_sequential_read_from_an_empty_cache_reads_ahead_each_chunk_once(tmp_path):
    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    wb = WriteBackStore(GatedStore(base), str(tmp_path / "cache1"))
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    video = os.urandom(6 * 4 * MiB + 999)  # seven chunks
    _write(fs, ROOT_INO, b"clip.mp4", video)
    _write(fs, ROOT_INO, b"other.mp4", os.urandom(3 * 4 * MiB))
    fs.close()
    wb.close(wait=True)

    inner = CountingStore(base)
    wb = WriteBackStore(inner, str(tmp_path / "cache2"))  # another machine: nothing cached
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    try:
        ino = fs.resolve(b"/other.mp4")  # a header read: no read-ahead
        fh = fs.open(ino, os.O_RDONLY)
        assert len(fs.read(fh, 0, 4096)) == 4096
        fs.release(fh)
        time.sleep(0.2)
        assert wb.status()["prefetched_objects"] == 0

        fh = fs.open(fs.resolve(b"/clip.mp4"), os.O_RDONLY)
        out = bytearray()
        while True:
            piece = fs.read(fh, len(out), 128 * KiB)
            if not piece:
                break
            out += piece
        fs.release(fh)
        assert bytes(out) == video
        whole = [g[0] for g in inner.gets if g[0].startswith("data/") and g[2] is None]
        assert len(whole) == len(set(whole)) == 7  # every chunk fetched whole exactly once
        assert wb.status()["prefetched_objects"] >= 5  # all but the first one or two were read ahead
    finally:
        fs.close()
        wb.close()


def test_a_flaky_network_loses_nothing_and_never_conflicts_with_itself(tmp_path):
    """Latency, timeouts, uploads dropped mid-body and answers lost after the object landed, on the first
    attempts of every object: the uploads retry until the bucket holds everything, a conditional journal
    put whose answer was lost is not taken for another device's, and an empty cache reads it all back."""
    import random

    base = MemoryStore()
    vault.create(base, PW, with_recovery=False)
    net = FaultyStore(base)
    net.latency = 0.002
    net.timeout = 0.05
    rnd = random.Random(7)
    tries: dict[str, int] = {}
    fate: dict[str, str] = {}
    lock = threading.Lock()

    def decide(key: str) -> bool:  # called first on every put attempt: this attempt's fault, if any
        with lock:
            n = tries[key] = tries.get(key, 0) + 1
            # the first attempt of every object meets a fault, the second maybe, later ones none
            # (a journal batch's first answer is always lost: the retry then meets its own object)
            # (data objects' first attempts take the three faults in turn, so each kind occurs)
            if n == 1 and key.startswith("journal/"):
                fate[key] = "lost"
            elif n == 1:
                fate[key] = FAULTS[len(firsts) % 3]
                firsts.append(key)
            else:
                fate[key] = rnd.choice([*FAULTS, "ok"]) if n == 2 else "ok"
            seen.append(fate[key])
            return fate[key] == "drop"

    seen: list[str] = []
    firsts: list[str] = []
    FAULTS = ("drop", "lost", "timeout")
    net.drop_puts = decide
    net.timeout_puts = lambda key: fate[key] == "timeout"
    net.lose_replies = lambda key: fate[key] == "lost"
    wb = WriteBackStore(net, str(tmp_path / "cache1"), retry_initial=0.01, retry_max=0.05)
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    _populate(fs)
    for i in range(30):  # small files, packs and journal batches
        _write(fs, ROOT_INO, b"side_%04d.xmp" % i, b"<rating %d/>" % i)
        if i % 10 == 9:
            fs.sync()
    fs.close()
    assert wb.wait_uploaded(timeout=120)
    st = wb.status()
    assert st["conflict"] is None and st["pending_objects"] == 0, st
    wb.close()
    assert {"drop", "lost", "timeout"} <= set(seen) and net.injected >= 10
    assert any(k.startswith("journal/") for k in tries)  # conditional puts went through the faults too

    wb = WriteBackStore(base, str(tmp_path / "cache2"))  # another machine, a healthy network
    fs = FileSystem(vault.open_vault(wb, passphrase=PW))
    try:
        _compare(fs)
        for i in range(30):
            assert _read(fs, b"/side_%04d.xmp" % i) == b"<rating %d/>" % i
    finally:
        fs.close()
        wb.close()
