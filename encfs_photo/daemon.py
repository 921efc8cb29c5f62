"""Run one mount: register it, answer control requests, serve FUSE, clean up.

`cli mount` unlocks the vault and builds the FileSystem in the foreground
process, so a wrong passphrase or a damaged journal is reported before any
fork; `detach` then forks a session leader that serves the mount and tells the
parent through a pipe when the kernel has it (or why it failed).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import control, gc, mount
from .errors import EncfsPhotoError
from .fs import FileSystem
from .lease import Lease

log = logging.getLogger(__name__)

# fuse_main()'s return codes (libfuse 3, lib/helper.c)
_FUSE_MAIN_ERRORS = {1: "invalid FUSE options", 2: "no mount point", 3: "FUSE setup failed",
                     4: "the mount was refused", 6: "FUSE signal handlers failed", 7: "the FUSE loop failed"}


def sd_notify(state: str) -> bool:
    """Send a state line (``READY=1``) to systemd's $NOTIFY_SOCKET, as sd_notify(3) does.

    A no-op returning False outside a ``Type=notify`` unit. Never raises: a
    failed notification is logged and the mount carries on."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or addr.startswith("vsock:"):
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("could not notify systemd (NOTIFY_SOCKET): %s", exc)
        return False


def serve(fs: FileSystem, store: str, mountpoint: str, *, log_file: str | None = None,
          on_ready: Callable[[], None] | None = None, auto_gc: bool = True, lease: Lease | None = None,
          **mount_options: Any) -> None:
    control.register(mountpoint, store, log_file)
    cache = fs.vault.store if hasattr(fs.vault.store, "wait_uploaded") else None  # write-back cache (s3://)
    if lease is not None:
        _wire_lease(lease, fs, cache)

    # Resolved once, before mounting: a stat of the mount from ready() (the FUSE
    # init callback) would wait for that very callback, and `status` must
    # answer monitoring even when the mount itself is slow.
    real_mountpoint = os.path.realpath(mountpoint)

    def sync() -> dict[str, Any]:
        fs.sync()
        if cache is not None:
            cache.wait_uploaded()  # `encfs-photo sync`: in the bucket, not only on the local disk
        return {"ok": True}

    def commit() -> dict[str, Any]:
        fs.sync()  # `unmount`: durable (on the local disk); uploads continue
        return {"ok": True}

    def leave_queued() -> dict[str, Any]:
        if cache is not None:
            cache.leave_queued()  # `unmount --no-wait`, or Ctrl-C while it waits
        return {"ok": True}

    def collect(dry_run: bool = False, grace: float = gc.DEFAULT_GRACE) -> dict[str, Any]:
        return {"ok": True, **gc.collect_mounted(fs, grace=float(grace), dry_run=bool(dry_run)).to_dict()}

    def status() -> dict[str, Any]:
        return {"ok": True, "mountpoint": real_mountpoint, "store": store, "pid": os.getpid(), **_fs_status(fs),
                **_cache_status(cache), **({"lease": lease.status()} if lease is not None else {})}

    was_mounted = False

    def ready() -> None:
        # The kernel has the mount: tell the detach parent, then systemd (Type=notify).
        nonlocal was_mounted
        was_mounted = True
        if on_ready is not None:
            on_ready()
        sd_notify(f"READY=1\nSTATUS=serving {real_mountpoint}")

    _, sock, _ = control.paths(mountpoint)
    server = control.Server(sock, {"sync": sync, "status": status, "commit": commit,
                                  "leave-queued": leave_queued, "gc": collect})
    collector = gc.AutoCollector(fs) if auto_gc and not fs.read_only else None
    started = time.monotonic()
    served = False
    if cache is not None:
        cache.start()  # in this process: a detached daemon is a fork
    if collector is not None:
        collector.start()  # a thread: started here, after any fork
    if lease is not None:
        lease.start()
    follower = _Follower(fs) if fs.read_only else None  # read-only from the start: show the writer's changes
    if follower is not None:
        follower.start()
    try:
        log.info("mounting %s", mountpoint)
        try:
            mount.run(fs, mountpoint, on_ready=ready, **mount_options)
        except RuntimeError as exc:
            # fuse_main() failed; libfuse or fusermount3 printed its reason to stderr just before
            # (no /dev/fuse access, allow_other without user_allow_other, ...): one line, no traceback.
            code = exc.args[0] if exc.args else "?"
            what = _FUSE_MAIN_ERRORS.get(code, "libfuse failed")
            raise EncfsPhotoError(f"cannot mount {mountpoint}: {what} (libfuse code {code}; "
                                  "its own message is just above)") from None
        served = True
    finally:
        if follower is not None:
            follower.stop()
        if collector is not None:
            collector.stop()
        if cache is not None:
            _drain(cache, wait=served)  # the control socket still answers `status` meanwhile
        if lease is not None:
            _end_lease(lease, cache)
        server.close()
        control.unregister(mountpoint)
        if was_mounted:
            log.info("unmounted %s after %.0f s; vault locked", mountpoint, time.monotonic() - started)


