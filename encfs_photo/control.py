"""Where running mounts are registered, and how commands talk to them.

Each mount daemon writes ``RUNDIR/<id>.json`` (pid, mount point, store, log
file) and listens on ``RUNDIR/<id>.sock`` (mode 0600) for one-line JSON
requests: ``{"cmd": "sync"}``, ``{"cmd": "status"}``, ``{"cmd": "gc", "dry_run": false, "grace": 3600}``
(other fields are the handler's keyword arguments). ``<id>`` is a hash of
the mount point's real path. Callers: `cli` (client side), `daemon` (server).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def run_dir() -> str:
    base = os.environ.get("ENCFS_PHOTO_RUNTIME_DIR")
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg):
            base = os.path.join(xdg, "encfs-photo")
        elif os.geteuid() == 0:
            base = "/run/encfs-photo"
        else:
            base = f"/tmp/encfs-photo-{os.geteuid()}"
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


def mount_id(mountpoint: str) -> str:
    # The parent is resolved, not the mount point itself: a stat of a mounted
    # point is a FUSE call, and `status` must answer while the mount's only FUSE
    # thread waits (a writer blocked on a full cache). A mount point that is
    # itself a symlink is therefore known by the name it was mounted under.
    path = os.path.abspath(mountpoint)
    resolved = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    return hashlib.sha256(resolved.encode()).hexdigest()[:16]


def paths(mountpoint: str) -> tuple[str, str, str]:
    """(registry json, control socket, log file) of a mount point."""
    base = os.path.join(run_dir(), mount_id(mountpoint))
    return base + ".json", base + ".sock", base + ".log"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A zombie (exited, not yet reaped by its parent, e.g. a foreground mount
    # started by a script) still answers kill(pid, 0); it is not running.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")
    except (OSError, IndexError):
        return True


def register(mountpoint: str, store: str, log_file: str | None) -> None:
    reg, sock, _ = paths(mountpoint)
    tmp = reg + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "mountpoint": os.path.realpath(mountpoint), "store": store,
                   "socket": sock, "log": log_file}, f)
    os.replace(tmp, reg)


def unregister(mountpoint: str) -> None:
    reg, sock, _ = paths(mountpoint)
    for p in (reg, sock):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _read_entry(path: str) -> dict[str, Any] | None:
    """A registry file's entry if it is one of a live mount (a damaged or stale file counts as none)."""
    try:
        with open(path, "rb") as f:
            entry = json.loads(f.read())
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return None
    if not isinstance(entry, dict) or type(entry.get("pid")) is not int or entry["pid"] <= 0:
        return None
    if not all(isinstance(entry.get(k), str) for k in ("mountpoint", "socket", "store")) or \
            not isinstance(entry.get("log"), str | None):
        return None
    return entry if pid_alive(entry["pid"]) else None


def lookup(mountpoint: str) -> dict[str, Any] | None:
    reg, _, _ = paths(mountpoint)
    return _read_entry(reg)


def all_mounts() -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(run_dir())):
        if name.endswith(".json"):
            entry = _read_entry(os.path.join(run_dir(), name))
            if entry is not None:
                out.append(entry)
    return out


def request(sock_path: str, cmd: str, timeout: float | None = 600, **args: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b"{}")


class Server:
    """Answers control requests on a unix socket from a daemon thread."""

    def __init__(self, sock_path: str, handlers: dict[str, Callable[..., dict[str, Any]]]) -> None:
        self.path = sock_path
        self.handlers = handlers
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(sock_path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        threading.Thread(target=self._serve, name="encfs-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                line = conn.makefile("rb").readline()
                args = json.loads(line)
                cmd = args.pop("cmd", None)
                handler = self.handlers.get(cmd)
                reply = handler(**args) if handler else {"ok": False, "error": f"unknown command {cmd!r}"}
            except Exception as exc:  # noqa: BLE001 - the client gets the error as text
                reply = {"ok": False, "error": str(exc)}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
