"""Hypothesis fuzzing of every parser of on-disk (and on-socket) input.

Bad input must end in the project's own errors (errors.EncfsPhotoError and
its subclasses), never another exception and never a hang. A hang shows as a
hypothesis deadline overrun (generous: parsing here takes milliseconds; the
deadline only has to catch "forever"). Parsers fuzzed:

* the vault config (`vault.Config.parse`, and `open_vault` on a fuzzed config),
* key slot objects (`vault.KeySlot.parse`, `list_slots`, `open_vault`),
* journal batch objects: garbage ciphertext (`crypto.open_blob`), and valid
  encryptions of garbage payloads sealed with the vault's real journal key
  (`crypto.seal_blob` seals any bytes), read by `meta.Journal.load`; the
  journal floor object,
* chunk objects (`crypto.ChunkCipher`, `content.ChunkIO.read`),
* the device state file (`state.RollbackGuard`),
* the control socket's request parser (`control.Server`),
* the lease object (garbage and authentic-but-broken payloads) and this device's lease record,
* a cache folder full of garbage files (`owner`, `running`, `conflict`, `lease`, `meta/index`,
  odd `pending/` names), opened by `WriteBackStore`,
* the runtime registry files (`control.lookup`, `control.all_mounts`).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import zlib
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from encfs_photo import control, crypto, vault
from encfs_photo.content import ChunkIO, ChunkRef
from encfs_photo.errors import EncfsPhotoError
from encfs_photo.meta import FLOOR_KEY, JOURNAL_PREFIX, Journal
from encfs_photo.state import RollbackGuard
from encfs_photo.store import MemoryStore

os.environ["ENCFS_PHOTO_FAST_KDF"] = "1"  # module-level: the fixtures below build a vault at import time

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=10), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ_SLOW = settings(FUZZ, max_examples=40)

PW = "fuzz passphrase"
VID = bytes.fromhex("00112233445566778899aabbccddeeff")
META_KEY = bytes(range(32))
NAMES_KEY = bytes(range(32, 64))
CONTENT_KEY = bytes(range(64, 96))

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | \
    st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4) |
                           st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)


def only_project_errors(fn, *args, **kwargs):
    """Run a parser: its result, or None if it raised one of the project's errors (anything else fails)."""
    try:
        return fn(*args, **kwargs)
    except EncfsPhotoError:
        return None


