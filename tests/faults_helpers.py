"""Helpers of the fault tests: commands, counts, processes, and waits on observable server state
(row counts, pg_stat_activity, pg_locks) instead of sleeps."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg


def clipvdb(*args: Any) -> list[str]:
    return [sys.executable, "-m", "clipvdb", *map(str, args)]


def count(url: str, sql: str = "SELECT count(*) FROM embeddings_first") -> Any:
    with psycopg.connect(url) as c:
        row = c.execute(sql).fetchone()
        return row[0] if row else None


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; that value. Fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def lock_waiters(url: str, *, besides: int | None = None) -> list[int]:
    """Backends of this database waiting on a heavyweight lock (a table lock or another transaction)."""
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND pid <> coalesce(%s, 0)",
            (besides,),
        ).fetchall()
    return [r[0] for r in rows]


def backend_pids(url: str) -> set[int]:
    """Client backends connected to this database, other than the asking one."""
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return {r[0] for r in rows}


def invalid_indexes(url: str) -> list[str]:
    with psycopg.connect(url) as c:
        rows = c.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()
    return [r[0] for r in rows]


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _live(fields: list[str] | None) -> bool:
    return fields is not None and fields[0] != "Z"


def in_group(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (a command started in its own group: it and every
    process it started that did not leave the group)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(entry)
            if _live(fields) and fields is not None and int(fields[2]) == pgid:
                out.append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...), read from /proc."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(entry)
            if _live(fields) and fields is not None:
                parent_of[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def leftovers(pgid: int, recorded: set[int]) -> list[int]:
    """What a finished command left running: live members of its process group, and live processes
    among the descendants recorded while it ran (a child that left the group is still caught)."""
    return sorted(set(in_group(pgid)) | {p for p in recorded if not gone(p)})


def assert_nothing_left(pgid: int, recorded: set[int], timeout: float = 20.0) -> None:
    """The command's processes end (decoding workers may take a moment to see their parent die)."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(pgid, recorded)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"processes left behind by the command: {left}"


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def server_processes(pgdata: Path) -> list[int]:
    """The postmaster of a data directory and every process it started."""
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    return [pid, *children(pid)]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    """Exited (a zombie counts: it runs nothing)."""
    return not _live(_proc_stat(pid))


def assert_one_line_error(err: str, *expected: str) -> None:
    """No traceback reaches the user: stderr is exactly one line, starting 'Error: ' or 'clipvdb: ',
    and it holds every `expected` text."""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {len(lines)}: {err!r}"
    assert lines[0].startswith(("Error: ", "clipvdb: interrupted", "clipvdb: terminated")), err
    for text in expected:
        assert text in lines[0], err


class Holder:
    """A connection of the test that holds what a command needs next, in an open transaction."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url)
        self.pid = self.conn.info.backend_pid

    def hold(self, sql: str, params: Any = None) -> Holder:
        self.conn.execute(sql, params)
        return self

    def release(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()
        with contextlib.suppress(psycopg.Error):
            self.conn.execute("SELECT pg_advisory_unlock_all()")
            self.conn.commit()
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


def hold_image_row(url: str, split: str, key: str, label: int, dataset: str) -> Holder:
    """An uncommitted images row with the key a batch will insert: that batch's upsert waits for it."""
    with psycopg.connect(url) as c:
        ds = c.execute("SELECT id FROM datasets WHERE name = %s", (dataset,)).fetchone()[0]
    return Holder(url).hold(
        "INSERT INTO images (dataset_id, split, label, source, sha256) VALUES (%s, %s, %s, %s, %s)",
        (ds, split, label, key, bytes(32)),
    )


def blocked(url: str, holder: Holder, proc: subprocess.Popen) -> int:
    """The backend of `proc` once it waits on the holder (fails fast if the command ended instead)."""

    def waiting():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before it was blocked: {proc.communicate()}")
        return lock_waiters(url, besides=holder.pid)

    return wait_for(waiting, "the command to wait on the test's lock")[0]
