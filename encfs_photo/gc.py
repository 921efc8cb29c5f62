"""Garbage collection: prune old journal batches, delete chunk objects nothing references.

What is kept (DESIGN.md section 15):

* every journal batch from the ``keep_snapshots``-th newest snapshot to the
  head (2 by default), so a reader that began loading before the newest
  snapshot was written still finds the one it started from;
* every object that any namespace state from that snapshot to the head
  references (the union of the chunk lists in every kept batch), plus, in a
  mounted daemon, what its in-memory namespace references;
* every object younger than the grace period (a commit may be in flight on
  this or another device: chunks are uploaded before the batch naming them);
* everything the collector does not recognise (reported, never deleted).

The store is listed *before* the references are gathered, so an object
created later is never a candidate, and an object unreferenced once is never
referenced again (object ids are fresh random values).

Callers: `cli` (``encfs-photo gc STORE``), `daemon` (the ``gc`` control
request and the automatic collector). Imports meta, content, errors, store.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .content import DATA_PREFIX
from .errors import IntegrityError, ReadOnlyError, StoreError
from .meta import FLOOR_KEY, ORPHAN_GRACE, Inode, Journal
from .store.base import ObjectStore

log = logging.getLogger(__name__)

DEFAULT_GRACE = ORPHAN_GRACE  # 24 h; see DESIGN.md 15 for why not less
KEEP_SNAPSHOTS = 2
SWEEP_EVERY = 24 * 3600.0  # the daemon's automatic orphan sweep runs at most this often
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_SLOT = re.compile(r"^keys/[0-9a-f]{16}$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SINGLETONS = frozenset({"config", FLOOR_KEY, "lease"})  # "lease": the writer's lease object (lease.py)
_mounted_lock = threading.Lock()  # one collection at a time per daemon (manual and automatic)


def parse_duration(text: str) -> float:
    """``0``, ``90``, ``30s``, ``15m``, ``1h``, ``2d`` -> seconds. ValueError if malformed."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"bad duration {text!r} (use e.g. 0, 90s, 30m, 1h or 2d)")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass
class GcReport:
    dry_run: bool = False
    objects_before: int = 0
    objects_after: int = 0
    data_objects: int = 0
    referenced: int = 0
    orphans_deleted: int = 0
    orphans_young: int = 0  # unreferenced, but younger than the grace: kept
    batches_kept: int = 0
    batches_pruned: int = 0
    floor: int = 0
    delete_failures: int = 0
    unknown: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        line = (f"{verb} {self.orphans_deleted} unreferenced chunk objects and {self.batches_pruned} old journal "
                f"batches; kept {self.referenced} referenced objects, {self.orphans_young} too young to judge, "
                f"{self.batches_kept} batches (from batch {self.floor}); store objects {self.objects_before} -> "
                f"{self.objects_after}")
        if self.delete_failures:
            line += f"; {self.delete_failures} deletes failed (retried at the next run)"
        if self.unknown:
            line += f"; {len(self.unknown)} objects not recognised, left alone"
        return line


def chunk_keys(node: Inode) -> set[str]:
    """The object keys one inode record references."""
    return {ref.key for ref in node.chunks.values()}


def kept_range(journal: Journal, keep_snapshots: int = KEEP_SNAPSHOTS) -> tuple[int, set[str]]:
    """(lowest seq to keep, every object key the batches from there to the head reference).

    Walks back from the loaded head, opening each batch, until the
    ``keep_snapshots``-th snapshot (or the lowest batch there is).
    """
    refs: set[str] = set()
    keep_from = journal.seqs[0] if journal.seqs else 0
    found = 0
    for seq in reversed(journal.seqs):
        batch = journal.read_batch(seq)
        try:
            for record in batch["inodes"]:
                refs |= chunk_keys(Inode.from_record(record))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"journal batch {seq}: malformed ({exc})") from None
        if batch["kind"] == "snapshot":
            found += 1
            if found >= keep_snapshots:
                keep_from = seq
                break
    return keep_from, refs


