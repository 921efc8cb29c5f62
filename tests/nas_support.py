"""Helpers for the NAS tests (tests/test_nas.py, tests/test_nas_samba.py).

`Unit` reads the shipped systemd template unit and expands its command lines
the way systemd does (specifiers %i %S %t %%, then ``${VAR}`` as one word and
``$VAR`` split on spaces), so the tests run exactly the unit's ExecStart and
ExecStopPost rather than a paraphrase of them. `UnitService` plays the part of
systemd for one instance: environment file, state directory, $NOTIFY_SOCKET
(Type=notify readiness), KillSignal and TimeoutStopSec. `Smbd` runs a private
Samba server from Debian on 127.0.0.1 (test-only configuration, every path
under a temp folder), and `smbclient` is its client.

Every process started here is stopped by its own PID.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import EXIT_TIMEOUT, MOUNT_TIMEOUT, fuse_unmount, is_mounted

REPO = Path(__file__).resolve().parent.parent
UNIT_PATH = REPO / "systemd" / "encfs-photo@.service"
ENV_EXAMPLE_PATH = REPO / "systemd" / "encfs-photo.env.example"
UNIT_EXE = "/usr/local/bin/encfs-photo"


# ------------------------------------------------------------------ the unit


def parse_unit(path: str | os.PathLike = UNIT_PATH) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]} in file order; continuation lines joined, comments dropped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, eq, value = line.partition("=")
        assert eq and current is not None, f"bad unit line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def parse_env_file(path: str | os.PathLike) -> dict[str, str]:
    """systemd EnvironmentFile= syntax: VAR=value lines, # comments, optional quotes."""
    env: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        assert eq, f"bad environment line: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def write_env_file(path: str | os.PathLike, values: dict[str, str]) -> None:
    """The shipped example with our values filled in (commented lines become live when set)."""
    lines, seen = [], set()
    for raw in ENV_EXAMPLE_PATH.read_text().splitlines():
        m = re.match(r"^#?(ENCFS_PHOTO_[A-Z_]+)=", raw)
        if m and m.group(1) in values:
            lines.append(f"{m.group(1)}={values[m.group(1)]}")
            seen.add(m.group(1))
        else:
            lines.append(raw)
    lines += [f"{k}={v}" for k, v in values.items() if k not in seen]
    Path(path).write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BARE_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class Unit:
    def __init__(self, path: str | os.PathLike = UNIT_PATH) -> None:
        self.path = Path(path)
        self.sections = parse_unit(path)

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str) -> str | None:
        vals = self.values(section, key)
        return vals[-1] if vals else None

    @staticmethod
    def specifiers(text: str, instance: str, state_root: str, runtime_root: str) -> str:
        table = {"i": instance, "I": instance, "S": state_root, "t": runtime_root, "%": "%"}

        def sub(m: re.Match) -> str:
            if m.group(1) not in table:
                raise AssertionError(f"specifier %{m.group(1)} is not emulated by the tests")
            return table[m.group(1)]

        return re.sub(r"%(.)", sub, text)

    def environment(self, env_file_vars: dict[str, str], instance: str, state_root: str,
                    runtime_root: str) -> dict[str, str]:
        """Environment= assignments, then the EnvironmentFile (which overrides them, as in systemd)."""
        env: dict[str, str] = {}
        for value in self.values("Service", "Environment"):
            for word in shlex.split(self.specifiers(value, instance, state_root, runtime_root)):
                k, _, v = word.partition("=")
                env[k] = v
        env.update(env_file_vars)
        return env

    def command(self, key: str, env: dict[str, str], instance: str, state_root: str,
                runtime_root: str) -> tuple[list[str], bool]:
        """The argv of ExecStart/ExecStopPost, expanded; and whether a failure is ignored ('-')."""
        line = self.value("Service", key)
        assert line, f"the unit has no {key}="
        ignore = False
        while line[0] in "-@:+!":
            ignore |= line[0] == "-"
            line = line[1:]
        argv: list[str] = []
        for word in shlex.split(self.specifiers(line, instance, state_root, runtime_root)):
            bare = _BARE_VAR.fullmatch(word)
            if bare:  # "$VAR" alone: split on whitespace into zero or more words
                argv += env.get(bare.group(1), "").split()
            else:  # "${VAR}" (also inside a word): substituted as is
                argv.append(_VAR.sub(lambda m: env.get(m.group(1), ""), word))
        return argv, ignore


