"""ANN indexes: halfvec opclasses for every stage, used by the planner; lists rule;
the index options (--lists, --m, --ef-construction) and search options (--probes, --ef-search)
observed in the answers the database gives, not in what the code meant to send."""

import json

import numpy as np
import psycopg
import pytest
from conftest import exact_ids, load_vectors, nearest_ids, space_at
from psycopg import sql as psycopg_sql

from clipvdb import catalog, indexes, queries
from clipvdb.knn import SearchSettings
from clipvdb.stages import STAGES

SECOND = STAGES["second"]


def _fill(conn, stage, n=300, seed=0):
    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a') ON CONFLICT DO NOTHING")
    space = (
        catalog.get_or_create_space(conn, stage, None).id
        if not stage.uses_clip
        else conn.execute(
            "INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES ('RN50', 'test', %s, %s) RETURNING id",
            (stage.name, stage.dim),
        ).fetchone()[0]
    )
    rng = np.random.default_rng(seed)
    for i in range(n):
        image_id = conn.execute(
            "INSERT INTO images (dataset_id, split, label, source, sha256) VALUES (1, 'train', 0, %s, %s) "
            "ON CONFLICT (dataset_id, split, source) DO UPDATE SET label = 0 RETURNING id",
            (f"i{i}", bytes(32)),
        ).fetchone()[0]
        conn.execute(
            f"INSERT INTO {stage.table} (space_id, image_id, dataset_id, split, embedding) "
            "VALUES (%s, %s, 1, 'train', %s)",
            (space, image_id, rng.random(stage.dim, dtype=np.float32)),
        )
    conn.commit()
    return space


def test_ideal_lists():
    assert indexes.ideal_lists(500) == 1
    assert indexes.ideal_lists(50_000) == 50
    assert indexes.ideal_lists(1_000_000) == 1000
    assert indexes.ideal_lists(4_000_000) == 2000
    assert indexes.default_probes(50) == 10
    # projected: a twentieth of the lists, and at least 1,000 rows scanned per index
    assert indexes.default_probes(500, projected=True, rows=50_000) == 25
    assert indexes.default_probes(10, projected=True, rows=1_000) == 10
    assert indexes.default_probes(100, projected=True, rows=10_000) == 10
    assert indexes.default_probes(2, projected=True, rows=250) == 2
    assert indexes.default_probes(125, projected=True, rows=12_500) == 10
    # a Citus shard's small index (25 lists of 2,500 rows): at least MIN_PROBES lists, never more than it has
    assert indexes.default_probes(25, projected=True, rows=10_000, shards=4) == indexes.MIN_PROBES == 5
    assert indexes.default_probes(3, projected=True, rows=1_000_000, shards=4) == 3


@pytest.mark.parametrize("name", ["first", "second", "third"])
def test_index_is_used_by_the_neighbor_query(conn, name):
    stage = STAGES[name]
    space = _fill(conn, stage)
    info = indexes.build(conn, space_at(conn, stage), 1, "ivfflat", {"lists": 4})
    assert info.exists and info.params["lists"] == 4
    index = queries.index_name(stage, space, 1)
    indexdef = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,)).fetchone()[0]
    # every stage is stored as halfvec; the index is the space's own: its width, its rows
    assert f"USING ivfflat (((embedding)::halfvec({stage.dim})) halfvec_l2_ops)" in indexdef, indexdef
    assert indexdef.endswith(f"WHERE ((space_id = {space}) AND (dataset_id = 1))"), indexdef
    params = {
        "vectors": list(np.random.default_rng(1).random((2, stage.dim), dtype=np.float32)),
        "space": space,
        "dataset": 1,
        "split": "train",
        "k": 1,
    }
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # tiny tables: make the planner show its choice
        plan = _explain(conn, _sql(stage, exact=False), params)
    assert index in plan, plan
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        exact_plan = _explain(conn, _sql(stage, exact=True), params)
    assert index not in exact_plan, exact_plan


def _sql(stage, exact: bool):
    return queries.knn(stage, "l2", exact=exact)


