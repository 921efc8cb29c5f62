"""Vault creation, unlocking, key slots and config authentication (vault.py)."""

from __future__ import annotations

import json
import unicodedata

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from encfs_photo import crypto, vault
from encfs_photo.crypto import KdfParams
from encfs_photo.errors import NotAVaultError, VaultError, WrongPassphraseError
from encfs_photo.store import LocalStore, MemoryStore

PW = "pässwörd with spaces"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else LocalStore(str(tmp_path / "vault"))


@pytest.fixture
def created(store):
    v, recovery = vault.create(store, PW)
    return store, v, recovery


def config_dict(store) -> dict:
    return json.loads(store.get(vault.CONFIG_KEY))


def put_config(store, d: dict) -> None:
    store.put(vault.CONFIG_KEY, json.dumps(d).encode())


def test_create_and_open_with_passphrase(created):
    store, v, _ = created
    v2 = vault.open_vault(store, passphrase=PW)
    assert v2.vault_id == v.vault_id
    assert v2.content_key == v.content_key and v2.meta_key == v.meta_key and v2.names_key == v.names_key
    assert v2.block_size == vault.DEFAULT_BLOCK_SIZE and v2.chunk_size == vault.DEFAULT_CHUNK_SIZE
    assert len({v.content_key, v.meta_key, v.names_key, v.local_key}) == 4


def test_passphrase_is_nfc_normalised(created):
    store, v, _ = created
    nfd = unicodedata.normalize("NFD", PW)
    assert nfd != PW
    assert vault.open_vault(store, passphrase=nfd).vault_id == v.vault_id


def test_new_slot_uses_floor_kdf_in_tests(created):
    store, _, _ = created
    slots = vault.list_slots(store)
    assert {s.kind for s in slots} == {vault.SLOT_PASSPHRASE, vault.SLOT_RECOVERY}
    for s in slots:
        assert s.params.iterations == KdfParams.FLOOR_ITERATIONS
        assert s.params.memory_kib == KdfParams.FLOOR_MEMORY_KIB


def test_create_sizes_recorded(store):
    v, _ = vault.create(store, PW, block_size=4096, chunk_size=16384, with_recovery=False)
    v2 = vault.open_vault(store, passphrase=PW)
    assert (v2.block_size, v2.chunk_size) == (4096, 16384)
    assert [s.kind for s in vault.list_slots(store)] == [vault.SLOT_PASSPHRASE]


def test_create_refuses_existing_vault(created):
    store, _, _ = created
    with pytest.raises(VaultError):
        vault.create(store, "other")
    assert vault.open_vault(store, passphrase=PW)


def recovery_forms(rec: str) -> dict[str, str]:
    return {
        "as-printed": rec,
        "lowercase": rec.lower(),
        "no-dashes": rec.replace("-", ""),
        "lowercase-no-dashes": rec.replace("-", "").lower(),
        "spaces": rec.replace("-", " "),
        "surrounding-whitespace": f"  {rec}\n",
    }


@pytest.mark.parametrize("form", ["as-printed", "lowercase", "no-dashes", "lowercase-no-dashes", "spaces",
                                  "surrounding-whitespace"])
def test_open_with_recovery_key(created, form):
    store, v, rec = created
    assert rec is not None and rec.count("-") == 7 and len(rec) == 39
    assert vault.open_vault(store, passphrase=recovery_forms(rec)[form]).vault_id == v.vault_id


def test_recovery_key_with_one_wrong_character_fails(created):
    store, _, rec = created
    bad = ("B" if rec[0] != "B" else "C") + rec[1:]
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=bad)


def test_wrong_passphrase(created):
    store, _, _ = created
    for wrong in ["", "wrong", PW + " ", PW.upper()]:
        with pytest.raises(WrongPassphraseError):
            vault.open_vault(store, passphrase=wrong)


def test_wrong_passphrase_is_vault_error(created):
    store, _, _ = created
    with pytest.raises(VaultError):
        vault.open_vault(store, passphrase="nope")


def test_key_file_slot(store):
    secret = b"\x01" * 32
    v, rec = vault.create(store, PW, key_file_secret=secret)
    assert vault.open_vault(store, key_file_secret=secret).vault_id == v.vault_id
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, key_file_secret=b"\x02" * 32)
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id


