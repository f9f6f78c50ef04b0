"""Approximate-nearest-neighbour indexes per stage: ivfflat (default), hnsw, or none.

The index is on the embedding column itself, with the opclass of its type (vector, or halfvec for
the stages wider than 2,000 dimensions; see Stage.column_type), or, with `project`, on a PCA
projection of it in projections_<stage> (projection.py), queried with an exact re-rank.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass

import psycopg

from . import projection
from .errors import UsageError
from .stages import Stage

KINDS = ("ivfflat", "hnsw", "none")
METRIC_OPS = {"l2": "l2_ops", "cosine": "cosine_ops", "ip": "ip_ops"}
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 64
# What ingest builds on a stage nobody chose an index for. Stage first: hnsw over a 128-d PCA
# projection, re-ranked exactly, met the stage-first goal (BENCHMARKS.md, item 1); no such
# measurement exists for the CLIP stages, which keep ivfflat on the full vectors.
DEFAULTS: dict[str, tuple[str, dict]] = {"first": ("hnsw", {"project": 128})}


def default_index(stage: Stage) -> tuple[str, dict]:
    kind, params = DEFAULTS.get(stage.name, ("ivfflat", {}))
    return kind, dict(params)


def index_name(stage: Stage, projected: bool = False) -> str:
    return f"{projection.table(stage)}_ann" if projected else f"{stage.table}_ann"


def drop(conn: psycopg.Connection, stage: Stage) -> None:
    """Drop the stage's ANN index, full-width or projected (a large load goes faster without)."""
    conn.execute(f"DROP INDEX IF EXISTS {index_name(stage)}")
    conn.execute(f"DROP INDEX IF EXISTS {index_name(stage, projected=True)}")


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
    return f"{stage.column_type}_{METRIC_OPS[metric]}"


def build(
    conn: psycopg.Connection,
    stage: Stage,
    kind: str = "ivfflat",
    *,
    lists: int | None = None,
    m: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    metric: str = "l2",
    project: int | None = None,
) -> IndexInfo:
    """(Re)build the stage's index and record the choice; with `project`, refit the projection
    and index that instead of the full vectors. Commits."""
    if kind not in KINDS:
        raise UsageError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    if metric not in METRIC_OPS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRIC_OPS)}")
    if project and (kind == "none" or metric != "l2"):
        raise UsageError("--project needs --kind ivfflat or hnsw and --metric l2 (PCA keeps l2 distances)")
    lock_stage_index(conn, stage)
    rows = conn.execute(f"SELECT count(*) FROM {stage.table}").fetchone()[0]
    params: dict = {"metric": metric}
    start = time.perf_counter()
    drop(conn, stage)
    if project:
        proj = projection.fit(conn, stage, project)
        projection.save(conn, stage, proj)
        params.update(project=proj.dim, variance_kept=round(proj.variance_kept, 4))
        target, opclass = f"{projection.table(stage)} USING {kind} (proj", "vector_l2_ops"
    else:
        projection.remove(conn, stage)
        target, opclass = f"{stage.table} USING {kind} (embedding", _opclass(stage, metric)
    name = index_name(stage, projected=bool(project))
    if kind == "ivfflat":
        params["lists"] = lists or ideal_lists(rows)
        if params["lists"] < 1:
            raise UsageError("--lists must be at least 1")
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute(f"CREATE INDEX {name} ON {target} {opclass}) WITH (lists = {int(params['lists'])})")
    elif kind == "hnsw":
        params.update(m=int(m), ef_construction=int(ef_construction))
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute(
            f"CREATE INDEX {name} ON {target} {opclass}) "
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
        conn.execute(f"ANALYZE {projection.table(stage) if project else stage.table}")
        conn.commit()
    return info(conn, stage)


def info(conn: psycopg.Connection, stage: Stage) -> IndexInfo:
    row = conn.execute(
        "SELECT kind, params, build_seconds FROM stage_indexes WHERE stage = %s", (stage.name,)
    ).fetchone()
    kind, params, seconds = row if row else (*default_index(stage), None)
    params = params or {}
    rows = conn.execute(f"SELECT count(*) FROM {stage.table}").fetchone()[0]
    name = index_name(stage, projected=bool(params.get("project")))
    size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (name,)).fetchone()[0]
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
    return IndexInfo(stage.name, kind, params, rows, bool(exists), size or 0, seconds)


def refresh(conn: psycopg.Connection, stage: Stage) -> IndexInfo:
    """After a load: rebuild with the recorded kind and parameters (lists re-derived from rows, the
    projection refitted)."""
    current = info(conn, stage)
    params = dict(current.params)
    return build(
        conn,
        stage,
        current.kind,
        m=params.get("m", DEFAULT_M),
        ef_construction=params.get("ef_construction", DEFAULT_EF_CONSTRUCTION),
        metric=params.get("metric", "l2"),
        project=params.get("project"),
    )
