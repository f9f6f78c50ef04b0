"""ANN indexes: halfvec opclasses for the wide (halfvec) stages, used by the planner; lists rule."""

import numpy as np
import pytest
from psycopg import sql as psycopg_sql

from clipvdb import catalog, indexes, queries
from clipvdb.stages import STAGES


def _fill(conn, stage, n=300, seed=0):
    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a') ON CONFLICT DO NOTHING")
    space = catalog.get_or_create_space(conn, stage, None) if not stage.uses_clip else conn.execute(
        "INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES ('RN50', 'test', %s, %s) RETURNING id",
        (stage.name, stage.dim),
    ).fetchone()[0]  # fmt: skip
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


@pytest.mark.parametrize("name", ["first", "second", "third"])
def test_index_is_used_by_the_neighbour_query(conn, name):
    stage = STAGES[name]
    _fill(conn, stage)
    info = indexes.build(conn, stage, "ivfflat", lists=4)
    assert info.exists and info.params["lists"] == 4
    indexdef = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (queries.index_name(stage),)
    ).fetchone()[0]
    if stage.dim > 2000:
        assert "USING ivfflat (embedding halfvec_l2_ops)" in indexdef
    else:
        # vector_l2_ops is the default opclass, which pg_indexes leaves out
        assert "halfvec" not in indexdef and "USING ivfflat (embedding" in indexdef
    space = conn.execute("SELECT id FROM embedding_spaces WHERE stage = %s", (name,)).fetchone()[0]
    params = {"vectors": list(np.random.default_rng(1).random((2, stage.dim), dtype=np.float32)),
              "space": space, "dataset": 1, "split": "train", "k": 1}  # fmt: skip
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # tiny tables: make the planner show its choice
        plan = _explain(conn, _sql(stage, exact=False), params)
    assert queries.index_name(stage) in plan, plan
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        exact_plan = _explain(conn, _sql(stage, exact=True), params)
    assert queries.index_name(stage) not in exact_plan, exact_plan


def _sql(stage, exact: bool):
    return queries.knn(stage, "l2", exact=exact)


def _explain(conn, sql, params) -> str:
    return "\n".join(r[0] for r in conn.execute(psycopg_sql.SQL("EXPLAIN ") + sql, params).fetchall())


def test_hnsw_and_none_are_recorded_and_kept_on_refresh(conn):
    stage = STAGES["second"]
    _fill(conn, stage, n=50)
    info = indexes.build(conn, stage, "hnsw", m=8, ef_construction=32)
    assert info.kind == "hnsw" and info.exists and info.params["m"] == 8
    again = indexes.refresh(conn, stage)
    assert again.kind == "hnsw" and again.params["ef_construction"] == 32
    gone = indexes.build(conn, stage, "none")
    assert gone.kind == "none" and not gone.exists
    assert indexes.refresh(conn, stage).exists is False
