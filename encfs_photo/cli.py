"""The `encfs-photo` command: parse, call, print. No filesystem logic here.

Exit status: 0 success, 1 a user error (one clear line on stderr), 2 a usage
error (argparse's own). The command line is a contract (ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time

from . import __version__, control
from .errors import EncfsPhotoError, StoreError
from .store import open_store

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2

log = logging.getLogger("encfs_photo")


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit 1."""


# ---------------------------------------------------------------- secrets


def _read_secret_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"cannot read password file {path}: {exc.strerror}") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if not text:
        raise UserError(f"password file {path} is empty")
    return text


def read_passphrase(args: argparse.Namespace, confirm: bool = False, prompt: str = "Passphrase: ") -> str:
    path = getattr(args, "password_file", None) or os.environ.get("ENCFS_PHOTO_PASSWORD_FILE")
    if path:
        return _read_secret_file(path)
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if not first:
            raise UserError("empty passphrase")
        if confirm and getpass.getpass("Repeat passphrase: ") != first:
            raise UserError("the passphrases do not match")
        return first
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise UserError("no passphrase: use --password-file FILE or ENCFS_PHOTO_PASSWORD_FILE, or run in a terminal")
    return line


def read_key_file(path: str, create: bool = False) -> bytes:
    if create and not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32).hex().encode() + b"\n")
        print(f"created key file {path} (mode 600): keep it safe, it opens the vault", file=sys.stderr)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"cannot read key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                        f"run: chmod 600 {path}")
    with open(path, "rb") as f:
        data = f.read().strip()
    if len(data) < 32:
        raise UserError(f"key file {path} is too short (needs at least 32 bytes)")
    return data


def _store(url: str, must_exist: bool = True, endpoint_url: str | None = None):
    if "://" not in url:
        path = os.path.abspath(os.path.expanduser(url))
        if must_exist and not os.path.isdir(path):
            raise UserError(f"store {url} does not exist (create a vault there with: encfs-photo init {url})")
    try:
        store = open_store(url, endpoint_url=endpoint_url)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_access = getattr(store, "check_access", None)
    if check_access is not None:
        check_access()  # a missing bucket or refused credentials: one clear line before anything else
    return store


def _unlock(args: argparse.Namespace, store):
    from . import vault as vault_mod

    vault_mod.read_config(store)  # "not a vault" before asking for a passphrase
    key = read_key_file(args.key_file) if getattr(args, "key_file", None) else None
    passphrase = None if key is not None else read_passphrase(args)
    return vault_mod.open_vault(store, passphrase=passphrase, key_file_secret=key)


# ---------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    from . import vault as vault_mod

    if "://" not in args.store:
        path = os.path.abspath(os.path.expanduser(args.store))
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{args.store} exists and is not a folder")
        if os.path.isdir(path) and os.listdir(path):
            store = _store(args.store)
            if vault_mod.is_vault(store):
                raise UserError(f"{args.store} already holds a vault")
            raise UserError(f"{args.store} is not empty; choose an empty or new folder for the vault")
        os.makedirs(path, mode=0o700, exist_ok=True)
    store = _store(args.store, endpoint_url=args.endpoint_url)
    if vault_mod.is_vault(store):
        raise UserError(f"{args.store} already holds a vault")
    key = read_key_file(args.key_file, create=True) if args.key_file else None
    passphrase = ""
    if key is None or args.password_file or os.environ.get("ENCFS_PHOTO_PASSWORD_FILE"):
        passphrase = read_passphrase(args, confirm=True, prompt="New passphrase: ")
    _check_new_file(args.recovery_qr, "--recovery-qr")
    _, recovery = vault_mod.create(store, passphrase, key_file_secret=key, with_recovery=not args.no_recovery_key)
    print(f"created vault in {store.describe()}")
    if recovery:
        _show_recovery_key(recovery, args.recovery_qr)
    return EXIT_OK


def _check_new_file(path: str | None, option: str) -> None:
    """Before anything is created: a QR file must be new (it is never overwritten) in an existing folder."""
    if path is None:
        return
    if os.path.lexists(path):
        raise UserError(f"{option} {path} already exists; give a new file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{option} {path}: folder {folder} does not exist")


