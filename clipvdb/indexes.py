"""Approximate-nearest-neighbor indexes per embedding space and dataset: ivfflat, hnsw, or none.

Each space (a model's vectors at one stage, catalog.Space) has an index per dataset over that
dataset's rows of the stage table: a partial index on the embedding column cast to the space's width
(halfvec), or, with `project`, on a PCA projection of it in projections_<stage> (projection.py),
queried with an exact re-rank. A search in one dataset so reads an index of that dataset's rows
alone, sized for them, as if the database held nothing else. The DDL is composed by
queries.create_index, which experiments use too.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from . import config, db, embedded, projection, queries
from .catalog import Space
from .errors import UsageError
from .stages import Stage

KINDS = queries.INDEX_KINDS


# Above this many rows per index, stage first's default index is hnsw over the projection: a query
# walks a graph (cost ~ log rows) where ivfflat sorts every row of its probed lists (cost ~ the
# rows scanned). At 1,000,000 rows hnsw found the exact nearest for 0.97 of the queries in 2.2 ms,
# where ivfflat needed 3.7 ms for 0.97 (BENCHMARKS.md, "How cost grows"); at 50,000 ivfflat builds
# and answers faster.
HNSW_FROM_ROWS = 100_000
# The projected hnsw's build: ef_construction 40 builds 1,000,000 rows in 171 s (64: 220 s) at the
# same recall. Its ef_search is chosen at build (projected_ef_search).
PROJECTED_HNSW = {"m": config.DEFAULT_M, "ef_construction": config.PROJECTED_EF_CONSTRUCTION}


def projected_ef_search(rows: int, distinct: int) -> int:
    """The projected hnsw's ef_search for `rows` stored rows holding `distinct` distinct vectors.
    Identical rows are nodes of their own in the graph, and each takes a slot of the search's beam,
    so the beam is widened by rows per distinct vector: PROJECTED_EF_SEARCH on a set of distinct
    vectors, up to PROJECTED_EF_SEARCH_MAX. At 1,000,000 distinct rows ef_search 60 found the exact
    nearest for 0.971 of the queries; where each image was stored 8 times byte for byte beside 12 near
    copies (1.43 rows per vector), 60 found 0.961 and 80 0.973 for 1.17x the statement time (100:
    0.977 for 1.30x); at 200,000 rows holding each image's flip 3 times, 80 and 100 both found 0.989,
    100 for 1.22x the distinct set's time at 60 and 80 for 0.98x."""
    base = config.PROJECTED_EF_SEARCH
    widened = math.ceil(base * rows / distinct) if distinct else base
    return max(base, min(config.PROJECTED_EF_SEARCH_MAX, widened))


def default_index(stage: Stage, rows: int = 0, shards: int = 1) -> tuple[str, dict]:
    """What ingest builds on a stage nobody chose an index for, for `rows` stored over `shards`.
    Stage first: ivfflat over a 64-d PCA projection, re-ranked exactly (BENCHMARKS.md, the
    recall@1 grid: the exact nearest neighbor for 0.98 of the CIFAR-10 test images, where hnsw
    took longer to build and to query at equal recall); above HNSW_FROM_ROWS rows per index, hnsw
    over the same projection. The CLIP stages: ivfflat on the full vectors."""
    if stage.name == "first":
        if rows // max(shards, 1) > HNSW_FROM_ROWS:
            return "hnsw", {"project": config.DEFAULT_PROJECT_FIRST, **PROJECTED_HNSW}
        return "ivfflat", {"project": config.DEFAULT_PROJECT_FIRST}
    return "ivfflat", {}


def stored_default(conn: psycopg.Connection, space: Space, dataset: int) -> tuple[str, dict]:
    """default_index for what the space stores in the dataset now."""
    return default_index(space.stage, stored_rows(conn, space, dataset), db.shard_count(conn, space.stage.table))


