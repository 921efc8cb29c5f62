"""Shared fixtures for the command-line and mounted end-to-end tests.

Every `encfs-photo` subprocess runs as ``sys.executable -m encfs_photo.cli``
(so it works inside a venv) with ``ENCFS_PHOTO_FAST_KDF=1``, a private
``ENCFS_PHOTO_RUNTIME_DIR`` and a private ``XDG_STATE_HOME``, so tests never
see or disturb a real mount or the user's rollback memory.

Every mount made here is unmounted at teardown with ``fusermount3 -u`` (lazy
``-uz`` as a fall-back), and every daemon started here is waited for, and if
need be stopped, by its own PID. Tests marked ``mount`` are skipped when the
machine has no usable FUSE (/dev/fuse or fusermount3 missing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from encfs_photo.control import pid_alive  # noqa: F401 - the daemon's own liveness test, re-exported to tests

PASSPHRASE = "correct horse battery staple"
MOUNT_TIMEOUT = 60.0  # seconds: a deadline for polling, never a timed assertion
EXIT_TIMEOUT = 120.0


def fuse_available() -> tuple[bool, str]:
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return False, "/dev/fuse is not accessible"
    if shutil.which("fusermount3") is None:
        return False, "fusermount3 is not installed (apt-get install fuse3)"
    return True, ""


FUSE_OK, FUSE_WHY = fuse_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FUSE_OK:
        return
    skip = pytest.mark.skip(reason=f"no FUSE: {FUSE_WHY}")
    for item in items:
        if item.get_closest_marker("mount") is not None:
            item.add_marker(skip)


# ------------------------------------------------------------------ helpers


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_paths() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {_unescape_mountinfo(line.split()[4]) for line in f if line.strip()}


def is_mounted(path: str | os.PathLike) -> bool:
    return os.path.realpath(path) in mounted_paths()


def fuse_unmount(path: str | os.PathLike) -> bool:
    """fusermount3 -u, then -uz if the mount is busy. Never raises; True if it had to detach lazily."""
    path = os.fspath(path)
    if not is_mounted(path):
        return False
    r = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
    if r.returncode != 0 and is_mounted(path):
        subprocess.run(["fusermount3", "-uz", path], capture_output=True, text=True)
        return True
    return False


def stop_pid(proc: subprocess.Popen, timeout: float = EXIT_TIMEOUT) -> None:
    """Wait for our own daemon to exit; SIGTERM, then SIGKILL it by its PID if it does not."""
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_detached(pid: int, timeout: float = EXIT_TIMEOUT) -> None:
    """Wait for a detached daemon we started to exit; SIGTERM then SIGKILL it by its PID if it does not."""
    if wait_until(lambda: not pid_alive(pid), timeout=timeout):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: not pid_alive(pid), timeout=30):
            return


def wait_until(pred, timeout: float = MOUNT_TIMEOUT, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tree_digest(root: str | os.PathLike) -> dict[str, tuple]:
    """Every path under root -> (kind, mode, size, sha256 of content). For 'nothing changed' checks."""
    import hashlib

    out: dict[str, tuple] = {}
    root = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("f", st.st_mode, st.st_size, h)
            else:
                out[rel] = ("d" if os.path.isdir(p) else "o", st.st_mode, 0, "")
    return out


class Cli:
    """Runs `encfs-photo` as a subprocess with a private runtime dir and the fast KDF."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.env = dict(os.environ)
        self.env.pop("ENCFS_PHOTO_PASSWORD_FILE", None)
        # private runtime dir (registry, sockets, logs) and state dir (rollback memory)
        self.env.update({"ENCFS_PHOTO_FAST_KDF": "1", "ENCFS_PHOTO_RUNTIME_DIR": runtime_dir,
                         "XDG_STATE_HOME": os.path.join(runtime_dir, "state"), "PYTHONUNBUFFERED": "1"})
        self.argv0 = [sys.executable, "-m", "encfs_photo.cli"]

    def run(self, *args: str | os.PathLike, input: str | None = None, timeout: float = EXIT_TIMEOUT,
            check: bool = False) -> subprocess.CompletedProcess:
        cmd = self.argv0 + [os.fspath(a) for a in args]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                           input=input if input is not None else "")
        if check and r.returncode != 0:
            raise AssertionError(f"{cmd} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def popen(self, *args: str | os.PathLike, stderr_path: str | os.PathLike) -> subprocess.Popen:
        cmd = self.argv0 + [os.fspath(a) for a in args]
        with open(stderr_path, "ab") as err:
            return subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)


