"""Zero knowledge at rest: nothing in the store folder reveals names, contents, sizes or keys.

Names, contents, xattrs, a symlink target and even the passphrase carry a
distinctive marker; after unmount every byte of every file (and every path)
in the store folder is searched for it raw, as UTF-16-LE, as base64 at each of
the three alignments, and as hex. Object sizes must not give away file sizes.
"""

from __future__ import annotations

import base64
import os
import random

import pytest

from encfs_photo import crypto, vault
from encfs_photo.fs import FileSystem
from encfs_photo.meta import ROOT_INO
from encfs_photo.store import LocalStore

MARKER = b"ZEBRAMARKER42"
PW = "pass " + MARKER.decode() + " phrase"
UID, GID = os.getuid(), os.getgid()
ODD_SIZE = 1_000_003


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")


def encodings(secret: bytes) -> dict[str, bytes]:
    """Byte strings any encoding of ``secret`` would contain."""
    out = {
        "raw": secret,
        "utf16le": secret.decode("latin-1").encode("utf-16-le"),
        "utf16be": secret.decode("latin-1").encode("utf-16-be"),
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
    }
    for k in range(3):
        for name, enc in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            full = enc(bytes(k) + secret)
            # Drop the first group (it mixes in the prefix) and the last (it mixes in what follows).
            out[f"{name}-align{k}"] = full[4 if k else 0:-4]
    return out


def test_encodings_helper_finds_what_it_should():
    """Control for the scanner: each pattern is found in data that embeds the marker so encoded."""
    for k in range(3):
        blob = b"xx" + base64.b64encode(b"abc"[:k] + MARKER + b"tail") + b"yy"
        assert encodings(MARKER)[f"b64-align{k}"] in blob
    assert encodings(MARKER)["utf16le"] in "A ZEBRAMARKER42 B".encode("utf-16-le")
    assert all(len(v) >= 12 for v in encodings(MARKER).values())


def scan(root: str, secrets: dict[str, bytes]) -> list[str]:
    patterns = {f"{sname}/{ename}": pat for sname, s in secrets.items() for ename, pat in encodings(s).items()}
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            for pname, pat in patterns.items():
                if pat.lower() in name.encode().lower():
                    hits.append(f"{pname} in path {os.path.join(dirpath, name)}")
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                data = f.read()
            for pname, pat in patterns.items():
                if pat in data:
                    hits.append(f"{pname} in {os.path.relpath(p, root)} at {data.find(pat)}")
    return hits


def populate(fs: FileSystem) -> dict[bytes, int]:
    """Files and dirs named after the marker, holding it; returns path -> size written."""
    sizes = {}
    r = random.Random(42)
    d = fs.mkdir(ROOT_INO, b"dir-" + MARKER, 0o755, UID, GID)
    sub = fs.mkdir(d, MARKER + b"-sub", 0o755, UID, GID)
    fs.setxattr(d, b"user." + MARKER, b"value " + MARKER)

    def write(parent: int, name: bytes, data: bytes) -> int:
        ino, fh = fs.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        fs.write(fh, 0, data)
        fs.release(fh)
        sizes[name] = len(data)
        return ino

    write(ROOT_INO, MARKER, MARKER)
    write(d, MARKER + b".txt", (b"line with " + MARKER + b"\n") * 5000)
    write(sub, b"utf16-" + MARKER, ("text " + MARKER.decode() + " ").encode("utf-16-le") * 100)
    # The odd-sized file: the marker at many offsets, across block edges too.
    odd = bytearray(r.randbytes(ODD_SIZE))
    for off in list(range(0, ODD_SIZE - 20, 65536 - 5)) + [ODD_SIZE - len(MARKER)]:
        odd[off:off + len(MARKER)] = MARKER
    ino = write(d, b"odd-" + MARKER + b".raw", bytes(odd))
    fs.setxattr(ino, b"user.comment", MARKER * 10)
    fs.setxattr(ino, b"user.xmp-" + MARKER, base64.b64encode(MARKER))
    fs.symlink(sub, b"link-" + MARKER, b"../target-" + MARKER, UID, GID)
    fs.link(ino, ROOT_INO, b"hardlink-" + MARKER)
    # A renamed and a deleted file: old names and contents must not linger either.
    write(ROOT_INO, b"old-" + MARKER, MARKER * 1000)
    fs.rename(ROOT_INO, b"old-" + MARKER, d, b"new-" + MARKER)
    write(ROOT_INO, b"deleted-" + MARKER, MARKER * 3000)
    fs.unlink(ROOT_INO, b"deleted-" + MARKER)
    return sizes


