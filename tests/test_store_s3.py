"""S3Store specifics on moto: addressing, prefixes, pagination, typed errors, vault end to end.

The shared conformance suite runs over S3Store too (tests/test_store.py). Here:
what only an S3 store has. Moto runs in-process (``mock_aws``) except in the
server test, which starts moto's threaded server on 127.0.0.1. No test touches
any network but 127.0.0.1: fake credentials, instance metadata disabled, no
AWS config files.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws

from encfs_photo import cli, vault
from encfs_photo.errors import PreconditionFailedError, StoreError, StoreNotFoundError
from encfs_photo.fs import FileSystem
from encfs_photo.store import LocalStore, open_store
from encfs_photo.store.s3 import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3NoCredentialsError,
    S3Store,
    S3UnreachableError,
    parse_url,
)

PW = "s3 test passphrase"
MiB = 1 << 20
BUCKET = "photos"
CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing listens there
UID, GID = os.getuid(), os.getgid()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and nothing from the machine's own AWS setup."""
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"), "NO_PROXY": "127.0.0.1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3():
    """moto in-process with one bucket; yields a raw boto3 client to look behind the store."""
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def raw_keys(client, bucket: str = BUCKET) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", ()))


def client_error(code: str, status: int, op: str = "PutObject", retries: int = 0) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries}}, op)


# ------------------------------------------------------------------ URL, configuration, wiring


def test_parse_url():
    assert parse_url("s3://b-1.x") == ("b-1.x", "")
    assert parse_url("s3://bucket/") == ("bucket", "")
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b")
    for bad in ["s3://", "s3:///prefix", "s3://bu cket/x", "s3://bucket/a//b", "s3://bucket/a/../b", "/x"]:
        with pytest.raises(ValueError):
            parse_url(bad)


