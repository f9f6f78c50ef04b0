"""Security: a read-only analyst role; HNSW stays correct after DELETE, VACUUM and re-insert."""

import numpy as np
import psycopg
import pytest

from clipvdb import catalog, db, indexes
from clipvdb.cli import cli as group
from clipvdb.knn import KnnSearcher, SearchSettings
from clipvdb.stages import STAGES


def test_grant_reader_can_select_and_change_nothing(runner, db_url, monkeypatch):
    monkeypatch.setenv("CLIPVDB_DATABASE_URL", db_url)
    r = runner.invoke(group, ["db", "grant-reader", "analyst_ro"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = "analyst_ro"
    with psycopg.connect(**info) as c:
        for view in ("report_accuracy", "report_runs", "images", "embeddings_first"):
            c.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
        for sql in (
            "INSERT INTO datasets (name, source) VALUES ('x', 'y')",
            "DELETE FROM images",
            "CREATE TABLE evil (x int)",
            "DROP VIEW report_accuracy",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
            c.rollback()
    # a hostile role name is an identifier, never SQL
    r = runner.invoke(group, ["db", "grant-reader", 'x"; DROP TABLE images; --'], catch_exceptions=False)
    assert r.exit_code == 0
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('images')").fetchone()[0] is not None


def test_hnsw_agrees_with_exact_after_delete_vacuum_reinsert(db_url):
    stage = STAGES["second"]
    rng = np.random.default_rng(0)
    with db.connection(db_url) as conn:
        conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x')")
        conn.execute("INSERT INTO classes VALUES (1, 0, 'a')")
        space = conn.execute(
            "INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES ('t', 't', 'second', 1024) RETURNING id"
        ).fetchone()[0]

        def add(start, n):
            for i in range(start, start + n):
                conn.execute(
                    "INSERT INTO images (id, dataset_id, split, label, source, sha256) "
                    "VALUES (%s, 1, 'train', 0, %s, %s)",
                    (i, f"i{i}", bytes(32)),
                )
                conn.execute(
                    "INSERT INTO embeddings_second (space_id, image_id, dataset_id, split, embedding) "
                    "VALUES (%s, %s, 1, 'train', %s)",
                    (space, i, rng.standard_normal(1024).astype(np.float32)),
                )
            conn.commit()

        add(1, 600)
        indexes.build(conn, catalog.Space(space, stage), 1, "hnsw", {"m": 16, "ef_construction": 64})
        conn.execute("DELETE FROM images WHERE id % 2 = 0")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM embeddings_second")
        conn.autocommit = False
        add(1001, 300)
        queries = rng.standard_normal((30, 1024)).astype(np.float32)
        found = {}
        for exact in (True, False):
            s = KnnSearcher(conn, stage, ("t", "t"), 1, "train", SearchSettings(exact=exact, ef_search=200))
            conn.commit()
            neigh, _ = s.search(conn, queries)
            found[exact] = [n[0].image_id for n in neigh]
        alive = {r[0] for r in conn.execute("SELECT image_id FROM embeddings_second")}
    assert all(i in alive for i in found[False]), "HNSW returned a deleted row"
    agree = np.mean([a == b for a, b in zip(found[True], found[False], strict=True)])
    assert agree >= 0.95, f"HNSW agrees with exact on only {agree:.0%} of queries"
