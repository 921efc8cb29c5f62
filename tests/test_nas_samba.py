"""An encfs-photo vault re-exported by a real smbd (issue 7, docs/NAS.md).

One vault is mounted for the whole module by the shipped systemd unit's own
ExecStart (run without systemd: see nas_support.UnitService) and shared by a
private smbd from Debian on 127.0.0.1, next to a plain folder shared with the
very same options for comparison. smbclient is the client.

Test-only Samba settings: every Samba path under a temp folder, one SMB user
(root) in a private passdb, `force user` = an unprivileged account that exists
on every Debian system (www-data). The share options for Macs are those of
docs/NAS.md (nas_support.MAC_SHARE_OPTIONS).

Skipped without FUSE, smbd, smbclient or smbpasswd. Every process started
here is stopped by its own PID; every mount is detached at teardown.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import FUSE_OK, FUSE_WHY, Cli, fuse_unmount, is_mounted, pid_alive, wait_until
from nas_support import MAC_SHARE_OPTIONS, Smbd, UnitService, python_argv0, samba_available, smb_quote

MiB = 1 << 20
BIG_SIZE = 1 << 30  # the issue asks for at least 1 GiB
SHARE_USER = "www-data"  # exists on every Debian system (base-passwd); not `nobody` (see docs/NAS.md)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


SAMBA_OK, SAMBA_WHY = samba_available()
pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not FUSE_OK, reason=f"no FUSE: {FUSE_WHY}"),
    pytest.mark.skipif(not SAMBA_OK, reason=SAMBA_WHY),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs smbd and --allow-other mounts: needs root"),
    pytest.mark.skipif(not _has_user(SHARE_USER), reason=f"no {SHARE_USER} account for the share"),
]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int, chunk: int = 8 * MiB) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(chunk, left))
            h.update(b)
            f.write(b)
            left -= len(b)
    return h.hexdigest()


def tree(root: str | os.PathLike) -> dict[str, tuple]:
    """relative path -> ('d',) or ('f', size, sha256) for everything under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = ("d",)
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = ("f", os.path.getsize(p), sha256_file(p))
    return out


def afp_info(file_type: bytes = b"JPEG", creator: bytes = b"8BIM") -> bytes:
    """A 60-byte AFP_AfpInfo as macOS writes it (Samba's MacExtensions.h layout, big-endian)."""
    finder = file_type + creator + b"\x01\x00" + b"\x00" * 22  # type, creator, flags (label), rest
    data = b"AFP\x00" + struct.pack(">III", 0x00000100, 0, 0x80000000) + finder + b"\x00" * 12
    assert len(data) == 60
    return data


class Nas:
    def __init__(self, base: Path, cli: Cli, svc: UnitService, smbd: Smbd, key_file: Path, store: Path,
                 mnt: Path, plain: Path) -> None:
        self.base, self.cli, self.svc, self.smbd = base, cli, svc, smbd
        self.key_file, self.store, self.mnt, self.plain = key_file, store, mnt, plain
        self.user = pwd.getpwnam(SHARE_USER)

    def local(self, name: str) -> Path:
        d = self.base / "local" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def ensure_mounted(self) -> None:
        """After a failed test left the daemon dead: what systemd's Restart=on-failure would do."""
        if not self.svc.mounted() or self.svc.proc is None or self.svc.proc.poll() is not None:
            self.svc.kill()
            self.svc.stop_post()
            self.svc.start()


