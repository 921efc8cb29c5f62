"""A real mount of an s3:// vault through the write-back cache, against moto's server on 127.0.0.1.

Every daemon is a foreground `encfs-photo mount` subprocess we own (stopped by
its PID), with fake credentials, ``--endpoint-url`` pointing at a moto server
in this process, and a private ``--cache-dir``. The server can refuse PUTs
(503 SlowDown) on demand: the bucket "goes away" while the mount keeps
working from its cache. What a test compares after wiping the cache folder
can only have come from the bucket.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from conftest import EXIT_TIMEOUT, MOUNT_TIMEOUT, PASSPHRASE, fuse_unmount, is_mounted, stop_pid, tree_digest
from test_leak import encodings

pytestmark = pytest.mark.mount

MiB = 1 << 20
MARKER = b"OKAPIMARKER77"


class GatedMotoServer:
    """moto's S3 on 127.0.0.1 (a free port) whose object PUTs fail with 503 while ``refuse_puts`` is set,
    and take ``put_delay`` seconds longer."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.refuse_puts = threading.Event()
        self.put_delay = 0.0  # seconds added to every object PUT: a slow link
        self.puts = 0
        self.put_keys: list[str] = []  # the key under the vault prefix of every object PUT, in order
        self.refused = 0
        app = DomainDispatcherApplication(create_backend_app)

        def gated(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if "Credential=wrong-key/" in environ.get("HTTP_AUTHORIZATION", ""):
                body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
                        b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>")
                start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                                 ("Content-Length", str(len(body)))])
                return [body]
            if environ["REQUEST_METHOD"] == "PUT" and path.strip("/").count("/") >= 1:
                self.puts += 1
                self.put_keys.append(path.strip("/").split("/", 2)[-1])
                if self.put_delay:
                    time.sleep(self.put_delay)
                if self.refuse_puts.is_set():
                    self.refused += 1
                    length = int(environ.get("CONTENT_LENGTH") or 0)
                    if length:
                        environ["wsgi.input"].read(length)  # keep the connection in step
                    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                            b"<Message>refused by the test</Message></Error>")
                    start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                                     ("Content-Length", str(len(body)))])
                    return [body]
            return app(environ, start_response)

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = make_server("127.0.0.1", 0, gated, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=30)


@pytest.fixture
def s3env(tmp_path, monkeypatch):
    """Fake credentials, nothing from the machine's AWS setup; the same for this process and the daemons."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_RETRY_MODE",
                 "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"), "NO_PROXY": "127.0.0.1",
           # one attempt per call: a refused PUT reaches the cache's own backoff at once
           "AWS_MAX_ATTEMPTS": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def moto_server(s3env):
    server = GatedMotoServer()
    try:
        yield server
    finally:
        server.refuse_puts.clear()
        server.stop()


class S3Vault:
    """An s3:// vault on the moto server and its foreground mount daemons (Popens we own)."""

    def __init__(self, cli, base: Path, server: GatedMotoServer, s3env: dict) -> None:
        self.cli = cli
        cli.env.update(s3env)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            cli.env.pop(name, None)
        self.base = base
        self.server = server
        self.bucket = f"photos-{os.urandom(3).hex()}"
        self.url = f"s3://{self.bucket}/vault"
        # The daemons get one attempt per call (AWS_MAX_ATTEMPTS above); the test's own look behind the
        # mount retries, so a connection dropped by the loaded test server does not fail a test about the mount.
        self.client = boto3.client("s3", endpoint_url=server.endpoint,
                                   config=Config(retries={"total_max_attempts": 6, "mode": "standard"},
                                                 connect_timeout=10, read_timeout=60))
        self.client.create_bucket(Bucket=self.bucket)
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        self.pwfile = base / "pw"
        self.pwfile.write_text(PASSPHRASE + "\n")
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.cli.run(*args, **kw)

    def init(self) -> S3Vault:
        self.run("init", self.url, "--endpoint-url", self.server.endpoint, "--password-file", self.pwfile,
                 "--no-recovery-key", check=True)
        return self

    def mount(self, cache_dir: Path, *extra: str) -> S3Vault:
        assert self.proc is None or self.proc.poll() is not None
        err = self.base / f"daemon-{len(self.logs)}.log"
        self.logs.append(err)
        self.proc = self.cli.popen("mount", self.url, self.mnt, "--foreground", "--endpoint-url", self.server.endpoint,
                                   "--password-file", self.pwfile, "--cache-dir", cache_dir, *extra, stderr_path=err)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                pytest.fail(f"mount exited with {self.proc.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"no mount within {MOUNT_TIMEOUT:.0f} s:\n{self.log}")
            time.sleep(0.02)
        return self

    def unmount(self, *extra: str) -> subprocess.CompletedProcess:
        assert self.proc is not None
        r = self.run("unmount", self.mnt, *extra)
        assert r.returncode == 0, f"unmount failed: {r.stderr}\n{self.log}"
        assert self.proc.wait(timeout=EXIT_TIMEOUT) == 0, self.log
        assert not is_mounted(self.mnt)
        return r

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=EXIT_TIMEOUT)
        fuse_unmount(self.mnt)
        assert not is_mounted(self.mnt)

    def status(self) -> dict:
        r = self.run("status", self.mnt, "--json", check=True)
        return json.loads(r.stdout)["mounts"][0]

    def sync(self) -> None:
        r = self.run("sync", self.mnt, timeout=300)
        assert r.returncode == 0, f"sync failed: {r.stderr}\n{self.log}"

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))

    @property
    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def cleanup(self) -> None:
        lazy = fuse_unmount(self.mnt)
        if self.proc is not None:
            stop_pid(self.proc, timeout=10 if lazy else EXIT_TIMEOUT)


