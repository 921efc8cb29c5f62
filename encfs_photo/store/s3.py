"""S3Store: objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, B2, Wasabi, R2), through boto3.

A STORE ``s3://BUCKET[/PREFIX]`` keeps object ``key`` under ``PREFIX/key``.
The endpoint is the ``endpoint_url`` argument, else boto3's own
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, else AWS; credentials and region
come from boto3's usual chain (environment, profile, role). A custom endpoint
(MinIO-like) gets path-style addressing and checksums only where the API
requires them, which every S3-compatible server accepts.

The contract is store/base.py's. S3 specifics:

* ``put`` is one PutObject, atomic and durable when it returns (``durable``
  and ``flush`` have nothing to do). ``if_none_match`` sends
  ``If-None-Match: *``; 412 becomes PreconditionFailedError. A conditional PUT
  whose first response was lost (botocore retried it, or the caller did) can
  meet its own object: a 412 is checked against the stored bytes, and
  identical bytes count as success. A 409 ConditionalRequestConflict (a write to the key in flight) is
  retried a few times before it too becomes PreconditionFailedError.
* ``put_versioned`` sends ``If-None-Match: *`` or ``If-Match: ETAG``; the tag
  is the ETag S3 returns (opaque, quotes included).
* ``get`` with an offset or length is one ranged GET; a range that starts at
  or past the end (416) returns b"", as the contract asks.
* Every botocore/urllib3 failure becomes a StoreError; the ones a user must act
  on have their own classes below, with a one-line message.

Callers: ``store.open_store`` (the CLI reaches it through that). Imports boto3,
botocore and errors only. Threading: one botocore client per store, shared by
every thread (botocore clients are thread-safe), with a connection pool of
``capabilities.max_connections``; a forked child makes its own client.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import botocore.exceptions as bce
from botocore.config import Config
from urllib3.exceptions import HTTPError as URLLib3Error

from ..errors import PreconditionFailedError, StoreError, StoreNotFoundError
from .base import StoreCapabilities

DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_MAX_ATTEMPTS = 5  # in all, the first included; "standard" mode backs off with jitter, capped at 20 s
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
CONFLICT_BACKOFF = (0.2, 0.5, 1.0)  # seconds between retries of a 409 ConditionalRequestConflict

_BUCKET_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")  # what botocore accepts; S3 itself is stricter
_ACCESS_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "AccountProblem", "ExpiredToken", "Forbidden", "InvalidAccessKeyId",
    "InvalidClientTokenId", "InvalidSecurity", "InvalidToken", "SignatureDoesNotMatch", "TokenRefreshRequired",
    "UnauthorizedAccess", "UnrecognizedClientException", "403", "401",
})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_UNREACHABLE = (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ProxyConnectionError, bce.SSLError)
_NO_CREDENTIALS = (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)


class S3BucketNotFoundError(StoreError):
    """The bucket does not exist."""


class S3AccessDeniedError(StoreError):
    """The credentials were refused (unknown key, bad secret, or no permission on the bucket)."""


class S3NoCredentialsError(S3AccessDeniedError):
    """No S3 credentials were found in the environment, profile or role."""


class S3UnreachableError(StoreError):
    """The S3 endpoint cannot be reached (DNS, refused connection, timeout, TLS)."""


def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` -> (bucket, prefix without outer slashes). ValueError if malformed."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an S3 store URL: {url} (use s3://BUCKET[/PREFIX])")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket name (use s3://BUCKET[/PREFIX])")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"{url}: {bucket!r} is not a valid bucket name")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"{url}: the prefix may not contain empty, '.' or '..' parts")
    return bucket, prefix


def _configured_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ[name]))
    except (KeyError, ValueError):
        return default


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, max_attempts: int | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT,
                 page_size: int = 1000) -> None:
        if endpoint_url is not None and not re.match(r"^https?://[^/\s]+", endpoint_url):
            raise ValueError(f"bad endpoint URL {endpoint_url!r} (use http://HOST[:PORT] or https://HOST[:PORT])")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._key_prefix = self.prefix + "/" if self.prefix else ""
        self.endpoint_url = endpoint_url
        self.capabilities = StoreCapabilities(conditional_writes=True, max_connections=max_connections, local=False)
        self.page_size = page_size
        self.conflict_backoff: tuple[float, ...] = CONFLICT_BACKOFF
        if max_attempts is None:  # boto3's own variable wins over our default
            max_attempts = _env_int("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
        custom = endpoint_url or _configured_endpoint()
        options: dict = {
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"},  # "max_attempts" counts retries only
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": max_connections,
        }
        if custom:
            # MinIO-like servers: no bucket-name DNS, and not every one knows the
            # CRC checksums botocore >= 1.36 sends by default. The content is
            # authenticated end to end anyway (AEAD), so nothing is lost.
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        self._config = Config(**options)
        self._lock = threading.Lock()
        self._client_pid = -1
        self._client_obj = None
        self._client()  # fail now (bad profile, bad endpoint syntax) rather than on the first call

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, **options) -> S3Store:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url, **options)

    # ---- plumbing

    def _client(self):
        pid = os.getpid()
        if self._client_pid != pid:  # first use, or a forked child: never share the parent's sockets
            with self._lock:
                if self._client_pid != pid:
                    with self._errors("connect", ""):
                        session = boto3.session.Session()
                        self._client_obj = session.client("s3", endpoint_url=self.endpoint_url,
                                                          config=self._config)
                    self._client_pid = pid
        return self._client_obj

    def _where(self) -> str:
        if self._client_obj is not None:
            return self._client_obj.meta.endpoint_url
        return self.endpoint_url or _configured_endpoint() or "AWS S3"

    def _k(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"bad object key {key!r}")
        return self._key_prefix + key

    def _translate(self, exc: Exception, op: str, key: str, bucket_op: bool = False) -> StoreError:
        """The project's error for a botocore/urllib3 failure of ``op`` on ``key``."""
        what = f"{self.describe()}: {op} {key}".rstrip()
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = err.get("Message") or code or f"HTTP {status}"
            if code == "NoSuchBucket" or (bucket_op and status == 404):
                return S3BucketNotFoundError(f"bucket {self.bucket} does not exist (at {self._where()})")
            if code in _NOT_FOUND_CODES or status == 404:
                return StoreNotFoundError(f"object {key} is missing from the store")
            if code in _ACCESS_CODES or status in (401, 403):
                return S3AccessDeniedError(f"the credentials were refused for bucket {self.bucket} "
                                           f"({code or status}: {message})")
            if code in ("PreconditionFailed", "412") or status == 412:
                return PreconditionFailedError(f"{key} exists (another writer?)")
            return StoreError(f"{what}: {code or status}: {message}")
        if isinstance(exc, _NO_CREDENTIALS):
            return S3NoCredentialsError(f"no S3 credentials found for bucket {self.bucket}: set "
                                        f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE ({exc})")
        if isinstance(exc, _UNREACHABLE):
            return S3UnreachableError(f"cannot reach the S3 endpoint {self._where()} ({exc})")
        if isinstance(exc, bce.ProfileNotFound):
            return StoreError(f"S3: {exc}")
        return StoreError(f"{what}: {exc}")

    @contextmanager
    def _errors(self, op: str, key: str, bucket_op: bool = False):
        try:
            yield
        except (bce.BotoCoreError, bce.ClientError, URLLib3Error, OSError) as exc:
            raise self._translate(exc, op, key, bucket_op) from exc

    # ---- the contract

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def check_access(self) -> None:
        """One cheap call (HeadBucket): raises the clear StoreError subclass if the bucket is unusable."""
        with self._errors("head bucket", "", bucket_op=True):
            self._client().head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, durable: bool = True) -> None:
        body = data if isinstance(data, bytes | bytearray) else bytes(data)
        args = {"Bucket": self.bucket, "Key": self._k(key), "Body": body}
        if not if_none_match:
            with self._errors("put", key):
                self._client().put_object(**args)
            return
        args["IfNoneMatch"] = "*"
        for pause in (*self.conflict_backoff, None):
            try:
                with self._errors("put", key):
                    self._client().put_object(**args)
                return
            except PreconditionFailedError:
                # Identical bytes are our own earlier attempt (ciphertext under a fresh
                # nonce never repeats): a lost response that botocore retried, or a
                # caller retrying after a timeout. Only this rare path pays the GET.
                if self._holds(key, body):
                    return
                raise
            except StoreError as exc:
                if not self._is_conflict(exc.__cause__):
                    raise
                if pause is None:  # still a write in flight on this key: someone else is writing it
                    raise PreconditionFailedError(f"{key}: a concurrent write is in progress "
                                                  "(another writer?)") from exc
                time.sleep(pause)

    @staticmethod
    def _is_conflict(exc: BaseException | None) -> bool:
        if not isinstance(exc, bce.ClientError):
            return False
        return (exc.response.get("Error", {}).get("Code") == "ConditionalRequestConflict"
                or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 409)

    def _holds(self, key: str, body: bytes) -> bool:
        try:
            return self.get(key) == body
        except StoreError:
            return False

    def flush(self) -> None:
        pass  # every put is durable when it returns

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors("get", key):
            resp = self._client().get_object(Bucket=self.bucket, Key=self._k(key))
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        return data, str(resp.get("ETag", ""))

    def put_versioned(self, key: str, data: bytes, *, expect: str | None) -> str:
        body = bytes(data)
        args = {"Bucket": self.bucket, "Key": self._k(key), "Body": body}
        if expect is None:
            args["IfNoneMatch"] = "*"
        else:
            args["IfMatch"] = expect
        try:
            with self._errors("put", key):
                return str(self._client().put_object(**args).get("ETag", ""))
        except (PreconditionFailedError, StoreNotFoundError) as exc:  # If-Match on a missing key is a 404
            # Our own write whose answer was lost (botocore retried it) finds our bytes.
            try:
                theirs, tag = self.get_versioned(key)
            except StoreNotFoundError:
                theirs, tag = None, ""
            if theirs == body:
                return tag
            raise PreconditionFailedError(f"{key} changed (another writer?)") from exc
        except StoreError as exc:
            if self._is_conflict(exc.__cause__):  # 409: a conditional write to the key is in flight
                raise PreconditionFailedError(f"{key}: a concurrent write is in progress") from exc
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise StoreError(f"bad range {offset}+{length} for {key}")
        if length == 0:  # HTTP has no empty range; a missing key must still be an error
            self.stat(key)
            return b""
        args = {"Bucket": self.bucket, "Key": self._k(key)}
        if offset or length is not None:
            args["Range"] = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        try:
            with self._errors("get", key):
                resp = self._client().get_object(**args)
                body = resp["Body"]
                try:
                    data = body.read()
                finally:
                    body.close()
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, bce.ClientError) and (
                    cause.response.get("Error", {}).get("Code") == "InvalidRange"
                    or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416):
                return b""  # the range starts at or past the end
            raise
        if "Range" in args and not resp.get("ContentRange"):  # a server that ignored Range: cut it here
            data = data[offset:] if length is None else data[offset:offset + length]
        return data

    def stat(self, key: str) -> int:
        with self._errors("stat", key):
            return int(self._client().head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except StoreNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _ in self.list_with_times(prefix):
            yield key

    def list_with_times(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        strip = len(self._key_prefix)
        paginator = self._client().get_paginator("list_objects_v2")
        with self._errors("list", prefix, bucket_op=True):
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix + prefix,
                                       PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][strip:]
                    if key:  # "PREFIX/" itself: a folder marker some consoles create
                        yield key, obj["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        try:
            with self._errors("delete", key):
                self._client().delete_object(Bucket=self.bucket, Key=self._k(key))
        except StoreNotFoundError:
            pass  # some S3-compatible servers answer 404 for a missing key

    def space(self) -> tuple[int, int] | None:
        return None