def _show_recovery_key(recovery: str, qr_file: str | None) -> None:
    """Print a new recovery key once, as text and (on a terminal) as a QR code; optionally as an SVG file."""
    from . import qr

    print()
    print("Recovery key (shown only this once; write it down or print it, keep it apart from the computer):")
    print()
    print(f"    {recovery}")
    print()
    if sys.stdout.isatty():
        print("The same key as a QR code, to photograph or print for a paper backup:")
        print()
        print(qr.terminal(recovery), end="")
        print()
    if qr_file:
        try:
            qr.write_svg(recovery, qr_file)
        except OSError as exc:
            print(f"encfs-photo: could not write the QR code to {qr_file}: {exc.strerror}", file=sys.stderr)
        else:
            print(f"QR code written to {qr_file} (mode 600): print it, then delete the file.")
    print("It opens the vault if you forget the passphrase: give it where the passphrase is asked.")


def _check_mountpoint(mnt: str) -> str:
    path = os.path.abspath(os.path.expanduser(mnt))
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # a FUSE mount whose daemon died (kill -9, OOM): detach it first
            raise UserError(f"mount point {mnt} is a dead mount (its daemon is gone); "
                            f"detach it with: fusermount3 -uz {mnt}") from None
    if not os.path.exists(path):
        raise UserError(f"mount point {mnt} does not exist (create it with: mkdir -p {mnt})")
    if not os.path.isdir(path):
        raise UserError(f"mount point {mnt} is not a folder")
    if os.path.ismount(path) or control.lookup(path):
        raise UserError(f"mount point {mnt} is busy: something is already mounted there")
    if os.listdir(path):
        raise UserError(f"mount point {mnt} is not empty; use an empty folder")
    if not os.path.exists("/dev/fuse") and sys.platform.startswith("linux"):
        raise UserError("/dev/fuse is missing: install fuse3 (apt-get install fuse3) and load the fuse module")
    return path


def _fuse_options(args: argparse.Namespace) -> dict:
    opts: dict = {}
    for group in args.o or []:
        for item in group.split(","):
            if not item:
                continue
            k, eq, v = item.partition("=")
            opts[k] = v if eq else True
    return opts


def cmd_mount(args: argparse.Namespace) -> int:
    from . import daemon
    from .fs import FileSystem
    from .state import default_state_dir

    mnt = _check_mountpoint(args.mountpoint)
    cache_size = _cache_size(args)
    store, cache, offline = _store_or_offline_cache(args, cache_size)
    try:
        vault = _unlock(args, cache if offline else store)
        if cache is None:
            cache = _cache(args, store, vault, cache_size)
            if cache is not None:
                cache.copy_for_offline()  # the next mount may find the bucket unreachable
        else:
            cache.check_owner(_cache_owner(vault))
        if cache is not None:
            vault.store = cache  # fs, meta and content see the cache; the cache uploads to the bucket
        lease, read_only = _take_lease(args, store, cache, vault, offline)
        fs = FileSystem(vault, read_only=read_only, state_dir=args.state_dir or default_state_dir(),
                        accept_rollback=args.accept_rollback)
    except BaseException:
        if cache is not None:
            cache.close(wait=False)
        raise
    options = {"allow_other": args.allow_other, "read_only": read_only, "lease": lease,
               "extra_options": _fuse_options(args), "debug": args.debug, "auto_gc": not args.no_auto_gc}
    if args.foreground:
        def banner() -> None:  # once the kernel has the mount
            print(f"mounted {store.describe()} on {mnt}{' read-only' if read_only else ''}; "
                  f"Ctrl-C or `encfs-photo unmount {mnt}` locks it", file=sys.stderr, flush=True)

        daemon.serve(fs, store.describe(), mnt, on_ready=banner, **options)
        return EXIT_OK
    _, _, log_file = control.paths(mnt)

    def run(ready) -> None:
        daemon.serve(fs, store.describe(), mnt, log_file=log_file, on_ready=ready, **options)

    ok, msg = daemon.detach(run, log_file)
    if not ok:
        raise UserError(f"mount failed: {msg}")
    print(f"mounted {store.describe()} on {mnt}")
    print(f"lock it with: encfs-photo unmount {mnt}   (log: {log_file})")
    return EXIT_OK


