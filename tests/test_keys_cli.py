"""Key slots from the command line (`encfs-photo key list|add|remove`) and the recovery key's QR code.

No mount needed: every command here works on the store. Each test that
removes a slot checks that the removed secret no longer opens the vault, and
that no data object changed (rewrapping is data-free).
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import stat
import subprocess

import pytest
from conftest import PASSPHRASE
from test_cli import RECOVERY_RE, assert_user_error

from encfs_photo import qr

ANSI_ROW = re.compile(r"((?:\x1b\[4[07]m  )+)\x1b\[0m")


def slots(cli, store) -> list[dict]:
    r = cli.run("key", "list", store, "--json", check=True)
    return json.loads(r.stdout)["slots"]


def opens(cli, store, pwfile) -> bool:
    """True if the passphrase in ``pwfile`` unlocks the vault (a structure check needs the master key)."""
    r = cli.run("check", store, "--password-file", pwfile)
    assert "Traceback" not in r.stderr
    return r.returncode == 0


def non_slot_objects(store) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(store):
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, store)
            if not rel.startswith("keys" + os.sep):
                with open(p, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def vm(make_vault, tmp_path):
    v = make_vault()
    (tmp_path / "pw2").write_text("a second passphrase\n")
    return v


def test_key_list_shows_ids_kinds_params_and_no_secret(cli, vm):
    rows = slots(cli, vm.store)
    assert sorted(r["kind"] for r in rows) == ["passphrase", "recovery"]
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{16}", r["id"])
        assert r["iterations"] >= 2 and r["memory_kib"] >= 19 * 1024 and r["lanes"] >= 1
        assert set(r) == {"id", "kind", "kdf", "iterations", "memory_kib", "lanes"}
    text = cli.run("key", "list", vm.store, check=True).stdout
    for r in rows:
        assert r["id"] in text
    raw = [json.loads((vm.store / "keys" / r["id"]).read_text()) for r in rows]
    for d in raw:  # neither the wrapped key, its commitment nor the salt is shown
        for secretish in (d["wrapped"], d["commit"], d["kdf"]["salt"]):
            assert secretish not in text


def test_key_list_of_a_folder_that_is_not_a_vault(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(cli.run("key", "list", tmp_path / "empty"), contains="not an encfs-photo vault")


def test_add_passphrase_then_remove_it(cli, vm, tmp_path):
    before = non_slot_objects(vm.store)
    r = cli.run("key", "add", vm.store, "passphrase", "--password-file", vm.pwfile,
                "--new-password-file", tmp_path / "pw2", check=True)
    new_id = re.search(r"added key slot ([0-9a-f]{16})", r.stdout).group(1)
    assert len(slots(cli, vm.store)) == 3
    assert opens(cli, vm.store, tmp_path / "pw2") and opens(cli, vm.store, vm.pwfile)
    # Remove by a unique prefix, unlocking with the original passphrase.
    r = cli.run("key", "remove", vm.store, new_id[:6], "--password-file", vm.pwfile, check=True)
    assert new_id in r.stdout
    assert new_id not in {s["id"] for s in slots(cli, vm.store)}
    assert not opens(cli, vm.store, tmp_path / "pw2")  # the removed slot no longer opens the vault
    assert opens(cli, vm.store, vm.pwfile)
    assert non_slot_objects(vm.store) == before  # no data or config object was touched


def test_refuses_to_remove_the_slot_used_to_unlock(cli, vm, tmp_path):
    pw_id = next(s["id"] for s in slots(cli, vm.store) if s["kind"] == "passphrase")
    line = assert_user_error(cli.run("key", "remove", vm.store, pw_id, "--password-file", vm.pwfile),
                             contains="unlocked with")
    assert "recovery key" in line  # says how: unlock with another slot
    assert opens(cli, vm.store, vm.pwfile)
    # With the recovery key (another slot) the same removal goes through.
    (tmp_path / "rec").write_text(vm.recovery_key + "\n")
    cli.run("key", "remove", vm.store, pw_id, "--password-file", tmp_path / "rec", check=True)
    assert not opens(cli, vm.store, vm.pwfile)
    assert opens(cli, vm.store, tmp_path / "rec")


def test_refuses_to_remove_the_last_slot(cli, make_vault, tmp_path):
    vm = make_vault("solo", init=False)
    cli.run("init", vm.store, "--password-file", vm.pwfile, "--no-recovery-key", check=True)
    (only,) = slots(cli, vm.store)
    assert_user_error(cli.run("key", "remove", vm.store, only["id"], "--password-file", vm.pwfile),
                      contains="last key slot")
    assert opens(cli, vm.store, vm.pwfile)


def test_remove_unknown_or_ambiguous_id(cli, vm):
    assert_user_error(cli.run("key", "remove", vm.store, "zz", "--password-file", vm.pwfile), contains="matches no")
    assert_user_error(cli.run("key", "remove", vm.store, "", "--password-file", vm.pwfile), contains="matches")
    assert len(slots(cli, vm.store)) == 2


def test_wrong_passphrase_adds_and_removes_nothing(cli, vm, tmp_path):
    (tmp_path / "bad").write_text("not it\n")
    assert_user_error(cli.run("key", "add", vm.store, "passphrase", "--password-file", tmp_path / "bad",
                              "--new-password-file", tmp_path / "pw2"), contains="wrong passphrase")
    any_id = slots(cli, vm.store)[0]["id"]
    assert_user_error(cli.run("key", "remove", vm.store, any_id, "--password-file", tmp_path / "bad"),
                      contains="wrong passphrase")
    assert len(slots(cli, vm.store)) == 2


def test_add_key_file_slot_opens_with_key_file(cli, vm, tmp_path):
    kf = tmp_path / "nas.key"
    assert_user_error(cli.run("key", "add", vm.store, "keyfile", "--password-file", vm.pwfile),
                      contains="--new-key-file")
    cli.run("key", "add", vm.store, "keyfile", "--password-file", vm.pwfile, "--new-key-file", kf, check=True)
    assert stat.S_IMODE(os.stat(kf).st_mode) == 0o600
    assert "keyfile" in {s["kind"] for s in slots(cli, vm.store)}
    assert cli.run("check", vm.store, "--key-file", kf).returncode == 0


def test_add_recovery_slot_prints_a_working_key_and_its_qr_file(cli, vm, tmp_path):
    svg = tmp_path / "paper.svg"
    r = cli.run("key", "add", vm.store, "recovery", "--password-file", vm.pwfile, "--recovery-qr", svg,
                check=True)
    (rec,) = RECOVERY_RE.findall(r.stdout)
    assert rec != vm.recovery_key
    assert "\x1b[" not in r.stdout  # stdout is not a terminal here: no QR drawn into a log or a pipe
    (tmp_path / "rec2").write_text(rec + "\n")
    assert opens(cli, vm.store, tmp_path / "rec2")
    assert stat.S_IMODE(os.stat(svg).st_mode) == 0o600
    assert svg_matrix(svg.read_text()) == qr.matrix(rec)
    # The QR file is never overwritten: a second add refuses before creating anything.
    n = len(slots(cli, vm.store))
    assert_user_error(cli.run("key", "add", vm.store, "recovery", "--password-file", vm.pwfile,
                              "--recovery-qr", svg), contains="already exists")
    assert len(slots(cli, vm.store)) == n


# ------------------------------------------------------------------ QR code


def svg_matrix(svg: str) -> list[list[bool]]:
    """Modules from qrcode's SVG path (one `Mx,yHx+1Vy+1Hxz` square per dark module), quiet zone cut."""
    size = int(re.search(r'viewBox="0 0 (\d+) (\d+)"', svg).group(1))
    grid = [[False] * size for _ in range(size)]
    for x, y in re.findall(r"M(\d+),(\d+)H", svg):
        grid[int(y)][int(x)] = True
    q = qr.QUIET_ZONE
    return [row[q:size - q] for row in grid[q:size - q]]


