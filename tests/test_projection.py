"""Projected indexes: the PCA basis, the projections table, candidate search with an exact re-rank;
--candidates reaches the server, and exact and cosine search bypass the projection."""

import json

import numpy as np
import pytest
from conftest import exact_ids, load_vectors, nearest_ids, space_at
from psycopg import sql as psycopg_sql

from clipvdb import catalog, indexes, projection
from clipvdb.errors import UsageError
from clipvdb.knn import KnnSearcher, SearchSettings
from clipvdb.stages import STAGES
from clipvdb.storage import StageRows

FIRST = STAGES["first"]
PIXELS = ("pixels", "none")


def _low_rank(n: int, dim: int, rank: int, seed: int = 0) -> np.ndarray:
    """Points in a `rank`-dimensional affine subspace: a projection to >= rank components keeps
    every distance, so projected search must find exactly what exact search finds."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T
    return (0.5 + rng.standard_normal((n, rank)) @ basis * 0.1).astype(np.float32)


def _store(conn, X: np.ndarray, stage=FIRST, split: str = "train", start: int = 0) -> list[int]:
    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a'), (1, 1, 'b') ON CONFLICT DO NOTHING")
    space = catalog.get_or_create_space(conn, stage, None)
    rows = [(f"{split}{start + i}", (start + i) % 2, bytes(32)) for i in range(len(X))]
    ids = catalog.upsert_images(conn, 1, split, rows)
    image_ids = [ids[key] for key, _, _ in rows]
    StageRows(stage, space.id, 1, split).copy(conn, image_ids, X)
    conn.commit()
    return image_ids


def _neighbors(conn, Q, settings: SearchSettings) -> tuple[list[int], KnnSearcher]:
    searcher = KnnSearcher(conn, FIRST, ("pixels", "none"), 1, "train", settings)
    neigh, _ = searcher.search(conn, Q)
    conn.commit()
    return [n[0].image_id for n in neigh], searcher


def test_fit_keeps_distances_of_low_rank_data_and_an_orthonormal_basis(conn):
    X = _low_rank(200, FIRST.dim, rank=12)
    _store(conn, X)
    proj = projection.fit(conn, space_at(conn, FIRST), 1, 16)
    assert proj.matrix.shape == (16, FIRST.dim) and proj.fitted_rows == 200
    np.testing.assert_allclose(proj.matrix[:12] @ proj.matrix[:12].T, np.eye(12), atol=1e-4)
    assert proj.variance_kept == pytest.approx(1.0, abs=1e-3)
    stored = X.astype(np.float16).astype(np.float32)  # halfvec storage
    P = proj.apply(stored)
    full = np.linalg.norm(stored[:, None] - stored[None, :20], axis=2)
    projected = np.linalg.norm(P[:, None] - P[None, :20], axis=2)
    np.testing.assert_allclose(projected, full, rtol=1e-3, atol=1e-3)


def test_fit_takes_the_strongest_components_first(conn):
    rng = np.random.default_rng(3)
    X = 0.5 + rng.standard_normal((1200, 1024)).astype(np.float32) * (0.9 ** np.arange(1024)).astype(np.float32)
    stage = STAGES["second"]
    conn.execute("INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES ('RN50', 't', 'second', 1024)")
    space = conn.execute("SELECT id FROM embedding_spaces WHERE stage = 'second'").fetchone()[0]
    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x')")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a')")
    ids = catalog.upsert_images(conn, 1, "train", [(f"i{i}", 0, bytes(32)) for i in range(len(X))])
    StageRows(stage, space, 1, "train").copy(conn, [ids[f"i{i}"] for i in range(len(X))], X)
    conn.commit()
    proj = projection.fit(conn, space_at(conn, stage), 1, 4)  # more rows than dimensions: the covariance route
    # the data's variance falls along the axes in order, so the components are the first axes
    assert np.abs(proj.matrix).argmax(axis=1).tolist() == [0, 1, 2, 3]
    assert 0.5 < proj.variance_kept < 0.65  # 0.81^k variances: the first four hold 57 %


def test_projected_index_finds_the_exact_neighbors_through_its_own_index(conn):
    X = _low_rank(300, FIRST.dim, rank=10)
    ids = _store(conn, X)
    Q = _low_rank(25, FIRST.dim, rank=10, seed=0)[:25] + 0.001
    space = space_at(conn, FIRST)
    info = indexes.build(conn, space, 1, "hnsw", {"project": 16})
    assert info.exists and info.params["project"] == 16 and info.kind == "hnsw"
    assert conn.execute("SELECT count(*) FROM projections_first").fetchone()[0] == len(ids)
    name = f"projections_first_ann_{space.id}_1"
    indexdef = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).fetchone()
    assert indexdef and "hnsw (((proj)::halfvec(16)) halfvec_l2_ops)" in indexdef[0], indexdef
    assert conn.execute("SELECT to_regclass(%s)", (f"embeddings_first_ann_{space.id}_1",)).fetchone()[0] is None
    exact, _ = _neighbors(conn, Q, SearchSettings(exact=True))
    got, searcher = _neighbors(conn, Q, SearchSettings())
    assert searcher.projection is not None and searcher.projection.dims == 16
    assert got == exact
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # tiny tables: make the planner show its choice
        conn.execute("SET LOCAL enable_bitmapscan = off")
        conn.execute("SET LOCAL enable_sort = off")
        params = {
            "vectors": list(Q[:2]),
            "projected": list(searcher.projection.apply(Q[:2])),
            "space": searcher.space,
            "dataset": 1,
            "split": "train",
            "k": 1,
            "candidates": 20,
        }
        plan = "\n".join(r[0] for r in conn.execute(psycopg_sql.SQL("EXPLAIN ") + searcher.sql, params).fetchall())
    assert name in plan, plan


def test_rows_added_later_are_projected_and_unprojected_rows_fall_back_to_full_vectors(conn, capsys):
    from clipvdb import ingest as ingest_mod

    X = _low_rank(300, FIRST.dim, rank=10)
    _store(conn, X)
    indexes.build(conn, space_at(conn, FIRST), 1, "hnsw", {"project": 16})
    proj = projection.load(conn, space_at(conn, FIRST), 1)
    # what ingest does for a small load beside a projected index
    extra = _low_rank(5, FIRST.dim, rank=10, seed=7)
    space = catalog.find_space(conn, FIRST, None)
    new_ids = _store(conn, extra, start=1000)
    assert space is not None
    projection.add(conn, StageRows(FIRST, space, 1, "train"), proj, new_ids, extra)
    conn.commit()
    got, searcher = _neighbors(conn, extra, SearchSettings())
    assert searcher.projection is not None and got == new_ids
    # a row without its projection (a load killed after dropping the index): full-vector search
    lone = _low_rank(1, FIRST.dim, rank=10, seed=9)
    lone_id = _store(conn, lone, start=2000)
    capsys.readouterr()
    got, searcher = _neighbors(conn, lone, SearchSettings())
    assert searcher.projection is None and got == lone_id
    assert "1 of 306 rows have no projection" in capsys.readouterr().err
    # deleting an image removes its projection with its embedding
    conn.execute("DELETE FROM images WHERE id = %s", (new_ids[0],))
    conn.commit()
    assert conn.execute("SELECT count(*) FROM projections_first WHERE image_id = %s", (new_ids[0],)).fetchone()[0] == 0
    assert ingest_mod.projection is projection  # ingest uses the same module for its per-batch projections


def test_index_cli_builds_the_stage_default_and_project_0_removes_it(cli, conn):
    _store(conn, _low_rank(150, FIRST.dim, rank=8))
    out = json.loads(cli("index", "--stage", "first", "--json").stdout)
    assert out[0]["kind"] == "ivfflat" and out[0]["params"]["project"] == 64 and out[0]["exists"]
    assert conn.execute("SELECT dim FROM space_projections").fetchone()[0] == 64
    conn.commit()
    out = json.loads(cli("index", "--stage", "first", "--kind", "ivfflat", "--project", "0", "--json").stdout)
    assert out[0]["kind"] == "ivfflat" and "project" not in out[0]["params"]
    assert conn.execute("SELECT count(*) FROM space_projections").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM projections_first").fetchone()[0] == 0
    result = cli("index", "--stage", "first", "--project", "16", "--metric", "cosine", expect=2)
    assert "--project needs" in result.output and len(result.output.strip().splitlines()) == 1


def test_project_wider_than_the_stage_is_refused(conn):
    _store(conn, _low_rank(20, FIRST.dim, rank=4))
    with pytest.raises(UsageError, match="between 1 and 2000"):
        indexes.build(conn, space_at(conn, FIRST), 1, "hnsw", {"project": 2500})


def test_candidates_reach_the_server_and_exact_and_cosine_bypass_the_projection(conn):
    first = STAGES["first"]
    rng = np.random.default_rng(2)
    X = rng.random((600, first.dim), dtype=np.float32)
    ids = load_vectors(conn, first, X)
    indexes.build(
        conn, space_at(conn, first), 1, "ivfflat", {"project": 4, "lists": 1}
    )  # 4 of 3,072 dims: poor candidates
    Q = rng.random((30, first.dim), dtype=np.float32)
    X16 = X.astype(np.float16).astype(np.float64)
    truth = exact_ids(X16, Q.astype(np.float16).astype(np.float64), ids)
    few = nearest_ids(conn, first, PIXELS, Q, SearchSettings(candidates=1))
    all_ = nearest_ids(conn, first, PIXELS, Q, SearchSettings(candidates=600))
    assert all_ == truth  # every row re-ranked exactly
    assert np.mean([a == b for a, b in zip(few, truth, strict=True)]) < 0.5
    exact = KnnSearcher(conn, first, PIXELS, 1, "train", SearchSettings(exact=True, candidates=1))
    cosine = KnnSearcher(conn, first, PIXELS, 1, "train", SearchSettings(metric="cosine"))
    conn.commit()
    assert exact.projection is None and cosine.projection is None
    assert nearest_ids(conn, first, PIXELS, Q, SearchSettings(exact=True, candidates=1)) == truth