@pytest.fixture(scope="module")
def nas():
    base = Path(tempfile.mkdtemp(prefix="efp-nas-", dir="/tmp"))  # short: unix socket paths
    os.chmod(base, 0o755)  # smbd, as the share user, walks down to the share paths
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    cli = Cli(str(runtime))
    user = pwd.getpwnam(SHARE_USER)
    store, mnt, plain, key = base / "vault", base / "studio", base / "plain", base / "studio.key"
    mnt.mkdir()
    plain.mkdir()
    svc = smbd = None
    try:
        r = cli.run("init", store, "--key-file", key, check=True)
        assert (os.stat(key).st_mode & 0o777) == 0o600, r.stderr
        svc = UnitService(base, "studio", {"ENCFS_PHOTO_STORE": str(store), "ENCFS_PHOTO_MOUNTPOINT": str(mnt),
                                           "ENCFS_PHOTO_KEY_FILE": str(key)}, cli.env, cli.argv0, str(runtime))
        svc.start()
        assert is_mounted(mnt), "READY=1 came before the mount was in place"
        for d in (mnt, plain):  # docs/NAS.md: the share's root belongs to the share user
            os.chown(d, user.pw_uid, user.pw_gid)
            os.chmod(d, 0o770)
        common = {"read only": "no", "force user": SHARE_USER, "force group": SHARE_USER,
                  "create mask": "0640", "directory mask": "0750", **MAC_SHARE_OPTIONS}
        guard = {"root preexec": f"{shutil.which('mountpoint') or '/bin/mountpoint'} -q {mnt}",
                 "root preexec close": "yes"}
        smbd = Smbd(base / "samba", {"studio": {"path": str(mnt), **common, **guard},
                                     "studio-enc": {"path": str(mnt), **common, **guard,
                                                    "server smb encrypt": "required"},
                                     "plain": {"path": str(plain), **common}})
        yield Nas(base, cli, svc, smbd, key, store, mnt, plain)
    finally:
        code = None
        try:
            if smbd is not None:
                smbd.stop()
        finally:
            if svc is not None:
                if svc.proc is not None and svc.proc.poll() is None:
                    code = svc.stop()  # systemctl stop at the end: exit 0
                svc.cleanup()
            fuse_unmount(mnt)
            shutil.rmtree(base, ignore_errors=True)
        assert code in (None, 0), f"the daemon exited {code} on SIGTERM"


# ------------------------------------------------------------------ data through Samba


def test_large_file_put_get_and_throughput(nas, capsys):
    """1 GiB in and out of the vault and of the plain folder, byte-identical; MB/s of both."""
    nas.ensure_mounted()
    if shutil.disk_usage(nas.base).free < 5 * BIG_SIZE:  # source, store, copy back, plain folder
        pytest.skip("less than 5 GiB free under /tmp for the 1 GiB round trips")
    src = nas.local("big") / "big.bin"
    want = random_file(src, BIG_SIZE)
    results = {}
    for share, root in (("studio", nas.mnt), ("plain", nas.plain)):
        back = nas.local("big") / f"back-{share}.bin"
        t0 = time.monotonic()
        nas.smbd.client(share, f"put {src} big.bin")
        t_put = time.monotonic() - t0
        assert os.path.getsize(root / "big.bin") == BIG_SIZE  # no stray bytes on the server side
        t0 = time.monotonic()
        nas.smbd.client(share, f"get big.bin {back}")
        t_get = time.monotonic() - t0
        assert os.path.getsize(back) == BIG_SIZE
        assert sha256_file(back) == want, f"{share}: the file read back differs"
        results[share] = (t_put, t_get)
        back.unlink()
        nas.smbd.client(share, "del big.bin")
        assert not (root / "big.bin").exists()
    src.unlink()
    mb = BIG_SIZE / 1e6
    (vp, vg), (pp, pg) = results["studio"], results["plain"]
    with capsys.disabled():
        print(f"\nSMB 1 GiB over 127.0.0.1 (smbclient -> smbd {nas.smbd.port}), encfs-photo vs the plain folder:")
        for what, v, p in (("put", vp, pp), ("get", vg, pg)):
            print(f"  {what}: encfs-photo {mb / v:7.1f} MB/s, plain folder {mb / p:7.1f} MB/s, "
                  f"ratio {p / v:.2f} (encfs-photo at {100 * p / v:.0f}% of plain)")


