"""Claims as leases: one worker per run, across processes, Ray nodes and hosts that share one data folder.

A worker that reaches an uncomputed run creates ``<folder>.claim`` atomically (``O_EXCL``) holding its
host, pid and a random token, and keeps it fresh while it computes: a heartbeat thread touches every
claim its process holds each ``LEASE_S / 8`` seconds. Other workers wait. A claim is *stale*, and is
taken over, when
- it has not been refreshed within the lease (its mtime is older than ``LEASE_S``), on any host: its
  holder's node died or its process was killed; an empty or unreadable claim is judged the same way,
  by its age (a claim being written is a second old, not two minutes);
- or it was written on this host by a process that no longer exists (no lease to wait for).

Takeover has exactly one winner. The taker first creates ``<folder>.claim.takeover`` (``O_EXCL``);
holding it, it reads the claim again and, only if it is still the same stale claim (same content and
inode), renames it aside (atomic) and then claims the run the ordinary way, with ``O_EXCL``. A second
taker either cannot create the takeover file or, once it can, finds the winner's fresh claim and waits.
A takeover file left by a taker that died is itself stale after one lease.

Usage: ``with claims.claim(folder): ...compute and rename the run into place...``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

# The lease: how long a claim lives without a heartbeat. The heartbeat comes every LEASE_S / 8 (15 s),
# so a live holder misses the lease only if its process stalls for two minutes (swapping, a hung shared
# filesystem); and a lost node costs the survivors at most its in-flight runs plus one lease. Claim
# times are file mtimes, set by the file server on a shared disk, so hosts' clocks need not agree to
# the second. KNOWINJECT_CLAIM_LEASE_S shortens it for the cluster tests.
LEASE_S = float(os.environ.get("KNOWINJECT_CLAIM_LEASE_S", "120"))
POLL_S = 1.0


def host() -> str:
    """The host a claim names: ``KNOWINJECT_HOST`` where set (two Ray nodes on one machine are two hosts
    to each other, as in the cluster tests), else the machine's hostname."""
    return os.environ.get("KNOWINJECT_HOST") or socket.gethostname()


def claim_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".claim")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _read(path: Path) -> tuple[str, os.stat_result] | None:
    """The claim's text and stat, or None when there is no claim."""
    try:
        st = path.stat()
        return path.read_text(errors="replace"), st
    except FileNotFoundError:
        return None


def is_stale(text: str, st: os.stat_result, now: float | None = None) -> bool:
    """Whether a claim (its text and stat) has lost its holder: not refreshed within the lease, or
    written on this host by a process that is gone."""
    if (now if now is not None else time.time()) - st.st_mtime > LEASE_S:
        return True
    try:
        owner = json.loads(text)
        owner_host, pid = owner["host"], int(owner["pid"])
    except (ValueError, KeyError, TypeError):
        return False  # empty or unreadable: judged by its age alone
    return owner_host == host() and not _pid_alive(pid)


def _owner_host(text: str) -> str:
    """The host a claim's text names; ``""`` for an empty or unreadable claim."""
    try:
        return str(json.loads(text)["host"])
    except (ValueError, KeyError, TypeError):
        return ""


def _aside(path: Path) -> bool:
    """Rename ``path`` out of the way (atomic: of two callers exactly one succeeds) and delete it."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    aside.unlink(missing_ok=True)
    return True


def take_over(path: Path, seen: tuple[str, int]) -> bool:
    """Remove the stale claim at ``path`` if it is still the one seen (its text and inode); True when
    this worker removed it. Exactly one of several takers can: see the module docstring."""
    lock = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > LEASE_S:  # its taker died mid-takeover
                _aside(lock)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        now = _read(path)
        if now is None or (now[0], now[1].st_ino) != seen or not is_stale(*now):
            return False
        return _aside(path)
    finally:
        lock.unlink(missing_ok=True)


class _Heartbeat:
    """One daemon thread per process that refreshes the mtime of every claim the process holds."""

    def __init__(self):
        self.held: dict[Path, str] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        # A new claim wakes the thread, which then waits the lease of now: a thread asleep for the interval of
        # an earlier, longer lease would otherwise let a claim made under a shorter one go stale (in-process
        # runs under the 120 s lease, then the claims tests' 0.8 s one, in one pytest process).
        self.wake = threading.Event()

    def add(self, path: Path, token: str) -> None:
        with self.lock:
            self.held[path] = token
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="knowinject-claims", daemon=True)
                self.thread.start()
        self.wake.set()

    def remove(self, path: Path) -> None:
        with self.lock:
            self.held.pop(path, None)

    def _beat(self) -> None:
        while True:
            self.wake.wait(max(0.05, LEASE_S / 8))
            self.wake.clear()
            with self.lock:
                held = list(self.held.items())
            for path, token in held:
                try:
                    if token in path.read_text():  # still ours (never refresh a claim taken over)
                        os.utime(path)
                except FileNotFoundError:
                    pass


_HEARTBEAT = _Heartbeat()
if hasattr(os, "register_at_fork"):  # a forked child holds none of its parent's claims, and no thread
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_HEARTBEAT", _Heartbeat()))


class claim:
    """Context manager: hold the lease on ``folder``'s run, waiting while a live worker holds it."""

    def __init__(self, folder: Path, poll_s: float | None = None, show=str):
        self.folder = Path(folder)
        self.path = claim_path(self.folder)
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.show = show
        self.token = uuid.uuid4().hex
        self.waited_s = 0.0  # how long this worker waited for another's claim (reported by the cluster test)
        # When the claim was acquired, and, if it was taken over from a lost holder, whose it was and how
        # long that claim had gone without a heartbeat at the takeover: the run ledger records both, so
        # whether a takeover honoured the lease is read off the record, not inferred from a run's timing.
        self.claimed_at: float | None = None
        self.took_over_from: str | None = None
        self.stale_s: float | None = None

    def __enter__(self):
        me = json.dumps({"host": host(), "pid": os.getpid(), "time": time.time(), "token": self.token})
        start, said = time.monotonic(), False
        took = None  # (host, seconds without a heartbeat) of the stale claim this worker just removed
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                took = None  # another worker claimed the run first: whatever was taken over is not ours
                held = _read(self.path)
                if held is None:
                    continue  # released between the two calls: try again
                if is_stale(*held) and take_over(self.path, (held[0], held[1].st_ino)):
                    took = (_owner_host(held[0]), time.time() - held[1].st_mtime)  # as the lease judged it
                    print(f"took over a stale claim on {self.show(self.folder)} (was {held[0] or 'empty'})")
                    continue
                if not said:
                    print(f"waiting: {self.show(self.folder)} is being computed by {held[0] or 'a worker'}")
                    said = True
                time.sleep(self.poll_s)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.waited_s = time.monotonic() - start
            self.claimed_at = time.time()
            self.took_over_from, self.stale_s = took if took else (None, None)
            _HEARTBEAT.add(self.path, self.token)
            return self

    def __exit__(self, *exc):
        _HEARTBEAT.remove(self.path)
        held = _read(self.path)
        if held is not None and self.token in held[0]:  # release only our own claim, never a new holder's
            self.path.unlink(missing_ok=True)
        return False
