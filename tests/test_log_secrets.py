"""Nothing secret is ever logged, even at debug level (`encfs-photo -vv`).

A vault is made with a marker passphrase, mounted with debug logging (in the
foreground, stderr to a file, and detached, logging to its log file), and
driven through names, contents, xattrs, renames, errors and a wrong
passphrase. Then every byte that any command or daemon wrote to stderr,
stdout of the mount-related commands and every file in the runtime folder
(logs, registry) is searched for: the passphrase, a file name, a directory
name, file content, an xattr value, and the master key, every subkey and
the key-encryption key, in hex (both cases) and base64 (standard and
url-safe). (`mount --debug` is libfuse's own trace, documented to show
names, and `-vvv` turns on mfusepy's call trace, which shows paths: neither
is used here.)
"""

from __future__ import annotations

import base64
import errno
import json
import os
import time

import pytest
from conftest import MOUNT_TIMEOUT, fuse_unmount, is_mounted, pid_alive, stop_detached, stop_pid, wait_until

from encfs_photo import crypto, vault
from encfs_photo.store import LocalStore

pytestmark = pytest.mark.mount

PASS = "Marker-Passphrase-q7Zk2"
DIRNAME = "MarkerDirectory-w4Lp"
FILENAME = "MarkerFileName-j9Rt.CR3"
RENAMED = "MarkerRenamed-c3Vb.CR3"
CONTENT = b"MarkerFileContent-x8Nq " * 500
XATTR_VALUE = b"MarkerXattrValue-h2Dm"


def key_markers(store: str) -> dict[str, bytes]:
    """Every key the vault derives from the marker passphrase."""
    v = vault.open_vault(LocalStore(store), passphrase=PASS)
    slot = v.opened_slot
    assert slot is not None
    keys = {
        "master": v._master, "content": v.content_key, "meta": v.meta_key, "names": v.names_key,
        "local": v.local_key, "config": crypto.subkey(v._master, v.vault_id, crypto.LABEL_CONFIG),
        "kek": crypto.derive_kek(vault.normalize_passphrase(PASS), slot.params),
        "journal-0": crypto.journal_key(v.meta_key, 0),
    }
    out: dict[str, bytes] = {}
    for name, k in keys.items():
        out[f"{name} hex"] = k.hex().encode()
        out[f"{name} HEX"] = k.hex().upper().encode()
        out[f"{name} b64"] = base64.b64encode(k).rstrip(b"=")
        out[f"{name} b64url"] = base64.urlsafe_b64encode(k).rstrip(b"=")
        out[f"{name} raw"] = k
    return out


def text_markers() -> dict[str, bytes]:
    return {"passphrase": PASS.encode(), "directory name": DIRNAME.encode(), "file name": FILENAME.encode(),
            "renamed file name": RENAMED.encode(), "content": b"MarkerFileContent-x8Nq",
            "xattr value": XATTR_VALUE, "wrong passphrase": b"Wrong-Marker-Pass-3e"}


def exercise(mnt) -> None:
    d = os.path.join(mnt, DIRNAME)
    os.mkdir(d)
    f = os.path.join(d, FILENAME)
    with open(f, "wb") as fh:
        fh.write(CONTENT)
        fh.flush()
        os.fsync(fh.fileno())
    with open(f, "rb") as fh:
        assert fh.read() == CONTENT
    os.setxattr(f, "user.marker", XATTR_VALUE)
    assert os.getxattr(f, "user.marker") == XATTR_VALUE
    for bad in (lambda: os.stat(os.path.join(d, RENAMED)),      # ENOENT on a marker name
                lambda: os.mkdir(d),                             # EEXIST
                lambda: os.rmdir(d),                             # ENOTEMPTY
                lambda: os.getxattr(f, "user.MarkerMissingXattr")):
        with pytest.raises(OSError):
            bad()
    with pytest.raises(OSError) as ei:
        os.open(os.path.join(d, "x" * 300), os.O_CREAT | os.O_WRONLY, 0o644)
    assert ei.value.errno == errno.ENAMETOOLONG
    os.rename(f, os.path.join(d, RENAMED))
    assert sorted(os.listdir(d)) == [RENAMED]
    os.truncate(os.path.join(d, RENAMED), 100)


def find_leaks(blobs: dict[str, bytes], markers: dict[str, bytes]) -> list[str]:
    return [f"{what} in {where}" for where, data in blobs.items() for what, m in markers.items() if m in data]