@pytest.fixture
def s3vault(cli, tmp_path, moto_server, s3env):
    v = S3Vault(cli, tmp_path, moto_server, s3env).init()
    try:
        yield v
    finally:
        v.cleanup()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for off in range(0, len(data), 1_000_003):
            f.write(data[off:off + 1_000_003])


def files(seed: int, big: bool = True) -> dict[str, bytes]:
    r = random.Random(seed)
    out = {
        f"shoot-{seed}/IMG_{i:04d}.xmp": b"<x:xmpmeta " + MARKER + b"> rating %d </x:xmpmeta>" % i for i in range(12)
    }
    out[f"shoot-{seed}/{MARKER.decode()}.txt"] = (b"secret line " + MARKER + b"\n") * 3000
    out[f"shoot-{seed}/IMG_0100.CR3"] = r.randbytes(3 * MiB + 17)
    if big:
        out[f"shoot-{seed}/clip.mp4"] = r.randbytes(10 * MiB + 12345)  # three chunks
    return out


def scan_for_marker(root: Path) -> list[str]:
    pats = list(encodings(MARKER).values())
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if any(p.lower() in name.encode().lower() for p in pats):
                hits.append(f"name {name}")
        for name in filenames:
            data = (Path(dirpath) / name).read_bytes()
            hits += [f"{name}: {p!r}" for p in pats if p in data]
    return hits