def mutate(data: bytes, draw_ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 flip, 1 delete, 2 insert, 3 truncate."""
    b = bytearray(data)
    for kind, pos, val in draw_ops:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] ^= (val % 255) + 1
        elif kind == 1:
            del b[pos]
        elif kind == 2:
            b.insert(pos, val % 256)
        else:
            del b[pos:]
    return bytes(b)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=6)


# ------------------------------------------------------------------ vault config


_BASE_STORE = MemoryStore()
_BASE_VAULT, _ = vault.create(_BASE_STORE, PW, with_recovery=False)
GOOD_CONFIG = _BASE_STORE.get(vault.CONFIG_KEY)
GOOD_SLOT_KEY = next(iter(_BASE_STORE.list(vault.SLOT_PREFIX)))
GOOD_SLOT = _BASE_STORE.get(GOOD_SLOT_KEY)
CONFIG_FIELDS = ["block_size", "chunk_size", "cipher", "features", "format", "mac", "vault_id"]


@FUZZ
@given(st.binary(max_size=400))
def test_config_parse_garbage_bytes(raw):
    only_project_errors(vault.Config.parse, raw)


@FUZZ
@given(edits)
def test_config_parse_mutated(ops):
    only_project_errors(vault.Config.parse, mutate(GOOD_CONFIG, ops))


@FUZZ
@given(st.sampled_from(CONFIG_FIELDS), json_values)
def test_config_parse_field_replaced(field, value):
    d = json.loads(GOOD_CONFIG)
    d[field] = value
    result = only_project_errors(vault.Config.parse, json.dumps(d).encode())
    if result is not None:  # parsed: then its values are within the documented ranges
        cfg, tag = result
        assert 4096 <= cfg.block_size <= 1 << 20 and cfg.chunk_size % cfg.block_size == 0


@FUZZ_SLOW
@given(st.sampled_from(CONFIG_FIELDS), json_values)
def test_open_vault_with_fuzzed_config(field, value):
    store = MemoryStore()
    store.put(GOOD_SLOT_KEY, GOOD_SLOT)
    d = json.loads(GOOD_CONFIG)
    d[field] = value
    store.put(vault.CONFIG_KEY, json.dumps(d).encode())
    v = only_project_errors(vault.open_vault, store, passphrase=PW)
    if v is not None:  # only a config whose authenticated fields are unchanged may open
        assert v.config.body() == vault.Config.parse(GOOD_CONFIG)[0].body()


# ------------------------------------------------------------------ key slots

SLOT_FIELDS = ["commit", "kind", "wrapped", "kdf", "kdf.name", "kdf.salt", "kdf.iterations", "kdf.memory_kib",
               "kdf.lanes"]


def slot_with(field: str, value) -> bytes:
    d = json.loads(GOOD_SLOT)
    if field.startswith("kdf."):
        d["kdf"][field[4:]] = value
    else:
        d[field] = value
    return json.dumps(d).encode()


@FUZZ
@given(st.binary(max_size=400))
def test_slot_parse_garbage_bytes(raw):
    only_project_errors(vault.KeySlot.parse, b"\x01" * 8, raw)


@FUZZ
@given(edits)
def test_slot_parse_mutated(ops):
    only_project_errors(vault.KeySlot.parse, b"\x01" * 8, mutate(GOOD_SLOT, ops))


@FUZZ
@given(st.sampled_from(SLOT_FIELDS), json_values)
def test_slot_parse_field_replaced(field, value):
    slot = only_project_errors(vault.KeySlot.parse, b"\x01" * 8, slot_with(field, value))
    if slot is not None:
        assert slot.kind in vault.SLOT_KINDS and len(slot.commitment) == crypto.COMMIT_LEN


# Values that keep Argon2 cheap: a fuzzed slot inside the bounds would otherwise cost up to 4 GiB and
# minutes by design (the ceiling), which is what a hostile store can do anyway (deny service).
cheap_kdf = {"kdf.iterations": st.integers(-5, 3) | json_scalars, "kdf.memory_kib": st.integers(0, 20 * 1024) |
             json_scalars, "kdf.lanes": st.integers(-1, 2) | json_scalars}


@st.composite
def slot_field_values(draw):
    field = draw(st.sampled_from(SLOT_FIELDS))
    value = draw(cheap_kdf.get(field, json_values))
    if field == "kdf":
        value = draw(json_scalars | st.lists(json_scalars, max_size=3))
    return field, value


@FUZZ_SLOW
@given(slot_field_values(), st.sampled_from(["replace", "mutate"]), edits)
def test_open_vault_with_fuzzed_slot(fv, how, ops):
    field, value = fv
    raw = slot_with(field, value) if how == "replace" else mutate(GOOD_SLOT, ops)
    if how == "mutate":  # keep mutations away from the KDF cost fields (see cheap_kdf)
        try:
            k = json.loads(raw)["kdf"]
            assume(not (type(k["iterations"]) is int and type(k["memory_kib"]) is int and
                        (k["iterations"] > 3 or k["memory_kib"] > 20 * 1024)))
        except (ValueError, KeyError, TypeError):
            pass
    store = MemoryStore()
    store.put(vault.CONFIG_KEY, GOOD_CONFIG)
    store.put(GOOD_SLOT_KEY, raw)
    v = only_project_errors(vault.open_vault, store, passphrase=PW)
    assert v is None or raw == GOOD_SLOT or v.vault_id == _BASE_VAULT.vault_id
    assert only_project_errors(vault.list_slots, store) is not None  # listing never fails on a bad slot


# ------------------------------------------------------------------ journal batches


def journal_store(batches: dict[int, bytes], floor: bytes | None = None) -> MemoryStore:
    store = MemoryStore()
    for seq, blob in batches.items():
        store.put(JOURNAL_PREFIX + crypto.journal_name(NAMES_KEY, seq), blob)
    if floor is not None:
        store.put(FLOOR_KEY, floor)
    return store


def load(store: MemoryStore):
    return only_project_errors(Journal(store, VID, META_KEY, NAMES_KEY).load)


def seal(seq: int, payload: bytes) -> bytes:
    """A valid encryption, under the vault's real journal key, of any payload bytes."""
    return crypto.seal_blob(crypto.journal_key(META_KEY, seq), crypto.journal_aad(VID, seq), payload)


def good_batch(seq: int = 0, **fields) -> dict:
    b = {"v": 1, "seq": seq, "prev": "00" * 32, "kind": "snapshot", "next_ino": 3,
         "inodes": [{"i": 1, "m": 0o40755, "u": 0, "g": 0, "n": 2, "s": 0, "a": 0, "t": 0, "c": 0, "p": 1}],
         "gone": [], "dents": []}
    b.update(fields)
    return b


def test_good_batch_loads():
    """Control for the fuzzers below: the unmutated batch does load."""
    ns = load(journal_store({0: seal(0, json.dumps(good_batch()).encode())}))
    assert ns is not None and 1 in ns.inodes


@FUZZ
@given(st.binary(max_size=300))
def test_journal_garbage_ciphertext(blob):
    key, aad = crypto.journal_key(META_KEY, 0), crypto.journal_aad(VID, 0)
    with pytest.raises(EncfsPhotoError):
        crypto.open_blob(key, aad, blob, "fuzz")
    assert load(journal_store({0: blob})) is None


@FUZZ
@given(edits)
def test_journal_mutated_ciphertext(ops):
    blob = seal(0, json.dumps(good_batch()).encode())
    bad = mutate(blob, ops)
    assume(bad != blob)
    assert load(journal_store({0: bad})) is None


@FUZZ
@given(st.binary(max_size=300))
def test_journal_sealed_garbage_payload(payload):
    assert load(journal_store({0: seal(0, payload)})) is None


@FUZZ
@given(st.binary(max_size=200))
def test_open_blob_sealed_garbage_frame(framed):
    """A correctly encrypted frame whose length field or zlib stream is garbage."""
    key, aad = crypto.journal_key(META_KEY, 0), crypto.journal_aad(VID, 0)
    nonce = bytes(12)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = nonce + crypto.key_commitment(key) + AESGCM(key).encrypt(nonce, framed, aad)
    out = only_project_errors(crypto.open_blob, key, aad, blob, "fuzz")
    if out is not None:
        n = int.from_bytes(framed[:4], "big")
        assert out == zlib.decompress(framed[4:4 + n])


@FUZZ
@given(edits)
def test_journal_mutated_json_payload(ops):
    payload = json.dumps(good_batch()).encode()
    only_project_errors(lambda: load(journal_store({0: seal(0, mutate(payload, ops))})))


BATCH_FIELDS = ["v", "seq", "prev", "kind", "next_ino", "inodes", "gone", "dents"]
RECORD_FIELDS = ["i", "m", "u", "g", "n", "s", "a", "t", "c", "r", "l", "k", "x", "p"]


@FUZZ
@given(st.sampled_from(BATCH_FIELDS), json_values)
def test_journal_batch_field_replaced(field, value):
    load(journal_store({0: seal(0, json.dumps(good_batch(**{field: value})).encode())}))


@FUZZ
@given(st.sampled_from(RECORD_FIELDS), json_values)
def test_journal_inode_record_field_replaced(field, value):
    batch = good_batch()
    batch["inodes"].append({"i": 2, "m": 0o100644, "u": 0, "g": 0, "n": 1, "s": 5, "a": 0, "t": 0, "c": 0,
                            field: value})
    batch["dents"] = [[1, "f", 2]]
    load(journal_store({0: seal(0, json.dumps(batch).encode())}))


@FUZZ
@given(json_values, json_values, json_values)
def test_journal_delta_entries(gone, dents, inode):
    first = seal(0, json.dumps(good_batch()).encode())
    delta = good_batch(1, kind="delta", prev=crypto.sha256(first).hex(), gone=gone, dents=dents,
                       inodes=[inode])
    load(journal_store({0: first, 1: seal(1, json.dumps(delta).encode())}))


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_journal_floor_object(raw):
    load(journal_store({0: seal(0, json.dumps(good_batch()).encode())}, floor=raw))


# ------------------------------------------------------------------ chunk objects


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 5), st.integers(1, 6))
def test_chunk_block_garbage(block, index, nblocks):
    cipher = crypto.ChunkCipher(CONTENT_KEY, VID, bytes(16), nblocks)
    with pytest.raises(EncfsPhotoError):
        cipher.open_block(index, block)


