"""Garbage collection (gc.py) and journal pruning (meta.Journal.prune, the floor hint)."""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from test_store_s3 import aws_env  # noqa: F401 - autouse: the fast KDF, fake AWS credentials only

from encfs_photo import gc, meta, vault
from encfs_photo.errors import IntegrityError, ReadOnlyError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import FLOOR_KEY, JOURNAL_PREFIX, ROOT_INO, Journal
from encfs_photo.state import RollbackError, RollbackGuard
from encfs_photo.store import LocalStore, MemoryStore

PW = "gc test passphrase"
BS, CS = 4096, 16384  # small chunks: a few KiB of data make several chunk objects
T0 = 1_700_000_000.0  # in the past: objects stamped with it are old to the real clock




@pytest.fixture
def few_deltas(monkeypatch):
    """A snapshot every 3 deltas, so a short test makes many snapshots (and prunable batches)."""
    monkeypatch.setattr(meta, "SNAPSHOT_EVERY", 3)


class Env:
    """A vault over one store, with a FileSystem on it and helpers that work by file name."""

    def __init__(self, store, state_dir: str | None = None) -> None:
        self.store = store
        self.state_dir = state_dir
        vault.create(store, PW, block_size=BS, chunk_size=CS, with_recovery=False)
        self.fs = self.open()

    def open(self, **kw) -> FileSystem:
        return FileSystem(vault.open_vault(self.store, passphrase=PW), state_dir=self.state_dir, **kw)

    def reopen(self) -> FileSystem:
        self.fs.close()
        self.fs = self.open()
        return self.fs

    def write(self, name: str, data: bytes, offset: int = 0, commit: bool = True) -> None:
        fs = self.fs
        try:
            ino = fs.lookup(ROOT_INO, name.encode())
            fh = fs.open(ino, os.O_RDWR)
        except Exception:  # noqa: BLE001 - not there yet
            ino, fh = fs.create(ROOT_INO, name.encode(), 0o100644, os.O_RDWR, os.getuid(), os.getgid())
        fs.write(fh, offset, data)
        if commit:
            close(fs, fh)

    def journal(self, guard: RollbackGuard | None = None) -> Journal:
        v = vault.open_vault(self.store, passphrase=PW)
        j = Journal(self.store, v.vault_id, v.meta_key, v.names_key, guard)
        j.load()
        return j

    def gc(self, **kw) -> gc.GcReport:
        kw.setdefault("grace", 0)
        return gc.collect(self.store, self.journal(), **kw)


def close(fs: FileSystem, fh: int) -> None:
    """What close(2) does through FUSE: flush (which commits), then release."""
    fs.flush(fh)
    fs.release(fh)


def tree(fs: FileSystem) -> dict[str, bytes]:
    out = {}
    for name, ino in fs.readdir(ROOT_INO):
        if name in (b".", b".."):
            continue
        size = fs.getattr(ino)["st_size"]
        fh = fs.open(ino, os.O_RDONLY)
        out[name.decode()] = fs.read(fh, 0, size)
        fs.release(fh)
    return out


def data_keys(store) -> set[str]:
    return {k for k in store.list("data/")}


def batch_count(store) -> int:
    return sum(1 for _ in store.list(JOURNAL_PREFIX))


# ------------------------------------------------------------------ orphans and the grace period


def test_orphans_of_a_crash_are_deleted_after_the_grace_and_not_before():
    store = MemoryStore()
    store.clock = lambda: T0
    env = Env(store)
    env.write("keep.jpg", b"k" * 40_000)
    kept = data_keys(store)
    # A crash: two full chunks are sealed and stored, and the batch naming them never is.
    env.write("lost.raw", os.urandom(2 * CS), commit=False)
    env.fs._io.wait_puts()  # the chunk puts land, as they would before a kill -9
    orphans = data_keys(store) - kept
    assert len(orphans) == 2
    env.fs = env.open()  # "remount" without closing the crashed one
    assert "lost.raw" not in tree(env.fs)

    r = gc.collect(store, env.journal(), grace=3600, now=lambda: T0 + 3599)
    assert (r.orphans_deleted, r.orphans_young) == (0, 2)
    assert data_keys(store) == kept | orphans
    r = gc.collect(store, env.journal(), grace=3600, now=lambda: T0 + 3601)
    assert (r.orphans_deleted, r.orphans_young, r.referenced) == (2, 0, len(kept))
    assert data_keys(store) == kept
    assert r.objects_after == r.objects_before - 2
    assert tree(env.open()) == {"keep.jpg": b"k" * 40_000}


