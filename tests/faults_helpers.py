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


def flush_wal(url: str) -> None:
    """A checkpoint: the WAL of every earlier (asynchronous) commit reaches the disk, so a server
    killed afterwards keeps all committed batches. (A transaction that writes no WAL of its own
    commits asynchronously, so a trivial commit would not do.)"""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CHECKPOINT")


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            out.append(int(entry))
    return out


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def assert_one_line_error(err: str, *expected: str) -> None:
    """No traceback reaches the user: the error is one line starting 'Error: ' or 'clipvdb: '."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(("Error:", "clipvdb: interrupted", "clipvdb: terminated"))]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], err