class VaultMount:
    """A vault in a temp folder and its foreground mount daemon (a Popen we own)."""

    def __init__(self, cli: Cli, base: Path, name: str = "v", passphrase: str = PASSPHRASE) -> None:
        self.cli = cli
        self.base = base
        self.store = base / f"{name}-store"
        self.mnt = base / f"{name}-mnt"
        self.pwfile = base / f"{name}-pw"
        self.pwfile.write_text(passphrase + "\n")
        self.mnt.mkdir()
        self.proc: subprocess.Popen | None = None
        self.stderr_files: list[Path] = []
        self.recovery_key: str | None = None
        self.init_stdout = ""

    # ---- lifecycle

    def init(self) -> VaultMount:
        r = self.cli.run("init", self.store, "--password-file", self.pwfile, check=True)
        self.init_stdout = r.stdout
        for line in r.stdout.splitlines():
            s = line.strip()
            if s.count("-") == 7 and len(s) == 39:
                self.recovery_key = s
        return self

    def mount(self, *extra: str) -> VaultMount:
        assert self.proc is None or self.proc.poll() is not None, "already mounted"
        err = self.base / f"{self.mnt.name}-daemon-{len(self.stderr_files)}.stderr"
        self.stderr_files.append(err)
        self.proc = self.cli.popen("mount", self.store, self.mnt, "--foreground", "--password-file", self.pwfile,
                                   *extra, stderr_path=err)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                pytest.fail(f"mount daemon exited with {self.proc.returncode} before mounting:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.cleanup()
                pytest.fail(f"mount did not appear within {MOUNT_TIMEOUT:.0f} s:\n{self.stderr}")
            time.sleep(0.02)
        return self

    def unmount(self) -> None:
        """`encfs-photo unmount`, then wait for our daemon to exit by itself (exit status 0)."""
        assert self.proc is not None
        r = self.cli.run("unmount", self.mnt)
        assert r.returncode == 0, f"unmount failed ({r.returncode}): {r.stderr}\ndaemon:\n{self.stderr}"
        try:
            code = self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.cleanup()
            pytest.fail(f"daemon {self.proc.pid} did not exit after unmount:\n{self.stderr}")
        assert code == 0, f"daemon exited {code}:\n{self.stderr}"
        assert not is_mounted(self.mnt)

    def remount(self) -> VaultMount:
        self.unmount()
        return self.mount()

    def kill9(self) -> None:
        """A crash: SIGKILL our daemon by its PID, reap it, then detach the dead mount."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=EXIT_TIMEOUT)
        fuse_unmount(self.mnt)
        assert not is_mounted(self.mnt)

    def cleanup(self) -> None:
        lazy = fuse_unmount(self.mnt)
        if self.proc is not None:
            # after a lazy detach the daemon serves the open files until they close: do not wait long
            stop_pid(self.proc, timeout=10 if lazy else EXIT_TIMEOUT)

    # ---- inspection

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.stderr_files if p.exists())

    def path(self, *parts: str) -> str:
        return os.path.join(self.mnt, *parts)


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def runtime_dir():
    # Short, private path: unix socket paths are limited to 107 bytes.
    d = tempfile.mkdtemp(prefix="efp-run-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cli(runtime_dir) -> Cli:
    return Cli(runtime_dir)


@pytest.fixture
def make_vault(cli, tmp_path):
    """Factory: make_vault(name) -> an initialised VaultMount (not mounted). All are cleaned up."""
    made: list[VaultMount] = []

    def factory(name: str = "v", passphrase: str = PASSPHRASE, init: bool = True) -> VaultMount:
        vm = VaultMount(cli, tmp_path, name, passphrase)
        made.append(vm)
        return vm.init() if init else vm

    try:
        yield factory
    finally:
        for vm in made:
            vm.cleanup()


@pytest.fixture
def vault_mount(make_vault):
    """An initialised vault mounted in the foreground; unmounted and stopped at teardown."""
    if not FUSE_OK:
        pytest.skip(f"no FUSE: {FUSE_WHY}")
    vm = make_vault()
    vm.mount()
    return vm