def test_dry_run_deletes_nothing(few_deltas):
    store = MemoryStore()
    env = Env(store)
    for i in range(12):
        env.write(f"f{i % 3}", bytes([i]) * 20_000)
    orphan = "data/" + "ab" * 16  # as a failed delete leaves one
    store.put(orphan, b"x" * 100)
    before = dict(store.objects)
    r = env.gc(dry_run=True)
    assert r.dry_run and r.orphans_deleted == 1 and r.batches_pruned > 0
    assert store.objects == before
    r = env.gc()
    assert orphan not in store.objects and r.batches_pruned > 0


def test_unrecognised_objects_are_left_alone_and_reported():
    store = MemoryStore()
    env = Env(store)
    env.write("a", b"a" * 10)
    odd = ["data/not-hex", "journal/" + "cd" * 16, "notes.txt", "data/" + "AB" * 16]
    for key in odd + ["lease"]:  # the writer's lease is known: kept, not reported
        store.put(key, b"?")
    r = env.gc()
    assert sorted(r.unknown) == sorted(odd)
    assert all(k in store.objects for k in odd + ["lease"])


def test_a_read_only_mount_refuses_to_collect():
    env = Env(MemoryStore())
    env.write("a", b"a")
    env.fs.close()
    ro = env.open(read_only=True)
    with pytest.raises(ReadOnlyError):
        gc.collect_mounted(ro, grace=0)


# ------------------------------------------------------------------ nothing referenced is deleted

