"""Headless operation on a NAS (issue 7, docs/NAS.md), without Samba: the shipped systemd template
unit and environment file, key-file handling, readiness (sd_notify), stop/restart, logs for journald.

The unit's own ExecStart/ExecStopPost lines are run (expanded as systemd would, by
nas_support.UnitService), with ``python -m encfs_photo.cli`` in place of
/usr/local/bin/encfs-photo. Samba itself is in test_nas_samba.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import is_mounted, pid_alive
from nas_support import ENV_EXAMPLE_PATH, UNIT_EXE, UNIT_PATH, Unit, UnitService, parse_env_file

from encfs_photo import daemon

# Options that give a service its own mount namespace: the FUSE mount would be invisible to smbd.
NAMESPACE_OPTIONS = {
    "PrivateTmp", "PrivateDevices", "PrivateMounts", "ProtectSystem", "ProtectHome", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ProtectProc", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths",
    "BindReadOnlyPaths", "MountFlags", "RootDirectory", "RootImage", "DynamicUser", "MountAPIVFS",
}


@pytest.fixture
def service(cli, tmp_path):
    """A vault with a key file and the unit instance `studio` for it (not started); stopped at teardown."""
    made: list[UnitService] = []

    def factory(instance: str = "studio", options: str = "") -> UnitService:
        store, mnt, key = tmp_path / f"{instance}-vault", tmp_path / f"{instance}-mnt", tmp_path / f"{instance}.key"
        mnt.mkdir()
        cli.run("init", store, "--key-file", key, check=True)
        values = {"ENCFS_PHOTO_STORE": str(store), "ENCFS_PHOTO_MOUNTPOINT": str(mnt),
                  "ENCFS_PHOTO_KEY_FILE": str(key)}
        if options:
            values["ENCFS_PHOTO_OPTIONS"] = options
        svc = UnitService(tmp_path, instance, values, cli.env, cli.argv0, cli.runtime_dir)
        svc.key_file, svc.store = key, store
        made.append(svc)
        return svc

    try:
        yield factory
    finally:
        for svc in made:
            svc.cleanup()


# ------------------------------------------------------------------ the unit file itself


def test_unit_file_settings():
    unit = Unit()
    svc = dict(unit.sections["Service"])
    assert svc["Type"] == "notify"
    assert svc["EnvironmentFile"] == "/etc/encfs-photo/%i.env"
    assert svc["KillSignal"] == "SIGTERM"
    assert int(svc["TimeoutStopSec"]) >= 60
    assert svc["Restart"] == "on-failure"
    assert "network-online.target" in unit.value("Unit", "After").split()
    assert "network-online.target" in unit.value("Unit", "Wants").split()
    assert "smbd.service" in unit.value("Unit", "Before").split()
    start = unit.value("Service", "ExecStart").split()
    assert start[:4] == [UNIT_EXE, "mount", "--foreground", "--allow-other"]
    assert "--key-file" in start and "${ENCFS_PHOTO_KEY_FILE}" in start
    assert start[-2:] == ["${ENCFS_PHOTO_STORE}", "${ENCFS_PHOTO_MOUNTPOINT}"]
    stop_post = unit.value("Service", "ExecStopPost")
    assert stop_post.startswith("-/bin/fusermount3 -u")  # failure ignored: usually nothing is left to detach
    assert "ENCFS_PHOTO_RUNTIME_DIR=/run/encfs-photo" in unit.values("Service", "Environment")
    assert unit.value("Service", "RuntimeDirectory") == "encfs-photo"
    used = {k for section in unit.sections.values() for k, _ in section}
    assert not used & NAMESPACE_OPTIONS, f"these hide the mount from smbd: {used & NAMESPACE_OPTIONS}"
    assert unit.value("Install", "WantedBy") == "multi-user.target"


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at one that does
    text = UNIT_PATH.read_text().replace(UNIT_EXE, shutil.which("true") or "/bin/true")
    if not os.path.exists("/bin/fusermount3"):
        text = text.replace("/bin/fusermount3", shutil.which("true") or "/bin/true")
    (tmp_path / "encfs-photo@.service").write_text(text)
    r = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "encfs-photo@studio.service")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr


def test_env_example_covers_the_unit():
    unit = Unit()
    example = ENV_EXAMPLE_PATH.read_text()
    live = parse_env_file(ENV_EXAMPLE_PATH)
    for key in ("ENCFS_PHOTO_STORE", "ENCFS_PHOTO_MOUNTPOINT", "ENCFS_PHOTO_KEY_FILE"):
        assert live.get(key), f"{key} must be set in the example"
    defaults = {w.partition("=")[0] for v in unit.values("Service", "Environment") for w in v.split()}
    referenced = set()
    for _, value in unit.sections["Service"]:
        referenced |= set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", value))
    for var in referenced:
        assert var in live or var in defaults or f"#{var}=" in example, f"{var} is neither set nor documented"


# ------------------------------------------------------------------ key files


def test_key_file_created_private_and_refused_when_readable_by_others(cli, tmp_path):
    key = tmp_path / "k"
    r = cli.run("init", tmp_path / "vault", "--key-file", key)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    assert "Traceback" not in r.stderr and key.read_text().strip() not in r.stdout + r.stderr
    for mode in (0o640, 0o604, 0o660):
        os.chmod(key, mode)
        r = cli.run("check", tmp_path / "vault", "--key-file", key)
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "accessible by other users" in r.stderr
        assert f"chmod 600 {key}" in r.stderr
    os.chmod(key, 0o400)
    assert cli.run("check", tmp_path / "vault", "--key-file", key).returncode == 0
    # an existing key file that is too open is refused by init too, before anything is created
    other = tmp_path / "k2"
    other.write_text(os.urandom(32).hex() + "\n")
    os.chmod(other, 0o644)
    r = cli.run("init", tmp_path / "vault2", "--key-file", other)
    assert r.returncode == 1 and "accessible by other users" in r.stderr
    assert not (tmp_path / "vault2" / "config").exists()


def test_add_key_file_to_an_existing_vault(cli, tmp_path):
    """A vault made on a laptop with a passphrase gets a key file for the NAS; the passphrase keeps working."""
    pw = tmp_path / "pw"
    pw.write_text("a photographer's passphrase\n")
    vault = tmp_path / "vault"
    cli.run("init", vault, "--password-file", pw, check=True)
    key = tmp_path / "nas.key"
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    r = cli.run("passwd", vault, "--password-file", bad, "--add-key-file", key)
    assert r.returncode == 1 and not key.exists()  # nothing created before the vault is unlocked
    r = cli.run("passwd", vault, "--password-file", pw, "--add-key-file", key)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    assert cli.run("check", vault, "--key-file", key).returncode == 0
    assert cli.run("check", vault, "--password-file", pw).returncode == 0
    # an existing key file (made with the ARCHITECTURE's `init --key-file` habit, or by hand) is used as is
    key2 = tmp_path / "second.key"
    key2.write_text(os.urandom(32).hex() + "\n")
    os.chmod(key2, 0o600)
    assert cli.run("passwd", vault, "--key-file", key, "--add-key-file", key2).returncode == 0
    assert cli.run("check", vault, "--key-file", key2).returncode == 0


# ------------------------------------------------------------------ sd_notify


def test_sd_notify(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert daemon.sd_notify("READY=1") is False  # not under systemd: a no-op
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert daemon.sd_notify("READY=1\nSTATUS=x") is True
        assert s.recv(100) == b"READY=1\nSTATUS=x"
    name = f"efp-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)  # systemd's own notify socket is often abstract: "@/org/freedesktop/..."
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert daemon.sd_notify("READY=1") is True
        assert s.recv(100) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert daemon.sd_notify("READY=1") is False  # logged, never raised


# ------------------------------------------------------------------ the unit's commands, run


@pytest.mark.mount
def test_unit_start_status_stop_restart(service, cli):
    svc = service()
    # a key file others can read: the unit's start fails with one clear line, before anything is mounted
    os.chmod(svc.key_file, 0o640)
    argv, _ = svc.argv("ExecStart")
    r = subprocess.run(argv, env=svc.process_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and not is_mounted(svc.mountpoint), r
    assert r.stderr.strip() == (f"encfs-photo: key file {svc.key_file} is accessible by other users (mode 640); "
                                f"run: chmod 600 {svc.key_file}"), r.stderr
    os.chmod(svc.key_file, 0o600)
    svc.start()
    assert is_mounted(svc.mountpoint), "READY=1 before the mount was in place"
    ready = [m for m in svc.notify_messages if "READY=1" in m]
    assert ready and f"STATUS=serving {os.path.realpath(svc.mountpoint)}" in ready[0]
    # what monitoring reads
    r = cli.run("status", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["mounts"]
    assert len(rows) == 1 and rows[0]["ok"] and rows[0]["pid"] == svc.pid
    assert rows[0]["mountpoint"] == os.path.realpath(svc.mountpoint)
    for k in ("files", "dirty_bytes", "pending_put_bytes", "journal_seq", "last_error", "read_only"):
        assert k in rows[0]
    with open(os.path.join(svc.mountpoint, "before-stop.jpg"), "wb") as f:
        f.write(b"\xff\xd8" + os.urandom(300_000))
    with open(os.path.join(svc.mountpoint, "before-stop.jpg"), "rb") as f:
        data = f.read()
    # systemctl stop: SIGTERM, exit 0 well within TimeoutStopSec, unmounted, then ExecStopPost (a no-op)
    pid = svc.pid
    t0 = time.monotonic()
    assert svc.stop() == 0, svc.log
    assert time.monotonic() - t0 < svc.timeout_stop()
    assert not pid_alive(pid) and not is_mounted(svc.mountpoint)
    assert json.loads(cli.run("status", "--json").stdout) == {"mounts": []}
    # the device state (rollback memory) went to the unit's StateDirectory, not to a home folder
    assert os.listdir(os.path.join(svc.state_root, "encfs-photo"))
    svc.start()
    with open(os.path.join(svc.mountpoint, "before-stop.jpg"), "rb") as f:
        assert f.read() == data
    assert svc.stop() == 0
    assert "Traceback" not in svc.log
    assert "WARNING" not in svc.log, svc.log  # e.g. no "--cache-dir is for s3://" on every boot


@pytest.mark.mount
def test_restart_after_kill9_needs_the_stop_post_safety_net(service, cli):
    svc = service()
    svc.start()
    with open(os.path.join(svc.mountpoint, "closed.jpg"), "wb") as f:
        f.write(b"closed before the crash")
    svc.kill(signal.SIGKILL)  # OOM killer, or systemd's SIGKILL after TimeoutStopSec
    with pytest.raises(OSError):
        os.listdir(svc.mountpoint)  # a dead mount: ENOTCONN
    # without ExecStopPost the next start is refused with one clear line (not "does not exist")
    argv, _ = svc.argv("ExecStart")
    r = subprocess.run(argv, env=svc.process_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r
    assert r.stderr.strip().splitlines()[-1] == (
        f"encfs-photo: mount point {svc.mountpoint} is a dead mount (its daemon is gone); "
        f"detach it with: fusermount3 -uz {svc.mountpoint}"), r.stderr
    svc.stop_post()
    svc.start()
    with open(os.path.join(svc.mountpoint, "closed.jpg"), "rb") as f:
        assert f.read() == b"closed before the crash"
    assert svc.stop() == 0


@pytest.mark.mount
def test_options_from_the_environment_file(service):
    svc = service(options="--read-only -o noatime")
    svc.start()
    assert os.statvfs(svc.mountpoint).f_flag & os.ST_RDONLY
    with pytest.raises(OSError):
        open(os.path.join(svc.mountpoint, "x"), "wb")
    assert svc.stop() == 0


@pytest.mark.mount
def test_log_lines_for_journald_and_no_names(service):
    """Under systemd (JOURNAL_STREAM matches stderr): one `<priority>` prefix per line, no time stamp,
    no ANSI. At the default level the log names neither files nor the key."""
    svc = service()
    svc.start(journal=True)
    secret = "Client-Yamamoto-Private"
    os.makedirs(os.path.join(svc.mountpoint, secret))
    p = os.path.join(svc.mountpoint, secret, f"{secret}.cr3")
    with open(p, "wb") as f:
        f.write(b"RAWDATA" * 1000)
    os.rename(p, p + ".bak")
    with pytest.raises(OSError):
        os.rmdir(os.path.join(svc.mountpoint, secret))  # ENOTEMPTY: an error path
    with pytest.raises(OSError):
        os.stat(os.path.join(svc.mountpoint, f"{secret}-missing"))
    assert svc.stop() == 0
    log = svc.log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert lines, log
    for ln in lines:
        if ln.startswith("mounted "):  # the command's own banner (a plain print): journald files it as info
            continue
        assert re.match(r"^<[0-7]>encfs-photo (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", ln), ln
    assert any(ln.startswith("<6>encfs-photo INFO mounting ") for ln in lines)
    assert "\x1b" not in log
    for needle in (secret, "RAWDATA", svc.key_file.read_text().strip()):
        assert needle not in log
    # outside systemd: time stamps, no priority prefix
    svc.start()
    assert svc.stop() == 0
    tail = [ln for ln in svc.log.splitlines() if ln.strip()][len(lines):]
    tail = [ln for ln in tail if not ln.startswith("mounted ")]
    assert tail and all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} encfs-photo ", ln) for ln in tail), tail


def test_nas_doc_smb_conf_matches_the_tested_options():
    """docs/NAS.md's share block carries every Samba option the Samba tests run with."""
    from nas_support import MAC_GLOBAL_OPTIONS, MAC_SHARE_OPTIONS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "NAS.md").read_text()
    for k, v in {**MAC_SHARE_OPTIONS, **MAC_GLOBAL_OPTIONS}.items():
        assert re.search(rf"^\s*{re.escape(k)}\s*=\s*{re.escape(v)}\s*$", doc, re.M), f"{k} = {v} not in NAS.md"
