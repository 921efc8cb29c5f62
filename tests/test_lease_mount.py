"""Two devices on one vault, through real mounts: the lease (lease.py) on moto's server and on a folder store,
and an offline mount from the cache folder's copies.

"Another device" is a second foreground mount daemon with its own cache folder and mount point. The lease's
TTL is shortened to 4 s (renewed every second) through ENCFS_PHOTO_LEASE_TTL.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import MOUNT_TIMEOUT, VaultMount, wait_until
from test_mount_s3 import S3Vault, moto_server, s3env, write  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.mount

TTL = 4.0
CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens there


@pytest.fixture
def devices(cli, tmp_path, moto_server, s3env):  # noqa: F811
    """Two devices (mount points and cache folders) on one s3:// vault."""
    cli.env["ENCFS_PHOTO_LEASE_TTL"] = str(TTL)
    cli.env["ENCFS_PHOTO_FOLLOW_INTERVAL"] = "0.5"
    a = S3Vault(cli, tmp_path, moto_server, s3env).init()
    b = twin(a, tmp_path / "b")
    try:
        yield a, b
    finally:
        b.cleanup()
        a.cleanup()


class Device(S3Vault):
    """Another device on the same bucket: its own mount point, logs, state folder and (by the caller) cache."""

    def mount(self, cache_dir: Path, *extra: str) -> S3Vault:
        return super().mount(cache_dir, "--state-dir", str(self.base / "state"), *extra)


def twin(v: S3Vault, base: Path) -> Device:
    base.mkdir()
    t = Device.__new__(Device)
    t.__dict__.update(v.__dict__)
    t.base, t.mnt, t.proc, t.logs = base, base / "mnt", None, []
    t.mnt.mkdir()
    return t


def erofs(path: Path) -> bool:
    try:
        write(path, b"x")
    except OSError as exc:
        return exc.errno == errno.EROFS
    return False


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_second_device_mounts_read_only_until_the_first_unmounts(devices):
    a, b = devices
    a.mount(a.base / "cache-a")
    write(a.mnt / "shoot" / "IMG_0001.CR3", os.urandom(300_000))
    a.sync()
    assert a.status()["lease"]["held"]

    b.mount(b.base / "cache-b")
    try:
        line = [ln for ln in b.log.splitlines() if "another device" in ln]
        assert len(line) == 1 and socket.gethostname() in line[0] and "read-only" in line[0], b.log
        st = b.status()
        assert st["read_only"] and not st["lease"]["held"] and "another device" in st["lease"]["message"]
        r = b.run("status", b.mnt)
        assert "lease: another device" in r.stdout, r.stdout
        assert erofs(b.mnt / "clobber.txt")
        assert listing(b.mnt) == listing(a.mnt)  # what the writer stored before
        write(a.mnt / "shoot" / "IMG_0002.CR3", b"later")  # the writer goes on meanwhile ...
        a.sync()
        assert a.status()["lease"]["held"] and not a.status()["read_only"]
        follow = b.mnt / "shoot" / "IMG_0002.CR3"
        assert wait_until(follow.exists, timeout=MOUNT_TIMEOUT), b.log  # ... and the reader follows
        assert follow.read_bytes() == b"later"
        os.unlink(a.mnt / "shoot" / "IMG_0001.CR3")
        a.sync()
        assert wait_until(lambda: not (b.mnt / "shoot" / "IMG_0001.CR3").exists(), timeout=MOUNT_TIMEOUT)
    finally:
        b.unmount()
    a.unmount()  # releases the lease

    b.mount(b.base / "cache-b")
    try:
        st = b.status()
        assert not st["read_only"] and st["lease"]["held"], st
        assert (b.mnt / "shoot" / "IMG_0002.CR3").read_bytes() == b"later"
        write(b.mnt / "shoot" / "from-b.txt", b"b writes now")
        b.sync()
    finally:
        b.unmount()
    a.mount(a.base / "cache-a")
    try:
        assert (a.mnt / "shoot" / "from-b.txt").read_bytes() == b"b writes now"
    finally:
        a.unmount()


