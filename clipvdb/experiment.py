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
from .errors import EmptyStageError, UsageError
from .options import ExperimentOptions
from .session import Session
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


def search_experiment(session: Session, stage: Stage, options: ExperimentOptions) -> ExperimentResult:
    """Run the experiment on one stage's stored vectors of the session's encoder; store its rows."""
    options.check()
    encoder = session.encoder_for([stage])
    with session.connection() as conn:
        space = catalog.find_space(conn, stage, encoder)
        total = db.scalar(conn, queries.SPACE_ROWS, (stage.name, space)) if space else 0
        if not space or not total:
            raise EmptyStageError(f"stage {stage.name} has no rows for these weights; run 'clipvdb ingest' first")
        if max(options.sizes) + options.queries > total:
            raise UsageError(
                f"stage {stage.name} stores {total} vectors: the largest size ({max(options.sizes)}) plus "
                f"{options.queries} queries must fit; use smaller --sizes or fewer --queries"
            )
        model, weights = catalog.space_identity(stage, encoder)
        exp_id = db.scalar(conn, queries.INSERT_EXPERIMENT, (stage.name, model, weights, options.metric))
        conn.commit()
        Q = _query_vectors(conn, stage, space, options.queries)
        conn.commit()
        result = ExperimentResult(exp_id)
        conn.autocommit = True
        try:
            for size in sorted(options.sizes):
                conn.execute(queries.drop_table(SCRATCH))
                conn.execute(queries.scratch_copy(SCRATCH, stage), (space, size))
                conn.execute(queries.analyze(SCRATCH))
                result.rows += _one_size(conn, stage, options, {"exp_id": exp_id, "size": size}, Q)
                conn.execute(queries.drop_table(SCRATCH))
        finally:
            conn.autocommit = False
    return result


def _one_size(conn, stage: Stage, options: ExperimentOptions, where: dict, Q: list[np.ndarray]) -> list[dict]:
    """The exact search, then each index kind at each of its settings, over the scratch copy."""
    metric, size = options.metric, where["size"]
    truth, times = _run(conn, queries.knn_scratch(SCRATCH, stage, metric, exact=True), Q, 10)
    # exact search scored against itself: recall 1 is the reference row, not a measurement
    rows = [_record(conn, {**where, "method": "exact", "params": {}}, truth, truth, times)]
    ann_sql = queries.knn_scratch(SCRATCH, stage, metric, exact=False)
    opclass = queries.opclass(stage.column_type, metric)
    for kind, values, setting_name, value_name in (
        ("ivfflat", options.probes, "ivfflat.probes", "probes"),
        ("hnsw", options.ef_search, "hnsw.ef_search", "ef_search"),
    ):
        built = {"lists": indexes.ideal_lists(size)} if kind == "ivfflat" else {"m": 16, "ef_construction": 64}
        conn.execute(queries.set_session("maintenance_work_mem", "1GB"))
        start = time.perf_counter()
        conn.execute(queries.create_index("experiment_ann", SCRATCH, "embedding", kind, opclass, built))
        index = {
            **where,
            "method": kind,
            "build_s": time.perf_counter() - start,
            "index_bytes": db.scalar(conn, queries.RELATION_SIZE, ("experiment_ann",)),
        }
        for value in values:
            conn.execute(queries.set_session(setting_name, str(value)))
            ids, times = _run(conn, ann_sql, Q, 10)
            rows.append(_record(conn, {**index, "params": {**built, value_name: value}}, ids, truth, times))
        conn.execute(queries.drop_index("experiment_ann"))
    return rows


def _record(conn: psycopg.Connection, where: dict, ids, truth, times: list[float]) -> dict:
    """Score one setting's answers against the exact ones and store the row. `where`: exp_id, size,
    method, params, and for an index build_s and index_bytes."""
    r1 = float(np.mean([bool(i) and bool(t) and i[0] == t[0] for i, t in zip(ids, truth, strict=True)]))
    r10 = float(np.mean([len(set(i) & set(t)) / max(len(t), 1) for i, t in zip(ids, truth, strict=True)]))
    row = {
        "size": where["size"],
        "method": where["method"],
        "params": where["params"],
        "queries": len(times),
        "recall_at_1": r1,
        "recall_at_10": r10,
        "mean_ms": statistics.fmean(times),
        "p95_ms": float(np.percentile(times, 95)) if times else 0.0,
        "build_s": where.get("build_s"),
        "index_bytes": where.get("index_bytes"),
    }
    conn.execute(
        queries.INSERT_EXPERIMENT_RESULT,
        (where["exp_id"], *(json.dumps(v) if k == "params" else v for k, v in row.items())),
    )
    return row