def runtime_files(runtime_dir: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(runtime_dir):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    out[p] = f.read()
    return out


def test_debug_logs_hold_no_secret_name_or_content(cli, runtime_dir, tmp_path):
    store, mnt = str(tmp_path / "store"), tmp_path / "mnt"
    mnt.mkdir()
    pw, bad = tmp_path / "pw", tmp_path / "bad"
    pw.write_text(PASS + "\n")
    bad.write_text("Wrong-Marker-Pass-3e\n")
    outputs: dict[str, bytes] = {}

    def run(*args) -> None:
        r = cli.run("-vv", *args)
        outputs[f"{args[0]} {r.returncode} stderr"] = r.stderr.encode()
        if args[0] not in ("init", "key"):  # init and key add print the recovery key on purpose
            outputs[f"{args[0]} {r.returncode} stdout"] = r.stdout.encode()

    run("init", store, "--password-file", pw)
    run("check", store, "--password-file", bad)  # a failed unlock logs nothing of what was typed

    # 1. Foreground mount, debug logging to stderr.
    err = tmp_path / "fg.stderr"
    proc = cli.popen("-vv", "mount", store, mnt, "--foreground", "--password-file", pw, stderr_path=err)
    try:
        assert wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, timeout=MOUNT_TIMEOUT)
        assert is_mounted(mnt), err.read_text()
        exercise(mnt)
        run("sync", mnt)
        run("status", mnt)
        run("unmount", mnt)
        assert proc.wait(timeout=120) == 0
    finally:
        fuse_unmount(mnt)
        stop_pid(proc)
    outputs["foreground daemon stderr"] = err.read_bytes()
    assert b" DEBUG debug logging on" in outputs["foreground daemon stderr"]  # -vv really is debug level

    # Damage every chunk object: reading the file now fails, and the integrity error is logged.
    for dirpath, _, files in os.walk(os.path.join(store, "data")):
        for name in files:
            with open(os.path.join(dirpath, name), "r+b") as fh:
                b = fh.read(1)
                fh.seek(0)
                fh.write(bytes([b[0] ^ 1]))

    # 2. Detached mount: the daemon logs to its log file in the runtime folder.
    run("mount", store, mnt, "--password-file", pw)
    reg = [json.loads(v) for p, v in runtime_files(runtime_dir).items() if p.endswith(".json")
           and os.path.dirname(p) == runtime_dir]
    pid = reg[0]["pid"] if reg else None
    try:
        assert is_mounted(mnt), outputs
        d = os.path.join(mnt, DIRNAME)
        with pytest.raises(OSError) as ei, open(os.path.join(d, RENAMED), "rb") as fh:
            fh.read()
        assert ei.value.errno == errno.EIO
        with open(os.path.join(d, FILENAME), "wb") as fh:  # a second life for the file name
            fh.write(CONTENT)
        time.sleep(0.1)
        run("unmount", mnt)
        if pid is not None:
            assert wait_until(lambda: not pid_alive(pid), timeout=120)
    finally:
        fuse_unmount(mnt)
        if pid is not None:
            stop_detached(pid)
    logs = {p: v for p, v in runtime_files(runtime_dir).items() if p.endswith(".log")}
    assert logs, "the detached daemon wrote no log file"
    outputs.update(runtime_files(runtime_dir))
    run("check", store, "--password-file", pw, "--read-data")
    # check's stdout names damaged files by path on purpose (that is its report); its stderr must not.
    outputs = {k: v for k, v in outputs.items() if not k.startswith("check 1 stdout")}
    logs_text = b"".join(logs.values())
    assert b"ERROR" in logs_text or b"integrity" in logs_text  # the damage was logged (by object, not name)

    # The markers are really there to be found: in the vault, decrypted (a control against a blind grep).
    v = vault.open_vault(LocalStore(store), passphrase=PASS)
    assert v.opened_slot is not None
    markers = {**text_markers(), **key_markers(store)}
    leaks = find_leaks(outputs, markers)
    assert not leaks, "secrets in logs or output:\n" + "\n".join(leaks)
    # ...and the search itself finds a marker where one is (it can fail).
    assert "meta b64 in probe" in find_leaks({"probe": b"log line " + markers["meta b64"] + b"\n"}, markers)
