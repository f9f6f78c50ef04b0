"""Search-time experiments inside PostgreSQL: for each stored-set size and index setting, recall@1
and recall@10 against exact search, mean and p95 query ms, index build seconds and size.

Each size is a scratch copy of the stage's first N stored vectors (by image id); the queries are
stored vectors beyond the largest size, so a query is never its own neighbour.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from . import catalog, db, indexes
from . import queries as sql_queries
from .encoders import Encoder
from .errors import EmptyStageError, UsageError
from .stages import Stage

SCRATCH = "experiment_rows"


@dataclass
class ExperimentResult:
    experiment_id: int
    rows: list[dict] = field(default_factory=list)


def _queries(conn, stage: Stage, space: int, n: int) -> list[np.ndarray]:
    rows = conn.cursor(binary=True).execute(sql_queries.latest_embeddings(stage), (space, n)).fetchall()
    return [db.as_array(r[0]) for r in rows]


def _run(conn, sql, queries: list[np.ndarray], k: int) -> tuple[list[list[int]], list[float]]:
    ids, times = [], []
    for q in queries:
        start = time.perf_counter()
        rows = conn.execute(sql, (q, k)).fetchall()
        times.append((time.perf_counter() - start) * 1000)
        ids.append([r[0] for r in rows])
    return ids, times


def search_experiment(
    conn: psycopg.Connection,
    stage: Stage,
    lm: Encoder | None,
    sizes: list[int],
    *,
    queries: int = 100,
    probes: list[int] | None = None,
    ef_search: list[int] | None = None,
    metric: str = "l2",
) -> ExperimentResult:
    probes = probes or [1, 5, 10]
    ef_search = ef_search or [40, 100]
    space = catalog.find_space(conn, stage, lm)
    total = (
        db.scalar(conn, "SELECT coalesce(sum(n_rows), 0) FROM stage_counts WHERE stage = %s AND space_id = %s",
                     (stage.name, space))
        if space
        else 0
    )  # fmt: skip
    if total == 0:
        raise EmptyStageError(f"stage {stage.name} has no rows for these weights; run 'clipvdb ingest' first")
    if max(sizes) + queries > total:
        raise UsageError(
            f"stage {stage.name} stores {total} vectors: the largest size ({max(sizes)}) plus {queries} "
            f"queries must fit; use smaller --sizes or fewer --queries"
        )
    model, weights = catalog.space_identity(stage, lm)
    exp_id = db.scalar(
        conn,
        "INSERT INTO experiments (stage, model, weights, metric) VALUES (%s, %s, %s, %s) RETURNING id",
        (stage.name, model, weights, metric),
    )
    conn.commit()
    assert space is not None
    Q = _queries(conn, stage, space, queries)
    conn.commit()
    result = ExperimentResult(exp_id)
    conn.autocommit = True
    for size in sorted(sizes):
        conn.execute(sql_queries.drop_table(SCRATCH))
        conn.execute(sql_queries.scratch_copy(SCRATCH, stage), (space, size))
        conn.execute(sql_queries.analyze(SCRATCH))
        exact_sql = sql_queries.knn_scratch(SCRATCH, stage, metric, exact=True)
        truth, times = _run(conn, exact_sql, Q, 10)
        # exact search scored against itself: recall 1 is the reference row, not a measurement
        result.rows.append(_record(conn, exp_id, size, "exact", {}, truth, truth, times, None, None))
        ann_sql = sql_queries.knn_scratch(SCRATCH, stage, metric, exact=False)
        opclass = sql_queries.opclass(stage.column_type, metric)
        for kind, settings, setting_name in (
            ("ivfflat", probes, "ivfflat.probes"),
            ("hnsw", ef_search, "hnsw.ef_search"),
        ):
            lists = indexes.ideal_lists(size)
            index_params = {"lists": lists} if kind == "ivfflat" else {"m": 16, "ef_construction": 64}
            conn.execute("SET maintenance_work_mem = '1GB'")
            start = time.perf_counter()
            conn.execute(sql_queries.create_index("experiment_ann", SCRATCH, "embedding", kind, opclass, index_params))
            build_s = time.perf_counter() - start
            size_bytes = db.scalar(conn, "SELECT pg_relation_size('experiment_ann')")
            for value in settings:
                conn.execute("SELECT set_config(%s, %s, false)", (setting_name, str(value)))
                ids, times = _run(conn, ann_sql, Q, 10)
                params = (
                    {"lists": lists, "probes": value}
                    if kind == "ivfflat"
                    else {"m": 16, "ef_construction": 64, "ef_search": value}
                )
                result.rows.append(_record(conn, exp_id, size, kind, params, ids, truth, times, build_s, size_bytes))
            conn.execute("DROP INDEX experiment_ann")
        conn.execute(sql_queries.drop_table(SCRATCH))
    conn.autocommit = False
    return result


def _record(conn: psycopg.Connection, exp_id, size, method, params, ids, truth, times, build_s, size_bytes) -> dict:
    r1 = float(np.mean([bool(i) and bool(t) and i[0] == t[0] for i, t in zip(ids, truth, strict=True)]))
    r10 = float(np.mean([len(set(i) & set(t)) / max(len(t), 1) for i, t in zip(ids, truth, strict=True)]))
    p95 = float(np.percentile(times, 95)) if times else 0.0
    row = {"size": size, "method": method, "params": params, "queries": len(times), "recall_at_1": r1,
           "recall_at_10": r10, "mean_ms": statistics.fmean(times), "p95_ms": p95, "build_s": build_s,
           "index_bytes": size_bytes}  # fmt: skip
    conn.execute(
        """INSERT INTO experiment_results (experiment_id, size, method, params, queries, recall_at_1, recall_at_10,
           mean_ms, p95_ms, build_s, index_bytes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (exp_id, size, method, json.dumps(params), len(times), r1, r10, row["mean_ms"], p95, build_s, size_bytes),
    )
    return row


def plot_experiment(result: ExperimentResult, out: Path) -> Path:
    """Recall@1 against queries per second, one line per (size, index kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    groups: dict[tuple, list[dict]] = {}
    for r in result.rows:
        groups.setdefault((r["size"], r["method"]), []).append(r)
    for (size, method), rows in sorted(groups.items()):
        qps = [1000 / r["mean_ms"] for r in rows]
        rec = [r["recall_at_1"] for r in rows]
        ax.plot(qps, rec, marker="o" if method != "exact" else "s", label=f"{method}, {size:,} rows")
    ax.set_xscale("log")
    ax.set_xlabel("queries per second (one client)")
    ax.set_ylabel("recall@1 against exact search")
    ax.set_title(f"experiment {result.experiment_id}: recall versus speed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
