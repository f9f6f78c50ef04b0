"""Approximate-nearest-neighbour indexes per stage: ivfflat (default), hnsw, or none.

Stages above 2,000 dimensions are indexed through a halfvec expression, and queried through the
same expression (Stage.index_expr) so the planner can use the index.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass

import psycopg

from .errors import UsageError
from .stages import Stage

KINDS = ("ivfflat", "hnsw", "none")
METRIC_OPS = {"l2": "l2_ops", "cosine": "cosine_ops", "ip": "ip_ops"}
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 64


def index_name(stage: Stage) -> str:
    return f"{stage.table}_ann"


def ideal_lists(rows: int) -> int:
    """pgvector's guidance: rows / 1000 up to 1M rows, sqrt(rows) above."""
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return int(math.sqrt(rows))


def default_probes(lists: int) -> int:
    """A fifth of the lists: recall@1 0.996 at stage first, 50,000 rows, 50 lists (BENCHMARKS.md;
    a tenth gave 0.928)."""
    return max(1, min(lists, math.ceil(lists / 5)))


@dataclass
class IndexInfo:
    stage: str
    kind: str
    params: dict
    rows: int
    exists: bool
    size_bytes: int
    build_seconds: float | None


def lock_stage_index(conn: psycopg.Connection, stage: Stage) -> None:
    """Serialise index maintenance on a stage across sessions. Starts a fresh transaction first:
    two sessions that each read the table and then drop its index would otherwise deadlock."""
    conn.commit()
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(f"clipvdb:index:{stage.name}".encode()),))


def _opclass(stage: Stage, metric: str) -> str:
    base = "halfvec" if stage.halfvec_indexed else "vector"
    return f"{base}_{METRIC_OPS[metric]}"


def build(
    conn: psycopg.Connection,
    stage: Stage,
    kind: str = "ivfflat",
    *,
    lists: int | None = None,
    m: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    metric: str = "l2",
) -> IndexInfo:
    """(Re)build the stage's index and record the choice. Commits."""
    if kind not in KINDS:
        raise UsageError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    if metric not in METRIC_OPS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRIC_OPS)}")
    lock_stage_index(conn, stage)
    rows = conn.execute(f"SELECT count(*) FROM {stage.table}").fetchone()[0]
    params: dict = {"metric": metric}
    start = time.perf_counter()
    conn.execute(f"DROP INDEX IF EXISTS {index_name(stage)}")
    if kind == "ivfflat":
        params["lists"] = lists or ideal_lists(rows)
        if params["lists"] < 1:
            raise UsageError("--lists must be at least 1")
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute(
            f"CREATE INDEX {index_name(stage)} ON {stage.table} USING ivfflat "
            f"({stage.index_expr()} {_opclass(stage, metric)}) WITH (lists = {int(params['lists'])})"
        )
    elif kind == "hnsw":
        params.update(m=int(m), ef_construction=int(ef_construction))
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute(
            f"CREATE INDEX {index_name(stage)} ON {stage.table} USING hnsw "
            f"({stage.index_expr()} {_opclass(stage, metric)}) "
            f"WITH (m = {params['m']}, ef_construction = {params['ef_construction']})"
        )
    seconds = time.perf_counter() - start
    conn.execute(
        """INSERT INTO stage_indexes (stage, kind, params, built_rows, build_seconds, updated_at)
           VALUES (%s, %s, %s, %s, %s, now())
           ON CONFLICT (stage) DO UPDATE SET kind = EXCLUDED.kind, params = EXCLUDED.params,
             built_rows = EXCLUDED.built_rows, build_seconds = EXCLUDED.build_seconds, updated_at = now()""",
        (stage.name, kind, json.dumps(params), rows, seconds),
    )
    conn.commit()
    if kind != "none":
        conn.execute(f"ANALYZE {stage.table}")
        conn.commit()
    return info(conn, stage)


def info(conn: psycopg.Connection, stage: Stage) -> IndexInfo:
    row = conn.execute(
        "SELECT kind, params, build_seconds FROM stage_indexes WHERE stage = %s", (stage.name,)
    ).fetchone()
    kind, params, seconds = row if row else ("ivfflat", {}, None)
    rows = conn.execute(f"SELECT count(*) FROM {stage.table}").fetchone()[0]
    size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (index_name(stage),)).fetchone()[0]
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (index_name(stage),)).fetchone()[0]
    return IndexInfo(stage.name, kind, params or {}, rows, bool(exists), size or 0, seconds)


def refresh(conn: psycopg.Connection, stage: Stage) -> IndexInfo:
    """After a load: rebuild with the recorded kind and parameters (lists re-derived from rows)."""
    current = info(conn, stage)
    params = dict(current.params)
    return build(
        conn,
        stage,
        current.kind,
        m=params.get("m", DEFAULT_M),
        ef_construction=params.get("ef_construction", DEFAULT_EF_CONSTRUCTION),
        metric=params.get("metric", "l2"),
    )