def test_many_small_files(nas, capsys):
    nas.ensure_mounted()
    src = nas.local("small-src")
    want = {}
    for i in range(300):
        data = os.urandom(8192)
        (src / f"IMG_{i:04d}.xmp").write_bytes(data)
        want[f"IMG_{i:04d}.xmp"] = data
    rates = {}
    for share, root in (("studio", nas.mnt), ("plain", nas.plain)):
        t0 = time.monotonic()
        nas.smbd.client(share, f"mkdir sidecars; cd sidecars; lcd {src}; prompt off; mput *")
        t_put = time.monotonic() - t0
        on_server = sorted(os.listdir(root / "sidecars"))
        assert on_server == sorted(want)
        for name, data in want.items():
            with open(root / "sidecars" / name, "rb") as f:
                assert f.read() == data, f"{share}: {name} differs on the server"
        dst = nas.local(f"small-back-{share}")
        t0 = time.monotonic()
        nas.smbd.client(share, f"cd sidecars; lcd {dst}; prompt off; mget *")
        t_get = time.monotonic() - t0
        assert sorted(os.listdir(dst)) == sorted(want)
        for name, data in want.items():
            assert (dst / name).read_bytes() == data, f"{share}: {name} differs after get"
        nas.smbd.client(share, "deltree sidecars")
        assert not (root / "sidecars").exists()
        rates[share] = (len(want) / t_put, len(want) / t_get)
    with capsys.disabled():
        print(f"\nSMB 300 x 8 KiB: put encfs-photo {rates['studio'][0]:.0f} files/s, plain {rates['plain'][0]:.0f}"
              f" files/s; get encfs-photo {rates['studio'][1]:.0f} files/s, plain {rates['plain'][1]:.0f} files/s")


