"""The user-facing command-line contract (README "Use", ARCHITECTURE "The command line").

Exit status 0 success, 1 a user error with exactly one line on stderr and no
traceback (and nothing in the store changed), 2 a usage error.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from conftest import (
    PASSPHRASE,
    fuse_unmount,
    is_mounted,
    pid_alive,
    stop_detached,
    tree_digest,
    wait_until,
)

from encfs_photo import __version__

RECOVERY_RE = re.compile(r"^\s*([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})\s*$", re.M)


def assert_user_error(r, *, contains: str | None = None) -> str:
    """Exit 1, one line on stderr, no traceback; returns the line."""
    assert r.returncode == 1, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert "Traceback" not in r.stderr + r.stdout
    line = lines[0]
    assert line.startswith("encfs-photo: "), line
    if contains is not None:
        assert contains in line.lower(), line
    return line


def data_objects(store) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(store, "data")):
        out += [os.path.join(dirpath, f) for f in files]
    return sorted(out)


def flip_byte(path: str, offset: int = 20) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


# ------------------------------------------------------------------ no mount needed


def test_version(cli):
    r = cli.run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"encfs-photo {__version__}"


@pytest.mark.parametrize("argv", [[], ["mount"], ["mount", "only-store"], ["frobnicate"],
                                  ["init", "x", "--no-such-option"], ["unmount"], ["check"]])
def test_usage_error_exit_2(cli, argv):
    r = cli.run(*argv)
    assert r.returncode == 2, r
    assert "usage:" in r.stderr
    assert "Traceback" not in r.stderr


def test_init_prints_recovery_key(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    store = tmp_path / "store"
    r = cli.run("init", store, "--password-file", pw)
    assert r.returncode == 0, r.stderr
    keys = RECOVERY_RE.findall(r.stdout)
    assert len(keys) == 1, r.stdout
    assert "Recovery key" in r.stdout
    assert (store / "config").is_file()
    # the recovery key, the passphrase and the password file name never land in the store
    for dirpath, _, files in os.walk(store):
        for f in files:
            blob = open(os.path.join(dirpath, f), "rb").read()
            assert keys[0].encode() not in blob and keys[0].replace("-", "").encode() not in blob
            assert PASSPHRASE.encode() not in blob


def test_init_no_recovery_key(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    r = cli.run("init", tmp_path / "store", "--password-file", pw, "--no-recovery-key")
    assert r.returncode == 0, r.stderr
    assert not RECOVERY_RE.findall(r.stdout)


def test_init_on_non_empty_folder(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    store = tmp_path / "photos"
    store.mkdir()
    (store / "IMG_0001.JPG").write_bytes(b"not a vault")
    before = tree_digest(store)
    assert_user_error(cli.run("init", store, "--password-file", pw), contains="not empty")
    assert tree_digest(store) == before


def test_init_on_existing_vault(cli, make_vault):
    vm = make_vault()
    before = tree_digest(vm.store)
    assert_user_error(cli.run("init", vm.store, "--password-file", vm.pwfile), contains="already")
    assert tree_digest(vm.store) == before


def test_init_with_empty_password_file(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("")
    assert_user_error(cli.run("init", tmp_path / "store", "--password-file", pw), contains="empty")


@pytest.mark.mount  # (mount checks /dev/fuse before it unlocks)
def test_mount_wrong_passphrase(cli, make_vault, tmp_path):
    vm = make_vault()
    bad = tmp_path / "bad-pw"
    bad.write_text("not the passphrase\n")
    before = tree_digest(vm.store)
    r = cli.run("mount", vm.store, vm.mnt, "--password-file", bad)
    assert_user_error(r, contains="passphrase")
    assert tree_digest(vm.store) == before
    assert not is_mounted(vm.mnt)
    # and with the foreground flag too
    assert_user_error(cli.run("mount", vm.store, vm.mnt, "--password-file", bad, "--foreground"))
    assert tree_digest(vm.store) == before


@pytest.mark.mount  # (mount checks /dev/fuse before it unlocks)
def test_mount_not_a_vault(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    store = tmp_path / "somefolder"
    store.mkdir()
    (store / "notes.txt").write_text("hello")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = tree_digest(store)
    assert_user_error(cli.run("mount", store, mnt, "--password-file", pw), contains="not an encfs-photo vault")
    assert tree_digest(store) == before
    assert not is_mounted(mnt)


@pytest.mark.mount  # (mount checks /dev/fuse before it unlocks)
def test_mount_store_missing(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert_user_error(cli.run("mount", tmp_path / "nothing-here", mnt, "--password-file", pw),
                      contains="does not exist")
    assert not (tmp_path / "nothing-here").exists()


def test_mount_missing_mountpoint(cli, make_vault, tmp_path):
    vm = make_vault()
    before = tree_digest(vm.store)
    assert_user_error(cli.run("mount", vm.store, tmp_path / "no-such-dir", "--password-file", vm.pwfile),
                      contains="does not exist")
    assert tree_digest(vm.store) == before
    assert not (tmp_path / "no-such-dir").exists()


def test_mount_mountpoint_is_a_file(cli, make_vault, tmp_path):
    vm = make_vault()
    f = tmp_path / "a-file"
    f.write_text("x")
    before = tree_digest(vm.store)
    assert_user_error(cli.run("mount", vm.store, f, "--password-file", vm.pwfile), contains="not a folder")
    assert tree_digest(vm.store) == before


def test_mount_non_empty_mountpoint(cli, make_vault):
    vm = make_vault()
    (vm.mnt / "something").write_text("keep me")
    before = tree_digest(vm.store)
    assert_user_error(cli.run("mount", vm.store, vm.mnt, "--password-file", vm.pwfile), contains="not empty")
    assert tree_digest(vm.store) == before
    assert (vm.mnt / "something").read_text() == "keep me"
    assert not is_mounted(vm.mnt)


def test_unmount_sync_status_of_a_folder_that_is_not_mounted(cli, tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    assert_user_error(cli.run("unmount", d), contains="not mounted")
    assert_user_error(cli.run("sync", d), contains="not an encfs-photo mount")
    assert_user_error(cli.run("status", d), contains="not an encfs-photo mount")
    r = cli.run("status")
    assert r.returncode == 0 and "no encfs-photo vaults are mounted" in r.stdout
    r = cli.run("status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"mounts": []}


def test_check_and_passwd_wrong_passphrase(cli, make_vault, tmp_path):
    vm = make_vault()
    bad = tmp_path / "bad"
    bad.write_text("nope")
    new = tmp_path / "new"
    new.write_text("a new passphrase")
    before = tree_digest(vm.store)
    assert_user_error(cli.run("check", vm.store, "--password-file", bad), contains="passphrase")
    assert_user_error(cli.run("passwd", vm.store, "--password-file", bad, "--new-password-file", new),
                      contains="passphrase")
    assert tree_digest(vm.store) == before


def test_check_healthy_empty_vault(cli, make_vault):
    vm = make_vault()
    r = cli.run("check", vm.store, "--password-file", vm.pwfile, "--read-data")
    assert r.returncode == 0, r.stderr
    assert "no problems found" in r.stdout


def test_recovery_key_opens_vault_without_mount(cli, make_vault, tmp_path):
    vm = make_vault()
    assert vm.recovery_key
    rk = tmp_path / "rk"
    rk.write_text(vm.recovery_key.lower().replace("-", " ") + "\n")  # typed sloppily: still accepted
    r = cli.run("check", vm.store, "--password-file", rk)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ with a mount


@pytest.mark.mount
def test_mount_on_already_mounted_mountpoint(cli, make_vault):
    a = make_vault("a").mount()
    b = make_vault("b")
    with open(a.path("file"), "wb") as f:
        f.write(b"a's data")
    before_a, before_b = tree_digest(a.store), tree_digest(b.store)
    # the same vault again, and a different vault, on the busy mount point
    assert_user_error(cli.run("mount", a.store, a.mnt, "--password-file", a.pwfile), contains="busy")
    assert_user_error(cli.run("mount", b.store, a.mnt, "--password-file", b.pwfile), contains="busy")
    assert_user_error(cli.run("mount", b.store, a.mnt, "--password-file", b.pwfile, "--foreground"),
                      contains="busy")
    assert tree_digest(a.store) == before_a
    assert tree_digest(b.store) == before_b
    with open(a.path("file"), "rb") as f:
        assert f.read() == b"a's data"
    assert a.proc.poll() is None
    a.unmount()


@pytest.mark.mount
def test_recovery_key_mounts_the_vault(make_vault, tmp_path):
    vm = make_vault()
    assert vm.recovery_key, vm.init_stdout
    vm.mount()
    with open(vm.path("hello.txt"), "wb") as f:
        f.write(b"written with the passphrase")
    vm.unmount()
    vm.pwfile.write_text(vm.recovery_key + "\n")
    vm.mount()
    with open(vm.path("hello.txt"), "rb") as f:
        assert f.read() == b"written with the passphrase"
    vm.unmount()


@pytest.mark.mount
def test_passwd(cli, make_vault, tmp_path):
    vm = make_vault()
    old = tmp_path / "old"
    old.write_text(PASSPHRASE)
    new = tmp_path / "new"
    new.write_text("an entirely new passphrase\n")
    vm.mount()
    with open(vm.path("f"), "wb") as f:
        f.write(b"before passwd")
    vm.unmount()
    data_before = {p: open(p, "rb").read() for p in data_objects(vm.store)}

    r = cli.run("passwd", vm.store, "--password-file", old, "--new-password-file", new)
    assert r.returncode == 0, r.stderr
    assert "passphrase changed" in r.stdout
    # no data re-encrypted
    assert {p: open(p, "rb").read() for p in data_objects(vm.store)} == data_before

    before = tree_digest(vm.store)
    assert_user_error(cli.run("mount", vm.store, vm.mnt, "--password-file", old), contains="passphrase")
    assert tree_digest(vm.store) == before
    assert not is_mounted(vm.mnt)

    vm.pwfile.write_text("an entirely new passphrase\n")
    vm.mount()
    with open(vm.path("f"), "rb") as f:
        assert f.read() == b"before passwd"
    vm.unmount()
    # the recovery key still works after passwd
    rk = tmp_path / "rk"
    rk.write_text(vm.recovery_key)
    assert cli.run("check", vm.store, "--password-file", rk).returncode == 0


@pytest.mark.mount
def test_check_names_damaged_file_by_plaintext_path(cli, make_vault):
    vm = make_vault()
    damaged = "Clients/Smith Wedding/IMG_0001.CR3"
    healthy = "Clients/Jones/IMG_0002.CR3"
    vm.mount()
    os.makedirs(vm.path("Clients/Smith Wedding"))
    os.makedirs(vm.path("Clients/Jones"))
    with open(vm.path(damaged), "wb") as f:
        f.write(os.urandom(300_000))
    vm.unmount()
    objs_first = set(data_objects(vm.store))
    vm.mount()
    with open(vm.path(healthy), "wb") as f:
        f.write(os.urandom(200_000))
    vm.unmount()
    objs_second = set(data_objects(vm.store)) - objs_first
    assert objs_first and objs_second

    r = cli.run("check", vm.store, "--password-file", vm.pwfile)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no problems found" in r.stdout and "2 files" in r.stdout
    assert cli.run("check", vm.store, "--password-file", vm.pwfile, "--read-data").returncode == 0

    flip_byte(sorted(objs_first)[0])
    r = cli.run("check", vm.store, "--password-file", vm.pwfile, "--read-data")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("check found 1 problems"), r.stderr
    damaged_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("DAMAGED")]
    assert len(damaged_lines) == 1, r.stdout
    assert "/" + damaged in damaged_lines[0]
    assert healthy not in r.stdout

    # a missing object is found even without --read-data
    os.unlink(sorted(objs_second)[0])
    r = cli.run("check", vm.store, "--password-file", vm.pwfile)
    assert r.returncode == 1
    assert "/" + healthy in r.stdout and "missing" in r.stdout


@pytest.mark.mount
def test_detached_mount_status_sync_unmount(cli, make_vault):
    vm = make_vault()
    pid = None
    try:
        r = cli.run("mount", vm.store, vm.mnt, "--password-file", vm.pwfile)
        assert r.returncode == 0, r.stderr
        assert is_mounted(vm.mnt), "detached mount returned before the kernel had the mount"
        assert "mounted" in r.stdout

        r = cli.run("status", "--json")
        assert r.returncode == 0, r.stderr
        mounts = json.loads(r.stdout)["mounts"]
        assert len(mounts) == 1
        row = mounts[0]
        assert row["ok"] and row["mountpoint"] == os.path.realpath(vm.mnt)
        assert row["store"] == os.path.realpath(vm.store)
        pid = int(row["pid"])
        assert pid_alive(pid) and pid != os.getpid()
        r = cli.run("status", vm.mnt, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["mounts"][0]["pid"] == pid
        r = cli.run("status")
        assert r.returncode == 0 and os.path.realpath(vm.mnt) in r.stdout

        with open(vm.path("photo.jpg"), "wb") as f:
            f.write(b"\xff\xd8" + os.urandom(100_000))
        os.mkdir(vm.path("album"))
        r = cli.run("sync", vm.mnt)
        assert r.returncode == 0, r.stderr
        # after sync, the store alone (read by `check` while still mounted) has the file
        r = cli.run("check", vm.store, "--password-file", vm.pwfile, "--read-data")
        assert r.returncode == 0, r.stderr
        assert "1 files" in r.stdout

        r = cli.run("unmount", vm.mnt)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(vm.mnt)
        assert wait_until(lambda: not pid_alive(pid)), f"daemon {pid} still running after unmount"
        r = cli.run("status", "--json")
        assert json.loads(r.stdout) == {"mounts": []}
        # the daemon's log lives in the runtime dir
        logs = [f for f in os.listdir(cli.runtime_dir) if f.endswith(".log")]
        assert logs
    finally:
        fuse_unmount(vm.mnt)
        if pid is not None:
            stop_detached(pid, timeout=60)
    # the data is there at the next mount
    vm.mount()
    with open(vm.path("photo.jpg"), "rb") as f:
        assert f.read(2) == b"\xff\xd8"
    assert os.path.isdir(vm.path("album"))
    vm.unmount()


@pytest.mark.mount
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(vault_mount, sig):
    vm = vault_mount
    os.makedirs(vm.path("a/b"))
    with open(vm.path("a/b/data.bin"), "wb") as f:
        f.write(b"0123456789" * 50_000)
    os.chmod(vm.path("a/b/data.bin"), 0o640)  # metadata-only change right before the signal
    os.utime(vm.path("a"), ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    os.kill(vm.pid, sig)
    code = vm.proc.wait(timeout=120)
    assert code == 0, vm.stderr
    assert wait_until(lambda: not is_mounted(vm.mnt), timeout=30), f"{sig!r} left the mount in place"
    assert "Traceback" not in vm.stderr
    vm.mount()
    with open(vm.path("a/b/data.bin"), "rb") as f:
        assert f.read() == b"0123456789" * 50_000
    assert os.stat(vm.path("a/b/data.bin")).st_mode & 0o777 == 0o640
    assert os.stat(vm.path("a")).st_mtime_ns == 1_600_000_000_987_654_321
    vm.unmount()


@pytest.mark.mount
def test_status_of_foreground_mount(cli, vault_mount):
    r = cli.run("status", vault_mount.mnt, "--json")
    assert r.returncode == 0
    row = json.loads(r.stdout)["mounts"][0]
    assert row["pid"] == vault_mount.pid
    for k in ("files", "dirty_bytes", "journal_seq", "read_only"):
        assert k in row
    assert row["read_only"] is False


@pytest.mark.mount
def test_paths_with_spaces_and_unicode(cli, make_vault):
    vm = make_vault("Client Vault ü ✓")
    vm.mount()
    with open(vm.path("Ä photo.jpg"), "wb") as f:
        f.write(b"x")
    r = cli.run("status", "--json")
    assert json.loads(r.stdout)["mounts"][0]["mountpoint"] == os.path.realpath(vm.mnt)
    assert cli.run("sync", vm.mnt).returncode == 0
    vm.unmount()
    vm.mount()
    with open(vm.path("Ä photo.jpg"), "rb") as f:
        assert f.read() == b"x"
    vm.unmount()