def drop(conn: psycopg.Connection, space: Space, dataset: int) -> None:
    """Drop the ANN index of the space's rows of the dataset, full-width or projected (a large load
    goes faster without)."""
    conn.execute(queries.drop_index(queries.index_name(space.stage, space.id, dataset)))
    conn.execute(queries.drop_index(queries.index_name(space.stage, space.id, dataset, projected=True)))


def drop_of_dataset(conn: psycopg.Connection, dataset: int) -> None:
    """Drop every ANN index over the dataset's rows, and their records (a dataset dropped)."""
    for (name,) in conn.execute(queries.INDEXES_OF_DATASET, (str(int(dataset)),)).fetchall():
        conn.execute(queries.drop_index(name))
    conn.execute(queries.DELETE_SPACE_INDEXES_OF_DATASET, (dataset,))


# Above this many rows per index, a projected index's lists grow as sqrt(rows) and its probes stay
# fixed, so that a query scans a number of rows that grows as sqrt(rows) instead of a fixed fraction
# of them (BENCHMARKS.md, "How cost grows": recall@1 and query time at 50,000, 200,000 and 1,000,000).
SQRT_FROM_ROWS = 100_000
SQRT_PROBES = 50  # lists/20 at SQRT_FROM_ROWS: the two rules meet there