def test_not_a_vault_empty(store):
    with pytest.raises(NotAVaultError):
        vault.open_vault(store, passphrase=PW)
    assert not vault.is_vault(store)


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b'{"vault_id": "zz"}', b"[1, 2]"])
def test_not_a_vault_garbage_config(store, raw):
    store.put(vault.CONFIG_KEY, raw)
    with pytest.raises(NotAVaultError):
        vault.open_vault(store, passphrase=PW)


def test_not_a_vault_without_slots(created):
    store, _, _ = created
    for key in list(store.list(vault.SLOT_PREFIX)):
        store.delete(key)
    with pytest.raises(NotAVaultError):
        vault.open_vault(store, passphrase=PW)


@pytest.mark.parametrize("field,value", [
    ("block_size", 128 * 1024),
    ("block_size", 32 * 1024),
    ("chunk_size", 8 * 1024 * 1024),
    ("chunk_size", 2 * 1024 * 1024),
    ("vault_id", "ff" * 16),
    ("mac", "00" * 32),
])
def test_tampered_config_refused(created, field, value):
    store, _, rec = created
    d = config_dict(store)
    assert d[field] != value
    d[field] = value
    put_config(store, d)
    with pytest.raises(VaultError):
        vault.open_vault(store, passphrase=PW)
    with pytest.raises(VaultError):
        vault.open_vault(store, passphrase=rec)


def test_untampered_rewritten_config_still_opens(created):
    """Control for the tamper test: re-serialising the same fields keeps the MAC valid."""
    store, v, _ = created
    put_config(store, config_dict(store))
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id


def test_tampered_block_size_message_says_tampered(created):
    store, _, _ = created
    d = config_dict(store)
    d["block_size"] = 128 * 1024
    put_config(store, d)
    with pytest.raises(VaultError, match="tamper"):
        vault.open_vault(store, passphrase=PW)


def test_unknown_feature_flag_refused_even_with_valid_mac(created):
    store, v, _ = created
    cfg = vault.Config(vault_id=v.vault_id, block_size=v.block_size, chunk_size=v.chunk_size,
                       features=["time-travel"])
    config_key = crypto.subkey(v._master, v.vault_id, crypto.LABEL_CONFIG)
    store.put(vault.CONFIG_KEY, cfg.to_bytes(config_key))
    with pytest.raises(VaultError, match="time-travel"):
        vault.open_vault(store, passphrase=PW)
    # Control: the same config without the flag, same key, opens.
    cfg.features = []
    store.put(vault.CONFIG_KEY, cfg.to_bytes(config_key))
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id


def test_unsupported_format_version_refused(created):
    store, _, _ = created
    d = config_dict(store)
    d["format"] = 99
    put_config(store, d)
    with pytest.raises(VaultError):
        vault.open_vault(store, passphrase=PW)


def _slot_key(store, kind: str) -> str:
    for s in vault.list_slots(store):
        if s.kind == kind:
            return vault.SLOT_PREFIX + s.slot_id.hex()
    raise AssertionError(kind)


@pytest.mark.parametrize("field,value", [("iterations", 1), ("memory_kib", 1024), ("memory_kib", 8), ("lanes", 0)])
def test_slot_with_kdf_lowered_below_floor_refused(created, field, value):
    """A slot rewritten with cheap KDF parameters (and a *valid* wrap under them) is refused."""
    store, v, _ = created
    key = _slot_key(store, vault.SLOT_PASSPHRASE)
    slot = vault.KeySlot.parse(bytes.fromhex(key[len(vault.SLOT_PREFIX):]), store.get(key))
    kw = {"salt": slot.params.salt, "iterations": slot.params.iterations, "memory_kib": slot.params.memory_kib,
          "lanes": slot.params.lanes}
    kw[field] = value
    weak = KdfParams(**kw)
    wrapped, commitment = slot.wrapped, slot.commitment
    if weak.lanes >= 1 and weak.memory_kib >= 8 * weak.lanes:
        kek = Argon2id(salt=weak.salt, length=32, iterations=weak.iterations, lanes=weak.lanes,
                       memory_cost=weak.memory_kib).derive(vault.normalize_passphrase(PW))
        wrapped = crypto.wrap_master(kek, v._master, v.vault_id, slot.slot_id, slot.kind, weak)
        commitment = crypto.key_commitment(kek)
    store.put(key, vault.KeySlot(slot.slot_id, slot.kind, weak, wrapped, commitment).to_bytes())
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)