@FUZZ
@given(st.binary(max_size=3 * 4112), st.integers(1, 3 * 4096), st.integers(0, 3 * 4096), st.integers(0, 3 * 4096))
def test_chunk_object_garbage(body, length, start, size):
    store = MemoryStore()
    oid = bytes(range(16))
    store.put("data/" + oid.hex(), body)
    io = ChunkIO(store, VID, CONTENT_KEY, 4096, 4 * 4096)
    try:
        got = only_project_errors(io.read, ChunkRef(oid, length), start, start + size)
        assert got is None or got == b""  # garbage never authenticates: only an empty range "reads"
    finally:
        io.close()


@FUZZ
@given(edits, st.integers(0, 3 * 4096), st.integers(1, 3 * 4096))
def test_chunk_object_mutated(ops, start, size):
    store = MemoryStore()
    io = ChunkIO(store, VID, CONTENT_KEY, 4096, 4 * 4096)
    try:
        plain = bytes(range(256)) * 40  # 10240 bytes: three blocks
        ref = io.write(plain)
        io.wait_puts()
        good = store.get(ref.key)
        bad = mutate(good, ops)
        store.put(ref.key, bad)
        fresh = ChunkIO(store, VID, CONTENT_KEY, 4096, 4 * 4096)  # no cached plaintext blocks
        try:
            got = only_project_errors(fresh.read, ref, start, start + size)
        finally:
            fresh.close()
        if got is not None:  # only bytes that are still authentic may come back
            assert got == plain[start:start + size]
    finally:
        io.close()


