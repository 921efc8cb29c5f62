"""Generate the crypto test vectors in this folder (run once; the results are committed).

    python3 tests/vectors/make_vectors.py

Every vector except the wrapped key slot and the sealed blob is a pure function
of the fixed inputs below, so re-running this script reproduces the same JSON.
The wrapped slot and the sealed blob use a random nonce: re-running writes a
new (equally valid) blob, and test_crypto.py checks that the stored one still
opens. A change of any output means the on-disk format changed, which needs a
new format version, not new vectors.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from encfs_photo import crypto  # noqa: E402
from encfs_photo.crypto import KdfParams  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

MASTER = bytes(range(32))
VAULT_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
OBJECT_ID = bytes.fromhex("a5" * 16)
SLOT_ID = bytes.fromhex("0102030405060708")
KDF_SALT = bytes.fromhex("5a" * 16)
PASSPHRASE = "correct horse battery staple"

PADME_INPUTS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 256, 257, 1000, 1023,
                1024, 1025, 4096, 4097, 65535, 65536, 65537, 65552, 100000, 1000003, 1000259, 1048576, 1048577,
                4194304, 4194305, 4194560, 10**9, 2**31 - 1, 2**31, 2**40 + 1]

# (block_size, plaintext length): empty, one byte, exact block, block + 1, several blocks.
CHUNK_CASES = [(64, 0), (64, 1), (64, 63), (64, 64), (64, 65), (64, 200), (4096, 4096), (4096, 10000)]


def plaintext(n: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(n))


def kdf_vectors() -> dict:
    hkdf_cases = []
    for key, salt, info, length in [
        (MASTER, VAULT_ID, b"content", 32),
        (MASTER, b"", b"", 32),
        (bytes(32), b"salt", b"info", 16),
        (b"\xff" * 32, VAULT_ID, b"x" * 100, 64),
    ]:
        hkdf_cases.append({"key": key.hex(), "salt": salt.hex(), "info": info.hex(), "length": length,
                           "out": crypto.hkdf(key, salt, info, length).hex()})
    labels = {
        "content": crypto.LABEL_CONTENT, "meta": crypto.LABEL_META, "object-names": crypto.LABEL_NAMES,
        "config-mac": crypto.LABEL_CONFIG, "local-state": crypto.LABEL_LOCAL,
    }
    subkeys = [{"label": lab.decode(), "out": crypto.subkey(MASTER, VAULT_ID, lab).hex()} for lab in labels.values()]
    content_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_CONTENT)
    return {
        "master": MASTER.hex(),
        "vault_id": VAULT_ID.hex(),
        "hkdf": hkdf_cases,
        "subkey": subkeys,
        "chunk_key": {"content_key": content_key.hex(), "object_id": OBJECT_ID.hex(),
                      "out": crypto.chunk_key(content_key, OBJECT_ID).hex()},
        "mac": {"key": MASTER.hex(), "data": b"config body".hex(), "out": crypto.mac(MASTER, b"config body").hex()},
        # key_commitment(key) = HKDF(key, "", "key-commitment"); the journal key of seq 7 is the one
        # journal.json's blob is sealed under.
        "key_commitment": [{"key": k.hex(), "out": crypto.key_commitment(k).hex()} for k in (
            MASTER, bytes(32), b"\xff" * 32,
            crypto.journal_key(crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_META), 7))],
    }


def chunk_vectors() -> dict:
    content_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_CONTENT)
    cases = []
    for block_size, n in CHUNK_CASES:
        oid, body = crypto.seal_chunk(content_key, VAULT_ID, plaintext(n), block_size, False, object_id=OBJECT_ID)
        assert oid == OBJECT_ID
        cases.append({"block_size": block_size, "plaintext_len": n, "object": body.hex()})
    return {
        "content_key": content_key.hex(),
        "vault_id": VAULT_ID.hex(),
        "object_id": OBJECT_ID.hex(),
        "plaintext": "bytes((i * 7 + 3) % 251 for i in range(plaintext_len))",
        "cases": cases,
    }


def journal_vectors() -> dict:
    names_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_NAMES)
    meta_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_META)
    seqs = [0, 1, 2, 255, 256, 2**32, 2**63 - 1]
    payload = b'{"kind":"snapshot","seq":7}' * 3
    blob = crypto.seal_blob(crypto.journal_key(meta_key, 7), crypto.journal_aad(VAULT_ID, 7), payload)
    return {
        "names_key": names_key.hex(),
        "meta_key": meta_key.hex(),
        "vault_id": VAULT_ID.hex(),
        "names": [{"seq": s, "name": crypto.journal_name(names_key, s)} for s in seqs],
        "keys": [{"seq": s, "key": crypto.journal_key(meta_key, s).hex()} for s in seqs],
        "aads": [{"seq": s, "aad": crypto.journal_aad(VAULT_ID, s).hex()} for s in seqs],
        "blob": {"seq": 7, "payload": payload.hex(), "sealed": blob.hex()},
    }


def keyslot_vectors() -> dict:
    params = KdfParams(KDF_SALT, KdfParams.FLOOR_ITERATIONS, KdfParams.FLOOR_MEMORY_KIB, 1)
    secret = PASSPHRASE.encode()
    kek = crypto.derive_kek(secret, params)
    wrapped = crypto.wrap_master(kek, MASTER, VAULT_ID, SLOT_ID, "passphrase", params)
    return {
        "commitment": crypto.key_commitment(kek).hex(),
        "secret": secret.hex(),
        "kdf": {"salt": KDF_SALT.hex(), "iterations": params.iterations, "memory_kib": params.memory_kib,
                "lanes": params.lanes},
        "kek": kek.hex(),
        "master": MASTER.hex(),
        "vault_id": VAULT_ID.hex(),
        "slot_id": SLOT_ID.hex(),
        "kind": "passphrase",
        "wrapped": wrapped.hex(),
    }


def derivation_vectors() -> dict:
    """The MACs and seals of the small objects: config, journal floor, device state, lease; the
    recovery key's normalisation; a pack segment and the digest a reference pins."""
    import tempfile

    from encfs_photo import content, lease, meta, state, vault
    from encfs_photo.store import MemoryStore

    meta_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_META)
    names_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_NAMES)
    config_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_CONFIG)
    local_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_LOCAL)
    cfg = vault.Config(vault_id=VAULT_ID, block_size=65536, chunk_size=4 << 20)
    store = MemoryStore()
    journal = meta.Journal(store, VAULT_ID, meta_key, names_key)
    journal._write_floor(5)
    with tempfile.TemporaryDirectory() as d:
        guard = state.RollbackGuard(d, VAULT_ID, local_key)
        guard.record(42, bytes(range(32)))
        with open(guard.path) as f:
            device_state = json.load(f)
    lz = lease.Lease(MemoryStore(), meta_key, VAULT_ID)
    lz.holder, lz.host = bytes.fromhex("77" * 16), "nas.studio.example"
    seal_id = bytes.fromhex("c3" * 16)
    content_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_CONTENT)
    sid, segment = crypto.seal_chunk(content_key, VAULT_ID, plaintext(300), 64, False, object_id=seal_id)
    recovery = "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-4567"
    return {
        "master": MASTER.hex(),
        "vault_id": VAULT_ID.hex(),
        "config": {"block_size": cfg.block_size, "chunk_size": cfg.chunk_size, "config_key": config_key.hex(),
                   "object": cfg.to_bytes(config_key).decode()},
        "journal_floor": {"names_key": names_key.hex(), "seq": 5, "object": store.get(meta.FLOOR_KEY).decode()},
        "device_state": {"local_key": local_key.hex(), "seq": 42, "head": bytes(range(32)).hex(),
                         "record": device_state},
        "lease": {"meta_key": meta_key.hex(), "key": crypto.subkey(meta_key, VAULT_ID, lease.LABEL_LEASE).hex(),
                  "aad": lz._aad().hex(), "expires": 1_800_000_000.0, "object": lz._encode(1_800_000_000.0).hex()},
        "recovery_key": {"typed": [recovery, recovery.lower().replace("-", " "),
                                   "ABCD EFGH IJKL MNOP QRST UVWX YZ23 4567",
                                   "abcd-efgh-1jkl-mn0p-qrst-uvwx-yz23-4567"],
                         "normalised": vault.normalize_recovery_key(recovery).decode()},
        "close_log": close_log_vector(),
        "segment": {"content_key": content_key.hex(), "seal_id": sid.hex(), "block_size": 64,
                    "plaintext_len": 300, "sealed": segment.hex(), "digest": content.digest(segment).hex()},
    }