def collect(store: ObjectStore, journal: Journal, *, grace: float = DEFAULT_GRACE, dry_run: bool = False,
            keep_snapshots: int = KEEP_SNAPSHOTS, sweep: bool = True,
            listing: dict[str, float] | None = None, extra_refs: set[str] | None = None,
            now: Callable[[], float] = time.time) -> GcReport:
    """Prune ``journal`` (loaded) and, with ``sweep``, delete orphan chunk objects.

    ``listing`` (key -> last-modified time) must have been taken before the
    references were gathered; by default it is taken here, before the kept
    batches are read, which is correct when ``journal`` was loaded just now
    and nothing else writes through this process.
    """
    if listing is None:
        listing = dict(store.list_with_times())
    report = GcReport(dry_run=dry_run, objects_before=len(listing))
    keep_from, refs = kept_range(journal, keep_snapshots)
    if extra_refs:
        refs |= extra_refs
    known_batches = journal.batch_keys()
    pruned = journal.prune(keep_from, dry_run=dry_run) if journal.seqs else []
    report.batches_pruned = len(pruned)
    report.batches_kept = len(journal.seqs) - (len(pruned) if dry_run else 0)
    report.floor = keep_from
    deleted = len(pruned)
    cutoff = now() - grace
    for key, mtime in sorted(listing.items()):
        rest = key[len(DATA_PREFIX):]
        if key in _SINGLETONS or _SLOT.match(key) or key in known_batches:
            continue
        if key.startswith(DATA_PREFIX) and _HEX32.match(rest):
            report.data_objects += 1
            if key in refs:
                report.referenced += 1
            elif not sweep:
                continue
            elif mtime > cutoff:
                report.orphans_young += 1
            else:
                report.orphans_deleted += 1
                if not dry_run:
                    try:
                        store.delete(key)
                    except StoreError as exc:  # an orphan costs space only: the next run retries
                        report.orphans_deleted -= 1
                        report.delete_failures += 1
                        log.warning("gc: could not delete %s: %s", key, exc)
                        continue
                deleted += 1
            continue
        report.unknown.append(key)
    if report.unknown:
        log.warning("gc: %d objects not recognised, left alone (first: %s)", len(report.unknown), report.unknown[0])
    created = 1 if pruned and not dry_run and FLOOR_KEY not in listing else 0  # the first floor hint
    report.objects_after = report.objects_before - deleted + created if listing else 0
    return report


def collect_mounted(fs: Any, *, grace: float = DEFAULT_GRACE, dry_run: bool = False, sweep: bool = True,
                    keep_snapshots: int = KEEP_SNAPSHOTS) -> GcReport:
    """The same work inside a mounted daemon, without unmounting.

    The listing comes first; then the mount commits and hands over what its
    in-memory namespace references; then a fresh read of the journal adds what
    every kept batch references (other devices' commits included). A store
    whose head is now older than the mount's is refused: it was rolled back.
    """
    with _mounted_lock:
        return _collect_mounted(fs, grace=grace, dry_run=dry_run, sweep=sweep, keep_snapshots=keep_snapshots)


def _collect_mounted(fs: Any, *, grace: float, dry_run: bool, sweep: bool, keep_snapshots: int) -> GcReport:
    if fs.read_only:
        raise ReadOnlyError("the mount is read-only; the garbage collector deletes objects, so it needs a "
                            "writable mount")
    vault = fs.vault
    store: ObjectStore = vault.store
    listing = dict(store.list_with_times()) if sweep else {}
    live, seq = fs.gc_roots()
    journal = Journal(store, vault.vault_id, vault.meta_key, vault.names_key)
    journal.load()
    if journal.seq < seq:
        raise IntegrityError(f"the store's journal ends at batch {journal.seq}, before this mount's batch {seq}: "
                             "the store was rolled back; not collecting")
    return collect(store, journal, grace=grace, dry_run=dry_run, keep_snapshots=keep_snapshots, sweep=sweep,
                   listing=listing, extra_refs=live)


class AutoCollector:
    """The daemon's own collector: prunes when the journal moved, sweeps orphans at most once per ``sweep_every``.

    Runs on a thread every ``check_every`` seconds; the first sweep comes at
    the first check, so a vault mounted for a day is swept once a day. Never
    started on a read-only mount (it would only be refused).
    """

    def __init__(self, fs: Any, *, check_every: float = 600.0, sweep_every: float = SWEEP_EVERY,
                 grace: float = DEFAULT_GRACE) -> None:
        self.fs = fs
        self.check_every = check_every
        self.sweep_every = sweep_every
        self.grace = grace
        self.last: GcReport | None = None
        self._last_seq = -1
        self._last_sweep = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="encfs-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.check_every):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - garbage waits for the next check; the mount carries on
                log.warning("automatic gc skipped: %s", exc)

    def tick(self) -> GcReport | None:
        """One check: collect if the journal moved or a sweep is due; the report, or None if nothing ran."""
        seq = self.fs.status()["journal_seq"]
        sweep = time.monotonic() - self._last_sweep >= self.sweep_every
        if not sweep and seq == self._last_seq:
            return None
        report = collect_mounted(self.fs, grace=self.grace, sweep=sweep)
        self._last_seq = seq
        if sweep:
            self._last_sweep = time.monotonic()
        if report.batches_pruned or report.orphans_deleted:
            log.info("automatic gc: %s", report.summary())
        self.last = report
        return report