_names = hst.sampled_from(["a", "b", "c", "d"])
_ops = hst.one_of(
    hst.tuples(hst.just("write"), _names, hst.integers(0, 3 * CS), hst.integers(1, 2 * CS), hst.integers(0, 255)),
    hst.tuples(hst.just("truncate"), _names, hst.integers(0, 3 * CS)),
    hst.tuples(hst.just("unlink"), _names),
    hst.tuples(hst.just("rename"), _names, _names),
    hst.tuples(hst.just("gc_mounted")),
    hst.tuples(hst.just("gc_store")),
    hst.tuples(hst.just("remount")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=hst.lists(_ops, max_size=25))
def test_random_operations_with_gc_at_random_points_read_back_identical(ops, monkeypatch):
    monkeypatch.setattr(meta, "SNAPSHOT_EVERY", 2)
    env = Env(MemoryStore())
    model: dict[str, bytearray] = {}
    fs = env.fs
    open_fh: dict[str, int] = {}  # some files stay open (uncommitted) across a gc

    def ino(name: str) -> int:
        return fs.lookup(ROOT_INO, name.encode())

    for op in ops:
        kind = op[0]
        if kind == "write":
            _, name, off, n, seed = op
            data = random.Random(seed).randbytes(n)
            if name not in open_fh:
                if name not in model:
                    _, fh = fs.create(ROOT_INO, name.encode(), 0o100644, os.O_RDWR, 0, 0)
                    model[name] = bytearray()
                else:
                    fh = fs.open(ino(name), os.O_RDWR)
                open_fh[name] = fh
            fs.write(open_fh[name], off, data)
            buf = model[name]
            if len(buf) < off:
                buf.extend(bytes(off - len(buf)))
            buf[off:off + n] = data
            if seed % 2:  # close half of the time: some writes stay dirty in memory
                close(fs, open_fh.pop(name))
        elif kind == "truncate" and op[1] in model:
            fs.truncate(ino(op[1]), op[2])
            buf = model[op[1]]
            del buf[op[2]:]
            buf.extend(bytes(op[2] - len(buf)))
        elif kind == "unlink" and op[1] in model and op[1] not in open_fh:
            fs.unlink(ROOT_INO, op[1].encode())
            del model[op[1]]
        elif kind == "rename" and op[1] in model and op[1] != op[2] and not ({op[1], op[2]} & set(open_fh)):
            fs.rename(ROOT_INO, op[1].encode(), ROOT_INO, op[2].encode())
            model[op[2]] = model.pop(op[1])
        elif kind == "gc_mounted":
            gc.collect_mounted(fs, grace=0)
        elif kind == "gc_store":
            fs.sync()  # the CLI's gc sees the store: what the mount holds must be committed
            gc.collect(env.store, env.journal(), grace=0)
        elif kind == "remount":
            for fh in open_fh.values():
                close(fs, fh)
            open_fh.clear()
            fs = env.reopen()
    for fh in open_fh.values():
        close(fs, fh)
    fs.close()
    fresh = env.open()
    assert tree(fresh) == {k: bytes(v) for k, v in model.items()}
    fresh.close()


# ------------------------------------------------------------------ journal pruning


def make_history(env: Env, rounds: int = 10) -> dict[str, bytes]:
    for i in range(rounds):
        env.write(f"img{i % 4}.cr3", bytes([i]) * (5000 + i))
        if i % 3 == 2:
            env.reopen()  # an unmount snapshot too
    return tree(env.fs)


def test_pruning_keeps_two_snapshots_and_the_vault_mounts_with_the_same_tree(tmp_path, few_deltas):
    store = LocalStore(str(tmp_path / "store"))
    env = Env(store)
    want = make_history(env, 20)
    env.fs.close()
    before = batch_count(store)
    r = env.gc()
    assert r.batches_pruned > 0 and r.floor > 0
    assert batch_count(store) == before - r.batches_pruned == r.batches_kept
    j = env.journal()
    assert j.seqs[0] == r.floor == j.floor
    snapshots = [s for s in j.seqs if j.read_batch(s)["kind"] == "snapshot"]
    assert len(snapshots) == 2 and snapshots[0] == r.floor
    # A second machine: no cache, no device state.
    assert tree(env.open()) == want
    assert env.gc().batches_pruned == 0  # nothing left to prune until the next snapshot


def test_pruning_past_the_old_scan_limit_still_finds_the_head(few_deltas, monkeypatch):
    store = MemoryStore()
    env = Env(store)
    want = make_history(env, 12)
    env.fs.close()
    env.gc()
    monkeypatch.setattr(meta, "MISS_LIMIT", 2)  # stands for 100 000 pruned batches: only the floor finds them
    assert tree(env.open()) == want
    del store.objects[FLOOR_KEY]
    with pytest.raises(IntegrityError, match="no journal batch"):  # without the hint: denial of service only
        env.open()


def test_a_prune_cut_short_leaves_a_vault_that_mounts_and_the_next_gc_finishes_it(few_deltas):
    store = MemoryStore()
    env = Env(store)
    want = make_history(env, 15)
    env.fs.close()
    j = env.journal()
    keep_from, _ = gc.kept_range(j)
    doomed = [s for s in j.seqs if s < keep_from]
    real_delete = store.delete
    calls = []

    def crash_after_two(key):
        if key.startswith(JOURNAL_PREFIX) and len(calls) == 2:
            raise KeyboardInterrupt("kill -9")
        calls.append(key)
        real_delete(key)

    store.delete = crash_after_two
    with pytest.raises(KeyboardInterrupt):
        j.prune(keep_from)
    store.delete = real_delete
    assert batch_count(store) == len(j.seqs) - 2
    assert tree(env.open()) == want  # leftovers below the floor are found and ignored
    r = env.gc()
    assert r.batches_pruned == len(doomed) - 2 and not r.unknown
    assert tree(env.open()) == want


def test_a_pruned_journal_with_a_dropped_batch_above_the_lowest_is_refused(few_deltas):
    store = MemoryStore()
    env = Env(store)
    make_history(env, 15)
    env.write("late1", b"1")  # deltas after the newest snapshot
    env.write("late2", b"2")
    env.gc()
    env.fs.close()
    j = env.journal()
    assert len(j.seqs) >= 4
    for victim in (j.seqs[1], j.seqs[-2]):
        saved = dict(store.objects)
        del store.objects[j._key(victim)]
        with pytest.raises(IntegrityError, match=f"batch {victim} is missing"):
            env.open()
        store.objects.clear()
        store.objects.update(saved)
    assert env.open() is not None


def test_a_tampered_floor_hint_only_denies_service(few_deltas):
    store = MemoryStore()
    env = Env(store)
    make_history(env, 8)
    env.gc()
    old_floor = store.objects[FLOOR_KEY]
    want = make_history(env, 12)
    env.fs.close()
    env.gc()
    assert store.objects[FLOOR_KEY] != old_floor
    good = store.objects[FLOOR_KEY]
    # An older, genuine hint: the scan starts lower and still finds everything.
    store.objects[FLOOR_KEY] = old_floor
    assert tree(env.open()) == want
    # A forged one (any seq, any MAC): refused, never believed.
    flipped = good[:20] + (b"1" if good[20:21] == b"0" else b"0") + good[21:]  # one hex digit of the MAC
    for forged in (good.replace(b'"seq": ', b'"seq": 1'), flipped, b"{}", b"\xff"):
        store.objects[FLOOR_KEY] = forged
        with pytest.raises(IntegrityError, match="floor hint"):
            env.open()
    store.objects[FLOOR_KEY] = good
    # The whole journal deleted, the hint left: refused rather than read as a new, empty vault.
    saved = dict(store.objects)
    for key in [k for k in store.objects if k.startswith(JOURNAL_PREFIX)]:
        del store.objects[key]
    with pytest.raises(IntegrityError, match="holds no batch"):
        env.open()
    store.objects.update(saved)
    assert tree(env.open()) == want


def test_a_bucket_rolled_back_to_before_a_prune_is_refused(tmp_path, few_deltas):
    state = str(tmp_path / "state")
    root = tmp_path / "store"
    env = Env(LocalStore(str(root)), state_dir=state)
    make_history(env, 8)
    env.fs.close()
    shutil.copytree(root, tmp_path / "before-prune")
    env.fs = env.open()
    make_history(env, 12)
    env.fs.close()
    r = env.gc()
    assert r.batches_pruned > 0
    shutil.copytree(root, tmp_path / "after-prune")
    # 1. The whole bucket restored from before the prune: this device saw a newer head.
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "before-prune", root)
    with pytest.raises(RollbackError):
        env.open()
    # 2. The old journal put back under the newer floor hint: refused by the store alone (no device state).
    shutil.copy(tmp_path / "after-prune" / FLOOR_KEY, root / FLOOR_KEY)
    env.state_dir = None
    with pytest.raises(IntegrityError, match="rolled back"):
        env.open()
    # 3. The pruned bucket with its newest batches dropped: the device state refuses it.
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "after-prune", root)
    env.state_dir = state
    j = env.journal()
    os.unlink(LocalStore(str(root))._path(j._key(j.seq)))
    with pytest.raises(RollbackError):
        env.open()
    # And gc itself refuses to work from a rolled-back journal (it would delete the newer data).
    v = vault.open_vault(env.store, passphrase=PW)
    with pytest.raises(RollbackError):
        Journal(env.store, v.vault_id, v.meta_key, v.names_key, RollbackGuard(state, v.vault_id, v.local_key)).load()