def terminal_matrix(text: str) -> list[list[bool]]:
    rows = [[cell == "\x1b[40m  " for cell in re.findall(r"\x1b\[4[07]m  ", m)] for m in ANSI_ROW.findall(text)]
    q = qr.QUIET_ZONE
    assert rows and all(not any(r) for r in rows[:q] + rows[-q:])  # a light quiet zone all round
    return [r[q:len(r) - q] for r in rows[q:len(rows) - q]]


def format_bits(m: list[list[bool]]) -> int:
    """The 15 format bits beside the top-left finder (ISO 18004 7.9), mask 0x5412 removed."""
    coords = [(8, i) for i in (0, 1, 2, 3, 4, 5, 7, 8)] + [(i, 8) for i in (7, 5, 4, 3, 2, 1, 0)]
    bits = 0
    for r, c in coords:
        bits = (bits << 1) | int(m[r][c])
    return bits ^ 0x5412


def bch_format_ok(bits: int) -> bool:
    rem = bits
    for i in range(14, 9, -1):
        if rem >> i & 1:
            rem ^= 0x537 << (i - 10)
    return rem == 0


KEY = "WC7A-AX5R-XT5C-OCK7-FM5U-NIX7-DHFQ-MIY6"


def test_qr_matrix_is_a_wellformed_level_m_code():
    m = qr.matrix(KEY)
    size = len(m)
    assert (size - 21) % 4 == 0 and all(len(row) == size for row in m)
    finder = [[r in (0, 6) or c in (0, 6) or (2 <= r <= 4 and 2 <= c <= 4) for c in range(7)] for r in range(7)]
    for r0, c0 in ((0, 0), (0, size - 7), (size - 7, 0)):
        assert [row[c0:c0 + 7] for row in m[r0:r0 + 7]] == finder
    bits = format_bits(m)
    assert bch_format_ok(bits)
    assert bits >> 13 == 0b00  # error correction level M
    assert qr.matrix(KEY) == m  # deterministic
    assert qr.matrix(KEY.replace("W", "X", 1)) != m  # and it depends on every character