def test_write_sync_unmount_then_read_everything_back_with_an_empty_cache(s3vault):
    v = s3vault
    cache = v.base / "cache"
    v.mount(cache)
    want = files(1)
    for rel, data in want.items():
        write(v.mnt / rel, data)
    (v.mnt / "shoot-1" / "empty").touch()
    os.symlink("IMG_0100.CR3", v.mnt / "shoot-1" / "latest")

    v.sync()  # everything written so far is in the bucket now
    st = v.status()
    assert st["cache"]["pending_objects"] == 0 and st["cache"]["pending_bytes"] == 0, st
    assert st["cache"]["uploaded_objects"] >= 5 and st["cache"]["clean_bytes"] > 13 * MiB
    assert os.listdir(cache / "pending") == []
    text = v.run("status", v.mnt, check=True).stdout
    assert "uploads: 0 objects" in text and f"used in {cache}" in text
    keys = v.keys()
    assert any(k.startswith("vault/data/") for k in keys) and any(k.startswith("vault/journal/") for k in keys)
    before = tree_digest(v.mnt)
    v.unmount()

    assert scan_for_marker(cache) == []  # the cache folder holds ciphertext only
    assert not os.path.exists(cache / "running")
    # ... and the bucket too, in object names and bytes
    pats = list(encodings(MARKER).values())
    for key in v.keys():
        body = v.client.get_object(Bucket=v.bucket, Key=key)["Body"].read()
        assert not [p for p in pats if p in body or p.lower() in key.encode().lower()], key
    # Nothing is overwritten in place: every object was PUT once, but the lease (renewed by design).
    stored = [k for k in v.server.put_keys if k != "lease"]
    assert stored and len(stored) == len(set(stored)), sorted(k for k in stored if stored.count(k) > 1)
    shutil.rmtree(cache)
    v.mount(cache)  # a second machine: nothing cached
    try:
        assert tree_digest(v.mnt) == before
        for rel, data in want.items():
            assert (v.mnt / rel).read_bytes() == data, rel
        assert os.readlink(v.mnt / "shoot-1" / "latest") == "IMG_0100.CR3"
        assert v.status()["cache"]["cache_misses"] > 0
    finally:
        v.unmount()
    r = v.run("check", v.url, "--endpoint-url", v.server.endpoint, "--password-file", v.pwfile, "--read-data")
    assert r.returncode == 0 and "no problems found" in r.stdout, r.stdout + r.stderr