# ------------------------------------------------------------------ stores and numbers


def test_gc_on_s3_through_moto(few_deltas):
    moto = pytest.importorskip("moto")
    from encfs_photo.store.s3 import S3Store

    with moto.mock_aws():
        store = S3Store.from_url("s3://gc-bucket/vault")
        store._client().create_bucket(Bucket="gc-bucket")
        env = Env(store)
        want = make_history(env, 12)
        env.write("lost", os.urandom(CS), commit=False)
        env.fs._io.wait_puts()
        env.fs = env.open()
        orphans = data_keys(store) - {r.key for ino in env.fs.ns.inodes.values() for r in ino.chunks.values()}
        assert len(orphans) == 1
        r = env.gc(grace=3600)  # S3's LastModified: just now
        assert r.orphans_young == 1 and r.batches_pruned > 0
        r = env.gc(grace=3600, now=lambda: 4e9)
        assert r.orphans_deleted == 1 and not (data_keys(store) & orphans)
        env.fs.close()
        assert tree(env.open()) == want


def test_objects_before_and_after_for_a_workload_that_overwrites(tmp_path, few_deltas):
    """The numbers DESIGN.md 15 quotes (run with -s to see them)."""
    store = LocalStore(str(tmp_path / "store"))
    env = Env(store)
    for rnd in range(40):
        for i in range(5):
            env.write(f"photo{i}.xmp", bytes([rnd]) * (3000 + 100 * i))
        if rnd % 10 == 9:
            env.reopen()
    env.fs.close()
    before = sum(1 for _ in store.list())
    r = env.gc()
    after = sum(1 for _ in store.list())
    print(f"\noverwrite workload: {before} objects before gc, {after} after "
          f"({r.batches_pruned} batches pruned, {r.orphans_deleted} orphans)")
    assert after == r.objects_after < before
    assert r.batches_kept <= 2 * (meta.SNAPSHOT_EVERY + 1)