def test_svg_file_holds_the_key_and_is_never_overwritten(tmp_path):
    path = tmp_path / "k.svg"
    qr.write_svg(KEY, str(path))
    assert svg_matrix(path.read_text()) == qr.matrix(KEY)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        qr.write_svg(KEY, str(path))


def test_terminal_rendering_is_the_matrix():
    assert terminal_matrix(qr.terminal(KEY)) == qr.matrix(KEY)


def test_qr_decodes_to_the_recovery_key():
    """A real decoder (zbar), when the machine has it: the printed code scans as the key."""
    pyzbar = pytest.importorskip("pyzbar.pyzbar", reason="pyzbar/libzbar0 not installed")
    m = qr.matrix(KEY)
    scale, q = 4, qr.QUIET_ZONE
    size = (len(m) + 2 * q) * scale
    pixels = bytearray([255]) * (size * size)
    for r, row in enumerate(m):
        for c, dark in enumerate(row):
            if dark:
                for dy in range(scale):
                    start = ((r + q) * scale + dy) * size + (c + q) * scale
                    pixels[start:start + scale] = bytes(scale)
    decoded = pyzbar.decode((bytes(pixels), size, size))
    assert [d.data.decode() for d in decoded] == [KEY]


def test_init_on_a_terminal_prints_the_qr_of_the_printed_key(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cli.argv0 + ["init", str(tmp_path / "store"), "--password-file", str(pw)],
                                env=cli.env, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        proc.stderr.close()
    finally:
        os.close(master)
    text = out.decode().replace("\r\n", "\n")
    (rec,) = RECOVERY_RE.findall(text)
    assert terminal_matrix(text) == qr.matrix(rec)