FOLLOW_ENV = "ENCFS_PHOTO_FOLLOW_INTERVAL"  # seconds between checks for the writer's new batches (default 5)


class _Follower:
    """A read-only mount re-reads the journal when another device appended to it."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        try:
            self.interval = max(0.2, float(os.environ.get(FOLLOW_ENV, "5")))
        except ValueError:
            self.interval = 5.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="encfs-follow", daemon=True)
        self._said: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.fs.follow():
                    log.info("read-only mount: took in the writer's new changes")
                self._said = None
            except Exception as exc:  # noqa: BLE001 - the store may be down or the batch mid-upload: try again
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if msg != self._said:
                    log.warning("could not read the writer's new changes (retrying): %s", msg)
                    self._said = msg


def _wire_lease(lease: Lease, fs: FileSystem, cache: Any) -> None:
    """What the renewal thread does when the lease comes back (offline mount) or is lost."""

    def held() -> None:
        if cache is not None:
            cache.go_online()
            cache.release_metadata()

    def lost(msg: str) -> None:
        if cache is not None:
            # Make what is in memory durable in the cache first (its metadata
            # uploads are held back), then stop every upload: nothing is lost,
            # nothing reaches the bucket the other device now writes.
            cache.hold_metadata(msg)
            try:
                fs.sync()
            except Exception as exc:  # noqa: BLE001 - the read-only switch below must happen anyway
                log.error("could not commit before turning read-only: %s", exc)
            cache.declare_conflict(msg)
        fs.read_only = True
        fs.last_error = msg

    lease.on_held = held
    lease.on_lost = lost


def _end_lease(lease: Lease, cache: Any) -> None:
    """Release the lease only when nothing is left to upload: queued batches need it at the next mount."""
    left = 0
    if cache is not None:
        st = cache.status()
        left = st["pending_objects"] + st["pending_deletes"]
    if left:
        lease.stop()
        if lease.held:
            log.info("keeping the vault's lease (it expires in %.0f s): %d operations wait for upload", lease.ttl,
                     left)
    else:
        lease.release()


STATUS_WAIT = 2.0  # seconds `status` waits for the filesystem lock before answering without it


def _fs_status(fs: FileSystem) -> dict[str, Any]:
    # fs.status() takes the filesystem lock, which a writer keeps while it waits
    # for uploads (the cache's dirty cap reached, the bucket slow or gone):
    # `status` must still answer then, so it asks from a helper thread and
    # gives up on the filesystem's own numbers after STATUS_WAIT.
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            box.update(fs.status())
        except AttributeError:  # closed: unmounted, uploads still draining
            box.update({"files": 0, "dirty_bytes": 0, "pending_put_bytes": 0, "journal_seq": -1,
                        "read_only": True, "last_error": fs.last_error, "unmounted": True})

    t = threading.Thread(target=ask, name="encfs-status", daemon=True)
    t.start()
    t.join(STATUS_WAIT)
    if box:
        return box
    return {"files": None, "dirty_bytes": None, "pending_put_bytes": None, "journal_seq": None,
            "read_only": fs.read_only, "last_error": fs.last_error,
            "busy": "a write is waiting for uploads (the cache's dirty cap is reached); file counts unavailable"}


def _cache_status(cache: Any) -> dict[str, Any]:
    return {"cache": cache.status()} if cache is not None else {}


def _drain(cache: Any, wait: bool) -> None:
    """After unmount: upload what is queued (unless told to leave it), then stop the uploader."""
    st = cache.status()
    left = st["pending_objects"] + st["pending_deletes"]
    if wait and left:
        log.info("uploading %d queued objects (%d bytes) before exiting", left, st["pending_bytes"])
    try:
        cache.close(wait=wait)
    except Exception as exc:  # noqa: BLE001 - the queue stays on disk for the next mount
        log.error("uploads stopped: %s; what is queued stays in %s for the next mount", exc, st["cache_dir"])


def detach(run: Callable[[Callable[[], None]], None], log_file: str) -> tuple[bool, str]:
    """Fork; the child calls ``run(ready)``. Returns (ok, message) in the parent."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            chunks.append(data)
            if b"\n" in data:
                break
        os.close(r)
        msg = b"".join(chunks).decode(errors="replace").strip()
        if msg == "ok":
            return True, ""
        if not msg:
            msg = "the mount daemon exited before the mount was ready"
        try:
            with open(log_file, errors="replace") as f:
                tail = [ln.strip() for ln in f.readlines()[-3:] if ln.strip()]
            if tail:
                msg += " (" + " / ".join(tail) + ")"
        except OSError:
            pass
        return False, msg
    # child
    os.close(r)
    os.setsid()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    told = False

    def ready() -> None:
        nonlocal told
        if not told:
            told = True
            os.write(w, b"ok\n")
            os.close(w)

    code = 0
    try:
        run(ready)
    except BaseException as exc:  # noqa: BLE001 - the parent must hear about any failure
        code = 1
        log.exception("mount daemon failed")
        if not told:
            os.write(w, f"{exc}\n".encode())
    finally:
        logging.shutdown()
        os._exit(code)
