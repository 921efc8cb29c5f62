"""Tamper matrix over a LocalStore: every attack on the stored bytes gives EIO, never wrong bytes.

A golden vault is written once per layout; each case copies it, applies one
attack with plain file operations on the store folder (what a hostile bucket
or a damaged disk can do), and opens it again.

* chunk attacks (flip, truncate, swap, delete a data object): reading the
  affected file raises IntegrityError (errno EIO); every other file still
  reads back exactly.
* journal attacks (drop a batch, roll the newest back to an older batch's
  bytes, flip a byte, reorder): opening the FileSystem raises IntegrityError.

Journal layouts: ``closed`` (clean unmount: the newest batch is a snapshot)
and ``crashed`` (synced deltas, no unmount: opening replays the whole chain).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from dataclasses import dataclass, field

import pytest

from encfs_photo import crypto, vault
from encfs_photo.content import DATA_PREFIX
from encfs_photo.errors import IntegrityError
from encfs_photo.fs import FileSystem
from encfs_photo.meta import JOURNAL_PREFIX, ROOT_INO
from encfs_photo.store import LocalStore

PW = "tamper"
BS, CS = 64 * 1024, 4 * 1024 * 1024
CBS = BS + 16  # one ciphertext block
UID, GID = os.getuid(), os.getgid()


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


FILES = {
    b"/big": rand(2 * CS + 1000, 1),      # chunks: full, full, small (padded)
    b"/twin1": rand(200_000, 2),          # one padded chunk each, same object size
    b"/twin2": rand(200_000, 3),
    b"/dir/other": rand(50_000, 4),       # a control that no chunk attack touches
    b"/small": b"tiny file",
}


@dataclass
class Golden:
    root: str
    chunks: dict[bytes, list[str]] = field(default_factory=dict)  # path -> data keys by chunk index
    journal: list[str] = field(default_factory=list)  # batch keys by sequence number


def key_path(root: str, key: str) -> str:
    head, _, tail = key.rpartition("/")
    return os.path.join(root, head, tail[:2], tail)


def build(root: str, layout: str) -> Golden:
    store = LocalStore(root)
    vault.create(store, PW, with_recovery=False)
    v = vault.open_vault(store, passphrase=PW)
    names_key = v.names_key
    fs = FileSystem(v)
    fs.mkdir(ROOT_INO, b"dir", 0o755, UID, GID)
    for path, data in FILES.items():
        head, _, name = path.rpartition(b"/")
        ino, fh = fs.create(fs.resolve(head or b"/"), name, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        fs.write(fh, 0, data)
        fs.flush(fh)
        fs.release(fh)
        fs.sync()  # one journal batch per file (a close alone goes to the close log)
    fs.symlink(ROOT_INO, b"link", b"dir/other", UID, GID)
    fs.sync()
    g = Golden(root)
    for path in FILES:
        node = fs.ns.inodes[fs.resolve(path)]
        g.chunks[path] = [node.chunks[i].key for i in sorted(node.chunks)]
    if layout == "closed":
        fs.close()
    # (crashed: the FileSystem is dropped without close, as by kill -9 after the last fsync)
    seq = 0
    while store.exists(JOURNAL_PREFIX + crypto.journal_name(names_key, seq)):
        g.journal.append(JOURNAL_PREFIX + crypto.journal_name(names_key, seq))
        seq += 1
    assert set(store.list(JOURNAL_PREFIX)) == set(g.journal)
    assert len(g.journal) >= 6
    assert [len(g.chunks[p]) for p in FILES] == [3, 1, 1, 1, 1]
    return g


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENCFS_PHOTO_FAST_KDF", "1")
        return {layout: build(str(tmp_path_factory.mktemp(layout) / "store"), layout)
                for layout in ("closed", "crashed")}


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


def copy_of(g: Golden, tmp_path) -> str:
    dst = str(tmp_path / "store")
    shutil.copytree(g.root, dst)
    return dst


def open_fs(root: str) -> FileSystem:
    return FileSystem(vault.open_vault(LocalStore(root), passphrase=PW))


def read_all(fs: FileSystem, path: bytes) -> bytes:
    ino = fs.resolve(path)
    fh = fs.open(ino, os.O_RDONLY)
    try:
        return fs.read(fh, 0, fs.getattr(ino)["st_size"])
    finally:
        fs.release(fh)


# ------------------------------------------------------------------ attacks on files in the store


def flip_at(p: str, pos: int) -> None:
    with open(p, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))


def truncate_to(p: str, size: int) -> None:
    assert os.path.getsize(p) > size
    os.truncate(p, size)


def swap(p: str, q: str) -> None:
    a, b = open(p, "rb").read(), open(q, "rb").read()
    assert len(a) == len(b)  # same size: only the cryptographic binding can tell them apart
    open(p, "wb").write(b)
    open(q, "wb").write(a)


def ct_len(plain: int) -> int:
    """Bytes of real ciphertext in a chunk object of ``plain`` plaintext bytes (before padding)."""
    return plain + 16 * max(1, -(-plain // BS))


BIG_LAST = len(FILES[b"/big"]) - 2 * CS
TWIN = len(FILES[b"/twin1"])

# name -> (attack(root, golden), affected paths)
CHUNK_ATTACKS = {
    "flip-first-byte": (lambda r, g: flip_at(key_path(r, g.chunks[b"/big"][0]), 0), [b"/big"]),
    "flip-mid-block": (lambda r, g: flip_at(key_path(r, g.chunks[b"/big"][0]), 3 * CBS + 777), [b"/big"]),
    "flip-tag": (lambda r, g: flip_at(key_path(r, g.chunks[b"/big"][1]), CBS - 1), [b"/big"]),
    "flip-last-byte-full-chunk": (lambda r, g: flip_at(key_path(r, g.chunks[b"/big"][1]), CS + 64 * 16 - 1),
                                  [b"/big"]),
    "flip-small-chunk": (lambda r, g: flip_at(key_path(r, g.chunks[b"/big"][2]), 100), [b"/big"]),
    "flip-padded-last-ciphertext-byte": (lambda r, g: flip_at(key_path(r, g.chunks[b"/twin1"][0]),
                                                              ct_len(TWIN) - 1), [b"/twin1"]),
    "flip-tiny-file": (lambda r, g: flip_at(key_path(r, g.chunks[b"/small"][0]), 3), [b"/small"]),
    "truncate-block-edge": (lambda r, g: truncate_to(key_path(r, g.chunks[b"/big"][0]), 10 * CBS), [b"/big"]),
    "truncate-block-edge-last-block": (lambda r, g: truncate_to(key_path(r, g.chunks[b"/twin1"][0]),
                                                                (TWIN // BS) * CBS), [b"/twin1"]),
    "truncate-mid-block": (lambda r, g: truncate_to(key_path(r, g.chunks[b"/big"][1]), 5 * CBS + 100),
                           [b"/big"]),
    "truncate-mid-last-block": (lambda r, g: truncate_to(key_path(r, g.chunks[b"/twin2"][0]), ct_len(TWIN) - 5),
                                [b"/twin2"]),
    "truncate-to-empty": (lambda r, g: truncate_to(key_path(r, g.chunks[b"/small"][0]), 0), [b"/small"]),
    "swap-same-file": (lambda r, g: swap(key_path(r, g.chunks[b"/big"][0]), key_path(r, g.chunks[b"/big"][1])),
                       [b"/big"]),
    "swap-between-files": (lambda r, g: swap(key_path(r, g.chunks[b"/twin1"][0]),
                                             key_path(r, g.chunks[b"/twin2"][0])), [b"/twin1", b"/twin2"]),
    "delete-full-chunk": (lambda r, g: os.unlink(key_path(r, g.chunks[b"/big"][1])), [b"/big"]),
    "delete-padded-chunk": (lambda r, g: os.unlink(key_path(r, g.chunks[b"/twin2"][0])), [b"/twin2"]),
}


def test_golden_vault_reads_back(golden, tmp_path):
    """Control: without an attack every file of both layouts reads back exactly."""
    for layout, g in golden.items():
        fs = open_fs(copy_of(g, tmp_path / layout))
        for path, data in FILES.items():
            assert read_all(fs, path) == data, (layout, path)
        assert fs.readlink(fs.resolve(b"/link")) == b"dir/other"


@pytest.mark.parametrize("attack", list(CHUNK_ATTACKS))
def test_chunk_attack(golden, tmp_path, attack, caplog):
    fn, affected = CHUNK_ATTACKS[attack]
    g = golden["closed"]
    root = copy_of(g, tmp_path)
    fn(root, g)
    fs = open_fs(root)  # metadata is intact: the vault opens
    for path, data in FILES.items():
        if path in affected:
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                with pytest.raises(IntegrityError) as ei:
                    read_all(fs, path)
            assert ei.value.errno == errno.EIO
            # The log names the damaged object, so an operator can find it.
            assert any(key in caplog.text for key in g.chunks[path]), caplog.text
        else:
            assert read_all(fs, path) == data, path
    # A read of only the untouched first bytes of a multi-chunk file may still succeed,
    # but it must never return wrong bytes.
    if b"/big" in affected:
        fh = fs.open(fs.resolve(b"/big"), os.O_RDONLY)
        try:
            for off in (0, CS - 10, CS, 2 * CS):
                try:
                    assert fs.read(fh, off, 20) == FILES[b"/big"][off:off + 20]
                except IntegrityError:
                    pass
        finally:
            fs.release(fh)


def test_padding_bytes_are_not_read(golden, tmp_path):
    """Padding after the ciphertext is random filler: damaging it changes nothing read."""
    g = golden["closed"]
    root = copy_of(g, tmp_path)
    p = key_path(root, g.chunks[b"/twin1"][0])
    assert os.path.getsize(p) > ct_len(TWIN)
    flip_at(p, os.path.getsize(p) - 1)
    assert read_all(open_fs(root), b"/twin1") == FILES[b"/twin1"]


# ------------------------------------------------------------------ attacks on the journal


def j(r: str, g: Golden, seq: int) -> str:
    return key_path(r, g.journal[seq])


def middle(g: Golden) -> int:
    return len(g.journal) // 2


def newest(g: Golden) -> int:
    return len(g.journal) - 1


def replace_with(r: str, g: Golden, victim: int, source: int) -> None:
    shutil.copyfile(j(r, g, source), j(r, g, victim))


def reorder(r: str, g: Golden, a: int, b: int) -> None:
    pa, pb = j(r, g, a), j(r, g, b)
    tmp = pa + ".x"
    os.rename(pa, tmp)
    os.rename(pb, pa)
    os.rename(tmp, pb)


JOURNAL_ATTACKS = {
    "delete-middle-batch": lambda r, g: os.unlink(j(r, g, middle(g))),
    "delete-second-newest-batch": lambda r, g: os.unlink(j(r, g, newest(g) - 1)),
    "newest-replaced-by-previous": lambda r, g: replace_with(r, g, newest(g), newest(g) - 1),
    "newest-replaced-by-first": lambda r, g: replace_with(r, g, newest(g), 0),
    "newest-replaced-by-middle": lambda r, g: replace_with(r, g, newest(g), middle(g)),
    "flip-newest-first-byte": lambda r, g: flip_at(j(r, g, newest(g)), 0),
    "flip-newest-mid": lambda r, g: flip_at(j(r, g, newest(g)), os.path.getsize(j(r, g, newest(g))) // 2),
    "flip-newest-last-byte": lambda r, g: flip_at(j(r, g, newest(g)), os.path.getsize(j(r, g, newest(g))) - 1),
    "truncate-newest": lambda r, g: truncate_to(j(r, g, newest(g)), os.path.getsize(j(r, g, newest(g))) - 16),
    "empty-newest": lambda r, g: truncate_to(j(r, g, newest(g)), 0),
    "swap-newest-two": lambda r, g: reorder(r, g, newest(g), newest(g) - 1),
}
# Attacks on batches a clean unmount's final snapshot supersedes are only visible in the
# crashed layout, where opening reads the whole chain.
CRASHED_ONLY = {
    "flip-middle-batch": lambda r, g: flip_at(j(r, g, middle(g)), 40),
    "middle-replaced-by-earlier": lambda r, g: replace_with(r, g, middle(g), middle(g) - 1),
    "swap-middle-two": lambda r, g: reorder(r, g, middle(g), middle(g) + 1),
}

JOURNAL_CASES = [(layout, name) for layout in ("closed", "crashed") for name in JOURNAL_ATTACKS] + \
                [("crashed", name) for name in CRASHED_ONLY]


@pytest.mark.parametrize("layout,attack", JOURNAL_CASES, ids=[f"{lay}-{a}" for lay, a in JOURNAL_CASES])
def test_journal_attack(golden, tmp_path, layout, attack):
    g = golden[layout]
    root = copy_of(g, tmp_path)
    fn = JOURNAL_ATTACKS.get(attack) or CRASHED_ONLY[attack]
    fn(root, g)
    v = vault.open_vault(LocalStore(root), passphrase=PW)  # the key slots are untouched
    with pytest.raises(IntegrityError) as ei:
        FileSystem(v)
    assert ei.value.errno == errno.EIO


def test_journal_layouts_differ_as_intended(golden):
    """The crashed layout's newest batch is a delta, the closed one's a snapshot (one more batch)."""
    assert len(golden["closed"].journal) == len(golden["crashed"].journal) + 1


def test_foreign_data_object_is_ignored(golden, tmp_path):
    """An extra object planted in data/ is not referenced and changes nothing read."""
    g = golden["closed"]
    root = copy_of(g, tmp_path)
    planted = key_path(root, DATA_PREFIX + "ab" * 16)
    os.makedirs(os.path.dirname(planted), exist_ok=True)
    shutil.copyfile(key_path(root, g.chunks[b"/twin1"][0]), planted)
    fs = open_fs(root)
    for path, data in FILES.items():
        assert read_all(fs, path) == data


def test_spliced_fork_is_refused(golden, tmp_path):
    """Two devices continued one vault from the same state (a restored backup, say): each
    history alone opens, and mixing batches of the two (each validly encrypted under its own
    sequence number) is caught by the hash chain alone."""
    g = golden["crashed"]
    roots = {}
    for side in ("a", "b"):
        root = copy_of(g, tmp_path / side)
        v = vault.open_vault(LocalStore(root), passphrase=PW)
        names_key = v.names_key
        fs = FileSystem(v)
        for i in range(2):
            ino, fh = fs.create(ROOT_INO, f"{side}{i}".encode(), 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
            fs.write(fh, 0, side.encode() * 100)
            fs.flush(fh)
            fs.release(fh)
            fs.sync()  # one batch each
        roots[side] = root  # dropped without close: the new batches stay deltas
    n = len(g.journal)
    keys = [JOURNAL_PREFIX + crypto.journal_name(names_key, seq) for seq in (n, n + 1)]
    for side, root in roots.items():
        assert all(os.path.exists(key_path(root, k)) for k in keys)
        assert not os.path.exists(key_path(root, JOURNAL_PREFIX + crypto.journal_name(names_key, n + 2)))
        fs = open_fs(root)
        assert read_all(fs, f"/{side}1".encode()) == side.encode() * 100

    def splice(take_from_b: list[int]) -> str:
        dst = str(tmp_path / ("mix" + "".join(map(str, take_from_b))))
        shutil.copytree(roots["a"], dst)
        shutil.copytree(os.path.join(roots["b"], "data"), os.path.join(dst, "data"), dirs_exist_ok=True)
        for i in take_from_b:
            shutil.copyfile(key_path(roots["b"], keys[i]), key_path(dst, keys[i]))
        return dst

    # Control: taking both of B's batches is simply B's history, which is consistent.
    assert read_all(open_fs(splice([0, 1])), b"/b1") == b"b" * 100
    for mix in ([1], [0]):
        v = vault.open_vault(LocalStore(splice(mix)), passphrase=PW)
        with pytest.raises(IntegrityError) as ei:
            FileSystem(v)
        assert ei.value.errno == errno.EIO