# ------------------------------------------------------------------ device state file


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) |
       st.fixed_dictionaries({"seq": json_values, "head": json_values, "mac": json_values})
       .map(lambda d: json.dumps(d).encode()))
def test_device_state_file(raw):
    with tempfile.TemporaryDirectory(prefix="fuzz-state-") as d:
        guard = RollbackGuard(d, VID, META_KEY)
        with open(guard.path, "wb") as f:
            f.write(raw)
        only_project_errors(guard.load)
        only_project_errors(guard.check, 5, bytes(32), {5: bytes(32)})


def test_device_state_round_trip_control():
    with tempfile.TemporaryDirectory(prefix="fuzz-state-") as d:
        guard = RollbackGuard(d, VID, META_KEY)
        guard.record(7, b"\x01" * 32)
        assert guard.load() == (7, b"\x01" * 32)


# ------------------------------------------------------------------ control socket


@pytest.fixture(scope="module")
def control_server():
    d = tempfile.mkdtemp(prefix="fz-", dir="/tmp")
    path = os.path.join(d, "c.sock")
    server = control.Server(path, {"status": lambda: {"ok": True, "status": 1},
                                   "gc": lambda dry_run=False, grace=0: {"ok": True, "dry_run": dry_run}})
    yield path
    server.close()
    os.rmdir(d)


def ask(path: str, raw: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)  # a hang fails here instead of blocking the run
        s.connect(path)
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    return reply


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) |
       st.dictionaries(st.sampled_from(["cmd", "dry_run", "grace", "x"]), json_values)
       .map(lambda d: json.dumps(d).encode()))
def test_control_request_parser(control_server, raw):
    reply = ask(control_server, raw + b"\n")
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str)
    # The server still answers a good request afterwards.
    assert ask(control_server, b'{"cmd": "status"}\n') == {"ok": True, "status": 1}


