"""Exception types shared by every layer.

Each class carries the errno the FUSE adapter returns for it, so the mapping
lives in one place (here) and `mount.py` only reads ``exc.errno``. Lower layers
raise these; nothing here imports anything of the project.
"""

from __future__ import annotations

import errno as _errno


class EncfsPhotoError(Exception):
    """Base of all project errors. ``errno`` is what a FUSE caller sees."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)


class NotFoundError(EncfsPhotoError):
    """No such file or directory."""

    errno = _errno.ENOENT


class ExistsError(EncfsPhotoError):
    """File exists."""

    errno = _errno.EEXIST


class NotEmptyError(EncfsPhotoError):
    """Directory not empty."""

    errno = _errno.ENOTEMPTY


class IsDirError(EncfsPhotoError):
    """Is a directory."""

    errno = _errno.EISDIR


class NotDirError(EncfsPhotoError):
    """Not a directory."""

    errno = _errno.ENOTDIR


class NameTooLongError(EncfsPhotoError):
    """File name longer than 255 bytes."""

    errno = _errno.ENAMETOOLONG


class InvalidError(EncfsPhotoError):
    """Invalid argument."""

    errno = _errno.EINVAL


class NoAttrError(EncfsPhotoError):
    """No such extended attribute."""

    errno = _errno.ENODATA


class RangeError(EncfsPhotoError):
    """Value too large for the caller's buffer."""

    errno = _errno.ERANGE


class ReadOnlyError(EncfsPhotoError):
    """The vault is mounted read-only."""

    errno = _errno.EROFS


class LoopError(EncfsPhotoError):
    """A directory cannot be moved into itself."""

    errno = _errno.EINVAL


class TooManyLinksError(EncfsPhotoError):
    """Hard links to directories are not allowed."""

    errno = _errno.EPERM


class BadFileHandleError(EncfsPhotoError):
    """Unknown or closed file handle."""

    errno = _errno.EBADF


class IntegrityError(EncfsPhotoError):
    """Authentication failed: the stored object is damaged, swapped, truncated or missing."""

    errno = _errno.EIO


class StoreError(EncfsPhotoError):
    """The store failed (I/O error, unreachable, refused)."""

    errno = _errno.EIO


class StoreNotFoundError(StoreError):
    """The store has no object under this key."""

    errno = _errno.EIO


class StoreFullError(StoreError):
    """The store's disk (or the cache disk) is full."""

    errno = _errno.ENOSPC


class PreconditionFailedError(StoreError):
    """A conditional write lost: the object already exists (another writer)."""

    errno = _errno.EIO


class VaultError(EncfsPhotoError):
    """A vault-level problem the user must act on (not a vault, wrong passphrase, ...)."""


class WrongPassphraseError(VaultError):
    """Wrong passphrase or key: no key slot opened."""


class NotAVaultError(VaultError):
    """The store does not hold an encfs-photo vault."""


class ConflictError(VaultError):
    """Another writer changed the vault's metadata concurrently."""
