"""The tamper matrix in one table: every attack on the store, and how it is detected.

Each row copies one golden store (the vault of test_tamper.FILES, plus an
older state of it and a second vault with files of the same sizes), applies
one attack with plain file operations on the store folder, and expects one of:

* ``read``: the vault opens; reading an affected file gives EIO (and a log
  line naming the object); every other file reads back exactly; ``check
  --read-data`` names every affected file by its path.
* ``check``: nothing returned is wrong (the bytes a read authenticates are
  intact: appended bytes are never read), and ``check`` reports the object.
* ``open``: the vault (or the filesystem over it) refuses to open, and so
  does ``check``.

tests/test_tamper.py, test_pack.py, test_state.py and test_vault.py hold the
finer variants; this file is the list a user can read off (docs/SECURITY.md 3.2).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass

import pytest
from test_tamper import BS, CBS, CS, FILES, PW, Golden, build, flip_at, key_path, read_all, swap

from encfs_photo import check as checker
from encfs_photo import crypto, vault
from encfs_photo.errors import IntegrityError, VaultError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import JOURNAL_PREFIX
from encfs_photo.state import RollbackGuard
from encfs_photo.store import LocalStore


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


@dataclass
class World:
    a: Golden  # the vault attacked, as it is now
    old: str  # a copy of its whole store from before the last changes
    old_big0: bytes  # /big's first chunk object as it was then (a different object id)
    state: str  # the device state of the device that wrote the vault
    b: Golden  # another vault with files of the same sizes


CHANGED = b"rewritten " * 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENCFS_PHOTO_FAST_KDF", "1")
        base = tmp_path_factory.mktemp("matrix")
        a = build(str(base / "a"), "closed")
        b = build(str(base / "b"), "closed")
        old = str(base / "a-old")
        shutil.copytree(a.root, old)
        old_big0 = open(key_path(a.root, a.chunks[b"/big"][0]), "rb").read()
        state = str(base / "state")
        fs = FileSystem(vault.open_vault(LocalStore(a.root), passphrase=PW), state_dir=state)
        fh = fs.open(fs.resolve(b"/big"), os.O_WRONLY)
        fs.write(fh, 0, CHANGED)  # a new first chunk object; the old one becomes garbage
        fs.release(fh)
        fs.close()
        fs = FileSystem(vault.open_vault(LocalStore(a.root), passphrase=PW))
        node = fs.ns.inodes[fs.resolve(b"/big")]
        a.chunks[b"/big"] = [node.chunks[i].key for i in sorted(node.chunks)]
        fs.close()
        assert open(key_path(a.root, a.chunks[b"/big"][0]), "rb").read() != old_big0
        return World(a, old, old_big0, state, b)


def expected(path: bytes) -> bytes:
    data = FILES[path]
    return CHANGED + data[len(CHANGED):] if path == b"/big" else data


def obj(w: World, path: bytes, idx: int = 0) -> str:
    return key_path(w.a.root, w.a.chunks[path][idx])


def truncate(p: str, size: int) -> None:
    os.truncate(p, size)


def append(p: str, n: int) -> None:
    with open(p, "ab") as f:
        f.write(os.urandom(n))


def reorder_blocks(p: str, i: int, k: int) -> None:
    data = bytearray(open(p, "rb").read())
    bi, bk = data[i * CBS:(i + 1) * CBS], data[k * CBS:(k + 1) * CBS]
    data[i * CBS:(i + 1) * CBS], data[k * CBS:(k + 1) * CBS] = bk, bi
    open(p, "wb").write(bytes(data))


def journal_file(w: World, seq: int) -> str:
    names_key = vault.open_vault(LocalStore(w.a.root), passphrase=PW).names_key
    return key_path(w.a.root, JOURNAL_PREFIX + crypto.journal_name(names_key, seq))


def head(w: World) -> int:
    fs = FileSystem(vault.open_vault(LocalStore(w.a.root), passphrase=PW))
    try:
        return fs._journal.seq
    finally:
        fs.close()


def replace_store(w: World, src: str) -> None:
    shutil.rmtree(w.a.root)
    shutil.copytree(src, w.a.root)


def wipe_journal(w: World) -> None:
    shutil.rmtree(os.path.join(w.a.root, "journal"))
    then = 1_000_000_000  # 2001: older than any grace period
    for d, _, names in os.walk(os.path.join(w.a.root, "data")):
        for n in names:
            os.utime(os.path.join(d, n), (then, then))


def weaken_slot(w: World) -> None:
    """Every key slot's Argon2id parameters lowered below the floor (an attacker wanting cheap guesses)."""
    for d, _, names in os.walk(os.path.join(w.a.root, "keys")):
        for n in names:
            p = os.path.join(d, n)
            slot = json.loads(open(p).read())
            slot["kdf"]["iterations"], slot["kdf"]["memory_kib"] = 1, 8
            open(p, "w").write(json.dumps(slot))