def close_log_vector() -> dict:
    """A close log of one generation: header on the empty journal, a delta with a file's bytes, a marker."""
    import tempfile

    from encfs_photo import closelog

    meta_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_META)
    with tempfile.TemporaryDirectory() as d:
        lg = closelog.CloseLog.open(d, VAULT_ID, meta_key)
        lg.start(-1, bytes(32))
        delta = {"kind": "delta", "next_ino": 3, "gone": [], "dents": [[1, "IMG_0001.xmp", 2]],
                 "inodes": [{"i": 2, "m": 0o100644, "u": 1000, "g": 1000, "n": 1, "s": 11,
                             "a": 1, "t": 1, "c": 1}]}
        lg.append(delta, [(2, b"<x:xmpmeta/>"[:11])])
        lg.mark(0, b"batch zero")
        with open(lg.path, "rb") as f:
            raw = f.read()
        lg.close()
    return {"meta_key": meta_key.hex(), "key": crypto.close_log_key(meta_key).hex(),
            "generation": raw[8:24].hex(), "file": raw.hex(), "delta": delta, "data": "<x:xmpmeta/"}


def padme_vectors() -> dict:
    return {"table": [[n, crypto.padme(n)] for n in PADME_INPUTS]}


def main() -> None:
    for name, fn in [("kdf", kdf_vectors), ("chunks", chunk_vectors), ("journal", journal_vectors),
                     ("keyslot", keyslot_vectors), ("padme", padme_vectors), ("derivations", derivation_vectors)]:
        path = os.path.join(HERE, f"{name}.json")
        with open(path, "w") as f:
            json.dump(fn(), f, indent=1, sort_keys=True)
            f.write("\n")
        print("wrote", path)


if __name__ == "__main__":
    main()
