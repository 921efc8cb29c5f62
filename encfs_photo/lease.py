"""The writer's lease: at most one device writes a vault at a time (ARCHITECTURE invariant 6).

The lease is one object, ``lease`` (docs/FORMAT.md 7.8), sealed and
authenticated with a subkey of the vault's metadata key. It names a random
holder id (new for every mount), a host hint (the hostname, inside the
ciphertext) and an expiry. A mount creates it with ``If-None-Match: *``, or
takes it over with ``If-Match`` on its ETag once it has expired (or was
released); a daemon thread renews it with ``If-Match`` every ``period``
seconds, each renewal pushing the expiry ``ttl`` seconds ahead. Whoever
loses a conditional write learns that another device holds the vault.

Clocks: the expiry is the holder's clock; a device takes over only after it
passed on its own clock, so clocks must agree within ``ttl - period`` (90 s
by default; NTP does far better).

The cache folder remembers the ETag of the last lease this device wrote
and the writing process's pid (``<cache dir>/lease``; a folder store, which
has no cache, uses ``<state dir>/<vault id>.lease``; not secret: an ETag is
a hash of ciphertext). A lease carrying that very ETag, written by a process
that is gone (kill -9, a crash, ``unmount --no-wait``), is taken back at
once, and an offline mount may write on the strength of it (DESIGN.md 17).

Callers: `cli` (mount), `daemon` (start, release, status). Imports crypto,
errors and the store contract only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import crypto
from .errors import IntegrityError, PreconditionFailedError, StoreError, StoreNotFoundError
from .store.base import ObjectStore

log = logging.getLogger(__name__)

LEASE_KEY = "lease"
_ETAG_RE = re.compile(r"[!-~]{1,200}")  # one printable token, as S3 and content_tag() make them
LABEL_LEASE = b"lease"
DEFAULT_TTL = 120.0
TTL_ENV = "ENCFS_PHOTO_LEASE_TTL"  # seconds; tests shorten it (the period is a quarter of it)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def lease_timing() -> tuple[float, float]:
    """(ttl, renewal period) in seconds: 120 s and 30 s unless ENCFS_PHOTO_LEASE_TTL says otherwise."""
    try:
        ttl = max(1.0, float(os.environ[TTL_ENV]))
    except (KeyError, ValueError):
        ttl = DEFAULT_TTL
    return ttl, ttl / 4


@dataclass(frozen=True)
class LeaseInfo:
    holder: bytes
    host: str
    expires: float  # seconds since the epoch, on the holder's clock; 0: released


class Lease:
    """One mount's claim on the vault. ``held`` tells whether this mount may write."""

    def __init__(self, store: ObjectStore, meta_key: bytes, vault_id: bytes, *, record_path: str | None = None,
                 ttl: float | None = None, period: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.vault_id = vault_id
        # Derived now: the vault drops its keys at unmount, and the release comes after.
        self._key = crypto.subkey(meta_key, vault_id, LABEL_LEASE)
        default_ttl, default_period = lease_timing()
        self.ttl = ttl or default_ttl
        self.period = period or default_period
        self.clock = clock
        self.record_path = record_path
        self.holder = os.urandom(16)
        self.host = socket.gethostname()
        self.etag: str | None = None
        self.held = False
        self.expires = 0.0
        self.reclaim: str | None = None  # offline mount: the ETag to take the lease back from once online
        self.lost = False
        self.other: LeaseInfo | None = None
        self.message: str | None = None  # why this mount does not hold the lease (status, stderr)
        self.last_error: str | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.on_held: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- the object

    def _aad(self) -> bytes:
        return b"EPL1" + self.vault_id  # FORMAT.md 6: a four-byte magic per use

    def _encode(self, expires: float) -> bytes:
        payload = json.dumps({"v": 1, "holder": self.holder.hex(), "host": self.host, "expires": expires},
                             separators=(",", ":")).encode()
        return crypto.seal_blob(self._key, self._aad(), payload)

    def _decode(self, raw: bytes) -> LeaseInfo | None:
        """The lease's content; None when it does not verify (tampered, or another vault's)."""
        try:
            d = json.loads(crypto.open_blob(self._key, self._aad(), raw, LEASE_KEY))
            return LeaseInfo(bytes.fromhex(d["holder"]), str(d["host"]), float(d["expires"]))
        except (IntegrityError, ValueError, KeyError, TypeError):
            return None

    # ---- this device's memory of its last lease (the cache folder)

    def _recorded(self, dead_only: bool = False) -> str | None:
        """The ETag this device last wrote; with ``dead_only``, only if the mount that wrote it is gone."""
        if not self.record_path:
            return None
        try:
            with open(self.record_path, errors="replace") as f:
                etag, _, pid = f.read().strip().partition(" ")
        except OSError:
            return None
        if not _ETAG_RE.fullmatch(etag):
            return None  # damaged: it goes into an If-Match header, so only a plausible ETag is used
        if dead_only and pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            return None  # another mount on this machine (a folder store has no cache folder lock)
        return etag

    def _record(self, etag: str | None) -> None:
        if not self.record_path:
            return
        try:
            os.makedirs(os.path.dirname(self.record_path), mode=0o700, exist_ok=True)
            if etag is None:
                os.unlink(self.record_path)
                return
            tmp = self.record_path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{etag} {os.getpid()}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.record_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remember the lease in %s: %s", self.record_path, exc)

    # ---- taking, renewing, releasing

    def acquire(self) -> bool:
        """Take the lease if it is free, expired, or this device's own; False if another device holds it.

        StoreError (the store unreachable) propagates: the caller decides about an offline mount."""
        try:
            raw, tag = self.store.get_versioned(LEASE_KEY)
        except StoreNotFoundError:
            raw, tag = None, None
        if raw is not None:
            info = self._decode(raw)
            ours = tag is not None and tag == self._recorded(dead_only=True)
            if not ours and (info is None or info.expires > self.clock()):
                self._refused(info)
                return False
        expires = self.clock() + self.ttl
        try:
            etag = self.store.put_versioned(LEASE_KEY, self._encode(expires), expect=tag)
        except PreconditionFailedError:  # another device took it between our read and write
            return self._after_race()
        self._took(etag, expires)
        return True

    def _after_race(self) -> bool:
        try:
            raw, _ = self.store.get_versioned(LEASE_KEY)
            self._refused(self._decode(raw))
        except StoreError:
            self._refused(None)
        return False

    def _refused(self, info: LeaseInfo | None) -> None:
        self.other = info
        self._record(None)  # another device wrote after us: our old lease is no claim any more
        if info is None:
            self.message = ("the vault's lease object does not verify (tampered?); mounted read-only "
                            f"(delete the object '{LEASE_KEY}' from the store if no other device uses the vault)")
        else:
            left = max(0, int(info.expires - self.clock()))
            self.message = (f"another device ({info.host}) holds this vault for writing; mounted read-only "
                            f"(its lease expires in {left} s unless renewed: remount once it is unmounted)")

    def _took(self, etag: str, expires: float) -> None:
        with self._lock:
            self.etag = etag
            self.expires = expires
            self.held = True
            self.reclaim = None
            self.message = None
        self._record(etag)

    def offline(self) -> bool:
        """The store is unreachable: True if this device wrote the last lease it knows of (it may write)."""
        self.reclaim = self._recorded()
        if self.reclaim is None:
            self.message = ("the store is unreachable and this device did not hold the vault's lease last; "
                            "mounted read-only")
            return False
        self.message = "the store is unreachable; the lease is taken back when it comes back"
        return True

    def renew(self) -> None:
        """One renewal (or, after an offline mount, the reclaim); on a lost lease calls ``on_lost``."""
        if self.lost or (not self.held and self.reclaim is None):
            return
        expires = self.clock() + self.ttl
        expect = self.etag if self.held else self.reclaim
        try:
            etag = self.store.put_versioned(LEASE_KEY, self._encode(expires), expect=expect)
        except PreconditionFailedError:
            self._lose()
            return
        except StoreError as exc:
            first = self.last_error is None
            self.last_error = f"lease renewal failed: {str(exc).splitlines()[0] if str(exc) else exc}"
            if first:
                log.warning("%s (retrying every %.0f s)", self.last_error, self.period)
            if self.held and self.clock() > self.expires:
                self.message = ("the lease expired while the store was unreachable; if another device "
                                "takes the vault meanwhile, this mount turns read-only")
            return
        was_held = self.held
        self._took(etag, expires)
        if self.last_error is not None:
            log.info("lease renewed; the store is reachable again")
            self.last_error = None
        if not was_held:
            log.info("took the vault's lease back after an offline mount; uploads of metadata resume")
            if self.on_held is not None:
                self.on_held()

    def _lose(self) -> None:
        try:
            raw, _ = self.store.get_versioned(LEASE_KEY)
            info = self._decode(raw)
        except StoreError:
            info = None
        with self._lock:
            self.held = False
            self.lost = True
            self.reclaim = None
            self.other = info
        host = info.host if info is not None else "an unknown device"
        msg = (f"another device ({host}) took this vault's lease while this mount could not renew it; "
               "this mount is now read-only and its unsent changes stay queued in the cache folder")
        self.message = msg
        self._record(None)
        log.error("%s", msg)
        if self.on_lost is not None:
            self.on_lost(msg)

    def release(self) -> None:
        """Unmount with nothing left to upload: mark the lease free (expiry 0) so another device may take it."""
        self.stop()
        if not self.held:
            return
        try:
            etag = self.store.put_versioned(LEASE_KEY, self._encode(0.0), expect=self.etag)
        except StoreError as exc:
            log.warning("could not release the vault's lease (it expires by itself in %.0f s): %s", self.ttl, exc)
            return
        with self._lock:
            self.held = False
            self.etag = etag
        self._record(etag)

    # ---- the renewal thread

    def start(self) -> None:
        """Renew every ``period`` seconds from a daemon thread (start it after any fork)."""
        if self.held:
            self._record(self.etag)  # this process (after a detaching fork) is the one to outlive
        if self._thread is None and (self.held or self.reclaim is not None):
            self._thread = threading.Thread(target=self._loop, name="encfs-lease", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        # Taking the lease back after an offline mount is what lets queued
        # metadata go: that is tried every 2 s, renewals every period.
        while not self._stop.wait(self.period if self.reclaim is None else min(self.period, 2.0)):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - keep renewing; a dead renewer would lose the lease
                log.exception("lease renewal failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"held": self.held, "lost": self.lost, "offline_reclaim": self.reclaim is not None,
                    "expires_in": round(self.expires - self.clock(), 1) if self.held else None,
                    "holder_host": self.other.host if self.other is not None and not self.held else None,
                    "message": self.message, "last_error": self.last_error}
