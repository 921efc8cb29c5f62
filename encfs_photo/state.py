"""What this device remembers of a vault between mounts: the newest journal head it stored or read.

A store rolled back to an older (valid, consistent) state cannot be told from
the store alone; the device that saw a newer head can. The record is a small
JSON file per vault, authenticated with the vault's local-state subkey so a
local attacker cannot lower it without the key. It holds no plaintext beyond
the vault id and a sequence number.

Callers: `meta.Journal`: check on every load; record the head after each
load of a non-empty journal (so a device that only reads remembers too, and
an accepted rollback lowers the record at once) and after each batch it
stores (the predecessor while that batch may still be superseded, FORMAT.md
9).
"""

from __future__ import annotations

import json
import logging
import os

from . import crypto
from .errors import VaultError

log = logging.getLogger(__name__)


class RollbackError(VaultError):
    """The store's metadata is older than what this device saw last."""


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "encfs-photo")


class RollbackGuard:
    def __init__(self, state_dir: str, vault_id: bytes, key: bytes, accept_rollback: bool = False) -> None:
        self.path = os.path.join(state_dir, vault_id.hex() + ".json")
        self.vault_id = vault_id
        self._key = key
        self.accept = accept_rollback
        self._recorded: tuple[int, bytes] | None = None  # what this process last wrote

    def _body(self, seq: int, head: bytes) -> bytes:
        return b"%s %d %s" % (self.vault_id.hex().encode(), seq, head.hex().encode())

    def load(self) -> tuple[int, bytes] | None:
        try:
            with open(self.path) as f:
                d = json.load(f)
            seq, head, tag = d["seq"], bytes.fromhex(d["head"]), bytes.fromhex(d["mac"])
            if type(seq) is not int:  # a float (Infinity too) or bool is not a seq
                raise ValueError("seq is not an integer")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            log.warning("device state %s is unreadable; rollback detection starts afresh", self.path)
            return None
        if not crypto.mac_ok(self._key, self._body(seq, head), tag):
            raise VaultError(f"device state {self.path} has been tampered with (bad MAC); "
                             "remove it only if you trust the store")
        return seq, head

    def check(self, seq: int, head: bytes, known: dict[int, bytes]) -> None:
        """Refuse a head older than the remembered one, or a different history at the same point.

        ``known`` maps sequence numbers whose batch hashes the caller verified
        to those hashes, so a remembered point inside them is compared exactly.
        """
        saved = self.load()
        if saved is None:
            return
        old_seq, old_head = saved
        problem = None
        if seq < old_seq:
            problem = (f"the store's metadata is older than this device saw (journal batch {seq} < {old_seq}): "
                       "the store was rolled back or its newest batches were deleted")
        elif old_seq in known and known[old_seq] != old_head:
            problem = f"journal batch {old_seq} differs from the one this device saw: the history was rewritten"
        if problem:
            if self.accept:
                log.warning("accepting rollback as asked: %s", problem)
                return
            log.error("integrity: %s", problem)
            raise RollbackError(problem + "; refusing to mount (use --accept-rollback to accept it)")

    def record(self, seq: int, head: bytes) -> None:
        if self._recorded == (seq, head):
            return  # folding commits on s3:// record the same predecessor again and again
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"vault_id": self.vault_id.hex(), "seq": seq, "head": head.hex(),
                       "mac": crypto.mac(self._key, self._body(seq, head)).hex()}, f)
        # Not fsynced: losing the newest record in a power cut only weakens
        # detection by the last few batches; an fsync per commit would not pay.
        os.replace(tmp, self.path)
        self._recorded = (seq, head)