def test_a_killed_holder_is_taken_back_by_its_own_cache_or_over_by_another_after_expiry(devices):
    a, b = devices
    a.mount(a.base / "cache-a")
    write(a.mnt / "one.bin", b"1" * 1000)
    a.sync()
    a.kill9()  # the lease stays, unexpired, in the bucket

    b.mount(b.base / "cache-b")
    try:
        assert b.status()["read_only"]
    finally:
        b.unmount()

    a.mount(a.base / "cache-a")  # the same device (its cache folder remembers the lease): at once
    assert not a.status()["read_only"]
    write(a.mnt / "two.bin", b"2" * 1000)
    a.sync()
    a.kill9()

    time.sleep(TTL + 1)  # the dead holder renews nothing: the lease expires
    b.mount(b.base / "cache-b")
    try:
        st = b.status()
        assert not st["read_only"] and st["lease"]["held"], st
        assert (b.mnt / "two.bin").read_bytes() == b"2" * 1000
        write(b.mnt / "three.bin", b"3")
        b.sync()
    finally:
        b.unmount()


def test_a_holder_whose_lease_was_taken_turns_read_only_and_keeps_what_it_wrote(devices):
    a, _ = devices
    a.mount(a.base / "cache-a")
    try:
        write(a.mnt / "kept.bin", b"k" * 5000)
        a.sync()
        # Another device took the lease (it expired while this one was offline, say).
        a.client.put_object(Bucket=a.bucket, Key="vault/lease", Body=b"someone else")
        assert wait_until(lambda: a.status()["lease"]["lost"], timeout=MOUNT_TIMEOUT)
        st = a.status()
        assert st["read_only"] and "took this vault's lease" in st["lease"]["message"]
        assert st["cache"]["conflict"]
        assert erofs(a.mnt / "new.bin")
        assert (a.mnt / "kept.bin").read_bytes() == b"k" * 5000
    finally:
        a.unmount("--no-wait")
    assert "took this vault's lease" in a.log


def test_offline_mount_from_the_cache_then_uploads_when_the_bucket_is_back(devices, tmp_path):
    a, b = devices
    cache = a.base / "cache-a"
    a.mount(cache)
    write(a.mnt / "cached.bin", b"c" * 70_000)
    a.sync()
    a.unmount()
    before = a.keys()

    real = a.server.endpoint
    a.server.endpoint = CLOSED_PORT  # the plane: nothing answers
    try:
        a.mount(cache)
        assert "mounting offline" in a.log and "cannot reach the S3 endpoint" in a.log
        assert (a.mnt / "cached.bin").read_bytes() == b"c" * 70_000
        st = a.status()
        assert not st["read_only"] and st["lease"]["offline_reclaim"], st  # this device held it last
        write(a.mnt / "imported-on-the-plane.bin", b"p" * 9000)
        a.unmount("--no-wait")
    finally:
        a.server.endpoint = real
    assert a.keys() == before  # nothing reached the bucket while offline

    a.mount(cache)  # online again: the lease is taken back (nobody wrote it since), the queue drains
    try:
        a.sync()
        assert a.status()["lease"]["held"]
    finally:
        a.unmount()
    b.mount(b.base / "cache-b")  # another device, from the bucket alone
    try:
        assert (b.mnt / "imported-on-the-plane.bin").read_bytes() == b"p" * 9000
    finally:
        b.unmount()


def test_offline_mount_without_a_cached_copy_is_one_clear_line(devices):
    a, _ = devices
    r = a.run("mount", a.url, a.mnt, "--foreground", "--endpoint-url", CLOSED_PORT, "--password-file", a.pwfile,
              "--cache-dir", a.base / "never-used")
    err = [ln for ln in r.stderr.strip().splitlines() if " INFO " not in ln]  # a foreground mount logs INFO
    assert r.returncode == 1 and len(err) == 1, r.stderr
    assert "cannot reach the S3 endpoint" in err[0] and "no copy of the vault" in err[0]


def test_offline_mount_is_read_only_when_another_device_held_the_lease_last(devices):
    a, b = devices
    a.mount(a.base / "cache-a")
    write(a.mnt / "x.bin", b"x")
    a.sync()
    b.mount(b.base / "cache-b")  # b reads while a holds the lease: its cache has the copies
    b.unmount()
    a.unmount()
    real = a.server.endpoint
    b.server.endpoint = CLOSED_PORT
    try:
        b.mount(b.base / "cache-b")
        try:
            st = b.status()
            assert st["read_only"] and "did not hold the vault's lease last" in st["lease"]["message"], st
            assert (b.mnt / "x.bin").exists() and erofs(b.mnt / "y.bin")  # the tree, from the copies
        finally:
            b.unmount("--no-wait")
    finally:
        b.server.endpoint = real


