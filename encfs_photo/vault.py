"""Create and open a vault: the config object, key slots and subkeys.

A vault in a store is:

* ``config``: format version, vault id, block and chunk sizes, feature flags,
  authenticated by an HMAC under a subkey of the master key.
* ``keys/<slot id>``: one object per key slot, each wrapping the master key
  under a key derived from one secret (passphrase, recovery key, key file)
  with Argon2id. Adding or changing a slot writes a new object and never
  touches the config or the data.

Callers: `cli` (init, passwd), `mount`/tests (open). Imports crypto and the
store contract only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import unicodedata
from dataclasses import dataclass, field, replace

from . import crypto
from .crypto import KdfParams
from .errors import NotAVaultError, StoreNotFoundError, VaultError, WrongPassphraseError
from .store.base import ObjectStore

log = logging.getLogger(__name__)

# 2: key slots and journal batches carry a key commitment (FORMAT.md 12); a
# version 1 vault (made before it) is refused rather than opened without one.
FORMAT_VERSION = 2
KNOWN_FEATURES: frozenset[str] = frozenset()
DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
CONFIG_KEY = "config"
SLOT_PREFIX = "keys/"

SLOT_PASSPHRASE = "passphrase"
SLOT_RECOVERY = "recovery"
SLOT_KEYFILE = "keyfile"
SLOT_KINDS = (SLOT_PASSPHRASE, SLOT_RECOVERY, SLOT_KEYFILE)

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


KDF_TARGET_SECONDS = 1.0
_calibrated: KdfParams | None = None


def mem_available_kib() -> int:
    """MemAvailable from /proc/meminfo; 1 GiB where there is no such file (other systems)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 1024 * 1024


def default_kdf_params() -> KdfParams:
    """Argon2id parameters for a new passphrase slot: calibrated to about 1 s on this machine.

    Calibrated once per process (init makes several slots). ENCFS_PHOTO_FAST_KDF=1
    selects the floor instead; tests use it. It can only make *new* slots
    cheaper down to the floor, never below it.
    """
    global _calibrated
    salt = crypto.random_bytes(16)
    if os.environ.get("ENCFS_PHOTO_FAST_KDF") == "1":
        return KdfParams(salt, KdfParams.FLOOR_ITERATIONS, KdfParams.FLOOR_MEMORY_KIB, 1)
    if _calibrated is None:
        _calibrated = crypto.calibrate_kdf(KDF_TARGET_SECONDS, mem_available_kib(), time.perf_counter)
        log.info("Argon2id calibrated: t=%d, m=%d KiB, p=%d", _calibrated.iterations, _calibrated.memory_kib,
                 _calibrated.lanes)
    return replace(_calibrated, salt=salt)


def floor_kdf_params() -> KdfParams:
    """For high-entropy secrets (recovery key, key file): brute force is hopeless anyway."""
    return KdfParams(crypto.random_bytes(16), KdfParams.FLOOR_ITERATIONS, KdfParams.FLOOR_MEMORY_KIB, 1)


def normalize_passphrase(passphrase: str) -> bytes:
    # NFC, so the same passphrase typed on macOS and Linux opens the vault.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def new_recovery_key() -> str:
    """160 random bits as 32 base32 characters in groups of four."""
    raw = base64.b32encode(crypto.random_bytes(20)).decode()
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def normalize_recovery_key(text: str) -> bytes | None:
    s = "".join(ch for ch in text.upper() if ch not in "- \t\r\n")
    s = s.replace("0", "O").replace("1", "I").replace("8", "B")
    if len(s) != 32 or any(ch not in _B32 for ch in s):
        return None
    return s.encode()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _int(value: object) -> int:
    # JSON ints only: bool, float (and so Infinity/NaN, which int() would turn
    # into OverflowError) and strings are refused as malformed.
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _obj(raw: bytes) -> dict:
    d = json.loads(raw)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return d