def test_kill_9_before_uploads_then_resume_with_the_same_cache(s3vault):
    v = s3vault
    cache = v.base / "cache"
    v.mount(cache)
    first = files(1, big=False)
    for rel, data in first.items():
        write(v.mnt / rel, data)
    v.sync()
    uploaded = set(v.keys())

    v.server.refuse_puts.set()  # the bucket refuses writes: what follows stays in the cache
    second = files(2)
    for rel, data in second.items():
        write(v.mnt / rel, data)  # close() returned: durable on the local disk
    os.unlink(v.mnt / "shoot-1" / "IMG_0003.xmp")
    os.rename(v.mnt / "shoot-1" / "IMG_0004.xmp", v.mnt / "shoot-2" / "moved.xmp")
    fd = os.open(v.mnt / "shoot-2" / "fsynced.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"fsync'ed " * 1000)
    os.fsync(fd)
    st = v.status()["cache"]
    assert st["pending_objects"] >= 4 and st["pending_bytes"] > 13 * MiB, st
    v.kill9()  # before any of it reached the bucket
    try:
        os.close(fd)
    except OSError:
        pass  # its mount died with the daemon
    assert set(v.keys()) == uploaded
    assert v.server.refused > 0
    assert [n for n in os.listdir(cache / "pending") if n.startswith(".tmp-")] == []

    expect = {**first, **second}
    expect.pop("shoot-1/IMG_0003.xmp")
    expect["shoot-2/moved.xmp"] = expect.pop("shoot-1/IMG_0004.xmp")
    expect["shoot-2/fsynced.bin"] = b"fsync'ed " * 1000

    v.server.refuse_puts.clear()
    v.mount(cache)  # resumes the queued uploads
    try:
        for rel, data in expect.items():
            assert (v.mnt / rel).read_bytes() == data, rel
        assert not (v.mnt / "shoot-1" / "IMG_0003.xmp").exists()
        v.sync()
        assert v.status()["cache"]["pending_objects"] == 0
    finally:
        v.unmount()
    assert "did not stop cleanly" in v.log

    shutil.rmtree(cache)
    v.mount(cache)
    try:
        got = {str(p.relative_to(v.mnt)): p.read_bytes() for p in v.mnt.rglob("*") if p.is_file()}
        assert got == expect
    finally:
        v.unmount()


def test_unmount_waits_for_uploads_with_progress_or_leaves_them_queued(s3vault):
    v = s3vault
    cache = v.base / "cache"
    v.mount(cache)
    v.server.refuse_puts.set()
    want = files(3)
    for rel, data in want.items():
        write(v.mnt / rel, data)

    # --no-wait: the daemon commits locally and exits; the uploads stay queued.
    t0 = time.monotonic()
    r = v.unmount("--no-wait")
    assert time.monotonic() - t0 < 30
    assert "stay queued" in r.stdout, r.stdout
    assert [n for n in os.listdir(cache / "pending") if "-P-data~" in n]
    assert not [k for k in v.keys() if k.startswith("vault/data/")]

    # The next mount reads its queued state; unmount then waits, showing progress, until the bucket has it.
    v.mount(cache)
    assert (v.mnt / "shoot-3" / "clip.mp4").read_bytes() == want["shoot-3/clip.mp4"]
    threading.Timer(3.0, v.server.refuse_puts.clear).start()
    r = v.unmount()
    assert "uploading:" in r.stderr and "objects left" in r.stderr and "ETA" in r.stderr, r.stderr
    assert os.listdir(cache / "pending") == []

    shutil.rmtree(cache)
    v.mount(cache)
    try:
        for rel, data in want.items():
            assert (v.mnt / rel).read_bytes() == data, rel
    finally:
        v.unmount()


def test_two_mounts_cannot_share_a_cache_folder_and_folder_stores_are_not_cached(s3vault, tmp_path):
    v = s3vault
    cache = v.base / "cache"
    v.mount(cache)
    try:
        other = tmp_path / "mnt2"
        other.mkdir()
        r = v.run("mount", v.url, other, "--endpoint-url", v.server.endpoint, "--password-file", v.pwfile,
                  "--cache-dir", cache)
        assert r.returncode == 1 and "in use by another mount" in r.stderr.strip().splitlines()[-1], r.stderr
        assert "Traceback" not in r.stderr
        r = v.run("mount", v.url, other, "--endpoint-url", v.server.endpoint, "--password-file", v.pwfile,
                  "--cache-size", "lots")
        assert r.returncode == 1 and "--cache-size" in r.stderr, r.stderr
    finally:
        v.unmount()


def test_a_folder_store_is_used_directly(make_vault, tmp_path):
    vm = make_vault()
    cache = tmp_path / "unused-cache"
    vm.mount("--cache-dir", str(cache), "--cache-size", "1G")
    try:
        (Path(vm.mnt) / "a.txt").write_bytes(b"hello")
        r = vm.cli.run("status", vm.mnt, "--json", check=True)
        assert "cache" not in json.loads(r.stdout)["mounts"][0]
        assert vm.cli.run("sync", vm.mnt).returncode == 0
    finally:
        vm.unmount()
    assert not cache.exists()
    assert "for s3:// stores" in vm.stderr


def test_mount_errors_are_one_clear_line(s3vault):
    """Bad credentials, a prefix that is not a vault, a bucket that does not exist: exit 1, one line, no
    traceback, nothing mounted and nothing written to the bucket."""
    v = s3vault
    before = v.keys()
    cases = {
        "credentials": (v.url, {"AWS_ACCESS_KEY_ID": "wrong-key"}, "credentials"),
        "not a vault": (f"s3://{v.bucket}/elsewhere", {}, "not an encfs-photo vault"),
        "no bucket": (f"s3://no-such-bucket-{os.urandom(3).hex()}/vault", {}, "bucket"),
    }
    for what, (url, env, words) in cases.items():
        saved = dict(v.cli.env)
        v.cli.env.update(env)
        try:
            r = v.run("mount", url, v.mnt, "--endpoint-url", v.server.endpoint, "--password-file", v.pwfile,
                      "--cache-dir", v.base / f"cache-{what.replace(' ', '-')}", timeout=120)
        finally:
            v.cli.env.clear()
            v.cli.env.update(saved)
        err = r.stderr.strip()
        assert r.returncode == 1, (what, r.stdout, r.stderr)
        assert words in err.lower() and "Traceback" not in err and len(err.splitlines()) == 1, (what, err)
        assert not is_mounted(v.mnt)
    assert v.keys() == before
