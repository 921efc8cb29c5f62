"""Test vectors for crypto.py: fixed inputs give fixed bytes (tests/vectors/*.json).

The vectors were produced once by tests/vectors/make_vectors.py. A failure here
means the on-disk format changed: existing vaults would no longer open.
Independent re-implementations (HKDF from RFC 5869 with hmac, the chunk layout
with AESGCM directly) check that the vectors mean what docs say they mean.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import math
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from encfs_photo import crypto
from encfs_photo.crypto import ChunkCipher, KdfParams
from encfs_photo.errors import IntegrityError, VaultError

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


def load(name: str) -> dict:
    with open(os.path.join(VECTORS, f"{name}.json")) as f:
        return json.load(f)


def plaintext(n: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(n))


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


# ------------------------------------------------------------------ KDF / HKDF

KDF = load("kdf")
CHUNKS = load("chunks")
JOURNAL = load("journal")
SLOT = load("keyslot")
PADME = load("padme")


def rfc5869(key: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 written out from RFC 5869, independent of `cryptography`."""
    prk = hmac.new(salt or bytes(32), key, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


@pytest.mark.parametrize("case", KDF["hkdf"], ids=lambda c: f"len{c['length']}-info{len(c['info']) // 2}")
def test_hkdf_vectors(case):
    key, salt, info = (bytes.fromhex(case[k]) for k in ("key", "salt", "info"))
    out = crypto.hkdf(key, salt, info, case["length"])
    assert out.hex() == case["out"]
    # The vector is HKDF-SHA256 with the project's domain prefix on the info.
    assert out == rfc5869(key, salt, b"encfs-photo/v1 " + info, case["length"])


@pytest.mark.parametrize("case", KDF["subkey"], ids=lambda c: c["label"])
def test_subkey_vectors(case):
    master, vid = bytes.fromhex(KDF["master"]), bytes.fromhex(KDF["vault_id"])
    assert crypto.subkey(master, vid, case["label"].encode()).hex() == case["out"]


def test_subkeys_are_distinct_and_bound_to_vault_id():
    master, vid = bytes.fromhex(KDF["master"]), bytes.fromhex(KDF["vault_id"])
    outs = {c["out"] for c in KDF["subkey"]}
    assert len(outs) == len(KDF["subkey"]) == 5
    other = crypto.subkey(master, flip(vid, 0), crypto.LABEL_CONTENT).hex()
    assert other not in outs


def test_chunk_key_vector():
    v = KDF["chunk_key"]
    out = crypto.chunk_key(bytes.fromhex(v["content_key"]), bytes.fromhex(v["object_id"]))
    assert out.hex() == v["out"]
    assert crypto.chunk_key(bytes.fromhex(v["content_key"]), bytes(16)).hex() != v["out"]


def test_mac_vector():
    v = KDF["mac"]
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    assert crypto.mac(key, data).hex() == v["out"]
    assert crypto.mac_ok(key, data, bytes.fromhex(v["out"]))
    assert not crypto.mac_ok(key, data + b"x", bytes.fromhex(v["out"]))
    assert not crypto.mac_ok(key, data, flip(bytes.fromhex(v["out"]), 31))


# ------------------------------------------------------------------ chunks

CONTENT_KEY = bytes.fromhex(CHUNKS["content_key"])
VID = bytes.fromhex(CHUNKS["vault_id"])
OID = bytes.fromhex(CHUNKS["object_id"])


def case_id(c: dict) -> str:
    return f"bs{c['block_size']}-n{c['plaintext_len']}"


@pytest.mark.parametrize("case", CHUNKS["cases"], ids=case_id)
def test_seal_chunk_vectors(case):
    bs, n = case["block_size"], case["plaintext_len"]
    oid, body = crypto.seal_chunk(CONTENT_KEY, VID, plaintext(n), bs, False, object_id=OID)
    assert oid == OID
    assert body.hex() == case["object"]


@pytest.mark.parametrize("case", CHUNKS["cases"], ids=case_id)
def test_chunk_vector_layout_independently(case):
    """Re-derive each vector from the documented layout with AESGCM directly."""
    bs, n = case["block_size"], case["plaintext_len"]
    pt = plaintext(n)
    aead = AESGCM(rfc5869(CONTENT_KEY, b"", b"encfs-photo/v1 chunk " + OID, 32))
    nb = max(1, math.ceil(n / bs))
    expect = b""
    for i in range(nb):
        aad = b"EPC1" + VID + OID + struct.pack(">IB", i, 1 if i == nb - 1 else 0)
        expect += aead.encrypt(struct.pack(">IQ", 0, i), pt[i * bs:(i + 1) * bs], aad)
    assert expect.hex() == case["object"]
    assert len(expect) == n + 16 * nb


@pytest.mark.parametrize("case", CHUNKS["cases"], ids=case_id)
def test_chunk_cipher_opens_vectors(case):
    bs, n = case["block_size"], case["plaintext_len"]
    body = bytes.fromhex(case["object"])
    nb = max(1, math.ceil(n / bs))
    cipher = ChunkCipher(CONTENT_KEY, VID, OID, nb)
    cbs = bs + 16
    got = b"".join(cipher.open_block(i, body[i * cbs:(i + 1) * cbs]) for i in range(nb))
    assert got == plaintext(n)


@pytest.mark.parametrize("case", [c for c in CHUNKS["cases"] if c["plaintext_len"] > 0], ids=case_id)
def test_padded_chunk_is_vector_plus_padme_padding(case):
    bs, n = case["block_size"], case["plaintext_len"]
    _, body = crypto.seal_chunk(CONTENT_KEY, VID, plaintext(n), bs, True, object_id=OID)
    clean = bytes.fromhex(case["object"])
    assert body[:len(clean)] == clean
    assert len(body) == crypto.padme(len(clean))


def test_seal_chunk_draws_a_fresh_object_id():
    oid1, body1 = crypto.seal_chunk(CONTENT_KEY, VID, b"same", 64, False)
    oid2, body2 = crypto.seal_chunk(CONTENT_KEY, VID, b"same", 64, False)
    assert len(oid1) == len(oid2) == crypto.ID_LEN
    assert oid1 != oid2 and body1 != body2


THREE = {"bs": 64, "pt": plaintext(150)}  # blocks of 64, 64, 22 bytes


def _three_blocks():
    _, body = crypto.seal_chunk(CONTENT_KEY, VID, THREE["pt"], THREE["bs"], False, object_id=OID)
    cbs = THREE["bs"] + 16
    return [body[0:cbs], body[cbs:2 * cbs], body[2 * cbs:]]


def test_chunk_cipher_accepts_the_right_block():
    blocks = _three_blocks()
    cipher = ChunkCipher(CONTENT_KEY, VID, OID, 3)
    assert cipher.open_block(0, blocks[0]) == THREE["pt"][:64]
    assert cipher.open_block(2, blocks[2]) == THREE["pt"][128:]


@pytest.mark.parametrize("index,wrong_index", [(0, 1), (1, 0), (1, 2), (2, 1), (0, 7)])
def test_chunk_cipher_rejects_wrong_index(index, wrong_index):
    blocks = _three_blocks()
    cipher = ChunkCipher(CONTENT_KEY, VID, OID, 3)
    with pytest.raises(IntegrityError) as ei:
        cipher.open_block(wrong_index, blocks[index])
    assert ei.value.errno == errno.EIO


def test_chunk_cipher_rejects_wrong_last_flag():
    blocks = _three_blocks()
    # Claiming 2 blocks: block 1 is now "last", but was sealed as not last (truncation).
    with pytest.raises(IntegrityError):
        ChunkCipher(CONTENT_KEY, VID, OID, 2).open_block(1, blocks[1])
    # Claiming 4 blocks: block 2 is now "not last", but was sealed as last (extension).
    with pytest.raises(IntegrityError):
        ChunkCipher(CONTENT_KEY, VID, OID, 4).open_block(2, blocks[2])
    # Control: the right count opens both.
    c = ChunkCipher(CONTENT_KEY, VID, OID, 3)
    assert c.open_block(1, blocks[1]) and c.open_block(2, blocks[2])


def test_chunk_cipher_rejects_wrong_object_id():
    blocks = _three_blocks()
    with pytest.raises(IntegrityError):
        ChunkCipher(CONTENT_KEY, VID, flip(OID, 15), 3).open_block(0, blocks[0])


def test_chunk_cipher_rejects_wrong_vault_id():
    blocks = _three_blocks()
    with pytest.raises(IntegrityError):
        ChunkCipher(CONTENT_KEY, flip(VID, 0), OID, 3).open_block(0, blocks[0])


def test_chunk_cipher_rejects_wrong_key_and_flipped_bytes():
    blocks = _three_blocks()
    with pytest.raises(IntegrityError):
        ChunkCipher(flip(CONTENT_KEY, 3), VID, OID, 3).open_block(0, blocks[0])
    cipher = ChunkCipher(CONTENT_KEY, VID, OID, 3)
    for pos in range(len(blocks[2])):
        with pytest.raises(IntegrityError):
            cipher.open_block(2, flip(blocks[2], pos, pos % 8))
    with pytest.raises(IntegrityError):
        cipher.open_block(2, blocks[2][:-1])


def test_chunk_cipher_rejects_block_under_other_object_same_index():
    """A block moved from another object of the same vault at the same index."""
    _, other = crypto.seal_chunk(CONTENT_KEY, VID, THREE["pt"], THREE["bs"], False)
    with pytest.raises(IntegrityError):
        ChunkCipher(CONTENT_KEY, VID, OID, 3).open_block(0, other[:80])


# ------------------------------------------------------------------ padme

def padme_reference(n: int) -> int:
    """Padmé as written in Nikitin et al. 2019, Algorithm 1."""
    if n < 2:
        return n
    e = math.floor(math.log2(n))
    s = math.floor(math.log2(e)) + 1
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (n + mask) & ~mask


@pytest.mark.parametrize("n,expected", PADME["table"], ids=lambda v: str(v))
def test_padme_table(n, expected):
    assert crypto.padme(n) == expected
    if n < 2**40:  # float log2 is exact enough below this
        assert padme_reference(n) == expected


def test_padme_properties():
    prev = 0
    for n in list(range(0, 5000)) + [10**6 + k for k in range(0, 5000, 7)]:
        p = crypto.padme(n)
        assert p >= n and p >= prev
        assert p - n <= max(1, n * 0.12)
        assert crypto.padme(p) == p  # padded sizes are fixed points
        prev = p


def test_padme_hides_the_1000003_byte_file():
    assert crypto.padme(1_000_003 + 16 * 16) != 1_000_003 + 16 * 16
    assert dict(PADME["table"])[1_000_003] == 1_015_808


# ------------------------------------------------------------------ journal names, keys, blobs

NAMES_KEY = bytes.fromhex(JOURNAL["names_key"])
META_KEY = bytes.fromhex(JOURNAL["meta_key"])


def test_journal_names_keys_aads_are_derived_from_the_vector_master():
    master = bytes.fromhex(KDF["master"])
    assert crypto.subkey(master, VID, crypto.LABEL_NAMES) == NAMES_KEY
    assert crypto.subkey(master, VID, crypto.LABEL_META) == META_KEY


@pytest.mark.parametrize("case", JOURNAL["names"], ids=lambda c: str(c["seq"]))
def test_journal_name_vectors(case):
    name = crypto.journal_name(NAMES_KEY, case["seq"])
    assert name == case["name"]
    assert len(name) == 32 and int(name, 16) >= 0
    assert name == hmac.new(NAMES_KEY, b"journal " + struct.pack(">Q", case["seq"]), hashlib.sha256).hexdigest()[:32]


def test_journal_names_are_distinct():
    names = [c["name"] for c in JOURNAL["names"]]
    assert len(set(names)) == len(names)
    assert crypto.journal_name(flip(NAMES_KEY, 0), 0) != JOURNAL["names"][0]["name"]


@pytest.mark.parametrize("case", JOURNAL["keys"], ids=lambda c: str(c["seq"]))
def test_journal_key_vectors(case):
    assert crypto.journal_key(META_KEY, case["seq"]).hex() == case["key"]


@pytest.mark.parametrize("case", JOURNAL["aads"], ids=lambda c: str(c["seq"]))
def test_journal_aad_vectors(case):
    assert crypto.journal_aad(VID, case["seq"]).hex() == case["aad"]


def test_stored_journal_blob_opens_and_rejects_tampering():
    v = JOURNAL["blob"]
    seq, sealed, payload = v["seq"], bytes.fromhex(v["sealed"]), bytes.fromhex(v["payload"])
    key, aad = crypto.journal_key(META_KEY, seq), crypto.journal_aad(VID, seq)
    assert crypto.open_blob(key, aad, sealed, "vector") == payload
    assert len(sealed) == 12 + 32 + 16 + crypto.padme(len(sealed) - 60)
    assert sealed[12:44] == crypto.key_commitment(key)
    for pos in (0, 11, 12, 43, 44, len(sealed) // 2, len(sealed) - 1):
        with pytest.raises(IntegrityError):
            crypto.open_blob(key, aad, flip(sealed, pos), "vector")
    with pytest.raises(IntegrityError):  # replayed under another sequence number
        crypto.open_blob(crypto.journal_key(META_KEY, seq + 1), crypto.journal_aad(VID, seq + 1), sealed, "v")
    with pytest.raises(IntegrityError):  # right key, AAD of another vault
        crypto.open_blob(key, crypto.journal_aad(flip(VID, 1), seq), sealed, "vector")
    with pytest.raises(IntegrityError):
        crypto.open_blob(key, aad, sealed[:20], "vector")


def test_seal_blob_roundtrip_and_random_nonce():
    key, aad = crypto.journal_key(META_KEY, 3), crypto.journal_aad(VID, 3)
    a = crypto.seal_blob(key, aad, b"hello" * 100)
    b = crypto.seal_blob(key, aad, b"hello" * 100)
    assert a != b
    assert crypto.open_blob(key, aad, a, "x") == crypto.open_blob(key, aad, b, "x") == b"hello" * 100


# ------------------------------------------------------------------ key slots

PARAMS = KdfParams(bytes.fromhex(SLOT["kdf"]["salt"]), SLOT["kdf"]["iterations"], SLOT["kdf"]["memory_kib"],
                   SLOT["kdf"]["lanes"])
KEK = bytes.fromhex(SLOT["kek"])
MASTER = bytes.fromhex(SLOT["master"])
SLOT_ID = bytes.fromhex(SLOT["slot_id"])
WRAPPED = bytes.fromhex(SLOT["wrapped"])
COMMIT = bytes.fromhex(SLOT["commitment"])


def test_derive_kek_vector():
    assert crypto.derive_kek(bytes.fromhex(SLOT["secret"]), PARAMS).hex() == SLOT["kek"]
    assert crypto.derive_kek(b"wrong", PARAMS) != KEK


def test_derive_kek_refuses_params_below_floor():
    for weak in (KdfParams(PARAMS.salt, 1, PARAMS.memory_kib, 1), KdfParams(PARAMS.salt, 2, 1024, 1),
                 KdfParams(PARAMS.salt, 2, PARAMS.memory_kib, 0), KdfParams(b"short", 2, PARAMS.memory_kib, 1)):
        with pytest.raises(VaultError):
            crypto.derive_kek(b"x", weak)


def test_stored_wrapped_master_unwraps():
    assert len(WRAPPED) == 12 + 32 + 16
    got = crypto.unwrap_master(KEK, WRAPPED, VID, SLOT_ID, SLOT["kind"], PARAMS, COMMIT)
    assert got == MASTER


def test_every_bit_flip_of_wrapped_master_fails():
    for pos in range(len(WRAPPED)):
        for bit in range(8):
            flipped = flip(WRAPPED, pos, bit)
            assert crypto.unwrap_master(KEK, flipped, VID, SLOT_ID, SLOT["kind"], PARAMS, COMMIT) is None


def test_truncated_or_extended_wrapped_master_fails():
    assert crypto.unwrap_master(KEK, WRAPPED[:-1], VID, SLOT_ID, SLOT["kind"], PARAMS, COMMIT) is None
    assert crypto.unwrap_master(KEK, WRAPPED + b"\0", VID, SLOT_ID, SLOT["kind"], PARAMS, COMMIT) is None


@pytest.mark.parametrize("change", ["kek", "vault_id", "slot_id", "kind", "salt", "iterations", "memory_kib",
                                    "lanes"])
def test_changed_aad_element_fails_unwrap(change):
    args = {"kek": KEK, "vault_id": VID, "slot_id": SLOT_ID, "kind": SLOT["kind"]}
    p = {"salt": PARAMS.salt, "iterations": PARAMS.iterations, "memory_kib": PARAMS.memory_kib,
         "lanes": PARAMS.lanes}
    if change in args:
        args[change] = "recovery" if change == "kind" else flip(args[change], 0)
    else:
        p[change] = flip(p[change], 0) if change == "salt" else p[change] + 1
    params = KdfParams(p["salt"], p["iterations"], p["memory_kib"], p["lanes"])
    commit = crypto.key_commitment(args["kek"])  # a consistent commitment: the AAD alone must refuse
    assert crypto.unwrap_master(args["kek"], WRAPPED, args["vault_id"], args["slot_id"], args["kind"],
                                params, commit) is None


def test_wrap_uses_fresh_nonce_and_roundtrips():
    a = crypto.wrap_master(KEK, MASTER, VID, SLOT_ID, "passphrase", PARAMS)
    b = crypto.wrap_master(KEK, MASTER, VID, SLOT_ID, "passphrase", PARAMS)
    assert a != b and a[:12] != b[:12]
    for w in (a, b):
        assert crypto.unwrap_master(KEK, w, VID, SLOT_ID, "passphrase", PARAMS, COMMIT) == MASTER


# ------------------------------------------------------------------ key commitment


@pytest.mark.parametrize("case", KDF["key_commitment"], ids=lambda c: c["key"][:8])
def test_key_commitment_vectors(case):
    key = bytes.fromhex(case["key"])
    out = crypto.key_commitment(key)
    assert out.hex() == case["out"] and len(out) == crypto.COMMIT_LEN
    # As documented: HKDF-SHA256(key, empty salt, "encfs-photo/v1 key-commitment").
    assert out == rfc5869(key, b"", b"encfs-photo/v1 key-commitment", 32)
    assert crypto.commitment_ok(key, out)
    assert not crypto.commitment_ok(flip(key, 0), out)
    assert not crypto.commitment_ok(key, flip(out, 31)) and not crypto.commitment_ok(key, out[:31])


def test_key_commitments_are_distinct_and_unlike_subkeys():
    outs = [c["out"] for c in KDF["key_commitment"]]
    assert len(set(outs)) == len(outs)
    assert not set(outs) & {c["out"] for c in KDF["subkey"]}


def test_journal_vector_blob_commits_to_the_vector_journal_key():
    key7 = crypto.journal_key(META_KEY, 7)
    assert {"key": key7.hex(), "out": crypto.key_commitment(key7).hex()} in KDF["key_commitment"]


def test_keyslot_vector_commitment():
    assert COMMIT == crypto.key_commitment(KEK)


def _gcm_multi_key_ciphertext(k1: bytes, k2: bytes, nonce: bytes, aad: bytes) -> bytes:
    """One AES-GCM ciphertext whose tag verifies under both keys (the partitioning-oracle construction).

    GHASH is linear over GF(2^128): pick a 2-block ciphertext, then solve for
    its last block so the tags under k1 and k2 coincide (Len, Grubbs,
    Ristenpart 2021, "Partitioning Oracle Attacks").
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def ecb(k: bytes, block: bytes) -> bytes:
        e = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
        return e.update(block) + e.finalize()

    def gmul(x: int, y: int) -> int:
        r, z, v = 0xE1 << 120, 0, x
        for i in range(127, -1, -1):
            if (y >> i) & 1:
                z ^= v
            v = (v >> 1) ^ r if v & 1 else v >> 1
        return z

    def ginv(x: int) -> int:  # x^(2^128 - 2)
        result, base, e = 1 << 127, x, (1 << 128) - 2
        while e:
            if e & 1:
                result = gmul(result, base)
            base = gmul(base, base)
            e >>= 1
        return result

    assert len(aad) == 0 and len(nonce) == 12
    h1, h2 = (int.from_bytes(ecb(k, bytes(16)), "big") for k in (k1, k2))
    j0 = nonce + b"\x00\x00\x00\x01"
    s1, s2 = (int.from_bytes(ecb(k, j0), "big") for k in (k1, k2))
    c1 = int.from_bytes(b"\x42" * 16, "big")
    length = 32 * 8  # 2 blocks of ciphertext, no AAD

    # tag_k = C1*H^3 + C2*H^2 + L*H + S  (in GF(2^128), + is xor); equate for k1 and k2 and solve for C2.
    def part(h: int, s: int) -> int:
        return gmul(c1, gmul(gmul(h, h), h)) ^ gmul(length, h) ^ s
    h1sq, h2sq = gmul(h1, h1), gmul(h2, h2)
    c2 = gmul(part(h1, s1) ^ part(h2, s2), ginv(h1sq ^ h2sq))
    tag = gmul(c1, gmul(h1sq, h1)) ^ gmul(c2, h1sq) ^ gmul(length, h1) ^ s1
    return c1.to_bytes(16, "big") + c2.to_bytes(16, "big") + tag.to_bytes(16, "big")


def test_gcm_alone_is_not_key_committing_but_the_commitment_is():
    """The attack the commitment stops: one wrapped key that AES-GCM accepts under two KEKs."""
    k1, k2, nonce = bytes(range(32)), bytes(range(1, 33)), bytes(12)
    ct = _gcm_multi_key_ciphertext(k1, k2, nonce, b"")
    # Both keys accept it: plain AES-GCM would let one slot test two passphrases at once.
    assert AESGCM(k1).decrypt(nonce, ct, b"") != AESGCM(k2).decrypt(nonce, ct, b"")
    # With the commitment, at most one key gets as far as AES-GCM.
    stored = crypto.key_commitment(k1)
    assert crypto.commitment_ok(k1, stored) and not crypto.commitment_ok(k2, stored)


def test_unwrap_checks_the_commitment_before_decrypting(monkeypatch):
    calls = []
    real = AESGCM.decrypt

    def spy(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(AESGCM, "decrypt", spy)
    wrong_kek = flip(KEK, 0)
    assert crypto.unwrap_master(wrong_kek, WRAPPED, VID, SLOT_ID, SLOT["kind"], PARAMS, COMMIT) is None
    assert calls == []  # refused on the commitment alone
    # A correct KEK with a wrong stored commitment is refused too.
    assert crypto.unwrap_master(KEK, WRAPPED, VID, SLOT_ID, SLOT["kind"], PARAMS, flip(COMMIT, 5)) is None
    assert calls == []
    assert crypto.unwrap_master(KEK, WRAPPED, VID, SLOT_ID, SLOT["kind"], PARAMS, COMMIT) == MASTER
    assert calls == [1]


def test_open_blob_refuses_a_swapped_commitment_before_decrypting(monkeypatch):
    key, other = crypto.journal_key(META_KEY, 3), crypto.journal_key(META_KEY, 4)
    aad = crypto.journal_aad(VID, 3)
    sealed = crypto.seal_blob(key, aad, b"payload")
    # An attacker who makes a blob "for" another key must also produce that key's commitment.
    forged = sealed[:12] + crypto.key_commitment(other) + sealed[44:]
    with pytest.raises(IntegrityError, match="commitment"):
        crypto.open_blob(key, aad, forged, "x")
    with pytest.raises(IntegrityError, match="commitment"):
        crypto.open_blob(other, aad, sealed, "x")


def test_open_blob_refuses_a_length_field_past_the_end():
    key, aad = crypto.journal_key(META_KEY, 3), crypto.journal_aad(VID, 3)
    framed = struct.pack(">I", 10**6) + b"x" * 12
    nonce = bytes(12)
    blob = nonce + crypto.key_commitment(key) + AESGCM(key).encrypt(nonce, framed, aad)
    with pytest.raises(IntegrityError, match="length"):
        crypto.open_blob(key, aad, blob, "x")


# ------------------------------------------------------------------ Argon2id calibration


class FakeArgon:
    """A clock and a derive function: each derive 'takes' seconds_per_pass_mib * t * m/MiB."""

    def __init__(self, seconds_per_pass_per_mib: float) -> None:
        self.now = 0.0
        self.rate = seconds_per_pass_per_mib
        self.runs: list[KdfParams] = []

    def clock(self) -> float:
        return self.now

    def derive(self, secret: bytes, params: KdfParams) -> bytes:
        params.check_floor()
        self.runs.append(params)
        self.now += self.rate * params.iterations * params.memory_kib / 1024
        return bytes(32)


def test_calibration_fixes_memory_then_raises_time():
    fake = FakeArgon(0.5 / 256)  # one pass over 256 MiB takes 0.5 s: t=2 fills 1 s
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert (p.memory_kib, p.iterations, p.lanes) == (256 * 1024, 2, 4)
    fake = FakeArgon(0.1 / 256)  # a fast machine: 0.1 s per pass -> t=10
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert (p.memory_kib, p.iterations) == (256 * 1024, 10)
    assert len(fake.runs) == 1 and fake.runs[0].salt != p.salt and len(p.salt) == 16


def test_calibration_never_exceeds_the_ceiling():
    fake = FakeArgon(1e-6)
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert p.iterations == KdfParams.CEILING_ITERATIONS
    p.check_floor()


def test_calibration_uses_a_quarter_of_available_memory_on_a_small_machine():
    fake = FakeArgon(0.01 / 256)
    p = crypto.calibrate_kdf(1.0, 400 * 1024, fake.clock, fake.derive)  # 400 MiB available
    assert p.memory_kib == 100 * 1024 and p.iterations > 2
    p = crypto.calibrate_kdf(1.0, 10 * 1024, fake.clock, fake.derive)  # almost nothing: still the floor
    assert p.memory_kib == KdfParams.FLOOR_MEMORY_KIB


def test_calibration_on_a_slow_machine_halves_memory_but_never_goes_below_the_floor():
    fake = FakeArgon(2.0 / 256)  # t=2 at 256 MiB takes 4 s: m halves to 64 MiB (1 s)
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert (p.memory_kib, p.iterations) == (64 * 1024, 2)
    assert [r.memory_kib for r in fake.runs] == [256 * 1024, 128 * 1024, 64 * 1024]
    fake = FakeArgon(1000.0)  # hopeless: floor parameters, not less
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert (p.memory_kib, p.iterations) == (KdfParams.FLOOR_MEMORY_KIB, KdfParams.FLOOR_ITERATIONS)
    p.check_floor()


def test_calibration_keeps_memory_when_the_floor_run_is_only_a_little_slow():
    fake = FakeArgon(0.6 / 256)  # t=2 at 256 MiB takes 1.2 s: within the slack, memory is kept
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert (p.memory_kib, p.iterations) == (256 * 1024, 2) and len(fake.runs) == 1
    fake = FakeArgon(0.8 / 256)  # 1.6 s: beyond the slack, m halves to 128 MiB (0.8 s), t stays 2
    p = crypto.calibrate_kdf(1.0, 8 * 1024 * 1024, fake.clock, fake.derive)
    assert (p.memory_kib, p.iterations) == (128 * 1024, 2)
