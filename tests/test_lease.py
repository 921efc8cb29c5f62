"""The writer's lease (lease.py) on a MemoryStore, with a clock the tests move."""

from __future__ import annotations

import os
import socket

import pytest

from encfs_photo.errors import StoreError
from encfs_photo.lease import LEASE_KEY, Lease, lease_timing
from encfs_photo.store import LocalStore, MemoryStore
from encfs_photo.store.faulty import FaultyStore

META_KEY = b"k" * 32
VAULT_ID = b"v" * 16


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def lease(store, clock, record: str | None = None, key: bytes = META_KEY) -> Lease:
    return Lease(store, key, VAULT_ID, record_path=record, ttl=120, period=30, clock=clock)


def test_timing_from_the_environment(monkeypatch):
    monkeypatch.delenv("ENCFS_PHOTO_LEASE_TTL", raising=False)
    assert lease_timing() == (120.0, 30.0)
    monkeypatch.setenv("ENCFS_PHOTO_LEASE_TTL", "8")
    assert lease_timing() == (8.0, 2.0)


def test_one_holder_at_a_time_and_release_frees_it():
    store, clock = MemoryStore(), Clock()
    a, b = lease(store, clock), lease(store, clock)
    assert a.acquire() and a.held
    assert not b.acquire() and not b.held
    assert socket.gethostname() in b.message and "read-only" in b.message
    assert b.status()["holder_host"] == socket.gethostname()
    clock.t += 100
    a.renew()  # pushes the expiry 120 s past now
    clock.t += 100
    assert not b.acquire()
    a.release()
    assert not a.held
    assert b.acquire() and b.held


def test_an_expired_lease_is_taken_over_and_the_old_holder_turns_read_only():
    store, clock = MemoryStore(), Clock()
    a, b = lease(store, clock), lease(store, clock)
    lost: list[str] = []
    a.on_lost = lost.append
    assert a.acquire()
    clock.t += 121  # a was killed (or offline) and renewed nothing
    assert b.acquire()
    a.renew()
    assert lost and "took this vault's lease" in lost[0]
    assert not a.held and a.lost and a.status()["lost"]
    b.renew()
    assert b.held


def test_renewal_while_the_store_is_down_keeps_the_lease_if_nobody_took_it():
    inner, clock = MemoryStore(), Clock()
    store = FaultyStore(inner)
    a = lease(store, clock)
    assert a.acquire()
    store.fail_puts = lambda key: True
    clock.t += 200  # expired while unreachable
    a.renew()
    assert a.held and "renewal failed" in a.last_error and "expired" in a.message
    store.fail_puts = lambda key: False
    a.renew()  # If-Match on its own last ETag still holds: nobody wrote the lease since
    assert a.held and a.last_error is None
    assert not lease(inner, clock).acquire()


def test_the_lease_is_sealed_and_a_forged_one_is_not_trusted():
    store, clock = MemoryStore(), Clock()
    a = lease(store, clock)
    a.acquire()
    raw = store.objects[LEASE_KEY]
    assert socket.gethostname().encode() not in raw and b"expires" not in raw
    assert not lease(store, clock, key=b"x" * 32).acquire()  # another vault's key: does not verify
    store.objects[LEASE_KEY] = raw[:-1] + bytes([raw[-1] ^ 1])
    b = lease(store, clock)
    assert not b.acquire() and "does not verify" in b.message


def test_this_device_takes_back_its_own_lease_after_a_crash(tmp_path):
    store, clock = MemoryStore(), Clock()
    record = str(tmp_path / "lease")
    a = lease(store, clock, record)
    assert a.acquire()  # then kill -9: no release
    assert not lease(store, clock).acquire()  # another device (no record) must wait
    again = lease(store, clock, record)  # the same cache folder: its mount is gone (the folder lock)
    assert again.acquire()


def test_a_live_mount_on_this_machine_keeps_its_lease(tmp_path):
    """A folder store has no cache folder lock: the record's pid tells a crashed mount from a running one."""
    store, clock = MemoryStore(), Clock()
    record = tmp_path / "lease"
    a = lease(store, clock, str(record))
    assert a.acquire()
    etag = record.read_text().split()[0]
    record.write_text(f"{etag} {os.getppid()}\n")  # written by another process, still running
    assert not lease(store, clock, str(record)).acquire()
    record.write_text(f"{etag} 999999999\n")  # ... by a process that is gone
    assert lease(store, clock, str(record)).acquire()


def test_offline_mount_writes_only_if_it_held_the_lease_last_and_reclaims_it(tmp_path):
    store, clock = MemoryStore(), Clock()
    record = str(tmp_path / "lease")
    a = lease(store, clock, record)
    assert a.acquire()
    a.release()
    assert not lease(store, clock).offline()  # no record: read-only
    b = lease(store, clock, record)
    assert b.offline() and b.reclaim and not b.held
    back: list[bool] = []
    b.on_held = lambda: back.append(True)
    b.renew()  # the store answers: nobody wrote the lease since this device released it
    assert b.held and back == [True]


def test_offline_writer_whose_lease_was_taken_meanwhile_loses(tmp_path):
    store, clock = MemoryStore(), Clock()
    record = str(tmp_path / "lease")
    a = lease(store, clock, record)
    a.acquire()
    a.release()
    b = lease(store, clock, record)
    assert b.offline()
    other = lease(store, clock)
    assert other.acquire()  # another device took the vault while b was on a plane
    lost: list[str] = []
    b.on_lost = lost.append
    b.renew()
    assert lost and not b.held and not os.path.exists(record)


def test_a_lease_write_that_fails_is_a_store_error():
    store = FaultyStore(MemoryStore())
    store.fail_gets = lambda key: True
    with pytest.raises(StoreError):
        lease(store, Clock()).acquire()


def test_folder_store_two_processes_share_the_lease(tmp_path):
    clock = Clock()
    a = lease(LocalStore(str(tmp_path / "s")), clock)
    b = lease(LocalStore(str(tmp_path / "s")), clock)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
