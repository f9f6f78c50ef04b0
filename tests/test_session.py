"""The Session and the options objects: a job runs on a Session alone, the Store's keywords and an
options object are one thing, and the CLI's flags build the same objects."""

import dataclasses
import json

import psycopg
import pytest

from clipvdb import EvaluateOptions, IngestOptions, SearchSettings, Session, Store, TinyEncoder, Watch
from clipvdb import evaluate as evaluation
from clipvdb import ingest as ingestion
from clipvdb.errors import UsageError
from clipvdb.sources import open_source


def predictions(db_url: str, run_id: int) -> list[tuple]:
    with psycopg.connect(db_url) as c:
        return c.execute(
            "SELECT i.source, p.stage, p.predicted, p.neighbor_id FROM predictions p JOIN images i "
            "ON i.id = p.image_id WHERE p.run_id = %s ORDER BY 1, 2",
            (run_id,),
        ).fetchall()


def test_jobs_run_on_a_session_alone_and_answer_as_the_store_does(db_url, syn_data):
    source = open_source(str(syn_data))
    seen: list[tuple[int, int]] = []
    said: list[str] = []
    with Session(db_url, encoder=TinyEncoder()) as session:
        stages = session.stages("first,second")
        stored = ingestion.ingest(
            session, source, stages, IngestOptions(limit=40, workers=0), Watch(lambda *a: seen.append(a))
        )
        assert stored.inserted == {"first": 40, "second": 40} and stored.total == 40
        assert seen[0] == (0, 40) and sum(advance for advance, _ in seen) == 40
        watch = Watch(lambda advance, total: None, said.append)
        options = EvaluateOptions(limit=12, batch_size=3, workers=0, display_freq=2)
        alone = evaluation.evaluate(session, source, stages, SearchSettings(exact=True), options, watch)
    assert [s.n for s in alone.stages.values()] == [12, 12]
    assert len(said) == 2 and said[0].startswith("[6/12] first: ")  # every 2 batches of 3
    with Store(db_url, encoder=TinyEncoder()) as store:
        by_store = store.evaluate(
            syn_data, "first,second", SearchSettings(exact=True), limit=12, batch_size=3, workers=0
        )
    assert predictions(db_url, alone.run_id) == predictions(db_url, by_store.run_id)
    assert len(predictions(db_url, alone.run_id)) == 24


def test_the_store_takes_an_options_object_or_its_fields(store, syn_data):
    store.ingest(syn_data, "first", IngestOptions(limit=30, workers=0, build_index=False))
    assert not store.index_info("first").exists
    again = store.ingest(syn_data, "first", limit=30, workers=0)  # nothing new to store: the index is built
    assert again.already_stored == 30 and store.index_info("first").exists
    a = store.evaluate(syn_data, "first", options=EvaluateOptions(limit=7, workers=0))
    b = store.evaluate(syn_data, "first", limit=7, workers=0)
    assert a.stages["first"].n == b.stages["first"].n == 7
    # a keyword beside the object changes that field only
    c = store.evaluate(syn_data, "first", options=EvaluateOptions(limit=7, workers=0), limit=5)
    assert c.stages["first"].n == 5
    with pytest.raises(UsageError, match="unknown keyword 'lmit'; EvaluateOptions has .*limit"):
        store.evaluate(syn_data, "first", lmit=5)
    with pytest.raises(UsageError, match="--connections must be at least 1"):
        store.evaluate(syn_data, "first", connections=0)
    with pytest.raises(UsageError, match="--limit must be at least 1"):
        store.ingest(syn_data, "first", limit=0)


def test_renamed_keywords_work_for_a_release_and_say_their_new_name(store, syn_data):
    store.ingest(syn_data, "first", workers=0)
    with pytest.warns(DeprecationWarning, match="num= is now limit="):
        old = store.evaluate(syn_data, "first", num=6, workers=0)
    assert old.stages["first"].n == 6
    with pytest.warns(DeprecationWarning, match=r"exact= is now settings=SearchSettings\(exact=\.\.\.\)"):
        by_keyword = store.evaluate(syn_data, "first", exact=True, k=3, limit=6, workers=0)
    by_settings = store.evaluate(syn_data, "first", SearchSettings(exact=True, k=3), limit=6, workers=0)
    with psycopg.connect(store.url) as c:
        ks = c.execute("SELECT id, k FROM eval_runs WHERE id IN (%s, %s)", (by_keyword.run_id, by_settings.run_id))
        assert dict(ks.fetchall()) == {by_keyword.run_id: 3, by_settings.run_id: 3}
    assert predictions(store.url, by_keyword.run_id) == predictions(store.url, by_settings.run_id)
    with pytest.warns(DeprecationWarning, match="probes= is now settings"):
        preds = store.classify([syn_data / "test" / "red-circle" / "0000.png"], "first", probes=2)
    assert len(preds) == 1


def test_options_are_frozen_and_name_their_flags():
    options = EvaluateOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.limit = 3  # type: ignore[misc]
    fields = {f.name for f in dataclasses.fields(IngestOptions)}
    assert fields == {"split", "limit", "batch_size", "workers", "dataset", "strict", "build_index"}


def test_the_cli_builds_the_same_options(cli, db_url, syn_data):
    out = json.loads(cli("ingest", "--stage", "first", "--data", syn_data, "--no-index", "--json").stdout)
    assert out["inserted"] == {"first": 60} and out["index"] == {}
    with Store(db_url) as store:
        assert not store.index_info("first").exists
    limit = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--limit", "9", "--json").stdout)
    num = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--num", "9", "--json").stdout)
    assert limit["stages"]["first"]["n"] == num["stages"]["first"]["n"] == 9
    assert predictions(db_url, limit["run_id"]) == predictions(db_url, num["run_id"])
    with psycopg.connect(db_url) as c:
        params = c.execute("SELECT params FROM eval_runs WHERE id = %s", (limit["run_id"],)).fetchone()[0]
    assert params["limit"] == 9 and "num" not in params


def test_a_clustering_records_what_its_options_say(store, syn_data):
    from clipvdb import ClusterOptions

    store.ingest(syn_data, "first", workers=0)
    by_object = store.cluster("first", ClusterOptions(method="agglomerative", k=3, linkage="average"))
    by_keywords = store.cluster("first", method="agglomerative", k=3, linkage="average")
    assert by_object.params == by_keywords.params == {"seed": 0, "k": 3, "linkage": "average"}
    assert by_object.n_clusters == by_keywords.n_clusters == 3
    with pytest.raises(UsageError, match="unknown method 'spectral'"):
        store.cluster("first", method="spectral")


def test_a_connection_goes_back_to_the_pool_without_the_session_locks_a_job_left(db_url):
    """A job that took a session-level advisory lock and lost track of it does not pass it on to the
    pool's next user: the pool lets go of every session lock when a connection comes back."""
    with Session(db_url, encoder=TinyEncoder()) as session:
        with session.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(4242)")
            conn.commit()
        with psycopg.connect(db_url) as other:
            assert other.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0]