def _explain(conn, sql, params) -> str:
    return "\n".join(r[0] for r in conn.execute(psycopg_sql.SQL("EXPLAIN ") + sql, params).fetchall())


def test_hnsw_and_none_are_recorded_and_kept_on_refresh(conn):
    stage = STAGES["second"]
    _fill(conn, stage, n=50)
    space = space_at(conn, stage)
    info = indexes.build(conn, space, 1, "hnsw", {"m": 8, "ef_construction": 32})
    assert info.kind == "hnsw" and info.exists and info.params["m"] == 8
    again = indexes.refresh(conn, space, 1)
    assert again.kind == "hnsw" and again.params["ef_construction"] == 32
    gone = indexes.build(conn, space, 1, "none")
    assert gone.kind == "none" and not gone.exists
    assert indexes.refresh(conn, space, 1).exists is False


def test_probes_reach_the_server(conn):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, SECOND.dim)).astype(np.float32)
    ids = load_vectors(conn, SECOND, X)
    indexes.build(conn, space_at(conn, SECOND), 1, "ivfflat", {"lists": 40})
    Q = rng.standard_normal((40, SECOND.dim)).astype(np.float32)
    truth = exact_ids(X, Q, ids)
    one = nearest_ids(conn, SECOND, ("fake", "fake"), Q, SearchSettings(probes=1))
    every = nearest_ids(conn, SECOND, ("fake", "fake"), Q, SearchSettings(probes=40))
    assert every == truth  # all lists scanned: exact
    assert np.mean([a == b for a, b in zip(one, truth, strict=True)]) < 0.9  # one list of 40: far from it


def test_ef_search_reaches_the_server(conn):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, SECOND.dim)).astype(np.float32)
    ids = load_vectors(conn, SECOND, X)
    indexes.build(conn, space_at(conn, SECOND), 1, "hnsw", {"m": 4, "ef_construction": 8})
    Q = rng.standard_normal((40, SECOND.dim)).astype(np.float32)
    truth = exact_ids(X, Q, ids)
    recall = {
        ef: np.mean(
            [
                a == b
                for a, b in zip(
                    nearest_ids(conn, SECOND, ("fake", "fake"), Q, SearchSettings(ef_search=ef)), truth, strict=True
                )
            ]
        )
        for ef in (1, 1000)
    }
    assert recall[1000] > recall[1] and recall[1000] >= 0.9, recall


def test_index_options_reach_the_index(cli, conn):
    rng = np.random.default_rng(3)
    load_vectors(conn, SECOND, rng.standard_normal((300, SECOND.dim)).astype(np.float32))
    conn.close()
    out = json.loads(cli("index", "--stage", "second", "--kind", "ivfflat", "--lists", "7", "--json").stdout)[0]
    assert out["params"]["lists"] == 7
    out = json.loads(
        cli("index", "--stage", "second", "--kind", "hnsw", "--m", "4", "--ef-construction", "9", "--json").stdout
    )[0]
    assert out["params"]["m"] == 4 and out["params"]["ef_construction"] == 9
    bad = cli("index", "--stage", "second", "--kind", "hnsw", "--m", "8", "--ef-construction", "9", expect=2)
    assert "at least 2 x --m" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_index_definitions_on_the_server(cli, db_url):
    rng = np.random.default_rng(4)
    with psycopg.connect(db_url) as c:
        from pgvector.psycopg import register_vector

        register_vector(c)
        load_vectors(c, SECOND, rng.standard_normal((300, SECOND.dim)).astype(np.float32))
    cli("index", "--stage", "second", "--kind", "hnsw", "--m", "4", "--ef-construction", "9")
    with psycopg.connect(db_url) as c:
        d = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'embeddings_second_ann_%'").fetchone()[0]
    assert "m='4'" in d and "ef_construction='9'" in d
    cli("index", "--stage", "second", "--kind", "ivfflat", "--lists", "7")
    with psycopg.connect(db_url) as c:
        d = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'embeddings_second_ann_%'").fetchone()[0]
    assert "lists='7'" in d


