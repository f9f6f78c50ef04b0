"""Search-time experiments inside PostgreSQL: for each stored-set size and index setting, recall@1
and recall@10 against exact search, mean and p95 query ms, index build seconds and size.

Each size is a scratch copy of the stage's first N stored vectors (by image id); the queries are
stored vectors beyond the largest size, so a query is never its own neighbor.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import psycopg

from . import catalog, db, indexes, queries
from .encoder import Encoder
from .errors import EmptyStageError, UsageError
from .stages import Stage

SCRATCH = "experiment_rows"


@dataclass
class ExperimentResult:
    experiment_id: int
    rows: list[dict] = field(default_factory=list)


def _query_vectors(conn, stage: Stage, space: int, n: int) -> list[np.ndarray]:
    rows = conn.cursor(binary=True).execute(queries.latest_embeddings(stage), (space, n)).fetchall()
    return [db.as_array(r[0]) for r in rows]


def _run(conn, sql, vectors: list[np.ndarray], k: int) -> tuple[list[list[int]], list[float]]:
    ids, times = [], []
    for q in vectors:
        start = time.perf_counter()
        rows = conn.execute(sql, (q, k)).fetchall()
        times.append((time.perf_counter() - start) * 1000)
        ids.append([r[0] for r in rows])
    return ids, times


def search_experiment(
    conn: psycopg.Connection,
    stage: Stage,
    encoder: Encoder | None,
    sizes: list[int],
    *,
    n_queries: int = 100,
    probes: list[int] | None = None,
    ef_search: list[int] | None = None,
    metric: str = "l2",
) -> ExperimentResult:
    probes = probes or [1, 5, 10]
    ef_search = ef_search or [40, 100]
    space = catalog.find_space(conn, stage, encoder)
    total = db.scalar(conn, queries.SPACE_ROWS, (stage.name, space)) if space else 0
    if total == 0:
        raise EmptyStageError(f"stage {stage.name} has no rows for these weights; run 'clipvdb ingest' first")
    if max(sizes) + n_queries > total:
        raise UsageError(
            f"stage {stage.name} stores {total} vectors: the largest size ({max(sizes)}) plus {n_queries} "
            f"queries must fit; use smaller --sizes or fewer --queries"
        )
    model, weights = catalog.space_identity(stage, encoder)
    exp_id = db.scalar(
        conn,
        queries.INSERT_EXPERIMENT,
        (stage.name, model, weights, metric),
    )
    conn.commit()
    assert space is not None
    Q = _query_vectors(conn, stage, space, n_queries)
    conn.commit()
    result = ExperimentResult(exp_id)
    conn.autocommit = True
    for size in sorted(sizes):
        conn.execute(queries.drop_table(SCRATCH))
        conn.execute(queries.scratch_copy(SCRATCH, stage), (space, size))
        conn.execute(queries.analyze(SCRATCH))
        exact_sql = queries.knn_scratch(SCRATCH, stage, metric, exact=True)
        truth, times = _run(conn, exact_sql, Q, 10)
        # exact search scored against itself: recall 1 is the reference row, not a measurement
        result.rows.append(_record(conn, exp_id, size, "exact", {}, truth, truth, times, None, None))
        ann_sql = queries.knn_scratch(SCRATCH, stage, metric, exact=False)
        opclass = queries.opclass(stage.column_type, metric)
        for kind, settings, setting_name in (
            ("ivfflat", probes, "ivfflat.probes"),
            ("hnsw", ef_search, "hnsw.ef_search"),
        ):
            lists = indexes.ideal_lists(size)
            index_params = {"lists": lists} if kind == "ivfflat" else {"m": 16, "ef_construction": 64}
            conn.execute(queries.set_session("maintenance_work_mem", "1GB"))
            start = time.perf_counter()
            conn.execute(queries.create_index("experiment_ann", SCRATCH, "embedding", kind, opclass, index_params))
            build_s = time.perf_counter() - start
            size_bytes = db.scalar(conn, queries.RELATION_SIZE, ("experiment_ann",))
            for value in settings:
                conn.execute(queries.set_session(setting_name, str(value)))
                ids, times = _run(conn, ann_sql, Q, 10)
                params = (
                    {"lists": lists, "probes": value}
                    if kind == "ivfflat"
                    else {"m": 16, "ef_construction": 64, "ef_search": value}
                )
                result.rows.append(_record(conn, exp_id, size, kind, params, ids, truth, times, build_s, size_bytes))
            conn.execute(queries.drop_index("experiment_ann"))
        conn.execute(queries.drop_table(SCRATCH))
    conn.autocommit = False
    return result


def _record(conn: psycopg.Connection, exp_id, size, method, params, ids, truth, times, build_s, size_bytes) -> dict:
    r1 = float(np.mean([bool(i) and bool(t) and i[0] == t[0] for i, t in zip(ids, truth, strict=True)]))
    r10 = float(np.mean([len(set(i) & set(t)) / max(len(t), 1) for i, t in zip(ids, truth, strict=True)]))
    p95 = float(np.percentile(times, 95)) if times else 0.0
    row = {
        "size": size,
        "method": method,
        "params": params,
        "queries": len(times),
        "recall_at_1": r1,
        "recall_at_10": r10,
        "mean_ms": statistics.fmean(times),
        "p95_ms": p95,
        "build_s": build_s,
        "index_bytes": size_bytes,
    }
    conn.execute(
        queries.INSERT_EXPERIMENT_RESULT,
        (exp_id, size, method, json.dumps(params), len(times), r1, r10, row["mean_ms"], p95, build_s, size_bytes),
    )
    return row