@pytest.fixture(scope="module")
def vault_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENCFS_PHOTO_FAST_KDF", "1")
        root = str(tmp_path_factory.mktemp("leak") / "store")
        store = LocalStore(root)
        _, recovery = vault.create(store, PW)
        v = vault.open_vault(store, passphrase=PW)
        keys = {"master": v._master, "content": v.content_key, "meta": v.meta_key, "names": v.names_key,
                "local": v.local_key}
        fs = FileSystem(v)
        sizes = populate(fs)
        fs.sync()
        fs.close()
        return {"root": root, "recovery": recovery, "keys": keys, "sizes": sizes}


def test_no_marker_anywhere_in_store(vault_dir):
    hits = scan(vault_dir["root"], {"marker": MARKER})
    assert hits == []


def test_no_key_material_or_recovery_key_in_store(vault_dir):
    rec = vault_dir["recovery"]
    secrets = {name: k for name, k in vault_dir["keys"].items()}
    secrets["recovery"] = rec.encode()
    secrets["recovery-nodash"] = rec.replace("-", "").encode()
    secrets["passphrase"] = PW.encode()
    assert all(len(k) == 32 for k in vault_dir["keys"].values())
    assert scan(vault_dir["root"], secrets) == []


def test_scanner_control_detects_a_plaintext_leak(vault_dir, tmp_path):
    """Control: the same scan finds the marker once it is planted in any of its encodings."""
    for i, (ename, pat) in enumerate(encodings(MARKER).items()):
        d = tmp_path / f"plant{i}"
        d.mkdir()
        (d / "obj").write_bytes(os.urandom(100) + pat + os.urandom(100))
        assert scan(str(d), {"marker": MARKER}), ename


def test_readable_back_with_the_passphrase(vault_dir):
    """Control: the store really holds the data (the scan did not pass because nothing was written)."""
    fs = FileSystem(vault.open_vault(LocalStore(vault_dir["root"]), passphrase=PW))
    ino = fs.resolve(b"/dir-" + MARKER + b"/odd-" + MARKER + b".raw")
    assert fs.getattr(ino)["st_size"] == ODD_SIZE
    fh = fs.open(ino, os.O_RDONLY)
    assert fs.read(fh, ODD_SIZE - len(MARKER), 100) == MARKER
    fs.release(fh)
    assert fs.getxattr(ino, b"user.comment") == MARKER * 10
    assert fs.readlink(fs.resolve(b"/dir-" + MARKER + b"/" + MARKER + b"-sub/link-" + MARKER)) == \
        b"../target-" + MARKER


def object_sizes(root: str, prefix: str) -> list[int]:
    store = LocalStore(root)
    return [store.stat(k) for k in store.list(prefix)]


def test_object_sizes_do_not_reveal_file_sizes(vault_dir):
    sizes = object_sizes(vault_dir["root"], "data/")
    assert sizes
    nblocks = -(-ODD_SIZE // 65536)
    exact = {ODD_SIZE + 16 * k for k in range(0, nblocks + 64)}
    assert not exact & set(sizes), sorted(sizes)
    for name, n in vault_dir["sizes"].items():
        assert n + 16 * max(1, -(-n // 65536)) not in sizes, name


def test_sizes_are_padme_buckets(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    vault.create(store, PW, with_recovery=False)
    fs = FileSystem(vault.open_vault(store, passphrase=PW))
    # Above the pack threshold (256 KiB): each file is one chunk object of its own.
    lengths = [300_001, 300_050, 301_000, 1_000_003, 1_000_500, 1_010_000]
    for i, n in enumerate(lengths):
        ino, fh = fs.create(ROOT_INO, b"f%d" % i, 0o644, os.O_WRONLY | os.O_CREAT, UID, GID)
        fs.write(fh, 0, os.urandom(n))
        fs.release(fh)
    fs.close()
    sizes = object_sizes(str(tmp_path / "store"), "data/")
    assert len(sizes) == len(lengths)
    for n in lengths:
        assert crypto.padme(n + 16 * -(-n // 65536)) in sizes
    assert len(set(sizes)) < len(lengths)  # different file sizes share an object size
    for n in lengths:
        assert n + 16 * -(-n // 65536) not in sizes


def test_no_temp_files_left(vault_dir):
    tmp = os.path.join(vault_dir["root"], ".tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []
