"""Shared plumbing of the bench/ scripts that measure what peers.py does not.

Each script mounts encfs-photo in the foreground as its own child, so the PID it
reads /proc/<pid>/status and /proc/<pid>/stat of is the FUSE daemon itself, and
it stops that child (and any moto server it started) by PID, unmounting first.
Everything lives under one scratch directory (default /tmp), removed at exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.environ.get("PEERS", os.path.join(ROOT, "..", "shared", "bench", "peers.py"))
MOTO_VENV_PY = os.environ.get("MOTO_PYTHON", "/tmp/peers-bench-venv/bin/python")
PASSWORD = "bench password"
MiB = 1 << 20
GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")


def encfs_photo_cmd() -> list[str]:
    exe = shutil.which("encfs-photo") or os.path.join(ROOT, ".venv", "bin", "encfs-photo")
    return [exe]


def bench_env(work: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Fast KDF and private runtime/state dirs (never the engineer's own), no proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("AWS_")}
    env.update(ENCFS_PHOTO_FAST_KDF="1", ENCFS_PHOTO_RUNTIME_DIR=os.path.join(work, "run"),
               XDG_STATE_HOME=os.path.join(work, "state"), XDG_CACHE_HOME=os.path.join(work, "xdgcache"),
               NO_PROXY="127.0.0.1,localhost")
    env.update(extra or {})
    return env


def mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Moto:
    """The peer harness's moto S3 server (same shims), on 127.0.0.1, stopped by PID."""

    def __init__(self, work: str) -> None:
        spec = importlib.util.spec_from_file_location("peers", PEERS)
        peers = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(peers)
        launcher = os.path.join(work, "moto_launcher.py")
        with open(launcher, "w") as f:
            f.write(peers.MOTO_LAUNCHER)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(work, "moto.log"), "ab")
        self.proc = subprocess.Popen([MOTO_VENV_PY, launcher, str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(self.endpoint + "/", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto did not start (see moto.log)") from None
                time.sleep(0.2)
        opener.open(urllib.request.Request(f"{self.endpoint}/bench", method="PUT"), timeout=30).read()
        self.env = {"AWS_ACCESS_KEY_ID": "benchkey", "AWS_SECRET_ACCESS_KEY": "benchsecret",
                    "AWS_DEFAULT_REGION": "us-east-1"}

    def rss_kib(self) -> int:
        return status_kib(self.proc.pid, "VmRSS")

    def stop(self) -> None:
        stop_pid(self.proc)
        self.log.close()


def stop_pid(proc: subprocess.Popen, grace: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


class Vault:
    """One encfs-photo vault (local folder or s3://bench/vault over Moto) and its mounts."""

    def __init__(self, work: str, moto: Moto | None = None, cache_size: str | None = None) -> None:
        self.work, self.moto, self.cache_size = work, moto, cache_size
        self.pwfile = os.path.join(work, "pw")
        with open(self.pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        self.mnt = os.path.join(work, "mnt")
        self.cache = os.path.join(work, "cache")
        os.makedirs(self.mnt, exist_ok=True)
        if moto:
            self.store = "s3://bench/vault"
            self.env = bench_env(work, moto.env)
            self.store_args = ["--endpoint-url", moto.endpoint]
        else:
            self.store = os.path.join(work, "store")
            self.env = bench_env(work)
            self.store_args = []
        self.proc: subprocess.Popen | None = None

    def init(self) -> None:
        subprocess.run(encfs_photo_cmd() + ["init", self.store, "--password-file", self.pwfile,
                                            "--no-recovery-key", *self.store_args],
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def mount(self, timeout: float = 600) -> float:
        """Start the daemon in the foreground; seconds until the mount point is a mount."""
        args = encfs_photo_cmd() + ["mount", self.store, self.mnt, "--foreground",
                                    "--password-file", self.pwfile, *self.store_args]
        if self.moto:
            args += ["--cache-dir", self.cache]
            if self.cache_size:
                args += ["--cache-size", self.cache_size]
        log = open(os.path.join(self.work, "daemon.log"), "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        while not mounted(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount failed, see {self.work}/daemon.log")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("mount timed out")
            time.sleep(0.005)
        return time.monotonic() - t0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sync(self) -> None:
        subprocess.run(encfs_photo_cmd() + ["sync", self.mnt], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def unmount(self) -> None:
        if self.proc is None:
            return
        if mounted(self.mnt):
            subprocess.run(encfs_photo_cmd() + ["unmount", self.mnt], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], stderr=subprocess.DEVNULL)
        stop_pid(self.proc)
        self.proc = None


@contextlib.contextmanager
def scratch(prefix: str, base: str | None = None, keep: bool = False) -> Iterator[str]:
    work = tempfile.mkdtemp(prefix=prefix, dir=base or "/tmp")
    try:
        yield work
    finally:
        for line in open("/proc/self/mountinfo").read().splitlines():
            mp = line.split()[4]
            if mp.startswith(work + "/"):
                subprocess.run(["fusermount3", "-u", mp], stderr=subprocess.DEVNULL)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (drop_caches, FUSE)")


def fill_vault(vault: Vault, folders: int, per_folder: int, size: int, batch: int = 2000) -> float:
    """Create folders x per_folder files of `size` bytes through fs.FileSystem, no FUSE.

    The FUSE path makes every close() a durability point (a commit per file);
    here the files are committed `batch` at a time and the FileSystem is closed
    (final snapshot) the way an unmount closes it, so building 100,000 files
    takes minutes instead of an hour. Local folder stores only. Returns seconds.
    """
    from encfs_photo import vault as vaultmod
    from encfs_photo.fs import FileSystem
    from encfs_photo.meta import ROOT_INO
    from encfs_photo.store import LocalStore

    t0 = time.monotonic()
    fs = FileSystem(vaultmod.open_vault(LocalStore(vault.store), passphrase=PASSWORD))
    payload = os.urandom(max(size, 1))[:size]
    uid, gid = os.getuid(), os.getgid()
    n = 0
    try:
        for d in range(folders):
            dino = fs.mkdir(ROOT_INO, b"folder%04d" % d, 0o755, uid, gid)
            for i in range(per_folder):
                _, fh = fs.create(dino, b"IMG_%06d.CR3.xmp" % i, 0o644, os.O_WRONLY | os.O_CREAT, uid, gid)
                if size:
                    fs.write(fh, 0, payload)
                fs.release(fh)
                n += 1
                if n % batch == 0:
                    fs.sync()
    finally:
        fs.close()
    return time.monotonic() - t0