def tamper_config(w: World, field: str, value: object) -> None:
    p = os.path.join(w.a.root, "config")
    d = json.loads(open(p).read())
    assert d[field] != value
    d[field] = value
    open(p, "w").write(json.dumps(d))


def cross_vault(w: World) -> None:
    # the other vault's first chunk of /big: a full chunk, the very same size
    shutil.copyfile(key_path(w.b.root, w.b.chunks[b"/big"][1]), obj(w, b"/big", 1))


# name -> (attack, detection, affected files)
MATRIX: dict[str, tuple] = {
    "flip-first-byte": (lambda w: flip_at(obj(w, b"/big", 1), 0), "read", [b"/big"]),
    "flip-mid-block": (lambda w: flip_at(obj(w, b"/big", 1), 7 * CBS + 999), "read", [b"/big"]),
    "flip-tag": (lambda w: flip_at(obj(w, b"/big", 1), CBS - 3), "read", [b"/big"]),
    "flip-last-byte-of-full-chunk": (lambda w: flip_at(obj(w, b"/big", 1), CS // BS * CBS - 1), "read", [b"/big"]),
    "flip-padded-tail-chunk": (lambda w: flip_at(obj(w, b"/big", 2), 10), "read", [b"/big"]),
    "flip-small-file-in-pack": (lambda w: flip_at(obj(w, b"/small"), 2), "read", [b"/small"]),
    "truncate-mid-block": (lambda w: truncate(obj(w, b"/big", 1), 5 * CBS + 100), "read", [b"/big"]),
    "truncate-pack": (lambda w: truncate(obj(w, b"/twin1"), 1000), "read", [b"/twin1"]),
    "append-block-to-full-chunk": (lambda w: append(obj(w, b"/big", 1), CBS), "check", [b"/big"]),
    "append-block-to-padded-chunk": (lambda w: append(obj(w, b"/big", 2), CBS), "check", [b"/big"]),
    "reorder-blocks-in-object": (lambda w: reorder_blocks(obj(w, b"/big", 1), 2, 5), "read", [b"/big"]),
    "swap-objects-within-file": (lambda w: swap(obj(w, b"/big", 0), obj(w, b"/big", 1)), "read", [b"/big"]),
    "swap-objects-between-files": (lambda w: swap(obj(w, b"/twin1"), obj(w, b"/twin2")), "read",
                                   [b"/twin1", b"/twin2"]),
    "swap-object-between-vaults": (cross_vault, "read", [b"/big"]),
    "delete-object": (lambda w: os.unlink(obj(w, b"/big", 1)), "read", [b"/big"]),
    "replay-older-object": (lambda w: open(obj(w, b"/big", 0), "wb").write(w.old_big0), "read", [b"/big"]),
    "drop-journal-batch": (lambda w: os.unlink(journal_file(w, head(w) - 1)), "open", []),
    "replay-older-journal-batch": (lambda w: shutil.copyfile(journal_file(w, head(w) - 1),
                                                             journal_file(w, head(w))), "open", []),
    "reorder-journal-batches": (lambda w: swap_files(journal_file(w, head(w)), journal_file(w, head(w) - 1)),
                                "open", []),
    "roll-back-whole-store": (lambda w: replace_store(w, w.old), "open", []),
    "wipe-journal": (wipe_journal, "open", []),
    "weaken-kdf-of-key-slots": (weaken_slot, "open", []),
    "tamper-config-block-size": (lambda w: tamper_config(w, "block_size", 128 * 1024), "open", []),
}


def swap_files(p: str, q: str) -> None:
    tmp = p + ".x"
    os.rename(p, tmp)
    os.rename(q, p)
    os.rename(tmp, q)


@pytest.fixture
def attacked(world, tmp_path):
    """A private copy of the world to attack (and the device state of its writer)."""
    root = str(tmp_path / "a")
    shutil.copytree(world.a.root, root)
    state = str(tmp_path / "state")
    shutil.copytree(world.state, state)
    a = Golden(root, dict(world.a.chunks), list(world.a.journal))
    return World(a, world.old, world.old_big0, state, world.b)


def open_fs(w: World) -> FileSystem:
    return FileSystem(vault.open_vault(LocalStore(w.a.root), passphrase=PW), state_dir=w.state)


@pytest.mark.parametrize("name", list(MATRIX))
def test_tamper_matrix(attacked, name, caplog):
    w = attacked
    attack, detection, affected = MATRIX[name]
    control = open_fs(w)  # control: before the attack, everything reads back
    for path in FILES:
        assert read_all(control, path) == expected(path), path
    control.close()
    attack(w)
    if detection == "open":
        with pytest.raises((VaultError, IntegrityError)):  # integrity, rollback and key-slot refusals alike
            open_fs(w)
        with pytest.raises((VaultError, IntegrityError)):
            v = vault.open_vault(LocalStore(w.a.root), passphrase=PW)
            checker.check(v, read_data=True, guard=RollbackGuard(w.state, v.vault_id, v.local_key))
        return
    fs = open_fs(w)
    try:
        for path in FILES:
            if path in affected and detection == "read":
                caplog.clear()
                with caplog.at_level(logging.ERROR):
                    with pytest.raises(IntegrityError) as ei:
                        read_all(fs, path)
                assert ei.value.errno == errno.EIO
                assert any(k in caplog.text for k in w.a.chunks[path]), caplog.text
            else:
                assert read_all(fs, path) == expected(path), path  # never wrong bytes
    finally:
        fs.close()
    report = checker.check(vault.open_vault(LocalStore(w.a.root), passphrase=PW), read_data=True)
    named = {p.split(":")[0] for p in report.problems}
    assert named == {p.decode() for p in affected}, report.problems


def test_truncation_at_every_block_edge_is_detected(world, tmp_path):
    """Cut /big's second chunk (a full one) at each of its 64 block edges: EIO every time."""
    for blocks in range(CS // BS):
        root = str(tmp_path / f"cut{blocks}")
        shutil.copytree(world.a.root, root)
        p = key_path(root, world.a.chunks[b"/big"][1])
        os.truncate(p, blocks * CBS)
        fs = FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))
        try:
            with pytest.raises(IntegrityError):
                read_all(fs, b"/big")
            assert read_all(fs, b"/dir/other") == FILES[b"/dir/other"]
        finally:
            fs.close()
        shutil.rmtree(root)


def test_matrix_names_every_attack_of_the_issue():
    wanted = {"flip", "truncate", "append", "reorder-blocks", "swap-objects-within-file",
              "swap-objects-between-files", "swap-object-between-vaults", "delete", "replay-older-object",
              "replay-older-journal", "roll-back-whole-store", "weaken-kdf", "drop-journal-batch"}
    assert all(any(n.startswith(w) for n in MATRIX) for w in wanted)


def _snapshot(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_check_never_modifies_the_vault(attacked):
    """`check --read-data` of a damaged vault reports, and leaves every object as it found it."""
    w = attacked
    flip_at(obj(w, b"/big", 1), 100)
    os.unlink(obj(w, b"/twin2"))
    before = _snapshot(w.a.root)
    v = vault.open_vault(LocalStore(w.a.root), passphrase=PW)
    report = checker.check(v, read_data=True, guard=RollbackGuard(w.state, v.vault_id, v.local_key))
    assert {p.split(":")[0] for p in report.problems} == {"/big", "/twin2"}
    assert _snapshot(w.a.root) == before
