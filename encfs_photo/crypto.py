"""Cryptographic primitives: the only module that picks ciphers and builds AADs.

Pure functions over bytes; no I/O, no knowledge of files or paths. Callers:
`vault` (key slots, config MAC, subkeys), `content` (chunk blocks), `meta`
(journal batches). The byte layouts produced here are specified in
docs/FORMAT.md; changing any of them changes the format version.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError, VaultError

KEY_LEN = 32
ID_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16

# Labels of the HKDF subkeys; each purpose gets its own key so that a flaw in
# one use cannot be replayed against another.
LABEL_CONTENT = b"content"
LABEL_META = b"meta"
LABEL_NAMES = b"object-names"
LABEL_CONFIG = b"config-mac"
LABEL_LOCAL = b"local-state"

_HKDF_PREFIX = b"encfs-photo/v1 "
_CHUNK_AAD_MAGIC = b"EPC1"
# Version 2 of the journal and slot AADs: their objects carry a key commitment.
_JOURNAL_AAD_MAGIC = b"EPJ2"
_SLOT_AAD_MAGIC = b"EPK2"
_CLOSE_LOG_AAD_MAGIC = b"EPW1"
LABEL_COMMIT = b"key-commitment"
COMMIT_LEN = 32


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def hkdf(key: bytes, salt: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    """HKDF-SHA256; every derivation in the project goes through here."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=_HKDF_PREFIX + info).derive(key)


def subkey(master: bytes, vault_id: bytes, label: bytes) -> bytes:
    return hkdf(master, vault_id, label)


def key_commitment(key: bytes) -> bytes:
    """A 32-byte value that only ``key`` produces (HKDF-SHA256 is collision resistant in its key).

    AES-GCM is not key-committing: one ciphertext can be made to pass its tag
    under many keys (a partitioning oracle tests a batch of passphrases per
    guess). Storing this beside a ciphertext and checking it before decrypting
    pins the one key that may open it.
    """
    return hkdf(key, b"", LABEL_COMMIT)


def commitment_ok(key: bytes, stored: bytes) -> bool:
    """Constant-time check of a stored commitment against ``key``."""
    return len(stored) == COMMIT_LEN and hmac.compare_digest(key_commitment(key), stored)


# ---------------------------------------------------------------- key slots


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters, stored in each key slot."""

    salt: bytes
    iterations: int
    memory_kib: int
    lanes: int

    # Below these, a slot is refused on open: a tampered config cannot make a
    # passphrase cheap to brute-force (OWASP's minimum for Argon2id).
    FLOOR_ITERATIONS = 2
    FLOOR_MEMORY_KIB = 19 * 1024

    # Above these, a slot is refused too: a hostile store could otherwise make
    # unlocking exhaust memory or run for hours.
    CEILING_ITERATIONS = 64
    CEILING_MEMORY_KIB = 4 * 1024 * 1024
    CEILING_LANES = 64

    def check_floor(self) -> None:
        if self.iterations < self.FLOOR_ITERATIONS or self.memory_kib < self.FLOOR_MEMORY_KIB or self.lanes < 1:
            raise VaultError("key slot's KDF parameters are below the safe floor; refusing it")
        if (self.iterations > self.CEILING_ITERATIONS or self.memory_kib > self.CEILING_MEMORY_KIB
                or self.lanes > self.CEILING_LANES or self.memory_kib < 8 * self.lanes):
            raise VaultError("key slot's KDF parameters are beyond the supported range; refusing it")
        if len(self.salt) < 16:
            raise VaultError("key slot's KDF salt is too short; refusing it")

    def aad(self) -> bytes:
        return struct.pack(">III", self.iterations, self.memory_kib, self.lanes) + self.salt


def derive_kek(secret: bytes, params: KdfParams) -> bytes:
    params.check_floor()
    return Argon2id(
        salt=params.salt,
        length=KEY_LEN,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(secret)


CALIBRATION_MEMORY_KIB = 256 * 1024  # memory-hard first: as much as the machine can spare, up to this
CALIBRATION_LANES = 4
# Memory is given up only when the cheapest run at it overshoots the target by
# this much: a busy machine's noise must not trade 256 MiB for more passes.
CALIBRATION_SLACK = 1.5


def calibrate_kdf(target_s: float, mem_available_kib: int, clock: Callable[[], float],
                  derive: Callable[[bytes, KdfParams], bytes] | None = None) -> KdfParams:
    """Argon2id parameters that take about ``target_s`` seconds here (never outside floor/ceiling).

    Memory first: m is CALIBRATION_MEMORY_KIB if a quarter of the available
    memory holds it, else that quarter (not below the floor). Then one timed
    run at the floor's t gives the cost of a pass, and t is raised to fill the
    target. A machine too slow for even that at m (beyond CALIBRATION_SLACK)
    halves m until it fits or m is at the floor. ``clock`` and ``derive`` are injectable for tests.
    """
    derive = derive or derive_kek
    memory = max(KdfParams.FLOOR_MEMORY_KIB, min(CALIBRATION_MEMORY_KIB, mem_available_kib // 4))
    lanes = CALIBRATION_LANES
    t = KdfParams.FLOOR_ITERATIONS
    while True:
        probe = KdfParams(random_bytes(16), t, memory, lanes)
        start = clock()
        derive(b"calibration", probe)
        per_pass = max(clock() - start, 1e-9) / t
        if per_pass * t <= target_s * CALIBRATION_SLACK or memory <= KdfParams.FLOOR_MEMORY_KIB:
            break
        memory = max(KdfParams.FLOOR_MEMORY_KIB, memory // 2)
    t = int(target_s / per_pass)
    t = max(KdfParams.FLOOR_ITERATIONS, min(KdfParams.CEILING_ITERATIONS, t))
    return KdfParams(random_bytes(16), t, memory, lanes)


def _slot_aad(vault_id: bytes, slot_id: bytes, kind: str, params: KdfParams) -> bytes:
    return _SLOT_AAD_MAGIC + vault_id + slot_id + kind.encode() + b"\0" + params.aad()


def wrap_master(kek: bytes, master: bytes, vault_id: bytes, slot_id: bytes, kind: str, params: KdfParams) -> bytes:
    """AES-256-GCM wrap of the master key; the AAD binds the slot's own parameters."""
    nonce = random_bytes(NONCE_LEN)
    return nonce + AESGCM(kek).encrypt(nonce, master, _slot_aad(vault_id, slot_id, kind, params))


