"""Tampering with the store under a real mount: EIO and a log line naming the object, never wrong bytes.

Which data objects belong to which file is found by writing each file in its
own mount session and diffing the store's listing of data/ between sessions.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB
CHUNK = 4 * MiB


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def data_objects(store) -> set[str]:
    out = set()
    for dirpath, _, files in os.walk(os.path.join(store, "data")):
        out |= {os.path.join(dirpath, f) for f in files}
    return out


def key_of(path: str) -> str:
    return "data/" + os.path.basename(path)  # the store fans data/<id> out into data/<id[:2]>/<id>


def read_all(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def expect_eio(path) -> None:
    with pytest.raises(OSError) as ei:
        read_all(path)
    assert ei.value.errno == errno.EIO, ei.value


@pytest.fixture
def three_files(make_vault):
    """A vault holding three files, each written in its own session: (vault, {name: (data, objects)})."""
    vm = make_vault()
    contents = {"first.bin": rnd(CHUNK + 300 * KiB, 1), "second.bin": rnd(200 * KiB, 2),
                "third.bin": rnd(150 * KiB, 3)}
    owned = {}
    seen = data_objects(vm.store)
    for name, data in contents.items():
        vm.mount()
        with open(vm.path(name), "wb") as f:
            f.write(data)
        vm.unmount()
        now = data_objects(vm.store)
        owned[name] = sorted(now - seen)
        seen = now
    assert len(owned["first.bin"]) == 2 and owned["second.bin"] and owned["third.bin"]
    return vm, {n: (contents[n], owned[n]) for n in contents}


def test_flipped_byte_gives_eio_and_names_the_object(three_files):
    vm, files = three_files
    data1, objs1 = files["first.bin"]
    # first.bin's chunk 0 object is the larger one (a whole 4 MiB chunk); damage it
    damaged = max(objs1, key=os.path.getsize)
    with open(damaged, "r+b") as f:
        f.seek(100_000)
        b = f.read(1)
        f.seek(100_000)
        f.write(bytes([b[0] ^ 0x01]))
    vm.mount()
    expect_eio(vm.path("first.bin"))
    # the undamaged chunk of the same file still reads, and so do the other files
    fd = os.open(vm.path("first.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, CHUNK + 10) == data1[CHUNK + 10:CHUNK + 1010]
        with pytest.raises(OSError) as ei:
            os.pread(fd, 10, 100_000)
        assert ei.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert read_all(vm.path("second.bin")) == files["second.bin"][0]
    assert read_all(vm.path("third.bin")) == files["third.bin"][0]
    # the mount stays usable
    with open(vm.path("new.bin"), "wb") as f:
        f.write(b"after the damage")
    assert read_all(vm.path("new.bin")) == b"after the damage"
    vm.unmount()
    assert key_of(damaged) in vm.stderr, vm.stderr
    lines = [ln for ln in vm.stderr.splitlines() if key_of(damaged) in ln]
    assert any("ERROR" in ln for ln in lines), lines
    assert "Traceback" not in vm.stderr


def test_deleted_object_gives_eio(three_files):
    vm, files = three_files
    _, objs2 = files["second.bin"]
    os.unlink(objs2[0])
    vm.mount()
    expect_eio(vm.path("second.bin"))
    expect_eio(vm.path("second.bin"))  # still, on a second try
    assert read_all(vm.path("first.bin")) == files["first.bin"][0]
    assert read_all(vm.path("third.bin")) == files["third.bin"][0]
    vm.unmount()
    assert key_of(objs2[0]) in vm.stderr, vm.stderr


def test_truncated_and_swapped_objects_give_eio(three_files):
    vm, files = three_files
    _, objs2 = files["second.bin"]
    _, objs3 = files["third.bin"]
    with open(objs3[0], "r+b") as f:
        f.truncate(os.path.getsize(objs3[0]) // 2)
    # second.bin's object replaced by a copy of first.bin's small chunk object (a valid object of this vault)
    small1 = min(files["first.bin"][1], key=os.path.getsize)
    with open(small1, "rb") as f:
        other = f.read()
    with open(objs2[0], "wb") as f:
        f.write(other)
    vm.mount()
    expect_eio(vm.path("third.bin"))
    expect_eio(vm.path("second.bin"))
    assert read_all(vm.path("first.bin")) == files["first.bin"][0]
    vm.unmount()
    assert key_of(objs3[0]) in vm.stderr and key_of(objs2[0]) in vm.stderr, vm.stderr


def test_truncated_padding_reads_right_bytes_and_check_reports_it(three_files, cli):
    """Cutting only padding off a small object changes no authenticated byte: reads stay correct, `check` flags it."""
    vm, files = three_files
    _, objs3 = files["third.bin"]
    from encfs_photo import crypto

    size = os.path.getsize(objs3[0])
    n = len(files["third.bin"][0])  # 150 KiB: blocks of 64, 64 and 22 KiB
    body = 2 * crypto.block_ciphertext_len(64 * KiB) + crypto.block_ciphertext_len(n - 128 * KiB)
    assert size == crypto.padme(body) > body  # the object ends in padding
    with open(objs3[0], "r+b") as f:
        f.truncate(size - 1)
    vm.mount()
    assert read_all(vm.path("third.bin")) == files["third.bin"][0]
    vm.unmount()
    r = cli.run("check", vm.store, "--password-file", vm.pwfile)
    assert r.returncode == 1
    assert "/third.bin" in r.stdout and "first.bin" not in r.stdout