def test_open_store_wires_s3_urls(s3, tmp_path):
    store = open_store("s3://photos/vault/2024/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("photos", "vault/2024")
    assert store.describe() == "s3://photos/vault/2024"
    assert open_store("s3://photos").describe() == "s3://photos"
    caps = store.capabilities
    assert caps.conditional_writes and not caps.local
    assert store.space() is None
    store.flush()  # a no-op: every put is durable when it returns
    with pytest.raises(ValueError):
        open_store("s3://")
    with pytest.raises(ValueError, match="only for s3://"):
        open_store("/tmp/folder", endpoint_url="http://127.0.0.1:9000")
    with pytest.raises(ValueError):
        open_store("s3://photos", endpoint_url="127.0.0.1:9000")  # no scheme
    assert isinstance(open_store(str(tmp_path)), LocalStore)


def test_client_configuration(monkeypatch):
    aws = S3Store("photos", max_connections=7, max_attempts=3, connect_timeout=2, read_timeout=9)
    cfg = aws._client().meta.config
    assert cfg.max_pool_connections == aws.capabilities.max_connections == 7
    assert cfg.retries == {"total_max_attempts": 3, "mode": "standard"}  # 3 attempts in all
    assert (cfg.connect_timeout, cfg.read_timeout) == (2, 9)
    assert not (cfg.s3 or {}).get("addressing_style")  # AWS itself: botocore's choice (virtual-hosted)
    assert "amazonaws.com" in aws._client().meta.endpoint_url

    minio = S3Store("photos", endpoint_url="http://127.0.0.1:9000")
    cfg = minio._client().meta.config
    assert cfg.s3["addressing_style"] == "path"
    assert minio._client().meta.endpoint_url == "http://127.0.0.1:9000"
    default = S3Store("photos")
    assert default.capabilities.max_connections == default._client().meta.config.max_pool_connections == 16

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")  # boto3's own variable
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    env = S3Store("photos")
    assert env._client().meta.endpoint_url == "http://127.0.0.1:9001"
    assert env._client().meta.config.s3["addressing_style"] == "path"
    assert env._client().meta.config.retries["total_max_attempts"] == 2


def test_forked_child_gets_its_own_client(s3):
    store = S3Store(BUCKET)
    first = store._client()
    assert store._client() is first
    store._client_pid = -2  # as if this process were a fork of the one that made the client
    assert store._client() is not first


# ------------------------------------------------------------------ layout in the bucket


def test_objects_live_under_the_prefix(s3):
    store = S3Store.from_url("s3://photos/vaults/one")
    store.put("config", b"c")
    store.put("data/" + "ab" * 16, b"d")
    assert raw_keys(s3) == ["vaults/one/config", "vaults/one/data/" + "ab" * 16]
    assert sorted(store.list()) == ["config", "data/" + "ab" * 16]
    root = S3Store.from_url("s3://photos")
    root.put("config", b"top")
    assert root.get("config") == b"top"
    assert store.get("config") == b"c"
    assert "config" in raw_keys(s3)


def test_prefix_isolation(s3):
    a = S3Store.from_url("s3://photos/a")
    ab = S3Store.from_url("s3://photos/ab")  # a string prefix of "a" must not leak into it, nor back
    for store, tag in ((a, b"A"), (ab, b"AB")):
        store.put("config", tag)
        store.put("journal/" + "01" * 16, tag, if_none_match=True)  # same key, other vault: no conflict
        store.put("data/" + "cd" * 16, tag)
    assert sorted(a.list()) == sorted(ab.list()) == ["config", "data/" + "cd" * 16, "journal/" + "01" * 16]
    assert a.get("config") == b"A" and ab.get("config") == b"AB"
    a.delete("config")
    assert not a.exists("config") and ab.get("config") == b"AB"
    assert list(a.list("config")) == [] and list(ab.list("config")) == ["config"]
    assert a.stat("data/" + "cd" * 16) == 1 and ab.stat("data/" + "cd" * 16) == 2


def test_folder_marker_is_not_a_key(s3):
    s3.put_object(Bucket=BUCKET, Key="vault/", Body=b"")  # what an S3 console's "create folder" leaves
    store = S3Store.from_url("s3://photos/vault")
    store.put("config", b"c")
    assert list(store.list()) == ["config"]


def test_list_paginates_past_1000(s3):
    store = S3Store.from_url("s3://photos/many")
    keys = sorted(f"data/{i:032x}" for i in range(1100))
    with ThreadPoolExecutor(store.capabilities.max_connections) as pool:  # one store, many threads
        list(pool.map(lambda k: store.put(k, b"x"), keys))
    calls = []
    store._client().meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    assert sorted(store.list()) == keys
    assert len(calls) == 2  # moto's (and S3's) page limit is 1000
    calls.clear()
    store.page_size = 100
    assert sorted(store.list("data/" + "0" * 30)) == keys[:256]
    assert len(calls) == 3


# ------------------------------------------------------------------ ranges and conditional writes


def test_range_header_sent(s3):
    store = S3Store(BUCKET)
    data = os.urandom(1000)
    store.put("data/" + "ab" * 16, data)
    seen = []
    store._client().meta.events.register(
        "before-send.s3.GetObject", lambda request, **kw: seen.append(request.headers.get("Range")))
    assert store.get("data/" + "ab" * 16, 10, 20) == data[10:30]
    assert store.get("data/" + "ab" * 16, 990) == data[990:]
    assert store.get("data/" + "ab" * 16) == data
    assert store.get("data/" + "ab" * 16, 1000, 5) == b""  # 416 from S3: nothing there
    assert seen == [b"bytes=10-29", b"bytes=990-", None, b"bytes=1000-1004"]
    with pytest.raises(StoreError):
        store.get("data/" + "ab" * 16, -1, 5)


def test_range_ignored_by_server_is_cut_locally(s3, monkeypatch):
    store = S3Store(BUCKET)
    data = bytes(range(200))
    store.put("k", data)
    client = store._client()
    real = client.get_object

    def no_range(**kw):  # a server that answers 200 with the whole object
        kw.pop("Range", None)
        resp = real(**kw)
        resp.pop("ContentRange", None)
        return resp

    monkeypatch.setattr(client, "get_object", no_range)
    assert store.get("k", 50, 10) == data[50:60]
    assert store.get("k", 190) == data[190:]


def test_if_none_match_conflict_409_is_retried(s3, monkeypatch):
    store = S3Store(BUCKET)
    store.conflict_backoff = (0, 0, 0)
    client = store._client()
    real = client.put_object
    conflicts = [2]

    def put(**kw):
        if conflicts[0]:
            conflicts[0] -= 1
            raise client_error("ConditionalRequestConflict", 409)
        return real(**kw)

    monkeypatch.setattr(client, "put_object", put)
    store.put("journal/" + "01" * 16, b"mine", if_none_match=True)
    assert store.get("journal/" + "01" * 16) == b"mine"

    conflicts[0] = 100  # a write in flight that never settles: the caller must hear about it
    with pytest.raises(PreconditionFailedError):
        store.put("journal/" + "02" * 16, b"mine", if_none_match=True)
    assert not store.exists("journal/" + "02" * 16)


def test_lost_response_of_conditional_put_is_not_a_conflict(s3):
    """The PUT lands, its response is lost, botocore retries and gets 412 on our own object."""
    store = S3Store(BUCKET)
    key = "journal/" + "03" * 16
    body = os.urandom(300)
    dropped = []

    def land_then_drop(request, **kw):
        if not dropped:
            dropped.append(1)
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)  # the first attempt reached the bucket ...
            raise ConnectionClosedError(endpoint_url=request.url)  # ... and its answer never came back

    store._client().meta.events.register_first("before-send.s3.PutObject", land_then_drop)
    store.put(key, body, if_none_match=True)
    assert dropped and store.get(key) == body
    # A real second writer (other bytes) still loses visibly.
    with pytest.raises(PreconditionFailedError):
        store.put(key, os.urandom(300), if_none_match=True)
    assert store.get(key) == body


def test_lost_response_of_versioned_put_finds_its_own_bytes(s3):
    """A lease renewal (If-Match) lands, its answer is lost, the retry meets 412: still our write."""
    store = S3Store(BUCKET)
    t1 = store.put_versioned("lease", b"first", expect=None)
    dropped = []

    def land_then_drop(request, **kw):
        if not dropped:
            dropped.append(1)
            s3.put_object(Bucket=BUCKET, Key="lease", Body=b"second")
            raise ConnectionClosedError(endpoint_url=request.url)

    store._client().meta.events.register_first("before-send.s3.PutObject", land_then_drop)
    t2 = store.put_versioned("lease", b"second", expect=t1)
    assert dropped and store.get_versioned("lease") == (b"second", t2)
    with pytest.raises(PreconditionFailedError):
        store.put_versioned("lease", b"third", expect=t1)  # another device with a stale tag loses


def test_plain_put_overwrites_without_condition(s3):
    store = S3Store(BUCKET)
    sent = []
    store._client().meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: sent.append(request.headers.get("If-None-Match")))
    store.put("config", b"a")
    store.put("config", b"b")
    store.put("journal/" + "01" * 16, b"j", if_none_match=True)
    assert sent == [None, None, b"*"]
    assert store.get("config") == b"b"


# ------------------------------------------------------------------ clear errors


def test_no_such_bucket(s3):
    store = S3Store.from_url("s3://no-such-bucket/vault")
    with pytest.raises(S3BucketNotFoundError, match="bucket no-such-bucket does not exist"):
        store.check_access()
    for call in (lambda: store.get("config"), lambda: store.put("config", b"x"), lambda: list(store.list()),
                 lambda: store.put("config", b"x", if_none_match=True)):
        with pytest.raises(S3BucketNotFoundError):
            call()
    S3Store(BUCKET).check_access()  # the bucket that exists passes


def test_unreachable_endpoint_fails_fast_and_clearly():
    store = S3Store.from_url("s3://photos/vault", endpoint_url=CLOSED_PORT, max_attempts=2, connect_timeout=1,
                             read_timeout=1)
    start = time.monotonic()
    with pytest.raises(S3UnreachableError) as ei:
        store.check_access()
    assert f"cannot reach the S3 endpoint {CLOSED_PORT}" in str(ei.value)
    assert isinstance(ei.value, StoreError)
    for call in (lambda: store.get("config", 0, 10), lambda: store.put("config", b"x"), lambda: store.stat("x"),
                 lambda: store.exists("x"), lambda: list(store.list()), lambda: store.delete("x")):
        with pytest.raises(S3UnreachableError):
            call()
    assert time.monotonic() - start < 30  # a deadline against hanging, not a benchmark


@pytest.mark.parametrize("code,status", [("AccessDenied", 403), ("InvalidAccessKeyId", 403),
                                         ("SignatureDoesNotMatch", 403), ("403", 403), ("ExpiredToken", 400)])