def unwrap_master(kek: bytes, wrapped: bytes, vault_id: bytes, slot_id: bytes, kind: str,
                  params: KdfParams, commitment: bytes) -> bytes | None:
    """The master key, or None when this KEK does not open the slot.

    ``commitment`` is the slot's stored ``key_commitment(kek)``; it is checked
    first, so no KEK but the one the slot was made with ever reaches AES-GCM.
    """
    if len(wrapped) != NONCE_LEN + KEY_LEN + TAG_LEN or not commitment_ok(kek, commitment):
        return None
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], _slot_aad(vault_id, slot_id, kind, params))
    except InvalidTag:
        return None


def mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def mac_ok(key: bytes, data: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(mac(key, data), tag)


# ------------------------------------------------------------------ chunks


def block_ciphertext_len(plain_len: int) -> int:
    return plain_len + TAG_LEN


def chunk_key(content_key: bytes, object_id: bytes) -> bytes:
    """Each chunk object has its own key, so a key encrypts one object only."""
    return hkdf(content_key, b"", b"chunk " + object_id)


def _block_nonce(index: int) -> bytes:
    # A chunk key encrypts exactly one object, once (seal_chunk draws the id),
    # so the block index is a nonce that can never repeat under that key.
    return struct.pack(">IQ", 0, index)


def _chunk_aad(vault_id: bytes, object_id: bytes, index: int, last: bool) -> bytes:
    return _CHUNK_AAD_MAGIC + vault_id + object_id + struct.pack(">IB", index, 1 if last else 0)


def padme(length: int) -> int:
    """Padmé padding (Nikitin et al. 2019): at most ~12% overhead, leaks O(log log n) bits."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    low = e - s
    mask = (1 << low) - 1
    return (length + mask) & ~mask


def seal_chunk(content_key: bytes, vault_id: bytes, plaintext: bytes, block_size: int, pad: bool,
               object_id: bytes | None = None) -> tuple[bytes, bytes]:
    """Encrypt one chunk. Returns (object_id, object bytes).

    The id is drawn here so that no caller can encrypt two plaintexts under
    one chunk key; ``object_id`` is only for test vectors.
    """
    if object_id is None:
        object_id = random_bytes(ID_LEN)
    aead = AESGCM(chunk_key(content_key, object_id))
    view = memoryview(plaintext)
    n = max(1, -(-len(plaintext) // block_size))
    parts = []
    for i in range(n):
        block = view[i * block_size:(i + 1) * block_size]
        parts.append(aead.encrypt(_block_nonce(i), block, _chunk_aad(vault_id, object_id, i, i == n - 1)))
    body = b"".join(parts)
    if pad:
        extra = padme(len(body)) - len(body)
        if extra:
            # Random, not zeros: zeros would show where the ciphertext ends.
            body += random_bytes(extra)
    return object_id, body


class ChunkCipher:
    """Decrypts the blocks of one chunk object (key derived once per object)."""

    __slots__ = ("_aead", "_vault_id", "_object_id", "_nblocks")

    def __init__(self, content_key: bytes, vault_id: bytes, object_id: bytes, nblocks: int) -> None:
        self._aead = AESGCM(chunk_key(content_key, object_id))
        self._vault_id = vault_id
        self._object_id = object_id
        self._nblocks = nblocks

    def open_block(self, index: int, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(
                _block_nonce(index), ciphertext,
                _chunk_aad(self._vault_id, self._object_id, index, index == self._nblocks - 1))
        except InvalidTag:
            raise IntegrityError(f"chunk {self._object_id.hex()} block {index}: authentication failed") from None


# ----------------------------------------------------------- metadata blobs


BLOB_OVERHEAD = NONCE_LEN + COMMIT_LEN + TAG_LEN


def seal_blob(key: bytes, aad: bytes, payload: bytes) -> bytes:
    """Compress, pad (Padmé, inside the ciphertext) and encrypt a metadata payload.

    Layout: nonce (12) || key_commitment(key) (32) || ciphertext || tag (16).
    ``payload`` is any bytes: tests seal garbage with it to fuzz the parsers
    behind the authentication.
    """
    body = zlib.compress(payload, 1)
    framed = struct.pack(">I", len(body)) + body
    framed += bytes(padme(len(framed)) - len(framed))
    nonce = random_bytes(NONCE_LEN)
    return nonce + key_commitment(key) + AESGCM(key).encrypt(nonce, framed, aad)


def open_blob(key: bytes, aad: bytes, blob: bytes, what: str) -> bytes:
    if len(blob) < BLOB_OVERHEAD + 4:
        raise IntegrityError(f"{what}: too short")
    if not commitment_ok(key, blob[NONCE_LEN:NONCE_LEN + COMMIT_LEN]):
        raise IntegrityError(f"{what}: key commitment does not match")
    try:
        framed = AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN + COMMIT_LEN:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed") from None
    (n,) = struct.unpack(">I", framed[:4])
    if n > len(framed) - 4:
        raise IntegrityError(f"{what}: bad payload length")
    try:
        return zlib.decompress(framed[4:4 + n])
    except zlib.error:
        raise IntegrityError(f"{what}: bad payload") from None


def journal_key(meta_key: bytes, seq: int) -> bytes:
    return hkdf(meta_key, b"", b"journal " + struct.pack(">Q", seq))


def journal_aad(vault_id: bytes, seq: int) -> bytes:
    return _JOURNAL_AAD_MAGIC + vault_id + struct.pack(">Q", seq)


def journal_name(names_key: bytes, seq: int) -> str:
    """Object name of journal batch ``seq``: looks random, found by recomputing it."""
    return mac(names_key, b"journal " + struct.pack(">Q", seq))[:ID_LEN].hex()


def close_log_key(meta_key: bytes) -> bytes:
    return hkdf(meta_key, b"", b"close-log")


def close_log_aad(vault_id: bytes, generation: bytes, index: int) -> bytes:
    return _CLOSE_LOG_AAD_MAGIC + vault_id + generation + struct.pack(">Q", index)


def seal_record(key: bytes, aad: bytes, payload: bytes) -> bytes:
    """Pad (Padmé) and encrypt one close-log record: nonce (12) || ciphertext || tag (16).

    No compression and no key commitment, unlike ``seal_blob``: a record is
    mostly file content (incompressible) and is sealed on the path of every
    close(), where zlib alone would cost more than the rest of the append."""
    framed = struct.pack(">I", len(payload)) + payload
    framed += bytes(padme(len(framed)) - len(framed))
    nonce = random_bytes(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, framed, aad)


def open_record(key: bytes, aad: bytes, sealed: bytes, what: str) -> bytes:
    if len(sealed) < NONCE_LEN + TAG_LEN + 4:
        raise IntegrityError(f"{what}: too short")
    try:
        framed = AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed") from None
    (n,) = struct.unpack(">I", framed[:4])
    if n > len(framed) - 4:
        raise IntegrityError(f"{what}: bad payload length")
    return framed[4:4 + n]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