# ------------------------------------------------------------------ the lease object and its record


LEASE_META = bytes(range(96, 128))


@FUZZ
@given(st.binary(max_size=300))
def test_lease_garbage_object(raw):
    from encfs_photo.lease import Lease

    assert only_project_errors(Lease(MemoryStore(), LEASE_META, VID)._decode, raw) is None


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) |
       st.dictionaries(st.sampled_from(["v", "holder", "host", "expires"]), json_values)
       .map(lambda d: json.dumps(d).encode()))
def test_lease_sealed_garbage_payload(payload):
    from encfs_photo.lease import LABEL_LEASE, Lease

    lz = Lease(MemoryStore(), LEASE_META, VID)
    raw = crypto.seal_blob(crypto.subkey(LEASE_META, VID, LABEL_LEASE), lz._aad(), payload)
    info = only_project_errors(lz._decode, raw)  # an authentic lease with a broken payload: not a lease
    if info is not None:
        assert isinstance(info.holder, bytes) and isinstance(info.host, str) and isinstance(info.expires, float)


@FUZZ
@given(st.binary(max_size=120))
def test_lease_record_file(raw):
    from encfs_photo.lease import Lease

    with tempfile.TemporaryDirectory(prefix="fuzz-lease-") as d:
        path = os.path.join(d, "lease")
        with open(path, "wb") as f:
            f.write(raw)
        lz = Lease(MemoryStore(), LEASE_META, VID, record_path=path)
        for dead_only in (False, True):
            etag = only_project_errors(lz._recorded, dead_only)
            # what goes back into an If-Match header: one token, no spaces or control characters
            assert etag is None or (etag.isprintable() and " " not in etag and 0 < len(etag) <= 200)


# ------------------------------------------------------------------ the cache folder and the runtime registry


CACHE_FILES = ["owner", "running", "conflict", "lease", "meta/index", "pending/0000000000000001-P-data~ab",
               "pending/0000000000000002-C-journal~cd", "pending/x-P-y", "pending/9999999999999999-D-~~",
               "clean/data~ef"]


@FUZZ_SLOW
@given(st.dictionaries(st.sampled_from(CACHE_FILES), st.binary(max_size=80), max_size=5),
       st.lists(st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                        max_size=20), max_size=3))
def test_cache_folder_with_garbage_files(files, pending_names):
    from encfs_photo.store.writeback import WriteBackStore

    with tempfile.TemporaryDirectory(prefix="fuzz-cache-") as d:
        for rel, body in files.items():
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "wb") as f:
                f.write(body)
        os.makedirs(os.path.join(d, "pending"), exist_ok=True)
        for name in pending_names:
            if name not in (".", ".."):
                with open(os.path.join(d, "pending", name), "wb") as f:
                    f.write(b"x")
        wb = only_project_errors(WriteBackStore, MemoryStore(), d, 1 << 30, owner="ab" * 16, start=False)
        if wb is not None:
            try:
                only_project_errors(wb.status)
                only_project_errors(lambda: list(wb.list("")))
            finally:
                wb.leave_queued()
                wb.close(wait=False)


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) |
       st.dictionaries(st.sampled_from(["pid", "mountpoint", "socket", "store"]), json_values)
       .map(lambda d: json.dumps(d).encode()))
def test_runtime_registry_entry(raw, monkeypatch_module):
    with tempfile.TemporaryDirectory(prefix="fz-run-", dir="/tmp") as d:
        monkeypatch_module.setenv("ENCFS_PHOTO_RUNTIME_DIR", d)
        reg, _, _ = control.paths("/tmp/fuzz-mnt")
        os.makedirs(os.path.dirname(reg), exist_ok=True)
        with open(reg, "wb") as f:
            f.write(raw)
        entry = only_project_errors(control.lookup, "/tmp/fuzz-mnt")
        assert entry is None or isinstance(entry, dict)
        for e in only_project_errors(control.all_mounts) or []:
            assert isinstance(e, dict)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