def test_refused_credentials(code, status):
    store = S3Store(BUCKET)
    with Stubber(store._client()) as stub:
        stub.add_client_error("head_bucket", service_error_code=code, http_status_code=status)
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(S3AccessDeniedError, match=f"the credentials were refused for bucket {BUCKET}"):
            store.check_access()
        with pytest.raises(S3AccessDeniedError):
            store.put("config", b"x")


def test_no_credentials(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(BUCKET, endpoint_url=CLOSED_PORT, max_attempts=1)  # never reached: signing fails first
    with pytest.raises(S3NoCredentialsError, match="no S3 credentials") as ei:
        store.check_access()
    assert isinstance(ei.value, S3AccessDeniedError)


def test_other_failures_are_store_errors(s3):
    store = S3Store(BUCKET, max_attempts=1)
    with Stubber(store._client()) as stub:
        stub.add_client_error("get_object", service_error_code="InternalError", http_status_code=500)
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        stub.add_client_error("delete_object", service_error_code="NoSuchKey", http_status_code=404)
        with pytest.raises(StoreError) as ei:
            store.get("config")
        assert type(ei.value) is StoreError and "InternalError" in str(ei.value)
        with pytest.raises(StoreNotFoundError):
            store.get("config")
        assert not store.exists("config")
        store.delete("config")  # a server that answers 404 for a missing key: still idempotent

    store.put("k", b"v")

    def timeout(request, **kw):
        raise ReadTimeoutError(endpoint_url=request.url)

    store._client().meta.events.register_first("before-send.s3.GetObject", timeout)
    with pytest.raises(StoreError) as ei:
        store.get("k")
    assert not isinstance(ei.value, S3UnreachableError | StoreNotFoundError)
    with pytest.raises(StoreError):
        store.get("../k")


def test_cli_one_clear_line_for_store_errors(s3, capsys, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PW)
    assert cli.main(["init", "s3://no-such-bucket/v", "--password-file", str(pw)]) == cli.EXIT_USER
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bucket no-such-bucket does not exist" in err[0], err
    assert cli.main(["init", "s3://photos/v", "--password-file", str(pw), "--endpoint-url", "nonsense"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_unreachable_endpoint(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    pw = tmp_path / "pw"
    pw.write_text(PW)
    for argv in (["init", "s3://photos/v"], ["check", "s3://photos/v"], ["passwd", "s3://photos/v"]):
        assert cli.main(argv + ["--password-file", str(pw), "--endpoint-url", CLOSED_PORT]) == cli.EXIT_USER
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"cannot reach the S3 endpoint {CLOSED_PORT}" in err[0], err
    args = cli.build_parser().parse_args(["mount", "s3://photos/v", "/mnt/photos", "--endpoint-url", CLOSED_PORT])
    assert args.endpoint_url == CLOSED_PORT


# ------------------------------------------------------------------ a vault end to end


class CountingStore:
    """Delegates to a store and records every get as (key, offset, length)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.gets: list[tuple[str, int, int | None]] = []

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append((key, offset, length))
        return self.inner.get(key, offset, length)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _write(fs: FileSystem, parent: int, name: bytes, data: bytes) -> int:
    ino, fh = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, UID, GID)
    for off in range(0, len(data), MiB):  # FUSE-sized pieces
        assert fs.write(fh, off, data[off:off + MiB]) == len(data[off:off + MiB])
    fs.flush(fh)
    fs.release(fh)
    return ino


def _read(fs: FileSystem, path: bytes, offset: int = 0, size: int | None = None) -> bytes:
    ino = fs.resolve(path)
    fh = fs.open(ino, os.O_RDONLY)
    try:
        return fs.read(fh, offset, fs.getattr(ino)["st_size"] + 1 if size is None else size)
    finally:
        fs.release(fh)


FILES = {
    b"/IMG_0001.CR3": os.urandom(5 * MiB + 12345),  # more than one 4 MiB chunk
    b"/IMG_0001.xmp": b"<x:xmpmeta>rating 5</x:xmpmeta>",
    b"/empty": b"",
    b"/2024/wedding/IMG_0002.jpg": os.urandom(300_000),
}


def _populate(fs: FileSystem) -> None:
    d = fs.mkdir(1, b"2024", 0o755, UID, GID)
    d = fs.mkdir(d, b"wedding", 0o755, UID, GID)
    for path, data in FILES.items():
        head, _, name = path.rpartition(b"/")
        _write(fs, fs.resolve(head or b"/"), name, data)


def _compare(fs: FileSystem) -> None:
    for path, data in FILES.items():
        got = _read(fs, path)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path


def test_vault_round_trip_on_s3(s3, tmp_path):
    store = S3Store.from_url("s3://photos/vault")
    vault.create(store, PW, with_recovery=False)
    fs = FileSystem(vault.open_vault(store, passphrase=PW), state_dir=str(tmp_path / "state"))
    _populate(fs)
    _compare(fs)
    fs.close()

    again = S3Store.from_url("s3://photos/vault")  # a fresh client: everything comes from the bucket
    fs = FileSystem(vault.open_vault(again, passphrase=PW), state_dir=str(tmp_path / "state"))
    try:
        _compare(fs)
        assert sorted(n for n, _ in fs.readdir(fs.resolve(b"/2024/wedding")) if n not in (b".", b"..")) == [
            b"IMG_0002.jpg"]
    finally:
        fs.close()
    keys = raw_keys(s3)
    assert keys and all(k.startswith("vault/") for k in keys)
    assert not [k for k in keys if b"IMG" in k.encode() or b"wedding" in k.encode()]
    assert any(k.startswith("vault/data/") for k in keys) and any(k.startswith("vault/journal/") for k in keys)


def test_small_read_of_big_file_is_one_ranged_get(s3, tmp_path):
    store = CountingStore(S3Store.from_url("s3://photos/ranged"))
    vault.create(store, PW, with_recovery=False)
    big = os.urandom(9 * MiB)
    fs = FileSystem(vault.open_vault(store, passphrase=PW))
    _write(fs, 1, b"clip.mp4", big)
    fs.close()

    fs = FileSystem(vault.open_vault(store, passphrase=PW))  # cold block cache
    ranges = []
    store.inner._client().meta.events.register(
        "before-send.s3.GetObject", lambda request, **kw: ranges.append(request.headers.get("Range")))
    store.gets.clear()
    try:
        offset = 4 * MiB + 1_000_000  # the middle of the second chunk
        assert _read(fs, b"/clip.mp4", offset, 10) == big[offset:offset + 10]
    finally:
        fs.close()
    data_gets = [g for g in store.gets if g[0].startswith("data/")]
    assert len(data_gets) == 1, store.gets
    _, off, length = data_gets[0]
    assert off > 0 and length is not None and length <= 2 * (64 * 1024 + 64)  # a block or two, not 4 MiB
    assert ranges == [f"bytes={off}-{off + length - 1}".encode()]


# ------------------------------------------------------------------ moto's server on 127.0.0.1


def test_moto_server_cli_init_and_round_trip(tmp_path, capsys):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"srv-{os.urandom(4).hex()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/vault"
        pw = tmp_path / "pw"
        pw.write_text(PW)

        assert cli.main(["init", url, "--endpoint-url", endpoint, "--password-file", str(pw),
                         "--no-recovery-key"]) == cli.EXIT_OK
        assert f"created vault in {url}" in capsys.readouterr().out
        assert cli.main(["init", url, "--endpoint-url", endpoint, "--password-file", str(pw)]) == cli.EXIT_USER
        assert "already holds a vault" in capsys.readouterr().err

        store = open_store(url, endpoint_url=endpoint)
        assert store._client().meta.config.s3["addressing_style"] == "path"
        store.check_access()
        fs = FileSystem(vault.open_vault(store, passphrase=PW), state_dir=str(tmp_path / "state"))
        _populate(fs)
        fs.close()
        fs = FileSystem(vault.open_vault(open_store(url, endpoint_url=endpoint), passphrase=PW),
                        state_dir=str(tmp_path / "state"))
        try:
            _compare(fs)
            assert _read(fs, b"/IMG_0001.CR3", 3 * MiB, 10) == FILES[b"/IMG_0001.CR3"][3 * MiB:3 * MiB + 10]
        finally:
            fs.close()

        assert cli.main(["check", url, "--endpoint-url", endpoint, "--password-file", str(pw),
                         "--read-data"]) == cli.EXIT_OK
        assert "no problems found" in capsys.readouterr().out
        raw = boto3.client("s3", endpoint_url=endpoint)
        keys = raw_keys(raw, bucket)
        assert keys and all(k.startswith("vault/") for k in keys)
    finally:
        server.stop()