def test_slot_params_changed_without_rewrap_refused(created):
    """Raising the parameters (above the floor) without re-wrapping also fails: the AAD binds them."""
    store, _, _ = created
    key = _slot_key(store, vault.SLOT_PASSPHRASE)
    d = json.loads(store.get(key))
    d["kdf"]["iterations"] += 1
    store.put(key, json.dumps(d).encode())
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)


def test_add_and_remove_slot(created):
    store, v, rec = created
    new_id = v.add_slot(vault.SLOT_PASSPHRASE, vault.normalize_passphrase("second passphrase"))
    assert len(vault.list_slots(store)) == 3
    assert vault.open_vault(store, passphrase="second passphrase").vault_id == v.vault_id
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id
    v.remove_slot(new_id)
    assert len(vault.list_slots(store)) == 2
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase="second passphrase")
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id
    assert vault.open_vault(store, passphrase=rec).vault_id == v.vault_id


def test_change_passphrase_rewraps_one_slot_only(created):
    store, v, rec = created
    before_data = {k: store.get(k) for k in store.list() if not k.startswith(vault.SLOT_PREFIX)}
    old = [s for s in vault.list_slots(store) if s.kind == vault.SLOT_PASSPHRASE][0]
    v.add_slot(vault.SLOT_PASSPHRASE, vault.normalize_passphrase("new one"))
    v.remove_slot(old.slot_id)
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)
    assert vault.open_vault(store, passphrase="new one").vault_id == v.vault_id
    assert vault.open_vault(store, passphrase=rec).vault_id == v.vault_id
    assert {k: store.get(k) for k in store.list() if not k.startswith(vault.SLOT_PREFIX)} == before_data


def test_last_slot_cannot_be_removed(store):
    v, rec = vault.create(store, PW, with_recovery=False)
    (only,) = vault.list_slots(store)
    with pytest.raises(VaultError):
        v.remove_slot(only.slot_id)
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id


def test_removing_down_to_one_then_last_refused(created):
    store, v, rec = created
    pw_slot = [s for s in vault.list_slots(store) if s.kind == vault.SLOT_PASSPHRASE][0]
    rec_slot = [s for s in vault.list_slots(store) if s.kind == vault.SLOT_RECOVERY][0]
    v.remove_slot(pw_slot.slot_id)
    with pytest.raises(VaultError):
        v.remove_slot(rec_slot.slot_id)
    assert vault.open_vault(store, passphrase=rec).vault_id == v.vault_id


def test_unreadable_slot_is_ignored_not_fatal(created):
    store, v, _ = created
    store.put(vault.SLOT_PREFIX + "00" * 8, b"garbage")
    assert vault.open_vault(store, passphrase=PW).vault_id == v.vault_id


def test_slot_moved_to_another_id_fails(created):
    """The slot id is in the wrap's AAD: copying a slot under a new id does not open."""
    store, _, _ = created
    pw_key = _slot_key(store, vault.SLOT_PASSPHRASE)
    raw = store.get(pw_key)
    for s in vault.list_slots(store):
        store.delete(vault.SLOT_PREFIX + s.slot_id.hex())
    store.put(vault.SLOT_PREFIX + "ab" * 8, raw)
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)


def test_lock_drops_keys(created):
    _, v, _ = created
    v.lock()
    assert v.content_key == b"" and v.meta_key == b"" and v._master == b""


def test_recovery_key_format():
    for _ in range(20):
        rec = vault.new_recovery_key()
        assert vault.normalize_recovery_key(rec) is not None
        assert len(vault.normalize_recovery_key(rec)) == 32
    assert vault.normalize_recovery_key("too short") is None


# ------------------------------------------------------------------ key commitment, slot removal


def test_slot_object_carries_the_kek_commitment(created):
    store, _, _ = created
    key = _slot_key(store, vault.SLOT_PASSPHRASE)
    d = json.loads(store.get(key))
    slot = vault.KeySlot.parse(bytes.fromhex(key[len(vault.SLOT_PREFIX):]), store.get(key))
    kek = crypto.derive_kek(vault.normalize_passphrase(PW), slot.params)
    assert crypto.key_commitment(kek) == slot.commitment and len(slot.commitment) == 32
    assert d["commit"] and "commit" in json.loads(slot.to_bytes())