def _cache_size(args: argparse.Namespace) -> int | None:
    """--cache-size as bytes (None: the default), checked before any passphrase is asked."""
    if not args.cache_size:
        return None
    from .store.writeback import parse_size

    try:
        size = parse_size(args.cache_size)
    except ValueError as exc:
        raise UserError(f"--cache-size: {exc}") from None
    if size <= 0:
        raise UserError("--cache-size must be more than 0")
    return size


def _cache(args: argparse.Namespace, store, vault, size: int | None):
    """The write-back cache in front of an s3:// store; None for a folder store (the disk is the store)."""
    if not args.store.startswith("s3://"):
        if args.cache_dir or args.cache_size:
            log.warning("--cache-dir and --cache-size are for s3:// stores; a folder store is used directly")
        return None
    from .store.writeback import DEFAULT_CACHE_SIZE, WriteBackStore

    return WriteBackStore(store, _cache_dir(args, store), size or DEFAULT_CACHE_SIZE, owner=_cache_owner(vault),
                          start=False)


def _cache_owner(vault) -> str:
    import hashlib

    return hashlib.sha256(b"encfs-photo cache owner\0" + vault.vault_id).hexdigest()[:32]


def _store_or_offline_cache(args: argparse.Namespace, size: int | None):
    """(store, cache, offline): an unreachable s3:// endpoint gives the cache folder's offline copies."""
    try:
        return _store(args.store, endpoint_url=args.endpoint_url), None, False
    except StoreError as exc:
        if not args.store.startswith("s3://") or type(exc).__name__ != "S3UnreachableError":
            raise
        unreachable = exc
    from .store.writeback import DEFAULT_CACHE_SIZE, WriteBackStore

    store = open_store(args.store, endpoint_url=args.endpoint_url)
    cache_dir = _cache_dir(args, store)
    if not os.path.exists(os.path.join(cache_dir, "meta", "config")):
        raise StoreError(f"{unreachable} (and {cache_dir} holds no copy of the vault for an offline mount)")
    cache = WriteBackStore(store, cache_dir, size or DEFAULT_CACHE_SIZE, start=False)
    cache.offline = True
    print(f"encfs-photo: warning: {unreachable}; mounting offline from the copy in {cache_dir} "
          "(what is not cached cannot be read until the store is back)", file=sys.stderr, flush=True)
    return store, cache, True


def _take_lease(args: argparse.Namespace, store, cache, vault, offline: bool):
    """(lease, read_only): a writable mount holds the vault's lease; without it, read-only and one line why."""
    from .lease import Lease

    if args.read_only:
        if cache is not None:
            cache.hold_metadata("mounted read-only")
        return None, True
    if cache is not None:
        record = os.path.join(cache.cache_dir, "lease")
    else:
        from .state import default_state_dir

        record = os.path.join(args.state_dir or default_state_dir(), vault.vault_id.hex() + ".lease")
    lease = Lease(store, vault.meta_key, vault.vault_id, record_path=record)
    unsure = offline
    try:
        writable = lease.offline() if offline else lease.acquire()
    except StoreError as exc:  # the bucket answers reads but refuses the lease write (503, a flaky link)
        log.warning("could not take the vault's lease: %s", str(exc).splitlines()[0] if str(exc) else exc)
        unsure = True
        writable = lease.offline()
    if not writable or unsure:
        print(f"encfs-photo: warning: {lease.message}", file=sys.stderr, flush=True)
    if cache is not None and not lease.held:
        # Not holding the lease (yet): a queued journal batch must not take a
        # sequence number the holder is about to use.
        cache.hold_metadata(lease.message or "the lease is not held", until_released=writable)
    return lease, not writable