class UnitService:
    """One instance of the template unit, run the way systemd would run it (without systemd).

    `argv0` replaces the unit's /usr/local/bin/encfs-photo (the tests run the
    package from the checkout: ``python -m encfs_photo.cli``)."""

    def __init__(self, base: Path, instance: str, env_file_vars: dict[str, str], process_env: dict[str, str],
                 argv0: list[str], runtime_dir: str) -> None:
        self.unit = Unit()
        self.base = base
        self.instance = instance
        self.state_root = str(base / "var-lib")
        self.env_file = base / f"{instance}.env"
        write_env_file(self.env_file, env_file_vars)
        self.runtime_dir = runtime_dir
        self.argv0 = argv0
        self.unit_env = self.unit.environment(parse_env_file(self.env_file), instance, self.state_root,
                                              runtime_dir)
        self.process_env = dict(process_env)
        self.process_env.update(self.unit_env)
        # the tests' private runtime dir (the unit says /run/encfs-photo)
        self.process_env["ENCFS_PHOTO_RUNTIME_DIR"] = runtime_dir
        self.mountpoint = self.unit_env["ENCFS_PHOTO_MOUNTPOINT"]
        self.proc: subprocess.Popen | None = None
        self.log_files: list[Path] = []
        self.notify_messages: list[str] = []
        for d in " ".join(self.unit.values("Service", "StateDirectory")).split():  # systemd creates these
            os.makedirs(os.path.join(self.state_root, self.unit.specifiers(d, instance, self.state_root,
                                                                            runtime_dir)), mode=0o700,
                        exist_ok=True)

    def argv(self, key: str) -> tuple[list[str], bool]:
        argv, ignore = self.unit.command(key, self.unit_env, self.instance, self.state_root, self.runtime_dir)
        if argv and argv[0] == UNIT_EXE:
            argv = self.argv0 + argv[1:]
        return argv, ignore

    def start(self, wrap: list[str] | None = None, journal: bool = False) -> subprocess.Popen:
        """ExecStart with $NOTIFY_SOCKET; returns once the daemon sent READY=1 (Type=notify).

        `wrap` prefixes the command (e.g. to drop privileges); `journal` sets JOURNAL_STREAM to the
        log file's device:inode, as systemd does when stderr goes to journald."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        argv, _ = self.argv("ExecStart")
        log = self.base / f"{self.instance}-daemon-{len(self.log_files)}.log"
        self.log_files.append(log)
        notify_path = os.path.join(self.runtime_dir, f"notify-{len(self.log_files)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(notify_path)
            os.chmod(notify_path, 0o777)  # a daemon running as another user can answer too
            env = dict(self.process_env, NOTIFY_SOCKET=notify_path)
            with open(log, "ab") as err:
                if journal:
                    st = os.fstat(err.fileno())
                    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
                self.proc = subprocess.Popen((wrap or []) + argv, env=env, stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err)
            deadline = time.monotonic() + MOUNT_TIMEOUT
            notify.settimeout(0.2)
            while True:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    msg = ""
                if msg:
                    self.notify_messages.append(msg)
                    if "READY=1" in msg.split("\n"):
                        break
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode} before READY=1:\n{self.log}")
                if time.monotonic() > deadline:
                    self.kill(signal.SIGKILL)
                    raise AssertionError(f"no READY=1 within {MOUNT_TIMEOUT:.0f} s:\n{self.log}")
        os.unlink(notify_path)
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files if p.exists())

    def timeout_stop(self) -> float:
        return float(self.unit.value("Service", "TimeoutStopSec") or 90)

    def stop(self) -> int:
        """systemctl stop: KillSignal to the main PID, SIGKILL after TimeoutStopSec, then ExecStopPost."""
        assert self.proc is not None
        sig = getattr(signal, self.unit.value("Service", "KillSignal") or "SIGTERM")
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            code = self.proc.wait(timeout=min(self.timeout_stop(), EXIT_TIMEOUT))
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            code = -9
        self.stop_post()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """A crash (or systemd's SIGKILL): signal our daemon by its PID and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=EXIT_TIMEOUT)

    def stop_post(self) -> subprocess.CompletedProcess:
        argv, ignore = self.argv("ExecStopPost")
        r = subprocess.run(argv, capture_output=True, text=True, env=self.process_env)
        assert ignore or r.returncode == 0, r
        return r

    def cleanup(self) -> None:
        lazy = fuse_unmount(self.mountpoint)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10 if lazy else EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.kill(self.proc.pid, sig)
                        self.proc.wait(timeout=30)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue

    def mounted(self) -> bool:
        return is_mounted(self.mountpoint)


# ------------------------------------------------------------------ Samba


def sbin(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def samba_available() -> tuple[bool, str]:
    for tool in ("smbd", "smbclient", "smbpasswd"):
        if sbin(tool) is None:
            return False, f"{tool} is not installed (apt-get install samba smbclient)"
    return True, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs whose ancestry leads to pid (children smbd forked per connection)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


# What docs/NAS.md tells an admin to put in a share for Macs (keep the two in step).
MAC_SHARE_OPTIONS = {
    "vfs objects": "catia fruit streams_xattr",
    "ea support": "yes",
    "fruit:metadata": "stream",
    "fruit:resource": "file",
    "fruit:posix_rename": "yes",
    "fruit:veto_appledouble": "no",
    "fruit:wipe_intentionally_left_blank_rfork": "yes",
    "fruit:delete_empty_adfiles": "yes",
}
MAC_GLOBAL_OPTIONS = {
    "fruit:aapl": "yes",
    "fruit:nfs_aces": "no",
    "fruit:model": "MacSamba",
}


class Smbd:
    """A private smbd on 127.0.0.1:<free port>. Test-only settings: every state path under `base`,
    one SMB user (a Unix account that exists, here root) in a private passdb."""

    USER = "root"
    PASSWORD = "nas-test-password"

    def __init__(self, base: Path, shares: dict[str, dict[str, str]], extra_global: dict[str, str] | None = None,
                 wrap: list[str] | None = None) -> None:
        self.base = base
        self.port = free_port()
        for d in ("private", "lock", "state", "cache", "pid", "ncalrpc", "logs"):
            (base / d).mkdir(parents=True, exist_ok=True)
        self.conf = base / "smb.conf"
        glob = {
            "workgroup": "NASTEST",
            "server role": "standalone server",
            "smb ports": str(self.port),
            "interfaces": "127.0.0.1",
            "bind interfaces only": "yes",
            "disable netbios": "yes",
            "server min protocol": "SMB2_10",
            "private dir": str(base / "private"),
            "lock directory": str(base / "lock"),
            "state directory": str(base / "state"),
            "cache directory": str(base / "cache"),
            "pid directory": str(base / "pid"),
            "ncalrpc dir": str(base / "ncalrpc"),
            "log file": str(base / "logs" / "log.%m"),
            "passdb backend": f"tdbsam:{base / 'private' / 'passdb.tdb'}",
            "load printers": "no",
            "printcap name": "/dev/null",
            "disable spoolss": "yes",
            "rpc start on demand helpers": "no",
            "usershare max shares": "0",
            **MAC_GLOBAL_OPTIONS,
            **(extra_global or {}),
        }
        text = "[global]\n" + "".join(f"  {k} = {v}\n" for k, v in glob.items())
        for name, opts in shares.items():
            text += f"\n[{name}]\n" + "".join(f"  {k} = {v}\n" for k, v in opts.items())
        self.conf.write_text(text)
        self.client_conf = base / "client.conf"
        self.client_conf.write_text("[global]\n  client min protocol = SMB2_10\n")
        self.auth = base / "auth"
        self.auth.write_text(f"username = {self.USER}\npassword = {self.PASSWORD}\n")
        os.chmod(self.auth, 0o600)
        r = subprocess.run([sbin("smbpasswd"), "-c", str(self.conf), "-a", "-s", self.USER],
                           input=f"{self.PASSWORD}\n{self.PASSWORD}\n", capture_output=True, text=True)
        assert r.returncode == 0, r
        self.log = base / "smbd.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen((wrap or []) + [sbin("smbd"), "--foreground", "--no-process-group",
                                                         f"--configfile={self.conf}", "--debug-stdout", "-d", "1"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         # its own process group: smbd signals its whole group when it stops
                                         start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"smbd did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def client_argv(self, share: str, command: str, *extra: str) -> list[str]:
        return [sbin("smbclient"), f"//127.0.0.1/{share}", "-p", str(self.port), "-A", str(self.auth),
                "-s", str(self.client_conf), *extra, "-c", command]

    def client(self, share: str, command: str, *extra: str, cwd: str | os.PathLike | None = None,
               check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """smbclient -c COMMAND; with check, exit 0 and no NT_STATUS error anywhere in its output."""
        r = subprocess.run(self.client_argv(share, command, *extra), capture_output=True, text=True, cwd=cwd,
                           timeout=timeout, errors="replace")
        if check:
            out = r.stdout + r.stderr
            assert r.returncode == 0 and "NT_STATUS_" not in out, \
                f"smbclient {command!r} exited {r.returncode}:\n{out[-3000:]}"
        return r

    def stop(self) -> None:
        """SIGTERM our smbd by its PID, then its per-connection children by theirs."""
        kids = descendants(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        for pid in kids:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                    time.sleep(0.02)


def smb_quote(name: str) -> str:
    assert '"' not in name
    return f'"{name}"'


def python_argv0() -> list[str]:
    return [sys.executable, "-m", "encfs_photo.cli"]