def test_a_folder_store_mounted_twice(make_vault, tmp_path, cli):
    cli.env["ENCFS_PHOTO_LEASE_TTL"] = str(TTL)
    first = make_vault("a")
    second = VaultMount(cli, tmp_path, "b")
    second.store = first.store
    first.mount()
    try:
        Path(first.path("a.txt")).write_bytes(b"from a")
        assert cli.run("sync", first.mnt).returncode == 0
        second.mount()
        try:
            assert "another device" in second.stderr
            st = json.loads(cli.run("status", second.mnt, "--json", check=True).stdout)["mounts"][0]
            assert st["read_only"] and not st["lease"]["held"]
            assert erofs(Path(second.mnt) / "b.txt")
            assert Path(second.path("a.txt")).read_bytes() == b"from a"
        finally:
            second.unmount()
    finally:
        first.unmount()
    second.mount()
    try:
        Path(second.path("b.txt")).write_bytes(b"from b")
    finally:
        second.kill9()  # its lease stays live in the folder ...
    second.mount()  # ... but this machine's state says the process that wrote it is gone: writable at once
    try:
        assert "another device" not in second.stderr_files[-1].read_text()
        Path(second.path("c.txt")).write_bytes(b"after the crash")
        assert Path(second.path("b.txt")).read_bytes() == b"from b"
    finally:
        second.unmount()


def test_status_answers_while_a_writer_waits_for_uploads(devices):
    """A full dirty cap blocks the writer inside the filesystem lock; `status` still answers."""
    import threading

    a, _ = devices
    a.mount(a.base / "cache-a", "--cache-size", "2M")
    try:
        a.server.refuse_puts.set()
        data = os.urandom(12 << 20)
        done: list[BaseException | None] = []

        def writer() -> None:
            try:
                write(a.mnt / "big.bin", data)  # close() seals three chunks: the second waits for uploads
                done.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                done.append(exc)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        assert wait_until(lambda: a.status()["cache"]["writers_waiting"] > 0, timeout=MOUNT_TIMEOUT), a.log
        st = a.status()
        assert "waiting for uploads" in st["busy"] and st["files"] is None
        assert "busy:" in a.run("status", a.mnt).stdout
        assert not done
        a.server.refuse_puts.clear()
        t.join(timeout=120)
        assert done == [None]
        assert (a.mnt / "big.bin").read_bytes() == data
        assert a.status()["files"] >= 2
    finally:
        a.server.refuse_puts.clear()
        a.unmount()


def test_offline_mount_goes_online_when_the_bucket_comes_back(devices):
    """Mounted offline (nothing listening on the endpoint's port), then a server appears there: the mount
    takes its lease back, the held journal batches upload, `sync` returns."""
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    a, b = devices
    cache = a.base / "cache-a"
    a.mount(cache)
    write(a.mnt / "before.bin", b"b" * 5000)
    a.sync()
    a.unmount()

    with socket.socket() as s:  # a port nothing listens on, yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    real = a.server.endpoint
    a.server.endpoint = f"http://127.0.0.1:{port}"
    server = None
    try:
        a.mount(cache)
        assert "mounting offline" in a.log
        write(a.mnt / "while-offline.bin", b"o" * 7000)
        assert a.status()["lease"]["offline_reclaim"]
        # moto keeps its buckets per process: a second server on that port serves the same bucket.
        server = make_server("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        assert wait_until(lambda: a.status()["lease"]["held"], timeout=MOUNT_TIMEOUT), a.log
        a.sync()
        assert not a.status()["read_only"]
        a.unmount()
    finally:
        a.server.endpoint = real
        if server is not None:
            server.shutdown()
    b.mount(b.base / "cache-b")
    try:
        assert (b.mnt / "while-offline.bin").read_bytes() == b"o" * 7000
    finally:
        b.unmount()