# ------------------------------------------------------------------ the command line and a mounted vault


def plant_orphan(root, age: float = 7200.0) -> str:
    """Copy a real chunk object under a fresh id, aged ``age`` seconds: what a failed delete leaves."""
    store = LocalStore(str(root))
    src = sorted(store.list("data/"))[0]
    key = "data/" + os.urandom(16).hex()
    store.put(key, store.get(src))
    old = __import__("time").time() - age
    os.utime(store._path(key), (old, old))
    return key


def test_cli_gc_on_a_store_dry_run_then_for_real(cli, tmp_path, few_deltas):
    from conftest import PASSPHRASE

    root = tmp_path / "store"
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    store = LocalStore(str(root))
    vault.create(store, PASSPHRASE, with_recovery=False)
    for i in range(8):
        fs = FileSystem(vault.open_vault(store, passphrase=PASSPHRASE))
        _, fh = fs.create(ROOT_INO, f"f{i}".encode(), 0o100644, os.O_RDWR, 0, 0)
        fs.write(fh, 0, bytes([i]) * 1000)
        close(fs, fh)
        fs.close()  # 8 unmount snapshots
    orphan = plant_orphan(root)
    before = sorted(store.list())
    r = cli.run("gc", root, "--password-file", pw, "--dry-run", "--grace", "1h")
    assert r.returncode == 0, r.stderr
    assert "would delete 1 unreferenced chunk objects and 6 old journal batches" in r.stdout, r.stdout
    assert sorted(store.list()) == before
    r = cli.run("check", root, "--password-file", pw)
    assert "1 unreferenced objects (garbage), 6 old journal batches" in r.stdout, r.stdout + r.stderr
    r = cli.run("gc", root, "--password-file", pw)  # the default grace, 24 h
    assert r.returncode == 0 and "deleted 0 unreferenced" in r.stdout and "1 too young" in r.stdout, r.stdout
    r = cli.run("gc", root, "--password-file", pw, "--json", "--grace", "1h")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["orphans_deleted"] == 1 and not store.exists(orphan)
    r = cli.run("check", root, "--password-file", pw)
    assert r.returncode == 0 and "garbage" not in r.stdout and "old journal" not in r.stdout, r.stdout
    fs = FileSystem(vault.open_vault(store, passphrase=PASSPHRASE))
    assert tree(fs) == {f"f{i}": bytes([i]) * 1000 for i in range(8)}
    r = cli.run("gc", root, "--password-file", pw, "--grace", "soon")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--grace" in r.stderr


