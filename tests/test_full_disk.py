"""A full store disk gives ENOSPC to the writer, loses nothing already stored, and recovers."""

import errno
import os
import subprocess

import pytest

from encfs_photo import vault
from encfs_photo.errors import EncfsPhotoError
from encfs_photo.fs import FileSystem
from encfs_photo.store import LocalStore


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(d)], check=True)
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_enospc_then_recovery(small_disk, monkeypatch):
    monkeypatch.setenv("ENCFS_PHOTO_FAST_KDF", "1")
    store = os.path.join(small_disk, "vault")
    os.mkdir(store)
    vault.create(LocalStore(store), "pw")
    fs = FileSystem(vault.open_vault(LocalStore(store), passphrase="pw"))
    keep = os.urandom(3_000_000)
    _, fh = fs.create(1, b"keep.raw", 0o644, os.O_WRONLY, 0, 0)
    fs.write(fh, 0, keep)
    fs.flush(fh)
    fs.release(fh)
    # fill a 12 MiB disk with 20 MiB: the error reaches the writer (write or close), as ENOSPC
    ino, fh = fs.create(1, b"big.raw", 0o644, os.O_WRONLY, 0, 0)
    with pytest.raises(EncfsPhotoError) as exc:
        for off in range(0, 20 << 20, 1 << 20):
            fs.write(fh, off, os.urandom(1 << 20))
        fs.flush(fh)
    assert exc.value.errno == errno.ENOSPC
    fs.release(fh)
    fs.unlink(1, b"big.raw")  # the user frees space by deleting the file that did not fit
    fs.sync()
    fs.close()
    # what was stored before is intact, and the vault opens
    fs = FileSystem(vault.open_vault(LocalStore(store), passphrase="pw"))
    fh = fs.open(fs.resolve(b"/keep.raw"), os.O_RDONLY)
    assert fs.read(fh, 0, len(keep)) == keep
    fs.release(fh)
    _, fh = fs.create(1, b"after.txt", 0o644, os.O_WRONLY, 0, 0)
    fs.write(fh, 0, b"room again")
    fs.flush(fh)
    fs.release(fh)
    fs.close()


@pytest.mark.mount
def test_a_full_store_disk_is_enospc_through_the_mount(small_disk, cli, tmp_path):
    """The same through a real mount: write() or close() gets ENOSPC, the mount stays up, what was
    stored reads back, deleting the file that did not fit makes room, and the vault remounts."""
    from conftest import FUSE_OK, FUSE_WHY, VaultMount

    if not FUSE_OK:
        pytest.skip(f"no FUSE: {FUSE_WHY}")
    vm = VaultMount(cli, tmp_path)
    vm.store = type(vm.store)(small_disk) / "vault"  # the store on the 12 MiB tmpfs
    vm.init()
    try:
        vm.mount()
        keep = os.urandom(3_000_000)
        (vm.mnt / "keep.raw").write_bytes(keep)
        with pytest.raises(OSError) as exc:
            with open(vm.mnt / "big.raw", "wb") as f:
                for _ in range(20):
                    f.write(os.urandom(1 << 20))
                f.flush()
                os.fsync(f.fileno())
        assert exc.value.errno == errno.ENOSPC
        assert (vm.mnt / "keep.raw").read_bytes() == keep
        os.unlink(vm.mnt / "big.raw")
        (vm.mnt / "after.txt").write_bytes(b"room again")
        vm.unmount()
        vm.mount()
        assert (vm.mnt / "keep.raw").read_bytes() == keep
        assert (vm.mnt / "after.txt").read_bytes() == b"room again"
        assert not (vm.mnt / "big.raw").exists()
        vm.unmount()
    finally:
        vm.cleanup()