def test_rename_overwrite_delete_same_as_plain_folder(nas):
    """One script of renames (files, folders, across folders, case only, over an existing file),
    safe-save and deletes, against both shares: the same tree results, and the expected one."""
    nas.ensure_mounted()
    src = nas.local("ren")
    files = {"a": os.urandom(70_000), "b": os.urandom(5), "c": os.urandom(300_000), "v2": os.urandom(123_457)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    script = "; ".join([
        f"lcd {src}",
        "put a a.jpg", "rename a.jpg b.jpg",                                  # file rename
        "mkdir Shoot1", "put c Shoot1\\c.cr3", "mkdir Shoot1\\sub", "put b Shoot1\\sub\\b.xmp",
        "rename Shoot1 Shoot2",                                               # folder rename (with contents)
        "rename b.jpg Shoot2\\sub\\moved.jpg",                                # across folders
        "put b target.jpg", "put c target.tmp", "rename target.tmp target.jpg -f",  # overwrite-by-rename
        "put a doc.psd", "put v2 doc.psd.sb-tmp", "rename doc.psd doc.psd.bak",      # safe save
        "rename doc.psd.sb-tmp doc.psd", "del doc.psd.bak",
        "put b Photo.JPG", "rename Photo.JPG photo.jpg",                      # case-only rename
        "mkdir Empty", "rmdir Empty", "put a gone.jpg", "del gone.jpg",       # deletes
        "mkdir Trash", "put a Trash\\x.jpg", "mkdir Trash\\deep", "put c Trash\\deep\\y.jpg", "deltree Trash",
        "ls",
    ])
    got = {}
    for share, root in (("studio", nas.mnt), ("plain", nas.plain)):
        nas.smbd.client(share, script)
        got[share] = tree(root)
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    expected = {
        "Shoot2": ("d",), "Shoot2/sub": ("d",),
        "Shoot2/c.cr3": ("f", len(files["c"]), sha["c"]),
        "Shoot2/sub/b.xmp": ("f", len(files["b"]), sha["b"]),
        "Shoot2/sub/moved.jpg": ("f", len(files["a"]), sha["a"]),
        "target.jpg": ("f", len(files["c"]), sha["c"]),
        "doc.psd": ("f", len(files["v2"]), sha["v2"]),
        "photo.jpg": ("f", len(files["b"]), sha["b"]),
    }
    assert got["plain"] == expected, "the plain-folder reference itself changed (smbclient/Samba behaviour?)"
    assert got["studio"] == expected
    for share in ("studio", "plain"):
        nas.smbd.client(share, "deltree Shoot2; del target.jpg; del doc.psd; del photo.jpg")
    assert tree(nas.mnt) == {}


def test_macos_metadata_streams(nas):
    """AFP_AfpInfo, named streams (Finder tags, as a Mac names them) and a resource fork through
    vfs_fruit + streams_xattr: read back exactly, stored as user.* xattrs / a ._ file on the mount."""
    nas.ensure_mounted()
    src = nas.local("meta")
    (src / "pic").write_bytes(os.urandom(50_000))
    afp = afp_info()
    (src / "afp").write_bytes(afp)
    tags = b"bplist00\xa1\x01URed\n6" + os.urandom(200)
    (src / "tags").write_bytes(tags)
    big_stream = os.urandom(60_000)  # under the 64 KiB xattr limit of FUSE and of Linux
    (src / "bigstream").write_bytes(big_stream)
    rsrc = os.urandom(200_000)  # resource forks can exceed 64 KiB: fruit:resource = file keeps them in ._
    (src / "rsrc").write_bytes(rsrc)
    # macOS sends ':' (illegal in NTFS names) as U+F022 in stream names
    tag_stream = "com.apple.metadata\uf022_kMDItemUserTags"
    f = "IMG_0001.JPG"
    streams = {"AFP_AfpInfo": afp, tag_stream: tags, "com.apple.lastuseddate#PS": tags[:16],
               "org.example.big": big_stream, "AFP_Resource": rsrc}
    locals_ = {"AFP_AfpInfo": "afp", tag_stream: "tags", "com.apple.lastuseddate#PS": "tags16",
               "org.example.big": "bigstream", "AFP_Resource": "rsrc"}
    (src / "tags16").write_bytes(tags[:16])
    cmds = [f"lcd {src}", f"put pic {f}"]
    cmds += [f"put {locals_[s]} {smb_quote(f + ':' + s)}" for s in streams]
    cmds += [f"get {smb_quote(f + ':' + s)} {smb_quote('back-' + locals_[s])}" for s in streams]
    cmds += [f"allinfo {f}"]
    r = nas.smbd.client("studio", "; ".join(cmds))
    for s, data in streams.items():
        assert (src / ("back-" + locals_[s])).read_bytes() == data, f"stream {s!r} read back differs"
        m = re.search(r"stream: \[:" + re.escape(s) + r":\$DATA\], (\d+) bytes", r.stdout)
        assert m, f"allinfo does not list {s!r}:\n{r.stdout}"
        assert int(m.group(1)) == len(data), f"stream {s!r} has {m.group(1)} bytes, wrote {len(data)}"
    assert re.search(r"stream: \[::\$DATA\], 50000 bytes", r.stdout), r.stdout
    # on the encfs-photo mount: the file is exact, the streams are user.* xattrs, the fork a ._ file
    p = nas.mnt / f
    assert os.path.getsize(p) == 50_000
    names = set(os.listxattr(p))
    for s in ("AFP_AfpInfo", tag_stream, "org.example.big"):
        xname = f"user.DosStream.{s}:$DATA"
        assert xname in names, f"{xname!r} not in {names}"
        assert os.getxattr(p, xname) == streams[s] + b"\0"  # streams_xattr keeps a trailing NUL
    assert "user.DOSATTRIB" in names
    ad = nas.mnt / f"._{f}"
    assert ad.is_file() and os.path.getsize(ad) >= len(rsrc)
    # the metadata follows renames (the xattrs with the inode, the ._ file by fruit) and survives a remount
    nas.smbd.client("studio", f"mkdir Album; rename {f} Album\\{f}")
    assert not ad.exists() and (nas.mnt / "Album" / f"._{f}").is_file()
    code = nas.svc.stop()
    assert code == 0, nas.svc.log
    nas.svc.start()
    moved = "Album\\" + f
    r = nas.smbd.client("studio", f"lcd {src}; allinfo {moved}; "
                        + "; ".join(f"get {smb_quote(moved + ':' + s)} {smb_quote('again-' + locals_[s])}"
                                    for s in streams))
    for s, data in streams.items():
        assert (src / ("again-" + locals_[s])).read_bytes() == data, f"stream {s!r} after remount"
    nas.smbd.client("studio", f"del Album\\{f}; rmdir Album")
    assert tree(nas.mnt) == {}, "deleting the file left its ._ file or the folder behind"


def test_owner_and_mode_are_what_smbd_asks(nas):
    """force user/group, create mask and directory mask land on the mount exactly as on a plain folder;
    the daemon runs as the configured user (the unit has no User=: root)."""
    nas.ensure_mounted()
    src = nas.local("own")
    (src / "f").write_bytes(b"x" * 1000)
    stats = {}
    for share, root in (("studio", nas.mnt), ("plain", nas.plain)):
        nas.smbd.client(share, f"lcd {src}; mkdir Owned; put f Owned\\f.jpg; mkdir Owned\\Sub")
        stats[share] = {rel: (os.stat(root / rel).st_uid, os.stat(root / rel).st_gid,
                              oct(os.stat(root / rel).st_mode))
                        for rel in ("Owned", "Owned/f.jpg", "Owned/Sub")}
        nas.smbd.client(share, "deltree Owned")
    u = nas.user
    assert stats["studio"] == stats["plain"]
    assert stats["studio"]["Owned/f.jpg"] == (u.pw_uid, u.pw_gid, oct(0o100640))
    assert stats["studio"]["Owned"] == (u.pw_uid, u.pw_gid, oct(0o40750))
    # the daemon's user, as `ps` shows it
    out = subprocess.run(["ps", "-o", "user=", "-p", str(nas.svc.pid)], capture_output=True, text=True)
    assert out.stdout.strip() == "root", out


def test_daemon_log_has_no_names_or_keys(nas):
    """The default (INFO) log of the unit's daemon never shows file names, contents or the key; no ANSI."""
    nas.ensure_mounted()
    src = nas.local("secret")
    secret_name = "Nakamura-Wedding-Confidential"
    (src / "c").write_bytes(b"SECRET-CONTENT-" * 100)
    nas.smbd.client("studio", f"lcd {src}; mkdir {secret_name}; put c {secret_name}\\{secret_name}.jpg; "
                    f"rename {secret_name}\\{secret_name}.jpg {secret_name}\\{secret_name}-2.jpg; "
                    f"rmdir {secret_name}", check=False)  # the rmdir fails (not empty): an error path too
    nas.smbd.client("studio", f"deltree {secret_name}")
    log = nas.svc.log
    assert "mounting" in log  # it is the daemon's log
    key = nas.key_file.read_text().strip()
    for needle in (secret_name, "SECRET-CONTENT", key, key[:16]):
        assert needle not in log, f"{needle!r} in the daemon log"
    assert "\x1b[" not in log


def test_smb3_encryption_required(nas, capsys):
    """docs/NAS.md: `server smb encrypt = required` (SMB3 encryption of the LAN leg) works on the mount."""
    nas.ensure_mounted()
    src = nas.local("enc")
    want = random_file(src / "enc.raw", 64 * MiB)
    t0 = time.monotonic()
    nas.smbd.client("studio-enc", f"lcd {src}; put enc.raw", "--client-protection=encrypt")
    t_put = time.monotonic() - t0
    t0 = time.monotonic()
    nas.smbd.client("studio-enc", f"lcd {src}; get enc.raw back.raw", "--client-protection=encrypt")
    t_get = time.monotonic() - t0
    assert sha256_file(src / "back.raw") == want and os.path.getsize(nas.mnt / "enc.raw") == 64 * MiB
    nas.smbd.client("studio-enc", "del enc.raw", "--client-protection=encrypt")
    with capsys.disabled():
        print(f"\nSMB3 encrypted, 64 MiB into encfs-photo: put {64 * MiB / 1e6 / t_put:.0f} MB/s, "
              f"get {64 * MiB / 1e6 / t_get:.0f} MB/s")


# ------------------------------------------------------------------ stop and crash while clients write


def _start_burst(nas: Nas, name: str, count: int, size: int):
    """smbclient putting `count` random files of `size` bytes one by one, its output read by a thread.

    Returns (proc, acked names so far, the lock guarding them, sha256 by name, output lines, thread)."""
    src = nas.local(name)
    shas = {}
    for i in range(count):
        fn = f"burst{i:03d}.raw"
        shas[fn] = random_file(src / fn, size, chunk=size)
    cmds = [f"lcd {src}", f"mkdir {name}", f"cd {name}"] + [f"put {fn}" for fn in sorted(shas)]
    proc = subprocess.Popen(nas.smbd.client_argv("studio", "; ".join(cmds)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    acked: list[str] = []
    lines: list[str] = []
    lock = threading.Lock()
    # smbclient's do_put logs "putting file X as \\Y " before the transfer and ends that line with
    # "(R kb/s) (average A kb/s)" only after cli_close() returned: a complete line is a completed CLOSE.
    pat = re.compile(r"^putting file (\S+) as \S+ \([0-9.]+ kb/s\) \(average [0-9.]+ kb/s\)$")

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                lines.append(line)
                m = pat.match(line)
                if m:
                    acked.append(m.group(1))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return proc, acked, lock, shas, lines, t


def _end_burst(proc: subprocess.Popen, t: threading.Thread) -> None:
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    t.join(timeout=30)


@pytest.mark.parametrize("how", ["kill-9", "systemctl-stop"])
def test_stop_or_crash_while_samba_clients_write(nas, how, capsys):
    """kill -9 of the daemon (a crash, or systemd's SIGKILL) or SIGTERM (systemctl stop) while smbclient
    puts many files; then ExecStopPost and ExecStart again, as systemd would. Every file whose SMB
    CLOSE completed before the signal (smbclient printed its "putting file" line) is intact."""
    nas.ensure_mounted()
    name = f"burst-{how}"
    proc, acked, lock, shas, lines, t = _start_burst(nas, name, count=120, size=768 * 1024)
    try:
        assert wait_until(lambda: len(acked) >= 30 or proc.poll() is not None, timeout=120), "".join(lines)
        with lock:
            assert proc.poll() is None, "smbclient finished before the signal: nothing was tested\n" + "".join(lines)
            if how == "kill-9":
                os.kill(nas.svc.pid, signal.SIGKILL)
            else:
                os.kill(nas.svc.pid, signal.SIGTERM)
            acked_before = list(acked)
        t0 = time.monotonic()
        code = nas.svc.proc.wait(timeout=nas.svc.timeout_stop())
        stop_s = time.monotonic() - t0
    finally:
        _end_burst(proc, t)
    assert len(acked_before) < len(shas)
    if how == "kill-9":
        assert code == -signal.SIGKILL
    else:
        assert code == 0, f"SIGTERM: daemon exited {code} after {stop_s:.1f} s\n{nas.svc.log}"
        assert "Traceback" not in nas.svc.log
    # the share refuses clients while the vault is not mounted (root preexec guard of docs/NAS.md),
    # so nothing can land in plaintext in the folder under the mount point
    r = nas.smbd.client("studio", "ls", check=False)
    assert r.returncode != 0 and "NT_STATUS_" in r.stdout + r.stderr, r
    nas.svc.stop_post()  # ExecStopPost: detaches the dead mount after a kill -9
    assert not is_mounted(nas.mnt)
    assert os.listdir(nas.mnt) == [], "something was written into the bare mount point"
    r = nas.smbd.client("studio", "ls", check=False)
    assert r.returncode != 0, "the share served the bare mount point folder"
    nas.svc.start()  # Restart=on-failure / the next boot
    folder = nas.mnt / name
    present = os.listdir(folder)
    for fn in acked_before:
        p = folder / fn
        assert p.is_file(), f"{fn} was acknowledged before the {how} and is gone"
        assert os.path.getsize(p) == 768 * 1024, f"{fn}: size {os.path.getsize(p)}"
        assert sha256_file(p) == shas[fn], f"{fn} was acknowledged before the {how} and is damaged"
    # Samba serves them again (a new connection after the restart)
    back = nas.local(name + "-back")
    nas.smbd.client("studio", f"lcd {back}; cd {name}; get {acked_before[0]}; get {acked_before[-1]}")
    for fn in (acked_before[0], acked_before[-1]):
        assert sha256_file(back / fn) == shas[fn]
    # and the store is consistent: every byte authenticates
    r = nas.cli.run("check", nas.store, "--key-file", nas.key_file, "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    nas.smbd.client("studio", f"deltree {name}")
    with capsys.disabled():
        print(f"\n{how} after {len(acked_before)} of {len(shas)} files acknowledged: all intact after the restart "
              f"(stop took {stop_s:.1f} s; {len(present)} files present)")



# ------------------------------------------------------------------ the daemon as an unprivileged user

SERVICE_USER = "backup"  # an unprivileged account on every Debian system (base-passwd), not the share user
NS_TOOLS = all(shutil.which(t) for t in ("unshare", "setpriv", "nsenter", "mount"))

# Runs in a private mount namespace (so nothing here touches the machine's own files): gives the
# namespace an /etc/fuse.conf with user_allow_other (docs/NAS.md's step for User=) and, where this
# machine's /dev/fuse is root-only (Debian's default is 0666), a 0666 node for it; then drops to
# the service user, as systemd does for User=/Group=.
NS_SCRIPT = """set -e
conf=$1; dev=$2; uid=$3; gid=$4; shift 4
[ -n "$conf" ] && mount --bind "$conf" /etc/fuse.conf
[ -n "$dev" ] && mount --bind "$dev" /dev/fuse
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
"""


@pytest.mark.skipif(not NS_TOOLS, reason="needs unshare, setpriv, nsenter and mount (util-linux)")
def test_daemon_runs_as_the_configured_unprivileged_user():
    """User=backup in the unit: the daemon runs as that user (ps), --allow-other needs user_allow_other
    (a clear error without it), and smbd serves the mount with the share's own owners and modes."""
    try:
        svc_user, share_user = pwd.getpwnam(SERVICE_USER), pwd.getpwnam(SHARE_USER)
    except KeyError:
        pytest.skip(f"no {SERVICE_USER} or {SHARE_USER} account")
    if not os.path.exists("/etc/fuse.conf"):
        pytest.skip("/etc/fuse.conf is missing (fuse3 installs it)")
    uid, gid = svc_user.pw_uid, svc_user.pw_gid
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *python_argv0(),
                            "--version"], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"the checkout is not readable by {SERVICE_USER}: {probe.stderr.strip()[-200:]}")
    base = Path(tempfile.mkdtemp(prefix="efp-nas-user-", dir="/tmp"))
    os.chmod(base, 0o755)
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    cli = Cli(str(runtime))
    store, mnt, key = base / "vault", base / "studio", base / "studio.key"
    mnt.mkdir()
    svc = smbd = None
    try:
        cli.run("init", store, "--key-file", key, check=True)
        svc = UnitService(base, "studio", {"ENCFS_PHOTO_STORE": str(store), "ENCFS_PHOTO_MOUNTPOINT": str(mnt),
                                           "ENCFS_PHOTO_KEY_FILE": str(key)}, cli.env, cli.argv0, str(runtime))
        for p in (store, key, runtime, mnt, Path(svc.state_root)):  # the service user owns its files
            for dirpath, dirnames, filenames in os.walk(p):
                for n in dirnames + filenames:
                    os.chown(os.path.join(dirpath, n), uid, gid)
            os.chown(p, uid, gid)
        dev = ""
        st = os.stat("/dev/fuse")
        if stat.S_IMODE(st.st_mode) & 0o006 != 0o006:
            dev = str(base / "fuse-dev")
            os.mknod(dev, stat.S_IFCHR | 0o666, st.st_rdev)
            os.chmod(dev, 0o666)
        conf = base / "fuse.conf"
        conf.write_text("user_allow_other\n")

        def wrap(fuse_conf: str) -> list[str]:
            return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", NS_SCRIPT, "efp-ns",
                    fuse_conf, dev, str(uid), str(gid)]

        # without user_allow_other: refused with fusermount3's reason and one line of ours, no traceback
        if not re.search(r"^\s*user_allow_other", Path("/etc/fuse.conf").read_text(), re.M):
            argv, _ = svc.argv("ExecStart")
            r = subprocess.run(wrap("") + argv, env=svc.process_env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 1, r
            assert "user_allow_other" in r.stderr and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.strip().splitlines()[-1].startswith(f"encfs-photo: cannot mount {mnt}: "), r.stderr

        svc.start(wrap=wrap(str(conf)))
        pid = svc.pid
        ps = subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True)
        assert ps.stdout.strip() == SERVICE_USER, ps
        with open(f"/proc/{pid}/status") as f:
            ids = {ln.split(":")[0]: ln.split()[1:] for ln in f if ln.startswith(("Uid:", "Gid:"))}
        assert ids["Uid"] == [str(uid)] * 4 and ids["Gid"] == [str(gid)] * 4, ids
        # the mount lives in the daemon's namespace only; the test reaches it through /proc/PID/root
        view = Path(f"/proc/{pid}/root") / str(mnt).lstrip("/")
        assert os.path.ismount(view)
        os.chown(view, share_user.pw_uid, share_user.pw_gid)  # root of the share: the share user's
        os.chmod(view, 0o770)
        smbd = Smbd(base / "samba", {"studio": {"path": str(mnt), "read only": "no", "force user": SHARE_USER,
                                                "force group": SHARE_USER, "create mask": "0640",
                                                "directory mask": "0750", **MAC_SHARE_OPTIONS}},
                    wrap=["nsenter", f"--target={pid}", "--mount", "--"])
        local = base / "local"
        local.mkdir()
        want = random_file(local / "photo.raw", 3 * MiB + 17)
        smbd.client("studio", f"lcd {local}; mkdir Shoot; put photo.raw Shoot\\photo.raw; "
                    "get Shoot\\photo.raw back.raw")
        assert sha256_file(local / "back.raw") == want
        s = os.stat(view / "Shoot" / "photo.raw")
        assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode), s.st_size) == \
            (share_user.pw_uid, share_user.pw_gid, 0o640, 3 * MiB + 17)
        d = os.stat(view / "Shoot")
        assert (d.st_uid, stat.S_IMODE(d.st_mode)) == (share_user.pw_uid, 0o750)
        smbd.stop()
        smbd = None
        assert svc.stop() == 0, svc.log  # SIGTERM: libfuse unmounts through fusermount3 as the user
        assert not pid_alive(pid)
        # and the data is there at the next start
        svc.start(wrap=wrap(str(conf)))
        view = Path(f"/proc/{svc.pid}/root") / str(mnt).lstrip("/")
        assert sha256_file(view / "Shoot" / "photo.raw") == want
        assert svc.stop() == 0, svc.log
    finally:
        try:
            if smbd is not None:
                smbd.stop()
        finally:
            if svc is not None:
                if svc.proc is not None and svc.proc.poll() is None:
                    svc.kill(signal.SIGTERM)
                svc.cleanup()
            shutil.rmtree(base, ignore_errors=True)
