"""Object stores: where ciphertext objects live. Stores never see plaintext.

`open_store(url)` maps a STORE argument to a store class; see base.py for the
contract every store keeps.
"""

from __future__ import annotations

from .base import ObjectStore, StoreCapabilities
from .local import LocalStore
from .memory import MemoryStore


def open_store(url: str, *, endpoint_url: str | None = None, **options: object) -> ObjectStore:
    """A store for STORE (a folder or ``s3://BUCKET[/PREFIX]``); ValueError for a bad URL.

    ``endpoint_url`` (S3 only) overrides boto3's ``AWS_ENDPOINT_URL``.
    """
    if url.startswith("s3://"):
        try:
            from .s3 import S3Store  # boto3 loads only when a bucket is used
        except ImportError as exc:
            raise ValueError(f"s3:// stores need boto3 ({exc}); install it with: pip install boto3") from None
        return S3Store.from_url(url, endpoint_url=endpoint_url)
    if endpoint_url:
        raise ValueError("--endpoint-url is only for s3:// stores")
    if "://" in url:
        raise ValueError(f"unsupported store URL: {url} (use a folder path or s3://BUCKET[/PREFIX])")
    return LocalStore(url)


__all__ = ["ObjectStore", "StoreCapabilities", "LocalStore", "MemoryStore", "open_store"]