def ideal_lists(rows: int, *, projected: bool = False) -> int:
    """pgvector's guidance for full vectors: rows / 1000 up to 1M rows, sqrt(rows) above. A
    projected index holds short half-precision vectors, cheap to scan, so its lists are ten times
    finer: rows / 100 up to SQRT_FROM_ROWS, then sqrt(rows) x sqrt(SQRT_FROM_ROWS) / 100 (the two
    meet there)."""
    if projected:
        if rows <= SQRT_FROM_ROWS:
            return max(1, rows // 100)
        return max(1, int(math.sqrt(rows) * math.sqrt(SQRT_FROM_ROWS) / 100))
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return int(math.sqrt(rows))


# Fewer scanned rows than this missed neighbors on small tables (a fraction of a few lists).
MIN_SCANNED_ROWS = 1000
# Fewer probes than this missed the nearest neighbor's list on small indexes: a Citus shard of
# 2,500 rows (25 lists) found the exact nearest for 0.92 of the queries with 3 probes and 0.98 with
# 5 (BENCHMARKS.md, the cluster item's recall@1).
MIN_PROBES = 5


def default_probes(lists: int, *, projected: bool = False, rows: int | None = None, shards: int = 1) -> int:
    """Full vectors: a fifth of the lists. Projected: a twentieth, since the exact re-rank of the
    candidates recovers the order and what is left to find is the nearest neighbor's list
    (BENCHMARKS.md, the recall@1 grid); above SQRT_FROM_ROWS rows per index (per shard on Citus),
    SQRT_PROBES whatever the lists. With `rows` (of the whole search), at least MIN_SCANNED_ROWS rows
    are scanned; and never fewer than MIN_PROBES lists per index, or all of them."""
    if projected and rows is not None and rows // max(shards, 1) > SQRT_FROM_ROWS:
        fraction = SQRT_PROBES
    else:
        fraction = math.ceil(lists / (20 if projected else 5))
    floor = math.ceil(lists * MIN_SCANNED_ROWS / rows) if rows else 1
    return max(1, min(lists, max(fraction, floor, MIN_PROBES)))


def explain(kind: str, params: dict, rows: int) -> str:
    """What the index of a stage is and why, in one line (db status)."""
    if kind == "none":
        return "no ANN index: every search scans all rows (exact)"
    what = f"{kind} over a {params['project']}-d PCA projection" if params.get("project") else f"{kind}"
    if kind == "hnsw":
        ef_search = params.get("ef_search", config.DEFAULT_EF_SEARCH)
        line = f"{what}, m={params.get('m')}, ef_construction={params.get('ef_construction')}, ef_search={ef_search}"
        if params.get("default") and params.get("project"):
            line += f" (above {HNSW_FROM_ROWS:,} rows per index: a query's cost grows about as log(rows))"
        distinct = params.get("distinct_rows")
        if distinct and distinct < rows:
            line += f"; {rows / distinct:.2f} rows per distinct vector widen ef_search (identical rows crowd the beam)"
        return line
    projected = bool(params.get("project"))
    lists = int(params.get("lists", 1))
    shards = max(int(params.get("shards", 1)), 1)
    probes = default_probes(lists, projected=projected, rows=rows, shards=shards)
    if projected and rows // shards > SQRT_FROM_ROWS:
        rule = f"lists ~ sqrt(rows) and {SQRT_PROBES} probes above {SQRT_FROM_ROWS:,} rows: a query scans ~sqrt(rows)"
    elif projected:
        rule = "lists = rows/100, probes = lists/20: a query scans ~5 % of the rows"
    else:
        rule = "lists = rows/1000, probes = lists/5"
    return f"{what}, {lists} lists, {probes} probes by default ({rule})"


def build_memory_mb(kind: str, lists: int = 1, *, rows: int = 0, dim: int = 0, m: int = config.DEFAULT_M) -> int:
    """maintenance_work_mem for an index build: 1 GB, or what the build needs when that is more.
    ivfflat's k-means samples 50 rows per list and keeps a float bound per sample and list: 200 x
    lists^2 bytes (3,162 lists, the default at 1,000,000 rows, need about 2 GB). hnsw builds fast
    while its graph fits: about 2 x dim + 16 x m + 44 bytes per row (half-precision vectors and
    neighbor lists; 1,000,000 rows of a 64-d projection made a 434 MB index), at most a quarter of
    the machine's memory: past it the build goes on, slower, where ivfflat would refuse."""
    if kind == "ivfflat":
        return max(1024, math.ceil(200 * int(lists) ** 2 * 1.2 / 2**20) + 128)
    need = int(rows) * (2 * int(dim) + 16 * int(m) + 44) if kind == "hnsw" else 0
    want = max(1024, math.ceil(need * 1.2 / 2**20) + 128)
    physical = embedded.physical_memory_mb()
    return want if physical is None else max(1024, min(want, physical // 4))


def build_workers() -> int:
    """Parallel maintenance workers for an index build (pgvector 0.8 builds HNSW and ivfflat in
    parallel): one per core beyond the leader."""
    return max(0, min(7, (os.cpu_count() or 1) - 1))


@dataclass
class IndexInfo:
    stage: str
    kind: str
    params: dict
    rows: int
    exists: bool
    size_bytes: int
    build_seconds: float | None
    space: int = 0
    model: str = ""
    built_rows: int | None = None  # the rows it was built on (its lists or projection fitted to)
    dataset: int = 0

    def due(self, rows: int | None = None) -> str | None:
        """Why the index is due for a rebuild when `rows` (default: the rows stored now) are stored,
        else None: they differ from the rows it was built on by REBUILD_DRIFT or more."""
        rows = self.rows if rows is None else rows
        built = self.built_rows
        if not built or self.kind == "none" or abs(rows - built) < built * config.REBUILD_DRIFT:
            return None
        return (
            f"built on {built:,} rows, {rows:,} stored ({rows / built:.2f}x): the next ingest rebuilds it, "
            f"or 'clipvdb index --stage {self.stage}' now"
        )


def lock_key(stage: str, model: str, weights: str) -> int:
    """The advisory lock of one space's index maintenance, by what names the space (its id may not
    exist yet when two ingests start)."""
    return zlib.crc32(f"clipvdb:index:{stage}:{model}:{weights}".encode())


def lock_space_index(conn: psycopg.Connection, space: Space) -> None:
    """Serialise index maintenance on a space across sessions (every dataset's: a projection is
    rewritten table by table). Starts a fresh transaction first: two sessions that each read the
    table and then drop its index would otherwise deadlock."""
    conn.commit()
    conn.execute(queries.ADVISORY_XACT_LOCK, (lock_key(space.stage.name, space.model, space.weights),))


@contextmanager
def space_index_held(conn: psycopg.Connection, space: Space) -> Iterator[None]:
    """Hold the space's index lock (lock_space_index's) for the session, across the transactions of
    one build, until the block ends. On the way out anything uncommitted is rolled back first, so a
    build cut short never commits half a rewrite."""
    key = lock_key(space.stage.name, space.model, space.weights)
    conn.commit()
    conn.execute(queries.ADVISORY_LOCK, (key,))
    conn.commit()
    try:
        yield
    finally:
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.execute(queries.ADVISORY_UNLOCK, (key,))
            conn.commit()
        except psycopg.Error:
            conn.close()  # its session, and with it the lock, ends here (or had already)


def stored_rows(conn: psycopg.Connection, space: Space, dataset: int) -> int:
    """The space's rows of the dataset, every split: what its index covers."""
    row = conn.execute(queries.rows_of_space_in(space.stage), (space.id, dataset)).fetchone()
    return int(row[0]) if row else 0


# what an index is built with; the recorded params add each phase's seconds and what was fitted
SPEC_KEYS = ("lists", "m", "ef_construction", "metric", "project", "ef_search")


def build(
    conn: psycopg.Connection,
    space: Space,
    dataset: int,
    kind: str = "ivfflat",
    spec: dict | None = None,
    *,
    by_default: bool = False,
) -> IndexInfo:
    """(Re)build the index of the space's rows of the dataset and record the choice. `spec`
    (SPEC_KEYS, each optional): lists, m, ef_construction, metric, ef_search (an hnsw's default),
    project (refit the projection and index that instead of the full vectors). The recorded params
    add each phase's seconds, and `default` when the size rule chose (a later rebuild chooses again
    for the rows it finds).

    Two transactions under the space's index lock: the old index dropped, the projection rewritten
    and the choice recorded; then the index built. An index built in the transaction that deleted
    the old projection rows would take them too (nearly twice the size, its lists trained partly on
    projections in a basis no longer stored); built after it, it leaves them out unless a
    transaction older than the rewrite is still open (PostgreSQL indexes the deleted rows an open
    snapshot may still read). Cut short in the second, the space is left without an index (searches
    scan, with the same answers) and the next ingest or `clipvdb index` builds it."""
    spec = spec or {}
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise UsageError(f"unknown index parameter {unknown[0]!r}; choose from {', '.join(SPEC_KEYS)}")
    lists, project, ef_search = spec.get("lists"), spec.get("project"), spec.get("ef_search")
    m = int(spec.get("m") or config.DEFAULT_M)
    ef_construction = int(spec.get("ef_construction") or config.DEFAULT_EF_CONSTRUCTION)
    metric = spec.get("metric") or "l2"
    if kind not in KINDS:
        raise UsageError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    if metric not in queries.METRIC_OPS:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(queries.METRIC_OPS)}")
    if project and (kind == "none" or metric != "l2"):
        raise UsageError("--project needs --kind ivfflat or hnsw and --metric l2 (PCA keeps l2 distances)")
    if lists is not None and lists < 1:
        raise UsageError("--lists must be at least 1")
    if kind == "hnsw" and ef_construction < 2 * m:
        raise UsageError(f"--ef-construction must be at least 2 x --m ({2 * m}); got {ef_construction}")
    stage = space.stage
    with space_index_held(conn, space):
        rows = stored_rows(conn, space, dataset)
        params: dict = {"metric": metric}
        if by_default:
            params["default"] = True
        start = time.perf_counter()
        drop(conn, space, dataset)
        if project:
            t0 = time.perf_counter()
            proj = projection.fit(conn, space, dataset, project)
            t1 = time.perf_counter()
            mapped = projection.save(conn, space, dataset, proj)
            t2 = time.perf_counter()
            params.update(
                project=proj.dims,
                variance_kept=round(proj.variance_kept, 4),
                fit_s=round(t1 - t0, 3),
                project_s=round(t2 - t1, 3),
            )
            table, column, opclass = stage.projection_table, "proj", queries.opclass(queries.PROJECTION_TYPE, "l2")
            dim, column_type = proj.dims, queries.PROJECTION_TYPE
        else:
            projection.remove(conn, space, dataset)
            table, column, opclass = stage.table, "embedding", queries.opclass(stage.column_type, metric)
            dim, column_type = stage.dim, stage.column_type
        name = queries.index_name(stage, space.id, dataset, projected=bool(project))
        shards = db.shard_count(conn, table)
        if shards > 1:
            params["shards"] = shards  # on Citus every shard has its own index over its own rows
        if kind == "ivfflat":
            params["lists"] = lists or ideal_lists(rows // shards, projected=bool(project))
        elif kind == "hnsw":
            params.update(m=int(m), ef_construction=int(ef_construction))
            if ef_search:
                params["ef_search"] = int(ef_search)
            elif project:
                ef = projected_ef_search(mapped.rows, mapped.distinct)
                params.update(ef_search=ef, distinct_rows=mapped.distinct)
        # the rewrite commits before the build (see above); the record says what is being built
        conn.execute(
            queries.SAVE_SPACE_INDEX, (space.id, dataset, kind, json.dumps(params), rows, time.perf_counter() - start)
        )
        conn.commit()
        if kind != "none":
            t0 = time.perf_counter()
            session = [
                (
                    "maintenance_work_mem",
                    f"{build_memory_mb(kind, params.get('lists', 1), rows=rows // shards, dim=dim, m=int(m))}MB",
                ),
                ("max_parallel_maintenance_workers", str(build_workers())),
            ]
            db.set_local(conn, session, distributed=shards > 1)
            typed = f"{column_type}({dim})"
            width = dim if project else None
            conn.execute(
                queries.create_index(name, table, column, kind, opclass, params, (space.id, dataset, typed), width)
            )
            params["index_s"] = round(time.perf_counter() - t0, 3)
        seconds = time.perf_counter() - start
        conn.execute(queries.SAVE_SPACE_INDEX, (space.id, dataset, kind, json.dumps(params), rows, seconds))
        conn.commit()
        if kind != "none":
            conn.execute(queries.analyze(table))
            conn.commit()
        return info(conn, space, dataset)


def info(conn: psycopg.Connection, space: Space, dataset: int) -> IndexInfo:
    """The index of the space's rows of the dataset: recorded, or what the size rule would build."""
    stage = space.stage
    row = conn.execute(queries.LOAD_SPACE_INDEX, (space.id, dataset)).fetchone()
    rows = stored_rows(conn, space, dataset)
    built = None
    if row:
        kind, params, seconds, built = row
    else:
        kind, params = default_index(stage, rows, db.shard_count(conn, stage.table))
        params, seconds = {**params, "default": True}, None
    params = params or {}
    name = queries.index_name(stage, space.id, dataset, projected=bool(params.get("project")))
    found = conn.execute(queries.INDEX_SIZE, (name, name)).fetchone()
    exists, size = found if found else (False, 0)
    return IndexInfo(
        stage.name, kind, params, rows, bool(exists), size or 0, seconds, space.id, space.model, built, dataset
    )


def build_default(conn: psycopg.Connection, space: Space, dataset: int) -> IndexInfo:
    """Build what the size rule chooses for the rows stored now, and record it as the default."""
    kind, params = stored_default(conn, space, dataset)
    return build(conn, space, dataset, kind, params, by_default=True)


def refresh(conn: psycopg.Connection, space: Space, dataset: int) -> IndexInfo:
    """After a load: rebuild with the recorded kind and parameters (lists re-derived from rows, the
    projection refitted), or, where the size rule chose, with what it chooses now."""
    current = info(conn, space, dataset)
    params = dict(current.params)
    if params.get("default"):
        return build_default(conn, space, dataset)
    chosen_at_build = ("lists", "ef_search") if "distinct_rows" in params else ("lists",)
    return build(
        conn,
        space,
        dataset,
        current.kind,
        {k: params[k] for k in SPEC_KEYS if k not in chosen_at_build and k in params},
    )