@dataclass
class Config:
    vault_id: bytes
    block_size: int
    chunk_size: int
    features: list[str] = field(default_factory=list)
    format: int = FORMAT_VERSION
    cipher: str = "AES-256-GCM"

    def body(self) -> dict:
        return {
            "format": self.format,
            "vault_id": self.vault_id.hex(),
            "cipher": self.cipher,
            "block_size": self.block_size,
            "chunk_size": self.chunk_size,
            "features": sorted(self.features),
        }

    def to_bytes(self, config_key: bytes) -> bytes:
        body = self.body()
        body["mac"] = crypto.mac(config_key, _canonical(self.body())).hex()
        return json.dumps(body, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> tuple[Config, bytes]:
        """(config, mac) from the stored object; raises NotAVaultError on garbage."""
        try:
            d = _obj(raw)
            features = d.get("features", [])
            if not isinstance(features, list):
                raise ValueError("features is not a list")
            cfg = cls(
                vault_id=bytes.fromhex(_str(d["vault_id"])),
                block_size=_int(d["block_size"]),
                chunk_size=_int(d["chunk_size"]),
                features=[_str(f) for f in features],
                format=_int(d["format"]),
                cipher=_str(d["cipher"]),
            )
            tag = bytes.fromhex(_str(d["mac"]))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise NotAVaultError(f"the store's config is not an encfs-photo vault config ({exc})") from None
        if cfg.format == 1:
            raise VaultError("this vault was made by an older encfs-photo (format 1, before key commitment); "
                             "this version opens format 2 only")
        if cfg.format != FORMAT_VERSION:
            raise VaultError(f"vault format {cfg.format} is not supported by this version (knows {FORMAT_VERSION})")
        unknown = set(cfg.features) - KNOWN_FEATURES
        if unknown:
            raise VaultError(f"vault uses features this version does not know: {', '.join(sorted(unknown))}")
        if cfg.cipher != "AES-256-GCM" or len(cfg.vault_id) != crypto.ID_LEN:
            raise NotAVaultError("vault config names an unknown cipher or a bad vault id")
        if not (4096 <= cfg.block_size <= 1 << 20) or cfg.chunk_size % cfg.block_size or \
                not (cfg.block_size <= cfg.chunk_size <= 64 << 20):
            raise NotAVaultError("vault config has implausible block or chunk sizes")
        return cfg, tag


class SlotFormatError(VaultError):
    """A key slot object that does not parse."""


@dataclass
class KeySlot:
    slot_id: bytes
    kind: str
    params: KdfParams
    wrapped: bytes
    commitment: bytes  # crypto.key_commitment(KEK): only the slot's own KEK may try to unwrap it

    def to_bytes(self) -> bytes:
        return json.dumps({
            "commit": _b64(self.commitment),
            "kind": self.kind,
            "kdf": {
                "name": "argon2id", "salt": _b64(self.params.salt), "iterations": self.params.iterations,
                "memory_kib": self.params.memory_kib, "lanes": self.params.lanes,
            },
            "wrapped": _b64(self.wrapped),
        }, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def parse(cls, slot_id: bytes, raw: bytes) -> KeySlot:
        """Parse a slot object; SlotFormatError for anything malformed (never another exception)."""
        try:
            d = _obj(raw)
            k = d["kdf"]
            if not isinstance(k, dict) or k.get("name") != "argon2id" or d.get("kind") not in SLOT_KINDS:
                raise ValueError("unknown slot kind or KDF")
            params = KdfParams(_unb64(_str(k["salt"])), _int(k["iterations"]), _int(k["memory_kib"]),
                               _int(k["lanes"]))
            commitment = _unb64(_str(d["commit"]))
            if len(commitment) != crypto.COMMIT_LEN:
                raise ValueError("key commitment is not 32 bytes")
            return cls(slot_id, d["kind"], params, _unb64(_str(d["wrapped"])), commitment)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise SlotFormatError(f"key slot {slot_id.hex()} is malformed ({exc})") from None

    def describe(self) -> dict:
        """What `key list` shows: no secret, nothing the store does not already show."""
        return {"id": self.slot_id.hex(), "kind": self.kind, "kdf": "argon2id", "iterations": self.params.iterations,
                "memory_kib": self.params.memory_kib, "lanes": self.params.lanes}


class Vault:
    """An unlocked vault: config, subkeys and the store. Keys live only here."""

    def __init__(self, store: ObjectStore, config: Config, master: bytes) -> None:
        self.store = store
        self.config = config
        vid = config.vault_id
        self.vault_id = vid
        self.block_size = config.block_size
        self.chunk_size = config.chunk_size
        self.content_key = crypto.subkey(master, vid, crypto.LABEL_CONTENT)
        self.meta_key = crypto.subkey(master, vid, crypto.LABEL_META)
        self.names_key = crypto.subkey(master, vid, crypto.LABEL_NAMES)
        self.local_key = crypto.subkey(master, vid, crypto.LABEL_LOCAL)
        self._master = master
        self.opened_slot: KeySlot | None = None

    def add_slot(self, kind: str, secret: bytes, params: KdfParams | None = None) -> bytes:
        """Wrap the master key under a new secret; returns the new slot id."""
        if kind not in SLOT_KINDS:
            raise ValueError(kind)
        params = params or (default_kdf_params() if kind == SLOT_PASSPHRASE else floor_kdf_params())
        slot_id = crypto.random_bytes(8)
        kek = crypto.derive_kek(secret, params)
        wrapped = crypto.wrap_master(kek, self._master, self.vault_id, slot_id, kind, params)
        slot = KeySlot(slot_id, kind, params, wrapped, crypto.key_commitment(kek))
        self.store.put(SLOT_PREFIX + slot_id.hex(), slot.to_bytes(), if_none_match=True)
        return slot_id

    def remove_slot(self, slot_id: bytes, *, replacing_opened: bool = False) -> None:
        """Delete one slot object; no data and no other slot changes.

        Refuses the last slot, and the slot this vault was unlocked with: that
        it opened proves nothing about the others, so the caller must unlock
        with another slot first (which proves that one works). ``passwd`` sets
        ``replacing_opened``: it has just stored the slot that replaces it.
        """
        slots = list_slots(self.store)
        if slot_id not in {s.slot_id for s in slots}:
            raise VaultError(f"no key slot {slot_id.hex()} in this vault")
        if len(slots) == 1:
            raise VaultError("refusing to remove the last key slot: the vault would be lost")
        if (not replacing_opened and self.opened_slot is not None and self.opened_slot.slot_id == slot_id):
            raise VaultError(f"refusing to remove key slot {slot_id.hex()}: it is the one you unlocked with; "
                             "unlock with another slot's secret (another passphrase, the recovery key or "
                             "--key-file) to show that one still opens the vault, then remove this one")
        self.store.delete(SLOT_PREFIX + slot_id.hex())

    def lock(self) -> None:
        """Drop every key reference (Python cannot scrub memory; see SECURITY.md)."""
        for name in ("content_key", "meta_key", "names_key", "local_key", "_master"):
            setattr(self, name, b"")


def list_slots(store: ObjectStore) -> list[KeySlot]:
    slots = []
    for key in sorted(store.list(SLOT_PREFIX)):
        try:
            slots.append(KeySlot.parse(bytes.fromhex(key[len(SLOT_PREFIX):]), store.get(key)))
        except (ValueError, SlotFormatError) as exc:
            log.warning("ignoring unreadable key slot %s: %s", key, exc)
        except StoreNotFoundError:
            continue
    return slots


def is_vault(store: ObjectStore) -> bool:
    return store.exists(CONFIG_KEY)


def create(store: ObjectStore, passphrase: str, *, block_size: int = DEFAULT_BLOCK_SIZE,
           chunk_size: int = DEFAULT_CHUNK_SIZE, with_recovery: bool = True,
           key_file_secret: bytes | None = None) -> tuple[Vault, str | None]:
    """Create a vault; returns it and the recovery key (shown to the user once)."""
    if is_vault(store):
        raise VaultError(f"{store.describe()} already holds a vault")
    config = Config(vault_id=crypto.random_bytes(crypto.ID_LEN), block_size=block_size, chunk_size=chunk_size)
    master = crypto.random_bytes(crypto.KEY_LEN)
    vault = Vault(store, config, master)
    # Slots before the config: a crash in between leaves no config, so the
    # folder is "not a vault" rather than a vault nobody can open.
    if passphrase:
        vault.add_slot(SLOT_PASSPHRASE, normalize_passphrase(passphrase))
    if key_file_secret is not None:
        vault.add_slot(SLOT_KEYFILE, key_file_secret)
    recovery = None
    if with_recovery:
        recovery = new_recovery_key()
        norm = normalize_recovery_key(recovery)
        assert norm is not None
        vault.add_slot(SLOT_RECOVERY, norm)
    store.put(CONFIG_KEY, config.to_bytes(crypto.subkey(master, config.vault_id, crypto.LABEL_CONFIG)),
              if_none_match=True)
    return vault, recovery


def read_config(store: ObjectStore) -> tuple[Config, bytes]:
    try:
        raw = store.get(CONFIG_KEY)
    except StoreNotFoundError:
        raise NotAVaultError(f"{store.describe()} is not an encfs-photo vault (no config)") from None
    return Config.parse(raw)


def open_vault(store: ObjectStore, *, passphrase: str | None = None, key_file_secret: bytes | None = None) -> Vault:
    """Unlock with a passphrase, a recovery key (given as the passphrase) or a key file."""
    config, tag = read_config(store)
    slots = list_slots(store)
    if not slots:
        raise NotAVaultError(f"{store.describe()}: the vault has no key slots")
    attempts: list[tuple[KeySlot, bytes]] = []
    if key_file_secret is not None:
        attempts += [(s, key_file_secret) for s in slots if s.kind == SLOT_KEYFILE]
    if passphrase is not None:
        rec = normalize_recovery_key(passphrase)
        rec_attempts = [(s, rec) for s in slots if s.kind == SLOT_RECOVERY] if rec else []
        pw_attempts = [(s, normalize_passphrase(passphrase)) for s in slots if s.kind == SLOT_PASSPHRASE]
        attempts += rec_attempts + pw_attempts
    floor_refused = False
    for slot, secret in attempts:
        try:
            kek = crypto.derive_kek(secret, slot.params)
        except VaultError as exc:
            floor_refused = True
            log.warning("key slot %s refused: %s", slot.slot_id.hex(), exc)
            continue
        master = crypto.unwrap_master(kek, slot.wrapped, config.vault_id, slot.slot_id, slot.kind, slot.params,
                                      slot.commitment)
        if master is None:
            continue
        config_key = crypto.subkey(master, config.vault_id, crypto.LABEL_CONFIG)
        if not crypto.mac_ok(config_key, _canonical(config.body()), tag):
            raise VaultError("the vault config has been tampered with (its MAC does not match); refusing to open")
        vault = Vault(store, config, master)
        vault.opened_slot = slot
        return vault
    if floor_refused:
        raise WrongPassphraseError("no key slot opened (a slot with KDF parameters outside the safe range "
                                   "was refused)")
    if key_file_secret is not None and passphrase is None:
        raise WrongPassphraseError("the key file does not open this vault")
    raise WrongPassphraseError("wrong passphrase")