def _cache_dir(args: argparse.Namespace, store) -> str:
    from .store.writeback import default_cache_dir

    endpoint = (getattr(store, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or "")
    return getattr(args, "cache_dir", None) or default_cache_dir(f"{store.describe()} {endpoint}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _upload_line(cache: dict) -> str:
    """One progress line from a daemon's cache status: bytes and objects left, rate, ETA."""
    left = cache["pending_objects"] + cache["pending_deletes"]
    rate = cache["upload_rate"]
    eta = f"ETA {time.strftime('%H:%M:%S', time.gmtime(cache['pending_bytes'] / rate))}" if rate else "ETA --"
    line = f"uploading: {_human(cache['pending_bytes'])} in {left} objects left, {_human(rate)}/s, {eta}"
    if cache.get("retrying") and cache.get("last_error"):
        line += f" (retrying: {cache['last_error']})"
    return line


def _wait_for_daemon(entry: dict, timeout: float, progress: bool) -> dict | None:
    """Wait for the daemon to exit, showing upload progress on stderr; returns its last cache status."""
    pid = int(entry["pid"])
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last: dict | None = None
    shown = 0.0
    polled = 0.0
    width = 0
    while control.pid_alive(pid) and time.monotonic() < deadline:
        now = time.monotonic()
        if now - polled >= 0.5:
            polled = now
            try:
                last = control.request(entry["socket"], "status", timeout=5).get("cache") or last
            except (OSError, ValueError):
                pass
            if progress and last and last["pending_objects"] + last["pending_deletes"] and (
                    tty or now - shown >= 10):
                line = _upload_line(last)
                print(f"\r{line:<{width}}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                width = len(line)
                shown = now
        time.sleep(0.05)
    if width:
        print(file=sys.stderr)
    return last


def _fusermount() -> list[str]:
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            return [tool, "-u"]
    return ["umount"]


def cmd_unmount(args: argparse.Namespace) -> int:
    mnt = os.path.abspath(os.path.expanduser(args.mountpoint))
    entry = control.lookup(mnt)
    if entry is None and not os.path.ismount(mnt):
        raise UserError(f"{args.mountpoint} is not mounted")
    queued: dict | None = None
    if entry is not None:
        try:
            if args.no_wait:
                control.request(entry["socket"], "leave-queued", timeout=10)
            reply = control.request(entry["socket"], "commit")
            if not reply.get("ok"):
                print(f"encfs-photo: warning: final sync failed: {reply.get('error')}", file=sys.stderr)
            # Taken before the unmount: with --no-wait the daemon may be gone
            # before the wait loop below can ask it anything.
            queued = control.request(entry["socket"], "status", timeout=5).get("cache")
        except (OSError, ValueError):
            pass
    proc = subprocess.run(_fusermount() + [mnt], capture_output=True, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unmount failed"
        if "busy" in err.lower():
            raise UserError(f"{args.mountpoint} is busy: close the files and programs using it, then retry")
        raise UserError(f"cannot unmount {args.mountpoint}: {err}")
    if entry is not None:
        # The daemon makes its final commit, then uploads what is queued (unless
        # --no-wait told it to leave that for the next mount) and exits.
        try:
            queued = _wait_for_daemon(entry, args.timeout, progress=not args.no_wait) or queued
        except KeyboardInterrupt:
            try:
                control.request(entry["socket"], "leave-queued", timeout=10)
            except OSError:
                pass
            print("\nencfs-photo: the remaining uploads stay queued; the next mount resumes them", file=sys.stderr)
            queued = _wait_for_daemon(entry, args.timeout, progress=False) or queued
        pid = int(entry["pid"])
        if control.pid_alive(pid):
            raise UserError(f"unmounted, but the daemon (pid {pid}) is still flushing after {args.timeout:.0f} s")
    print(f"unmounted {args.mountpoint}; the vault is locked")
    if args.no_wait and queued and queued["pending_objects"] + queued["pending_deletes"]:
        print(f"about {queued['pending_objects'] + queued['pending_deletes']} uploads "
              f"({_human(queued['pending_bytes'])}) stay queued in {queued['cache_dir']}; the next mount resumes them")
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    entry = control.lookup(args.mountpoint)
    if entry is None:
        raise UserError(f"{args.mountpoint} is not an encfs-photo mount")
    reply = control.request(entry["socket"], "sync", timeout=None)
    if not reply.get("ok"):
        raise UserError(f"sync failed: {reply.get('error')}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.mountpoint:
        entry = control.lookup(args.mountpoint)
        if entry is None:
            raise UserError(f"{args.mountpoint} is not an encfs-photo mount")
        entries = [entry]
    else:
        entries = control.all_mounts()
    rows = []
    for entry in entries:
        try:
            rows.append(control.request(entry["socket"], "status", timeout=10))
        except OSError as exc:
            rows.append({"ok": False, "mountpoint": entry["mountpoint"], "error": f"daemon not answering: {exc}"})
    if args.json:
        print(json.dumps({"mounts": rows}, indent=1))
        return EXIT_OK
    if not rows:
        print("no encfs-photo vaults are mounted")
    for row in rows:
        if not row.get("ok"):
            print(f"{row.get('mountpoint')}: {row.get('error')}")
            continue
        print(f"{row['mountpoint']}  <-  {row['store']}  (pid {row['pid']})")
        if row.get("busy"):
            print(f"  busy: {row['busy']}; read-only: {row['read_only']}")
        else:
            print(f"  files: {row['files']}, unsaved in memory: {row['dirty_bytes']} bytes, "
                  f"journal batch: {row['journal_seq']}, read-only: {row['read_only']}")
        if row.get("last_error"):
            print(f"  last error: {row['last_error']}")
        lease = row.get("lease") or {}
        if lease.get("message"):
            print(f"  lease: {lease['message']}")
        cache = row.get("cache")
        if cache:
            print(f"  uploads: {cache['pending_objects']} objects ({_human(cache['pending_bytes'])}) and "
                  f"{cache['pending_deletes']} deletes pending, {cache['uploads_in_flight']} in flight, "
                  f"{_human(cache['upload_rate'])}/s; {cache['uploaded_objects']} uploaded "
                  f"({_human(cache['uploaded_bytes'])}) since mount")
            print(f"  cache: {_human(cache['clean_bytes'] + cache['pending_bytes'])} of "
                  f"{_human(cache['cache_size'])} used in {cache['cache_dir']}")
            if cache.get("last_error"):
                print(f"  upload error: {cache['last_error']}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check

    store = _store(args.store, endpoint_url=args.endpoint_url)
    vault = _unlock(args, store)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if sys.stderr.isatty():
            print(f"\rchecked {done[0] / 2**20:.0f} MiB", end="", file=sys.stderr)

    from .state import RollbackGuard, default_state_dir

    guard = RollbackGuard(args.state_dir or default_state_dir(), vault.vault_id, vault.local_key)
    report = check(vault, read_data=args.read_data, progress=progress, guard=guard)
    if sys.stderr.isatty() and args.read_data:
        print(file=sys.stderr)
    for problem in report.problems:
        print(f"DAMAGED {problem}")
    what = f"{report.files} files, {report.chunks} chunk objects"
    if args.read_data:
        what += f", {report.bytes_checked} bytes authenticated"
    if report.unreferenced:
        what += f", {report.unreferenced} unreferenced objects (garbage)"
    if report.old_batches:
        what += f", {report.old_batches} old journal batches"
    if report.unreferenced or report.old_batches:
        what += " (`encfs-photo gc` removes them)"
    if report.problems:
        print(f"check found {len(report.problems)} problems in {what}", file=sys.stderr)
        return EXIT_USER
    print(f"no problems found: {what}")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    from . import gc

    try:
        grace = gc.parse_duration(args.grace)
    except ValueError as exc:
        raise UserError(f"--grace: {exc}") from None
    entry = control.lookup(args.target) if "://" not in args.target else None
    if entry is None:
        store = _store(args.target, endpoint_url=args.endpoint_url)
        # A vault mounted here is collected by its daemon: it knows what it has not uploaded yet.
        entry = next((e for e in control.all_mounts() if e.get("store") == store.describe()), None)
        if entry is not None:
            print(f"{args.target} is mounted on {entry['mountpoint']}: collecting through that mount",
                  file=sys.stderr)
        elif args.target.startswith("s3://"):
            # Uploads an earlier mount left queued (unmount --no-wait) are not in the bucket yet:
            # their batches name chunk objects that this collection would take for orphans.
            pending = os.path.join(_cache_dir(args, store), "pending")
            if os.path.isdir(pending) and any(not n.startswith(".") for n in os.listdir(pending)):
                raise UserError(f"uploads of an earlier mount are still queued in {pending}: mount the vault "
                                "(that resumes them), then run gc on the mount point")
    if entry is not None:
        reply = control.request(entry["socket"], "gc", timeout=None, dry_run=args.dry_run, grace=grace)
        if not reply.pop("ok", False):
            raise UserError(f"gc failed: {reply.get('error')}")
        report = gc.GcReport(**reply)
    else:
        from .meta import Journal
        from .state import RollbackGuard, default_state_dir

        vault = _unlock(args, store)
        # The device's memory of the newest head: collecting from a rolled-back
        # journal would delete exactly the newer data the rollback hides.
        guard = RollbackGuard(args.state_dir or default_state_dir(), vault.vault_id, vault.local_key)
        listing = dict(store.list_with_times())
        journal = Journal(store, vault.vault_id, vault.meta_key, vault.names_key, guard)
        journal.load()
        report = gc.collect(store, journal, grace=grace, dry_run=args.dry_run, listing=listing)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.summary())
        for key in report.unknown[:20]:
            print(f"  not recognised, left alone: {key}")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    from . import vault as vault_mod

    store = _store(args.store, endpoint_url=args.endpoint_url)
    vault = _unlock(args, store)
    if args.add_key_file:  # a headless machine's way in; every other slot stays
        vault.add_slot(vault_mod.SLOT_KEYFILE, read_key_file(args.add_key_file, create=True))
        print(f"key file {args.add_key_file} now opens the vault (every other way in still works)")
        return EXIT_OK
    if args.new_password_file:
        new = _read_secret_file(args.new_password_file)
    else:
        ns = argparse.Namespace(password_file=None)
        new = read_passphrase(ns, confirm=True, prompt="New passphrase: ")
    new_slot = vault.add_slot(vault_mod.SLOT_PASSPHRASE, vault_mod.normalize_passphrase(new))
    old = vault.opened_slot
    if old is not None and old.kind == vault_mod.SLOT_PASSPHRASE:
        vault.remove_slot(old.slot_id, replacing_opened=True)
    elif old is not None:
        # Unlocked with the recovery key or a key file: the usual reason is a
        # forgotten passphrase, so the new one replaces every passphrase slot.
        for slot in vault_mod.list_slots(store):
            if slot.kind == vault_mod.SLOT_PASSPHRASE and slot.slot_id != new_slot:
                vault.remove_slot(slot.slot_id)
    print("passphrase changed (no data was re-encrypted)")
    return EXIT_OK


def cmd_key_list(args: argparse.Namespace) -> int:
    from . import vault as vault_mod

    store = _store(args.store, endpoint_url=args.endpoint_url)
    vault_mod.read_config(store)  # "not a vault" rather than an empty list
    rows = [s.describe() for s in vault_mod.list_slots(store)]  # public parameters only: no unlock needed
    if args.json:
        print(json.dumps({"slots": rows}, indent=1))
        return EXIT_OK
    print(f"{'ID':<16}  {'KIND':<10}  KDF")
    for r in rows:
        print(f"{r['id']:<16}  {r['kind']:<10}  argon2id t={r['iterations']} m={r['memory_kib'] // 1024} MiB "
              f"p={r['lanes']}")
    return EXIT_OK


def cmd_key_add(args: argparse.Namespace) -> int:
    from . import vault as vault_mod

    if args.kind == "keyfile" and not args.new_key_file:
        raise UserError("key add keyfile needs --new-key-file FILE (created with mode 600 if missing)")
    _check_new_file(args.recovery_qr, "--recovery-qr")
    store = _store(args.store, endpoint_url=args.endpoint_url)
    vault = _unlock(args, store)
    if args.kind == "passphrase":
        if args.new_password_file:
            new = _read_secret_file(args.new_password_file)
        else:
            new = read_passphrase(argparse.Namespace(password_file=None), confirm=True, prompt="New passphrase: ")
        slot_id = vault.add_slot(vault_mod.SLOT_PASSPHRASE, vault_mod.normalize_passphrase(new))
    elif args.kind == "recovery":
        recovery = vault_mod.new_recovery_key()
        norm = vault_mod.normalize_recovery_key(recovery)
        assert norm is not None
        slot_id = vault.add_slot(vault_mod.SLOT_RECOVERY, norm)
        _show_recovery_key(recovery, args.recovery_qr)
    else:
        slot_id = vault.add_slot(vault_mod.SLOT_KEYFILE, read_key_file(args.new_key_file, create=True))
    print(f"added key slot {slot_id.hex()} ({args.kind}); no data was re-encrypted")
    return EXIT_OK


def cmd_key_remove(args: argparse.Namespace) -> int:
    from . import vault as vault_mod

    store = _store(args.store, endpoint_url=args.endpoint_url)
    vault_mod.read_config(store)
    wanted = args.slot_id.lower()
    matches = [s for s in vault_mod.list_slots(store) if s.slot_id.hex().startswith(wanted)]
    if not wanted or len(matches) != 1:
        what = "matches no key slot" if not matches else "matches several key slots"
        raise UserError(f"{args.slot_id!r} {what}; see: encfs-photo key list {args.store}")
    vault = _unlock(args, store)
    vault.remove_slot(matches[0].slot_id)
    print(f"removed key slot {matches[0].slot_id.hex()} ({matches[0].kind}): its secret no longer opens the vault")
    return EXIT_OK


# ---------------------------------------------------------------- parsing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="encfs-photo", description="Zero-knowledge encrypted drive for photographers.")
    p.add_argument("--version", action="version", version=f"encfs-photo {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug, still "
                   "without names or secrets; -vvv adds the FUSE call trace, which shows file names)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def secrets(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--password-file", metavar="FILE", help="read the passphrase from FILE")
        sp.add_argument("--key-file", metavar="FILE", help="unlock with a key file (mode 600) instead")
        sp.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint for s3:// stores (MinIO, Ceph, B2, "
                        "...); default: AWS_ENDPOINT_URL, else AWS")

    sp = sub.add_parser("init", help="create a vault (prints the recovery key once)")
    sp.add_argument("store", metavar="STORE", help="a folder, or s3://BUCKET[/PREFIX]")
    secrets(sp)
    sp.add_argument("--no-recovery-key", action="store_true", help="do not create a recovery key slot")
    sp.add_argument("--recovery-qr", metavar="FILE", help="also write the recovery key as a QR code to FILE "
                    "(SVG, mode 600, must not exist) for a paper backup")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("mount", help="unlock and mount; detaches unless --foreground")
    sp.add_argument("store", metavar="STORE")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    secrets(sp)
    sp.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    sp.add_argument("--cache-dir", metavar="DIR", help="local cache folder for s3:// stores (default: "
                    "$XDG_CACHE_HOME/encfs-photo/<hash of the store>); one mount at a time")
    sp.add_argument("--cache-size", metavar="SIZE", help="cap of the local cache for s3:// stores, e.g. 10G, "
                    "500M (default 10G); writes wait for uploads when queued data reaches it")
    sp.add_argument("--allow-other", action="store_true", help="let other users (e.g. smbd) use the mount")
    sp.add_argument("--read-only", action="store_true")
    sp.add_argument("-o", action="append", metavar="FUSE_OPTS", help="extra FUSE options, comma-separated")
    sp.add_argument("--debug", action="store_true", help="libfuse debug output (shows names: never in production)")
    sp.add_argument("--state-dir", metavar="DIR", help="where this device remembers each vault's newest state "
                    "(default ~/.local/state/encfs-photo)")
    sp.add_argument("--accept-rollback", action="store_true",
                    help="mount even if the store is older than this device saw last (after a restore)")
    sp.add_argument("--no-auto-gc", action="store_true", help="do not prune the journal and sweep unreferenced "
                    "objects in the background (`encfs-photo gc` still works)")
    sp.set_defaults(func=cmd_mount)

    sp = sub.add_parser("unmount", aliases=["umount"], help="flush, unmount and lock")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("--no-wait", action="store_true", help="do not wait for uploads: leave them queued in the "
                    "cache (the next mount resumes them)")
    sp.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the daemon (default 3600)")
    sp.set_defaults(func=cmd_unmount)

    sp = sub.add_parser("sync", help="return when everything written so far is in the store")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.set_defaults(func=cmd_sync)

    sp = sub.add_parser("status", help="mounted vaults and their state")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("check", help="verify a vault; --read-data authenticates every byte")
    sp.add_argument("store", metavar="STORE")
    secrets(sp)
    sp.add_argument("--read-data", action="store_true")
    sp.add_argument("--state-dir", metavar="DIR", help="where this device remembers each vault's newest state")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("gc", help="delete old journal batches and chunk objects nothing references")
    sp.add_argument("target", metavar="STORE|MOUNTPOINT", help="a store, or the mount point of a mounted vault")
    secrets(sp)
    sp.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    sp.add_argument("--grace", default="24h", metavar="DURATION", help="never delete an object younger than "
                    "this (a commit may be in flight on another device), e.g. 0, 30m, 1h, 2d (default 24h)")
    sp.add_argument("--state-dir", metavar="DIR", help="where this device remembers each vault's newest state")
    sp.add_argument("--cache-dir", metavar="DIR", help="the cache folder mounts of this s3:// store use, if not "
                    "the default: gc refuses to run while uploads are queued there")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_gc)

    sp = sub.add_parser("passwd", help="change the passphrase (rewraps a key slot only)")
    sp.add_argument("store", metavar="STORE")
    secrets(sp)
    sp.add_argument("--new-password-file", metavar="FILE", help="read the new passphrase from FILE")
    sp.add_argument("--add-key-file", metavar="FILE", help="instead: let key file FILE open the vault too "
                    "(created with mode 600 if missing), e.g. for a NAS")
    sp.set_defaults(func=cmd_passwd)

    kp = sub.add_parser("key", help="list, add and remove key slots (passphrases, recovery keys, key files)")
    ksub = kp.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    sp = ksub.add_parser("list", help="list key slots: id, kind, KDF parameters (no unlock needed)")
    sp.add_argument("store", metavar="STORE")
    sp.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint for s3:// stores")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_key_list)
    sp = ksub.add_parser("add", help="add a slot (unlock with an existing secret first)")
    sp.add_argument("store", metavar="STORE")
    sp.add_argument("kind", choices=["passphrase", "recovery", "keyfile"])
    secrets(sp)
    sp.add_argument("--new-password-file", metavar="FILE", help="passphrase: read the new passphrase from FILE")
    sp.add_argument("--new-key-file", metavar="FILE", help="keyfile: the key file (created with mode 600 if "
                    "missing)")
    sp.add_argument("--recovery-qr", metavar="FILE", help="recovery: also write the key as a QR code to FILE (SVG)")
    sp.set_defaults(func=cmd_key_add)
    sp = ksub.add_parser("remove", help="remove a slot by id (not the last one, not the one you unlock with)")
    sp.add_argument("store", metavar="STORE")
    sp.add_argument("slot_id", metavar="SLOT_ID", help="the id from `key list` (a unique prefix is enough)")
    secrets(sp)
    sp.set_defaults(func=cmd_key_remove)
    return p


class _JournalFormatter(logging.Formatter):
    """For stderr read by journald: a `<N>` syslog priority on every line, no time (journald stamps it)."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def _stderr_is_journal() -> bool:
    # systemd sets JOURNAL_STREAM=dev:ino when it connects stderr to the journal (systemd.exec(5))
    try:
        dev, ino = (int(x) for x in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _setup_logging(verbose: int, foreground: bool) -> None:
    level = logging.WARNING if verbose == 0 and not foreground else logging.INFO
    if verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("encfs-photo %(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s encfs-photo %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # mfusepy logs call arguments (paths: file names) at debug level, under the logger "fuse";
    # only -vvv shows them (tests/test_log_secrets.py holds -vv to "no names, no secrets").
    # boto3 tells at INFO where it found credentials: noise on a mount's stderr, not our one line.
    for name in ("fuse", "mfusepy", "boto3", "botocore", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)
    log.debug("debug logging on (no names or secrets; -vvv adds the FUSE call trace, which has names)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "foreground", False) or args.command == "mount")
    try:
        return args.func(args)
    except UserError as exc:
        print(f"encfs-photo: {exc}", file=sys.stderr)
    except StoreError as exc:  # before its base class, EncfsPhotoError
        print(f"encfs-photo: store error: {exc}", file=sys.stderr)
    except EncfsPhotoError as exc:
        print(f"encfs-photo: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("encfs-photo: interrupted", file=sys.stderr)
    return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
