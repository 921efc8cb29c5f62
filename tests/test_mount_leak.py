"""Leak test through a real mount: nothing readable at rest (ARCHITECTURE invariants 1 and 2).

Names, contents, xattr names and values and a symlink target all carry a
marker; after unmount, every file under the store (names and bytes), the
runtime dir (registry, log, rollback state) and the daemon's stderr are
searched for the marker raw, in UTF-16-LE, base64 at the three alignments
(standard and URL-safe) and hex: zero hits.
"""

from __future__ import annotations

import base64
import errno
import json
import os

import pytest
from conftest import fuse_unmount, stop_detached

pytestmark = pytest.mark.mount

MARKER = b"ZEBRAMARKER42"
KiB = 1024
MiB = 1024 * KiB


def _b64_fragments(data: bytes) -> list[bytes]:
    """The base64 characters that depend on `data` alone, for each of the three alignments."""
    out = []
    for k in range(3):
        enc = base64.b64encode(bytes(k) + data)
        start = -(-8 * k // 6)
        end = (8 * (k + len(data))) // 6
        out.append(enc[start:end])
    return out


def encodings(marker: bytes = MARKER) -> dict[str, bytes]:
    forms = {"raw": marker, "raw-lower": marker.lower(), "utf-16-le": marker.decode().encode("utf-16-le"),
             "utf-16-be": marker.decode().encode("utf-16-be"), "hex": marker.hex().encode(),
             "HEX": marker.hex().upper().encode()}
    for i, frag in enumerate(_b64_fragments(marker)):
        forms[f"base64-{i}"] = frag
        forms[f"base64url-{i}"] = frag.replace(b"+", b"-").replace(b"/", b"_")
    return forms


def scan(paths: list[str]) -> list[str]:
    forms = encodings()
    hits = []
    for top in paths:
        if not os.path.exists(top):
            continue
        walk = [(os.path.dirname(top), [], [os.path.basename(top)])] if os.path.isfile(top) else os.walk(top)
        for dirpath, dirnames, filenames in walk:
            for name in list(dirnames) + list(filenames):
                for label, form in forms.items():
                    if form in os.fsencode(name):
                        hits.append(f"{label} in the name {os.path.join(dirpath, name)}")
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                with open(p, "rb") as f:
                    blob = f.read()
                for label, form in forms.items():
                    if form in blob:
                        hits.append(f"{label} in {p} at {blob.find(form)}")
    return hits


def test_scanner_finds_every_encoding(tmp_path):
    forms = encodings()
    for label, form in forms.items():
        d = tmp_path / label
        d.mkdir()
        (d / "f").write_bytes(b"xx" + form + b"yy")
        assert scan([str(d)]), label
    for k in range(3):  # base64 of a stream with the marker at any offset
        d = tmp_path / f"stream{k}"
        d.mkdir()
        (d / "f").write_bytes(base64.b64encode(os.urandom(k) + MARKER + os.urandom(5)))
        assert scan([str(d)]), k
    assert not scan([str(tmp_path / "raw" / "f") + ".missing"])


def populate(mnt: str) -> dict[str, bytes]:
    """Write marked names, contents, xattrs and a symlink; provoke errors with marked names too."""
    m = MARKER.decode()
    P = lambda *parts: os.path.join(mnt, *parts)  # noqa: E731
    os.makedirs(P(f"Client {m}", f"Shoot-{m}"))
    files = {
        os.path.join(f"Client {m}", f"{m}.txt"): MARKER * 3 + b"\n",
        os.path.join(f"Client {m}", f"Shoot-{m}", f"IMG_{m}.CR3"):
            (MARKER + b" raw sensor data ") * (5 * MiB // 29),  # more than one chunk
        f"{m}-small": MARKER,
        "plain-name.bin": os.urandom(70 * KiB) + MARKER + os.urandom(10) + MARKER,  # across a block boundary
    }
    for rel, data in files.items():
        with open(P(rel), "wb") as f:
            f.write(data)
    # the marker straddling the 64 KiB block boundary and the 4 MiB chunk boundary
    with open(P("straddle.bin"), "wb") as f:
        f.seek(64 * KiB - 5)
        f.write(MARKER)
        f.seek(4 * MiB - 7)
        f.write(MARKER)
    os.setxattr(P(f"{m}-small"), f"user.{m}", MARKER + b" value")
    os.setxattr(P(f"Client {m}"), "user.comment", b"folder " + MARKER)
    os.symlink(f"../{m}/target-{m}", P(f"link-{m}"))
    os.link(P(f"{m}-small"), P(f"hardlink-{m}"))
    os.rename(P("plain-name.bin"), P(f"renamed-{m}.bin"))
    with open(P(f"deleted-{m}"), "wb") as f:
        f.write(MARKER * 100)
    os.unlink(P(f"deleted-{m}"))
    # errors whose arguments carry the marker must not be logged with it
    for fn, args in ((os.open, (P(f"missing-{m}"), os.O_RDONLY)), (os.mkdir, (P(f"Client {m}"),)),
                     (os.rmdir, (P(f"Client {m}"),)), (os.readlink, (P(f"{m}-small"),)),
                     (os.open, (P(m * 20), os.O_CREAT | os.O_WRONLY)),
                     (os.getxattr, (P(f"{m}-small"), f"user.missing-{m}")),
                     (os.setxattr, (P(f"{m}-small"), f"user.{m}", b"x", os.XATTR_CREATE))):
        with pytest.raises(OSError) as ei:
            fn(*args)
        assert ei.value.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EINVAL, errno.ENAMETOOLONG,
                                  errno.ENODATA)
    return files


def check_readable(mnt: str) -> None:
    m = MARKER.decode()
    with open(os.path.join(mnt, f"{m}-small"), "rb") as f:
        assert f.read() == MARKER
    assert os.getxattr(os.path.join(mnt, f"{m}-small"), f"user.{m}") == MARKER + b" value"
    assert os.readlink(os.path.join(mnt, f"link-{m}")) == f"../{m}/target-{m}"
    with open(os.path.join(mnt, "straddle.bin"), "rb") as f:
        f.seek(4 * MiB - 7)
        assert f.read() == MARKER


def test_no_marker_at_rest_foreground(vault_mount, cli):
    vm = vault_mount
    populate(str(vm.mnt))
    vm.remount()  # a second session: snapshot at unmount, journal replay at mount
    check_readable(str(vm.mnt))
    with open(vm.path(f"late-{MARKER.decode()}"), "wb") as f:
        f.write(MARKER)
    vm.unmount()
    assert os.listdir(vm.mnt) == []
    hits = scan([str(vm.store), cli.runtime_dir] + [str(p) for p in vm.stderr_files])
    assert hits == [], "\n".join(hits)


def test_no_marker_at_rest_detached(make_vault, cli):
    vm = make_vault()
    pid = None
    try:
        r = cli.run("mount", vm.store, vm.mnt, "--password-file", vm.pwfile)
        assert r.returncode == 0, r.stderr
        pid = json.loads(cli.run("status", vm.mnt, "--json").stdout)["mounts"][0]["pid"]
        populate(str(vm.mnt))
        assert cli.run("sync", vm.mnt).returncode == 0
        # while mounted, the store already holds only ciphertext
        hits = scan([str(vm.store)])
        assert hits == [], "\n".join(hits)
        r = cli.run("unmount", vm.mnt)
        assert r.returncode == 0, r.stderr
    finally:
        fuse_unmount(vm.mnt)
        if pid is not None:
            stop_detached(pid, timeout=60)
    logs = [f for f in os.listdir(cli.runtime_dir) if f.endswith(".log")]
    assert logs, os.listdir(cli.runtime_dir)
    hits = scan([str(vm.store), cli.runtime_dir])
    assert hits == [], "\n".join(hits)