@pytest.mark.mount
def test_gc_on_a_mounted_vault_through_the_control_socket(vault_mount):
    from conftest import tree_digest

    vm = vault_mount
    for rnd in range(3):
        for i in range(4):
            with open(vm.path(f"IMG_{i}.CR3"), "wb") as f:
                f.write(bytes([rnd, i]) * 30_000)
        vm.remount()  # each unmount writes a snapshot
    for i in range(4):
        with open(vm.path(f"IMG_{i}.xmp"), "wb") as f:
            f.write(b"<x:xmpmeta/>" * (i + 1))
    orphan = plant_orphan(vm.store)
    want = tree_digest(vm.mnt)
    r = vm.cli.run("gc", vm.mnt, "--dry-run", "--grace", "1h")
    assert r.returncode == 0 and "would delete 1 unreferenced" in r.stdout, r.stdout + r.stderr
    assert LocalStore(str(vm.store)).exists(orphan)
    # Given the store, the command finds the mount and asks its daemon.
    r = vm.cli.run("gc", vm.store, "--json", "--grace", "1h")
    assert r.returncode == 0, r.stderr
    assert "collecting through that mount" in r.stderr
    report = json.loads(r.stdout)
    assert report["orphans_deleted"] == 1 and report["batches_pruned"] > 0, report
    assert not LocalStore(str(vm.store)).exists(orphan)
    assert tree_digest(vm.mnt) == want
    vm.remount()
    assert tree_digest(vm.mnt) == want
    vm.unmount()
    r = vm.cli.run("check", vm.store, "--password-file", vm.pwfile, "--read-data")
    assert r.returncode == 0 and "garbage" not in r.stdout, r.stdout + r.stderr


def test_the_daemons_automatic_collector_prunes_and_sweeps(few_deltas):
    store = MemoryStore()
    store.clock = lambda: T0
    env = Env(store)
    want = make_history(env, 12)
    env.write("lost", os.urandom(CS), commit=False)
    env.fs._io.wait_puts()
    env.fs = env.open()
    auto = gc.AutoCollector(env.fs, grace=0, sweep_every=3600)
    r = auto.tick()
    assert r is not None and r.batches_pruned > 0 and r.orphans_deleted == 1
    assert auto.tick() is None  # nothing moved, no sweep due
    env.write("new", b"n")
    r = auto.tick()
    assert r is not None and r.objects_before == 0  # the journal moved: a prune, no sweep
    env.fs.close()
    assert tree(env.open()) == {**want, "new": b"n"}


def test_gc_through_a_write_back_cache_and_a_fresh_cache_afterwards(tmp_path, few_deltas):
    from encfs_photo.store.writeback import WriteBackStore

    bucket = MemoryStore()
    bucket.clock = lambda: T0
    vault.create(bucket, PW, block_size=BS, chunk_size=CS, with_recovery=False)
    cache = WriteBackStore(bucket, str(tmp_path / "cache"), retry_initial=0.01)
    env = Env.__new__(Env)
    env.store, env.state_dir = cache, None
    env.fs = env.open()
    want = make_history(env, 12)
    env.write("lost", os.urandom(CS), commit=False)
    env.fs._io.wait_puts()
    cache.wait_uploaded()
    env.fs = env.open()
    r = gc.collect_mounted(env.fs, grace=3600)
    assert r.batches_pruned > 0 and r.orphans_deleted == 1
    env.fs.close()
    cache.close(wait=True)
    assert FLOOR_KEY in bucket.objects
    # A second machine: the bucket alone, an empty cache folder.
    fresh = WriteBackStore(bucket, str(tmp_path / "cache2"))
    env.store = fresh
    assert tree(env.open()) == want
    fresh.close(wait=True)


def test_cli_gc_on_s3_refuses_while_an_earlier_mount_left_uploads_queued(tmp_path, capsys):
    moto = pytest.importorskip("moto")
    from conftest import PASSPHRASE

    from encfs_photo import cli
    from encfs_photo.store.s3 import S3Store

    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    cache = tmp_path / "cache"
    (cache / "pending").mkdir(parents=True)
    (cache / "pending" / ("0" * 16 + "-C-journal~" + "ab" * 16)).write_bytes(b"queued batch")
    with moto.mock_aws():
        store = S3Store.from_url("s3://gc-cli/v")
        store._client().create_bucket(Bucket="gc-cli")
        vault.create(store, PASSPHRASE, with_recovery=False)
        argv = ["gc", "s3://gc-cli/v", "--password-file", str(pw), "--cache-dir", str(cache),
                "--state-dir", str(tmp_path / "state")]
        assert cli.main(argv) == cli.EXIT_USER
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "still queued" in err
        shutil.rmtree(cache / "pending")
        assert cli.main(argv) == cli.EXIT_OK
        assert "deleted 0 unreferenced chunk objects" in capsys.readouterr().out
