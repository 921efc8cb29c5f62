"""Vectors for the small objects' MACs and seals (tests/vectors/derivations.json, from make_vectors.py).

Each is recomputed through the code that writes the object for real, so a change of
the config MAC, the journal floor, the device state, the lease, the recovery key's
normalisation or a pack segment's sealing and digest fails here: that is a format
change (docs/FORMAT.md), not a new vector.
"""

from __future__ import annotations

import json
import os

import pytest

from encfs_photo import closelog, content, crypto, lease, meta, state, vault
from encfs_photo.errors import IntegrityError
from encfs_photo.store import MemoryStore

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "derivations.json")) as _f:
    V = json.load(_f)
MASTER, VAULT_ID = bytes.fromhex(V["master"]), bytes.fromhex(V["vault_id"])


def test_config_object_and_its_mac():
    c = V["config"]
    key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_CONFIG)
    assert key.hex() == c["config_key"]
    cfg = vault.Config(vault_id=VAULT_ID, block_size=c["block_size"], chunk_size=c["chunk_size"])
    assert cfg.to_bytes(key).decode() == c["object"]
    parsed, tag = vault.Config.parse(c["object"].encode())
    assert crypto.mac_ok(key, vault._canonical(parsed.body()), tag)


def test_journal_floor_object():
    f = V["journal_floor"]
    names_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_NAMES)
    assert names_key.hex() == f["names_key"]
    store = MemoryStore()
    j = meta.Journal(store, VAULT_ID, crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_META), names_key)
    j._write_floor(f["seq"])
    assert store.get(meta.FLOOR_KEY).decode() == f["object"]
    assert j.read_floor() == f["seq"]
    store.put(meta.FLOOR_KEY, f["object"].replace('"seq": 5', '"seq": 4').encode())
    with pytest.raises(IntegrityError):
        j.read_floor()


def test_device_state_record(tmp_path):
    d = V["device_state"]
    key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_LOCAL)
    assert key.hex() == d["local_key"]
    guard = state.RollbackGuard(str(tmp_path), VAULT_ID, key)
    guard.record(d["seq"], bytes.fromhex(d["head"]))
    with open(guard.path) as f:
        assert json.load(f) == d["record"]
    assert guard.load() == (d["seq"], bytes.fromhex(d["head"]))


def test_lease_object_opens_under_the_derived_key():
    le = V["lease"]
    meta_key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_META)
    assert meta_key.hex() == le["meta_key"]
    assert crypto.subkey(meta_key, VAULT_ID, lease.LABEL_LEASE).hex() == le["key"]
    lz = lease.Lease(MemoryStore(), meta_key, VAULT_ID)
    assert lz._aad().hex() == le["aad"]
    info = lz._decode(bytes.fromhex(le["object"]))  # sealed with a random nonce once; still opens
    assert info is not None and info.expires == le["expires"] and info.host == "nas.studio.example"
    assert info.holder == bytes.fromhex("77" * 16)
    other = lease.Lease(MemoryStore(), meta_key, bytes(16))  # another vault's lease key and AAD
    assert other._decode(bytes.fromhex(le["object"])) is None
    again = lz._decode(lz._encode(le["expires"]))
    assert again is not None and again.expires == le["expires"]


@pytest.mark.parametrize("typed", V["recovery_key"]["typed"])
def test_recovery_key_normalisation(typed):
    assert vault.normalize_recovery_key(typed).decode() == V["recovery_key"]["normalised"]


def test_pack_segment_and_its_digest():
    s = V["segment"]
    key = crypto.subkey(MASTER, VAULT_ID, crypto.LABEL_CONTENT)
    assert key.hex() == s["content_key"]
    plain = bytes((i * 7 + 3) % 251 for i in range(s["plaintext_len"]))
    sid, sealed = crypto.seal_chunk(key, VAULT_ID, plain, s["block_size"], False, object_id=bytes.fromhex(s["seal_id"]))
    assert sealed.hex() == s["sealed"]
    assert content.digest(sealed).hex() == s["digest"] == crypto.sha256(sealed)[:16].hex()
    # A segment is read back by its seal id, wherever it sits in its pack.
    store = MemoryStore()
    store.put("data/" + "ee" * 16, os.urandom(40) + sealed + os.urandom(25))
    io = content.ChunkIO(store, VAULT_ID, key, s["block_size"], 4 << 20, 0)
    ref = content.ChunkRef(bytes.fromhex("ee" * 16), len(plain), bytes.fromhex(s["digest"]), sid, 40)
    assert io.read(ref, 0, len(plain)) == plain
    io.close()


def test_close_log_file_replays_under_the_derived_key(tmp_path):
    """FORMAT.md 9.1: the header names the empty journal; the marker names batch 0 by its hash."""
    cl = V["close_log"]
    meta_key = bytes.fromhex(cl["meta_key"])
    assert crypto.close_log_key(meta_key).hex() == cl["key"]
    raw = bytes.fromhex(cl["file"])
    assert raw[:8] == closelog.MAGIC and raw[8:24].hex() == cl["generation"]
    (tmp_path / closelog.FILE).write_bytes(raw)
    lg = closelog.CloseLog.open(str(tmp_path), VAULT_ID, meta_key)
    records = lg.recover(-1, bytes(32))  # the head is still the header's: the delta replays
    assert len(records) == 1
    rec = records[0]
    assert {k: rec.batch[k] for k in cl["delta"]} == cl["delta"]
    assert rec.data == {2: cl["data"].encode()}
    lg.close()
    lg = closelog.CloseLog.open(str(tmp_path), VAULT_ID, meta_key)
    assert lg.recover(0, crypto.sha256(b"batch zero")) == []  # the marked batch is the head: nothing new
    assert (tmp_path / closelog.FILE).exists()  # and nothing was kept aside
    lg.close()
    other = closelog.CloseLog.open(str(tmp_path), bytes(16), meta_key)  # another vault's AAD
    with pytest.raises(IntegrityError):
        other.recover(-1, bytes(32))
    other.close()