def test_index_model_rebuilds_that_models_indexes_alone(cli, syn_data):
    """`clipvdb index --model NAME` rebuilds the named model's spaces at the stage and leaves the
    other models' indexes as they were (the same relation on the server); a model not stored there
    is a one-line error."""
    import os

    from clipvdb.demo import SHIPPED_MODEL

    def relations() -> dict[str, int]:
        with psycopg.connect(os.environ["CLIPVDB_DATABASE_URL"]) as c:
            rows = c.execute("SELECT relname, oid::int FROM pg_class WHERE relname LIKE 'embeddings_second_ann_%'")
            return dict(rows.fetchall())

    cli("ingest", "--stage", "second", "--data", syn_data, "--model", f"tiny,{SHIPPED_MODEL}", "--workers", "0")
    spaces = {m["model"]: m for m in json.loads(cli("models", "--json").stdout)}
    assert spaces["tiny"]["kind"] == spaces["cnn"]["kind"] == "ivfflat"
    before = relations()
    out = json.loads(cli("index", "--stage", "second", "--model", "tiny", "--kind", "hnsw", "--json").stdout)
    assert [(i["model"], i["kind"]) for i in out] == [("tiny", "hnsw")], out
    after = {m["model"]: m for m in json.loads(cli("models", "--json").stdout)}
    assert after["tiny"]["kind"] == "hnsw" and after["tiny"]["exists"] and after["cnn"]["kind"] == "ivfflat"
    cnn = f"embeddings_second_ann_{spaces['cnn']['space']}_1"
    tiny = f"embeddings_second_ann_{spaces['tiny']['space']}_1"
    assert relations()[cnn] == before[cnn] and relations()[tiny] != before[tiny]
    bad = cli("index", "--stage", "second", "--model", "RN50", expect=2)
    assert "no vectors of model 'RN50' stored at stage second (stored: cnn, tiny)" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_a_projected_rebuild_indexes_only_the_new_projection_rows(conn):
    """Rebuilding a projected index rewrites every projection row; the index holds the new rows
    alone (one built in the transaction that deleted the old rows would take both: nearly twice the
    size, its lists trained partly on projections in a basis no longer stored)."""
    X = np.random.default_rng(0).normal(size=(3000, SECOND.dim)).astype(np.float32)
    load_vectors(conn, SECOND, X)
    space = space_at(conn, SECOND)
    sizes = []
    for _ in range(3):
        info = indexes.build(conn, space, 1, "ivfflat", {"project": 16})
        assert info.exists and info.params["project"] == 16
        sizes.append(info.size_bytes)
    live = conn.execute(f"SELECT count(*) FROM {SECOND.projection_table} WHERE space_id = %s", (space.id,))
    assert live.fetchone()[0] == len(X)
    assert max(sizes) <= sizes[0] * 1.05, sizes


def test_a_build_lets_go_of_the_space_lock_however_it_ends(conn, db_url, monkeypatch):
    """A build holds the space's index lock across its two transactions and lets go of it at the end,
    after an error too: another session can take it at once."""
    from clipvdb.errors import EmptyStageError

    _fill(conn, SECOND, n=50)
    space = space_at(conn, SECOND)
    key = indexes.lock_key(SECOND.name, space.model, space.weights)

    def free() -> bool:
        with psycopg.connect(db_url) as other:
            return other.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()[0]

    seen_in_the_build: list[bool] = []
    create_index = queries.create_index

    def watched(*args, **kwargs):  # the second transaction: the first has committed
        seen_in_the_build.append(free())
        return create_index(*args, **kwargs)

    monkeypatch.setattr(queries, "create_index", watched)
    indexes.build(conn, space, 1, "ivfflat", {"project": 8})
    assert seen_in_the_build == [False] and free()
    with pytest.raises(EmptyStageError):
        indexes.build(conn, space, 2, "ivfflat", {"project": 8})  # dataset 2 stores nothing
    assert free()
    with indexes.space_index_held(conn, space):
        assert not free()
