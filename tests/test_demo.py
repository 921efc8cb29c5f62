"""The README's first command, `bash scripts/demo.sh`: a demo vault on a local folder store, mounted.

Runs the script itself (setup.sh finds everything installed and returns at
once), with the demo folder and the runtime folder under the test's tmp_path.
The daemon detaches; the test unmounts it with the command the script prints,
and stops it by the PID in its registry entry if that fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXIT_TIMEOUT, FUSE_OK, FUSE_WHY, fuse_unmount, is_mounted

pytestmark = pytest.mark.mount
REPO = Path(__file__).resolve().parent.parent


def test_demo_script_mounts_a_vault_and_prints_how_to_lock_it(cli, tmp_path):
    if not FUSE_OK:
        pytest.skip(f"no FUSE: {FUSE_WHY}")
    demo = tmp_path / "demo"
    env = dict(cli.env, ENCFS_PHOTO_DEMO_DIR=str(demo), HOME=str(tmp_path / "home"))
    photos = demo / "Photos"
    try:
        r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"Demo vault mounted at:   {photos}" in r.stdout
        assert is_mounted(photos)
        (photos / "IMG_0001.CR3").write_bytes(b"DEMOMARKER raw bytes " * 1000)
        assert (photos / "IMG_0001.CR3").read_bytes() == b"DEMOMARKER raw bytes " * 1000
        assert os.stat(demo / "passphrase").st_mode & 0o077 == 0

        again = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True,
                               text=True, timeout=600)
        assert again.returncode == 0 and f"already mounted: {photos}" in again.stdout

        lock = [line.strip() for line in r.stdout.splitlines() if line.strip().endswith(f"unmount {photos}")]
        assert lock, r.stdout
        u = subprocess.run(lock[0].split(), env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT)
        assert u.returncode == 0, u.stderr
        assert not is_mounted(photos)
        for dirpath, _, names in os.walk(demo / "vault"):
            for n in names:
                assert b"DEMOMARKER" not in (Path(dirpath) / n).read_bytes()
    finally:
        _stop(cli.runtime_dir, photos)


def _stop(runtime_dir: str, mnt: Path) -> None:
    """Whatever the test left: unmount, and stop the detached daemon by the PID it registered."""
    pids = []
    for name in os.listdir(runtime_dir):
        if name.endswith(".json"):
            try:
                entry = json.loads((Path(runtime_dir) / name).read_text())
                pids.append(int(entry["pid"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass
    fuse_unmount(mnt)
    deadline = time.monotonic() + EXIT_TIMEOUT
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