@pytest.mark.parametrize("mutation", ["flipped", "missing", "short"])
def test_slot_with_bad_commitment_does_not_open(created, mutation):
    store, _, rec = created
    key = _slot_key(store, vault.SLOT_PASSPHRASE)
    d = json.loads(store.get(key))
    if mutation == "missing":
        del d["commit"]
    else:
        raw = bytearray(vault._unb64(d["commit"]))
        raw[0] ^= 1
        d["commit"] = vault._b64(bytes(raw[:31] if mutation == "short" else raw))
    store.put(key, json.dumps(d).encode())
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)
    assert vault.open_vault(store, passphrase=rec)  # the other slot is untouched


def test_format_1_vault_is_refused_with_a_clear_message(created):
    store, _, _ = created
    d = config_dict(store)
    assert d["format"] == 2
    d["format"] = 1
    put_config(store, d)
    with pytest.raises(VaultError, match="format 1"):
        vault.open_vault(store, passphrase=PW)


def test_removed_slot_no_longer_opens(created):
    store, _, rec = created
    v = vault.open_vault(store, passphrase=rec)  # unlocked with the recovery slot
    pw_slot = next(s for s in vault.list_slots(store) if s.kind == vault.SLOT_PASSPHRASE)
    v.remove_slot(pw_slot.slot_id)
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)
    assert vault.open_vault(store, passphrase=rec).vault_id == v.vault_id


def test_refuses_to_remove_the_slot_it_was_unlocked_with(created):
    store, _, rec = created
    v = vault.open_vault(store, passphrase=PW)
    opened = v.opened_slot
    with pytest.raises(VaultError, match="unlocked with"):
        v.remove_slot(opened.slot_id)
    assert vault.open_vault(store, passphrase=PW)
    # Unlocked through another slot, the same removal is allowed.
    vault.open_vault(store, passphrase=rec).remove_slot(opened.slot_id)
    with pytest.raises(WrongPassphraseError):
        vault.open_vault(store, passphrase=PW)


def test_refuses_to_remove_the_last_slot_and_unknown_slots(store):
    v, _ = vault.create(store, PW, with_recovery=False)
    only = vault.list_slots(store)[0]
    with pytest.raises(VaultError, match="last key slot"):
        v.remove_slot(only.slot_id, replacing_opened=True)
    with pytest.raises(VaultError, match="no key slot"):
        v.remove_slot(bytes(8))
    assert vault.open_vault(store, passphrase=PW)


def test_rewrapping_touches_only_slot_objects(created):
    store, v, _ = created
    before = {k: store.get(k) for k in store.list("") if not k.startswith(vault.SLOT_PREFIX)}
    new = v.add_slot(vault.SLOT_PASSPHRASE, vault.normalize_passphrase("another"))
    old = next(s.slot_id for s in vault.list_slots(store) if s.kind == vault.SLOT_PASSPHRASE and s.slot_id != new)
    vault.open_vault(store, passphrase="another").remove_slot(old)
    after = {k: store.get(k) for k in store.list("") if not k.startswith(vault.SLOT_PREFIX)}
    assert before == after and new in {s.slot_id for s in vault.list_slots(store)}


def test_default_kdf_params_are_calibrated_once_and_fast_path_kept(monkeypatch):
    calls = []

    def fake(target, mem, clock, derive=None):
        calls.append((target, mem))
        return KdfParams(b"\0" * 16, 5, 256 * 1024, 4)

    monkeypatch.setattr(crypto, "calibrate_kdf", fake)
    monkeypatch.setattr(vault, "_calibrated", None)
    assert vault.default_kdf_params().iterations == KdfParams.FLOOR_ITERATIONS  # FAST_KDF=1: no calibration
    assert calls == []
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "0")
    a, b = vault.default_kdf_params(), vault.default_kdf_params()
    assert (a.iterations, a.memory_kib) == (5, 256 * 1024) and len(calls) == 1 and calls[0][0] == 1.0
    assert a.salt != b.salt and len(a.salt) == 16  # each slot gets its own salt
